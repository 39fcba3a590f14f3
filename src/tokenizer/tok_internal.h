/* tok_internal.h — private structures of the tokenizer module.
 *
 * One representation serves both file formats: a llama2.c tokenizer.bin is
 * converted at load time into the same SentencePiece-style BPE description a
 * tokenizer.json would give (pieces with "▁", <unk>/<s>/</s> as special added
 * tokens, byte fallback, Prepend/Replace normalizer, Strip decoder). The only
 * difference left is the merge priority: a tokenizer.json ranks merges by
 * their position in the merges list, llama2.c by the score of the merged
 * piece (higher first, leftmost on ties), exactly as run.c's greedy loop.
 *
 * Pipeline of encode (as HF tokenizers): split out added tokens on the raw
 * text -> normalize each remaining segment -> pre-tokenize it into pieces ->
 * BPE each piece -> post-process (BOS/EOS templates).
 */
#ifndef LORAC_TOK_INTERNAL_H
#define LORAC_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lorac/tokenizer.h"

/* ---- small containers (tok_util.c) -------------------------------------- */

typedef struct {
    int32_t *v;
    size_t n, cap;
} tok_ids_t;

int tok_ids_push(tok_ids_t *a, int32_t id); /* 0, or -1 on OOM */

typedef struct {
    char *p;
    size_t n, cap;
} tok_buf_t;

int tok_buf_add(tok_buf_t *b, const void *data, size_t n); /* 0, or -1 on OOM */

/* A NUL-terminated malloc'd copy of n bytes at s; NULL on OOM. */
char *tok_strndup(const char *s, size_t n);

/* Token strings by id; a NULL entry is an id no token uses. */
typedef struct {
    char *s;
    int32_t len;
} tok_str_t;

/* String -> id hash map whose keys are the strings of a tok_str_t table
 * (open addressing, linear probing, power-of-two size, -1 = empty). */
typedef struct {
    int32_t *slots;
    uint32_t mask;
} tok_strmap_t;

int tok_strmap_init(tok_strmap_t *m, size_t n_keys);
void tok_strmap_free(tok_strmap_t *m);
/* Inserts `id` (whose string is strs[id]); returns the id already stored
 * under that string, or -1 when the string was new. */
int32_t tok_strmap_put(tok_strmap_t *m, const tok_str_t *strs, int32_t id);
int32_t tok_strmap_get(const tok_strmap_t *m, const tok_str_t *strs, const char *s, size_t len);

/* Pair (left id, right id) -> merge. prio: lower merges first. */
typedef struct {
    uint64_t *keys; /* (a << 32 | b) + 1; 0 = empty */
    double *prio;
    int32_t *new_id;
    uint32_t mask;
    size_t count;
} tok_pairmap_t;

int tok_pairmap_init(tok_pairmap_t *m, size_t n_keys);
void tok_pairmap_free(tok_pairmap_t *m);
/* Inserts or overwrites (the last duplicate wins, as in HF's HashMap). */
void tok_pairmap_put(tok_pairmap_t *m, int32_t a, int32_t b, double prio, int32_t new_id);
/* Returns the slot index or -1. */
int64_t tok_pairmap_find(const tok_pairmap_t *m, int32_t a, int32_t b);

/* GPT-2 byte <-> unicode table: each byte maps to one code point (printable
 * Latin-1 to itself, the rest to U+0100..U+0143) so byte strings become
 * printable vocabulary strings. */
typedef struct {
    char utf8[256][3]; /* 1 or 2 bytes, NUL-terminated */
    uint8_t utf8_len[256];
    int16_t cp_to_byte[324]; /* -1 when the code point is not in the table */
} tok_bytemap_t;

const tok_bytemap_t *tok_bytemap(void);

/* Decodes one UTF-8 character at s (valid UTF-8 assumed); returns its length. */
int tok_utf8_char(const unsigned char *s, size_t n, uint32_t *cp);
int tok_utf8_len(unsigned char c);

/* Unicode NFC of the UTF-8 text s[0, n) appended to b (nfc.c): 0, -1 out
 * of memory, -2 when b would pass `limit` bytes. */
int tok_nfc_into(tok_buf_t *b, const char *s, size_t n, size_t limit);

/* ---- configuration ------------------------------------------------------- */

typedef enum { TOK_NORM_PREPEND, TOK_NORM_REPLACE, TOK_NORM_NFC } tok_norm_type_t;
typedef struct {
    tok_norm_type_t type;
    char *a, *b; /* PREPEND: a; REPLACE: a -> b (literal string pattern); NFC: neither */
    size_t alen, blen;
} tok_norm_t;

typedef enum {
    TOK_SPLIT_REMOVED, TOK_SPLIT_ISOLATED, TOK_SPLIT_MERGED_PREV, TOK_SPLIT_MERGED_NEXT,
    TOK_SPLIT_CONTIGUOUS
} tok_split_behavior_t;

/* Pre-tokenizer steps. A tokenizer.json ByteLevel becomes PREFIX_SPACE (when
 * add_prefix_space) + SPLIT with the GPT-2 regex (when use_regex) + BYTEMAP;
 * Metaspace becomes METASPACE + SPLIT on "▁" merged with next (when split);
 * Digits becomes SPLIT on \p{N} (or \p{N}+). */
typedef enum { TOK_PRE_SPLIT, TOK_PRE_PREFIX_SPACE, TOK_PRE_BYTEMAP, TOK_PRE_METASPACE } tok_pre_type_t;
typedef enum { TOK_PREPEND_ALWAYS, TOK_PREPEND_FIRST, TOK_PREPEND_NEVER } tok_prepend_t;
typedef struct {
    tok_pre_type_t type;
    pcre2_code *re;                /* SPLIT (also Digits) and BYTELEVEL with use_regex */
    char *pattern;                 /* SPLIT: re's source (literal or regex), kept for GGUF export */
    size_t pattern_len;
    tok_split_behavior_t behavior; /* SPLIT */
    bool invert;                   /* SPLIT */
    tok_prepend_t prepend;         /* METASPACE */
    bool split;                    /* METASPACE: split before each "▁" */
    char repl[8];                  /* METASPACE replacement, UTF-8 */
    size_t repl_len;
} tok_pre_t;

typedef enum {
    TOK_DEC_BYTELEVEL, TOK_DEC_REPLACE, TOK_DEC_BYTEFALLBACK, TOK_DEC_FUSE, TOK_DEC_STRIP,
    TOK_DEC_METASPACE
} tok_dec_type_t;
typedef struct {
    tok_dec_type_t type;
    char *a, *b; /* REPLACE a -> b; STRIP: a = content char; METASPACE: a = replacement */
    size_t alen, blen;
    int32_t start, stop;   /* STRIP */
    tok_prepend_t prepend; /* METASPACE */
} tok_dec_t;

/* An added token. Matched leftmost-longest on the raw text before the model. */
typedef struct {
    int32_t id;
    bool special, lstrip, rstrip, single_word, normalized;
} tok_added_t;

/* Byte trie over added-token contents for leftmost-longest matching. */
typedef struct {
    /* node i's children are found through a hash of (node, byte) */
    uint64_t *keys;   /* ((uint64_t)node << 8 | byte) + 1; 0 = empty */
    int32_t *child;
    uint32_t mask;
    int32_t *term;    /* per node: index into added[] ending here, or -1 */
    int32_t n_nodes, cap_nodes;
} tok_trie_t;

#define TOK_MAX_NORM 8
#define TOK_MAX_PRE 8
#define TOK_MAX_DEC 8
#define TOK_MAX_POST 8

typedef enum { TOK_FORMAT_JSON, TOK_FORMAT_LLAMA2C } tok_format_t;

struct lorac_tokenizer {
    tok_format_t format;
    int32_t n_ids;     /* ids are 0..n_ids-1 */
    tok_str_t *tokens; /* [n_ids] */
    uint8_t *flags;    /* [n_ids] TOK_F_* */
    float *scores;     /* [n_ids], llama2.c only */
    tok_strmap_t vocab_map; /* every token string (model vocab and added) -> id */
    tok_pairmap_t merges;

    /* model */
    bool byte_fallback, fuse_unk, ignore_merges;
    int32_t unk_id;            /* -1 when none */
    int32_t byte_ids[256];     /* "<0xNN>" ids, -1 when absent */
    bool byte_level_model;     /* vocab is in GPT-2 byte-to-unicode form */

    tok_norm_t norms[TOK_MAX_NORM];
    int n_norms;
    tok_pre_t pres[TOK_MAX_PRE];
    int n_pres;
    tok_dec_t decs[TOK_MAX_DEC];
    int n_decs;
    bool has_decoder;

    int32_t post_prefix[TOK_MAX_POST], post_suffix[TOK_MAX_POST];
    int n_post_prefix, n_post_suffix;

    tok_added_t *added;
    int32_t n_added;
    tok_trie_t trie;
    bool match_added; /* false for llama2.c: run.c never matches "<s>" in text */

    int32_t bos_id, eos_id;
};

enum { TOK_F_MODEL = 1, TOK_F_ADDED = 2, TOK_F_SPECIAL = 4 };

/* ---- shared internals ----------------------------------------------------- */

/* Allocates the id tables of `tok` for n_ids ids (zeroed). */
lorac_status_t tok_alloc_ids(lorac_tokenizer_t *tok, int32_t n_ids, const char *label);
/* Sets tokens[id] to a copy of s; flags |= flag. Fails on OOM. */
int tok_set_token(lorac_tokenizer_t *tok, int32_t id, const char *s, size_t len, uint8_t flag);
/* Id of a model-vocab string, or -1. */
int32_t tok_model_lookup(const lorac_tokenizer_t *tok, const char *s, size_t len);
/* Fills byte_ids from "<0xNN>" vocab entries. */
void tok_find_byte_ids(lorac_tokenizer_t *tok);

/* added_tokens.c */
lorac_status_t tok_trie_build(lorac_tokenizer_t *tok, const char *label);
void tok_trie_free(tok_trie_t *t);
typedef struct {
    size_t start, len;
    int32_t id; /* added token id, or -1 for text to run through the model */
} tok_segment_t;
/* Splits text into model segments and added-token matches. *segs malloc'd. */
lorac_status_t tok_split_added(const lorac_tokenizer_t *tok, const char *text, size_t len,
                               tok_segment_t **segs, size_t *n_segs);

/* pretokenize.c */
typedef struct {
    tok_buf_t buf;
    size_t *off, *len;
    bool *origin; /* piece begins at offset 0 of the original text */
    size_t n, cap;
} tok_pieces_t;
void tok_pieces_free(tok_pieces_t *p);
/* Normalizes and pre-tokenizes one segment into pieces, using ws[0] and
 * ws[1] as work space; *result points at the one holding the pieces.
 * at_origin: the segment starts the input (Metaspace prepend_scheme first). */
lorac_status_t tok_pretokenize(const lorac_tokenizer_t *tok, const char *s, size_t n,
                               bool at_origin, tok_pieces_t ws[2], pcre2_match_data *md,
                               pcre2_match_context *mctx, tok_pieces_t **result);
/* Compiles a regex with UTF|UCP (+JIT when available). NULL and a message on error. */
pcre2_code *tok_regex_compile(const char *pattern, size_t len, bool literal, const char *label,
                              lorac_status_t *status);
/* The GPT-2 pre-tokenizer regex used by ByteLevel(use_regex=true). */
extern const char tok_gpt2_regex[];

/* bpe.c */
typedef struct {
    int32_t *id, *prev, *next;
    uint32_t *pos;
    struct tok_heap_entry *heap;
    size_t cap, heap_cap;
} tok_bpe_scratch_t;
void tok_bpe_scratch_free(tok_bpe_scratch_t *s);
/* BPE-encodes one pre-token (a whole "word") and appends its ids. */
lorac_status_t tok_bpe_word(const lorac_tokenizer_t *tok, const char *w, size_t n,
                            tok_bpe_scratch_t *scratch, tok_ids_t *out);

/* tokenizer_json.c helpers shared with llama2c_tokenizer.c */
lorac_status_t tok_finish_load(lorac_tokenizer_t *tok, const char *label);

#endif /* LORAC_TOK_INTERNAL_H */
