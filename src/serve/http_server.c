/* The OpenAI-compatible HTTP server (lorac/http.h) on libmicrohttpd.
 *
 * One thread per connection: a handler may block while its request
 * generates (a whole answer), and a streaming response's reader blocks until
 * the next token arrives. While waiting, both poll the client's socket for a
 * hang-up and cancel their engine requests when it comes, so a vanished
 * client never keeps a KV slot busy.
 *
 * A generation request is a job: one engine request per choice (n), whose
 * callbacks (on the engine thread) append text under the job's mutex and
 * signal. The job is reference-counted: one reference for the HTTP side and
 * one per engine request still running, because either side may finish
 * first (a client hang-up frees the HTTP side while the engine still owes a
 * final event).
 *
 * The engine pointer is guarded by a read-write lock: every call into the
 * engine holds it for reading, and shutdown takes it for writing to stop the
 * engine, so no handler ever touches a stopped engine. Nothing waits for
 * generation while holding it. */
#include "lorac/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lorac/dataset.h"
#include "lorac/model.h"
#include "lorac/openai.h"
#include "lorac/tokenizer.h"

/* ---- small pieces ---------------------------------------------------------------- */

typedef struct {
    char *s;
    size_t len, cap;
} buf_t;

static int buf_put(buf_t *b, const char *s, size_t n) { return lorac_bytes_append(&b->s, &b->len, &b->cap, s, n); }

static int buf_puts(buf_t *b, const char *s) { return buf_put(b, s, strlen(s)); }

/* Appends a malloc'd string and frees it; -1 when it is NULL (OOM). */
static int buf_take(buf_t *b, char *s) {
    if (!s) return -1;
    int r = buf_put(b, s, strlen(s));
    free(s);
    return r;
}

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* ---- the server ---------------------------------------------------------------------- */

#define N_STATUS 600

struct lorac_http_server {
    struct MHD_Daemon *daemon;
    lorac_http_params_t p;
    lorac_engine_t *engine;        /* NULL once stopped; read under engine_lock */
    pthread_rwlock_t engine_lock;
    atomic_bool stopping;
    atomic_uint_fast64_t counter;  /* ids and default seeds */
    uint64_t nonce;
    int32_t port;
    int32_t chat_end_of_turn;      /* the chat template's end-of-turn token, ends a chat reply; -1: none */
    const lorac_tokenizer_t *tok;  /* the model's, for /tokenize and friends */
    int32_t n_ctx;
    atomic_uint_fast64_t status_counts[N_STATUS];
};

lorac_http_params_t lorac_http_default_params(void) {
    lorac_http_params_t p = {.host = "127.0.0.1", .port = 8000, .served_model_name = NULL, .max_body = 1 << 20,
                             .max_connections = 256, .connection_timeout_s = 120};
    return p;
}

/* The engine for one call, or NULL when the server is stopping. */
static lorac_engine_t *engine_acquire(lorac_http_server_t *srv) {
    if (atomic_load(&srv->stopping)) return NULL;
    pthread_rwlock_rdlock(&srv->engine_lock);
    if (!srv->engine) {
        pthread_rwlock_unlock(&srv->engine_lock);
        return NULL;
    }
    return srv->engine;
}

static void engine_release(lorac_http_server_t *srv) { pthread_rwlock_unlock(&srv->engine_lock); }

static uint64_t next_random(lorac_http_server_t *srv) {
    return splitmix64(srv->nonce ^ (uint64_t)atomic_fetch_add(&srv->counter, 1));
}

/* ---- per-connection state and responses ------------------------------------------------ */

typedef enum {
    R_COMPLETIONS, R_CHAT, R_MODELS, R_HEALTH, R_METRICS, R_LOAD, R_UNLOAD, R_TOKENIZE, R_DETOKENIZE, R_TOKENIZER_INFO
} route_id_t;

static const struct {
    const char *path, *method;
    route_id_t id;
    bool admin;
} k_routes[] = {
    {"/v1/completions", "POST", R_COMPLETIONS, false},
    {"/v1/chat/completions", "POST", R_CHAT, false},
    {"/v1/models", "GET", R_MODELS, false},
    {"/health", "GET", R_HEALTH, false},
    {"/metrics", "GET", R_METRICS, false},
    {"/tokenize", "POST", R_TOKENIZE, false},
    {"/detokenize", "POST", R_DETOKENIZE, false},
    {"/tokenizer_info", "GET", R_TOKENIZER_INFO, false},
    {"/v1/load_lora_adapter", "POST", R_LOAD, true},
    {"/v1/unload_lora_adapter", "POST", R_UNLOAD, true},
};

typedef struct {
    int route;             /* index into k_routes, -1 before routing */
    buf_t body;
    uint64_t received;
    bool too_large, responded;
    int status;
    double t0;
    char method[16], url[128];
} conn_t;

static enum MHD_Result queue(lorac_http_server_t *srv, struct MHD_Connection *c, conn_t *k, int status,
                             struct MHD_Response *r) {
    if (!r) return MHD_NO;
    enum MHD_Result res = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    k->responded = true;
    k->status = status;
    if (status >= 0 && status < N_STATUS) atomic_fetch_add(&srv->status_counts[status], 1);
    return res;
}

/* Sends a malloc'd body (taken; NULL = out of memory → 500). */
static enum MHD_Result send_body(lorac_http_server_t *srv, struct MHD_Connection *c, conn_t *k, int status,
                                 const char *type, char *body) {
    static const char oom[] = "{\"error\": {\"message\": \"out of memory\", \"type\": \"internal_server_error\", "
                              "\"param\": null, \"code\": null}}";
    struct MHD_Response *r;
    if (!body) {
        status = 500;
        type = "application/json";
        r = MHD_create_response_from_buffer(sizeof oom - 1, (void *)oom, MHD_RESPMEM_PERSISTENT);
    } else {
        r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
        if (!r) free(body);
    }
    if (r) MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    return queue(srv, c, k, status, r);
}

static enum MHD_Result send_error(lorac_http_server_t *srv, struct MHD_Connection *c, conn_t *k,
                                  const lorac_oai_error_t *err) {
    return send_body(srv, c, k, err->http_status, "application/json", lorac_oai_error_json(err));
}

#if defined(__GNUC__)
__attribute__((format(printf, 6, 7)))
#endif
static enum MHD_Result fail(lorac_http_server_t *srv, struct MHD_Connection *c, conn_t *k, int status,
                            const char *code, const char *fmt, ...) {
    lorac_oai_error_t err;
    char msg[sizeof err.message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lorac_oai_error_set(&err, status, NULL, NULL, code, "%s", msg);
    return send_error(srv, c, k, &err);
}

static enum MHD_Result fail_stopping(lorac_http_server_t *srv, struct MHD_Connection *c, conn_t *k) {
    return fail(srv, c, k, 503, NULL, "the server is shutting down");
}

/* The client's socket shows a hang-up (or an error). */
static int client_gone(int fd) {
    if (fd < 0) return 0;
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

static int connection_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? (int)ci->connect_fd : -1;
}

static void timed_wait(pthread_cond_t *cv, pthread_mutex_t *mu, long ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(cv, mu, &ts);
}

/* ---- generation jobs ----------------------------------------------------------------- */

typedef struct job job_t;

/* One generated token's log-probabilities, as the engine reported them. */
typedef struct {
    lorac_token_logprob_t lp[1 + LORAC_SERVE_MAX_TOP_LOGPROBS];
    int32_t n;
} token_lps_t;

typedef struct {
    job_t *job;
    uint64_t id;               /* engine request id, 0 before it is accepted */
    buf_t text;                /* a whole answer, or a stream's text not sent yet */
    lorac_utf8_stream_t utf8;  /* belt and braces: the engine emits whole characters */
    lorac_finish_t finish;
    int32_t n_prompt, n_cached, n_completion;
    bool oom, role_sent, finish_sent;
    char error[256];
    token_lps_t *lps;          /* with logprobs: every token's, in order */
    int32_t n_lps, cap_lps, n_lps_sent;
    int64_t lps_offset;        /* characters of text before lps[n_lps_sent] (streams) */
    bool started, echo_sent;   /* the first event came; a stream's echo went out */
    token_lps_t *echo_lps;     /* echo with logprobs: the prompt's tokens' (the first's NaN: none) */
    int32_t n_echo_lps;
} choice_t;

struct job {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    lorac_http_server_t *srv;
    int fd;
    lorac_oai_meta_t meta;
    char id[48];
    char *model;
    bool stream, include_usage, logprobs, echo;
    const lorac_tokenizer_t *tok;  /* token texts for logprobs */
    int32_t per_prompt;            /* choices of each prompt (the request's n): choice i is prompt i / per_prompt's */
    struct {
        char *text;                /* echo: the prompt's text */
        size_t len;
        int32_t first_id;          /* and its first token */
    } *echoes;                     /* (prompts) with echo */
    int32_t n, n_done;
    choice_t *choices;
    buf_t out;                 /* SSE bytes formatted, not yet handed to MHD */
    size_t out_off;
    bool done_queued;          /* "data: [DONE]" is in out */
};

static void job_free(job_t *j) {
    for (int32_t i = 0; i < j->n; i++) free(j->choices[i].text.s), free(j->choices[i].lps), free(j->choices[i].echo_lps);
    for (int32_t i = 0; j->echoes && i < j->n / j->per_prompt; i++) free(j->echoes[i].text);
    free(j->echoes);
    free(j->choices);
    free(j->out.s);
    free(j->model);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

static void job_release(job_t *j) {
    pthread_mutex_lock(&j->mu);
    int refs = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (refs == 0) job_free(j);
}

static job_t *job_new(lorac_http_server_t *srv, const lorac_oai_request_t *req, int32_t n_prompts,
                      const lorac_tokenizer_t *tok, int fd) {
    job_t *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->choices = calloc((size_t)(n_prompts * req->n), sizeof *j->choices);
    j->model = strdup(req->model);
    if (!j->choices || !j->model) {
        free(j->choices);
        free(j->model);
        free(j);
        return NULL;
    }
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->refs = 1;
    j->srv = srv;
    j->fd = fd;
    j->n = n_prompts * req->n;
    j->per_prompt = req->n;
    j->stream = req->stream;
    j->include_usage = req->include_usage;
    j->logprobs = req->logprobs;
    j->echo = req->echo;
    j->tok = tok;
    for (int32_t i = 0; i < j->n; i++) j->choices[i].job = j;
    snprintf(j->id, sizeof j->id, "%s-%016llx", req->kind == LORAC_OAI_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)next_random(srv));
    j->meta = (lorac_oai_meta_t){.kind = req->kind, .id = j->id, .created = (int64_t)time(NULL), .model = j->model};
    return j;
}

/* Engine thread: append the text, note the end, wake the HTTP side. */
static void on_engine_event(void *user, const lorac_serve_event_t *ev) {
    choice_t *c = user;
    job_t *j = c->job;
    pthread_mutex_lock(&j->mu);
    if (ev->text_len > 0 && !c->oom) {
        char tmp[3 * 256 + 3];
        for (size_t off = 0; off < ev->text_len && !c->oom;) {
            size_t n = ev->text_len - off < 256 ? ev->text_len - off : 256;
            size_t w = lorac_utf8_stream_push(&c->utf8, ev->text + off, n, tmp);
            if (buf_put(&c->text, tmp, w)) c->oom = true;
            off += n;
        }
    }
    if (!c->started && j->echo && j->logprobs && !c->oom) {
        /* the prompt's tokens: the first has nothing before it to be scored by */
        int32_t n = ev->n_prompt_tokens, stride = ev->prompt_logprobs_stride;
        c->echo_lps = calloc((size_t)n, sizeof *c->echo_lps);
        if (!c->echo_lps || ev->n_prompt_logprobs != n - 1) {
            c->oom = true;
        } else {
            c->n_echo_lps = n;
            c->echo_lps[0] = (token_lps_t){.lp = {{j->echoes[(c - j->choices) / j->per_prompt].first_id, NAN}}, .n = 1};
            for (int32_t i = 1; i < n; i++) {
                token_lps_t *t = &c->echo_lps[i];
                t->n = stride < 1 + LORAC_SERVE_MAX_TOP_LOGPROBS ? stride : 1 + LORAC_SERVE_MAX_TOP_LOGPROBS;
                memcpy(t->lp, ev->prompt_logprobs + (size_t)(i - 1) * (size_t)stride, sizeof(lorac_token_logprob_t) * (size_t)t->n);
            }
        }
    }
    c->started = true;
    if (ev->n_logprobs > 0 && !c->oom) {
        if (c->n_lps == c->cap_lps) {
            int32_t cap = c->cap_lps ? 2 * c->cap_lps : 16;
            token_lps_t *grown = realloc(c->lps, sizeof *grown * (size_t)cap);
            if (grown) c->lps = grown, c->cap_lps = cap;
            else c->oom = true;
        }
        if (!c->oom) {
            token_lps_t *t = &c->lps[c->n_lps++];
            t->n = ev->n_logprobs < 1 + LORAC_SERVE_MAX_TOP_LOGPROBS ? ev->n_logprobs : 1 + LORAC_SERVE_MAX_TOP_LOGPROBS;
            memcpy(t->lp, ev->logprobs, sizeof(lorac_token_logprob_t) * (size_t)t->n);
        }
    }
    c->n_prompt = ev->n_prompt_tokens;
    c->n_cached = ev->n_cached_tokens;
    c->n_completion = ev->n_completion_tokens;
    bool last = ev->finish != LORAC_FINISH_NONE;
    if (last) {
        char tail[8];
        size_t w = lorac_utf8_stream_flush(&c->utf8, tail);
        if (!c->oom && buf_put(&c->text, tail, w)) c->oom = true;
        c->finish = c->oom ? LORAC_FINISH_ERROR : ev->finish;
        snprintf(c->error, sizeof c->error, "%s", c->oom ? "out of memory for the output text" : ev->error ? ev->error : "");
        j->n_done++;
        j->refs--;
    }
    int refs = j->refs;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    if (last && refs == 0) job_free(j);
}

/* The protocol layer's view of n token records: each token's text from the
 * tokenizer (a record whose logprob is NaN, an echoed prompt's first token,
 * gets none and no top). Everything lives in one allocation, *mem, which
 * the caller frees. Returns NULL when out of memory. */
static const lorac_oai_logprobs_t *logprobs_view(const job_t *j, const token_lps_t *recs, int32_t n_items,
                                                 int64_t text_offset, void **mem) {
    char b[512];
    int32_t n_texts = 0;
    size_t n_bytes = 0;
    for (int32_t i = 0; i < n_items; i++)
        for (int32_t k = 0; k < recs[i].n; k++, n_texts++) {
            int32_t len = lorac_tokenizer_token_bytes(j->tok, recs[i].lp[k].token, b, (int32_t)sizeof b);
            n_bytes += len > 0 ? (size_t)len : 0;
        }
    size_t head = sizeof(lorac_oai_logprobs_t) + sizeof(lorac_oai_logprob_t) * (size_t)n_items;
    size_t entries = sizeof(lorac_oai_token_logprob_t) * (size_t)n_texts;
    char *m = malloc(head + entries + n_bytes + 1);
    *mem = m;
    if (!m) return NULL;
    lorac_oai_logprobs_t *out = (lorac_oai_logprobs_t *)m;
    lorac_oai_logprob_t *items = (lorac_oai_logprob_t *)(m + sizeof *out);
    lorac_oai_token_logprob_t *e = (lorac_oai_token_logprob_t *)(m + head);
    char *text = m + head + entries;
    for (int32_t i = 0; i < n_items; i++) {
        const token_lps_t *t = &recs[i];
        for (int32_t k = 0; k < t->n; k++, e++) {
            int32_t len = lorac_tokenizer_token_bytes(j->tok, t->lp[k].token, b, (int32_t)sizeof b);
            size_t n = len > 0 ? (size_t)len : 0;
            memcpy(text, b, n);
            *e = (lorac_oai_token_logprob_t){.text = text, .len = n, .logprob = t->lp[k].logprob};
            text += n;
        }
        items[i] = (lorac_oai_logprob_t){.token = e[-t->n], .top = e - t->n + 1,
                                         .n_top = isnan(t->lp[0].logprob) ? -1 : t->n - 1};
    }
    *out = (lorac_oai_logprobs_t){.tokens = items, .n = n_items, .text_offset = text_offset};
    return out;
}

/* Characters in the tokens' texts (a client's count: bytes that start one). */
static int64_t tokens_chars(const job_t *j, const token_lps_t *recs, int32_t n) {
    int64_t chars = 0;
    char b[512];
    for (int32_t i = 0; i < n; i++) {
        int32_t len = lorac_tokenizer_token_bytes(j->tok, recs[i].lp[0].token, b, (int32_t)sizeof b);
        for (int32_t x = 0; x < len; x++) chars += ((unsigned char)b[x] & 0xC0) != 0x80;
    }
    return chars;
}

/* Cancels every choice still running (a client that hung up). */
static void job_cancel(job_t *j) {
    uint64_t ids[LORAC_OAI_MAX_CHOICES];
    int n = 0;
    pthread_mutex_lock(&j->mu);
    for (int32_t i = 0; i < j->n; i++)
        if (j->choices[i].id && j->choices[i].finish == LORAC_FINISH_NONE) ids[n++] = j->choices[i].id;
    pthread_mutex_unlock(&j->mu);
    if (!n) return;
    lorac_engine_t *e = engine_acquire(j->srv);
    if (!e) return; /* stopping: the engine ends them all */
    for (int i = 0; i < n; i++) lorac_engine_cancel(e, ids[i]);
    engine_release(j->srv);
}

static const char *finish_reason(lorac_finish_t f) {
    return f == LORAC_FINISH_STOP ? "stop" : f == LORAC_FINISH_LENGTH ? "length" : NULL;
}

/* What a choice that ended without finishing its text (cancelled, error) says. */
static void finish_error(const job_t *j, const choice_t *c, lorac_oai_error_t *err) {
    if (c->finish == LORAC_FINISH_CANCELLED && atomic_load(&j->srv->stopping))
        lorac_oai_error_set(err, 503, NULL, NULL, NULL, "the request was cancelled: the server is shutting down");
    else if (c->finish == LORAC_FINISH_CANCELLED)
        lorac_oai_error_set(err, 503, NULL, NULL, NULL, "the request was cancelled");
    else
        lorac_oai_error_set(err, 500, NULL, NULL, NULL, "generation failed: %s", c->error[0] ? c->error : "unknown error");
}

/* The request's usage: each prompt's tokens once, however many choices
 * (and of those, what the prefix cache held for its first choice); every
 * choice's completion tokens. */
static lorac_oai_usage_t job_usage(const job_t *j) {
    lorac_oai_usage_t u = {0, 0, 0};
    for (int32_t i = 0; i < j->n; i += j->per_prompt) u.prompt_tokens += j->choices[i].n_prompt;
    for (int32_t i = 0; i < j->n; i += j->per_prompt) u.cached_tokens += j->choices[i].n_cached;
    for (int32_t i = 0; i < j->n; i++) u.completion_tokens += j->choices[i].n_completion;
    return u;
}

/* One chunk of choice i: its text, finish_reason, and the log-probabilities
 * of recs[0..n) (null when n is 0). NULL when out of memory. */
static char *chunk_with_lps(const job_t *j, int32_t i, const char *text, size_t len, const char *finish,
                            const token_lps_t *recs, int32_t n, int64_t text_offset) {
    void *mem = NULL;
    const lorac_oai_logprobs_t *lp = n > 0 ? logprobs_view(j, recs, n, text_offset, &mem) : NULL;
    char *chunk = n > 0 && !lp ? NULL : lorac_oai_stream_chunk(&j->meta, i, text, len, finish, false, j->include_usage, lp);
    free(mem);
    return chunk;
}

/* Queues choice i's chunk of text with the log-probabilities not sent yet
 * (offsets count the tokens' texts, as the whole answer's do). */
static int send_pending(job_t *j, int32_t i, const char *text, size_t len, const char *finish) {
    choice_t *c = &j->choices[i];
    int32_t n = c->n_lps - c->n_lps_sent; /* 0 without logprobs */
    const token_lps_t *recs = n > 0 ? c->lps + c->n_lps_sent : NULL;
    if (buf_take(&j->out, chunk_with_lps(j, i, text, len, finish, recs, n, c->lps_offset))) return -1;
    c->lps_offset += tokens_chars(j, recs, n);
    c->n_lps_sent += n;
    return 0;
}

/* Under j->mu: formats every new piece of the stream into j->out. Returns -1
 * when out of memory. */
static int stream_produce(job_t *j) {
    bool chat = j->meta.kind == LORAC_OAI_CHAT, all = true;
    for (int32_t i = 0; i < j->n; i++) {
        choice_t *c = &j->choices[i];
        if (chat && !c->role_sent) {
            if (buf_take(&j->out, lorac_oai_stream_chunk(&j->meta, i, NULL, 0, NULL, true, j->include_usage, NULL)))
                return -1;
            c->role_sent = true;
        }
        /* echo: the prompt first, once its log-probabilities came with the first event */
        if (j->echo && !c->echo_sent && c->started) {
            if (buf_take(&j->out, chunk_with_lps(j, i, j->echoes[i / j->per_prompt].text, j->echoes[i / j->per_prompt].len,
                                                 NULL, c->echo_lps, c->n_echo_lps, 0)))
                return -1;
            c->lps_offset = tokens_chars(j, c->echo_lps, c->n_echo_lps);
            c->echo_sent = true;
        }
        /* the text so far, with the log-probabilities of the tokens it came
         * from (a token whose text is held back for a stop string is
         * reported with the text that follows it, or in the last chunk) */
        if (c->text.len > 0 || (c->n_lps > c->n_lps_sent && c->finish == LORAC_FINISH_NONE)) {
            if (send_pending(j, i, c->text.s, c->text.len, NULL)) return -1;
            c->text.len = 0;
        }
        if (c->finish != LORAC_FINISH_NONE && !c->finish_sent) {
            const char *fr = finish_reason(c->finish);
            if (fr) {
                if (send_pending(j, i, "", 0, fr)) return -1;
            } else {
                lorac_oai_error_t err;
                finish_error(j, c, &err);
                if (buf_take(&j->out, lorac_oai_stream_error(&err))) return -1;
            }
            c->finish_sent = true;
        }
        all &= c->finish_sent;
    }
    if (all && !j->done_queued) {
        if (j->include_usage) {
            lorac_oai_usage_t u = job_usage(j);
            if (buf_take(&j->out, lorac_oai_stream_usage_chunk(&j->meta, &u))) return -1;
        }
        if (buf_puts(&j->out, lorac_oai_stream_done)) return -1;
        j->done_queued = true;
    }
    return 0;
}

/* MHD's content reader for a stream: hands out formatted bytes, waiting for
 * the engine when there are none. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    job_t *j = cls;
    pthread_mutex_lock(&j->mu);
    for (;;) {
        if (j->out_off < j->out.len) {
            size_t n = j->out.len - j->out_off < max ? j->out.len - j->out_off : max;
            memcpy(buf, j->out.s + j->out_off, n);
            j->out_off += n;
            if (j->out_off == j->out.len) j->out_off = j->out.len = 0;
            pthread_mutex_unlock(&j->mu);
            return (ssize_t)n;
        }
        if (j->done_queued) {
            pthread_mutex_unlock(&j->mu);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (stream_produce(j)) {
            pthread_mutex_unlock(&j->mu);
            job_cancel(j);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (j->out.len > 0 || j->done_queued) continue;
        timed_wait(&j->cv, &j->mu, 50);
        if (j->n_done < j->n && client_gone(j->fd)) {
            pthread_mutex_unlock(&j->mu);
            job_cancel(j);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
}

/* The response is gone (sent, or the connection failed): whatever still
 * runs is cancelled, and the HTTP side lets go of the job. */
static void stream_free(void *cls) {
    job_t *j = cls;
    job_cancel(j);
    job_release(j);
}

/* ---- /v1/completions and /v1/chat/completions --------------------------------------------- */

/* The prompt's token ids: as given, the text encoded with the tokenizer's
 * special tokens (BOS), or the conversation rendered with the chat template
 * and its generation prompt, encoded without them (the template writes BOS). */
/* A request's enable_thinking (chat_template_kwargs), else the server's
 * default (--chat-template-kwargs). */
static bool request_thinking(const lorac_http_server_t *srv, int8_t asked) {
    return asked >= 0 ? asked != 0 : !srv->p.chat_thinking_off;
}

static lorac_status_t prompt_ids(lorac_http_server_t *srv, const lorac_tokenizer_t *tok, const lorac_oai_request_t *req,
                                 int32_t which, int32_t **ids, size_t *n, lorac_oai_error_t *err) {
    *ids = NULL;
    *n = 0;
    const lorac_oai_prompt_t *p = req->kind == LORAC_OAI_COMPLETION ? &req->prompts[which] : NULL;
    if (p && p->ids) {
        if (!(*ids = malloc(sizeof(int32_t) * (size_t)p->n_ids)))
            return lorac_oai_error_set(err, 500, NULL, NULL, NULL, "out of memory");
        memcpy(*ids, p->ids, sizeof(int32_t) * (size_t)p->n_ids);
        *n = (size_t)p->n_ids;
        return LORAC_STATUS_OK;
    }
    if (p) {
        if (lorac_tokenizer_encode(tok, p->text, p->len, true, ids, n))
            return lorac_oai_error_set(err, 400, NULL, "prompt", NULL, "the prompt cannot be tokenized: %s",
                                       lorac_error_message());
        return LORAC_STATUS_OK;
    }
    if (!srv->p.chat_template)
        return lorac_oai_error_set(err, 400, NULL, "messages", NULL,
                                   "this server has no chat template (the model's tokenizer_config.json has none that "
                                   "lorac recognises); start it with --chat-template NAME, or use /v1/completions");
    char *text = NULL;
    size_t len = 0;
    lorac_status_t s = lorac_dataset_chat_render_generation(srv->p.chat_template, srv->p.chat_default_system,
                                                            req->messages, req->n_messages, srv->p.chat_bos,
                                                            srv->p.chat_eos, request_thinking(srv, req->enable_thinking),
                                                            &text, &len);
    if (s == LORAC_STATUS_NOMEM) return lorac_oai_error_set(err, 500, NULL, NULL, NULL, "out of memory");
    if (s) return lorac_oai_error_set(err, 400, NULL, "messages", NULL, "%s", lorac_error_message());
    s = lorac_tokenizer_encode(tok, text, len, false, ids, n);
    free(text);
    if (s) return lorac_oai_error_set(err, 400, NULL, "messages", NULL, "the conversation cannot be tokenized: %s",
                                      lorac_error_message());
    return LORAC_STATUS_OK;
}

/* 1 when `name` is an adapter the engine knows (a directory or a loaded one). */
static int adapter_known(lorac_engine_t *e, const char *name) {
    int32_t cap = lorac_engine_list_adapters(e, NULL, 0) + 16;
    lorac_adapter_info_t *list = malloc(sizeof *list * (size_t)cap);
    if (!list) return 0;
    int32_t n = lorac_engine_list_adapters(e, list, cap), found = 0;
    for (int32_t i = 0; i < n && i < cap && !found; i++) found = !strcmp(list[i].name, name);
    free(list);
    return found;
}

/* A submit refusal as an HTTP error. */
static void submit_error(lorac_http_server_t *srv, lorac_status_t s, const char *model, lorac_oai_error_t *err) {
    const char *msg = lorac_error_message();
    switch (s) {
    case LORAC_STATUS_NOT_FOUND:
        lorac_oai_error_set(err, 404, "invalid_request_error", "model", "model_not_found",
                            "The model '%s' does not exist", model);
        break;
    case LORAC_STATUS_BUSY:
        if (atomic_load(&srv->stopping)) lorac_oai_error_set(err, 503, NULL, NULL, NULL, "the server is shutting down");
        else lorac_oai_error_set(err, 429, NULL, NULL, NULL, "%s", msg[0] ? msg : "the server is busy; retry later");
        break;
    case LORAC_STATUS_INVALID_ARG:
        lorac_oai_error_set(err, 400, NULL, NULL, NULL, "%s", msg[0] ? msg : lorac_status_str(s));
        break;
    default: /* the named adapter exists but does not load: the server's problem */
        lorac_oai_error_set(err, 500, NULL, NULL, NULL, "%s", msg[0] ? msg : lorac_status_str(s));
    }
}

/* Validates, tokenizes and submits every choice. On success *out is the job
 * (one HTTP reference held); the engine lock is held only in here. */
static lorac_status_t start_job(lorac_http_server_t *srv, struct MHD_Connection *c, lorac_oai_request_t *req,
                                job_t **out, lorac_oai_error_t *err) {
    *out = NULL;
    lorac_engine_t *e = engine_acquire(srv);
    if (!e) return lorac_oai_error_set(err, 503, NULL, NULL, NULL, "the server is shutting down");
    const char *adapter = NULL;
    if (strcmp(req->model, srv->p.served_model_name)) {
        if (!adapter_known(e, req->model)) {
            engine_release(srv);
            return lorac_oai_error_set(err, 404, "invalid_request_error", "model", "model_not_found",
                                       "The model '%s' does not exist", req->model);
        }
        adapter = req->model;
    }
    const lorac_model_t *model = lorac_engine_model(e);
    const lorac_tokenizer_t *tok = lorac_model_get_tokenizer(model);
    int32_t n_prompts = req->kind == LORAC_OAI_COMPLETION ? req->n_prompts : 1;
    int32_t *ids[LORAC_OAI_MAX_PROMPTS] = {0};
    size_t n_ids[LORAC_OAI_MAX_PROMPTS] = {0};
    lorac_status_t s = LORAC_STATUS_OK;
    for (int32_t p = 0; !s && p < n_prompts; p++) {
        s = prompt_ids(srv, tok, req, p, &ids[p], &n_ids[p], err);
        if (!s && n_ids[p] > INT32_MAX) s = lorac_oai_error_set(err, 400, NULL, NULL, NULL, "the prompt is too long");
        if (!s)
            s = lorac_oai_request_check_prompt(req, ids[p], (int32_t)n_ids[p], lorac_model_get_config(model)->vocab_size,
                                               lorac_engine_n_ctx(e), err);
    }
    job_t *j = s ? NULL : job_new(srv, req, n_prompts, tok, connection_fd(c));
    if (!s && !j) s = lorac_oai_error_set(err, 500, NULL, NULL, NULL, "out of memory");
    if (!s && req->echo && !(j->echoes = calloc((size_t)n_prompts, sizeof *j->echoes)))
        s = lorac_oai_error_set(err, 500, NULL, NULL, NULL, "out of memory");
    for (int32_t p = 0; !s && req->echo && p < n_prompts; p++) {
        /* the prompt's text as given, or its ids decoded (special tokens skipped, as vLLM) */
        const lorac_oai_prompt_t *pr = &req->prompts[p];
        j->echoes[p].first_id = ids[p][0];
        if (pr->ids) {
            if (lorac_tokenizer_decode(tok, ids[p], n_ids[p], true, &j->echoes[p].text, &j->echoes[p].len))
                s = lorac_oai_error_set(err, 500, NULL, NULL, NULL, "the prompt cannot be decoded: %s", lorac_error_message());
        } else if (!(j->echoes[p].text = malloc(pr->len + 1))) {
            s = lorac_oai_error_set(err, 500, NULL, NULL, NULL, "out of memory");
        } else {
            memcpy(j->echoes[p].text, pr->text, pr->len);
            j->echoes[p].text[pr->len] = 0;
            j->echoes[p].len = pr->len;
        }
    }
    uint64_t seed = req->has_seed ? req->seed : next_random(srv);
    /* the request's stop_token_ids, and a chat reply ends with its turn */
    _Static_assert(LORAC_OAI_MAX_STOP_TOKEN_IDS + 1 <= LORAC_SERVE_MAX_STOP_TOKENS, "room for the end of turn");
    int32_t stop_tokens[LORAC_OAI_MAX_STOP_TOKEN_IDS + 1], n_stop_tokens = req->n_stop_token_ids;
    memcpy(stop_tokens, req->stop_token_ids, sizeof(int32_t) * (size_t)n_stop_tokens);
    if (req->kind == LORAC_OAI_CHAT && srv->chat_end_of_turn >= 0) stop_tokens[n_stop_tokens++] = srv->chat_end_of_turn;
    for (int32_t i = 0; !s && i < n_prompts * req->n; i++) {
        int32_t p = i / req->n;
        lorac_serve_request_t q = {.prompt = ids[p], .n_prompt = (int32_t)n_ids[p], .adapter = adapter,
                                   .max_tokens = req->max_tokens, .stop = (const char *const *)req->stop,
                                   .n_stop = req->n_stop, .ignore_eos = req->ignore_eos,
                                   .callback = on_engine_event, .user = &j->choices[i]};
        q.stop_tokens = stop_tokens;
        q.n_stop_tokens = n_stop_tokens;
        q.sampler.temperature = req->temperature;
        q.sampler.top_p = req->top_p;
        q.sampler.top_k = req->top_k;
        q.sampler.min_p = req->min_p;
        q.sampler.presence_penalty = req->presence_penalty;
        q.sampler.frequency_penalty = req->frequency_penalty;
        q.sampler.repetition_penalty = req->repetition_penalty;
        q.sampler.logit_bias = req->logit_bias;
        q.sampler.n_logit_bias = req->n_logit_bias;
        q.sampler.seed = seed + (uint64_t)(i % req->n); /* each prompt's choices: seed, seed + 1, ... */
        q.logprobs = req->logprobs;
        q.prompt_logprobs = req->echo && req->logprobs;
        q.top_logprobs = req->top_logprobs;
        pthread_mutex_lock(&j->mu);
        j->refs++; /* before submit: the first event may come before it returns */
        pthread_mutex_unlock(&j->mu);
        uint64_t id = 0;
        s = lorac_engine_submit(e, &q, &id);
        pthread_mutex_lock(&j->mu);
        if (s) j->refs--;
        else j->choices[i].id = id;
        pthread_mutex_unlock(&j->mu);
        if (s) submit_error(srv, s, req->model, err);
    }
    engine_release(srv);
    for (int32_t p = 0; p < n_prompts; p++) free(ids[p]);
    if (s && j) {
        job_cancel(j);
        job_release(j);
        return s;
    }
    *out = j;
    return s;
}

static enum MHD_Result handle_generate(lorac_http_server_t *srv, struct MHD_Connection *c, conn_t *k,
                                       lorac_oai_kind_t kind) {
    lorac_oai_request_t req;
    lorac_oai_error_t err;
    job_t *j = NULL;
    if (lorac_oai_request_parse(kind, k->body.s, k->body.len, &req, &err) || start_job(srv, c, &req, &j, &err)) {
        lorac_oai_request_free(&req);
        return send_error(srv, c, k, &err);
    }
    lorac_oai_request_free(&req);

    if (j->stream) {
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, j, stream_free);
        if (!r) {
            job_cancel(j);
            job_release(j);
            return MHD_NO;
        }
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        return queue(srv, c, k, 200, r);
    }

    /* a whole answer: wait here (this connection's own thread) */
    pthread_mutex_lock(&j->mu);
    while (j->n_done < j->n) {
        timed_wait(&j->cv, &j->mu, 50);
        if (j->n_done < j->n && client_gone(j->fd)) {
            pthread_mutex_unlock(&j->mu);
            job_cancel(j);
            job_release(j);
            return MHD_NO; /* nobody to answer */
        }
    }
    pthread_mutex_unlock(&j->mu);
    /* every engine reference is gone: the job is ours alone now */
    lorac_oai_choice_t choices[LORAC_OAI_MAX_CHOICES];
    void *mem[LORAC_OAI_MAX_CHOICES] = {0};
    enum MHD_Result res = MHD_YES;
    bool oom = false;
    for (int32_t i = 0; i < j->n; i++) {
        const choice_t *ch = &j->choices[i];
        if (!finish_reason(ch->finish)) {
            finish_error(j, ch, &err);
            res = send_error(srv, c, k, &err);
            for (int32_t m = 0; m < i; m++) free(mem[m]);
            job_release(j);
            return res;
        }
        choices[i] = (lorac_oai_choice_t){.text = ch->text.s ? ch->text.s : "", .text_len = ch->text.len,
                                          .finish_reason = finish_reason(ch->finish)};
        if (j->echo) { /* the prompt's text, then the completion's (the buffer is ours now) */
            buf_t t = {0};
            oom |= buf_put(&t, j->echoes[i / j->per_prompt].text, j->echoes[i / j->per_prompt].len) ||
                   buf_put(&t, ch->text.s ? ch->text.s : "", ch->text.len);
            free(j->choices[i].text.s);
            j->choices[i].text = t;
            choices[i].text = t.s ? t.s : "";
            choices[i].text_len = t.len;
        }
        if (j->logprobs) { /* an echo's prompt tokens, then the completion's */
            token_lps_t *all = malloc(sizeof *all * (size_t)(ch->n_echo_lps + ch->n_lps) + 1);
            if (all) {
                if (ch->n_echo_lps) memcpy(all, ch->echo_lps, sizeof *all * (size_t)ch->n_echo_lps);
                if (ch->n_lps) memcpy(all + ch->n_echo_lps, ch->lps, sizeof *all * (size_t)ch->n_lps);
                choices[i].logprobs = logprobs_view(j, all, ch->n_echo_lps + ch->n_lps, 0, &mem[i]);
            }
            oom |= !choices[i].logprobs;
            free(all);
        }
    }
    lorac_oai_usage_t u = job_usage(j);
    res = send_body(srv, c, k, 200, "application/json",
                    oom ? NULL : lorac_oai_response_json(&j->meta, choices, j->n, &u));
    for (int32_t i = 0; i < j->n; i++) free(mem[i]);
    job_release(j);
    return res;
}

/* ---- models, health, metrics, admin ------------------------------------------------------- */

static enum MHD_Result handle_models(lorac_http_server_t *srv, struct MHD_Connection *c, conn_t *k) {
    lorac_engine_t *e = engine_acquire(srv);
    if (!e) return fail_stopping(srv, c, k);
    int32_t cap = lorac_engine_list_adapters(e, NULL, 0) + 16;
    lorac_adapter_info_t *list = malloc(sizeof *list * (size_t)cap);
    const char **names = malloc(sizeof *names * (size_t)cap);
    int32_t n = list && names ? lorac_engine_list_adapters(e, list, cap) : 0;
    engine_release(srv);
    if (n > cap) n = cap;
    for (int32_t i = 0; i < n; i++) names[i] = list[i].name;
    char *body = list && names ? lorac_oai_models_json(srv->p.served_model_name, (int64_t)time(NULL), names, n) : NULL;
    free(list);
    free(names);
    return send_body(srv, c, k, 200, "application/json", body);
}

static enum MHD_Result handle_metrics(lorac_http_server_t *srv, struct MHD_Connection *c, conn_t *k) {
    lorac_engine_t *e = engine_acquire(srv);
    if (!e) return fail_stopping(srv, c, k);
    lorac_engine_metrics_t m;
    lorac_engine_get_metrics(e, &m);
    engine_release(srv);
    buf_t b = {0};
    int bad = buf_take(&b, lorac_http_metrics_text(&m));
    bad |= buf_puts(&b, "# HELP lorac_http_responses_total HTTP responses by status code.\n"
                       "# TYPE lorac_http_responses_total counter\n");
    for (int s = 100; s < N_STATUS && !bad; s++) {
        uint64_t v = atomic_load(&srv->status_counts[s]);
        char line[96];
        int n = snprintf(line, sizeof line, "lorac_http_responses_total{code=\"%d\"} %llu\n", s, (unsigned long long)v);
        if (v) bad |= buf_put(&b, line, (size_t)n);
    }
    if (bad) {
        free(b.s);
        b.s = NULL;
    }
    return send_body(srv, c, k, 200, "text/plain; version=0.0.4", b.s);
}

/* ---- /tokenize, /detokenize, /tokenizer_info (vLLM's) ---------------------------------------------------------- */

/* A token's text as the tokenizer writes it ("<s>"), NUL-terminated; NULL for -1. */
static char *token_text(const lorac_tokenizer_t *tok, int32_t id) {
    char b[512];
    int32_t n = id >= 0 ? lorac_tokenizer_token_bytes(tok, id, b, (int32_t)sizeof b - 1) : -1;
    if (n < 0) return NULL;
    b[n] = 0;
    return strdup(b);
}

static enum MHD_Result handle_tokenize(lorac_http_server_t *srv, struct MHD_Connection *c, conn_t *k, route_id_t route) {
    lorac_oai_error_t err;
    const lorac_tokenizer_t *tok = srv->tok;
    int32_t max_len = srv->n_ctx;
    if (route == R_TOKENIZER_INFO) {
        char *bos = token_text(tok, lorac_tokenizer_bos_id(tok)), *eos = token_text(tok, lorac_tokenizer_eos_id(tok));
        char *body = lorac_oai_tokenizer_info_json(bos, eos, max_len);
        free(bos);
        free(eos);
        return send_body(srv, c, k, 200, "application/json", body);
    }
    lorac_oai_tokenize_request_t req;
    if (lorac_oai_tokenize_parse(route == R_DETOKENIZE, k->body.s, k->body.len, &req, &err))
        return send_error(srv, c, k, &err);
    /* a model, when named, must be one this server has (every one tokenizes alike) */
    lorac_status_t s = LORAC_STATUS_OK;
    err.message[0] = 0; /* set below by refusals; tokenizer errors fill it at the end */
    if (req.model && strcmp(req.model, srv->p.served_model_name)) {
        lorac_engine_t *e = engine_acquire(srv);
        if (!e) {
            lorac_oai_tokenize_request_free(&req);
            return fail_stopping(srv, c, k);
        }
        int known = adapter_known(e, req.model);
        engine_release(srv);
        if (!known) s = lorac_oai_error_set(&err, 404, NULL, "model", "model_not_found", "The model '%.200s' does not exist",
                                            req.model);
    }
    char *body = NULL;
    if (!s && route == R_DETOKENIZE) {
        char *text = NULL;
        size_t len = 0;
        if (lorac_tokenizer_decode(tok, req.tokens, (size_t)req.n_tokens, false, &text, &len))
            s = lorac_oai_error_set(&err, 400, NULL, "tokens", NULL, "%s", lorac_error_message());
        else body = lorac_oai_detokenize_json(text, len);
        free(text);
    } else if (!s) {
        int32_t *ids = NULL;
        size_t n = 0;
        char *text = NULL;
        size_t len = 0;
        if (req.prompt) {
            s = lorac_tokenizer_encode(tok, req.prompt, req.prompt_len, req.add_special_tokens, &ids, &n);
        } else if (!srv->p.chat_template) {
            s = lorac_oai_error_set(&err, 400, NULL, "messages", NULL,
                                    "this server has no chat template; start it with --chat-template NAME");
        } else {
            s = req.add_generation_prompt
                    ? lorac_dataset_chat_render_generation(srv->p.chat_template, srv->p.chat_default_system, req.messages,
                                                           req.n_messages, srv->p.chat_bos, srv->p.chat_eos,
                                                           request_thinking(srv, req.enable_thinking), &text, &len)
                    : lorac_dataset_chat_render(srv->p.chat_template, srv->p.chat_default_system, req.messages,
                                                req.n_messages, srv->p.chat_bos, srv->p.chat_eos, &text, &len);
            if (!s) s = lorac_tokenizer_encode(tok, text, len, false, &ids, &n);
        }
        if (s && !err.message[0]) {
            lorac_oai_error_set(&err, s == LORAC_STATUS_NOMEM ? 500 : 400, NULL, req.prompt ? "prompt" : "messages", NULL,
                                "%s", lorac_error_message());
        }
        if (!s) body = lorac_oai_tokenize_json(ids, (int32_t)n, max_len);
        free(ids);
        free(text);
    }
    lorac_oai_tokenize_request_free(&req);
    return s ? send_error(srv, c, k, &err) : send_body(srv, c, k, 200, "application/json", body);
}

/* lora_path, when given, must be ADAPTERS_DIR/lora_name itself, or its
 * llama.cpp file ADAPTERS_DIR/lora_name.gguf (after resolving links):
 * clients name adapters, they never pick paths. */
static int path_is_adapter(const char *dir, const char *name, const char *path) {
    char real_dir[PATH_MAX], real_path[PATH_MAX], want[PATH_MAX + 300], want_gguf[PATH_MAX + 310];
    if (!realpath(dir, real_dir) || !realpath(path, real_path)) return 0;
    snprintf(want, sizeof want, "%s/%s", real_dir, name);
    snprintf(want_gguf, sizeof want_gguf, "%s/%s.gguf", real_dir, name);
    return !strcmp(want, real_path) || !strcmp(want_gguf, real_path);
}

static enum MHD_Result handle_lora(lorac_http_server_t *srv, struct MHD_Connection *c, conn_t *k, bool load) {
    char *name, *path;
    lorac_oai_error_t err;
    if (lorac_oai_lora_request_parse(k->body.s, k->body.len, load, &name, &path, &err)) return send_error(srv, c, k, &err);
    enum MHD_Result res;
    if (!srv->p.adapters_dir) {
        res = fail(srv, c, k, 400, NULL, "the server has no adapters directory (start it with --adapters DIR)");
    } else if (path && !path_is_adapter(srv->p.adapters_dir, name, path)) {
        lorac_oai_error_set(&err, 400, NULL, "lora_path", NULL,
                            "lora_path must be the adapter's directory (or .gguf file) under the server's adapters "
                            "directory (%s/%s); adapters are loaded by name", srv->p.adapters_dir, name);
        res = send_error(srv, c, k, &err);
    } else {
        lorac_engine_t *e = engine_acquire(srv);
        lorac_status_t s = LORAC_STATUS_BUSY;
        char msg[512] = "";
        if (e) {
            s = load ? lorac_engine_load_adapter(e, name) : lorac_engine_unload_adapter(e, name);
            snprintf(msg, sizeof msg, "%s", lorac_error_message());
            engine_release(srv);
        }
        if (!e) res = fail_stopping(srv, c, k);
        else if (s == LORAC_STATUS_OK) {
            char *text = NULL;
            if (asprintf(&text, "Success: LoRA adapter '%s' %s successfully.", name, load ? "added" : "removed") < 0)
                text = NULL;
            res = send_body(srv, c, k, 200, "text/plain; charset=utf-8", text);
        } else if (s == LORAC_STATUS_NOT_FOUND) {
            res = fail(srv, c, k, 404, "model_not_found", "%s", msg[0] ? msg : "no such adapter");
        } else if (s == LORAC_STATUS_NOMEM) {
            res = fail(srv, c, k, 500, NULL, "%s", msg);
        } else { /* as vLLM: an adapter that does not load is a bad load request */
            res = fail(srv, c, k, 400, NULL, "%s", msg);
        }
    }
    free(name);
    free(path);
    return res;
}

/* ---- the access handler ---------------------------------------------------------------------- */

static enum MHD_Result dispatch(lorac_http_server_t *srv, struct MHD_Connection *c, conn_t *k) {
    if (k->too_large)
        return fail(srv, c, k, 413, NULL, "the request body is larger than the server's limit of %zu bytes",
                    srv->p.max_body);
    switch (k_routes[k->route].id) {
    case R_COMPLETIONS: return handle_generate(srv, c, k, LORAC_OAI_COMPLETION);
    case R_CHAT: return handle_generate(srv, c, k, LORAC_OAI_CHAT);
    case R_MODELS: return handle_models(srv, c, k);
    case R_METRICS: return handle_metrics(srv, c, k);
    case R_LOAD: return handle_lora(srv, c, k, true);
    case R_UNLOAD: return handle_lora(srv, c, k, false);
    case R_TOKENIZE:
    case R_DETOKENIZE:
    case R_TOKENIZER_INFO: return handle_tokenize(srv, c, k, k_routes[k->route].id);
    case R_HEALTH:
        if (atomic_load(&srv->stopping)) return fail_stopping(srv, c, k);
        return send_body(srv, c, k, 200, "application/json", strdup("{\"status\": \"ok\"}"));
    }
    return fail(srv, c, k, 500, NULL, "bad route");
}

/* First call: route, method and Content-Length. */
static enum MHD_Result begin(lorac_http_server_t *srv, struct MHD_Connection *c, conn_t *k, const char *url,
                             const char *method) {
    k->route = -1;
    for (size_t i = 0; i < sizeof k_routes / sizeof *k_routes; i++)
        if (!strcmp(url, k_routes[i].path) && (!k_routes[i].admin || srv->p.allow_admin)) k->route = (int)i;
    if (k->route < 0) return fail(srv, c, k, 404, NULL, "no such endpoint: %.100s", url);
    if (strcmp(method, k_routes[k->route].method)) {
        lorac_oai_error_t err;
        lorac_oai_error_set(&err, 405, NULL, NULL, NULL, "%.100s takes %s, not %.16s", url, k_routes[k->route].method,
                            method);
        struct MHD_Response *r = NULL;
        char *body = lorac_oai_error_json(&err);
        if (body && !(r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE))) free(body);
        if (!r) return MHD_NO;
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, k_routes[k->route].method);
        return queue(srv, c, k, 405, r);
    }
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(cl, &end, 10);
        if (errno || end == cl || v > srv->p.max_body)
            return fail(srv, c, k, 413, NULL, "the request body (Content-Length %.30s) is larger than the server's limit "
                        "of %zu bytes", cl, srv->p.max_body);
    }
    return MHD_YES;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    lorac_http_server_t *srv = cls;
    conn_t *k = *con_cls;
    if (!k) {
        if (!(k = calloc(1, sizeof *k))) return MHD_NO;
        *con_cls = k;
        k->t0 = lorac_seconds();
        snprintf(k->method, sizeof k->method, "%s", method);
        snprintf(k->url, sizeof k->url, "%s", url);
        return begin(srv, c, k, url, method);
    }
    if (*upload_size) {
        /* past the cap the body is discarded, and a client that keeps going
         * far beyond it is dropped */
        k->received += *upload_size;
        if (!k->responded && !k->too_large) {
            if (k->body.len + *upload_size > srv->p.max_body) {
                k->too_large = true;
                free(k->body.s);
                k->body = (buf_t){0};
            } else if (buf_put(&k->body, upload, *upload_size)) {
                return MHD_NO;
            }
        }
        *upload_size = 0;
        return k->received > 8 * (uint64_t)srv->p.max_body + (64u << 20) ? MHD_NO : MHD_YES;
    }
    if (k->responded) return MHD_YES;
    return dispatch(srv, c, k);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)c;
    lorac_http_server_t *srv = cls;
    conn_t *k = *con_cls;
    if (!k) return;
    if (srv->p.log_requests)
        fprintf(stderr, "lorac serve: %s %s %d %.3fs%s\n", k->method, k->url, k->status, lorac_seconds() - k->t0,
                toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection ended early)");
    free(k->body.s);
    free(k);
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    fputs("lorac serve: libmicrohttpd: ", stderr);
    vfprintf(stderr, fmt, ap);
}

/* ---- start / stop ------------------------------------------------------------------------------ */

lorac_status_t lorac_http_server_start(lorac_engine_t *engine, const lorac_http_params_t *params,
                                       lorac_http_server_t **out) {
    *out = NULL;
    if (!engine || !params->served_model_name || !params->served_model_name[0])
        return lorac_error(LORAC_STATUS_INVALID_ARG, "http server: an engine and a served model name are needed");
    if (params->port < 0 || params->port > 65535)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "port %d is not in 0..65535", params->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    char port[8];
    snprintf(port, sizeof port, "%d", params->port);
    const char *host = params->host && params->host[0] ? params->host : "127.0.0.1";
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc) return lorac_error(LORAC_STATUS_INVALID_ARG, "cannot resolve host '%s': %s", host, gai_strerror(rc));

    lorac_http_server_t *srv = calloc(1, sizeof *srv);
    if (!srv) {
        freeaddrinfo(ai);
        return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    }
    srv->p = *params;
    srv->p.host = host;
    if (srv->p.max_body == 0) srv->p.max_body = 1 << 20;
    if (srv->p.max_connections < 1) srv->p.max_connections = 256;
    if (srv->p.connection_timeout_s < 1) srv->p.connection_timeout_s = 120;
    srv->engine = engine;
    srv->tok = lorac_model_get_tokenizer(lorac_engine_model(engine)); /* the engine refuses a model without one */
    srv->n_ctx = lorac_engine_n_ctx(engine);
    srv->chat_end_of_turn = -1;
    if (srv->p.chat_template) {
        const char *eot = lorac_dataset_chat_end_of_turn(srv->p.chat_template, srv->p.chat_eos);
        const lorac_tokenizer_t *tok = lorac_model_get_tokenizer(lorac_engine_model(engine));
        if (eot && tok) srv->chat_end_of_turn = lorac_tokenizer_token_id(tok, eot);
    }
    pthread_rwlock_init(&srv->engine_lock, NULL);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    srv->nonce = splitmix64((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec) ^ (uint64_t)getpid();

    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    srv->daemon = MHD_start_daemon(
        flags, (uint16_t)params->port, NULL, NULL, on_access, srv,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, /* first, as MHD's docs ask */
        MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned)srv->p.max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)srv->p.connection_timeout_s, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, srv, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!srv->daemon) {
        pthread_rwlock_destroy(&srv->engine_lock);
        free(srv);
        return lorac_error(LORAC_STATUS_IO, "cannot listen on %s:%d (address in use, or not an address of this "
                           "machine?)", host, params->port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = di ? (int32_t)di->port : params->port;
    *out = srv;
    return LORAC_STATUS_OK;
}

int32_t lorac_http_server_port(const lorac_http_server_t *srv) { return srv->port; }

void lorac_http_server_stop(lorac_http_server_t *srv) {
    if (!srv) return;
    atomic_store(&srv->stopping, true);
    MHD_socket listen_fd = MHD_quiesce_daemon(srv->daemon);
    if (listen_fd != MHD_INVALID_SOCKET) close(listen_fd);
    /* in-flight requests get their last (CANCELLED) event from the engine */
    pthread_rwlock_wrlock(&srv->engine_lock);
    lorac_engine_stop(srv->engine);
    srv->engine = NULL;
    pthread_rwlock_unlock(&srv->engine_lock);
    MHD_stop_daemon(srv->daemon);
    pthread_rwlock_destroy(&srv->engine_lock);
    free(srv);
}

/* ---- Prometheus text ---------------------------------------------------------------------------- */

static int metric(buf_t *b, const char *name, const char *type, const char *help, double value) {
    char line[512];
    int n = snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, value);
    return n < 0 || n >= (int)sizeof line ? -1 : buf_put(b, line, (size_t)n);
}

char *lorac_http_metrics_text(const lorac_engine_metrics_t *m) {
    buf_t b = {0};
    char line[256];
    int bad = 0, n;
    bad |= metric(&b, "lorac_requests_total", "counter", "Requests accepted by the engine.", (double)m->requests_total);
    bad |= buf_puts(&b, "# HELP lorac_requests_finished_total Requests finished, by reason.\n"
                       "# TYPE lorac_requests_finished_total counter\n");
    for (int f = LORAC_FINISH_STOP; f <= LORAC_FINISH_ERROR; f++) {
        n = snprintf(line, sizeof line, "lorac_requests_finished_total{reason=\"%s\"} %llu\n",
                     lorac_finish_name((lorac_finish_t)f), (unsigned long long)m->requests_finished[f]);
        bad |= buf_put(&b, line, (size_t)n);
    }
    bad |= metric(&b, "lorac_requests_rejected_total", "counter", "Requests the engine refused (invalid, unknown "
                  "adapter, queue full).", (double)m->requests_rejected);
    bad |= metric(&b, "lorac_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.",
                  (double)m->prompt_tokens_total);
    bad |= metric(&b, "lorac_prompt_tokens_cached_total", "counter", "Prompt tokens whose keys and values a slot "
                  "kept from its previous request (the prefix cache): not decoded again.",
                  (double)m->prompt_tokens_cached_total);
    bad |= metric(&b, "lorac_completion_tokens_total", "counter", "Tokens generated.", (double)m->completion_tokens_total);
    bad |= metric(&b, "lorac_steps_total", "counter", "Forward passes.", (double)m->steps_total);
    bad |= metric(&b, "lorac_batch_tokens_total", "counter", "Tokens over all forward passes.",
                  (double)m->batch_tokens_total);
    bad |= metric(&b, "lorac_batch_size", "gauge", "Sequences in the last forward pass.", m->last_batch_size);
    bad |= metric(&b, "lorac_queue_depth", "gauge", "Requests waiting for a slot.", m->waiting);
    bad |= metric(&b, "lorac_running", "gauge", "Requests being decoded.", m->running);
    bad |= metric(&b, "lorac_adapters_loaded", "gauge", "Adapters in memory.", m->adapters_loaded);
    bad |= metric(&b, "lorac_max_seqs", "gauge", "Sequences decoded concurrently at most.", m->max_seqs);
    bad |= metric(&b, "lorac_max_queue", "gauge", "Requests that may wait for a slot.", m->max_queue);
    bad |= buf_puts(&b, "# HELP lorac_request_latency_seconds Submit to finish, per request.\n"
                       "# TYPE lorac_request_latency_seconds histogram\n");
    uint64_t cum = 0;
    for (int i = 0; i < LORAC_SERVE_LATENCY_BUCKETS; i++) {
        cum += m->latency_counts[i];
        if (i < LORAC_SERVE_LATENCY_BUCKETS - 1)
            n = snprintf(line, sizeof line, "lorac_request_latency_seconds_bucket{le=\"%g\"} %llu\n",
                         lorac_serve_latency_bounds[i], (unsigned long long)cum);
        else
            n = snprintf(line, sizeof line, "lorac_request_latency_seconds_bucket{le=\"+Inf\"} %llu\n",
                         (unsigned long long)cum);
        bad |= buf_put(&b, line, (size_t)n);
    }
    n = snprintf(line, sizeof line, "lorac_request_latency_seconds_sum %.17g\nlorac_request_latency_seconds_count %llu\n",
                 m->latency_sum_s, (unsigned long long)cum);
    bad |= buf_put(&b, line, (size_t)n);
    if (bad) {
        free(b.s);
        return NULL;
    }
    return b.s;
}
