/* lorac/openai.h — the OpenAI HTTP API's requests and responses as C data:
 * parsing and validating request bodies, building response bodies, SSE
 * chunks and error objects. Pure functions: no I/O, no engine, no globals.
 *
 * Request bodies (POST /v1/completions, /v1/chat/completions) are checked as
 * OpenAI and vLLM check them, in two steps:
 *   1. lorac_oai_request_parse: the bytes are valid UTF-8 and one JSON object
 *      (nothing but whitespace after it; no "\u0000" in strings); every known
 *      field has its type and range:
 *        model        string, required
 *        prompt       completions: a string, an array of token ids, or a
 *                     batch: an array of strings or of token-id arrays (at
 *                     most LORAC_OAI_MAX_PROMPTS); n choices for each
 *                     prompt, prompt by prompt, at most LORAC_OAI_MAX_CHOICES
 *        messages     chat: non-empty array of {role: system|user|assistant,
 *                     content: string or [{type: "text", text}] (joined by "\n")}
 *        max_tokens   integer >= 1 (chat: also "max_completion_tokens");
 *                     default 16 for completions, the rest of the context for chat
 *        temperature  number in [0, 2], default 1 (0 = greedy)
 *        top_p        number in (0, 1], default 1
 *        top_k        integer >= -1 (vLLM's extension; -1 or 0 = off)
 *        min_p        number in [0, 1], default 0 (vLLM's extension)
 *        presence_penalty, frequency_penalty  numbers in [-2, 2], default 0
 *        repetition_penalty  number in (0, 2], default 1 (vLLM's extension)
 *        n            integer in [1, LORAC_OAI_MAX_N], default 1
 *        stop         string or array of up to 4 non-empty strings (each at
 *                     most LORAC_OAI_MAX_STOP_LEN bytes)
 *        seed         integer (absent: has_seed false; the server picks one)
 *        stream       boolean; stream_options {include_usage: boolean}
 *                     only together with stream true
 *        logprobs     completions: integer in [0, LORAC_OAI_MAX_TOP_LOGPROBS],
 *                     each token's log-probability and that many most likely
 *                     alternatives; chat: boolean, with
 *        top_logprobs chat: integer in [0, LORAC_OAI_MAX_TOP_LOGPROBS], only
 *                     together with logprobs true
 *        logit_bias   object {"token id": number in [-100, 100]}, at most
 *                     LORAC_SAMPLER_MAX_LOGIT_BIAS entries (ids checked
 *                     against the vocabulary in step 2)
 *        echo         completions: boolean; the prompt's text before the
 *                     completion, and with logprobs its tokens' (the first's null)
 *        ignore_eos   boolean (vLLM's extension)
 *        stop_token_ids  array of up to LORAC_OAI_MAX_STOP_TOKEN_IDS token ids
 *                     that end the output as EOS does (vLLM's extension;
 *                     checked against the vocabulary in step 2)
 *      null means "not given" for every optional field. Features lorac does
 *      not implement are refused rather than ignored, because ignoring them
 *      would silently change the output: echo for chat, suffix, best_of > n,
 *      tools.
 *      Unknown fields are ignored (clients send extras such as "user").
 *   2. lorac_oai_request_check_prompt, once the prompt is token ids: ids in
 *      the vocabulary, at least one, prompt + max_tokens within the context.
 * A refusal fills a lorac_oai_error_t: the HTTP status and OpenAI's error
 * object fields {"error": {"message", "type", "param", "code"}}.
 *
 * Generated text passed to the response builders may hold any bytes: invalid
 * UTF-8 is written as U+FFFD and NUL as "\u0000", so every body is valid
 * UTF-8 JSON.
 *
 * Ownership: strings returned are malloc'd and NUL-terminated (caller frees);
 * NULL only when memory runs out.
 */
#ifndef LORAC_OPENAI_H
#define LORAC_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lorac/core.h"
#include "lorac/dataset.h"
#include "lorac/infer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LORAC_OAI_MAX_STOP 4
#define LORAC_OAI_MAX_STOP_LEN 256
#define LORAC_OAI_MAX_STOP_TOKEN_IDS 7 /* one less than the engine takes: the server adds a chat's end of turn */
#define LORAC_OAI_MAX_N 16
#define LORAC_OAI_MAX_PROMPTS 64
#define LORAC_OAI_MAX_CHOICES 64 /* prompts × n */
#define LORAC_OAI_MAX_TOP_LOGPROBS 20 /* vLLM's default max_logprobs */

typedef enum {
    LORAC_OAI_COMPLETION = 0, /* /v1/completions */
    LORAC_OAI_CHAT            /* /v1/chat/completions */
} lorac_oai_kind_t;

typedef struct {
    int http_status;   /* 400, 404, 405, 413, 429, 500, 503 */
    const char *type;  /* "invalid_request_error", "not_found_error", ... (static) */
    char param[64];    /* the offending field, "" when none (written as null) */
    const char *code;  /* e.g. "model_not_found" (static), NULL for null */
    char message[768];
} lorac_oai_error_t;

/* Fills *err and returns LORAC_STATUS_INVALID_ARG (NOT_FOUND for 404, BUSY
 * for 429/503, IO for other 5xx), so callers can `return lorac_oai_error_set(...)`. type NULL
 * picks OpenAI's type for the status; param NULL is none. */
#if defined(__GNUC__)
__attribute__((format(printf, 6, 7)))
#endif
lorac_status_t lorac_oai_error_set(lorac_oai_error_t *err, int http_status, const char *type, const char *param,
                                   const char *code, const char *fmt, ...);

/* {"error": {"message": ..., "type": ..., "param": ..., "code": ...}} */
char *lorac_oai_error_json(const lorac_oai_error_t *err);

/* A completion prompt: as text (ids NULL) or as token ids. */
typedef struct {
    char *text;
    size_t len;
    int32_t *ids;
    int32_t n_ids;
} lorac_oai_prompt_t;

typedef struct {
    lorac_oai_kind_t kind;
    char *model;
    /* completions: one prompt, or a batch of them */
    lorac_oai_prompt_t *prompts;
    int32_t n_prompts;
    /* chat: role and content strings owned by the request */
    lorac_chat_message_t *messages;
    size_t n_messages;
    int8_t enable_thinking; /* chat_template_kwargs.enable_thinking: 1, 0, or -1 when not given (the server's default) */
    int32_t max_tokens;   /* 0: not given (chat: filled by check_prompt) */
    float temperature;
    float top_p;
    int32_t top_k;        /* 0 = off */
    float min_p;          /* 0 = off */
    float presence_penalty, frequency_penalty; /* 0 = off */
    float repetition_penalty;                  /* 1 = off */
    bool has_seed;
    uint64_t seed;
    char *stop[LORAC_OAI_MAX_STOP];
    int32_t n_stop;
    int32_t stop_token_ids[LORAC_OAI_MAX_STOP_TOKEN_IDS];
    int32_t n_stop_token_ids;
    int32_t n;
    bool stream;
    bool include_usage;
    bool ignore_eos;
    bool logprobs;
    int32_t top_logprobs; /* with logprobs */
    bool echo;            /* completions */
    lorac_logit_bias_t *logit_bias; /* owned */
    int32_t n_logit_bias;
} lorac_oai_request_t;

/* Parses and validates a request body (step 1 above). On failure *out is
 * zeroed (nothing to free) and *err says why. */
lorac_status_t lorac_oai_request_parse(lorac_oai_kind_t kind, const char *body, size_t len, lorac_oai_request_t *out,
                                       lorac_oai_error_t *err);
/* Frees what the request owns; the struct itself is the caller's. */
void lorac_oai_request_free(lorac_oai_request_t *req);

/* Step 2: the prompt's ids (after tokenization or as given) against the
 * model: each in [0, vocab_size), 1 <= n_ids, n_ids + max_tokens <= n_ctx;
 * stop_token_ids and logit_bias ids in [0, vocab_size) too.
 * A chat request without max_tokens gets n_ctx - n_ids (as vLLM does). */
lorac_status_t lorac_oai_request_check_prompt(lorac_oai_request_t *req, const int32_t *ids, int32_t n_ids,
                                              int32_t vocab_size, int32_t n_ctx, lorac_oai_error_t *err);

/* POST /v1/load_lora_adapter and /v1/unload_lora_adapter bodies (vLLM's
 * shapes): {"lora_name": string, "lora_path": string (optional; load only)}.
 * *name and *path (NULL when absent or when !allow_path) are malloc'd. */
lorac_status_t lorac_oai_lora_request_parse(const char *body, size_t len, bool allow_path, char **name, char **path,
                                            lorac_oai_error_t *err);

/* POST /tokenize and /detokenize (vLLM's shapes). tokenize:
 * {"model": string (optional), "prompt": string, "add_special_tokens": bool
 * (default true)} or {"model", "messages": [as chat], "add_generation_prompt":
 * bool (default true), "chat_template_kwargs" (as chat)}; detokenize:
 * {"model", "tokens": [token ids]}. */
typedef struct {
    char *model;                      /* NULL when absent */
    char *prompt;                     /* tokenize: the text, or NULL with messages */
    size_t prompt_len;
    lorac_chat_message_t *messages;
    size_t n_messages;
    int8_t enable_thinking;           /* as in a chat request */
    bool add_special_tokens, add_generation_prompt;
    int32_t *tokens;                  /* detokenize */
    int32_t n_tokens;
} lorac_oai_tokenize_request_t;

lorac_status_t lorac_oai_tokenize_parse(bool detokenize, const char *body, size_t len, lorac_oai_tokenize_request_t *out,
                                        lorac_oai_error_t *err);
void lorac_oai_tokenize_request_free(lorac_oai_tokenize_request_t *req);
/* {"count": n, "max_model_len": max_len, "tokens": [...], "token_strs": null} */
char *lorac_oai_tokenize_json(const int32_t *ids, int32_t n, int32_t max_len);
/* {"prompt": text} */
char *lorac_oai_detokenize_json(const char *text, size_t len);
/* GET /tokenizer_info: {"tokenizer_class": "PreTrainedTokenizerFast",
 * "bos_token", "eos_token" (strings, or null when NULL), "pad_token": null,
 * "model_max_length": max_len}. */
char *lorac_oai_tokenizer_info_json(const char *bos, const char *eos, int32_t max_len);

/* ---- responses ---------------------------------------------------------------- */

typedef struct {
    lorac_oai_kind_t kind;
    const char *id;       /* "cmpl-..." / "chatcmpl-..." */
    int64_t created;      /* Unix seconds */
    const char *model;
} lorac_oai_meta_t;

/* Log-probabilities of generated tokens, for a choice or a stream chunk. */
typedef struct {
    const char *text;     /* the token's bytes (any bytes) */
    size_t len;
    float logprob;        /* NaN: none (written null), for an echoed prompt's first token */
} lorac_oai_token_logprob_t;

typedef struct {
    lorac_oai_token_logprob_t token;          /* the generated (or echoed prompt) token */
    const lorac_oai_token_logprob_t *top;     /* the most likely tokens, most likely first */
    int32_t n_top;                            /* < 0: none (completions write null) */
} lorac_oai_logprob_t;

typedef struct {
    const lorac_oai_logprob_t *tokens;
    int32_t n;
    int64_t text_offset;  /* completions: characters of the choice's text before tokens[0] */
} lorac_oai_logprobs_t;

/* What "logprobs" holds (NULL gives null):
 *   completions  {"tokens": [text], "token_logprobs": [number],
 *                "top_logprobs": [{text: number}] (the top tokens and the
 *                generated one, as OpenAI: up to n_top + 1 entries),
 *                "text_offset": [characters before each token]}
 *   chat         {"content": [{"token", "logprob", "bytes": [byte values],
 *                "top_logprobs": [{"token", "logprob", "bytes"}]}]}
 * Texts that are not valid UTF-8 (a token holding part of a character)
 * are written with U+FFFD; chat's "bytes" keeps them exactly. */
typedef struct {
    const char *text;     /* any bytes (see the top) */
    size_t text_len;
    const char *finish_reason; /* "stop", "length"; NULL for null */
    const lorac_oai_logprobs_t *logprobs;
} lorac_oai_choice_t;

/* A response's usage: {prompt_tokens, completion_tokens, total_tokens,
 * prompt_tokens_details: {cached_tokens}}, OpenAI's fields; cached_tokens
 * are the prompt tokens whose keys and values the server's prefix cache
 * already held. */
typedef struct {
    int64_t prompt_tokens, completion_tokens, cached_tokens;
} lorac_oai_usage_t;

/* The whole (non-streamed) response: object "text_completion" with
 * choices[{index, text, logprobs, finish_reason}], or "chat.completion"
 * with choices[{index, message{role: "assistant", content}, logprobs,
 * finish_reason}]; then usage. */
char *lorac_oai_response_json(const lorac_oai_meta_t *m, const lorac_oai_choice_t *choices, int32_t n,
                              const lorac_oai_usage_t *usage);

/* One server-sent event "data: {...}\n\n" for choice `index`: a
 * "text_completion" chunk with choices[{index, text, logprobs,
 * finish_reason}], or a "chat.completion.chunk" with choices[{index, delta,
 * logprobs, finish_reason}] where delta is {"role": "assistant",
 * "content": ""} when role_delta, {"content": text} when text_len > 0 or no
 * finish_reason, else {}; logprobs those of the chunk's tokens (NULL: null).
 * usage_null adds "usage": null (when the client asked for include_usage,
 * every chunk but the last carries it, as OpenAI does). */
char *lorac_oai_stream_chunk(const lorac_oai_meta_t *m, int32_t index, const char *text, size_t text_len,
                             const char *finish_reason, bool role_delta, bool usage_null,
                             const lorac_oai_logprobs_t *logprobs);
/* The last chunk of stream_options.include_usage: choices [] and usage. */
char *lorac_oai_stream_usage_chunk(const lorac_oai_meta_t *m, const lorac_oai_usage_t *usage);
/* "data: {\"error\": {...}}\n\n": an error after the stream has started. */
char *lorac_oai_stream_error(const lorac_oai_error_t *err);
/* "data: [DONE]\n\n" */
extern const char lorac_oai_stream_done[];

/* GET /v1/models: {"object": "list", "data": [{"id", "object": "model",
 * "created", "owned_by": "lorac", "root", "parent"}]}: the base model first
 * (parent null), then each adapter (parent = base). */
char *lorac_oai_models_json(const char *base, int64_t created, const char *const *adapters, int32_t n_adapters);

/* Writes `len` bytes as a JSON string literal (quotes included) into a
 * malloc'd string: invalid UTF-8 as U+FFFD, control characters escaped. */
char *lorac_oai_json_string(const char *s, size_t len);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_OPENAI_H */
