/* A PEFT adapter as llama.cpp's LoRA GGUF (see lorac/export.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "export/export_internal.h"
#include "lorac/export.h"
#include "lorac/gguf.h"

/* The tensor a module adapts, in llama.cpp's names: Phi-3's fused groups
 * are its attn_qkv and ffn_up (gate and up rows in one tensor). */
static const char *module_gguf_name(const lorac_lora_module_t *m) {
    if (m->group_out) return m->target == LORAC_LORA_Q ? "attn_qkv" : "ffn_up";
    return lorac_export_gguf_tensor(m->target == LORAC_LORA_Q      ? LORAC_TENSOR_Q
                                    : m->target == LORAC_LORA_K    ? LORAC_TENSOR_K
                                    : m->target == LORAC_LORA_V    ? LORAC_TENSOR_V
                                    : m->target == LORAC_LORA_O    ? LORAC_TENSOR_O
                                    : m->target == LORAC_LORA_GATE ? LORAC_TENSOR_GATE
                                    : m->target == LORAC_LORA_UP   ? LORAC_TENSOR_UP
                                                                   : LORAC_TENSOR_DOWN);
}

/* n f32 values into `type` (F32, F16 or BF16) at dst. */
static void store(void *dst, const float *src, int64_t n, uint32_t type) {
    if (type == LORAC_GGML_TYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof *src);
        return;
    }
    uint16_t *h = dst;
    for (int64_t i = 0; i < n; i++)
        h[i] = type == LORAC_GGML_TYPE_F16 ? lorac_f32_to_f16(src[i]) : lorac_f32_to_bf16(src[i]);
}

lorac_status_t lorac_export_adapter_gguf(const lorac_adapter_t *adapter, const lorac_model_config_t *config,
                                         uint32_t ggml_type, const char *path) {
    if (!adapter || !config || !path) return lorac_error(LORAC_STATUS_INVALID_ARG, "export: NULL argument");
    if (ggml_type != LORAC_GGML_TYPE_F32 && ggml_type != LORAC_GGML_TYPE_F16 && ggml_type != LORAC_GGML_TYPE_BF16)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "export: GGUF type %u is not F32, F16 or BF16", ggml_type);
    const char *arch = lorac_export_gguf_arch(config);
    if (!arch) return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: no llama.cpp architecture for %s", path, config->arch_name);
    lorac_adapter_t *a = (lorac_adapter_t *)adapter; /* lorac_adapter_module is not const; nothing is changed */
    const float alpha = lorac_adapter_params(adapter)->alpha;
    int32_t n = lorac_adapter_n_modules(a);
    void **bufs = calloc((size_t)(2 * n + 1), sizeof *bufs);
    lorac_gguf_writer_t *w = lorac_gguf_writer_new();
    lorac_status_t s = !bufs || !w ? lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", path) : LORAC_STATUS_OK;
    if (!s) s = lorac_gguf_set_string(w, "general.architecture", arch);
    if (!s) s = lorac_gguf_set_string(w, "general.type", "adapter");
    if (!s) s = lorac_gguf_set_string(w, "adapter.type", "lora");
    if (!s) s = lorac_gguf_set_f32(w, "adapter.lora.alpha", alpha);
    size_t esize = ggml_type == LORAC_GGML_TYPE_F32 ? 4 : 2;
    float *row = NULL;
    for (int32_t i = 0; !s && i < n; i++) {
        const lorac_lora_module_t *m = lorac_adapter_module(a, i);
        if (m->in_group) continue; /* written with its group's first module */
        int64_t out = m->group_out ? m->group_out : m->out, r = m->r;
        /* llama.cpp applies alpha / r (the user's scale alone when alpha is
         * 0); B carries the rest of the module's own scale */
        float llama_scale = alpha != 0.0f ? alpha / (float)r : 1.0f;
        float factor = m->scale == llama_scale ? 1.0f : m->scale / llama_scale;
        void *A = malloc((size_t)(r * m->in) * esize), *B = malloc((size_t)(out * r) * esize);
        free(row);
        row = malloc((size_t)r * sizeof *row);
        bufs[2 * i] = A;
        bufs[2 * i + 1] = B;
        if (!A || !B || !row) {
            s = lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", path);
            break;
        }
        store(A, m->A, r * m->in, ggml_type);
        /* q's and k's rows permuted where llama.cpp permutes the base's */
        bool rotary = !m->group_out && (m->target == LORAC_LORA_Q || m->target == LORAC_LORA_K);
        for (int64_t o = 0; o < out; o++) {
            int64_t src = rotary ? lorac_export_rotary_row(config, o) : o;
            for (int64_t k = 0; k < r; k++) row[k] = m->B[src * r + k] * factor;
            store((uint8_t *)B + (size_t)(o * r) * esize, row, r, ggml_type);
        }
        char name[LORAC_GGUF_MAX_NAME];
        const int64_t shape_a[2] = {r, m->in}, shape_b[2] = {out, r};
        snprintf(name, sizeof name, "blk.%d.%s.weight.lora_a", (int)m->layer, module_gguf_name(m));
        s = lorac_gguf_add_tensor(w, name, ggml_type, 2, shape_a, A, NULL, NULL);
        snprintf(name, sizeof name, "blk.%d.%s.weight.lora_b", (int)m->layer, module_gguf_name(m));
        if (!s) s = lorac_gguf_add_tensor(w, name, ggml_type, 2, shape_b, B, NULL, NULL);
    }
    if (!s) s = lorac_gguf_write(w, path);
    free(row);
    for (int32_t i = 0; bufs && i < 2 * n; i++) free(bufs[i]);
    free(bufs);
    lorac_gguf_writer_free(w);
    return s;
}
