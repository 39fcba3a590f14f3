/* PEFT adapter files: adapter_config.json + adapter_model.safetensors. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lora/lora_internal.h"
#include "lorac/kernels.h"
#include "lorac/safetensors.h"

#define ADAPTER_CONFIG_MAX (1u << 20)

static void module_key(const lorac_lora_module_t *m, char which, char *buf, size_t cap) {
    const char *block = m->target <= LORAC_LORA_O ? "self_attn" : "mlp";
    snprintf(buf, cap, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", m->layer, block,
             lorac_lora_target_name(m->target), which);
}

static char *config_json(const lorac_adapter_t *a, const char *base_model) {
    const lorac_lora_params_t *p = &a->params;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "peft_type", "LORA");
    cJSON_AddStringToObject(o, "task_type", "CAUSAL_LM");
    cJSON_AddStringToObject(o, "base_model_name_or_path", base_model ? base_model : "");
    cJSON_AddNumberToObject(o, "r", p->r);
    cJSON_AddNumberToObject(o, "lora_alpha", p->alpha);
    cJSON_AddNumberToObject(o, "lora_dropout", p->dropout);
    cJSON *targets = cJSON_AddArrayToObject(o, "target_modules");
    for (int t = 0; t < LORAC_LORA_COUNT; t++)
        if (p->targets >> t & 1u) cJSON_AddItemToArray(targets, cJSON_CreateString(lorac_lora_target_name((lorac_lora_target_t)t)));
    cJSON_AddBoolToObject(o, "use_rslora", p->rslora);
    cJSON_AddStringToObject(o, "bias", "none");
    cJSON_AddBoolToObject(o, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(o, "inference_mode", 1);
    if (p->init == LORAC_LORA_INIT_GAUSSIAN) cJSON_AddStringToObject(o, "init_lora_weights", "gaussian");
    else cJSON_AddBoolToObject(o, "init_lora_weights", 1);
    int all_layers = 1;
    for (int32_t l = 0; l < a->config.n_layers; l++) all_layers &= a->layer_mask[l] != 0;
    if (all_layers) {
        cJSON_AddNullToObject(o, "layers_to_transform");
    } else {
        cJSON *layers = cJSON_AddArrayToObject(o, "layers_to_transform");
        for (int32_t l = 0; l < a->config.n_layers; l++)
            if (a->layer_mask[l]) cJSON_AddItemToArray(layers, cJSON_CreateNumber(l));
    }
    cJSON_AddNullToObject(o, "layers_pattern");
    cJSON_AddObjectToObject(o, "rank_pattern");
    cJSON_AddObjectToObject(o, "alpha_pattern");
    cJSON_AddNullToObject(o, "modules_to_save");
    cJSON_AddBoolToObject(o, "use_dora", 0);
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    return text;
}

lorac_status_t lorac_adapter_save(const lorac_adapter_t *a, const char *dir, const char *base_model) {
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return lorac_error(LORAC_STATUS_IO, "%s: cannot create directory: %s", dir, strerror(errno));
    lorac_status_t s = LORAC_STATUS_OK;
    lorac_tensor_write_t *t = calloc((size_t)(2 * a->n_modules + 1), sizeof *t);
    char (*names)[128] = calloc((size_t)(2 * a->n_modules + 1), sizeof *names);
    char *cfg = config_json(a, base_model);
    char *st_path = lorac_path_join(dir, "adapter_model.safetensors");
    char *cfg_path = lorac_path_join(dir, "adapter_config.json");
    if (!t || !names || !cfg || !st_path || !cfg_path) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); goto done; }
    for (int32_t i = 0; i < a->n_modules; i++) {
        const lorac_lora_module_t *m = &a->modules[i];
        module_key(m, 'A', names[2 * i], sizeof names[0]);
        module_key(m, 'B', names[2 * i + 1], sizeof names[0]);
        t[2 * i] = (lorac_tensor_write_t){.name = names[2 * i], .dtype = LORAC_DTYPE_F32, .n_dims = 2,
                                          .shape = {m->r, m->in}, .data = m->A};
        t[2 * i + 1] = (lorac_tensor_write_t){.name = names[2 * i + 1], .dtype = LORAC_DTYPE_F32, .n_dims = 2,
                                              .shape = {m->out, m->r}, .data = m->B};
    }
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    if ((s = lorac_safetensors_write(st_path, t, 2 * a->n_modules, mk, mv, 1))) goto done;
    s = lorac_file_write_atomic(cfg_path, cfg, strlen(cfg));
done:
    free(t); free(names); free(cfg); free(st_path); free(cfg_path);
    return s;
}

/* Parses "[base_model.model.]model.layers.N.(self_attn|mlp).TARGET.lora_(A|B)[.default].weight". */
static int parse_key(const char *key, int32_t *layer, int *target, char *which) {
    const char *p = key;
    if (strncmp(p, "base_model.model.", 17) == 0) p += 17;
    if (strncmp(p, "model.layers.", 13) != 0) return -1;
    p += 13;
    char *end;
    long l = strtol(p, &end, 10);
    if (end == p || l < 0 || l > 1000000 || *end != '.') return -1;
    p = end + 1;
    int in_attention;
    if (strncmp(p, "self_attn.", 10) == 0) { in_attention = 1; p += 10; }
    else if (strncmp(p, "mlp.", 4) == 0) { in_attention = 0; p += 4; }
    else return -1;
    const char *dot = strchr(p, '.');
    if (!dot) return -1;
    int t = lorac_lora_target_from_name(p, (size_t)(dot - p));
    if (t < 0) return -1;
    if ((t <= LORAC_LORA_O) != in_attention) return -1; /* e.g. mlp.q_proj */
    p = dot + 1;
    if (strncmp(p, "lora_A", 6) == 0) *which = 'A';
    else if (strncmp(p, "lora_B", 6) == 0) *which = 'B';
    else return -1;
    p += 6;
    if (strcmp(p, ".weight") != 0 && strcmp(p, ".default.weight") != 0) return -1;
    *layer = (int32_t)l;
    *target = t;
    return 0;
}

static lorac_status_t parse_config(const char *path, const char *text, size_t len, const lorac_model_config_t *mc,
                                   lorac_lora_params_t *p, uint8_t *layers) {
    cJSON *o = cJSON_ParseWithLength(text, len);
    if (!o || !cJSON_IsObject(o)) { cJSON_Delete(o); return lorac_error(LORAC_STATUS_FORMAT, "%s: not a JSON object", path); }
    lorac_status_t s = LORAC_STATUS_OK;
    const cJSON *v;
    *p = lorac_lora_default_params();
    v = cJSON_GetObjectItemCaseSensitive(o, "peft_type");
    if (v && (!cJSON_IsString(v) || strcmp(v->valuestring, "LORA") != 0)) {
        s = lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: peft_type is not \"LORA\"", path);
        goto done;
    }
    v = cJSON_GetObjectItemCaseSensitive(o, "r");
    if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > 65536 || v->valuedouble != floor(v->valuedouble)) {
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: \"r\" must be an integer in 1..65536", path);
        goto done;
    }
    p->r = (int32_t)v->valuedouble;
    v = cJSON_GetObjectItemCaseSensitive(o, "lora_alpha");
    p->alpha = (float)p->r; /* PEFT's default lora_alpha is 8 with r 8; absent means alpha = r here */
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) { s = lorac_error(LORAC_STATUS_FORMAT, "%s: \"lora_alpha\" must be a number", path); goto done; }
        p->alpha = (float)v->valuedouble;
    }
    v = cJSON_GetObjectItemCaseSensitive(o, "lora_dropout");
    if (cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < 1) p->dropout = (float)v->valuedouble;
    v = cJSON_GetObjectItemCaseSensitive(o, "use_rslora");
    p->rslora = cJSON_IsTrue(v);
    static const char *const refused[] = {"use_dora", "fan_in_fan_out"};
    for (size_t i = 0; i < 2; i++) {
        v = cJSON_GetObjectItemCaseSensitive(o, refused[i]);
        if (cJSON_IsTrue(v)) { s = lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: %s is not supported", path, refused[i]); goto done; }
    }
    v = cJSON_GetObjectItemCaseSensitive(o, "bias");
    if (v && (!cJSON_IsString(v) || strcmp(v->valuestring, "none") != 0)) {
        s = lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: bias training (\"bias\": not \"none\") is not supported", path);
        goto done;
    }
    v = cJSON_GetObjectItemCaseSensitive(o, "modules_to_save");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsArray(v) && cJSON_GetArraySize(v) == 0)) {
        s = lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: modules_to_save is not supported", path);
        goto done;
    }
    static const char *const patterns[] = {"rank_pattern", "alpha_pattern"};
    for (size_t i = 0; i < 2; i++) {
        v = cJSON_GetObjectItemCaseSensitive(o, patterns[i]);
        if (v && !cJSON_IsNull(v) && !(cJSON_IsObject(v) && !v->child)) {
            s = lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: %s is not supported yet", path, patterns[i]);
            goto done;
        }
    }
    v = cJSON_GetObjectItemCaseSensitive(o, "layers_to_transform");
    memset(layers, 1, (size_t)mc->n_layers);
    if (cJSON_IsNumber(v) || cJSON_IsArray(v)) {
        memset(layers, 0, (size_t)mc->n_layers);
        const cJSON *e = cJSON_IsArray(v) ? v->child : v;
        for (; e; e = cJSON_IsArray(v) ? e->next : NULL) {
            if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= mc->n_layers) {
                s = lorac_error(LORAC_STATUS_FORMAT, "%s: layers_to_transform entry outside 0..%d", path, mc->n_layers - 1);
                goto done;
            }
            layers[(int)e->valuedouble] = 1;
        }
    }
done:
    cJSON_Delete(o);
    return s;
}

lorac_status_t lorac_adapter_load(const char *dir, const lorac_model_config_t *mc, lorac_adapter_t **out) {
    *out = NULL;
    char *cfg_path = lorac_path_join(dir, "adapter_config.json");
    char *st_path = lorac_path_join(dir, "adapter_model.safetensors");
    char *text = NULL;
    uint8_t *layers = malloc((size_t)mc->n_layers);
    lorac_safetensors_t *st = NULL;
    lorac_adapter_t *a = NULL;
    lorac_status_t s;
    size_t len = 0;
    if (!cfg_path || !st_path || !layers) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); goto done; }
    if ((s = lorac_file_read(cfg_path, ADAPTER_CONFIG_MAX, &text, &len))) goto done;
    lorac_lora_params_t p;
    if ((s = parse_config(cfg_path, text, len, mc, &p, layers))) goto done;
    if ((s = lorac_safetensors_open(st_path, &st))) goto done;

    /* The modules present in the file decide the targets. */
    uint32_t targets = 0;
    for (int64_t i = 0; i < lorac_safetensors_count(st); i++) {
        const lorac_tensor_view_t *tv = lorac_safetensors_get(st, i);
        int32_t layer; int t; char which;
        if (parse_key(tv->name, &layer, &t, &which) != 0) {
            s = lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: tensor \"%s\" is not a LoRA A/B weight of a supported module (q/k/v/o/gate/up/down_proj)",
                            st_path, tv->name);
            goto done;
        }
        if (layer >= mc->n_layers) {
            s = lorac_error(LORAC_STATUS_FORMAT, "%s: tensor \"%s\" names layer %d but the model has %d layers", st_path, tv->name, layer, mc->n_layers);
            goto done;
        }
        targets |= 1u << t;
    }
    if (!targets) { s = lorac_error(LORAC_STATUS_FORMAT, "%s: no LoRA tensors", st_path); goto done; }
    p.targets = targets;
    p.layers = layers;
    if ((s = lorac_adapter_alloc(mc, &p, &a))) goto done;
    for (int32_t i = 0; i < a->n_modules; i++) {
        lorac_lora_module_t *m = &a->modules[i];
        for (int k = 0; k < 2; k++) {
            char which = k ? 'B' : 'A', key[128];
            module_key(m, which, key, sizeof key);
            const lorac_tensor_view_t *tv = lorac_safetensors_find(st, key);
            if (!tv) tv = lorac_safetensors_find(st, key + 17); /* without "base_model.model." */
            if (!tv) {
                char alt[160];
                snprintf(alt, sizeof alt, "%.*s.default.weight", (int)(strlen(key) - 7), key);
                tv = lorac_safetensors_find(st, alt);
            }
            if (!tv) { s = lorac_error(LORAC_STATUS_FORMAT, "%s: missing tensor \"%s\"", st_path, key); goto done; }
            int64_t want0 = k ? m->out : m->r, want1 = k ? m->r : m->in;
            if (tv->n_dims != 2 || tv->shape[0] != want0 || tv->shape[1] != want1) {
                s = lorac_error(LORAC_STATUS_FORMAT, "%s: tensor \"%s\" has shape [%lld, %lld], expected [%lld, %lld]", st_path,
                                tv->name, (long long)tv->shape[0], (long long)(tv->n_dims > 1 ? tv->shape[1] : 0),
                                (long long)want0, (long long)want1);
                goto done;
            }
            if (tv->dtype != LORAC_DTYPE_F32 && tv->dtype != LORAC_DTYPE_F16 && tv->dtype != LORAC_DTYPE_BF16) {
                s = lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: tensor \"%s\" has dtype %s (F32, F16 or BF16 expected)", st_path,
                                tv->name, lorac_dtype_name(tv->dtype));
                goto done;
            }
            /* copy through a bounce buffer: file data need not be aligned */
            void *tmp = malloc((size_t)tv->nbytes);
            if (!tmp) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); goto done; }
            memcpy(tmp, tv->data, (size_t)tv->nbytes);
            lorac_convert_to_f32(k ? m->B : m->A, tmp, tv->dtype, tv->n_elements);
            free(tmp);
        }
    }
    *out = a;
    a = NULL;
done:
    lorac_adapter_free(a);
    lorac_safetensors_free(st);
    free(cfg_path); free(st_path); free(text); free(layers);
    return s;
}
