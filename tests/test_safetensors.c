/* safetensors reader, writer and sharded weights: a round trip through the
 * writer, a table of malformed headers that must each fail with a clear
 * message, every truncation of a valid file, and sharded directories. */
#define _POSIX_C_SOURCE 200809L
#include "lorac/safetensors.h"
#include "testlib.h"

#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[512];

static char *tmp_path(const char *name) {
    static char buf[4][1024];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, sizeof buf[0], "%s/%s", g_dir, name);
    return p;
}

/* 8-byte little-endian length, then the header, then `data_len` bytes 0..255. */
static uint8_t *make_file(uint64_t len_field, const char *header, size_t header_len, size_t data_len,
                          size_t *out_len) {
    size_t n = 8 + header_len + data_len;
    uint8_t *p = malloc(n ? n : 1);
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(len_field >> (8 * i));
    memcpy(p + 8, header, header_len);
    for (size_t i = 0; i < data_len; i++) p[8 + header_len + i] = (uint8_t)i;
    *out_len = n;
    return p;
}

static int contains(const char *s, const char *sub) { return strstr(s, sub) != NULL; }

/* ---- writer round trip ----------------------------------------------------------- */

static float g_f32[6] = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, -7.0f};
static uint16_t g_bf16[4], g_f16[3];

static lorac_status_t write_sample(const char *path) {
    for (int i = 0; i < 4; i++) g_bf16[i] = lorac_f32_to_bf16((float)i - 1.5f);
    for (int i = 0; i < 3; i++) g_f16[i] = lorac_f32_to_f16((float)i * 0.25f);
    lorac_tensor_write_t t[3] = {
        {.name = "model.embed.weight", .dtype = LORAC_DTYPE_F32, .n_dims = 2, .shape = {2, 3}, .data = g_f32},
        {.name = "odd \"name\"\\\n", .dtype = LORAC_DTYPE_BF16, .n_dims = 1, .shape = {4}, .data = g_bf16},
        {.name = "scale", .dtype = LORAC_DTYPE_F16, .n_dims = 3, .shape = {1, 3, 1}, .data = g_f16},
    };
    const char *keys[2] = {"format", "note"};
    const char *vals[2] = {"pt", "h\u00e9llo \"w\""};
    return lorac_safetensors_write(path, t, 3, keys, vals, 2);
}

static void test_round_trip(void) {
    const char *path = tmp_path("sample.safetensors");
    lorac_status_t s = write_sample(path);
    CHECK_MSG(s == LORAC_STATUS_OK, "%s", lorac_error_message());
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    CHECK(access(tmp, F_OK) != 0); /* the temporary was renamed away */

    lorac_safetensors_t *st = NULL;
    s = lorac_safetensors_open(path, &st);
    CHECK_MSG(s == LORAC_STATUS_OK, "%s", lorac_error_message());
    if (!st) return;
    CHECK(lorac_safetensors_count(st) == 3);
    const lorac_tensor_view_t *a = lorac_safetensors_find(st, "model.embed.weight");
    const lorac_tensor_view_t *b = lorac_safetensors_find(st, "odd \"name\"\\\n");
    const lorac_tensor_view_t *c = lorac_safetensors_find(st, "scale");
    CHECK(a && b && c);
    CHECK(lorac_safetensors_find(st, "nope") == NULL);
    CHECK(lorac_safetensors_get(st, 3) == NULL && lorac_safetensors_get(st, -1) == NULL);
    if (a && b && c) {
        CHECK(lorac_safetensors_get(st, 0) == a && lorac_safetensors_get(st, 1) == b);
        CHECK(a->dtype == LORAC_DTYPE_F32 && a->n_dims == 2 && a->shape[0] == 2 && a->shape[1] == 3);
        CHECK(a->n_elements == 6 && a->nbytes == 24 && memcmp(a->data, g_f32, 24) == 0);
        CHECK(b->dtype == LORAC_DTYPE_BF16 && b->n_dims == 1 && b->n_elements == 4 && b->nbytes == 8);
        CHECK(memcmp(b->data, g_bf16, 8) == 0);
        CHECK(c->dtype == LORAC_DTYPE_F16 && c->n_dims == 3 && c->shape[1] == 3 && c->nbytes == 6);
        CHECK(memcmp(c->data, g_f16, 6) == 0);
        CHECK((uintptr_t)a->data % LORAC_WEIGHT_ALIGN == 0); /* header padding aligns data to a cache line */
    }
    CHECK(lorac_safetensors_metadata_count(st) == 2);
    CHECK(lorac_safetensors_metadata_key(st, 1) && strcmp(lorac_safetensors_metadata_key(st, 1), "note") == 0);
    const char *note = lorac_safetensors_metadata_get(st, "note");
    CHECK(note && strcmp(note, "h\u00e9llo \"w\"") == 0);
    CHECK(lorac_safetensors_metadata_get(st, "format") && !strcmp(lorac_safetensors_metadata_get(st, "format"), "pt"));
    CHECK(lorac_safetensors_metadata_get(st, "missing") == NULL);
    lorac_safetensors_free(st);

    /* padding and determinism */
    char *bytes1 = NULL, *bytes2 = NULL;
    size_t n1 = 0, n2 = 0;
    CHECK(lorac_file_read(path, 1 << 20, &bytes1, &n1) == LORAC_STATUS_OK);
    CHECK(write_sample(tmp_path("sample2.safetensors")) == LORAC_STATUS_OK);
    CHECK(lorac_file_read(tmp_path("sample2.safetensors"), 1 << 20, &bytes2, &n2) == LORAC_STATUS_OK);
    if (bytes1 && bytes2) {
        uint64_t hlen = 0;
        for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (uint8_t)bytes1[i];
        CHECK_MSG((8 + hlen) % LORAC_WEIGHT_ALIGN == 0, "header length %llu", (unsigned long long)hlen);
        CHECK(n1 == 8 + hlen + 24 + 8 + 6);
        CHECK(bytes1[8] == '{');
        CHECK(n1 == n2 && memcmp(bytes1, bytes2, n1) == 0);
    }
    free(bytes2);

    /* every truncation fails cleanly; each copy is exactly `len` bytes so
     * ASan sees any read past the end */
    int all_failed = 1;
    for (size_t len = 0; bytes1 && len < n1; len++) {
        uint8_t *cut = malloc(len ? len : 1);
        memcpy(cut, bytes1, len);
        st = NULL;
        s = lorac_safetensors_open_memory(cut, len, "cut", &st);
        if (s != LORAC_STATUS_FORMAT || st != NULL || !contains(lorac_error_message(), "cut: ")) {
            all_failed = 0;
            fprintf(stderr, "truncation to %zu bytes: status %d: %s\n", len, (int)s, lorac_error_message());
        }
        lorac_safetensors_free(st);
        free(cut);
    }
    CHECK(all_failed);
    free(bytes1);

    /* the writer refuses what the reader would reject */
    lorac_tensor_write_t dup[2] = {
        {.name = "x", .dtype = LORAC_DTYPE_F32, .n_dims = 1, .shape = {1}, .data = g_f32},
        {.name = "x", .dtype = LORAC_DTYPE_F32, .n_dims = 1, .shape = {1}, .data = g_f32},
    };
    s = lorac_safetensors_write(tmp_path("dup.safetensors"), dup, 2, NULL, NULL, 0);
    CHECK(s == LORAC_STATUS_INVALID_ARG && contains(lorac_error_message(), "duplicate name 'x'"));
    CHECK(access(tmp_path("dup.safetensors"), F_OK) != 0);
    dup[1].name = "y";
    dup[1].shape[0] = -1;
    CHECK(lorac_safetensors_write(tmp_path("dup.safetensors"), dup, 2, NULL, NULL, 0) == LORAC_STATUS_INVALID_ARG);

    /* no tensors at all: "{}" padded, which the reader accepts */
    CHECK(lorac_safetensors_write(tmp_path("empty.safetensors"), NULL, 0, NULL, NULL, 0) == LORAC_STATUS_OK);
    st = NULL;
    CHECK(lorac_safetensors_open(tmp_path("empty.safetensors"), &st) == LORAC_STATUS_OK);
    CHECK(st && lorac_safetensors_count(st) == 0 && lorac_safetensors_metadata_count(st) == 0);
    lorac_safetensors_free(st);
}

/* ---- malformed headers --------------------------------------------------------------- */

#define T1 "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}"
#define T2 "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[16,20]}"

typedef struct {
    const char *what;
    const char *header;
    size_t data_len;
    lorac_status_t want;   /* LORAC_STATUS_OK: must be accepted */
    const char *message;   /* substring the error must contain */
} header_case_t;

static const header_case_t k_cases[] = {
    {"valid", "{" T1 "," T2 "}", 20, LORAC_STATUS_OK, NULL},
    {"empty object", "{}", 0, LORAC_STATUS_OK, NULL},
    {"trailing spaces", "{" T1 "}    ", 16, LORAC_STATUS_OK, NULL},
    {"trailing newline", "{" T1 "}\n", 16, LORAC_STATUS_OK, NULL},
    {"out of order but contiguous", "{" T2 "," T1 "}", 20, LORAC_STATUS_OK, NULL},
    {"scalar", "{\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]}}", 8, LORAC_STATUS_OK, NULL},
    {"zero-size tensor", "{\"z\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[16,16]}," T1 "}", 16,
     LORAC_STATUS_OK, NULL},
    {"keys in any order", "{\"a\":{\"data_offsets\":[0,16],\"shape\":[2,2],\"dtype\":\"F32\"}}", 16,
     LORAC_STATUS_OK, NULL},
    {"metadata", "{\"__metadata__\":{\"k\":\"v\"}," T1 "}", 16, LORAC_STATUS_OK, NULL},
    {"leading space", " {" T1 "}", 16, LORAC_STATUS_FORMAT, "does not start with '{'"},
    {"array header", "[]", 0, LORAC_STATUS_FORMAT, "does not start with '{'"},
    {"empty header", "", 0, LORAC_STATUS_FORMAT, "does not start with '{'"},
    {"invalid JSON", "{\"a\":{\"dtype\":\"F32\",", 0, LORAC_STATUS_FORMAT, "not valid JSON"},
    {"trailing garbage", "{" T1 "} x", 16, LORAC_STATUS_FORMAT, "not valid JSON"},
    {"two objects", "{" T1 "}{}", 16, LORAC_STATUS_FORMAT, "not valid JSON"},
    {"non-UTF-8", "{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16,
     LORAC_STATUS_FORMAT, "not valid UTF-8"},
    {"overlong UTF-8", "{\"a\xc0\xaf\":{}}", 0, LORAC_STATUS_FORMAT, "not valid UTF-8"},
    {"raw newline in name", "{\"a\nb\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4,
     LORAC_STATUS_FORMAT, "raw control character"},
    {"control char outside string", "{\x01}", 0, LORAC_STATUS_FORMAT, "control character 0x01 outside"},
    {"escaped NUL in name", "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4,
     LORAC_STATUS_UNSUPPORTED, "\\u0000"},
    {"unknown dtype", "{\"a\":{\"dtype\":\"F31\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16,
     LORAC_STATUS_FORMAT, "tensor 'a': unknown dtype 'F31'"},
    {"dtype not a string", "{\"a\":{\"dtype\":4,\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16,
     LORAC_STATUS_FORMAT, "dtype is not a string"},
    {"negative dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1,2],\"data_offsets\":[0,16]}}", 16,
     LORAC_STATUS_FORMAT, "tensor 'a': shape[0] = -1 is not a non-negative integer"},
    {"fractional dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2.5],\"data_offsets\":[0,16]}}", 16,
     LORAC_STATUS_FORMAT, "shape[1] = 2.5 is not"},
    {"integral float dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0,2],\"data_offsets\":[0,16]}}", 16,
     LORAC_STATUS_FORMAT, "shape[0] = 2.0 is not"},
    {"exponent dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2e0,2],\"data_offsets\":[0,16]}}", 16,
     LORAC_STATUS_FORMAT, "shape[0] = 2e0 is not"},
    {"leading zero dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[02,2],\"data_offsets\":[0,16]}}", 16,
     LORAC_STATUS_FORMAT, "shape[0] = 02 is not"},
    {"string dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\",2],\"data_offsets\":[0,16]}}", 16,
     LORAC_STATUS_FORMAT, "shape[0] is not a number"},
    {"shape not array", "{\"a\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,16]}}", 16,
     LORAC_STATUS_FORMAT, "shape is not an array"},
    {"element count overflow", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,9223372036854775807],\"data_offsets\":[0,16]}}",
     16, LORAC_STATUS_FORMAT, "shape [2, 9223372036854775807]: element count overflows"},
    {"byte count overflow", "{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,16]}}",
     16, LORAC_STATUS_FORMAT, "byte count overflows"},
    {"overflow before a zero dim",
     "{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,0],\"data_offsets\":[0,0]}}", 0,
     LORAC_STATUS_FORMAT, "element count overflows"},
    {"dim above int64", "{\"a\":{\"dtype\":\"U8\",\"shape\":[9223372036854775808],\"data_offsets\":[0,16]}}", 16,
     LORAC_STATUS_FORMAT, "shape[0] = 9223372036854775808 overflows"},
    {"offset above uint64", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,18446744073709551616]}}",
     16, LORAC_STATUS_FORMAT, "data_offsets[1] = 18446744073709551616 overflows"},
    {"too many dims", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1,
     LORAC_STATUS_UNSUPPORTED, "shape has 9 dims, lorac supports at most 8"},
    {"offsets not at 0", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[4,20]}}", 20,
     LORAC_STATUS_FORMAT, "tensor 'a': starts at byte 4 but the previous tensor ends at 0 (gap"},
    {"gap", "{" T1 ",\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[17,21]}}", 21,
     LORAC_STATUS_FORMAT, "tensor 'b': starts at byte 17 but the previous tensor ends at 16 (gap"},
    {"overlap", "{" T1 ",\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[12,16]}}", 16,
     LORAC_STATUS_FORMAT, "(overlap)"},
    {"same range twice", "{" T1 ",\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16,
     LORAC_STATUS_FORMAT, "(overlap)"},
    {"span mismatch", "{\"a.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 12,
     LORAC_STATUS_FORMAT, "tensor 'a.weight': data_offsets [0, 12] span 12 bytes but shape [2, 2] of F32 needs 16"},
    {"begin after end", "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4,
     LORAC_STATUS_FORMAT, "begin > end"},
    {"bytes after last tensor", "{" T1 "}", 17, LORAC_STATUS_FORMAT, "1 bytes after the last tensor"},
    {"data without tensors", "{}", 3, LORAC_STATUS_FORMAT, "3 bytes after the last tensor"},
    {"last tensor past EOF", "{" T1 "," T2 "}", 19, LORAC_STATUS_FORMAT,
     "tensor 'b': data_offsets [16, 20] run past the end of the file"},
    {"duplicate name", "{" T1 ",\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[16,20]}}", 20,
     LORAC_STATUS_FORMAT, "tensor 'a': duplicate tensor name"},
    {"metadata non-string", "{\"__metadata__\":{\"k\":1}," T1 "}", 16, LORAC_STATUS_FORMAT,
     "__metadata__: value of 'k' is not a string"},
    {"metadata not object", "{\"__metadata__\":[\"k\"]," T1 "}", 16, LORAC_STATUS_FORMAT,
     "__metadata__ is not a JSON object"},
    {"metadata twice", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, LORAC_STATUS_FORMAT,
     "__metadata__ appears 2 times"},
    {"metadata duplicate key", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, LORAC_STATUS_FORMAT,
     "duplicate key 'k'"},
    {"missing dtype", "{\"a\":{\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16, LORAC_STATUS_FORMAT,
     "tensor 'a': missing key 'dtype'"},
    {"missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,16]}}", 16, LORAC_STATUS_FORMAT,
     "tensor 'a': missing key 'shape'"},
    {"missing data_offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2]}}", 16, LORAC_STATUS_FORMAT,
     "tensor 'a': missing key 'data_offsets'"},
    {"extra key", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16],\"x\":1}}", 16,
     LORAC_STATUS_FORMAT, "tensor 'a': unexpected key 'x'"},
    {"repeated key", "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16,
     LORAC_STATUS_FORMAT, "key 'dtype' appears twice"},
    {"entry not an object", "{\"a\":[1,2]}", 0, LORAC_STATUS_FORMAT, "tensor 'a': entry is not a JSON object"},
    {"offsets wrong length", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,8,16]}}", 16,
     LORAC_STATUS_FORMAT, "data_offsets is not an array [begin, end]"},
    {"negative offset", "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[-0,0]}}", 0,
     LORAC_STATUS_FORMAT, "data_offsets[0] = -0 is not"},
    {"nested array in shape", "{\"a\":{\"dtype\":\"U8\",\"shape\":[[1]],\"data_offsets\":[0,1]}}", 1,
     LORAC_STATUS_FORMAT, "shape[0] is not a number"},
};

static void test_malformed(void) {
    for (size_t i = 0; i < sizeof k_cases / sizeof k_cases[0]; i++) {
        const header_case_t *c = &k_cases[i];
        size_t hl = strlen(c->header), n;
        uint8_t *buf = make_file(hl, c->header, hl, c->data_len, &n);
        lorac_safetensors_t *st = NULL;
        lorac_error_clear();
        lorac_status_t s = lorac_safetensors_open_memory(buf, n, "model.safetensors", &st);
        const char *msg = lorac_error_message();
        if (c->want == LORAC_STATUS_OK) {
            CHECK_MSG(s == LORAC_STATUS_OK && st, "%s: rejected: %s", c->what, msg);
        } else {
            CHECK_MSG(s == c->want && !st, "%s: status %s, want %s (%s)", c->what, lorac_status_str(s),
                      lorac_status_str(c->want), msg);
            CHECK_MSG(contains(msg, "model.safetensors: ") && contains(msg, c->message),
                      "%s: message '%s' lacks '%s'", c->what, msg, c->message);
        }
        if (st && i == 4) { /* out of order: get() is still in offset order */
            CHECK(strcmp(lorac_safetensors_get(st, 0)->name, "a") == 0);
            CHECK(strcmp(lorac_safetensors_get(st, 1)->name, "b") == 0);
            CHECK(lorac_safetensors_find(st, "b")->data == buf + 8 + hl + 16);
        }
        if (st && strcmp(c->what, "zero-size tensor") == 0) {
            const lorac_tensor_view_t *z = lorac_safetensors_find(st, "z");
            CHECK(z && z->nbytes == 0 && z->data == NULL && z->n_elements == 0);
        }
        if (st && strcmp(c->what, "scalar") == 0) {
            const lorac_tensor_view_t *sc = lorac_safetensors_get(st, 0);
            CHECK(sc->n_dims == 0 && sc->n_elements == 1 && sc->nbytes == 8);
        }
        lorac_safetensors_free(st);
        free(buf);
    }

    /* length-field cases, where the header text does not matter */
    struct { const char *what; uint64_t len_field; size_t header_len; const char *message; } k_len[] = {
        {"length over the limit", 100000001ull, 16, "header length 100000001 exceeds the limit"},
        {"length near UINT64_MAX", UINT64_MAX - 3, 16, "exceeds the limit"},
        {"length past EOF", 17, 16, "header length 17 runs past the end of the file (24 bytes)"},
    };
    for (size_t i = 0; i < sizeof k_len / sizeof k_len[0]; i++) {
        size_t n;
        uint8_t *buf = make_file(k_len[i].len_field, "{}              ", k_len[i].header_len, 0, &n);
        lorac_safetensors_t *st = NULL;
        lorac_status_t s = lorac_safetensors_open_memory(buf, n, "m.st", &st);
        CHECK_MSG(s == LORAC_STATUS_FORMAT && !st && contains(lorac_error_message(), k_len[i].message),
                  "%s: %s", k_len[i].what, lorac_error_message());
        free(buf);
    }
    /* shorter than the length field itself */
    lorac_safetensors_t *st = NULL;
    CHECK(lorac_safetensors_open_memory("\x02\0\0", 3, "tiny", &st) == LORAC_STATUS_FORMAT);
    CHECK(contains(lorac_error_message(), "tiny: file is 3 bytes, smaller than the 8-byte"));
    CHECK(lorac_safetensors_open_memory(NULL, 0, "none", &st) == LORAC_STATUS_FORMAT && !st);

    /* a NUL byte inside the header: cJSON would stop there */
    static const char nul_hdr[] = "{}\0 {\"x\":1}";
    size_t n;
    uint8_t *buf = make_file(sizeof nul_hdr - 1, nul_hdr, sizeof nul_hdr - 1, 0, &n);
    CHECK(lorac_safetensors_open_memory(buf, n, "m", &st) == LORAC_STATUS_FORMAT);
    CHECK(contains(lorac_error_message(), "NUL byte"));
    free(buf);

    /* nesting far deeper than any header: cJSON's depth limit, no stack overflow */
    size_t depth = 100000, hl = 2 * depth + 6;
    char *deep = malloc(hl + 1);
    memcpy(deep, "{\"a\":", 5);
    memset(deep + 5, '[', depth);
    memset(deep + 5 + depth, ']', depth);
    memcpy(deep + 5 + 2 * depth, "}", 2);
    buf = make_file(hl, deep, hl, 0, &n);
    CHECK(lorac_safetensors_open_memory(buf, n, "m", &st) == LORAC_STATUS_FORMAT);
    CHECK(contains(lorac_error_message(), "not valid JSON"));
    free(buf);
    free(deep);

    /* missing file is an I/O error naming the path */
    CHECK(lorac_safetensors_open(tmp_path("absent.safetensors"), &st) == LORAC_STATUS_IO && !st);
    CHECK(contains(lorac_error_message(), "absent.safetensors"));
}

/* ---- sharded weights ------------------------------------------------------------------- */

static void write_text(const char *path, const char *text) {
    CHECK(lorac_file_write_atomic(path, text, strlen(text)) == LORAC_STATUS_OK);
}

static void write_index(const char *map_json) {
    char text[1024];
    snprintf(text, sizeof text, "{\"metadata\": {\"total_size\": 28}, \"weight_map\": %s}", map_json);
    write_text(tmp_path("shards/model.safetensors.index.json"), text);
}

static void expect_shard_error(const char *what, lorac_status_t want, const char *message) {
    lorac_weight_files_t *wf = NULL;
    lorac_status_t s = lorac_weight_files_open(tmp_path("shards"), &wf);
    CHECK_MSG(s == want && !wf && contains(lorac_error_message(), message),
              "%s: status %s: '%s' lacks '%s'", what, lorac_status_str(s), lorac_error_message(), message);
    lorac_weight_files_free(wf);
}

static void test_sharded(void) {
    mkdir(tmp_path("shards"), 0755);
    float a[4] = {1, 2, 3, 4}, b[2] = {5, 6}, c[1] = {7};
    lorac_tensor_write_t s1[2] = {
        {.name = "a", .dtype = LORAC_DTYPE_F32, .n_dims = 2, .shape = {2, 2}, .data = a},
        {.name = "b", .dtype = LORAC_DTYPE_F32, .n_dims = 1, .shape = {2}, .data = b},
    };
    lorac_tensor_write_t s2[2] = {
        {.name = "c", .dtype = LORAC_DTYPE_F32, .n_dims = 1, .shape = {1}, .data = c},
        {.name = "a", .dtype = LORAC_DTYPE_F32, .n_dims = 1, .shape = {1}, .data = c},
    };
    CHECK(lorac_safetensors_write(tmp_path("shards/model-00001-of-00002.safetensors"), s1, 2, NULL, NULL, 0) == 0);
    CHECK(lorac_safetensors_write(tmp_path("shards/model-00002-of-00002.safetensors"), s2, 1, NULL, NULL, 0) == 0);
    write_index("{\"a\": \"model-00001-of-00002.safetensors\", \"b\": \"model-00001-of-00002.safetensors\","
                " \"c\": \"model-00002-of-00002.safetensors\"}");

    lorac_weight_files_t *wf = NULL;
    lorac_status_t s = lorac_weight_files_open(tmp_path("shards"), &wf);
    CHECK_MSG(s == LORAC_STATUS_OK, "%s", lorac_error_message());
    if (wf) {
        CHECK(lorac_weight_files_count(wf) == 3);
        const lorac_tensor_view_t *va = lorac_weight_files_find(wf, "a");
        const lorac_tensor_view_t *vc = lorac_weight_files_find(wf, "c");
        CHECK(va && va->n_elements == 4 && memcmp(va->data, a, 16) == 0);
        CHECK(vc && vc->n_elements == 1 && memcmp(vc->data, c, 4) == 0);
        CHECK(lorac_weight_files_find(wf, "b") && !lorac_weight_files_find(wf, "d"));
        CHECK(lorac_weight_files_get(wf, 0) == va && lorac_weight_files_get(wf, 2) == vc);
        CHECK(lorac_weight_files_get(wf, 3) == NULL);
    }
    lorac_weight_files_free(wf);

    /* a .safetensors path opens alone */
    wf = NULL;
    s = lorac_weight_files_open(tmp_path("shards/model-00002-of-00002.safetensors"), &wf);
    CHECK(s == LORAC_STATUS_OK && wf && lorac_weight_files_count(wf) == 1 && lorac_weight_files_find(wf, "c"));
    lorac_weight_files_free(wf);

    write_index("{\"a\": \"../x.safetensors\"}");
    expect_shard_error("parent shard", LORAC_STATUS_FORMAT, "shard '../x.safetensors' is not a plain file name");
    write_index("{\"a\": \"sub/x.safetensors\"}");
    expect_shard_error("sub-directory shard", LORAC_STATUS_FORMAT, "shard 'sub/x.safetensors' is not a plain");
    write_index("{\"a\": \"\"}");
    expect_shard_error("empty shard name", LORAC_STATUS_FORMAT, "is not a plain file name");
    write_index("{\"a\": 3}");
    expect_shard_error("shard not a string", LORAC_STATUS_FORMAT, "file name is not a string");
    write_index("[]");
    expect_shard_error("weight_map not object", LORAC_STATUS_FORMAT, "\"weight_map\" is missing");
    write_index("{\"a\": \"model-00001-of-00002.safetensors\", \"zz\": \"model-00001-of-00002.safetensors\"}");
    expect_shard_error("absent tensor", LORAC_STATUS_FORMAT,
                       "tensor 'zz' is listed in shard 'model-00001-of-00002.safetensors' but not found there");
    write_index("{\"a\": \"model-00001-of-00002.safetensors\", \"d\": \"missing.safetensors\"}");
    expect_shard_error("missing shard", LORAC_STATUS_IO, "missing.safetensors");
    write_text(tmp_path("shards/model.safetensors.index.json"), "{\"weight_map\": {");
    expect_shard_error("bad index JSON", LORAC_STATUS_FORMAT, "not valid JSON");

    /* the same tensor in two shards */
    CHECK(lorac_safetensors_write(tmp_path("shards/model-00002-of-00002.safetensors"), s2, 2, NULL, NULL, 0) == 0);
    write_index("{\"a\": \"model-00001-of-00002.safetensors\", \"c\": \"model-00002-of-00002.safetensors\"}");
    expect_shard_error("duplicate across shards", LORAC_STATUS_FORMAT, "tensor 'a' appears in more than one shard");

    /* a directory without an index opens model.safetensors, or names it when absent */
    mkdir(tmp_path("single"), 0755);
    wf = NULL;
    s = lorac_weight_files_open(tmp_path("single"), &wf);
    CHECK(s == LORAC_STATUS_IO && contains(lorac_error_message(), "single/model.safetensors"));
    CHECK(lorac_safetensors_write(tmp_path("single/model.safetensors"), s1, 2, NULL, NULL, 0) == 0);
    s = lorac_weight_files_open(tmp_path("single"), &wf);
    CHECK(s == LORAC_STATUS_OK && wf && lorac_weight_files_count(wf) == 2 && lorac_weight_files_find(wf, "b"));
    lorac_weight_files_free(wf);
}

/* Removes what the tests wrote (kept when a check failed, for inspection). */
static void cleanup(void) {
    static const char *const files[] = {
        "sample.safetensors", "sample2.safetensors", "empty.safetensors",
        "shards/model-00001-of-00002.safetensors", "shards/model-00002-of-00002.safetensors",
        "shards/model.safetensors.index.json", "single/model.safetensors",
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) unlink(tmp_path(files[i]));
    rmdir(tmp_path("shards"));
    rmdir(tmp_path("single"));
    rmdir(g_dir);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "%s/test_safetensors.%ld", tl_tmpdir(), (long)getpid());
    if (mkdir(g_dir, 0755) != 0) {
        fprintf(stderr, "cannot create %s\n", g_dir);
        return 1;
    }
    test_round_trip();
    test_malformed();
    test_sharded();
    if (!tl_failed) cleanup();
    return tl_finish("test_safetensors");
}
