/* matmul_avx2.c — AVX2 + FMA + F16C block kernels for matmul.
 *
 * The same structure as matmul_avx512.c, with 8-lane vectors and tiles for
 * 16 ymm registers instead of 32 zmm (AMD Zen 2/3 and Intel before
 * Skylake-X run this path). Weights stay in their dtype in memory and are
 * widened in registers or once per packed panel.
 *
 * AVX2 has no masked 16-bit loads, so partial vectors (K tails, the last
 * columns of a panel) go through a small zero-padded stack copy. Every dot
 * product of the forward kernel is 8 lanes accumulated by FMA over k in
 * order plus one fixed horizontal reduction, whatever the tile shape; every
 * element of the accumulating kernels is one FMA chain over l in order.
 * Hence thread-count independence: block boundaries change no bit. */
#include "kernels_internal.h"
#include "ops_internal.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The block sizes below (LCHUNK, MBLOCK, PACK_A_PANELS, PACK_AHEAD) can be
 * set from the compiler's command line as LORAC_AVX2_<name>, so that
 * bench/bench_kernel_ab can time two values turn about in one process. */

/* Forward tile: 2 rows of x times 4 rows of w = 8 accumulators + 4 weights
 * + 1 x = 13 of 16 registers. */
#define FT 2
#define FN 4
#define TCHUNK 64
/* acc tile: AM rows of c times AV vectors (16 columns) = 12 accumulators,
 * + 2 vectors of b + 1 broadcast = 15 registers; per l, 8 loads for 12
 * FMAs (the 4 x 2 tile this replaced: 6 loads for 8 FMAs, and 8 chains
 * barely covered the FMA latency). On an AMD EPYC, 4 x 24 and 3 x 32
 * tiles (7 loads for 12 FMAs) ran no faster in a stand-alone test, and a
 * 12 x 8 tile of vbroadcastsd row pairs ran slower in bench_matmul (twice
 * the panels and c-tile passes). */
#define AM 6
#define AV 2
#define PW (8 * AV) /* columns of a panel */
/* l is blocked in equal chunks of at most LCHUNK; c is loaded and stored
 * once per chunk, and each row tile runs the chunk's l in one go. A panel
 * of b of 1,024 x 16 floats is 64 KB: it streams from L2 beside the tile's
 * rows of a, which the hardware prefetcher keeps up with, and the tiles'
 * fixed costs (loading c, the first lines of each stream) are spread over
 * more work. In bench_kernel_ab's run on the AMD EPYC against 384 (a
 * 24 KB panel, kept in L1; the README's table), the training step's
 * forward and dx products on repacked weights ran at 0.98-1.11x, median
 * 1.03x, the loss's block products at 1.00-1.06x; 512 was between the
 * two, 2,048 no better than 1,024. */
#ifndef LORAC_AVX2_LCHUNK
#define LORAC_AVX2_LCHUNK 1024
#endif
#define LCHUNK LORAC_AVX2_LCHUNK
#define SMALL_LCHUNK 64 /* when the panel cannot be allocated: 4 KB on the stack */
/* Rows of c per pass over b (a multiple of AM). Every pass packs each of
 * b's panels again, so the block is a whole batch of 1,024 rows: its slice
 * of a (up to 4 MB) is then read from L3, where the hardware prefetcher
 * keeps up with a tile's 6 row streams. On the AMD EPYC (32 MB L3, 512 KB
 * L2), against blocks of 264 rows whose slice stayed in L2, bench_kernel_ab
 * put the 15M, 110M and 1.1B forward and dx products at 0.98-1.14x, median
 * 1.03x. */
#ifndef LORAC_AVX2_MBLOCK
#define LORAC_AVX2_MBLOCK 1032
#endif
#define MBLOCK LORAC_AVX2_MBLOCK
/* Column panels a thread's block must have for its rows of a to be packed
 * whatever their layout (see acc_dtype). */
#ifndef LORAC_AVX2_PACK_A_PANELS
#define LORAC_AVX2_PACK_A_PANELS 32
#endif
#define PACK_A_PANELS LORAC_AVX2_PACK_A_PANELS
/* Rows of b ahead that pack_panel prefetches. */
#ifndef LORAC_AVX2_PACK_AHEAD
#define LORAC_AVX2_PACK_AHEAD 8
#endif
#define PACK_AHEAD LORAC_AVX2_PACK_AHEAD
/* Panels of b (not transposed) packed in one pass over its rows, where
 * those lie a page or more apart (pack_panel). In alternating
 * bench_kernel_ab runs on the AMD EPYC, 4 against 1 put the 1.1B dx
 * products at 1.007-1.026x; 8 was no better than 4; at the 15M shapes
 * (rows of 1,152 bytes) grouping gained nothing. */
#ifndef LORAC_AVX2_PACK_GROUP
#define LORAC_AVX2_PACK_GROUP 4
#endif
#define PACK_GROUP LORAC_AVX2_PACK_GROUP
/* Bytes ahead in each of decode's four weight streams that fwd_row4
 * prefetches (512 read faster than 0, 1024 and 2048 in alternating
 * bench_decode_split runs on the AMD EPYC). */
#define DECODE_AHEAD 512

LORAC_ALWAYS_INLINE __m256 widen_w(__m128i h, lorac_dtype_t dt) {
    if (dt == LORAC_DTYPE_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

/* NF4 codes (8 lanes, 0-15) to codebook[code]·scale, the f32 product
 * lorac_nf4_value makes: the 16-value codebook looked up as two 8-lane
 * permutes, chosen between by the code's bit 3. */
LORAC_ALWAYS_INLINE __m256 nf4_lookup(__m256i code, __m256 scale) {
    __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(lorac_nf4_codebook), code);
    __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(lorac_nf4_codebook + 8), code);
    return _mm256_mul_ps(_mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(code, 28))), scale);
}

/* 8 NF4 elements from element i (kernels.h): when i is a multiple of 8,
 * 4 bytes of one block, each lane shifting its own nibble down (element
 * 2j is byte j's high half), then nf4_lookup with the block's absmax. */
LORAC_ALWAYS_INLINE __m256 load_nf4(const void *w, int64_t i) {
    uint64_t u = (uint64_t)i; /* unsigned: the block arithmetic is shifts and masks */
    if (u & 7) { /* not where the kernels read: one element at a time */
        float tmp[8];
        for (int j = 0; j < 8; j++) tmp[j] = lorac_nf4_value(w, i + j);
        return _mm256_loadu_ps(tmp);
    }
    const uint8_t *block = (const uint8_t *)w + (u / LORAC_NF4_BLOCK) * LORAC_NF4_BLOCK_BYTES;
    uint32_t bits;
    float absmax;
    memcpy(&absmax, block, sizeof absmax);
    memcpy(&bits, block + sizeof absmax + u % LORAC_NF4_BLOCK / 2, sizeof bits);
    const __m256i shifts = _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24);
    __m256i code = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)bits), shifts), _mm256_set1_epi32(15));
    return nf4_lookup(code, _mm256_set1_ps(absmax));
}

/* The codebook's 16 f32 values split into 4 byte planes, plane b holding
 * byte b of each value, for a byte shuffle to look codes up in (built by
 * nf4_planes). */
typedef struct {
    __m256i plane[4];
} nf4_planes_t;

LORAC_ALWAYS_INLINE nf4_planes_t nf4_planes(void) {
    nf4_planes_t p;
    uint8_t bytes[4][16];
    for (int c = 0; c < 16; c++) {
        uint32_t u;
        memcpy(&u, &lorac_nf4_codebook[c], sizeof u);
        for (int b = 0; b < 4; b++) bytes[b][c] = (uint8_t)(u >> (8 * b));
    }
    for (int b = 0; b < 4; b++) p.plane[b] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)bytes[b]));
    return p;
}

/* 32 values of an NF4 block (from its 16 code bytes q) as 4 vectors in
 * element order, without a cross-lane permute per vector: the bytes are
 * first arranged so that lane 0 holds bytes 0-1, 4-5, 8-9, 12-13 and lane
 * 1 bytes 2-3, 6-7, 10-11, 14-15, split into nibbles and interleaved
 * (codes 0-3, 8-11, 16-19, 24-27 | 4-7, 12-15, 20-23, 28-31); a byte
 * shuffle per byte plane looks each code's f32 up, and two rounds of
 * interleaving the planes put the bytes of each value together, which
 * brings codes 0-7, 8-15, 16-23, 24-31 into the four vectors. Shuffles
 * with their own ports on every x86 (AMD's permutes of 8 lanes are slow). */
LORAC_ALWAYS_INLINE void nf4_half_block(const uint8_t *q, __m256 scale, const nf4_planes_t *p, __m256 w[4]) {
    const __m256i order = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, /* lane 0 */
                                           2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i nibble = _mm256_set1_epi8(15);
    __m256i r = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)q)), order);
    __m256i codes = _mm256_unpacklo_epi8(_mm256_and_si256(_mm256_srli_epi16(r, 4), nibble), _mm256_and_si256(r, nibble));
    __m256i b0 = _mm256_shuffle_epi8(p->plane[0], codes), b1 = _mm256_shuffle_epi8(p->plane[1], codes);
    __m256i b2 = _mm256_shuffle_epi8(p->plane[2], codes), b3 = _mm256_shuffle_epi8(p->plane[3], codes);
    __m256i lo01 = _mm256_unpacklo_epi8(b0, b1), lo23 = _mm256_unpacklo_epi8(b2, b3);
    __m256i hi01 = _mm256_unpackhi_epi8(b0, b1), hi23 = _mm256_unpackhi_epi8(b2, b3);
    w[0] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(lo01, lo23)), scale);
    w[1] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(lo01, lo23)), scale);
    w[2] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(hi01, hi23)), scale);
    w[3] = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(hi01, hi23)), scale);
}

/* The 64 values of one NF4 block as 8 vectors (w[g]: elements 8g..8g+7),
 * the values of load_nf4 without its addressing per 8 elements. */
LORAC_ALWAYS_INLINE void nf4_block(const uint8_t *block, const nf4_planes_t *p, __m256 w[8]) {
    float absmax;
    memcpy(&absmax, block, sizeof absmax);
    const __m256 scale = _mm256_set1_ps(absmax);
    nf4_half_block(block + sizeof absmax, scale, p, w);
    nf4_half_block(block + sizeof absmax + LORAC_NF4_BLOCK / 4, scale, p, w + 4);
}

/* dst (n) = NF4 elements [off, off + n) of w: whole blocks in one go when
 * off starts one, else 8 at a time. */
LORAC_ALWAYS_INLINE void nf4_widen(float *dst, const void *w, int64_t off, int64_t n) {
    int64_t i = 0;
    const nf4_planes_t planes = nf4_planes();
    if (off % LORAC_NF4_BLOCK == 0)
        for (; i + LORAC_NF4_BLOCK <= n; i += LORAC_NF4_BLOCK) {
            __m256 v[8];
            nf4_block((const uint8_t *)w + (off + i) / LORAC_NF4_BLOCK * LORAC_NF4_BLOCK_BYTES, &planes, v);
            for (int g = 0; g < 8; g++) _mm256_storeu_ps(dst + i + 8 * g, v[g]);
        }
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_nf4(w, off + i));
    for (; i < n; i++) dst[i] = lorac_nf4_value(w, off + i);
}

/* 8 elements of w starting at element i, widened to f32. */
LORAC_ALWAYS_INLINE __m256 load_w(const void *w, lorac_dtype_t dt, int64_t i) {
    if (dt == LORAC_DTYPE_F32) return _mm256_loadu_ps((const float *)w + i);
    if (dt == LORAC_DTYPE_NF4) return load_nf4(w, i);
    return widen_w(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)), dt);
}

/* The first n (0..8) elements of w at i, the other lanes 0. The copy keeps
 * the load inside the buffer. */
LORAC_ALWAYS_INLINE __m256 load_w_part(const void *w, lorac_dtype_t dt, int64_t i, int64_t n) {
    if (n >= 8) return load_w(w, dt, i);
    if (n <= 0) return _mm256_setzero_ps();
    if (dt == LORAC_DTYPE_F32) {
        float tmp[8] = {0};
        memcpy(tmp, (const float *)w + i, (size_t)n * sizeof(float));
        return _mm256_loadu_ps(tmp);
    }
    if (dt == LORAC_DTYPE_NF4) {
        float tmp[8] = {0};
        for (int64_t j = 0; j < n; j++) tmp[j] = lorac_nf4_value(w, i + j);
        return _mm256_loadu_ps(tmp);
    }
    uint16_t tmp[8] = {0};
    memcpy(tmp, (const uint16_t *)w + i, (size_t)n * sizeof(uint16_t));
    return widen_w(_mm_loadu_si128((const __m128i *)tmp), dt);
}

LORAC_ALWAYS_INLINE void store_part(float *dst, __m256 v, int64_t n) {
    if (n >= 8) {
        _mm256_storeu_ps(dst, v);
        return;
    }
    float tmp[8];
    _mm256_storeu_ps(tmp, v);
    memcpy(dst, tmp, (size_t)n * sizeof(float));
}

/* Fixed-order horizontal sum. */
LORAC_ALWAYS_INLINE float hsum(__m256 v) {
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    return _mm_cvtss_f32(s4);
}

/* Forward micro-kernel: x at row t0 (RT rows of K), w row n0 at element
 * offset woff (RN rows of K), out at out[t0,n0] (row stride N), bias at
 * bias[n0] or NULL. out[t0+i, n0+j] = hsum(lanes of Σ_k x·w) (+ bias[j]). */
LORAC_ALWAYS_INLINE void fwd_tile(const int RT, const int RN, const lorac_dtype_t dt, float *out,
                                  int64_t N, const float *x, const void *w, int64_t woff,
                                  const float *bias, int64_t K) {
    __m256 acc[FT][FN];
#pragma GCC unroll 4
    for (int i = 0; i < RT; i++)
#pragma GCC unroll 4
        for (int j = 0; j < RN; j++) acc[i][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 wv[FN];
#pragma GCC unroll 4
        for (int j = 0; j < RN; j++) wv[j] = load_w(w, dt, woff + j * K + k);
#pragma GCC unroll 4
        for (int i = 0; i < RT; i++) {
            __m256 xv = _mm256_loadu_ps(x + i * K + k);
#pragma GCC unroll 4
            for (int j = 0; j < RN; j++) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
        }
    }
    if (k < K) {
        __m256 wv[FN];
#pragma GCC unroll 4
        for (int j = 0; j < RN; j++) wv[j] = load_w_part(w, dt, woff + j * K + k, K - k);
#pragma GCC unroll 4
        for (int i = 0; i < RT; i++) {
            __m256 xv = load_w_part(x, LORAC_DTYPE_F32, i * K + k, K - k);
#pragma GCC unroll 4
            for (int j = 0; j < RN; j++) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < RT; i++)
#pragma GCC unroll 4
        for (int j = 0; j < RN; j++) {
            float v = hsum(acc[i][j]);
            out[i * N + j] = bias ? v + bias[j] : v;
        }
}

/* One x row against the 4 weight rows woff, woff + stride·K, woff +
 * 2·stride·K and woff + 3·stride·K: fwd_tile(1, 1, ...) four times over,
 * with named accumulators and row pointers, so that the decode hot loop
 * keeps them in registers. The same FMA chain per lane, tail and hsum, so
 * bitwise the same result as fwd_tile. Each row pointer's next row is the
 * next one in memory, so over the decode loop (fwd_block) the four form
 * four long sequential streams; each is prefetched DECODE_AHEAD bytes on. */
LORAC_ALWAYS_INLINE void fwd_row4(const lorac_dtype_t dt, float *out, const float *x, const void *w, int64_t woff,
                                  const float *bias, int64_t K, int64_t stride) {
    const int64_t es = (int64_t)lorac_dtype_size(dt), gap = stride * K * es;
    const char *r0 = (const char *)w + woff * es, *r1 = r0 + gap, *r2 = r1 + gap, *r3 = r2 + gap;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        if ((k * es) % 64 == 0) { /* a line of each stream per line consumed */
            _mm_prefetch(r0 + k * es + DECODE_AHEAD, _MM_HINT_T0);
            _mm_prefetch(r1 + k * es + DECODE_AHEAD, _MM_HINT_T0);
            _mm_prefetch(r2 + k * es + DECODE_AHEAD, _MM_HINT_T0);
            _mm_prefetch(r3 + k * es + DECODE_AHEAD, _MM_HINT_T0);
        }
        __m256 xv = _mm256_loadu_ps(x + k);
        a0 = _mm256_fmadd_ps(xv, load_w(r0, dt, k), a0);
        a1 = _mm256_fmadd_ps(xv, load_w(r1, dt, k), a1);
        a2 = _mm256_fmadd_ps(xv, load_w(r2, dt, k), a2);
        a3 = _mm256_fmadd_ps(xv, load_w(r3, dt, k), a3);
    }
    if (k < K) {
        __m256 xv = load_w_part(x, LORAC_DTYPE_F32, k, K - k);
        a0 = _mm256_fmadd_ps(xv, load_w_part(r0, dt, k, K - k), a0);
        a1 = _mm256_fmadd_ps(xv, load_w_part(r1, dt, k, K - k), a1);
        a2 = _mm256_fmadd_ps(xv, load_w_part(r2, dt, k, K - k), a2);
        a3 = _mm256_fmadd_ps(xv, load_w_part(r3, dt, k, K - k), a3);
    }
    float v0 = hsum(a0), v1 = hsum(a1), v2 = hsum(a2), v3 = hsum(a3);
    out[0] = bias ? v0 + bias[0] : v0;
    out[stride] = bias ? v1 + bias[stride] : v1;
    out[2 * stride] = bias ? v2 + bias[2 * stride] : v2;
    out[3 * stride] = bias ? v3 + bias[3 * stride] : v3;
}

/* fwd_row4 for NF4 weights, whose rows are not whole bytes apart: the four
 * rows by element offset. The same chains, so the bits of fwd_tile. Each
 * stream's block DECODE_AHEAD_NF4 elements on is fetched once a block. */
#define DECODE_AHEAD_NF4 1024
LORAC_ALWAYS_INLINE void fwd_row4_nf4(float *out, const float *x, const void *w, int64_t woff, const float *bias,
                                      int64_t K, int64_t stride) {
    const int64_t gap = stride * K, o0 = woff, o1 = o0 + gap, o2 = o1 + gap, o3 = o2 + gap;
    const char *base = (const char *)w;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t k = 0;
    if (K % LORAC_NF4_BLOCK == 0) { /* every row starts a block: a block of each stream at a time */
        const uint8_t *r0 = (const uint8_t *)base + o0 / LORAC_NF4_BLOCK * LORAC_NF4_BLOCK_BYTES;
        const uint8_t *r1 = (const uint8_t *)base + o1 / LORAC_NF4_BLOCK * LORAC_NF4_BLOCK_BYTES;
        const uint8_t *r2 = (const uint8_t *)base + o2 / LORAC_NF4_BLOCK * LORAC_NF4_BLOCK_BYTES;
        const uint8_t *r3 = (const uint8_t *)base + o3 / LORAC_NF4_BLOCK * LORAC_NF4_BLOCK_BYTES;
        const int64_t ahead = DECODE_AHEAD_NF4 / LORAC_NF4_BLOCK * LORAC_NF4_BLOCK_BYTES;
        const nf4_planes_t planes = nf4_planes();
        for (; k < K; k += LORAC_NF4_BLOCK) {
            _mm_prefetch((const char *)r0 + ahead, _MM_HINT_T0);
            _mm_prefetch((const char *)r1 + ahead, _MM_HINT_T0);
            _mm_prefetch((const char *)r2 + ahead, _MM_HINT_T0);
            _mm_prefetch((const char *)r3 + ahead, _MM_HINT_T0);
            __m256 v[8];
            nf4_block(r0, &planes, v);
            for (int g = 0; g < 8; g++) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8 * g), v[g], a0);
            nf4_block(r1, &planes, v);
            for (int g = 0; g < 8; g++) a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8 * g), v[g], a1);
            nf4_block(r2, &planes, v);
            for (int g = 0; g < 8; g++) a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8 * g), v[g], a2);
            nf4_block(r3, &planes, v);
            for (int g = 0; g < 8; g++) a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8 * g), v[g], a3);
            r0 += LORAC_NF4_BLOCK_BYTES, r1 += LORAC_NF4_BLOCK_BYTES, r2 += LORAC_NF4_BLOCK_BYTES,
                r3 += LORAC_NF4_BLOCK_BYTES;
        }
    }
    for (; k + 8 <= K; k += 8) {
        if ((o0 + k) % LORAC_NF4_BLOCK == 0) {
            int64_t ahead = (k + DECODE_AHEAD_NF4) / LORAC_NF4_BLOCK * LORAC_NF4_BLOCK_BYTES;
            _mm_prefetch(base + o0 / LORAC_NF4_BLOCK * LORAC_NF4_BLOCK_BYTES + ahead, _MM_HINT_T0);
            _mm_prefetch(base + o1 / LORAC_NF4_BLOCK * LORAC_NF4_BLOCK_BYTES + ahead, _MM_HINT_T0);
            _mm_prefetch(base + o2 / LORAC_NF4_BLOCK * LORAC_NF4_BLOCK_BYTES + ahead, _MM_HINT_T0);
            _mm_prefetch(base + o3 / LORAC_NF4_BLOCK * LORAC_NF4_BLOCK_BYTES + ahead, _MM_HINT_T0);
        }
        __m256 xv = _mm256_loadu_ps(x + k);
        a0 = _mm256_fmadd_ps(xv, load_nf4(w, o0 + k), a0);
        a1 = _mm256_fmadd_ps(xv, load_nf4(w, o1 + k), a1);
        a2 = _mm256_fmadd_ps(xv, load_nf4(w, o2 + k), a2);
        a3 = _mm256_fmadd_ps(xv, load_nf4(w, o3 + k), a3);
    }
    if (k < K) {
        __m256 xv = load_w_part(x, LORAC_DTYPE_F32, k, K - k);
        a0 = _mm256_fmadd_ps(xv, load_w_part(w, LORAC_DTYPE_NF4, o0 + k, K - k), a0);
        a1 = _mm256_fmadd_ps(xv, load_w_part(w, LORAC_DTYPE_NF4, o1 + k, K - k), a1);
        a2 = _mm256_fmadd_ps(xv, load_w_part(w, LORAC_DTYPE_NF4, o2 + k, K - k), a2);
        a3 = _mm256_fmadd_ps(xv, load_w_part(w, LORAC_DTYPE_NF4, o3 + k, K - k), a3);
    }
    float v0 = hsum(a0), v1 = hsum(a1), v2 = hsum(a2), v3 = hsum(a3);
    out[0] = bias ? v0 + bias[0] : v0;
    out[stride] = bias ? v1 + bias[stride] : v1;
    out[2 * stride] = bias ? v2 + bias[2 * stride] : v2;
    out[3 * stride] = bias ? v3 + bias[3 * stride] : v3;
}

/* out is (T,N), x is (T,K), w is (N,K) in dt; columns [n0,n1). */
LORAC_ALWAYS_INLINE void fwd_block(const lorac_dtype_t dt, float *out, const float *x,
                                   const void *w, const float *bias, int64_t T, int64_t K,
                                   int64_t N, int64_t n0, int64_t n1) {
    if (T < FT) {
        /* Decode: each weight row streamed once. Rows n0 + i, n0 + q + i,
         * n0 + 2q + i and n0 + 3q + i go together (q = a quarter of the
         * rows), so each of the four walks its own quarter of w front to
         * back. Four neighbouring rows instead were four short streams,
         * three of which start over every 4 rows (16-bit rows are 1.5 KB
         * at K = 768): in alternating bench_decode_split runs on the AMD
         * EPYC the 110M BF16 products read 22-24 GB/s that way and 27-36
         * GB/s this way. */
        int64_t q = (n1 - n0) / 4;
        for (int64_t t = 0; t < T; t++) {
            for (int64_t n = n0; n < n0 + q; n++) {
                if (dt == LORAC_DTYPE_NF4) fwd_row4_nf4(out + t * N + n, x + t * K, w, n * K, bias ? bias + n : NULL, K, q);
                else fwd_row4(dt, out + t * N + n, x + t * K, w, n * K, bias ? bias + n : NULL, K, q);
            }
            for (int64_t n = n0 + 4 * q; n < n1; n++)
                fwd_tile(1, 1, dt, out + t * N + n, N, x + t * K, w, n * K, bias ? bias + n : NULL, K);
        }
        return;
    }
    for (int64_t tc = 0; tc < T; tc += TCHUNK) {
        int64_t te = tc + TCHUNK < T ? tc + TCHUNK : T;
        int64_t n = n0;
        for (; n + FN <= n1; n += FN) {
            const float *b = bias ? bias + n : NULL;
            int64_t t = tc;
            for (; t + FT <= te; t += FT)
                fwd_tile(FT, FN, dt, out + t * N + n, N, x + t * K, w, n * K, b, K);
            for (; t < te; t++)
                fwd_tile(1, FN, dt, out + t * N + n, N, x + t * K, w, n * K, b, K);
        }
        for (; n < n1; n++) {
            const float *b = bias ? bias + n : NULL;
            int64_t t = tc;
            for (; t + FT <= te; t += FT)
                fwd_tile(FT, 1, dt, out + t * N + n, N, x + t * K, w, n * K, b, K);
            for (; t < te; t++) fwd_tile(1, 1, dt, out + t * N + n, N, x + t * K, w, n * K, b, K);
        }
    }
}

/* fwd_block for NF4 weights and two or more x rows: FN rows of w widened
 * at a time into wbuf (FN·K floats), and the f32 tiles run on them, so a
 * weight is decoded once, not once per row tile. The values and the FMA
 * order are fwd_tile's, so are the bits. */
static void fwd_nf4_widened(float *out, const float *x, const void *w, const float *bias, int64_t T, int64_t K,
                            int64_t N, int64_t n0, int64_t n1, float *wbuf) {
    for (int64_t n = n0; n < n1; n += FN) {
        int64_t rn = n1 - n < FN ? n1 - n : FN;
        nf4_widen(wbuf, w, n * K, rn * K);
        const float *b = bias ? bias + n : NULL;
        int64_t t = 0;
        if (rn == FN) {
            for (; t + FT <= T; t += FT) fwd_tile(FT, FN, LORAC_DTYPE_F32, out + t * N + n, N, x + t * K, wbuf, 0, b, K);
            for (; t < T; t++) fwd_tile(1, FN, LORAC_DTYPE_F32, out + t * N + n, N, x + t * K, wbuf, 0, b, K);
            continue;
        }
        for (int64_t j = 0; j < rn; j++) {
            const float *bj = b ? b + j : NULL;
            for (t = 0; t + FT <= T; t += FT)
                fwd_tile(FT, 1, LORAC_DTYPE_F32, out + t * N + n + j, N, x + t * K, wbuf, j * K, bj, K);
            for (; t < T; t++) fwd_tile(1, 1, LORAC_DTYPE_F32, out + t * N + n + j, N, x + t * K, wbuf, j * K, bj, K);
        }
    }
}

static void avx2_matmul_fwd(float *out, const float *x, const void *w, lorac_dtype_t wt,
                            const float *bias, int64_t T, int64_t K, int64_t N, int64_t n0,
                            int64_t n1) {
    if (wt == LORAC_DTYPE_NF4 && T >= FT) {
        float *wbuf = malloc(sizeof(float) * (size_t)(FN * K));
        if (wbuf) { /* else in registers: the same bits, slower */
            fwd_nf4_widened(out, x, w, bias, T, K, N, n0, n1, wbuf);
            free(wbuf);
            return;
        }
    }
    if (wt == LORAC_DTYPE_F32) fwd_block(LORAC_DTYPE_F32, out, x, w, bias, T, K, N, n0, n1);
    else if (wt == LORAC_DTYPE_BF16) fwd_block(LORAC_DTYPE_BF16, out, x, w, bias, T, K, N, n0, n1);
    else if (wt == LORAC_DTYPE_NF4) fwd_block(LORAC_DTYPE_NF4, out, x, w, bias, T, K, N, n0, n1);
    else fwd_block(LORAC_DTYPE_F16, out, x, w, bias, T, K, N, n0, n1);
}

/* Accumulate micro-kernel: c rows (row stride ldc), RV vectors of 8
 * columns, of which the first `cols` exist, += Σ_{l<n} a[i*a_rs + l*a_cs] ·
 * b[boff + l*ldb + 8j ..]: a points at the tile's first row at the chunk's
 * first l, boff at b's row for it. Each lane is one c element: a chain of
 * FMAs over l in increasing order, from the stored value (from 0 when
 * `zero` is set: the same bits as storing zeros first, without the pass
 * over c). Rows from `valid` on are computed (on a's zero padding) but
 * neither loaded nor stored. When b is a packed panel its columns past
 * `cols` are zeros and b_full lets every load be a whole vector.
 * A tail (tn > 0) continues each chain over tn more values before the
 * store: Σ_j ta[i*t_rs + j] · tb[j*PW + 8v ..], ta the tile's first row
 * of the tail's a (row-major, rows t_rs apart), tb its packed panel of b;
 * rows from `valid` on read row valid - 1 instead (their results are not
 * stored), so no read passes the last row. */
LORAC_ALWAYS_INLINE void acc_tile(const int RM, const int RV, const lorac_dtype_t bt, const int b_full, float *c,
                                  int64_t ldc, const float *a, int64_t a_rs, int64_t a_cs, const void *b,
                                  int64_t boff, int64_t ldb, int64_t n, int64_t cols, int zero, int valid,
                                  const float *ta, int64_t t_rs, const float *tb, int64_t tn) {
    __m256 acc[AM][AV];
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++)
#pragma GCC unroll 4
        for (int j = 0; j < RV; j++)
            acc[i][j] = zero || i >= valid ? _mm256_setzero_ps()
                                           : load_w_part(c, LORAC_DTYPE_F32, i * ldc + 8 * j, cols - 8 * j);
    /* Two values of l per loop pass: the loop's own 4 instructions came
     * with every 12 FMAs (4 passes ran no faster on the AMD EPYC). The
     * same FMA chains in the same order. */
#pragma GCC unroll 2
    for (int64_t l = 0; l < n; l++) {
        __m256 bv[AV];
#pragma GCC unroll 4
        for (int j = 0; j < RV; j++)
            bv[j] = b_full || j < RV - 1 ? load_w(b, bt, boff + l * ldb + 8 * j)
                                         : load_w_part(b, bt, boff + l * ldb + 8 * j, cols - 8 * j);
#pragma GCC unroll 8
        for (int i = 0; i < RM; i++) {
            __m256 av = _mm256_broadcast_ss(a + i * a_rs + l * a_cs);
#pragma GCC unroll 4
            for (int j = 0; j < RV; j++) acc[i][j] = _mm256_fmadd_ps(av, bv[j], acc[i][j]);
        }
    }
    const float *trow[AM];
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++) trow[i] = ta + (i < valid ? i : valid - 1) * t_rs;
    for (int64_t l = 0; l < tn; l++) {
        __m256 bv[AV];
#pragma GCC unroll 4
        for (int j = 0; j < RV; j++) bv[j] = _mm256_load_ps(tb + l * PW + 8 * j);
#pragma GCC unroll 8
        for (int i = 0; i < RM; i++) {
            __m256 av = _mm256_broadcast_ss(trow[i] + l);
#pragma GCC unroll 4
            for (int j = 0; j < RV; j++) acc[i][j] = _mm256_fmadd_ps(av, bv[j], acc[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++)
        if (i < valid)
#pragma GCC unroll 4
            for (int j = 0; j < RV; j++) store_part(c + i * ldc + 8 * j, acc[i][j], cols - 8 * j);
}

/* acc_tile with RV = nv (1 or 2) vectors. */
LORAC_ALWAYS_INLINE void acc_tile_nv(const int RM, int nv, const lorac_dtype_t bt, const int b_full, float *c,
                                     int64_t ldc, const float *a, int64_t a_rs, int64_t a_cs, const void *b,
                                     int64_t boff, int64_t ldb, int64_t n, int64_t cols, int zero, int valid,
                                     const float *ta, int64_t t_rs, const float *tb, int64_t tn) {
    if (nv == 2) acc_tile(RM, 2, bt, b_full, c, ldc, a, a_rs, a_cs, b, boff, ldb, n, cols, zero, valid, ta, t_rs, tb, tn);
    else acc_tile(RM, 1, bt, b_full, c, ldc, a, a_rs, a_cs, b, boff, ldb, n, cols, zero, valid, ta, t_rs, tb, tn);
}

/* A product's tail (see matmul_tail): its a, (M, r) row-major from row 0;
 * the packed panel of its b for the current column panel; r. */
typedef struct {
    const float *a;
    const float *panel;
    int64_t r;
} tail_t;

/* c rows [m0,m1) of a column panel [k, k+kw), kw <= 16, over the n values
 * of l in one chunk. a points at a[m0, chunk start]; when pa is set, the
 * rows are read from it instead, in groups of AM (see pack_a), the last
 * group zero-padded, so a leftover of 1-5 rows still runs on the full
 * tile. Column v of the panel in the chunk's row l of b is element
 * boff + l*ldb + v: a packed panel (b_full) or b itself. With a tail
 * (tl not NULL), each tile ends with the tail's values. */
LORAC_ALWAYS_INLINE void acc_panel(const lorac_dtype_t bt, const int b_full, float *c, const float *a, int64_t a_rs,
                                   int64_t a_cs, const float *pa, const void *b, int64_t boff, int64_t ldb,
                                   int64_t K, int64_t m0, int64_t m1, int64_t k, int64_t kw, int64_t n, int zero,
                                   const tail_t *tl) {
    int nv = (int)((kw + 7) / 8);
    const int64_t tn = tl ? tl->r : 0;
    const float *tb = tl ? tl->panel : NULL;
    for (int64_t m = m0; m < m1;) {
        int64_t left = m1 - m;
        float *cm = c + m * K + k;
        const float *ta = tl ? tl->a + m * tn : NULL; /* the tile's first row of the tail's a */
        if (pa) {
            int rows = left >= AM ? AM : (int)left;
            acc_tile_nv(AM, nv, bt, b_full, cm, K, pa + (m - m0) * n, 1, AM, b, boff, ldb, n, kw, zero, rows, ta, tn, tb,
                        tn);
            m += rows;
        } else if (left >= AM) {
            acc_tile_nv(AM, nv, bt, b_full, cm, K, a + (m - m0) * a_rs, a_rs, a_cs, b, boff, ldb, n, kw, zero, AM, ta, tn,
                        tb, tn);
            m += AM;
        } else {
            acc_tile_nv(1, nv, bt, b_full, cm, K, a + (m - m0) * a_rs, a_rs, a_cs, b, boff, ldb, n, kw, zero, 1, ta, tn, tb,
                        tn);
            m += 1;
        }
    }
}

/* The n x kw block of b at rows l0.., columns k.. widened into the
 * contiguous buffer buf (row stride PW, zeros past kw), as one panel per
 * 16 columns (kw up to PACK_GROUP panels), panel i at buf + i·pstride. In
 * place, b's rows lie K elements apart and a tile's loads fall into a few
 * L1 sets; packed, the panel is one contiguous run, and 16-bit weights are
 * widened once per panel instead of once per row tile. Each row's run of
 * kw values is read in one go, so its page walk and prefetches serve all
 * the panels. The values are the same, so are the bits. */
LORAC_ALWAYS_INLINE void pack_panel(const lorac_dtype_t bt, float *buf, int64_t pstride, const void *b, int64_t K,
                                    int64_t k, int64_t kw, int64_t l0, int64_t n) {
    const int64_t es = (int64_t)lorac_dtype_size(bt), width = (kw + PW - 1) / PW * PW;
    for (int64_t l = 0; l < n; l++) {
        /* The rows are K elements apart, a page or more at the larger
         * shapes, where the hardware prefetcher does not follow: fetch the
         * row PACK_AHEAD on (every line of its run, and its last byte's). */
        if (l + PACK_AHEAD < n && bt == LORAC_DTYPE_NF4) { /* the run's blocks */
            int64_t e = (l0 + l + PACK_AHEAD) * K + k;
            for (int64_t q = e / LORAC_NF4_BLOCK; q <= (e + kw - 1) / LORAC_NF4_BLOCK; q++)
                _mm_prefetch((const char *)b + q * LORAC_NF4_BLOCK_BYTES, _MM_HINT_T0);
        } else if (l + PACK_AHEAD < n) {
            const char *ahead = (const char *)b + ((l0 + l + PACK_AHEAD) * K + k) * es;
            for (int64_t q = 0; q < kw * es; q += 64) _mm_prefetch(ahead + q, _MM_HINT_T0);
            _mm_prefetch(ahead + (kw - 1) * es, _MM_HINT_T0);
        }
        for (int64_t v = 0; v < width; v += 8)
            _mm256_storeu_ps(buf + v / PW * pstride + l * PW + v % PW, load_w_part(b, bt, (l0 + l) * K + k + v, kw - v));
    }
}

/* r[i] (8 rows of 8) becomes its transpose: r[c][i] = old r[i][c]. */
LORAC_ALWAYS_INLINE void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    /* u[4h + c] lane q of each 128-bit half: rows 4h..4h+3 of column 4·half + c */
    for (int h = 0; h < 8; h += 4) {
        u[h] = _mm256_shuffle_ps(t[h], t[h + 2], 0x44);
        u[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], 0xEE);
        u[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0x44);
        u[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) {
        r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
        r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
}

/* The rows' n values of a from a[m0, chunk start] in groups of AM rows,
 * interleaved, rows past the end zero: pa[g*AM*n + l*AM + i] =
 * a[m0 + g*AM + i, l]. For a stored transposed (a_cs != 1: the dw
 * product reads dout's columns; attention's dK and dV products read dS
 * and P that way), where a tile's broadcasts in place would walk AM
 * values a_cs apart, one cache line each per l, and for rows that alias
 * in L1 (acc_dtype). pa has PACK_A_SLACK floats past its last group.
 *
 * Whole groups are copied a vector at a time: transposed a (a_rs = 1)
 * holds a group's AM values at each l side by side, one masked load; row-
 * major a (a_cs = 1) goes 8 values of l at a time through an 8 x 8
 * transpose (AM rows and 8 - AM of zeros). Each l's 8-lane store runs
 * 8 - AM lanes into the next l's place, which the next store then
 * overwrites; the last one into the next group's first values (written
 * after it) or the slack. The same values as element by element, so the same bits. */
#define PACK_A_SLACK 8
LORAC_ALWAYS_INLINE void pack_a(float *pa, const float *a, int64_t a_rs, int64_t a_cs, int64_t rows, int64_t n) {
    const __m256i group_lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(AM), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int64_t g = 0; g < rows; g += AM) {
        float *dst = pa + g * n;
        const float *ag = a + g * a_rs;
        int valid = rows - g < AM ? (int)(rows - g) : AM;
        int64_t l = 0;
        if (valid == AM && a_rs == 1) {
            for (; l < n; l++) _mm256_storeu_ps(dst + l * AM, _mm256_maskload_ps(ag + l * a_cs, group_lanes));
        } else if (valid == AM && a_cs == 1) {
            for (; l + 8 <= n; l += 8) {
                __m256 r[8];
                /* each row 256 bytes on: the 6 streams, rows apart,
                 * outrun the hardware prefetcher with little work between */
                for (int i = 0; i < AM; i++) _mm_prefetch((const char *)(ag + i * a_rs + l + 64), _MM_HINT_T0);
                for (int i = 0; i < 8; i++) r[i] = i < AM ? _mm256_loadu_ps(ag + i * a_rs + l) : _mm256_setzero_ps();
                transpose8(r);
                for (int c = 0; c < 8; c++) _mm256_storeu_ps(dst + (l + c) * AM, r[c]);
            }
        }
        for (; l < n; l++)
            for (int i = 0; i < AM; i++) dst[l * AM + i] = i < valid ? ag[i * a_rs + l * a_cs] : 0.0f;
    }
}

/* pack_panel for b given transposed, (K,L): buf[l][j] = b[k + j, l0 + l],
 * zeros past kw. Blocks of 8 rows of b (8 values of j) by 8 values of l
 * are loaded, widened, transposed in registers and stored as 8 rows of the
 * buffer. */
LORAC_ALWAYS_INLINE void pack_panel_t(const lorac_dtype_t bt, float *buf, const void *b, int64_t L, int64_t k,
                                      int64_t kw, int64_t l0, int64_t n) {
    for (int64_t jb = 0; jb < PW; jb += 8)
        for (int64_t lb = 0; lb < n; lb += 8) {
            int64_t nl = n - lb < 8 ? n - lb : 8;
            __m256 r[8];
            for (int64_t i = 0; i < 8; i++)
                r[i] = jb + i < kw ? load_w_part(b, bt, (k + jb + i) * L + l0 + lb, nl) : _mm256_setzero_ps();
            transpose8(r);
            for (int64_t c = 0; c < nl; c++) _mm256_storeu_ps(buf + (lb + c) * PW + jb, r[c]);
        }
}

/* The dx product's panel (columns [k, k+kw) of w, its rows l0..l0+n-1)
 * from w pre-packed (P, lorac_pack_weight: P[g][k][j] = w[16g + j][k],
 * K columns): each 16 rows of the panel are one contiguous 16 x 16 block
 * of P, transposed in registers. l0 is a multiple of 16; columns past kw
 * are zeros. The values of pack_panel, so the same bits. */
LORAC_ALWAYS_INLINE void pack_panel_from_packed(float *buf, const float *P, int64_t K, int64_t k, int64_t kw,
                                                int64_t l0, int64_t n) {
    for (int64_t lb = 0; lb < n; lb += 16) {
        const float *block = P + ((l0 + lb) / 16 * K + k) * 16; /* row j: w[l0 + lb .. +15][k + j] */
        /* fetch the block two on: the blocks are 1 KB runs 16·K floats
         * apart, too far apart for the hardware prefetcher to follow */
        if (lb + 32 < n)
            for (int q = 0; q < 16 * 16; q += 16) _mm_prefetch((const char *)(block + 2 * 16 * K + q), _MM_HINT_T0);
        for (int jb = 0; jb < 16; jb += 8)
            for (int cb = 0; cb < 16; cb += 8) {
                __m256 r[8];
                for (int i = 0; i < 8; i++)
                    r[i] = jb + i < kw ? _mm256_loadu_ps(block + (jb + i) * 16 + cb) : _mm256_setzero_ps();
                transpose8(r); /* r[c]: w[l0 + lb + cb + c][k + jb .. +7] */
                for (int c = 0; c < 8 && lb + cb + c < n; c++) _mm256_storeu_ps(buf + (lb + cb + c) * PW + jb, r[c]);
            }
    }
}

/* acc_panel instantiated once per b form (packed f32, in-place f32,
 * in-place 16-bit), not inlined into each acc_block instance. */
LORAC_NOINLINE void panel_packed(float *c, const float *a, int64_t a_rs, int64_t a_cs, const float *pa,
                                 const float *buf, int64_t K, int64_t m0, int64_t m1, int64_t k, int64_t kw,
                                 int64_t n, int zero, const tail_t *tl) {
    acc_panel(LORAC_DTYPE_F32, 1, c, a, a_rs, a_cs, pa, buf, 0, PW, K, m0, m1, k, kw, n, zero, tl);
}

LORAC_NOINLINE void panel_inplace(lorac_dtype_t bt, float *c, const float *a, int64_t a_rs, int64_t a_cs,
                                  const float *pa, const void *b, int64_t boff, int64_t K, int64_t m0, int64_t m1,
                                  int64_t k, int64_t kw, int64_t n, int zero, const tail_t *tl) {
    if (bt == LORAC_DTYPE_F32) acc_panel(LORAC_DTYPE_F32, 0, c, a, a_rs, a_cs, pa, b, boff, K, K, m0, m1, k, kw, n, zero, tl);
    else if (bt == LORAC_DTYPE_BF16) acc_panel(LORAC_DTYPE_BF16, 0, c, a, a_rs, a_cs, pa, b, boff, K, K, m0, m1, k, kw, n, zero, tl);
    else {
        LORAC_ASSERT(bt == LORAC_DTYPE_F16); /* NF4 is always packed (acc_block) */
        acc_panel(LORAC_DTYPE_F16, 0, c, a, a_rs, a_cs, pa, b, boff, K, K, m0, m1, k, kw, n, zero, tl);
    }
}

/* c block += a · b (b_t = 0, b is (L,K)) or a · bᵀ (b_t = 1, b is (K,L)).
 * Loop order: blocks of mblock rows; chunks of lchunk values of l, whose
 * slice of a stays in L2 for every column panel; 16-column panels of b,
 * packed unless used in place for a few rows of c; row tiles. Every c
 * element still sees its l in increasing order, so neither the loop order
 * nor the chunk size changes a bit. A tail (tr > 0: ta, its a, (M, tr)
 * row-major; tb, its b in b's orientation, f32) runs in the last chunk's
 * tiles, its panel packed into tbuf beside each panel of b. */
LORAC_ALWAYS_INLINE void acc_block(const lorac_dtype_t bt, const int b_t, const int set, float *c, const float *a,
                                   int64_t a_rs, int64_t a_cs, const void *b, int64_t L, int64_t K, int64_t m0,
                                   int64_t m1, int64_t k0, int64_t k1, float *pa, float *buf, int64_t lchunk,
                                   int64_t mblock, const float *ta, const float *tb, int64_t tr, float *tbuf,
                                   const float *P) {
    /* b's rows a page or more apart: its panels packed PACK_GROUP at a time */
    const int far_rows = !P && !b_t && (int64_t)lorac_dtype_bytes(bt, K) >= 4096;
    const int64_t group = far_rows ? PACK_GROUP : 1;
    for (int64_t mb = m0; mb < m1; mb += mblock) {
        int64_t me = mb + mblock < m1 ? mb + mblock : m1;
        /* a panel serves more than one tile; with rows far apart, even a
         * tile and a few rows (a LoRA A's gradient, rank rows) pay for the
         * packing: in place, each tile reads b's rows again, one page each
         */
        int packed = P || b_t || bt == LORAC_DTYPE_NF4 || me - mb >= 2 * AM || (far_rows && me - mb > AM);
        for (int64_t l = 0; l < L; l += lchunk) {
            int64_t n = L - l < lchunk ? L - l : lchunk;
            const float *al = a + mb * a_rs + l * a_cs;
            if (pa) pack_a(pa, al, a_rs, a_cs, me - mb, n);
            int last = l + n == L && tr > 0;
            for (int64_t kg = k0; kg < k1; kg += PW * group) {
                int64_t gw = k1 - kg < PW * group ? k1 - kg : PW * group;
                if (packed && !b_t && !P) pack_panel(bt, buf, lchunk * PW, b, K, kg, gw, l, n);
                for (int64_t k = kg; k < kg + gw; k += PW) {
                    int64_t kw = kg + gw - k < PW ? kg + gw - k : PW;
                    tail_t tail = {ta, tbuf, tr}, *tl = NULL;
                    if (last) {
                        if (b_t) pack_panel_t(LORAC_DTYPE_F32, tbuf, tb, tr, k, kw, 0, tr);
                        else pack_panel(LORAC_DTYPE_F32, tbuf, 0, tb, K, k, kw, 0, tr);
                        tl = &tail;
                    }
                    if (packed) {
                        const float *panel;
                        if (P && b_t) {
                            panel = P + (k * L + l * PW); /* in place: k is a multiple of 16 */
                        } else {
                            if (P) pack_panel_from_packed(buf, P, K, k, kw, l, n);
                            else if (b_t) pack_panel_t(bt, buf, b, L, k, kw, l, n);
                            panel = buf + (b_t || P ? 0 : (k - kg) / PW * lchunk * PW);
                        }
                        panel_packed(c, al, a_rs, a_cs, pa, panel, K, mb, me, k, kw, n, set && l == 0, tl);
                    } else {
                        panel_inplace(bt, c, al, a_rs, a_cs, pa, b, l * K + k, K, mb, me, k, kw, n, set && l == 0, tl);
                    }
                }
            }
        }
    }
}

/* One instantiation per dtype so the widening is resolved at compile time.
 * The packed panel of b (LCHUNK x 16 floats) and the packed rows of a
 * (MBLOCK x LCHUNK floats) come from the heap. */
LORAC_ALWAYS_INLINE void acc_dtype(const int b_t, const int set, float *c, const float *a, int64_t a_rs,
                                   int64_t a_cs, const void *b, lorac_dtype_t bt, int64_t L, int64_t K, int64_t m0,
                                   int64_t m1, int64_t k0, int64_t k1, const float *ta, const float *tb, int64_t tr,
                                   const float *P) {
    /* Packing a pays when it is stored transposed and at least two column
     * panels reuse it; when its rows lie a multiple of 2 KB apart (rows of
     * 2048 or 5632 floats at the 110M and 1.1B shapes) and many panels
     * reuse it: a tile's 6 rows then fall into at most 2 of the L1's sets
     * (a set every 4 KB) and evict one another; and when PACK_A_PANELS (32)
     * or more panels reuse it, as the block's slice of a comes from L3 once
     * per panel (bench_kernel_ab, with the rule against without: 1.18x and
     * 1.20x on the two 110M products with 64 panels a thread, the others
     * unchanged; a threshold of 16 panels, which also packs for the 15M
     * shapes' 24, was no better). */
    int aliased = a_cs == 1 && a_rs % 512 == 0 && k1 - k0 >= 16 * PW;
    int many_panels = k1 - k0 >= PACK_A_PANELS * PW;
    /* from AM + 1 rows: packed, the rows past the last whole tile run as
     * one zero-padded tile instead of single-row tiles */
    int pack = (a_cs != 1 || aliased || many_panels) && m1 - m0 > AM && k1 - k0 >= 2 * PW;
    /* The rows in equal blocks of at most MBLOCK, whole tiles, so that
     * 1,040 rows run as 2 x 522, not 1,032 + 8 */
    int64_t nblocks = (m1 - m0 + MBLOCK - 1) / MBLOCK, rows = nblocks > 0 ? (m1 - m0 + nblocks - 1) / nblocks : AM;
    rows = (rows + AM - 1) / AM * AM; /* the last group padded */
    float *pa = pack ? malloc(sizeof(float) * (size_t)(rows * LCHUNK + PACK_A_SLACK)) : NULL;
    /* the forward on a repacked weight reads its panels in place: no buffer */
    const int need_buf = !(P && b_t);
    float *buf = need_buf ? aligned_alloc(32, sizeof(float) * LCHUNK * PW * PACK_GROUP) : NULL, *heap = buf;
    /* L in equal chunks of at most LCHUNK (a multiple of 8): 288 as one
     * chunk rather than 256 + 32, whose second pass over c does little */
    int64_t nchunks = (L + LCHUNK - 1) / LCHUNK, lchunk = nchunks > 0 ? (L + nchunks - 1) / nchunks : LCHUNK;
    lchunk = P ? (lchunk + 15) / 16 * 16 : (lchunk + 7) / 8 * 8; /* from P: chunks of whole 16-row blocks */
    _Alignas(32) float small[SMALL_LCHUNK * PW * PACK_GROUP];
    if ((need_buf && !buf) || (pack && !pa)) { /* out of memory: short chunks, a in place; the same bits, only slower */
        free(pa), pa = NULL;
        buf = small, lchunk = SMALL_LCHUNK;
    }
    _Alignas(32) float tbuf[LORAC_TAIL_MAX * PW];
    if (bt == LORAC_DTYPE_F32)
        acc_block(LORAC_DTYPE_F32, b_t, set, c, a, a_rs, a_cs, b, L, K, m0, m1, k0, k1, pa, buf, lchunk, rows, ta, tb, tr, tbuf, P);
    else if (bt == LORAC_DTYPE_BF16)
        acc_block(LORAC_DTYPE_BF16, b_t, set, c, a, a_rs, a_cs, b, L, K, m0, m1, k0, k1, pa, buf, lchunk, rows, ta, tb, tr, tbuf, P);
    else if (bt == LORAC_DTYPE_NF4)
        acc_block(LORAC_DTYPE_NF4, b_t, set, c, a, a_rs, a_cs, b, L, K, m0, m1, k0, k1, pa, buf, lchunk, rows, ta, tb, tr, tbuf, P);
    else
        acc_block(LORAC_DTYPE_F16, b_t, set, c, a, a_rs, a_cs, b, L, K, m0, m1, k0, k1, pa, buf, lchunk, rows, ta, tb, tr, tbuf, P);
    free(pa);
    free(heap);
}

static void avx2_matmul_acc(float *c, const float *a, int64_t a_rs, int64_t a_cs, const void *b,
                            lorac_dtype_t bt, int64_t M, int64_t L, int64_t K, int64_t m0,
                            int64_t m1, int64_t k0, int64_t k1) {
    (void)M;
    acc_dtype(0, 0, c, a, a_rs, a_cs, b, bt, L, K, m0, m1, k0, k1, NULL, NULL, 0, NULL);
}

static void avx2_matmul_acc_bt(float *c, const float *a, int64_t a_rs, int64_t a_cs, const void *b,
                               lorac_dtype_t bt, int64_t M, int64_t L, int64_t K, int64_t m0,
                               int64_t m1, int64_t k0, int64_t k1) {
    (void)M;
    acc_dtype(1, 0, c, a, a_rs, a_cs, b, bt, L, K, m0, m1, k0, k1, NULL, NULL, 0, NULL);
}

static void avx2_matmul_set_bt(float *c, const float *a, int64_t a_rs, int64_t a_cs, const void *b,
                               lorac_dtype_t bt, int64_t M, int64_t L, int64_t K, int64_t m0,
                               int64_t m1, int64_t k0, int64_t k1) {
    (void)M;
    acc_dtype(1, 1, c, a, a_rs, a_cs, b, bt, L, K, m0, m1, k0, k1, NULL, NULL, 0, NULL);
}

static void avx2_matmul_set(float *c, const float *a, int64_t a_rs, int64_t a_cs, const void *b,
                            lorac_dtype_t bt, int64_t M, int64_t L, int64_t K, int64_t m0,
                            int64_t m1, int64_t k0, int64_t k1) {
    (void)M;
    acc_dtype(0, 1, c, a, a_rs, a_cs, b, bt, L, K, m0, m1, k0, k1, NULL, NULL, 0, NULL);
}

static void avx2_matmul_tail(float *c, const float *a, int64_t a_rs, int64_t a_cs, const void *b, lorac_dtype_t bt,
                             int64_t M, int64_t L, int64_t K, int64_t m0, int64_t m1, int64_t k0, int64_t k1, int b_t,
                             int set, const float *ta, const float *tb, int64_t tr) {
    (void)M;
    LORAC_ASSERT(tr >= 0 && tr <= LORAC_TAIL_MAX);
    /* without a main sum the tail is the whole product: the same chains */
    if (L == 0) a = ta, a_rs = tr, a_cs = 1, b = tb, bt = LORAC_DTYPE_F32, L = tr, tr = 0;
    if (b_t && set) acc_dtype(1, 1, c, a, a_rs, a_cs, b, bt, L, K, m0, m1, k0, k1, ta, tb, tr, NULL);
    else if (b_t) acc_dtype(1, 0, c, a, a_rs, a_cs, b, bt, L, K, m0, m1, k0, k1, ta, tb, tr, NULL);
    else if (set) acc_dtype(0, 1, c, a, a_rs, a_cs, b, bt, L, K, m0, m1, k0, k1, ta, tb, tr, NULL);
    else acc_dtype(0, 0, c, a, a_rs, a_cs, b, bt, L, K, m0, m1, k0, k1, ta, tb, tr, NULL);
}

/* matmul_tail with b a pre-packed f32 weight (see lorac_pack_weight). */
static void avx2_matmul_packed(float *c, const float *a, int64_t a_rs, const float *P, int64_t M, int64_t L, int64_t K,
                               int64_t m0, int64_t m1, int64_t k0, int64_t k1, int b_t, int set, const float *ta,
                               const float *tb, int64_t tr) {
    (void)M;
    LORAC_ASSERT(tr >= 0 && tr <= LORAC_TAIL_MAX && (!b_t || k0 % PW == 0));
    if (L == 0) { /* no main sum: the tail alone, as matmul_tail */
        avx2_matmul_tail(c, a, a_rs, 1, P, LORAC_DTYPE_F32, M, L, K, m0, m1, k0, k1, b_t, set, ta, tb, tr);
        return;
    }
    if (b_t && set) acc_dtype(1, 1, c, a, a_rs, 1, NULL, LORAC_DTYPE_F32, L, K, m0, m1, k0, k1, ta, tb, tr, P);
    else if (b_t) acc_dtype(1, 0, c, a, a_rs, 1, NULL, LORAC_DTYPE_F32, L, K, m0, m1, k0, k1, ta, tb, tr, P);
    else if (set) acc_dtype(0, 1, c, a, a_rs, 1, NULL, LORAC_DTYPE_F32, L, K, m0, m1, k0, k1, ta, tb, tr, P);
    else acc_dtype(0, 0, c, a, a_rs, 1, NULL, LORAC_DTYPE_F32, L, K, m0, m1, k0, k1, ta, tb, tr, P);
}

static void avx2_convert(float *dst, const void *src, lorac_dtype_t dt, int64_t n) {
    if (dt == LORAC_DTYPE_NF4) {
        nf4_widen(dst, src, 0, n);
        return;
    }
    for (int64_t i = 0; i < n; i += 8) {
        int64_t m = n - i < 8 ? n - i : 8;
        __m256 v = dt == LORAC_DTYPE_F32    ? load_w_part(src, LORAC_DTYPE_F32, i, m)
                   : dt == LORAC_DTYPE_BF16 ? load_w_part(src, LORAC_DTYPE_BF16, i, m)
                                            : load_w_part(src, LORAC_DTYPE_F16, i, m);
        store_part(dst + i, v, m);
    }
}

/* e^x on 8 lanes for x >= EXP_MIN_ARG or -inf: the range reduction and
 * polynomial of softmax_expf (ops_internal.h), 2^n built in the exponent
 * field (n >= -126 there, so it is a normal float). */
LORAC_ALWAYS_INLINE __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(EXP_MIN_ARG);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ); /* -inf included */
    __m256 xc = _mm256_max_ps(x, lo);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(EXP_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_HI), xc);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
    __m256 y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

/* Sum of the 8 lanes of v added into a double accumulator. */
LORAC_ALWAYS_INLINE __m256d add_to_double(__m256d s, __m256 v) {
    s = _mm256_add_pd(s, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    return _mm256_add_pd(s, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

static double avx2_exp_sum(float *x, float shift, int64_t n) {
    __m256 sh = _mm256_set1_ps(shift);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) { /* two independent double chains */
        __m256 e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), sh));
        __m256 e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), sh));
        _mm256_storeu_ps(x + i, e0);
        _mm256_storeu_ps(x + i + 8, e1);
        s0 = add_to_double(s0, e0);
        s1 = add_to_double(s1, e1);
    }
    for (; i < n; i += 8) {
        int64_t m = n - i < 8 ? n - i : 8;
        /* lanes past the end are -inf, so they add 0 */
        float tmp[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
        memcpy(tmp, x + i, (size_t)m * sizeof(float));
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(tmp), sh));
        store_part(x + i, e, m);
        s0 = add_to_double(s0, e);
    }
    __m256d s = _mm256_add_pd(s0, s1);
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

const lorac_kernel_ops_t lorac_kernel_ops_avx2 = {
    "avx2", avx2_matmul_fwd, avx2_matmul_acc, avx2_matmul_acc_bt, avx2_matmul_set_bt, avx2_matmul_set, avx2_matmul_tail,
    avx2_matmul_packed, avx2_convert, avx2_exp_sum, lorac_attention_avx2,
    1,  /* decode pieces a thread: its four streams are longest in one piece */
    PW, /* split by whole panels: a 288-wide output is 9 + 9 */
};

#else /* compiled without AVX2/FMA/F16C flags: the dispatcher skips this path */
const lorac_kernel_ops_t lorac_kernel_ops_avx2 = {NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0};
#endif
