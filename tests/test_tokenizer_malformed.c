/* Malformed tokenizer inputs: each must give a clear error (status + message
 * naming the field), never a crash or a leak (run under ASan). */
#include <stdbool.h>

#include "lorac/tokenizer.h"
#include "test_tokenizer_util.h"

#define MODEL_OK "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}"

static const struct {
    const char *json;
    lorac_status_t status;
    const char *message; /* substring the error message must contain */
} k_json_cases[] = {
    {"", LORAC_STATUS_FORMAT, "not valid JSON"},
    {"{\"model\": ", LORAC_STATUS_FORMAT, "not valid JSON"},
    {"[1,2,3]", LORAC_STATUS_FORMAT, "not a JSON object"},
    {"{}", LORAC_STATUS_FORMAT, "missing 'model'"},
    {"{\"model\":[]}", LORAC_STATUS_FORMAT, "missing 'model'"},
    {"{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", LORAC_STATUS_UNSUPPORTED, "'WordPiece' is not supported"},
    {"{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", LORAC_STATUS_UNSUPPORTED, "'Unigram' is not supported"},
    {"{\"model\":{\"type\":7,\"vocab\":{}}}", LORAC_STATUS_FORMAT, "model.type"},
    {"{\"model\":{\"type\":\"BPE\"}}", LORAC_STATUS_FORMAT, "model.vocab"},
    {"{\"model\":{\"vocab\":[\"a\",\"b\"]}}", LORAC_STATUS_FORMAT, "model.vocab"},
    {"{\"model\":{\"vocab\":{\"a\":\"x\"}}}", LORAC_STATUS_FORMAT, "model.vocab"},
    {"{\"model\":{\"vocab\":{\"a\":-1}}}", LORAC_STATUS_FORMAT, "model.vocab"},
    {"{\"model\":{\"vocab\":{\"a\":0,\"b\":7}}}", LORAC_STATUS_FORMAT, "model.vocab"},
    {"{\"model\":{\"vocab\":{\"a\":0,\"b\":1.5}}}", LORAC_STATUS_FORMAT, "model.vocab"},
    {"{\"model\":{\"vocab\":{\"a\":0,\"b\":0}}}", LORAC_STATUS_FORMAT, "id 0 is used by both"},
    {"{\"model\":{\"vocab\":{\"a\":0,\"a\":1}}}", LORAC_STATUS_FORMAT, "appears twice"},
    {"{\"model\":{\"vocab\":{\"\xff\":0}}}", LORAC_STATUS_FORMAT, "not valid UTF-8"},
    {"{\"model\":{\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a c\"]}}", LORAC_STATUS_FORMAT, "merges[0] references token 'c'"},
    {"{\"model\":{\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]}}", LORAC_STATUS_FORMAT, "merged token 'ab' is not in the vocab"},
    {"{\"model\":{\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"ab\"]}}", LORAC_STATUS_FORMAT, "merges[0]"},
    {"{\"model\":{\"vocab\":{\"a\":0,\"b\":1},\"merges\":[[\"a\"]]}}", LORAC_STATUS_FORMAT, "merges[0]"},
    {"{\"model\":{\"vocab\":{\"a\":0,\"b\":1},\"merges\":{}}}", LORAC_STATUS_FORMAT, "model.merges"},
    {"{\"model\":{\"vocab\":{\"a\":0},\"unk_token\":\"<unk>\"}}", LORAC_STATUS_FORMAT, "unk_token"},
    {"{\"model\":{\"vocab\":{\"a\":0},\"dropout\":0.1}}", LORAC_STATUS_UNSUPPORTED, "dropout"},
    {"{\"model\":{\"vocab\":{\"a\":0},\"continuing_subword_prefix\":\"##\"}}", LORAC_STATUS_UNSUPPORTED, "continuing_subword_prefix"},
    {"{" MODEL_OK ",\"added_tokens\":{}}", LORAC_STATUS_FORMAT, "added_tokens"},
    {"{" MODEL_OK ",\"added_tokens\":[{\"content\":\"<s>\"}]}", LORAC_STATUS_FORMAT, "added_tokens"},
    {"{" MODEL_OK ",\"added_tokens\":[{\"id\":3}]}", LORAC_STATUS_FORMAT, "content"},
    {"{" MODEL_OK ",\"added_tokens\":[{\"id\":99,\"content\":\"<s>\"}]}", LORAC_STATUS_FORMAT, "added_tokens"},
    {"{" MODEL_OK ",\"added_tokens\":[{\"id\":0,\"content\":\"<s>\"}]}", LORAC_STATUS_FORMAT, "which the vocab gives to 'a'"},
    {"{" MODEL_OK ",\"added_tokens\":[{\"id\":3,\"content\":\"ab\"}]}", LORAC_STATUS_FORMAT, "already has id 2"},
    {"{" MODEL_OK ",\"added_tokens\":[{\"id\":3,\"content\":\"<s>\"},{\"id\":3,\"content\":\"<s>\"}]}", LORAC_STATUS_FORMAT, "used twice"},
    {"{" MODEL_OK ",\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(unclosed\"},\"behavior\":\"Isolated\"}}", LORAC_STATUS_FORMAT, "bad regex"},
    {"{" MODEL_OK ",\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},\"behavior\":\"Sideways\"}}", LORAC_STATUS_FORMAT, "behavior"},
    {"{" MODEL_OK ",\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":7,\"behavior\":\"Isolated\"}}", LORAC_STATUS_FORMAT, "pattern"},
    {"{" MODEL_OK ",\"pre_tokenizer\":{\"type\":\"Whitespace\"}}", LORAC_STATUS_UNSUPPORTED, "'Whitespace' is not supported"},
    {"{" MODEL_OK ",\"pre_tokenizer\":{\"type\":\"Sequence\"}}", LORAC_STATUS_FORMAT, "pretokenizers"},
    {"{" MODEL_OK ",\"pre_tokenizer\":{\"pretokenizers\":[]}}", LORAC_STATUS_FORMAT, "without a 'type'"},
    {"{" MODEL_OK ",\"pre_tokenizer\":7}", LORAC_STATUS_FORMAT, "'pre_tokenizer' is not an object"},
    {"{" MODEL_OK ",\"normalizer\":{\"type\":\"NFKC\"}}", LORAC_STATUS_UNSUPPORTED, "'NFKC' is not supported"},
    {"{" MODEL_OK ",\"normalizer\":{\"type\":\"Prepend\"}}", LORAC_STATUS_FORMAT, "Prepend"},
    /* stray bytes anywhere in the file, not only in the vocab */
    {"{" MODEL_OK ",\"normalizer\":{\"type\":\"Prepend\",\"prepend\":\"\xe2\xff\"}}", LORAC_STATUS_FORMAT, "not valid UTF-8"},
    {"{" MODEL_OK ",\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\"}}]}}", LORAC_STATUS_FORMAT, "'<s>' is not in the vocabulary"},
    {"{" MODEL_OK ",\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\"}}],\"special_tokens\":{\"<s>\":{\"ids\":[70000]}}}}", LORAC_STATUS_FORMAT, "out of range"},
    {"{" MODEL_OK ",\"decoder\":{\"type\":\"WordPiece\"}}", LORAC_STATUS_UNSUPPORTED, "decoder 'WordPiece'"},
    {"{" MODEL_OK ",\"decoder\":{\"type\":\"Strip\",\"content\":\" \",\"start\":-1,\"stop\":0}}", LORAC_STATUS_FORMAT, "Strip"},
};

static void check_json_table(void) {
    for (size_t i = 0; i < sizeof k_json_cases / sizeof *k_json_cases; i++) {
        lorac_tokenizer_t *tok = (lorac_tokenizer_t *)1;
        lorac_error_clear();
        lorac_status_t st = lorac_tokenizer_load_json_memory(k_json_cases[i].json, strlen(k_json_cases[i].json), "bad.json", &tok);
        const char *msg = lorac_error_message();
        CHECK_MSG(st == k_json_cases[i].status && tok == NULL && strstr(msg, "bad.json") && strstr(msg, k_json_cases[i].message),
                  "case %zu (%s): status %s, message '%s'", i, k_json_cases[i].json, lorac_status_str(st), msg);
        if (st == LORAC_STATUS_OK) lorac_tokenizer_free(tok);
    }
    /* the small valid file loads and encodes */
    const char *ok = "{" MODEL_OK ",\"added_tokens\":[{\"id\":3,\"content\":\"<s>\",\"special\":true}]}";
    lorac_tokenizer_t *tok = NULL;
    CHECK(lorac_tokenizer_load_json_memory(ok, strlen(ok), "ok.json", &tok) == LORAC_STATUS_OK);
    if (tok) {
        int32_t *ids;
        size_t n;
        CHECK(lorac_tokenizer_encode(tok, "ab<s>ba", 7, false, &ids, &n) == LORAC_STATUS_OK);
        CHECK(n == 4 && ids[0] == 2 && ids[1] == 3 && ids[2] == 1 && ids[3] == 0);
        free(ids);
        /* characters the model cannot represent are dropped without unk (as HF) */
        CHECK(lorac_tokenizer_encode(tok, "axb", 3, false, &ids, &n) == LORAC_STATUS_OK);
        CHECK(n == 1 && ids[0] == 2); /* "a" "b" then merge */
        free(ids);
        lorac_tokenizer_free(tok);
    }
    CHECK(lorac_tokenizer_load_json("/nonexistent/tokenizer.json", &tok) == LORAC_STATUS_IO);
    CHECK(strstr(lorac_error_message(), "/nonexistent/tokenizer.json") != NULL);
}

/* Replace normalizers whose contents hold their own pattern multiply the
 * text at every step (each of these makes a space into 33): encoding fails
 * with an error instead of allocating gigabytes, as a fuzzer's file did.
 * A chain of eight fails (at its third step, 7 bytes past 100 KB); one
 * alone (7 bytes to 106) still encodes. */
#define GROW "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"a                                b\"}"
static void check_normalizer_growth(void) {
    static const char *const defs[] = {
        "{" MODEL_OK ",\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[" GROW "]}}",
        "{" MODEL_OK ",\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[" GROW "," GROW "," GROW "," GROW "," GROW
        "," GROW "," GROW "," GROW "]}}",
    };
    for (int i = 0; i < 2; i++) {
        lorac_tokenizer_t *tok = NULL;
        CHECK(lorac_tokenizer_load_json_memory(defs[i], strlen(defs[i]), "grow.json", &tok) == LORAC_STATUS_OK);
        if (!tok) continue;
        int32_t *ids = (int32_t *)1;
        size_t n = 7;
        lorac_error_clear();
        lorac_status_t st = lorac_tokenizer_encode(tok, "a b a b", 7, false, &ids, &n);
        if (i == 0) {
            CHECK_MSG(st == LORAC_STATUS_OK && n > 0, "one multiplying Replace: %s", lorac_error_message());
            if (st == LORAC_STATUS_OK) free(ids);
        } else {
            CHECK_MSG(st == LORAC_STATUS_FORMAT && ids == NULL && n == 0 && strstr(lorac_error_message(), "multiply"),
                      "eight multiplying Replaces: status %s, message '%s'", lorac_status_str(st), lorac_error_message());
        }
        lorac_tokenizer_free(tok);
    }
}

/* A small valid llama2.c tokenizer: <unk>, BOS, EOS, 256 byte tokens, then
 * a few pieces. */
static size_t make_llama2c(unsigned char *buf, int32_t *vocab_size, bool dup) {
    size_t off = 0;
    int32_t max_len = 8, n = 0;
    memcpy(buf, &max_len, 4);
    off = 4;
    char piece[16];
    for (int i = 0; i < 259 + 5; i++) {
        if (i == 0) strcpy(piece, "<unk>");
        else if (i == 1) strcpy(piece, "\n<s>\n");
        else if (i == 2) strcpy(piece, "\n</s>\n");
        else if (i < 259) snprintf(piece, sizeof piece, "<0x%02X>", i - 3);
        else strcpy(piece, (const char *[]){" ", "a", dup ? "a" : "b", "ab", " ab"}[i - 259]);
        float score = i < 259 ? 0.0f : -(float)i;
        int32_t len = (int32_t)strlen(piece);
        memcpy(buf + off, &score, 4);
        memcpy(buf + off + 4, &len, 4);
        memcpy(buf + off + 8, piece, (size_t)len);
        off += 8 + (size_t)len;
        n++;
    }
    *vocab_size = n;
    return off;
}

static void check_llama2c_table(void) {
    static unsigned char buf[8192];
    int32_t vs;
    size_t len = make_llama2c(buf, &vs, false);
    lorac_tokenizer_t *tok = NULL;
    CHECK(lorac_tokenizer_load_llama2c_memory(buf, len, vs, "small.bin", &tok) == LORAC_STATUS_OK);
    lorac_tokenizer_free(tok);
    /* truncated at every byte */
    int clear = 0;
    for (size_t cut = 0; cut < len; cut++) {
        lorac_status_t st = lorac_tokenizer_load_llama2c_memory(buf, cut, vs, "small.bin", &tok);
        const char *msg = lorac_error_message();
        if (st == LORAC_STATUS_FORMAT && tok == NULL && strstr(msg, "small.bin")) clear++;
        else fprintf(stderr, "cut %zu: %s %s\n", cut, lorac_status_str(st), msg);
    }
    CHECK_MSG(clear == (int)len, "%d/%zu truncations gave a clear error", clear, len);
    /* vocab_size <= 0, too large for the file */
    CHECK(lorac_tokenizer_load_llama2c_memory(buf, len, 0, "small.bin", &tok) == LORAC_STATUS_INVALID_ARG);
    CHECK(lorac_tokenizer_load_llama2c_memory(buf, len, -3, "small.bin", &tok) == LORAC_STATUS_INVALID_ARG);
    CHECK(lorac_tokenizer_load_llama2c_memory(buf, len, INT32_MAX, "small.bin", &tok) == LORAC_STATUS_FORMAT);
    CHECK(strstr(lorac_error_message(), "vocab_size") != NULL);
    CHECK(lorac_tokenizer_load_llama2c_memory(buf, len, vs + 1, "small.bin", &tok) == LORAC_STATUS_FORMAT);
    /* negative and huge token lengths, bad max_token_length, NaN score */
    static unsigned char bad[8192];
    int32_t neg = -5, huge = 0x7fffffff, zero = 0;
    float nan = NAN;
    memcpy(bad, buf, len);
    memcpy(bad + 4 + 4, &neg, 4);
    CHECK(lorac_tokenizer_load_llama2c_memory(bad, len, vs, "small.bin", &tok) == LORAC_STATUS_FORMAT);
    CHECK(strstr(lorac_error_message(), "negative length") != NULL);
    memcpy(bad + 4 + 4, &huge, 4);
    CHECK(lorac_tokenizer_load_llama2c_memory(bad, len, vs, "small.bin", &tok) == LORAC_STATUS_FORMAT);
    CHECK(strstr(lorac_error_message(), "past the end") != NULL);
    memcpy(bad, buf, len);
    memcpy(bad, &zero, 4);
    CHECK(lorac_tokenizer_load_llama2c_memory(bad, len, vs, "small.bin", &tok) == LORAC_STATUS_FORMAT);
    CHECK(strstr(lorac_error_message(), "max_token_length") != NULL);
    memcpy(bad, buf, len);
    memcpy(bad + 4, &nan, 4);
    CHECK(lorac_tokenizer_load_llama2c_memory(bad, len, vs, "small.bin", &tok) == LORAC_STATUS_FORMAT);
    /* invalid UTF-8 in a piece; two identical pieces */
    memcpy(bad, buf, len);
    bad[4 + 8] = 0xff;
    CHECK(lorac_tokenizer_load_llama2c_memory(bad, len, vs, "small.bin", &tok) == LORAC_STATUS_FORMAT);
    CHECK(strstr(lorac_error_message(), "UTF-8") != NULL);
    int32_t vs2;
    size_t len2 = make_llama2c(bad, &vs2, true);
    CHECK(lorac_tokenizer_load_llama2c_memory(bad, len2, vs2, "small.bin", &tok) == LORAC_STATUS_FORMAT);
    CHECK(strstr(lorac_error_message(), "same string") != NULL);
    CHECK(lorac_tokenizer_load_llama2c(tt_fixture("llama2c/nonexistent.bin"), 32, &tok) == LORAC_STATUS_IO);
    /* the small tokenizer encodes with run.c's rules */
    CHECK(lorac_tokenizer_load_llama2c_memory(buf, len, vs, "small.bin", &tok) == LORAC_STATUS_OK);
    if (tok) {
        int32_t *ids;
        size_t n;
        CHECK(lorac_tokenizer_encode(tok, "ab\x01", 3, true, &ids, &n) == LORAC_STATUS_OK);
        /* BOS, " ab" (via "ab"), byte 0x01 */
        CHECK(n == 3 && ids[0] == 1 && ids[1] == 263 && ids[2] == 3 + 1);
        free(ids);
        lorac_tokenizer_free(tok);
    }
}

int main(void) {
    check_json_table();
    check_normalizer_growth();
    check_llama2c_table();
    return tl_finish("test_tokenizer_malformed");
}
