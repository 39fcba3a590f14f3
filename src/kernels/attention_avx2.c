/* attention_avx2.c — one query head's attention (inference) on the AVX2
 * path: the attention_head entry of its kernel table. The structure of
 * attention_avx512.c at 8 lanes: scores 8 positions at a time, one
 * accumulator a position reduced together by one transpose-and-add tree
 * (lanes i and i + 4, then i + 2, i + 1) that every lane goes through
 * alike, the output kept in registers (up to 64 dimensions a pass) while
 * the positions are added in order. A query's bits do not depend on what
 * else is in the call. A group of queries over the same rows is taken one
 * query at a time. Head sizes that are not a multiple of 8 (none of the
 * supported models has one) go to the portable loops. */
#include "kernels_internal.h"
#include "ops_internal.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>

/* Cache rows fetched ahead (see attention_avx512.c). */
#define AHEAD 16

/* 8 values of a cache row from element i, widened to f32. */
LORAC_ALWAYS_INLINE __m256 row8(const char *row, int64_t i, lorac_dtype_t dt) {
    if (dt == LORAC_DTYPE_F32) return _mm256_loadu_ps((const float *)row + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + i));
    if (dt == LORAC_DTYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* Lane j = the sum of a[j]'s 8 lanes: lanes i and i + 4 added, then i + 2,
 * i + 1; the last level leaves score 2k + h in lane 4h + k. */
LORAC_ALWAYS_INLINE __m256 reduce8(const __m256 a[8]) {
    __m256 b[4], c[2];
    #pragma GCC unroll 16
    for (int j = 0; j < 4; j++) /* lanes 0-3: a[2j] halves added; 4-7: a[2j+1]'s */
        b[j] = _mm256_add_ps(_mm256_permute2f128_ps(a[2 * j], a[2 * j + 1], 0x20),
                             _mm256_permute2f128_ps(a[2 * j], a[2 * j + 1], 0x31));
    #pragma GCC unroll 16
    for (int j = 0; j < 2; j++)
        c[j] = _mm256_add_ps(_mm256_shuffle_ps(b[2 * j], b[2 * j + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm256_shuffle_ps(b[2 * j], b[2 * j + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    __m256 e = _mm256_add_ps(_mm256_shuffle_ps(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm256_shuffle_ps(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm256_permutevar8x32_ps(e, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* q · k for the npos <= 8 rows at k, k + stride, ...; lane j for row j
 * (rows past npos repeat the last, their lanes unused). */
LORAC_ALWAYS_INLINE __m256 dots8(const float *q, const char *k, int64_t stride, int npos, int64_t hd,
                                 lorac_dtype_t dt) {
    const char *r[8];
    __m256 acc[8];
    #pragma GCC unroll 16
    for (int j = 0; j < 8; j++) r[j] = k + (j < npos ? j : npos - 1) * stride, acc[j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < hd; i += 8) {
        __m256 qv = _mm256_loadu_ps(q + i);
        #pragma GCC unroll 16
        for (int j = 0; j < 8; j++) acc[j] = _mm256_fmadd_ps(qv, row8(r[j], i, dt), acc[j]);
    }
    return reduce8(acc);
}

/* o[i0 .. i0 + 8·NC) = Σ_p w[p] · v_p there, p in order. */
LORAC_ALWAYS_INLINE void weighted_sum(float *o, const float *w, const char *v, int64_t stride, int32_t n, int64_t i0,
                                      int64_t hd, int nc, lorac_dtype_t dt) {
    __m256 acc[8];
    #pragma GCC unroll 16
    for (int c = 0; c < nc; c++) acc[c] = _mm256_setzero_ps();
    int64_t bytes = hd * (dt == LORAC_DTYPE_F32 ? 4 : 2);
    for (int32_t p = 0; p < n; p++) {
        const char *row = v + p * stride;
        if (p + AHEAD < n && i0 == 0)
            for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(row + AHEAD * stride + b, _MM_HINT_T0);
        __m256 wv = _mm256_set1_ps(w[p]);
        #pragma GCC unroll 16
        for (int c = 0; c < nc; c++) acc[c] = _mm256_fmadd_ps(wv, row8(row, i0 + 8 * c, dt), acc[c]);
    }
    #pragma GCC unroll 16
    for (int c = 0; c < nc; c++) _mm256_storeu_ps(o + i0 + 8 * c, acc[c]);
}

/* The head in one dtype (dt a constant after inlining); hd % 8 == 0. */
LORAC_ALWAYS_INLINE void head(float *o, float *scores, const float *q, const char *krows, const char *vrows,
                              int64_t stride, int32_t n, int64_t hd, float scale, lorac_dtype_t dt) {
    int64_t bytes = hd * (dt == LORAC_DTYPE_F32 ? 4 : 2);
    __m256 sc = _mm256_set1_ps(scale), mx = _mm256_set1_ps(-INFINITY);
    float top = -INFINITY, sum = 0.0f;
    for (int32_t p = 0; p < n; p += 8) {
        int npos = n - p >= 8 ? 8 : n - p;
        for (int j = 0; j < 8 && p + AHEAD + j < n; j++)
            for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(krows + (p + AHEAD + j) * stride + b, _MM_HINT_T0);
        __m256 s = _mm256_mul_ps(dots8(q, krows + p * stride, stride, npos, hd, dt), sc);
        if (npos == 8) {
            _mm256_storeu_ps(scores + p, s);
            mx = _mm256_max_ps(mx, s);
        } else {
            float tmp[8];
            _mm256_storeu_ps(tmp, s);
            memcpy(scores + p, tmp, sizeof(float) * (size_t)npos);
            for (int j = 0; j < npos; j++) top = tmp[j] > top ? tmp[j] : top;
        }
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, mx);
    for (int j = 0; j < 8; j++) top = lanes[j] > top ? lanes[j] : top;
    /* softmax_expf: vectorised by the compiler, 8 lanes in this file */
    #pragma omp simd reduction(+ : sum)
    for (int32_t p = 0; p < n; p++) { scores[p] = softmax_expf(scores[p] - top); sum += scores[p]; }
    float inv = 1.0f / sum;
    #pragma omp simd
    for (int32_t p = 0; p < n; p++) scores[p] *= inv;
    for (int64_t i0 = 0; i0 < hd; i0 += 64) {
        switch ((hd - i0 >= 64 ? 64 : hd - i0) / 8) { /* 8-lane chunks in this pass */
        case 1: weighted_sum(o, scores, vrows, stride, n, i0, hd, 1, dt); break;
        case 2: weighted_sum(o, scores, vrows, stride, n, i0, hd, 2, dt); break;
        case 3: weighted_sum(o, scores, vrows, stride, n, i0, hd, 3, dt); break;
        case 4: weighted_sum(o, scores, vrows, stride, n, i0, hd, 4, dt); break;
        case 5: weighted_sum(o, scores, vrows, stride, n, i0, hd, 5, dt); break;
        case 6: weighted_sum(o, scores, vrows, stride, n, i0, hd, 6, dt); break;
        case 7: weighted_sum(o, scores, vrows, stride, n, i0, hd, 7, dt); break;
        default: weighted_sum(o, scores, vrows, stride, n, i0, hd, 8, dt); break;
        }
    }
}

void lorac_attention_avx2(float *const *o, float *const *scores, const float *const *q, const int32_t *n, int nq,
                          const char *krows, const char *vrows, int64_t stride, lorac_dtype_t kv, int64_t hd,
                          float scale) {
    if (hd % 8) {
        lorac_attention_portable(o, scores, q, n, nq, krows, vrows, stride, kv, hd, scale);
        return;
    }
    for (int i = 0; i < nq; i++) {
        if (kv == LORAC_DTYPE_BF16) head(o[i], scores[i], q[i], krows, vrows, stride, n[i], hd, scale, LORAC_DTYPE_BF16);
        else if (kv == LORAC_DTYPE_F16) head(o[i], scores[i], q[i], krows, vrows, stride, n[i], hd, scale, LORAC_DTYPE_F16);
        else head(o[i], scores[i], q[i], krows, vrows, stride, n[i], hd, scale, LORAC_DTYPE_F32);
    }
}

#endif
