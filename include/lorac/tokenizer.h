/* lorac/tokenizer.h — HuggingFace tokenizer.json BPE tokenizers and the
 * llama2.c tokenizer.bin format.
 *
 * Supported tokenizer.json models (BPE, "type" may be absent):
 *  - byte-level BPE (GPT-2, Llama 3, SmolLM2, Qwen2): pre_tokenizer ByteLevel
 *    and/or Split(regex) and Digits, possibly in a Sequence; the split regex
 *    comes from the file and runs through PCRE2 with UTF and UCP; ignore_merges;
 *    merges as "a b" strings or ["a", "b"] pairs.
 *  - SentencePiece-style BPE (Llama 2, TinyLlama): normalizer Prepend("▁") +
 *    Replace(" " -> "▁") or pre_tokenizer Metaspace; byte_fallback <0xNN>;
 *    fuse_unk.
 *  - added_tokens (special or not) are matched before the model and never
 *    split; post_processor TemplateProcessing / ByteLevel / BERT-less Llama
 *    style adds BOS (and EOS) as the file says.
 * Encoding runs in O(n log n) in the input length: BPE merges use a heap over
 * adjacent pairs, so one huge pre-token (100k spaces) is not quadratic.
 * truncation and padding sections of tokenizer.json are ignored. Unicode
 * normalizers (NFC, ...) and non-BPE models are refused as UNSUPPORTED.
 *
 * The llama2.c format: int32 max_token_length, then per token: float32 score,
 * int32 length, bytes. The vocabulary size is not stored (it comes from the
 * model header). BOS = 1, EOS = 2, ids 3..258 are byte tokens "<0xNN>".
 * Such a tokenizer encodes exactly as llama2.c's run.c (dummy-prefix space,
 * greedy highest-score merge, leftmost on ties); like run.c it does not
 * treat "<s>" in the text as a special token. Internally (and in
 * lorac_tokenizer_token_str) its pieces use "▁" for spaces and BOS/EOS/UNK
 * read "<s>", "</s>", "<unk>", as in the equivalent tokenizer.json.
 *
 * Thread safety: a loaded tokenizer is read-only; encode/decode may run
 * concurrently on one tokenizer.
 */
#ifndef LORAC_TOKENIZER_H
#define LORAC_TOKENIZER_H

#include <stdbool.h>

#include "lorac/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lorac_tokenizer lorac_tokenizer_t;

/* Loads a tokenizer.json file. */
lorac_status_t lorac_tokenizer_load_json(const char *path, lorac_tokenizer_t **out);
/* Same from memory (`json` need not be NUL-terminated); `label` names it in
 * error messages. Used by tests and the fuzz target. */
lorac_status_t lorac_tokenizer_load_json_memory(const char *json, size_t len, const char *label,
                                                lorac_tokenizer_t **out);
/* Loads a llama2.c tokenizer.bin with `vocab_size` entries. */
lorac_status_t lorac_tokenizer_load_llama2c(const char *path, int32_t vocab_size,
                                            lorac_tokenizer_t **out);
lorac_status_t lorac_tokenizer_load_llama2c_memory(const void *data, size_t len,
                                                   int32_t vocab_size, const char *label,
                                                   lorac_tokenizer_t **out);
void lorac_tokenizer_free(lorac_tokenizer_t *tok);

/* Encodes UTF-8 `text` of `len` bytes. add_special: apply the post-processor
 * (e.g. prepend BOS) as HF's add_special_tokens=True does. Invalid UTF-8 is
 * LORAC_STATUS_INVALID_ARG. *ids is malloc'd (caller frees), *n_ids its length. */
lorac_status_t lorac_tokenizer_encode(const lorac_tokenizer_t *tok, const char *text, size_t len,
                                      bool add_special, int32_t **ids, size_t *n_ids);

/* Decodes ids to UTF-8 text as HF's decode(skip_special_tokens=skip_special)
 * does. Bytes that do not form valid UTF-8 become U+FFFD. *text is malloc'd
 * and NUL-terminated. Ids outside the vocabulary are LORAC_STATUS_INVALID_ARG. */
lorac_status_t lorac_tokenizer_decode(const lorac_tokenizer_t *tok, const int32_t *ids,
                                      size_t n_ids, bool skip_special, char **text, size_t *len);

/* Raw bytes a single token stands for, after the decoder's per-token steps
 * (byte-level mapping undone, "▁" -> " ", <0xNN> -> that byte), without the
 * sequence-level steps (leading-space strip). For streaming output: the caller
 * concatenates bytes and prints complete UTF-8 characters. Returns the length
 * written into buf (at most cap), or -1 for an invalid id. */
int32_t lorac_tokenizer_token_bytes(const lorac_tokenizer_t *tok, int32_t id, char *buf, int32_t cap);

int32_t lorac_tokenizer_vocab_size(const lorac_tokenizer_t *tok);  /* incl. added tokens */
int32_t lorac_tokenizer_bos_id(const lorac_tokenizer_t *tok);      /* -1 when none */
int32_t lorac_tokenizer_eos_id(const lorac_tokenizer_t *tok);      /* -1 when none */
/* 1 when the decoder strips one leading space (SentencePiece style). */
int lorac_tokenizer_strips_leading_space(const lorac_tokenizer_t *tok);
/* Id of an exact token string (vocab or added), or -1. */
int32_t lorac_tokenizer_token_id(const lorac_tokenizer_t *tok, const char *token);
/* String of a token as stored in the vocabulary (NULL for an invalid id);
 * valid as long as the tokenizer. For llama2.c see the note at the top. */
const char *lorac_tokenizer_token_str(const lorac_tokenizer_t *tok, int32_t id);
/* 1 when `id` is a special added token. */
int lorac_tokenizer_is_special(const lorac_tokenizer_t *tok, int32_t id);

/* Writes a HuggingFace tokenizer.json equivalent to a llama2.c tokenizer
 * (SentencePiece-style BPE: vocab from the pieces, merges ranked by the score
 * of the merged piece, byte_fallback, Prepend/Replace normalizer, <s> BOS
 * post-processor) to `path` atomically. `tok` must come from
 * lorac_tokenizer_load_llama2c. */
lorac_status_t lorac_tokenizer_save_llama2c_as_json(const lorac_tokenizer_t *tok, const char *path);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_TOKENIZER_H */
