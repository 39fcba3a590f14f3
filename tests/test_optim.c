/* AdamW, clipping and schedules against PyTorch / HuggingFace golden numbers
 * (tests/data/optim/adamw_golden.json, made by
 * tests/reference/gen_adamw_golden.py with torch.optim.AdamW), against a
 * double-precision model of torch's formula, and the skipped-step contract:
 * a NaN gradient leaves weights and moments bit for bit unchanged. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lorac/optim.h"
#include "testlib.h"

/* ---- golden file ----------------------------------------------------------- */

static cJSON *load_golden(void) {
    char *text = tl_read_source("tests/data/optim/adamw_golden.json", NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    free(text);
    return j;
}

/* Copies a JSON array of numbers into floats (exact: they are f32 values). */
static void read_floats(const cJSON *arr, float *out, int64_t n) {
    int64_t i = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, arr) if (i < n) out[i++] = (float)x->valuedouble;
    CHECK(i == n && cJSON_GetArraySize(arr) == n);
}

static double num(const cJSON *o, const char *key) { return cJSON_GetObjectItemCaseSensitive(o, key)->valuedouble; }
static const cJSON *get(const cJSON *o, const char *key) { return cJSON_GetObjectItemCaseSensitive(o, key); }

static int64_t ulp_diff(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    if (ia < 0) ia = INT32_MIN - ia;
    if (ib < 0) ib = INT32_MIN - ib;
    return llabs((long long)ia - (long long)ib);
}

typedef struct {
    double max_rel;
    int64_t max_ulp, n, exact;
} cmp_t;

static void compare(cmp_t *c, const float *got, const float *want, int64_t n) {
    for (int64_t k = 0; k < n; k++) {
        double rel = fabs((double)got[k] - (double)want[k]) / fmax(fabs((double)want[k]), 1e-30);
        if (got[k] == 0.0f && want[k] == 0.0f) rel = 0.0;
        if (rel > c->max_rel) c->max_rel = rel;
        int64_t u = ulp_diff(got[k], want[k]);
        if (u > c->max_ulp) c->max_ulp = u;
        c->exact += got[k] == want[k];
        c->n++;
    }
}

/* ---- a double-precision model of torch's AdamW ----------------------------- */

typedef struct {
    double *p, *m, *v;
    int64_t n;
} ref_param_t;

static void ref_step(ref_param_t *rp, int np, int64_t t, double lr, double b1, double b2, double eps, double wd,
                     const float *const *grads) {
    double bc1 = 1.0 - pow(b1, (double)t), bc2 = 1.0 - pow(b2, (double)t);
    for (int i = 0; i < np; i++)
        for (int64_t k = 0; k < rp[i].n; k++) {
            double g = grads[i][k];
            rp[i].p[k] *= 1.0 - lr * wd;
            rp[i].m[k] = b1 * rp[i].m[k] + (1.0 - b1) * g;
            rp[i].v[k] = b2 * rp[i].v[k] + (1.0 - b2) * g * g;
            rp[i].p[k] -= lr / bc1 * rp[i].m[k] / (sqrt(rp[i].v[k]) / sqrt(bc2) + eps);
        }
}

static void test_adamw_golden(const cJSON *golden) {
    const cJSON *c;
    cJSON_ArrayForEach(c, get(golden, "adamw")) {
        const char *name = get(c, "name")->valuestring;
        int np = cJSON_GetArraySize(get(c, "sizes"));
        lorac_optim_param_t params[4];
        ref_param_t ref[4];
        float *want = NULL;
        char names[4][16];
        for (int i = 0; i < np; i++) {
            int64_t n = (int64_t)cJSON_GetArrayItem(get(c, "sizes"), i)->valuedouble;
            snprintf(names[i], sizeof names[i], "p%d", i);
            params[i] = (lorac_optim_param_t){.name = names[i], .data = malloc(4 * (size_t)n), .grad = malloc(4 * (size_t)n), .n = n};
            read_floats(cJSON_GetArrayItem(get(c, "init"), i), params[i].data, n);
            ref[i] = (ref_param_t){.p = calloc((size_t)n, 8), .m = calloc((size_t)n, 8), .v = calloc((size_t)n, 8), .n = n};
            for (int64_t k = 0; k < n; k++) ref[i].p[k] = params[i].data[k];
        }
        lorac_adamw_params_t hp = {.beta1 = num(c, "beta1"), .beta2 = num(c, "beta2"), .eps = num(c, "eps"),
                                   .weight_decay = num(c, "weight_decay")};
        lorac_adamw_t *opt;
        CHECK(lorac_adamw_init(params, np, hp, &opt) == LORAC_STATUS_OK);
        cmp_t cmp = {0};
        double max_ref_err = 0.0;
        int64_t t = 0;
        const cJSON *st;
        cJSON_ArrayForEach(st, get(c, "steps")) {
            const float *gptr[4];
            for (int i = 0; i < np; i++) {
                read_floats(cJSON_GetArrayItem(get(st, "grads"), i), params[i].grad, params[i].n);
                gptr[i] = params[i].grad;
            }
            double lr = num(st, "lr");
            lorac_adamw_step(opt, lr, 1.0f);
            ref_step(ref, np, ++t, lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, gptr);
            for (int i = 0; i < np; i++) {
                int64_t n = params[i].n;
                want = realloc(want, 4 * (size_t)n);
                read_floats(cJSON_GetArrayItem(get(st, "params"), i), want, n);
                compare(&cmp, params[i].data, want, n);
                read_floats(cJSON_GetArrayItem(get(st, "exp_avg"), i), want, n);
                compare(&cmp, lorac_adamw_exp_avg(opt, i), want, n);
                read_floats(cJSON_GetArrayItem(get(st, "exp_avg_sq"), i), want, n);
                compare(&cmp, lorac_adamw_exp_avg_sq(opt, i), want, n);
                /* the f32 path stays within f32 rounding of exact arithmetic;
                 * the scale is the size of one update (lr), not the value */
                for (int64_t k = 0; k < n; k++) {
                    double e = fabs(params[i].data[k] - ref[i].p[k]) / (fabs(ref[i].p[k]) + lr);
                    if (e > max_ref_err) max_ref_err = e;
                }
            }
        }
        CHECK(lorac_adamw_steps(opt) == t);
        printf("adamw %-20s vs torch: %lld/%lld values bit-identical, max %lld ulp, max rel %.2e; vs double model: %.2e\n",
               name, (long long)cmp.exact, (long long)cmp.n, (long long)cmp.max_ulp, cmp.max_rel, max_ref_err);
        CHECK_MSG(cmp.max_rel <= 1e-5, "%s: max relative difference to torch %.3g", name, cmp.max_rel);
        CHECK_MSG(max_ref_err <= 1e-5, "%s: max difference to the double model %.3g", name, max_ref_err);
        lorac_adamw_free(opt);
        for (int i = 0; i < np; i++) {
            free(params[i].data); free(params[i].grad);
            free(ref[i].p); free(ref[i].m); free(ref[i].v);
        }
        free(want);
    }
}

static void test_clip_golden(const cJSON *golden) {
    const cJSON *c;
    cJSON_ArrayForEach(c, get(golden, "clip")) {
        int np = cJSON_GetArraySize(get(c, "grads"));
        lorac_optim_param_t params[4];
        char names[4][16];
        for (int i = 0; i < np; i++) {
            int64_t n = cJSON_GetArraySize(cJSON_GetArrayItem(get(c, "grads"), i));
            snprintf(names[i], sizeof names[i], "g%d", i);
            params[i] = (lorac_optim_param_t){.name = names[i], .data = calloc((size_t)n, 4), .grad = malloc(4 * (size_t)n), .n = n};
            read_floats(cJSON_GetArrayItem(get(c, "grads"), i), params[i].grad, n);
        }
        double norm = lorac_optim_grad_norm(params, np, 1.0f), want = num(c, "total_norm");
        CHECK_MSG(fabs(norm - want) <= 1e-6 * want, "%s: norm %.9g vs torch %.9g", get(c, "name")->valuestring, norm, want);
        float f = lorac_optim_clip_factor(norm, num(c, "max_norm"));
        cmp_t cmp = {0};
        for (int i = 0; i < np; i++) {
            int64_t n = params[i].n;
            float *clipped = malloc(4 * (size_t)n), *w = malloc(4 * (size_t)n);
            for (int64_t k = 0; k < n; k++) clipped[k] = params[i].grad[k] * f;
            read_floats(cJSON_GetArrayItem(get(c, "clipped"), i), w, n);
            compare(&cmp, clipped, w, n);
            free(clipped); free(w);
            free(params[i].data); free(params[i].grad);
        }
        printf("clip  %-20s norm %.9g (torch %.9g), factor %.9g, clipped grads max rel %.2e\n", get(c, "name")->valuestring,
               norm, want, (double)f, cmp.max_rel);
        CHECK(cmp.max_rel <= 1e-6);
    }
    /* off, and never scaling up or acting on a non-finite norm */
    CHECK(lorac_optim_clip_factor(5.0, 0.0) == 1.0f);
    CHECK(lorac_optim_clip_factor(5.0, -1.0) == 1.0f);
    CHECK(lorac_optim_clip_factor(0.1, 1.0) == 1.0f);
    CHECK(lorac_optim_clip_factor(NAN, 1.0) == 1.0f);
    CHECK(lorac_optim_clip_factor(INFINITY, 1.0) == 1.0f);
    CHECK_NEAR(lorac_optim_clip_factor(4.0, 1.0), 1.0 / (4.0 + 1e-6), 1e-7);
}

static void test_schedules_golden(const cJSON *golden) {
    const cJSON *c;
    int n = 0, bad = 0;
    cJSON_ArrayForEach(c, get(golden, "schedules")) {
        lorac_schedule_t kind;
        CHECK(lorac_schedule_parse(get(c, "kind")->valuestring, &kind) == 0);
        CHECK(!strcmp(lorac_schedule_name(kind), get(c, "kind")->valuestring));
        int64_t warmup = (int64_t)num(c, "warmup"), total = (int64_t)num(c, "total");
        for (int i = 0; i < cJSON_GetArraySize(get(c, "steps")); i++) {
            int64_t s = (int64_t)cJSON_GetArrayItem(get(c, "steps"), i)->valuedouble;
            double want = cJSON_GetArrayItem(get(c, "lr"), i)->valuedouble;
            double got = lorac_schedule_lr(kind, num(c, "base_lr"), warmup, total, s);
            n++;
            if (!(fabs(got - want) <= 1e-15 * fabs(want) + 1e-300) || got < 0) {
                bad++;
                fprintf(stderr, "schedule %s warmup %lld total %lld step %lld: %.17g vs HF %.17g\n", lorac_schedule_name(kind),
                        (long long)warmup, (long long)total, (long long)s, got, want);
            }
        }
    }
    printf("schedules: %d learning rates compared with HF's formulas, %d differ\n", n, bad);
    CHECK(n > 100 && bad == 0);
    lorac_schedule_t k;
    CHECK(lorac_schedule_parse("cosine_with_restarts", &k) == -1);
    CHECK(lorac_schedule_parse("", &k) == -1);
    CHECK(lorac_schedule_name((lorac_schedule_t)7) == NULL);
}

/* ---- skipped steps, scaling, arguments --------------------------------------- */

static void fill(float *x, int64_t n, float a, float b) {
    for (int64_t k = 0; k < n; k++) x[k] = a + b * (float)((k * 37) % 11 - 5);
}

static void test_nan_skip(void) {
    enum { NA = 12, NB = 5 };
    float a[NA], ga[NA], b[NB], gb[NB];
    fill(a, NA, 0.1f, 0.03f); fill(b, NB, -0.2f, 0.01f);
    lorac_optim_param_t params[2] = {{"a", a, ga, NA}, {"b", b, gb, NB}};
    lorac_adamw_params_t hp = lorac_adamw_default_params();
    hp.weight_decay = 0.1;
    lorac_adamw_t *opt;
    CHECK(lorac_adamw_init(params, 2, hp, &opt) == LORAC_STATUS_OK);
    /* two good steps so the moments are non-zero */
    for (int s = 0; s < 2; s++) {
        fill(ga, NA, 0.5f, 0.2f); fill(gb, NB, -1.0f, 0.3f);
        double norm;
        CHECK(lorac_adamw_update(opt, 1e-2, 2.5, 0.5f, 1.0, &norm) == 1);
        CHECK(isfinite(norm) && norm > 0);
    }
    float a0[NA], b0[NB], m0[NA], v0[NA], mb0[NB], vb0[NB];
    memcpy(a0, a, sizeof a); memcpy(b0, b, sizeof b);
    memcpy(m0, lorac_adamw_exp_avg(opt, 0), sizeof m0); memcpy(v0, lorac_adamw_exp_avg_sq(opt, 0), sizeof v0);
    memcpy(mb0, lorac_adamw_exp_avg(opt, 1), sizeof mb0); memcpy(vb0, lorac_adamw_exp_avg_sq(opt, 1), sizeof vb0);
#define UNCHANGED() (!memcmp(a, a0, sizeof a) && !memcmp(b, b0, sizeof b) && \
                     !memcmp(lorac_adamw_exp_avg(opt, 0), m0, sizeof m0) && !memcmp(lorac_adamw_exp_avg_sq(opt, 0), v0, sizeof v0) && \
                     !memcmp(lorac_adamw_exp_avg(opt, 1), mb0, sizeof mb0) && !memcmp(lorac_adamw_exp_avg_sq(opt, 1), vb0, sizeof vb0))

    /* an injected NaN in one gradient: norm NaN, step skipped, nothing moves */
    gb[3] = NAN;
    double norm = 0;
    CHECK(isnan(lorac_optim_grad_norm(params, 2, 1.0f)));
    CHECK(lorac_adamw_update(opt, 1e-2, 2.5, 0.5f, 1.0, &norm) == 0);
    CHECK(isnan(norm));
    CHECK(UNCHANGED());
    lorac_adamw_counters_t c = lorac_adamw_get_counters(opt);
    CHECK(c.steps == 2 && c.skipped == 1 && c.skipped_in_row == 1);

    /* inf gradient, and a NaN loss with finite gradients: skipped too */
    gb[3] = INFINITY;
    CHECK(isinf(lorac_optim_grad_norm(params, 2, 1.0f)));
    CHECK(lorac_adamw_update(opt, 1e-2, 2.5, 0.5f, 1.0, NULL) == 0);
    gb[3] = 0.25f;
    CHECK(lorac_adamw_update(opt, 1e-2, NAN, 0.5f, 1.0, NULL) == 0);
    CHECK(lorac_adamw_update(opt, 1e-2, INFINITY, 0.5f, 1.0, NULL) == 0);
    CHECK(UNCHANGED());
    c = lorac_adamw_get_counters(opt);
    CHECK(c.steps == 2 && c.skipped == 4 && c.skipped_in_row == 4);
    CHECK(lorac_adamw_too_many_skipped(opt, 4) == 1);
    CHECK(lorac_adamw_too_many_skipped(opt, 5) == 0);
    CHECK(lorac_adamw_too_many_skipped(opt, 0) == 0); /* default 10 */
    for (int i = 0; i < 6; i++) lorac_adamw_skip(opt);
    CHECK(lorac_adamw_too_many_skipped(opt, 0) == 1);
    CHECK(UNCHANGED());

    /* a good step afterwards: taken with t = 3, resets the run of skips */
    CHECK(lorac_adamw_update(opt, 1e-2, 2.5, 0.5f, 1.0, NULL) == 1);
    c = lorac_adamw_get_counters(opt);
    CHECK(c.steps == 3 && c.skipped == 10 && c.skipped_in_row == 0);
    CHECK(!UNCHANGED());
#undef UNCHANGED
    lorac_adamw_free(opt);
}

/* step(lr, s) with gradients g equals step(lr, 1) with gradients f32(g·s):
 * what gradient accumulation (s = 1/G) and clipping rely on. */
static void test_grad_scale(void) {
    enum { N = 33 };
    float p1[N], g1[N], p2[N], g2[N];
    fill(p1, N, 0.3f, 0.05f);
    memcpy(p2, p1, sizeof p1);
    lorac_optim_param_t a = {"w", p1, g1, N}, b = {"w", p2, g2, N};
    lorac_adamw_params_t hp = lorac_adamw_default_params();
    hp.weight_decay = 0.05;
    lorac_adamw_t *oa, *ob;
    CHECK(lorac_adamw_init(&a, 1, hp, &oa) == 0 && lorac_adamw_init(&b, 1, hp, &ob) == 0);
    const float scale = 1.0f / 3.0f;
    for (int s = 0; s < 4; s++) {
        fill(g1, N, 0.2f * (float)(s + 1), 0.7f);
        for (int k = 0; k < N; k++) g2[k] = g1[k] * scale;
        lorac_adamw_step(oa, 3e-3, scale);
        lorac_adamw_step(ob, 3e-3, 1.0f);
    }
    CHECK(!memcmp(p1, p2, sizeof p1));
    CHECK(!memcmp(lorac_adamw_exp_avg_sq(oa, 0), lorac_adamw_exp_avg_sq(ob, 0), sizeof(float) * N));
    /* the norm sees the scaled gradients */
    CHECK_NEAR(lorac_optim_grad_norm(&a, 1, scale), lorac_optim_grad_norm(&b, 1, 1.0f), 1e-12);
    /* and clipping through update: grads scaled by min(1, clip/norm) */
    double norm;
    float before[N];
    memcpy(before, p1, sizeof p1);
    CHECK(lorac_adamw_update(oa, 3e-3, 1.0, scale, 0.01, &norm) == 1);
    CHECK(memcmp(before, p1, sizeof p1) != 0);
    lorac_adamw_step(ob, 3e-3, lorac_optim_clip_factor(lorac_optim_grad_norm(&b, 1, 1.0f), 0.01));
    CHECK(!memcmp(p1, p2, sizeof p1));
    lorac_adamw_free(oa);
    lorac_adamw_free(ob);
}

static void test_init_args(void) {
    float x[2] = {0}, g[2] = {0};
    lorac_optim_param_t two[2] = {{"x", x, g, 2}, {"x", x, g, 2}};
    lorac_adamw_params_t hp = lorac_adamw_default_params();
    lorac_adamw_t *o = (lorac_adamw_t *)1;
    CHECK(lorac_adamw_init(two, 2, hp, &o) == LORAC_STATUS_INVALID_ARG && o == NULL);
    CHECK(strstr(lorac_error_message(), "\"x\"") != NULL);
    lorac_optim_param_t noname = {NULL, x, g, 2}, nodata = {"y", NULL, g, 2}, neg = {"z", x, g, -1};
    CHECK(lorac_adamw_init(&noname, 1, hp, &o) == LORAC_STATUS_INVALID_ARG);
    CHECK(lorac_adamw_init(&nodata, 1, hp, &o) == LORAC_STATUS_INVALID_ARG);
    CHECK(lorac_adamw_init(&neg, 1, hp, &o) == LORAC_STATUS_INVALID_ARG);
    lorac_adamw_params_t bad[4] = {hp, hp, hp, hp};
    bad[0].beta1 = 1.0; bad[1].beta2 = NAN; bad[2].eps = -1e-8; bad[3].weight_decay = INFINITY;
    for (int i = 0; i < 4; i++) CHECK(lorac_adamw_init(two, 1, bad[i], &o) == LORAC_STATUS_INVALID_ARG);
    /* zero params and zero-sized params are fine */
    CHECK(lorac_adamw_init(NULL, 0, hp, &o) == LORAC_STATUS_OK);
    lorac_adamw_step(o, 1e-3, 1.0f);
    CHECK(lorac_adamw_steps(o) == 1 && lorac_adamw_n_params(o) == 0 && lorac_adamw_param(o, 0) == NULL);
    lorac_adamw_free(o);
    lorac_optim_param_t empty = {"e", NULL, NULL, 0};
    CHECK(lorac_adamw_init(&empty, 1, hp, &o) == LORAC_STATUS_OK);
    CHECK(lorac_adamw_update(o, 1e-3, 1.0, 1.0f, 1.0, NULL) == 1);
    CHECK(lorac_adamw_param(o, 0) && !strcmp(lorac_adamw_param(o, 0)->name, "e"));
    lorac_adamw_free(o);
    lorac_adamw_free(NULL);
}

int main(void) {
    cJSON *golden = load_golden();
    CHECK_MSG(golden != NULL, "cannot read tests/data/optim/adamw_golden.json (LORAC_SRC unset?)");
    if (golden) {
        test_adamw_golden(golden);
        test_clip_golden(golden);
        test_schedules_golden(golden);
        cJSON_Delete(golden);
    }
    test_nan_skip();
    test_grad_scale();
    test_init_args();
    return tl_finish("test_optim");
}
