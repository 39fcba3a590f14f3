/* matmul_avx512.c — AVX-512 (F, BW, VL, DQ) block kernels for matmul.
 *
 * Weights stay in their dtype in memory and are widened in registers:
 * bf16 is the top half of an f32 (zero-extend, shift left 16), f16 goes
 * through vcvtph2ps. K tails use masked loads, so there is no scalar tail and
 * every dot product has the same structure whatever the tile shape: 16 lanes
 * accumulated by FMA over k in order, then one fixed horizontal reduction.
 * That is why a 4x4 tile, a 1x4 tile and a 1x1 tile give bitwise the same
 * value for the same (t,n), and why thread count does not change results. */
#include "kernels_internal.h"
#include "ops_internal.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__F16C__)

#include <immintrin.h>
#include <stdlib.h>

/* Forward tile: up to FT rows of x (T) times up to FN rows of w (N):
 * 24 zmm accumulators + 4 x + 1 weight = 29 of 32 registers. Each weight
 * vector loaded and widened is used FT times, each x vector FN times. The
 * x rows come from L2 (see TCHUNK), so FN sets the FMAs per L2 load: at 4
 * the tile waited on L2 at about half the FMA rate; 6 is the most that
 * fits the registers. */
#define FT 4
#define FN 6
/* Rows of x per pass over a block of w: 64 rows of x (K floats each) stay in
 * L2 while the FN weight rows of a tile stay in L1. */
#define TCHUNK 64
/* acc tile: up to AM rows of c times AV vectors (64 columns): 24 zmm
 * accumulators, each step 4 loads of b and 6 broadcasts of a for 24 FMAs
 * (4 rows: 8 loads for 16; measured a few % faster at the 1.1B shapes,
 * within noise elsewhere). The loops over the tile carry unroll 8 pragmas:
 * at unroll 4 GCC left 6-row arrays on the stack. l is blocked by LCHUNK:
 * c is loaded and stored once per chunk, and a 512 x 64 panel of b (128 KB,
 * from L2) ran faster than a 128 x 64 one held in L1 at the 1.1B and
 * LM-head shapes (single-threaded timings of this file's kernels). */
#define AM 6
#define AV 4
/* LCHUNK and MBLOCK can be set from the compiler's command line as
 * LORAC_AVX512_<name>, for bench/bench_kernel_ab (ISA=avx512). */
#ifndef LORAC_AVX512_LCHUNK
#define LORAC_AVX512_LCHUNK 512
#endif
#define LCHUNK LORAC_AVX512_LCHUNK
#define SMALL_LCHUNK 128 /* when LCHUNK's panel cannot be allocated: 32 KB on the stack */
/* Rows of c per pass over b (a multiple of AM): their LCHUNK-wide slice of
 * a, when packed, is 1 MB and stays in L2 while every column panel uses it. */
#ifndef LORAC_AVX512_MBLOCK
#define LORAC_AVX512_MBLOCK 510
#endif
#define MBLOCK LORAC_AVX512_MBLOCK
/* Rows that run as one block all the same: a 512-row batch (the 1.1B and
 * 0.5B shapes' 2 x 256 tokens) as 258 + 254 rows reads each weight from
 * memory twice and gathers each dx panel twice; as one block of 512 (its
 * slice of a, 1 MB, still in L2) bench_kernel_ab's 1.1B dx products read
 * B/A 0.992-1.033 in two runs (7 of 8 above 1), and bench_train_ab's 1.1B
 * step was 0.8% shorter (median of 6 pairs; its dx products 1.7% faster). */
#define MBLOCK_ONE 516
/* Bytes ahead in each of decode's four weight streams that fwd_row4
 * prefetches. 2048 (128 lines in flight a core, where the AVX2 path's 512
 * gave 32): in bench_generate_ab.sh's turn-about runs against 512 on the
 * Intel Xeon, 110M-shape decode went 11.8% faster at BF16 and 2.4% at F32
 * (medians of 8 and 6 pairs); the 15M shape, whose weights stay in L3,
 * moved by under 1%; 4096 ran at 0.882x of 2048 at 110M BF16 (6 pairs). */
#define DECODE_AHEAD 2048

/* 16 elements of a weight row starting at element i, widened to f32. */
LORAC_ALWAYS_INLINE __m512 load_w(const void *w, lorac_dtype_t dt, int64_t i) {
    if (dt == LORAC_DTYPE_F32) return _mm512_loadu_ps((const float *)w + i);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i));
    if (dt == LORAC_DTYPE_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* The same for the lanes set in m; the others are 0 (and never read, so a
 * tail at the end of a buffer cannot fault). */
LORAC_ALWAYS_INLINE __m512 load_w_mask(const void *w, lorac_dtype_t dt, int64_t i, __mmask16 m) {
    if (dt == LORAC_DTYPE_F32) return _mm512_maskz_loadu_ps(m, (const float *)w + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + i);
    if (dt == LORAC_DTYPE_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

LORAC_ALWAYS_INLINE __mmask16 tail_mask(int64_t n) {
    return (__mmask16)(n >= 16 ? 0xffffu : (1u << n) - 1u);
}

/* Fixed-order horizontal sum: halves, then quarters, ... */
LORAC_ALWAYS_INLINE float hsum(__m512 v) {
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    return _mm_cvtss_f32(s4);
}

/* dst (n) = src[off .. off+n) widened to f32; masked tail, no scalar loop. */
LORAC_ALWAYS_INLINE void widen(const lorac_dtype_t dt, float *dst, const void *src, int64_t off,
                               int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load_w(src, dt, off + i));
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(dst + i, m, load_w_mask(src, dt, off + i, m));
    }
}

/* Forward micro-kernel. x points at row t0 (RT rows of K), w row n0 is at
 * element offset woff (RN rows of K), out at out[t0,n0] with row stride N,
 * bias at bias[n0] or NULL.
 * out[t0+i, n0+j] = hsum(Σ_k x[i,k]·w[j,k] per lane) (+ bias[j]). */
LORAC_ALWAYS_INLINE void fwd_tile(const int RT, const int RN, const lorac_dtype_t dt, float *out,
                                  int64_t N, const float *x, const void *w, int64_t woff,
                                  const float *bias, int64_t K) {
    __m512 acc[FT][FN];
#pragma GCC unroll 4
    for (int i = 0; i < RT; i++)
#pragma GCC unroll 6
        for (int j = 0; j < RN; j++) acc[i][j] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 xv[FT];
#pragma GCC unroll 4
        for (int i = 0; i < RT; i++) xv[i] = _mm512_loadu_ps(x + i * K + k);
#pragma GCC unroll 6
        for (int j = 0; j < RN; j++) {
            __m512 wv = load_w(w, dt, woff + j * K + k);
#pragma GCC unroll 4
            for (int i = 0; i < RT; i++) acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
        }
    }
    if (k < K) {
        __mmask16 m = tail_mask(K - k);
        __m512 xv[FT];
#pragma GCC unroll 4
        for (int i = 0; i < RT; i++) xv[i] = _mm512_maskz_loadu_ps(m, x + i * K + k);
#pragma GCC unroll 6
        for (int j = 0; j < RN; j++) {
            __m512 wv = load_w_mask(w, dt, woff + j * K + k, m);
#pragma GCC unroll 4
            for (int i = 0; i < RT; i++) acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < RT; i++)
#pragma GCC unroll 6
        for (int j = 0; j < RN; j++) {
            float v = hsum(acc[i][j]);
            out[i * N + j] = bias ? v + bias[j] : v;
        }
}

/* One x row against the 4 weight rows woff, woff + stride·K, woff +
 * 2·stride·K and woff + 3·stride·K: fwd_tile(1, 1, ...) four times over,
 * with named accumulators and row pointers. GCC keeps fwd_tile's arrays on
 * the stack for the 1-row shape (measured: bf16 decode GEMV at a third of
 * the f32 rate, every iteration reloading accumulators and recomputing
 * addresses); this is the decode hot loop, so it gets registers
 * explicitly. Same FMA chain per lane and the same masked tail and hsum,
 * so bitwise the same result as fwd_tile. Each row pointer's next row is
 * the next one in memory, so over the decode loop (fwd_block) the four
 * form four long sequential streams; each is prefetched DECODE_AHEAD
 * bytes on. */
LORAC_ALWAYS_INLINE void fwd_row4(const lorac_dtype_t dt, float *out, const float *x, const void *w, int64_t woff,
                                  const float *bias, int64_t K, int64_t stride) {
    const int64_t es = (int64_t)lorac_dtype_size(dt), gap = stride * K * es;
    const char *r0 = (const char *)w + woff * es, *r1 = r0 + gap, *r2 = r1 + gap, *r3 = r2 + gap;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        if ((k * es) % 64 == 0) { /* a line of each stream per line consumed */
            _mm_prefetch(r0 + k * es + DECODE_AHEAD, _MM_HINT_T0);
            _mm_prefetch(r1 + k * es + DECODE_AHEAD, _MM_HINT_T0);
            _mm_prefetch(r2 + k * es + DECODE_AHEAD, _MM_HINT_T0);
            _mm_prefetch(r3 + k * es + DECODE_AHEAD, _MM_HINT_T0);
        }
        __m512 xv = _mm512_loadu_ps(x + k);
        a0 = _mm512_fmadd_ps(xv, load_w(r0, dt, k), a0);
        a1 = _mm512_fmadd_ps(xv, load_w(r1, dt, k), a1);
        a2 = _mm512_fmadd_ps(xv, load_w(r2, dt, k), a2);
        a3 = _mm512_fmadd_ps(xv, load_w(r3, dt, k), a3);
    }
    if (k < K) {
        __mmask16 m = tail_mask(K - k);
        __m512 xv = _mm512_maskz_loadu_ps(m, x + k);
        a0 = _mm512_fmadd_ps(xv, load_w_mask(r0, dt, k, m), a0);
        a1 = _mm512_fmadd_ps(xv, load_w_mask(r1, dt, k, m), a1);
        a2 = _mm512_fmadd_ps(xv, load_w_mask(r2, dt, k, m), a2);
        a3 = _mm512_fmadd_ps(xv, load_w_mask(r3, dt, k, m), a3);
    }
    float v0 = hsum(a0), v1 = hsum(a1), v2 = hsum(a2), v3 = hsum(a3);
    out[0] = bias ? v0 + bias[0] : v0;
    out[stride] = bias ? v1 + bias[stride] : v1;
    out[2 * stride] = bias ? v2 + bias[2 * stride] : v2;
    out[3 * stride] = bias ? v3 + bias[3 * stride] : v3;
}

/* Columns [n0,n1) of rows [t0,t1) in tiles of FT x RN, RN = FN or 4 (the
 * leftover columns of a thread's range), then single columns. */
LORAC_ALWAYS_INLINE void fwd_tiles(const lorac_dtype_t dt, float *out, const float *x, const void *w,
                                   const float *bias, int64_t K, int64_t N, int64_t t0, int64_t t1, int64_t *n,
                                   int64_t n1, const int RN, float *wbuf) {
    for (; *n + RN <= n1; *n += RN) {
        const float *b = bias ? bias + *n : NULL;
        int64_t t = t0;
        if (wbuf && t1 - t0 >= 2 * FT) {
            /* 16-bit weights and several x rows: widen the RN rows once
             * into an L1-sized f32 buffer and run the f32 tiles on it.
             * Widening in registers would cost 2 extra uops per weight
             * vector per tile, on the ports the FMAs need. The values and
             * the FMA order are the same, so the result is bitwise the
             * same as the in-register path. */
            widen(dt, wbuf, w, *n * K, RN * K);
            for (; t + FT <= t1; t += FT)
                fwd_tile(FT, RN, LORAC_DTYPE_F32, out + t * N + *n, N, x + t * K, wbuf, 0, b, K);
            for (; t < t1; t++)
                fwd_tile(1, RN, LORAC_DTYPE_F32, out + t * N + *n, N, x + t * K, wbuf, 0, b, K);
            continue;
        }
        for (; t + FT <= t1; t += FT)
            fwd_tile(FT, RN, dt, out + t * N + *n, N, x + t * K, w, *n * K, b, K);
        for (; t < t1; t++) fwd_tile(1, RN, dt, out + t * N + *n, N, x + t * K, w, *n * K, b, K);
    }
}

/* out is (T,N), x is (T,K), w is (N,K) in dt; columns [n0,n1). */
LORAC_ALWAYS_INLINE void fwd_block(const lorac_dtype_t dt, float *out, const float *x,
                                   const void *w, const float *bias, int64_t T, int64_t K,
                                   int64_t N, int64_t n0, int64_t n1, float *wbuf) {
    if (T < FT) {
        /* Decode: each weight row streamed once. Rows n0 + i, n0 + q + i,
         * n0 + 2q + i and n0 + 3q + i go together (q = a quarter of the
         * rows), so each of the four walks its own quarter of w front to
         * back, as on the AVX2 path. */
        int64_t q = (n1 - n0) / 4;
        for (int64_t t = 0; t < T; t++) {
            for (int64_t n = n0; n < n0 + q; n++)
                fwd_row4(dt, out + t * N + n, x + t * K, w, n * K, bias ? bias + n : NULL, K, q);
            for (int64_t n = n0 + 4 * q; n < n1; n++)
                fwd_tile(1, 1, dt, out + t * N + n, N, x + t * K, w, n * K, bias ? bias + n : NULL, K);
        }
        return;
    }
    for (int64_t tc = 0; tc < T; tc += TCHUNK) {
        int64_t te = tc + TCHUNK < T ? tc + TCHUNK : T;
        int64_t n = n0;
        fwd_tiles(dt, out, x, w, bias, K, N, tc, te, &n, n1, FN, wbuf);
        fwd_tiles(dt, out, x, w, bias, K, N, tc, te, &n, n1, 4, wbuf);
        fwd_tiles(dt, out, x, w, bias, K, N, tc, te, &n, n1, 1, wbuf);
    }
}

/* NF4 weights (kernels.h) go through the AVX2 path's kernels: 256-bit, but
 * tested (no machine with AVX-512 has run an NF4 kernel of its own yet).
 * Their block kernels take any block boundaries, so the drivers' split for
 * this path keeps every result thread-count independent. */
#define NF4_VIA_AVX2(dt, call) \
    do { if ((dt) == LORAC_DTYPE_NF4) { lorac_kernel_ops_avx2.call; return; } } while (0)

static void avx512_matmul_fwd(float *out, const float *x, const void *w, lorac_dtype_t wt,
                              const float *bias, int64_t T, int64_t K, int64_t N, int64_t n0,
                              int64_t n1) {
    NF4_VIA_AVX2(wt, matmul_fwd(out, x, w, wt, bias, T, K, N, n0, n1));
    /* Scratch for 4 widened weight rows (see fwd_block); if it cannot be had,
     * widening in registers gives the same bits, only slower. */
    float *wbuf = NULL;
    if (wt != LORAC_DTYPE_F32 && T >= 2 * FT) wbuf = malloc((size_t)(FN * K) * sizeof(float));
    /* One instantiation per dtype so the widening is resolved at compile time. */
    if (wt == LORAC_DTYPE_F32) fwd_block(LORAC_DTYPE_F32, out, x, w, bias, T, K, N, n0, n1, NULL);
    else if (wt == LORAC_DTYPE_BF16)
        fwd_block(LORAC_DTYPE_BF16, out, x, w, bias, T, K, N, n0, n1, wbuf);
    else fwd_block(LORAC_DTYPE_F16, out, x, w, bias, T, K, N, n0, n1, wbuf);
    free(wbuf);
}

/* Accumulate micro-kernel: c rows m..m+RM-1 (row stride ldc), RV vectors of 16
 * columns (the last one masked by `last`) += Σ_{l<n} a[i*a_rs + l*a_cs] ·
 * b[boff + l*ldb + j*vs ..]: a points at the tile's first row at the chunk's
 * first l, boff at b's row for it, and a row's vectors lie vs apart (16 in
 * a row of b or a packed panel; a group's stride in a repacked weight,
 * which the forward reads in place). Each lane is one c element: a chain of
 * FMAs over l in increasing order starting from the stored value (from 0
 * when `zero` is set: the same bits as storing zeros first, without the
 * pass over c). Rows from `valid` on are computed (on a's zero padding)
 * but neither loaded nor stored.
 * A tail (tn > 0) continues each chain over tn more values before the
 * store: Σ_j ta[i*t_rs + j] · tb[j*64 + 16v ..], ta the tile's first row
 * of the tail's a (row-major, rows t_rs apart), tb its packed panel of b;
 * rows from `valid` on read row valid - 1 instead (their results are not
 * stored), so no read passes the last row. */
LORAC_ALWAYS_INLINE void acc_tile(const int RM, const int RV, const lorac_dtype_t bt, float *c,
                                  int64_t ldc, const float *a, int64_t a_rs, int64_t a_cs,
                                  const void *b, int64_t boff, int64_t ldb, int64_t vs, int64_t n, __mmask16 last,
                                  int zero, int valid, const float *ta, int64_t t_rs, const float *tb, int64_t tn) {
    __m512 acc[AM][AV];
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++)
#pragma GCC unroll 8
        for (int j = 0; j < RV; j++)
            acc[i][j] = zero ? _mm512_setzero_ps()
                             : _mm512_maskz_loadu_ps(i < valid ? (j == RV - 1 ? last : 0xffff) : 0, c + i * ldc + 16 * j);
    for (int64_t l = 0; l < n; l++) {
        __m512 bv[AV];
#pragma GCC unroll 8
        for (int j = 0; j < RV; j++)
            bv[j] = load_w_mask(b, bt, boff + l * ldb + j * vs, j == RV - 1 ? last : 0xffff);
#pragma GCC unroll 8
        for (int i = 0; i < RM; i++) {
            __m512 av = _mm512_set1_ps(a[i * a_rs + l * a_cs]);
#pragma GCC unroll 8
            for (int j = 0; j < RV; j++) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
        }
    }
    const float *trow[AM];
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++) trow[i] = ta + (i < valid ? i : valid - 1) * t_rs;
    for (int64_t l = 0; l < tn; l++) {
        __m512 bv[AV];
#pragma GCC unroll 8
        for (int j = 0; j < RV; j++) bv[j] = _mm512_load_ps(tb + l * 16 * AV + 16 * j);
#pragma GCC unroll 8
        for (int i = 0; i < RM; i++) {
            __m512 av = _mm512_set1_ps(trow[i][l]);
#pragma GCC unroll 8
            for (int j = 0; j < RV; j++) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < RM; i++)
#pragma GCC unroll 8
        for (int j = 0; j < RV; j++)
            _mm512_mask_storeu_ps(c + i * ldc + 16 * j, i < valid ? (j == RV - 1 ? last : 0xffff) : 0, acc[i][j]);
}

/* acc_tile with RV = nv (1..4) vectors, the last one masked by `last`. A
 * panel narrower than 64 columns (288 = 4 x 64 + 32 at the 15M shape) runs
 * as one tile of nv vectors rather than nv one-vector tiles: those had 6
 * accumulators, too few to cover the FMA latency, and broadcast every a
 * value once per vector. */
LORAC_ALWAYS_INLINE void acc_tile_nv(const int RM, int nv, const lorac_dtype_t bt, float *c, int64_t ldc,
                                     const float *a, int64_t a_rs, int64_t a_cs, const void *b, int64_t boff,
                                     int64_t ldb, int64_t vs, int64_t n, __mmask16 last, int zero, int valid,
                                     const float *ta, int64_t t_rs, const float *tb, int64_t tn) {
    if (nv == 4) acc_tile(RM, 4, bt, c, ldc, a, a_rs, a_cs, b, boff, ldb, vs, n, last, zero, valid, ta, t_rs, tb, tn);
    else if (nv == 3) acc_tile(RM, 3, bt, c, ldc, a, a_rs, a_cs, b, boff, ldb, vs, n, last, zero, valid, ta, t_rs, tb, tn);
    else if (nv == 2) acc_tile(RM, 2, bt, c, ldc, a, a_rs, a_cs, b, boff, ldb, vs, n, last, zero, valid, ta, t_rs, tb, tn);
    else acc_tile(RM, 1, bt, c, ldc, a, a_rs, a_cs, b, boff, ldb, vs, n, last, zero, valid, ta, t_rs, tb, tn);
}

/* A product's tail (see matmul_tail): its a, (M, r) row-major from row 0;
 * the packed panel of its b for the current column panel; r. */
typedef struct {
    const float *a;
    const float *panel;
    int64_t r;
} tail_t;

/* c rows [m0,m1) of a column panel [k, k+kw), kw <= 64, over the n values
 * of l in one chunk. a points at a[m0, chunk start]; when pa is set, the
 * rows are read from it instead, in groups of AM (see pack_a), the last
 * group zero-padded: its missing rows are computed on zeros but neither
 * loaded nor stored, which keeps a leftover of 1-5 rows (T = 1024 leaves 4)
 * on the full tile instead of one-row tiles at a fraction of its rate.
 * Column v of the panel in the chunk's row l of b is element
 * boff + l*ldb + v/16*vs + v%16: b itself, a packed copy (see pack_panel)
 * or a repacked weight. With a tail (tl not NULL), each tile ends with the
 * tail's values. */
LORAC_ALWAYS_INLINE void acc_panel(const lorac_dtype_t bt, float *c, const float *a, int64_t a_rs,
                                   int64_t a_cs, const float *pa, const void *b, int64_t boff, int64_t ldb, int64_t vs,
                                   int64_t K, int64_t m0, int64_t m1, int64_t k, int64_t kw, int64_t n, int zero,
                                   const tail_t *tl) {
    int nv = (int)((kw + 15) / 16);
    __mmask16 last = tail_mask(kw - 16 * (nv - 1));
    const int64_t tn = tl ? tl->r : 0;
    const float *tb = tl ? tl->panel : NULL;
    for (int64_t m = m0; m < m1;) {
        int64_t left = m1 - m;
        float *cm = c + m * K + k;
        const float *ta = tl ? tl->a + m * tn : NULL; /* the tile's first row of the tail's a */
        if (pa) {
            int rows = left >= AM ? AM : (int)left;
            acc_tile_nv(AM, nv, bt, cm, K, pa + (m - m0) * n, 1, AM, b, boff, ldb, vs, n, last, zero, rows, ta, tn, tb,
                        tn);
            m += rows;
        } else if (left >= AM) {
            acc_tile_nv(AM, nv, bt, cm, K, a + (m - m0) * a_rs, a_rs, a_cs, b, boff, ldb, vs, n, last, zero, AM, ta, tn,
                        tb, tn);
            m += AM;
        } else {
            acc_tile_nv(1, nv, bt, cm, K, a + (m - m0) * a_rs, a_rs, a_cs, b, boff, ldb, vs, n, last, zero, 1, ta, tn, tb,
                        tn);
            m += 1;
        }
    }
}

/* The rows' n values of a from a[m0, chunk start] in groups of AM rows,
 * interleaved, rows past the end zero: pa[g*AM*n + l*AM + i] =
 * a[m0 + g*AM + i, l]. Only for a stored transposed (a_cs != 1: the dw
 * product reads dout's columns), where a tile's broadcasts in place walk
 * AM values per l, a_cs apart, one cache line per step (at the 1.1B shapes
 * that ran at a fifth of the FMA peak). There the AM values of one l are
 * contiguous (a_rs = 1) and each group packs as one masked copy per l.
 * Rows of a stored row-major are read in place: packing them cost up to a
 * fifth of the product (the LM head's dx has only 4.5 column panels to
 * share it) and measured no faster anywhere. */
LORAC_ALWAYS_INLINE void pack_a(float *pa, const float *a, int64_t a_rs, int64_t a_cs, int64_t rows, int64_t n) {
    for (int64_t g = 0; g < rows; g += AM) {
        float *dst = pa + g * n;
        int valid = rows - g < AM ? (int)(rows - g) : AM;
        if (a_rs == 1) {
            __mmask8 m = (__mmask8)((1u << valid) - 1u);
            for (int64_t l = 0; l < n; l++)
                _mm256_mask_storeu_ps(dst + l * AM, (__mmask8)((1u << AM) - 1u),
                                      _mm256_maskz_loadu_ps(m, a + g + l * a_cs));
        } else {
            for (int64_t l = 0; l < n; l++)
                for (int i = 0; i < AM; i++) dst[l * AM + i] = i < valid ? a[(g + i) * a_rs + l * a_cs] : 0.0f;
        }
    }
}

/* The n x kw block of b at rows l0.., columns k.. widened into the
 * contiguous buffer buf (row stride 16*AV, zeros past kw). Read in place,
 * b's rows lie K elements apart: at K = 768 or 2048 they fall into a few L1
 * sets and evict each other long before the panel is used up (measured: the
 * K = 2048 products ran at under 40% of the FMA peak); packed, the panel is
 * one contiguous 32 KB run, and 16-bit weights are widened once per panel
 * instead of once per row tile. The values are the same, so are the bits. */
LORAC_ALWAYS_INLINE void pack_panel(const lorac_dtype_t bt, float *buf, const void *b, int64_t K, int64_t k,
                                    int64_t kw, int64_t l0, int64_t n) {
    for (int64_t l = 0; l < n; l++) {
        float *row = buf + l * 16 * AV;
        for (int64_t v = 0; v < 16 * AV; v += 16) {
            __mmask16 m = kw - v <= 0 ? 0 : tail_mask(kw - v);
            _mm512_storeu_ps(row + v, load_w_mask(b, bt, (l0 + l) * K + k + v, m));
        }
    }
}

/* r[i] (16 rows of 16) becomes its transpose: r[c][i] = old r[i][c].
 * Pairs of rows interleaved, then quads, then the 128-bit lanes gathered. */
LORAC_ALWAYS_INLINE void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    /* u[4g + c], lane q: rows 4g..4g+3 of column 4q + c */
    __m512 u[16];
    for (int g = 0; g < 16; g += 4) {
        __m512d t0 = _mm512_castps_pd(t[g]), t1 = _mm512_castps_pd(t[g + 1]);
        __m512d t2 = _mm512_castps_pd(t[g + 2]), t3 = _mm512_castps_pd(t[g + 3]);
        u[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
        u[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
        u[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
        u[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
    for (int c = 0; c < 4; c++) {
        __m512 x0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44), x1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
        __m512 y0 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44), y1 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
        r[c] = _mm512_shuffle_f32x4(x0, y0, 0x88);
        r[4 + c] = _mm512_shuffle_f32x4(x0, y0, 0xDD);
        r[8 + c] = _mm512_shuffle_f32x4(x1, y1, 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(x1, y1, 0xDD);
    }
}

/* pack_panel for b given transposed, (K,L): buf[l][j] = b[k + j, l0 + l],
 * zeros past kw. Blocks of 16 rows of b (16 values of j) by 16 values of
 * l are loaded, widened, transposed in registers and stored as 16 rows of
 * the buffer (element by element this took a tenth of a 15M-shape step). */
LORAC_ALWAYS_INLINE void pack_panel_t(const lorac_dtype_t bt, float *buf, const void *b, int64_t L, int64_t k,
                                      int64_t kw, int64_t l0, int64_t n) {
    for (int64_t jb = 0; jb < 16 * AV; jb += 16)
        for (int64_t lb = 0; lb < n; lb += 16) {
            __mmask16 m = tail_mask(n - lb);
            __m512 r[16];
            for (int64_t i = 0; i < 16; i++)
                r[i] = jb + i < kw ? load_w_mask(b, bt, (k + jb + i) * L + l0 + lb, m) : _mm512_setzero_ps();
            transpose16(r);
            int64_t nl = n - lb < 16 ? n - lb : 16;
            for (int64_t c = 0; c < nl; c++) _mm512_storeu_ps(buf + (lb + c) * 16 * AV + jb, r[c]);
        }
}

/* The dx product's panel (columns [k, k+kw) of w, its rows l0..l0+n-1)
 * from w repacked (P, lorac_pack_weight: P[g][k][j] = w[16g + j][k], K
 * columns): each 16 rows of the panel by 16 of its columns are one
 * contiguous 16 x 16 block of P, transposed in registers. l0 is a multiple
 * of 16; columns past kw are zeros. The values of pack_panel, so the same
 * bits. */
LORAC_ALWAYS_INLINE void pack_panel_from_packed(float *buf, const float *P, int64_t K, int64_t k, int64_t kw,
                                                int64_t l0, int64_t n) {
    for (int64_t lb = 0; lb < n; lb += 16) {
        const float *group = P + (l0 + lb) / 16 * K * 16; /* row j of column kk: w[l0 + lb + j][kk] */
        int64_t nl = n - lb < 16 ? n - lb : 16;
        /* fetch the block two on: the blocks are 4 KB runs 16·K floats
         * apart, where the hardware prefetcher does not follow (the 1.1B
         * MLP weights' dx products, 46 MB weights, ran 2-10% faster with
         * it in bench_kernel_ab; the others the same) */
        if (lb + 32 < n)
            for (int64_t q = 0; q < kw * 16; q += 16) _mm_prefetch((const char *)(group + 2 * 16 * K + k * 16 + q), _MM_HINT_T0);
        for (int64_t jb = 0; jb < 16 * AV; jb += 16) {
            __m512 r[16];
            for (int64_t i = 0; i < 16; i++)
                r[i] = jb + i < kw ? _mm512_loadu_ps(group + (k + jb + i) * 16) : _mm512_setzero_ps();
            transpose16(r); /* r[c]: w[l0 + lb + c][k + jb .. +15] */
            for (int64_t c = 0; c < nl; c++) _mm512_storeu_ps(buf + (lb + c) * 16 * AV + jb, r[c]);
        }
    }
}

/* acc_panel instantiated once per b dtype, not inlined into each of the
 * acc_block instances (3 dtypes x acc, acc_bt, set_bt, set): inlined, the
 * tile variants made this file take clang's sanitizer build 5 minutes. A
 * packed panel is always f32. */
LORAC_NOINLINE void panel_f32(float *c, const float *a, int64_t a_rs, int64_t a_cs, const float *pa, const void *b,
                              int64_t boff, int64_t ldb, int64_t vs, int64_t K, int64_t m0, int64_t m1, int64_t k,
                              int64_t kw, int64_t n, int zero, const tail_t *tl) {
    acc_panel(LORAC_DTYPE_F32, c, a, a_rs, a_cs, pa, b, boff, ldb, vs, K, m0, m1, k, kw, n, zero, tl);
}

LORAC_NOINLINE void panel_16bit(lorac_dtype_t bt, float *c, const float *a, int64_t a_rs, int64_t a_cs,
                                const float *pa, const void *b, int64_t boff, int64_t ldb, int64_t K, int64_t m0,
                                int64_t m1, int64_t k, int64_t kw, int64_t n, int zero, const tail_t *tl) {
    if (bt == LORAC_DTYPE_BF16)
        acc_panel(LORAC_DTYPE_BF16, c, a, a_rs, a_cs, pa, b, boff, ldb, 16, K, m0, m1, k, kw, n, zero, tl);
    else acc_panel(LORAC_DTYPE_F16, c, a, a_rs, a_cs, pa, b, boff, ldb, 16, K, m0, m1, k, kw, n, zero, tl);
}

/* c block += a · b (b_t = 0, b is (L,K)) or a · bᵀ (b_t = 1, b is (K,L)).
 * Loop order: blocks of mblock rows; chunks of lchunk values of l, whose
 * slice of a (packed, when it is: 1 MB) stays in L2 for every column
 * panel; 64-column panels of b, packed unless used in place for a few rows
 * of c; row tiles. c is loaded and stored once per chunk. Every c element
 * still sees its l in increasing order, so neither the loop order nor the
 * chunk size changes a bit. (Panels outermost, to keep a panel of c in L2
 * across the chunks, measured no faster once chunks were 512 long.)
 * With P (b a repacked f32 weight): the forward (b_t) reads its panel's
 * four 16-column groups in place, the dx product gathers its panel from
 * P's 16 x 16 blocks. A tail (tr > 0: ta, its a, (M, tr) row-major; tb,
 * its b in b's orientation, f32) runs in the last chunk's tiles, its panel
 * packed into tbuf beside each panel of b. */
LORAC_ALWAYS_INLINE void acc_block(const lorac_dtype_t bt, const int b_t, const int set, float *c, const float *a, int64_t a_rs,
                                   int64_t a_cs, const void *b, int64_t L, int64_t K, int64_t m0,
                                   int64_t m1, int64_t k0, int64_t k1, float *pa, float *buf, int64_t lchunk,
                                   int64_t mblock, const float *ta, const float *tb, int64_t tr, float *tbuf,
                                   const float *P) {
    for (int64_t mb = m0; mb < m1; mb += mblock) {
        int64_t me = mb + mblock < m1 ? mb + mblock : m1;
        int packed = P || b_t || me - mb >= 2 * AM;
        for (int64_t l = 0; l < L; l += lchunk) {
            int64_t n = L - l < lchunk ? L - l : lchunk;
            const float *al = a + mb * a_rs + l * a_cs;
            if (pa) pack_a(pa, al, a_rs, a_cs, me - mb, n);
            int last = l + n == L && tr > 0;
            for (int64_t k = k0; k < k1; k += 16 * AV) {
                int64_t kw = k1 - k < 16 * AV ? k1 - k : 16 * AV;
                tail_t tail = {ta, tbuf, tr}, *tl = NULL;
                if (last) {
                    if (b_t) pack_panel_t(LORAC_DTYPE_F32, tbuf, tb, tr, k, kw, 0, tr);
                    else pack_panel(LORAC_DTYPE_F32, tbuf, tb, K, k, kw, 0, tr);
                    tl = &tail;
                }
                int zero = set && l == 0;
                if (P && b_t) { /* in place: k is a multiple of 16, group k/16 starts at P + k·L */
                    panel_f32(c, al, a_rs, a_cs, pa, P + k * L, l * 16, 16, 16 * L, K, mb, me, k, kw, n, zero, tl);
                } else if (packed) {
                    if (P) pack_panel_from_packed(buf, P, K, k, kw, l, n);
                    else if (b_t) pack_panel_t(bt, buf, b, L, k, kw, l, n);
                    else pack_panel(bt, buf, b, K, k, kw, l, n);
                    panel_f32(c, al, a_rs, a_cs, pa, buf, 0, 16 * AV, 16, K, mb, me, k, kw, n, zero, tl);
                } else if (bt == LORAC_DTYPE_F32) {
                    panel_f32(c, al, a_rs, a_cs, pa, b, l * K + k, K, 16, K, mb, me, k, kw, n, zero, tl);
                } else {
                    panel_16bit(bt, c, al, a_rs, a_cs, pa, b, l * K + k, K, K, mb, me, k, kw, n, zero, tl);
                }
            }
        }
    }
}

/* One instantiation per dtype so the widening is resolved at compile time.
 * The packed panel of b (LCHUNK x 64 floats) and the packed rows of a
 * (MBLOCK x LCHUNK floats) come from the heap. */
LORAC_ALWAYS_INLINE void acc_dtype(const int b_t, const int set, float *c, const float *a, int64_t a_rs, int64_t a_cs,
                                   const void *b, lorac_dtype_t bt, int64_t L, int64_t K, int64_t m0,
                                   int64_t m1, int64_t k0, int64_t k1, const float *ta, const float *tb, int64_t tr,
                                   const float *P) {
    /* packing a pays when it is stored transposed (see pack_a) and at
     * least two column panels reuse it (a product with a rank-8 LoRA
     * matrix has one narrow panel, and packing took longer than using it) */
    int pack = a_cs != 1 && m1 - m0 >= 2 * AM && k1 - k0 >= 2 * 16 * AV;
    /* The rows in equal blocks of at most MBLOCK, whole tiles, so that a
     * 1024-row batch runs as 3 x 342 rows, not 2 x 510 + 4 (each block
     * packs every panel of b again, and 4 rows run as single-row tiles);
     * up to MBLOCK_ONE rows, one block (see MBLOCK_ONE) */
    int64_t nblocks = m1 - m0 <= MBLOCK_ONE ? 1 : (m1 - m0 + MBLOCK - 1) / MBLOCK;
    int64_t rows = (m1 - m0 + nblocks - 1) / nblocks; /* nblocks >= 1 */
    rows = (rows + AM - 1) / AM * AM; /* the last group padded */
    float *pa = pack ? malloc(sizeof(float) * (size_t)(rows * LCHUNK)) : NULL;
    /* the forward on a repacked weight reads its panels in place: no buffer */
    const int need_buf = !(P && b_t);
    float *buf = need_buf ? aligned_alloc(64, sizeof(float) * LCHUNK * 16 * AV) : NULL, *heap = buf;
    int64_t lchunk = LCHUNK; /* a multiple of 16: P's 16-row blocks stay whole */
    _Alignas(64) float small[SMALL_LCHUNK * 16 * AV];
    if ((need_buf && !buf) || (pack && !pa)) { /* out of memory: short chunks, a in place; the same bits, only slower */
        free(pa), pa = NULL;
        buf = small, lchunk = SMALL_LCHUNK;
    }
    _Alignas(64) float tbuf[LORAC_TAIL_MAX * 16 * AV];
    if (bt == LORAC_DTYPE_F32)
        acc_block(LORAC_DTYPE_F32, b_t, set, c, a, a_rs, a_cs, b, L, K, m0, m1, k0, k1, pa, buf, lchunk, rows, ta, tb, tr, tbuf, P);
    else if (bt == LORAC_DTYPE_BF16)
        acc_block(LORAC_DTYPE_BF16, b_t, set, c, a, a_rs, a_cs, b, L, K, m0, m1, k0, k1, pa, buf, lchunk, rows, ta, tb, tr, tbuf, P);
    else acc_block(LORAC_DTYPE_F16, b_t, set, c, a, a_rs, a_cs, b, L, K, m0, m1, k0, k1, pa, buf, lchunk, rows, ta, tb, tr, tbuf, P);
    free(pa);
    free(heap);
}

static void avx512_matmul_acc(float *c, const float *a, int64_t a_rs, int64_t a_cs, const void *b,
                              lorac_dtype_t bt, int64_t M, int64_t L, int64_t K, int64_t m0,
                              int64_t m1, int64_t k0, int64_t k1) {
    NF4_VIA_AVX2(bt, matmul_acc(c, a, a_rs, a_cs, b, bt, M, L, K, m0, m1, k0, k1));
    (void)M;
    acc_dtype(0, 0, c, a, a_rs, a_cs, b, bt, L, K, m0, m1, k0, k1, NULL, NULL, 0, NULL);
}

static void avx512_matmul_acc_bt(float *c, const float *a, int64_t a_rs, int64_t a_cs, const void *b,
                                 lorac_dtype_t bt, int64_t M, int64_t L, int64_t K, int64_t m0,
                                 int64_t m1, int64_t k0, int64_t k1) {
    NF4_VIA_AVX2(bt, matmul_acc_bt(c, a, a_rs, a_cs, b, bt, M, L, K, m0, m1, k0, k1));
    (void)M;
    acc_dtype(1, 0, c, a, a_rs, a_cs, b, bt, L, K, m0, m1, k0, k1, NULL, NULL, 0, NULL);
}

static void avx512_matmul_set_bt(float *c, const float *a, int64_t a_rs, int64_t a_cs, const void *b,
                                 lorac_dtype_t bt, int64_t M, int64_t L, int64_t K, int64_t m0,
                                 int64_t m1, int64_t k0, int64_t k1) {
    NF4_VIA_AVX2(bt, matmul_set_bt(c, a, a_rs, a_cs, b, bt, M, L, K, m0, m1, k0, k1));
    (void)M;
    acc_dtype(1, 1, c, a, a_rs, a_cs, b, bt, L, K, m0, m1, k0, k1, NULL, NULL, 0, NULL);
}

static void avx512_matmul_set(float *c, const float *a, int64_t a_rs, int64_t a_cs, const void *b,
                              lorac_dtype_t bt, int64_t M, int64_t L, int64_t K, int64_t m0,
                              int64_t m1, int64_t k0, int64_t k1) {
    NF4_VIA_AVX2(bt, matmul_set(c, a, a_rs, a_cs, b, bt, M, L, K, m0, m1, k0, k1));
    (void)M;
    acc_dtype(0, 1, c, a, a_rs, a_cs, b, bt, L, K, m0, m1, k0, k1, NULL, NULL, 0, NULL);
}

static void avx512_matmul_tail(float *c, const float *a, int64_t a_rs, int64_t a_cs, const void *b, lorac_dtype_t bt,
                               int64_t M, int64_t L, int64_t K, int64_t m0, int64_t m1, int64_t k0, int64_t k1,
                               int b_t, int set, const float *ta, const float *tb, int64_t tr) {
    NF4_VIA_AVX2(bt, matmul_tail(c, a, a_rs, a_cs, b, bt, M, L, K, m0, m1, k0, k1, b_t, set, ta, tb, tr));
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
static void avx512_matmul_packed(float *c, const float *a, int64_t a_rs, const float *P, int64_t M, int64_t L,
                                 int64_t K, int64_t m0, int64_t m1, int64_t k0, int64_t k1, int b_t, int set,
                                 const float *ta, const float *tb, int64_t tr) {
    (void)M;
    LORAC_ASSERT(tr >= 0 && tr <= LORAC_TAIL_MAX && (!b_t || k0 % 16 == 0));
    if (L == 0) { /* no main sum: the tail alone, as matmul_tail */
        avx512_matmul_tail(c, a, a_rs, 1, P, LORAC_DTYPE_F32, M, L, K, m0, m1, k0, k1, b_t, set, ta, tb, tr);
        return;
    }
    if (b_t && set) acc_dtype(1, 1, c, a, a_rs, 1, NULL, LORAC_DTYPE_F32, L, K, m0, m1, k0, k1, ta, tb, tr, P);
    else if (b_t) acc_dtype(1, 0, c, a, a_rs, 1, NULL, LORAC_DTYPE_F32, L, K, m0, m1, k0, k1, ta, tb, tr, P);
    else if (set) acc_dtype(0, 1, c, a, a_rs, 1, NULL, LORAC_DTYPE_F32, L, K, m0, m1, k0, k1, ta, tb, tr, P);
    else acc_dtype(0, 0, c, a, a_rs, 1, NULL, LORAC_DTYPE_F32, L, K, m0, m1, k0, k1, ta, tb, tr, P);
}

/* dst (n) = src (n) widened. */
static void avx512_convert(float *dst, const void *src, lorac_dtype_t dt, int64_t n) {
    NF4_VIA_AVX2(dt, convert(dst, src, dt, n));
    if (dt == LORAC_DTYPE_F32) widen(LORAC_DTYPE_F32, dst, src, 0, n);
    else if (dt == LORAC_DTYPE_BF16) widen(LORAC_DTYPE_BF16, dst, src, 0, n);
    else widen(LORAC_DTYPE_F16, dst, src, 0, n);
}

/* e^(x − shift) on 16 lanes: the same range reduction and polynomial as
 * softmax_expf (ops_internal.h), with 2^n applied by vscalefps. */
LORAC_ALWAYS_INLINE __m512 exp16(__m512 x) {
    const __m512 lo = _mm512_set1_ps(EXP_MIN_ARG);
    __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ); /* -inf included */
    __m512 xc = _mm512_max_ps(x, lo);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(EXP_LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HI), xc);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(EXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
    __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps((__mmask16)~under, y, n);
}

/* Sum of the 16 lanes of v added into two double accumulators. */
LORAC_ALWAYS_INLINE void add_to_double(__m512d *s0, __m512d *s1, __m512 v) {
    *s0 = _mm512_add_pd(*s0, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    *s1 = _mm512_add_pd(*s1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)));
}

static double avx512_exp_sum(float *x, float shift, int64_t n) {
    __m512 sh = _mm512_set1_ps(shift);
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), sh));
        _mm512_storeu_ps(x + i, e);
        add_to_double(&s0, &s1, e);
    }
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), sh)));
        _mm512_mask_storeu_ps(x + i, m, e);
        add_to_double(&s0, &s1, e);
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
}

const lorac_kernel_ops_t lorac_kernel_ops_avx512 = {
    "avx512", avx512_matmul_fwd, avx512_matmul_acc, avx512_matmul_acc_bt, avx512_matmul_set_bt, avx512_matmul_set,
    avx512_matmul_tail, avx512_matmul_packed,
    avx512_convert, avx512_exp_sum, lorac_attention_avx512,
    1,  /* decode pieces a thread: its four streams are longest in one piece */
    64, /* column split granularity (see split_panels) */
};

#else /* compiled without AVX-512 flags: the dispatcher skips this path */
const lorac_kernel_ops_t lorac_kernel_ops_avx512 = {NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, 0};
#endif
