/* attention_avx2.c — attention at inference on the AVX2 path: the
 * attention entry of its kernel table, attention_avx512.c's structure at 8
 * lanes. Scores go 8 positions a block for one query, or 2 positions by 4
 * queries that read the same rows: one accumulator a (query, position),
 * multiply-added over the head's dimensions in order, the 8 reduced
 * together by one transpose-and-add tree (lanes i and i + 4, then i + 2,
 * i + 1) that every lane goes through alike. The weighted sum of values
 * keeps the output in registers (64 dimensions a pass for one query, 16
 * for four) and adds the positions in order. So a query's bits do not
 * depend on what else its call or group holds. Head sizes that are not a
 * multiple of 8 (none of the supported models has one) go to the portable
 * loops. */
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
 * i + 1; the last level leaves sum 2k + h in lane 4h + k. */
LORAC_ALWAYS_INLINE __m256 reduce8(const __m256 a[8]) {
    __m256 b[4], c[2];
    #pragma GCC unroll 4
    for (int j = 0; j < 4; j++) /* lanes 0-3: a[2j] halves added; 4-7: a[2j+1]'s */
        b[j] = _mm256_add_ps(_mm256_permute2f128_ps(a[2 * j], a[2 * j + 1], 0x20),
                             _mm256_permute2f128_ps(a[2 * j], a[2 * j + 1], 0x31));
    #pragma GCC unroll 2
    for (int j = 0; j < 2; j++)
        c[j] = _mm256_add_ps(_mm256_shuffle_ps(b[2 * j], b[2 * j + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm256_shuffle_ps(b[2 * j], b[2 * j + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    __m256 e = _mm256_add_ps(_mm256_shuffle_ps(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm256_shuffle_ps(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm256_permutevar8x32_ps(e, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* Scores of Q queries (1 or 4) against 8 / Q rows at k, k + stride, ...
 * (rows past npos repeat the last): lane (8 / Q)·i + j for query i and
 * row j, scale · q[i]·k_j. */
LORAC_ALWAYS_INLINE __m256 scores8(const float *const *q, int Q, const char *k, int64_t stride, int npos, int64_t hd,
                                   float scale, lorac_dtype_t dt) {
    const int R = 8 / Q; /* rows */
    const char *r[8];
    __m256 acc[8];
    #pragma GCC unroll 8
    for (int j = 0; j < R; j++) r[j] = k + (j < npos ? j : npos - 1) * stride;
    #pragma GCC unroll 8
    for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t i = 0; i < hd; i += 8) {
        __m256 row[8];
        #pragma GCC unroll 8
        for (int j = 0; j < R; j++) row[j] = row8(r[j], i, dt);
        #pragma GCC unroll 4
        for (int qi = 0; qi < Q; qi++) {
            __m256 qv = _mm256_loadu_ps(q[qi] + i);
            #pragma GCC unroll 8
            for (int j = 0; j < R; j++) acc[R * qi + j] = _mm256_fmadd_ps(qv, row[j], acc[R * qi + j]);
        }
    }
    return _mm256_mul_ps(reduce8(acc), _mm256_set1_ps(scale));
}

/* scores[0 .. n) = their softmax, in place (softcap > 0: of their
 * soft-capped values). One compiled copy (noinline) for the one-query and
 * the group paths, so that both sum the exponentials in the same vector
 * order. */
LORAC_NOINLINE void softmax_row(float *scores, int32_t n, float softcap) {
    if (softcap > 0.0f)
        for (int32_t p = 0; p < n; p++) scores[p] = softcap_f32(scores[p], softcap);
    __m256 mx = _mm256_set1_ps(-INFINITY);
    float top = -INFINITY, sum = 0.0f, lanes[8];
    int32_t p = 0;
    for (; p + 8 <= n; p += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(scores + p));
    for (; p < n; p++) top = scores[p] > top ? scores[p] : top;
    _mm256_storeu_ps(lanes, mx);
    for (int j = 0; j < 8; j++) top = lanes[j] > top ? lanes[j] : top;
    /* softmax_expf: vectorised by the compiler, 8 lanes in this file */
    #pragma omp simd reduction(+ : sum)
    for (p = 0; p < n; p++) { scores[p] = softmax_expf(scores[p] - top); sum += scores[p]; }
    float inv = 1.0f / sum;
    #pragma omp simd
    for (p = 0; p < n; p++) scores[p] *= inv;
}

/* o[i][i0 .. i0 + 8·NC) ∩ [0, hd) = Σ_{p < n[i]} w[i][p] · v_p there, p in
 * order, for Q queries (1 or 4); positions below n_min belong to all. */
LORAC_ALWAYS_INLINE void weighted_sum(float *const *o, const float *const *w, const int32_t *n, int Q, int32_t n_min,
                                      int32_t n_max, const char *v, int64_t stride, int64_t i0, int64_t hd,
                                      lorac_dtype_t dt) {
    enum { NC_MAX = 8 };
    const int NC = Q == 1 ? 8 : 2; /* 8-lane chunks a pass: 8 or 8 accumulators in all */
    __m256 acc[4][NC_MAX];
    int64_t at[NC_MAX]; /* where chunk c reads: chunks past hd read the last one again, and are not stored */
    #pragma GCC unroll 8
    for (int c = 0; c < NC; c++) {
        at[c] = i0 + 8 * c < hd ? i0 + 8 * c : hd - 8;
        #pragma GCC unroll 4
        for (int qi = 0; qi < Q; qi++) acc[qi][c] = _mm256_setzero_ps();
    }
    int64_t b0 = i0 * (int64_t)lorac_dtype_size(dt), b1 = (i0 + 8 * NC < hd ? i0 + 8 * NC : hd) * (int64_t)lorac_dtype_size(dt);
    for (int32_t p = 0; p < n_max; p++) {
        const char *row = v + p * stride;
        prefetch_rows(v, stride, p + AHEAD, 1, n_max, b0, b1);
        __m256 r[NC_MAX];
        #pragma GCC unroll 8
        for (int c = 0; c < NC; c++) r[c] = row8(row, at[c], dt);
        #pragma GCC unroll 4
        for (int qi = 0; qi < Q; qi++) {
            if (p >= n_min && p >= n[qi]) continue; /* past this query's positions */
            __m256 wv = _mm256_set1_ps(w[qi][p]);
            #pragma GCC unroll 8
            for (int c = 0; c < NC; c++) acc[qi][c] = _mm256_fmadd_ps(wv, r[c], acc[qi][c]);
        }
    }
    #pragma GCC unroll 4
    for (int qi = 0; qi < Q; qi++)
        #pragma GCC unroll 8
        for (int c = 0; c < NC; c++)
            if (i0 + 8 * c < hd) _mm256_storeu_ps(o[qi] + i0 + 8 * c, acc[qi][c]);
}

/* Q = 1 or 4 queries over the same rows (Q and dt constants after
 * inlining); of 2 or 3 queries in 4 slots, the last one fills the rest.
 * Scores are stored for every position below the largest n: past a
 * query's own n they are never read (its scratch row holds max n_ctx). */
LORAC_ALWAYS_INLINE void attend(float *const *o_in, float *const *scores_in, const float *const *q_in,
                                const int32_t *n_in, int nq, int Q, const char *krows, const char *vrows,
                                int64_t stride, int64_t hd, float scale, float softcap, lorac_dtype_t dt) {
    const int R = 8 / Q; /* rows a block of scores */
    float *o[4], *sc[4];
    const float *q[4], *w[4];
    int32_t n[4], n_min = INT32_MAX, n_max = 0;
    for (int i = 0; i < Q; i++) {
        int src = i < nq ? i : nq - 1;
        o[i] = o_in[src], sc[i] = scores_in[src], q[i] = q_in[src], w[i] = sc[i], n[i] = n_in[src];
        n_min = n[i] < n_min ? n[i] : n_min, n_max = n[i] > n_max ? n[i] : n_max;
    }
    int64_t bytes = hd * (int64_t)lorac_dtype_size(dt);
    for (int32_t p = 0; p < n_max; p += R) {
        int npos = n_max - p >= R ? R : n_max - p;
        prefetch_rows(krows, stride, p + AHEAD, R, n_max, 0, bytes);
        __m256 s = scores8(q, Q, krows + p * stride, stride, npos, hd, scale, dt);
        if (npos == R && Q == 1) {
            _mm256_storeu_ps(sc[0] + p, s);
        } else if (npos == R) { /* two scores a query */
            __m128 lo = _mm256_castps256_ps128(s), hi = _mm256_extractf128_ps(s, 1);
            _mm_storel_pi((__m64 *)(sc[0] + p), lo), _mm_storeh_pi((__m64 *)(sc[1] + p), lo);
            _mm_storel_pi((__m64 *)(sc[2] + p), hi), _mm_storeh_pi((__m64 *)(sc[3] + p), hi);
        } else {
            float lanes[8];
            _mm256_storeu_ps(lanes, s);
            for (int qi = 0; qi < Q; qi++)
                for (int j = 0; j < npos; j++) sc[qi][p + j] = lanes[R * qi + j];
        }
    }
    for (int qi = 0; qi < nq && qi < Q; qi++) softmax_row(sc[qi], n[qi], softcap);
    for (int64_t i0 = 0; i0 < hd; i0 += 8 * (Q == 1 ? 8 : 2))
        weighted_sum(o, w, n, Q, n_min, n_max, vrows, stride, i0, hd, dt);
}

/* One query alone (a decode step without GQA) takes 8 positions a block;
 * more take four at a time, 2 positions a block. */
LORAC_ALWAYS_INLINE void attend_dt(float *const *o, float *const *scores, const float *const *q, const int32_t *n,
                                   int nq, const char *krows, const char *vrows, int64_t stride, int64_t hd,
                                   float scale, float softcap, lorac_dtype_t dt) {
    if (nq == 1) attend(o, scores, q, n, 1, 1, krows, vrows, stride, hd, scale, softcap, dt);
    else attend(o, scores, q, n, nq, 4, krows, vrows, stride, hd, scale, softcap, dt);
}

void lorac_attention_avx2(float *const *o, float *const *scores, const float *const *q, const int32_t *n, int nq,
                          const char *krows, const char *vrows, int64_t stride, lorac_dtype_t kv, int64_t hd,
                          float scale, float softcap) {
    if (hd % 8) lorac_attention_portable(o, scores, q, n, nq, krows, vrows, stride, kv, hd, scale, softcap);
    else if (kv == LORAC_DTYPE_BF16)
        attend_dt(o, scores, q, n, nq, krows, vrows, stride, hd, scale, softcap, LORAC_DTYPE_BF16);
    else if (kv == LORAC_DTYPE_F16)
        attend_dt(o, scores, q, n, nq, krows, vrows, stride, hd, scale, softcap, LORAC_DTYPE_F16);
    else attend_dt(o, scores, q, n, nq, krows, vrows, stride, hd, scale, softcap, LORAC_DTYPE_F32);
}

#endif
