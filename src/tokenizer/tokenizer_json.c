/* Loading HuggingFace tokenizer.json (model BPE) into lorac_tokenizer_t.
 *
 * What is read, and what is refused with LORAC_STATUS_UNSUPPORTED rather than
 * silently mis-tokenized:
 *   model          BPE ("type" may be absent); vocab object; merges as "a b"
 *                  strings or ["a", "b"] pairs; unk_token, byte_fallback,
 *                  fuse_unk, ignore_merges. WordPiece/Unigram/WordLevel,
 *                  dropout > 0 and subword prefixes/suffixes are refused.
 *   normalizer     Sequence, Prepend, Replace (string pattern), NFC (Qwen2's).
 *                  Others (NFD, NFKC, Lowercase, ...) are refused.
 *   pre_tokenizer  Sequence, ByteLevel, Split (regex or string), Digits,
 *                  Metaspace.
 *   post_processor TemplateProcessing ("single"), ByteLevel (ids unchanged),
 *                  Bert/RobertaProcessing, Sequence.
 *   decoder        Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip,
 *                  Metaspace.
 * truncation and padding are ignored: a training library packs sequences
 * itself. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

#define MAX_TOKENIZER_JSON ((size_t)1 << 30)

void lorac_tokenizer_free(lorac_tokenizer_t *tok) {
    if (!tok) return;
    for (int32_t i = 0; tok->tokens && i < tok->n_ids; i++) free(tok->tokens[i].s);
    free(tok->tokens);
    free(tok->flags);
    free(tok->scores);
    tok_strmap_free(&tok->vocab_map);
    tok_pairmap_free(&tok->merges);
    for (int i = 0; i < tok->n_norms; i++) { free(tok->norms[i].a); free(tok->norms[i].b); }
    for (int i = 0; i < tok->n_pres; i++) {
        if (tok->pres[i].re) pcre2_code_free(tok->pres[i].re);
        free(tok->pres[i].pattern);
    }
    for (int i = 0; i < tok->n_decs; i++) { free(tok->decs[i].a); free(tok->decs[i].b); }
    free(tok->added);
    tok_trie_free(&tok->trie);
    free(tok);
}

/* Parsing context: the tokenizer being built and the file's label. */
typedef struct {
    lorac_tokenizer_t *tok;
    const char *label;
} ctx_t;

static const char *type_of(const cJSON *o) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

static bool get_bool(const cJSON *o, const char *key, bool dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return dflt;
}

/* {"String": "x"} or {"Regex": "x"} pattern of Split/Replace. */
static lorac_status_t get_pattern(ctx_t *c, const cJSON *o, const char *where, const char **pat, bool *is_regex) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(p, "String");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(p, "Regex");
    if (cJSON_IsString(s)) { *pat = s->valuestring; *is_regex = false; return LORAC_STATUS_OK; }
    if (cJSON_IsString(r)) { *pat = r->valuestring; *is_regex = true; return LORAC_STATUS_OK; }
    return lorac_error(LORAC_STATUS_FORMAT, "%s: %s: 'pattern' must be {\"String\": ...} or {\"Regex\": ...}", c->label, where);
}

static lorac_status_t add_norm(ctx_t *c, const cJSON *n) {
    lorac_tokenizer_t *tok = c->tok;
    const char *type = type_of(n);
    if (!type) return lorac_error(LORAC_STATUS_FORMAT, "%s: normalizer without a 'type'", c->label);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers"), *it;
        if (!cJSON_IsArray(list)) return lorac_error(LORAC_STATUS_FORMAT, "%s: normalizer Sequence needs a 'normalizers' array", c->label);
        cJSON_ArrayForEach(it, list) {
            lorac_status_t st = add_norm(c, it);
            if (st) return st;
        }
        return LORAC_STATUS_OK;
    }
    if (tok->n_norms == TOK_MAX_NORM) return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: more than %d normalizers", c->label, TOK_MAX_NORM);
    tok_norm_t *nm = &tok->norms[tok->n_norms];
    if (strcmp(type, "Prepend") == 0) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(n, "prepend");
        if (!cJSON_IsString(p)) return lorac_error(LORAC_STATUS_FORMAT, "%s: normalizer Prepend needs a string 'prepend'", c->label);
        nm->type = TOK_NORM_PREPEND;
        nm->alen = strlen(p->valuestring);
        nm->a = tok_strndup(p->valuestring, nm->alen);
        if (!nm->a) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", c->label);
    } else if (strcmp(type, "Replace") == 0) {
        const char *pat;
        bool is_regex;
        lorac_status_t st = get_pattern(c, n, "normalizer Replace", &pat, &is_regex);
        if (st) return st;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(n, "content");
        if (is_regex) return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: normalizer Replace with a regex pattern is not supported", c->label);
        if (!cJSON_IsString(content) || !*pat) return lorac_error(LORAC_STATUS_FORMAT, "%s: normalizer Replace needs a non-empty pattern and a string 'content'", c->label);
        nm->type = TOK_NORM_REPLACE;
        nm->alen = strlen(pat);
        nm->blen = strlen(content->valuestring);
        nm->a = tok_strndup(pat, nm->alen);
        nm->b = tok_strndup(content->valuestring, nm->blen);
        if (!nm->a || !nm->b) { free(nm->a); free(nm->b); nm->a = nm->b = NULL; return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", c->label); }
    } else if (strcmp(type, "NFC") == 0) {
        nm->type = TOK_NORM_NFC;
    } else {
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: normalizer '%s' is not supported (NFC, Prepend, Replace, Sequence are)", c->label, type);
    }
    tok->n_norms++;
    return LORAC_STATUS_OK;
}

static tok_pre_t *new_pre(ctx_t *c, tok_pre_type_t type) {
    if (c->tok->n_pres == TOK_MAX_PRE) {
        lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: more than %d pre-tokenizer steps", c->label, TOK_MAX_PRE);
        return NULL;
    }
    tok_pre_t *p = &c->tok->pres[c->tok->n_pres++];
    memset(p, 0, sizeof *p);
    p->type = type;
    p->behavior = TOK_SPLIT_ISOLATED;
    return p;
}

static lorac_status_t add_split(ctx_t *c, const char *pat, size_t len, bool literal, tok_split_behavior_t b, bool invert) {
    tok_pre_t *p = new_pre(c, TOK_PRE_SPLIT);
    if (!p) return LORAC_STATUS_UNSUPPORTED;
    lorac_status_t st;
    p->re = tok_regex_compile(pat, len, literal, c->label, &st);
    p->pattern = tok_strndup(pat, len);
    p->pattern_len = len;
    if (!st && !p->pattern) st = lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", c->label);
    p->behavior = b;
    p->invert = invert;
    return st;
}

static lorac_status_t add_pre(ctx_t *c, const cJSON *n) {
    const char *type = type_of(n);
    if (!type) return lorac_error(LORAC_STATUS_FORMAT, "%s: pre_tokenizer without a 'type'", c->label);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "pretokenizers"), *it;
        if (!cJSON_IsArray(list)) return lorac_error(LORAC_STATUS_FORMAT, "%s: pre_tokenizer Sequence needs a 'pretokenizers' array", c->label);
        cJSON_ArrayForEach(it, list) {
            lorac_status_t st = add_pre(c, it);
            if (st) return st;
        }
        return LORAC_STATUS_OK;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        c->tok->byte_level_model = true;
        if (get_bool(n, "add_prefix_space", false) && !new_pre(c, TOK_PRE_PREFIX_SPACE)) return LORAC_STATUS_UNSUPPORTED;
        if (get_bool(n, "use_regex", true)) {
            lorac_status_t st = add_split(c, tok_gpt2_regex, strlen(tok_gpt2_regex), false, TOK_SPLIT_ISOLATED, false);
            if (st) return st;
        }
        return new_pre(c, TOK_PRE_BYTEMAP) ? LORAC_STATUS_OK : LORAC_STATUS_UNSUPPORTED;
    }
    if (strcmp(type, "Digits") == 0) { /* Rust char::is_numeric is \p{N} */
        const char *re = get_bool(n, "individual_digits", false) ? "\\p{N}" : "\\p{N}+";
        return add_split(c, re, strlen(re), false, TOK_SPLIT_ISOLATED, false);
    }
    if (strcmp(type, "Split") == 0) {
        const char *pat;
        bool is_regex;
        lorac_status_t st = get_pattern(c, n, "pre_tokenizer Split", &pat, &is_regex);
        if (st) return st;
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(n, "behavior");
        static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
        int bi = -1;
        for (int i = 0; i < 5 && cJSON_IsString(b); i++) if (strcmp(b->valuestring, names[i]) == 0) bi = i;
        if (bi < 0) return lorac_error(LORAC_STATUS_FORMAT, "%s: pre_tokenizer Split: unknown 'behavior'", c->label);
        return add_split(c, pat, strlen(pat), !is_regex, (tok_split_behavior_t)bi, get_bool(n, "invert", false));
    }
    if (strcmp(type, "Metaspace") == 0) {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(n, "replacement");
        const cJSON *scheme = cJSON_GetObjectItemCaseSensitive(n, "prepend_scheme");
        const char *repl = cJSON_IsString(r) ? r->valuestring : "\xe2\x96\x81";
        size_t rl = strlen(repl);
        if (rl == 0 || rl > 4 || tok_utf8_len((unsigned char)repl[0]) != (int)rl)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: Metaspace 'replacement' must be one character", c->label);
        tok_pre_t *p = new_pre(c, TOK_PRE_METASPACE);
        if (!p) return LORAC_STATUS_UNSUPPORTED;
        memcpy(p->repl, repl, rl);
        p->repl_len = rl;
        p->prepend = get_bool(n, "add_prefix_space", true) ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
        if (cJSON_IsString(scheme)) {
            if (strcmp(scheme->valuestring, "first") == 0) p->prepend = TOK_PREPEND_FIRST;
            else if (strcmp(scheme->valuestring, "never") == 0) p->prepend = TOK_PREPEND_NEVER;
            else if (strcmp(scheme->valuestring, "always") == 0) p->prepend = TOK_PREPEND_ALWAYS;
            else return lorac_error(LORAC_STATUS_FORMAT, "%s: Metaspace: unknown prepend_scheme '%s'", c->label, scheme->valuestring);
        }
        if (get_bool(n, "split", true))
            return add_split(c, repl, rl, true, TOK_SPLIT_MERGED_NEXT, false);
        return LORAC_STATUS_OK;
    }
    return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: pre_tokenizer '%s' is not supported (ByteLevel, Split, Digits, Metaspace, Sequence are)", c->label, type);
}

static lorac_status_t add_dec(ctx_t *c, const cJSON *n) {
    lorac_tokenizer_t *tok = c->tok;
    const char *type = type_of(n);
    if (!type) return lorac_error(LORAC_STATUS_FORMAT, "%s: decoder without a 'type'", c->label);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "decoders"), *it;
        if (!cJSON_IsArray(list)) return lorac_error(LORAC_STATUS_FORMAT, "%s: decoder Sequence needs a 'decoders' array", c->label);
        cJSON_ArrayForEach(it, list) {
            lorac_status_t st = add_dec(c, it);
            if (st) return st;
        }
        return LORAC_STATUS_OK;
    }
    if (tok->n_decs == TOK_MAX_DEC) return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: more than %d decoders", c->label, TOK_MAX_DEC);
    tok_dec_t *d = &tok->decs[tok->n_decs];
    memset(d, 0, sizeof *d);
    const char *a = NULL, *b = NULL;
    if (strcmp(type, "ByteLevel") == 0) d->type = TOK_DEC_BYTELEVEL;
    else if (strcmp(type, "ByteFallback") == 0) d->type = TOK_DEC_BYTEFALLBACK;
    else if (strcmp(type, "Fuse") == 0) d->type = TOK_DEC_FUSE;
    else if (strcmp(type, "Replace") == 0) {
        bool is_regex;
        lorac_status_t st = get_pattern(c, n, "decoder Replace", &a, &is_regex);
        if (st) return st;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(n, "content");
        if (is_regex || !cJSON_IsString(content) || !*a)
            return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: decoder Replace needs a non-empty string pattern and string content", c->label);
        b = content->valuestring;
        d->type = TOK_DEC_REPLACE;
    } else if (strcmp(type, "Strip") == 0) {
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(n, "content");
        const cJSON *start = cJSON_GetObjectItemCaseSensitive(n, "start");
        const cJSON *stop = cJSON_GetObjectItemCaseSensitive(n, "stop");
        if (!cJSON_IsString(content) || !*content->valuestring || !cJSON_IsNumber(start) || !cJSON_IsNumber(stop) ||
            start->valuedouble < 0 || stop->valuedouble < 0 || start->valuedouble > 1e6 || stop->valuedouble > 1e6)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: decoder Strip needs 'content', 'start', 'stop'", c->label);
        a = content->valuestring;
        d->start = (int32_t)start->valuedouble;
        d->stop = (int32_t)stop->valuedouble;
        d->type = TOK_DEC_STRIP;
    } else if (strcmp(type, "Metaspace") == 0) {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(n, "replacement");
        const cJSON *scheme = cJSON_GetObjectItemCaseSensitive(n, "prepend_scheme");
        a = cJSON_IsString(r) && *r->valuestring ? r->valuestring : "\xe2\x96\x81";
        d->prepend = get_bool(n, "add_prefix_space", true) ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
        if (cJSON_IsString(scheme))
            d->prepend = strcmp(scheme->valuestring, "never") == 0 ? TOK_PREPEND_NEVER
                       : strcmp(scheme->valuestring, "first") == 0 ? TOK_PREPEND_FIRST : TOK_PREPEND_ALWAYS;
        d->type = TOK_DEC_METASPACE;
    } else {
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: decoder '%s' is not supported", c->label, type);
    }
    if (a && !(d->a = tok_strndup(a, d->alen = strlen(a)))) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", c->label);
    if (b && !(d->b = tok_strndup(b, d->blen = strlen(b)))) { free(d->a); d->a = NULL; return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", c->label); }
    tok->n_decs++;
    return LORAC_STATUS_OK;
}

/* Looks up the id of a post-processor special token: by the template's
 * "special_tokens" table when present, else by its string. */
static lorac_status_t post_token_id(ctx_t *c, const cJSON *specials, const char *name, int32_t *ids, int *n) {
    const cJSON *entry = cJSON_GetObjectItemCaseSensitive(specials, name);
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(entry, "ids"), *it;
    if (cJSON_IsArray(list)) {
        cJSON_ArrayForEach(it, list) {
            if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= c->tok->n_ids)
                return lorac_error(LORAC_STATUS_FORMAT, "%s: post_processor token '%s': id out of range", c->label, name);
            if (*n == TOK_MAX_POST) return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: post_processor adds too many tokens", c->label);
            ids[(*n)++] = (int32_t)it->valuedouble;
        }
        return LORAC_STATUS_OK;
    }
    int32_t id = lorac_tokenizer_token_id(c->tok, name);
    if (id < 0) return lorac_error(LORAC_STATUS_FORMAT, "%s: post_processor token '%s' is not in the vocabulary", c->label, name);
    if (*n == TOK_MAX_POST) return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: post_processor adds too many tokens", c->label);
    ids[(*n)++] = id;
    return LORAC_STATUS_OK;
}

static lorac_status_t add_post(ctx_t *c, const cJSON *n) {
    lorac_tokenizer_t *tok = c->tok;
    const char *type = type_of(n);
    if (!type) return lorac_error(LORAC_STATUS_FORMAT, "%s: post_processor without a 'type'", c->label);
    if (strcmp(type, "ByteLevel") == 0) return LORAC_STATUS_OK; /* only adjusts offsets */
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "processors"), *it;
        if (!cJSON_IsArray(list)) return lorac_error(LORAC_STATUS_FORMAT, "%s: post_processor Sequence needs a 'processors' array", c->label);
        cJSON_ArrayForEach(it, list) {
            lorac_status_t st = add_post(c, it);
            if (st) return st;
        }
        return LORAC_STATUS_OK;
    }
    if (strcmp(type, "BertProcessing") == 0 || strcmp(type, "RobertaProcessing") == 0) {
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(n, "cls"), *sep = cJSON_GetObjectItemCaseSensitive(n, "sep");
        const cJSON *cls_id = cJSON_GetArrayItem(cls, 1), *sep_id = cJSON_GetArrayItem(sep, 1);
        if (!cJSON_IsNumber(cls_id) || !cJSON_IsNumber(sep_id) || cls_id->valuedouble < 0 || sep_id->valuedouble < 0 ||
            cls_id->valuedouble >= tok->n_ids || sep_id->valuedouble >= tok->n_ids ||
            tok->n_post_prefix == TOK_MAX_POST || tok->n_post_suffix == TOK_MAX_POST)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: post_processor %s needs cls/sep [token, id] in range", c->label, type);
        tok->post_prefix[tok->n_post_prefix++] = (int32_t)cls_id->valuedouble;
        tok->post_suffix[tok->n_post_suffix++] = (int32_t)sep_id->valuedouble;
        return LORAC_STATUS_OK;
    }
    if (strcmp(type, "TemplateProcessing") != 0)
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: post_processor '%s' is not supported", c->label, type);
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(n, "single"), *it;
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(n, "special_tokens");
    if (!cJSON_IsArray(single)) return lorac_error(LORAC_STATUS_FORMAT, "%s: TemplateProcessing needs a 'single' array", c->label);
    bool seen_a = false;
    cJSON_ArrayForEach(it, single) {
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(it, "Sequence");
        if (seq) { seen_a = true; continue; }
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(sp, "id");
        if (!cJSON_IsString(id)) return lorac_error(LORAC_STATUS_FORMAT, "%s: TemplateProcessing item is neither SpecialToken nor Sequence", c->label);
        lorac_status_t st = seen_a ? post_token_id(c, specials, id->valuestring, tok->post_suffix, &tok->n_post_suffix)
                                   : post_token_id(c, specials, id->valuestring, tok->post_prefix, &tok->n_post_prefix);
        if (st) return st;
    }
    return LORAC_STATUS_OK;
}

/* Reads a non-negative integer id no larger than limit. */
static bool get_id(const cJSON *v, int64_t limit, int32_t *id) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0) || d > (double)limit || d != floor(d)) return false;
    *id = (int32_t)d;
    return true;
}

static lorac_status_t load_vocab(ctx_t *c, const cJSON *vocab, const cJSON *added) {
    lorac_tokenizer_t *tok = c->tok;
    int64_t n_vocab = cJSON_GetArraySize(vocab), n_added = cJSON_IsArray(added) ? cJSON_GetArraySize(added) : 0;
    /* ids must be dense: the largest allowed id is the number of entries - 1 */
    int64_t limit = n_vocab + n_added - 1;
    if (limit >= INT32_MAX / 2) return lorac_error(LORAC_STATUS_FORMAT, "%s: too many tokens", c->label);
    int32_t max_id = -1, id = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (!get_id(it, limit, &id))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: model.vocab: id of token '%.40s' is not an integer in 0..%lld",
                               c->label, it->string, (long long)limit);
        if (id > max_id) max_id = id;
    }
    cJSON_ArrayForEach(it, added) {
        if (!get_id(cJSON_GetObjectItemCaseSensitive(it, "id"), limit, &id))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: added_tokens: 'id' missing or not an integer in 0..%lld", c->label, (long long)limit);
        if (id > max_id) max_id = id;
    }
    lorac_status_t st = tok_alloc_ids(tok, max_id + 1, c->label);
    if (st) return st;
    cJSON_ArrayForEach(it, vocab) {
        get_id(it, limit, &id);
        size_t len = strlen(it->string);
        if (!lorac_utf8_valid(it->string, len))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: model.vocab: token with id %d is not valid UTF-8", c->label, (int)id);
        if (tok->tokens[id].s)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: model.vocab: id %d is used by both '%.40s' and '%.40s'",
                               c->label, (int)id, tok->tokens[id].s, it->string);
        if (tok_set_token(tok, id, it->string, len, TOK_F_MODEL)) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", c->label);
        if (tok_strmap_put(&tok->vocab_map, tok->tokens, id) >= 0)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: model.vocab: token '%.40s' appears twice", c->label, it->string);
    }
    tok->n_added = 0;
    tok->added = calloc((size_t)n_added + 1, sizeof *tok->added);
    if (!tok->added) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", c->label);
    cJSON_ArrayForEach(it, added) {
        get_id(cJSON_GetObjectItemCaseSensitive(it, "id"), limit, &id);
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!cJSON_IsString(content) || !lorac_utf8_valid(content->valuestring, strlen(content->valuestring)))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: added_tokens: token %d has no UTF-8 string 'content'", c->label, (int)id);
        const char *s = content->valuestring;
        size_t len = strlen(s);
        if (tok->flags[id] & TOK_F_ADDED)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: added_tokens: id %d is used twice", c->label, (int)id);
        /* An added token may repeat a vocab entry (same id, same string), as
         * Llama's <unk>/<s>/</s> do; anything else is a collision. */
        if (tok->tokens[id].s && ((size_t)tok->tokens[id].len != len || memcmp(tok->tokens[id].s, s, len) != 0))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: added_tokens: '%.40s' has id %d, which the vocab gives to '%.40s'",
                               c->label, s, (int)id, tok->tokens[id].s);
        int32_t other = tok_strmap_get(&tok->vocab_map, tok->tokens, s, len);
        if (other >= 0 && other != id)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: added_tokens: '%.40s' has id %d but already has id %d",
                               c->label, s, (int)id, (int)other);
        bool special = get_bool(it, "special", false);
        if (tok_set_token(tok, id, s, len, (uint8_t)(TOK_F_ADDED | (special ? TOK_F_SPECIAL : 0))))
            return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", c->label);
        if (other < 0) tok_strmap_put(&tok->vocab_map, tok->tokens, id);
        tok->added[tok->n_added++] = (tok_added_t){id, special, get_bool(it, "lstrip", false), get_bool(it, "rstrip", false),
                                                   get_bool(it, "single_word", false), get_bool(it, "normalized", !special)};
    }
    return LORAC_STATUS_OK;
}

/* Tries every space of a multi-space "a b" merge as the separator; adds the
 * first reading whose halves and concatenation are all vocab tokens. */
static bool ambiguous_merge(lorac_tokenizer_t *tok, const char *line, int rank) {
    size_t n = strlen(line);
    for (const char *sp = strchr(line, ' '); sp; sp = strchr(sp + 1, ' ')) {
        size_t al = (size_t)(sp - line), bl = n - al - 1;
        int32_t ia = tok_model_lookup(tok, line, al), ib = tok_model_lookup(tok, sp + 1, bl);
        if (ia < 0 || ib < 0) continue;
        char *joined = malloc(al + bl + 1);
        if (!joined) return false;
        memcpy(joined, line, al);
        memcpy(joined + al, sp + 1, bl);
        int32_t merged = tok_model_lookup(tok, joined, al + bl);
        free(joined);
        if (merged >= 0) { tok_pairmap_put(&tok->merges, ia, ib, (double)rank, merged); return true; }
    }
    return false;
}

static lorac_status_t load_merges(ctx_t *c, const cJSON *merges) {
    lorac_tokenizer_t *tok = c->tok;
    if (!merges || cJSON_IsNull(merges)) return tok_pairmap_init(&tok->merges, 0) ? lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", c->label) : LORAC_STATUS_OK;
    if (!cJSON_IsArray(merges)) return lorac_error(LORAC_STATUS_FORMAT, "%s: model.merges is not an array", c->label);
    int n = cJSON_GetArraySize(merges), rank = 0;
    if (tok_pairmap_init(&tok->merges, (size_t)n)) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", c->label);
    tok_buf_t joined = {0};
    const cJSON *it;
    lorac_status_t st = LORAC_STATUS_OK;
    cJSON_ArrayForEach(it, merges) {
        const char *a, *b;
        size_t al, bl;
        if (cJSON_IsString(it)) { /* "a b" */
            const char *sp = strchr(it->valuestring, ' ');
            if (!sp) { st = lorac_error(LORAC_STATUS_FORMAT, "%s: model.merges[%d]: expected \"a b\", got \"%.60s\"", c->label, rank, it->valuestring); break; }
            if (strchr(sp + 1, ' ')) {
                /* Llama 2's vocab has tokens made of raw spaces, so "a b" can
                 * be ambiguous ("▁  "). Such merges can never fire (the
                 * normalizer turns spaces into "▁"); keep the one reading
                 * that forms a vocab token, else skip it. Its rank stays used. */
                ambiguous_merge(tok, it->valuestring, rank);
                rank++;
                continue;
            }
            a = it->valuestring; al = (size_t)(sp - a); b = sp + 1; bl = strlen(b);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(it->child) && cJSON_IsString(it->child->next)) {
            a = it->child->valuestring; al = strlen(a); b = it->child->next->valuestring; bl = strlen(b);
        } else {
            st = lorac_error(LORAC_STATUS_FORMAT, "%s: model.merges[%d] is neither \"a b\" nor [\"a\", \"b\"]", c->label, rank);
            break;
        }
        int32_t ia = tok_model_lookup(tok, a, al), ib = tok_model_lookup(tok, b, bl);
        if (ia < 0 || ib < 0) {
            st = lorac_error(LORAC_STATUS_FORMAT, "%s: model.merges[%d] references token '%.*s' not in the vocab",
                             c->label, rank, (int)(ia < 0 ? (al > 60 ? 60 : al) : (bl > 60 ? 60 : bl)), ia < 0 ? a : b);
            break;
        }
        joined.n = 0;
        if (tok_buf_add(&joined, a, al) || tok_buf_add(&joined, b, bl)) { st = lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", c->label); break; }
        int32_t merged = tok_model_lookup(tok, joined.p, joined.n);
        if (merged < 0) {
            st = lorac_error(LORAC_STATUS_FORMAT, "%s: model.merges[%d]: merged token '%.60s' is not in the vocab", c->label, rank, joined.p);
            break;
        }
        tok_pairmap_put(&tok->merges, ia, ib, (double)rank, merged);
        rank++;
    }
    free(joined.p);
    return st;
}

static lorac_status_t load_model(ctx_t *c, const cJSON *root) {
    lorac_tokenizer_t *tok = c->tok;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) return lorac_error(LORAC_STATUS_FORMAT, "%s: missing 'model' object", c->label);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (type && !cJSON_IsString(type)) return lorac_error(LORAC_STATUS_FORMAT, "%s: model.type is not a string", c->label);
    if (type && strcmp(type->valuestring, "BPE") != 0)
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: model type '%s' is not supported (only BPE)", c->label, type->valuestring);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab)) return lorac_error(LORAC_STATUS_FORMAT, "%s: model.vocab is missing or not an object", c->label);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble > 0)
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: BPE dropout is not supported", c->label);
    const char *affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, affixes[i]);
        if (cJSON_IsString(v) && *v->valuestring)
            return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: BPE %s is not supported", c->label, affixes[i]);
    }
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: added_tokens is not an array", c->label);
    lorac_status_t st = load_vocab(c, vocab, added);
    if (st) return st;
    st = load_merges(c, cJSON_GetObjectItemCaseSensitive(model, "merges"));
    if (st) return st;
    tok->byte_fallback = get_bool(model, "byte_fallback", false);
    tok->fuse_unk = get_bool(model, "fuse_unk", false);
    tok->ignore_merges = get_bool(model, "ignore_merges", false);
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    tok->unk_id = -1;
    if (cJSON_IsString(unk)) {
        tok->unk_id = tok_model_lookup(tok, unk->valuestring, strlen(unk->valuestring));
        if (tok->unk_id < 0) return lorac_error(LORAC_STATUS_FORMAT, "%s: model.unk_token '%.40s' is not in the vocab", c->label, unk->valuestring);
    }
    return LORAC_STATUS_OK;
}

/* Steps shared by both loaders once the tables are filled. */
lorac_status_t tok_finish_load(lorac_tokenizer_t *tok, const char *label) {
    tok_find_byte_ids(tok);
    return tok_trie_build(tok, label);
}

/* tokenizer.json does not record BOS/EOS (tokenizer_config.json does): take
 * the post-processor's leading special token, else a conventional name. */
static void guess_bos_eos(lorac_tokenizer_t *tok) {
    static const char *bos[] = {"<s>", "<|begin_of_text|>", "<|startoftext|>", "<|im_start|>", "<|endoftext|>"};
    static const char *eos[] = {"</s>", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>"};
    tok->bos_id = tok->n_post_prefix > 0 ? tok->post_prefix[0] : -1;
    for (size_t i = 0; tok->bos_id < 0 && i < sizeof bos / sizeof *bos; i++) tok->bos_id = lorac_tokenizer_token_id(tok, bos[i]);
    tok->eos_id = -1;
    for (size_t i = 0; tok->eos_id < 0 && i < sizeof eos / sizeof *eos; i++) tok->eos_id = lorac_tokenizer_token_id(tok, eos[i]);
}

lorac_status_t lorac_tokenizer_load_json_memory(const char *json, size_t len, const char *label,
                                                lorac_tokenizer_t **out) {
    *out = NULL;
    if (!label) label = "tokenizer.json";
    if (!json) return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: NULL data", label);
    /* UTF-8 throughout, as HuggingFace's loader (serde_json) requires: then
     * no normalizer, pattern or token carries stray bytes into the text */
    if (!lorac_utf8_valid(json, len)) return lorac_error(LORAC_STATUS_FORMAT, "%s: not valid UTF-8", label);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        size_t at = end && end >= json ? (size_t)(end - json) : 0;
        return lorac_error(LORAC_STATUS_FORMAT, "%s: not valid JSON (error near byte %zu)", label, at);
    }
    lorac_tokenizer_t *tok = calloc(1, sizeof *tok);
    if (!tok) { cJSON_Delete(root); return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", label); }
    tok->format = TOK_FORMAT_JSON;
    tok->match_added = true;
    tok->unk_id = tok->bos_id = tok->eos_id = -1;
    ctx_t c = {tok, label};
    lorac_status_t st = cJSON_IsObject(root) ? LORAC_STATUS_OK
                      : lorac_error(LORAC_STATUS_FORMAT, "%s: top level is not a JSON object", label);
    if (!st) st = load_model(&c, root);
    const char *sections[] = {"normalizer", "pre_tokenizer", "post_processor", "decoder"};
    for (int i = 0; i < 4 && !st; i++) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(root, sections[i]);
        if (!s || cJSON_IsNull(s)) continue;
        if (!cJSON_IsObject(s)) { st = lorac_error(LORAC_STATUS_FORMAT, "%s: '%s' is not an object", label, sections[i]); break; }
        st = i == 0 ? add_norm(&c, s) : i == 1 ? add_pre(&c, s) : i == 2 ? add_post(&c, s) : add_dec(&c, s);
        if (i == 3) tok->has_decoder = true;
    }
    if (!st) st = tok_finish_load(tok, label);
    cJSON_Delete(root);
    if (st) { lorac_tokenizer_free(tok); return st; }
    guess_bos_eos(tok);
    *out = tok;
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_tokenizer_load_json(const char *path, lorac_tokenizer_t **out) {
    *out = NULL;
    char *data;
    size_t len;
    lorac_status_t st = lorac_file_read(path, MAX_TOKENIZER_JSON, &data, &len);
    if (st) return st;
    st = lorac_tokenizer_load_json_memory(data, len, path, out);
    free(data);
    return st;
}
