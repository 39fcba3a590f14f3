/* lorac inspect FILE.gguf: a GGUF file's metadata (scalars and strings in
 * full, arrays by type and length) and tensors (name, ggml type, shape
 * outermost first), as text or --json. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "lorac/gguf.h"

/* A value as JSON: numbers, booleans, strings; arrays as {"type", "length"}. */
static cJSON *value_json(const lorac_gguf_t *g, int64_t i) {
    lorac_gguf_type_t t = lorac_gguf_kv_type(g, i);
    int64_t v;
    uint64_t u;
    double d;
    const char *s;
    size_t len;
    if (t == LORAC_GGUF_STRING && !lorac_gguf_get_string(g, i, &s, &len)) {
        char *copy = malloc(len + 1);
        if (!copy) cli_die("out of memory");
        memcpy(copy, s, len);
        copy[len] = '\0';
        cJSON *j = cJSON_CreateString(copy);
        free(copy);
        return j;
    }
    if (t == LORAC_GGUF_ARRAY) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "type", lorac_gguf_type_name(lorac_gguf_array_type(g, i)));
        cJSON_AddNumberToObject(o, "length", (double)lorac_gguf_array_count(g, i));
        return o;
    }
    if (t == LORAC_GGUF_BOOL && !lorac_gguf_get_int(g, i, &v)) return cJSON_CreateBool(v != 0);
    if (!lorac_gguf_get_float(g, i, &d)) return cJSON_CreateNumber(d);
    if (!lorac_gguf_get_int(g, i, &v)) return cJSON_CreateNumber((double)v);
    if (!lorac_gguf_get_uint(g, i, &u)) return cJSON_CreateNumber((double)u);
    return cJSON_CreateNull();
}

int inspect_gguf(const char *path, int json) {
    lorac_gguf_t *g = NULL;
    cli_check(lorac_gguf_open(path, &g));
    cJSON *root = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(root, "metadata");
    cJSON *tensors = cJSON_AddArrayToObject(root, "tensors");
    cJSON_AddStringToObject(root, "format", "gguf");
    cJSON_AddNumberToObject(root, "version", lorac_gguf_version(g));
    for (int64_t i = 0; i < lorac_gguf_n_kv(g); i++) cJSON_AddItemToObject(meta, lorac_gguf_key(g, i), value_json(g, i));
    int64_t n_elements = 0;
    for (int64_t i = 0; i < lorac_gguf_n_tensors(g); i++) {
        const lorac_gguf_tensor_t *t = lorac_gguf_tensor(g, i);
        char name[LORAC_GGUF_MAX_NAME];
        memcpy(name, t->name, t->name_len);
        name[t->name_len] = '\0';
        cJSON *o = cJSON_CreateObject(), *shape = cJSON_CreateArray();
        cJSON_AddStringToObject(o, "name", name);
        cJSON_AddStringToObject(o, "type", lorac_ggml_type_name(t->type));
        for (int32_t d = 0; d < t->n_dims; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
        cJSON_AddItemToObject(o, "shape", shape);
        cJSON_AddItemToArray(tensors, o);
        n_elements += t->n_elements;
    }
    cJSON_AddNumberToObject(root, "n_elements", (double)n_elements);
    if (json) {
        char *text = cJSON_Print(root);
        if (!text) cli_die("out of memory");
        puts(text);
        free(text);
    } else {
        printf("%s: GGUF version %u, %lld metadata keys, %lld tensors, %lld elements\n", path, lorac_gguf_version(g),
               (long long)lorac_gguf_n_kv(g), (long long)lorac_gguf_n_tensors(g), (long long)n_elements);
        const cJSON *it;
        cJSON_ArrayForEach(it, meta) {
            char *v = cJSON_IsObject(it) ? NULL : cJSON_PrintUnformatted(it);
            if (cJSON_IsObject(it))
                printf("  %-44s [%s x %.0f]\n", it->string, cJSON_GetObjectItem(it, "type")->valuestring,
                       cJSON_GetObjectItem(it, "length")->valuedouble);
            else
                printf("  %-44s %.200s\n", it->string, v ? v : "");
            free(v);
        }
        cJSON_ArrayForEach(it, tensors) {
            const cJSON *shape = cJSON_GetObjectItem(it, "shape"), *d;
            printf("  %-44s %-5s [", cJSON_GetObjectItem(it, "name")->valuestring,
                   cJSON_GetObjectItem(it, "type")->valuestring);
            int first = 1;
            cJSON_ArrayForEach(d, shape) {
                printf(first ? "%.0f" : ", %.0f", d->valuedouble);
                first = 0;
            }
            printf("]\n");
        }
    }
    cJSON_Delete(root);
    lorac_gguf_free(g);
    return 0;
}
