/* GGUF reader and writer (src/formats/gguf.c).
 *
 * The reference is the format itself, written out byte by byte here from
 * the specification (ggml's docs/gguf.md and gguf.cpp): the writer must
 * produce exactly those bytes, and the reader must refuse each rule broken
 * once, every truncation, and read the real vocab-only GGUF files that
 * llama.cpp's converter wrote (fixtures/tokenizers/test-vectors/). */
#include "lorac/gguf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testlib.h"

/* ---- a GGUF file written out by hand ------------------------------------------- */

typedef struct {
    uint8_t p[4096];
    size_t n;
} buf_t;

static void b_u32(buf_t *b, uint32_t v) { for (int i = 0; i < 4; i++) b->p[b->n++] = (uint8_t)(v >> (8 * i)); }
static void b_u64(buf_t *b, uint64_t v) { for (int i = 0; i < 8; i++) b->p[b->n++] = (uint8_t)(v >> (8 * i)); }
static void b_str(buf_t *b, const char *s) {
    size_t len = strlen(s);
    b_u64(b, len);
    memcpy(b->p + b->n, s, len);
    b->n += len;
}
static void b_pad(buf_t *b, size_t align) { while (b->n % align) b->p[b->n++] = 0; }

/* One way of breaking the file; V_OK leaves it valid. */
enum {
    V_OK, V_MAGIC, V_VERSION1, V_VERSION4, V_BIG_ENDIAN, V_HUGE_KV_COUNT, V_VALUE_TYPE, V_NESTED, V_KEY_NUL,
    V_DUP_KEY, V_ALIGN_TYPE, V_ALIGN_NPOT, V_STRING_LEN, V_NAME_LONG, V_DUP_TENSOR, V_NDIMS, V_NEG_DIM,
    V_OVERFLOW, V_TYPE_UNKNOWN, V_TYPE_REMOVED, V_BLOCK, V_OFFSET_GAP, V_OFFSET_FIRST, V_DATA_SHORT, V_COUNT
};
static const char *const expected[V_COUNT] = {
    [V_MAGIC] = "not a GGUF file", [V_VERSION1] = "version 1", [V_VERSION4] = "GGUF version 4",
    [V_BIG_ENDIAN] = "big-endian", [V_HUGE_KV_COUNT] = "cannot fit", [V_VALUE_TYPE] = "unknown value type 13",
    [V_NESTED] = "nested arrays", [V_KEY_NUL] = "NUL byte", [V_DUP_KEY] = "duplicate metadata key 'general.alignment'",
    [V_ALIGN_TYPE] = "general.alignment is INT32", [V_ALIGN_NPOT] = "not a power of two",
    [V_STRING_LEN] = "truncated", [V_NAME_LONG] = "too long", [V_DUP_TENSOR] = "duplicate tensor 't0'",
    [V_NDIMS] = "5 dims", [V_NEG_DIM] = "negative", [V_OVERFLOW] = "overflows",
    [V_TYPE_UNKNOWN] = "ggml type 99", [V_TYPE_REMOVED] = "ggml type 4", [V_BLOCK] = "not a multiple of Q4_0's block",
    [V_OFFSET_GAP] = "offset 64, expected 32", [V_OFFSET_FIRST] = "offset 32, expected 0",
    [V_DATA_SHORT] = "data section",
};

static const float t0_data[3] = {1.5f, -2.0f, 0.25f};
static const uint16_t t1_data[4] = {0x3c00, 0x4000, 0xc000, 0x0000}; /* f16 1, 2, -2, 0 */

/* The file the writer test also writes: 3 keys, tensors t0 (F32, [3]) and
 * t1 (F16, shape {2, 2}). */
static size_t build(buf_t *b, int v) {
    memset(b, 0, sizeof *b);
    b_u32(b, v == V_MAGIC ? 0x46554748u : 0x46554747u); /* "GGUF" */
    b_u32(b, v == V_VERSION1 ? 1 : v == V_VERSION4 ? 4 : v == V_BIG_ENDIAN ? 0x03000000u : 3);
    b_u64(b, 2);                                        /* tensors */
    b_u64(b, v == V_HUGE_KV_COUNT ? (1ull << 62) : 3);  /* keys */
    b_str(b, v == V_DUP_KEY ? "general.alignment" : v == V_KEY_NUL ? "general.architecturX" : "general.architecture");
    if (v == V_KEY_NUL) b->p[b->n - 1] = 0;
    b_u32(b, v == V_VALUE_TYPE ? 13 : 8);
    if (v == V_STRING_LEN) {
        b_u64(b, 5000); /* a 5000-byte value in a file that ends here */
        return b->n;
    }
    b_str(b, "llama");
    b_str(b, "general.alignment");
    b_u32(b, v == V_ALIGN_TYPE ? 5 : 4);
    b_u32(b, v == V_ALIGN_NPOT ? 24 : 32);
    b_str(b, "lorac.test.array");
    b_u32(b, 9);
    b_u32(b, v == V_NESTED ? 9 : 5); /* array of INT32 */
    b_u64(b, 3);
    for (int i = 1; i <= 3; i++) b_u32(b, (uint32_t)i);

    b_str(b, v == V_NAME_LONG ? "t0_a_tensor_name_that_is_far_too_long_for_ggml_which_allows_63_bytes" : "t0");
    b_u32(b, v == V_NDIMS ? 5 : 1);
    b_u64(b, v == V_NEG_DIM ? (uint64_t)-3 : v == V_BLOCK ? 32 + 3 : 3);
    if (v == V_NDIMS) for (int i = 0; i < 4; i++) b_u64(b, 1);
    b_u32(b, v == V_TYPE_UNKNOWN ? 99 : v == V_TYPE_REMOVED ? 4 : v == V_BLOCK ? 2 : 0);
    b_u64(b, v == V_OFFSET_FIRST ? 32 : 0);
    b_str(b, v == V_DUP_TENSOR ? "t0" : "t1");
    b_u32(b, 2);
    b_u64(b, v == V_OVERFLOW ? (1ull << 62) : 2);
    b_u64(b, v == V_OVERFLOW ? 4 : 2);
    b_u32(b, 1);
    b_u64(b, v == V_OFFSET_GAP ? 64 : 32);
    b_pad(b, 32);
    memcpy(b->p + b->n, t0_data, sizeof t0_data);
    b->n += sizeof t0_data;
    b_pad(b, 32);
    memcpy(b->p + b->n, t1_data, sizeof t1_data);
    b->n += sizeof t1_data;
    b_pad(b, 32);
    if (v == V_DATA_SHORT) b->n -= 25; /* the last tensor's data cut into */
    return b->n;
}

static void test_reader_valid(void) {
    buf_t b;
    size_t n = build(&b, V_OK);
    lorac_gguf_t *g = NULL;
    lorac_status_t s = lorac_gguf_open_memory(b.p, n, "hand.gguf", &g);
    CHECK_MSG(s == LORAC_STATUS_OK, "%s", lorac_error_message());
    if (s) return;
    CHECK(lorac_gguf_version(g) == 3);
    CHECK(lorac_gguf_n_kv(g) == 3 && lorac_gguf_n_tensors(g) == 2);
    CHECK(lorac_gguf_data_offset(g) % 32 == 0);
    int64_t k = lorac_gguf_find_key(g, "general.architecture");
    const char *str;
    size_t len;
    CHECK(k == 0 && lorac_gguf_get_string(g, k, &str, &len) == 0 && len == 5 && !memcmp(str, "llama", 5));
    int64_t v;
    CHECK(lorac_gguf_get_int(g, k, &v) == LORAC_STATUS_FORMAT); /* a string is no integer */
    k = lorac_gguf_find_key(g, "lorac.test.array");
    CHECK(lorac_gguf_array_type(g, k) == LORAC_GGUF_INT32 && lorac_gguf_array_count(g, k) == 3);
    CHECK(lorac_gguf_array_int(g, k, 2, &v) == 0 && v == 3);
    CHECK(lorac_gguf_array_int(g, k, 3, &v) != 0); /* past the end */
    CHECK(lorac_gguf_find_key(g, "general.name") == -1);
    const lorac_gguf_tensor_t *t0 = lorac_gguf_find_tensor(g, "t0"), *t1 = lorac_gguf_find_tensor(g, "t1");
    CHECK(t0 && t0->type == LORAC_GGML_TYPE_F32 && t0->n_dims == 1 && t0->shape[0] == 3 && t0->nbytes == 12);
    CHECK(t0 && !memcmp(t0->data, t0_data, sizeof t0_data));
    CHECK(t1 && t1->type == LORAC_GGML_TYPE_F16 && t1->n_dims == 2 && t1->shape[0] == 2 && t1->shape[1] == 2);
    CHECK(t1 && !memcmp(t1->data, t1_data, sizeof t1_data));
    CHECK(lorac_gguf_find_tensor(g, "t") == NULL && lorac_gguf_find_tensor(g, "t00") == NULL);
    lorac_gguf_free(g);
}

static void test_reader_malformed(void) {
    for (int v = V_OK + 1; v < V_COUNT; v++) {
        buf_t b;
        size_t n = build(&b, v);
        uint8_t *copy = malloc(n); /* exact size, so ASan sees any overread */
        memcpy(copy, b.p, n);
        lorac_gguf_t *g = NULL;
        lorac_status_t s = lorac_gguf_open_memory(copy, n, "bad.gguf", &g);
        const char *msg = lorac_error_message();
        CHECK_MSG(s != LORAC_STATUS_OK && g == NULL && strstr(msg, "bad.gguf") && strstr(msg, expected[v]),
                  "variant %d: status %d, message '%s', expected '%s'", v, (int)s, msg, expected[v]);
        lorac_gguf_free(g);
        free(copy);
    }
    /* every truncation of the valid file */
    buf_t b;
    size_t n = build(&b, V_OK), bad = 0;
    for (size_t len = 0; len < n; len++) {
        uint8_t *copy = malloc(len ? len : 1);
        memcpy(copy, b.p, len);
        lorac_gguf_t *g = NULL;
        lorac_status_t s = lorac_gguf_open_memory(copy, len, "cut.gguf", &g);
        /* even the final padding: ggml reads the padded size */
        if (s == LORAC_STATUS_OK || !strstr(lorac_error_message(), "cut.gguf")) {
            bad++;
            fprintf(stderr, "truncation to %zu of %zu bytes: status %d\n", len, n, (int)s);
        }
        lorac_gguf_free(g);
        free(copy);
    }
    CHECK(bad == 0);
}

/* The writer, given the same content, writes the same bytes. */
static lorac_status_t fill_t1(void *user, void *dst, uint64_t nbytes) {
    (void)user;
    if (nbytes != sizeof t1_data) return LORAC_STATUS_INVALID_ARG;
    memcpy(dst, t1_data, sizeof t1_data);
    return LORAC_STATUS_OK;
}

static void test_writer(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s/test_gguf_%ld.gguf", tl_tmpdir(), (long)getpid());
    lorac_gguf_writer_t *w = lorac_gguf_writer_new();
    const int32_t arr[3] = {1, 2, 3};
    const int64_t s0[1] = {3}, s1[2] = {2, 2};
    CHECK(lorac_gguf_set_string(w, "general.architecture", "llama") == 0);
    CHECK(lorac_gguf_set_u32(w, "general.alignment", 32) == 0);
    CHECK(lorac_gguf_set_array_i32(w, "lorac.test.array", arr, 3) == 0);
    CHECK(lorac_gguf_set_u32(w, "general.alignment", 32) == LORAC_STATUS_INVALID_ARG); /* twice */
    CHECK(lorac_gguf_add_tensor(w, "t0", LORAC_GGML_TYPE_F32, 1, s0, t0_data, NULL, NULL) == 0);
    CHECK(lorac_gguf_add_tensor(w, "t1", LORAC_GGML_TYPE_F16, 2, s1, NULL, fill_t1, NULL) == 0);
    CHECK(lorac_gguf_add_tensor(w, "t1", LORAC_GGML_TYPE_F16, 2, s1, t1_data, NULL, NULL) == LORAC_STATUS_INVALID_ARG);
    CHECK(lorac_gguf_add_tensor(w, "q", 2, 2, s1, t1_data, NULL, NULL) == LORAC_STATUS_INVALID_ARG); /* Q4_0 */
    const int64_t q_rows[2] = {1, 40};                                                               /* not whole blocks */
    CHECK(lorac_gguf_add_tensor(w, "q8", LORAC_GGML_TYPE_Q8_0, 2, q_rows, t1_data, NULL, NULL) == LORAC_STATUS_INVALID_ARG);
    CHECK(lorac_gguf_write(w, path) == 0);
    lorac_gguf_writer_free(w);

    buf_t want;
    size_t n = build(&want, V_OK);
    FILE *f = fopen(path, "rb");
    uint8_t got[4096];
    size_t got_n = f ? fread(got, 1, sizeof got, f) : 0;
    if (f) fclose(f);
    CHECK_MSG(got_n == n && !memcmp(got, want.p, n), "writer wrote %zu bytes, the hand-built file has %zu", got_n, n);

    /* and through the file reader, with every value type the writer has */
    w = lorac_gguf_writer_new();
    const char *strs[3] = {"a", "", "\xc4\xa0the"};
    const float fl[2] = {0.5f, -1e30f};
    CHECK(lorac_gguf_set_array_string(w, "s", strs, NULL, 3) == 0);
    CHECK(lorac_gguf_set_array_f32(w, "f", fl, 2) == 0);
    CHECK(lorac_gguf_set_f32(w, "x", 1e-5f) == 0);
    CHECK(lorac_gguf_set_i32(w, "i", -7) == 0);
    CHECK(lorac_gguf_set_bool(w, "b", true) == 0);
    uint8_t q8[2 * 34];
    for (int i = 0; i < (int)sizeof q8; i++) q8[i] = (uint8_t)(i * 7);
    const int64_t q8_shape[2] = {2, 32};
    CHECK(lorac_gguf_add_tensor(w, "q8", LORAC_GGML_TYPE_Q8_0, 2, q8_shape, q8, NULL, NULL) == 0);
    CHECK(lorac_gguf_write(w, path) == 0);
    lorac_gguf_writer_free(w);
    lorac_gguf_t *g = NULL;
    CHECK(lorac_gguf_open(path, &g) == 0);
    if (g) {
        int64_t k = lorac_gguf_find_key(g, "s"), v;
        const char *str;
        size_t len;
        double d;
        CHECK(lorac_gguf_array_count(g, k) == 3 && lorac_gguf_array_string(g, k, 2, &str, &len) == 0 && len == 5 &&
              !memcmp(str, "\xc4\xa0the", 5));
        CHECK(lorac_gguf_array_string(g, k, 1, &str, &len) == 0 && len == 0);
        k = lorac_gguf_find_key(g, "f");
        CHECK(lorac_gguf_array_float(g, k, 1, &d) == 0 && d == (double)-1e30f);
        CHECK(lorac_gguf_get_float(g, lorac_gguf_find_key(g, "x"), &d) == 0 && d == (double)1e-5f);
        CHECK(lorac_gguf_get_int(g, lorac_gguf_find_key(g, "i"), &v) == 0 && v == -7);
        uint64_t u;
        CHECK(lorac_gguf_get_uint(g, lorac_gguf_find_key(g, "i"), &u) == LORAC_STATUS_FORMAT); /* negative */
        CHECK(lorac_gguf_get_int(g, lorac_gguf_find_key(g, "b"), &v) == 0 && v == 1);
        const lorac_gguf_tensor_t *t = lorac_gguf_find_tensor(g, "q8");
        CHECK(lorac_gguf_n_tensors(g) == 1 && t && t->type == LORAC_GGML_TYPE_Q8_0 && t->nbytes == sizeof q8 &&
              t->shape[0] == 2 && t->shape[1] == 32 && !memcmp(t->data, q8, sizeof q8));
    }
    lorac_gguf_free(g);
    remove(path);
}

/* llama.cpp's own vocab-only files: what its gguf-py writer produced. */
static void test_llama_cpp_files(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizers/test-vectors/ggml-vocab-llama-spm.gguf", tl_fixtures());
    lorac_gguf_t *g = NULL;
    lorac_status_t s = lorac_gguf_open(path, &g);
    CHECK_MSG(s == 0, "%s", lorac_error_message());
    if (!s) {
        int64_t k = lorac_gguf_find_key(g, "tokenizer.ggml.tokens"), v;
        const char *str;
        size_t len;
        double d;
        CHECK(lorac_gguf_array_type(g, k) == LORAC_GGUF_STRING && lorac_gguf_array_count(g, k) == 32000);
        CHECK(lorac_gguf_array_string(g, k, 1, &str, &len) == 0 && len == 3 && !memcmp(str, "<s>", 3));
        CHECK(lorac_gguf_array_string(g, k, 3, &str, &len) == 0 && len == 6 && !memcmp(str, "<0x00>", 6));
        k = lorac_gguf_find_key(g, "tokenizer.ggml.scores");
        CHECK(lorac_gguf_array_float(g, k, 31999, &d) == 0 && d == -31740.0);
        CHECK(lorac_gguf_get_int(g, lorac_gguf_find_key(g, "llama.block_count"), &v) == 0 && v == 32);
        CHECK(lorac_gguf_get_int(g, lorac_gguf_find_key(g, "tokenizer.ggml.add_bos_token"), &v) == 0 && v == 1);
        CHECK(lorac_gguf_get_float(g, lorac_gguf_find_key(g, "llama.attention.layer_norm_rms_epsilon"), &d) == 0 &&
              d == (double)1e-5f);
        CHECK(lorac_gguf_n_tensors(g) == 0);
        lorac_gguf_free(g);
    }
    snprintf(path, sizeof path, "%s/tokenizers/test-vectors/ggml-vocab-gpt-2.gguf", tl_fixtures());
    s = lorac_gguf_open(path, &g);
    CHECK_MSG(s == 0, "%s", lorac_error_message());
    if (!s) {
        int64_t k = lorac_gguf_find_key(g, "tokenizer.ggml.merges");
        const char *str;
        size_t len;
        CHECK(lorac_gguf_array_count(g, k) == 50000);
        CHECK(lorac_gguf_array_string(g, k, 0, &str, &len) == 0 && len == 4 && !memcmp(str, "\xc4\xa0 t", 4));
        CHECK(lorac_gguf_get_string(g, lorac_gguf_find_key(g, "tokenizer.ggml.pre"), &str, &len) == 0 && len == 5 &&
              !memcmp(str, "gpt-2", 5));
        lorac_gguf_free(g);
    }
    s = lorac_gguf_open("/nonexistent/x.gguf", &g);
    CHECK(s == LORAC_STATUS_IO && strstr(lorac_error_message(), "/nonexistent/x.gguf"));
}

static void test_type_tables(void) {
    CHECK(!strcmp(lorac_ggml_type_name(12), "Q4_K") && lorac_ggml_block_size(12) == 256 && lorac_ggml_type_size(12) == 144);
    CHECK(lorac_ggml_type_name(4) == NULL && lorac_ggml_block_size(4) == 0);
    CHECK(!strcmp(lorac_ggml_type_name(LORAC_GGML_TYPE_BF16), "BF16"));
    CHECK(lorac_ggml_type_name(1000) == NULL);
    CHECK(!strcmp(lorac_gguf_type_name(LORAC_GGUF_FLOAT64), "FLOAT64") && lorac_gguf_type_name(LORAC_GGUF_TYPE_COUNT) == NULL);
}

int main(void) {
    test_reader_valid();
    test_reader_malformed();
    test_writer();
    test_llama_cpp_files();
    test_type_tables();
    return tl_finish("test_gguf");
}
