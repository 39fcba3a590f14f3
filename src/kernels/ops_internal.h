/* Small helpers shared by the plain-C kernels (ops.c, train_ops.c). */
#ifndef LORAC_OPS_INTERNAL_H
#define LORAC_OPS_INTERNAL_H

#include <math.h>

#include "lorac/core.h"

/* Element i of a small weight vector (norm weights) in its own dtype. */
static inline float weight_at(const void *w, lorac_dtype_t wtype, int64_t i) {
    switch (wtype) {
    case LORAC_DTYPE_BF16: return lorac_bf16_to_f32(((const uint16_t *)w)[i]);
    case LORAC_DTYPE_F16: return lorac_f16_to_f32(((const uint16_t *)w)[i]);
    default: return ((const float *)w)[i];
    }
}

static inline float dot_f32(const float *a, const float *b, int64_t n) {
    float s = 0.0f;
    /* omp simd: lets the compiler vectorise the reduction (a fixed order,
     * so still deterministic) without -ffast-math */
    #pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Rotates each pair (x[i], x[i + hd/2]) of every head by sign · angle,
 * angle = positions[t] · inv_freq[i]: sign +1 is rotary's forward pass, -1
 * its backward (the transpose of a rotation is the opposite rotation).
 * x is (T, n_heads, head_dim). */
static inline void rope_rotate(float *x, const int32_t *positions, const float *inv_freq, int64_t T, int64_t n_heads,
                               int64_t head_dim, float sign) {
    int64_t half = head_dim / 2;
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < half; i++) {
            /* angle in double: positions up to 128k times inv_freq near 1 need
             * more than f32's 24 bits to match the reference's cos/sin */
            double angle = (double)positions[t] * (double)inv_freq[i];
            float c = (float)cos(angle), s = sign * (float)sin(angle);
            for (int64_t h = 0; h < n_heads; h++) {
                float *v = x + (t * n_heads + h) * head_dim;
                float a = v[i], b = v[i + half];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
    }
}

#endif
