/* Added tokens: matched on the raw text before normalization and the model,
 * leftmost-longest (as HF's aho-corasick AddedVocabulary), never split.
 *
 * The contents live in a byte trie whose edges are a hash map of
 * (node, byte) -> child; matching walks it from each position, so a text of n
 * bytes costs O(n * longest added token). Flags follow HF: single_word
 * rejects a match touching a word character, lstrip/rstrip make the match
 * swallow the whitespace on that side (which then never reaches the model). */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

static uint32_t hash_edge(uint64_t x) {
    x ^= x >> 31; x *= 0x7fb5d329728ea185ull; x ^= x >> 27; x *= 0x81dadef4bc2dd44dull; x ^= x >> 33;
    return (uint32_t)x;
}

void tok_trie_free(tok_trie_t *t) {
    free(t->keys); free(t->child); free(t->term);
    memset(t, 0, sizeof *t);
}

static int32_t trie_child(const tok_trie_t *t, int32_t node, unsigned char c) {
    uint64_t key = (((uint64_t)node << 8) | c) + 1;
    for (uint32_t i = hash_edge(key) & t->mask;; i = (i + 1) & t->mask) {
        if (t->keys[i] == key) return t->child[i];
        if (t->keys[i] == 0) return -1;
    }
}

static void trie_set_child(tok_trie_t *t, int32_t node, unsigned char c, int32_t child) {
    uint64_t key = (((uint64_t)node << 8) | c) + 1;
    uint32_t i = hash_edge(key) & t->mask;
    while (t->keys[i] != 0) i = (i + 1) & t->mask;
    t->keys[i] = key;
    t->child[i] = child;
}

lorac_status_t tok_trie_build(lorac_tokenizer_t *tok, const char *label) {
    tok_trie_t *t = &tok->trie;
    size_t total = 1;
    for (int32_t i = 0; i < tok->n_added; i++) total += (size_t)tok->tokens[tok->added[i].id].len;
    if (total > INT32_MAX / 4) return lorac_error(LORAC_STATUS_FORMAT, "%s: added tokens too long", label);
    uint32_t size = 16;
    while (size < total * 2) size *= 2;
    t->keys = calloc(size, sizeof *t->keys);
    t->child = malloc(size * sizeof *t->child);
    t->term = malloc(total * sizeof *t->term);
    if (!t->keys || !t->child || !t->term) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", label);
    t->mask = size - 1;
    t->n_nodes = 1;
    t->cap_nodes = (int32_t)total;
    t->term[0] = -1;
    for (int32_t i = 0; i < tok->n_added; i++) {
        const tok_str_t *s = &tok->tokens[tok->added[i].id];
        if (s->len == 0) continue; /* an empty added token can never match */
        int32_t node = 0;
        for (int32_t k = 0; k < s->len; k++) {
            int32_t c = trie_child(t, node, (unsigned char)s->s[k]);
            if (c < 0) {
                c = t->n_nodes++;
                t->term[c] = -1;
                trie_set_child(t, node, (unsigned char)s->s[k], c);
            }
            node = c;
        }
        t->term[node] = i;
    }
    return LORAC_STATUS_OK;
}

/* Unicode White_Space (Rust's char::is_whitespace). */
static bool is_space_cp(uint32_t c) {
    return (c >= 9 && c <= 13) || c == ' ' || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

/* Approximates Rust's char::is_alphanumeric: ASCII letters/digits, and every
 * non-ASCII non-space character above Latin-1 punctuation. Only single_word
 * uses it; no tokenizer we target sets that flag. */
static bool is_word_cp(uint32_t c) {
    if (c < 0x80) return (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z');
    return c >= 0xc0 && !is_space_cp(c);
}

/* Code point ending just before byte `end`. */
static uint32_t cp_before(const char *text, size_t end, size_t *start) {
    size_t i = end - 1;
    while (i > 0 && ((unsigned char)text[i] & 0xc0) == 0x80) i--;
    uint32_t cp;
    tok_utf8_char((const unsigned char *)text + i, end - i, &cp);
    *start = i;
    return cp;
}

static int push_seg(tok_segment_t **segs, size_t *n, size_t *cap, size_t start, size_t len, int32_t id) {
    if (len == 0 && id < 0) return 0;
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 16;
        tok_segment_t *s = realloc(*segs, c * sizeof *s);
        if (!s) return -1;
        *segs = s;
        *cap = c;
    }
    (*segs)[(*n)++] = (tok_segment_t){start, len, id};
    return 0;
}

lorac_status_t tok_split_added(const lorac_tokenizer_t *tok, const char *text, size_t len,
                               tok_segment_t **segs, size_t *n_segs) {
    size_t n = 0, cap = 0, done = 0; /* text[done..] not yet assigned to a segment */
    *segs = NULL;
    const tok_trie_t *t = &tok->trie;
    size_t i = 0;
    while (tok->match_added && t->n_nodes > 1 && i < len) {
        int32_t node = 0, best = -1;
        size_t best_len = 0;
        for (size_t k = i; k < len; k++) {
            node = trie_child(t, node, (unsigned char)text[k]);
            if (node < 0) break;
            if (t->term[node] >= 0) { best = t->term[node]; best_len = k + 1 - i; }
        }
        if (best < 0) { i++; continue; }
        const tok_added_t *a = &tok->added[best];
        size_t start = i, end = i + best_len;
        if (a->single_word) {
            size_t s0;
            uint32_t cp;
            bool ok = !(start > 0 && is_word_cp(cp_before(text, start, &s0)));
            if (ok && end < len) {
                tok_utf8_char((const unsigned char *)text + end, len - end, &cp);
                ok = !is_word_cp(cp);
            }
            if (!ok) { i = end; continue; } /* left to the model, search resumes after it */
        }
        if (a->lstrip) {
            while (start > done) {
                size_t s0;
                if (!is_space_cp(cp_before(text, start, &s0))) break;
                start = s0;
            }
        }
        if (a->rstrip) {
            while (end < len) {
                uint32_t cp;
                int l = tok_utf8_char((const unsigned char *)text + end, len - end, &cp);
                if (!is_space_cp(cp)) break;
                end += (size_t)l;
            }
        }
        if (push_seg(segs, &n, &cap, done, start - done, -1) ||
            push_seg(segs, &n, &cap, start, end - start, a->id)) {
            free(*segs); *segs = NULL;
            return lorac_error(LORAC_STATUS_NOMEM, "tokenizer: out of memory");
        }
        done = i = end;
    }
    if (push_seg(segs, &n, &cap, done, len - done, -1)) {
        free(*segs); *segs = NULL;
        return lorac_error(LORAC_STATUS_NOMEM, "tokenizer: out of memory");
    }
    *n_segs = n;
    return LORAC_STATUS_OK;
}
