/* lorac/http.h — the OpenAI-compatible HTTP server over a serving engine
 * (libmicrohttpd, one thread per connection).
 *
 * Endpoints (request and response shapes: lorac/openai.h):
 *   POST /v1/completions        prompt (text or token ids) → text
 *   POST /v1/chat/completions   messages rendered with the chat template
 *   GET  /v1/models             the base model and every adapter (parent = base)
 *   GET  /health                200 {"status": "ok"} (503 while shutting down)
 *   GET  /metrics               Prometheus text (lorac_http_metrics_text)
 *   POST /v1/load_lora_adapter, /v1/unload_lora_adapter   {"lora_name", "lora_path"}
 *                               (vLLM's shapes; 404 unless allow_admin)
 * A request's "model" is the served name of the base model or the name of an
 * adapter under the engine's adapters_dir. "stream": true answers with
 * server-sent events; a client that hangs up (mid-stream or while waiting
 * for a whole answer) has its engine requests cancelled.
 *
 * Every failure is an OpenAI error object with its HTTP status: 400 bad
 * request (malformed JSON, wrong types, values out of range, invalid UTF-8,
 * a prompt too long for the context, token ids outside the vocabulary), 404
 * unknown path or model ("model_not_found"), 405 wrong method, 413 body over
 * max_body bytes (checked against Content-Length before reading, and while
 * receiving), 429 engine queue full (or every loaded adapter busy at
 * max_loras), 500 generation failed or the named adapter does not load, 503
 * shutting down. load_lora_adapter answers 400 for an adapter that does not
 * load, as vLLM does.
 *
 * Threading: start and stop from one thread; everything else happens on the
 * server's threads.
 */
#ifndef LORAC_HTTP_H
#define LORAC_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lorac/core.h"
#include "lorac/serve.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *host;                /* address to bind, numeric or a name (default "127.0.0.1") */
    int32_t port;                    /* 0 = any free port (see lorac_http_server_port); default 8000 */
    const char *served_model_name;   /* the base model's name in requests and /v1/models (required) */
    /* chat: a canonical template name (lorac_dataset_chat_template_name),
     * its default system message and BOS/EOS strings
     * (lorac_dataset_chat_tokens); template NULL = chat requests get 400 */
    const char *chat_template;
    const char *chat_default_system;
    const char *chat_bos, *chat_eos;
    bool chat_thinking_off; /* enable_thinking false for requests whose chat_template_kwargs do not say (qwen3) */
    const char *adapters_dir;        /* the engine's, for lora_path checks; NULL = none */
    bool allow_admin;                /* load/unload endpoints */
    bool log_requests;               /* one line per request on stderr */
    size_t max_body;                 /* request body cap in bytes (default 1 MiB) */
    int32_t max_connections;         /* concurrent connections (default 256) */
    int32_t connection_timeout_s;    /* idle connections closed after this (default 120) */
} lorac_http_params_t;

lorac_http_params_t lorac_http_default_params(void);

typedef struct lorac_http_server lorac_http_server_t;

/* Binds and starts serving. On success the server owns the engine (stop
 * stops it); on failure the caller still does, and the message says why
 * (address in use, ...). The params' strings must outlive the server. */
lorac_status_t lorac_http_server_start(lorac_engine_t *engine, const lorac_http_params_t *params,
                                       lorac_http_server_t **out);
/* The port actually bound (useful with port 0). */
int32_t lorac_http_server_port(const lorac_http_server_t *srv);
/* Stops accepting connections, stops the engine (requests in flight end:
 * whole answers with 503, streams with an error event and [DONE]), then the
 * daemon; frees everything. NULL is a no-op. */
void lorac_http_server_stop(lorac_http_server_t *srv);

/* The engine's metrics in Prometheus' text format (malloc'd; NULL on OOM):
 * lorac_requests_total, lorac_requests_finished_total{reason}, lorac_requests_rejected_total,
 * lorac_prompt_tokens_total, lorac_completion_tokens_total, lorac_steps_total,
 * lorac_batch_tokens_total, lorac_batch_size, lorac_queue_depth, lorac_running,
 * lorac_adapters_loaded, lorac_max_seqs, lorac_max_queue, and the histogram
 * lorac_request_latency_seconds (_bucket{le} cumulative, _sum, _count). */
char *lorac_http_metrics_text(const lorac_engine_metrics_t *m);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_HTTP_H */
