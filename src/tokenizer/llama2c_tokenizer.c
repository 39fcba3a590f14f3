/* The llama2.c tokenizer.bin format, and its export to tokenizer.json.
 *
 * File layout (little-endian):
 *   int32 max_token_length
 *   vocab_size times: float32 score, int32 len, len bytes (no NUL)
 * vocab_size is not stored; it comes from the model header. SentencePiece's
 * "▁" is stored as a plain space, BOS/EOS as "\n<s>\n" / "\n</s>\n", and ids
 * 3..258 are the byte tokens "<0x00>".."<0xFF>".
 *
 * run.c encodes by prepending a dummy-prefix " ", looking up each code point
 * (falling back to byte id + 3), then repeatedly merging the adjacent pair
 * whose concatenation is in the vocabulary with the highest score, leftmost
 * first. We load the file into the SentencePiece-style BPE form a
 * tokenizer.json would use ("▁", <s>, byte fallback, Prepend/Replace
 * normalizer) and give each mergeable pair the priority -score(merged piece):
 * the heap-based engine in bpe.c then performs exactly run.c's merges in
 * O(n log n). One difference is kept on purpose: run.c never treats "<s>" in
 * the text as BOS, so added tokens are not matched for this format. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

#define SPACE_PIECE "\xe2\x96\x81" /* U+2581 "▁" */

static int32_t rd_i32(const uint8_t *p) { int32_t v; memcpy(&v, p, 4); return v; }
static float rd_f32(const uint8_t *p) { float v; memcpy(&v, p, 4); return v; }

/* Copies `s` with ' ' -> "▁" into a NUL-terminated malloc'd string. */
static char *to_spm(const char *s, size_t n, size_t *out_len) {
    size_t spaces = 0;
    for (size_t i = 0; i < n; i++) spaces += s[i] == ' ';
    char *p = malloc(n + 2 * spaces + 1), *q = p;
    if (!p) return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') { memcpy(q, SPACE_PIECE, 3); q += 3; } else *q++ = s[i];
    }
    *q = '\0';
    *out_len = (size_t)(q - p);
    return p;
}

static bool is_mergeable(const lorac_tokenizer_t *tok, int32_t id) {
    return id >= 0 && (tok->flags[id] & TOK_F_SPECIAL) == 0 && tok->tokens[id].len > 0 &&
           !(tok->tokens[id].len == 6 && memcmp(tok->tokens[id].s, "<0x", 3) == 0);
}

/* Every split of every piece into two pieces is a merge (what run.c's
 * vocabulary lookup of the concatenation allows). */
static lorac_status_t build_merges(lorac_tokenizer_t *tok, const char *label) {
    size_t total = 0;
    for (int32_t i = 0; i < tok->n_ids; i++) total += (size_t)tok->tokens[i].len;
    if (tok_pairmap_init(&tok->merges, total)) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", label);
    for (int32_t v = 0; v < tok->n_ids; v++) {
        if (!is_mergeable(tok, v)) continue;
        const char *s = tok->tokens[v].s;
        size_t n = (size_t)tok->tokens[v].len;
        for (size_t k = (size_t)tok_utf8_len((unsigned char)s[0]); k < n; k += (size_t)tok_utf8_len((unsigned char)s[k])) {
            int32_t a = tok_model_lookup(tok, s, k), b = tok_model_lookup(tok, s + k, n - k);
            if (is_mergeable(tok, a) && is_mergeable(tok, b)) tok_pairmap_put(&tok->merges, a, b, -(double)tok->scores[v], v);
        }
    }
    return LORAC_STATUS_OK;
}

static int set_str(char **dst, size_t *dlen, const char *s) {
    *dlen = strlen(s);
    *dst = malloc(*dlen + 1);
    if (!*dst) return -1;
    memcpy(*dst, s, *dlen + 1);
    return 0;
}

/* The normalizer, decoder and post-processor of Llama 2's tokenizer.json. */
static lorac_status_t setup_pipeline(lorac_tokenizer_t *tok, const char *label) {
    tok->norms[0].type = TOK_NORM_PREPEND;
    tok->norms[1].type = TOK_NORM_REPLACE;
    tok->n_norms = 2;
    tok->decs[0].type = TOK_DEC_REPLACE;
    tok->decs[1].type = TOK_DEC_BYTEFALLBACK;
    tok->decs[2].type = TOK_DEC_FUSE;
    tok->decs[3].type = TOK_DEC_STRIP;
    tok->decs[3].start = 1;
    tok->n_decs = 4;
    tok->has_decoder = true;
    if (set_str(&tok->norms[0].a, &tok->norms[0].alen, SPACE_PIECE) || set_str(&tok->norms[1].a, &tok->norms[1].alen, " ") ||
        set_str(&tok->norms[1].b, &tok->norms[1].blen, SPACE_PIECE) || set_str(&tok->decs[0].a, &tok->decs[0].alen, SPACE_PIECE) ||
        set_str(&tok->decs[0].b, &tok->decs[0].blen, " ") || set_str(&tok->decs[3].a, &tok->decs[3].alen, " "))
        return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", label);
    if (tok->bos_id >= 0) tok->post_prefix[tok->n_post_prefix++] = tok->bos_id;
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_tokenizer_load_llama2c_memory(const void *data, size_t len, int32_t vocab_size,
                                                   const char *label, lorac_tokenizer_t **out) {
    *out = NULL;
    if (!label) label = "tokenizer.bin";
    const uint8_t *p = data;
    if (!data && len > 0) return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: NULL data", label);
    if (vocab_size <= 0) return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: vocab_size %d must be positive", label, (int)vocab_size);
    if (len < 4) return lorac_error(LORAC_STATUS_FORMAT, "%s: truncated: %zu bytes, no max_token_length header", label, len);
    int32_t max_len = rd_i32(p);
    if (max_len <= 0 || max_len > (1 << 20))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: max_token_length %d is not in 1..%d", label, (int)max_len, 1 << 20);
    /* each entry takes at least 8 bytes: refuse a vocab_size the file cannot hold
     * before allocating for it */
    if ((uint64_t)vocab_size > (len - 4) / 8)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: vocab_size %d is too large for a file of %zu bytes", label, (int)vocab_size, len);
    lorac_tokenizer_t *tok = calloc(1, sizeof *tok);
    if (!tok) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", label);
    tok->format = TOK_FORMAT_LLAMA2C;
    tok->unk_id = tok->bos_id = tok->eos_id = -1;
    tok->byte_fallback = tok->fuse_unk = true;
    lorac_status_t st = tok_alloc_ids(tok, vocab_size, label);
    tok->scores = malloc((size_t)vocab_size * sizeof *tok->scores);
    tok->added = calloc(3, sizeof *tok->added);
    if (!st && (!tok->scores || !tok->added)) st = lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", label);
    size_t off = 4;
    for (int32_t i = 0; i < vocab_size && !st; i++) {
        if (len - off < 8) { st = lorac_error(LORAC_STATUS_FORMAT, "%s: truncated in token %d of %d (at byte %zu)", label, (int)i, (int)vocab_size, off); break; }
        float score = rd_f32(p + off);
        int32_t n = rd_i32(p + off + 4);
        off += 8;
        if (!isfinite(score)) { st = lorac_error(LORAC_STATUS_FORMAT, "%s: token %d: score is not finite", label, (int)i); break; }
        if (n < 0) { st = lorac_error(LORAC_STATUS_FORMAT, "%s: token %d: negative length %d", label, (int)i, (int)n); break; }
        if ((size_t)n > len - off) {
            st = lorac_error(LORAC_STATUS_FORMAT, "%s: token %d: length %d runs past the end of the file (%zu bytes left)", label, (int)i, (int)n, len - off);
            break;
        }
        const char *s = (const char *)p + off;
        off += (size_t)n;
        if (!lorac_utf8_valid(s, (size_t)n)) { st = lorac_error(LORAC_STATUS_FORMAT, "%s: token %d is not valid UTF-8", label, (int)i); break; }
        tok->scores[i] = score;
        /* BOS/EOS/UNK become the special tokens of the tokenizer.json form */
        const char *special = NULL;
        if (n == 5 && memcmp(s, "<unk>", 5) == 0) special = "<unk>";
        else if (n == 5 && memcmp(s, "\n<s>\n", 5) == 0) special = "<s>";
        else if (n == 6 && memcmp(s, "\n</s>\n", 6) == 0) special = "</s>";
        if (special && tok->n_added < 3) {
            if (tok_set_token(tok, i, special, strlen(special), TOK_F_MODEL | TOK_F_ADDED | TOK_F_SPECIAL)) { st = lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", label); break; }
            tok->added[tok->n_added++] = (tok_added_t){i, true, false, false, false, false};
            if (special[1] == 'u') tok->unk_id = i;
            else if (special[1] == 's') tok->bos_id = i;
            else tok->eos_id = i;
        } else {
            size_t sl;
            char *spm = to_spm(s, (size_t)n, &sl);
            if (!spm || tok_set_token(tok, i, spm, sl, TOK_F_MODEL)) { free(spm); st = lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", label); break; }
            free(spm);
        }
        int32_t prev = tok_strmap_put(&tok->vocab_map, tok->tokens, i);
        if (prev >= 0) { st = lorac_error(LORAC_STATUS_FORMAT, "%s: tokens %d and %d are the same string", label, (int)prev, (int)i); break; }
    }
    if (!st) st = tok_finish_load(tok, label);
    if (!st) st = build_merges(tok, label);
    if (!st) st = setup_pipeline(tok, label);
    if (st) { lorac_tokenizer_free(tok); return st; }
    *out = tok;
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_tokenizer_load_llama2c(const char *path, int32_t vocab_size, lorac_tokenizer_t **out) {
    *out = NULL;
    lorac_mapped_file_t f;
    lorac_status_t st = lorac_file_map(path, &f);
    if (st) return st;
    st = lorac_tokenizer_load_llama2c_memory(f.data, f.size, vocab_size, path, out);
    lorac_file_unmap(&f);
    return st;
}

/* ---- export to tokenizer.json ------------------------------------------- */

typedef struct { double score; int32_t merged, a, b; } merge_t;

static int cmp_merge(const void *x, const void *y) {
    const merge_t *p = x, *q = y;
    /* HF's SentencePiece converter: merged piece score descending, then the
     * merged piece's id, then the ids of the two halves */
    if (p->score != q->score) return p->score > q->score ? -1 : 1;
    if (p->merged != q->merged) return p->merged < q->merged ? -1 : 1;
    if (p->a != q->a) return p->a < q->a ? -1 : 1;
    return (p->b > q->b) - (p->b < q->b);
}

static cJSON *obj_with_type(const char *type) {
    cJSON *o = cJSON_CreateObject();
    if (o) cJSON_AddStringToObject(o, "type", type);
    return o;
}

static cJSON *string_pattern(const char *s) {
    cJSON *p = cJSON_CreateObject();
    if (p) cJSON_AddStringToObject(p, "String", s);
    return p;
}

static cJSON *build_json(const lorac_tokenizer_t *tok, merge_t *merges, size_t n_merges) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    for (int32_t i = 0; i < tok->n_added; i++) {
        cJSON *t = cJSON_CreateObject();
        cJSON_AddNumberToObject(t, "id", tok->added[i].id);
        cJSON_AddStringToObject(t, "content", tok->tokens[tok->added[i].id].s);
        cJSON_AddBoolToObject(t, "single_word", 0);
        cJSON_AddBoolToObject(t, "lstrip", 0);
        cJSON_AddBoolToObject(t, "rstrip", 0);
        cJSON_AddBoolToObject(t, "normalized", 0);
        cJSON_AddBoolToObject(t, "special", 1);
        cJSON_AddItemToArray(added, t);
    }
    cJSON *norm = obj_with_type("Sequence"), *norms = cJSON_AddArrayToObject(norm, "normalizers");
    cJSON *prepend = obj_with_type("Prepend"), *replace = obj_with_type("Replace");
    cJSON_AddStringToObject(prepend, "prepend", SPACE_PIECE);
    cJSON_AddItemToObject(replace, "pattern", string_pattern(" "));
    cJSON_AddStringToObject(replace, "content", SPACE_PIECE);
    cJSON_AddItemToArray(norms, prepend);
    cJSON_AddItemToArray(norms, replace);
    cJSON_AddItemToObject(root, "normalizer", norm);
    cJSON_AddNullToObject(root, "pre_tokenizer");
    if (tok->bos_id >= 0) {
        cJSON *post = obj_with_type("TemplateProcessing");
        const char *templ = "{\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],"
                            "\"pair\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},"
                            "{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":1}},{\"Sequence\":{\"id\":\"B\",\"type_id\":1}}]}";
        cJSON *t = cJSON_Parse(templ);
        if (t) {
            cJSON_AddItemToObject(post, "single", cJSON_DetachItemFromObject(t, "single"));
            cJSON_AddItemToObject(post, "pair", cJSON_DetachItemFromObject(t, "pair"));
            cJSON_Delete(t);
        }
        cJSON *specials = cJSON_AddObjectToObject(post, "special_tokens"), *s = cJSON_AddObjectToObject(specials, "<s>");
        cJSON_AddStringToObject(s, "id", "<s>");
        cJSON *ids = cJSON_AddArrayToObject(s, "ids"), *toks = cJSON_AddArrayToObject(s, "tokens");
        cJSON_AddItemToArray(ids, cJSON_CreateNumber(tok->bos_id));
        cJSON_AddItemToArray(toks, cJSON_CreateString("<s>"));
        cJSON_AddItemToObject(root, "post_processor", post);
    } else {
        cJSON_AddNullToObject(root, "post_processor");
    }
    cJSON *dec = obj_with_type("Sequence"), *decs = cJSON_AddArrayToObject(dec, "decoders");
    cJSON *rep = obj_with_type("Replace"), *strip = obj_with_type("Strip");
    cJSON_AddItemToObject(rep, "pattern", string_pattern(SPACE_PIECE));
    cJSON_AddStringToObject(rep, "content", " ");
    cJSON_AddStringToObject(strip, "content", " ");
    cJSON_AddNumberToObject(strip, "start", 1);
    cJSON_AddNumberToObject(strip, "stop", 0);
    cJSON_AddItemToArray(decs, rep);
    cJSON_AddItemToArray(decs, obj_with_type("ByteFallback"));
    cJSON_AddItemToArray(decs, obj_with_type("Fuse"));
    cJSON_AddItemToArray(decs, strip);
    cJSON_AddItemToObject(root, "decoder", dec);
    cJSON *model = obj_with_type("BPE");
    cJSON_AddNullToObject(model, "dropout");
    if (tok->unk_id >= 0) cJSON_AddStringToObject(model, "unk_token", tok->tokens[tok->unk_id].s);
    else cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", 1);
    cJSON_AddBoolToObject(model, "byte_fallback", 1);
    cJSON_AddBoolToObject(model, "ignore_merges", 0);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    for (int32_t i = 0; i < tok->n_ids; i++) cJSON_AddNumberToObject(vocab, tok->tokens[i].s, i);
    cJSON *ml = cJSON_AddArrayToObject(model, "merges");
    tok_buf_t line = {0};
    for (size_t i = 0; i < n_merges; i++) {
        line.n = 0;
        const tok_str_t *a = &tok->tokens[merges[i].a], *b = &tok->tokens[merges[i].b];
        if (tok_buf_add(&line, a->s, (size_t)a->len) || tok_buf_add(&line, " ", 1) || tok_buf_add(&line, b->s, (size_t)b->len)) break;
        cJSON_AddItemToArray(ml, cJSON_CreateString(line.p));
    }
    free(line.p);
    cJSON_AddItemToObject(root, "model", model);
    return root;
}

lorac_status_t lorac_tokenizer_save_llama2c_as_json(const lorac_tokenizer_t *tok, const char *path) {
    if (!tok || tok->format != TOK_FORMAT_LLAMA2C)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: save_llama2c_as_json needs a tokenizer loaded from llama2.c", path);
    size_t n = 0, cap = tok->merges.count;
    merge_t *merges = malloc((cap ? cap : 1) * sizeof *merges);
    if (!merges) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", path);
    for (uint32_t i = 0; i <= tok->merges.mask; i++) {
        uint64_t key = tok->merges.keys[i];
        if (!key) continue;
        key -= 1;
        merges[n++] = (merge_t){-tok->merges.prio[i], tok->merges.new_id[i], (int32_t)(key >> 32), (int32_t)(uint32_t)key};
    }
    qsort(merges, n, sizeof *merges, cmp_merge);
    cJSON *root = build_json(tok, merges, n);
    free(merges);
    char *text = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory building JSON", path);
    lorac_status_t st = lorac_file_write_atomic(path, text, strlen(text));
    cJSON_free(text);
    return st;
}
