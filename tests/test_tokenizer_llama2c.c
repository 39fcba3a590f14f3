/* llama2.c tokenizer.bin: lorac's encoder against a direct port of run.c's
 * encode() (naive O(n^2) greedy merge, written independently here), on
 * TinyStories text, for tok512.bin (vocab 512) and tokenizer.bin (32000);
 * then the tokenizer.json written by lorac_tokenizer_save_llama2c_as_json
 * must give the same ids when loaded back. */
#include <cjson/cJSON.h>
#include <unistd.h>

#include "lorac/tokenizer.h"
#include "test_tokenizer_util.h"

/* ---- reference: run.c's tokenizer, kept close to the original ---------- */

typedef struct { char *str; int id; } ref_index_t;
typedef struct {
    char **vocab;
    float *scores;
    ref_index_t *sorted;
    int vocab_size, max_token_length;
} ref_tok_t;

static int ref_cmp(const void *a, const void *b) {
    return strcmp(((const ref_index_t *)a)->str, ((const ref_index_t *)b)->str);
}

static int ref_load(ref_tok_t *t, const char *path, int vocab_size) {
    size_t len;
    char *data = tt_read(path, &len);
    if (!data) return -1;
    t->vocab_size = vocab_size;
    t->vocab = calloc((size_t)vocab_size, sizeof *t->vocab);
    t->scores = calloc((size_t)vocab_size, sizeof *t->scores);
    t->sorted = calloc((size_t)vocab_size, sizeof *t->sorted);
    size_t off = 0;
    memcpy(&t->max_token_length, data, 4);
    off = 4;
    for (int i = 0; i < vocab_size; i++) {
        int n;
        memcpy(&t->scores[i], data + off, 4);
        memcpy(&n, data + off + 4, 4);
        off += 8;
        t->vocab[i] = malloc((size_t)n + 1);
        memcpy(t->vocab[i], data + off, (size_t)n);
        t->vocab[i][n] = '\0';
        off += (size_t)n;
        t->sorted[i].str = t->vocab[i];
        t->sorted[i].id = i;
    }
    free(data);
    qsort(t->sorted, (size_t)vocab_size, sizeof *t->sorted, ref_cmp);
    return 0;
}

static void ref_free(ref_tok_t *t) {
    for (int i = 0; i < t->vocab_size; i++) free(t->vocab[i]);
    free(t->vocab); free(t->scores); free(t->sorted);
}

static int ref_lookup(const char *str, const ref_tok_t *t) {
    ref_index_t key = {(char *)str, 0};
    const ref_index_t *res = bsearch(&key, t->sorted, (size_t)t->vocab_size, sizeof *t->sorted, ref_cmp);
    return res ? res->id : -1;
}

/* run.c encode(text, bos=1, eos=0) */
static int ref_encode(const ref_tok_t *t, const char *text, int *tokens) {
    char *buf = malloc((size_t)t->max_token_length * 2 + 3);
    size_t len = 0;
    int n = 0;
    tokens[n++] = 1;
    if (text[0] != '\0') tokens[n++] = ref_lookup(" ", t);
    for (const char *c = text; *c != '\0'; c++) {
        if ((*c & 0xC0) != 0x80) len = 0;
        buf[len++] = *c;
        buf[len] = '\0';
        if ((*(c + 1) & 0xC0) == 0x80 && len < 4) continue;
        int id = ref_lookup(buf, t);
        if (id != -1) tokens[n++] = id;
        else for (size_t i = 0; i < len; i++) tokens[n++] = (unsigned char)buf[i] + 3;
        len = 0;
    }
    for (;;) {
        float best_score = -1e10f;
        int best_id = -1, best_idx = -1;
        for (int i = 0; i < n - 1; i++) {
            snprintf(buf, (size_t)t->max_token_length * 2 + 3, "%s%s", t->vocab[tokens[i]], t->vocab[tokens[i + 1]]);
            int id = ref_lookup(buf, t);
            if (id != -1 && t->scores[id] > best_score) { best_score = t->scores[id]; best_id = id; best_idx = i; }
        }
        if (best_idx == -1) break;
        tokens[best_idx] = best_id;
        for (int i = best_idx + 1; i < n - 1; i++) tokens[i] = tokens[i + 1];
        n--;
    }
    free(buf);
    return n;
}

/* ---- the comparison ----------------------------------------------------- */

static int same_ids(const int32_t *a, size_t na, const int *b, int nb) {
    if ((size_t)nb != na) return 0;
    for (int i = 0; i < nb; i++) if (a[i] != b[i]) return 0;
    return 1;
}

static void check_file(const char *rel, int vocab_size, int max_lines) {
    ref_tok_t ref = {0};
    CHECK(ref_load(&ref, tt_fixture(rel), vocab_size) == 0);
    lorac_tokenizer_t *tok = NULL, *json_tok = NULL;
    lorac_status_t st = lorac_tokenizer_load_llama2c(tt_fixture(rel), vocab_size, &tok);
    CHECK_MSG(st == LORAC_STATUS_OK, "%s: %s", rel, lorac_error_message());
    if (st) { ref_free(&ref); return; }
    CHECK(lorac_tokenizer_vocab_size(tok) == vocab_size);
    CHECK(lorac_tokenizer_bos_id(tok) == 1 && lorac_tokenizer_eos_id(tok) == 2);
    CHECK(lorac_tokenizer_strips_leading_space(tok) == 1);

    char path[4096];
    snprintf(path, sizeof path, "%s/lorac-tok-%d-%d.json", tl_tmpdir(), vocab_size, (int)getpid());
    st = lorac_tokenizer_save_llama2c_as_json(tok, path);
    CHECK_MSG(st == LORAC_STATUS_OK, "save: %s", lorac_error_message());
    st = lorac_tokenizer_load_json(path, &json_tok);
    CHECK_MSG(st == LORAC_STATUS_OK, "load saved json: %s", lorac_error_message());
    unlink(path);
    if (!json_tok) { lorac_tokenizer_free(tok); ref_free(&ref); return; }
    CHECK(lorac_tokenizer_vocab_size(json_tok) == vocab_size);

    size_t len;
    char *text = tt_read(tt_fixture("datasets/tinystories/tinystories_train_head.txt"), &len);
    CHECK(text != NULL);
    int lines = 0, ok_ref = 0, ok_json = 0, ok_plain = 0, ok_dec = 0;
    int *want = malloc((len + 8) * sizeof *want);
    for (char *line = text, *end; text && line < text + len && lines < max_lines; line = end + 1) {
        end = strchr(line, '\n');
        if (!end) end = text + len;
        *end = '\0';
        if (!*line) continue;
        lines++;
        int nw = ref_encode(&ref, line, want);
        int32_t *ids = NULL, *jids = NULL, *pids = NULL;
        size_t n = 0, jn = 0, pn = 0;
        CHECK(lorac_tokenizer_encode(tok, line, strlen(line), true, &ids, &n) == LORAC_STATUS_OK);
        CHECK(lorac_tokenizer_encode(json_tok, line, strlen(line), true, &jids, &jn) == LORAC_STATUS_OK);
        CHECK(lorac_tokenizer_encode(tok, line, strlen(line), false, &pids, &pn) == LORAC_STATUS_OK);
        if (same_ids(ids, n, want, nw)) ok_ref++;
        else if (ok_ref + 3 > lines) { fprintf(stderr, "%s: line %d differs from run.c\n", rel, lines); tt_print_ids("got", ids, n); }
        if (jn == n && memcmp(jids, ids, n * sizeof *ids) == 0) ok_json++;
        if (pn + 1 == n && memcmp(pids, ids + 1, pn * sizeof *ids) == 0) ok_plain++;
        char *dec = NULL;
        CHECK(lorac_tokenizer_decode(tok, ids, n, true, &dec, NULL) == LORAC_STATUS_OK);
        if (dec && strcmp(dec, line) == 0) ok_dec++;
        free(dec); free(ids); free(jids); free(pids);
    }
    printf("%s: %d TinyStories lines: run.c %d/%d, saved tokenizer.json %d/%d, no-BOS %d/%d, decode %d/%d\n", rel, lines,
           ok_ref, lines, ok_json, lines, ok_plain, lines, ok_dec, lines);
    CHECK(lines > 0 && ok_ref == lines && ok_json == lines && ok_plain == lines && ok_dec == lines);

    /* a few strings beyond TinyStories: bytes fallback, spaces, empty */
    const char *extra[] = {"", " ", "  leading", "tabs\tand\nnewlines\n", "日本語 🦙 ünïcödé", "a  b   c"};
    for (size_t i = 0; i < sizeof extra / sizeof *extra; i++) {
        int nw = ref_encode(&ref, extra[i], want);
        int32_t *ids, *jids;
        size_t n, jn;
        CHECK(lorac_tokenizer_encode(tok, extra[i], strlen(extra[i]), true, &ids, &n) == LORAC_STATUS_OK);
        CHECK(lorac_tokenizer_encode(json_tok, extra[i], strlen(extra[i]), true, &jids, &jn) == LORAC_STATUS_OK);
        CHECK_MSG(same_ids(ids, n, want, nw), "%s: '%s' differs from run.c", rel, extra[i]);
        CHECK_MSG(jn == n && memcmp(jids, ids, n * sizeof *ids) == 0, "%s: '%s' differs in saved json", rel, extra[i]);
        char *dec;
        CHECK(lorac_tokenizer_decode(tok, ids, n, true, &dec, NULL) == LORAC_STATUS_OK);
        CHECK_MSG(strcmp(dec, extra[i]) == 0, "%s: decode '%s' -> '%s'", rel, extra[i], dec);
        free(dec); free(ids); free(jids);
    }
    /* per-token bytes: byte tokens are raw bytes, pieces have spaces */
    char b[16];
    CHECK(lorac_tokenizer_token_bytes(tok, 3 + 0x41, b, sizeof b) == 1 && b[0] == 'A');
    CHECK(lorac_tokenizer_token_bytes(tok, 3 + 0xe2, b, sizeof b) == 1 && (unsigned char)b[0] == 0xe2);
    int32_t sp = lorac_tokenizer_token_id(tok, "\xe2\x96\x81");
    CHECK(sp >= 0 && lorac_tokenizer_token_bytes(tok, sp, b, sizeof b) == 1 && b[0] == ' ');

    /* 100k repeated characters: guard against quadratic merging (bound is
     * generous; linear code needs well under a second) */
    const char *units[] = {"a", " ", "\xf0\x9f\xa6\x99"};
    for (int u = 0; u < 3; u++) {
        size_t ul = strlen(units[u]), big_len = ul * 100000;
        char *big = malloc(big_len + 1);
        for (size_t i = 0; i < 100000; i++) memcpy(big + i * ul, units[u], ul);
        big[big_len] = '\0';
        int32_t *ids;
        size_t n;
        double t0 = tt_now();
        CHECK(lorac_tokenizer_encode(tok, big, big_len, false, &ids, &n) == LORAC_STATUS_OK);
        double dt = tt_now() - t0;
        CHECK_MSG(dt < 5.0, "%s: 100k x unit %d took %.2f s", rel, u, dt);
        printf("%s: 100k x unit %d -> %zu ids in %.3f s\n", rel, u, n, dt);
        free(ids);
        free(big);
    }
    free(want);
    free(text);
    lorac_tokenizer_free(json_tok);
    lorac_tokenizer_free(tok);
    ref_free(&ref);
}

int main(void) {
    check_file("llama2c/tok512.bin", 512, 400);
    check_file("llama2c/tokenizer.bin", 32000, 150);
    lorac_tokenizer_t *tok;
    CHECK(lorac_tokenizer_save_llama2c_as_json(NULL, "/tmp/x.json") == LORAC_STATUS_INVALID_ARG);
    CHECK(lorac_tokenizer_load_json(tt_fixture("tokenizers/gpt2/tokenizer.json"), &tok) == LORAC_STATUS_OK);
    CHECK(lorac_tokenizer_save_llama2c_as_json(tok, "/tmp/x.json") == LORAC_STATUS_INVALID_ARG);
    lorac_tokenizer_free(tok);
    return tl_finish("test_tokenizer_llama2c");
}
