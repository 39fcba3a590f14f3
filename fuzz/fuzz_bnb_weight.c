/* libFuzzer target: a bitsandbytes 4-bit weight ("w" and its companions in a
 * safetensors buffer) read as NF4 (model/bnb.c), as a 2 x 64 and a 3 x 40
 * weight. Malformed input must end in a status; nothing may read outside
 * the buffer, and every value of what is accepted is read back. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lorac/kernels.h"
#include "lorac/safetensors.h"
#include "model/model_internal.h"

static volatile float g_sink;

static const lorac_tensor_view_t *find(const void *st, const char *name) { return lorac_safetensors_find(st, name); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *buf = malloc(size ? size : 1); /* exact size: ASan sees reads past the end */
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);
    lorac_safetensors_t *st = NULL;
    if (lorac_safetensors_open_memory(buf, size, "fuzz", &st) == LORAC_STATUS_OK) {
        static const int64_t shapes[][2] = {{2, 64}, {3, 40}};
        for (int i = 0; i < 2; i++) {
            void *q = NULL;
            if (lorac_bnb_read_nf4(find, st, "w", shapes[i], NULL, &q) == LORAC_STATUS_OK) {
                float sum = 0;
                for (int64_t e = 0; e < shapes[i][0] * shapes[i][1]; e++) sum += lorac_nf4_value(q, e);
                g_sink = sum; /* keeps the reads */
                free(q);
            }
        }
        lorac_safetensors_free(st);
    }
    free(buf);
    return 0;
}
