/* matmul.c — the matmul drivers (argument checks, OpenMP split) and the
 * portable C reference path.
 *
 * Threading: the drivers split one dimension into one contiguous block per
 * thread (static schedule). Every output element is reduced inside one block
 * kernel in an order that does not depend on the block boundaries, so results
 * are bit-identical for any thread count on the same instruction-set path. */
#include "kernels_internal.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/multiversion.h"
#include "kernels/ops_internal.h"

/* ---- portable reference path ---------------------------------------------- */

/* Weights are converted in chunks of this many elements into a stack buffer:
 * big enough to amortise the conversion, small enough for L1. */
#define PCHUNK 256
/* Independent partial sums per dot product: lets the compiler use SIMD
 * registers (and hides add latency) without -ffast-math reassociation. */
#define PLANES 8

/* dst (n) f32 = src[off .. off+n) in dtype; n <= PCHUNK. */
static void portable_convert_chunk(float *dst, const void *src, lorac_dtype_t dt, int64_t off,
                                   int64_t n) {
    if (dt == LORAC_DTYPE_F32) {
        memcpy(dst, (const float *)src + off, (size_t)n * sizeof(float));
    } else if (dt == LORAC_DTYPE_BF16) {
        const uint16_t *s = (const uint16_t *)src + off;
        for (int64_t i = 0; i < n; i++) dst[i] = lorac_bf16_to_f32(s[i]);
    } else if (dt == LORAC_DTYPE_NF4) {
        for (int64_t i = 0; i < n; i++) dst[i] = lorac_nf4_value(src, off + i);
    } else {
        const uint16_t *s = (const uint16_t *)src + off;
        for (int64_t i = 0; i < n; i++) dst[i] = lorac_f16_to_f32(s[i]);
    }
}

/* Σ_i a[i]·b[i] for n <= PCHUNK, PLANES partial sums reduced pairwise. */
static float portable_dot(const float *a, const float *b, int64_t n) {
    float s[PLANES] = {0};
    int64_t i = 0;
    for (; i + PLANES <= n; i += PLANES)
        for (int j = 0; j < PLANES; j++) s[j] += a[i + j] * b[i + j];
    for (int j = 0; i < n; i++, j++) s[j] += a[i] * b[i];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

/* out is (T,N), x is (T,K), w is (N,K); columns [n0,n1).
 * out[t,n] = (Σ over K-chunks of dot(chunk)) + bias[n]. */
static void portable_matmul_fwd(float *out, const float *x, const void *w, lorac_dtype_t wt,
                                const float *bias, int64_t T, int64_t K, int64_t N, int64_t n0,
                                int64_t n1) {
    float wbuf[PCHUNK];
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t t = 0; t < T; t++) out[t * N + n] = 0.0f;
        for (int64_t k = 0; k < K; k += PCHUNK) {
            int64_t kn = K - k < PCHUNK ? K - k : PCHUNK;
            const float *wr = wbuf;
            if (wt == LORAC_DTYPE_F32) wr = (const float *)w + n * K + k;
            else portable_convert_chunk(wbuf, w, wt, n * K + k, kn);
            for (int64_t t = 0; t < T; t++) out[t * N + n] += portable_dot(x + t * K + k, wr, kn);
        }
        if (bias)
            for (int64_t t = 0; t < T; t++) out[t * N + n] += bias[n];
    }
}

/* c is (M,K), a is (M,L) strided, b is (L,K); block [m0,m1) × [k0,k1).
 * For each column chunk, each row l of b is converted once and applied to
 * every row m, so c[m,k] sees its multiply-adds in increasing l. */
static void portable_matmul_acc(float *c, const float *a, int64_t a_rs, int64_t a_cs, const void *b,
                                lorac_dtype_t bt, int64_t M, int64_t L, int64_t K, int64_t m0,
                                int64_t m1, int64_t k0, int64_t k1) {
    (void)M;
    float bbuf[PCHUNK];
    for (int64_t k = k0; k < k1; k += PCHUNK) {
        int64_t kn = k1 - k < PCHUNK ? k1 - k : PCHUNK;
        for (int64_t l = 0; l < L; l++) {
            const float *br = bbuf;
            if (bt == LORAC_DTYPE_F32) br = (const float *)b + l * K + k;
            else portable_convert_chunk(bbuf, b, bt, l * K + k, kn);
            for (int64_t m = m0; m < m1; m++) {
                float am = a[m * a_rs + l * a_cs];
                float *cr = c + m * K + k;
                for (int64_t i = 0; i < kn; i++) cr[i] += am * br[i];
            }
        }
    }
}

static void portable_convert(float *dst, const void *src, lorac_dtype_t dt, int64_t n) {
    for (int64_t i = 0; i < n; i += PCHUNK)
        portable_convert_chunk(dst + i, src, dt, i, n - i < PCHUNK ? n - i : PCHUNK);
}

double lorac_exp_sum_portable(float *x, float shift, int64_t n) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = softmax_expf(x[i] - shift);
        sum += x[i];
    }
    return sum;
}

const lorac_kernel_ops_t lorac_kernel_ops_portable = {
    "portable", portable_matmul_fwd, portable_matmul_acc, NULL, NULL, NULL, NULL, NULL, portable_convert,
    lorac_exp_sum_portable, lorac_attention_portable, 8, 64,
};

/* ---- drivers ---------------------------------------------------------------- */

static int weight_dtype_ok(lorac_dtype_t t) {
    return t == LORAC_DTYPE_F32 || t == LORAC_DTYPE_BF16 || t == LORAC_DTYPE_F16 || t == LORAC_DTYPE_NF4;
}

static int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

/* ---- LoRA: the low-rank terms, on the same block kernels --------------------
 * Inference adds them to the base product inside its parallel region
 * (lorac_matmul_forward_parts_lora). The expand y += s·u·Bᵀ has a tiny
 * inner dimension (the rank), where a plain dot loop stays scalar; as a
 * matmul with K = r the SIMD block kernel does it about 5x faster. Its
 * result goes through a small stack tile, then is added to y, so y keeps
 * whatever the base matmul put there. */
#define EXPAND_COLS 256
#define EXPAND_ROWS 16
/* Segments of at most this many rows use the transposed copy of B when the
 * adapter has one (decode); longer ones (prompts) reuse B's rows across
 * rows better through the matmul tiles. */
#define EXPAND_T_ROWS 4

/* y[t, c0..c0+width) += s · u[t]·B[c0..c0+width)ᵀ for t < T. */
static void expand_columns(const lorac_kernel_ops_t *ops, float *y, const float *u, const float *b, float s,
                           int64_t T, int64_t N, int64_t R, int64_t c0, int64_t width) {
    float tile[EXPAND_ROWS * EXPAND_COLS];
    for (int64_t t0 = 0; t0 < T; t0 += EXPAND_ROWS) {
        int64_t rows = T - t0 < EXPAND_ROWS ? T - t0 : EXPAND_ROWS;
        ops->matmul_fwd(tile, u + t0 * R, b + c0 * R, LORAC_DTYPE_F32, NULL, rows, R, width, 0, width);
        for (int64_t t = 0; t < rows; t++) {
            float *yt = y + (t0 + t) * N + c0;
            const float *tt = tile + t * width;
            for (int64_t n = 0; n < width; n++) yt[n] += s * tt[n];
        }
    }
}

/* y[t, c0..c1) += s · Σ_k u[t,k]·bt[k, c0..c1) for t < T (bt = Bᵀ, row
 * stride N). Per row, a column chunk of the sum is built with one axpy per rank (each
 * bt row read once), then scaled into y; 64 columns are 4 zmm registers. */
#define EXPAND_T_CHUNK 64
LORAC_MULTIVERSION
static void expand_t_columns(float *y, const float *u, const float *bt, float s, int64_t T, int64_t N, int64_t R,
                                 int64_t c0, int64_t c1) {
    float acc[EXPAND_T_CHUNK];
    for (int64_t t = 0; t < T; t++) {
        const float *ut = u + t * R;
        float *yt = y + t * N;
        for (int64_t c = c0; c < c1; c += EXPAND_T_CHUNK) {
            int64_t w = c1 - c < EXPAND_T_CHUNK ? c1 - c : EXPAND_T_CHUNK;
            for (int64_t i = 0; i < w; i++) acc[i] = 0.0f;
            /* omp simd: -O2's cheap vectoriser cost model leaves these
             * variable-length loops scalar */
            for (int64_t k = 0; k < R; k++) {
                const float *row = bt + k * N + c;
                float uk = ut[k];
                #pragma omp simd
                for (int64_t i = 0; i < w; i++) acc[i] += uk * row[i];
            }
            #pragma omp simd
            for (int64_t i = 0; i < w; i++) yt[c + i] += s * acc[i];
        }
    }
}

/* Adds the LoRA terms of part pt to its out columns [c0, c1), segment by
 * segment in order, from the shrink results in u. */
static void lora_expand_columns(const lorac_kernel_ops_t *ops, const lorac_matmul_part_t *pt, const float *u,
                                int64_t c0, int64_t c1) {
    for (int32_t g = 0; g < pt->n_lora; g++) {
        const lorac_lora_segment_t *sg = &pt->lora[g];
        float *y = pt->out + sg->start * pt->N;
        const float *ug = u + sg->u_offset;
        if (sg->Bt && sg->len <= EXPAND_T_ROWS) {
            expand_t_columns(y, ug, sg->Bt, sg->scale, sg->len, pt->N, sg->r, c0, c1);
            continue;
        }
        for (int64_t c = c0; c < c1; c += EXPAND_COLS)
            expand_columns(ops, y, ug, sg->B, sg->scale, sg->len, pt->N, sg->r, c, c1 - c < EXPAND_COLS ? c1 - c : EXPAND_COLS);
    }
}

/* Thread tid of nth's share of every segment's shrink u = x·Aᵀ: a slice of
 * its r columns (any slice gives the same bits). */
static void lora_shrink_share(const lorac_kernel_ops_t *ops, const lorac_matmul_part_t *parts, int n_parts, float *u,
                              const float *x, int64_t K, int tid, int nth) {
    for (int i = 0; i < n_parts; i++)
        for (int32_t g = 0; g < parts[i].n_lora; g++) {
            const lorac_lora_segment_t *sg = &parts[i].lora[g];
            int64_t n0 = (int64_t)sg->r * tid / nth, n1 = (int64_t)sg->r * (tid + 1) / nth;
            if (n0 < n1)
                ops->matmul_fwd(u + sg->u_offset, x + sg->start * K, sg->A, LORAC_DTYPE_F32, NULL, sg->len, K, sg->r,
                                n0, n1);
        }
}

/* ---- forward drivers ---------------------------------------------------------- */

/* out is (T,N), x is (T,K), w is (N,K), bias is (N) or NULL: a product of
 * one part (lorac_matmul_forward_parts: parallel over N in blocks of whole
 * 4-row groups, so each thread streams its own contiguous part of w once per
 * 64 rows of T). */
void lorac_matmul_forward(float *out, const float *x, const void *w, lorac_dtype_t wtype,
                          const float *bias, int64_t T, int64_t K, int64_t N) {
    LORAC_ASSERT(N >= 0);
    lorac_matmul_part_t one = {out, w, wtype, bias, N, NULL, 0};
    lorac_matmul_forward_parts(&one, 1, x, T, K);
}

/* Rows [r0, r1) of the parts stacked on one another, each part's share
 * through the block kernel, then its LoRA terms on the same rows of w
 * (columns of out). */
static void forward_part_rows(const lorac_kernel_ops_t *ops, const lorac_matmul_part_t *parts, int n_parts,
                              const float *x, int64_t T, int64_t K, int64_t r0, int64_t r1, const float *u) {
    int64_t p0 = 0;
    for (int i = 0; i < n_parts; i++) {
        const lorac_matmul_part_t *pt = &parts[i];
        int64_t lo = r0 > p0 ? r0 : p0, hi = r1 < p0 + pt->N ? r1 : p0 + pt->N;
        if (lo < hi) {
            ops->matmul_fwd(pt->out, x, pt->w, pt->wtype, pt->bias, T, K, pt->N, lo - p0, hi - p0);
            if (pt->n_lora > 0) lora_expand_columns(ops, pt, u, lo - p0, hi - p0);
        }
        p0 += pt->N;
    }
}

/* Rows of x up to which a product is a decode step (one or a few rows). */
#define DECODE_MAX_T 4

void lorac_matmul_forward_parts(const lorac_matmul_part_t *parts, int n_parts, const float *x, int64_t T, int64_t K) {
    lorac_matmul_forward_parts_lora(parts, n_parts, x, T, K, NULL);
}

/* The parts' rows are split among the threads as one matrix's would be
 * (whole groups of 4), so a thread's range may span two parts. */
void lorac_matmul_forward_parts_lora(const lorac_matmul_part_t *parts, int n_parts, const float *x, int64_t T,
                                     int64_t K, float *u) {
    LORAC_ASSERT(n_parts >= 0 && T >= 0 && K >= 0);
    int64_t total = 0, lora_work = 0;
    for (int i = 0; i < n_parts; i++) {
        LORAC_ASSERT(weight_dtype_ok(parts[i].wtype) && parts[i].N >= 0 && parts[i].n_lora >= 0);
        LORAC_ASSERT(parts[i].n_lora == 0 || u != NULL);
        total += parts[i].N;
        for (int32_t g = 0; g < parts[i].n_lora; g++) {
            const lorac_lora_segment_t *sg = &parts[i].lora[g];
            LORAC_ASSERT(sg->start >= 0 && sg->len >= 0 && sg->start + sg->len <= T && sg->r >= 0);
            lora_work += sg->len * sg->r * (K + parts[i].N);
        }
    }
    if (T == 0 || total == 0) return;
    const lorac_kernel_ops_t *ops = lorac_kernels_ops();
    int has_lora = lora_work > 0;
    int nt = lorac_kernels_threads_for(T * K * total + lora_work, (total + 3) / 4);
    if (nt <= 1) {
        lora_shrink_share(ops, parts, n_parts, u, x, K, 0, 1);
        forward_part_rows(ops, parts, n_parts, x, T, K, 0, total, u);
        return;
    }
    /* Pieces of whole 4-row groups, handed out as the threads come free.
     * Decode streams w once, in the path's decode_pieces a thread: 1 on
     * the AVX2 and AVX-512 paths, whose decode loops read a piece as four
     * streams that run faster the longer they are. Longer batches: one
     * piece per thread. Any split gives the same bits (all tile shapes
     * do). */
    int64_t piece = round_up((total + nt - 1) / nt, 4);
    if (T < DECODE_MAX_T) {
        int64_t per = (int64_t)nt * ops->decode_pieces;
        piece = round_up((total + per - 1) / per, 4);
        if (piece < 64) piece = 64;
    }
    int64_t n_pieces = (total + piece - 1) / piece;
#pragma omp parallel num_threads(nt)
    {
        if (has_lora) {
            lora_shrink_share(ops, parts, n_parts, u, x, K, omp_get_thread_num(), omp_get_num_threads());
#pragma omp barrier
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < n_pieces; i++)
            forward_part_rows(ops, parts, n_parts, x, T, K, i * piece, (i + 1) * piece < total ? (i + 1) * piece : total,
                              u);
    }
}

/* How an accumulating product over c (M,C) is shared by nt threads: by
 * panels of g columns (the path's split_cols; each thread then reads and
 * packs only its columns of b) when they divide evenly or are many, else
 * by rows in multiples of 12 (whole row tiles of the 4- and 6-row kernels;
 * a 288-wide output is 4.5 panels of 64: split by those, one of two
 * threads did 2/3). Every element still belongs to one thread and sums in
 * the same order. */
typedef struct {
    int64_t M, C, chunk;
    int by_rows;
} block_split_t;

static block_split_t split_panels(int64_t M, int64_t C, int nt, int64_t g) {
    int64_t panels = (C + g - 1) / g;
    block_split_t sp = {M, C, 0, 0};
    if (panels % nt == 0 || panels >= 4 * nt) {
        sp.chunk = round_up((C + nt - 1) / nt, g);
    } else {
        sp.by_rows = 1;
        sp.chunk = round_up((M + nt - 1) / nt, 12);
    }
    return sp;
}

static void split_block(const block_split_t *sp, int i, int64_t *r0, int64_t *r1, int64_t *c0, int64_t *c1) {
    int64_t n = sp->by_rows ? sp->M : sp->C, a = i * sp->chunk, b = a + sp->chunk < n ? a + sp->chunk : n;
    if (sp->by_rows) *r0 = a, *r1 = b, *c0 = 0, *c1 = sp->C;
    else *r0 = 0, *r1 = sp->M, *c0 = a, *c1 = b;
}

/* c (M,C) += a (M,L) · b through an accumulating block kernel (matmul_acc
 * or matmul_acc_bt), the blocks shared out by split_panels. */
static void acc_parallel(lorac_matmul_acc_fn fn, float *c, const float *a, int64_t a_rs, int64_t a_cs,
                         const void *b, lorac_dtype_t bt, int64_t M, int64_t L, int64_t C) {
    int nt = lorac_kernels_threads_for(M * L * C, (M + 3) / 4 * ((C + 63) / 64));
    if (nt <= 1) {
        fn(c, a, a_rs, a_cs, b, bt, M, L, C, 0, M, 0, C);
        return;
    }
    block_split_t sp = split_panels(M, C, nt, lorac_kernels_ops()->split_cols);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int i = 0; i < nt; i++) {
        int64_t r0, r1, c0, c1;
        split_block(&sp, i, &r0, &r1, &c0, &c1);
        if (r0 < r1 && c0 < c1) fn(c, a, a_rs, a_cs, b, bt, M, L, C, r0, r1, c0, c1);
    }
}

/* acc_parallel for training's fused form: c (=/+=) a·b + ta·tb, the tail
 * of tr values after each element's main sum of L (matmul_tail), with b
 * the weight repacked when P is given (matmul_packed; the split's column
 * blocks are whole 16-wide panels, as the forward on P needs). */
static void tail_parallel(const lorac_kernel_ops_t *ops, float *c, const float *a, int64_t a_rs, const void *b,
                          lorac_dtype_t bt, const float *P, int64_t M, int64_t L, int64_t C, int b_t, int set,
                          const float *ta, const float *tb, int64_t tr) {
    int nt = lorac_kernels_threads_for(M * (L + tr) * C, (M + 3) / 4 * ((C + 63) / 64));
    block_split_t sp = split_panels(M, C, nt > 1 ? nt : 1, ops->split_cols);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int i = 0; i < (nt > 1 ? nt : 1); i++) {
        int64_t r0, r1, c0, c1;
        split_block(&sp, i, &r0, &r1, &c0, &c1);
        if (r0 >= r1 || c0 >= c1) continue;
        if (P) ops->matmul_packed(c, a, a_rs, P, M, L, C, r0, r1, c0, c1, b_t, set, ta, tb, tr);
        else ops->matmul_tail(c, a, a_rs, 1, b, bt, M, L, C, r0, r1, c0, c1, b_t, set, ta, tb, tr);
    }
}

/* Rows below which the packed kernel's transposition of w costs more than
 * the dot-product kernel loses (each packed panel serves T/4 row tiles). */
#define FORWARD_BATCH_MIN_T 128

/* out = x · wᵀ + bias as lorac_matmul_forward, through the backward
 * kernels' outer-product tiles on panels of w packed transposed. */
void lorac_matmul_forward_batch(float *out, const float *x, const void *w, lorac_dtype_t wtype,
                                const float *bias, int64_t T, int64_t K, int64_t N) {
    LORAC_ASSERT(weight_dtype_ok(wtype));
    LORAC_ASSERT(T >= 0 && K >= 0 && N >= 0);
    const lorac_kernel_ops_t *ops = lorac_kernels_ops();
    if (!ops->matmul_acc_bt || !ops->matmul_set_bt || T < FORWARD_BATCH_MIN_T || N < 64 || K == 0) {
        lorac_matmul_forward(out, x, w, wtype, bias, T, K, N);
        return;
    }
    if (!bias) {
        acc_parallel(ops->matmul_set_bt, out, x, K, 1, w, wtype, T, K, N);
        return;
    }
    for (int64_t t = 0; t < T; t++) memcpy(out + t * N, bias, sizeof(float) * (size_t)N);
    acc_parallel(ops->matmul_acc_bt, out, x, K, 1, w, wtype, T, K, N);
}

/* dx is (T,K), dout is (T,N), w is (N,K). dx += dout · w.
 * Parallel over 64-column panels of dx (or its rows, see split_panels);
 * every dx[t,k] is one chain over n owned by one thread. */
void lorac_matmul_backward_input(float *dx, const float *dout, const void *w, lorac_dtype_t wtype,
                                 int64_t T, int64_t K, int64_t N) {
    LORAC_ASSERT(weight_dtype_ok(wtype));
    LORAC_ASSERT(T >= 0 && K >= 0 && N >= 0);
    if (T == 0 || K == 0 || N == 0) return;
    acc_parallel(lorac_kernels_ops()->matmul_acc, dx, dout, N, 1, w, wtype, T, N, K);
}

void lorac_matmul_backward_input_set(float *dx, const float *dout, const void *w, lorac_dtype_t wtype,
                                     int64_t T, int64_t K, int64_t N) {
    LORAC_ASSERT(weight_dtype_ok(wtype));
    LORAC_ASSERT(T >= 0 && K >= 0 && N >= 0);
    const lorac_kernel_ops_t *ops = lorac_kernels_ops();
    if (!ops->matmul_set || N == 0) {
        memset(dx, 0, sizeof(float) * (size_t)(T * K));
        lorac_matmul_backward_input(dx, dout, w, wtype, T, K, N);
        return;
    }
    if (T == 0 || K == 0) return;
    acc_parallel(ops->matmul_set, dx, dout, N, 1, w, wtype, T, N, K);
}

/* dw is (N,K), dout is (T,N), x is (T,K). dw += doutᵀ · x; dbias (N) += Σ_t dout.
 * Parallel over N (rows of dw), or over column panels when N is small: each
 * thread writes its own block, every element summed over t in order. */
void lorac_matmul_backward_weight(float *dw, float *dbias, const float *dout, const float *x,
                                  int64_t T, int64_t K, int64_t N) {
    LORAC_ASSERT(T >= 0 && K >= 0 && N >= 0);
    if (T == 0 || N == 0) return;
    if (dbias) {
        /* Row by row over t so the inner loop over n vectorises; each
         * dbias[n] still sums over t in order. */
        for (int64_t t = 0; t < T; t++)
            for (int64_t n = 0; n < N; n++) dbias[n] += dout[t * N + n];
    }
    if (K == 0) return;
    const lorac_kernel_ops_t *ops = lorac_kernels_ops();
    /* Few rows (a LoRA A's gradient has r): split by column panels, so
     * that each thread's row tiles hold every row (a share of 4 of 8 rows
     * ran as single-row tiles, each reading x's panel again) */
    int by_cols = N < 24 && K >= 2 * ops->split_cols;
    int nt = lorac_kernels_threads_for(T * K * N, by_cols ? K / ops->split_cols : (N + 3) / 4);
    if (nt <= 1) {
        ops->matmul_acc(dw, dout, 1, N, x, LORAC_DTYPE_F32, N, T, K, 0, N, 0, K);
        return;
    }
    if (by_cols) {
        int64_t cols = round_up((K + nt - 1) / nt, ops->split_cols);
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int i = 0; i < nt; i++) {
            int64_t k0 = i * cols, k1 = k0 + cols < K ? k0 + cols : K;
            if (k0 < k1) ops->matmul_acc(dw, dout, 1, N, x, LORAC_DTYPE_F32, N, T, K, 0, N, k0, k1);
        }
        return;
    }
    int64_t chunk = round_up((N + nt - 1) / nt, 4);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int i = 0; i < nt; i++) {
        int64_t n0 = i * chunk, n1 = n0 + chunk < N ? n0 + chunk : N;
        if (n0 < n1) ops->matmul_acc(dw, dout, 1, N, x, LORAC_DTYPE_F32, N, T, K, n0, n1, 0, K);
    }
}

/* Element-wise, so any split gives the same bits; threads only pay off for
 * large arrays (whole tensors being converted at load time). */
void lorac_convert_to_f32(float *dst, const void *src, lorac_dtype_t dtype, int64_t n) {
    LORAC_ASSERT(weight_dtype_ok(dtype));
    LORAC_ASSERT(n >= 0);
    if (n == 0) return;
    const lorac_kernel_ops_t *ops = lorac_kernels_ops();
    int nt = lorac_kernels_threads_for(n / 16, (n + 65535) / 65536);
    if (nt <= 1) {
        ops->convert(dst, src, dtype, n);
        return;
    }
    int64_t chunk = round_up((n + nt - 1) / nt, 64); /* whole NF4 blocks */
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int i = 0; i < nt; i++) {
        int64_t i0 = i * chunk, i1 = i0 + chunk < n ? i0 + chunk : n;
        if (i0 < i1) ops->convert(dst + i0, (const char *)src + lorac_dtype_bytes(dtype, i0), dtype, i1 - i0);
    }
}

/* ---- training's products: LoRA terms fused in, repacked weights, expand ---- */

void lorac_matmul_forward_train(float *out, const float *x, const void *w, lorac_dtype_t wtype, const float *packed,
                                const float *bias, int64_t T, int64_t K, int64_t N, const float *u, const float *b,
                                float s, int64_t R) {
    LORAC_ASSERT(weight_dtype_ok(wtype));
    LORAC_ASSERT(T >= 0 && K >= 0 && N >= 0 && R >= 0);
    const lorac_kernel_ops_t *ops = lorac_kernels_ops();
    /* where lorac_matmul_forward_batch takes its outer-product kernel (and
     * lorac_lora_expand_forward too) */
    int batch = ops->matmul_set_bt && T >= FORWARD_BATCH_MIN_T && N >= 64 && K > 0;
    int use_packed = batch && packed && ops->matmul_packed;
    float *su = NULL;
    if (batch && ops->matmul_tail && R > 0 && R <= LORAC_TAIL_MAX) su = malloc(sizeof(float) * (size_t)(T * R));
    if (!su && !use_packed) {
        lorac_matmul_forward_batch(out, x, w, wtype, bias, T, K, N);
        if (R > 0) lorac_lora_expand_forward(out, u, b, s, T, N, R);
        return;
    }
    if (su)
        for (int64_t i = 0; i < T * R; i++) su[i] = s * u[i]; /* as lorac_lora_expand_forward scales u */
    if (bias)
        for (int64_t t = 0; t < T; t++) memcpy(out + t * N, bias, sizeof(float) * (size_t)N);
    int set = bias == NULL;
    tail_parallel(ops, out, x, K, w, wtype, use_packed ? packed : NULL, T, K, N, 1, set, su, b, su ? R : 0);
    if (!su && R > 0) lorac_lora_expand_forward(out, u, b, s, T, N, R);
    free(su);
}

void lorac_matmul_backward_input_train(float *dx, int set, const float *dout, const void *w, lorac_dtype_t wtype,
                                       const float *packed, int64_t T, int64_t K, int64_t N, const float *du,
                                       const float *a, int64_t R) {
    LORAC_ASSERT(weight_dtype_ok(wtype));
    LORAC_ASSERT(T >= 0 && K >= 0 && N >= 0 && R >= 0);
    if (T == 0 || K == 0) return;
    const lorac_kernel_ops_t *ops = lorac_kernels_ops();
    int tail = ops->matmul_tail && R > 0 && R <= LORAC_TAIL_MAX;
    if (packed && ops->matmul_packed && N > 0) {
        tail_parallel(ops, dx, dout, N, w, wtype, packed, T, N, K, 0, set, tail ? du : NULL, a, tail ? R : 0);
    } else if (tail) {
        tail_parallel(ops, dx, dout, N, w, wtype, NULL, T, N, K, 0, set, du, a, R);
        return;
    } else {
        if (set) lorac_matmul_backward_input_set(dx, dout, w, wtype, T, K, N);
        else lorac_matmul_backward_input(dx, dout, w, wtype, T, K, N);
    }
    if (!tail && R > 0) lorac_matmul_backward_input(dx, du, a, LORAC_DTYPE_F32, T, K, R);
}

int64_t lorac_packed_weight_floats(int64_t N, int64_t K) { return (N + 15) / 16 * 16 * K; }

int lorac_kernels_have_packed(void) { return lorac_kernels_ops()->matmul_packed != NULL; }

void lorac_pack_weight(float *P, const float *w, int64_t N, int64_t K) {
    int64_t groups = (N + 15) / 16;
    int nt = lorac_kernels_threads_for(groups * 16 * K, groups);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t g = 0; g < groups; g++) {
        float *dst = P + g * K * 16;
        for (int64_t k = 0; k < K; k++)
            for (int64_t j = 0; j < 16; j++) dst[k * 16 + j] = 16 * g + j < N ? w[(16 * g + j) * K + k] : 0.0f;
    }
}

void lorac_packed_weight_row(float *dst, const float *P, int64_t n, int64_t K) {
    const float *group = P + n / 16 * K * 16;
    for (int64_t k = 0; k < K; k++) dst[k] = group[k * 16 + n % 16];
}

void lorac_lora_expand_forward(float *y, const float *u, const float *b, float s, int64_t T, int64_t N, int64_t R) {
    if (T == 0 || N == 0) return;
    const lorac_kernel_ops_t *ops = lorac_kernels_ops();
    if (ops->matmul_acc_bt && T >= FORWARD_BATCH_MIN_T && N >= 64 && R > 0) {
        /* Training's batches: (s·u)·Bᵀ accumulated straight into y by the
         * outer-product kernel (B packed transposed), where expand_columns'
         * tiles spend an 8-lane horizontal sum on every output of a rank-8 dot. */
        float *su = malloc(sizeof(float) * (size_t)(T * R));
        if (su) {
            for (int64_t i = 0; i < T * R; i++) su[i] = s * u[i];
            acc_parallel(ops->matmul_acc_bt, y, su, R, 1, b, LORAC_DTYPE_F32, T, R, N);
            free(su);
            return;
        }
    }
    int64_t n_chunks = (N + EXPAND_COLS - 1) / EXPAND_COLS;
    int nt = lorac_kernels_threads_for(T * R * N, n_chunks);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int64_t c = 0; c < n_chunks; c++) {
        int64_t c0 = c * EXPAND_COLS, width = N - c0 < EXPAND_COLS ? N - c0 : EXPAND_COLS;
        expand_columns(ops, y, u, b, s, T, N, R, c0, width);
    }
}
