/* lorac/serve.h — serving many LoRA adapters over one base model.
 *
 * The engine owns one inference context over a loaded model and one thread
 * that runs the continuous-batching loop: at every step, waiting requests
 * join while KV slots are free (their prompts processed in the same batch as
 * the running sequences' next tokens), every running sequence advances by one
 * token, finished ones leave. Each sequence carries its own adapter (or
 * none); the forward pass runs the base matmuls once over all rows and the
 * low-rank terms per adapter segment (lorac_context_set_seq_adapter).
 *
 * Adapters are found by name: `name` is a subdirectory of adapters_dir
 * holding a PEFT adapter. They load on first use and stay in memory up to
 * max_loras, the least recently used idle one evicted beyond that. Names are
 * plain ([A-Za-z0-9._-]+, not "." or ".."); clients never pass paths.
 *
 * Threading: every function here is safe to call from any thread. Callbacks
 * run on the engine thread and must be quick (copy the event, signal, return);
 * they must not call back into the engine except lorac_engine_cancel.
 */
#ifndef LORAC_SERVE_H
#define LORAC_SERVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lorac/core.h"
#include "lorac/infer.h"
#include "lorac/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    LORAC_FINISH_NONE = 0,  /* still generating */
    LORAC_FINISH_STOP,      /* end-of-sequence token or a stop string */
    LORAC_FINISH_LENGTH,    /* max_tokens reached (or the context is full) */
    LORAC_FINISH_CANCELLED, /* lorac_engine_cancel, adapter unloaded, or engine stopping */
    LORAC_FINISH_ERROR      /* see event.error */
} lorac_finish_t;

/* "stop", "length", "cancelled", "error" ("" for NONE): OpenAI's finish_reason. */
const char *lorac_finish_name(lorac_finish_t f);

/* A token and its log-probability under the model's raw logits
 * (log_softmax before penalties, temperature or truncation: vLLM's default
 * raw_logprobs). */
typedef struct {
    int32_t token;
    float logprob;
} lorac_token_logprob_t;

#define LORAC_SERVE_MAX_TOP_LOGPROBS 20

/* What a request's callback receives: one event per generated token, and a
 * last one with finish != NONE (after which the callback is never called
 * again for that request). */
typedef struct {
    uint64_t request_id;
    const char *text;          /* UTF-8 delta: whole characters only, never */
    size_t text_len;           /* part of a stop string (held back until safe) */
    int32_t token;             /* the sampled token; -1 on the last event */
    lorac_finish_t finish;
    int32_t n_prompt_tokens;
    int32_t n_cached_tokens;   /* of those, taken from the prefix cache (not decoded) */
    int32_t n_completion_tokens; /* so far */
    double ttft_s;             /* submit → first token, seconds (0 before it) */
    const char *error;         /* message when finish == ERROR, else NULL */
    /* With request.logprobs, the event that first reports a generated token
     * (its text event, or the last event when the token ended the output:
     * end of sequence, a stop token or a stop string) carries that token's
     * log-probability in logprobs[0] and the top_logprobs most likely
     * tokens after it (ties by id); every generated token is reported once.
     * Otherwise NULL and 0. */
    const lorac_token_logprob_t *logprobs;
    int32_t n_logprobs;
    /* With request.prompt_logprobs, the first event carries the prompt's:
     * for each prompt token after the first, in order, a row of
     * prompt_logprobs_stride entries (the token's own log-probability given
     * the tokens before it, then the top_logprobs most likely there).
     * n_prompt_logprobs rows (n_prompt - 1); NULL and 0 on other events. */
    const lorac_token_logprob_t *prompt_logprobs;
    int32_t n_prompt_logprobs, prompt_logprobs_stride;
} lorac_serve_event_t;

typedef void (*lorac_serve_callback_t)(void *user, const lorac_serve_event_t *event);

#define LORAC_SERVE_MAX_STOP_TOKENS 8

typedef struct {
    const int32_t *prompt;       /* token ids, copied; 1 .. n_ctx - 1 of them */
    int32_t n_prompt;
    const char *adapter;         /* registered adapter name; NULL or "" = the base model */
    int32_t max_tokens;          /* >= 1; n_prompt + max_tokens <= n_ctx */
    lorac_sampler_params_t sampler;
    const char *const *stop;     /* stop strings (copied, non-empty); output ends before the first match */
    int32_t n_stop;
    bool ignore_eos;             /* keep going past end-of-sequence tokens (and stop_tokens) */
    const int32_t *stop_tokens;  /* ids that end the output as EOS does, e.g. a chat template's end of turn
                                    (copied; at most LORAC_SERVE_MAX_STOP_TOKENS) */
    int32_t n_stop_tokens;
    bool logprobs;               /* report each generated token's log-probability */
    bool prompt_logprobs;        /* and each prompt token's (OpenAI's echo; lm-eval's loglikelihood) */
    int32_t top_logprobs;        /* with either: this many most likely alternatives, 0 .. LORAC_SERVE_MAX_TOP_LOGPROBS */
    lorac_serve_callback_t callback;
    void *user;
} lorac_serve_request_t;

typedef struct {
    int32_t max_seqs;        /* sequences decoded concurrently (KV slots reserved up front) */
    int32_t n_ctx;           /* positions per sequence (prompt + completion); 0: the model's
                                max_position_embeddings, at most 2048. More than the model's
                                is honoured (positions it was not trained on, as llama.cpp's -c) */
    int32_t n_batch;         /* most tokens in one forward pass (>= max_seqs) */
    int32_t max_queue;       /* requests waiting for a slot beyond max_seqs; more → BUSY */
    int32_t max_loras;       /* adapters kept in memory */
    const char *adapters_dir;/* NULL: base model only */
    lorac_dtype_t kv_dtype;  /* KV cache values: F32 (0, the default), BF16 or F16 (half the memory) */
    /* A finished request's KV cache stays in its slot, and a request whose
     * prompt starts with the same tokens (on the same adapter) takes that
     * slot and decodes only the rest: a conversation's next turn, a shared
     * system prompt; a running request's positions are copied, and a
     * request waits for a running one's prefill of its prompt's start (the
     * n choices of one prompt). true turns it all off (every prompt
     * decoded whole). */
    bool no_prefix_cache;
} lorac_engine_params_t;

/* max_seqs 8, n_ctx 0 (the model's, at most 2048), n_batch 512, max_queue 64, max_loras 8, kv_dtype F32,
 * the prefix cache on. */
lorac_engine_params_t lorac_engine_default_params(void);

typedef struct lorac_engine lorac_engine_t;

/* Reserves the KV cache for max_seqs × n_ctx (fewer rows in layers with a
 * sliding window: lorac_engine_kv_bytes) and starts the engine thread.
 * The model must outlive the engine. */
lorac_status_t lorac_engine_start(const lorac_model_t *model, const lorac_engine_params_t *params,
                                  lorac_engine_t **out);
/* Ends every queued and running request with CANCELLED, joins the thread,
 * frees everything. NULL is a no-op. */
void lorac_engine_stop(lorac_engine_t *engine);

/* Queues a request. Checked before it is queued (the request's callback is
 * only ever called for accepted requests):
 *   INVALID_ARG  empty prompt, token outside the vocabulary, max_tokens < 1,
 *                prompt + max_tokens past n_ctx, sampler out of range,
 *                empty stop string, top_logprobs out of range, no callback;
 *   NOT_FOUND    adapter name not registered (no such directory);
 *   FORMAT etc.  the adapter failed to load (message says why);
 *   BUSY         the queue is full.
 * *id (may be NULL) gets the request id (> 0). */
lorac_status_t lorac_engine_submit(lorac_engine_t *engine, const lorac_serve_request_t *request, uint64_t *id);
/* Ends the request with CANCELLED at the next step (no-op when unknown or done). */
void lorac_engine_cancel(lorac_engine_t *engine, uint64_t id);

/* Loads adapters_dir/name now (no-op when loaded). INVALID_ARG for a bad
 * name, NOT_FOUND when there is no such adapter, FORMAT etc. when it does not
 * load or does not fit the model. */
lorac_status_t lorac_engine_load_adapter(lorac_engine_t *engine, const char *name);
/* Drops the adapter from memory: requests already using it finish with it
 * first (the memory is freed when the last one leaves); new requests load it
 * again. NOT_FOUND when it is not loaded. */
lorac_status_t lorac_engine_unload_adapter(lorac_engine_t *engine, const char *name);

typedef struct {
    char name[256];
    bool loaded;
    int32_t r;               /* largest rank, 0 when not loaded */
} lorac_adapter_info_t;

/* Fills up to cap entries (every adapter directory under adapters_dir, plus
 * loaded ones), sorted by name; returns how many there are in all. */
int32_t lorac_engine_list_adapters(lorac_engine_t *engine, lorac_adapter_info_t *out, int32_t cap);

/* Latency histogram bounds (seconds, request submit → finish); the last
 * bucket is +Inf. */
#define LORAC_SERVE_LATENCY_BUCKETS 12
extern const double lorac_serve_latency_bounds[LORAC_SERVE_LATENCY_BUCKETS - 1];

typedef struct {
    uint64_t requests_total;          /* accepted */
    uint64_t requests_finished[5];    /* by lorac_finish_t */
    uint64_t requests_rejected;       /* submit failed */
    uint64_t prompt_tokens_total;
    uint64_t prompt_tokens_cached_total; /* of those, taken from a slot's kept KV cache, not decoded */
    uint64_t completion_tokens_total;
    uint64_t steps_total;             /* forward passes */
    uint64_t batch_tokens_total;      /* Σ tokens over forward passes */
    int32_t last_batch_size;          /* sequences in the last step */
    int32_t running, waiting;         /* now */
    int32_t adapters_loaded;
    int32_t max_seqs, max_queue;
    uint64_t latency_counts[LORAC_SERVE_LATENCY_BUCKETS]; /* per bucket, not cumulative */
    double latency_sum_s;
} lorac_engine_metrics_t;

void lorac_engine_get_metrics(lorac_engine_t *engine, lorac_engine_metrics_t *out);
const lorac_model_t *lorac_engine_model(const lorac_engine_t *engine);
int32_t lorac_engine_n_ctx(const lorac_engine_t *engine);
/* Bytes of the engine's KV cache (lorac_context_kv_bytes). */
size_t lorac_engine_kv_bytes(const lorac_engine_t *engine);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_SERVE_H */
