/* Token sampling: logit bias, penalties, greedy, temperature, min-p, top-k, top-p (nucleus). */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "lorac/infer.h"
#include "lorac/kernels.h"

typedef struct {
    float prob;
    int32_t id;
} candidate_t;

struct lorac_sampler {
    lorac_sampler_params_t params;
    int32_t vocab_size;
    lorac_rng_t rng;
    candidate_t *cand;   /* (vocab_size) */
    /* the penalties' memory, allocated only when a penalty is on */
    bool penalised;
    uint32_t *count;     /* (vocab_size) times each id was output */
    uint8_t *flags;      /* (vocab_size) IN_PROMPT | LISTED */
    int32_t *touched;    /* ids with a flag, each once: the penalties visit only these */
    int32_t n_touched;
    lorac_logit_bias_t *bias; /* (params.n_logit_bias) own copy */
};

enum { IN_PROMPT = 1, LISTED = 2 };

lorac_sampler_params_t lorac_sampler_default_params(void) {
    lorac_sampler_params_t p = {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .repetition_penalty = 1.0f,
                                .seed = 42};
    return p;
}

lorac_status_t lorac_sampler_params_validate(const lorac_sampler_params_t *p) {
    if (!isfinite(p->temperature) || p->temperature < 0.0f)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "temperature %g must be a finite number >= 0", (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "top_p %g must be in (0, 1]", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "min_p %g must be in [0, 1]", (double)p->min_p);
    if (!isfinite(p->repetition_penalty) || !(p->repetition_penalty > 0.0f))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "repetition_penalty %g must be a finite number > 0 (1 = off)",
                           (double)p->repetition_penalty);
    if (!isfinite(p->presence_penalty) || !isfinite(p->frequency_penalty))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "presence_penalty and frequency_penalty must be finite numbers");
    if (p->n_logit_bias < 0 || p->n_logit_bias > LORAC_SAMPLER_MAX_LOGIT_BIAS || (p->n_logit_bias && !p->logit_bias))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "at most %d logit biases", LORAC_SAMPLER_MAX_LOGIT_BIAS);
    for (int32_t i = 0; i < p->n_logit_bias; i++)
        if (!isfinite(p->logit_bias[i].bias))
            return lorac_error(LORAC_STATUS_INVALID_ARG, "the logit bias of token %d must be a finite number",
                               p->logit_bias[i].token);
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_sampler_init(const lorac_sampler_params_t *params, int32_t vocab_size, lorac_sampler_t **out) {
    *out = NULL;
    lorac_status_t st = lorac_sampler_params_validate(params);
    if (st) return st;
    if (vocab_size < 1) return lorac_error(LORAC_STATUS_INVALID_ARG, "sampler: vocab_size must be positive");
    for (int32_t i = 0; i < params->n_logit_bias; i++)
        if (params->logit_bias[i].token < 0 || params->logit_bias[i].token >= vocab_size)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "logit bias for token %d, outside the vocabulary [0, %d)",
                               params->logit_bias[i].token, vocab_size);
    lorac_sampler_t *s = calloc(1, sizeof *s);
    if (!s) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    s->params = *params;
    s->vocab_size = vocab_size;
    s->penalised = params->repetition_penalty != 1.0f || params->presence_penalty != 0.0f || params->frequency_penalty != 0.0f;
    s->cand = malloc(sizeof(candidate_t) * (size_t)vocab_size);
    if (params->n_logit_bias) {
        s->bias = malloc(sizeof *s->bias * (size_t)params->n_logit_bias);
        if (s->bias) memcpy(s->bias, params->logit_bias, sizeof *s->bias * (size_t)params->n_logit_bias);
        s->params.logit_bias = s->bias; /* never the caller's */
    }
    if (s->penalised) {
        s->count = calloc((size_t)vocab_size, sizeof *s->count);
        s->flags = calloc((size_t)vocab_size, 1);
        s->touched = malloc(sizeof(int32_t) * (size_t)vocab_size);
    }
    if (!s->cand || (s->penalised && (!s->count || !s->flags || !s->touched)) || (params->n_logit_bias && !s->bias)) {
        lorac_sampler_free(s);
        return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    }
    lorac_rng_seed(&s->rng, params->seed);
    *out = s;
    return LORAC_STATUS_OK;
}

void lorac_sampler_free(lorac_sampler_t *s) {
    if (!s) return;
    free(s->cand);
    free(s->count);
    free(s->flags);
    free(s->touched);
    free(s->bias);
    free(s);
}

/* Descending by probability, then ascending id: a total order, so the result
 * does not depend on the sort implementation. */
static int ranks_before(const candidate_t *x, const candidate_t *y) {
    return x->prob != y->prob ? x->prob > y->prob : x->id < y->id;
}

static int cmp_candidate(const void *a, const void *b) {
    const candidate_t *x = a, *y = b;
    return ranks_before(x, y) ? -1 : ranks_before(y, x) ? 1 : 0;
}

/* Restores the heap below node i of h (k nodes): every node ranks after
 * its children, so the root is the worst of the k kept. */
static void sift_down(candidate_t *h, int32_t k, int32_t i) {
    for (;;) {
        int32_t worst = i, l = 2 * i + 1, r = l + 1;
        if (l < k && ranks_before(&h[worst], &h[l])) worst = l;
        if (r < k && ranks_before(&h[worst], &h[r])) worst = r;
        if (worst == i) return;
        candidate_t t = h[i];
        h[i] = h[worst], h[worst] = t;
        i = worst;
    }
}

/* The k best of c[0..n) into c[0..k), in rank order: a heap of the best k
 * so far, O(n log k). Sorting all n (32000 at the Llama-2 vocabulary) took
 * 8 ms a token, five times the 15M model's forward pass. The order is
 * total, so the k are the ones a full sort puts first. */
static void select_top_k(candidate_t *c, int32_t n, int32_t k) {
    for (int32_t i = k / 2 - 1; i >= 0; i--) sift_down(c, k, i);
    for (int32_t i = k; i < n; i++)
        if (ranks_before(&c[i], &c[0])) {
            c[0] = c[i];
            sift_down(c, k, 0);
        }
    qsort(c, (size_t)k, sizeof(candidate_t), cmp_candidate);
}

static void note(lorac_sampler_t *s, int32_t id, uint8_t flag) {
    if (!s->penalised || id < 0 || id >= s->vocab_size) return;
    if (!(s->flags[id] & LISTED)) s->touched[s->n_touched++] = id;
    s->flags[id] |= (uint8_t)(LISTED | flag);
}

void lorac_sampler_add_prompt(lorac_sampler_t *s, const int32_t *ids, int32_t n) {
    for (int32_t i = 0; i < n; i++) note(s, ids[i], IN_PROMPT);
}

void lorac_sampler_accept(lorac_sampler_t *s, int32_t id) {
    note(s, id, 0);
    if (s->penalised && id >= 0 && id < s->vocab_size) s->count[id]++;
}

void lorac_sampler_reset(lorac_sampler_t *s) {
    for (int32_t i = 0; i < s->n_touched; i++) s->count[s->touched[i]] = 0, s->flags[s->touched[i]] = 0;
    s->n_touched = 0;
}

/* vLLM's apply_penalties on the ids seen so far (every other logit is
 * unchanged): repetition, then frequency, then presence. */
static void apply_penalties(const lorac_sampler_t *s, float *logits) {
    float rep = s->params.repetition_penalty, freq = s->params.frequency_penalty, pres = s->params.presence_penalty;
    for (int32_t i = 0; i < s->n_touched; i++) {
        int32_t id = s->touched[i];
        float l = logits[id];
        if (rep != 1.0f) l = l > 0.0f ? l / rep : l * rep;
        if (s->count[id]) {
            l -= freq * (float)s->count[id];
            l -= pres;
        }
        logits[id] = l;
    }
}

static bool is_greedy(const lorac_sampler_params_t *p) { return p->temperature == 0.0f || p->top_k == 1; }

/* Penalties, temperature, softmax, min-p, top-k, top-p: the candidates
 * left in s->cand[0..n) (in rank order when `sorted` or when top-k or
 * top-p cut them) and their total mass. Not for greedy. */
static int32_t candidates(lorac_sampler_t *s, float *logits, bool sorted, double *mass_out) {
    int32_t V = s->vocab_size;
    const lorac_sampler_params_t *p = &s->params;

    /* softmax with temperature, in place (the vectorised kernel: libm's
     * expf over the vocabulary took a fifth of a 15M model's token) */
    float inv_temp = 1.0f / p->temperature;
    for (int32_t i = 0; i < V; i++) logits[i] *= inv_temp;
    lorac_softmax_forward(logits, 1, V);
    int32_t n = 0;
    if (p->min_p > 0.0f) {
        /* vLLM's min-p: below min_p times the largest probability is out */
        float top = 0.0f;
        for (int32_t i = 0; i < V; i++) top = logits[i] > top ? logits[i] : top;
        float cutoff = p->min_p * top;
        for (int32_t i = 0; i < V; i++)
            if (!(logits[i] < cutoff)) s->cand[n].prob = logits[i], s->cand[n++].id = i;
    } else {
        for (int32_t i = 0; i < V; i++) s->cand[i].prob = logits[i], s->cand[i].id = i;
        n = V;
    }

    /* The mass top-p takes its share of: what min-p left, or the top k. */
    double mass = 0.0;
    for (int32_t i = 0; i < n; i++) mass += s->cand[i].prob;

    /* Nucleus shortcut (as llama2.c): with top-p alone, tokens below
     * (1 - top_p) / (V - 1) can never be in the nucleus; drop them before
     * sorting so the sort stays short (the mass above still counts them). */
    if (p->top_k <= 0 && p->top_p < 1.0f && V > 1) {
        float cutoff = (float)((1.0 - p->top_p) * mass / (double)(V - 1));
        int32_t k = 0;
        for (int32_t i = 0; i < n; i++) if (s->cand[i].prob >= cutoff) s->cand[k++] = s->cand[i];
        n = k > 0 ? k : n;
    }
    if (p->top_k > 0 && p->top_k < n) {
        select_top_k(s->cand, n, p->top_k);
        n = p->top_k;
        mass = 0.0;
        for (int32_t i = 0; i < n; i++) mass += s->cand[i].prob;
    } else if (sorted || p->top_k > 0 || p->top_p < 1.0f) {
        qsort(s->cand, (size_t)n, sizeof(candidate_t), cmp_candidate);
    }

    /* top-p: keep the smallest prefix whose mass reaches top_p of the mass
     * (the first token at least) */
    if (p->top_p < 1.0f) {
        double acc = 0.0, target = p->top_p * mass;
        int32_t k = 0;
        do acc += s->cand[k++].prob;
        while (k < n && acc < target);
        n = k;
        mass = acc;
    }
    *mass_out = mass;
    return n;
}

/* The logit biases, then the penalties. */
static void adjust(const lorac_sampler_t *s, float *logits) {
    for (int32_t i = 0; i < s->params.n_logit_bias; i++) logits[s->bias[i].token] += s->bias[i].bias;
    if (s->penalised) apply_penalties(s, logits);
}

int32_t lorac_sampler_sample(lorac_sampler_t *s, float *logits) {
    adjust(s, logits);
    int32_t id;
    if (is_greedy(&s->params)) {
        id = (int32_t)lorac_argmax(logits, s->vocab_size);
    } else {
        double mass;
        int32_t n = candidates(s, logits, false, &mass);
        double r = (double)lorac_rng_float(&s->rng) * mass, acc = 0.0;
        id = s->cand[n - 1].id; /* if rounding left r at the very top */
        for (int32_t i = 0; i < n; i++) {
            acc += s->cand[i].prob;
            if (r < acc) { id = s->cand[i].id; break; }
        }
    }
    lorac_sampler_accept(s, id);
    return id;
}

int32_t lorac_sampler_distribution(lorac_sampler_t *s, float *logits, int32_t *ids, float *probs) {
    adjust(s, logits);
    if (is_greedy(&s->params)) {
        ids[0] = (int32_t)lorac_argmax(logits, s->vocab_size);
        probs[0] = 1.0f;
        return 1;
    }
    double mass;
    int32_t n = candidates(s, logits, true, &mass);
    for (int32_t i = 0; i < n; i++) ids[i] = s->cand[i].id, probs[i] = (float)(s->cand[i].prob / mass);
    return n;
}
