/* A tokenizer's vocabulary as llama.cpp's GGUF files describe it
 * (tokenizer.ggml.*): for the GGUF model exporter (src/export/). */
#ifndef LORAC_TOK_GGUF_H
#define LORAC_TOK_GGUF_H

#include <stdbool.h>

#include "lorac/tokenizer.h"

/* llama.cpp's token types */
enum { TOK_GGUF_NORMAL = 1, TOK_GGUF_UNKNOWN = 2, TOK_GGUF_CONTROL = 3, TOK_GGUF_USER_DEFINED = 4,
       TOK_GGUF_UNUSED = 5, TOK_GGUF_BYTE = 6 };

typedef struct {
    const char *model;    /* "llama" (SentencePiece-style BPE) or "gpt2" (byte-level BPE) */
    const char *pre;      /* llama.cpp's pre-tokenizer name: "default", "gpt-2", "llama-bpe", "qwen2", "smollm" */
    int32_t n_tokens;
    char **tokens;        /* [n_tokens], NUL-terminated; ids without a token are "[PAD<id>]" */
    size_t *token_lens;
    int32_t *types;       /* [n_tokens] TOK_GGUF_* */
    float *scores;        /* [n_tokens] for "llama": higher merges first; NULL for "gpt2" */
    int64_t n_merges;     /* "gpt2": "left right" in rank order */
    char **merges;
    int32_t bos, eos, unk; /* -1 when none */
    bool add_bos, add_eos, add_space_prefix;
} tok_gguf_vocab_t;

/* The vocabulary padded to n_vocab ids (the model's embedding rows), or
 * LORAC_STATUS_UNSUPPORTED, saying why, for a tokenizer llama.cpp cannot
 * reproduce (a pre-tokenizer or normalizer it has no name for, more
 * tokens than rows). */
lorac_status_t tok_gguf_vocab(const lorac_tokenizer_t *tok, int32_t n_vocab, tok_gguf_vocab_t *out);
void tok_gguf_vocab_free(tok_gguf_vocab_t *v);

#endif
