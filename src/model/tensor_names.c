/* The one table mapping our tensor kinds to HuggingFace names and shapes: the
 * names below follow the config's tensor_prefix ("model." for most). */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "model/model_internal.h"

static const char *const k_names[LORAC_TENSOR_COUNT] = {
    [LORAC_TENSOR_EMBED] = "embed_tokens.weight",
    [LORAC_TENSOR_FINAL_NORM] = "norm.weight",
    [LORAC_TENSOR_LM_HEAD] = "lm_head.weight",
    [LORAC_TENSOR_ATTN_NORM] = "layers.%d.input_layernorm.weight",
    [LORAC_TENSOR_Q] = "layers.%d.self_attn.q_proj.weight",
    [LORAC_TENSOR_K] = "layers.%d.self_attn.k_proj.weight",
    [LORAC_TENSOR_V] = "layers.%d.self_attn.v_proj.weight",
    [LORAC_TENSOR_O] = "layers.%d.self_attn.o_proj.weight",
    [LORAC_TENSOR_Q_BIAS] = "layers.%d.self_attn.q_proj.bias",
    [LORAC_TENSOR_K_BIAS] = "layers.%d.self_attn.k_proj.bias",
    [LORAC_TENSOR_V_BIAS] = "layers.%d.self_attn.v_proj.bias",
    [LORAC_TENSOR_O_BIAS] = "layers.%d.self_attn.o_proj.bias",
    [LORAC_TENSOR_FFN_NORM] = "layers.%d.post_attention_layernorm.weight",
    [LORAC_TENSOR_GATE] = "layers.%d.mlp.gate_proj.weight",
    [LORAC_TENSOR_UP] = "layers.%d.mlp.up_proj.weight",
    [LORAC_TENSOR_DOWN] = "layers.%d.mlp.down_proj.weight",
    [LORAC_TENSOR_GATE_BIAS] = "layers.%d.mlp.gate_proj.bias",
    [LORAC_TENSOR_UP_BIAS] = "layers.%d.mlp.up_proj.bias",
    [LORAC_TENSOR_DOWN_BIAS] = "layers.%d.mlp.down_proj.bias",
    [LORAC_TENSOR_Q_NORM] = "layers.%d.self_attn.q_norm.weight",
    [LORAC_TENSOR_K_NORM] = "layers.%d.self_attn.k_norm.weight",
    [LORAC_TENSOR_ATTN_POST_NORM] = "layers.%d.post_attention_layernorm.weight",
    [LORAC_TENSOR_FFN_POST_NORM] = "layers.%d.post_feedforward_layernorm.weight",
    [LORAC_TENSOR_QKV] = "layers.%d.self_attn.qkv_proj.weight",
    [LORAC_TENSOR_GATE_UP] = "layers.%d.mlp.gate_up_proj.weight",
};

/* GPT-2's (GPT2LMHeadModel): under "transformer." as transformers saves
 * them, or with no prefix (tensor_prefix "") as the original
 * openai-community/gpt2 files name them. */
static const char *const k_gpt2_names[LORAC_TENSOR_COUNT] = {
    [LORAC_TENSOR_EMBED] = "wte.weight",
    [LORAC_TENSOR_POS_EMBED] = "wpe.weight",
    [LORAC_TENSOR_FINAL_NORM] = "ln_f.weight",
    [LORAC_TENSOR_FINAL_NORM_BIAS] = "ln_f.bias",
    [LORAC_TENSOR_LM_HEAD] = "lm_head.weight",
    [LORAC_TENSOR_ATTN_NORM] = "h.%d.ln_1.weight",
    [LORAC_TENSOR_ATTN_NORM_BIAS] = "h.%d.ln_1.bias",
    [LORAC_TENSOR_QKV] = "h.%d.attn.c_attn.weight",
    [LORAC_TENSOR_QKV_BIAS] = "h.%d.attn.c_attn.bias",
    [LORAC_TENSOR_O] = "h.%d.attn.c_proj.weight",
    [LORAC_TENSOR_O_BIAS] = "h.%d.attn.c_proj.bias",
    [LORAC_TENSOR_FFN_NORM] = "h.%d.ln_2.weight",
    [LORAC_TENSOR_FFN_NORM_BIAS] = "h.%d.ln_2.bias",
    [LORAC_TENSOR_UP] = "h.%d.mlp.c_fc.weight",
    [LORAC_TENSOR_UP_BIAS] = "h.%d.mlp.c_fc.bias",
    [LORAC_TENSOR_DOWN] = "h.%d.mlp.c_proj.weight",
    [LORAC_TENSOR_DOWN_BIAS] = "h.%d.mlp.c_proj.bias",
};

int lorac_tensor_is_per_layer(lorac_tensor_kind_t kind) {
    return kind != LORAC_TENSOR_EMBED && kind != LORAC_TENSOR_FINAL_NORM && kind != LORAC_TENSOR_LM_HEAD &&
           kind != LORAC_TENSOR_POS_EMBED && kind != LORAC_TENSOR_FINAL_NORM_BIAS;
}

void lorac_tensor_name(const lorac_model_config_t *c, lorac_tensor_kind_t kind, int32_t layer, char *buf, size_t cap) {
    /* with sandwich norms, "post_attention_layernorm" is the attention
     * output's norm and the MLP's input norm has a name of its own */
    bool gpt2 = c->arch == LORAC_ARCH_GPT2;
    const char *fmt = c->sandwich_norms && kind == LORAC_TENSOR_FFN_NORM ? "layers.%d.pre_feedforward_layernorm.weight"
                      : gpt2                                              ? k_gpt2_names[kind]
                                                                          : k_names[kind];
    if (!fmt) fmt = "?"; /* a kind the architecture does not have */
    /* "model." before the decoder's tensors (GPT-2's "transformer.", or
     * none in its original checkpoint); the head sits beside the decoder:
     * "lm_head.weight", or in the released Gemma 3 multimodal files
     * "language_model.lm_head.weight" */
    const char *prefix = c->tensor_prefix[0] || gpt2 ? c->tensor_prefix : "model";
    size_t n = 0;
    if (kind == LORAC_TENSOR_LM_HEAD)
        n = strcmp(prefix, "language_model.model") == 0 ? (size_t)snprintf(buf, cap, "language_model.") : 0;
    else if (prefix[0])
        n = (size_t)snprintf(buf, cap, "%s.", prefix);
    if (n >= cap) return;
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
#endif
    if (lorac_tensor_is_per_layer(kind)) snprintf(buf + n, cap - n, fmt, layer);
    else snprintf(buf + n, cap - n, "%s", fmt);
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
}

int lorac_tensor_is_conv1d(const lorac_model_config_t *c, lorac_tensor_kind_t kind) {
    return c->arch == LORAC_ARCH_GPT2 && (kind == LORAC_TENSOR_QKV || kind == LORAC_TENSOR_O || kind == LORAC_TENSOR_UP ||
                                          kind == LORAC_TENSOR_DOWN);
}

/* Each tensor's shape, every projection (out, in) as nn.Linear holds it. */
static int linear_shape(lorac_tensor_kind_t kind, const lorac_model_config_t *c, int64_t shape[2]) {
    int64_t D = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    int64_t Q = (int64_t)c->n_heads * c->head_dim, KV = (int64_t)c->n_kv_heads * c->head_dim;
    switch (kind) {
    case LORAC_TENSOR_EMBED: case LORAC_TENSOR_LM_HEAD: shape[0] = V; shape[1] = D; return 2;
    case LORAC_TENSOR_FINAL_NORM: case LORAC_TENSOR_ATTN_NORM: case LORAC_TENSOR_FFN_NORM:
    case LORAC_TENSOR_ATTN_POST_NORM: case LORAC_TENSOR_FFN_POST_NORM:
    case LORAC_TENSOR_O_BIAS: case LORAC_TENSOR_DOWN_BIAS: shape[0] = D; return 1;
    case LORAC_TENSOR_Q: shape[0] = Q; shape[1] = D; return 2;
    case LORAC_TENSOR_K: case LORAC_TENSOR_V: shape[0] = KV; shape[1] = D; return 2;
    case LORAC_TENSOR_O: shape[0] = D; shape[1] = Q; return 2;
    case LORAC_TENSOR_Q_BIAS: shape[0] = Q; return 1;
    case LORAC_TENSOR_K_BIAS: case LORAC_TENSOR_V_BIAS: shape[0] = KV; return 1;
    case LORAC_TENSOR_GATE: case LORAC_TENSOR_UP: shape[0] = I; shape[1] = D; return 2;
    case LORAC_TENSOR_DOWN: shape[0] = D; shape[1] = I; return 2;
    case LORAC_TENSOR_GATE_BIAS: case LORAC_TENSOR_UP_BIAS: shape[0] = I; return 1;
    case LORAC_TENSOR_Q_NORM: case LORAC_TENSOR_K_NORM: shape[0] = c->head_dim; return 1;
    case LORAC_TENSOR_QKV: shape[0] = Q + 2 * KV; shape[1] = D; return 2;
    case LORAC_TENSOR_GATE_UP: shape[0] = 2 * I; shape[1] = D; return 2;
    case LORAC_TENSOR_POS_EMBED: shape[0] = c->max_position_embeddings; shape[1] = D; return 2;
    case LORAC_TENSOR_QKV_BIAS: shape[0] = Q + 2 * KV; return 1;
    case LORAC_TENSOR_ATTN_NORM_BIAS: case LORAC_TENSOR_FFN_NORM_BIAS: case LORAC_TENSOR_FINAL_NORM_BIAS:
        shape[0] = D; return 1;
    case LORAC_TENSOR_COUNT: break;
    }
    return 0;
}

int lorac_tensor_expected_shape(lorac_tensor_kind_t kind, const lorac_model_config_t *c, int64_t shape[2]) {
    int nd = linear_shape(kind, c, shape);
    if (lorac_tensor_is_conv1d(c, kind)) { /* (in, out) */
        int64_t out = shape[0];
        shape[0] = shape[1];
        shape[1] = out;
    }
    return nd;
}
