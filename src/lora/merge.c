/* Merging adapters into the base weights: W' = W + Σ scale·s·B·A. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lora/lora_internal.h"
#include "lorac/kernels.h"
#include "lorac/safetensors.h"

/* "model.layers.N.(self_attn|mlp).TARGET.weight" -> layer and target; a
 * Gemma 3 multimodal checkpoint's text model is under
 * "language_model.model." or "model.language_model." instead of "model."
 * (its vision tower's projections match none of these). */
static int projection_of(const char *name, int32_t *layer, lorac_lora_target_t *target) {
    static const char *const prefixes[] = {"model.layers.", "language_model.model.layers.", "model.language_model.layers."};
    size_t k = 0;
    while (k < 3 && strncmp(name, prefixes[k], strlen(prefixes[k])) != 0) k++;
    if (k == 3) return 0;
    name += strlen(prefixes[k]);
    int l, n = 0;
    char block[16], proj[16];
    if (sscanf(name, "%d.%15[a-z_].%15[a-z_].weight%n", &l, block, proj, &n) != 3 || name[n] != '\0') return 0;
    int t = lorac_lora_target_from_name(proj, strlen(proj));
    if (!strcmp(proj, "qkv_proj")) t = LORAC_LORA_Q; /* Phi-3's fused projections: their group's first module */
    if (!strcmp(proj, "gate_up_proj")) t = LORAC_LORA_GATE;
    if (t < 0) return 0;
    *layer = l;
    *target = (lorac_lora_target_t)t;
    return 1;
}

/* GPT-2's "[transformer.]h.N.attn.c_attn.weight" (q, k and v: the group's
 * first), ".attn.c_proj" (o), ".mlp.c_fc" (up), ".mlp.c_proj" (down):
 * Conv1D weights, (in, out). */
static int gpt2_projection_of(const char *name, int32_t *layer, lorac_lora_target_t *target) {
    static const struct { const char *tail; lorac_lora_target_t target; } tails[] = {
        {"attn.c_attn.weight", LORAC_LORA_Q}, {"attn.c_proj.weight", LORAC_LORA_O}, {"mlp.c_fc.weight", LORAC_LORA_UP},
        {"mlp.c_proj.weight", LORAC_LORA_DOWN}};
    if (strncmp(name, "transformer.", 12) == 0) name += 12;
    int l, n = 0;
    char tail[32];
    if (sscanf(name, "h.%d.%31[a-z_.]%n", &l, tail, &n) != 2 || name[n] != '\0' || l < 0) return 0;
    for (size_t k = 0; k < sizeof tails / sizeof tails[0]; k++)
        if (strcmp(tail, tails[k].tail) == 0) {
            *layer = l;
            *target = tails[k].target;
            return 1;
        }
    return 0;
}

static lorac_status_t copy_file(const char *src_dir, const char *dst_dir, const char *name) {
    char src[4096], dst[4096], *text;
    size_t len;
    snprintf(src, sizeof src, "%s/%s", src_dir, name);
    snprintf(dst, sizeof dst, "%s/%s", dst_dir, name);
    struct stat st;
    if (stat(src, &st) != 0) return LORAC_STATUS_OK; /* optional files */
    lorac_status_t s = lorac_file_read(src, (size_t)1 << 30, &text, &len);
    if (s) return s;
    s = lorac_file_write_atomic(dst, text, len);
    free(text);
    return s;
}

lorac_status_t lorac_merge_write(const char *model_dir, const lorac_adapter_t *const *adapters, const float *scales,
                                 int32_t n, lorac_dtype_t dtype, const char *out_dir) {
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST)
        return lorac_error(LORAC_STATUS_IO, "%s: cannot create directory: %s", out_dir, strerror(errno));
    lorac_weight_files_t *wf;
    lorac_status_t s = lorac_weight_files_open(model_dir, &wf);
    if (s) return s;
    int64_t count = lorac_weight_files_count(wf);
    lorac_tensor_write_t *t = calloc((size_t)(count ? count : 1), sizeof *t);
    void **owned = calloc((size_t)(count ? count : 1), sizeof *owned);
    if (!t || !owned) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); goto done; }
    for (int64_t i = 0; i < count; i++) {
        const lorac_tensor_view_t *tv = lorac_weight_files_get(wf, i);
        t[i].name = tv->name;
        t[i].n_dims = tv->n_dims;
        memcpy(t[i].shape, tv->shape, sizeof t[i].shape);
        t[i].dtype = tv->dtype;
        t[i].data = tv->data;
        int32_t layer = -1;
        lorac_lora_target_t target = LORAC_LORA_Q;
        int adapted = 0;
        int conv1d = n > 0 && adapters[0]->config.arch == LORAC_ARCH_GPT2;
        if (conv1d ? gpt2_projection_of(tv->name, &layer, &target) : projection_of(tv->name, &layer, &target))
            for (int32_t k = 0; k < n; k++) adapted |= lorac_adapter_find(adapters[k], layer, target) != NULL;
        lorac_dtype_t out_dtype = dtype == LORAC_DTYPE_COUNT ? tv->dtype : dtype;
        if (!adapted && out_dtype == tv->dtype) continue; /* bit-for-bit copy */
        if (tv->dtype != LORAC_DTYPE_F32 && tv->dtype != LORAC_DTYPE_BF16 && tv->dtype != LORAC_DTYPE_F16) {
            if (!adapted) continue; /* not a weight (an index, a quantization state): copied as it is */
            /* a bitsandbytes checkpoint's U8 codes: writing the sum back
             * would mean quantizing it again, and PEFT warns that this
             * loses the update; the unquantized model is the one to merge into */
            s = lorac_error(LORAC_STATUS_UNSUPPORTED,
                            "%s: \"%s\" is %s (a quantized checkpoint's): merge into the unquantized model instead",
                            model_dir, tv->name, lorac_dtype_name(tv->dtype));
            goto done;
        }
        float *w = malloc(sizeof(float) * (size_t)tv->n_elements);
        void *raw = malloc((size_t)tv->nbytes + 1);
        if (!w || !raw) { free(w); free(raw); s = lorac_error(LORAC_STATUS_NOMEM, "out of memory merging \"%s\"", tv->name); goto done; }
        memcpy(raw, tv->data, (size_t)tv->nbytes); /* file data need not be aligned */
        lorac_convert_to_f32(w, raw, tv->dtype, tv->n_elements);
        free(raw);
        for (int32_t k = 0; adapted && k < n; k++) {
            const lorac_lora_module_t *m = lorac_adapter_find(adapters[k], layer, target);
            if (!m) continue;
            /* a fused group's first module holds the B of all its rows (Phi-3's qkv_proj) */
            int32_t rows = m->group_out ? m->group_out : m->out;
            int64_t want0 = conv1d ? m->in : rows, want1 = conv1d ? rows : m->in; /* Conv1D: (in, out) */
            if (tv->n_dims != 2 || tv->shape[0] != want0 || tv->shape[1] != want1) {
                free(w);
                s = lorac_error(LORAC_STATUS_FORMAT, "\"%s\" has shape [%lld, %lld] but the adapter expects [%lld, %lld]",
                                tv->name, (long long)tv->shape[0], (long long)(tv->n_dims > 1 ? tv->shape[1] : 0),
                                (long long)want0, (long long)want1);
                goto done;
            }
            /* W (out,in) += c · B (out,r) · A (r,in), accumulated in double per element row */
            float c = scales[k] * m->scale;
            double *row = malloc(sizeof(double) * (size_t)m->in);
            if (!row) { free(w); s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); goto done; }
            for (int32_t o = 0; o < rows; o++) {
                memset(row, 0, sizeof(double) * (size_t)m->in);
                for (int32_t r = 0; r < m->r; r++) {
                    double b = (double)m->B[(int64_t)o * m->r + r];
                    const float *a = m->A + (int64_t)r * m->in;
                    for (int32_t i2 = 0; i2 < m->in; i2++) row[i2] += b * a[i2];
                }
                if (conv1d) { /* column o of the (in, out) weight */
                    for (int32_t i2 = 0; i2 < m->in; i2++) {
                        float *wio = w + (int64_t)i2 * rows + o;
                        *wio = (float)((double)*wio + (double)c * row[i2]);
                    }
                    continue;
                }
                float *wo = w + (int64_t)o * m->in;
                for (int32_t i2 = 0; i2 < m->in; i2++) wo[i2] = (float)((double)wo[i2] + (double)c * row[i2]);
            }
            free(row);
        }
        if (out_dtype == LORAC_DTYPE_F32) {
            owned[i] = w;
        } else {
            uint16_t *h = malloc(sizeof(uint16_t) * (size_t)tv->n_elements);
            if (!h) { free(w); s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); goto done; }
            for (int64_t e = 0; e < tv->n_elements; e++)
                h[e] = out_dtype == LORAC_DTYPE_BF16 ? lorac_f32_to_bf16(w[e]) : lorac_f32_to_f16(w[e]);
            free(w);
            owned[i] = h;
        }
        t[i].data = owned[i];
        t[i].dtype = out_dtype;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    if ((s = lorac_safetensors_write(path, t, count, mk, mv, 1))) goto done;
    static const char *const files[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json"};
    for (size_t i = 0; !s && i < sizeof files / sizeof files[0]; i++) s = copy_file(model_dir, out_dir, files[i]);
done:
    if (owned) for (int64_t i = 0; i < count; i++) free(owned[i]);
    free(owned);
    free(t);
    lorac_weight_files_free(wf);
    return s;
}
