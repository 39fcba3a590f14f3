/* Private layout of a loaded model, shared by the loader, the forward pass
 * and (later) the LoRA and training code. */
#ifndef LORAC_MODEL_INTERNAL_H
#define LORAC_MODEL_INTERNAL_H

#include "lorac/model.h"
#include "lorac/safetensors.h"

/* A weight read in place from the mapping, in its file dtype. */
typedef struct {
    const void *data;
    lorac_dtype_t dtype;
} lorac_wref_t;

/* Every tensor kind of the LLaMA family, in one table (tensor_names.c). */
typedef enum {
    LORAC_TENSOR_EMBED = 0,
    LORAC_TENSOR_FINAL_NORM,
    LORAC_TENSOR_LM_HEAD,
    LORAC_TENSOR_ATTN_NORM,
    LORAC_TENSOR_Q,
    LORAC_TENSOR_K,
    LORAC_TENSOR_V,
    LORAC_TENSOR_O,
    LORAC_TENSOR_Q_BIAS,
    LORAC_TENSOR_K_BIAS,
    LORAC_TENSOR_V_BIAS,
    LORAC_TENSOR_O_BIAS,
    LORAC_TENSOR_FFN_NORM,
    LORAC_TENSOR_GATE,
    LORAC_TENSOR_UP,
    LORAC_TENSOR_DOWN,
    LORAC_TENSOR_GATE_BIAS,
    LORAC_TENSOR_UP_BIAS,
    LORAC_TENSOR_DOWN_BIAS,
    LORAC_TENSOR_Q_NORM, /* Qwen3: (head_dim), shared by every head */
    LORAC_TENSOR_K_NORM,
    LORAC_TENSOR_ATTN_POST_NORM, /* sandwich_norms (Gemma 2, 3): the attention's output, and the MLP's */
    LORAC_TENSOR_FFN_POST_NORM,
    LORAC_TENSOR_QKV,     /* fused_proj (Phi-3): q, k and v rows in one tensor */
    LORAC_TENSOR_GATE_UP, /* fused_proj: gate and up rows */
    LORAC_TENSOR_POS_EMBED,      /* learned_positions (GPT-2): (max_position_embeddings, D) */
    LORAC_TENSOR_QKV_BIAS,       /* GPT-2's c_attn bias: q, k and v's */
    LORAC_TENSOR_ATTN_NORM_BIAS, /* layer_norm (GPT-2): each LayerNorm's bias */
    LORAC_TENSOR_FFN_NORM_BIAS,
    LORAC_TENSOR_FINAL_NORM_BIAS,
    LORAC_TENSOR_COUNT
} lorac_tensor_kind_t;

/* HuggingFace name of a tensor ("model.layers.3.self_attn.q_proj.weight")
 * in the config's architecture written into buf; layer is ignored for the
 * global tensors. */
void lorac_tensor_name(const lorac_model_config_t *c, lorac_tensor_kind_t kind, int32_t layer, char *buf, size_t cap);
/* 1 for tensors that exist once per layer. */
int lorac_tensor_is_per_layer(lorac_tensor_kind_t kind);
/* 1 for a projection the files hold as a Conv1D weight, (in, out): GPT-2's
 * c_attn, c_proj, c_fc and the MLP's c_proj. */
int lorac_tensor_is_conv1d(const lorac_model_config_t *c, lorac_tensor_kind_t kind);
/* Expected shape of the tensor for this config, as the file holds it (a
 * Conv1D projection (in, out)); returns the number of dims. */
int lorac_tensor_expected_shape(lorac_tensor_kind_t kind, const lorac_model_config_t *c, int64_t shape[2]);

typedef struct {
    lorac_wref_t attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down;
    lorac_wref_t q_norm, k_norm;          /* qk_norm (Qwen3, Gemma 3); empty otherwise */
    lorac_wref_t attn_post_norm, ffn_post_norm; /* sandwich_norms (Gemma 2, 3); empty otherwise */
    float *bq, *bk, *bv, *bo, *b_gate, *b_up, *b_down; /* f32 copies; NULL when absent */
    /* layer_norm (GPT-2): the two LayerNorms' weights and biases, f32 copies */
    float *attn_norm_w, *attn_norm_b, *ffn_norm_w, *ffn_norm_b;
} lorac_layer_weights_t;

/* An aligned copy of a tensor and where in the mapped file it comes from. */
typedef struct {
    void *dst;
    const void *src;
    size_t n;
    int filled;          /* 0 until its bytes are copied */
    int64_t first_piece; /* its first piece in fill_aligned_copies */
} aligned_copy_t;

struct lorac_model {
    lorac_model_config_t config;
    char *dir;
    lorac_weight_files_t *files;
    lorac_tokenizer_t *tokenizer;         /* NULL when the directory has none */
    lorac_wref_t embed, final_norm, lm_head; /* lm_head == embed when tied */
    lorac_wref_t pos_embed;               /* learned_positions (GPT-2); empty otherwise */
    float *final_norm_w, *final_norm_b;   /* layer_norm (GPT-2): f32 copies */
    lorac_layer_weights_t *layers;        /* n_layers */
    float *inv_freq;                      /* rotary_dim / 2 rotary frequencies (Phi-3's short factors) */
    float *inv_freq_local;                /* the windowed layers' (rope_local_theta); NULL without one */
    float *inv_freq_long;                 /* Phi-3's long factors (rope_longrope); NULL without */
    aligned_copy_t *aligned_copies;       /* tensors not LORAC_WEIGHT_ALIGN-aligned in the file, copied */
    int32_t n_aligned_copies;
    void **quantized;                     /* the NF4 projections' blocks, one allocation each */
    int32_t n_quantized, n_unquantized;   /* lorac_model_load_params_t's quantize: done, and left as stored */
    lorac_dtype_t quantize;               /* lorac_model_load_params_t's */
    int for_training;                     /* lorac_model_load_for_training */
    int64_t n_params;
};

/* ---- bitsandbytes 4-bit checkpoints (bnb.c) ---------------------------- */

/* The JSON of a weight's "quant_state.bitsandbytes__nf4" tensor. */
typedef struct {
    int64_t shape[2];
    lorac_dtype_t dtype;      /* the weight's before quantization: F32, F16 or BF16 */
    int nested;               /* double quantization: the absmax in 8 bits */
    int64_t nested_blocksize; /* nested: blocks of absmax per nested absmax */
    float nested_offset;      /* nested: added to every decoded absmax */
} lorac_bnb_quant_state_t;

lorac_status_t lorac_bnb_parse_quant_state(const void *bytes, size_t n, const char *label, lorac_bnb_quant_state_t *qs);

/* A tensor by name, from a model's files or one safetensors file. */
typedef const lorac_tensor_view_t *(*lorac_bnb_find_fn)(const void *files, const char *name);

/* lorac_weight_files_find, as a lorac_bnb_find_fn. */
const lorac_tensor_view_t *lorac_bnb_find_in_weight_files(const void *wf, const char *name);

/* What bitsandbytes saves beside a 4-bit weight "X.weight": "X.weight" +
 * each suffix (".absmax", ".quant_map", ..., ".quant_state.bitsandbytes__nf4"). */
#define LORAC_BNB_N_STATE 6
extern const char *const lorac_bnb_state_suffixes[LORAC_BNB_N_STATE];
/* State tensor k of weight `name`; NULL when absent. */
const lorac_tensor_view_t *lorac_bnb_state_tensor(lorac_bnb_find_fn find, const void *files, const char *name, int k);
/* 1 for a weight stored as bitsandbytes' U8 codes: any of its state is there. */
int lorac_bnb_is_weight(lorac_bnb_find_fn find, const void *files, const lorac_tensor_view_t *tv);
/* 1 for a tensor of such a weight's state. */
int lorac_bnb_is_state(lorac_bnb_find_fn find, const void *files, const char *name);

/* Weight `name`, stored by bitsandbytes as NF4 codes with its quantization
 * state beside it, as a new NF4 tensor in lorac's layout
 * (LORAC_WEIGHT_ALIGN-aligned; the caller frees it); *state (when not NULL)
 * gets the state read. Every companion tensor's dtype and size, the
 * state's shape against want (rows, cols; NULL: any) and the quant_map
 * against NF4's values are checked. */
lorac_status_t lorac_bnb_read_nf4(lorac_bnb_find_fn find, const void *files, const char *name, const int64_t *want,
                                  lorac_bnb_quant_state_t *state, void **out);

/* Hands back the mapped file's pages under a weight's data (nbytes from
 * data) when that data lies in the mapping, not in one of the model's
 * aligned copies: the process's memory drops, and the pages come back
 * from the file if read again. For a caller that keeps its own copy. */
void lorac_model_release_weight(const lorac_model_t *m, const void *data, size_t nbytes);

/* The rotary cosines and sines (T, rotary_dim) of positions pos with the
 * frequencies inv_freq (one of the model's), times Phi-3's attention factor. */
void lorac_model_rope_table(const lorac_model_t *m, float *cs, const int32_t *pos, int64_t T, const float *inv_freq);

#endif
