/* Tokenizer tests against independent references:
 *  - llama.cpp's test vectors (ids from HF tokenizers) for gpt-2, llama-spm
 *    (TinyLlama tokenizer.json) and llama-bpe (a Llama 3 tokenizer.json built
 *    here from encoder.json + vocab.bpe);
 *  - tests/data/tokenizer/golden-*.json: ids and decoded strings from npm
 *    @huggingface/tokenizers (scripts/tokref/gen-golden.js) on our corpus;
 *  - the NFC normalizer (Qwen2's) against a reference NFC over Unicode 9.0's
 *    data, which HuggingFace tokenizers' NFC has (itself checked against
 *    Python's unicodedata.normalize on 9.0's characters), on every code point
 *    NFC changes, every composite written decomposed, the later characters
 *    that 9.0 does not normalize, and random mark sequences
 *    (tests/data/tokenizer/nfc-golden.json), and
 *    SmolLM2's tokenizer with an NFC normalizer against tokenizers.js;
 *  - decode round trips, per-token bytes for streaming, invalid UTF-8 input;
 *  - a guard against quadratic encoding on 100k repeated characters. */
#include <cjson/cJSON.h>

#include "lorac/tokenizer.h"
#include "test_tokenizer_util.h"
#include "tokenizer/tok_internal.h"

/* Checks every string of a llama.cpp .inp/.out vector pair. */
static void check_vectors(const lorac_tokenizer_t *tok, const char *name) {
    char rel[256];
    snprintf(rel, sizeof rel, "tokenizers/test-vectors/ggml-vocab-%s.gguf.inp", name);
    size_t inp_len;
    char *inp = tt_read(tt_fixture(rel), &inp_len);
    snprintf(rel, sizeof rel, "tokenizers/test-vectors/ggml-vocab-%s.gguf.out", name);
    char *out = tt_read(tt_fixture(rel), NULL);
    CHECK(inp && out);
    if (!inp || !out) { free(inp); free(out); return; }
    static const char sep[] = "\n__ggml_vocab_test__\n";
    int total = 0, ok = 0;
    char *s = inp, *line = out;
    for (char *e; (e = strstr(s, sep)) != NULL; s = e + strlen(sep)) {
        char *nl = strchr(line, '\n');
        if (!nl) break;
        *nl = '\0';
        int32_t *ids;
        size_t n;
        lorac_status_t st = lorac_tokenizer_encode(tok, s, (size_t)(e - s), false, &ids, &n);
        char got[8192] = "";
        size_t gl = 0;
        for (size_t i = 0; st == LORAC_STATUS_OK && i < n && gl < sizeof got - 16; i++)
            gl += (size_t)snprintf(got + gl, sizeof got - gl, " %d", (int)ids[i]);
        total++;
        if (st == LORAC_STATUS_OK && strcmp(got, line) == 0) ok++;
        else fprintf(stderr, "%s vector %d: '%.*s'\n  want:%s\n  got: %s (%s)\n", name, total - 1, (int)(e - s), s, line, got,
                     st ? lorac_error_message() : "ok");
        if (st == LORAC_STATUS_OK) free(ids);
        line = nl + 1;
    }
    printf("%s test vectors: %d/%d match\n", name, ok, total);
    CHECK_MSG(total == 46 && ok == total, "%s: %d/%d", name, ok, total);
    free(inp);
    free(out);
}

/* Where tokenizers.js (the golden generator) is known to differ from the
 * Rust `tokenizers` library, the Rust ids are given here. Its Digits
 * pre-tokenizer uses JavaScript's ASCII-only \d, while Rust's uses
 * char::is_numeric (Unicode Nd/Nl/No): Arabic-Indic digits, "²³", "½" and
 * "Ⅻ" are split off in Rust (and lorac), not in tokenizers.js. */
static const struct { const char *tokenizer, *text, *ids; } k_rust_overrides[] = {
    {"smollm2", "\xd9\xa3\xd9\xa4\xd9\xa5 \xd9\xa1\xd9\xa2 and \xc2\xb2\xc2\xb3 \xc2\xbd \xe2\x85\xab",
     "[164,113,164,114,164,115,216,164,111,164,112,284,216,19133,39050,216,16738,216,173,223,121]"},
    {"smollm2-nfc", "\xd9\xa3\xd9\xa4\xd9\xa5 \xd9\xa1\xd9\xa2 and \xc2\xb2\xc2\xb3 \xc2\xbd \xe2\x85\xab",
     "[164,113,164,114,164,115,216,164,111,164,112,284,216,19133,39050,216,16738,216,173,223,121]"}, /* NFC keeps it */
};

static const cJSON *expected_ids(const char *name, const char *text, const cJSON *golden, cJSON **owned) {
    *owned = NULL;
    for (size_t i = 0; i < sizeof k_rust_overrides / sizeof *k_rust_overrides; i++)
        if (strcmp(name, k_rust_overrides[i].tokenizer) == 0 && strcmp(text, k_rust_overrides[i].text) == 0)
            return *owned = cJSON_Parse(k_rust_overrides[i].ids);
    return golden;
}

/* Compares encode/decode with the golden file of one tokenizer. */
static void check_golden(const lorac_tokenizer_t *tok, const char *name) {
    char path[256];
    snprintf(path, sizeof path, "tests/data/tokenizer/golden-%s.json", name);
    char *data = tl_read_source(path, NULL);
    cJSON *root = data ? cJSON_Parse(data) : NULL;
    free(data);
    CHECK_MSG(root != NULL, "golden %s", path);
    if (!root) return;
    int cases = 0, ok_ids = 0, ok_special = 0, ok_dec = 0, ok_skip = 0, roundtrip = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        size_t tl = strlen(text);
        cases++;
        int32_t *ids = NULL, *ids_sp = NULL;
        size_t n = 0, n_sp = 0;
        char *dec = NULL, *dec_skip = NULL;
        CHECK(lorac_tokenizer_encode(tok, text, tl, false, &ids, &n) == LORAC_STATUS_OK);
        CHECK(lorac_tokenizer_encode(tok, text, tl, true, &ids_sp, &n_sp) == LORAC_STATUS_OK);
        cJSON *o1, *o2;
        const cJSON *want_ids = expected_ids(name, text, cJSON_GetObjectItem(c, "ids"), &o1);
        const cJSON *want_sp = expected_ids(name, text, cJSON_GetObjectItem(c, "ids_special"), &o2);
        if (tt_ids_equal(ids, n, want_ids)) ok_ids++;
        else { fprintf(stderr, "%s: ids differ for '%s'\n", name, text); tt_print_ids("got", ids, n); }
        int sp_ok = tt_ids_equal(ids_sp, n_sp, want_sp);
        cJSON_Delete(o1);
        cJSON_Delete(o2);
        if (sp_ok) ok_special++;
        else { fprintf(stderr, "%s: ids (add_special) differ for '%s'\n", name, text); tt_print_ids("got", ids_sp, n_sp); }
        CHECK(lorac_tokenizer_decode(tok, ids, n, false, &dec, NULL) == LORAC_STATUS_OK);
        CHECK(lorac_tokenizer_decode(tok, ids_sp, n_sp, true, &dec_skip, NULL) == LORAC_STATUS_OK);
        const char *want = cJSON_GetObjectItem(c, "decoded")->valuestring;
        const char *want_skip = cJSON_GetObjectItem(c, "decoded_special_skipped")->valuestring;
        if (dec && strcmp(dec, want) == 0) ok_dec++;
        else fprintf(stderr, "%s: decode differs for '%s': got '%s' want '%s'\n", name, text, dec ? dec : "(null)", want);
        if (dec_skip && strcmp(dec_skip, want_skip) == 0) ok_skip++;
        else fprintf(stderr, "%s: decode(skip_special) differs for '%s': got '%s' want '%s'\n", name, text, dec_skip ? dec_skip : "(null)", want_skip);
        /* round trip wherever HF round-trips */
        if (strcmp(want, text) == 0 && dec && strcmp(dec, text) == 0) roundtrip++;
        else if (strcmp(want, text) == 0) fprintf(stderr, "%s: no round trip for '%s'\n", name, text);
        free(ids); free(ids_sp); free(dec); free(dec_skip);
    }
    int hf_roundtrip = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases"))
        hf_roundtrip += strcmp(cJSON_GetObjectItem(c, "decoded")->valuestring, cJSON_GetObjectItem(c, "text")->valuestring) == 0;
    printf("golden %s: ids %d/%d, ids+special %d/%d, decode %d/%d, decode(skip) %d/%d, round trip %d/%d\n", name,
           ok_ids, cases, ok_special, cases, ok_dec, cases, ok_skip, cases, roundtrip, hf_roundtrip);
    CHECK(cases >= 40);
    CHECK_MSG(ok_ids == cases && ok_special == cases && ok_dec == cases && ok_skip == cases && roundtrip == hf_roundtrip,
              "golden %s mismatches", name);
    cJSON_Delete(root);
}

/* Concatenated per-token bytes reproduce the text (plus the SentencePiece
 * leading space, which only the sequence-level Strip removes). */
static void check_streaming(const lorac_tokenizer_t *tok, const char *name, const char *text) {
    int32_t *ids;
    size_t n;
    CHECK(lorac_tokenizer_encode(tok, text, strlen(text), false, &ids, &n) == LORAC_STATUS_OK);
    char out[4096];
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t k = lorac_tokenizer_token_bytes(tok, ids[i], out + len, (int32_t)(sizeof out - 1 - len));
        CHECK(k >= 0);
        if (k > 0) len += (size_t)k;
    }
    out[len] = '\0';
    const char *got = out;
    if (lorac_tokenizer_strips_leading_space(tok) && got[0] == ' ') got++;
    CHECK_MSG(strcmp(got, text) == 0, "%s streaming: got '%s' want '%s'", name, got, text);
    CHECK(lorac_tokenizer_token_bytes(tok, -1, out, 10) == -1);
    CHECK(lorac_tokenizer_token_bytes(tok, lorac_tokenizer_vocab_size(tok), out, 10) == -1);
    free(ids);
}

/* 100k repeated characters: only a guard against quadratic behavior. The
 * bound (5 s, even under sanitizers) is ~100x what a linear encoder needs;
 * a quadratic one takes minutes. */
static void check_linear(const lorac_tokenizer_t *tok, const char *name) {
    static const char *units[] = {"a", " ", "\xf0\x9f\xa6\x99" /* 🦙 */, "ab ", "\n"};
    for (size_t u = 0; u < sizeof units / sizeof *units; u++) {
        size_t ul = strlen(units[u]), count = 100000, len = ul * count;
        char *text = malloc(len + 1);
        for (size_t i = 0; i < count; i++) memcpy(text + i * ul, units[u], ul);
        text[len] = '\0';
        int32_t *ids;
        size_t n;
        double t0 = tt_now();
        lorac_status_t st = lorac_tokenizer_encode(tok, text, len, false, &ids, &n);
        double dt = tt_now() - t0;
        CHECK_MSG(st == LORAC_STATUS_OK, "%s: %s", name, lorac_error_message());
        CHECK_MSG(dt < 5.0, "%s: 100k x '%s' took %.2f s", name, units[u], dt);
        if (st == LORAC_STATUS_OK) {
            char *dec;
            CHECK(lorac_tokenizer_decode(tok, ids, n, false, &dec, NULL) == LORAC_STATUS_OK);
            CHECK_MSG(strcmp(dec, text) == 0, "%s: 100k x unit %zu does not round trip", name, u);
            free(dec);
            free(ids);
        }
        printf("%s: 100k x unit %zu -> %zu ids in %.3f s\n", name, u, st ? 0 : n, dt);
        free(text);
    }
}

static void check_invalid_input(const lorac_tokenizer_t *tok) {
    const char *bad[] = {"\xff", "abc\xc3", "\xed\xa0\x80", "\xc0\xaf", "ok\x80ok"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int32_t *ids = (int32_t *)1;
        size_t n = 7;
        CHECK(lorac_tokenizer_encode(tok, bad[i], strlen(bad[i]), false, &ids, &n) == LORAC_STATUS_INVALID_ARG);
        CHECK(ids == NULL && n == 0);
        CHECK(strstr(lorac_error_message(), "UTF-8") != NULL);
    }
    int32_t bad_id[] = {1, -5};
    char *text = (char *)1;
    CHECK(lorac_tokenizer_decode(tok, bad_id, 2, false, &text, NULL) == LORAC_STATUS_INVALID_ARG);
    CHECK(text == NULL);
    int32_t *ids;
    size_t n = 99;
    CHECK(lorac_tokenizer_encode(tok, "", 0, true, &ids, &n) == LORAC_STATUS_OK);
    free(ids);
}

/* Newer transformers re-save Llama 2 tokenizers with a Metaspace
 * pre-tokenizer (prepend_scheme "first", split false) instead of the
 * Prepend/Replace normalizer: same ids on text without added tokens that
 * does not start with a space (Metaspace, as in HF, does not prepend a
 * second "▁" to text that already starts with one; Prepend does). */
static void check_metaspace_spelling(const lorac_tokenizer_t *ref) {
    char *data = tt_read(tt_fixture("tokenizers/tinyllama-1.1b-chat-v1.0/tokenizer.json"), NULL);
    cJSON *root = data ? cJSON_Parse(data) : NULL;
    free(data);
    CHECK(root != NULL);
    if (!root) return;
    cJSON_ReplaceItemInObject(root, "normalizer", cJSON_CreateNull());
    cJSON_ReplaceItemInObject(root, "pre_tokenizer",
        cJSON_Parse("{\"type\":\"Metaspace\",\"replacement\":\"\u2581\",\"prepend_scheme\":\"first\",\"split\":false}"));
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    lorac_tokenizer_t *tok = NULL;
    CHECK(lorac_tokenizer_load_json_memory(json, strlen(json), "tinyllama-metaspace.json", &tok) == LORAC_STATUS_OK);
    free(json);
    if (!tok) return;
    const char *texts[] = {"Hello world", "two  spaces  ", "line1\nline2\ttab", "日本語 🦙 café", "", "a"};
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        int32_t *a, *b;
        size_t na, nb;
        CHECK(lorac_tokenizer_encode(ref, texts[i], strlen(texts[i]), true, &a, &na) == LORAC_STATUS_OK);
        CHECK(lorac_tokenizer_encode(tok, texts[i], strlen(texts[i]), true, &b, &nb) == LORAC_STATUS_OK);
        CHECK_MSG(na == nb && memcmp(a, b, na * sizeof *a) == 0, "metaspace spelling differs on '%s'", texts[i]);
        free(a);
        free(b);
    }
    lorac_tokenizer_free(tok);
}

/* tok_nfc_into against the reference NFC over Unicode 9.0's data, HuggingFace
 * tokenizers' (tests/reference/gen_nfc_golden.py; Python's own NFC on the
 * characters 9.0 had). */
static void check_nfc(void) {
    char *data = tl_read_source("tests/data/tokenizer/nfc-golden.json", NULL);
    cJSON *root = data ? cJSON_Parse(data) : NULL;
    free(data);
    CHECK_MSG(root != NULL, "tests/data/tokenizer/nfc-golden.json");
    int cases = 0, ok = 0;
    const cJSON *c;
    tok_buf_t b = {0};
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        const char *in = cJSON_GetArrayItem(c, 0)->valuestring, *want = cJSON_GetArrayItem(c, 1)->valuestring;
        b.n = 0;
        int rc = tok_nfc_into(&b, in, strlen(in), SIZE_MAX);
        cases++;
        if (rc == 0 && b.n == strlen(want) && memcmp(b.p, want, b.n) == 0) ok++;
        else if (cases - ok <= 10) {
            fprintf(stderr, "NFC differs for");
            for (const unsigned char *u = (const unsigned char *)in; *u; u++) fprintf(stderr, " %02x", *u);
            fprintf(stderr, ": got");
            for (size_t i = 0; i < b.n; i++) fprintf(stderr, " %02x", (unsigned char)b.p[i]);
            fprintf(stderr, "\n");
        }
    }
    printf("NFC: %d/%d cases as the reference's (Unicode %s, HuggingFace tokenizers')\n", ok, cases,
           cJSON_GetObjectItem(root, "unicode") ? cJSON_GetObjectItem(root, "unicode")->valuestring : "?");
    CHECK(cases > 5000 && ok == cases);
    /* appends; ASCII passes as it is; the limit holds for ASCII and for text NFC lengthens (U+0958 -> 2 code points) */
    b.n = 0;
    CHECK(tok_nfc_into(&b, "ab", 2, 10) == 0 && tok_nfc_into(&b, "e\xcc\x81", 3, 10) == 0 && b.n == 4 &&
          !memcmp(b.p, "ab\xc3\xa9", 4));
    b.n = 0;
    CHECK(tok_nfc_into(&b, "abc", 3, 2) == -2);
    b.n = 0;
    CHECK(tok_nfc_into(&b, "\xe0\xa5\x98", 3, 5) == -2); /* what it wrote before stopping is the caller's to drop */
    b.n = 0;
    CHECK(tok_nfc_into(&b, "\xe0\xa5\x98", 3, 6) == 0 && b.n == 6);
    /* long text goes in chunks cut before starters nothing composes with: a voiced kana after 5,000, and
     * 4,500 "e" + U+0301 (the golden's two long texts cross cuts in every context) */
    size_t big = 3 * 5000;
    char *kana = malloc(big + 1), *marks = malloc(3 * 4500 + 1);
    for (size_t i = 0; i < big; i += 3) memcpy(kana + i, "\xe3\x81\x8b", 3);   /* U+304B */
    memcpy(kana + big - 3, "\xe3\x82\x99", 3);                                   /* U+3099 voicing at the end */
    b.n = 0;
    CHECK(tok_nfc_into(&b, kana, big, SIZE_MAX) == 0 && b.n == big - 3 && !memcmp(b.p + b.n - 3, "\xe3\x81\x8c", 3));
    size_t m = 0; /* 4500 times "e" + U+0301, cut before each "e" past 4096 bytes */
    for (size_t i = 0; i < 4500; i++) { memcpy(marks + m, "e\xcc\x81", 3); m += 3; }
    b.n = 0;
    CHECK(tok_nfc_into(&b, marks, m, SIZE_MAX) == 0 && b.n == 2 * 4500);
    for (size_t i = 0; i + 2 <= b.n; i += 2) CHECK_MSG(!memcmp(b.p + i, "\xc3\xa9", 2), "e-acute at %zu", i);
    free(kana);
    free(marks);
    b.n = 0;
    CHECK(tok_nfc_into(&b, "", 0, 0) == 0 && b.n == 0);
    free(b.p);
    cJSON_Delete(root);
}

/* SmolLM2's tokenizer.json with "normalizer": {"type": "NFC"}, as Qwen2's
 * tokenizers have it (tokenizers.js's ids: golden-smollm2-nfc.json). */
static lorac_tokenizer_t *load_with_nfc(const char *rel) {
    char *text = tt_read(tt_fixture(rel), NULL);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    lorac_tokenizer_t *tok = NULL;
    if (root) {
        cJSON *nfc = cJSON_CreateObject();
        cJSON_AddStringToObject(nfc, "type", "NFC");
        cJSON_ReplaceItemInObjectCaseSensitive(root, "normalizer", nfc);
        char *json = cJSON_PrintUnformatted(root);
        CHECK(json && lorac_tokenizer_load_json_memory(json, strlen(json), "smollm2-nfc", &tok) == LORAC_STATUS_OK);
        free(json);
        cJSON_Delete(root);
    }
    CHECK(tok != NULL);
    return tok;
}

static lorac_tokenizer_t *load(const char *rel) {
    lorac_tokenizer_t *tok = NULL;
    double t0 = tt_now();
    lorac_status_t st = lorac_tokenizer_load_json(tt_fixture(rel), &tok);
    CHECK_MSG(st == LORAC_STATUS_OK, "load %s: %s", rel, lorac_error_message());
    printf("loaded %s in %.3f s\n", rel, tt_now() - t0);
    return tok;
}

int main(void) {
    lorac_tokenizer_t *gpt2 = load("tokenizers/gpt2/tokenizer.json");
    lorac_tokenizer_t *tl = load("tokenizers/tinyllama-1.1b-chat-v1.0/tokenizer.json");
    lorac_tokenizer_t *smol = load("tokenizers/smollm2-360m-instruct-ft/tokenizer.json");
    lorac_tokenizer_t *l3 = NULL;
    char *l3json = tt_build_llama3_json();
    CHECK(l3json != NULL);
    if (l3json) {
        double t0 = tt_now();
        lorac_status_t st = lorac_tokenizer_load_json_memory(l3json, strlen(l3json), "llama3.json", &l3);
        CHECK_MSG(st == LORAC_STATUS_OK, "llama3: %s", lorac_error_message());
        printf("loaded Llama 3 (128k vocab, 280k merges) in %.3f s\n", tt_now() - t0);
        free(l3json);
    }
    if (!gpt2 || !tl || !smol || !l3) return tl_finish("test_tokenizer");

    CHECK(lorac_tokenizer_vocab_size(gpt2) == 50257);
    CHECK(lorac_tokenizer_vocab_size(tl) == 32000);
    CHECK(lorac_tokenizer_vocab_size(smol) == 49153);
    CHECK(lorac_tokenizer_vocab_size(l3) == 128256);
    CHECK(lorac_tokenizer_bos_id(tl) == 1 && lorac_tokenizer_eos_id(tl) == 2);
    CHECK(lorac_tokenizer_bos_id(l3) == 128000 && lorac_tokenizer_eos_id(l3) == 128001);
    CHECK(lorac_tokenizer_eos_id(gpt2) == 50256);
    CHECK(lorac_tokenizer_strips_leading_space(tl) == 1 && lorac_tokenizer_strips_leading_space(gpt2) == 0);
    CHECK(lorac_tokenizer_token_id(smol, "<|im_start|>") == 1 && lorac_tokenizer_is_special(smol, 1));
    CHECK(lorac_tokenizer_token_id(smol, "<|PAD_TOKEN|>") == 49152);
    CHECK(lorac_tokenizer_token_id(gpt2, "no such token here") == -1);
    CHECK(lorac_tokenizer_token_str(tl, 1) && strcmp(lorac_tokenizer_token_str(tl, 1), "<s>") == 0);
    CHECK(lorac_tokenizer_token_str(tl, 32000) == NULL && !lorac_tokenizer_is_special(tl, 100));

    check_vectors(gpt2, "gpt-2");
    check_vectors(tl, "llama-spm");
    check_vectors(l3, "llama-bpe");

    check_golden(gpt2, "gpt2");
    check_golden(tl, "tinyllama");
    check_golden(smol, "smollm2");
    check_nfc();
    lorac_tokenizer_t *smol_nfc = load_with_nfc("tokenizers/smollm2-360m-instruct-ft/tokenizer.json");
    if (smol_nfc) {
        check_golden(smol_nfc, "smollm2-nfc");
        check_linear(smol_nfc, "smollm2-nfc");
        lorac_tokenizer_free(smol_nfc);
    }

    const char *stream_text = "Hello 🦙 wörld\n  日本 <0x41>";
    check_streaming(gpt2, "gpt2", stream_text);
    check_streaming(tl, "tinyllama", stream_text);
    check_streaming(smol, "smollm2", stream_text);
    check_streaming(l3, "llama3", stream_text);

    check_metaspace_spelling(tl);
    check_invalid_input(gpt2);
    check_invalid_input(tl);

    check_linear(gpt2, "gpt2");
    check_linear(tl, "tinyllama");
    check_linear(smol, "smollm2");
    check_linear(l3, "llama3");

    lorac_tokenizer_free(gpt2);
    lorac_tokenizer_free(tl);
    lorac_tokenizer_free(smol);
    lorac_tokenizer_free(l3);
    return tl_finish("test_tokenizer");
}
