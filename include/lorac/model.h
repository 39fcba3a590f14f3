/* lorac/model.h — LLaMA-family models: config, weights, per-run state and the
 * forward pass.
 *
 * A model is read-only once loaded: config + weights mapped from the
 * safetensors files in their own dtype (F32, BF16, F16; no f32 copy of a
 * half-precision model) + the tokenizer when the directory has one. Everything
 * a run changes (KV cache, activations) lives in a separate context, so one
 * model serves many contexts, possibly on different threads.
 *
 * Supported architectures (config.json "architectures"[0]): LlamaForCausalLM,
 * MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, SmolLM3ForCausalLM,
 * GraniteForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, the text
 * model of Gemma3ForConditionalGeneration, Phi3ForCausalLM, and
 * GPT2LMHeadModel (LayerNorm, learned positions, a plain GELU MLP). Tensor
 * names follow HuggingFace ("model.layers.%d.self_attn.q_proj.weight",
 * "transformer.h.%d.attn.c_attn.weight", ...), mapped in one table in
 * src/model/tensor_names.c.
 */
#ifndef LORAC_MODEL_H
#define LORAC_MODEL_H

#include <stdbool.h>

#include "lorac/core.h"
#include "lorac/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LORAC_MAX_EOS_IDS 8

typedef enum {
    LORAC_ARCH_LLAMA = 0,
    LORAC_ARCH_MISTRAL,
    LORAC_ARCH_QWEN2,
    LORAC_ARCH_QWEN3,
    LORAC_ARCH_SMOLLM3,
    LORAC_ARCH_GRANITE,
    LORAC_ARCH_GEMMA3,
    LORAC_ARCH_GEMMA2,
    LORAC_ARCH_PHI3,
    LORAC_ARCH_GPT2
} lorac_arch_t;

/* The MLP's activation: silu(gate)·up (SwiGLU), or gelu(gate)·up with
 * GELU's tanh approximation (GeGLU: Gemma's "gelu_pytorch_tanh"). */
typedef enum { LORAC_ACT_SILU = 0, LORAC_ACT_GELU_TANH } lorac_act_t;

#define LORAC_MAX_LAYERS 4096
/* Most rotary frequencies a config may give factors for (head_dim / 2) */
#define LORAC_MAX_ROPE_FACTORS 256

typedef struct {
    lorac_arch_t arch;
    char arch_name[64];           /* as in config.json */
    int32_t vocab_size;
    int32_t hidden_size;          /* D */
    int32_t intermediate_size;    /* MLP hidden */
    int32_t n_layers;
    int32_t n_heads;
    int32_t n_kv_heads;           /* < n_heads: grouped-query attention */
    int32_t head_dim;             /* hidden_size / n_heads unless "head_dim" says */
    int32_t max_position_embeddings;
    float rms_norm_eps;           /* the norms' eps (GPT-2's LayerNorm's "layer_norm_epsilon") */
    float rope_theta;
    /* Llama-3 "rope_scaling": {"rope_type": "llama3", ...}; 0 when absent */
    bool rope_llama3;
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int32_t rope_original_max_position;
    /* Phi-3's "longrope" (or "su") rope_scaling: frequency i divided by
     * rope_short_factor[i] in a sequence of up to
     * rope_original_max_position positions and by rope_long_factor[i] in a
     * longer one, cosines and sines times rope_attention_factor (1 without) */
    bool rope_longrope;
    float rope_attention_factor;
    float rope_short_factor[LORAC_MAX_ROPE_FACTORS], rope_long_factor[LORAC_MAX_ROPE_FACTORS];
    /* the rotated part of each head: head_dim, or Phi-3's head_dim ·
     * partial_rotary_factor (the rest passes through) */
    int32_t rotary_dim;
    /* Phi-3: q, k and v in one self_attn.qkv_proj (rows q, k, v), gate and
     * up in one mlp.gate_up_proj (rows gate, up), read in place as row
     * blocks; PEFT adapts them as the modules qkv_proj and gate_up_proj */
    bool fused_proj;
    /* "rope_type": "linear": every frequency divided by it; 1 otherwise */
    float rope_linear_factor;
    /* Gemma 3: the windowed layers' rotary base ("rope_local_base_freq"),
     * unscaled; 0: every layer uses rope_theta */
    float rope_local_theta;
    bool tie_word_embeddings;
    bool qkv_bias;                /* Qwen2, or Llama's and Qwen3's "attention_bias" */
    bool o_bias;                  /* Llama's and Qwen3's "attention_bias" */
    bool mlp_bias;                /* Llama "mlp_bias" */
    bool qk_norm;                 /* Qwen3: an RMSNorm over each head of q and of k, before rotary */
    /* SmolLM3's NoPE layers: bit l set when layer l applies no rotary
     * (its "no_rope_layers"[l] is 0); see lorac_model_layer_has_rope */
    uint64_t nope_layers[LORAC_MAX_LAYERS / 64];
    /* Sliding-window attention: in a layer whose bit is set in
     * window_layers, the token at position p sees keys p - sliding_window
     * + 1 .. p only (transformers' sliding_window_overlay: kv > q - W).
     * sliding_window is 0 when no layer has a window; see
     * lorac_model_layer_window */
    int32_t sliding_window;
    uint64_t window_layers[LORAC_MAX_LAYERS / 64];
    /* Granite's multipliers (1 for the others): the embedding's rows times
     * embedding_multiplier, each block's output added to the residual
     * stream times residual_multiplier, the logits divided by
     * logits_scaling, and attention scores q·k times attention_multiplier
     * instead of 1/sqrt(head_dim), which the pass applies as q times
     * query_scale = attention_multiplier·sqrt(head_dim) */
    float embedding_multiplier, residual_multiplier, logits_scaling, query_scale;
    /* Gemma 2 and 3: every RMSNorm scales by (1 + w) (norm_offset 1; 0 for the
     * others); each block's output is normalised before it joins the
     * residual stream (sandwich_norms: post_attention_layernorm and
     * post_feedforward_layernorm, the MLP's input norm then being
     * pre_feedforward_layernorm); the MLP's activation */
    float norm_offset;
    bool sandwich_norms;
    lorac_act_t act;
    /* Gemma 2's soft-capping, s → cap · tanh(s / cap), of the attention
     * scores (after their scale) and of the logits; 0: none */
    float attn_softcap, final_softcap;
    /* Where the decoder lives: "model" for the *ForCausalLM classes.
     * Gemma3ForConditionalGeneration nests its text model: PEFT names its
     * modules "model.language_model.layers.N..." (module_prefix; an adapter
     * made under transformers < 4.52, "language_model.model.layers.N...",
     * keeps its own), and checkpoints name its tensors
     * "language_model.model.layers.N..." (the released files; the head then
     * "language_model.lm_head.weight") or "model.language_model.layers.N..."
     * (tensor_prefix, which lorac_model_load takes from the files). Its
     * other towers (vision) are not run. */
    char module_prefix[32], tensor_prefix[32];
    bool text_of_multimodal;
    /* GPT-2: every norm is a LayerNorm with a bias (layer_norm); the
     * positions are a learned table added to the embedding
     * (learned_positions: no rotary, rotary_dim 0, at most
     * max_position_embeddings positions); the MLP is
     * down(gelu(up(x))) with no gate (plain_mlp); q, k and v are one fused
     * c_attn with a bias (fused_qkv); and the files hold each projection
     * as a Conv1D weight, (in, out), which lorac_model_load transposes. */
    bool layer_norm, learned_positions, plain_mlp, fused_qkv;
    /* GPT-2's "scale_attn_by_inverse_layer_idx": layer l's scores also
     * divided by l + 1 (see lorac_model_layer_query_scale) */
    bool attn_scale_by_layer;
    /* quantization_config of a bitsandbytes 4-bit NF4 checkpoint (what
     * transformers saves from BitsAndBytesConfig(load_in_4bit=True,
     * bnb_4bit_quant_type="nf4"), unsloth's "-bnb-4bit" uploads): its
     * projections are U8 tensors with their quantization state beside them,
     * which lorac_model_load reads as NF4 (model/bnb.c). Other quantization
     * methods are refused when the config is parsed. */
    bool bnb_nf4;
    int32_t bos_id;               /* -1 when absent */
    int32_t n_eos;                /* eos_token_id may be a list */
    int32_t eos_ids[LORAC_MAX_EOS_IDS];
    char torch_dtype[16];
} lorac_model_config_t;

/* 1 when a sequence of seq_len positions rotates with Phi-3's long factors. */
static inline int lorac_model_rope_long(const lorac_model_config_t *c, int64_t seq_len) {
    return c->rope_longrope && seq_len > c->rope_original_max_position;
}

/* 0 for a layer that applies no rotary embedding to q and k (SmolLM3's NoPE layers), else 1. */
/* What layer `layer` multiplies q by before its scores (the attention
 * kernels then scale by head_dim^-1/2): query_scale, over layer + 1 with
 * GPT-2's scale_attn_by_inverse_layer_idx. */
static inline float lorac_model_layer_query_scale(const lorac_model_config_t *c, int32_t layer) {
    return c->attn_scale_by_layer ? c->query_scale / (float)(layer + 1) : c->query_scale;
}

static inline int lorac_model_layer_has_rope(const lorac_model_config_t *c, int32_t layer) {
    return c->rotary_dim > 0 && !((c->nope_layers[layer >> 6] >> (layer & 63)) & 1u);
}

/* The attention window of a layer: sliding_window for a windowed layer, 0
 * where it sees every earlier position. */
static inline int32_t lorac_model_layer_window(const lorac_model_config_t *c, int32_t layer) {
    return ((c->window_layers[layer >> 6] >> (layer & 63)) & 1u) ? c->sliding_window : 0;
}

/* Parses config.json text. `label` names it in error messages. Unknown
 * architectures are LORAC_STATUS_UNSUPPORTED; missing or out-of-range fields
 * LORAC_STATUS_FORMAT naming the field. */
lorac_status_t lorac_model_config_parse(const char *json, size_t len, const char *label,
                                        lorac_model_config_t *out);

typedef struct lorac_model lorac_model_t;

/* Loads a HuggingFace model directory: config.json, model.safetensors (or
 * shards), and tokenizer.json when present (its absence is not an error:
 * `logits` and token-id training need none). Missing tensors and wrong shapes
 * are LORAC_STATUS_FORMAT errors naming the tensor, the expected and the
 * found shape. */
lorac_status_t lorac_model_load(const char *dir, lorac_model_t **out);
/* lorac_model_load for a LoRA training run: where the kernels repack f32
 * weights (lorac_kernels_have_packed), the projections' and classifier's
 * stay in the mapped file even off a cache line, instead of being copied
 * aligned, as the training pass repacks them and hands the file's pages
 * back (one copy resident, not two). Inference on such a model still
 * works, reading those pages again (and misaligned, a few % slower). */
lorac_status_t lorac_model_load_for_training(const char *dir, lorac_model_t **out);
/* How lorac_model_load_ex loads. */
typedef struct {
    bool for_training;      /* as lorac_model_load_for_training */
    /* LORAC_DTYPE_NF4: the decoder layers' projections (attention q, k, v,
     * o; the MLP's) quantized to QLoRA's 4-bit NormalFloat (lorac/kernels.h)
     * as they load, as bitsandbytes' load_in_4bit does with every Linear
     * layer but the output head: the embeddings, norms, biases and head
     * stay as stored. Each is read from the file once and its pages let go,
     * so the projections take about a quarter of BF16's memory and never
     * more than one of them is held twice. A projection whose rows are not
     * a multiple of 8 long stays in its dtype (lorac_model_n_unquantized).
     * LORAC_DTYPE_F32 (0): none. */
    lorac_dtype_t quantize;
} lorac_model_load_params_t;
lorac_status_t lorac_model_load_ex(const char *dir, const lorac_model_load_params_t *params, lorac_model_t **out);
/* The projections a quantizing load left in their dtype. */
int32_t lorac_model_n_unquantized(const lorac_model_t *model);
/* 1 when dir has a config.json but no tokenizer.json: a cheap check for
 * callers that need the tokenizer, before the weights load. */
int lorac_model_dir_lacks_tokenizer(const char *dir);
void lorac_model_free(lorac_model_t *model);

const lorac_model_config_t *lorac_model_get_config(const lorac_model_t *model);
/* NULL when the directory had no tokenizer.json. Owned by the model. */
const lorac_tokenizer_t *lorac_model_get_tokenizer(const lorac_model_t *model);
/* dtype of the big matrices (the first layer's q_proj). */
lorac_dtype_t lorac_model_weight_dtype(const lorac_model_t *model);
int64_t lorac_model_n_params(const lorac_model_t *model);
/* 1 when `id` is one of the config's end-of-sequence ids. */
int lorac_model_is_eos(const lorac_model_t *model, int32_t id);

/* ---- per-run state ------------------------------------------------------- */
typedef struct {
    int32_t n_ctx;          /* KV cache positions per sequence */
    int32_t n_seq;          /* sequences that can be in flight at once */
    int32_t n_batch;        /* most tokens in one lorac_context_decode call */
    lorac_dtype_t kv_dtype; /* KV cache values: F32 (0, the default), or BF16 / F16 (half the memory;
                               keys and values rounded to nearest even as they are stored) */
} lorac_context_params_t;

lorac_context_params_t lorac_context_default_params(void);

typedef struct lorac_context lorac_context_t;
struct lorac_adapter; /* lorac/lora.h */

/* Allocates the KV cache (n_seq * n_ctx positions, fewer in windowed layers:
 * lorac_context_kv_bytes) and activation buffers
 * (n_batch tokens) once, up front. The model must outlive the context.
 * INVALID_ARG for a non-positive size or a kv_dtype other than F32, BF16,
 * F16; NOMEM when the cache does not fit. */
lorac_status_t lorac_context_init(const lorac_model_t *model, lorac_context_params_t params,
                                  lorac_context_t **out);
void lorac_context_free(lorac_context_t *ctx);

/* A batch of tokens, possibly from several sequences. Tokens of one sequence
 * must come in increasing consecutive positions that continue its cache
 * (position p means positions 0..p-1 of that sequence are already cached). */
typedef struct {
    int32_t n_tokens;
    const int32_t *tokens;   /* (n_tokens) */
    const int32_t *pos;      /* (n_tokens) position of each token in its sequence */
    const int32_t *seq_id;   /* (n_tokens) in [0, n_seq) */
    const int8_t *logits;    /* (n_tokens) 1 = return logits for this token; NULL = last only */
} lorac_batch_t;

/* Runs the forward pass over the batch, writing the K/V of every token into
 * the cache, and the logits (vocab_size floats each) of the requested tokens,
 * in batch order, into `logits`. Invalid tokens, positions or sequence ids are
 * LORAC_STATUS_INVALID_ARG and leave the cache as it was. */
lorac_status_t lorac_context_decode(lorac_context_t *ctx, const lorac_batch_t *batch, float *logits);

/* Applies LoRA adapters, unmerged, in every following decode: each
 * projection y = W·x gets + scale_i · s_i · B_i·A_i·x for every adapter i
 * that adapts it. The adapters must fit the model and outlive their use;
 * the arrays are copied. n = 0 detaches all. Changing adapters does not
 * touch the KV cache: clear sequences whose cache was computed with others. */
lorac_status_t lorac_context_set_adapters(lorac_context_t *ctx, const struct lorac_adapter *const *adapters,
                                          const float *scales, int32_t n);

/* Gives one sequence its own adapter (NULL: none) with a scale, applied in
 * every following decode on top of those of lorac_context_set_adapters. A
 * batch may mix sequences with different adapters (and ranks): the base
 * matmuls run once over all rows and each adapter's low-rank term over its
 * rows only (lorac_lora_sgmv); order the batch so a sequence's tokens are
 * contiguous and equal adapters neighbour, which makes fewer segments. O(1):
 * nothing is copied. Like set_adapters, it does not touch the cache. */
lorac_status_t lorac_context_set_seq_adapter(lorac_context_t *ctx, int32_t seq_id, const struct lorac_adapter *adapter,
                                             float scale);

/* Forgets a sequence's cache (its next token starts at position 0). */
void lorac_context_clear_seq(lorac_context_t *ctx, int32_t seq_id);
/* Keeps the first n cached positions of a sequence and forgets the rest
 * (n at or past its length changes nothing): its next token goes at
 * position n. A conversation whose next turn re-renders to the same first n
 * tokens decodes only the tokens after them. Returns the positions kept:
 * n, or the sequence's length when n is past it, or 0 when a windowed
 * layer no longer holds the window of position n (the context keeps only
 * the last positions there; see lorac_context_kv_bytes): the sequence is
 * then cleared, and its tokens must be decoded again. */
int32_t lorac_context_keep_seq(lorac_context_t *ctx, int32_t seq_id, int32_t n);
/* Makes sequence dst hold the first n cached positions of sequence src
 * (all of them when n is at or past src's length), as if it had decoded the
 * same tokens with the same adapters: their keys and values, Phi-3's
 * longrope factors and the length; dst's own cache is forgotten. Returns
 * the positions copied: 0, with dst cleared, for src == dst or an id out of
 * range, or when a windowed layer of src no longer holds the window of
 * position n (see lorac_context_keep_seq). A server gives a new request
 * the shared start of a running one's prompt this way. */
int32_t lorac_context_copy_seq(lorac_context_t *ctx, int32_t src, int32_t dst, int32_t n);
/* Bytes of the KV cache, keys and values. A layer with a sliding window
 * of W positions (Mistral 7B v0.1, Gemma 2 and 3) keeps W + n_batch - 1 +
 * min(W, 256) rows a sequence rather than n_ctx when that is fewer: the
 * rows its window has passed are reused. */
size_t lorac_context_kv_bytes(const lorac_context_t *ctx);
/* Cached length of a sequence. */
int32_t lorac_context_seq_len(const lorac_context_t *ctx, int32_t seq_id);
/* Phi-3's longrope: transformers rotates all the positions of a forward
 * pass with the long factors when its sequence is longer than
 * original_max_position_embeddings. A sequence's factors are fixed when
 * its first positions are decoded, by the largest of the length that batch
 * takes it to and the length given here (so a prompt decoded in several
 * batches is rotated as one pass over it is); a later batch that would
 * need the other factors is refused (transformers recomputes the cache
 * there: clear the sequence and decode it again). Reset by
 * lorac_context_clear_seq; nothing for other models. */
void lorac_context_set_seq_rope_len(lorac_context_t *ctx, int32_t seq_id, int32_t len);
/* 1 when the sequence's cached positions were rotated with the long factors. */
int lorac_context_seq_rope_long(const lorac_context_t *ctx, int32_t seq_id);

/* ---- training pass ---------------------------------------------------------
 * Forward and backward over a batch of rows (batch, seq_len) with every
 * activation the backward pass needs kept in one planned buffer, sized once.
 * With an adapter, only its A and B get gradients (the base weights stay in
 * the read-only mapping, in their dtype, with no gradient memory). Without an
 * adapter (`full`), every weight is trained from f32 master copies. */
typedef struct {
    int32_t batch;
    int32_t seq_len;
} lorac_train_pass_params_t;

typedef struct lorac_train_pass lorac_train_pass_t;

/* adapter != NULL: LoRA training of that adapter (it must fit the model and
 * outlive the pass). adapter == NULL: full fine-tuning. */
lorac_status_t lorac_train_pass_init(const lorac_model_t *model, struct lorac_adapter *adapter,
                                     lorac_train_pass_params_t params, lorac_train_pass_t **out);
void lorac_train_pass_free(lorac_train_pass_t *pass);

/* tokens, targets, pos are (batch, seq_len). targets[i] is the token that
 * position i should predict, or -100 to ignore it. pos[i] is the position
 * within its example; it restarts at 0 where a packed example starts, and
 * attention never crosses that boundary (token i sees i - pos[i] .. i).
 * Computes the mean cross-entropy over the targets that are not -100 and,
 * when grads is true, accumulates (+=) its gradient into the trainable
 * parameters' gradients. rng drives LoRA dropout (NULL: no dropout, as in
 * evaluation). loss_sum receives the summed loss, n_targets the count. */
lorac_status_t lorac_train_pass_run(lorac_train_pass_t *pass, const int32_t *tokens, const int32_t *targets,
                                    const int32_t *pos, bool grads, lorac_rng_t *rng, double *loss_sum,
                                    int64_t *n_targets);

/* Trainable parameters (for the optimizer and checkpoints): name (PEFT's key
 * for LoRA, the HuggingFace tensor name for full), f32 data, gradient. */
int32_t lorac_train_pass_n_params(const lorac_train_pass_t *pass);
void lorac_train_pass_param(lorac_train_pass_t *pass, int32_t i, const char **name, float **data, float **grad,
                            int64_t *n);
void lorac_train_pass_zero_grad(lorac_train_pass_t *pass);

/* Where a pass spends its time, for `lorac train --profile`. */
typedef enum {
    LORAC_PHASE_BASE_FORWARD,  /* the base weights' products: x·Wᵀ (with the adapters' s·u·Bᵀ fused in) */
    LORAC_PHASE_BASE_DX,       /* dout·W (with the adapters' du·A fused in) */
    LORAC_PHASE_BASE_DW,       /* doutᵀ·x (full fine-tuning only) */
    LORAC_PHASE_LORA,          /* the rest of the adapters' forward and backward, with dropout */
    LORAC_PHASE_ATTENTION,     /* softmax(q·kᵀ)·v and its backward */
    LORAC_PHASE_ROPE,
    LORAC_PHASE_NORMS,         /* RMSNorm forward and backward */
    LORAC_PHASE_SWIGLU,
    LORAC_PHASE_ELEMENTWISE,   /* embedding rows, residual adds, zeroing gradients */
    LORAC_PHASE_LOSS,          /* the classifier's products, cross-entropy and its gradient */
    LORAC_PHASE_COUNT
} lorac_train_phase_t;

const char *lorac_train_phase_name(lorac_train_phase_t phase);

/* With seconds set (LORAC_PHASE_COUNT values), every later run adds the
 * wall time of each phase to seconds[phase] and, when flops is set, the
 * floating-point operations of the weights' products in it (2 per
 * multiply-add: the base phases and the loss) to flops[phase]. seconds
 * NULL stops the timing. */
void lorac_train_pass_time_phases(lorac_train_pass_t *pass, double *seconds, double *flops);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_MODEL_H */
