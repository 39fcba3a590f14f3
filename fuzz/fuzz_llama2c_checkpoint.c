/* libFuzzer target: llama2.c checkpoint header validation. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lorac/formats.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* copy so the parser sees an aligned buffer of exactly `size` bytes */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    lorac_llama2c_checkpoint_t c;
    if (lorac_llama2c_parse(buf, size, "fuzz", &c) == LORAC_STATUS_OK) {
        /* touch the last float of every array the parser pointed at */
        volatile float sink = c.rms_final[c.dim - 1] + c.wcls[(size_t)c.vocab_size * c.dim - 1];
        (void)sink;
    }
    free(buf);
    return 0;
}
