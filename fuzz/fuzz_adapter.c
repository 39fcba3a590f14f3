/* libFuzzer target: PEFT adapter loading (adapter_config.json +
 * adapter_model.safetensors) through lorac_adapter_load_memory. Any input
 * must give a status, never a crash, leak, hang or read outside the buffers;
 * an adapter that loads must be consistent with the model it was checked
 * against.
 *
 * Input layout: byte 0 flags (bit 0 set: check against the small model
 * config below; clear: sizes inferred from the tensors, as `lorac inspect`
 * does without -m; bit 1 with bit 0: the same model as Phi-3, its q/k/v
 * and gate/up fused into qkv_proj and gate_up_proj; bit 2 with bit 0 (and
 * not bit 1): as GPT-2, q/k/v in c_attn and no gate), bytes 1..4 the little-endian length N of the config
 * JSON, N bytes of JSON, then the safetensors bytes. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lorac/lora.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A Llama of hidden 8, 2 layers, 2 heads of 4 (1 kv head), MLP 12 -- the
 * shape of the seed corpus's adapters. */
static lorac_model_config_t small_config(void) {
    lorac_model_config_t c;
    memset(&c, 0, sizeof c);
    c.arch = LORAC_ARCH_LLAMA;
    c.vocab_size = 16;
    c.hidden_size = 8;
    c.intermediate_size = 12;
    c.n_layers = 2;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.head_dim = 4;
    c.max_position_embeddings = 64;
    c.rms_norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.bos_id = -1;
    return c;
}

/* The A of module i's predecessor (a fused group's members share its first's). */
static const float *a_prev_A(lorac_adapter_t *a, int32_t i) {
    return i > 0 ? lorac_adapter_module(a, i - 1)->A : NULL;
}

static void check_loaded(lorac_adapter_t *a, const lorac_model_config_t *c) {
    for (int32_t i = 0; i < lorac_adapter_n_modules(a); i++) {
        const lorac_lora_module_t *m = lorac_adapter_module(a, i);
        if (m->r < 1 || m->in < 1 || m->out < 1) abort();
        if (c && (m->layer >= c->n_layers || lorac_adapter_find(a, m->layer, m->target) != m)) abort();
        /* a fused group's B (its first module's) spans every member's rows */
        bool fused = c && (c->fused_proj || c->fused_qkv);
        if (m->group_out && (!fused || m->group_out < m->out)) abort();
        if (m->in_group && (!fused || m->A != a_prev_A(a, i))) abort();
        if (c && c->plain_mlp && m->target == LORAC_LORA_GATE) abort(); /* GPT-2 has no gate */
        /* touch both ends of A and B */
        int64_t rows = m->group_out ? m->group_out : m->out;
        volatile float sink = m->A[0] + m->A[(int64_t)m->r * m->in - 1] + m->B[0] + m->B[rows * m->r - 1];
        (void)sink;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 5) return 0;
    int with_model = data[0] & 1;
    size_t n = (size_t)data[1] | (size_t)data[2] << 8 | (size_t)data[3] << 16 | (size_t)data[4] << 24;
    if (n > size - 5) return 0;
    /* exact-size copies, so ASan flags any read past either buffer */
    size_t st_len = size - 5 - n;
    char *json = malloc(n ? n : 1);
    uint8_t *st = malloc(st_len ? st_len : 1);
    if (!json || !st) { free(json); free(st); return 0; }
    memcpy(json, data + 5, n);
    memcpy(st, data + 5 + n, st_len);
    lorac_model_config_t c = small_config();
    if (data[0] & 2) {
        c.arch = LORAC_ARCH_PHI3, c.fused_proj = true, c.rotary_dim = c.head_dim;
    } else if (data[0] & 4) { /* GPT-2: no grouped-query heads either */
        c.arch = LORAC_ARCH_GPT2, c.fused_qkv = c.plain_mlp = c.layer_norm = c.learned_positions = true;
        c.n_kv_heads = c.n_heads, c.rotary_dim = 0;
        snprintf(c.arch_name, sizeof c.arch_name, "GPT2LMHeadModel");
        snprintf(c.module_prefix, sizeof c.module_prefix, "transformer");
    }
    lorac_adapter_t *a = NULL;
    if (lorac_adapter_load_memory(json, n, st, st_len, with_model ? &c : NULL, &a) == LORAC_STATUS_OK) {
        check_loaded(a, with_model ? &c : NULL);
        lorac_adapter_free(a);
    }
    free(json);
    free(st);
    return 0;
}
