/* Small helpers shared by the plain-C kernels (ops.c, train_ops.c). */
#ifndef LORAC_OPS_INTERNAL_H
#define LORAC_OPS_INTERNAL_H

#include <math.h>
#include <string.h>

#include "lorac/core.h"
#include "lorac/kernels.h"

/* Element i of a small weight vector (norm weights) in its own dtype. */
static inline float weight_at(const void *w, lorac_dtype_t wtype, int64_t i) {
    switch (wtype) {
    case LORAC_DTYPE_BF16: return lorac_bf16_to_f32(((const uint16_t *)w)[i]);
    case LORAC_DTYPE_F16: return lorac_f16_to_f32(((const uint16_t *)w)[i]);
    default: return ((const float *)w)[i];
    }
}

/* e^x for x <= 0 (softmax arguments after subtracting the max), written so
 * that `omp simd` loops vectorise it, where libm's expf stays a scalar call:
 * x = n·ln2 + r with |r| <= ln2/2 (ln2 split in two for exactness), e^r by
 * its degree-6 Taylor-like minimax polynomial (Cephes' coefficients), 2^n
 * put in the exponent bits. Relative error about 2e-7 (2 ulp); below -87
 * (where e^x is under FLT_MIN) it returns 0, as for -inf. */
/* Its constants, shared with the AVX-512 version (matmul_avx512.c exp16). */
#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HI 0.693359375f      /* ln 2 = EXP_LN2_HI - EXP_LN2_LO, HI exact in few bits */
#define EXP_LN2_LO 2.12194440e-4f
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f
#define EXP_MIN_ARG (-87.0f)

static inline float softmax_expf(float x) {
    float xc = x < EXP_MIN_ARG ? EXP_MIN_ARG : x;
    /* n = round(xc·log2 e), to nearest even as exp16's vrndscaleps, by
     * the 1.5·2^23 trick: |xc·log2 e| < 126, and unlike floorf it
     * vectorises without SSE4.1 and inside target clones */
    float n = (xc * EXP_LOG2E + 12582912.0f) - 12582912.0f;
    float r = xc - n * EXP_LN2_HI + n * EXP_LN2_LO;
    float p = EXP_P0;
    p = p * r + EXP_P1;
    p = p * r + EXP_P2;
    p = p * r + EXP_P3;
    p = p * r + EXP_P4;
    p = p * r + EXP_P5;
    float y = p * r * r + r + 1.0f;
    /* 2^n through memcpy, not a union: GCC vectorises this form */
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return x < EXP_MIN_ARG ? 0.0f : y * two_n;
}

/* σ(g) = 1 / (1 + e^-g) through softmax_expf, so that `omp simd` loops
 * vectorise it (libm's expf, a scalar call, was the largest part of the
 * SwiGLU kernels). e = e^-|g| <= 1 never overflows: σ(g) = 1/(1+e) for
 * g >= 0 and e/(1+e) below. */
static inline float sigmoid_f32(float g) {
    float e = softmax_expf(-fabsf(g)), s = 1.0f / (1.0f + e);
    return g >= 0.0f ? s : e * s;
}

/* GELU's tanh approximation g/2 · (1 + tanh(u)), u = sqrt(2/π) (g + 0.044715 g³),
 * written as g · σ(2u) (1 + tanh(u) = 2σ(2u)), which vectorises through
 * sigmoid_f32 and has no cancellation near 0. gelu_tanh_grad_f32 is its
 * derivative, σ(2u) + g · 2σ(2u)(1 − σ(2u)) · u'; past |g| = 20 the second
 * term is exactly 0 in f32, and g is clamped there so that g² cannot
 * overflow into 0 · inf. */
#define GELU_K0 0.7978845608028654f /* sqrt(2/π) */
#define GELU_K1 0.044715f
static inline float gelu_tanh_f32(float g) {
    return g * sigmoid_f32(2.0f * GELU_K0 * (g + GELU_K1 * g * g * g));
}
static inline float gelu_tanh_grad_f32(float g) {
    float gc = g > 20.0f ? 20.0f : g < -20.0f ? -20.0f : g;
    float s = sigmoid_f32(2.0f * GELU_K0 * (gc + GELU_K1 * gc * gc * gc));
    return s + gc * 2.0f * s * (1.0f - s) * GELU_K0 * (1.0f + 3.0f * GELU_K1 * gc * gc);
}

/* Gemma 2's soft-capping of attention scores and logits: cap · tanh(x / cap)
 * (libm's tanhf, accurate near 0 where a tanh from exponentials cancels). */
static inline float softcap_f32(float x, float cap) { return cap * tanhf(x / cap); }
/* Its derivative from its value z: 1 − tanh² = 1 − (z / cap)². */
static inline float softcap_grad_f32(float z, float cap) { return 1.0f - (z / cap) * (z / cap); }

/* Below this many elements an elementwise kernel stays on the calling
 * thread: at decode (one row) a parallel region costs more than the work. */
#define LORAC_PARALLEL_MIN_ELEMS 32768

static inline float dot_f32(const float *a, const float *b, int64_t n) {
    float s = 0.0f;
    /* omp simd: lets the compiler vectorise the reduction (a fixed order,
     * so still deterministic) without -ffast-math */
    #pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Asks for bytes [b0, b1) of the rows [p, p + cnt) ∩ [0, n) that lie
 * stride bytes apart (a hint; no fault if unmapped): the attention kernels'
 * cache rows of one head lie KVH·hd apart, a stride the hardware
 * prefetchers do not follow. */
static inline void prefetch_rows(const char *rows, int64_t stride, int32_t p, int cnt, int32_t n, int64_t b0,
                                 int64_t b1) {
    for (int j = 0; j < cnt && p + j < n; j++)
        for (int64_t b = b0; b < b1; b += 64) __builtin_prefetch(rows + (p + j) * stride + b);
}

/* One pair of rotary: (a, b) = (v[i], v[i + half]) rotated by the angle of
 * cosine c and sine s. */
static inline void rope_pair(float *v, int64_t half, int64_t i, float c, float s) {
    float a = v[i], b = v[i + half];
    v[i] = a * c - b * s;
    v[i + half] = b * c + a * s;
}

/* The angle of pair i at position pos, in double: positions up to 128k
 * times inv_freq near 1 need more than f32's 24 bits to match the
 * reference's cos/sin. */
static inline double rope_angle(int32_t pos, const float *inv_freq, int64_t i) {
    return (double)pos * (double)inv_freq[i];
}

/* Rotates each pair (x[i], x[i + hd/2]) of every head by sign · angle,
 * angle = positions[t] · inv_freq[i]: sign +1 is rotary's forward pass, -1
 * its backward (the transpose of a rotation is the opposite rotation).
 * x is (T, n_heads, head_dim). */
static inline void rope_rotate(float *x, const int32_t *positions, const float *inv_freq, int64_t T, int64_t n_heads,
                               int64_t head_dim, float sign) {
    int64_t half = head_dim / 2;
    #pragma omp parallel for num_threads(lorac_kernels_get_threads()) schedule(static) \
        if (T * n_heads * head_dim >= LORAC_PARALLEL_MIN_ELEMS)
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < half; i++) {
            double angle = rope_angle(positions[t], inv_freq, i);
            float c = (float)cos(angle), s = sign * (float)sin(angle);
            for (int64_t h = 0; h < n_heads; h++) rope_pair(x + (t * n_heads + h) * head_dim, half, i, c, s);
        }
    }
}

#endif
