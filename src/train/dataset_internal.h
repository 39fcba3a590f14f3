/* Private to src/train/dataset.c, chat_template.c and batcher.c. */
#ifndef LORAC_DATASET_INTERNAL_H
#define LORAC_DATASET_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lorac/dataset.h"

/* All examples back to back: example i is tokens/labels[offsets[i] ..
 * offsets[i+1]). One allocation per array keeps 100k-example sets fast to
 * load and cheap to index. */
struct lorac_dataset {
    int32_t *tokens, *labels;
    int64_t n_tok, cap_tok;
    int64_t *offsets; /* (n + 1) */
    uint8_t *cut;     /* (n) 1 where the example was truncated to seq_len + 1 */
    int64_t n, cap;
    int64_t skipped, truncated, n_trainable, no_targets;
    char *first_skip;
    lorac_data_format_t format;
    int chat_tpl; /* chat_tpl_t, -1 unless chat */
    int32_t seq_len, pad_id;
    /* the batcher's cached order of one epoch (see batcher.c) */
    int64_t *perm;
    int64_t perm_epoch;
    uint64_t perm_seed;
    int32_t perm_shuffle;
};

/* ---- growable byte string ---- */
typedef struct {
    char *s;
    size_t len, cap;
} dbuf_t;
int dbuf_put(dbuf_t *b, const char *s, size_t n); /* 0, or -1 out of memory; keeps s NUL-terminated */
int dbuf_puts(dbuf_t *b, const char *s);
void dbuf_free(dbuf_t *b);

/* ---- chat templates ---- */
typedef enum {
    CHAT_CHATML,
    CHAT_LLAMA2,
    CHAT_LLAMA3,
    CHAT_LLAMA31,
    CHAT_ZEPHYR,
    CHAT_MISTRAL,     /* Mistral NeMo's [INST] template */
    CHAT_MISTRAL_V01, /* Mistral 7B Instruct v0.1's first template */
    CHAT_MISTRAL_V02, /* Mixtral 8x7B Instruct v0.1's and Mistral 7B v0.2's first template */
    CHAT_MISTRAL_V1,  /* the spaced template Mistral later gave those models */
    CHAT_MISTRAL_V3,  /* Mistral 7B Instruct v0.3's and Mistral Large 2407's ("v3") */
    CHAT_QWEN3,       /* Qwen3's: ChatML with a <think> block opening the replies after the last question */
    CHAT_GEMMA,       /* Gemma 1's and 2's: <start_of_turn>user/model turns, no system message */
    CHAT_GEMMA3,      /* Gemma 3's: the same with a system message folded into the first user turn */
    CHAT_PHI3,        /* Phi-3.5's: <|user|>\n...<|end|>\n turns, the conversation closed by EOS */
    CHAT_PHI4,        /* Phi-4's: <|im_start|>user<|im_sep|>...<|im_end|>, the assistant header after each user turn */
    CHAT_PHI4_UNSLOTH, /* Unsloth's Phi-4: every message with its header, the generation prompt on request */
    CHAT_PHI4_MINI,   /* Phi-4-mini's: <|user|>...<|end|> turns, no newlines, the conversation closed by EOS */
    CHAT_COUNT
} chat_tpl_t;

/* A rendered conversation as pieces that tile the text. trainable: an
 * assistant reply with its end-of-turn marker. chunk_start: the piece starts
 * at the beginning or right before/after a special token; tokenizers split
 * at special tokens before anything else, so a run of pieces from one
 * chunk_start to the next can be encoded on its own and the ids concatenated
 * equal those of the whole text. */
typedef struct {
    size_t start, end;
    bool trainable, chunk_start;
} chat_piece_t;

typedef struct {
    dbuf_t text;
    chat_piece_t *pieces;
    size_t n, cap;
} chat_render_t;

int chat_tpl_from_name(const char *name); /* chat_tpl_t or -1 */
const char *chat_tpl_name(chat_tpl_t t);
/* Renders into r (reset first). FORMAT with a location-free message for a
 * conversation the template refuses; NOMEM. */
lorac_status_t chat_render_pieces(chat_tpl_t t, const char *default_system, const lorac_chat_message_t *m, size_t n,
                                  const char *bos, const char *eos, chat_render_t *r);
void chat_render_free(chat_render_t *r);
/* bos_token / eos_token of a tokenizer_config.json (string or {"content"}),
 * malloc'd, NULL when absent. Errors are IO/FORMAT with the path. */
lorac_status_t chat_config_tokens(const char *path, char **bos, char **eos);

#endif
