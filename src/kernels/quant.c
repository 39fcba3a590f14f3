/* quant.c — NF4, QLoRA's 4-bit NormalFloat (lorac/kernels.h).
 *
 * The 16 values are the quantiles of a standard normal distribution scaled
 * to [-1, 1], with an exact zero (Dettmers et al., "QLoRA", 2023, appendix
 * E); bitsandbytes' dequantization table holds these f32 values. A value is
 * quantized to the code whose value is nearest, as bitsandbytes'
 * dQuantizeNF4 decides it: by comparisons x > t against the midpoints t of
 * neighbouring values, so a value exactly on a midpoint takes the lower
 * code, and a NaN (a block of zeros scaled by 1/0) the lowest. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "lorac/kernels.h"

/* The values as bitsandbytes writes them (its dequantization table's f32
 * constants are these decimals). */
#define NF4_VALUES                                                                                                     \
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334, \
        -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634,                    \
        0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0

const float lorac_nf4_codebook[16] = {NF4_VALUES};

/* The midpoints of neighbouring values, computed in double from the
 * decimals and rounded once to f32, as bitsandbytes' thresholds are
 * written. */
static void nf4_midpoints(float mid[15]) {
    static const double v[16] = {NF4_VALUES};
    for (int i = 0; i < 15; i++) mid[i] = (float)((v[i] + v[i + 1]) / 2);
}

int lorac_nf4_supported(int64_t K) { return K > 0 && K % 8 == 0; }

/* The code of x (already scaled by 1/absmax): how many midpoints it
 * exceeds (bitsandbytes' decision tree gives the same for every x). */
static unsigned nf4_code(float x, const float mid[15]) {
    unsigned c = 0;
    for (int i = 0; i < 15; i++) c += x > mid[i];
    return c;
}

/* One block of n <= 64 values at src + off (converted to f32 first). */
static void quantize_block(uint8_t *dst, const void *src, lorac_dtype_t dt, int64_t off, int64_t n, const float mid[15]) {
    float v[LORAC_NF4_BLOCK] = {0}, absmax = 0.0f;
    /* by memcpy: a tensor in a mapped file may start at any byte */
    if (dt == LORAC_DTYPE_F32) {
        memcpy(v, (const char *)src + off * 4, sizeof(float) * (size_t)n);
    } else {
        uint16_t h[LORAC_NF4_BLOCK];
        memcpy(h, (const char *)src + off * 2, sizeof(uint16_t) * (size_t)n);
        for (int64_t i = 0; i < n; i++) v[i] = dt == LORAC_DTYPE_BF16 ? lorac_bf16_to_f32(h[i]) : lorac_f16_to_f32(h[i]);
    }
    for (int64_t i = 0; i < n; i++) absmax = fmaxf(absmax, fabsf(v[i]));
    float inv = 1.0f / absmax; /* bitsandbytes multiplies by the reciprocal */
    memcpy(dst, &absmax, sizeof absmax);
    uint8_t *codes = dst + sizeof absmax;
    memset(codes, 0, LORAC_NF4_BLOCK / 2);
    for (int64_t i = 0; i < n; i++) codes[i / 2] |= (uint8_t)(nf4_code(v[i] * inv, mid) << (i % 2 ? 0 : 4));
}

void lorac_quantize_nf4(void *dst, const void *src, lorac_dtype_t src_dtype, int64_t n) {
    LORAC_ASSERT(src_dtype == LORAC_DTYPE_F32 || src_dtype == LORAC_DTYPE_BF16 || src_dtype == LORAC_DTYPE_F16);
    LORAC_ASSERT(n >= 0);
    int64_t blocks = (n + LORAC_NF4_BLOCK - 1) / LORAC_NF4_BLOCK;
    float mid[15];
    nf4_midpoints(mid);
#pragma omp parallel for schedule(static) num_threads(lorac_kernels_get_threads()) if (blocks > 256)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t off = b * LORAC_NF4_BLOCK, len = n - off < LORAC_NF4_BLOCK ? n - off : LORAC_NF4_BLOCK;
        quantize_block((uint8_t *)dst + b * LORAC_NF4_BLOCK_BYTES, src, src_dtype, off, len, mid);
    }
}

float lorac_nf4_value(const void *q, int64_t i) {
    const uint8_t *block = (const uint8_t *)q + i / LORAC_NF4_BLOCK * LORAC_NF4_BLOCK_BYTES;
    float absmax;
    memcpy(&absmax, block, sizeof absmax);
    uint8_t byte = block[sizeof absmax + i % LORAC_NF4_BLOCK / 2];
    return lorac_nf4_codebook[i % 2 ? byte & 15 : byte >> 4] * absmax;
}
