/* Backward kernels for training: RMSNorm, SwiGLU, rotary, attention over
 * packed rows, and the fused softmax cross-entropy. Each output element is
 * reduced by one thread in a fixed order (deterministic). */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "kernels/multiversion.h"
#include "kernels/ops_internal.h"
#include "kernels/kernels_internal.h"

// y = x * r * (w + off) with r = (mean(x²) + eps)^-1/2, so, with w' = w + off,
// dx_i = r * w'_i * dy_i - x_i * r³/C * Σ_j dy_j w'_j x_j ;  dw_i = Σ_t dy_i x_i r
// dx is threaded over rows, dw over columns (each column's sum over t
// keeps its order), so the bits do not depend on the thread count.
LORAC_MULTIVERSION
void lorac_rmsnorm_backward_offset(float *dx, float *dw, const float *dout, const float *x, const void *w,
                                   lorac_dtype_t wtype, float off, const float *rstd, int64_t T, int64_t C) {
    #pragma omp parallel num_threads(lorac_kernels_get_threads()) if (T * C >= LORAC_PARALLEL_MIN_ELEMS)
    {
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) {
            const float *xt = x + t * C, *dy = dout + t * C;
            float *dxt = dx + t * C;
            float r = rstd[t];
            double dot = 0.0; /* in vector lanes, as the forward's sum */
            float k;
            if (wtype == LORAC_DTYPE_F32) {
                const float *wf = w;
                #pragma omp simd reduction(+ : dot)
                for (int64_t c = 0; c < C; c++) dot += (double)dy[c] * (wf[c] + off) * xt[c];
                k = (float)(dot * (double)r * r * r / (double)C);
                #pragma omp simd
                for (int64_t c = 0; c < C; c++) dxt[c] += r * (wf[c] + off) * dy[c] - xt[c] * k;
            } else {
                for (int64_t c = 0; c < C; c++) dot += (double)dy[c] * (weight_at(w, wtype, c) + off) * xt[c];
                k = (float)(dot * (double)r * r * r / (double)C);
                for (int64_t c = 0; c < C; c++) dxt[c] += r * (weight_at(w, wtype, c) + off) * dy[c] - xt[c] * k;
            }
        }
        if (dw) {
            /* columns in 64-wide blocks, each block's t loop on one thread */
            #pragma omp for schedule(static)
            for (int64_t c0 = 0; c0 < C; c0 += 64) {
                int64_t c1 = c0 + 64 < C ? c0 + 64 : C;
                for (int64_t t = 0; t < T; t++) {
                    const float *xt = x + t * C, *dy = dout + t * C;
                    for (int64_t c = c0; c < c1; c++) dw[c] += dy[c] * xt[c] * rstd[t];
                }
            }
        }
    }
}

void lorac_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const void *w,
                            lorac_dtype_t wtype, const float *rstd, int64_t T, int64_t C) {
    lorac_rmsnorm_backward_offset(dx, dw, dout, x, w, wtype, 0.0f, rstd, T, C);
}

// out = silu(g) * u, silu(g) = g σ(g), silu'(g) = σ(g) (1 + g (1 − σ(g)))
LORAC_MULTIVERSION
void lorac_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                           int64_t T, int64_t H) {
    int64_t n = T * H;
    #pragma omp parallel for simd num_threads(lorac_kernels_get_threads()) schedule(static) \
        if (parallel : n >= LORAC_PARALLEL_MIN_ELEMS)
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i], sg = sigmoid_f32(g);
        dgate[i] = dout[i] * up[i] * sg * (1.0f + g * (1.0f - sg));
        dup[i] = dout[i] * g * sg;
    }
}

// out = gelu(g) * u (lorac_geglu_forward)
LORAC_MULTIVERSION
void lorac_geglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                          int64_t T, int64_t H) {
    int64_t n = T * H;
    #pragma omp parallel for simd num_threads(lorac_kernels_get_threads()) schedule(static) \
        if (parallel : n >= LORAC_PARALLEL_MIN_ELEMS)
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        dgate[i] = dout[i] * up[i] * gelu_tanh_grad_f32(g);
        dup[i] = dout[i] * gelu_tanh_f32(g);
    }
}

void lorac_gelu_backward(float *dx, const float *dout, const float *x, int64_t n) {
    #pragma omp parallel for simd num_threads(lorac_kernels_get_threads()) schedule(static) \
        if (parallel : n >= LORAC_PARALLEL_MIN_ELEMS)
    for (int64_t i = 0; i < n; i++) dx[i] = dout[i] * gelu_tanh_grad_f32(x[i]);
}

/* y = xhat·w + b with xhat = (x - mean)·rstd: with g = dout·w,
 * dx = rstd · (g - mean(g) - xhat · mean(g·xhat)), the means over the row. */
void lorac_layernorm_backward(float *dx, const float *dout, const float *x, const float *w, const float *mean,
                              const float *rstd, int64_t T, int64_t C) {
    #pragma omp parallel for num_threads(lorac_kernels_get_threads()) schedule(static) if (T * C >= LORAC_PARALLEL_MIN_ELEMS)
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * C, *dt = dout + t * C;
        float m = mean[t], r = rstd[t];
        double sg = 0.0, sgx = 0.0;
        for (int64_t c = 0; c < C; c++) {
            double g = (double)dt[c] * w[c], xh = (double)(xt[c] - m) * r;
            sg += g;
            sgx += g * xh;
        }
        float mg = (float)(sg / (double)C), mgx = (float)(sgx / (double)C);
        float *dxt = dx + t * C;
        for (int64_t c = 0; c < C; c++) {
            float xh = (xt[c] - m) * r;
            dxt[c] += r * (dt[c] * w[c] - mg - xh * mgx);
        }
    }
}

void lorac_rope_backward(float *dx, const int32_t *positions, const float *inv_freq,
                         int64_t T, int64_t n_heads, int64_t head_dim) {
    rope_rotate(dx, positions, inv_freq, T, n_heads, head_dim, -1.0f);
}

void lorac_rope_table(float *cs, const int32_t *positions, const float *inv_freq, int64_t T, int64_t head_dim) {
    int64_t half = head_dim / 2;
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < half; i++) {
            double angle = rope_angle(positions[t], inv_freq, i);
            cs[t * head_dim + i] = (float)cos(angle);
            cs[t * head_dim + half + i] = (float)sin(angle);
        }
}

/* Row t of lorac_rope_apply_partial. The pairs (i, i + half) of a head do
 * not overlap, so they vectorise; sg · s is exactly s or its negation. */
static inline void rope_apply_row(float *x, const float *cs, int64_t t, int64_t n_heads, int64_t head_dim, int64_t rot,
                                  float sg) {
    int64_t half = rot / 2;
    const float *c = cs + t * rot, *s = c + half;
    for (int64_t h = 0; h < n_heads; h++) {
        float *v = x + (t * n_heads + h) * head_dim;
        #pragma omp simd
        for (int64_t i = 0; i < half; i++) rope_pair(v, half, i, c[i], sg * s[i]);
    }
}

/* The same products and sums per pair as rope_rotate, with the pairs of a
 * head innermost. */
LORAC_MULTIVERSION
void lorac_rope_apply_partial(float *x, const float *cs, int64_t T, int64_t n_heads, int64_t head_dim, int64_t rot,
                              int sign) {
    float sg = sign < 0 ? -1.0f : 1.0f;
    /* no OpenMP region below the threshold (see lorac_rmsnorm_forward) */
    if (T * n_heads * rot < LORAC_PARALLEL_MIN_ELEMS) {
        for (int64_t t = 0; t < T; t++) rope_apply_row(x, cs, t, n_heads, head_dim, rot, sg);
        return;
    }
    #pragma omp parallel for num_threads(lorac_kernels_get_threads()) schedule(static)
    for (int64_t t = 0; t < T; t++) rope_apply_row(x, cs, t, n_heads, head_dim, rot, sg);
}

void lorac_rope_apply(float *x, const float *cs, int64_t T, int64_t n_heads, int64_t head_dim, int sign) {
    lorac_rope_apply_partial(x, cs, T, n_heads, head_dim, head_dim, sign);
}

/* ---- attention over packed rows ------------------------------------------
 * Both kernels take one (row b, kv head) at a time and its query heads in
 * blocks of query rows, and do every product of the block — scores
 * S = Q·Kᵀ, O = P·V, and in the backward pass dP = dO·Vᵀ, dQ = dS·K,
 * dK = dSᵀ·Q, dV = Pᵀ·dO — with the matmul block kernel (matmul_acc, one
 * thread, register-tiled) on contiguous copies of the head's K, V, Q and
 * dO. Scores are computed for keys 0 .. end of the block; the causal mask
 * and the packed-example starts zero the rest of P. Per-key loops (a dot
 * product, then an axpy, per key) ran at a tenth of the FMA peak.
 *
 * A block holds QBLOCK tokens of one query head, or, where query heads
 * share the kv head (grouped-query attention), fewer tokens of all the
 * heads of the group, stacked token by token (up to QROWS rows): the K and
 * V panels are then packed once for the whole group, and the causal mask
 * wastes less (scores are computed up to the block's last token, for a
 * 1.1B-shaped model's 8 heads a group 16 tokens past the diagonal at most
 * instead of 64). One head (no sharing) keeps 64-token blocks. */

#define QBLOCK 64
#define QROWS 128

/* Heads stacked in one block, and the tokens of a block of hn heads. */
static int64_t heads_per_block(int64_t group) { return group < QROWS ? group : QROWS; }
static int64_t block_tokens(int64_t hn) { return hn == 1 ? QBLOCK : QROWS / hn; }

/* Floats of one thread's scratch (see attention_scratch_t). */
static int64_t scratch_per_thread(int64_t T, int64_t hd) {
    return 2 * QROWS * T + 6 * T * hd + 4 * QROWS * hd + T;
}

int64_t lorac_attention_train_scratch_floats(int64_t T, int64_t hd, int n_threads) {
    return (int64_t)(n_threads > 0 ? n_threads : 1) * scratch_per_thread(T, hd);
}

typedef struct {
    float *s, *ds;           /* (QROWS, T): scores then P; dP then dS */
    float *kt, *vt;          /* (hd, T) */
    float *kc, *vc;          /* (T, hd) */
    float *dkc, *dvc;        /* (T, hd) gradient accumulators */
    float *qc, *doc, *oc;    /* (QROWS, hd) */
    float *dqc;              /* (QROWS, hd) */
    float *capd;             /* (T): a row's soft-cap derivatives 1 − tanh² (backward, softcap > 0) */
} attention_scratch_t;

static attention_scratch_t carve_scratch(float *base, int64_t T, int64_t hd) {
    attention_scratch_t w;
    w.s = base, w.ds = w.s + QROWS * T;
    w.kt = w.ds + QROWS * T, w.vt = w.kt + hd * T;
    w.kc = w.vt + hd * T, w.vc = w.kc + T * hd, w.dkc = w.vc + T * hd, w.dvc = w.dkc + T * hd;
    w.qc = w.dvc + T * hd, w.doc = w.qc + QROWS * hd, w.oc = w.doc + QROWS * hd, w.dqc = w.oc + QROWS * hd;
    w.capd = w.dqc + QROWS * hd;
    return w;
}

/* dst (n, hd) contiguous = n rows of hd floats, `stride` apart (one
 * head's rows, or with hd = hn·head_dim a group's stacked rows). */
static void gather_head(float *dst, const float *src, int64_t stride, int64_t n, int64_t hd) {
    for (int64_t j = 0; j < n; j++) memcpy(dst + j * hd, src + j * stride, sizeof(float) * (size_t)hd);
}

/* dst (hd, T) = the head at src, rows 0..T-1, `stride` apart, transposed. */
static void transpose_head(float *dst, const float *src, int64_t stride, int64_t T, int64_t hd) {
    for (int64_t j = 0; j < T; j++)
        for (int64_t i = 0; i < hd; i++) dst[i * T + j] = src[j * stride + i];
}

/* The first key token t of its row may see (start[t] > 0 keeps packed examples apart). */
static inline int64_t first_visible(const int32_t *start, int64_t bt, int64_t t) {
    return start[bt] < 0 ? 0 : (start[bt] > t ? t : start[bt]);
}

/* c (m, K) = a·b on its first `cols` columns: the block kernel with a
 * (m, L) strided, b (L, K) row-major f32; its set form where the path has
 * one, else zeroing c and accumulating (the same bits). */
static void block_product(const lorac_kernel_ops_t *ops, float *c, int64_t m, int64_t K, int64_t cols,
                          const float *a, int64_t a_rs, int64_t a_cs, const float *b, int64_t L) {
    if (ops->matmul_set) {
        ops->matmul_set(c, a, a_rs, a_cs, b, LORAC_DTYPE_F32, m, L, K, 0, m, 0, cols);
        return;
    }
    for (int64_t i = 0; i < m; i++) memset(c + i * K, 0, sizeof(float) * (size_t)cols);
    ops->matmul_acc(c, a, a_rs, a_cs, b, LORAC_DTYPE_F32, m, L, K, 0, m, 0, cols);
}

/* c (m, T) = a·rowsᵀ on its first `cols` columns, where rows (T, hd) are a
 * head's keys or values, contiguous: the transposed-b kernel where the
 * path has one (it packs the panels it needs, and c's old values are not
 * read), else block_product on rows_t, the same rows transposed (hd, T).
 * One chain over hd per element either way, so the same bits. */
static void scores_product(const lorac_kernel_ops_t *ops, float *c, int64_t m, int64_t T, int64_t cols,
                           const float *a, int64_t a_rs, const float *rows, const float *rows_t, int64_t hd) {
    if (ops->matmul_set_bt) ops->matmul_set_bt(c, a, a_rs, 1, rows, LORAC_DTYPE_F32, m, hd, T, 0, m, 0, cols);
    else block_product(ops, c, m, T, cols, a, a_rs, 1, rows_t, hd);
}

/* Row t of the block's scores s (row stride T) becomes P: scale (then
 * with softcap > 0 soft-cap, z = softcap · tanh(s / softcap), and with capd
 * given store dz/ds = 1 − (z / softcap)² at capd[s0..t]), softmax over keys
 * s0..t, zero elsewhere in 0..end-1. With lse given (backward) P is
 * exp(S − lse); otherwise the row's log-sum-exp is returned. */
LORAC_ALWAYS_INLINE float scores_to_p(const lorac_kernel_ops_t *ops, float *row, float scale, float softcap,
                                      float *capd, int64_t s0, int64_t t, int64_t end, const float *lse) {
    /* inlined into the attention kernels' target clones, so that these
     * loops are vectorised for the clone's ISA (on its own, the function
     * was built for the baseline's 16-byte vectors) */
    for (int64_t j = s0; j <= t; j++) row[j] *= scale;
    if (softcap > 0.0f)
        for (int64_t j = s0; j <= t; j++) {
            row[j] = softcap_f32(row[j], softcap);
            if (capd) capd[j] = softcap_grad_f32(row[j], softcap);
        }
    memset(row, 0, sizeof(float) * (size_t)s0);
    memset(row + t + 1, 0, sizeof(float) * (size_t)(end - t - 1));
    if (lse) {
        ops->exp_sum(row + s0, *lse, t - s0 + 1);
        return *lse;
    }
    float mx = -INFINITY;
    #pragma omp simd reduction(max : mx)
    for (int64_t j = s0; j <= t; j++) mx = row[j] > mx ? row[j] : mx;
    double sum = ops->exp_sum(row + s0, mx, t - s0 + 1);
    float inv = (float)(1.0 / sum);
    for (int64_t j = s0; j <= t; j++) row[j] *= inv;
    return (float)((double)mx + log(sum));
}

LORAC_MULTIVERSION
void lorac_attention_train_forward(float *out, float *lse, float *scratch, const float *q, const float *k,
                                   const float *v, const int32_t *start, int64_t B, int64_t T, int64_t H,
                                   int64_t KVH, int64_t hd, float softcap) {
    const lorac_kernel_ops_t *ops = lorac_kernels_ops();
    int64_t group = H / KVH, hg = heads_per_block(group), kvs = KVH * hd, qs = H * hd;
    float scale = 1.0f / sqrtf((float)hd);
    int n_threads = lorac_kernels_get_threads();
    #pragma omp parallel num_threads(n_threads)
    {
        attention_scratch_t w = carve_scratch(scratch + (int64_t)omp_get_thread_num() * scratch_per_thread(T, hd), T, hd);
        #pragma omp for schedule(static)
        for (int64_t bk = 0; bk < B * KVH; bk++) {
            int64_t b = bk / KVH, kvh = bk % KVH;
            gather_head(w.kc, k + (b * T * KVH + kvh) * hd, kvs, T, hd);
            gather_head(w.vc, v + (b * T * KVH + kvh) * hd, kvs, T, hd);
            if (!ops->matmul_set_bt) transpose_head(w.kt, k + (b * T * KVH + kvh) * hd, kvs, T, hd);
            for (int64_t h0 = kvh * group; h0 < (kvh + 1) * group; h0 += hg) {
                int64_t hn = (kvh + 1) * group - h0 < hg ? (kvh + 1) * group - h0 : hg, nt = block_tokens(hn);
                for (int64_t t0 = 0; t0 < T; t0 += nt) {
                    int64_t n = T - t0 < nt ? T - t0 : nt, end = t0 + n, rows = n * hn, row0 = (b * T + t0) * H + h0;
                    gather_head(w.qc, q + row0 * hd, qs, n, hn * hd);                 /* row r: token r/hn, head r%hn */
                    scores_product(ops, w.s, rows, T, end, w.qc, hd, w.kc, w.kt, hd); /* S = Q·Kᵀ */
                    for (int64_t r = 0; r < rows; r++) {
                        int64_t t = t0 + r / hn, bt = b * T + t;
                        lse[bt * H + h0 + r % hn] =
                            scores_to_p(ops, w.s + r * T, scale, softcap, NULL, first_visible(start, bt, t), t, end, NULL);
                    }
                    block_product(ops, w.oc, rows, hd, hd, w.s, T, 1, w.vc, end);      /* O = P·V */
                    for (int64_t i = 0; i < n; i++)
                        memcpy(out + (row0 + i * H) * hd, w.oc + i * hn * hd, sizeof(float) * (size_t)(hn * hd));
                }
            }
        }
    }
}

// With P = softmax(S), S = scale·q·kᵀ, O = P·V:
//   dV += Pᵀ·dO ; dP = dO·Vᵀ ; dS = P ∘ (dP − rowsum(dO ∘ O)) ; dq += scale·dS·K ; dK += scale·dSᵀ·q
// One thread owns a (row b, kv head) pair: every write to dk/dv of that kv
// head and to dq of its query heads, so no two threads touch the same output.
// Each output element is written once (set, not accumulated).
LORAC_MULTIVERSION
void lorac_attention_train_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                                    const float *q, const float *k, const float *v, const float *out,
                                    const float *lse, const int32_t *start, int64_t B, int64_t T, int64_t H,
                                    int64_t KVH, int64_t hd, float softcap) {
    const lorac_kernel_ops_t *ops = lorac_kernels_ops();
    int64_t group = H / KVH, hg = heads_per_block(group), kvs = KVH * hd, qs = H * hd;
    float scale = 1.0f / sqrtf((float)hd);
    int n_threads = lorac_kernels_get_threads();
    #pragma omp parallel num_threads(n_threads)
    {
        attention_scratch_t w = carve_scratch(scratch + (int64_t)omp_get_thread_num() * scratch_per_thread(T, hd), T, hd);
        #pragma omp for schedule(static)
        for (int64_t bk = 0; bk < B * KVH; bk++) {
            int64_t b = bk / KVH, kvh = bk % KVH;
            const float *kb = k + (b * T * KVH + kvh) * hd, *vb = v + (b * T * KVH + kvh) * hd;
            gather_head(w.kc, kb, kvs, T, hd);
            gather_head(w.vc, vb, kvs, T, hd);
            if (!ops->matmul_set_bt) {
                transpose_head(w.kt, kb, kvs, T, hd);
                transpose_head(w.vt, vb, kvs, T, hd);
            }
            memset(w.dkc, 0, sizeof(float) * (size_t)(2 * T * hd)); /* dkc and dvc */
            for (int64_t h0 = kvh * group; h0 < (kvh + 1) * group; h0 += hg) {
                int64_t hn = (kvh + 1) * group - h0 < hg ? (kvh + 1) * group - h0 : hg, nt = block_tokens(hn);
                for (int64_t t0 = 0; t0 < T; t0 += nt) {
                    int64_t n = T - t0 < nt ? T - t0 : nt, end = t0 + n, rows = n * hn, row0 = (b * T + t0) * H + h0;
                    gather_head(w.qc, q + row0 * hd, qs, n, hn * hd);                  /* row r: token r/hn, head r%hn */
                    gather_head(w.doc, dout + row0 * hd, qs, n, hn * hd);
                    scores_product(ops, w.s, rows, T, end, w.qc, hd, w.kc, w.kt, hd);   /* S = Q·Kᵀ */
                    scores_product(ops, w.ds, rows, T, end, w.doc, hd, w.vc, w.vt, hd); /* dP = dO·Vᵀ */
                    for (int64_t r = 0; r < rows; r++) {
                        int64_t t = t0 + r / hn, bt = b * T + t, h = h0 + r % hn;
                        float *p = w.s + r * T, *d = w.ds + r * T;
                        int64_t s0 = first_visible(start, bt, t);
                        scores_to_p(ops, p, scale, softcap, w.capd, s0, t, end, &lse[bt * H + h]);
                        float delta = dot_f32(w.doc + r * hd, out + (bt * H + h) * hd, hd);
                        for (int64_t j = 0; j < end; j++) d[j] = p[j] * (d[j] - delta) * scale; /* dS */
                        if (softcap > 0.0f) /* through the soft-cap (p is 0 outside s0..t) */
                            for (int64_t j = s0; j <= t; j++) d[j] *= w.capd[j];
                    }
                    block_product(ops, w.dqc, rows, hd, hd, w.ds, T, 1, w.kc, end);  /* dQ = dS·K */
                    for (int64_t i = 0; i < n; i++)
                        memcpy(dq + (row0 + i * H) * hd, w.dqc + i * hn * hd, sizeof(float) * (size_t)(hn * hd));
                    /* dK += dSᵀ·Q, dV += Pᵀ·dO over the block's visible keys */
                    ops->matmul_acc(w.dkc, w.ds, 1, T, w.qc, LORAC_DTYPE_F32, end, rows, hd, 0, end, 0, hd);
                    ops->matmul_acc(w.dvc, w.s, 1, T, w.doc, LORAC_DTYPE_F32, end, rows, hd, 0, end, 0, hd);
                }
            }
            float *dkb = dk + (b * T * KVH + kvh) * hd, *dvb = dv + (b * T * KVH + kvh) * hd;
            for (int64_t j = 0; j < T; j++)
                for (int64_t c = 0; c < hd; c++) {
                    dkb[j * kvs + c] = w.dkc[j * hd + c];
                    dvb[j * kvs + c] = w.dvc[j * hd + c];
                }
        }
    }
}

LORAC_MULTIVERSION
void lorac_crossentropy_forward_backward(float *logits, float *losses, const int32_t *targets, float scale,
                                         int64_t T, int64_t V) {
    const lorac_kernel_ops_t *ops = lorac_kernels_ops();
    int n_threads = lorac_kernels_get_threads();
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t t = 0; t < T; t++) {
        float *row = logits + t * V;
        float mx = -INFINITY;
        #pragma omp simd reduction(max : mx)
        for (int64_t i = 0; i < V; i++) mx = row[i] > mx ? row[i] : mx;
        /* one exp per logit, kept in place for the gradient (a scalar libm
         * exp, twice per logit, was 15% of a 15M-shape training step) */
        float target_logit = row[targets[t]];
        double sum = ops->exp_sum(row, mx, V);
        losses[t] = (float)((double)mx + log(sum) - (double)target_logit);
        float g = (float)(1.0 / sum) * scale;
        #pragma omp simd
        for (int64_t i = 0; i < V; i++) row[i] *= g;
        row[targets[t]] -= scale;
    }
}

/* lorac_crossentropy_online_block's work on row t. */
static inline void online_row(const lorac_kernel_ops_t *ops, float *row, int64_t t, int64_t vb, int64_t v0,
                              const int32_t *targets, float *row_max, double *others_sum, float *target_logit,
                              float *acc, int64_t D) {
    float mx = -INFINITY;
    #pragma omp simd reduction(max : mx)
    for (int64_t i = 0; i < vb; i++) mx = row[i] > mx ? row[i] : mx;
    float old = row_max[t];
    if (mx > old) {
        /* the first block: old is -inf, the factor 0 (sum and acc are 0) */
        float rescale = old == -INFINITY ? 0.0f : expf(old - mx);
        others_sum[t] *= (double)rescale;
        if (acc && rescale != 1.0f) {
            float *ar = acc + t * D;
            #pragma omp simd
            for (int64_t i = 0; i < D; i++) ar[i] *= rescale;
        }
        row_max[t] = mx;
    }
    int64_t j = (int64_t)targets[t] - v0;
    int has_target = j >= 0 && j < vb;
    if (has_target) target_logit[t] = row[j];
    double sum = ops->exp_sum(row, row_max[t], vb);
    if (has_target) {
        sum -= (double)row[j];
        row[j] = 0.0f;
    }
    others_sum[t] += sum;
}

/* One block of columns [v0, v0 + vb) of an online softmax (each row's max
 * and sum carried from block to block, as flash attention does), so that a
 * classifier's logits never exist for the whole vocabulary at once. Per row
 * t: the running max grows to cover the block; the sum of exp(z - max) over
 * the columns seen so far other than the target (others_sum, double) and
 * acc's row (Σ of exp(z_v - max)·W_v, when acc is given) are rescaled to the
 * new max; z becomes exp(z - max) with the target's column 0 (the target
 * term is kept apart, so that 1 - p_target = others/S stays accurate when
 * p_target is near 1); the target's raw logit goes to target_logit. Rows
 * are independent: any thread split gives the same bits. */
LORAC_MULTIVERSION
void lorac_crossentropy_online_block(float *z, int64_t n, int64_t vb, int64_t v0, const int32_t *targets,
                                     float *row_max, double *others_sum, float *target_logit, float *acc,
                                     int64_t D) {
    const lorac_kernel_ops_t *ops = lorac_kernels_ops();
    #pragma omp parallel for num_threads(lorac_kernels_get_threads()) schedule(static) if (n * vb >= LORAC_PARALLEL_MIN_ELEMS)
    for (int64_t t = 0; t < n; t++)
        online_row(ops, z + t * vb, t, vb, v0, targets, row_max, others_sum, target_logit, acc, D);
}

LORAC_MULTIVERSION
void lorac_crossentropy_classifier(const float *x, const void *w, lorac_dtype_t wt, const float *packed, int64_t n,
                                   int64_t D, int64_t V, int64_t cols, const int32_t *targets, float *logits,
                                   float *row_max, double *others_sum, float *target_logit, float *acc) {
    const lorac_kernel_ops_t *ops = lorac_kernels_ops();
    size_t es = lorac_dtype_size(wt);
    int use_packed = packed && ops->matmul_packed && ops->matmul_set_bt && cols % 16 == 0;
    #pragma omp parallel num_threads(lorac_kernels_get_threads())
    {
        /* rows split over the threads the team has: OpenMP may give fewer
         * than asked (OMP_THREAD_LIMIT, a nested region), and rows split
         * for the threads asked would then go uncomputed */
        int nt = omp_get_num_threads();
        int64_t per = (n + nt - 1) / nt;
        per = (per + 5) / 6 * 6; /* whole 6-row tiles */
        int64_t r0 = (int64_t)omp_get_thread_num() * per;
        r0 = r0 < n ? r0 : n; /* a thread past the rows (few rows, many threads) does nothing */
        int64_t r1 = r0 + per < n ? r0 + per : n, m = r1 - r0;
        /* The thread's rows of logits from row r0 of the buffer at the
         * block's row stride: a short last block's rows must not reach
         * into rows that another thread, a block behind, still reads. */
        float *z = logits + r0 * cols;
        for (int64_t v0 = 0; v0 < V && m > 0; v0 += cols) {
            int64_t vb = V - v0 < cols ? V - v0 : cols;
            const void *wb = (const char *)w + (size_t)(v0 * D) * es;
            /* the block's rows of the repacked classifier: v0 is a multiple of 16 */
            const float *pb = use_packed ? packed + v0 * D : NULL;
            if (pb) ops->matmul_packed(z, x + r0 * D, D, pb, m, D, vb, 0, m, 0, vb, 1, 1, NULL, NULL, 0);
            else if (ops->matmul_set_bt) ops->matmul_set_bt(z, x + r0 * D, D, 1, wb, wt, m, D, vb, 0, m, 0, vb);
            else ops->matmul_fwd(z, x + r0 * D, wb, wt, NULL, m, D, vb, 0, vb);
            for (int64_t t = r0; t < r1; t++)
                online_row(ops, z + (t - r0) * vb, t, vb, v0, targets, row_max, others_sum, target_logit, acc, D);
            if (acc && pb) ops->matmul_packed(acc + r0 * D, z, vb, pb, m, vb, D, 0, m, 0, D, 0, 0, NULL, NULL, 0);
            else if (acc) ops->matmul_acc(acc + r0 * D, z, vb, 1, wb, wt, m, vb, D, 0, m, 0, D);
        }
    }
}

/* ---- optimizer ----------------------------------------------------------------
 * Each value's update is one fixed expression, so vector lanes and threads
 * change no bit. torch's CPU kernels fuse two of its steps: add_ with alpha
 * is vec::fmadd, and the addcmul kernel's a + (s*x)*y is contracted to one
 * FMA in its AVX2 build; fmaf gives the same bits (and needs the FMA
 * clones to stay inline and vectorised). */

LORAC_MULTIVERSION_FMA
void lorac_adamw_update_f32(float *p, float *m, float *v, const float *g, int64_t n, const lorac_adamw_coefs_t *c) {
    float gs = c->grad_scale, decay = c->decay, b1 = c->beta1, omb1 = c->one_minus_beta1;
    float b2 = c->beta2, omb2 = c->one_minus_beta2, bc2_sqrt = c->bias_correction2_sqrt, eps = c->eps;
    float nss = c->neg_step_size;
    #pragma omp parallel for simd num_threads(lorac_kernels_get_threads()) schedule(static) \
        if (parallel : n >= LORAC_PARALLEL_MIN_ELEMS)
    for (int64_t k = 0; k < n; k++) {
        float gk = g[k] * gs;
        float pk = p[k] * decay;                          /* param.mul_(1 - lr*wd) */
        float mk = fmaf(omb1, gk, m[k] * b1);             /* exp_avg.mul_(b1).add_(g, alpha=1-b1) */
        float vk = fmaf(omb2 * gk, gk, v[k] * b2);        /* exp_avg_sq.mul_(b2).addcmul_(g, g, value=1-b2) */
        float denom = sqrtf(vk) / bc2_sqrt + eps;         /* (v.sqrt() / bc2_sqrt).add_(eps) */
        p[k] = pk + (nss * mk) / denom;                   /* param.addcdiv_(m, denom, value=-step_size) */
        m[k] = mk;
        v[k] = vk;
    }
}

LORAC_MULTIVERSION
double lorac_sum_squares_f32(const float *g, int64_t n, float scale) {
    double ss = 0.0;
    #pragma omp simd reduction(+ : ss)
    for (int64_t k = 0; k < n; k++) {
        double x = (double)(g[k] * scale);
        ss += x * x;
    }
    return ss;
}
