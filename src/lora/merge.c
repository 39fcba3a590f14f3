/* Merging adapters into the base weights: W' = W + Σ scale·s·B·A. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "lora/lora_internal.h"
#include "model/model_internal.h"
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

/* A bitsandbytes 4-bit weight (U8 codes and their state): its values in
 * f32 (*w, malloc'd), its shape and the dtype it was quantized from. */
static lorac_status_t read_bnb(const lorac_weight_files_t *wf, const lorac_tensor_view_t *tv, float **w,
                               int64_t shape[2], lorac_dtype_t *dtype) {
    lorac_bnb_quant_state_t qs;
    void *q;
    lorac_status_t s = lorac_bnb_read_nf4(lorac_bnb_find_in_weight_files, wf, tv->name, NULL, &qs, &q);
    if (s) return s;
    *w = malloc(sizeof(float) * (size_t)(qs.shape[0] * qs.shape[1]));
    if (*w) lorac_convert_to_f32(*w, q, LORAC_DTYPE_NF4, qs.shape[0] * qs.shape[1]);
    free(q);
    if (!*w) return lorac_error(LORAC_STATUS_NOMEM, "out of memory dequantizing \"%s\"", tv->name);
    shape[0] = qs.shape[0];
    shape[1] = qs.shape[1];
    *dtype = qs.dtype;
    return LORAC_STATUS_OK;
}

/* config.json without its quantization_config: the merged model's weights
 * are no longer quantized. */
static lorac_status_t write_dequantized_config(const char *src_dir, const char *dst_dir) {
    char src[4096], dst[4096], *text;
    size_t len;
    snprintf(src, sizeof src, "%s/config.json", src_dir);
    snprintf(dst, sizeof dst, "%s/config.json", dst_dir);
    lorac_status_t s = lorac_file_read(src, (size_t)16 << 20, &text, &len);
    if (s) return s;
    cJSON *doc = cJSON_ParseWithLength(text, len);
    free(text);
    if (!doc) return lorac_error(LORAC_STATUS_FORMAT, "%s: not valid JSON", src);
    cJSON_DeleteItemFromObjectCaseSensitive(doc, "quantization_config");
    char *out = cJSON_Print(doc);
    cJSON_Delete(doc);
    if (!out) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    s = lorac_file_write_atomic(dst, out, strlen(out));
    free(out);
    return s;
}

lorac_status_t lorac_merge_write(const char *model_dir, const lorac_adapter_t *const *adapters, const float *scales,
                                 int32_t n, lorac_dtype_t dtype, const char *out_dir) {
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST)
        return lorac_error(LORAC_STATUS_IO, "%s: cannot create directory: %s", out_dir, strerror(errno));
    lorac_weight_files_t *wf;
    lorac_status_t s = lorac_weight_files_open(model_dir, &wf);
    if (s) return s;
    int64_t count = lorac_weight_files_count(wf), n_out = 0;
    int dequantized = 0; /* a bitsandbytes checkpoint's weights were written as floats */
    lorac_tensor_write_t *t = calloc((size_t)(count ? count : 1), sizeof *t);
    void **owned = calloc((size_t)(count ? count : 1), sizeof *owned);
    if (!t || !owned) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); goto done; }
    for (int64_t i = 0; i < count; i++) {
        const lorac_tensor_view_t *tv = lorac_weight_files_get(wf, i);
        if (lorac_bnb_is_state(lorac_bnb_find_in_weight_files, wf, tv->name)) continue;
        lorac_tensor_write_t *wt = &t[n_out++];
        wt->name = tv->name;
        wt->n_dims = tv->n_dims;
        memcpy(wt->shape, tv->shape, sizeof wt->shape);
        wt->dtype = tv->dtype;
        wt->data = tv->data;
        int32_t layer = -1;
        lorac_lora_target_t target = LORAC_LORA_Q;
        int adapted = 0;
        int conv1d = n > 0 && adapters[0]->config.arch == LORAC_ARCH_GPT2;
        if (conv1d ? gpt2_projection_of(tv->name, &layer, &target) : projection_of(tv->name, &layer, &target))
            for (int32_t k = 0; k < n; k++) adapted |= lorac_adapter_find(adapters[k], layer, target) != NULL;
        /* a bitsandbytes checkpoint's projection, U8 codes: dequantized to
         * the dtype it was quantized from (what unsloth's "merged_16bit"
         * writes), merged or not */
        int bnb = lorac_bnb_is_weight(lorac_bnb_find_in_weight_files, wf, tv);
        float *w = NULL;
        lorac_dtype_t src_dtype = tv->dtype;
        int64_t n_el = tv->n_elements;
        if (bnb) {
            if ((s = read_bnb(wf, tv, &w, wt->shape, &src_dtype))) {
                s = lorac_error(s, "%s: %s", model_dir, lorac_error_message());
                goto done;
            }
            wt->n_dims = 2;
            n_el = wt->shape[0] * wt->shape[1];
            dequantized = 1;
        }
        lorac_dtype_t out_dtype = dtype == LORAC_DTYPE_COUNT ? src_dtype : dtype;
        if (!bnb && !adapted && out_dtype == tv->dtype) continue; /* bit-for-bit copy */
        if (!bnb && tv->dtype != LORAC_DTYPE_F32 && tv->dtype != LORAC_DTYPE_BF16 && tv->dtype != LORAC_DTYPE_F16) {
            if (!adapted) continue; /* not a weight (an index): copied as it is */
            s = lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: \"%s\" is %s, which lorac cannot merge into", model_dir,
                            tv->name, lorac_dtype_name(tv->dtype));
            goto done;
        }
        if (!w) {
            w = malloc(sizeof(float) * (size_t)n_el);
            void *raw = malloc((size_t)tv->nbytes + 1);
            if (!w || !raw) { free(w); free(raw); s = lorac_error(LORAC_STATUS_NOMEM, "out of memory merging \"%s\"", tv->name); goto done; }
            memcpy(raw, tv->data, (size_t)tv->nbytes); /* file data need not be aligned */
            lorac_convert_to_f32(w, raw, tv->dtype, n_el);
            free(raw);
        }
        for (int32_t k = 0; adapted && k < n; k++) {
            const lorac_lora_module_t *m = lorac_adapter_find(adapters[k], layer, target);
            if (!m) continue;
            /* a fused group's first module holds the B of all its rows (Phi-3's qkv_proj) */
            int32_t rows = m->group_out ? m->group_out : m->out;
            int64_t want0 = conv1d ? m->in : rows, want1 = conv1d ? rows : m->in; /* Conv1D: (in, out) */
            if (wt->n_dims != 2 || wt->shape[0] != want0 || wt->shape[1] != want1) {
                free(w);
                s = lorac_error(LORAC_STATUS_FORMAT, "\"%s\" has shape [%lld, %lld] but the adapter expects [%lld, %lld]",
                                tv->name, (long long)wt->shape[0], (long long)(wt->n_dims > 1 ? wt->shape[1] : 0),
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
            owned[n_out - 1] = w;
        } else {
            uint16_t *h = malloc(sizeof(uint16_t) * (size_t)n_el);
            if (!h) { free(w); s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); goto done; }
            for (int64_t e = 0; e < n_el; e++)
                h[e] = out_dtype == LORAC_DTYPE_BF16 ? lorac_f32_to_bf16(w[e]) : lorac_f32_to_f16(w[e]);
            free(w);
            owned[n_out - 1] = h;
        }
        wt->data = owned[n_out - 1];
        wt->dtype = out_dtype;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    if ((s = lorac_safetensors_write(path, t, n_out, mk, mv, 1))) goto done;
    static const char *const files[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json"};
    for (size_t i = 0; !s && i < sizeof files / sizeof files[0]; i++)
        s = dequantized && i == 0 ? write_dequantized_config(model_dir, out_dir) : copy_file(model_dir, out_dir, files[i]);
done:
    if (owned) for (int64_t i = 0; i < count; i++) free(owned[i]);
    free(owned);
    free(t);
    lorac_weight_files_free(wf);
    return s;
}
