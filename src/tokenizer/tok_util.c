/* Small containers of the tokenizer: id vectors, byte buffers, string and
 * pair hash maps, the GPT-2 byte<->unicode table, UTF-8 helpers, and the id
 * tables shared by both loaders. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

int tok_ids_push(tok_ids_t *a, int32_t id) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return -1;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return 0;
}

int tok_buf_add(tok_buf_t *b, const void *data, size_t n) { return lorac_bytes_append(&b->p, &b->n, &b->cap, data, n); }

/* FNV-1a: simple and good enough for token strings. */
static uint32_t hash_bytes(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static uint32_t table_size(size_t n_keys) {
    uint32_t size = 16;
    while (size < n_keys * 2 + 1) size *= 2; /* load factor <= 0.5 */
    return size;
}

int tok_strmap_init(tok_strmap_t *m, size_t n_keys) {
    uint32_t size = table_size(n_keys);
    m->slots = malloc(size * sizeof *m->slots);
    if (!m->slots) return -1;
    memset(m->slots, 0xff, size * sizeof *m->slots);
    m->mask = size - 1;
    return 0;
}

void tok_strmap_free(tok_strmap_t *m) {
    free(m->slots);
    m->slots = NULL;
}

int32_t tok_strmap_put(tok_strmap_t *m, const tok_str_t *strs, int32_t id) {
    const tok_str_t *k = &strs[id];
    uint32_t i = hash_bytes(k->s, (size_t)k->len) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        int32_t cur = m->slots[i];
        if (cur < 0) { m->slots[i] = id; return -1; }
        if (strs[cur].len == k->len && memcmp(strs[cur].s, k->s, (size_t)k->len) == 0) return cur;
    }
}

int32_t tok_strmap_get(const tok_strmap_t *m, const tok_str_t *strs, const char *s, size_t len) {
    if (!m->slots) return -1;
    uint32_t i = hash_bytes(s, len) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        int32_t cur = m->slots[i];
        if (cur < 0) return -1;
        if ((size_t)strs[cur].len == len && memcmp(strs[cur].s, s, len) == 0) return cur;
    }
}

static uint32_t hash_u64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return (uint32_t)x;
}

int tok_pairmap_init(tok_pairmap_t *m, size_t n_keys) {
    uint32_t size = table_size(n_keys);
    m->keys = calloc(size, sizeof *m->keys);
    m->prio = malloc(size * sizeof *m->prio);
    m->new_id = malloc(size * sizeof *m->new_id);
    m->mask = size - 1;
    m->count = 0;
    if (!m->keys || !m->prio || !m->new_id) { tok_pairmap_free(m); return -1; }
    return 0;
}

void tok_pairmap_free(tok_pairmap_t *m) {
    free(m->keys); free(m->prio); free(m->new_id);
    m->keys = NULL; m->prio = NULL; m->new_id = NULL;
}

static uint64_t pair_key(int32_t a, int32_t b) { return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1; }

void tok_pairmap_put(tok_pairmap_t *m, int32_t a, int32_t b, double prio, int32_t new_id) {
    uint64_t key = pair_key(a, b);
    uint32_t i = hash_u64(key) & m->mask;
    while (m->keys[i] != 0 && m->keys[i] != key) i = (i + 1) & m->mask;
    if (m->keys[i] == 0) m->count++;
    m->keys[i] = key;
    m->prio[i] = prio;
    m->new_id[i] = new_id;
}

int64_t tok_pairmap_find(const tok_pairmap_t *m, int32_t a, int32_t b) {
    if (!m->keys) return -1;
    uint64_t key = pair_key(a, b);
    uint32_t i = hash_u64(key) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        if (m->keys[i] == key) return i;
        if (m->keys[i] == 0) return -1;
    }
}

/* Built once; the table is constant, so a benign race between threads that
 * both build it writes identical bytes. Guarded by a flag set last. */
static tok_bytemap_t g_bytemap;
static volatile int g_bytemap_ready;

const tok_bytemap_t *tok_bytemap(void) {
    if (g_bytemap_ready) return &g_bytemap;
    tok_bytemap_t *m = &g_bytemap;
    for (int i = 0; i < 324; i++) m->cp_to_byte[i] = -1;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
        uint32_t cp = printable ? (uint32_t)b : 256u + (uint32_t)extra++;
        if (cp < 0x80) {
            m->utf8[b][0] = (char)cp;
            m->utf8_len[b] = 1;
        } else {
            m->utf8[b][0] = (char)(0xc0 | (cp >> 6));
            m->utf8[b][1] = (char)(0x80 | (cp & 0x3f));
            m->utf8_len[b] = 2;
        }
        m->cp_to_byte[cp] = (int16_t)b;
    }
    g_bytemap_ready = 1;
    return m;
}

int tok_utf8_len(unsigned char c) {
    if (c < 0x80) return 1;
    if ((c & 0xe0) == 0xc0) return 2;
    if ((c & 0xf0) == 0xe0) return 3;
    if ((c & 0xf8) == 0xf0) return 4;
    return 1; /* stray continuation byte: treat as one unit */
}

int tok_utf8_char(const unsigned char *s, size_t n, uint32_t *cp) {
    int len = tok_utf8_len(s[0]);
    if ((size_t)len > n) len = (int)n;
    uint32_t c = len == 1 ? s[0] : (uint32_t)(s[0] & (0x7f >> len));
    for (int i = 1; i < len; i++) c = (c << 6) | (s[i] & 0x3f);
    *cp = c;
    return len;
}

lorac_status_t tok_alloc_ids(lorac_tokenizer_t *tok, int32_t n_ids, const char *label) {
    tok->n_ids = n_ids;
    tok->tokens = calloc((size_t)n_ids + 1, sizeof *tok->tokens);
    tok->flags = calloc((size_t)n_ids + 1, 1);
    if (!tok->tokens || !tok->flags || tok_strmap_init(&tok->vocab_map, (size_t)n_ids) != 0)
        return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory for %d tokens", label, (int)n_ids);
    return LORAC_STATUS_OK;
}

int tok_set_token(lorac_tokenizer_t *tok, int32_t id, const char *s, size_t len, uint8_t flag) {
    if (!tok->tokens[id].s) {
        char *copy = malloc(len + 1);
        if (!copy) return -1;
        memcpy(copy, s, len);
        copy[len] = '\0';
        tok->tokens[id].s = copy;
        tok->tokens[id].len = (int32_t)len;
    }
    tok->flags[id] |= flag;
    return 0;
}

int32_t tok_model_lookup(const lorac_tokenizer_t *tok, const char *s, size_t len) {
    int32_t id = tok_strmap_get(&tok->vocab_map, tok->tokens, s, len);
    return (id >= 0 && (tok->flags[id] & TOK_F_MODEL)) ? id : -1;
}

void tok_find_byte_ids(lorac_tokenizer_t *tok) {
    static const char hex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; b++) {
        char name[7] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>', 0};
        tok->byte_ids[b] = tok_model_lookup(tok, name, 6);
    }
}

char *tok_strndup(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}
