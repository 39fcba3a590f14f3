/* Decoding: ids -> token strings -> the tokenizer.json decoder chain ->
 * UTF-8 text, as HF tokenizers' Tokenizer::decode. Each decoder step maps a
 * list of strings to a list of strings (decode_chain), and the result is
 * joined. Also the per-token byte helper used for streaming and the small
 * accessors. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

/* A list of byte strings stored back to back in one buffer. */
typedef struct {
    tok_buf_t buf;
    size_t *off, *len;
    size_t n, cap;
} strlist_t;

static void sl_free(strlist_t *l) { free(l->buf.p); free(l->off); free(l->len); memset(l, 0, sizeof *l); }

static int sl_new(strlist_t *l) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        size_t *off = realloc(l->off, cap * sizeof *off);
        if (off) l->off = off;
        size_t *len = realloc(l->len, cap * sizeof *len);
        if (len) l->len = len;
        if (!off || !len) return -1;
        l->cap = cap;
    }
    l->off[l->n] = l->buf.n;
    l->len[l->n] = 0;
    l->n++;
    return tok_buf_add(&l->buf, "", 0);
}

static int sl_add(strlist_t *l, const void *data, size_t n) { /* appends to the last string */
    l->len[l->n - 1] += n;
    return tok_buf_add(&l->buf, data, n);
}

static const char *sl_str(const strlist_t *l, size_t i) { return l->buf.p + l->off[i]; }

static int byte_token(const char *s, size_t n) { /* "<0xNN>" -> NN, else -1 */
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static const char k_replacement_char[] = "\xef\xbf\xbd"; /* U+FFFD */

/* Length of the valid UTF-8 character at s, or 0 with *bad set to the
 * length of the maximal invalid subpart (Rust's from_utf8_lossy rule). */
static size_t utf8_valid_char(const unsigned char *s, size_t n, size_t *bad) {
    unsigned c = s[0];
    size_t need;
    unsigned lo = 0x80, hi = 0xbf;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) need = 1;
    else if (c >= 0xe0 && c <= 0xef) { need = 2; if (c == 0xe0) lo = 0xa0; if (c == 0xed) hi = 0x9f; }
    else if (c >= 0xf0 && c <= 0xf4) { need = 3; if (c == 0xf0) lo = 0x90; if (c == 0xf4) hi = 0x8f; }
    else { *bad = 1; return 0; }
    size_t k = 1;
    for (; k <= need && k < n; k++) {
        unsigned lo_k = k == 1 ? lo : 0x80, hi_k = k == 1 ? hi : 0xbf;
        if (s[k] < lo_k || s[k] > hi_k) break;
    }
    if (k == need + 1) return k;
    *bad = k;
    return 0;
}

static int lossy_append(tok_buf_t *out, const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        size_t bad = 0, ok = utf8_valid_char((const unsigned char *)s + i, n - i, &bad);
        if (ok) {
            if (tok_buf_add(out, s + i, ok)) return -1;
            i += ok;
        } else {
            if (tok_buf_add(out, k_replacement_char, 3)) return -1;
            i += bad;
        }
    }
    return 0;
}

static int replace_append(strlist_t *l, const char *s, size_t n, const char *from, size_t fn,
                          const char *to, size_t tn) {
    size_t i = 0, last = 0;
    while (fn > 0 && i + fn <= n) {
        if (memcmp(s + i, from, fn) == 0) {
            if (sl_add(l, s + last, i - last) || sl_add(l, to, tn)) return -1;
            i += fn;
            last = i;
        } else {
            i++;
        }
    }
    return sl_add(l, s + last, n - last);
}

/* One decoder step. streaming: per-token bytes for token_bytes (no strip,
 * no first-token rule, byte tokens stay raw bytes). */
static int dec_step(const tok_dec_t *d, const strlist_t *in, strlist_t *out, bool streaming) {
    const tok_bytemap_t *bm = tok_bytemap();
    switch (d->type) {
    case TOK_DEC_FUSE:
        if (sl_new(out)) return -1;
        for (size_t i = 0; i < in->n; i++) if (sl_add(out, sl_str(in, i), in->len[i])) return -1;
        return 0;
    case TOK_DEC_BYTELEVEL: /* all tokens -> one string of the mapped-back bytes */
        if (sl_new(out)) return -1;
        for (size_t i = 0; i < in->n; i++) {
            const unsigned char *s = (const unsigned char *)sl_str(in, i);
            size_t n = in->len[i], start = out->buf.n;
            bool all = true;
            for (size_t k = 0; k < n && all;) {
                uint32_t cp;
                int cl = tok_utf8_char(s + k, n - k, &cp);
                if (cp >= 324 || bm->cp_to_byte[cp] < 0) { all = false; break; }
                char b = (char)bm->cp_to_byte[cp];
                if (sl_add(out, &b, 1)) return -1;
                k += (size_t)cl;
            }
            if (!all) { /* HF keeps such a token's own bytes */
                out->len[out->n - 1] -= out->buf.n - start;
                out->buf.n = start;
                if (sl_add(out, s, n)) return -1;
            }
        }
        return 0;
    case TOK_DEC_BYTEFALLBACK: {
        size_t run = 0; /* pending byte tokens in the current output string */
        for (size_t i = 0; i <= in->n; i++) {
            int b = i < in->n ? byte_token(sl_str(in, i), in->len[i]) : -1;
            if (b >= 0) {
                if (run == 0 && sl_new(out)) return -1;
                char c = (char)b;
                if (sl_add(out, &c, 1)) return -1;
                run++;
                continue;
            }
            if (run > 0 && !streaming) { /* invalid UTF-8 -> one U+FFFD per byte */
                size_t n = out->len[out->n - 1];
                if (!lorac_utf8_valid(sl_str(out, out->n - 1), n)) {
                    out->buf.n = out->off[out->n - 1];
                    out->len[out->n - 1] = 0;
                    for (size_t k = 0; k < run; k++) if (sl_add(out, k_replacement_char, 3)) return -1;
                }
            }
            run = 0;
            if (i < in->n && (sl_new(out) || sl_add(out, sl_str(in, i), in->len[i]))) return -1;
        }
        return 0;
    }
    default:
        break;
    }
    for (size_t i = 0; i < in->n; i++) {
        const char *s = sl_str(in, i);
        size_t n = in->len[i];
        if (sl_new(out)) return -1;
        if (d->type == TOK_DEC_REPLACE) {
            if (replace_append(out, s, n, d->a, d->alen, d->b, d->blen)) return -1;
        } else if (d->type == TOK_DEC_METASPACE) {
            /* HF drops every replacement char of the first token (prepended
             * space) and turns the others into spaces */
            bool first = i == 0 && d->prepend != TOK_PREPEND_NEVER && !streaming;
            if (replace_append(out, s, n, d->a, d->alen, first ? "" : " ", first ? 0 : 1)) return -1;
        } else { /* STRIP: up to start/stop copies of the content char */
            size_t b = 0, e = n;
            for (int32_t k = 0; !streaming && k < d->start && e - b >= d->alen && memcmp(s + b, d->a, d->alen) == 0; k++) b += d->alen;
            for (int32_t k = 0; !streaming && k < d->stop && e - b >= d->alen && memcmp(s + e - d->alen, d->a, d->alen) == 0; k++) e -= d->alen;
            if (sl_add(out, s + b, e - b)) return -1;
        }
    }
    return 0;
}

static bool valid_id(const lorac_tokenizer_t *tok, int32_t id) {
    return tok && id >= 0 && id < tok->n_ids && tok->tokens[id].s;
}

/* Runs the decoder chain on `in`; the joined result is appended to out. */
static int run_chain(const lorac_tokenizer_t *tok, strlist_t *in, tok_buf_t *out, bool streaming) {
    strlist_t tmp = {0};
    int rc = 0;
    for (int i = 0; i < tok->n_decs && !rc; i++) {
        tmp.n = 0;
        tmp.buf.n = 0;
        rc = dec_step(&tok->decs[i], in, &tmp, streaming);
        strlist_t t = *in; *in = tmp; tmp = t;
    }
    for (size_t i = 0; i < in->n && !rc; i++) {
        if (!tok->has_decoder && i > 0) rc = tok_buf_add(out, " ", 1); /* HF joins with spaces */
        if (!rc) rc = tok_buf_add(out, sl_str(in, i), in->len[i]);
    }
    sl_free(&tmp);
    return rc;
}

lorac_status_t lorac_tokenizer_decode(const lorac_tokenizer_t *tok, const int32_t *ids,
                                      size_t n_ids, bool skip_special, char **text, size_t *len) {
    *text = NULL;
    if (len) *len = 0;
    for (size_t i = 0; i < n_ids; i++)
        if (!valid_id(tok, ids[i]))
            return lorac_error(LORAC_STATUS_INVALID_ARG, "tokenizer decode: id %d at position %zu is not in the vocabulary (size %d)",
                               (int)ids[i], i, tok ? (int)tok->n_ids : 0);
    strlist_t l = {0};
    tok_buf_t raw = {0}, res = {0};
    int rc = 0;
    for (size_t i = 0; i < n_ids && !rc; i++) {
        if (skip_special && (tok->flags[ids[i]] & TOK_F_SPECIAL)) continue;
        rc = sl_new(&l) || sl_add(&l, tok->tokens[ids[i]].s, (size_t)tok->tokens[ids[i]].len);
    }
    if (!rc) rc = run_chain(tok, &l, &raw, false);
    if (!rc) rc = lossy_append(&res, raw.p ? raw.p : "", raw.n) || tok_buf_add(&res, "", 0);
    sl_free(&l);
    free(raw.p);
    if (rc) { free(res.p); return lorac_error(LORAC_STATUS_NOMEM, "tokenizer decode: out of memory"); }
    *text = res.p;
    if (len) *len = res.n;
    return LORAC_STATUS_OK;
}

int32_t lorac_tokenizer_token_bytes(const lorac_tokenizer_t *tok, int32_t id, char *buf, int32_t cap) {
    if (!valid_id(tok, id) || cap < 0) return -1;
    strlist_t l = {0};
    tok_buf_t out = {0};
    int rc = sl_new(&l) || sl_add(&l, tok->tokens[id].s, (size_t)tok->tokens[id].len);
    if (!rc) rc = run_chain(tok, &l, &out, true);
    sl_free(&l);
    if (rc) { free(out.p); return -1; }
    int32_t n = out.n < (size_t)cap ? (int32_t)out.n : cap;
    if (n > 0) memcpy(buf, out.p, (size_t)n);
    free(out.p);
    return n;
}

int32_t lorac_tokenizer_vocab_size(const lorac_tokenizer_t *tok) { return tok ? tok->n_ids : 0; }
int32_t lorac_tokenizer_bos_id(const lorac_tokenizer_t *tok) { return tok ? tok->bos_id : -1; }
int32_t lorac_tokenizer_eos_id(const lorac_tokenizer_t *tok) { return tok ? tok->eos_id : -1; }

int lorac_tokenizer_strips_leading_space(const lorac_tokenizer_t *tok) {
    for (int i = 0; tok && i < tok->n_decs; i++) {
        const tok_dec_t *d = &tok->decs[i];
        if (d->type == TOK_DEC_STRIP && d->start > 0 && d->alen == 1 && d->a[0] == ' ') return 1;
        if (d->type == TOK_DEC_METASPACE && d->prepend != TOK_PREPEND_NEVER) return 1;
    }
    return 0;
}

int32_t lorac_tokenizer_token_id(const lorac_tokenizer_t *tok, const char *token) {
    if (!tok || !token) return -1;
    return tok_strmap_get(&tok->vocab_map, tok->tokens, token, strlen(token));
}

const char *lorac_tokenizer_token_str(const lorac_tokenizer_t *tok, int32_t id) {
    return valid_id(tok, id) ? tok->tokens[id].s : NULL;
}

int lorac_tokenizer_is_special(const lorac_tokenizer_t *tok, int32_t id) {
    return valid_id(tok, id) && (tok->flags[id] & TOK_F_SPECIAL) ? 1 : 0;
}
