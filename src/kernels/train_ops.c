/* Backward kernels for training: RMSNorm, SwiGLU, rotary, attention over
 * packed rows, and the fused softmax cross-entropy. Each output element is
 * reduced by one thread in a fixed order (deterministic). */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "kernels/multiversion.h"
#include "kernels/ops_internal.h"
#include "lorac/kernels.h"

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

LORAC_MULTIVERSION
void lorac_attention_train_forward(float *out, float *lse, float *scratch, const float *q, const float *k,
                                   const float *v, const int32_t *start, int64_t B, int64_t T, int64_t H,
                                   int64_t KVH, int64_t hd) {
    int64_t group = H / KVH;
    float scale = 1.0f / sqrtf((float)hd);
    int n_threads = lorac_kernels_get_threads();
    #pragma omp parallel num_threads(n_threads)
    {
        float *p = scratch + (int64_t)omp_get_thread_num() * T;
        #pragma omp for schedule(static)
        for (int64_t bth = 0; bth < B * T * H; bth++) {
            int64_t bt = bth / H, h = bth % H, b = bt / T, t = bt % T, kvh = h / group;
            int64_t s0 = start[bt] < 0 ? 0 : (start[bt] > t ? t : start[bt]);
            const float *qv = q + bth * hd;
            float mx = -INFINITY;
            for (int64_t j = s0; j <= t; j++) {
                p[j] = dot_f32(qv, k + ((b * T + j) * KVH + kvh) * hd, hd) * scale;
                mx = p[j] > mx ? p[j] : mx;
            }
            float sum = 0.0f;
            for (int64_t j = s0; j <= t; j++) { p[j] = expf(p[j] - mx); sum += p[j]; }
            float inv = 1.0f / sum;
            float *o = out + bth * hd;
            memset(o, 0, sizeof(float) * (size_t)hd);
            for (int64_t j = s0; j <= t; j++) {
                const float *vv = v + ((b * T + j) * KVH + kvh) * hd;
                float w = p[j] * inv;
                #pragma omp simd
                for (int64_t i = 0; i < hd; i++) o[i] += w * vv[i];
            }
            lse[bth] = mx + logf(sum);
        }
    }
}

// With P = softmax(S), S = scale·q·kᵀ, O = P·V:
//   dV += Pᵀ·dO ; dP = dO·Vᵀ ; dS = P ∘ (dP − rowsum(dO ∘ O)) ; dq += scale·dS·K ; dK += scale·dSᵀ·q
// One thread owns a (row b, kv head) pair: every write to dk/dv of that kv
// head and to dq of its query heads, so no two threads touch the same output.
LORAC_MULTIVERSION
void lorac_attention_train_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                    const float *k, const float *v, const float *out, const float *lse,
                                    const int32_t *start, int64_t B, int64_t T, int64_t H, int64_t KVH, int64_t hd) {
    int64_t group = H / KVH;
    float scale = 1.0f / sqrtf((float)hd);
    int n_threads = lorac_kernels_get_threads();
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t bk = 0; bk < B * KVH; bk++) {
        int64_t b = bk / KVH, kvh = bk % KVH;
        for (int64_t h = kvh * group; h < (kvh + 1) * group; h++) {
            for (int64_t t = 0; t < T; t++) {
                int64_t bth = (b * T + t) * H + h;
                int64_t s0 = start[b * T + t] < 0 ? 0 : (start[b * T + t] > t ? t : start[b * T + t]);
                const float *qv = q + bth * hd, *dov = dout + bth * hd;
                float delta = dot_f32(dov, out + bth * hd, hd);
                float *dqv = dq + bth * hd;
                for (int64_t j = s0; j <= t; j++) {
                    int64_t kvi = ((b * T + j) * KVH + kvh) * hd;
                    float p = expf(dot_f32(qv, k + kvi, hd) * scale - lse[bth]);
                    float dp = dot_f32(dov, v + kvi, hd);
                    float ds = p * (dp - delta) * scale;
                    #pragma omp simd
                    for (int64_t i = 0; i < hd; i++) {
                        dqv[i] += ds * k[kvi + i];
                        dk[kvi + i] += ds * qv[i];
                        dv[kvi + i] += p * dov[i];
                    }
                }
            }
        }
    }
}

LORAC_MULTIVERSION
void lorac_crossentropy_forward_backward(float *logits, float *losses, const int32_t *targets, float scale,
                                         int64_t T, int64_t V) {
    int n_threads = lorac_kernels_get_threads();
    #pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t t = 0; t < T; t++) {
        float *row = logits + t * V;
        float mx = -INFINITY;
        for (int64_t i = 0; i < V; i++) mx = row[i] > mx ? row[i] : mx;
        /* one expf per logit, kept in place for the gradient (double exp
         * twice per logit was 15% of a 15M-shape training step); the sum
         * is in double, so the loss keeps its precision over 100k+ terms */
        float target_logit = row[targets[t]];
        double sum = 0.0;
        #pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < V; i++) {
            row[i] = softmax_expf(row[i] - mx);
            sum += row[i];
        }
        losses[t] = (float)((double)mx + log(sum) - (double)target_logit);
        float g = (float)(1.0 / sum) * scale;
        #pragma omp simd
        for (int64_t i = 0; i < V; i++) row[i] *= g;
        row[targets[t]] -= scale;
    }
}
