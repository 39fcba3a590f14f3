/* GGUF reader and writer. The format and the rules are in lorac/gguf.h;
 * the reader follows ggml's gguf.cpp, the reference implementation, rule
 * for rule, so that a file lorac accepts is one llama.cpp accepts. */
#include "lorac/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC "GGUF"

/* ---- ggml's types ------------------------------------------------------------ */

typedef struct {
    const char *name;
    int64_t block, bytes; /* elements per block, bytes per block */
} ggml_type_info_t;

/* Indexed by ggml_type; gaps are types ggml removed (Q4_2, Q4_3, the
 * Q4_0_4_4 family, IQ4_NL_4_4 family), which its reader refuses. */
static const ggml_type_info_t ggml_types[] = {
    [0] = {"F32", 1, 4},        [1] = {"F16", 1, 2},        [2] = {"Q4_0", 32, 18},
    [3] = {"Q4_1", 32, 20},     [6] = {"Q5_0", 32, 22},     [7] = {"Q5_1", 32, 24},
    [8] = {"Q8_0", 32, 34},     [9] = {"Q8_1", 32, 36},     [10] = {"Q2_K", 256, 84},
    [11] = {"Q3_K", 256, 110},  [12] = {"Q4_K", 256, 144},  [13] = {"Q5_K", 256, 176},
    [14] = {"Q6_K", 256, 210},  [15] = {"Q8_K", 256, 292},  [16] = {"IQ2_XXS", 256, 66},
    [17] = {"IQ2_XS", 256, 74}, [18] = {"IQ3_XXS", 256, 98}, [19] = {"IQ1_S", 256, 50},
    [20] = {"IQ4_NL", 32, 18},  [21] = {"IQ3_S", 256, 110}, [22] = {"IQ2_S", 256, 82},
    [23] = {"IQ4_XS", 256, 136}, [24] = {"I8", 1, 1},       [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},       [27] = {"I64", 1, 8},       [28] = {"F64", 1, 8},
    [29] = {"IQ1_M", 256, 56},  [30] = {"BF16", 1, 2},      [34] = {"TQ1_0", 256, 54},
    [35] = {"TQ2_0", 256, 66},  [39] = {"MXFP4", 32, 17},
};
#define N_GGML_TYPES (sizeof ggml_types / sizeof ggml_types[0])

const char *lorac_ggml_type_name(uint32_t type) { return type < N_GGML_TYPES ? ggml_types[type].name : NULL; }
int64_t lorac_ggml_block_size(uint32_t type) { return type < N_GGML_TYPES ? ggml_types[type].block : 0; }
int64_t lorac_ggml_type_size(uint32_t type) { return type < N_GGML_TYPES ? ggml_types[type].bytes : 0; }

static const char *const value_type_names[LORAC_GGUF_TYPE_COUNT] = {
    "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
    "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64",
};
/* bytes of a scalar value; 0 for STRING and ARRAY */
static const uint8_t value_type_sizes[LORAC_GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *lorac_gguf_type_name(lorac_gguf_type_t type) {
    return (unsigned)type < LORAC_GGUF_TYPE_COUNT ? value_type_names[type] : NULL;
}

static uint64_t pad_to(uint64_t x, uint64_t align) { return (x + align - 1) / align * align; }

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

/* ---- reader -------------------------------------------------------------------- */

typedef struct {
    char *key;
    lorac_gguf_type_t type;
    lorac_gguf_type_t elem_type; /* arrays */
    uint64_t count;              /* arrays */
    const uint8_t *value;        /* a scalar, a string (its length first) or the first element */
    const uint8_t **strings;     /* arrays of strings: each element's start */
} gguf_kv_t;

struct lorac_gguf {
    lorac_mapped_file_t file; /* mapped by lorac_gguf_open, else data.size = 0 */
    const uint8_t *data;
    size_t size;
    uint32_t version, alignment;
    uint64_t data_offset;
    int64_t n_kv, n_tensors;
    gguf_kv_t *kv;
    lorac_gguf_tensor_t *tensors;
    int64_t *kv_sorted, *tensor_sorted; /* indices sorted by name, for lookups */
};

typedef struct {
    const uint8_t *p;
    size_t size, pos;
    const char *label;
} cursor_t;

static lorac_status_t need(cursor_t *c, uint64_t n, const char *what) {
    if (n > c->size - c->pos)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: truncated: %s at byte %zu needs %llu bytes, %zu left", c->label,
                           what, c->pos, (unsigned long long)n, c->size - c->pos);
    return LORAC_STATUS_OK;
}
static lorac_status_t take_u32(cursor_t *c, uint32_t *v, const char *what) {
    lorac_status_t s = need(c, 4, what);
    if (s) return s;
    *v = rd32(c->p + c->pos);
    c->pos += 4;
    return LORAC_STATUS_OK;
}
static lorac_status_t take_u64(cursor_t *c, uint64_t *v, const char *what) {
    lorac_status_t s = need(c, 8, what);
    if (s) return s;
    *v = rd64(c->p + c->pos);
    c->pos += 8;
    return LORAC_STATUS_OK;
}
/* A string: its bytes in *s, their count in *len. */
static lorac_status_t take_string(cursor_t *c, const uint8_t **s, uint64_t *len, const char *what) {
    lorac_status_t st = take_u64(c, len, what);
    if (!st) st = need(c, *len, what);
    if (st) return st;
    *s = c->p + c->pos;
    c->pos += (size_t)*len;
    return LORAC_STATUS_OK;
}

static int cmp_names(const char *a, size_t al, const char *b, size_t bl) {
    int r = memcmp(a, b, al < bl ? al : bl);
    return r ? r : (al > bl) - (al < bl);
}

/* qsort has no context argument in C11: the array being sorted is passed
 * through a thread-local. */
static _Thread_local const lorac_gguf_t *sort_ctx;
static int cmp_kv_index(const void *a, const void *b) {
    const char *ka = sort_ctx->kv[*(const int64_t *)a].key, *kb = sort_ctx->kv[*(const int64_t *)b].key;
    return strcmp(ka, kb);
}
static int cmp_tensor_index(const void *a, const void *b) {
    const lorac_gguf_tensor_t *ta = &sort_ctx->tensors[*(const int64_t *)a];
    const lorac_gguf_tensor_t *tb = &sort_ctx->tensors[*(const int64_t *)b];
    return cmp_names(ta->name, ta->name_len, tb->name, tb->name_len);
}

static lorac_status_t parse_kv(lorac_gguf_t *g, cursor_t *c, int64_t i) {
    gguf_kv_t *kv = &g->kv[i];
    const uint8_t *key;
    uint64_t key_len;
    uint32_t type;
    lorac_status_t s = take_string(c, &key, &key_len, "metadata key");
    if (s) return s;
    if (memchr(key, 0, (size_t)key_len))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: metadata key %lld contains a NUL byte", c->label, (long long)i);
    kv->key = malloc((size_t)key_len + 1);
    if (!kv->key) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", c->label);
    memcpy(kv->key, key, (size_t)key_len);
    kv->key[key_len] = '\0';
    if ((s = take_u32(c, &type, "metadata value type"))) return s;
    if (type >= LORAC_GGUF_TYPE_COUNT)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: metadata '%s' has unknown value type %u", c->label, kv->key, type);
    kv->type = (lorac_gguf_type_t)type;
    kv->value = c->p + c->pos;
    if (type == LORAC_GGUF_STRING) {
        const uint8_t *str;
        uint64_t len;
        return take_string(c, &str, &len, kv->key);
    }
    if (type != LORAC_GGUF_ARRAY) {
        if ((s = need(c, value_type_sizes[type], kv->key))) return s;
        c->pos += value_type_sizes[type];
        return LORAC_STATUS_OK;
    }

    uint32_t et;
    if ((s = take_u32(c, &et, kv->key)) || (s = take_u64(c, &kv->count, kv->key))) return s;
    if (et >= LORAC_GGUF_TYPE_COUNT)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: metadata '%s': array of unknown type %u", c->label, kv->key, et);
    if (et == LORAC_GGUF_ARRAY)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: metadata '%s': nested arrays are not supported", c->label, kv->key);
    kv->elem_type = (lorac_gguf_type_t)et;
    kv->value = c->p + c->pos;
    if (et != LORAC_GGUF_STRING) {
        uint64_t bytes;
        if (lorac_mul_u64(kv->count, value_type_sizes[et], &bytes))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: metadata '%s': array size overflows", c->label, kv->key);
        if ((s = need(c, bytes, kv->key))) return s;
        c->pos += (size_t)bytes;
        return LORAC_STATUS_OK;
    }
    /* each string takes at least its 8-byte length: a count the rest of the
     * file cannot hold is refused before anything is allocated for it */
    if (kv->count > (c->size - c->pos) / 8)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: truncated: metadata '%s' claims %llu strings", c->label, kv->key,
                           (unsigned long long)kv->count);
    kv->strings = malloc((size_t)(kv->count ? kv->count : 1) * sizeof *kv->strings);
    if (!kv->strings) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", c->label);
    for (uint64_t j = 0; j < kv->count; j++) {
        const uint8_t *str;
        uint64_t len;
        kv->strings[j] = c->p + c->pos;
        if ((s = take_string(c, &str, &len, kv->key))) return s;
    }
    return LORAC_STATUS_OK;
}

static lorac_status_t parse_tensor_info(lorac_gguf_t *g, cursor_t *c, int64_t i, uint64_t *running) {
    lorac_gguf_tensor_t *t = &g->tensors[i];
    const uint8_t *name;
    uint64_t name_len, offset;
    uint32_t n_dims, type;
    lorac_status_t s = take_string(c, &name, &name_len, "tensor name");
    if (s) return s;
    if (name_len >= LORAC_GGUF_MAX_NAME)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor %lld: name of %llu bytes is too long (at most %d)", c->label,
                           (long long)i, (unsigned long long)name_len, LORAC_GGUF_MAX_NAME - 1);
    if (memchr(name, 0, (size_t)name_len))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor %lld: name contains a NUL byte", c->label, (long long)i);
    t->name = (const char *)name;
    t->name_len = (size_t)name_len;
    const int nl = (int)name_len;
    if ((s = take_u32(c, &n_dims, "tensor dims"))) return s;
    if (n_dims > LORAC_GGUF_MAX_DIMS)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s' has %u dims (at most %d)", c->label, nl, t->name,
                           n_dims, LORAC_GGUF_MAX_DIMS);
    t->n_dims = (int32_t)n_dims;
    int64_t ne[LORAC_GGUF_MAX_DIMS] = {1, 1, 1, 1};
    for (uint32_t d = 0; d < n_dims; d++) {
        uint64_t v;
        if ((s = take_u64(c, &v, "tensor dim"))) return s;
        if (v > (uint64_t)INT64_MAX)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s': dim %u is negative", c->label, nl, t->name, d);
        ne[d] = (int64_t)v;
    }
    uint64_t n = 1;
    for (int d = 0; d < LORAC_GGUF_MAX_DIMS; d++)
        if (lorac_mul_u64(n, (uint64_t)ne[d], &n) || n > (uint64_t)INT64_MAX)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s': element count overflows", c->label, nl, t->name);
    t->n_elements = (int64_t)n;
    for (uint32_t d = 0; d < n_dims; d++) t->shape[d] = ne[n_dims - 1 - d];
    if ((s = take_u32(c, &type, "tensor type"))) return s;
    if (!lorac_ggml_block_size(type))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s' has unknown or removed ggml type %u", c->label, nl,
                           t->name, type);
    t->type = type;
    int64_t block = lorac_ggml_block_size(type);
    if (ne[0] % block)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s': row of %lld elements is not a multiple of %s's block of %lld",
                           c->label, nl, t->name, (long long)ne[0], lorac_ggml_type_name(type), (long long)block);
    if (lorac_mul_u64(n / (uint64_t)block, (uint64_t)lorac_ggml_type_size(type), &t->nbytes))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s': byte count overflows", c->label, nl, t->name);
    if ((s = take_u64(c, &offset, "tensor offset"))) return s;
    if (offset != *running)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s' has offset %llu, expected %llu (tensors must follow each other, padded to %u bytes)",
                           c->label, nl, t->name, (unsigned long long)offset, (unsigned long long)*running, g->alignment);
    uint64_t padded = pad_to(t->nbytes, g->alignment);
    if (padded < t->nbytes || lorac_add_u64(*running, padded, running))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s': data size overflows", c->label, nl, t->name);
    t->data = (const void *)(uintptr_t)offset; /* made a pointer once the data section is known */
    return LORAC_STATUS_OK;
}

static lorac_status_t parse(lorac_gguf_t *g, const char *label) {
    cursor_t c = {g->data, g->size, 0, label};
    uint32_t version;
    uint64_t n_tensors, n_kv;
    lorac_status_t s = need(&c, 4, "magic");
    if (s) return s;
    if (memcmp(g->data, GGUF_MAGIC, 4))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: not a GGUF file (magic is not \"GGUF\")", label);
    c.pos = 4;
    if ((s = take_u32(&c, &version, "version"))) return s;
    if (version == 1) return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: GGUF version 1 is no longer supported", label);
    if ((version & 0xffff) == 0 && version)
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: GGUF version %u looks big-endian; only little-endian files are read",
                           label, version);
    if (version != 2 && version != 3)
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: GGUF version %u (lorac reads 2 and 3)", label, version);
    g->version = version;
    if ((s = take_u64(&c, &n_tensors, "tensor count")) || (s = take_u64(&c, &n_kv, "metadata count"))) return s;
    /* a key takes at least 12 bytes and a tensor info at least 24 */
    if (n_kv > (c.size - c.pos) / 12 || n_tensors > (c.size - c.pos) / 24)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: truncated: %llu metadata pairs and %llu tensors cannot fit in %zu bytes",
                           label, (unsigned long long)n_kv, (unsigned long long)n_tensors, g->size);
    g->kv = calloc((size_t)(n_kv ? n_kv : 1), sizeof *g->kv);
    g->tensors = calloc((size_t)(n_tensors ? n_tensors : 1), sizeof *g->tensors);
    g->kv_sorted = malloc((size_t)(n_kv ? n_kv : 1) * sizeof *g->kv_sorted);
    g->tensor_sorted = malloc((size_t)(n_tensors ? n_tensors : 1) * sizeof *g->tensor_sorted);
    if (!g->kv || !g->tensors || !g->kv_sorted || !g->tensor_sorted)
        return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", label);

    g->alignment = LORAC_GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < n_kv; i++) {
        g->n_kv = (int64_t)i + 1; /* what lorac_gguf_free must release */
        if ((s = parse_kv(g, &c, (int64_t)i))) return s;
        g->kv_sorted[i] = (int64_t)i;
    }
    sort_ctx = g;
    qsort(g->kv_sorted, (size_t)g->n_kv, sizeof *g->kv_sorted, cmp_kv_index);
    for (int64_t i = 1; i < g->n_kv; i++)
        if (!strcmp(g->kv[g->kv_sorted[i - 1]].key, g->kv[g->kv_sorted[i]].key))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: duplicate metadata key '%s'", label, g->kv[g->kv_sorted[i]].key);
    int64_t ai = lorac_gguf_find_key(g, "general.alignment");
    if (ai >= 0) {
        if (g->kv[ai].type != LORAC_GGUF_UINT32)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: general.alignment is %s, not UINT32", label,
                               value_type_names[g->kv[ai].type]);
        uint32_t a = rd32(g->kv[ai].value);
        if (a == 0 || (a & (a - 1)))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: general.alignment %u is not a power of two", label, a);
        g->alignment = a;
    }

    uint64_t running = 0;
    for (uint64_t i = 0; i < n_tensors; i++) {
        if ((s = parse_tensor_info(g, &c, (int64_t)i, &running))) return s;
        g->n_tensors = (int64_t)i + 1;
        g->tensor_sorted[i] = (int64_t)i;
    }
    qsort(g->tensor_sorted, (size_t)g->n_tensors, sizeof *g->tensor_sorted, cmp_tensor_index);
    for (int64_t i = 1; i < g->n_tensors; i++) {
        const lorac_gguf_tensor_t *a = &g->tensors[g->tensor_sorted[i - 1]], *b = &g->tensors[g->tensor_sorted[i]];
        if (!cmp_names(a->name, a->name_len, b->name, b->name_len))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: duplicate tensor '%.*s'", label, (int)b->name_len, b->name);
    }
    g->data_offset = pad_to(c.pos, g->alignment);
    if (running > 0 && (g->data_offset > g->size || running > g->size - g->data_offset))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: truncated: the data section needs %llu bytes from offset %llu, the file has %zu",
                           label, (unsigned long long)running, (unsigned long long)g->data_offset, g->size);
    for (int64_t i = 0; i < g->n_tensors; i++) {
        lorac_gguf_tensor_t *t = &g->tensors[i];
        t->data = t->nbytes ? g->data + g->data_offset + (uintptr_t)t->data : NULL;
    }
    return LORAC_STATUS_OK;
}

static lorac_status_t open_buffer(lorac_gguf_t *g, const char *label, lorac_gguf_t **out) {
    lorac_status_t s = parse(g, label);
    if (s) {
        lorac_gguf_free(g);
        return s;
    }
    *out = g;
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_gguf_open_memory(const void *data, size_t size, const char *label, lorac_gguf_t **out) {
    if (!out || (!data && size)) return lorac_error(LORAC_STATUS_INVALID_ARG, "gguf: NULL argument");
    *out = NULL;
    lorac_gguf_t *g = calloc(1, sizeof *g);
    if (!g) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", label ? label : "gguf");
    g->data = data;
    g->size = size;
    return open_buffer(g, label ? label : "gguf", out);
}

int lorac_gguf_is_file(const char *path) {
    struct stat st;
    if (!path || stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    FILE *f = fopen(path, "rb");
    char magic[4] = {0};
    int yes = f && fread(magic, 1, 4, f) == 4 && !memcmp(magic, GGUF_MAGIC, 4);
    if (f) fclose(f);
    return yes;
}

lorac_status_t lorac_gguf_open(const char *path, lorac_gguf_t **out) {
    if (!path || !out) return lorac_error(LORAC_STATUS_INVALID_ARG, "gguf: NULL argument");
    *out = NULL;
    lorac_gguf_t *g = calloc(1, sizeof *g);
    if (!g) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", path);
    lorac_status_t s = lorac_file_map(path, &g->file);
    if (s) {
        free(g);
        return s;
    }
    g->data = g->file.data;
    g->size = g->file.size;
    return open_buffer(g, path, out);
}

void lorac_gguf_free(lorac_gguf_t *g) {
    if (!g) return;
    for (int64_t i = 0; i < g->n_kv; i++) {
        free(g->kv[i].key);
        free(g->kv[i].strings);
    }
    free(g->kv);
    free(g->tensors);
    free(g->kv_sorted);
    free(g->tensor_sorted);
    if (g->file.data) lorac_file_unmap(&g->file);
    free(g);
}

uint32_t lorac_gguf_version(const lorac_gguf_t *g) { return g->version; }
uint32_t lorac_gguf_alignment(const lorac_gguf_t *g) { return g->alignment; }
uint64_t lorac_gguf_data_offset(const lorac_gguf_t *g) { return g->data_offset; }
int64_t lorac_gguf_n_kv(const lorac_gguf_t *g) { return g->n_kv; }
const char *lorac_gguf_key(const lorac_gguf_t *g, int64_t i) { return i >= 0 && i < g->n_kv ? g->kv[i].key : NULL; }
lorac_gguf_type_t lorac_gguf_kv_type(const lorac_gguf_t *g, int64_t i) {
    return i >= 0 && i < g->n_kv ? g->kv[i].type : LORAC_GGUF_TYPE_COUNT;
}

int64_t lorac_gguf_find_key(const lorac_gguf_t *g, const char *key) {
    int64_t lo = 0, hi = g->n_kv;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int r = strcmp(g->kv[g->kv_sorted[mid]].key, key);
        if (!r) return g->kv_sorted[mid];
        if (r < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

/* One value of `type` at p, as an integer or a float; returns -1 when the
 * type is not of that kind. */
static int value_int(lorac_gguf_type_t type, const uint8_t *p, int64_t *out, uint64_t *uout) {
    uint64_t u = 0;
    int64_t v = 0;
    switch (type) {
    case LORAC_GGUF_UINT8: case LORAC_GGUF_BOOL: v = p[0]; break;
    case LORAC_GGUF_INT8: v = (int8_t)p[0]; break;
    case LORAC_GGUF_UINT16: v = p[0] | p[1] << 8; break;
    case LORAC_GGUF_INT16: v = (int16_t)(uint16_t)(p[0] | p[1] << 8); break;
    case LORAC_GGUF_UINT32: v = rd32(p); break;
    case LORAC_GGUF_INT32: v = (int32_t)rd32(p); break;
    case LORAC_GGUF_INT64: v = (int64_t)rd64(p); break;
    case LORAC_GGUF_UINT64:
        u = rd64(p);
        if (uout) *uout = u;
        if (u > (uint64_t)INT64_MAX) return out ? -2 : 0;
        if (out) *out = (int64_t)u;
        return 0;
    default: return -1;
    }
    if (out) *out = v;
    if (uout) {
        if (v < 0) return -2;
        *uout = (uint64_t)v;
    }
    return 0;
}
static int value_float(lorac_gguf_type_t type, const uint8_t *p, double *out) {
    if (type == LORAC_GGUF_FLOAT32) {
        uint32_t b = rd32(p);
        float f;
        memcpy(&f, &b, 4);
        *out = f;
    } else if (type == LORAC_GGUF_FLOAT64) {
        uint64_t b = rd64(p);
        memcpy(out, &b, 8);
    } else {
        return -1;
    }
    return 0;
}

static lorac_status_t wrong_type(const lorac_gguf_t *g, int64_t i, const char *want) {
    if (i < 0 || i >= g->n_kv) return lorac_error(LORAC_STATUS_INVALID_ARG, "gguf: no metadata entry %lld", (long long)i);
    return lorac_error(LORAC_STATUS_FORMAT, "GGUF metadata '%s' is %s, expected %s", g->kv[i].key,
                       value_type_names[g->kv[i].type], want);
}

lorac_status_t lorac_gguf_get_int(const lorac_gguf_t *g, int64_t i, int64_t *out) {
    if (i < 0 || i >= g->n_kv) return wrong_type(g, i, "an integer");
    int r = value_int(g->kv[i].type, g->kv[i].value, out, NULL);
    if (r == -2) return lorac_error(LORAC_STATUS_FORMAT, "GGUF metadata '%s' is out of range", g->kv[i].key);
    return r ? wrong_type(g, i, "an integer") : LORAC_STATUS_OK;
}
lorac_status_t lorac_gguf_get_uint(const lorac_gguf_t *g, int64_t i, uint64_t *out) {
    if (i < 0 || i >= g->n_kv) return wrong_type(g, i, "an integer");
    int r = value_int(g->kv[i].type, g->kv[i].value, NULL, out);
    if (r == -2) return lorac_error(LORAC_STATUS_FORMAT, "GGUF metadata '%s' is negative", g->kv[i].key);
    return r ? wrong_type(g, i, "an unsigned integer") : LORAC_STATUS_OK;
}
lorac_status_t lorac_gguf_get_float(const lorac_gguf_t *g, int64_t i, double *out) {
    if (i < 0 || i >= g->n_kv || value_float(g->kv[i].type, g->kv[i].value, out)) return wrong_type(g, i, "a float");
    return LORAC_STATUS_OK;
}
lorac_status_t lorac_gguf_get_string(const lorac_gguf_t *g, int64_t i, const char **s, size_t *len) {
    if (i < 0 || i >= g->n_kv || g->kv[i].type != LORAC_GGUF_STRING) return wrong_type(g, i, "STRING");
    *len = (size_t)rd64(g->kv[i].value);
    *s = (const char *)g->kv[i].value + 8;
    return LORAC_STATUS_OK;
}

lorac_gguf_type_t lorac_gguf_array_type(const lorac_gguf_t *g, int64_t i) {
    return i >= 0 && i < g->n_kv && g->kv[i].type == LORAC_GGUF_ARRAY ? g->kv[i].elem_type : LORAC_GGUF_TYPE_COUNT;
}
int64_t lorac_gguf_array_count(const lorac_gguf_t *g, int64_t i) {
    return i >= 0 && i < g->n_kv && g->kv[i].type == LORAC_GGUF_ARRAY ? (int64_t)g->kv[i].count : -1;
}
static const uint8_t *element(const lorac_gguf_t *g, int64_t i, int64_t j) {
    if (i < 0 || i >= g->n_kv || g->kv[i].type != LORAC_GGUF_ARRAY || j < 0 || (uint64_t)j >= g->kv[i].count) return NULL;
    const gguf_kv_t *kv = &g->kv[i];
    return kv->elem_type == LORAC_GGUF_STRING ? kv->strings[j] : kv->value + (size_t)j * value_type_sizes[kv->elem_type];
}
lorac_status_t lorac_gguf_array_int(const lorac_gguf_t *g, int64_t i, int64_t j, int64_t *out) {
    const uint8_t *p = element(g, i, j);
    int r = p ? value_int(g->kv[i].elem_type, p, out, NULL) : -1;
    if (r == -2) return lorac_error(LORAC_STATUS_FORMAT, "GGUF metadata '%s'[%lld] is out of range", g->kv[i].key, (long long)j);
    if (r) return lorac_error(LORAC_STATUS_FORMAT, "GGUF metadata %lld: no integer element %lld", (long long)i, (long long)j);
    return LORAC_STATUS_OK;
}
lorac_status_t lorac_gguf_array_float(const lorac_gguf_t *g, int64_t i, int64_t j, double *out) {
    const uint8_t *p = element(g, i, j);
    if (!p || value_float(g->kv[i].elem_type, p, out))
        return lorac_error(LORAC_STATUS_FORMAT, "GGUF metadata %lld: no float element %lld", (long long)i, (long long)j);
    return LORAC_STATUS_OK;
}
lorac_status_t lorac_gguf_array_string(const lorac_gguf_t *g, int64_t i, int64_t j, const char **s, size_t *len) {
    const uint8_t *p = element(g, i, j);
    if (!p || g->kv[i].elem_type != LORAC_GGUF_STRING)
        return lorac_error(LORAC_STATUS_FORMAT, "GGUF metadata %lld: no string element %lld", (long long)i, (long long)j);
    *len = (size_t)rd64(p);
    *s = (const char *)p + 8;
    return LORAC_STATUS_OK;
}

int64_t lorac_gguf_n_tensors(const lorac_gguf_t *g) { return g->n_tensors; }
const lorac_gguf_tensor_t *lorac_gguf_tensor(const lorac_gguf_t *g, int64_t i) {
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}
const lorac_gguf_tensor_t *lorac_gguf_find_tensor(const lorac_gguf_t *g, const char *name) {
    size_t len = strlen(name);
    int64_t lo = 0, hi = g->n_tensors;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        const lorac_gguf_tensor_t *t = &g->tensors[g->tensor_sorted[mid]];
        int r = cmp_names(t->name, t->name_len, name, len);
        if (!r) return t;
        if (r < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* ---- writer -------------------------------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t len, cap;
    int failed;
} bytes_t;

static void put(bytes_t *b, const void *src, size_t n) {
    if (b->failed) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}
static void put32(bytes_t *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(b, x, 4);
}
static void put64(bytes_t *b, uint64_t v) {
    put32(b, (uint32_t)v);
    put32(b, (uint32_t)(v >> 32));
}
static void put_string(bytes_t *b, const char *s, size_t len) {
    put64(b, len);
    put(b, s, len);
}

typedef struct {
    char *name;
    uint32_t type;
    int32_t n_dims;
    int64_t shape[LORAC_GGUF_MAX_DIMS];
    uint64_t nbytes;
    const void *data;
    lorac_gguf_fill_fn fill;
    void *user;
} writer_tensor_t;

struct lorac_gguf_writer {
    bytes_t kv;      /* the serialised pairs */
    int64_t n_kv;
    char **keys;     /* for the duplicate check */
    uint32_t alignment;
    writer_tensor_t *tensors;
    int64_t n_tensors, cap_tensors;
};

lorac_gguf_writer_t *lorac_gguf_writer_new(void) {
    lorac_gguf_writer_t *w = calloc(1, sizeof *w);
    if (w) w->alignment = LORAC_GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void lorac_gguf_writer_free(lorac_gguf_writer_t *w) {
    if (!w) return;
    free(w->kv.p);
    for (int64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    for (int64_t i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->tensors);
    free(w);
}

/* Records the key and writes it with its type; the caller writes the value. */
static lorac_status_t begin_kv(lorac_gguf_writer_t *w, const char *key, lorac_gguf_type_t type) {
    if (!w || !key) return lorac_error(LORAC_STATUS_INVALID_ARG, "gguf writer: NULL argument");
    for (int64_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->keys[i], key)) return lorac_error(LORAC_STATUS_INVALID_ARG, "gguf writer: key '%s' set twice", key);
    char **keys = realloc(w->keys, (size_t)(w->n_kv + 1) * sizeof *keys);
    if (!keys) return lorac_error(LORAC_STATUS_NOMEM, "gguf writer: out of memory");
    w->keys = keys;
    if (!(keys[w->n_kv] = strdup(key))) return lorac_error(LORAC_STATUS_NOMEM, "gguf writer: out of memory");
    w->n_kv++;
    put_string(&w->kv, key, strlen(key));
    put32(&w->kv, (uint32_t)type);
    return LORAC_STATUS_OK;
}
static lorac_status_t end_kv(lorac_gguf_writer_t *w) {
    return w->kv.failed ? lorac_error(LORAC_STATUS_NOMEM, "gguf writer: out of memory") : LORAC_STATUS_OK;
}

lorac_status_t lorac_gguf_set_string(lorac_gguf_writer_t *w, const char *key, const char *value) {
    lorac_status_t s = begin_kv(w, key, LORAC_GGUF_STRING);
    if (s) return s;
    put_string(&w->kv, value, strlen(value));
    return end_kv(w);
}
lorac_status_t lorac_gguf_set_u32(lorac_gguf_writer_t *w, const char *key, uint32_t value) {
    if (key && !strcmp(key, "general.alignment")) {
        if (!value || (value & (value - 1)))
            return lorac_error(LORAC_STATUS_INVALID_ARG, "gguf writer: alignment %u is not a power of two", value);
        w->alignment = value;
    }
    lorac_status_t s = begin_kv(w, key, LORAC_GGUF_UINT32);
    if (s) return s;
    put32(&w->kv, value);
    return end_kv(w);
}
lorac_status_t lorac_gguf_set_i32(lorac_gguf_writer_t *w, const char *key, int32_t value) {
    lorac_status_t s = begin_kv(w, key, LORAC_GGUF_INT32);
    if (s) return s;
    put32(&w->kv, (uint32_t)value);
    return end_kv(w);
}
lorac_status_t lorac_gguf_set_f32(lorac_gguf_writer_t *w, const char *key, float value) {
    lorac_status_t s = begin_kv(w, key, LORAC_GGUF_FLOAT32);
    if (s) return s;
    uint32_t bits;
    memcpy(&bits, &value, 4);
    put32(&w->kv, bits);
    return end_kv(w);
}
lorac_status_t lorac_gguf_set_bool(lorac_gguf_writer_t *w, const char *key, bool value) {
    lorac_status_t s = begin_kv(w, key, LORAC_GGUF_BOOL);
    if (s) return s;
    uint8_t v = value ? 1 : 0;
    put(&w->kv, &v, 1);
    return end_kv(w);
}
static lorac_status_t begin_array(lorac_gguf_writer_t *w, const char *key, lorac_gguf_type_t elem, int64_t n) {
    if (n < 0) return lorac_error(LORAC_STATUS_INVALID_ARG, "gguf writer: '%s': negative count", key ? key : "");
    lorac_status_t s = begin_kv(w, key, LORAC_GGUF_ARRAY);
    if (s) return s;
    put32(&w->kv, (uint32_t)elem);
    put64(&w->kv, (uint64_t)n);
    return LORAC_STATUS_OK;
}
lorac_status_t lorac_gguf_set_array_string(lorac_gguf_writer_t *w, const char *key, const char *const *values,
                                           const size_t *lens, int64_t n) {
    lorac_status_t s = begin_array(w, key, LORAC_GGUF_STRING, n);
    if (s) return s;
    for (int64_t i = 0; i < n; i++) put_string(&w->kv, values[i], lens ? lens[i] : strlen(values[i]));
    return end_kv(w);
}
lorac_status_t lorac_gguf_set_array_f32(lorac_gguf_writer_t *w, const char *key, const float *values, int64_t n) {
    lorac_status_t s = begin_array(w, key, LORAC_GGUF_FLOAT32, n);
    if (s) return s;
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &values[i], 4);
        put32(&w->kv, bits);
    }
    return end_kv(w);
}
lorac_status_t lorac_gguf_set_array_i32(lorac_gguf_writer_t *w, const char *key, const int32_t *values, int64_t n) {
    lorac_status_t s = begin_array(w, key, LORAC_GGUF_INT32, n);
    if (s) return s;
    for (int64_t i = 0; i < n; i++) put32(&w->kv, (uint32_t)values[i]);
    return end_kv(w);
}

lorac_status_t lorac_gguf_add_tensor(lorac_gguf_writer_t *w, const char *name, uint32_t type, int32_t n_dims,
                                     const int64_t *shape, const void *data, lorac_gguf_fill_fn fill, void *user) {
    if (!w || !name || (!shape && n_dims) || !data == !fill)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "gguf writer: bad arguments for tensor '%s'", name ? name : "");
    if (strlen(name) >= LORAC_GGUF_MAX_NAME)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "gguf writer: tensor name '%s' is longer than %d bytes", name,
                           LORAC_GGUF_MAX_NAME - 1);
    if (type != LORAC_GGML_TYPE_F32 && type != LORAC_GGML_TYPE_F16 && type != LORAC_GGML_TYPE_BF16 &&
        type != LORAC_GGML_TYPE_Q8_0)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "gguf writer: tensor '%s': type %u is not F32, F16, BF16 or Q8_0",
                           name, type);
    if (n_dims < 1 || n_dims > LORAC_GGUF_MAX_DIMS)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "gguf writer: tensor '%s' has %d dims", name, n_dims);
    for (int64_t i = 0; i < w->n_tensors; i++)
        if (!strcmp(w->tensors[i].name, name))
            return lorac_error(LORAC_STATUS_INVALID_ARG, "gguf writer: tensor '%s' added twice", name);
    /* bytes: rows of blocks (one element per block but for Q8_0's 32) */
    int64_t block = lorac_ggml_block_size(type);
    if (shape[n_dims - 1] % block)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "gguf writer: tensor '%s': rows of %lld are not whole %s blocks",
                           name, (long long)shape[n_dims - 1], lorac_ggml_type_name(type));
    uint64_t n = (uint64_t)lorac_ggml_type_size(type);
    for (int32_t d = 0; d < n_dims; d++)
        if (shape[d] < 0 || lorac_mul_u64(n, (uint64_t)(d == n_dims - 1 ? shape[d] / block : shape[d]), &n))
            return lorac_error(LORAC_STATUS_INVALID_ARG, "gguf writer: tensor '%s': bad shape", name);
    if (w->n_tensors == w->cap_tensors) {
        int64_t cap = w->cap_tensors ? 2 * w->cap_tensors : 64;
        writer_tensor_t *t = realloc(w->tensors, (size_t)cap * sizeof *t);
        if (!t) return lorac_error(LORAC_STATUS_NOMEM, "gguf writer: out of memory");
        w->tensors = t;
        w->cap_tensors = cap;
    }
    writer_tensor_t *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return lorac_error(LORAC_STATUS_NOMEM, "gguf writer: out of memory");
    t->type = type;
    t->n_dims = n_dims;
    memcpy(t->shape, shape, (size_t)n_dims * sizeof *shape);
    t->nbytes = n;
    t->data = data;
    t->fill = fill;
    t->user = user;
    w->n_tensors++;
    return LORAC_STATUS_OK;
}

static lorac_status_t write_padding(lorac_atomic_file_t *f, uint64_t written, uint32_t alignment) {
    static const uint8_t zeros[256];
    uint64_t pad = pad_to(written, alignment) - written;
    lorac_status_t s = LORAC_STATUS_OK;
    while (!s && pad > 0) {
        size_t k = pad < sizeof zeros ? (size_t)pad : sizeof zeros;
        s = lorac_atomic_write(f, zeros, k);
        pad -= k;
    }
    return s;
}

lorac_status_t lorac_gguf_write(const lorac_gguf_writer_t *w, const char *path) {
    if (!w || !path) return lorac_error(LORAC_STATUS_INVALID_ARG, "gguf writer: NULL argument");
    bytes_t hdr = {0};
    put(&hdr, GGUF_MAGIC, 4);
    put32(&hdr, 3);
    put64(&hdr, (uint64_t)w->n_tensors);
    put64(&hdr, (uint64_t)w->n_kv);
    put(&hdr, w->kv.p, w->kv.len);
    uint64_t offset = 0;
    for (int64_t i = 0; i < w->n_tensors; i++) {
        const writer_tensor_t *t = &w->tensors[i];
        put_string(&hdr, t->name, strlen(t->name));
        put32(&hdr, (uint32_t)t->n_dims);
        for (int32_t d = t->n_dims - 1; d >= 0; d--) put64(&hdr, (uint64_t)t->shape[d]); /* innermost first */
        put32(&hdr, t->type);
        put64(&hdr, offset);
        offset += pad_to(t->nbytes, w->alignment);
    }
    if (hdr.failed || w->kv.failed) {
        free(hdr.p);
        return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", path);
    }

    lorac_atomic_file_t f;
    lorac_status_t s = lorac_atomic_open(path, &f);
    if (s) {
        free(hdr.p);
        return s;
    }
    s = lorac_atomic_write(&f, hdr.p, hdr.len);
    if (!s) s = write_padding(&f, hdr.len, w->alignment);
    void *buf = NULL;
    for (int64_t i = 0; !s && i < w->n_tensors; i++) {
        const writer_tensor_t *t = &w->tensors[i];
        const void *src = t->data;
        if (t->fill) { /* one tensor's buffer at a time */
            free(buf);
            buf = malloc(t->nbytes ? (size_t)t->nbytes : 1);
            if (!buf) {
                s = lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory for tensor '%s'", path, t->name);
                break;
            }
            if ((s = t->fill(t->user, buf, t->nbytes))) break;
            src = buf;
        }
        s = lorac_atomic_write(&f, src, t->nbytes);
        if (!s) s = write_padding(&f, t->nbytes, w->alignment);
    }
    free(buf);
    free(hdr.p);
    if (s) {
        lorac_atomic_abort(&f);
        return s;
    }
    return lorac_atomic_commit(&f);
}
