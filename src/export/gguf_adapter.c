/* PEFT adapters as llama.cpp's LoRA GGUF files, and such files read back
 * as adapters (see lorac/export.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "export/export_internal.h"
#include "lora/lora_internal.h"
#include "lorac/export.h"
#include "lorac/gguf.h"
#include "lorac/kernels.h"

/* The tensor of target t in llama.cpp's names, in a model with this
 * config: Phi-3's fused groups, written under their first target (q, gate),
 * are its attn_qkv and ffn_up (gate and up rows in one tensor); their other
 * targets have no tensor of their own (NULL). */
static const char *lora_tensor_name(const lorac_model_config_t *c, int t) {
    int size, first = lorac_lora_group(c, t, &size);
    if (size > 1) return t != first ? NULL : first == LORAC_LORA_Q ? "attn_qkv" : "ffn_up";
    static const lorac_tensor_kind_t kinds[LORAC_LORA_COUNT] = {
        [LORAC_LORA_Q] = LORAC_TENSOR_Q,       [LORAC_LORA_K] = LORAC_TENSOR_K,   [LORAC_LORA_V] = LORAC_TENSOR_V,
        [LORAC_LORA_O] = LORAC_TENSOR_O,       [LORAC_LORA_GATE] = LORAC_TENSOR_GATE,
        [LORAC_LORA_UP] = LORAC_TENSOR_UP,     [LORAC_LORA_DOWN] = LORAC_TENSOR_DOWN};
    return lorac_export_gguf_tensor(kinds[t]);
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
        lorac_export_store(A, m->A, r * m->in, ggml_type);
        /* q's and k's rows permuted where llama.cpp permutes the base's */
        bool rotary = !m->group_out && (m->target == LORAC_LORA_Q || m->target == LORAC_LORA_K);
        for (int64_t o = 0; o < out; o++) {
            int64_t src = rotary ? lorac_export_rotary_row(config, o) : o;
            for (int64_t k = 0; k < r; k++) row[k] = m->B[src * r + k] * factor;
            lorac_export_store((uint8_t *)B + (size_t)(o * r) * esize, row, r, ggml_type);
        }
        char name[LORAC_GGUF_MAX_NAME];
        const int64_t shape_a[2] = {r, m->in}, shape_b[2] = {out, r};
        const char *tensor = lora_tensor_name(config, m->target);
        snprintf(name, sizeof name, "blk.%d.%s.weight.lora_a", (int)m->layer, tensor);
        s = lorac_gguf_add_tensor(w, name, ggml_type, 2, shape_a, A, NULL, NULL);
        snprintf(name, sizeof name, "blk.%d.%s.weight.lora_b", (int)m->layer, tensor);
        if (!s) s = lorac_gguf_add_tensor(w, name, ggml_type, 2, shape_b, B, NULL, NULL);
    }
    if (!s) s = lorac_gguf_write(w, path);
    free(row);
    for (int32_t i = 0; bufs && i < 2 * n; i++) free(bufs[i]);
    free(bufs);
    lorac_gguf_writer_free(w);
    return s;
}

/* ---- reading llama.cpp's LoRA files ------------------------------------------------ */

/* The target a llama.cpp tensor name adapts in a model with this config
 * (Phi-3's attn_qkv and fused ffn_up: the group's first), or -1. */
static int target_of_gguf(const lorac_model_config_t *c, const char *name, size_t len) {
    for (int t = 0; t < LORAC_LORA_COUNT; t++) {
        const char *n = lora_tensor_name(c, t);
        if (n && strlen(n) == len && !memcmp(n, name, len)) return t;
    }
    return -1;
}

typedef struct {
    const lorac_gguf_tensor_t *a, *b;
} gguf_pair_t;

/* The group's rows: Phi-3's fused modules hold several targets' outputs. */
static int32_t module_rows(const lorac_model_config_t *c, int t) {
    int size, first = lorac_lora_group(c, t, &size);
    int32_t rows = 0, in, out;
    for (int k = first; k < first + size; k++) {
        lorac_lora_target_dims(c, (lorac_lora_target_t)k, &in, &out);
        rows += out;
    }
    return rows;
}

lorac_status_t lorac_import_adapter_gguf(const char *path, const lorac_model_config_t *config, lorac_adapter_t **out) {
    *out = NULL;
    if (!config)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: a GGUF LoRA is read against its base model's config", path);
    lorac_gguf_t *g = NULL;
    lorac_status_t s = lorac_gguf_open(path, &g);
    if (s) return s;
    s = lorac_import_adapter_gguf_open(g, path, config, out);
    lorac_gguf_free(g);
    return s;
}

lorac_status_t lorac_import_adapter_gguf_open(const lorac_gguf_t *g, const char *path, const lorac_model_config_t *config,
                                              lorac_adapter_t **out) {
    *out = NULL;
    const char *arch = lorac_export_gguf_arch(config);
    lorac_status_t s = LORAC_STATUS_OK;
    const int32_t L = config->n_layers, n_slots = L * LORAC_LORA_COUNT;
    gguf_pair_t *pairs = calloc((size_t)n_slots, sizeof *pairs);
    int32_t *ranks = calloc((size_t)n_slots, sizeof *ranks);
    float *scales = calloc((size_t)n_slots, sizeof *scales);
    if (!pairs || !ranks || !scales) {
        s = lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", path);
        goto done;
    }
    /* what llama.cpp checks: an adapter, a LoRA, for this architecture */
    struct {
        const char *key, *want;
    } checks[] = {{"general.type", "adapter"}, {"adapter.type", "lora"}, {"general.architecture", arch}};
    for (size_t i = 0; !s && i < sizeof checks / sizeof checks[0]; i++) {
        const char *v;
        size_t len;
        int64_t k = lorac_gguf_find_key(g, checks[i].key);
        if (k < 0 || lorac_gguf_get_string(g, k, &v, &len))
            s = lorac_error(LORAC_STATUS_FORMAT, "%s: no string '%s': not a llama.cpp LoRA adapter", path, checks[i].key);
        else if (!checks[i].want || strlen(checks[i].want) != len || memcmp(v, checks[i].want, len))
            s = lorac_error(i < 2 ? LORAC_STATUS_UNSUPPORTED : LORAC_STATUS_FORMAT,
                            "%s: %s is \"%.*s\", expected \"%s\"%s", path, checks[i].key, (int)len, v,
                            checks[i].want ? checks[i].want : "(none)",
                            i == 2 ? " (the adapter is for another architecture than the model's)" : "");
    }
    double alpha = 0.0;
    int64_t ak = lorac_gguf_find_key(g, "adapter.lora.alpha");
    if (!s && ak >= 0) s = lorac_gguf_get_float(g, ak, &alpha);
    if (!s && (!isfinite(alpha) || alpha < 0.0))
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: adapter.lora.alpha %g is not a finite non-negative number", path, alpha);
    if (s) goto done;

    for (int64_t i = 0; i < lorac_gguf_n_tensors(g); i++) {
        const lorac_gguf_tensor_t *t = lorac_gguf_tensor(g, i);
        int nl = (int)t->name_len, layer = -1, pos = 0;
        char name[LORAC_GGUF_MAX_NAME];
        memcpy(name, t->name, t->name_len);
        name[t->name_len] = '\0';
        const char *dot = NULL, *suffix = NULL;
        if (sscanf(name, "blk.%d.%n", &layer, &pos) == 1 && pos > 0 && layer >= 0) {
            dot = strstr(name + pos, ".weight.lora_");
            if (dot) suffix = dot + strlen(".weight.lora_");
        }
        if (!dot || (strcmp(suffix, "a") && strcmp(suffix, "b"))) {
            s = lorac_error(strstr(name, ".lora_") ? LORAC_STATUS_UNSUPPORTED : LORAC_STATUS_FORMAT,
                            "%s: tensor '%.*s' is no projection's LoRA weight (blk.N.<tensor>.weight.lora_a/b)", path,
                            nl, t->name);
            goto done;
        }
        int target = target_of_gguf(config, name + pos, (size_t)(dot - (name + pos)));
        if (target < 0 || layer >= L) {
            s = lorac_error(target < 0 ? LORAC_STATUS_UNSUPPORTED : LORAC_STATUS_FORMAT,
                            "%s: tensor '%s': %s", path, name,
                            target < 0 ? "lorac adapts the projections only (attn_q/k/v/output, ffn_gate/up/down; "
                                         "Phi-3's attn_qkv, ffn_up)"
                                       : "its layer is past the model's last");
            goto done;
        }
        if (lorac_export_dtype(t->type) == LORAC_DTYPE_COUNT) {
            s = lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: tensor '%s' is %s; lorac reads F32, F16 and BF16 LoRAs",
                            path, name, lorac_ggml_type_name(t->type));
            goto done;
        }
        gguf_pair_t *p = &pairs[layer * LORAC_LORA_COUNT + target];
        const lorac_gguf_tensor_t **slot = *suffix == 'a' ? &p->a : &p->b;
        if (*slot) {
            s = lorac_error(LORAC_STATUS_FORMAT, "%s: two tensors for '%s'", path, name);
            goto done;
        }
        *slot = t;
    }
    int32_t max_r = 0;
    for (int32_t slot = 0; slot < n_slots; slot++) {
        const gguf_pair_t *p = &pairs[slot];
        if (!p->a && !p->b) continue;
        int32_t layer = slot / LORAC_LORA_COUNT, t = slot % LORAC_LORA_COUNT, in, o;
        lorac_lora_target_dims(config, (lorac_lora_target_t)t, &in, &o);
        int32_t rows = module_rows(config, t);
        if (!p->a || !p->b) {
            s = lorac_error(LORAC_STATUS_FORMAT, "%s: layer %d's %s has a lora_%s without its lora_%s", path, (int)layer,
                            lorac_lora_module_name(config, (lorac_lora_target_t)t), p->a ? "a" : "b", p->a ? "b" : "a");
            goto done;
        }
        int64_t r = p->a->n_dims == 2 ? p->a->shape[0] : 0;
        if (p->a->n_dims != 2 || p->b->n_dims != 2 || p->a->shape[1] != in || p->b->shape[0] != rows ||
            p->b->shape[1] != r || r < 1 || r > 65536) {
            s = lorac_error(LORAC_STATUS_FORMAT,
                            "%s: layer %d's %s: lora_a has shape [%lld, %lld] and lora_b [%lld, %lld], expected [r, %d] "
                            "and [%d, r] for this model (shapes outermost first)",
                            path, (int)layer, lorac_lora_module_name(config, (lorac_lora_target_t)t),
                            (long long)p->a->shape[0], (long long)(p->a->n_dims > 1 ? p->a->shape[1] : 0),
                            (long long)p->b->shape[0], (long long)(p->b->n_dims > 1 ? p->b->shape[1] : 0), (int)in,
                            (int)rows);
            goto done;
        }
        /* llama.cpp's scale: alpha / r, or 1 without alpha */
        float scale = alpha > 0.0 ? (float)(alpha / (double)r) : 1.0f;
        int size, first = lorac_lora_group(config, t, &size);
        for (int k = first; k < first + size; k++) {
            ranks[layer * LORAC_LORA_COUNT + k] = (int32_t)r;
            scales[layer * LORAC_LORA_COUNT + k] = scale;
        }
        if (r > max_r) max_r = (int32_t)r;
    }
    if (!max_r) {
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: no LoRA tensors", path);
        goto done;
    }
    lorac_lora_params_t params = lorac_lora_default_params();
    params.r = max_r;
    params.alpha = alpha > 0.0 ? (float)alpha : (float)max_r; /* alpha = r: scale 1, as llama.cpp without alpha */
    if ((s = lorac_adapter_alloc_ranks(config, &params, ranks, scales, out))) goto done;
    for (int32_t i = 0; i < lorac_adapter_n_modules(*out); i++) {
        lorac_lora_module_t *m = lorac_adapter_module(*out, i);
        if (m->in_group) continue;
        const gguf_pair_t *p = &pairs[m->layer * LORAC_LORA_COUNT + m->target];
        int64_t rows = m->group_out ? m->group_out : m->out;
        lorac_convert_to_f32(m->A, p->a->data, lorac_export_dtype(p->a->type), (int64_t)m->r * m->in);
        bool rotary = !m->group_out && (m->target == LORAC_LORA_Q || m->target == LORAC_LORA_K);
        lorac_dtype_t bt = lorac_export_dtype(p->b->type);
        for (int64_t o = 0; o < rows; o++) { /* GGUF row o holds HF row rotary_row(o) */
            int64_t dst = rotary ? lorac_export_rotary_row(config, o) : o;
            lorac_convert_to_f32(m->B + dst * m->r, (const uint8_t *)p->b->data + (size_t)(o * m->r) * lorac_dtype_size(bt),
                                 bt, m->r);
        }
    }
    for (int32_t i = 0; i < lorac_adapter_n_modules(*out); i++) {
        const lorac_lora_module_t *m = lorac_adapter_module(*out, i);
        for (int64_t j = 0; j < (int64_t)m->r * m->in && !s; j++)
            if (!isfinite(m->A[j])) s = lorac_error(LORAC_STATUS_FORMAT, "%s: a non-finite weight in layer %d's lora_a", path, (int)m->layer);
        for (int64_t j = 0; j < (int64_t)m->r * m->out && !s; j++)
            if (!isfinite(m->B[j])) s = lorac_error(LORAC_STATUS_FORMAT, "%s: a non-finite weight in layer %d's lora_b", path, (int)m->layer);
    }
    if (s) {
        lorac_adapter_free(*out);
        *out = NULL;
    }
done:
    free(pairs);
    free(ranks);
    free(scales);
    return s;
}
