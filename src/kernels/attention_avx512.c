/* attention_avx512.c — attention at inference on the AVX-512 path: the
 * attention entry of its kernel table.
 *
 * Scores are taken 16 cache positions at a time: one accumulator a
 * position, 16 lanes each, multiply-added over the head's dimensions in
 * order, then the 16 accumulators reduced together into one vector, score
 * j in lane j. The reduction is a transpose-and-add tree (30 shuffles and
 * 15 adds for 16 scores, where a horizontal sum per score costs 8
 * operations in a chain), and every lane goes through the same tree
 * (halves, quarters, pairs, neighbours), so a position's score depends on
 * its own key and the query only: a short last block gives the bits a
 * full one would. The weighted sum of values keeps the output in
 * registers (64 dimensions a pass) and adds the positions in order.
 * So a query's result does not depend on what else is in the call: a
 * prompt gives the bits of its tokens one by one.
 *
 * Queries that read the same rows (a prompt's tokens, the heads that
 * share a kv head) are taken up to four at a time: each cache row loaded
 * and widened serves all four, which keeps the rows' reads in L1 (from L2
 * a query at a time, they were what a score cost: 256 bytes of key and
 * as many of value a position at 64 dimensions). Scores then go 4
 * positions by 4 queries into the 16 accumulators; as every accumulator
 * goes through the same tree, a score's bits are those of the one-query
 * path. */
#include "kernels_internal.h"
#include "ops_internal.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__F16C__)

#include <immintrin.h>

/* Cache rows fetched ahead (a head's rows lie KVH·hd apart, a stride the
 * hardware prefetchers do not follow). */
#define AHEAD 16
/* The weighted sums take the head's dimensions 64 at a time (4 vectors a
 * query, 16 accumulators for 4 queries); a short last pass is masked. */
#define PASS 64

/* The lanes of the 16 elements from i that lie within hd. */
LORAC_ALWAYS_INLINE __mmask16 chunk_mask(int64_t i, int64_t hd) {
    int64_t left = hd - i;
    return left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1);
}

/* 16 values of a cache row from element i, widened to f32; lanes outside
 * m are 0. bf16 is the top half of an f32; f16 goes through vcvtph2ps. */
LORAC_ALWAYS_INLINE __m512 row16(const char *row, int64_t i, __mmask16 m, lorac_dtype_t dt) {
    if (dt == LORAC_DTYPE_F32) return _mm512_maskz_loadu_ps(m, (const float *)row + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + i);
    if (dt == LORAC_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Lane j = the sum of a[j]'s 16 lanes. Each level adds lanes i and i + 8,
 * then i + 4, i + 2, i + 1, two accumulators a shuffle pair; the last
 * level leaves sum 4r + q in lane 4q + r, which one permute undoes. */
LORAC_ALWAYS_INLINE __m512 reduce16(const __m512 a[16]) {
    __m512 b[8], c[4], d[2];
    #pragma GCC unroll 8
    for (int j = 0; j < 8; j++) /* lanes 0-7: a[2j] halves added; 8-15: a[2j+1]'s */
        b[j] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * j], a[2 * j + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(a[2 * j], a[2 * j + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    #pragma GCC unroll 4
    for (int j = 0; j < 4; j++) /* quarter q: sum 4j + q, 4 lanes */
        c[j] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * j], b[2 * j + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(b[2 * j], b[2 * j + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    #pragma GCC unroll 2
    for (int j = 0; j < 2; j++) /* quarter q: lanes 0-1 sum 8j + q, lanes 2-3 sum 8j + 4 + q */
        d[j] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * j], c[2 * j + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(c[2 * j], c[2 * j + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 e = _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(order, e);
}

/* Scores of Q queries (1 or 4) against 16 / Q rows at k, k + stride, ...
 * (rows past npos repeat the last): lane (16 / Q)·i + j for query i and
 * row j, scale · q[i]·k_j. */
LORAC_ALWAYS_INLINE __m512 scores16(const float *const *q, int Q, const char *k, int64_t stride, int npos, int64_t hd,
                                    float scale, lorac_dtype_t dt) {
    const int R = 16 / Q; /* rows */
    const char *r[16];
    __m512 acc[16];
    #pragma GCC unroll 16
    for (int j = 0; j < R; j++) r[j] = k + (j < npos ? j : npos - 1) * stride;
    #pragma GCC unroll 16
    for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
    for (int64_t i = 0; i < hd; i += 16) {
        __mmask16 m = chunk_mask(i, hd);
        __m512 row[16];
        #pragma GCC unroll 16
        for (int j = 0; j < R; j++) row[j] = row16(r[j], i, m, dt);
        #pragma GCC unroll 4
        for (int qi = 0; qi < Q; qi++) {
            __m512 qv = _mm512_maskz_loadu_ps(m, q[qi] + i);
            #pragma GCC unroll 16
            for (int j = 0; j < R; j++) acc[R * qi + j] = _mm512_fmadd_ps(qv, row[j], acc[R * qi + j]);
        }
    }
    return _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(scale));
}

/* scores[0 .. n) = softmax of scores[0 .. n), whose largest is top, in
 * place (softcap > 0: of their soft-capped values, whose largest is top's).
 * One compiled copy (noinline) for the one-query and the group paths, so
 * that both sum the exponentials in the same vector order. */
LORAC_NOINLINE void softmax_row(float *scores, int32_t n, float top, float softcap) {
    if (softcap > 0.0f) {
        for (int32_t p = 0; p < n; p++) scores[p] = softcap_f32(scores[p], softcap);
        top = softcap_f32(top, softcap);
    }
    float sum = 0.0f;
    /* softmax_expf: vectorised by the compiler, 16 lanes in this file */
    #pragma omp simd reduction(+ : sum)
    for (int32_t p = 0; p < n; p++) { scores[p] = softmax_expf(scores[p] - top); sum += scores[p]; }
    float inv = 1.0f / sum;
    #pragma omp simd
    for (int32_t p = 0; p < n; p++) scores[p] *= inv;
}

/* o[i][i0 .. i0 + PASS) ∩ [0, hd) = Σ_{p < n[i]} w[i][p] · v_p there, p in
 * order, for Q queries (1 or 4); positions below n_min belong to all. */
LORAC_ALWAYS_INLINE void weighted_sum(float *const *o, const float *const *w, const int32_t *n, int Q, int32_t n_min,
                                      int32_t n_max, const char *v, int64_t stride, int64_t i0, int64_t hd,
                                      lorac_dtype_t dt) {
    enum { NC = PASS / 16 };
    __m512 acc[4][NC];
    __mmask16 m[NC];
    #pragma GCC unroll 4
    for (int c = 0; c < NC; c++) {
        m[c] = chunk_mask(i0 + 16 * c, hd);
        #pragma GCC unroll 4
        for (int qi = 0; qi < Q; qi++) acc[qi][c] = _mm512_setzero_ps();
    }
    int64_t b0 = i0 * (int64_t)lorac_dtype_size(dt), b1 = (i0 + PASS < hd ? i0 + PASS : hd) * (int64_t)lorac_dtype_size(dt);
    for (int32_t p = 0; p < n_max; p++) {
        const char *row = v + p * stride;
        prefetch_rows(v, stride, p + AHEAD, 1, n_max, b0, b1);
        __m512 r[NC];
        #pragma GCC unroll 4
        for (int c = 0; c < NC; c++) r[c] = row16(row, i0 + 16 * c, m[c], dt);
        #pragma GCC unroll 4
        for (int qi = 0; qi < Q; qi++) {
            if (p >= n_min && p >= n[qi]) continue; /* past this query's positions */
            __m512 wv = _mm512_set1_ps(w[qi][p]);
            #pragma GCC unroll 4
            for (int c = 0; c < NC; c++) acc[qi][c] = _mm512_fmadd_ps(wv, r[c], acc[qi][c]);
        }
    }
    #pragma GCC unroll 4
    for (int qi = 0; qi < Q; qi++)
        #pragma GCC unroll 4
        for (int c = 0; c < NC; c++) _mm512_mask_storeu_ps(o[qi] + i0 + 16 * c, m[c], acc[qi][c]);
}

/* Q = 1 or 4 queries over the same rows (Q and dt constants after
 * inlining); of 2 or 3 queries in 4 slots, the last one fills the rest,
 * whose scores are not stored (their outputs are the same bits again). */
LORAC_ALWAYS_INLINE void attend(float *const *o_in, float *const *scores_in, const float *const *q_in,
                                const int32_t *n_in, int nq, int Q, const char *krows, const char *vrows,
                                int64_t stride, int64_t hd, float scale, float softcap, lorac_dtype_t dt) {
    const int R = 16 / Q; /* rows a block of scores */
    float *o[4], *sc[4];
    const float *q[4], *w[4];
    int32_t n[4], n_min = INT32_MAX, n_max = 0;
    for (int i = 0; i < Q; i++) {
        int src = i < nq ? i : nq - 1;
        o[i] = o_in[src], sc[i] = scores_in[src], q[i] = q_in[src], w[i] = sc[i], n[i] = n_in[src];
        n_min = n[i] < n_min ? n[i] : n_min, n_max = n[i] > n_max ? n[i] : n_max;
    }
    int64_t bytes = hd * (int64_t)lorac_dtype_size(dt);
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int32_t p = 0; p < n_max; p += R) {
        int npos = n_max - p >= R ? R : n_max - p;
        prefetch_rows(krows, stride, p + AHEAD, R, n_max, 0, bytes);
        __m512 s = scores16(q, Q, krows + p * stride, stride, npos, hd, scale, dt);
        __mmask16 valid = 0; /* lane R·i + j: position p + j is one of query i's */
        for (int qi = 0; qi < nq && qi < Q; qi++) {
            int own = n[qi] - p >= R ? R : n[qi] - p > 0 ? n[qi] - p : 0;
            valid |= (__mmask16)(((1u << own) - 1) << (R * qi));
        }
        if (Q == 1) {
            _mm512_mask_storeu_ps(sc[0] + p, valid, s);
        } else {
            _mm_mask_storeu_ps(sc[0] + p, (__mmask8)(valid & 15), _mm512_extractf32x4_ps(s, 0));
            _mm_mask_storeu_ps(sc[1] + p, (__mmask8)((valid >> 4) & 15), _mm512_extractf32x4_ps(s, 1));
            _mm_mask_storeu_ps(sc[2] + p, (__mmask8)((valid >> 8) & 15), _mm512_extractf32x4_ps(s, 2));
            _mm_mask_storeu_ps(sc[3] + p, (__mmask8)((valid >> 12) & 15), _mm512_extractf32x4_ps(s, 3));
        }
        mx = _mm512_mask_max_ps(mx, valid, mx, s);
    }
    float top[16]; /* query i's largest score is among lanes R·i .. R·i + R - 1 */
    _mm512_storeu_ps(top, mx);
    for (int qi = 0; qi < nq && qi < Q; qi++) {
        float best = top[R * qi];
        for (int j = 1; j < R; j++) best = top[R * qi + j] > best ? top[R * qi + j] : best;
        softmax_row(sc[qi], n[qi], best, softcap);
    }
    for (int64_t i0 = 0; i0 < hd; i0 += PASS) weighted_sum(o, w, n, Q, n_min, n_max, vrows, stride, i0, hd, dt);
}

/* One query alone (a decode step without GQA) takes 16 positions a block;
 * more take four at a time, 4 positions a block. */
LORAC_ALWAYS_INLINE void attend_dt(float *const *o, float *const *scores, const float *const *q, const int32_t *n,
                                   int nq, const char *krows, const char *vrows, int64_t stride, int64_t hd,
                                   float scale, float softcap, lorac_dtype_t dt) {
    if (nq == 1) attend(o, scores, q, n, 1, 1, krows, vrows, stride, hd, scale, softcap, dt);
    else attend(o, scores, q, n, nq, 4, krows, vrows, stride, hd, scale, softcap, dt);
}

void lorac_attention_avx512(float *const *o, float *const *scores, const float *const *q, const int32_t *n, int nq,
                            const char *krows, const char *vrows, int64_t stride, lorac_dtype_t kv, int64_t hd,
                            float scale, float softcap) {
    if (kv == LORAC_DTYPE_BF16)
        attend_dt(o, scores, q, n, nq, krows, vrows, stride, hd, scale, softcap, LORAC_DTYPE_BF16);
    else if (kv == LORAC_DTYPE_F16)
        attend_dt(o, scores, q, n, nq, krows, vrows, stride, hd, scale, softcap, LORAC_DTYPE_F16);
    else attend_dt(o, scores, q, n, nq, krows, vrows, stride, hd, scale, softcap, LORAC_DTYPE_F32);
}

#endif
