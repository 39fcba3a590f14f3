/* A tokenizer's vocabulary as llama.cpp's GGUF describes it; see tok_gguf.h.
 *
 * llama.cpp has two tokenizers that match lorac's: "llama" (SentencePiece's
 * BPE: repeatedly merge the adjacent pair with the highest score whose
 * concatenation is a token, leftmost first; byte fallback through the
 * <0xNN> tokens) and "gpt2" (byte-level BPE by merge rank after a
 * pre-tokenizer that llama.cpp knows by name and has built in). A
 * tokenizer.json of SentencePiece style ranks its merges by the merged
 * piece's score, so the score given to a token is minus the rank of the
 * first merge that makes it; a llama2.c tokenizer keeps its own scores. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_gguf.h"
#include "tokenizer/tok_internal.h"

/* The split patterns of the byte-level pre-tokenizers llama.cpp has, as the
 * tokenizer.json files of those models write them. */
static const char k_llama3_re[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char k_qwen2_re[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static bool pattern_is(const tok_pre_t *p, const char *s) {
    return p->type == TOK_PRE_SPLIT && p->pattern && p->pattern_len == strlen(s) && !memcmp(p->pattern, s, p->pattern_len) &&
           p->behavior == TOK_SPLIT_ISOLATED && !p->invert;
}

/* llama.cpp's name for the byte-level pre-tokenizer steps, or NULL. */
static const char *byte_level_pre(const lorac_tokenizer_t *tok) {
    const tok_pre_t *split[TOK_MAX_PRE];
    int n = 0;
    for (int i = 0; i < tok->n_pres; i++) {
        if (tok->pres[i].type == TOK_PRE_SPLIT) split[n++] = &tok->pres[i];
        else if (tok->pres[i].type != TOK_PRE_BYTEMAP) return NULL; /* a prefix space, a metaspace */
    }
    bool nfc_only = tok->n_norms == 1 && tok->norms[0].type == TOK_NORM_NFC;
    if (tok->n_norms && !nfc_only) return NULL;
    if (n == 1 && pattern_is(split[0], k_qwen2_re)) return "qwen2"; /* Qwen2 has NFC; llama.cpp does none */
    if (nfc_only) return NULL;
    if (n == 1 && pattern_is(split[0], tok_gpt2_regex)) return "gpt-2";
    if (n == 1 && pattern_is(split[0], k_llama3_re)) return "llama-bpe";
    if (n == 2 && pattern_is(split[0], "\\p{N}") && pattern_is(split[1], tok_gpt2_regex)) return "smollm";
    return NULL;
}

/* true when the normalizer or pre-tokenizer puts "▁" before the text */
static bool spm_prefixes_space(const lorac_tokenizer_t *tok) {
    for (int i = 0; i < tok->n_norms; i++)
        if (tok->norms[i].type == TOK_NORM_PREPEND) return true;
    for (int i = 0; i < tok->n_pres; i++)
        if (tok->pres[i].type == TOK_PRE_METASPACE && tok->pres[i].prepend != TOK_PREPEND_NEVER) return true;
    return tok->format == TOK_FORMAT_LLAMA2C;
}

typedef struct {
    double prio;
    int32_t a, b, id;
} merge_t;

static int cmp_merge(const void *x, const void *y) {
    const merge_t *p = x, *q = y;
    return p->prio < q->prio ? -1 : p->prio > q->prio ? 1 : 0;
}

/* The merges in priority order (the first merges first). */
static merge_t *sorted_merges(const lorac_tokenizer_t *tok, int64_t *n) {
    const tok_pairmap_t *m = &tok->merges;
    merge_t *out = malloc((m->count ? m->count : 1) * sizeof *out);
    if (!out) return NULL;
    *n = 0;
    for (uint64_t s = 0; m->keys && s <= m->mask; s++) {
        if (!m->keys[s]) continue;
        uint64_t key = m->keys[s] - 1;
        out[(*n)++] = (merge_t){m->prio[s], (int32_t)(key >> 32), (int32_t)(uint32_t)key, m->new_id[s]};
    }
    qsort(out, (size_t)*n, sizeof *out, cmp_merge);
    return out;
}

lorac_status_t tok_gguf_vocab(const lorac_tokenizer_t *tok, int32_t n_vocab, tok_gguf_vocab_t *out) {
    memset(out, 0, sizeof *out);
    if (tok->n_ids > n_vocab)
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "the tokenizer has %d tokens, more than the model's %d embedding rows",
                           tok->n_ids, n_vocab);
    if (tok->byte_level_model) {
        out->model = "gpt2";
        out->pre = byte_level_pre(tok);
        if (!out->pre)
            return lorac_error(LORAC_STATUS_UNSUPPORTED,
                               "the tokenizer's pre-tokenizer is none llama.cpp has built in (GPT-2's, Llama 3's, "
                               "Qwen2's or SmolLM's byte-level splits)");
        /* llama.cpp emits a pre-token that is itself a token whole (BPE's
         * ignore_merges) for Llama 3's pre-tokenizer, and only there */
        if (tok->ignore_merges != !strcmp(out->pre, "llama-bpe"))
            return lorac_error(LORAC_STATUS_UNSUPPORTED,
                               "llama.cpp's \"%s\" pre-tokenizer %s ignore_merges, and this tokenizer %s", out->pre,
                               tok->ignore_merges ? "has no" : "has", tok->ignore_merges ? "has it" : "has not");
    } else {
        if (!tok->byte_fallback)
            return lorac_error(LORAC_STATUS_UNSUPPORTED, "a SentencePiece-style tokenizer without byte_fallback has no llama.cpp equivalent");
        out->model = "llama";
        out->pre = "default";
        out->add_space_prefix = spm_prefixes_space(tok);
    }
    out->n_tokens = n_vocab;
    out->tokens = calloc((size_t)n_vocab, sizeof *out->tokens);
    out->token_lens = calloc((size_t)n_vocab, sizeof *out->token_lens);
    out->types = calloc((size_t)n_vocab, sizeof *out->types);
    if (!tok->byte_level_model) out->scores = calloc((size_t)n_vocab, sizeof *out->scores);
    int64_t n_merges = 0;
    merge_t *merges = sorted_merges(tok, &n_merges);
    if (!out->tokens || !out->token_lens || !out->types || (!tok->byte_level_model && !out->scores) || !merges) {
        free(merges);
        tok_gguf_vocab_free(out);
        return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    }
    for (int32_t id = 0; id < n_vocab; id++) {
        char pad[32];
        const char *s = id < tok->n_ids && tok->tokens[id].s ? tok->tokens[id].s : NULL;
        size_t len = s ? (size_t)tok->tokens[id].len : (size_t)snprintf(pad, sizeof pad, "[PAD%d]", (int)id);
        out->tokens[id] = tok_strndup(s ? s : pad, len);
        out->token_lens[id] = len;
        if (!out->tokens[id]) {
            free(merges);
            tok_gguf_vocab_free(out);
            return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
        }
        uint8_t f = id < tok->n_ids ? tok->flags[id] : 0;
        out->types[id] = !s                       ? TOK_GGUF_UNUSED
                         : id == tok->unk_id      ? TOK_GGUF_UNKNOWN
                         : (f & TOK_F_SPECIAL)    ? TOK_GGUF_CONTROL
                         : !(f & TOK_F_MODEL)     ? TOK_GGUF_USER_DEFINED
                                                  : TOK_GGUF_NORMAL;
    }
    for (int b = 0; b < 256 && !tok->byte_level_model; b++)
        if (tok->byte_ids[b] >= 0 && out->types[tok->byte_ids[b]] == TOK_GGUF_NORMAL) out->types[tok->byte_ids[b]] = TOK_GGUF_BYTE;

    if (out->scores && tok->scores) {
        memcpy(out->scores, tok->scores, (size_t)tok->n_ids * sizeof *tok->scores);
    } else if (out->scores) {
        /* the first merge that makes a token gives its score: merges walk
         * in rank order, so a token's first is the earliest */
        bool *seen = calloc((size_t)n_vocab, sizeof *seen);
        if (!seen) {
            free(merges);
            tok_gguf_vocab_free(out);
            return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
        }
        for (int64_t i = 0; i < n_merges; i++) {
            int32_t id = merges[i].id;
            if (id >= 0 && id < n_vocab && !seen[id]) {
                seen[id] = true;
                out->scores[id] = -(float)i;
            }
        }
        free(seen);
    } else {
        out->merges = calloc((size_t)(n_merges ? n_merges : 1), sizeof *out->merges);
        for (int64_t i = 0; out->merges && i < n_merges; i++, out->n_merges++) {
            const tok_str_t *a = &tok->tokens[merges[i].a], *b = &tok->tokens[merges[i].b];
            char *m = malloc((size_t)a->len + (size_t)b->len + 2);
            if (!m) break;
            memcpy(m, a->s, (size_t)a->len);
            m[a->len] = ' ';
            memcpy(m + a->len + 1, b->s, (size_t)b->len);
            m[a->len + 1 + b->len] = '\0';
            out->merges[i] = m;
        }
        if (out->n_merges != n_merges) {
            free(merges);
            tok_gguf_vocab_free(out);
            return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
        }
    }
    free(merges);
    out->bos = tok->bos_id;
    out->eos = tok->eos_id;
    out->unk = tok->unk_id;
    out->add_bos = tok->n_post_prefix > 0 && tok->post_prefix[0] == tok->bos_id && tok->bos_id >= 0;
    out->add_eos = tok->n_post_suffix > 0 && tok->post_suffix[tok->n_post_suffix - 1] == tok->eos_id && tok->eos_id >= 0;
    return LORAC_STATUS_OK;
}

void tok_gguf_vocab_free(tok_gguf_vocab_t *v) {
    for (int32_t i = 0; v->tokens && i < v->n_tokens; i++) free(v->tokens[i]);
    for (int64_t i = 0; v->merges && i < v->n_merges; i++) free(v->merges[i]);
    free(v->tokens);
    free(v->token_lens);
    free(v->types);
    free(v->scores);
    free(v->merges);
    memset(v, 0, sizeof *v);
}
