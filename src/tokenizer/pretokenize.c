/* Normalizers and pre-tokenizers: turn one text segment (between added
 * tokens) into the pieces the BPE model sees.
 *
 * Regexes come from the tokenizer.json and run through PCRE2 with UTF and UCP
 * (so \s, \p{L}, \p{N} are Unicode-aware as in Oniguruma, which HF uses),
 * JIT-compiled when available. Every step copies its output pieces into a
 * fresh buffer: linear in the segment length. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

/* The pattern of HF's ByteLevel pre-tokenizer (GPT-2's encoder.py). */
const char tok_gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

pcre2_code *tok_regex_compile(const char *pattern, size_t len, bool literal, const char *label,
                              lorac_status_t *status) {
    int err;
    PCRE2_SIZE erroff;
    /* PCRE2_LITERAL refuses PCRE2_UCP (meaningless for a literal) */
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, len, opts, &err, &erroff, NULL);
    if (!re) {
        char msg[256];
        pcre2_get_error_message(err, (PCRE2_UCHAR *)msg, sizeof msg);
        *status = lorac_error(LORAC_STATUS_FORMAT, "%s: bad regex in pre_tokenizer at offset %zu: %s",
                              label, (size_t)erroff, msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional: falls back to the interpreter */
    *status = LORAC_STATUS_OK;
    return re;
}

void tok_pieces_free(tok_pieces_t *p) {
    free(p->buf.p); free(p->off); free(p->len); free(p->origin);
    memset(p, 0, sizeof *p);
}

static void pieces_reset(tok_pieces_t *p) {
    p->n = 0;
    p->buf.n = 0;
}

static int pieces_new(tok_pieces_t *p, const char *data, size_t len, bool origin) {
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        size_t *off = realloc(p->off, cap * sizeof *off);
        if (off) p->off = off;
        size_t *ln = realloc(p->len, cap * sizeof *ln);
        if (ln) p->len = ln;
        bool *org = realloc(p->origin, cap * sizeof *org);
        if (org) p->origin = org;
        if (!off || !ln || !org) return -1;
        p->cap = cap;
    }
    p->off[p->n] = p->buf.n;
    p->len[p->n] = len;
    p->origin[p->n] = origin;
    p->n++;
    return tok_buf_add(&p->buf, data, len);
}

/* Appends bytes to the last piece (its bytes are the last in the buffer). */
static int pieces_extend(tok_pieces_t *p, const char *data, size_t len) {
    p->len[p->n - 1] += len;
    return tok_buf_add(&p->buf, data, len);
}

/* Emits one part of a split according to the delimiter behavior. *open:
 * the previous part was a delimiter (for MergedWithNext / Contiguous). */
static int emit_part(tok_pieces_t *out, const char *s, size_t len, bool delim, bool origin,
                     tok_split_behavior_t b, bool *open, bool *have_prev) {
    if (len == 0) return 0;
    int rc = 0;
    switch (b) {
    case TOK_SPLIT_ISOLATED: rc = pieces_new(out, s, len, origin); break;
    case TOK_SPLIT_REMOVED: if (!delim) rc = pieces_new(out, s, len, origin); break;
    case TOK_SPLIT_MERGED_PREV:
        rc = (delim && *have_prev) ? pieces_extend(out, s, len) : pieces_new(out, s, len, origin);
        break;
    case TOK_SPLIT_MERGED_NEXT:
        rc = (!delim && *open) ? pieces_extend(out, s, len) : pieces_new(out, s, len, origin);
        break;
    case TOK_SPLIT_CONTIGUOUS:
        rc = (delim && *open) ? pieces_extend(out, s, len) : pieces_new(out, s, len, origin);
        break;
    }
    if (b != TOK_SPLIT_REMOVED || !delim) *have_prev = true;
    *open = delim;
    return rc;
}

static lorac_status_t split_piece(const tok_pre_t *pre, const char *s, size_t n, bool origin,
                                  tok_pieces_t *out, pcre2_match_data *md, pcre2_match_context *mctx) {
    size_t off = 0, prev_end = 0;
    bool open = false, have_prev = false;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    while (off < n) {
        /* NO_UTF_CHECK: the subject is valid UTF-8 (checked once on input);
         * a check per call would make a long piece quadratic. */
        int rc = pcre2_match(pre->re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, md, mctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            char msg[128];
            pcre2_get_error_message(rc, (PCRE2_UCHAR *)msg, sizeof msg);
            return lorac_error(LORAC_STATUS_INVALID_ARG, "tokenizer: pre-tokenizer regex failed: %s", msg);
        }
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) { /* empty match: skip one character */
            off = ms + (size_t)tok_utf8_len((unsigned char)s[ms]);
            continue;
        }
        bool o1 = origin && prev_end == 0, o2 = origin && ms == 0;
        if (emit_part(out, s + prev_end, ms - prev_end, pre->invert, o1, pre->behavior, &open, &have_prev) ||
            emit_part(out, s + ms, me - ms, !pre->invert, o2, pre->behavior, &open, &have_prev))
            return lorac_error(LORAC_STATUS_NOMEM, "tokenizer: out of memory");
        prev_end = off = me;
    }
    if (emit_part(out, s + prev_end, n - prev_end, pre->invert, origin && prev_end == 0, pre->behavior,
                  &open, &have_prev))
        return lorac_error(LORAC_STATUS_NOMEM, "tokenizer: out of memory");
    return LORAC_STATUS_OK;
}

static bool starts_with(const char *s, size_t n, const char *p, size_t pn) {
    return n >= pn && memcmp(s, p, pn) == 0;
}

/* Normalizers may lengthen text (Replace " " by "\xe2\x96\x81" triples a run
 * of spaces), but a chain of Replaces whose contents hold their own
 * patterns multiplies it at every step: 8 of them turned a 46-byte text into
 * over a gigabyte in a fuzzer's tokenizer.json. Past this factor of the input
 * (plus a constant for Prepend) the definition, not the text, is at fault. */
#define NORM_MAX_GROWTH 64
#define NORM_MAX_EXTRA 4096

/* Replaces every `from` by `to` in s, appending to b; -1 when out of
 * memory, -2 when b would grow past `limit` bytes. */
static int replace_into(tok_buf_t *b, const char *s, size_t n, const char *from, size_t fn,
                        const char *to, size_t tn, size_t limit) {
    size_t i = 0, last = 0;
    while (fn > 0 && i + fn <= n) {
        if (memcmp(s + i, from, fn) == 0) {
            if (b->n + (i - last) + tn > limit) return -2;
            if (tok_buf_add(b, s + last, i - last) || tok_buf_add(b, to, tn)) return -1;
            i += fn;
            last = i;
        } else {
            i++;
        }
    }
    if (b->n + (n - last) > limit) return -2;
    return tok_buf_add(b, s + last, n - last);
}


/* One pre-tokenizer step over every piece of `in`, into `out`. */
static lorac_status_t run_step(const tok_pre_t *pre, const tok_pieces_t *in, tok_pieces_t *out,
                               pcre2_match_data *md, pcre2_match_context *mctx) {
    const tok_bytemap_t *bm = tok_bytemap();
    for (size_t i = 0; i < in->n; i++) {
        const char *s = in->buf.p + in->off[i];
        size_t n = in->len[i];
        bool origin = in->origin[i];
        int rc = 0;
        switch (pre->type) {
        case TOK_PRE_SPLIT: {
            lorac_status_t st = split_piece(pre, s, n, origin, out, md, mctx);
            if (st) return st;
            break;
        }
        case TOK_PRE_PREFIX_SPACE: /* ByteLevel add_prefix_space */
            rc = pieces_new(out, " ", starts_with(s, n, " ", 1) ? 0 : 1, origin) || pieces_extend(out, s, n);
            break;
        case TOK_PRE_BYTEMAP: /* every byte becomes its printable stand-in */
            rc = pieces_new(out, "", 0, origin);
            for (size_t k = 0; k < n && !rc; k++) {
                unsigned char c = (unsigned char)s[k];
                rc = pieces_extend(out, bm->utf8[c], bm->utf8_len[c]);
            }
            break;
        case TOK_PRE_METASPACE: { /* spaces -> "▁", then maybe prepend "▁" */
            bool prepend = pre->prepend == TOK_PREPEND_ALWAYS || (pre->prepend == TOK_PREPEND_FIRST && origin);
            rc = pieces_new(out, "", 0, origin);
            if (!rc) {
                size_t before = out->buf.n;
                rc = replace_into(&out->buf, s, n, " ", 1, pre->repl, pre->repl_len, SIZE_MAX); /* at most 4x */
                out->len[out->n - 1] += out->buf.n - before;
            }
            const char *p = out->buf.p + out->off[out->n - 1];
            if (!rc && prepend && !starts_with(p, out->len[out->n - 1], pre->repl, pre->repl_len)) {
                /* insert in front: rebuild the piece */
                size_t plen = out->len[out->n - 1];
                char *tmp = malloc(plen + 1);
                if (!tmp) return lorac_error(LORAC_STATUS_NOMEM, "tokenizer: out of memory");
                memcpy(tmp, p, plen);
                out->buf.n = out->off[out->n - 1];
                out->len[out->n - 1] = 0;
                rc = pieces_extend(out, pre->repl, pre->repl_len) || pieces_extend(out, tmp, plen);
                free(tmp);
            }
            if (!rc && out->len[out->n - 1] == 0) out->n--; /* HF drops empty pieces */
            break;
        }
        }
        if (rc) return lorac_error(LORAC_STATUS_NOMEM, "tokenizer: out of memory");
        if (out->n > 0 && out->len[out->n - 1] == 0) out->n--;
    }
    return LORAC_STATUS_OK;
}

lorac_status_t tok_pretokenize(const lorac_tokenizer_t *tok, const char *s, size_t n,
                               bool at_origin, tok_pieces_t ws[2], pcre2_match_data *md,
                               pcre2_match_context *mctx, tok_pieces_t **result) {
    int k = 0;
    pieces_reset(&ws[0]);
    pieces_reset(&ws[1]);
    size_t n_in = n, limit = n > (SIZE_MAX - NORM_MAX_EXTRA) / NORM_MAX_GROWTH ? SIZE_MAX
                                                                               : n * NORM_MAX_GROWTH + NORM_MAX_EXTRA;
    for (int i = 0; i < tok->n_norms; i++) {
        const tok_norm_t *nm = &tok->norms[i];
        tok_buf_t *b = &ws[k].buf;
        b->n = 0;
        int rc = 0;
        if (nm->type == TOK_NORM_PREPEND) { /* HF prepends only to non-empty text */
            rc = n && nm->alen > limit - n ? -2
               : n ? (tok_buf_add(b, nm->a, nm->alen) || tok_buf_add(b, s, n)) : tok_buf_add(b, "", 0);
        } else if (nm->type == TOK_NORM_NFC) {
            rc = tok_nfc_into(b, s, n, limit);
        } else {
            rc = replace_into(b, s, n, nm->a, nm->alen, nm->b, nm->blen, limit);
        }
        if (rc == -2)
            return lorac_error(LORAC_STATUS_FORMAT,
                               "tokenizer: normalizer %d makes %zu bytes of text longer than %zu bytes (%dx): "
                               "its replacements multiply the text",
                               i, n_in, limit, NORM_MAX_GROWTH);
        if (rc) return lorac_error(LORAC_STATUS_NOMEM, "tokenizer: out of memory");
        s = b->p;
        n = b->n;
        k ^= 1;
    }
    tok_pieces_t *cur = &ws[k], *next = &ws[k ^ 1];
    *result = cur;
    pieces_reset(cur);
    if (n == 0) return LORAC_STATUS_OK;
    if (pieces_new(cur, s, n, at_origin)) return lorac_error(LORAC_STATUS_NOMEM, "tokenizer: out of memory");
    for (int i = 0; i < tok->n_pres; i++) {
        pieces_reset(next);
        lorac_status_t st = run_step(&tok->pres[i], cur, next, md, mctx);
        if (st) return st;
        tok_pieces_t *t = cur; cur = next; next = t;
    }
    *result = cur;
    return LORAC_STATUS_OK;
}
