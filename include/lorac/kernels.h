/* lorac/kernels.h — the only place with SIMD and threads.
 *
 * Conventions (llm.c): outputs first, then inputs, then dimensions; a shape
 * comment on every kernel. Activations are f32; weights may be F32, BF16 or
 * F16 and are read in place (never converted to a full f32 copy).
 * Backward kernels accumulate (+=) into their gradient outputs.
 *
 * Determinism: every output element is reduced by one thread in a fixed order,
 * so results are bit-identical for the same inputs and thread count (in fact
 * for any thread count with the same instruction-set path).
 *
 * Dispatch: the instruction-set path (portable C, AVX2+FMA+F16C, AVX-512) is
 * chosen once at run time from cpuid; the environment variable
 * LORAC_ISA=portable|avx2|avx512 forces a lower path (for tests/benchmarks).
 */
#ifndef LORAC_KERNELS_H
#define LORAC_KERNELS_H

#include "lorac/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Name of the path in use: "portable", "avx2" or "avx512". */
const char *lorac_kernels_isa(void);
/* Number of OpenMP threads the kernels use (<= 0: OpenMP default). */
void lorac_kernels_set_threads(int n_threads);
int lorac_kernels_get_threads(void);

/* ---- matmul ---------------------------------------------------------------
 * out is (T,N), x is (T,K), w is (N,K) row-major in `wtype`, bias is (N) or NULL.
 * out = x · wᵀ + bias. */
void lorac_matmul_forward(float *out, const float *x, const void *w, lorac_dtype_t wtype,
                          const float *bias, int64_t T, int64_t K, int64_t N);
/* Several products of the same x in one parallel region (q, k and v; gate
 * and up): part i gives out_i (T, N_i) = x · w_iᵀ + bias_i, bitwise what
 * lorac_matmul_forward gives, with one fork and join instead of one per
 * part (during decode those waits were a sixth of the time). */
typedef struct lorac_lora_segment lorac_lora_segment_t;
typedef struct {
    float *out;
    const void *w;
    lorac_dtype_t wtype;
    const float *bias; /* or NULL */
    int64_t N;
    /* LoRA terms on this part (lorac_matmul_forward_parts_lora), or none */
    const lorac_lora_segment_t *lora;
    int32_t n_lora;
} lorac_matmul_part_t;
void lorac_matmul_forward_parts(const lorac_matmul_part_t *parts, int n_parts, const float *x, int64_t T, int64_t K);
/* The same product for training's many-row batches: faster there, but each
 * element is summed in another order than lorac_matmul_forward's, so it is
 * not bitwise the product a one-row (decode) call gives; inference, where a
 * token must give the same bits in any batch, keeps lorac_matmul_forward.
 * Falls back to it for few rows and on paths without the kernel. */
void lorac_matmul_forward_batch(float *out, const float *x, const void *w, lorac_dtype_t wtype,
                                const float *bias, int64_t T, int64_t K, int64_t N);
/* dx is (T,K), dout is (T,N), w is (N,K). dx += dout · w. */
void lorac_matmul_backward_input(float *dx, const float *dout, const void *w, lorac_dtype_t wtype,
                                 int64_t T, int64_t K, int64_t N);
/* dx = dout · w: the bits of zeroing dx and then lorac_matmul_backward_input,
 * without the passes over dx's old values. */
void lorac_matmul_backward_input_set(float *dx, const float *dout, const void *w, lorac_dtype_t wtype,
                                     int64_t T, int64_t K, int64_t N);
/* dw is (N,K) f32, dout is (T,N), x is (T,K). dw += doutᵀ · x. dbias (N) += Σ_t dout if non-NULL. */
void lorac_matmul_backward_weight(float *dw, float *dbias, const float *dout, const float *x,
                                  int64_t T, int64_t K, int64_t N);

/* The expand half of a LoRA update: y (T,N) += s · u (T,R) · bᵀ, b is (N,R) f32.
 * Training's entry point: for many rows it sums as lorac_matmul_forward_batch
 * does (inference's adapters go through lorac_matmul_forward_parts_lora). */
void lorac_lora_expand_forward(float *y, const float *u, const float *b, float s, int64_t T, int64_t N, int64_t R);
/* Training's products on a frozen weight w (N,K) in wtype, each output
 * written in one pass, with the bits of the calls they replace:
 * out = x·wᵀ (+ bias) (+ s·u·bᵀ when R > 0; u (T,R), b (N,R) f32):
 * lorac_matmul_forward_batch, then lorac_lora_expand_forward;
 * dx (= with set, else +=) dout·w (+ du·a when R > 0; du (T,R), a (R,K)
 * f32): lorac_matmul_backward_input_set or lorac_matmul_backward_input,
 * then lorac_matmul_backward_input of du and a.
 * packed, when not NULL, is w (f32) packed by lorac_pack_weight, read
 * instead of w where the path has the kernels (w must stay readable: few
 * rows still read it). */
void lorac_matmul_forward_train(float *out, const float *x, const void *w, lorac_dtype_t wtype, const float *packed,
                                const float *bias, int64_t T, int64_t K, int64_t N, const float *u, const float *b,
                                float s, int64_t R);
void lorac_matmul_backward_input_train(float *dx, int set, const float *dout, const void *w, lorac_dtype_t wtype,
                                       const float *packed, int64_t T, int64_t K, int64_t N, const float *du,
                                       const float *a, int64_t R);
/* A frozen f32 weight w (N,K) repacked once for training's products: P
 * (lorac_packed_weight_floats floats, 64-byte aligned) gets w's rows in
 * groups of 16, interleaved: P[(g·K + k)·16 + j] = w[16g + j, k], zero past
 * row N. The forward then reads its panels in place and dx builds its own
 * from contiguous 16 x 16 blocks, instead of gathering both from w's rows
 * on every product. Only where lorac_kernels_have_packed(). */
int lorac_kernels_have_packed(void);
int64_t lorac_packed_weight_floats(int64_t N, int64_t K);
void lorac_pack_weight(float *P, const float *w, int64_t N, int64_t K);
/* dst (K) = row n of the weight packed into P. */
void lorac_packed_weight_row(float *dst, const float *P, int64_t n, int64_t K);
/* One adapter's LoRA term on a product: rows [start, start + len) of x and
 * of the part's out use A (r, in), B (out, r), f32, with scale s; u_offset
 * is where the segment's (len, r) block of the shrink result x·Aᵀ lives in
 * the scratch u. */
struct lorac_lora_segment {
    int64_t start, len, u_offset;
    int32_t r;
    float scale;
    const float *A, *B;
    const float *Bt;  /* (r, out) copy of B or NULL: used when the segment has few rows */
};

/* lorac_matmul_forward_parts with unmerged LoRA adapters: for each part p
 * and each of its segments g, in order,
 *     out_p[rows_g] += s_g · (x[rows_g]·A_gᵀ)·B_gᵀ
 * after the base product. Segments may cover the same rows (adapters
 * stacked on every row, then per-sequence ones: the segmented gathered LoRA
 * of Punica's SGMV); their u blocks must not overlap. One parallel region
 * for everything: every thread computes its share of the shrinks (u = x·Aᵀ,
 * split by rank), one barrier, then each thread adds the expand to the rows
 * of out it has just produced, while they are in cache. During decode,
 * running each adapted projection's shrink and expand as their own
 * parallel regions cost more than reading the adapter's weights. u holds
 * Σ_g len_g·r_g floats (NULL when no part has segments). */
void lorac_matmul_forward_parts_lora(const lorac_matmul_part_t *parts, int n_parts, const float *x, int64_t T,
                                     int64_t K, float *u);
/* x (n) *= s. */
void lorac_scale(float *x, float s, int64_t n);

/* Converts n elements of `src` in dtype (F32, BF16, F16; NF4 from the
 * start of a block) to f32. */
void lorac_convert_to_f32(float *dst, const void *src, lorac_dtype_t dtype, int64_t n);

/* ---- NF4: QLoRA's 4-bit NormalFloat ---------------------------------------
 * A frozen weight quantized as bitsandbytes' quantize_4bit(quant_type="nf4",
 * blocksize=64) does (without its double quantization of the absmax):
 * every block of 64 consecutive elements of the flattened tensor is scaled
 * by 1/absmax, each value stored as the index of the nearest of the 16
 * values of lorac_nf4_codebook, and read back as codebook[index]·absmax.
 * The layout (core.h: LORAC_NF4_BLOCK_BYTES per block) is lorac's own; the
 * values are bitsandbytes'. The matmul kernels read NF4 weights in place
 * (lorac_matmul_forward and the rest, wtype LORAC_DTYPE_NF4), with the
 * bits they give on the dequantized weights in F32, when the weight's row
 * length K is a multiple of 8; lorac_nf4_supported says so. */
extern const float lorac_nf4_codebook[16];
int lorac_nf4_supported(int64_t K);
/* dst (lorac_dtype_bytes(NF4, n) bytes) = the n values of src (F32, BF16 or
 * F16) quantized; threaded, the same bytes for any thread count. */
void lorac_quantize_nf4(void *dst, const void *src, lorac_dtype_t src_dtype, int64_t n);
/* Element i of an NF4 tensor, dequantized. */
float lorac_nf4_value(const void *q, int64_t i);

/* ---- elementwise and normalisation ---------------------------------------- */
/* out, x are (T,C), w is (C) in wtype. out = x / sqrt(mean(x²) + eps) * w.
 * rstd (T) receives 1/sqrt(mean(x²)+eps) for the backward pass if non-NULL.
 * out may be x (in place). */
void lorac_rmsnorm_forward(float *out, float *rstd, const float *x, const void *w,
                           lorac_dtype_t wtype, float eps, int64_t T, int64_t C);
/* The same with the weight read as (w + w_offset): Gemma's RMSNorm scales
 * by (1 + w). */
void lorac_rmsnorm_forward_offset(float *out, float *rstd, const float *x, const void *w, lorac_dtype_t wtype,
                                  float w_offset, float eps, int64_t T, int64_t C);
/* x[i] = cap · tanh(x[i] / cap) for i < n, in place (Gemma 2's soft-capping);
 * dz, when not NULL, receives the derivative 1 − tanh² of each. */
void lorac_softcap(float *x, float cap, float *dz, int64_t n);
/* out (T,H) = silu(gate) * up, gate and up (T,H). */
void lorac_swiglu_forward(float *out, const float *gate, const float *up, int64_t T, int64_t H);
/* out (T,H) = gelu(gate) * up with GELU's tanh approximation,
 * gelu(g) = g/2 · (1 + tanh(sqrt(2/π) · (g + 0.044715 g³))) (GeGLU). */
void lorac_geglu_forward(float *out, const float *gate, const float *up, int64_t T, int64_t H);
/* out (T,C) = (x - mean) / sqrt(var + eps) * w + b per row: LayerNorm
 * (GPT-2's), var the biased variance as torch's; w and b (C) f32.
 * mean and rstd (T), when not NULL, receive each row's mean and
 * 1/sqrt(var + eps) for the backward pass. out may be x (in place). */
void lorac_layernorm_forward(float *out, float *mean, float *rstd, const float *x, const float *w, const float *b,
                             float eps, int64_t T, int64_t C);
/* out (n) = gelu(x) with the tanh approximation (GPT-2's "gelu_new");
 * out may be x. */
void lorac_gelu_forward(float *out, const float *x, int64_t n);
/* Rotary embedding, HuggingFace rotate-half layout, in place on x (T, n_heads, head_dim);
 * positions (T); inv_freq (head_dim/2). */
void lorac_rope_forward(float *x, const int32_t *positions, const float *inv_freq,
                        int64_t T, int64_t n_heads, int64_t head_dim);
/* Index of the largest of x[0..n) (n >= 1), the lowest on ties; NaNs are
 * passed over, except that a NaN x[0] gives 0. */
int64_t lorac_argmax(const float *x, int64_t n);
/* log Σ exp(x[i]) over n values, summed in double with the max taken out
 * (each term through a vectorised exp of 2 ulp). NaN if any x[i] is NaN;
 * -inf if all are -inf or n is 0. */
double lorac_logsumexp(const float *x, int64_t n);
/* Softmax of each row of x (T, n) in place. */
void lorac_softmax_forward(float *x, int64_t T, int64_t n);

/* Causal grouped-query attention over a KV cache.
 * out and q are (T, H, hd). For token t, k_cache[t] / v_cache[t] point at the
 * cache of its sequence, laid out (ctx, KVH, hd) in kv_dtype (F32, BF16 or
 * F16, widened to f32 as they are read), of which rows 0 .. n_ctx[t]-1 are
 * visible to it (its own row included). Query head h uses kv head
 * h / (H/KVH). Scale 1/sqrt(hd); softcap > 0 soft-caps the scaled scores
 * (softcap · tanh(s / softcap), Gemma 2's), 0 leaves them. scratch holds
 * lorac_attention_scratch_floats(max(n_ctx), lorac_kernels_get_threads())
 * floats. A token's output has the same bits whatever else the call holds
 * (a prompt in one call, or its tokens one by one), for a given kernel
 * path and any thread count. */
int64_t lorac_attention_scratch_floats(int64_t max_ctx, int n_threads);
void lorac_attention_forward(float *out, float *scratch, const float *q,
                             const void *const *k_cache, const void *const *v_cache, lorac_dtype_t kv_dtype,
                             const int32_t *n_ctx, int64_t T, int64_t H, int64_t KVH, int64_t hd, float softcap);
/* Stores src (n) at dst in a KV cache's dtype: F32 copied, BF16 and F16
 * rounded to nearest even. */
void lorac_kv_store(void *dst, lorac_dtype_t dtype, const float *src, int64_t n);

/* ---- training kernels (backward passes accumulate: +=) -------------------- */
/* x, dx, dout are (T,C); w, dw are (C) (dw f32, may be NULL); rstd (T) from forward. */
void lorac_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const void *w,
                            lorac_dtype_t wtype, const float *rstd, int64_t T, int64_t C);
/* The backward of lorac_rmsnorm_forward_offset (dw is the gradient of w). */
void lorac_rmsnorm_backward_offset(float *dx, float *dw, const float *dout, const float *x, const void *w,
                                   lorac_dtype_t wtype, float w_offset, const float *rstd, int64_t T, int64_t C);
/* dgate, dup = d(silu(gate)*up) given dout (set, not accumulated: the
 * step's only writer); all (T,H). */
void lorac_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                           int64_t T, int64_t H);
/* The same for lorac_geglu_forward's gelu(gate)*up. */
void lorac_geglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                          int64_t T, int64_t H);
/* dx (T,C) += the gradient through lorac_layernorm_forward of dout, given
 * its x, w, mean and rstd (the weight and bias are frozen: no dw, db). */
void lorac_layernorm_backward(float *dx, const float *dout, const float *x, const float *w, const float *mean,
                              const float *rstd, int64_t T, int64_t C);
/* dx (n) = dout · gelu'(x) for lorac_gelu_forward (set, not accumulated). */
void lorac_gelu_backward(float *dx, const float *dout, const float *x, int64_t n);
/* The inverse rotation of lorac_rope_forward, in place on dx (T, n_heads, head_dim). */
void lorac_rope_backward(float *dx, const int32_t *positions, const float *inv_freq,
                         int64_t T, int64_t n_heads, int64_t head_dim);
/* The cosines and sines of lorac_rope_forward's angles, so that a training
 * step computes them once for every layer's q, k and their gradients:
 * cs (T, head_dim) gets cos(positions[t]·inv_freq[i]) at [t, i] and its sine
 * at [t, head_dim/2 + i]. */
void lorac_rope_table(float *cs, const int32_t *positions, const float *inv_freq, int64_t T, int64_t head_dim);
/* lorac_rope_forward (sign +1) or lorac_rope_backward (sign −1) from a
 * lorac_rope_table, bit for bit. */
void lorac_rope_apply(float *x, const float *cs, int64_t T, int64_t n_heads, int64_t head_dim, int sign);
/* The same rotating only the first rot (even) values of each head, pairs
 * (i, i + rot/2), and passing the rest through (Phi-3's
 * partial_rotary_factor); cs from lorac_rope_table with head_dim = rot. */
void lorac_rope_apply_partial(float *x, const float *cs, int64_t T, int64_t n_heads, int64_t head_dim, int64_t rot,
                              int sign);

/* Causal attention over rows of T tokens in which token t sees tokens
 * start[t] .. t of its own row (start[t] > 0 keeps packed examples apart;
 * a sliding window raises it). softcap > 0 soft-caps the scaled scores as
 * lorac_attention_forward does (the backward through it too).
 * q, out are (B,T,H,hd); k, v are (B,T,KVH,hd); lse (B,T,H) receives the
 * log-sum-exp of each softmax for the backward pass. scratch holds
 * lorac_attention_train_scratch_floats(T, hd, lorac_kernels_get_threads())
 * floats, for both kernels. */
int64_t lorac_attention_train_scratch_floats(int64_t T, int64_t hd, int n_threads);
void lorac_attention_train_forward(float *out, float *lse, float *scratch, const float *q, const float *k,
                                   const float *v, const int32_t *start, int64_t B, int64_t T, int64_t H,
                                   int64_t KVH, int64_t hd, float softcap);
/* dq (B,T,H,hd), dk, dv (B,T,KVH,hd) = gradients given dout; out and lse
 * from the forward pass; probabilities are recomputed, not stored. */
void lorac_attention_train_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                                    const float *q, const float *k, const float *v, const float *out,
                                    const float *lse, const int32_t *start, int64_t B, int64_t T, int64_t H,
                                    int64_t KVH, int64_t hd, float softcap);

/* ---- optimizer kernels --------------------------------------------------- */
/* The scalars of one AdamW step (lorac_adamw_step computes them). */
typedef struct {
    float grad_scale, decay, beta1, one_minus_beta1, beta2, one_minus_beta2;
    float bias_correction2_sqrt, eps, neg_step_size;
} lorac_adamw_coefs_t;
/* One AdamW update of n values of p with gradient g and moments m, v, in
 * place, each value as torch 1.13's _single_tensor_adamw updates it (the
 * same bits for any thread count). */
void lorac_adamw_update_f32(float *p, float *m, float *v, const float *g, int64_t n, const lorac_adamw_coefs_t *c);
/* Σ (g[k]·scale)² in double, in vector lanes (one thread: the same bits
 * for any thread count). */
double lorac_sum_squares_f32(const float *g, int64_t n, float scale);

/* Cross-entropy of each row of logits (T,V) against targets (T), in place:
 * on return logits holds d(scale · Σ loss)/dlogits = scale·(softmax − onehot).
 * losses (T) gets each row's loss (natural log). Targets must be in [0,V). */
void lorac_crossentropy_forward_backward(float *logits, float *losses, const int32_t *targets, float scale,
                                         int64_t T, int64_t V);

/* One block of columns [v0, v0 + vb) of a cross-entropy computed block by
 * block over the vocabulary (online softmax). z (n, vb) holds the block's
 * logits; row_max (n, start -inf) and others_sum (n, start 0) carry each
 * row's running max and Σ exp(z - max) over the columns seen other than
 * its target; target_logit[t] receives the target's logit from the block
 * that holds it. On return z holds exp(z - max) with the target's column
 * 0; acc (n, D), when not NULL, is rescaled where a row's max grew, so that
 * acc += z · W_block keeps it Σ_v exp(z_v - max)·W_v over the targets'
 * others. At the end, with S = others + exp(target - max): loss = max +
 * log S - target, and dLoss/dx = acc/S - (others/S)·W_target. */
void lorac_crossentropy_online_block(float *z, int64_t n, int64_t vb, int64_t v0, const int32_t *targets,
                                     float *row_max, double *others_sum, float *target_logit, float *acc,
                                     int64_t D);

/* The whole vocabulary's online blocks for n rows against a frozen
 * classifier w (V, D) in its dtype: per block of `cols` columns, the logits
 * (x·wᵀ into logits, n x cols scratch), lorac_crossentropy_online_block's
 * update, and acc += block · w_block when acc is given. Each thread takes
 * its own rows through every block, so a block's logits stay in the cache
 * of the core that made them. The same bits as the three calls per block
 * where lorac_matmul_forward_batch takes its batch kernel (128 or more
 * rows, 64 or more columns). packed, when not NULL, is w (f32) packed by
 * lorac_pack_weight, read instead of w (the same bits) where the path has
 * the kernels and cols is a multiple of 16. */
void lorac_crossentropy_classifier(const float *x, const void *w, lorac_dtype_t wt, const float *packed, int64_t n,
                                   int64_t D, int64_t V, int64_t cols, const int32_t *targets, float *logits,
                                   float *row_max, double *others_sum, float *target_logit, float *acc);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_KERNELS_H */
