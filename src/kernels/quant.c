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

const float lorac_nf4_codebook[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

/* The midpoints, computed in double from the values' decimal forms and
 * rounded once to f32, as bitsandbytes' thresholds are written. */
static const float k_midpoints[15] = {
    (float)((-1.0 + -0.6961928009986877) / 2),
    (float)((-0.6961928009986877 + -0.5250730514526367) / 2),
    (float)((-0.5250730514526367 + -0.39491748809814453) / 2),
    (float)((-0.39491748809814453 + -0.28444138169288635) / 2),
    (float)((-0.28444138169288635 + -0.18477343022823334) / 2),
    (float)((-0.18477343022823334 + -0.09105003625154495) / 2),
    (float)((-0.09105003625154495 + 0.0) / 2),
    (float)((0.0 + 0.07958029955625534) / 2),
    (float)((0.07958029955625534 + 0.16093020141124725) / 2),
    (float)((0.16093020141124725 + 0.24611230194568634) / 2),
    (float)((0.24611230194568634 + 0.33791524171829224) / 2),
    (float)((0.33791524171829224 + 0.44070982933044434) / 2),
    (float)((0.44070982933044434 + 0.5626170039176941) / 2),
    (float)((0.5626170039176941 + 0.7229568362236023) / 2),
    (float)((0.7229568362236023 + 1.0) / 2),
};

int lorac_nf4_supported(int64_t K) { return K > 0 && K % 8 == 0; }

/* The code of x (already scaled by 1/absmax): how many midpoints it
 * exceeds (bitsandbytes' decision tree gives the same for every x). */
static unsigned nf4_code(float x) {
    unsigned c = 0;
    for (int i = 0; i < 15; i++) c += x > k_midpoints[i];
    return c;
}

/* One block of n <= 64 values at src + off (converted to f32 first). */
static void quantize_block(uint8_t *dst, const void *src, lorac_dtype_t dt, int64_t off, int64_t n) {
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
    for (int64_t i = 0; i < n; i++) codes[i / 2] |= (uint8_t)(nf4_code(v[i] * inv) << (i % 2 ? 0 : 4));
}

void lorac_quantize_nf4(void *dst, const void *src, lorac_dtype_t src_dtype, int64_t n) {
    LORAC_ASSERT(src_dtype == LORAC_DTYPE_F32 || src_dtype == LORAC_DTYPE_BF16 || src_dtype == LORAC_DTYPE_F16);
    LORAC_ASSERT(n >= 0);
    int64_t blocks = (n + LORAC_NF4_BLOCK - 1) / LORAC_NF4_BLOCK;
#pragma omp parallel for schedule(static) num_threads(lorac_kernels_get_threads()) if (blocks > 256)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t off = b * LORAC_NF4_BLOCK, len = n - off < LORAC_NF4_BLOCK ? n - off : LORAC_NF4_BLOCK;
        quantize_block((uint8_t *)dst + b * LORAC_NF4_BLOCK_BYTES, src, src_dtype, off, len);
    }
}

float lorac_nf4_value(const void *q, int64_t i) {
    const uint8_t *block = (const uint8_t *)q + i / LORAC_NF4_BLOCK * LORAC_NF4_BLOCK_BYTES;
    float absmax;
    memcpy(&absmax, block, sizeof absmax);
    uint8_t byte = block[sizeof absmax + i % LORAC_NF4_BLOCK / 2];
    return lorac_nf4_codebook[i % 2 ? byte & 15 : byte >> 4] * absmax;
}
