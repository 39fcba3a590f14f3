/* The serving engine over the real stories260K model (converted from the
 * fixtures with `lorac convert`) and adapters of ranks 4..32:
 *   - many concurrent greedy requests over several adapters and the base,
 *     each producing exactly the tokens of that sequence decoded alone with
 *     its adapter attached the plain way;
 *   - log-probabilities: one report per generated token, by the right event;
 *   - the prefix cache: a copy of a running request's cache, a slot's kept one,
 *     a request waiting for another's prefill of the same prompt;
 *   - stop strings (text ends before them), max_tokens, cancel;
 *   - the registry: unknown and malformed names, LRU eviction at max_loras,
 *     unload while a request uses the adapter, reload;
 *   - a full queue gives BUSY; metrics count what happened. */
#include <pthread.h>
#include <stdint.h>
#include <unistd.h>

#include "lorac/lora.h"
#include "lorac/serve.h"
#include "testlib.h"
#include "tinymodel.h"

#define N_ADAPTERS 4
#define N_REQ 12
#define MAX_GEN 24

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    lorac_finish_t finish;
    int32_t tokens[256];
    int n_tokens;
    char text[4096];
    size_t n_text;
    int n_prompt, n_cached, n_completion;
} result_t;

static void on_event(void *user, const lorac_serve_event_t *ev) {
    result_t *r = user;
    pthread_mutex_lock(&r->mu);
    if (ev->token >= 0 && r->n_tokens < 256) r->tokens[r->n_tokens++] = ev->token;
    if (r->n_text + ev->text_len < sizeof r->text) {
        memcpy(r->text + r->n_text, ev->text, ev->text_len);
        r->n_text += ev->text_len;
        r->text[r->n_text] = 0;
    }
    if (ev->finish != LORAC_FINISH_NONE) {
        r->done = 1;
        r->finish = ev->finish;
        r->n_prompt = ev->n_prompt_tokens;
        r->n_cached = ev->n_cached_tokens;
        r->n_completion = ev->n_completion_tokens;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
}

static void result_init(result_t *r) {
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
}

static void wait_done(result_t *r) {
    pthread_mutex_lock(&r->mu);
    while (!r->done) pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
}

/* A request whose first token's callback waits until `go` is set: the
 * engine thread stops there, so what the test does meanwhile happens while
 * the request is still running. */
typedef struct {
    result_t r;
    int started, go;
} gate_t;

static void on_gate_event(void *user, const lorac_serve_event_t *ev) {
    gate_t *g = user;
    pthread_mutex_lock(&g->r.mu);
    if (ev->token >= 0 && !g->started) {
        g->started = 1;
        pthread_cond_broadcast(&g->r.cv);
        while (!g->go) pthread_cond_wait(&g->r.cv, &g->r.mu);
    }
    pthread_mutex_unlock(&g->r.mu);
    on_event(&g->r, ev);
}

/* A request that notes, at its finish event, whether `other` had ended:
 * both events come from the engine thread, so unlike a check made after
 * wait_done (by which time a busy machine may have let the engine run
 * `other` to its end) this sees the order in which the engine ran them. */
typedef struct {
    result_t r;
    result_t *other;
    int other_done;
} watch_t;

static void on_watch_event(void *user, const lorac_serve_event_t *ev) {
    watch_t *w = user;
    if (ev->finish != LORAC_FINISH_NONE) {
        pthread_mutex_lock(&w->other->mu);
        w->other_done = w->other->done;
        pthread_mutex_unlock(&w->other->mu);
    }
    on_event(&w->r, ev);
}

/* Log-probability events: the tokens they report, and how many broke a rule. */
typedef struct {
    result_t r;
    int32_t token[256];
    int n, bad;
} lp_result_t;

static void on_lp_event(void *user, const lorac_serve_event_t *ev) {
    lp_result_t *l = user;
    pthread_mutex_lock(&l->r.mu);
    if (ev->n_logprobs > 0) {
        const lorac_token_logprob_t *lp = ev->logprobs;
        int ok = ev->n_logprobs == 4 && lp[0].logprob <= 0.0f && lp[1].token == lp[0].token &&
                 lp[1].logprob == lp[0].logprob && lp[1].logprob >= lp[2].logprob && lp[2].logprob >= lp[3].logprob &&
                 (ev->token < 0 || ev->token == lp[0].token);
        l->bad += !ok;
        if (l->n < 256) l->token[l->n++] = lp[0].token;
    } else if (ev->finish == LORAC_FINISH_NONE) {
        l->bad++; /* a token event without its log-probabilities */
    }
    pthread_mutex_unlock(&l->r.mu);
    on_event(&l->r, ev);
}

static int first_index(const int32_t *x, int n, int32_t v) {
    for (int i = 0; i < n; i++)
        if (x[i] == v) return i;
    return -1;
}

static int argmax(const float *x, int32_t n) {
    int best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Greedy tokens of `prompt` decoded alone, the adapter attached globally;
 * stops at EOS (included) or max_gen tokens. */
static int reference_tokens(const lorac_model_t *model, const lorac_adapter_t *ad, const int32_t *prompt, int n_prompt,
                            int max_gen, int32_t *out) {
    const lorac_model_config_t *c = lorac_model_get_config(model);
    lorac_context_params_t cp = lorac_context_default_params();
    cp.n_ctx = 256;
    lorac_context_t *ctx = NULL;
    if (lorac_context_init(model, cp, &ctx)) return -1;
    float scale = 1.0f;
    if (ad) lorac_context_set_adapters(ctx, &ad, &scale, 1);
    float *logits = malloc(sizeof(float) * (size_t)c->vocab_size);
    int32_t pos[256], seq[256] = {0};
    for (int i = 0; i < n_prompt; i++) pos[i] = i;
    lorac_batch_t b = {.n_tokens = n_prompt, .tokens = prompt, .pos = pos, .seq_id = seq};
    lorac_context_decode(ctx, &b, logits);
    int n = 0;
    for (;;) {
        int32_t tok = argmax(logits, c->vocab_size), p = n_prompt + n, zero = 0;
        out[n++] = tok;
        if (lorac_model_is_eos(model, tok) || n == max_gen) break;
        lorac_batch_t d = {.n_tokens = 1, .tokens = &tok, .pos = &p, .seq_id = &zero};
        lorac_context_decode(ctx, &d, logits);
    }
    free(logits);
    lorac_context_free(ctx);
    return n;
}

static lorac_serve_request_t greedy(const int32_t *prompt, int n, const char *adapter, int max_tokens, result_t *res) {
    lorac_serve_request_t q = {.prompt = prompt, .n_prompt = n, .adapter = adapter, .max_tokens = max_tokens,
                               .callback = on_event, .user = res};
    q.sampler = lorac_sampler_default_params();
    q.sampler.temperature = 0.0f;
    return q;
}

int main(void) {
    const char *tmp = tl_tmpdir(), *bin = getenv("LORAC_BIN");
    if (!bin) { fprintf(stderr, "LORAC_BIN is not set\n"); return 1; }
    char model_dir[1024], adapters_dir[1024], cmd[16384];
    snprintf(model_dir, sizeof model_dir, "%s/engine_model", tmp);
    snprintf(adapters_dir, sizeof adapters_dir, "%s/engine_adapters", tmp);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s' && '%s' convert --from llama2c '%s/llama2c/stories260K.bin' --tokenizer '%s/llama2c/tok512.bin' -o '%s' >/dev/null 2>&1 && mkdir -p '%s'",
             model_dir, adapters_dir, bin, tl_fixtures(), tl_fixtures(), model_dir, adapters_dir);
    CHECK(system(cmd) == 0);
    lorac_model_t *model = NULL;
    CHECK(lorac_model_load(model_dir, &model) == LORAC_STATUS_OK);
    if (!model) return 1;
    const lorac_model_config_t *c = lorac_model_get_config(model);

    /* adapters of different ranks and targets, with B random so they matter */
    const int ranks[N_ADAPTERS] = {4, 8, 16, 32};
    const char *names[N_ADAPTERS] = {"r4", "r8", "r16", "r32"};
    lorac_adapter_t *ads[N_ADAPTERS];
    for (int i = 0; i < N_ADAPTERS; i++) {
        lorac_lora_params_t p = lorac_lora_default_params();
        p.r = ranks[i];
        p.alpha = (float)ranks[i];
        p.targets = i % 2 ? (1u << LORAC_LORA_COUNT) - 1 : (1u << LORAC_LORA_Q) | (1u << LORAC_LORA_V) | (1u << LORAC_LORA_DOWN);
        p.seed = 100 + (uint64_t)i;
        CHECK(lorac_adapter_init(c, &p, &ads[i]) == LORAC_STATUS_OK);
        unsigned long long s = 7 + (unsigned long long)i;
        for (int32_t k = 0; k < lorac_adapter_n_modules(ads[i]); k++) {
            lorac_lora_module_t *m = lorac_adapter_module(ads[i], k);
            for (int64_t j = 0; j < (int64_t)m->out * m->r; j++) m->B[j] = 0.3f * tiny_rand(&s);
        }
        char dir[2048];
        snprintf(dir, sizeof dir, "%s/%s", adapters_dir, names[i]);
        CHECK(lorac_adapter_save(ads[i], dir, model_dir) == LORAC_STATUS_OK);
    }

    /* prompts: BOS + a few tokens, different lengths */
    int32_t prompts[N_REQ][16];
    int n_prompt[N_REQ];
    unsigned long long s = 3;
    for (int i = 0; i < N_REQ; i++) {
        n_prompt[i] = 2 + i % 9;
        prompts[i][0] = 1;
        for (int j = 1; j < n_prompt[i]; j++) prompts[i][j] = 3 + (int32_t)((tiny_rand(&s) + 0.5f) * 400.0f);
    }
    int32_t ref[N_REQ][MAX_GEN];
    int n_ref[N_REQ];
    for (int i = 0; i < N_REQ; i++) {
        int a = i % (N_ADAPTERS + 1) - 1; /* -1 = base */
        n_ref[i] = reference_tokens(model, a >= 0 ? ads[a] : NULL, prompts[i], n_prompt[i], MAX_GEN, ref[i]);
    }

    lorac_engine_params_t ep = lorac_engine_default_params();
    ep.max_seqs = 5; /* fewer slots than requests: some wait, then join mid-flight */
    ep.n_ctx = 128;
    ep.n_batch = 24; /* small: prompts are split across steps */
    ep.max_queue = 32;
    ep.max_loras = N_ADAPTERS;
    ep.adapters_dir = adapters_dir;
    lorac_engine_t *e = NULL;
    CHECK(lorac_engine_start(model, &ep, &e) == LORAC_STATUS_OK);
    if (!e) return 1;

    /* 1. concurrent greedy requests over all adapters and the base */
    static result_t res[N_REQ];
    for (int i = 0; i < N_REQ; i++) {
        result_init(&res[i]);
        int a = i % (N_ADAPTERS + 1) - 1;
        lorac_serve_request_t q = greedy(prompts[i], n_prompt[i], a >= 0 ? names[a] : NULL, MAX_GEN, &res[i]);
        CHECK(lorac_engine_submit(e, &q, NULL) == LORAC_STATUS_OK);
    }
    int all_equal = 1;
    for (int i = 0; i < N_REQ; i++) {
        wait_done(&res[i]);
        int same = res[i].n_tokens == n_ref[i] && !memcmp(res[i].tokens, ref[i], sizeof(int32_t) * (size_t)n_ref[i]);
        if (!same) fprintf(stderr, "request %d: %d tokens vs %d alone\n", i, res[i].n_tokens, n_ref[i]);
        all_equal &= same;
        CHECK(res[i].finish == (n_ref[i] < MAX_GEN ? LORAC_FINISH_STOP : LORAC_FINISH_LENGTH));
        CHECK(res[i].n_prompt == n_prompt[i] && res[i].n_completion == n_ref[i]);
    }
    CHECK_MSG(all_equal, "mixed-adapter continuous batching differs from each request alone");

    /* 1b. logprobs: every generated token reported once, in order, by the
     * event that first reports it: the stop token that ends half of them
     * by the last event. Greedy: the token is the top alternative. (The
     * values are checked against torch in tests/test_serve.py.) */
    {
        static lp_result_t lr[N_REQ];
        for (int i = 0; i < N_REQ; i++) {
            memset(&lr[i], 0, sizeof lr[i]);
            result_init(&lr[i].r);
            int a = i % (N_ADAPTERS + 1) - 1;
            lorac_serve_request_t q = greedy(prompts[i], n_prompt[i], a >= 0 ? names[a] : NULL, MAX_GEN, &lr[i].r);
            q.callback = on_lp_event;
            q.user = &lr[i];
            q.logprobs = true;
            q.top_logprobs = 3;
            int32_t stop_tok = ref[i][5];
            if (i % 2 && n_ref[i] > 6) q.stop_tokens = &stop_tok, q.n_stop_tokens = 1;
            CHECK(lorac_engine_submit(e, &q, NULL) == LORAC_STATUS_OK);
        }
        int bad = 0;
        for (int i = 0; i < N_REQ; i++) {
            wait_done(&lr[i].r);
            int want = i % 2 && n_ref[i] > 6 ? 1 + first_index(ref[i], n_ref[i], ref[i][5]) : n_ref[i];
            int ok = lr[i].n == want && lr[i].r.n_completion == want && lr[i].bad == 0;
            for (int k = 0; ok && k < lr[i].n; k++) ok = lr[i].token[k] == ref[i][k];
            if (!ok && bad++ < 3)
                fprintf(stderr, "logprobs request %d: %d reported (%d bad) for %d tokens, %d expected\n", i, lr[i].n,
                        lr[i].bad, lr[i].r.n_completion, want);
        }
        CHECK_MSG(bad == 0, "%d logprobs requests report their tokens wrongly", bad);
        /* out of range */
        lorac_serve_request_t q = greedy(prompts[0], n_prompt[0], NULL, 4, &lr[0].r);
        q.logprobs = true;
        q.top_logprobs = LORAC_SERVE_MAX_TOP_LOGPROBS + 1;
        CHECK(lorac_engine_submit(e, &q, NULL) == LORAC_STATUS_INVALID_ARG);
    }

    /* 1c. the prefix cache: B, whose prompt starts with A's, is admitted
     * while A waits in its first token's callback (still running: 100
     * tokens to go), and starts from a copy of A's 12 cached positions;
     * then C, B's prompt again after A and B are done, from B's slot's
     * kept cache (all but its last token). B and C give the tokens of
     * their prompt decoded alone. */
    {
        int32_t pa[12], pb[16], ref_b[MAX_GEN];
        pa[0] = 1;
        for (int j = 1; j < 12; j++) pa[j] = 5 + 31 * j;
        memcpy(pb, pa, sizeof pa);
        for (int j = 12; j < 16; j++) pb[j] = 400 + j;
        int n_ref_b = reference_tokens(model, NULL, pb, 16, MAX_GEN, ref_b);
        static gate_t ga;
        static watch_t wb;
        static result_t rc;
        result_t *rb = &wb.r;
        memset(&ga, 0, sizeof ga);
        result_init(&ga.r);
        memset(&wb, 0, sizeof wb);
        result_init(rb);
        wb.other = &ga.r;
        result_init(&rc);
        lorac_serve_request_t qa = greedy(pa, 12, NULL, 100, &ga.r);
        qa.callback = on_gate_event;
        qa.user = &ga;
        qa.ignore_eos = true;
        uint64_t id_a = 0;
        CHECK(lorac_engine_submit(e, &qa, &id_a) == LORAC_STATUS_OK);
        pthread_mutex_lock(&ga.r.mu);
        while (!ga.started) pthread_cond_wait(&ga.r.cv, &ga.r.mu);
        pthread_mutex_unlock(&ga.r.mu);
        lorac_serve_request_t qb = greedy(pb, 16, NULL, MAX_GEN, rb);
        qb.callback = on_watch_event;
        qb.user = &wb;
        CHECK(lorac_engine_submit(e, &qb, NULL) == LORAC_STATUS_OK);
        pthread_mutex_lock(&ga.r.mu);
        ga.go = 1;
        pthread_cond_broadcast(&ga.r.cv);
        pthread_mutex_unlock(&ga.r.mu);
        wait_done(rb);
        CHECK_MSG(rb->n_cached == 12 && rb->n_tokens == n_ref_b &&
                      !memcmp(rb->tokens, ref_b, sizeof(int32_t) * (size_t)n_ref_b),
                  "a copy of a running request's cache: %d positions, %d tokens (%d alone)", rb->n_cached, rb->n_tokens,
                  n_ref_b);
        CHECK_MSG(!wb.other_done, "the first request ended before the second");
        lorac_engine_cancel(e, id_a);
        wait_done(&ga.r);
        CHECK(ga.r.finish == LORAC_FINISH_CANCELLED);
        lorac_serve_request_t qc = greedy(pb, 16, NULL, MAX_GEN, &rc);
        CHECK(lorac_engine_submit(e, &qc, NULL) == LORAC_STATUS_OK);
        wait_done(&rc);
        CHECK_MSG(rc.n_cached == 15 && rc.n_tokens == n_ref_b && !memcmp(rc.tokens, ref_b, sizeof(int32_t) * (size_t)n_ref_b),
                  "a slot's kept cache: %d positions, %d tokens (%d alone)", rc.n_cached, rc.n_tokens, n_ref_b);
    }

    /* 1d. two requests with one 80-token prompt sent together (choices of
     * one prompt): the second waits while the first decodes the prompt
     * (24 tokens a step) and then copies all but the last 8 at most,
     * rather than decode it again; both give the tokens decoded alone */
    {
        int32_t p80[80], ref80[MAX_GEN];
        p80[0] = 1;
        for (int j = 1; j < 80; j++) p80[j] = 7 + 5 * j;
        int n_ref80 = reference_tokens(model, NULL, p80, 80, MAX_GEN, ref80);
        static result_t r1, r2;
        result_init(&r1);
        result_init(&r2);
        lorac_serve_request_t q1 = greedy(p80, 80, NULL, MAX_GEN, &r1), q2 = greedy(p80, 80, NULL, MAX_GEN, &r2);
        CHECK(lorac_engine_submit(e, &q1, NULL) == LORAC_STATUS_OK && lorac_engine_submit(e, &q2, NULL) == LORAC_STATUS_OK);
        wait_done(&r1);
        wait_done(&r2);
        for (int k = 0; k < 2; k++) {
            const result_t *rk = k ? &r2 : &r1;
            CHECK_MSG(rk->n_tokens == n_ref80 && !memcmp(rk->tokens, ref80, sizeof(int32_t) * (size_t)n_ref80),
                      "request %d of one prompt: %d tokens (%d alone)", k + 1, rk->n_tokens, n_ref80);
        }
        CHECK_MSG(r2.n_cached >= 79 - 7, "the second of one prompt copied %d positions", r2.n_cached);
    }

    /* 2. stop strings: the text ends right before the first match */
    {
        const char *full = res[0].text;
        size_t n = strlen(full);
        CHECK(n > 8);
        char stop[5] = {0};
        memcpy(stop, full + n / 2, 4);
        const char *stops[2] = {"\x01never", stop};
        result_t r;
        result_init(&r);
        lorac_serve_request_t q = greedy(prompts[0], n_prompt[0], NULL, MAX_GEN, &r);
        q.stop = stops;
        q.n_stop = 2;
        CHECK(lorac_engine_submit(e, &q, NULL) == LORAC_STATUS_OK);
        wait_done(&r);
        const char *at = strstr(full, stop);
        CHECK(r.finish == LORAC_FINISH_STOP);
        CHECK_MSG(at && r.n_text == (size_t)(at - full) && !memcmp(r.text, full, r.n_text), "'%s' vs '%s' stop '%s'",
                  r.text, full, stop);
    }

    /* 2b. stop tokens (a chat template's end of turn): the output ends
     * before the first one, as at EOS */
    {
        int k = n_ref[0] / 2, first = k;
        CHECK(k >= 1);
        for (int i = 0; i < k; i++)
            if (ref[0][i] == ref[0][k]) { first = i; break; }
        int32_t stop_tok = ref[0][k];
        result_t r;
        result_init(&r);
        lorac_serve_request_t q = greedy(prompts[0], n_prompt[0], NULL, MAX_GEN, &r);
        q.stop_tokens = &stop_tok;
        q.n_stop_tokens = 1;
        CHECK(lorac_engine_submit(e, &q, NULL) == LORAC_STATUS_OK);
        wait_done(&r);
        CHECK(r.finish == LORAC_FINISH_STOP);
        CHECK_MSG(r.n_tokens == first && !memcmp(r.tokens, ref[0], sizeof(int32_t) * (size_t)first),
                  "stop token %d: %d tokens, want %d", stop_tok, r.n_tokens, first);
    }

    /* 3. validation and the registry */
    {
        result_t r;
        result_init(&r);
        int32_t bad_tok[2] = {1, 100000};
        lorac_serve_request_t q = greedy(bad_tok, 2, NULL, 4, &r);
        CHECK(lorac_engine_submit(e, &q, NULL) == LORAC_STATUS_INVALID_ARG);
        q = greedy(prompts[0], n_prompt[0], NULL, 1000, &r);
        CHECK(lorac_engine_submit(e, &q, NULL) == LORAC_STATUS_INVALID_ARG); /* past n_ctx */
        q = greedy(prompts[0], 0, NULL, 4, &r);
        CHECK(lorac_engine_submit(e, &q, NULL) == LORAC_STATUS_INVALID_ARG);
        q = greedy(prompts[0], n_prompt[0], "nope", 4, &r);
        CHECK(lorac_engine_submit(e, &q, NULL) == LORAC_STATUS_NOT_FOUND);
        q = greedy(prompts[0], n_prompt[0], "../engine_adapters/r4", 4, &r);
        CHECK(lorac_engine_submit(e, &q, NULL) == LORAC_STATUS_INVALID_ARG);
        const char *empty_stop[1] = {""};
        q = greedy(prompts[0], n_prompt[0], NULL, 4, &r);
        q.stop = empty_stop;
        q.n_stop = 1;
        CHECK(lorac_engine_submit(e, &q, NULL) == LORAC_STATUS_INVALID_ARG);
        q = greedy(prompts[0], n_prompt[0], NULL, 4, &r);
        q.sampler.top_p = 0.0f;
        CHECK(lorac_engine_submit(e, &q, NULL) == LORAC_STATUS_INVALID_ARG);
        int32_t stops[LORAC_SERVE_MAX_STOP_TOKENS + 1] = {0};
        q = greedy(prompts[0], n_prompt[0], NULL, 4, &r);
        q.stop_tokens = stops;
        q.n_stop_tokens = LORAC_SERVE_MAX_STOP_TOKENS + 1;
        CHECK(lorac_engine_submit(e, &q, NULL) == LORAC_STATUS_INVALID_ARG);
        stops[0] = 100000;
        q.n_stop_tokens = 1;
        CHECK(lorac_engine_submit(e, &q, NULL) == LORAC_STATUS_INVALID_ARG);
        CHECK(r.done == 0); /* rejected requests never call back */

        lorac_adapter_info_t info[8];
        CHECK(lorac_engine_list_adapters(e, info, 8) == N_ADAPTERS);
        CHECK(!strcmp(info[0].name, "r16") && info[0].loaded && info[0].r == 16);
        CHECK(lorac_engine_unload_adapter(e, "r8") == LORAC_STATUS_OK);
        CHECK(lorac_engine_unload_adapter(e, "r8") == LORAC_STATUS_NOT_FOUND);
        CHECK(lorac_engine_list_adapters(e, info, 8) == N_ADAPTERS);
        CHECK(!strcmp(info[3].name, "r8") && !info[3].loaded);
        CHECK(lorac_engine_load_adapter(e, "r8") == LORAC_STATUS_OK);
        CHECK(lorac_engine_load_adapter(e, "missing") == LORAC_STATUS_NOT_FOUND);
    }

    /* 4. unload while in use: the running request finishes with its adapter */
    {
        int i = 2; /* adapter r8 */
        result_t r;
        result_init(&r);
        lorac_serve_request_t q = greedy(prompts[i], n_prompt[i], "r8", MAX_GEN, &r);
        CHECK(lorac_engine_submit(e, &q, NULL) == LORAC_STATUS_OK);
        CHECK(lorac_engine_unload_adapter(e, "r8") == LORAC_STATUS_OK);
        wait_done(&r);
        CHECK(r.n_tokens == n_ref[i] && !memcmp(r.tokens, ref[i], sizeof(int32_t) * (size_t)n_ref[i]));
        result_t again;
        result_init(&again);
        q = greedy(prompts[i], n_prompt[i], "r8", MAX_GEN, &again); /* loads it again */
        CHECK(lorac_engine_submit(e, &q, NULL) == LORAC_STATUS_OK);
        wait_done(&again);
        CHECK(again.n_tokens == n_ref[i] && !memcmp(again.tokens, ref[i], sizeof(int32_t) * (size_t)n_ref[i]));
    }

    /* 5. cancel: a long request ends with CANCELLED */
    {
        result_t r;
        result_init(&r);
        lorac_serve_request_t q = greedy(prompts[1], n_prompt[1], "r4", 100, &r);
        q.ignore_eos = true;
        uint64_t id = 0;
        CHECK(lorac_engine_submit(e, &q, &id) == LORAC_STATUS_OK && id > 0);
        lorac_engine_cancel(e, id);
        wait_done(&r);
        CHECK(r.finish == LORAC_FINISH_CANCELLED);
        lorac_engine_cancel(e, id); /* already done: no-op */
    }

    lorac_engine_metrics_t m;
    lorac_engine_get_metrics(e, &m);
    CHECK(m.requests_total == 2 * N_REQ + 3 + 2 + 5); /* 1 and 1b's, 1c's, 1d's, then 5 */
    CHECK(m.requests_rejected == 10);
    CHECK(m.requests_finished[LORAC_FINISH_CANCELLED] == 2); /* 1c's and one below */
    CHECK(m.prompt_tokens_cached_total >= 12 + 15); /* 1c's, and what the prompts' BOS and repeats gave */
    CHECK(m.running == 0 && m.waiting == 0);
    CHECK(m.steps_total > 0 && m.batch_tokens_total >= m.steps_total);
    uint64_t in_hist = 0;
    for (int b = 0; b < LORAC_SERVE_LATENCY_BUCKETS; b++) in_hist += m.latency_counts[b];
    CHECK(in_hist == m.requests_total);
    lorac_engine_stop(e);

    /* 6. a full queue and LRU eviction, on an engine with 1 slot, a queue of 2
     * and room for 2 adapters */
    ep.max_seqs = 1;
    ep.max_queue = 2;
    ep.max_loras = 2;
    CHECK(lorac_engine_start(model, &ep, &e) == LORAC_STATUS_OK);
    static result_t q_res[6];
    int accepted = 0, busy = 0, ok[6] = {0};
    for (int i = 0; i < 6; i++) {
        result_init(&q_res[i]);
        lorac_serve_request_t q = greedy(prompts[i], n_prompt[i], names[i % 2], 100, &q_res[i]);
        q.ignore_eos = true;
        lorac_status_t st = lorac_engine_submit(e, &q, NULL);
        ok[i] = st == LORAC_STATUS_OK;
        accepted += st == LORAC_STATUS_OK;
        busy += st == LORAC_STATUS_BUSY;
    }
    CHECK_MSG(accepted >= 3 && busy >= 1 && accepted + busy == 6, "accepted %d busy %d", accepted, busy);
    for (int i = 0; i < 6; i++)
        if (ok[i]) wait_done(&q_res[i]);
    /* r4 and r8 loaded; using r16 then r32 evicts the least recently used */
    for (int i = 2; i < 4; i++) {
        result_t r;
        result_init(&r);
        lorac_serve_request_t q = greedy(prompts[0], n_prompt[0], names[i], 2, &r);
        CHECK(lorac_engine_submit(e, &q, NULL) == LORAC_STATUS_OK);
        wait_done(&r);
    }
    lorac_engine_get_metrics(e, &m);
    CHECK(m.adapters_loaded == 2);
    lorac_adapter_info_t info[8];
    lorac_engine_list_adapters(e, info, 8);
    CHECK(info[0].loaded && info[1].loaded && !info[2].loaded && !info[3].loaded); /* r16 r32 r4 r8 */

    /* 7. stopping with requests in flight ends them with CANCELLED */
    result_t last;
    result_init(&last);
    lorac_serve_request_t q = greedy(prompts[0], n_prompt[0], NULL, 100, &last);
    q.ignore_eos = true;
    CHECK(lorac_engine_submit(e, &q, NULL) == LORAC_STATUS_OK);
    lorac_engine_stop(e);
    CHECK(last.done && (last.finish == LORAC_FINISH_CANCELLED || last.finish == LORAC_FINISH_LENGTH));

    for (int i = 0; i < N_ADAPTERS; i++) lorac_adapter_free(ads[i]);
    lorac_model_free(model);

    /* 8. end-of-sequence ids from generation_config.json and
     * tokenizer_config.json join config.json's (chat models end turns there) */
    {
        char path[2048];
        snprintf(path, sizeof path, "%s/generation_config.json", model_dir);
        FILE *f = fopen(path, "w");
        fputs("{\"eos_token_id\": [2, 7, 7, 100000]}", f);
        fclose(f);
        snprintf(path, sizeof path, "%s/tokenizer_config.json", model_dir);
        f = fopen(path, "w");
        fputs("{\"eos_token\": {\"content\": \"<0x0A>\"}}", f);
        fclose(f);
        CHECK(lorac_model_load(model_dir, &model) == LORAC_STATUS_OK);
        if (model) {
            int32_t nl = lorac_tokenizer_token_id(lorac_model_get_tokenizer(model), "<0x0A>");
            CHECK(nl > 0 && lorac_model_is_eos(model, nl));
            CHECK(lorac_model_is_eos(model, 2) && lorac_model_is_eos(model, 7) && !lorac_model_is_eos(model, 8));
            CHECK(lorac_model_get_config(model)->n_eos == 3); /* duplicates and out-of-vocabulary ids dropped */
            lorac_model_free(model);
        }
        snprintf(path, sizeof path, "%s/generation_config.json", model_dir);
        f = fopen(path, "w");
        fputs("{\"eos_token_id\": [2,", f);
        fclose(f);
        model = NULL;
        CHECK(lorac_model_load(model_dir, &model) == LORAC_STATUS_FORMAT && !model);
        CHECK(strstr(lorac_error_message(), "generation_config.json") != NULL);
    }
    printf("%d passed, %d failed\n", tl_passed, tl_failed);
    return tl_failed != 0;
}
