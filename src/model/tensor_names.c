/* The one table mapping our tensor kinds to HuggingFace names and shapes: the
 * names below follow the config's tensor_prefix ("model." for most). */
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

int lorac_tensor_is_per_layer(lorac_tensor_kind_t kind) {
    return kind != LORAC_TENSOR_EMBED && kind != LORAC_TENSOR_FINAL_NORM && kind != LORAC_TENSOR_LM_HEAD;
}

void lorac_tensor_name(const lorac_model_config_t *c, lorac_tensor_kind_t kind, int32_t layer, char *buf, size_t cap) {
    /* with sandwich norms, "post_attention_layernorm" is the attention
     * output's norm and the MLP's input norm has a name of its own */
    const char *fmt = c->sandwich_norms && kind == LORAC_TENSOR_FFN_NORM ? "layers.%d.pre_feedforward_layernorm.weight"
                                                                          : k_names[kind];
    /* the head sits beside the decoder: "lm_head.weight", or in the released
     * Gemma 3 multimodal files "language_model.lm_head.weight" */
    const char *prefix = c->tensor_prefix[0] ? c->tensor_prefix : "model";
    if (kind == LORAC_TENSOR_LM_HEAD) {
        snprintf(buf, cap, "%s%s", strcmp(prefix, "language_model.model") == 0 ? "language_model." : "", fmt);
        return;
    }
    size_t n = (size_t)snprintf(buf, cap, "%s.", prefix);
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

int lorac_tensor_expected_shape(lorac_tensor_kind_t kind, const lorac_model_config_t *c, int64_t shape[2]) {
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
    case LORAC_TENSOR_COUNT: break;
    }
    return 0;
}
