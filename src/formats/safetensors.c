/* safetensors: strict reader over a read-only mapping, sharded model weights,
 * and an atomic streaming writer. The format and the rules are described in
 * include/lorac/safetensors.h.
 *
 * Parsing happens in four steps, each with a clear error:
 *   1. the 8-byte length and the header bounds (checked arithmetic);
 *   2. a lexical pass over the header text: UTF-8, first byte '{', no raw
 *      control characters, and the position of every number token;
 *   3. cJSON builds the tree; we walk it in document order and validate each
 *      entry. Numbers are read from their token text, not from cJSON's double,
 *      because a double cannot hold every 64-bit dimension or offset exactly;
 *   4. tensors are sorted by offset and must tile the data buffer exactly.
 */
#define _POSIX_C_SOURCE 200809L
#include "lorac/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Longest tensor name or token quoted in an error message. */
#define MSG_NAME_MAX 200

typedef struct {
    lorac_tensor_view_t view;
    uint64_t begin, end; /* data_offsets, relative to the data buffer */
} st_entry_t;

struct lorac_safetensors {
    lorac_mapped_file_t map; /* owned mapping; empty for open_memory */
    st_entry_t *entries;     /* offset order */
    int64_t n_entries;
    int64_t *by_name;        /* entry indices sorted by name, for find */
    char **meta_keys;        /* document order */
    char **meta_values;
    int64_t *meta_by_key;    /* meta indices sorted by key */
    int64_t n_meta;
    char *strings;           /* one arena holding every name, key and value */
};

/* ---- small helpers ---------------------------------------------------------- */

static uint64_t read_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void write_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Name indexes. qsort has no context argument, so we sort (name, index)
 * pairs and keep the indices: the entries themselves stay in offset order.
 * `names` points at the name field of the first of n structs laid out
 * `stride` bytes apart, so one helper serves tensor entries, metadata keys
 * and the writer's arguments. */
typedef struct { const char *s; int64_t i; } name_ref_t;

static int cmp_name_ref(const void *a, const void *b) {
    return strcmp(((const name_ref_t *)a)->s, ((const name_ref_t *)b)->s);
}

/* Sorts names[0..n) into an index array (caller frees). On a duplicate, sets
 * *dup to its name. Returns NULL only on allocation failure. */
static int64_t *sort_names(const char *const *names, size_t stride, int64_t n, const char **dup) {
    *dup = NULL;
    name_ref_t *refs = malloc((size_t)(n > 0 ? n : 1) * sizeof *refs);
    int64_t *idx = malloc((size_t)(n > 0 ? n : 1) * sizeof *idx);
    if (!refs || !idx) { free(refs); free(idx); return NULL; }
    for (int64_t i = 0; i < n; i++) {
        refs[i].s = *(const char *const *)((const char *)names + (size_t)i * stride);
        refs[i].i = i;
    }
    qsort(refs, (size_t)n, sizeof *refs, cmp_name_ref);
    for (int64_t i = 0; i < n; i++) {
        idx[i] = refs[i].i;
        if (i > 0 && !*dup && strcmp(refs[i - 1].s, refs[i].s) == 0) *dup = refs[i].s;
    }
    free(refs);
    return idx;
}

/* Binary search of `key` in names reached through a sorted index array. */
static int64_t search_names(const char *const *names, size_t stride, const int64_t *idx, int64_t n,
                            const char *key) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        const char *s = *(const char *const *)((const char *)names + (size_t)idx[mid] * stride);
        int c = strcmp(s, key);
        if (c == 0) return idx[mid];
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    return -1;
}

/* ---- step 2: lexical pass ---------------------------------------------------- */

typedef struct {
    size_t pos;  /* offset in the header */
    size_t len;
} num_token_t;

typedef struct {
    const char *label;
    const char *hdr;      /* the header text, NUL-terminated copy */
    size_t hdr_len;
    num_token_t *nums;    /* every number token, in document order */
    size_t n_nums, cap_nums, next_num;
} parse_ctx_t;

static int is_json_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* cJSON accepts some things JSON does not (raw control characters, any byte
 * <= 0x20 as whitespace) and turns "\u0000" into a C string terminator, which
 * would silently truncate a name. We reject those here, and record where the
 * numbers are so that step 3 can read them exactly. */
static lorac_status_t scan_header(parse_ctx_t *c) {
    const unsigned char *h = (const unsigned char *)c->hdr;
    size_t n = c->hdr_len;
    for (size_t i = 0; i < n;) {
        unsigned char ch = h[i];
        if (ch == '"') {
            for (i++; i < n && h[i] != '"'; i++) {
                if (h[i] < 0x20)
                    return lorac_error(LORAC_STATUS_FORMAT,
                        "%s: header byte %zu: raw control character 0x%02x inside a JSON string",
                        c->label, i, h[i]);
                if (h[i] == '\\') {
                    if (n - i > 5 && memcmp(h + i + 1, "u0000", 5) == 0)
                        return lorac_error(LORAC_STATUS_UNSUPPORTED,
                            "%s: header byte %zu: \\u0000 inside a string is not supported "
                            "(names are C strings)", c->label, i);
                    i++; /* skip the escaped character; cJSON validates the escape */
                }
            }
            i++;
        } else if (ch == '-' || (ch >= '0' && ch <= '9')) {
            size_t start = i;
            while (i < n && (h[i] == '-' || h[i] == '+' || h[i] == '.' || h[i] == 'e' ||
                             h[i] == 'E' || (h[i] >= '0' && h[i] <= '9')))
                i++;
            if (c->n_nums == c->cap_nums) {
                size_t cap = c->cap_nums ? c->cap_nums * 2 : 64;
                num_token_t *p = realloc(c->nums, cap * sizeof *p);
                if (!p) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", c->label);
                c->nums = p;
                c->cap_nums = cap;
            }
            c->nums[c->n_nums].pos = start;
            c->nums[c->n_nums].len = i - start;
            c->n_nums++;
        } else if (ch < 0x20 && !is_json_ws(ch)) {
            return lorac_error(LORAC_STATUS_FORMAT,
                "%s: header byte %zu: control character 0x%02x outside a JSON string",
                c->label, i, ch);
        } else {
            i++;
        }
    }
    return LORAC_STATUS_OK;
}

/* Reads the next number node of the tree (document order) as an exact
 * unsigned integer of at most `max`. `what` names the field in messages. */
static lorac_status_t take_uint(parse_ctx_t *c, const cJSON *node, const char *name,
                                const char *what, uint64_t max, uint64_t *out) {
    if (!cJSON_IsNumber(node))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s': %s is not a number",
                           c->label, MSG_NAME_MAX, name, what);
    if (c->next_num >= c->n_nums) /* the scan and cJSON disagree: treat as malformed */
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s': %s: number not found in header",
                           c->label, MSG_NAME_MAX, name, what);
    const num_token_t *t = &c->nums[c->next_num++];
    const char *s = c->hdr + t->pos;
    int tl = t->len > 40 ? 40 : (int)t->len;
    int digits_only = t->len > 0;
    for (size_t i = 0; i < t->len; i++)
        if (s[i] < '0' || s[i] > '9') digits_only = 0;
    if (!digits_only || (t->len > 1 && s[0] == '0'))
        return lorac_error(LORAC_STATUS_FORMAT,
                           "%s: tensor '%.*s': %s = %.*s is not a non-negative integer",
                           c->label, MSG_NAME_MAX, name, what, tl, s);
    uint64_t v = 0;
    for (size_t i = 0; i < t->len; i++) {
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (max - d) / 10)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s': %s = %.*s overflows (max %" PRIu64 ")",
                               c->label, MSG_NAME_MAX, name, what, tl, s, max);
        v = v * 10 + d;
    }
    *out = v;
    return LORAC_STATUS_OK;
}

/* ---- step 3: entries --------------------------------------------------------- */

static void format_shape(char *buf, size_t cap, const int64_t *shape, int n) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < n && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

/* A tensor entry: exactly {"dtype": str, "shape": [uint...], "data_offsets": [uint, uint]}. */
static lorac_status_t parse_tensor(parse_ctx_t *c, const cJSON *obj, st_entry_t *e) {
    const char *name = obj->string;
    lorac_tensor_view_t *v = &e->view;
    memset(e, 0, sizeof *e);
    v->name = name;
    if (!cJSON_IsObject(obj))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s': entry is not a JSON object",
                           c->label, MSG_NAME_MAX, name);
    int seen_dtype = 0, seen_shape = 0, seen_offsets = 0;
    for (const cJSON *f = obj->child; f; f = f->next) {
        if (strcmp(f->string, "dtype") == 0) {
            if (seen_dtype++) goto duplicate;
            if (!cJSON_IsString(f))
                return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s': dtype is not a string",
                                   c->label, MSG_NAME_MAX, name);
            if (lorac_dtype_parse(f->valuestring, &v->dtype) != 0)
                return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s': unknown dtype '%.*s'",
                                   c->label, MSG_NAME_MAX, name, 40, f->valuestring);
        } else if (strcmp(f->string, "shape") == 0) {
            if (seen_shape++) goto duplicate;
            if (!cJSON_IsArray(f))
                return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s': shape is not an array",
                                   c->label, MSG_NAME_MAX, name);
            int n = 0;
            for (const cJSON *d = f->child; d; d = d->next, n++) {
                if (n == LORAC_MAX_DIMS)
                    return lorac_error(LORAC_STATUS_UNSUPPORTED,
                                       "%s: tensor '%.*s': shape has %d dims, lorac supports at most %d",
                                       c->label, MSG_NAME_MAX, name, cJSON_GetArraySize(f), LORAC_MAX_DIMS);
                char what[32];
                snprintf(what, sizeof what, "shape[%d]", n);
                uint64_t dim;
                lorac_status_t s = take_uint(c, d, name, what, (uint64_t)INT64_MAX, &dim);
                if (s) return s;
                v->shape[n] = (int64_t)dim;
            }
            v->n_dims = n;
        } else if (strcmp(f->string, "data_offsets") == 0) {
            if (seen_offsets++) goto duplicate;
            if (!cJSON_IsArray(f) || cJSON_GetArraySize(f) != 2)
                return lorac_error(LORAC_STATUS_FORMAT,
                                   "%s: tensor '%.*s': data_offsets is not an array [begin, end]",
                                   c->label, MSG_NAME_MAX, name);
            lorac_status_t s = take_uint(c, f->child, name, "data_offsets[0]", UINT64_MAX, &e->begin);
            if (!s) s = take_uint(c, f->child->next, name, "data_offsets[1]", UINT64_MAX, &e->end);
            if (s) return s;
        } else {
            return lorac_error(LORAC_STATUS_FORMAT,
                               "%s: tensor '%.*s': unexpected key '%.*s' (allowed: dtype, shape, data_offsets)",
                               c->label, MSG_NAME_MAX, name, 40, f->string);
        }
        continue;
    duplicate:
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s': key '%s' appears twice",
                           c->label, MSG_NAME_MAX, name, f->string);
    }
    const char *missing = !seen_dtype ? "dtype" : !seen_shape ? "shape" : !seen_offsets ? "data_offsets" : NULL;
    if (missing)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s': missing key '%s'",
                           c->label, MSG_NAME_MAX, name, missing);

    char shape_str[256];
    format_shape(shape_str, sizeof shape_str, v->shape, v->n_dims);
    if (e->begin > e->end)
        return lorac_error(LORAC_STATUS_FORMAT,
                           "%s: tensor '%.*s': data_offsets [%" PRIu64 ", %" PRIu64 "] has begin > end",
                           c->label, MSG_NAME_MAX, name, e->begin, e->end);
    /* Multiply in file order, as the reference does: an overflow is an error
     * even when a later dimension is zero. */
    uint64_t count = 1, nbytes;
    for (int i = 0; i < v->n_dims; i++)
        if (lorac_mul_u64(count, (uint64_t)v->shape[i], &count) != 0 || count > (uint64_t)INT64_MAX)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s': shape %s: element count overflows",
                               c->label, MSG_NAME_MAX, name, shape_str);
    if (lorac_mul_u64(count, lorac_dtype_size(v->dtype), &nbytes) != 0)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s': shape %s of %s: byte count overflows",
                           c->label, MSG_NAME_MAX, name, shape_str, lorac_dtype_name(v->dtype));
    if (nbytes != e->end - e->begin)
        return lorac_error(LORAC_STATUS_FORMAT,
                           "%s: tensor '%.*s': data_offsets [%" PRIu64 ", %" PRIu64 "] span %" PRIu64
                           " bytes but shape %s of %s needs %" PRIu64,
                           c->label, MSG_NAME_MAX, name, e->begin, e->end, e->end - e->begin,
                           shape_str, lorac_dtype_name(v->dtype), nbytes);
    v->n_elements = (int64_t)count;
    v->nbytes = nbytes;
    return LORAC_STATUS_OK;
}

/* "__metadata__": an object of string -> string. Stores pointers into the tree. */
static lorac_status_t parse_metadata(parse_ctx_t *c, const cJSON *obj, lorac_safetensors_t *st) {
    if (!cJSON_IsObject(obj))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: __metadata__ is not a JSON object", c->label);
    int64_t n = cJSON_GetArraySize(obj);
    st->meta_keys = calloc((size_t)n + 1, sizeof *st->meta_keys);
    st->meta_values = calloc((size_t)n + 1, sizeof *st->meta_values);
    if (!st->meta_keys || !st->meta_values) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", c->label);
    for (const cJSON *m = obj->child; m; m = m->next) {
        if (!cJSON_IsString(m))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: __metadata__: value of '%.*s' is not a string",
                               c->label, MSG_NAME_MAX, m->string);
        st->meta_keys[st->n_meta] = m->string;
        st->meta_values[st->n_meta] = m->valuestring;
        st->n_meta++;
    }
    const char *dup;
    st->meta_by_key = sort_names((const char *const *)st->meta_keys, sizeof(char *), st->n_meta, &dup);
    if (!st->meta_by_key) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", c->label);
    if (dup)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: __metadata__: duplicate key '%.*s'",
                           c->label, MSG_NAME_MAX, dup);
    return LORAC_STATUS_OK;
}

/* Copies every string the reader keeps out of the cJSON tree into one arena. */
static lorac_status_t move_strings(lorac_safetensors_t *st, const char *label) {
    size_t total = 1;
    for (int64_t i = 0; i < st->n_entries; i++) total += strlen(st->entries[i].view.name) + 1;
    for (int64_t i = 0; i < st->n_meta; i++)
        total += strlen(st->meta_keys[i]) + strlen(st->meta_values[i]) + 2;
    char *p = st->strings = malloc(total);
    if (!p) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", label);
#define MOVE(dst) do { size_t l = strlen(dst) + 1; memcpy(p, dst, l); dst = p; p += l; } while (0)
    for (int64_t i = 0; i < st->n_entries; i++) MOVE(st->entries[i].view.name);
    for (int64_t i = 0; i < st->n_meta; i++) { MOVE(st->meta_keys[i]); MOVE(st->meta_values[i]); }
#undef MOVE
    return LORAC_STATUS_OK;
}

/* ---- step 4: layout ----------------------------------------------------------- */

static int cmp_offsets(const void *a, const void *b) {
    const st_entry_t *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->view.name, y->view.name); /* names are unique: a total order */
}

static lorac_status_t check_layout(lorac_safetensors_t *st, const uint8_t *buf, uint64_t buf_size,
                                   const char *label) {
    uint64_t expected = 0;
    for (int64_t i = 0; i < st->n_entries; i++) {
        st_entry_t *e = &st->entries[i];
        const char *name = e->view.name;
        if (e->begin > expected)
            return lorac_error(LORAC_STATUS_FORMAT,
                               "%s: tensor '%.*s': starts at byte %" PRIu64 " but the previous tensor ends at %"
                               PRIu64 " (gap; tensors must be contiguous from offset 0)",
                               label, MSG_NAME_MAX, name, e->begin, expected);
        if (e->begin < expected)
            return lorac_error(LORAC_STATUS_FORMAT,
                               "%s: tensor '%.*s': starts at byte %" PRIu64 " but the previous tensor ends at %"
                               PRIu64 " (overlap)", label, MSG_NAME_MAX, name, e->begin, expected);
        if (e->end > buf_size)
            return lorac_error(LORAC_STATUS_FORMAT,
                               "%s: tensor '%.*s': data_offsets [%" PRIu64 ", %" PRIu64 "] run past the end "
                               "of the file (data buffer is %" PRIu64 " bytes)",
                               label, MSG_NAME_MAX, name, e->begin, e->end, buf_size);
        expected = e->end;
        e->view.data = e->view.nbytes ? buf + e->begin : NULL;
    }
    if (expected != buf_size)
        return lorac_error(LORAC_STATUS_FORMAT,
                           "%s: %" PRIu64 " bytes after the last tensor (tensors cover %" PRIu64
                           " of %" PRIu64 " data bytes)", label, buf_size - expected, expected, buf_size);
    return LORAC_STATUS_OK;
}

/* ---- open ---------------------------------------------------------------------- */

static lorac_status_t parse(lorac_safetensors_t *st, const uint8_t *data, size_t size, const char *label) {
    /* step 1: bounds */
    if (size < 8)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: file is %zu bytes, smaller than the 8-byte header length",
                           label, size);
    uint64_t hlen = read_le64(data), hend;
    if (hlen > LORAC_SAFETENSORS_MAX_HEADER)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: header length %" PRIu64 " exceeds the limit of %llu bytes",
                           label, hlen, LORAC_SAFETENSORS_MAX_HEADER);
    if (lorac_add_u64(8, hlen, &hend) != 0 || hend > size)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: header length %" PRIu64 " runs past the end of the file (%zu bytes)",
                           label, hlen, size);
    const char *htext = (const char *)data + 8;
    size_t n = (size_t)hlen;

    /* step 2: text rules */
    if (n == 0 || htext[0] != '{')
        return lorac_error(LORAC_STATUS_FORMAT, "%s: header does not start with '{'", label);
    if (!lorac_utf8_valid(htext, n))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: header is not valid UTF-8", label);
    if (memchr(htext, 0, n)) /* cJSON would stop at it and ignore the rest */
        return lorac_error(LORAC_STATUS_FORMAT, "%s: header contains a NUL byte", label);

    parse_ctx_t c = {.label = label, .hdr_len = n};
    char *copy = malloc(n + 1); /* cJSON wants a NUL-terminated buffer */
    if (!copy) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory for a %zu-byte header", label, n);
    memcpy(copy, htext, n);
    copy[n] = '\0';
    c.hdr = copy;
    cJSON *root = NULL;
    lorac_status_t s = scan_header(&c);
    if (s) goto done;

    /* step 3: JSON tree. require_null_terminated over n + 1 bytes: only
     * whitespace may follow the object. */
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(copy, n + 1, &end, 1);
    if (!root) {
        size_t at = end && end >= copy && end <= copy + n ? (size_t)(end - copy) : n;
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: header is not valid JSON (error near byte %zu of %zu)",
                        label, at, n);
        goto done;
    }
    int64_t n_tensors = 0, n_metadata = 0;
    for (const cJSON *it = root->child; it; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0) n_metadata++; else n_tensors++;
    }
    if (n_metadata > 1) {
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: __metadata__ appears %" PRId64 " times", label, n_metadata);
        goto done;
    }
    st->entries = calloc((size_t)n_tensors + 1, sizeof *st->entries);
    if (!st->entries) { s = lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", label); goto done; }
    for (const cJSON *it = root->child; it; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0) s = parse_metadata(&c, it, st);
        else s = parse_tensor(&c, it, &st->entries[st->n_entries++]);
        if (s) goto done;
    }
    if (c.next_num != c.n_nums) { /* every number must have been read as a dim or offset */
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: header has a number outside shape/data_offsets", label);
        goto done;
    }
    if ((s = move_strings(st, label))) goto done;

    /* step 4: names unique, offsets tile the buffer */
    qsort(st->entries, (size_t)st->n_entries, sizeof *st->entries, cmp_offsets);
    const char *dup;
    st->by_name = sort_names(&st->entries[0].view.name, sizeof(st_entry_t), st->n_entries, &dup);
    if (!st->by_name) { s = lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", label); goto done; }
    if (dup) {
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s': duplicate tensor name", label, MSG_NAME_MAX, dup);
        goto done;
    }
    s = check_layout(st, data + hend, (uint64_t)size - hend, label);
done:
    cJSON_Delete(root);
    free(copy);
    free(c.nums);
    return s;
}

lorac_status_t lorac_safetensors_open_memory(const void *data, size_t size, const char *label,
                                             lorac_safetensors_t **out) {
    *out = NULL;
    if (!label) label = "<memory>";
    if (!data && size > 0) return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: NULL data", label);
    lorac_safetensors_t *st = calloc(1, sizeof *st);
    if (!st) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", label);
    lorac_status_t s = parse(st, data, size, label);
    if (s) { lorac_safetensors_free(st); return s; }
    *out = st;
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_safetensors_open(const char *path, lorac_safetensors_t **out) {
    return lorac_safetensors_open_ex(path, 1, out);
}

lorac_status_t lorac_safetensors_open_ex(const char *path, int populate, lorac_safetensors_t **out) {
    *out = NULL;
    lorac_mapped_file_t map;
    lorac_status_t s = lorac_file_map_ex(path, populate, &map);
    if (s) return s;
    s = lorac_safetensors_open_memory(map.data, map.size, path, out);
    if (s) { lorac_file_unmap(&map); return s; }
    (*out)->map = map;
    return LORAC_STATUS_OK;
}

void lorac_safetensors_free(lorac_safetensors_t *st) {
    if (!st) return;
    lorac_file_unmap(&st->map);
    free(st->entries);
    free(st->by_name);
    free(st->meta_keys);
    free(st->meta_values);
    free(st->meta_by_key);
    free(st->strings);
    free(st);
}

int64_t lorac_safetensors_count(const lorac_safetensors_t *st) { return st ? st->n_entries : 0; }

const lorac_tensor_view_t *lorac_safetensors_get(const lorac_safetensors_t *st, int64_t index) {
    if (!st || index < 0 || index >= st->n_entries) return NULL;
    return &st->entries[index].view;
}

const lorac_tensor_view_t *lorac_safetensors_find(const lorac_safetensors_t *st, const char *name) {
    if (!st || !name) return NULL;
    int64_t i = search_names(&st->entries[0].view.name, sizeof(st_entry_t), st->by_name, st->n_entries, name);
    return i < 0 ? NULL : &st->entries[i].view;
}

int64_t lorac_safetensors_metadata_count(const lorac_safetensors_t *st) { return st ? st->n_meta : 0; }

const char *lorac_safetensors_metadata_key(const lorac_safetensors_t *st, int64_t index) {
    if (!st || index < 0 || index >= st->n_meta) return NULL;
    return st->meta_keys[index];
}

const char *lorac_safetensors_metadata_get(const lorac_safetensors_t *st, const char *key) {
    if (!st || !key || st->n_meta == 0) return NULL;
    int64_t i = search_names((const char *const *)st->meta_keys, sizeof(char *), st->meta_by_key, st->n_meta, key);
    return i < 0 ? NULL : st->meta_values[i];
}

/* ---- sharded weights ------------------------------------------------------------- */

struct lorac_weight_files {
    lorac_safetensors_t **shards;
    char **shard_names;   /* file names as the index gives them (or the path) */
    int64_t n_shards;
    const lorac_tensor_view_t **views; /* shard order, then offset order */
    int64_t n_views;
    int64_t *by_name;
    int populate;         /* the shards mapped with MAP_POPULATE (lorac_weight_files_open_ex) */
};

#define INDEX_NAME "model.safetensors.index.json"
#define INDEX_MAX_BYTES (64u << 20)

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* A shard must be a plain file name inside the model directory. */
static int plain_file_name(const char *s) {
    return s[0] != '\0' && !strchr(s, '/') && !strchr(s, '\\') && !strstr(s, "..") && strcmp(s, ".") != 0;
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Opens `path` as shard number wf->n_shards, prefixing errors with `ctx`. */
static lorac_status_t add_shard(lorac_weight_files_t *wf, const char *path, const char *display,
                                const char *ctx) {
    lorac_safetensors_t *st;
    lorac_status_t s = lorac_safetensors_open_ex(path, wf->populate, &st);
    if (s) {
        if (ctx) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", lorac_error_message());
            return lorac_error(s, "%s: shard '%s': %s", ctx, display, msg);
        }
        return s;
    }
    wf->shard_names[wf->n_shards] = strdup(display);
    wf->shards[wf->n_shards++] = st;
    if (!wf->shard_names[wf->n_shards - 1]) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", path);
    return LORAC_STATUS_OK;
}

/* Parses the index: fills *files (sorted, distinct shard names, pointing into
 * the tree) and leaves the tree in *root for the presence check. */
static lorac_status_t read_index(const char *index_path, cJSON **root, const char ***files, int64_t *n_files) {
    char *text = NULL;
    size_t len = 0;
    *root = NULL;
    *files = NULL;
    *n_files = 0;
    lorac_status_t s = lorac_file_read(index_path, INDEX_MAX_BYTES, &text, &len);
    if (s) return s;
    cJSON *j = cJSON_ParseWithLengthOpts(text, len + 1, NULL, 1);
    free(text);
    if (!j) return lorac_error(LORAC_STATUS_FORMAT, "%s: not valid JSON", index_path);
    *root = j;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(j, "weight_map");
    if (!cJSON_IsObject(wm))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: \"weight_map\" is missing or not an object", index_path);
    int64_t n = cJSON_GetArraySize(wm);
    const char **names = malloc((size_t)(n > 0 ? n : 1) * sizeof *names);
    if (!names) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", index_path);
    int64_t k = 0;
    for (const cJSON *e = wm->child; e; e = e->next) {
        if (!cJSON_IsString(e)) {
            free(names);
            return lorac_error(LORAC_STATUS_FORMAT, "%s: weight_map: tensor '%.*s': file name is not a string",
                               index_path, MSG_NAME_MAX, e->string);
        }
        if (!plain_file_name(e->valuestring)) {
            free(names);
            return lorac_error(LORAC_STATUS_FORMAT,
                               "%s: weight_map: tensor '%.*s': shard '%.*s' is not a plain file name "
                               "(no '/', no '..')", index_path, MSG_NAME_MAX, e->string, MSG_NAME_MAX,
                               e->valuestring);
        }
        names[k++] = e->valuestring;
    }
    qsort(names, (size_t)k, sizeof *names, cmp_str_ptr);
    int64_t distinct = 0;
    for (int64_t i = 0; i < k; i++)
        if (distinct == 0 || strcmp(names[distinct - 1], names[i]) != 0) names[distinct++] = names[i];
    if (distinct == 0) {
        free(names);
        return lorac_error(LORAC_STATUS_FORMAT, "%s: weight_map is empty", index_path);
    }
    *files = names;
    *n_files = distinct;
    return LORAC_STATUS_OK;
}

static lorac_status_t open_sharded(lorac_weight_files_t *wf, const char *dir, const char *index_path) {
    cJSON *root;
    const char **files;
    int64_t n_files;
    lorac_status_t s = read_index(index_path, &root, &files, &n_files);
    if (s) { cJSON_Delete(root); return s; }
    wf->shards = calloc((size_t)n_files, sizeof *wf->shards);
    wf->shard_names = calloc((size_t)n_files, sizeof *wf->shard_names);
    if (!wf->shards || !wf->shard_names) s = lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", index_path);
    for (int64_t i = 0; !s && i < n_files; i++) {
        char *path = lorac_path_join(dir, files[i]);
        if (!path) { s = lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", index_path); break; }
        s = add_shard(wf, path, files[i], index_path);
        free(path);
    }
    /* every tensor the index names must be in the shard it names */
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    for (const cJSON *e = wm ? wm->child : NULL; !s && e; e = e->next) {
        const char **hit = bsearch(&e->valuestring, files, (size_t)n_files, sizeof *files, cmp_str_ptr);
        int64_t shard = hit ? hit - files : -1;
        if (shard < 0 || !lorac_safetensors_find(wf->shards[shard], e->string))
            s = lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s' is listed in shard '%s' but not found there",
                            index_path, MSG_NAME_MAX, e->string, e->valuestring);
    }
    free(files);
    cJSON_Delete(root);
    return s;
}

static lorac_status_t build_weight_index(lorac_weight_files_t *wf, const char *where) {
    int64_t n = 0;
    for (int64_t i = 0; i < wf->n_shards; i++) n += lorac_safetensors_count(wf->shards[i]);
    wf->views = malloc((size_t)(n > 0 ? n : 1) * sizeof *wf->views);
    if (!wf->views) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", where);
    for (int64_t i = 0; i < wf->n_shards; i++)
        for (int64_t k = 0; k < lorac_safetensors_count(wf->shards[i]); k++)
            wf->views[wf->n_views++] = lorac_safetensors_get(wf->shards[i], k);
    /* views[i]->name is reached through two pointers, so sort a name array */
    const char **names = malloc((size_t)(n > 0 ? n : 1) * sizeof *names);
    if (!names) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", where);
    for (int64_t i = 0; i < n; i++) names[i] = wf->views[i]->name;
    const char *dup;
    wf->by_name = sort_names(names, sizeof *names, n, &dup);
    free(names);
    if (!wf->by_name) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", where);
    if (dup)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor '%.*s' appears in more than one shard",
                           where, MSG_NAME_MAX, dup);
    return LORAC_STATUS_OK;
}

static lorac_status_t open_single(lorac_weight_files_t *wf, const char *path) {
    wf->shards = calloc(1, sizeof *wf->shards);
    wf->shard_names = calloc(1, sizeof *wf->shard_names);
    if (!wf->shards || !wf->shard_names) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", path);
    return add_shard(wf, path, path, NULL);
}

lorac_status_t lorac_weight_files_open(const char *dir, lorac_weight_files_t **out) {
    return lorac_weight_files_open_ex(dir, 1, out);
}

lorac_status_t lorac_weight_files_open_ex(const char *dir, int populate, lorac_weight_files_t **out) {
    *out = NULL;
    struct stat sb;
    if (stat(dir, &sb) != 0) return lorac_error(LORAC_STATUS_IO, "%s: cannot open: %s", dir, strerror(errno));
    lorac_weight_files_t *wf = calloc(1, sizeof *wf);
    if (!wf) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", dir);
    wf->populate = populate;
    lorac_status_t s;
    char *index = NULL, *single = NULL;
    if (S_ISREG(sb.st_mode)) {
        s = ends_with(dir, ".safetensors")
                ? open_single(wf, dir)
                : lorac_error(LORAC_STATUS_INVALID_ARG, "%s: not a directory or a .safetensors file", dir);
    } else if (!(index = lorac_path_join(dir, INDEX_NAME))) {
        s = lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", dir);
    } else if (access(index, F_OK) == 0) {
        s = open_sharded(wf, dir, index);
    } else {
        single = lorac_path_join(dir, "model.safetensors");
        s = single ? open_single(wf, single) : lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", dir);
    }
    if (!s) s = build_weight_index(wf, single ? single : index ? index : dir);
    free(index);
    free(single);
    if (s) { lorac_weight_files_free(wf); return s; }
    *out = wf;
    return LORAC_STATUS_OK;
}

void lorac_weight_files_free(lorac_weight_files_t *wf) {
    if (!wf) return;
    for (int64_t i = 0; i < wf->n_shards; i++) {
        lorac_safetensors_free(wf->shards[i]);
        free(wf->shard_names[i]);
    }
    free(wf->shards);
    free(wf->shard_names);
    free(wf->views);
    free(wf->by_name);
    free(wf);
}

int64_t lorac_weight_files_count(const lorac_weight_files_t *wf) { return wf ? wf->n_views : 0; }

const lorac_tensor_view_t *lorac_weight_files_get(const lorac_weight_files_t *wf, int64_t index) {
    if (!wf || index < 0 || index >= wf->n_views) return NULL;
    return wf->views[index];
}

const lorac_tensor_view_t *lorac_weight_files_find(const lorac_weight_files_t *wf, const char *name) {
    if (!wf || !name) return NULL;
    /* search_names reads a name pointer at idx * stride: the view pointers are
     * one hop away, so search by hand */
    int64_t lo = 0, hi = wf->n_views;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        const lorac_tensor_view_t *v = wf->views[wf->by_name[mid]];
        int c = strcmp(v->name, name);
        if (c == 0) return v;
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    return NULL;
}

/* ---- writer ------------------------------------------------------------------------ */

typedef struct { char *p; size_t len, cap; int oom; } sbuf_t;

static void sb_put(sbuf_t *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(sbuf_t *b, const char *s) { sb_put(b, s, strlen(s)); }

/* A JSON string literal; the input was checked to be UTF-8, which JSON
 * carries as is, so only quotes, backslashes and control characters need escapes. */
static void sb_json_string(sbuf_t *b, const char *s) {
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') { esc[0] = '\\'; esc[1] = (char)*p; sb_put(b, esc, 2); }
        else if (*p < 0x20) { snprintf(esc, sizeof esc, "\\u%04x", *p); sb_put(b, esc, 6); }
        else sb_put(b, (const char *)p, 1);
    }
    sb_put(b, "\"", 1);
}

static lorac_status_t check_write_args(const char *path, const lorac_tensor_write_t *t, int64_t n,
                                       const char *const *mk, const char *const *mv, int64_t n_meta,
                                       uint64_t *nbytes) {
    if (n < 0 || n_meta < 0 || (n > 0 && !t) || (n_meta > 0 && (!mk || !mv)))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: bad tensor or metadata arrays", path);
    for (int64_t i = 0; i < n_meta; i++) {
        if (!mk[i] || !mv[i] || !lorac_utf8_valid(mk[i], strlen(mk[i])) || !lorac_utf8_valid(mv[i], strlen(mv[i])))
            return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: metadata entry %" PRId64 " is NULL or not UTF-8",
                               path, i);
    }
    for (int64_t i = 0; i < n; i++) {
        const char *name = t[i].name;
        if (!name || !lorac_utf8_valid(name, strlen(name)) || strcmp(name, "__metadata__") == 0)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: tensor %" PRId64 ": name is NULL, not UTF-8 "
                               "or '__metadata__'", path, i);
        if (!lorac_dtype_name(t[i].dtype) || t[i].n_dims < 0 || t[i].n_dims > LORAC_MAX_DIMS)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: tensor '%.*s': bad dtype or n_dims",
                               path, MSG_NAME_MAX, name);
        uint64_t count = 1;
        for (int d = 0; d < t[i].n_dims; d++)
            if (t[i].shape[d] < 0 || lorac_mul_u64(count, (uint64_t)t[i].shape[d], &count) != 0)
                return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: tensor '%.*s': negative or overflowing shape",
                                   path, MSG_NAME_MAX, name);
        if (lorac_mul_u64(count, lorac_dtype_size(t[i].dtype), &nbytes[i]) != 0 || count > (uint64_t)INT64_MAX)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: tensor '%.*s': byte count overflows",
                               path, MSG_NAME_MAX, name);
        if (nbytes[i] > 0 && !t[i].data)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: tensor '%.*s': NULL data", path, MSG_NAME_MAX, name);
    }
    /* duplicates would make a file every reader rejects */
    const char *dup = NULL;
    int64_t *idx = NULL;
    if (n > 0) {
        idx = sort_names(&t[0].name, sizeof *t, n, &dup);
        free(idx);
        if (!idx) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", path);
    }
    if (!dup && n_meta > 0) {
        idx = sort_names(mk, sizeof *mk, n_meta, &dup);
        free(idx);
        if (!idx) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", path);
    }
    if (dup) return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: duplicate name '%.*s'", path, MSG_NAME_MAX, dup);
    return LORAC_STATUS_OK;
}

/* The header in the compact form the reference writes, padded with spaces
 * so that the data buffer starts 64-byte aligned (the reference pads to 8,
 * and the format allows any whitespace): the tensors then start on cache
 * lines whenever the ones before them are whole lines long, as every
 * weight matrix of a model with widths in multiples of 16 is, and load in
 * place (see the model loader's aligned copies). */
static lorac_status_t build_header(sbuf_t *b, const char *path, const lorac_tensor_write_t *t, int64_t n,
                                   const char *const *mk, const char *const *mv, int64_t n_meta,
                                   const uint64_t *nbytes) {
    char num[64];
    sb_str(b, "{");
    if (n_meta > 0) {
        sb_str(b, "\"__metadata__\":{");
        for (int64_t i = 0; i < n_meta; i++) {
            if (i) sb_str(b, ",");
            sb_json_string(b, mk[i]);
            sb_str(b, ":");
            sb_json_string(b, mv[i]);
        }
        sb_str(b, "}");
    }
    uint64_t offset = 0;
    for (int64_t i = 0; i < n; i++) {
        if (i || n_meta > 0) sb_str(b, ",");
        sb_json_string(b, t[i].name);
        sb_str(b, ":{\"dtype\":\"");
        sb_str(b, lorac_dtype_name(t[i].dtype));
        sb_str(b, "\",\"shape\":[");
        for (int d = 0; d < t[i].n_dims; d++) {
            snprintf(num, sizeof num, "%s%" PRId64, d ? "," : "", t[i].shape[d]);
            sb_str(b, num);
        }
        if (lorac_add_u64(offset, nbytes[i], &offset) != 0)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: total tensor size overflows", path);
        snprintf(num, sizeof num, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", offset - nbytes[i], offset);
        sb_str(b, num);
    }
    sb_str(b, "}");
    while ((8 + b->len) % LORAC_WEIGHT_ALIGN != 0) sb_str(b, " ");
    if (b->oom) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory for the header", path);
    if (b->len > LORAC_SAFETENSORS_MAX_HEADER)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: header of %zu bytes exceeds the %llu-byte limit",
                           path, b->len, LORAC_SAFETENSORS_MAX_HEADER);
    return LORAC_STATUS_OK;
}

/* Streams to "<path>.tmp.<pid>" (no second copy of the tensor data in memory),
 * then fsync and rename (lorac_atomic_*), so a crash leaves either the old
 * file or the new one. */
lorac_status_t lorac_safetensors_write(const char *path, const lorac_tensor_write_t *tensors,
                                       int64_t n_tensors, const char *const *meta_keys,
                                       const char *const *meta_values, int64_t n_meta) {
    if (!path) return lorac_error(LORAC_STATUS_INVALID_ARG, "safetensors write: NULL path");
    uint64_t *nbytes = calloc((size_t)(n_tensors > 0 ? n_tensors : 1), sizeof *nbytes);
    if (!nbytes) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", path);
    sbuf_t hdr = {0};
    lorac_status_t s = check_write_args(path, tensors, n_tensors, meta_keys, meta_values, n_meta, nbytes);
    if (!s) s = build_header(&hdr, path, tensors, n_tensors, meta_keys, meta_values, n_meta, nbytes);
    lorac_atomic_file_t f;
    if (!s) s = lorac_atomic_open(path, &f);
    if (!s) {
        uint8_t len8[8];
        write_le64(len8, hdr.len);
        s = lorac_atomic_write(&f, len8, 8);
        if (!s) s = lorac_atomic_write(&f, hdr.p, hdr.len);
        for (int64_t i = 0; !s && i < n_tensors; i++) s = lorac_atomic_write(&f, tensors[i].data, nbytes[i]);
        if (s) lorac_atomic_abort(&f);
        else s = lorac_atomic_commit(&f);
    }
    free(hdr.p);
    free(nbytes);
    return s;
}
