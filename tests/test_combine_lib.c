/* lorac_adapter_combine and lorac_adapter_combine_error at the library
 * level: exactness of cat and svd (by the error function, which forms no
 * matrix), the cross terms of linear, zero padding, the single-adapter
 * rule, and refused inputs. tests/test_combine.py checks the same against a
 * numpy version of PEFT through the CLI. */
#include <math.h>
#include <string.h>

#include "lorac/extract.h"
#include "testlib.h"

static lorac_model_config_t config(int32_t hidden) {
    lorac_model_config_t c;
    memset(&c, 0, sizeof c);
    c.n_layers = 2;
    c.hidden_size = hidden;
    c.intermediate_size = 24;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = hidden / 4;
    c.vocab_size = 50;
    return c;
}

/* An adapter with random A and B (B is zero after init). */
static lorac_adapter_t *random_adapter(const lorac_model_config_t *c, int32_t r, float alpha, uint32_t targets,
                                       uint64_t seed) {
    lorac_lora_params_t p = lorac_lora_default_params();
    p.r = r;
    p.alpha = alpha;
    p.targets = targets;
    p.seed = seed;
    lorac_adapter_t *a;
    if (lorac_adapter_init(c, &p, &a)) return NULL;
    lorac_rng_t rng;
    lorac_rng_seed(&rng, seed + 1);
    for (int32_t i = 0; i < lorac_adapter_n_modules(a); i++) {
        lorac_lora_module_t *m = lorac_adapter_module(a, i);
        for (int64_t k = 0; k < (int64_t)m->out * m->r; k++) m->B[k] = lorac_rng_normal(&rng);
    }
    return a;
}

/* The largest relative error over every module of the combination. */
static double worst_error(const lorac_adapter_t *res, const lorac_adapter_t *const *ads, const float *w, int32_t n) {
    double worst = 0;
    for (int32_t i = 0; i < lorac_adapter_n_modules(res); i++) {
        const lorac_lora_module_t *m = lorac_adapter_module((lorac_adapter_t *)res, i);
        double e = -1;
        CHECK(lorac_adapter_combine_error(res, ads, w, n, m->layer, m->target, &e) == LORAC_STATUS_OK);
        worst = fmax(worst, e);
    }
    return worst;
}

int main(void) {
    lorac_model_config_t c = config(16);
    uint32_t qv = (1u << LORAC_LORA_Q) | (1u << LORAC_LORA_V), qd = (1u << LORAC_LORA_Q) | (1u << LORAC_LORA_DOWN);
    lorac_adapter_t *a = random_adapter(&c, 3, 6, qv, 1), *b = random_adapter(&c, 2, 8, qd, 2),
                    *a2 = random_adapter(&c, 3, 3, qd, 3);
    CHECK(a && b && a2);
    const lorac_adapter_t *ab[2] = {a, b}, *aa2[2] = {a, a2};
    float w[2] = {0.7f, -0.4f};

    /* cat: exact, r = 3 + 2, union of modules, scale 1 */
    lorac_adapter_t *res;
    CHECK(lorac_adapter_combine(ab, w, 2, LORAC_COMBINE_CAT, 0, &res) == LORAC_STATUS_OK);
    CHECK(lorac_adapter_params(res)->r == 5 && lorac_adapter_params(res)->alpha == 5.0f);
    CHECK(lorac_adapter_n_modules(res) == 2 * 3);
    double e = worst_error(res, ab, w, 2);
    CHECK_MSG(e <= 1e-6, "cat error %.3g", e);
    /* down_proj only in b: its rows first, zero rows after */
    const lorac_lora_module_t *down = lorac_adapter_find(res, 1, LORAC_LORA_DOWN);
    CHECK(down && down->r == 5 && down->scale == 1.0f);
    int zero = 1;
    for (int64_t k = 2 * (int64_t)down->in; k < 5 * (int64_t)down->in; k++) zero &= down->A[k] == 0.0f;
    CHECK(zero);
    lorac_adapter_free(res);

    /* svd at the full rank of the sum is exact; below it, not */
    CHECK(lorac_adapter_combine(ab, w, 2, LORAC_COMBINE_SVD, 5, &res) == LORAC_STATUS_OK);
    e = worst_error(res, ab, w, 2);
    CHECK_MSG(e <= 1e-6, "svd at r=5 error %.3g", e);
    lorac_adapter_free(res);
    CHECK(lorac_adapter_combine(ab, w, 2, LORAC_COMBINE_SVD, 2, &res) == LORAC_STATUS_OK);
    e = worst_error(res, ab, w, 2);
    CHECK_MSG(e > 1e-3 && e < 1, "svd at r=2 error %.3g", e);
    lorac_adapter_free(res);
    /* r <= 0: PEFT's default, the largest adapter rank */
    CHECK(lorac_adapter_combine(ab, w, 2, LORAC_COMBINE_SVD, 0, &res) == LORAC_STATUS_OK);
    CHECK(lorac_adapter_params(res)->r == 3);
    lorac_adapter_free(res);
    /* more rank than the matrices have (k_proj is 8 x 16 here): zero triplets */
    lorac_adapter_t *k = random_adapter(&c, 6, 6, 1u << LORAC_LORA_K, 4), *k2 = random_adapter(&c, 6, 6, 1u << LORAC_LORA_K, 5);
    const lorac_adapter_t *kk[2] = {k, k2};
    CHECK(lorac_adapter_combine(kk, w, 2, LORAC_COMBINE_SVD, 12, &res) == LORAC_STATUS_OK);
    const lorac_lora_module_t *km = lorac_adapter_find(res, 0, LORAC_LORA_K);
    CHECK(km && km->r == 12 && km->out == 8);
    zero = 1;
    for (int32_t o = 0; o < km->out; o++)
        for (int32_t t = 8; t < 12; t++) zero &= km->B[(int64_t)o * 12 + t] == 0.0f;
    CHECK(zero);
    e = worst_error(res, kk, w, 2);
    CHECK_MSG(e <= 1e-6, "svd beyond min(in, out) error %.3g", e);
    lorac_adapter_free(res);

    /* linear: equal ranks, cross terms remain */
    CHECK(lorac_adapter_combine(aa2, w, 2, LORAC_COMBINE_LINEAR, 0, &res) == LORAC_STATUS_OK);
    CHECK(lorac_adapter_params(res)->r == 3 && !lorac_adapter_params(res)->rslora);
    e = worst_error(res, aa2, w, 2);
    CHECK_MSG(e > 1e-2, "linear with two adapters on q_proj has cross terms: %.3g", e);
    lorac_adapter_free(res);
    CHECK(lorac_adapter_combine(ab, w, 2, LORAC_COMBINE_LINEAR, 0, &res) == LORAC_STATUS_INVALID_ARG);
    CHECK(strstr(lorac_error_message(), "same r") != NULL);

    /* one adapter is linear whatever the mode, and then exact */
    CHECK(lorac_adapter_combine(ab, w, 1, LORAC_COMBINE_SVD, 1, &res) == LORAC_STATUS_OK);
    CHECK(lorac_adapter_params(res)->r == 3);
    e = worst_error(res, ab, w, 1);
    CHECK_MSG(e <= 1e-6, "one adapter error %.3g", e);
    lorac_adapter_free(res);

    /* refused */
    lorac_model_config_t c2 = config(32);
    lorac_adapter_t *other = random_adapter(&c2, 3, 6, qv, 6);
    const lorac_adapter_t *ao[2] = {a, other};
    CHECK(lorac_adapter_combine(ao, w, 2, LORAC_COMBINE_CAT, 0, &res) == LORAC_STATUS_INVALID_ARG);
    CHECK(strstr(lorac_error_message(), "hidden_size 16") != NULL);
    CHECK(lorac_adapter_combine(ab, w, 0, LORAC_COMBINE_CAT, 0, &res) == LORAC_STATUS_INVALID_ARG);
    float bad[2] = {NAN, 1};
    CHECK(lorac_adapter_combine(ab, bad, 2, LORAC_COMBINE_CAT, 0, &res) == LORAC_STATUS_INVALID_ARG);
    CHECK(lorac_adapter_combine(ab, w, 2, (lorac_combine_t)7, 0, &res) == LORAC_STATUS_INVALID_ARG);
    lorac_combine_t mode;
    CHECK(lorac_combine_parse("svd", &mode) == LORAC_STATUS_OK && mode == LORAC_COMBINE_SVD);
    CHECK(lorac_combine_parse("ties", &mode) == LORAC_STATUS_INVALID_ARG);
    CHECK(strcmp(lorac_combine_name(LORAC_COMBINE_LINEAR), "linear") == 0);

    lorac_adapter_free(a); lorac_adapter_free(b); lorac_adapter_free(a2); lorac_adapter_free(k); lorac_adapter_free(k2);
    lorac_adapter_free(other);
    return tl_finish("test_combine_lib");
}
