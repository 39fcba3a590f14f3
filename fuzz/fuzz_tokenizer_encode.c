/* libFuzzer target: encode arbitrary bytes with a small fixed byte-level
 * tokenizer (GPT-2 regex, Digits, added tokens with lstrip/rstrip), then
 * decode; valid UTF-8 input must round-trip. The same tokenizer with an
 * NFC normalizer (Qwen2's) takes inputs whose first byte is odd: its
 * round trip gives the text's NFC, which must be its own NFC (a second
 * round trip changes nothing). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lorac/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lorac_tokenizer_t *g_tok, *g_nfc;

/* 256 byte tokens (GPT-2 byte-to-unicode form) + a few merges. */
static lorac_tokenizer_t *make_tokenizer(int nfc) {
    size_t cap = 1 << 16, n = 0;
    char *j = malloc(cap);
    if (!j) return NULL;
    n += (size_t)snprintf(j + n, cap - n, "{\"model\":{\"type\":\"BPE\",\"vocab\":{");
    int id = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
        static int extra = 0;
        unsigned cp = printable ? (unsigned)b : 256u + (unsigned)extra++;
        n += (size_t)snprintf(j + n, cap - n, "%s\"\\u%04x\":%d", id ? "," : "", cp, id);
        id++;
    }
    n += (size_t)snprintf(j + n, cap - n, ",\"\\u0120t\":256,\"he\":257,\"\\u0120the\":258,\"aa\":259},"
                          "\"merges\":[\"\\u0120 t\",\"h e\",\"\\u0120t he\",\"a a\"]},"
                          "\"added_tokens\":[{\"id\":260,\"content\":\"<s>\",\"special\":true,\"lstrip\":true,\"rstrip\":true},"
                          "{\"id\":261,\"content\":\"<|x|>\",\"special\":false,\"single_word\":true}],"
                          "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Digits\",\"individual_digits\":true},"
                          "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}]},"
                          "\"decoder\":{\"type\":\"ByteLevel\"}%s}", nfc ? ",\"normalizer\":{\"type\":\"NFC\"}" : "");
    lorac_tokenizer_t *tok = NULL;
    lorac_tokenizer_load_json_memory(j, n, "fuzz-fixed.json", &tok);
    free(j);
    return tok;
}

/* decode(encode(s)) with the NFC tokenizer; NULL when s is refused */
static char *nfc_round_trip(const char *s, size_t n, size_t *out_len) {
    int32_t *ids = NULL;
    size_t k = 0;
    char *out = NULL;
    if (lorac_tokenizer_encode(g_nfc, s, n, false, &ids, &k) != LORAC_STATUS_OK) return NULL;
    if (lorac_tokenizer_decode(g_nfc, ids, k, false, &out, out_len) != LORAC_STATUS_OK) out = NULL;
    free(ids);
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_tok) g_tok = make_tokenizer(0);
    if (!g_nfc) g_nfc = make_tokenizer(1);
    if (!g_tok || !g_nfc) return 0;
    if (size > 0 && (data[0] & 1) && !memmem(data, size, "<s>", 3)) {
        size_t n1 = 0, n2 = 0;
        char *once = nfc_round_trip((const char *)data, size, &n1);
        char *twice = once ? nfc_round_trip(once, n1, &n2) : NULL;
        if (once && (!twice || n1 != n2 || memcmp(once, twice, n1) != 0)) __builtin_trap();
        free(once);
        free(twice);
        return 0;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    if (lorac_tokenizer_encode(g_tok, (const char *)data, size, false, &ids, &n) != LORAC_STATUS_OK) return 0;
    char *out = NULL;
    size_t out_len = 0;
    if (lorac_tokenizer_decode(g_tok, ids, n, false, &out, &out_len) == LORAC_STATUS_OK) {
        /* with lstrip/rstrip whitespace around <s> is swallowed, so only
         * compare when the input has no "<s>" */
        if (!memmem(data, size, "<s>", 3) && (out_len != size || memcmp(out, data, size) != 0)) __builtin_trap();
        free(out);
    }
    free(ids);
    return 0;
}
