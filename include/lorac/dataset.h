/* lorac/dataset.h — training data: JSONL (or a JSON array) of examples in
 * the formats users already have, tokenized once into (tokens, loss mask),
 * and a deterministic, resumable batcher.
 *
 * Formats (one JSON object per line; blank lines skipped):
 *   text        {"text": "..."}                         loss on everything
 *   completion  {"prompt": "...", "completion": "..."}  loss on the completion
 *   alpaca      {"instruction", "input" (optional), "output"}, rendered with
 *               the Stanford Alpaca prompt; loss on the output. A file whose
 *               first character is '[' is read as a JSON array of records.
 *   chat        {"messages": [{"role", "content"}, ...]} rendered with a chat
 *               template (chatml, llama-2, llama-3, zephyr); loss on the
 *               assistant turns.
 *   tokens      {"input_ids": [...], "labels": [...]} with -100 masking a
 *               position (labels optional: then all of input_ids).
 * Text examples get the tokenizer's BOS (when it adds one) and EOS.
 * train_on_inputs puts the loss on prompts too. Errors name FILE:LINE.
 */
#ifndef LORAC_DATASET_H
#define LORAC_DATASET_H

#include <stdbool.h>

#include "lorac/core.h"
#include "lorac/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    LORAC_DATA_AUTO = 0,
    LORAC_DATA_TEXT,
    LORAC_DATA_COMPLETION,
    LORAC_DATA_ALPACA,
    LORAC_DATA_CHAT,
    LORAC_DATA_TOKENS
} lorac_data_format_t;

/* "auto", "text", ... -> 0 and *out; -1 when unknown. */
int lorac_data_format_parse(const char *name, lorac_data_format_t *out);
const char *lorac_data_format_name(lorac_data_format_t f);

typedef struct {
    lorac_data_format_t format;
    const char *chat_template;   /* chatml|llama-2|llama-3|zephyr; NULL: from tokenizer_config */
    const char *tokenizer_config;/* path of tokenizer_config.json or NULL */
    int32_t seq_len;             /* longer examples are truncated to seq_len tokens */
    int32_t vocab_size;          /* token ids must be below it */
    bool train_on_inputs;
    bool skip_bad;               /* skip and count malformed lines instead of failing */
} lorac_dataset_params_t;

lorac_dataset_params_t lorac_dataset_default_params(void);

typedef struct lorac_dataset lorac_dataset_t;

/* Loads and tokenizes every example (truncated to seq_len tokens). tok may
 * be NULL for the tokens format. */
lorac_status_t lorac_dataset_load(const char *path, const lorac_tokenizer_t *tok, const lorac_dataset_params_t *params,
                                  lorac_dataset_t **out);
void lorac_dataset_free(lorac_dataset_t *ds);

int64_t lorac_dataset_n_examples(const lorac_dataset_t *ds);
int64_t lorac_dataset_n_skipped(const lorac_dataset_t *ds);
int64_t lorac_dataset_n_truncated(const lorac_dataset_t *ds);
lorac_data_format_t lorac_dataset_format(const lorac_dataset_t *ds);
/* Tokens and labels (the token itself where it is in the loss, else -100)
 * of example i; returns its length. */
int32_t lorac_dataset_example(const lorac_dataset_t *ds, int64_t i, const int32_t **tokens, const int32_t **labels);

/* Where a batcher is: a plain struct, saved in checkpoints as it is. */
typedef struct {
    uint64_t seed;
    int64_t epoch;        /* 0-based */
    int64_t index;        /* next example in this epoch's order */
    int32_t shuffle;
} lorac_data_cursor_t;

lorac_data_cursor_t lorac_data_cursor_init(uint64_t seed, bool shuffle);

/* Fills one batch of rows (batch, seq_len): tokens (padding 0), targets
 * (target[i] = the next token when it is in the loss, else -100) and
 * positions (restarting at 0 where an example starts, so attention stays
 * inside it). Without pack each row holds one example; with pack, whole
 * examples follow each other until the row is full. The label of a token is
 * the target of the position before it, so no target crosses from one
 * example into the next. Advances the cursor
 * (wrapping into the next epoch, reshuffled). Returns the number of targets. */
int64_t lorac_dataset_next_batch(lorac_dataset_t *ds, lorac_data_cursor_t *cur, int32_t batch, int32_t seq_len,
                                 bool pack, int32_t *tokens, int32_t *targets, int32_t *pos);
/* Batches in one epoch (for --epochs). */
int64_t lorac_dataset_batches_per_epoch(const lorac_dataset_t *ds, int32_t batch, int32_t seq_len, bool pack);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_DATASET_H */
