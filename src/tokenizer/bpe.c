/* The BPE merge engine.
 *
 * A pre-token can be huge (100k spaces is a single pre-token under some
 * regexes, and a SentencePiece tokenizer without pre-tokenizer makes the
 * whole text one word), so merging must not rescan the word after every
 * merge (O(n^2)). As in HF tokenizers' Word::merge_all, the symbols form a
 * doubly linked list and candidate merges of adjacent pairs sit in a binary
 * min-heap keyed by (priority, position): each merge pops one entry and pushes
 * at most two, so a word of n symbols costs O(n log n). Stale entries (a side
 * of the pair already merged away) are detected on pop and skipped.
 *
 * Priority: the merge's rank for tokenizer.json (position in the merges
 * list), minus the merged piece's score for llama2.c; ties go to the leftmost
 * pair, which is what both HF (rank, pos ordering) and run.c (first maximum
 * in a left-to-right scan) do. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

struct tok_heap_entry {
    double prio;
    uint32_t pos;    /* start position of the left symbol: orders ties */
    int32_t left;    /* symbol index of the left side */
    int32_t a, b;    /* ids the pair had when queued */
};

void tok_bpe_scratch_free(tok_bpe_scratch_t *s) {
    free(s->id); free(s->prev); free(s->next); free(s->pos); free(s->heap);
    memset(s, 0, sizeof *s);
}

static int scratch_reserve(tok_bpe_scratch_t *s, size_t n) {
    if (n <= s->cap) return 0;
    size_t cap = s->cap ? s->cap : 64;
    while (cap < n) cap *= 2;
    int32_t *id = realloc(s->id, cap * sizeof *id);
    if (id) s->id = id;
    int32_t *prev = realloc(s->prev, cap * sizeof *prev);
    if (prev) s->prev = prev;
    int32_t *next = realloc(s->next, cap * sizeof *next);
    if (next) s->next = next;
    uint32_t *pos = realloc(s->pos, cap * sizeof *pos);
    if (pos) s->pos = pos;
    /* the heap grows by at most one entry per merge: 2n bounds it */
    struct tok_heap_entry *heap = realloc(s->heap, 2 * cap * sizeof *heap);
    if (heap) s->heap = heap;
    if (!id || !prev || !next || !pos || !heap) return -1;
    s->cap = cap;
    return 0;
}

static bool heap_less(const struct tok_heap_entry *x, const struct tok_heap_entry *y) {
    if (x->prio != y->prio) return x->prio < y->prio;
    return x->pos < y->pos;
}

static void heap_push(struct tok_heap_entry *h, size_t *n, struct tok_heap_entry e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_less(&e, &h[parent])) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = e;
}

static struct tok_heap_entry heap_pop(struct tok_heap_entry *h, size_t *n) {
    struct tok_heap_entry top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c])) c++;
        if (!heap_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0) h[i] = last;
    return top;
}

/* Queues the pair starting at symbol `left` if it is a known merge. */
static void queue_pair(const lorac_tokenizer_t *tok, tok_bpe_scratch_t *s, size_t *hn, int32_t left) {
    int32_t right = s->next[left];
    if (left < 0 || right < 0) return;
    int64_t slot = tok_pairmap_find(&tok->merges, s->id[left], s->id[right]);
    if (slot < 0) return;
    struct tok_heap_entry e = {tok->merges.prio[slot], s->pos[left], left, s->id[left], s->id[right]};
    heap_push(s->heap, hn, e);
}

/* Appends the initial symbols of one character: its vocab id, else its bytes
 * as <0xNN> tokens (byte_fallback), else unk (fused with a previous unk when
 * fuse_unk), else nothing (HF drops characters it cannot represent when the
 * model has no unk token). *pending_unk carries an unk not yet emitted. */
static void add_char(const lorac_tokenizer_t *tok, tok_bpe_scratch_t *s, size_t *n,
                     const char *c, int clen, uint32_t pos, int32_t *pending_unk) {
    int32_t id = tok_model_lookup(tok, c, (size_t)clen);
    if (id < 0 && tok->byte_fallback) {
        bool all = true;
        for (int i = 0; i < clen; i++) all = all && tok->byte_ids[(unsigned char)c[i]] >= 0;
        if (all) {
            if (*pending_unk >= 0) { s->id[*n] = tok->unk_id; s->pos[*n] = (uint32_t)*pending_unk; (*n)++; *pending_unk = -1; }
            for (int i = 0; i < clen; i++) {
                s->id[*n] = tok->byte_ids[(unsigned char)c[i]];
                s->pos[*n] = pos + (uint32_t)i;
                (*n)++;
            }
            return;
        }
    }
    if (id < 0) {
        if (tok->unk_id < 0) return;
        if (*pending_unk >= 0 && tok->fuse_unk) return; /* extends the pending unk */
        if (*pending_unk >= 0) { s->id[*n] = tok->unk_id; s->pos[*n] = (uint32_t)*pending_unk; (*n)++; }
        *pending_unk = (int32_t)pos;
        return;
    }
    if (*pending_unk >= 0) { s->id[*n] = tok->unk_id; s->pos[*n] = (uint32_t)*pending_unk; (*n)++; *pending_unk = -1; }
    s->id[*n] = id;
    s->pos[*n] = pos;
    (*n)++;
}

lorac_status_t tok_bpe_word(const lorac_tokenizer_t *tok, const char *w, size_t n,
                            tok_bpe_scratch_t *s, tok_ids_t *out) {
    if (n == 0) return LORAC_STATUS_OK;
    if (n > UINT32_MAX / 2) return lorac_error(LORAC_STATUS_INVALID_ARG, "tokenizer: pre-token of %zu bytes is too long", n);
    if (tok->ignore_merges) { /* a pre-token that is itself a token is emitted whole */
        int32_t id = tok_model_lookup(tok, w, n);
        if (id >= 0) return tok_ids_push(out, id) ? lorac_error(LORAC_STATUS_NOMEM, "tokenizer: out of memory") : LORAC_STATUS_OK;
    }
    /* at most one symbol per byte (+1 for a trailing pending unk) */
    if (scratch_reserve(s, n + 2) != 0) return lorac_error(LORAC_STATUS_NOMEM, "tokenizer: out of memory");
    size_t ns = 0;
    int32_t pending_unk = -1;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int clen = tok_utf8_char((const unsigned char *)w + i, n - i, &cp);
        add_char(tok, s, &ns, w + i, clen, (uint32_t)i, &pending_unk);
        i += (size_t)clen;
    }
    if (pending_unk >= 0) { s->id[ns] = tok->unk_id; s->pos[ns] = (uint32_t)pending_unk; ns++; }
    for (size_t i = 0; i < ns; i++) {
        s->prev[i] = (int32_t)i - 1;
        s->next[i] = i + 1 < ns ? (int32_t)i + 1 : -1;
    }
    size_t hn = 0;
    for (size_t i = 0; i + 1 < ns; i++) queue_pair(tok, s, &hn, (int32_t)i);
    while (hn > 0) {
        struct tok_heap_entry e = heap_pop(s->heap, &hn);
        int32_t l = e.left, r = s->next[l];
        /* stale: the left symbol was absorbed (id -1), or either side changed */
        if (s->id[l] != e.a || r < 0 || s->id[r] != e.b) continue;
        int64_t slot = tok_pairmap_find(&tok->merges, e.a, e.b);
        s->id[l] = tok->merges.new_id[slot];
        s->id[r] = -1;
        s->next[l] = s->next[r];
        if (s->next[r] >= 0) s->prev[s->next[r]] = l;
        if (s->prev[l] >= 0) queue_pair(tok, s, &hn, s->prev[l]);
        queue_pair(tok, s, &hn, l);
    }
    for (int32_t i = ns ? 0 : -1; i >= 0; i = s->next[i])
        if (tok_ids_push(out, s->id[i])) return lorac_error(LORAC_STATUS_NOMEM, "tokenizer: out of memory");
    return LORAC_STATUS_OK;
}
