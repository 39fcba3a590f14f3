/* Encoding: added-token split -> normalize + pre-tokenize -> BPE -> post-
 * processor. Per-call state (PCRE2 match data, JIT stack, scratch buffers)
 * lives on this call's stack, so one tokenizer can encode on many threads. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

typedef struct {
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit;
    tok_pieces_t ws[2];
    tok_bpe_scratch_t bpe;
} encode_state_t;

static void state_free(encode_state_t *st) {
    if (st->md) pcre2_match_data_free(st->md);
    if (st->mctx) pcre2_match_context_free(st->mctx);
    if (st->jit) pcre2_jit_stack_free(st->jit);
    tok_pieces_free(&st->ws[0]);
    tok_pieces_free(&st->ws[1]);
    tok_bpe_scratch_free(&st->bpe);
}

static lorac_status_t state_init(encode_state_t *st) {
    memset(st, 0, sizeof *st);
    st->md = pcre2_match_data_create(1, NULL); /* only the whole match is used */
    st->mctx = pcre2_match_context_create(NULL);
    /* JIT code for lookarounds such as \s+(?!\S) may need more than the
     * default 32 KiB machine-stack area on long pieces. */
    st->jit = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, NULL);
    if (!st->md || !st->mctx) return lorac_error(LORAC_STATUS_NOMEM, "tokenizer: out of memory");
    if (st->jit) pcre2_jit_stack_assign(st->mctx, NULL, st->jit);
    return LORAC_STATUS_OK;
}

static lorac_status_t encode_segment(const lorac_tokenizer_t *tok, encode_state_t *st, const char *s,
                                     size_t n, bool at_origin, tok_ids_t *out) {
    tok_pieces_t *pieces;
    lorac_status_t status = tok_pretokenize(tok, s, n, at_origin, st->ws, st->md, st->mctx, &pieces);
    for (size_t i = 0; status == LORAC_STATUS_OK && i < pieces->n; i++)
        status = tok_bpe_word(tok, pieces->buf.p + pieces->off[i], pieces->len[i], &st->bpe, out);
    return status;
}

lorac_status_t lorac_tokenizer_encode(const lorac_tokenizer_t *tok, const char *text, size_t len,
                                      bool add_special, int32_t **ids, size_t *n_ids) {
    *ids = NULL;
    *n_ids = 0;
    if (!tok || (!text && len > 0)) return lorac_error(LORAC_STATUS_INVALID_ARG, "tokenizer encode: NULL argument");
    if (!lorac_utf8_valid(text, len))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "tokenizer encode: input text is not valid UTF-8");
    tok_ids_t out = {0};
    encode_state_t st;
    lorac_status_t status = state_init(&st);
    tok_segment_t *segs = NULL;
    size_t n_segs = 0;
    if (!status) status = tok_split_added(tok, text ? text : "", len, &segs, &n_segs);
    if (add_special)
        for (int i = 0; !status && i < tok->n_post_prefix; i++)
            if (tok_ids_push(&out, tok->post_prefix[i])) status = lorac_error(LORAC_STATUS_NOMEM, "tokenizer: out of memory");
    for (size_t i = 0; !status && i < n_segs; i++) {
        if (segs[i].id >= 0) {
            if (tok_ids_push(&out, segs[i].id)) status = lorac_error(LORAC_STATUS_NOMEM, "tokenizer: out of memory");
        } else {
            status = encode_segment(tok, &st, text + segs[i].start, segs[i].len, segs[i].start == 0, &out);
        }
    }
    if (add_special)
        for (int i = 0; !status && i < tok->n_post_suffix; i++)
            if (tok_ids_push(&out, tok->post_suffix[i])) status = lorac_error(LORAC_STATUS_NOMEM, "tokenizer: out of memory");
    free(segs);
    state_free(&st);
    if (status) { free(out.v); return status; }
    if (!out.v) { /* empty result: still hand back a valid buffer */
        out.v = malloc(sizeof *out.v);
        if (!out.v) return lorac_error(LORAC_STATUS_NOMEM, "tokenizer: out of memory");
    }
    *ids = out.v;
    *n_ids = out.n;
    return LORAC_STATUS_OK;
}
