/* Token sampling: greedy, temperature, top-k, top-p (nucleus). */
#include <math.h>
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
};

lorac_sampler_params_t lorac_sampler_default_params(void) {
    lorac_sampler_params_t p = {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 42};
    return p;
}

lorac_status_t lorac_sampler_params_validate(const lorac_sampler_params_t *p) {
    if (!isfinite(p->temperature) || p->temperature < 0.0f)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "temperature %g must be a finite number >= 0", (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "top_p %g must be in (0, 1]", (double)p->top_p);
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_sampler_init(const lorac_sampler_params_t *params, int32_t vocab_size, lorac_sampler_t **out) {
    *out = NULL;
    lorac_status_t st = lorac_sampler_params_validate(params);
    if (st) return st;
    if (vocab_size < 1) return lorac_error(LORAC_STATUS_INVALID_ARG, "sampler: vocab_size must be positive");
    lorac_sampler_t *s = calloc(1, sizeof *s);
    if (!s) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    s->cand = malloc(sizeof(candidate_t) * (size_t)vocab_size);
    if (!s->cand) { free(s); return lorac_error(LORAC_STATUS_NOMEM, "out of memory"); }
    s->params = *params;
    s->vocab_size = vocab_size;
    lorac_rng_seed(&s->rng, params->seed);
    *out = s;
    return LORAC_STATUS_OK;
}

void lorac_sampler_free(lorac_sampler_t *s) {
    if (!s) return;
    free(s->cand);
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

int32_t lorac_sampler_sample(lorac_sampler_t *s, float *logits) {
    int32_t V = s->vocab_size;
    const lorac_sampler_params_t *p = &s->params;
    if (p->temperature == 0.0f || p->top_k == 1) return (int32_t)lorac_argmax(logits, V);

    /* softmax with temperature, in place (the vectorised kernel: libm's
     * expf over the vocabulary took a fifth of a 15M model's token) */
    float inv_temp = 1.0f / p->temperature;
    for (int32_t i = 0; i < V; i++) logits[i] *= inv_temp;
    lorac_softmax_forward(logits, 1, V);
    for (int32_t i = 0; i < V; i++) s->cand[i].prob = logits[i], s->cand[i].id = i;
    int32_t n = V;

    /* Nucleus shortcut (as llama2.c): with top-p alone, tokens below
     * (1 - top_p) / (V - 1) can never be in the nucleus; drop them before
     * sorting so the sort stays short. */
    if (p->top_k <= 0 && p->top_p < 1.0f && V > 1) {
        float cutoff = (1.0f - p->top_p) / (float)(V - 1);
        int32_t k = 0;
        for (int32_t i = 0; i < V; i++) if (s->cand[i].prob >= cutoff) s->cand[k++] = s->cand[i];
        n = k > 0 ? k : V;
    }
    if (p->top_k > 0 && p->top_k < n) {
        select_top_k(s->cand, n, p->top_k);
        n = p->top_k;
    } else if (p->top_k > 0 || p->top_p < 1.0f) {
        qsort(s->cand, (size_t)n, sizeof(candidate_t), cmp_candidate);
    }

    /* top-p: keep the smallest prefix whose mass reaches top_p */
    double mass = 0.0;
    for (int32_t i = 0; i < n; i++) mass += s->cand[i].prob;
    if (p->top_p < 1.0f) {
        double acc = 0.0, target = p->top_p * mass;
        for (int32_t i = 0; i < n; i++) {
            acc += s->cand[i].prob;
            if (acc >= target) { n = i + 1; mass = acc; break; }
        }
    }
    double r = (double)lorac_rng_float(&s->rng) * mass, acc = 0.0;
    for (int32_t i = 0; i < n; i++) {
        acc += s->cand[i].prob;
        if (r < acc) return s->cand[i].id;
    }
    return s->cand[n - 1].id; /* rounding left r at the very top */
}
