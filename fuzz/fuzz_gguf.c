/* libFuzzer target: the GGUF reader must reject any malformed buffer with a
 * status (never crash, leak or read outside it), and whatever it accepts
 * must be internally consistent: every key and tensor found by name, every
 * value and array element readable, tensor data inside the buffer. What it
 * accepts then goes through the LoRA import (lorac_import_adapter_gguf_open)
 * against a small Llama config (stories260K's shape) and a Phi-3 one
 * (fused projections), which must load it or refuse it with a status. */
#include "lorac/export.h"
#include "lorac/gguf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *buf = malloc(size ? size : 1); /* exact size: ASan flags any overread */
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);
    lorac_gguf_t *g = NULL;
    if (lorac_gguf_open_memory(buf, size, "fuzz", &g) == LORAC_STATUS_OK) {
        volatile uint8_t sink = 0;
        for (int64_t i = 0; i < lorac_gguf_n_kv(g); i++) {
            if (lorac_gguf_find_key(g, lorac_gguf_key(g, i)) != i) abort();
            int64_t v;
            double d;
            const char *s;
            size_t len;
            lorac_gguf_type_t t = lorac_gguf_kv_type(g, i);
            if (t == LORAC_GGUF_STRING) {
                if (lorac_gguf_get_string(g, i, &s, &len)) abort();
                if (len) sink ^= (uint8_t)s[len - 1];
            } else if (t == LORAC_GGUF_ARRAY) {
                int64_t n = lorac_gguf_array_count(g, i);
                for (int64_t j = 0; j < n && j < 64; j++) {
                    lorac_gguf_type_t et = lorac_gguf_array_type(g, i);
                    if (et == LORAC_GGUF_STRING) {
                        if (lorac_gguf_array_string(g, i, j, &s, &len)) abort();
                        if (len) sink ^= (uint8_t)s[len - 1];
                    } else if (et == LORAC_GGUF_FLOAT32 || et == LORAC_GGUF_FLOAT64) {
                        if (lorac_gguf_array_float(g, i, j, &d)) abort();
                    } else {
                        (void)lorac_gguf_array_int(g, i, j, &v); /* a UINT64 may be out of range */
                    }
                }
            } else if (t == LORAC_GGUF_FLOAT32 || t == LORAC_GGUF_FLOAT64) {
                if (lorac_gguf_get_float(g, i, &d)) abort();
            } else {
                (void)lorac_gguf_get_int(g, i, &v);
            }
        }
        for (int64_t i = 0; i < lorac_gguf_n_tensors(g); i++) {
            const lorac_gguf_tensor_t *t = lorac_gguf_tensor(g, i);
            char name[LORAC_GGUF_MAX_NAME];
            memcpy(name, t->name, t->name_len);
            name[t->name_len] = '\0';
            if (lorac_gguf_find_tensor(g, name) != t) abort();
            if (t->nbytes) {
                const uint8_t *p = t->data;
                if (p < buf || p + t->nbytes > buf + size) abort();
                sink ^= p[0];
                sink ^= p[t->nbytes - 1];
            }
        }
        (void)sink;
        static const char *const configs[] = {
            "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 172, "
            "\"num_hidden_layers\": 5, \"num_attention_heads\": 8, \"num_key_value_heads\": 4, \"vocab_size\": 512}",
            "{\"architectures\": [\"Phi3ForCausalLM\"], \"hidden_size\": 32, \"intermediate_size\": 48, "
            "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 4, \"vocab_size\": 64}"};
        for (int c = 0; c < 2; c++) {
            lorac_model_config_t config;
            if (lorac_model_config_parse(configs[c], strlen(configs[c]), "config", &config)) abort();
            lorac_adapter_t *a = NULL;
            if (lorac_import_adapter_gguf_open(g, "fuzz", &config, &a) == LORAC_STATUS_OK) {
                if (!a || lorac_adapter_n_modules(a) < 1) abort();
                lorac_adapter_free(a);
            } else if (a) {
                abort();
            }
        }
    }
    lorac_gguf_free(g);
    free(buf);
    return 0;
}
