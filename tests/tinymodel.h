/* Writes small random LLaMA-family models as HuggingFace directories for the
 * C tests (config.json + model.safetensors, F32). */
#ifndef LORAC_TEST_TINYMODEL_H
#define LORAC_TEST_TINYMODEL_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "lorac/safetensors.h"

typedef struct {
    int D, I, L, H, KVH, HD, V;
    int tied, bias, qwen2, qwen3; /* qwen3: per-head q/k norms */
    int nope_interval;            /* > 0: SmolLM3, every nope_interval-th layer without rotary */
    int granite;                  /* Granite, with multipliers away from 1 */
    int gemma3;                   /* Gemma 3: (1 + w) norms, sandwich norms, GeGLU, q/k norms, scaled embedding */
    int gemma2;                   /* Gemma 2: Gemma 3's without q/k norms, with soft-capped scores and logits */
    int window;                   /* > 0: a sliding window of that many positions (Mistral's on every layer
                                   * unless another architecture is chosen; Qwen2/3 from layer 1, SmolLM3 NoPE layers) */
    unsigned long long seed;
} tiny_model_t;

static inline float tiny_rand(unsigned long long *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) & 0xffffff) / 16777216.0f - 0.5f;
}

/* Returns 0 on success. */
static inline int tiny_model_write(const char *dir, const tiny_model_t *m) {
    mkdir(dir, 0755);
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "{\"architectures\": [\"%s\"], \"hidden_size\": %d, \"intermediate_size\": %d, "
               "\"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d, "
               "\"vocab_size\": %d, \"rms_norm_eps\": 1e-5, \"tie_word_embeddings\": %s, \"attention_bias\": %s",
            m->qwen2 ? "Qwen2ForCausalLM" : m->qwen3 ? "Qwen3ForCausalLM" : m->nope_interval ? "SmolLM3ForCausalLM" : m->granite ? "GraniteForCausalLM" : m->gemma3 ? "Gemma3ForCausalLM" : m->gemma2 ? "Gemma2ForCausalLM" : m->window ? "MistralForCausalLM" : "LlamaForCausalLM", m->D, m->I, m->L, m->H, m->KVH, m->HD, m->V,
            m->tied ? "true" : "false", m->bias && !m->qwen2 ? "true" : "false");
    if (m->nope_interval) fprintf(f, ", \"no_rope_layer_interval\": %d", m->nope_interval);
    if (m->gemma3) /* layers 0, 2, ... windowed with their own rotary base when window > 0 */
        fprintf(f, ", \"query_pre_attn_scalar\": %d, \"sliding_window_pattern\": 2, \"rope_local_base_freq\": 100.0%s",
                m->HD + 5, m->window ? "" : ", \"sliding_window\": null");
    if (m->gemma2) /* caps that bend these scores and logits; layers 0, 2, ... windowed when window > 0 */
        fprintf(f, ", \"query_pre_attn_scalar\": %d, \"attn_logit_softcapping\": 1.5, \"final_logit_softcapping\": 3.0%s",
                m->HD + 3, m->window ? "" : ", \"sliding_window\": null");
    if (m->window)
        fprintf(f, ", \"sliding_window\": %d, \"use_sliding_window\": true, \"max_window_layers\": 1", m->window);
    if (m->granite)
        fprintf(f, ", \"embedding_multiplier\": 2.5, \"residual_multiplier\": 0.6, \"attention_multiplier\": 0.2, "
                   "\"logits_scaling\": 1.7");
    fputs("}", f);
    fclose(f);
    int max_t = 3 + 17 * m->L, n = 0;
    float norm_one = m->gemma3 || m->gemma2 ? 0.0f : 1.0f; /* Gemma's norms scale by 1 + w */
    lorac_tensor_write_t *t = calloc((size_t)max_t, sizeof *t);
    char (*names)[96] = calloc((size_t)max_t, sizeof *names);
    float **bufs = calloc((size_t)max_t, sizeof *bufs);
    unsigned long long seed = m->seed;
    int Q = m->H * m->HD, KV = m->KVH * m->HD;
    int o_bias = m->bias && !m->qwen2;
#define T(NAME, LAYER, D0, D1, SCALE, OFFSET)                                                   \
    do {                                                                                        \
        snprintf(names[n], sizeof names[n], NAME, LAYER);                                       \
        long cnt = (long)(D0) * ((D1) ? (D1) : 1);                                              \
        bufs[n] = malloc(sizeof(float) * (size_t)cnt);                                          \
        for (long i_ = 0; i_ < cnt; i_++) bufs[n][i_] = (OFFSET) + (SCALE) * tiny_rand(&seed);  \
        t[n] = (lorac_tensor_write_t){.name = names[n], .dtype = LORAC_DTYPE_F32,               \
                                      .n_dims = (D1) ? 2 : 1, .shape = {(D0), (D1)}, .data = bufs[n]}; \
        n++;                                                                                    \
    } while (0)
    T("model.embed_tokens.weight%.0d", 0, m->V, m->D, 1.0f, 0.0f);
    for (int l = 0; l < m->L; l++) {
        T("model.layers.%d.input_layernorm.weight", l, m->D, 0, 0.2f, norm_one);
        T("model.layers.%d.self_attn.q_proj.weight", l, Q, m->D, 0.6f, 0.0f);
        T("model.layers.%d.self_attn.k_proj.weight", l, KV, m->D, 0.6f, 0.0f);
        T("model.layers.%d.self_attn.v_proj.weight", l, KV, m->D, 0.6f, 0.0f);
        T("model.layers.%d.self_attn.o_proj.weight", l, m->D, Q, 0.6f, 0.0f);
        if (m->bias) {
            T("model.layers.%d.self_attn.q_proj.bias", l, Q, 0, 0.2f, 0.0f);
            T("model.layers.%d.self_attn.k_proj.bias", l, KV, 0, 0.2f, 0.0f);
            T("model.layers.%d.self_attn.v_proj.bias", l, KV, 0, 0.2f, 0.0f);
        }
        if (o_bias) T("model.layers.%d.self_attn.o_proj.bias", l, m->D, 0, 0.2f, 0.0f);
        if (m->qwen3 || m->gemma3) {
            T("model.layers.%d.self_attn.q_norm.weight", l, m->HD, 0, 0.6f, norm_one);
            T("model.layers.%d.self_attn.k_norm.weight", l, m->HD, 0, 0.6f, norm_one);
        }
        T("model.layers.%d.post_attention_layernorm.weight", l, m->D, 0, 0.2f, norm_one);
        if (m->gemma3 || m->gemma2) {
            T("model.layers.%d.pre_feedforward_layernorm.weight", l, m->D, 0, 0.2f, 0.0f);
            T("model.layers.%d.post_feedforward_layernorm.weight", l, m->D, 0, 0.2f, 0.0f);
        }
        T("model.layers.%d.mlp.gate_proj.weight", l, m->I, m->D, 0.6f, 0.0f);
        T("model.layers.%d.mlp.up_proj.weight", l, m->I, m->D, 0.6f, 0.0f);
        T("model.layers.%d.mlp.down_proj.weight", l, m->D, m->I, 0.6f, 0.0f);
    }
    T("model.norm.weight%.0d", 0, m->D, 0, 0.2f, norm_one);
    if (!m->tied) T("lm_head.weight%.0d", 0, m->V, m->D, 0.6f, 0.0f);
#undef T
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    lorac_status_t s = lorac_safetensors_write(path, t, n, NULL, NULL, 0);
    for (int i = 0; i < n; i++) free(bufs[i]);
    free(bufs); free(names); free(t);
    return s == LORAC_STATUS_OK ? 0 : -1;
}

#endif
