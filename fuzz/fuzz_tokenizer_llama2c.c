/* libFuzzer target: llama2.c tokenizer.bin loading. The first byte picks the
 * vocab_size (1..256); when a load succeeds, encode/decode a fixed string. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lorac/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int32_t vocab_size = (int32_t)data[0] + 1;
    lorac_tokenizer_t *tok = NULL;
    if (lorac_tokenizer_load_llama2c_memory(data + 1, size - 1, vocab_size, "fuzz.bin", &tok) != LORAC_STATUS_OK) return 0;
    static const char text[] = "Once upon a time, \xe6\x97\xa5\xe6\x9c\xac  <s> 42\n";
    int32_t *ids = NULL;
    size_t n = 0;
    if (lorac_tokenizer_encode(tok, text, sizeof text - 1, true, &ids, &n) == LORAC_STATUS_OK) {
        char *out = NULL;
        if (lorac_tokenizer_decode(tok, ids, n, true, &out, NULL) == LORAC_STATUS_OK) free(out);
        free(ids);
    }
    lorac_tokenizer_free(tok);
    return 0;
}
