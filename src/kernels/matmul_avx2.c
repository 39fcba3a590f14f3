/* matmul_avx2.c — AVX2 + FMA + F16C block kernels for matmul.
 *
 * Same structure as matmul_avx512.c with 8-lane vectors and smaller tiles
 * (16 ymm registers instead of 32 zmm). AVX2 has no masked 16-bit loads, so
 * K tails go through a small zero-padded stack copy; every dot product is
 * still 8 lanes accumulated by FMA over k in order plus one fixed horizontal
 * reduction, whatever the tile shape (hence thread-count independence). */
#include "kernels_internal.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>
#include <string.h>

/* Forward tile: 2 rows of x times 4 rows of w = 8 accumulators + 4 weights
 * + 1 x = 13 of 16 registers. */
#define FT 2
#define FN 4
#define TCHUNK 64
/* acc tile: 4 rows of c times 2 vectors (16 columns) = 8 accumulators. */
#define AM 4
#define AV 2
#define LCHUNK 128

LORAC_ALWAYS_INLINE __m256 widen_w(__m128i h, lorac_dtype_t dt) {
    if (dt == LORAC_DTYPE_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

/* 8 elements of w starting at element i, widened to f32. */
LORAC_ALWAYS_INLINE __m256 load_w(const void *w, lorac_dtype_t dt, int64_t i) {
    if (dt == LORAC_DTYPE_F32) return _mm256_loadu_ps((const float *)w + i);
    return widen_w(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)), dt);
}

/* The first n (0..8) elements of w at i, the other lanes 0. The copy keeps
 * the load inside the buffer. */
LORAC_ALWAYS_INLINE __m256 load_w_part(const void *w, lorac_dtype_t dt, int64_t i, int64_t n) {
    if (n >= 8) return load_w(w, dt, i);
    if (dt == LORAC_DTYPE_F32) {
        float tmp[8] = {0};
        memcpy(tmp, (const float *)w + i, (size_t)n * sizeof(float));
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

/* out is (T,N), x is (T,K), w is (N,K) in dt; columns [n0,n1). */
LORAC_ALWAYS_INLINE void fwd_block(const lorac_dtype_t dt, float *out, const float *x,
                                   const void *w, const float *bias, int64_t T, int64_t K,
                                   int64_t N, int64_t n0, int64_t n1) {
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

static void avx2_matmul_fwd(float *out, const float *x, const void *w, lorac_dtype_t wt,
                            const float *bias, int64_t T, int64_t K, int64_t N, int64_t n0,
                            int64_t n1) {
    if (wt == LORAC_DTYPE_F32) fwd_block(LORAC_DTYPE_F32, out, x, w, bias, T, K, N, n0, n1);
    else if (wt == LORAC_DTYPE_BF16) fwd_block(LORAC_DTYPE_BF16, out, x, w, bias, T, K, N, n0, n1);
    else fwd_block(LORAC_DTYPE_F16, out, x, w, bias, T, K, N, n0, n1);
}

/* Accumulate micro-kernel: c rows m..m+RM-1 (stride ldc), RV vectors of 8
 * columns, of which only the first `cols` exist, += a[m.., l0:l1] ·
 * b[l0:l1, cols] (b block at element boff, row stride ldb). Each lane is one
 * FMA chain over l in increasing order starting from the stored c. */
LORAC_ALWAYS_INLINE void acc_tile(const int RM, const int RV, const lorac_dtype_t bt, float *c,
                                  int64_t ldc, const float *a, int64_t a_rs, int64_t a_cs,
                                  const void *b, int64_t boff, int64_t ldb, int64_t l0, int64_t l1,
                                  int64_t cols) {
    __m256 acc[AM][AV];
#pragma GCC unroll 4
    for (int i = 0; i < RM; i++)
#pragma GCC unroll 4
        for (int j = 0; j < RV; j++)
            acc[i][j] = load_w_part(c, LORAC_DTYPE_F32, i * ldc + 8 * j, cols - 8 * j);
    for (int64_t l = l0; l < l1; l++) {
        __m256 bv[AV];
#pragma GCC unroll 4
        for (int j = 0; j < RV; j++) bv[j] = load_w_part(b, bt, boff + l * ldb + 8 * j, cols - 8 * j);
#pragma GCC unroll 4
        for (int i = 0; i < RM; i++) {
            __m256 av = _mm256_set1_ps(a[i * a_rs + l * a_cs]);
#pragma GCC unroll 4
            for (int j = 0; j < RV; j++) acc[i][j] = _mm256_fmadd_ps(av, bv[j], acc[i][j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < RM; i++)
#pragma GCC unroll 4
        for (int j = 0; j < RV; j++) store_part(c + i * ldc + 8 * j, acc[i][j], cols - 8 * j);
}

/* c rows [m0,m1) of the column panel [k, k+kw), kw <= 16, over l in [l0,l1). */
LORAC_ALWAYS_INLINE void acc_panel(const lorac_dtype_t bt, float *c, const float *a, int64_t a_rs,
                                   int64_t a_cs, const void *b, int64_t K, int64_t m0, int64_t m1,
                                   int64_t k, int64_t kw, int64_t l0, int64_t l1) {
    for (int64_t m = m0; m < m1;) {
        int rm = m1 - m >= AM ? AM : 1;
        float *cm = c + m * K + k;
        const float *am = a + m * a_rs;
        if (kw == 8 * AV) {
            if (rm == AM) acc_tile(AM, AV, bt, cm, K, am, a_rs, a_cs, b, k, K, l0, l1, 8 * AV);
            else acc_tile(1, AV, bt, cm, K, am, a_rs, a_cs, b, k, K, l0, l1, 8 * AV);
        } else {
            for (int64_t v = 0; v < kw; v += 8) {
                if (rm == AM) acc_tile(AM, 1, bt, cm + v, K, am, a_rs, a_cs, b, k + v, K, l0, l1, kw - v);
                else acc_tile(1, 1, bt, cm + v, K, am, a_rs, a_cs, b, k + v, K, l0, l1, kw - v);
            }
        }
        m += rm;
    }
}

LORAC_ALWAYS_INLINE void acc_block(const lorac_dtype_t bt, float *c, const float *a, int64_t a_rs,
                                   int64_t a_cs, const void *b, int64_t L, int64_t K, int64_t m0,
                                   int64_t m1, int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; k += 8 * AV) {
        int64_t kw = k1 - k < 8 * AV ? k1 - k : 8 * AV;
        for (int64_t l = 0; l < L; l += LCHUNK) {
            int64_t le = l + LCHUNK < L ? l + LCHUNK : L;
            acc_panel(bt, c, a, a_rs, a_cs, b, K, m0, m1, k, kw, l, le);
        }
    }
}

static void avx2_matmul_acc(float *c, const float *a, int64_t a_rs, int64_t a_cs, const void *b,
                            lorac_dtype_t bt, int64_t M, int64_t L, int64_t K, int64_t m0,
                            int64_t m1, int64_t k0, int64_t k1) {
    (void)M;
    if (bt == LORAC_DTYPE_F32) acc_block(LORAC_DTYPE_F32, c, a, a_rs, a_cs, b, L, K, m0, m1, k0, k1);
    else if (bt == LORAC_DTYPE_BF16)
        acc_block(LORAC_DTYPE_BF16, c, a, a_rs, a_cs, b, L, K, m0, m1, k0, k1);
    else acc_block(LORAC_DTYPE_F16, c, a, a_rs, a_cs, b, L, K, m0, m1, k0, k1);
}

static void avx2_convert(float *dst, const void *src, lorac_dtype_t dt, int64_t n) {
    for (int64_t i = 0; i < n; i += 8) {
        int64_t m = n - i < 8 ? n - i : 8;
        __m256 v = dt == LORAC_DTYPE_F32    ? load_w_part(src, LORAC_DTYPE_F32, i, m)
                   : dt == LORAC_DTYPE_BF16 ? load_w_part(src, LORAC_DTYPE_BF16, i, m)
                                            : load_w_part(src, LORAC_DTYPE_F16, i, m);
        store_part(dst + i, v, m);
    }
}

const lorac_kernel_ops_t lorac_kernel_ops_avx2 = {
    "avx2", avx2_matmul_fwd, avx2_matmul_acc, NULL, NULL, avx2_convert, lorac_exp_sum_portable,
};

#else /* compiled without AVX2/FMA/F16C flags: the dispatcher skips this path */
const lorac_kernel_ops_t lorac_kernel_ops_avx2 = {NULL, NULL, NULL, NULL, NULL, NULL, NULL};
#endif
