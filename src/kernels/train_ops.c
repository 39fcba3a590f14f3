/* Backward kernels for training: RMSNorm, SwiGLU, rotary, attention over
 * packed rows, and the fused softmax cross-entropy. Each output element is
 * reduced by one thread in a fixed order (deterministic). */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "kernels/multiversion.h"
#include "kernels/ops_internal.h"
#include "kernels/kernels_internal.h"

// y = x * r * w with r = (mean(x²) + eps)^-1/2, so
// dx_i = r * w_i * dy_i - x_i * r³/C * Σ_j dy_j w_j x_j ;  dw_i = Σ_t dy_i x_i r
LORAC_MULTIVERSION
void lorac_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const void *w,
                            lorac_dtype_t wtype, const float *rstd, int64_t T, int64_t C) {
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * C, *dy = dout + t * C;
        float *dxt = dx + t * C;
        float r = rstd[t];
        double dot = 0.0;
        for (int64_t c = 0; c < C; c++) dot += (double)dy[c] * weight_at(w, wtype, c) * xt[c];
        float k = (float)(dot * (double)r * r * r / (double)C);
        for (int64_t c = 0; c < C; c++) dxt[c] += r * weight_at(w, wtype, c) * dy[c] - xt[c] * k;
    }
    if (dw) {
        for (int64_t t = 0; t < T; t++) {
            const float *xt = x + t * C, *dy = dout + t * C;
            for (int64_t c = 0; c < C; c++) dw[c] += dy[c] * xt[c] * rstd[t];
        }
    }
}

// out = silu(g) * u, silu(g) = g σ(g), silu'(g) = σ(g) (1 + g (1 − σ(g)))
LORAC_MULTIVERSION
void lorac_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                           int64_t T, int64_t H) {
    int64_t n = T * H;
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i], sg = 1.0f / (1.0f + expf(-g));
        dgate[i] += dout[i] * up[i] * sg * (1.0f + g * (1.0f - sg));
        dup[i] += dout[i] * g * sg;
    }
}

void lorac_rope_backward(float *dx, const int32_t *positions, const float *inv_freq,
                         int64_t T, int64_t n_heads, int64_t head_dim) {
    rope_rotate(dx, positions, inv_freq, T, n_heads, head_dim, -1.0f);
}

/* ---- attention over packed rows ------------------------------------------
 * Both kernels work on one (row b, kv head) at a time with its K and V
 * transposed to (hd, T): the scores of a query against consecutive keys are
 * then contiguous, and every inner loop runs over keys as plain SIMD
 * multiply-adds (a dot product per key, as before, spent more on the
 * horizontal sums than on the multiplies at head sizes of 48-64). */

int64_t lorac_attention_train_scratch_floats(int64_t T, int64_t hd, int n_threads) {
    return (int64_t)(n_threads > 0 ? n_threads : 1) * (4 * hd + 2) * T;
}

/* dst (hd, T) = the head at src in rows 0..T-1 of stride `stride`. */
static void transpose_head(float *dst, const float *src, int64_t stride, int64_t T, int64_t hd) {
    for (int64_t j = 0; j < T; j++)
        for (int64_t i = 0; i < hd; i++) dst[i * T + j] = src[j * stride + i];
}

/* s[j] = Σ_i (scale·q[i])·kt[i, j] for j in [j0, j1): the scaled scores of
 * one query against keys j0..j1-1 (kt is (hd, T)). Four rows of kt per pass
 * over s. The forward and backward kernels both get their scores here, so
 * the probabilities the backward pass recomputes are the forward's. */
LORAC_ALWAYS_INLINE void head_scores(float *s, const float *q, const float *kt, float scale, int64_t T, int64_t hd,
                        int64_t j0, int64_t j1) {
    int64_t n = j1 - j0;
    float *sj = s + j0;
    for (int64_t j = 0; j < n; j++) sj[j] = 0.0f;
    int64_t i = 0;
    for (; i + 4 <= hd; i += 4) {
        float q0 = q[i] * scale, q1 = q[i + 1] * scale, q2 = q[i + 2] * scale, q3 = q[i + 3] * scale;
        const float *k0 = kt + i * T + j0, *k1 = k0 + T, *k2 = k1 + T, *k3 = k2 + T;
        #pragma omp simd
        for (int64_t j = 0; j < n; j++) sj[j] += q0 * k0[j] + q1 * k1[j] + q2 * k2[j] + q3 * k3[j];
    }
    for (; i < hd; i++) {
        float qi = q[i] * scale;
        const float *k0 = kt + i * T + j0;
        #pragma omp simd
        for (int64_t j = 0; j < n; j++) sj[j] += qi * k0[j];
    }
}

/* The first key token t of its row may see (start[t] > 0 keeps packed examples apart). */
static inline int64_t first_visible(const int32_t *start, int64_t bt, int64_t t) {
    return start[bt] < 0 ? 0 : (start[bt] > t ? t : start[bt]);
}

LORAC_MULTIVERSION
void lorac_attention_train_forward(float *out, float *lse, float *scratch, const float *q, const float *k,
                                   const float *v, const int32_t *start, int64_t B, int64_t T, int64_t H,
                                   int64_t KVH, int64_t hd) {
    const lorac_kernel_ops_t *ops = lorac_kernels_ops();
    int64_t group = H / KVH;
    float scale = 1.0f / sqrtf((float)hd);
    int n_threads = lorac_kernels_get_threads();
    int64_t per_thread = lorac_attention_train_scratch_floats(T, hd, 1);
    #pragma omp parallel num_threads(n_threads)
    {
        float *kt = scratch + (int64_t)omp_get_thread_num() * per_thread, *p = kt + hd * T;
        int64_t have = -1; /* the (b, kv head) now in kt */
        /* items ordered (b, kv head, query head in group): a thread's run of
         * items mostly shares one transposed K */
        #pragma omp for schedule(static)
        for (int64_t item = 0; item < B * H; item++) {
            int64_t b = item / H, kvh = item % H / group, h = kvh * group + item % group;
            if (have != b * KVH + kvh) {
                transpose_head(kt, k + (b * T * KVH + kvh) * hd, KVH * hd, T, hd);
                have = b * KVH + kvh;
            }
            for (int64_t t = 0; t < T; t++) {
                int64_t bt = b * T + t, bth = bt * H + h, s0 = first_visible(start, bt, t);
                head_scores(p, q + bth * hd, kt, scale, T, hd, s0, t + 1);
                float mx = -INFINITY;
                #pragma omp simd reduction(max : mx)
                for (int64_t j = s0; j <= t; j++) mx = p[j] > mx ? p[j] : mx;
                double sum = ops->exp_sum(p + s0, mx, t - s0 + 1);
                float inv = (float)(1.0 / sum);
                float *o = out + bth * hd;
                memset(o, 0, sizeof(float) * (size_t)hd);
                /* o = Σ_j p_j·v_j, four values per pass (see the backward's dq) */
                const float *vb = v + (b * T * KVH + kvh) * hd;
                int64_t kvs = KVH * hd, j = s0;
                for (; j + 4 <= t + 1; j += 4) {
                    const float *v0 = vb + j * kvs, *v1 = v0 + kvs, *v2 = v1 + kvs, *v3 = v2 + kvs;
                    float w0 = p[j] * inv, w1 = p[j + 1] * inv, w2 = p[j + 2] * inv, w3 = p[j + 3] * inv;
                    #pragma omp simd
                    for (int64_t i = 0; i < hd; i++) o[i] += w0 * v0[i] + w1 * v1[i] + w2 * v2[i] + w3 * v3[i];
                }
                for (; j <= t; j++) {
                    const float *vv = vb + j * kvs;
                    float w = p[j] * inv;
                    #pragma omp simd
                    for (int64_t i = 0; i < hd; i++) o[i] += w * vv[i];
                }
                lse[bth] = (float)((double)mx + log(sum));
            }
        }
    }
}

// With P = softmax(S), S = scale·q·kᵀ, O = P·V:
//   dV += Pᵀ·dO ; dP = dO·Vᵀ ; dS = P ∘ (dP − rowsum(dO ∘ O)) ; dq += scale·dS·K ; dK += scale·dSᵀ·q
// One thread owns a (row b, kv head) pair: every write to dk/dv of that kv
// head and to dq of its query heads, so no two threads touch the same output.
// dK and dV are gathered transposed, (hd, T) like K and V, and added at the end.
LORAC_MULTIVERSION
void lorac_attention_train_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                                    const float *q, const float *k, const float *v, const float *out,
                                    const float *lse, const int32_t *start, int64_t B, int64_t T, int64_t H,
                                    int64_t KVH, int64_t hd) {
    const lorac_kernel_ops_t *ops = lorac_kernels_ops();
    int64_t group = H / KVH, kvs = KVH * hd;
    float scale = 1.0f / sqrtf((float)hd);
    int n_threads = lorac_kernels_get_threads();
    int64_t per_thread = lorac_attention_train_scratch_floats(T, hd, 1);
    #pragma omp parallel num_threads(n_threads)
    {
        float *kt = scratch + (int64_t)omp_get_thread_num() * per_thread;
        float *vt = kt + hd * T, *dkt = vt + hd * T, *dvt = dkt + hd * T, *p = dvt + hd * T, *ds = p + T;
        #pragma omp for schedule(static)
        for (int64_t bk = 0; bk < B * KVH; bk++) {
            int64_t b = bk / KVH, kvh = bk % KVH;
            const float *kb = k + (b * T * KVH + kvh) * hd, *vb = v + (b * T * KVH + kvh) * hd;
            transpose_head(kt, kb, kvs, T, hd);
            transpose_head(vt, vb, kvs, T, hd);
            memset(dkt, 0, sizeof(float) * (size_t)(2 * hd * T)); /* dkt and dvt */
            for (int64_t h = kvh * group; h < (kvh + 1) * group; h++) {
                for (int64_t t = 0; t < T; t++) {
                    int64_t bt = b * T + t, bth = bt * H + h, s0 = first_visible(start, bt, t), n = t - s0 + 1;
                    const float *qv = q + bth * hd, *dov = dout + bth * hd;
                    float *dqv = dq + bth * hd;
                    head_scores(p, qv, kt, scale, T, hd, s0, t + 1);
                    ops->exp_sum(p + s0, lse[bth], n);           /* p = P */
                    head_scores(ds, dov, vt, 1.0f, T, hd, s0, t + 1); /* ds = dP */
                    float delta = dot_f32(dov, out + bth * hd, hd);
                    #pragma omp simd
                    for (int64_t j = s0; j <= t; j++) ds[j] = p[j] * (ds[j] - delta) * scale;
                    /* dq += Σ_j ds_j·k_j, four keys per pass: one pass per
                     * key waited on its own store of dq every iteration */
                    int64_t j = s0;
                    for (; j + 4 <= t + 1; j += 4) {
                        const float *k0 = kb + j * kvs, *k1 = k0 + kvs, *k2 = k1 + kvs, *k3 = k2 + kvs;
                        float d0 = ds[j], d1 = ds[j + 1], d2 = ds[j + 2], d3 = ds[j + 3];
                        #pragma omp simd
                        for (int64_t i = 0; i < hd; i++) dqv[i] += d0 * k0[i] + d1 * k1[i] + d2 * k2[i] + d3 * k3[i];
                    }
                    for (; j <= t; j++) {
                        const float *kr = kb + j * kvs;
                        float dsj = ds[j];
                        #pragma omp simd
                        for (int64_t i = 0; i < hd; i++) dqv[i] += dsj * kr[i];
                    }
                    for (int64_t i = 0; i < hd; i++) {
                        float qi = qv[i], di = dov[i];
                        float *dkr = dkt + i * T, *dvr = dvt + i * T;
                        #pragma omp simd
                        for (int64_t j = s0; j <= t; j++) {
                            dkr[j] += ds[j] * qi;
                            dvr[j] += p[j] * di;
                        }
                    }
                }
            }
            float *dkb = dk + (b * T * KVH + kvh) * hd, *dvb = dv + (b * T * KVH + kvh) * hd;
            for (int64_t j = 0; j < T; j++)
                for (int64_t i = 0; i < hd; i++) {
                    dkb[j * kvs + i] += dkt[i * T + j];
                    dvb[j * kvs + i] += dvt[i * T + j];
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
