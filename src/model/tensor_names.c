/* The one table mapping our tensor kinds to HuggingFace names and shapes. */
#include <stdio.h>

#include "model/model_internal.h"

static const char *const k_names[LORAC_TENSOR_COUNT] = {
    [LORAC_TENSOR_EMBED] = "model.embed_tokens.weight",
    [LORAC_TENSOR_FINAL_NORM] = "model.norm.weight",
    [LORAC_TENSOR_LM_HEAD] = "lm_head.weight",
    [LORAC_TENSOR_ATTN_NORM] = "model.layers.%d.input_layernorm.weight",
    [LORAC_TENSOR_Q] = "model.layers.%d.self_attn.q_proj.weight",
    [LORAC_TENSOR_K] = "model.layers.%d.self_attn.k_proj.weight",
    [LORAC_TENSOR_V] = "model.layers.%d.self_attn.v_proj.weight",
    [LORAC_TENSOR_O] = "model.layers.%d.self_attn.o_proj.weight",
    [LORAC_TENSOR_Q_BIAS] = "model.layers.%d.self_attn.q_proj.bias",
    [LORAC_TENSOR_K_BIAS] = "model.layers.%d.self_attn.k_proj.bias",
    [LORAC_TENSOR_V_BIAS] = "model.layers.%d.self_attn.v_proj.bias",
    [LORAC_TENSOR_O_BIAS] = "model.layers.%d.self_attn.o_proj.bias",
    [LORAC_TENSOR_FFN_NORM] = "model.layers.%d.post_attention_layernorm.weight",
    [LORAC_TENSOR_GATE] = "model.layers.%d.mlp.gate_proj.weight",
    [LORAC_TENSOR_UP] = "model.layers.%d.mlp.up_proj.weight",
    [LORAC_TENSOR_DOWN] = "model.layers.%d.mlp.down_proj.weight",
    [LORAC_TENSOR_GATE_BIAS] = "model.layers.%d.mlp.gate_proj.bias",
    [LORAC_TENSOR_UP_BIAS] = "model.layers.%d.mlp.up_proj.bias",
    [LORAC_TENSOR_DOWN_BIAS] = "model.layers.%d.mlp.down_proj.bias",
    [LORAC_TENSOR_Q_NORM] = "model.layers.%d.self_attn.q_norm.weight",
    [LORAC_TENSOR_K_NORM] = "model.layers.%d.self_attn.k_norm.weight",
    [LORAC_TENSOR_ATTN_POST_NORM] = "model.layers.%d.post_attention_layernorm.weight",
    [LORAC_TENSOR_FFN_POST_NORM] = "model.layers.%d.post_feedforward_layernorm.weight",
};

int lorac_tensor_is_per_layer(lorac_tensor_kind_t kind) {
    return kind != LORAC_TENSOR_EMBED && kind != LORAC_TENSOR_FINAL_NORM && kind != LORAC_TENSOR_LM_HEAD;
}

void lorac_tensor_name(const lorac_model_config_t *c, lorac_tensor_kind_t kind, int32_t layer, char *buf, size_t cap) {
    /* with sandwich norms, "post_attention_layernorm" is the attention
     * output's norm and the MLP's input norm has a name of its own */
    const char *fmt = c->sandwich_norms && kind == LORAC_TENSOR_FFN_NORM
                          ? "model.layers.%d.pre_feedforward_layernorm.weight"
                          : k_names[kind];
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
#endif
    if (lorac_tensor_is_per_layer(kind)) snprintf(buf, cap, fmt, layer);
    else snprintf(buf, cap, "%s", fmt);
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
    case LORAC_TENSOR_COUNT: break;
    }
    return 0;
}
