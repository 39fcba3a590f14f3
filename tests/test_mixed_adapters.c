/* Mixed-adapter batches: sequences with different adapters (different ranks
 * and targets, and one with none) decoded together in one batch must give
 * the logits of each sequence run alone with its adapter attached the plain
 * way (lorac_context_set_adapters), prompt and decode steps alike. */
#include <stdint.h>

#include "lorac/lora.h"
#include "lorac/model.h"
#include "testlib.h"
#include "tinymodel.h"

#define N_SEQ 5
#define PROMPT 7
#define STEPS 6

static double max_rel_diff(const float *a, const float *b, int64_t n) {
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs((double)b[i]));
    for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)a[i] - (double)b[i]));
    return scale > 0 ? worst / scale : worst;
}

static int argmax(const float *x, int32_t n) {
    int best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static lorac_adapter_t *random_adapter(const lorac_model_config_t *c, int32_t r, uint32_t targets, uint64_t seed) {
    lorac_lora_params_t p = lorac_lora_default_params();
    p.r = r;
    p.alpha = 2.0f * (float)r;
    p.targets = targets;
    p.seed = seed;
    lorac_adapter_t *a = NULL;
    if (lorac_adapter_init(c, &p, &a)) return NULL;
    /* B starts at zero; give it values so the adapter changes the output */
    unsigned long long s = seed * 7919 + 1;
    for (int32_t i = 0; i < lorac_adapter_n_modules(a); i++) {
        lorac_lora_module_t *m = lorac_adapter_module(a, i);
        for (int64_t k = 0; k < (int64_t)m->out * m->r; k++) m->B[k] = 0.5f * tiny_rand(&s);
    }
    return a;
}

int main(void) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/mixed_adapters_model", tl_tmpdir());
    tiny_model_t tm = {.D = 48, .I = 96, .L = 2, .H = 4, .KVH = 2, .HD = 12, .V = 97, .seed = 11};
    CHECK(tiny_model_write(dir, &tm) == 0);
    lorac_model_t *model = NULL;
    CHECK(lorac_model_load(dir, &model) == LORAC_STATUS_OK);
    if (!model) return 1;
    const lorac_model_config_t *c = lorac_model_get_config(model);
    int32_t V = c->vocab_size;

    uint32_t all = (1u << LORAC_LORA_COUNT) - 1;
    lorac_adapter_t *ad[N_SEQ] = {
        random_adapter(c, 4, all, 1),
        random_adapter(c, 16, (1u << LORAC_LORA_Q) | (1u << LORAC_LORA_V), 2),
        NULL, /* the base model */
        random_adapter(c, 8, (1u << LORAC_LORA_DOWN) | (1u << LORAC_LORA_O), 3),
        NULL, /* filled below: the same adapter as sequence 0, another scale */
    };
    ad[4] = ad[0];
    /* two of them with the transposed copy of B (the decode fast path), one without */
    CHECK(lorac_adapter_prepare_inference(ad[0]) == LORAC_STATUS_OK);
    CHECK(lorac_adapter_prepare_inference(ad[3]) == LORAC_STATUS_OK);
    float scale[N_SEQ] = {1.0f, 0.7f, 1.0f, 1.5f, 0.3f};
    for (int i = 0; i < N_SEQ; i++) CHECK(i == 2 || ad[i] != NULL);

    int32_t prompts[N_SEQ][PROMPT];
    unsigned long long s = 99;
    for (int i = 0; i < N_SEQ; i++)
        for (int j = 0; j < PROMPT; j++) prompts[i][j] = (int32_t)((tiny_rand(&s) + 0.5f) * (float)(V - 1));

    /* Reference: each sequence alone, its adapter attached for the whole context. */
    static float ref[N_SEQ][STEPS + 1][97];
    int32_t ref_tokens[N_SEQ][STEPS];
    for (int i = 0; i < N_SEQ; i++) {
        lorac_context_params_t cp = lorac_context_default_params();
        cp.n_ctx = 64;
        lorac_context_t *ctx = NULL;
        CHECK(lorac_context_init(model, cp, &ctx) == LORAC_STATUS_OK);
        const lorac_adapter_t *one[1] = {ad[i]};
        CHECK(lorac_context_set_adapters(ctx, one, &scale[i], ad[i] ? 1 : 0) == LORAC_STATUS_OK);
        int32_t pos[PROMPT], seq[PROMPT] = {0};
        for (int j = 0; j < PROMPT; j++) pos[j] = j;
        lorac_batch_t b = {.n_tokens = PROMPT, .tokens = prompts[i], .pos = pos, .seq_id = seq};
        CHECK(lorac_context_decode(ctx, &b, ref[i][0]) == LORAC_STATUS_OK);
        for (int k = 0; k < STEPS; k++) {
            int32_t tok = argmax(ref[i][k], V), p = PROMPT + k, sq = 0;
            ref_tokens[i][k] = tok;
            lorac_batch_t d = {.n_tokens = 1, .tokens = &tok, .pos = &p, .seq_id = &sq};
            CHECK(lorac_context_decode(ctx, &d, ref[i][k + 1]) == LORAC_STATUS_OK);
        }
        lorac_context_free(ctx);
    }

    /* Mixed: all prompts in one batch (in an interleaved order, so equal
     * adapters are not neighbours), then one token per sequence per step. */
    lorac_context_params_t cp = lorac_context_default_params();
    cp.n_ctx = 64;
    cp.n_seq = N_SEQ;
    lorac_context_t *ctx = NULL;
    CHECK(lorac_context_init(model, cp, &ctx) == LORAC_STATUS_OK);
    for (int i = 0; i < N_SEQ; i++) CHECK(lorac_context_set_seq_adapter(ctx, i, ad[i], scale[i]) == LORAC_STATUS_OK);
    CHECK(lorac_context_set_seq_adapter(ctx, N_SEQ, ad[0], 1.0f) == LORAC_STATUS_INVALID_ARG);
    CHECK(lorac_context_set_seq_adapter(ctx, 0, ad[0], NAN) == LORAC_STATUS_INVALID_ARG);

    int32_t tokens[N_SEQ * PROMPT], pos[N_SEQ * PROMPT], seq[N_SEQ * PROMPT];
    int8_t want[N_SEQ * PROMPT];
    int n = 0;
    for (int j = 0; j < PROMPT; j++)
        for (int i = 0; i < N_SEQ; i++) {
            tokens[n] = prompts[i][j];
            pos[n] = j;
            seq[n] = i;
            want[n] = j == PROMPT - 1;
            n++;
        }
    static float got[N_SEQ][97];
    lorac_batch_t b = {.n_tokens = n, .tokens = tokens, .pos = pos, .seq_id = seq, .logits = want};
    CHECK(lorac_context_decode(ctx, &b, &got[0][0]) == LORAC_STATUS_OK);
    double worst = 0;
    for (int i = 0; i < N_SEQ; i++) worst = fmax(worst, max_rel_diff(got[i], ref[i][0], V));
    int tokens_equal = 1;
    for (int k = 0; k < STEPS; k++) {
        int32_t dt[N_SEQ], dp[N_SEQ], ds[N_SEQ];
        int8_t dw[N_SEQ];
        for (int i = 0; i < N_SEQ; i++) {
            dt[i] = argmax(got[i], V);
            tokens_equal &= dt[i] == ref_tokens[i][k];
            dt[i] = ref_tokens[i][k]; /* follow the reference even if a tie flipped */
            dp[i] = PROMPT + k;
            ds[i] = i;
            dw[i] = 1;
        }
        lorac_batch_t d = {.n_tokens = N_SEQ, .tokens = dt, .pos = dp, .seq_id = ds, .logits = dw};
        CHECK(lorac_context_decode(ctx, &d, &got[0][0]) == LORAC_STATUS_OK);
        for (int i = 0; i < N_SEQ; i++) worst = fmax(worst, max_rel_diff(got[i], ref[i][k + 1], V));
    }
    printf("mixed-adapter batch vs each sequence alone: max relative logit difference %.3g\n", worst);
    CHECK_MSG(worst < 1e-5, "%.3g", worst);
    CHECK(tokens_equal);

    /* Detaching: a sequence without an adapter gives the base model's logits. */
    CHECK(lorac_context_set_seq_adapter(ctx, 1, NULL, 1.0f) == LORAC_STATUS_OK);
    lorac_context_clear_seq(ctx, 1);
    int32_t p0[PROMPT], s1[PROMPT];
    for (int j = 0; j < PROMPT; j++) { p0[j] = j; s1[j] = 1; }
    lorac_batch_t b1 = {.n_tokens = PROMPT, .tokens = prompts[2], .pos = p0, .seq_id = s1};
    float base[97];
    CHECK(lorac_context_decode(ctx, &b1, base) == LORAC_STATUS_OK);
    CHECK_MSG(max_rel_diff(base, ref[2][0], V) < 1e-6, "%.3g", max_rel_diff(base, ref[2][0], V));

    lorac_context_free(ctx);
    for (int i = 0; i < 4; i++) lorac_adapter_free(ad[i]);
    lorac_model_free(model);
    printf("%d passed, %d failed\n", tl_passed, tl_failed);
    return tl_failed != 0;
}
