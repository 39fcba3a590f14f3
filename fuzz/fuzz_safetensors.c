/* libFuzzer target: the safetensors reader must reject any malformed buffer
 * with a status (never crash, leak or read outside it), and whatever it
 * accepts must be internally consistent. */
#include "lorac/safetensors.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* an exact-size copy, so ASan flags any read past the end */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);
    lorac_safetensors_t *st = NULL;
    if (lorac_safetensors_open_memory(buf, size, "fuzz", &st) == LORAC_STATUS_OK) {
        volatile uint8_t sink = 0;
        uint64_t total = 0;
        for (int64_t i = 0; i < lorac_safetensors_count(st); i++) {
            const lorac_tensor_view_t *t = lorac_safetensors_get(st, i);
            if (lorac_safetensors_find(st, t->name) != t) abort();
            if (t->nbytes != (uint64_t)t->n_elements * lorac_dtype_size(t->dtype)) abort();
            if (t->nbytes) { /* touch both ends of the tensor */
                const uint8_t *p = t->data;
                sink ^= p[0];
                sink ^= p[t->nbytes - 1];
            }
            total += t->nbytes;
        }
        if (total > size) abort();
        for (int64_t i = 0; i < lorac_safetensors_metadata_count(st); i++) {
            const char *k = lorac_safetensors_metadata_key(st, i);
            if (!k || !lorac_safetensors_metadata_get(st, k)) abort();
        }
        (void)sink;
    }
    lorac_safetensors_free(st);
    free(buf);
    return 0;
}
