/* lorac/dataset.h — training data: JSONL (or a JSON array) of examples in
 * the formats users already have, tokenized once into (tokens, labels) kept
 * in one contiguous array, and a deterministic, resumable batcher that turns
 * them into ready (inputs, targets, positions) rows.
 *
 * Formats (one JSON object per line; blank lines are skipped; a file whose
 * first non-space character is '[' is a JSON array of the same objects, as
 * the Alpaca release ships; a UTF-8 BOM is ignored; other keys are ignored):
 *   text        {"text": "..."}                         loss on every token
 *   completion  {"prompt": "...", "completion": "..."}  loss on the completion
 *   alpaca      {"instruction", "input" (optional), "output"}  loss on the output
 *   chat        {"messages": [{"role": "system|user|assistant", "content": "..."}, ...]}
 *               loss on the assistant replies and their end-of-turn token;
 *               also ShareGPT records, {"conversations": [{"from":
 *               "system|human|gpt", "value": "..."}, ...]} (human = user,
 *               gpt = assistant); either may carry a top-level "system"
 *               string (LLaMA-Factory's ShareGPT column), used when the
 *               conversation does not start with a system message of its own
 *   tokens      {"input_ids": [...], "labels": [...]}  labels optional (then all
 *               of input_ids); -100 masks a position, as HuggingFace does; a
 *               label must be -100 or the input id at its position; no
 *               special tokens are added
 * AUTO picks the format from the keys of the first good record: messages or
 * conversations → chat, input_ids → tokens, instruction+output → alpaca,
 * prompt+completion → completion, text → text.
 * Column renames (params.columns): "ours=theirs,..." reads each record's key
 * `theirs` as the field `ours` (one of text, prompt, completion,
 * instruction, input, output, messages, conversations, system, input_ids,
 * labels) before the format is detected, so a dataset with its own names
 * loads as is: SAMSum's {instruction, dialogue, summary} with
 * "input=dialogue,output=summary" is alpaca. A record without a mapped key
 * is a bad record ("missing \"summary\" (the column mapped to
 * \"output\")"), except for the optional input, system and labels.
 * A file whose name ends in ".txt" is plain text (TinyStories): examples are
 * separated by "<|endoftext|>" when the file contains that marker, otherwise
 * by blank lines; each is trimmed and read as a text example (format AUTO or
 * TEXT only).
 *
 * Tokenization. text: encode(text) with the tokenizer's post-processor (BOS
 * for Llama-style tokenizers, nothing for GPT-2 style), then EOS when add_eos
 * and the tokenizer has one, as HF SFT trainers do. completion/alpaca: prompt
 * and response are tokenized together as one string, exactly as inference
 * sees them; the first len(encode(prompt)) tokens are the prompt (label
 * -100), the rest the response, then EOS. This is TRL's prompt-completion
 * rule; tokenizing the two parts apart would give SentencePiece tokenizers a
 * spurious "▁" at the response's start. Nothing is inserted between prompt
 * and completion: the data brings its own separator. The alpaca prompt is the
 * Stanford Alpaca template ("Below is an instruction that describes a
 * task..." with and without "### Input:"). chat: the conversation is rendered
 * with a chat template and tokenized without the post-processor (the template
 * writes its own BOS), as HF's apply_chat_template(tokenize=True) does, so the
 * ids equal those of the whole rendered string. Like HF, special-token text
 * inside a message (a user typing "<|im_end|>") is read as that special token.
 * With train_on_inputs every token is in the loss.
 *
 * Chat templates (the strings the models' Jinja templates produce; no
 * generation prompt):
 *   chatml     "<|im_start|>{role}\n{content}<|im_end|>\n" per message; when
 *              recognised from a template with a default system message
 *              (SmolLM2, Qwen2.5) that message is inserted when the
 *              conversation starts without one
 *   llama-2    "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s>"
 *              then "<s>[INST] {user} [/INST] {assistant} </s>" per turn;
 *              contents stripped; roles must alternate user/assistant
 *   llama-3    "<|begin_of_text|>" then "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"
 *              per message, contents stripped (Meta-Llama-3-Instruct)
 *   llama-3.1  llama-3 with the 3.1/3.2 system block always first:
 *              "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date:
 *              December 2023\nToday Date: 26 Jul 2024\n\n{system}<|eot_id|>" (the
 *              templates' own fallback date; HF renders 3.2 with today's date)
 *   zephyr     "<|{role}|>\n{content}</s>\n" per message (TinyLlama-Chat, Zephyr)
 *   mistral    "<s>" then "[INST]{user}[/INST]" and "{assistant}</s>" per turn
 *              (Mistral NeMo); roles must alternate user/assistant; the
 *              system message is put before the user text of the last
 *              message when that is a user turn, and dropped otherwise, as
 *              NeMo's Jinja template does
 * "<s>", "</s>" and "<|begin_of_text|>" stand for the BOS/EOS strings:
 * tokenizer_config.json's bos_token/eos_token when given, else the template's
 * default when the tokenizer has it, else the tokenizer's own. Every special
 * string a template needs must encode to one token, else loading fails naming
 * it. Without chat_template the template is recognised from
 * tokenizer_config.json's "chat_template" (or a chat_template.jinja beside
 * it); one lorac cannot render exactly (Phi-4, Granite, SmolLM3, ...)
 * is an error asking for --chat-template.
 *
 * Errors: a bad record fails the load with LORAC_STATUS_FORMAT and the
 * message "FILE:LINE: <problem>" (not valid UTF-8, not valid JSON, not a JSON
 * object, missing "key", "key" must be a string, empty example, unknown role,
 * labels length mismatch, ids outside the vocabulary, ...). In a JSON array
 * file LINE is the line where the element starts. With skip_bad such records
 * are skipped and counted instead. A file without a usable example fails with
 * "FILE: no examples". Examples longer than seq_len + 1 tokens keep their
 * first seq_len + 1 tokens (a row of seq_len inputs has seq_len + 1 tokens of
 * targets) and are counted as truncated.
 *
 * Thread safety: a loaded dataset is read-only except for the shuffle
 * permutation the batcher caches in it: use one dataset's batcher from one
 * thread at a time.
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
/* The name of a format; "?" for an out-of-range value. */
const char *lorac_data_format_name(lorac_data_format_t f);

typedef struct {
    lorac_data_format_t format;    /* AUTO: from the first record's keys */
    const char *chat_template;     /* one of LORAC_CHAT_TEMPLATES; NULL: recognise */
    const char *tokenizer_config;  /* path of tokenizer_config.json or NULL */
    const char *columns;           /* "ours=theirs,...": the file's keys renamed to a format's (NULL: none) */
    int32_t seq_len;               /* row length; examples keep at most seq_len + 1 tokens */
    int32_t vocab_size;            /* token ids must be below it (INT32_MAX: the tokenizer's) */
    bool train_on_inputs;          /* loss on prompts and user turns too */
    bool skip_bad;                 /* skip and count bad records instead of failing */
    bool add_eos;                  /* text/completion/alpaca end with EOS */
} lorac_dataset_params_t;

/* AUTO, no template or config, seq_len 256, vocab_size INT32_MAX, add_eos. */
lorac_dataset_params_t lorac_dataset_default_params(void);

typedef struct lorac_dataset lorac_dataset_t;

/* Loads and tokenizes every example. `tok` is used during the call only; it
 * may be NULL for the tokens format. On failure *out is NULL and the message
 * names the file (and line). */
lorac_status_t lorac_dataset_load(const char *path, const lorac_tokenizer_t *tok, const lorac_dataset_params_t *params,
                                  lorac_dataset_t **out);
/* Same from memory; `label` stands for the file name in messages and in the
 * ".txt" rule. For tests and the fuzz target. */
lorac_status_t lorac_dataset_load_memory(const char *data, size_t len, const char *label, const lorac_tokenizer_t *tok,
                                         const lorac_dataset_params_t *params, lorac_dataset_t **out);
void lorac_dataset_free(lorac_dataset_t *ds);

int64_t lorac_dataset_n_examples(const lorac_dataset_t *ds);
int64_t lorac_dataset_n_skipped(const lorac_dataset_t *ds);   /* bad records skipped (skip_bad) */
int64_t lorac_dataset_n_truncated(const lorac_dataset_t *ds); /* examples cut to seq_len + 1 tokens */
int64_t lorac_dataset_n_tokens(const lorac_dataset_t *ds);    /* tokens of all examples */
int64_t lorac_dataset_n_trainable(const lorac_dataset_t *ds); /* of which labels are not -100 */
/* Examples with no label but the first left (nothing to learn from): every
 * response token masked, or cut off by seq_len. */
int64_t lorac_dataset_n_without_targets(const lorac_dataset_t *ds);
/* "FILE:LINE: problem" of the first skipped record, NULL when none; valid as
 * long as the dataset. */
const char *lorac_dataset_first_skip_reason(const lorac_dataset_t *ds);
lorac_data_format_t lorac_dataset_format(const lorac_dataset_t *ds); /* never AUTO */
int32_t lorac_dataset_seq_len(const lorac_dataset_t *ds);
/* Canonical name of the chat template used ("chatml", ...), NULL unless chat. */
const char *lorac_dataset_chat_template(const lorac_dataset_t *ds);
/* The token that pads rows: EOS, or 0 when there is none. */
int32_t lorac_dataset_pad_id(const lorac_dataset_t *ds);
/* Holds out n_eval examples (1 <= n_eval < n_examples), chosen at random
 * from `seed` (a stream of its own, not the batcher's), as a new dataset in
 * *eval; ds keeps the rest. Both keep file order. The same data and seed
 * always hold out the same examples, so a resumed run splits as the first
 * did. INVALID_ARG when n_eval leaves either side empty. */
lorac_status_t lorac_dataset_split(lorac_dataset_t *ds, int64_t n_eval, uint64_t seed, lorac_dataset_t **eval);
/* The n_eval of --eval-split X for n examples: X in (0, 1) is a fraction
 * (rounded, at least 1), a whole X >= 1 a count; -1 for any other X. */
int64_t lorac_dataset_split_size(int64_t n_examples, double split);
/* Tokens and labels (the token itself where it is in the loss, else -100) of
 * example i (file order, 0 <= i < n_examples); pointers into the dataset.
 * Returns its length, 1 .. seq_len + 1, or -1 for a bad index. */
int32_t lorac_dataset_example(const lorac_dataset_t *ds, int64_t i, const int32_t **tokens, const int32_t **labels);

/* ---- chat templates ------------------------------------------------------------ */

/* The template names lorac renders, for messages and usage lines. */
#define LORAC_CHAT_TEMPLATES                                                                                       \
    "chatml|gemma|gemma3|llama-2|llama-3|llama-3.1|mistral|mistral-v0.1|mistral-v0.2|mistral-v1|mistral-v3|phi3|" \
    "phi4|phi4-mini|phi4-unsloth|qwen3|zephyr"

typedef struct {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content; /* UTF-8 */
} lorac_chat_message_t;

/* Canonical name for a --chat-template value (aliases llama2, llama3,
 * llama3.1, llama-3.2, llama3.2 accepted); NULL when unknown. Static string. */
const char *lorac_dataset_chat_template_name(const char *name);

/* Recognises a Jinja chat template by its distinctive strings. *name gets a
 * static canonical name; *default_system (may be NULL) a malloc'd default
 * system message the template inserts when a conversation has none, or NULL.
 * LORAC_STATUS_UNSUPPORTED, asking for --chat-template, when lorac cannot
 * render that template exactly. */
lorac_status_t lorac_dataset_chat_template_recognize(const char *jinja, const char **name, char **default_system);

/* The text of a model's chat template: tokenizer_config.json's
 * "chat_template" (a string, or a list of {name, template} of which
 * "default" is used) or, when it has none, the file chat_template.jinja
 * beside it. *jinja is malloc'd, or NULL (and OK) when there is none; an
 * unreadable or malformed tokenizer_config.json is an error. */
lorac_status_t lorac_dataset_chat_template_text(const char *tokenizer_config, char **jinja);

/* Reads that template and recognises it as above. */
lorac_status_t lorac_dataset_chat_template_from_config(const char *tokenizer_config, const char **name,
                                                       char **default_system);

/* Renders a conversation exactly as the template does. bos/eos: the
 * tokenizer's strings, or NULL for the template's defaults ("<s>", "</s>",
 * "<|begin_of_text|>"). default_system may be NULL. *out is malloc'd and
 * NUL-terminated; len may be NULL. INVALID_ARG for an unknown template,
 * FORMAT for a conversation the template refuses (a role other than
 * system/user/assistant; llama-2 or mistral roles not alternating). */
lorac_status_t lorac_dataset_chat_render(const char *template_name, const char *default_system,
                                         const lorac_chat_message_t *messages, size_t n_messages, const char *bos,
                                         const char *eos, char **out, size_t *len);

/* lorac_dataset_chat_render followed by the template's assistant generation
 * prompt, as HF's apply_chat_template(add_generation_prompt=True) renders it:
 * chatml and qwen3 "<|im_start|>assistant\n", llama-3 and llama-3.1
 * "<|start_header_id|>assistant<|end_header_id|>\n\n", zephyr
 * "<|assistant|>\n"; llama-2's and mistral's templates have none (the text
 * already ends with "[/INST]" after the last user turn). The prompt of a
 * chat request. enable_thinking is Qwen3's template variable: false adds
 * an empty, closed thinking block ("<think>\n\n</think>\n\n") to qwen3's
 * prompt, so that the model answers without reasoning; the other templates
 * ignore it, as their Jinja does. */
lorac_status_t lorac_dataset_chat_render_generation(const char *template_name, const char *default_system,
                                                    const lorac_chat_message_t *messages, size_t n_messages,
                                                    const char *bos, const char *eos, bool enable_thinking, char **out,
                                                    size_t *len);

/* Chat template variables given as a JSON object, as llama.cpp's
 * --chat-template-kwargs and vLLM's chat_template_kwargs take them
 * ('{"enable_thinking": false}'): *enable_thinking becomes 0 or 1 when the
 * object sets it and is left as it was otherwise. Other variables are
 * accepted and ignored, as a template ignores variables it does not read.
 * FORMAT, naming the problem, for text that is not a JSON object or an
 * enable_thinking that is not true or false. */
lorac_status_t lorac_dataset_chat_kwargs_parse(const char *json, size_t len, int *enable_thinking);

/* The BOS/EOS strings template_name writes for this tokenizer, chosen as
 * lorac_dataset_load chooses them: tokenizer_config.json's bos_token /
 * eos_token (tokenizer_config may be NULL), else the template's default when
 * the tokenizer has that token, else the tokenizer's own. Checks that every
 * special string the template writes encodes to one token (UNSUPPORTED,
 * naming it, otherwise). *bos and *eos are malloc'd. */
lorac_status_t lorac_dataset_chat_tokens(const char *template_name, const lorac_tokenizer_t *tok,
                                         const char *tokenizer_config, char **bos, char **eos);

/* The token string that ends an assistant turn in template_name's
 * rendering, where a chat reply stops: "<|im_end|>" (chatml), "<|eot_id|>"
 * (llama-3, llama-3.1), or eos for llama-2, mistral and zephyr, whose turns
 * end with EOS (NULL eos: "</s>"). NULL for an unknown template. Static
 * string or eos. */
const char *lorac_dataset_chat_end_of_turn(const char *template_name, const char *eos);

/* ---- batches ---------------------------------------------------------------------
 * A row of length T = seq_len holds inputs x[0..T-1] and targets y[t]: the
 * label of the token after x[t] in the same example, else -100. An example of
 * n tokens fills min(n, T) slots (one of T + 1 tokens puts its last token
 * only in the targets); its last slot's target is -100 when n <= T, so
 * nothing is predicted across examples. Without pack each row holds one
 * example; with pack consecutive examples (in the epoch's order) share a row
 * while they fit whole, and one that does not fit starts the next row.
 * Positions restart at 0 at each example, segments number a row's examples
 * 0, 1, ...; attention must keep to the example: key k is visible to query q
 * iff q - pos[q] <= k <= q (equivalently, same segment and k <= q).
 * Padding: token pad_id, target -100, segment -1, positions 0, 1, ... from
 * its start (it forms a segment of its own).
 */

/* Where a batcher is: plain data, saved in checkpoints field by field and
 * restored bit-exactly, mid-epoch included. Epoch e's order is a Fisher-Yates
 * permutation from an RNG seeded with (seed, e), so nothing else need be
 * saved; with shuffle 0 it is file order. */
typedef struct {
    uint64_t seed;
    int64_t epoch;   /* 0-based */
    int64_t index;   /* next example in this epoch's order */
    int32_t shuffle;
} lorac_data_cursor_t;

lorac_data_cursor_t lorac_data_cursor_init(uint64_t seed, bool shuffle);

typedef struct {
    int32_t rows;       /* rows holding an example; the rows after them are all padding */
    int32_t examples;   /* examples placed in this batch */
    int64_t n_targets;  /* targets other than -100 */
    int64_t n_tokens;   /* positions holding examples' tokens (the rest is padding) */
    bool epoch_end;     /* the epoch's last batch: the cursor is now at (epoch + 1, 0) */
} lorac_data_batch_info_t;

/* Fills one batch: tokens, targets, pos and segments are (batch, seq_len)
 * row-major; segments and info may be NULL. A row's padding (after its
 * examples) is token pad_id, target -100, position 0 and segment -1. A batch never spans two epochs:
 * the last one of an epoch may have fewer rows (the rest padding), so an
 * evaluation that reads batches until epoch_end sees every example exactly
 * once. Advances the cursor. INVALID_ARG for batch < 1, seq_len < 1 or a
 * cursor whose index is past the dataset (a checkpoint of other data). */
lorac_status_t lorac_dataset_read_batch(lorac_dataset_t *ds, lorac_data_cursor_t *cur, int32_t batch, int32_t seq_len,
                                        bool pack, int32_t *tokens, int32_t *targets, int32_t *pos, int32_t *segments,
                                        lorac_data_batch_info_t *info);
/* lorac_dataset_read_batch without segments; returns the number of targets,
 * or -1 for invalid arguments (message set). */
int64_t lorac_dataset_next_batch(lorac_dataset_t *ds, lorac_data_cursor_t *cur, int32_t batch, int32_t seq_len,
                                 bool pack, int32_t *tokens, int32_t *targets, int32_t *pos);
/* Batches in one epoch, for --epochs -> steps: ceil(n / batch) without pack;
 * with pack the rows of packing in file order (a shuffled epoch may pack into
 * a few rows more or fewer; lorac_dataset_epoch_batches gives it exactly). */
int64_t lorac_dataset_batches_per_epoch(const lorac_dataset_t *ds, int32_t batch, int32_t seq_len, bool pack);
/* Batches of the epoch `cur` is in, counted from that epoch's start, in its
 * own order. -1 for batch < 1 or on allocation failure. */
int64_t lorac_dataset_epoch_batches(const lorac_dataset_t *ds, const lorac_data_cursor_t *cur, int32_t batch,
                                    int32_t seq_len, bool pack);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_DATASET_H */
