/* Elementwise, normalisation, rotary and attention kernels (forward).
 * Threads only inside this folder; every output element is produced by one
 * thread in a fixed order, so results do not depend on the thread count. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels_internal.h"
#include "kernels/multiversion.h"
#include "kernels/ops_internal.h"
#include "lorac/kernels.h"

/* One row of lorac_rmsnorm_forward_offset: ot = xt * r * (w + off), and
 * *rt = r when rt is given. */
static inline void rmsnorm_row(float *ot, float *rt, const float *xt, const void *w, lorac_dtype_t wtype, float off,
                               float eps, int64_t C) {
    /* double: long rows of large activations lose bits in f32; in vector
     * lanes, as one sequential chain waited on each add */
    double ss = 0.0;
    #pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < C; c++) ss += (double)xt[c] * xt[c];
    float r = (float)(1.0 / sqrt(ss / (double)C + (double)eps));
    if (rt) *rt = r;
    if (wtype == LORAC_DTYPE_F32) {
        const float *wf = w;
        #pragma omp simd
        for (int64_t c = 0; c < C; c++) ot[c] = xt[c] * r * (wf[c] + off);
    } else if (wtype == LORAC_DTYPE_BF16) {
        const uint16_t *wb = w;
        #pragma omp simd
        for (int64_t c = 0; c < C; c++) ot[c] = xt[c] * r * (lorac_bf16_to_f32(wb[c]) + off);
    } else {
        for (int64_t c = 0; c < C; c++) ot[c] = xt[c] * r * (weight_at(w, wtype, c) + off);
    }
}

// out, x are (T,C), w is (C). out = x * rstd * (w + w_offset), rstd = 1/sqrt(mean(x²)+eps)
// Rows are independent: threaded over rows, the same bits at any thread count.
LORAC_MULTIVERSION
void lorac_rmsnorm_forward_offset(float *out, float *rstd, const float *x, const void *w, lorac_dtype_t wtype,
                                  float w_offset, float eps, int64_t T, int64_t C) {
    /* Below the threshold (decode's row) no OpenMP region at all: even one
     * with a false if clause goes through the runtime and sets up a team. */
    if (T * C < LORAC_PARALLEL_MIN_ELEMS) {
        for (int64_t t = 0; t < T; t++)
            rmsnorm_row(out + t * C, rstd ? rstd + t : NULL, x + t * C, w, wtype, w_offset, eps, C);
        return;
    }
    #pragma omp parallel for num_threads(lorac_kernels_get_threads()) schedule(static)
    for (int64_t t = 0; t < T; t++)
        rmsnorm_row(out + t * C, rstd ? rstd + t : NULL, x + t * C, w, wtype, w_offset, eps, C);
}

void lorac_rmsnorm_forward(float *out, float *rstd, const float *x, const void *w,
                           lorac_dtype_t wtype, float eps, int64_t T, int64_t C) {
    lorac_rmsnorm_forward_offset(out, rstd, x, w, wtype, 0.0f, eps, T, C);
}

// out, gate, up are (T,H). out = gate * sigmoid(gate) * up
LORAC_MULTIVERSION
void lorac_swiglu_forward(float *out, const float *gate, const float *up, int64_t T, int64_t H) {
    int64_t n = T * H;
    /* Below the threshold, a plain simd loop: no OpenMP region (see
     * lorac_rmsnorm_forward). (When this was one "parallel for simd ...
     * if (n >= ...)", the if clause turned off the simd as well, leaving
     * decode's row and 15M-shape prompts under 43 tokens scalar.) */
    if (n < LORAC_PARALLEL_MIN_ELEMS) {
        #pragma omp simd
        for (int64_t i = 0; i < n; i++) out[i] = gate[i] * sigmoid_f32(gate[i]) * up[i];
        return;
    }
    #pragma omp parallel for simd num_threads(lorac_kernels_get_threads()) schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = gate[i] * sigmoid_f32(gate[i]) * up[i];
}

void lorac_softcap(float *x, float cap, float *dz, int64_t n) {
    #pragma omp parallel for num_threads(lorac_kernels_get_threads()) schedule(static) if (n >= LORAC_PARALLEL_MIN_ELEMS)
    for (int64_t i = 0; i < n; i++) {
        x[i] = softcap_f32(x[i], cap);
        if (dz) dz[i] = softcap_grad_f32(x[i], cap);
    }
}

// out = gelu(g) * u, gelu(g) = g/2 (1 + tanh(sqrt(2/π) (g + 0.044715 g³)))
LORAC_MULTIVERSION
void lorac_geglu_forward(float *out, const float *gate, const float *up, int64_t T, int64_t H) {
    int64_t n = T * H;
    if (n < LORAC_PARALLEL_MIN_ELEMS) { /* as lorac_swiglu_forward: no OpenMP region at decode */
        #pragma omp simd
        for (int64_t i = 0; i < n; i++) out[i] = gelu_tanh_f32(gate[i]) * up[i];
        return;
    }
    #pragma omp parallel for simd num_threads(lorac_kernels_get_threads()) schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = gelu_tanh_f32(gate[i]) * up[i];
}

/* One row of lorac_layernorm_forward; mean and variance summed in double
 * (as rmsnorm_row), the variance about the mean in a second pass. */
static inline void layernorm_row(float *ot, float *mt, float *rt, const float *xt, const float *w, const float *b,
                                 float eps, int64_t C) {
    double sum = 0.0;
    #pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < C; c++) sum += xt[c];
    double mu = sum / (double)C, ss = 0.0;
    #pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < C; c++) ss += ((double)xt[c] - mu) * ((double)xt[c] - mu);
    float m = (float)mu, r = (float)(1.0 / sqrt(ss / (double)C + (double)eps));
    if (mt) *mt = m;
    if (rt) *rt = r;
    #pragma omp simd
    for (int64_t c = 0; c < C; c++) ot[c] = (xt[c] - m) * r * w[c] + b[c];
}

// out, x are (T,C); w, b (C). Rows threaded as in lorac_rmsnorm_forward_offset.
LORAC_MULTIVERSION
void lorac_layernorm_forward(float *out, float *mean, float *rstd, const float *x, const float *w, const float *b,
                             float eps, int64_t T, int64_t C) {
    if (T * C < LORAC_PARALLEL_MIN_ELEMS) {
        for (int64_t t = 0; t < T; t++)
            layernorm_row(out + t * C, mean ? mean + t : NULL, rstd ? rstd + t : NULL, x + t * C, w, b, eps, C);
        return;
    }
    #pragma omp parallel for num_threads(lorac_kernels_get_threads()) schedule(static)
    for (int64_t t = 0; t < T; t++)
        layernorm_row(out + t * C, mean ? mean + t : NULL, rstd ? rstd + t : NULL, x + t * C, w, b, eps, C);
}

// out = gelu(x), the tanh approximation
LORAC_MULTIVERSION
void lorac_gelu_forward(float *out, const float *x, int64_t n) {
    if (n < LORAC_PARALLEL_MIN_ELEMS) { /* as lorac_swiglu_forward: no OpenMP region at decode */
        #pragma omp simd
        for (int64_t i = 0; i < n; i++) out[i] = gelu_tanh_f32(x[i]);
        return;
    }
    #pragma omp parallel for simd num_threads(lorac_kernels_get_threads()) schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = gelu_tanh_f32(x[i]);
}

// x is (T, n_heads, head_dim), rotated in place. HF rotate-half layout: the
// pair (x[i], x[i + head_dim/2]) rotates by angle positions[t] * inv_freq[i].
void lorac_rope_forward(float *x, const int32_t *positions, const float *inv_freq,
                        int64_t T, int64_t n_heads, int64_t head_dim) {
    rope_rotate(x, positions, inv_freq, T, n_heads, head_dim, 1.0f);
}

// The largest of init and x[0..n), NaNs passed over, in a vectorisable loop.
static inline float max_from(float init, const float *x, int64_t n) {
    float mx = init;
    #pragma omp simd reduction(max : mx)
    for (int64_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    return mx;
}

// The largest value in one vectorisable pass, then the first index holding
// it, found by blocks of 256 whose hit test vectorises and a scan of the one
// block that holds it. (A single compare-and-move pass went one element a
// cycle, 4% of a greedy 15M-shape decode step at vocabulary 32000 in a
// `perf` profile; a plain scan for the index, one element a cycle too,
// went on for half the vocabulary on average.)
LORAC_MULTIVERSION
int64_t lorac_argmax(const float *x, int64_t n) {
    if (x[0] != x[0]) return 0;
    float mx = max_from(x[0], x + 1, n - 1);
    for (int64_t b = 0; b < n; b += 256) {
        int64_t e = b + 256 < n ? b + 256 : n;
        int hit = 0;
        #pragma omp simd reduction(| : hit)
        for (int64_t i = b; i < e; i++) hit |= x[i] == mx;
        if (hit)
            for (int64_t i = b; i < e; i++)
                if (x[i] == mx) return i;
    }
    return 0;
}

// log Σ_i e^x[i], the sum in double: the max taken out, then the kernel
// path's exp_sum (vectorised, 2 ulp a term; it works in place, so over a
// copy in chunks on the stack). For the losses and log-probabilities of a
// row of logits (eval, serve's logprobs), where libm's exp in double, a
// scalar call per element, took as long as a 15M-shape model's forward
// pass. A NaN anywhere gives NaN; all -inf (or n = 0) gives -inf.
LORAC_MULTIVERSION
double lorac_logsumexp(const float *x, int64_t n) {
    float mx = -INFINITY;
    int nan = 0;
    #pragma omp simd reduction(max : mx) reduction(| : nan)
    for (int64_t i = 0; i < n; i++) {
        mx = x[i] > mx ? x[i] : mx;
        nan |= x[i] != x[i];
    }
    if (nan) return NAN;
    if (mx == -INFINITY || mx == INFINITY) return mx;
    const lorac_kernel_ops_t *ops = lorac_kernels_ops();
    float chunk[1024];
    double sum = 0.0;
    for (int64_t i = 0; i < n; i += 1024) {
        int64_t c = n - i < 1024 ? n - i : 1024;
        memcpy(chunk, x + i, sizeof(float) * (size_t)c);
        sum += ops->exp_sum(chunk, mx, c);
    }
    return (double)mx + log(sum);
}

// x is (T, n); each row replaced by its softmax. The exp is softmax_expf
// (vectorised; 2 ulp).
LORAC_MULTIVERSION
void lorac_softmax_forward(float *x, int64_t T, int64_t n) {
    for (int64_t t = 0; t < T; t++) {
        float *row = x + t * n;
        float mx = max_from(-INFINITY, row, n);
        /* float lane sums per block of 1024 (a double in the simd loop
         * kept GCC from vectorising it), the blocks added in double */
        double sum = 0.0;
        for (int64_t b = 0; b < n; b += 1024) {
            int64_t end = b + 1024 < n ? b + 1024 : n;
            float part = 0.0f;
            #pragma omp simd reduction(+ : part)
            for (int64_t i = b; i < end; i++) {
                float e = softmax_expf(row[i] - mx);
                row[i] = e;
                part += e;
            }
            sum += part;
        }
        float inv = (float)(1.0 / sum);
        #pragma omp simd
        for (int64_t i = 0; i < n; i++) row[i] *= inv;
    }
}

/* Cache values read (T·H·positions·head_dim) from which attention shares
 * its queries between threads: below it, starting the second thread costs
 * more than it saves. In session 23's bench/bench_attention runs (one
 * query token, Intel Xeon, the AVX-512 kernels of attention_avx512.c) two
 * threads paid from 11520-17280 values at the 15M shape (6 heads of 48:
 * 40-60 positions) and 15360-23040 at the 110M shape (12 heads of 64:
 * 20-30 positions), and took 0.6-0.7 of one thread's time from 106
 * positions on. */
#ifndef ATTENTION_PARALLEL_MIN_ELEMS /* bench_attention sets it to 1 */
#define ATTENTION_PARALLEL_MIN_ELEMS 16384
#endif

/* Cache positions fetched ahead by the portable attention loops. */
#define KV_PREFETCH 8


/* q · row for one cache row of hd values stored as F32, BF16 or F16. */
static inline float kv_dot(const float *q, const void *row, lorac_dtype_t dt, int64_t hd) {
    float s = 0.0f;
    if (dt == LORAC_DTYPE_BF16) {
        const uint16_t *r = row;
        #pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < hd; i++) s += q[i] * lorac_bf16_to_f32(r[i]);
    } else if (dt == LORAC_DTYPE_F16) {
        const uint16_t *r = row;
        #pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < hd; i++) s += q[i] * lorac_f16_to_f32(r[i]);
    } else {
        s = dot_f32(q, row, hd);
    }
    return s;
}

/* o += w · row, the row as in kv_dot. */
static inline void kv_axpy(float *o, float w, const void *row, lorac_dtype_t dt, int64_t hd) {
    if (dt == LORAC_DTYPE_BF16) {
        const uint16_t *r = row;
        #pragma omp simd
        for (int64_t i = 0; i < hd; i++) o[i] += w * lorac_bf16_to_f32(r[i]);
    } else if (dt == LORAC_DTYPE_F16) {
        const uint16_t *r = row;
        #pragma omp simd
        for (int64_t i = 0; i < hd; i++) o[i] += w * lorac_f16_to_f32(r[i]);
    } else {
        const float *r = row;
        #pragma omp simd
        for (int64_t i = 0; i < hd; i++) o[i] += w * r[i];
    }
}

// dst (n) = src (n) in the KV cache's dtype (BF16 and F16 rounded to nearest
// even, by the scalar conversions: no clones, nothing here to vectorise).
void lorac_kv_store(void *dst, lorac_dtype_t dtype, const float *src, int64_t n) {
    if (dtype == LORAC_DTYPE_BF16) {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = lorac_f32_to_bf16(src[i]);
    } else if (dtype == LORAC_DTYPE_F16) {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = lorac_f32_to_f16(src[i]);
    } else {
        memcpy(dst, src, sizeof(float) * (size_t)n);
    }
}

// One query of the portable path's attention: a score a position, then the
// output as a running sum over positions in memory.
LORAC_MULTIVERSION
static void attention_query(float *o, float *scores, const float *q, const char *krows, const char *vrows,
                            int64_t stride, lorac_dtype_t kv, int32_t n, int64_t hd, float scale, float softcap) {
    int64_t row = hd * (int64_t)lorac_dtype_size(kv);
    memset(o, 0, sizeof(float) * (size_t)hd);
    float mx = -INFINITY;
    /* One head's rows lie KVH·hd apart, a stride the hardware prefetchers
     * do not follow: fetch the rows KV_PREFETCH positions ahead. */
    for (int32_t p = 0; p < n; p++) {
        prefetch_rows(krows, stride, p + KV_PREFETCH, 1, n, 0, row);
        float s = kv_dot(q, krows + p * stride, kv, hd) * scale;
        scores[p] = s;
        mx = s > mx ? s : mx;
    }
    if (softcap > 0.0f) { /* monotonic: the largest stays the largest */
        for (int32_t p = 0; p < n; p++) scores[p] = softcap_f32(scores[p], softcap);
        mx = softcap_f32(mx, softcap);
    }
    float sum = 0.0f;
    /* softmax_expf: vectorised, where libm's expf is a scalar call */
    #pragma omp simd reduction(+ : sum)
    for (int32_t p = 0; p < n; p++) { scores[p] = softmax_expf(scores[p] - mx); sum += scores[p]; }
    float inv = 1.0f / sum;
    for (int32_t p = 0; p < n; p++) {
        prefetch_rows(vrows, stride, p + KV_PREFETCH, 1, n, 0, row);
        kv_axpy(o, scores[p] * inv, vrows + p * stride, kv, hd);
    }
}

// The portable path's attention (see kernels_internal.h): a query at a time.
void lorac_attention_portable(float *const *o, float *const *scores, const float *const *q, const int32_t *n, int nq,
                              const char *krows, const char *vrows, int64_t stride, lorac_dtype_t kv, int64_t hd,
                              float scale, float softcap) {
    for (int i = 0; i < nq; i++)
        attention_query(o[i], scores[i], q[i], krows, vrows, stride, kv, n[i], hd, scale, softcap);
}

int64_t lorac_attention_scratch_floats(int64_t max_ctx, int n_threads) {
    return LORAC_ATTENTION_GROUP * max_ctx * (int64_t)n_threads;
}

// out, q are (T, H, hd); for token t, k_cache[t] and v_cache[t] point at its
// sequence's cache rows (n_ctx[t], KVH, hd) of kv_dtype (F32, BF16, F16).
// Query head h reads kv head h / (H / KVH) (grouped-query attention).
// Causality is given by n_ctx[t]: token t sees cache rows 0 .. n_ctx[t]-1,
// which hold itself and its past.
void lorac_attention_forward(float *out, float *scratch, const float *q,
                             const void *const *k_cache, const void *const *v_cache, lorac_dtype_t kv_dtype,
                             const int32_t *n_ctx, int64_t T, int64_t H, int64_t KVH, int64_t hd, float softcap) {
    int64_t group = H / KVH;
    int32_t max_ctx = 0;
    for (int64_t t = 0; t < T; t++) max_ctx = n_ctx[t] > max_ctx ? n_ctx[t] : max_ctx;
    float scale = 1.0f / sqrtf((float)hd);
    int64_t row = hd * (int64_t)lorac_dtype_size(kv_dtype); /* bytes of one head's row */
    lorac_attention_fn attend = lorac_kernels_ops()->attention;
    int n_threads = lorac_kernels_get_threads();
    /* The queries in the order (kv head, token, query head of that kv
     * head), so that neighbours read the same cache rows, cut into units of
     * G; a unit's queries of one kv head and one sequence go to the kernel
     * together, which reads each row once for all of them. G is the
     * group's most for a prompt, and a kv head's query heads for one token
     * (one query a call without GQA: at decode a unit of 4 kv heads would
     * leave 3 of 12 units for 2 threads). */
    int64_t members = KVH * T * group;
    int64_t G = T > 1 || group >= LORAC_ATTENTION_GROUP ? LORAC_ATTENTION_GROUP : group;
    int64_t units = (members + G - 1) / G;
    /* units handed out dynamically in pieces of a 16th of a thread's share:
     * a prompt's late tokens see many more positions than its early ones */
    int64_t piece = units / (16 * (int64_t)n_threads);
    piece = piece < 1 ? 1 : piece;
    /* Threaded from ATTENTION_PARALLEL_MIN_ELEMS cache values read: a decode
     * step's single query still reads every cached key and value of its
     * layer, which after the layer's weights have streamed through come
     * from L3 or DRAM. */
    #pragma omp parallel num_threads(n_threads) if (T * H * max_ctx * hd >= ATTENTION_PARALLEL_MIN_ELEMS)
    {
        float *own = scratch + (int64_t)omp_get_thread_num() * LORAC_ATTENTION_GROUP * max_ctx;
        #pragma omp for schedule(dynamic, piece)
        for (int64_t u = 0; u < units; u++) {
            float *o[LORAC_ATTENTION_GROUP], *scores[LORAC_ATTENTION_GROUP];
            const float *qs[LORAC_ATTENTION_GROUP];
            int32_t n[LORAC_ATTENTION_GROUP];
            int nq = 0;
            int64_t kvh = 0;
            const char *kc = NULL, *vc = NULL;
            for (int64_t m = u * G; m < members && m < (u + 1) * G; m++) {
                int64_t m_kvh = m / (T * group), t = m / group % T, th = t * H + m_kvh * group + m % group;
                if (nq && (m_kvh != kvh || k_cache[t] != kc || v_cache[t] != vc)) {
                    attend(o, scores, qs, n, nq, kc + kvh * row, vc + kvh * row, KVH * row, kv_dtype, hd, scale,
                           softcap);
                    nq = 0;
                }
                kvh = m_kvh, kc = k_cache[t], vc = v_cache[t];
                o[nq] = out + th * hd, qs[nq] = q + th * hd, n[nq] = n_ctx[t], scores[nq] = own + nq * max_ctx;
                nq++;
            }
            attend(o, scores, qs, n, nq, kc + kvh * row, vc + kvh * row, KVH * row, kv_dtype, hd, scale, softcap);
        }
    }
}

void lorac_scale(float *x, float s, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] *= s;
}
