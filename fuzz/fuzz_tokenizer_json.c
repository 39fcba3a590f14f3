/* libFuzzer target: tokenizer.json loading; when a load succeeds, encode and
 * decode a fixed string with special tokens, digits, spaces and emoji. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lorac/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lorac_tokenizer_t *tok = NULL;
    if (lorac_tokenizer_load_json_memory((const char *)data, size, "fuzz.json", &tok) != LORAC_STATUS_OK) return 0;
    static const char text[] = "Hello <s> w\xc3\xb6rld 12345   \t\n\xf0\x9f\xa6\x99</s> ab";
    int32_t *ids = NULL;
    size_t n = 0;
    if (lorac_tokenizer_encode(tok, text, sizeof text - 1, true, &ids, &n) == LORAC_STATUS_OK) {
        char *out = NULL;
        if (lorac_tokenizer_decode(tok, ids, n, false, &out, NULL) == LORAC_STATUS_OK) free(out);
        char buf[64];
        for (size_t i = 0; i < n; i++) lorac_tokenizer_token_bytes(tok, ids[i], buf, sizeof buf);
        free(ids);
    }
    lorac_tokenizer_free(tok);
    return 0;
}
