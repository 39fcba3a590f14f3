/* The serving engine: continuous batching over one inference context.
 *
 * One thread owns the context. Each step it
 *   1. admits waiting requests into free KV slots (their sequence cleared,
 *      their adapter attached to the slot: lorac_context_set_seq_adapter);
 *   2. builds one batch: the next token of every decoding sequence, then as
 *      much of the pending prompts as the batch has room for (long prompts
 *      are split over steps), sequences ordered by adapter so each adapter's
 *      rows form one segment of the mixed-adapter kernel;
 *   3. runs the forward pass, samples each sequence that produced logits,
 *      hands the text to the request's callback and retires finished ones.
 * Other threads only touch the waiting queue, the cancel flags and the
 * metrics, under `mu`; callbacks are called without any lock held. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lorac/infer.h"
#include "lorac/kernels.h"
#include "serve/serve_internal.h"

typedef struct request {
    uint64_t id;
    int32_t *prompt;          /* the prompt, then the tokens generated (cap_ids) */
    int32_t n_prompt, cap_ids;
    int32_t n_cached;         /* prompt tokens the prefix cache held at admission */
    /* tokens of prompt[] the sequence decodes before its next sample, and
     * how many of them it has: n_prompt, or at Phi-3's longrope switch its
     * whole length again (rope_switch) */
    int32_t n_feed, n_prefilled;
    int32_t max_tokens, n_generated;
    int32_t last_token;       /* next input of a decoding sequence */
    registry_entry_t *adapter;
    lorac_sampler_t *sampler;
    char **stop;
    int32_t n_stop;
    int32_t stop_tokens[LORAC_SERVE_MAX_STOP_TOKENS], n_stop_tokens;
    bool ignore_eos, strip_space, cancel, matched_stop;
    lorac_serve_callback_t callback;
    void *user;
    int32_t slot;
    double t_submit, t_first;
    lorac_utf8_stream_t utf8;
    char *pending;            /* text held back: it may start a stop string */
    size_t n_pending, cap_pending;
    bool logprobs;            /* the last token's log-probabilities, for its first event */
    int32_t top_logprobs, n_lp;
    bool lp_pending;
    lorac_token_logprob_t lp[1 + LORAC_SERVE_MAX_TOP_LOGPROBS];
    lorac_token_logprob_t *plp; /* (n_prompt - 1) rows of 1 + top_logprobs, with prompt_logprobs */
    bool plp_sent;
    struct request *next;     /* waiting queue */
} request_t;

/* Logit rows a step gives to prompt tokens whose log-probabilities were
 * asked for (beyond one a sequence): such prompts are fed at most this many
 * tokens a step, so the logits buffer stays small at large vocabularies. */
#define PROMPT_LOGPROB_ROWS 64

struct lorac_engine {
    const lorac_model_t *model;
    const lorac_tokenizer_t *tok;
    lorac_engine_params_t params;
    lorac_context_t *ctx;
    registry_t registry;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    bool stopping;
    request_t *wait_head, *wait_tail;
    int32_t n_waiting;
    request_t **slots;        /* (max_seqs) running requests, NULL = free */
    /* The prefix cache: what a free slot's KV cache still holds, from the
     * request that ran there last: its tokens (n_kept of kept_ids), the
     * uid of its adapter (0: the base model) and when it left (kept_at,
     * for the least recently used) */
    int32_t **kept_ids, *n_kept;
    uint64_t *kept_adapter, *kept_at, clock;
    int32_t n_running;
    uint64_t next_id;
    lorac_engine_metrics_t metrics;
    /* step buffers, owned by the engine thread */
    int32_t *b_tokens, *b_pos, *b_seq;
    int8_t *b_logits;
    int32_t *order;           /* (max_seqs) slots in batch order */
    float *logits;            /* (max_seqs + PROMPT_LOGPROB_ROWS, vocab) */
    float *raw;               /* (vocab) a row before the sampler changes it, for logprobs */
    char *scratch;            /* UTF-8 assembly of one token */
};

const double lorac_serve_latency_bounds[LORAC_SERVE_LATENCY_BUCKETS - 1] = {0.05, 0.1, 0.25, 0.5, 1,  2.5,
                                                                            5,    10,  30,   60,  120};

const char *lorac_finish_name(lorac_finish_t f) {
    switch (f) {
    case LORAC_FINISH_STOP: return "stop";
    case LORAC_FINISH_LENGTH: return "length";
    case LORAC_FINISH_CANCELLED: return "cancelled";
    case LORAC_FINISH_ERROR: return "error";
    default: return "";
    }
}

lorac_engine_params_t lorac_engine_default_params(void) {
    lorac_engine_params_t p = {.max_seqs = 8, .n_ctx = 0, .n_batch = 512, .max_queue = 64, .max_loras = 8,
                               .adapters_dir = NULL};
    return p;
}

static void request_free(request_t *r) {
    if (!r) return;
    free(r->prompt);
    for (int32_t i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop);
    free(r->pending);
    free(r->plp);
    lorac_sampler_free(r->sampler);
    free(r);
}

/* ---- text: whole characters, stop strings held back ------------------------ */

static int pending_append(request_t *r, const char *s, size_t n) {
    if (n == 0) return 0; /* a token that is only part of a character; pending may still be NULL */
    if (r->n_pending + n > r->cap_pending) {
        size_t cap = r->cap_pending ? r->cap_pending : 64;
        while (cap < r->n_pending + n) cap *= 2;
        char *grown = realloc(r->pending, cap);
        if (!grown) return -1;
        r->pending = grown;
        r->cap_pending = cap;
    }
    memcpy(r->pending + r->n_pending, s, n);
    r->n_pending += n;
    return 0;
}

static void emit(request_t *r, const char *text, size_t len, int32_t token, lorac_finish_t finish, const char *error) {
    lorac_serve_event_t ev = {.request_id = r->id, .text = text ? text : "", .text_len = len, .token = token,
                              .finish = finish, .n_prompt_tokens = r->n_prompt, .n_cached_tokens = r->n_cached,
                              .n_completion_tokens = r->n_generated,
                              .ttft_s = r->t_first > 0 ? r->t_first - r->t_submit : 0, .error = error};
    if (r->lp_pending) { /* the first event after a token reports it */
        ev.logprobs = r->lp;
        ev.n_logprobs = r->n_lp;
        r->lp_pending = false;
    }
    if (r->plp && !r->plp_sent) {
        ev.prompt_logprobs = r->plp;
        ev.n_prompt_logprobs = r->n_prompt - 1;
        ev.prompt_logprobs_stride = 1 + r->top_logprobs;
        r->plp_sent = true;
    }
    r->callback(r->user, &ev);
}

/* The log-probabilities of `token` and of the k most likely tokens (ties by
 * id) under a row of raw logits: log_softmax (lorac_logsumexp, the sum in
 * double). */
static int32_t token_logprobs(const float *x, int32_t V, int32_t token, int32_t k, lorac_token_logprob_t *out) {
    double lse = lorac_logsumexp(x, V);
    out[0] = (lorac_token_logprob_t){token, (float)(x[token] - lse)};
    /* the k largest by insertion: k <= 20, and most of the row fails the first test */
    lorac_token_logprob_t *top = out + 1;
    int32_t n = 0;
    for (int32_t i = 0; i < V && k > 0; i++) {
        if (n == k && !(x[i] > top[k - 1].logprob)) continue;
        int32_t at = n < k ? n++ : k - 1;
        while (at > 0 && x[i] > top[at - 1].logprob) { top[at] = top[at - 1]; at--; }
        top[at] = (lorac_token_logprob_t){i, x[i]};
    }
    for (int32_t i = 0; i < n; i++) top[i].logprob = (float)(top[i].logprob - lse);
    return 1 + n;
}

/* Adds a token's bytes to the pending text and releases what is safe. Returns
 * 1 when a stop string ended the text. */
static int push_token_text(lorac_engine_t *e, request_t *r, int32_t token) {
    char bytes[512];
    int32_t n = lorac_tokenizer_token_bytes(e->tok, token, bytes, (int32_t)sizeof bytes);
    const char *b = bytes;
    if (n > 0 && r->strip_space && r->n_generated == 1 && b[0] == ' ') { b++; n--; }
    size_t w = n > 0 ? lorac_utf8_stream_push(&r->utf8, b, (size_t)n, e->scratch) : 0;
    if (pending_append(r, e->scratch, w)) return -1;
    size_t safe;
    long stop = lorac_stop_find((const char *const *)r->stop, r->n_stop, r->pending, r->n_pending, &safe);
    if (stop >= 0) {
        r->n_pending = (size_t)stop;
        r->matched_stop = true;
        return 1;
    }
    emit(r, r->pending, safe, token, LORAC_FINISH_NONE, NULL);
    memmove(r->pending, r->pending + safe, r->n_pending - safe);
    r->n_pending -= safe;
    return 0;
}

/* ---- finishing -------------------------------------------------------------- */

static void record_finish(lorac_engine_t *e, request_t *r, lorac_finish_t f) {
    double latency = lorac_seconds() - r->t_submit;
    int b = 0;
    while (b < LORAC_SERVE_LATENCY_BUCKETS - 1 && latency > lorac_serve_latency_bounds[b]) b++;
    pthread_mutex_lock(&e->mu);
    e->metrics.requests_finished[f]++;
    e->metrics.completion_tokens_total += (uint64_t)r->n_generated;
    e->metrics.latency_counts[b]++;
    e->metrics.latency_sum_s += latency;
    pthread_mutex_unlock(&e->mu);
}

/* Sends the last event and frees the request. Text held back because it
 * might have begun a stop string is released now (unless a stop string did
 * match), with an unfinished character as U+FFFD. */
static void finish(lorac_engine_t *e, request_t *r, lorac_finish_t f, const char *error) {
    if (!r->matched_stop) {
        char tail[8];
        size_t w = lorac_utf8_stream_flush(&r->utf8, tail);
        pending_append(r, tail, w);
    }
    record_finish(e, r, f); /* before the event: a client that then reads the metrics sees itself */
    emit(r, r->pending, r->n_pending, -1, f, error);
    registry_release(&e->registry, r->adapter);
    request_free(r);
}

/* Which adapter load a request runs on: 0 for the base model. */
static uint64_t adapter_uid(const request_t *r) { return r->adapter ? r->adapter->uid : 0; }

/* The slot is emptied under mu: lorac_engine_cancel reads the slots (and
 * their requests' ids) under it from the server's threads, so the request
 * must leave its slot there before finish() frees it. */
static void retire_slot(lorac_engine_t *e, int32_t slot, lorac_finish_t f, const char *error) {
    request_t *r = e->slots[slot];
    lorac_context_set_seq_adapter(e->ctx, slot, NULL, 0.0f);
    /* the cache stays for the prefix cache: the tokens of its positions
     * are the request's (prompt[], the prompt then every token fed) */
    int32_t n = f == LORAC_FINISH_ERROR || e->params.no_prefix_cache ? 0 : lorac_context_seq_len(e->ctx, slot);
    free(e->kept_ids[slot]);
    e->kept_ids[slot] = n > 0 ? r->prompt : NULL;
    if (n > 0) r->prompt = NULL;
    else lorac_context_clear_seq(e->ctx, slot);
    e->n_kept[slot] = n;
    e->kept_adapter[slot] = adapter_uid(r);
    e->kept_at[slot] = ++e->clock;
    pthread_mutex_lock(&e->mu);
    e->slots[slot] = NULL;
    e->n_running--;
    pthread_mutex_unlock(&e->mu);
    finish(e, r, f, error);
}

/* ---- the loop ----------------------------------------------------------------- */

/* When a free slot's kept cache was made: 0 for one that keeps nothing,
 * the first to be taken when no cache fits. */
static uint64_t kept_since(const lorac_engine_t *e, int32_t s) { return e->n_kept[s] ? e->kept_at[s] : 0; }

/* How many of r's first prompt tokens ids[0..n) repeats. */
static int32_t common_start(const request_t *r, const int32_t *ids, int32_t n) {
    int32_t k = 0;
    n = n < r->n_prompt ? n : r->n_prompt;
    while (k < n && ids[k] == r->prompt[k]) k++;
    return k;
}

/* The free slot for r and where its prompt's start can come from: the
 * free slot whose kept cache shares the longest start with r's prompt (on
 * r's adapter), or, when a running request's cache shares a longer one, a
 * copy of that (*src: its slot; else -1); where nothing is shared, a free
 * slot that keeps nothing or else the least recently used one. *keep: the
 * positions to take, at most all but the prompt's last token (whose
 * logits are needed); 0 for a request that wants every prompt token's
 * logits. */
static int32_t pick_slot(const lorac_engine_t *e, const request_t *r, int32_t *keep, int32_t *src) {
    int32_t best = -1, best_lcp = -1, lru = -1, run_lcp = 0;
    uint64_t uid = adapter_uid(r);
    bool reuse = !r->plp && !e->params.no_prefix_cache;
    *src = -1;
    for (int32_t s = 0; s < e->params.max_seqs; s++) {
        const request_t *q = e->slots[s];
        if (q) { /* running: the positions its cache holds are prompt[0 .. seq_len) */
            int32_t lcp = !reuse || adapter_uid(q) != uid
                              ? 0 : common_start(r, q->prompt, lorac_context_seq_len(e->ctx, s));
            if (lcp > run_lcp) *src = s, run_lcp = lcp;
            continue;
        }
        int32_t lcp = !reuse || e->kept_adapter[s] != uid ? 0 : common_start(r, e->kept_ids[s], e->n_kept[s]);
        if (lcp > best_lcp || (lcp == best_lcp && kept_since(e, s) < kept_since(e, best))) best = s, best_lcp = lcp;
        if (lru < 0 || kept_since(e, s) < kept_since(e, lru)) lru = s;
    }
    if (run_lcp > best_lcp) best = lru, best_lcp = run_lcp; /* copied into the slot least worth keeping */
    else *src = -1;
    *keep = best_lcp < r->n_prompt ? best_lcp : r->n_prompt - 1;
    return best;
}

/* A waiting request waits a step rather than decode this many tokens of
 * its prompt's start that a running request is decoding (and will hold
 * after its prefill): choices 2..n of one prompt, or requests sent at once
 * with one system prompt, then copy them (pick_slot) instead. */
#define PREFIX_WAIT_MIN 8

/* The most of r's prompt start that running requests' caches will hold
 * once their prompts are decoded (at most all but r's last token). */
static int32_t prefix_after_prefill(const lorac_engine_t *e, const request_t *r) {
    int32_t most = 0;
    uint64_t uid = adapter_uid(r);
    if (r->plp || e->params.no_prefix_cache) return 0;
    for (int32_t s = 0; s < e->params.max_seqs; s++) {
        const request_t *q = e->slots[s];
        if (!q || q->n_prefilled == q->n_feed || adapter_uid(q) != uid) continue;
        int32_t lcp = common_start(r, q->prompt, q->n_feed);
        most = lcp > most ? lcp : most;
    }
    return most < r->n_prompt ? most : r->n_prompt - 1;
}

/* Under mu: moves waiting requests into free slots; returns the cancelled
 * waiting requests (unlinked) for the caller to finish without the lock. */
static request_t *admit_locked(lorac_engine_t *e) {
    request_t *cancelled = NULL, **link = &e->wait_head, *prev = NULL;
    while (*link) {
        request_t *r = *link;
        if (r->cancel) {
            *link = r->next;
            r->next = cancelled;
            cancelled = r;
            e->n_waiting--;
            continue;
        }
        prev = r;
        link = &r->next;
    }
    e->wait_tail = prev;
    while (e->wait_head && e->n_running < e->params.max_seqs) {
        request_t *r = e->wait_head;
        int32_t keep, src, s = pick_slot(e, r, &keep, &src);
        if (prefix_after_prefill(e, r) >= keep + PREFIX_WAIT_MIN) break; /* first-come order: the rest wait too */
        e->wait_head = r->next;
        if (!e->wait_head) e->wait_tail = NULL;
        e->n_waiting--;
        r->next = NULL;
        r->slot = s;
        e->slots[s] = r;
        e->n_running++;
        /* Phi-3's longrope: the kept positions were rotated with the
         * factors of their request's length, which must be this prompt's */
        const lorac_model_config_t *c = lorac_model_get_config(e->model);
        if (keep > 0 && c->rope_longrope &&
            lorac_context_seq_rope_long(e->ctx, src >= 0 ? src : s) != lorac_model_rope_long(c, r->n_prompt))
            keep = 0;
        if (keep > 0) /* 0: a window moved past them */
            keep = src >= 0 ? lorac_context_copy_seq(e->ctx, src, s, keep) : lorac_context_keep_seq(e->ctx, s, keep);
        if (keep == 0) lorac_context_clear_seq(e->ctx, s);
        r->n_prefilled = r->n_cached = keep;
        e->metrics.prompt_tokens_cached_total += (uint64_t)keep;
        free(e->kept_ids[s]); /* the request's prompt[] holds them now */
        e->kept_ids[s] = NULL;
        e->n_kept[s] = 0;
        /* Phi-3's longrope: a prompt fed in pieces is rotated with the
         * factors of its whole length (rope_switch does the rest) */
        lorac_context_set_seq_rope_len(e->ctx, s, r->n_prompt);
        lorac_context_set_seq_adapter(e->ctx, s, r->adapter ? r->adapter->adapter : NULL, 1.0f);
    }
    return cancelled;
}

static int cmp_by_adapter(const void *a, const void *b, void *arg) {
    request_t **slots = arg;
    const request_t *x = slots[*(const int32_t *)a], *y = slots[*(const int32_t *)b];
    uintptr_t ax = (uintptr_t)(x->adapter ? x->adapter->adapter : NULL), ay = (uintptr_t)(y->adapter ? y->adapter->adapter : NULL);
    if (ax != ay) return ax < ay ? -1 : 1;
    return x->slot - y->slot;
}

/* Phi-3's longrope: transformers rotates a sequence with the long factors
 * once it is longer than original_max_position_embeddings, and its
 * generate recomputes the whole cache when the sequence grows across. So
 * does this: a decoding sequence whose next token takes it across is fed
 * again from its first token (the prompt and what it generated), in the
 * batches that follow, before its next sample. */
static void rope_switch(lorac_engine_t *e, request_t *r) {
    int32_t len = r->n_prompt + r->n_generated; /* with the token about to be decoded */
    if (r->n_prefilled < r->n_feed || !lorac_model_get_config(e->model)->rope_longrope ||
        lorac_context_seq_rope_long(e->ctx, r->slot) || !lorac_model_rope_long(lorac_model_get_config(e->model), len))
        return;
    lorac_context_clear_seq(e->ctx, r->slot);
    lorac_context_set_seq_rope_len(e->ctx, r->slot, len);
    r->n_feed = len;
    r->n_prefilled = 0;
}

/* Fills the step's batch; returns the number of tokens. */
static int32_t build_batch(lorac_engine_t *e, int32_t *n_order) {
    int32_t n = 0;
    for (int32_t s = 0; s < e->params.max_seqs; s++)
        if (e->slots[s]) e->order[n++] = s, rope_switch(e, e->slots[s]);
    qsort_r(e->order, (size_t)n, sizeof(int32_t), cmp_by_adapter, e->slots);
    *n_order = n;
    /* decoding sequences take one token each; prompts share what is left */
    int32_t budget = e->params.n_batch;
    for (int32_t i = 0; i < n; i++)
        if (e->slots[e->order[i]]->n_prefilled == e->slots[e->order[i]]->n_feed) budget--;
    int32_t t = 0, lp_rows = PROMPT_LOGPROB_ROWS;
    for (int32_t i = 0; i < n; i++) {
        request_t *r = e->slots[e->order[i]];
        if (r->n_prefilled == r->n_feed) {
            e->b_tokens[t] = r->last_token;
            e->b_pos[t] = r->n_prompt + r->n_generated - 1;
            e->b_seq[t] = r->slot;
            e->b_logits[t] = 1;
            t++;
            continue;
        }
        int32_t take = r->n_feed - r->n_prefilled;
        bool prompt_rows = r->plp && r->n_feed == r->n_prompt; /* not again at the longrope switch */
        if (take > budget) take = budget;
        if (prompt_rows) { /* every prompt token's logits: within the rows left */
            if (take > lp_rows + 1) take = lp_rows + 1;
            lp_rows -= take - 1;
            if (take == 0) continue;
        }
        for (int32_t j = 0; j < take; j++) {
            e->b_tokens[t] = r->prompt[r->n_prefilled + j];
            e->b_pos[t] = r->n_prefilled + j;
            e->b_seq[t] = r->slot;
            e->b_logits[t] = prompt_rows || r->n_prefilled + j == r->n_feed - 1;
            t++;
        }
        budget -= take;
    }
    return t;
}

/* Samples the next token of a request whose logits are ready and acts on it:
 * end of sequence, stop string, length, or the text delta. */
static void advance(lorac_engine_t *e, request_t *r, float *logits) {
    int32_t V = lorac_model_get_config(e->model)->vocab_size;
    if (r->logprobs) memcpy(e->raw, logits, sizeof(float) * (size_t)V); /* the sampler changes the row */
    int32_t tok = lorac_sampler_sample(r->sampler, logits);
    if (r->logprobs) {
        r->n_lp = token_logprobs(e->raw, V, tok, r->top_logprobs, r->lp);
        r->lp_pending = true;
    }
    if (r->n_generated == 0) r->t_first = lorac_seconds();
    r->n_generated++;
    bool end = lorac_model_is_eos(e->model, tok);
    for (int32_t i = 0; i < r->n_stop_tokens; i++) end = end || tok == r->stop_tokens[i];
    if (!r->ignore_eos && end) {
        retire_slot(e, r->slot, LORAC_FINISH_STOP, NULL);
        return;
    }
    int stopped = push_token_text(e, r, tok);
    if (stopped < 0) { retire_slot(e, r->slot, LORAC_FINISH_ERROR, "out of memory for the output text"); return; }
    if (stopped) { retire_slot(e, r->slot, LORAC_FINISH_STOP, NULL); return; }
    if (r->n_generated >= r->max_tokens || r->n_prompt + r->n_generated >= e->params.n_ctx) {
        retire_slot(e, r->slot, LORAC_FINISH_LENGTH, NULL);
        return;
    }
    if (r->n_prompt + r->n_generated > r->cap_ids) { /* keep it for rope_switch; grown by half at a time */
        int64_t cap = (int64_t)r->cap_ids + r->cap_ids / 2 + 16, most = (int64_t)r->n_prompt + r->max_tokens;
        int32_t *grown = realloc(r->prompt, sizeof(int32_t) * (size_t)(cap < most ? cap : most));
        if (!grown) { retire_slot(e, r->slot, LORAC_FINISH_ERROR, "out of memory for the generated tokens"); return; }
        r->prompt = grown;
        r->cap_ids = (int32_t)(cap < most ? cap : most);
    }
    r->prompt[r->n_prompt + r->n_generated - 1] = tok;
    r->last_token = tok;
}

static void step(lorac_engine_t *e) {
    int32_t n_order;
    int32_t n_tokens = build_batch(e, &n_order);
    lorac_batch_t b = {.n_tokens = n_tokens, .tokens = e->b_tokens, .pos = e->b_pos, .seq_id = e->b_seq,
                       .logits = e->b_logits};
    lorac_status_t s = lorac_context_decode(e->ctx, &b, e->logits);
    if (s) {
        /* cannot happen with validated requests; fail this batch's requests
         * rather than the server */
        char msg[512];
        snprintf(msg, sizeof msg, "forward pass failed: %s", lorac_error_message());
        for (int32_t i = 0; i < n_order; i++) retire_slot(e, e->order[i], LORAC_FINISH_ERROR, msg);
        return;
    }
    pthread_mutex_lock(&e->mu);
    e->metrics.steps_total++;
    e->metrics.batch_tokens_total += (uint64_t)n_tokens;
    e->metrics.last_batch_size = n_order;
    pthread_mutex_unlock(&e->mu);
    /* logits come in batch order, one row per token that asked */
    int32_t row = 0, V = lorac_model_get_config(e->model)->vocab_size;
    for (int32_t t = 0; t < n_tokens; t++) {
        request_t *r = e->slots[e->b_seq[t]];
        if (r->n_prefilled < r->n_feed) r->n_prefilled++;
        if (!e->b_logits[t]) continue;
        const float *logits = e->logits + (size_t)row++ * (size_t)V;
        int32_t p = e->b_pos[t];
        if (p < r->n_prompt - 1) /* a prompt token's row scores the next prompt token */
            token_logprobs(logits, V, r->prompt[p + 1], r->top_logprobs,
                           r->plp + (size_t)p * (size_t)(1 + r->top_logprobs));
        else
            advance(e, r, e->logits + (size_t)(row - 1) * (size_t)V);
    }
}

static void *engine_main(void *arg) {
    lorac_engine_t *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        while (!e->stopping && e->n_running == 0 && !e->wait_head) pthread_cond_wait(&e->wake, &e->mu);
        if (e->stopping) {
            pthread_mutex_unlock(&e->mu);
            break;
        }
        request_t *cancelled = admit_locked(e);
        /* cancel flags of running requests, read under the lock */
        int32_t n_cancel = 0;
        for (int32_t s = 0; s < e->params.max_seqs; s++)
            if (e->slots[s] && e->slots[s]->cancel) e->order[n_cancel++] = s;
        pthread_mutex_unlock(&e->mu);
        while (cancelled) {
            request_t *next = cancelled->next;
            finish(e, cancelled, LORAC_FINISH_CANCELLED, NULL);
            cancelled = next;
        }
        for (int32_t i = 0; i < n_cancel; i++) retire_slot(e, e->order[i], LORAC_FINISH_CANCELLED, NULL);
        if (e->n_running > 0) step(e);
    }
    return NULL;
}

/* ---- public API ------------------------------------------------------------------ */

/* Frees what lorac_engine_start allocated; the thread must not be running. */
static void engine_free(lorac_engine_t *e) {
    lorac_context_free(e->ctx);
    for (int32_t s = 0; e->kept_ids && s < e->params.max_seqs; s++) free(e->kept_ids[s]);
    free(e->kept_ids); free(e->n_kept); free(e->kept_adapter); free(e->kept_at);
    free(e->slots); free(e->order); free(e->b_tokens); free(e->b_pos); free(e->b_seq); free(e->b_logits);
    free(e->logits); free(e->raw); free(e->scratch);
    registry_free(&e->registry);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->wake);
    free(e);
}

lorac_status_t lorac_engine_start(const lorac_model_t *model, const lorac_engine_params_t *params,
                                  lorac_engine_t **out) {
    *out = NULL;
    lorac_engine_params_t p = *params;
    const lorac_model_config_t *c = lorac_model_get_config(model);
    if (!lorac_model_get_tokenizer(model))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "serving needs the model's tokenizer");
    if (p.max_seqs < 1 || (p.n_ctx != 0 && p.n_ctx < 2) || p.max_queue < 0 || p.max_loras < 1)
        return lorac_error(LORAC_STATUS_INVALID_ARG,
                           "engine: max_seqs >= 1, n_ctx 0 or >= 2, max_queue >= 0, max_loras >= 1");
    if (p.n_ctx == 0) /* the model's positions, capped: each slot's KV cache is reserved up front */
        p.n_ctx = c->max_position_embeddings >= 2 && c->max_position_embeddings < 2048 ? c->max_position_embeddings : 2048;
    if (p.n_batch < p.max_seqs) p.n_batch = p.max_seqs;
    lorac_engine_t *e = calloc(1, sizeof *e);
    if (!e) return lorac_error(LORAC_STATUS_NOMEM, "out of memory for the engine");
    e->model = model;
    e->tok = lorac_model_get_tokenizer(model);
    e->params = p;
    e->next_id = 1;
    lorac_context_params_t cp = {.n_ctx = p.n_ctx, .n_seq = p.max_seqs, .n_batch = p.n_batch, .kv_dtype = p.kv_dtype};
    lorac_status_t s = lorac_context_init(model, cp, &e->ctx);
    if (s) { free(e); return s; }
    e->slots = calloc((size_t)p.max_seqs, sizeof *e->slots);
    e->kept_ids = calloc((size_t)p.max_seqs, sizeof *e->kept_ids);
    e->n_kept = calloc((size_t)p.max_seqs, sizeof *e->n_kept);
    e->kept_adapter = calloc((size_t)p.max_seqs, sizeof *e->kept_adapter);
    e->kept_at = calloc((size_t)p.max_seqs, sizeof *e->kept_at);
    e->order = calloc((size_t)p.max_seqs, sizeof *e->order);
    e->b_tokens = malloc(sizeof(int32_t) * (size_t)p.n_batch);
    e->b_pos = malloc(sizeof(int32_t) * (size_t)p.n_batch);
    e->b_seq = malloc(sizeof(int32_t) * (size_t)p.n_batch);
    e->b_logits = malloc((size_t)p.n_batch);
    e->logits = malloc(sizeof(float) * (size_t)(p.max_seqs + PROMPT_LOGPROB_ROWS) * (size_t)c->vocab_size);
    e->raw = malloc(sizeof(float) * (size_t)c->vocab_size);
    e->scratch = malloc(3 * 512 + 3);
    registry_init(&e->registry, model, p.adapters_dir, p.max_loras);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->wake, NULL);
    e->metrics.max_seqs = p.max_seqs;
    e->metrics.max_queue = p.max_queue;
    if (!e->slots || !e->kept_ids || !e->n_kept || !e->kept_adapter || !e->kept_at || !e->order || !e->b_tokens ||
        !e->b_pos || !e->b_seq || !e->b_logits || !e->logits || !e->raw || !e->scratch ||
        pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        engine_free(e); /* no thread was started */
        return lorac_error(LORAC_STATUS_NOMEM, "out of memory (or threads) for the engine");
    }
    *out = e;
    return LORAC_STATUS_OK;
}

void lorac_engine_stop(lorac_engine_t *e) {
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->stopping = true;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->thread, NULL);
    /* the thread is gone: finish what is left from here */
    for (int32_t s = 0; s < e->params.max_seqs; s++)
        if (e->slots[s]) retire_slot(e, s, LORAC_FINISH_CANCELLED, NULL);
    while (e->wait_head) {
        request_t *r = e->wait_head;
        e->wait_head = r->next;
        finish(e, r, LORAC_FINISH_CANCELLED, NULL);
    }
    engine_free(e);
}

/* Checks a request against the model and the engine before anything is
 * allocated for it. */
static lorac_status_t validate_request(const lorac_engine_t *e, const lorac_serve_request_t *q) {
    const lorac_model_config_t *c = lorac_model_get_config(e->model);
    if (!q->callback) return lorac_error(LORAC_STATUS_INVALID_ARG, "the request has no callback");
    if (!q->prompt || q->n_prompt < 1) return lorac_error(LORAC_STATUS_INVALID_ARG, "the prompt is empty");
    for (int32_t i = 0; i < q->n_prompt; i++)
        if (q->prompt[i] < 0 || q->prompt[i] >= c->vocab_size)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "token id %d is outside the vocabulary (0..%d)", q->prompt[i],
                               c->vocab_size - 1);
    if (q->max_tokens < 1) return lorac_error(LORAC_STATUS_INVALID_ARG, "max_tokens must be at least 1");
    if ((int64_t)q->n_prompt + q->max_tokens > e->params.n_ctx)
        return lorac_error(LORAC_STATUS_INVALID_ARG,
                           "this model's context is %d tokens; the prompt (%d tokens) plus max_tokens (%d) exceed it",
                           e->params.n_ctx, q->n_prompt, q->max_tokens);
    lorac_status_t s = lorac_sampler_params_validate(&q->sampler);
    if (s) return s;
    if (q->n_stop < 0 || (q->n_stop > 0 && !q->stop)) return lorac_error(LORAC_STATUS_INVALID_ARG, "bad stop list");
    for (int32_t i = 0; i < q->n_stop; i++)
        if (!q->stop[i] || !q->stop[i][0]) return lorac_error(LORAC_STATUS_INVALID_ARG, "stop strings must not be empty");
    if ((q->logprobs || q->prompt_logprobs) && (q->top_logprobs < 0 || q->top_logprobs > LORAC_SERVE_MAX_TOP_LOGPROBS))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "top_logprobs must be in 0..%d", LORAC_SERVE_MAX_TOP_LOGPROBS);
    if (q->n_stop_tokens < 0 || q->n_stop_tokens > LORAC_SERVE_MAX_STOP_TOKENS || (q->n_stop_tokens && !q->stop_tokens))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "at most %d stop tokens", LORAC_SERVE_MAX_STOP_TOKENS);
    for (int32_t i = 0; i < q->n_stop_tokens; i++)
        if (q->stop_tokens[i] < 0 || q->stop_tokens[i] >= c->vocab_size)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "stop token %d is outside the vocabulary (0..%d)", q->stop_tokens[i],
                               c->vocab_size - 1);
    return LORAC_STATUS_OK;
}

static request_t *request_new(const lorac_engine_t *e, const lorac_serve_request_t *q) {
    request_t *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->prompt = malloc(sizeof(int32_t) * (size_t)q->n_prompt);
    r->stop = q->n_stop ? calloc((size_t)q->n_stop, sizeof(char *)) : NULL;
    if (!r->prompt || (q->n_stop && !r->stop)) { request_free(r); return NULL; }
    memcpy(r->prompt, q->prompt, sizeof(int32_t) * (size_t)q->n_prompt);
    r->n_prompt = r->cap_ids = r->n_feed = q->n_prompt;
    for (int32_t i = 0; i < q->n_stop; i++) {
        r->stop[i] = strdup(q->stop[i]);
        r->n_stop = i + 1;
        if (!r->stop[i]) { request_free(r); return NULL; }
    }
    if (lorac_sampler_init(&q->sampler, lorac_model_get_config(e->model)->vocab_size, &r->sampler)) {
        request_free(r);
        return NULL;
    }
    lorac_sampler_add_prompt(r->sampler, q->prompt, q->n_prompt); /* the repetition penalty's */
    /* SentencePiece decoders drop the space that starts the text; a
     * completion starts the text only after a prompt of nothing but BOS */
    int only_bos = 1;
    for (int32_t i = 0; i < q->n_prompt; i++) only_bos &= q->prompt[i] == lorac_tokenizer_bos_id(e->tok);
    r->strip_space = lorac_tokenizer_strips_leading_space(e->tok) && only_bos;
    r->max_tokens = q->max_tokens;
    r->ignore_eos = q->ignore_eos;
    if (q->n_stop_tokens) memcpy(r->stop_tokens, q->stop_tokens, sizeof(int32_t) * (size_t)q->n_stop_tokens);
    r->n_stop_tokens = q->n_stop_tokens;
    r->logprobs = q->logprobs;
    r->top_logprobs = q->logprobs || q->prompt_logprobs ? q->top_logprobs : 0;
    if (q->prompt_logprobs && q->n_prompt > 1 &&
        !(r->plp = malloc(sizeof(lorac_token_logprob_t) * (size_t)(q->n_prompt - 1) * (size_t)(1 + r->top_logprobs)))) {
        request_free(r);
        return NULL;
    }
    r->callback = q->callback;
    r->user = q->user;
    r->slot = -1;
    r->t_submit = lorac_seconds();
    return r;
}

static lorac_status_t reject(lorac_engine_t *e, lorac_status_t s) {
    pthread_mutex_lock(&e->mu);
    e->metrics.requests_rejected++;
    pthread_mutex_unlock(&e->mu);
    return s;
}

lorac_status_t lorac_engine_submit(lorac_engine_t *e, const lorac_serve_request_t *q, uint64_t *id) {
    if (id) *id = 0;
    lorac_status_t s = validate_request(e, q);
    if (s) return reject(e, s);
    registry_entry_t *adapter = NULL;
    if (q->adapter && q->adapter[0]) {
        if (!e->params.adapters_dir)
            return reject(e, lorac_error(LORAC_STATUS_NOT_FOUND, "no adapter named '%s' (the server has no adapters)", q->adapter));
        s = registry_acquire(&e->registry, q->adapter, &adapter);
        if (s) return reject(e, s);
    }
    request_t *r = request_new(e, q);
    if (!r) {
        registry_release(&e->registry, adapter);
        return reject(e, lorac_error(LORAC_STATUS_NOMEM, "out of memory for the request"));
    }
    r->adapter = adapter;
    pthread_mutex_lock(&e->mu);
    int32_t free_slots = e->params.max_seqs - e->n_running;
    if (e->stopping || e->n_waiting - free_slots >= e->params.max_queue) {
        bool stopping = e->stopping;
        e->metrics.requests_rejected++;
        pthread_mutex_unlock(&e->mu);
        registry_release(&e->registry, adapter);
        request_free(r);
        return stopping ? lorac_error(LORAC_STATUS_BUSY, "the server is shutting down")
                        : lorac_error(LORAC_STATUS_BUSY, "the queue is full (%d requests waiting); retry later",
                                      e->params.max_queue);
    }
    r->id = e->next_id++;
    if (e->wait_tail) e->wait_tail->next = r;
    else e->wait_head = r;
    e->wait_tail = r;
    e->n_waiting++;
    e->metrics.requests_total++;
    e->metrics.prompt_tokens_total += (uint64_t)q->n_prompt;
    if (id) *id = r->id;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);
    return LORAC_STATUS_OK;
}

void lorac_engine_cancel(lorac_engine_t *e, uint64_t id) {
    pthread_mutex_lock(&e->mu);
    for (request_t *r = e->wait_head; r; r = r->next)
        if (r->id == id) r->cancel = true;
    for (int32_t s = 0; s < e->params.max_seqs; s++)
        if (e->slots[s] && e->slots[s]->id == id) e->slots[s]->cancel = true;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);
}

lorac_status_t lorac_engine_load_adapter(lorac_engine_t *e, const char *name) {
    if (!e->params.adapters_dir) return lorac_error(LORAC_STATUS_NOT_FOUND, "the server has no adapters directory");
    registry_entry_t *entry;
    lorac_status_t s = registry_acquire(&e->registry, name, &entry);
    if (s) return s;
    registry_release(&e->registry, entry);
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_engine_unload_adapter(lorac_engine_t *e, const char *name) {
    return registry_unload(&e->registry, name);
}

int32_t lorac_engine_list_adapters(lorac_engine_t *e, lorac_adapter_info_t *out, int32_t cap) {
    return registry_list(&e->registry, out, cap);
}

void lorac_engine_get_metrics(lorac_engine_t *e, lorac_engine_metrics_t *out) {
    pthread_mutex_lock(&e->mu);
    *out = e->metrics;
    out->running = e->n_running;
    out->waiting = e->n_waiting;
    pthread_mutex_unlock(&e->mu);
    out->adapters_loaded = registry_n_loaded(&e->registry);
}

const lorac_model_t *lorac_engine_model(const lorac_engine_t *e) { return e->model; }
int32_t lorac_engine_n_ctx(const lorac_engine_t *e) { return e->params.n_ctx; }
size_t lorac_engine_kv_bytes(const lorac_engine_t *e) { return lorac_context_kv_bytes(e->ctx); }
