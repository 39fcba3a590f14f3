/* test_matmul — matmul forward/backward and dtype conversion, on every
 * instruction-set path this CPU can run, against a double-precision naive
 * reference; plus bitwise determinism across runs and thread counts. */
#include "kernels/kernels_internal.h"
#include "kernels/ops_internal.h"
#include "testlib.h"
#include "isa_paths.h"

#include <stdint.h>

static const char *const ISAS[] = {"portable", "avx2", "avx512"};
static const lorac_dtype_t DTYPES[] = {LORAC_DTYPE_F32, LORAC_DTYPE_BF16, LORAC_DTYPE_F16};
static const int64_t TS[] = {1, 2, 3, 5, 17, 64};
static const int64_t KS[] = {1, 7, 16, 33, 288, 1000};
static const int64_t NS[] = {1, 3, 31, 100, 257};
#define LEN(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Relative tolerance against Σ|terms|: f32 rounding over K terms is ~√K·2⁻²⁴
 * typically; 1e-5 also leaves room for the worst of the sizes here. */
#define RTOL 1e-5

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform in [-1, 1) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((double)(rng >> 40) / (double)(1ull << 23) - 1.0);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

/* Random weights of n elements in dtype dt, and their exact f32 values. */
static void *make_weights(lorac_dtype_t dt, int64_t n, float *exact) {
    void *w = xmalloc((size_t)n * lorac_dtype_size(dt));
    for (int64_t i = 0; i < n; i++) {
        float v = frand();
        if (dt == LORAC_DTYPE_F32) ((float *)w)[i] = exact[i] = v;
        else if (dt == LORAC_DTYPE_BF16) {
            uint16_t h = lorac_f32_to_bf16(v);
            ((uint16_t *)w)[i] = h, exact[i] = lorac_bf16_to_f32(h);
        } else {
            uint16_t h = lorac_f32_to_f16(v);
            ((uint16_t *)w)[i] = h, exact[i] = lorac_f16_to_f32(h);
        }
    }
    return w;
}

static float *rand_f32(int64_t n) {
    float *p = xmalloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) p[i] = frand();
    return p;
}

/* Largest |got - ref| / (Σ|terms| + tiny) over n elements; the reference is
 * ref[i] (double) with magnitude scale mag[i]. */
static double max_rel_err(const float *got, const double *ref, const double *mag, int64_t n) {
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - ref[i]) / (mag[i] + 1e-30);
        if (!(e <= worst)) worst = e; /* NaN propagates as a failure */
    }
    return worst;
}

/* The reference for every product here, in double: ref (M,C) = c0 + s·a·b
 * with a[m,l] at a[m*a_rs + l*a_cs] and b[l,c] at b[l*b_rs + c*b_cs]
 * (strides give each kernel's transposes without copies); mag gets
 * |c0| + Σ|terms|, the scale of max_rel_err. c0 NULL starts from 0. */
static void ref_product(double *ref, double *mag, const float *c0, double s, const float *a, int64_t a_rs,
                        int64_t a_cs, const float *b, int64_t b_rs, int64_t b_cs, int64_t M, int64_t L, int64_t C) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t c = 0; c < C; c++) {
            double sum = c0 ? c0[m * C + c] : 0, mg = fabs(sum);
            for (int64_t l = 0; l < L; l++) {
                double p = s * a[m * a_rs + l * a_cs] * b[l * b_rs + c * b_cs];
                sum += p, mg += fabs(p);
            }
            ref[m * C + c] = sum, mag[m * C + c] = mg;
        }
}

/* ---- forward ------------------------------------------------------------ */

typedef void (*forward_fn)(float *out, const float *x, const void *w, lorac_dtype_t wtype, const float *bias,
                           int64_t T, int64_t K, int64_t N);

/* One forward entry point over every (T, K, N) of the given lists, with and
 * without bias, against double. */
static void test_forward_fn(const char *isa, const char *label, forward_fn fn, const int64_t *ts, int nts,
                            const int64_t *ks, int nks, const int64_t *ns, int nns) {
    for (int di = 0; di < LEN(DTYPES); di++) {
        lorac_dtype_t dt = DTYPES[di];
        double worst = 0;
        int bad = 0;
        for (int ti = 0; ti < nts; ti++)
            for (int ki = 0; ki < nks; ki++)
                for (int ni = 0; ni < nns; ni++) {
                    int64_t T = ts[ti], K = ks[ki], N = ns[ni];
                    float *wx = xmalloc((size_t)(N * K) * sizeof(float));
                    void *w = make_weights(dt, N * K, wx);
                    float *x = rand_f32(T * K), *bias = rand_f32(N);
                    float *out = xmalloc((size_t)(T * N) * sizeof(float));
                    double *ref = xmalloc((size_t)(T * N) * sizeof(double));
                    double *mag = xmalloc((size_t)(T * N) * sizeof(double));
                    ref_product(ref, mag, NULL, 1.0, x, K, 1, wx, 1, K, T, K, N); /* x·wᵀ */
                    for (int with_bias = 0; with_bias < 2; with_bias++) {
                        if (with_bias)
                            for (int64_t t = 0; t < T; t++)
                                for (int64_t n = 0; n < N; n++)
                                    ref[t * N + n] += bias[n], mag[t * N + n] += fabs(bias[n]);
                        for (int64_t i = 0; i < T * N; i++) out[i] = NAN;
                        fn(out, x, w, dt, with_bias ? bias : NULL, T, K, N);
                        double e = max_rel_err(out, ref, mag, T * N);
                        if (!(e <= RTOL)) {
                            if (bad++ < 5)
                                fprintf(stderr, "  %s %s %s T=%lld K=%lld N=%lld bias=%d: rel err %g\n",
                                        label, isa, lorac_dtype_name(dt), (long long)T, (long long)K,
                                        (long long)N, with_bias, e);
                        }
                        if (e > worst || e != e) worst = e;
                    }
                    free(wx), free(w), free(x), free(bias), free(out), free(ref), free(mag);
                }
        printf("  %-13s %-8s %-4s max rel err %.3g\n", label, isa, lorac_dtype_name(dt), worst);
        CHECK_MSG(bad == 0, "%s %s %s: %d shapes out of tolerance", label, isa, lorac_dtype_name(dt), bad);
    }
}

static void test_forward_shapes(const char *isa) {
    test_forward_fn(isa, "forward", lorac_matmul_forward, TS, LEN(TS), KS, LEN(KS), NS, LEN(NS));
    /* the batch entry point's packed path needs T >= 128 and N >= 64; the
     * others fall back to lorac_matmul_forward */
    static const int64_t bt[] = {3, 128, 131, 1030}, bk[] = {1, 33, 300}, bn[] = {5, 64, 257};
    test_forward_fn(isa, "forward_batch", lorac_matmul_forward_batch, bt, LEN(bt), bk, LEN(bk), bn, LEN(bn));
}

/* K = 0 gives bias (or 0); T = 0 / N = 0 touch nothing. */
static void test_forward_degenerate(void) {
    float out[6], bias[3] = {1, 2, 3};
    float w[1] = {0}, x[1] = {0};
    lorac_matmul_forward(out, x, w, LORAC_DTYPE_F32, bias, 2, 0, 3);
    CHECK(out[0] == 1 && out[1] == 2 && out[2] == 3 && out[3] == 1 && out[5] == 3);
    lorac_matmul_forward(out, x, w, LORAC_DTYPE_F32, NULL, 2, 0, 3);
    CHECK(out[0] == 0 && out[5] == 0);
    out[0] = 42;
    lorac_matmul_forward(out, x, w, LORAC_DTYPE_F32, NULL, 0, 1, 3);
    lorac_matmul_forward(out, x, w, LORAC_DTYPE_F32, NULL, 2, 1, 0);
    CHECK(out[0] == 42);
}

/* ---- backward ------------------------------------------------------------ */

/* lorac_matmul_forward_parts is bitwise lorac_matmul_forward per part, with
 * parts whose sizes are not multiples of 4 (a thread's rows span parts). */
static void test_forward_parts(const char *isa) {
    static const int64_t ts[] = {1, 3, 17}, sizes[] = {5, 64, 3};
    int bad = 0;
    for (int di = 0; di < LEN(DTYPES); di++)
        for (int ti = 0; ti < LEN(ts); ti++)
            for (int threads = 1; threads <= 3; threads++) {
                lorac_dtype_t dt = DTYPES[di];
                int64_t T = ts[ti], K = 33;
                lorac_kernels_set_threads(threads);
                float *x = rand_f32(T * K), *wx = xmalloc(sizeof(float) * 64 * (size_t)K);
                lorac_matmul_part_t parts[3];
                float *want[3];
                for (int i = 0; i < 3; i++) {
                    int64_t N = sizes[i];
                    parts[i] = (lorac_matmul_part_t){xmalloc(sizeof(float) * (size_t)(T * N)), make_weights(dt, N * K, wx),
                                                     dt, i == 1 ? NULL : rand_f32(N), N, NULL, 0};
                    want[i] = xmalloc(sizeof(float) * (size_t)(T * N));
                    lorac_matmul_forward(want[i], x, parts[i].w, dt, parts[i].bias, T, K, N);
                }
                lorac_matmul_forward_parts(parts, 3, x, T, K);
                for (int i = 0; i < 3; i++) {
                    bad += memcmp(want[i], parts[i].out, sizeof(float) * (size_t)(T * sizes[i])) != 0;
                    free(parts[i].out), free((void *)parts[i].w), free((void *)parts[i].bias), free(want[i]);
                }
                free(x), free(wx);
            }
    lorac_kernels_set_threads(2);
    CHECK_MSG(bad == 0, "%s forward_parts: %d cases differ from lorac_matmul_forward", isa, bad);
}

/* lorac_matmul_forward_parts_lora against double: each part's base product
 * plus its LoRA segments in order (two covering every row, one a later
 * part's rows only, with and without the transposed copy of B), for decode
 * and batch row counts, and the same bits for 1, 2 and 3 threads. Sizes
 * big enough for the threaded paths (a thread's rows span parts). */
static void test_forward_parts_lora(const char *isa) {
    static const int64_t ts[] = {1, 3, 5, 17}, sizes[] = {70, 1030, 13};
    enum { NP = 3, NSEG = 3 };
    const int64_t K = 96;
    double worst = 0;
    int bad = 0, differ = 0;
    for (int di = 0; di < LEN(DTYPES); di++)
        for (int ti = 0; ti < LEN(ts); ti++) {
            lorac_dtype_t dt = DTYPES[di];
            int64_t T = ts[ti];
            float *x = rand_f32(T * K), *first[NP] = {0};
            float *wx[NP];
            void *w[NP];
            float *bias[NP];
            lorac_lora_segment_t segs[NP][NSEG];
            int32_t n_segs[NP] = {NSEG, 1, 0};
            float *mats[NP][NSEG][3] = {{{0}}};
            int64_t u_used = 0;
            for (int i = 0; i < NP; i++) {
                int64_t N = sizes[i];
                wx[i] = xmalloc(sizeof(float) * (size_t)(N * K));
                w[i] = make_weights(dt, N * K, wx[i]);
                bias[i] = i == 1 ? NULL : rand_f32(N);
                for (int g = 0; g < n_segs[i]; g++) {
                    int32_t r = g == 1 ? 1 : 4 + 4 * g; /* 4, 1, 12 */
                    int64_t start = g == 2 ? (T > 1 ? 1 : 0) : 0, len = T - start;
                    float *A = rand_f32(r * K), *B = rand_f32(N * r), *Bt = NULL;
                    if (g != 1) { /* the transposed copy, as lorac_adapter_prepare_inference makes */
                        Bt = xmalloc(sizeof(float) * (size_t)(r * N));
                        for (int64_t n = 0; n < N; n++)
                            for (int32_t k = 0; k < r; k++) Bt[k * N + n] = B[n * r + k];
                    }
                    mats[i][g][0] = A, mats[i][g][1] = B, mats[i][g][2] = Bt;
                    segs[i][g] = (lorac_lora_segment_t){.start = start, .len = len, .u_offset = u_used, .r = r,
                                                        .scale = 0.5f + 0.25f * (float)g, .A = A, .B = B, .Bt = Bt};
                    u_used += len * r;
                }
            }
            float *u = xmalloc(sizeof(float) * (size_t)u_used);
            for (int threads = 1; threads <= 3; threads++) {
                lorac_kernels_set_threads(threads);
                for (int64_t j = 0; j < u_used; j++) u[j] = NAN; /* nothing left from the last call */
                lorac_matmul_part_t parts[NP];
                for (int i = 0; i < NP; i++)
                    parts[i] = (lorac_matmul_part_t){xmalloc(sizeof(float) * (size_t)(T * sizes[i])), w[i], dt, bias[i],
                                                     sizes[i], n_segs[i] ? segs[i] : NULL, n_segs[i]};
                lorac_matmul_forward_parts_lora(parts, NP, x, T, K, u);
                for (int i = 0; i < NP; i++) {
                    int64_t N = sizes[i];
                    if (!first[i]) {
                        first[i] = parts[i].out;
                        continue;
                    }
                    differ += memcmp(first[i], parts[i].out, sizeof(float) * (size_t)(T * N)) != 0;
                    free(parts[i].out);
                }
            }
            /* the reference: x·wᵀ + bias, then each segment's s·(x·Aᵀ)·Bᵀ on its rows */
            for (int i = 0; i < NP; i++) {
                int64_t N = sizes[i];
                for (int64_t t = 0; t < T; t++) {
                    double e = 0;
                    for (int64_t n = 0; n < N; n++) {
                        double sum = bias[i] ? bias[i][n] : 0, mg = fabs(sum);
                        for (int64_t k = 0; k < K; k++) {
                            double p = (double)x[t * K + k] * wx[i][n * K + k];
                            sum += p, mg += fabs(p);
                        }
                        for (int g = 0; g < n_segs[i]; g++) {
                            const lorac_lora_segment_t *sg = &segs[i][g];
                            if (t < sg->start || t >= sg->start + sg->len) continue;
                            for (int32_t j = 0; j < sg->r; j++) {
                                double uj = 0;
                                for (int64_t k = 0; k < K; k++) uj += (double)x[t * K + k] * sg->A[j * K + k];
                                double p = sg->scale * uj * sg->B[n * sg->r + j];
                                sum += p, mg += fabs(p);
                            }
                        }
                        double err = fabs((double)first[i][t * N + n] - sum) / (mg + 1e-30);
                        if (!(err <= e)) e = err;
                    }
                    if (!(e <= RTOL) && bad++ < 5)
                        fprintf(stderr, "  %s forward_parts_lora %s T=%lld part %d row %lld: rel err %g\n", isa,
                                lorac_dtype_name(dt), (long long)T, i, (long long)t, e);
                    if (!(e <= worst)) worst = e;
                }
            }
            for (int i = 0; i < NP; i++) {
                for (int g = 0; g < n_segs[i]; g++) free(mats[i][g][0]), free(mats[i][g][1]), free(mats[i][g][2]);
                free(first[i]), free(wx[i]), free(w[i]), free(bias[i]);
            }
            free(x), free(u);
        }
    lorac_kernels_set_threads(2);
    printf("  parts + lora  %-8s      max rel err %.3g\n", isa, worst);
    CHECK_MSG(bad == 0, "%s forward_parts_lora: %d rows out of tolerance", isa, bad);
    CHECK_MSG(differ == 0, "%s forward_parts_lora: %d results differ between thread counts", isa, differ);
}

/* y += s·u·bᵀ (LoRA's expand; training's packed path from 128 rows) against
 * double, y starting from nonzero values. */
static void test_lora_expand(const char *isa) {
    static const int64_t ts[] = {3, 130, 300}, ns[] = {5, 64, 300}, rs[] = {1, 8, 16};
    double worst = 0;
    int bad = 0;
    for (int ti = 0; ti < LEN(ts); ti++)
        for (int ni = 0; ni < LEN(ns); ni++)
            for (int ri = 0; ri < LEN(rs); ri++) {
                int64_t T = ts[ti], N = ns[ni], R = rs[ri];
                float *y = rand_f32(T * N), *u = rand_f32(T * R), *b = rand_f32(N * R), s = 0.75f;
                double *ref = xmalloc((size_t)(T * N) * sizeof(double)), *mag = xmalloc((size_t)(T * N) * sizeof(double));
                ref_product(ref, mag, y, s, u, R, 1, b, 1, R, T, R, N); /* y + s·u·bᵀ */
                lorac_lora_expand_forward(y, u, b, s, T, N, R);
                double e = max_rel_err(y, ref, mag, T * N);
                if (!(e <= RTOL) && bad++ < 5)
                    fprintf(stderr, "  %s lora expand T=%lld N=%lld R=%lld: rel err %g\n", isa, (long long)T,
                            (long long)N, (long long)R, e);
                if (e > worst || e != e) worst = e;
                free(y), free(u), free(b), free(ref), free(mag);
            }
    printf("  lora expand   %-8s      max rel err %.3g\n", isa, worst);
    CHECK_MSG(bad == 0, "%s lora expand: %d shapes out of tolerance", isa, bad);
}

/* Training's products (lorac_matmul_forward_train,
 * lorac_matmul_backward_input_train) give the bits of the calls each
 * replaces, at 1-3 threads, with and without bias (forward) and set
 * (backward), 16-bit base weights, f32 ones also repacked
 * (lorac_pack_weight), ranks 0, up to the tail's limit and past it (two
 * calls then), row counts that leave short tiles and column counts that
 * leave part panels (514 rows: one row block on the AVX-512 path);
 * the fused result is also checked against double.
 * Then the path's matmul_tail and matmul_packed ops themselves, where it
 * has them, against its set/accumulate ops called twice, the case of an
 * empty main sum (L = 0) included, so the kernels are tested even where a
 * driver never took them. */
static void test_fused_lora(const char *isa) {
    static const int64_t ts[] = {3, 130, 301, 514}, ks[] = {33, 288}, ns[] = {5, 70, 300}, rs[] = {0, 1, 8, 64, 65};
    static const lorac_dtype_t dts[] = {LORAC_DTYPE_F32, LORAC_DTYPE_BF16};
    int differ = 0, bad = 0, saved = lorac_kernels_get_threads();
    double worst = 0;
    for (int di = 0; di < LEN(dts); di++)
        for (int ti = 0; ti < LEN(ts); ti++)
            for (int ki = 0; ki < LEN(ks); ki++)
                for (int ni = 0; ni < LEN(ns); ni++)
                    for (int ri = 0; ri < LEN(rs); ri++) {
                        lorac_dtype_t dt = dts[di];
                        int64_t T = ts[ti], K = ks[ki], N = ns[ni], R = rs[ri];
                        int variant = (ti + ki + ni + ri) % 2; /* bias in the forward, set in the backward */
                        lorac_kernels_set_threads(1 + (ti + ni + ri) % 3);
                        float *wx = xmalloc((size_t)(N * K) * sizeof(float));
                        void *w = make_weights(dt, N * K, wx);
                        float *P = NULL; /* f32 weights also repacked, every other shape */
                        if (dt == LORAC_DTYPE_F32 && (ti + ni) % 2 == 0) {
                            P = xmalloc((size_t)lorac_packed_weight_floats(N, K) * sizeof(float));
                            lorac_pack_weight(P, wx, N, K);
                            float *row = xmalloc((size_t)K * sizeof(float));
                            for (int64_t n = 0; n < N; n++) { /* every row reads back from the packed copy */
                                lorac_packed_weight_row(row, P, n, K);
                                differ += memcmp(row, wx + n * K, (size_t)K * sizeof(float)) != 0;
                            }
                            free(row);
                        }
                        float *x = rand_f32(T * K), *u = rand_f32(T * R), *b = rand_f32(N * R), *bias = rand_f32(N);
                        float *y0 = rand_f32(T * N), *y1 = xmalloc((size_t)(T * N) * sizeof(float)), s = 0.625f;
                        memcpy(y1, y0, (size_t)(T * N) * sizeof(float));
                        lorac_matmul_forward_batch(y0, x, w, dt, variant ? bias : NULL, T, K, N);
                        lorac_lora_expand_forward(y0, u, b, s, T, N, R);
                        lorac_matmul_forward_train(y1, x, w, dt, P, variant ? bias : NULL, T, K, N, u, b, s, R);
                        differ += memcmp(y0, y1, (size_t)(T * N) * sizeof(float)) != 0;
                        /* against double: x·wᵀ + bias + s·u·bᵀ */
                        double *ref = xmalloc((size_t)(T * N) * sizeof(double)), *mag = xmalloc((size_t)(T * N) * sizeof(double));
                        double *ref2 = xmalloc((size_t)(T * N) * sizeof(double)), *mag2 = xmalloc((size_t)(T * N) * sizeof(double));
                        float *start = xmalloc((size_t)(T * N) * sizeof(float));
                        for (int64_t t = 0; t < T; t++)
                            for (int64_t n = 0; n < N; n++) start[t * N + n] = variant ? bias[n] : 0.0f;
                        ref_product(ref, mag, start, 1.0, x, K, 1, wx, 1, K, T, K, N);
                        ref_product(ref2, mag2, NULL, s, u, R, 1, b, 1, R, T, R, N);
                        for (int64_t i = 0; i < T * N; i++) ref[i] += ref2[i], mag[i] += mag2[i];
                        double e = max_rel_err(y1, ref, mag, T * N);
                        if (!(e <= RTOL) && bad++ < 5)
                            fprintf(stderr, "  %s fused forward T=%lld K=%lld N=%lld R=%lld: rel err %g\n", isa,
                                    (long long)T, (long long)K, (long long)N, (long long)R, e);
                        if (e > worst || e != e) worst = e;
                        /* backward: dx (=/+=) dout·w + du·a, a (R, K) */
                        float *dout = rand_f32(T * N), *du = rand_f32(T * R), *a = rand_f32(R * K);
                        float *dx0 = rand_f32(T * K), *dx1 = xmalloc((size_t)(T * K) * sizeof(float));
                        memcpy(dx1, dx0, (size_t)(T * K) * sizeof(float));
                        if (variant) lorac_matmul_backward_input_set(dx0, dout, w, dt, T, K, N);
                        else lorac_matmul_backward_input(dx0, dout, w, dt, T, K, N);
                        lorac_matmul_backward_input(dx0, du, a, LORAC_DTYPE_F32, T, K, R);
                        lorac_matmul_backward_input_train(dx1, variant, dout, w, dt, P, T, K, N, du, a, R);
                        differ += memcmp(dx0, dx1, (size_t)(T * K) * sizeof(float)) != 0;
                        free(wx), free(w), free(P), free(x), free(u), free(b), free(bias), free(y0), free(y1), free(ref), free(mag);
                        free(ref2), free(mag2), free(start), free(dout), free(du), free(a), free(dx0), free(dx1);
                    }
    /* the ops themselves: c (=/+=) a·b + ta·tb in both orientations, against two calls */
    const lorac_kernel_ops_t *ops = lorac_kernels_ops();
    if (ops->matmul_tail) {
        static const int64_t ms[] = {1, 7, 130}, ls[] = {0, 5, 400}, cs[] = {3, 40}, trs[] = {0, 1, 8, LORAC_TAIL_MAX};
        for (int mi = 0; mi < LEN(ms); mi++)
            for (int li = 0; li < LEN(ls); li++)
                for (int ci = 0; ci < LEN(cs); ci++)
                    for (int ri = 0; ri < LEN(trs); ri++)
                        for (int form = 0; form < 4; form++) {
                            int b_t = form & 1, set = form >> 1;
                            int64_t M = ms[mi], L = ls[li], C = cs[ci], tr = trs[ri];
                            float *a = rand_f32(M * L + 1), *b = rand_f32(L * C + 1), *ta = rand_f32(M * tr + 1);
                            float *tb = rand_f32(tr * C + 1), *c0 = rand_f32(M * C);
                            float *c1 = xmalloc((size_t)(M * C) * sizeof(float)), *c2 = xmalloc((size_t)(M * C) * sizeof(float));
                            memcpy(c1, c0, (size_t)(M * C) * sizeof(float));
                            memcpy(c2, c0, (size_t)(M * C) * sizeof(float));
                            if (set) memset(c0, 0, (size_t)(M * C) * sizeof(float));
                            if (L > 0) (b_t ? ops->matmul_acc_bt : ops->matmul_acc)(c0, a, L, 1, b, LORAC_DTYPE_F32, M, L, C, 0, M, 0, C);
                            if (tr > 0)
                                (b_t ? ops->matmul_acc_bt : ops->matmul_acc)(c0, ta, tr, 1, tb, LORAC_DTYPE_F32, M, tr, C, 0, M, 0, C);
                            if (L > 0 || tr > 0) {
                                ops->matmul_tail(c1, a, L, 1, b, LORAC_DTYPE_F32, M, L, C, 0, M, 0, C, b_t, set, ta, tb, tr);
                                if (memcmp(c0, c1, (size_t)(M * C) * sizeof(float)) != 0 && differ++ < 5)
                                    fprintf(stderr, "  %s matmul_tail M=%lld L=%lld C=%lld tr=%lld b_t=%d set=%d differs\n",
                                            isa, (long long)M, (long long)L, (long long)C, (long long)tr, b_t, set);
                            }
                            if (ops->matmul_packed && (L > 0 || tr > 0)) {
                                /* b as a repacked weight: b itself (C rows of L) when b_t, else L rows of C */
                                int64_t wn = b_t ? C : L, wk = b_t ? L : C;
                                float *P = xmalloc((size_t)(lorac_packed_weight_floats(wn, wk) + 1) * sizeof(float));
                                lorac_pack_weight(P, b, wn, wk);
                                ops->matmul_packed(c2, a, L, P, M, L, C, 0, M, 0, C, b_t, set, ta, tb, tr);
                                if (memcmp(c0, c2, (size_t)(M * C) * sizeof(float)) != 0 && differ++ < 5)
                                    fprintf(stderr, "  %s matmul_packed M=%lld L=%lld C=%lld tr=%lld b_t=%d set=%d differs\n",
                                            isa, (long long)M, (long long)L, (long long)C, (long long)tr, b_t, set);
                                free(P);
                            }
                            free(a), free(b), free(ta), free(tb), free(c0), free(c1), free(c2);
                        }
    }
    lorac_kernels_set_threads(saved);
    printf("  fused lora    %-8s      max rel err %.3g%s\n", isa, worst,
           ops->matmul_tail ? "" : " (two calls: no tail op)");
    CHECK_MSG(bad == 0, "%s fused lora: %d shapes out of tolerance", isa, bad);
    CHECK_MSG(differ == 0, "%s fused lora: %d results differ from the two calls", isa, differ);
}

static void test_backward_input_fn(const char *isa, const char *label, const int64_t *ts, int nts, const int64_t *ks,
                                   int nks, const int64_t *ns, int nns) {
    for (int di = 0; di < LEN(DTYPES); di++) {
        lorac_dtype_t dt = DTYPES[di];
        double worst = 0;
        int bad = 0;
        for (int ti = 0; ti < nts; ti++)
            for (int ki = 0; ki < nks; ki++)
                for (int ni = 0; ni < nns; ni++) {
                    int64_t T = ts[ti], K = ks[ki], N = ns[ni];
                    float *wx = xmalloc((size_t)(N * K) * sizeof(float));
                    void *w = make_weights(dt, N * K, wx);
                    float *dout = rand_f32(T * N), *dx = rand_f32(T * K);
                    double *ref = xmalloc((size_t)(T * K) * sizeof(double));
                    double *mag = xmalloc((size_t)(T * K) * sizeof(double));
                    ref_product(ref, mag, dx, 1.0, dout, N, 1, wx, K, 1, T, N, K); /* dx + dout·w */
                    lorac_matmul_backward_input(dx, dout, w, dt, T, K, N);
                    double e = max_rel_err(dx, ref, mag, T * K);
                    if (!(e <= RTOL) && bad++ < 5)
                        fprintf(stderr, "  %s %s dx T=%lld K=%lld N=%lld: rel err %g\n", isa,
                                lorac_dtype_name(dt), (long long)T, (long long)K, (long long)N, e);
                    if (e > worst || e != e) worst = e;
                    /* the set form ignores dx's old values (NaN here) and
                     * gives the bits of zeroing first */
                    float *dz = xmalloc((size_t)(T * K + 1) * sizeof(float)), *ds = xmalloc((size_t)(T * K + 1) * sizeof(float));
                    for (int64_t i = 0; i < T * K; i++) dz[i] = 0.0f, ds[i] = NAN;
                    lorac_matmul_backward_input(dz, dout, w, dt, T, K, N);
                    lorac_matmul_backward_input_set(ds, dout, w, dt, T, K, N);
                    if (memcmp(dz, ds, sizeof(float) * (size_t)(T * K)) != 0 && bad++ < 5)
                        fprintf(stderr, "  %s %s dx set T=%lld K=%lld N=%lld: not the bits of zeroing first\n", isa,
                                lorac_dtype_name(dt), (long long)T, (long long)K, (long long)N);
                    free(wx), free(w), free(dout), free(dx), free(ref), free(mag), free(dz), free(ds);
                }
        printf("  %-13s %-8s %-4s max rel err %.3g\n", label, isa, lorac_dtype_name(dt), worst);
        CHECK_MSG(bad == 0, "%s %s %s: %d shapes out of tolerance", label, isa, lorac_dtype_name(dt), bad);
    }
}

static void test_backward_input(const char *isa) {
    test_backward_input_fn(isa, "bwd dx", TS, LEN(TS), KS, LEN(KS), NS, LEN(NS));
    /* an empty sum (N = 0): the set form still zeroes dx */
    float dx[6] = {NAN, NAN, NAN, NAN, NAN, NAN}, w[1] = {0}, dout[1] = {0};
    lorac_matmul_backward_input_set(dx, dout, w, LORAC_DTYPE_F32, 2, 3, 0);
    int zero = 1;
    for (int i = 0; i < 6; i++) zero &= dx[i] == 0.0f;
    CHECK_MSG(zero, "%s: dx set with N = 0 left old values", isa);
}

/* Row-major operands whose rows lie a multiple of 2 KB apart, with many
 * column panels per thread: the AVX2 path packs them (they alias in L1),
 * through the same kernel as the transposed ones. dout's rows of 512 in
 * dx, x's rows of 1024 in the batch forward (T >= 128 for its packed path). */
static void test_aliased_rows(const char *isa) {
    static const int64_t dt_[] = {13, 30}, dk[] = {600}, dn[] = {512};
    test_backward_input_fn(isa, "dx aliased", dt_, LEN(dt_), dk, LEN(dk), dn, LEN(dn));
    static const int64_t ft[] = {130}, fk[] = {1024}, fn[] = {520};
    test_forward_fn(isa, "fwd aliased", lorac_matmul_forward_batch, ft, LEN(ft), fk, LEN(fk), fn, LEN(fn));
}

/* Row counts above a pass's block of rows (1,032 on the AVX2 path: its
 * rows run as 2 x 1,050, each block packing every panel of b again; 514
 * rows, above the AVX-512 path's 510, run there as one block) and
 * outputs wide enough for 32 or more 16-column panels a thread (the AVX2
 * path then packs a's rows once for all of them), and both at once. K =
 * 37 and 130 rows leave a's packing a tail of l (not a whole 8) and a
 * group of fewer than 6 rows. */
static void test_row_blocks(const char *isa) {
    static const int64_t ft[] = {130, 514, 2100}, fk[] = {40, 37}, fn[] = {70, 1100};
    test_forward_fn(isa, "fwd blocks", lorac_matmul_forward_batch, ft, LEN(ft), fk, LEN(fk), fn, LEN(fn));
    static const int64_t dt_[] = {140, 514, 2100}, dk[] = {1100}, dn[] = {40};
    test_backward_input_fn(isa, "dx blocks", dt_, LEN(dt_), dk, LEN(dk), dn, LEN(dn));
    /* rows of w a page or more apart in every dtype (the AVX2 path packs
     * its panels several at a time there), the last group short */
    static const int64_t gt[] = {30}, gk[] = {2100}, gn[] = {40};
    test_backward_input_fn(isa, "dx far rows", gt, LEN(gt), gk, LEN(gk), gn, LEN(gn));
}

/* dw += doutᵀ·x over every (T, K, N) of the lists, against double. */
static void backward_weight_shapes(const char *isa, const char *label, const int64_t *ts, int nts, const int64_t *ks,
                                   int nks, const int64_t *ns, int nns) {
    double worst = 0, worst_b = 0;
    int bad = 0;
    for (int ti = 0; ti < nts; ti++)
        for (int ki = 0; ki < nks; ki++)
            for (int ni = 0; ni < nns; ni++) {
                int64_t T = ts[ti], K = ks[ki], N = ns[ni];
                float *dout = rand_f32(T * N), *x = rand_f32(T * K);
                float *dw = rand_f32(N * K), *dbias = rand_f32(N);
                double *ref = xmalloc((size_t)(N * K) * sizeof(double));
                double *mag = xmalloc((size_t)(N * K) * sizeof(double));
                double *refb = xmalloc((size_t)N * sizeof(double));
                double *magb = xmalloc((size_t)N * sizeof(double));
                ref_product(ref, mag, dw, 1.0, dout, 1, N, x, K, 1, N, T, K); /* dw + doutᵀ·x */
                for (int64_t n = 0; n < N; n++) {
                    double s = dbias[n], m = fabs(s);
                    for (int64_t t = 0; t < T; t++) s += dout[t * N + n], m += fabs(dout[t * N + n]);
                    refb[n] = s, magb[n] = m;
                }
                lorac_matmul_backward_weight(dw, dbias, dout, x, T, K, N);
                double e = max_rel_err(dw, ref, mag, N * K);
                double eb = max_rel_err(dbias, refb, magb, N);
                if (!(e <= RTOL && eb <= RTOL) && bad++ < 5)
                    fprintf(stderr, "  %s dw T=%lld K=%lld N=%lld: rel err %g, dbias %g\n", isa,
                            (long long)T, (long long)K, (long long)N, e, eb);
                if (e > worst || e != e) worst = e;
                if (eb > worst_b || eb != eb) worst_b = eb;
                free(dout), free(x), free(dw), free(dbias), free(ref), free(mag), free(refb), free(magb);
            }
    printf("  %-8s %-8s F32  max rel err %.3g (dbias %.3g)\n", label, isa, worst, worst_b);
    CHECK_MSG(bad == 0, "%s %s: %d shapes out of tolerance", isa, label, bad);
}

static void test_backward_weight(const char *isa) {
    backward_weight_shapes(isa, "bwd dw", TS, LEN(TS), KS, LEN(KS), NS, LEN(NS));
    /* a LoRA A's gradient: rank rows (one tile and a few rows more, which
     * the AVX2 path packs into a second tile), x's rows near or a page
     * and more apart */
    static const int64_t lt[] = {64, 515}, lk[] = {288, 2048}, ln[] = {7, 8, 11, 16};
    backward_weight_shapes(isa, "bwd dA", lt, LEN(lt), lk, LEN(lk), ln, LEN(ln));
    /* dbias NULL is allowed and dw still accumulates. */
    float d[2] = {1, 2}, xx[1] = {3}, g[2] = {10, 20};
    lorac_matmul_backward_weight(g, NULL, d, xx, 1, 1, 2);
    CHECK(g[0] == 13 && g[1] == 26);
}

/* ---- determinism --------------------------------------------------------- */

/* Same inputs → same bits, run to run and for 1, 2 and 3 threads. Shapes are
 * large enough to be split among threads and cross the T chunk (64). */
static void test_determinism(const char *isa) {
    static const int64_t shapes[][3] = {{1, 768, 2048}, {130, 288, 257}, {17, 1000, 100}, {200, 64, 640},
                                        {130, 1024, 520}, {30, 600, 512}, {300, 288, 8}, {300, 1000, 3},
                                        {2100, 40, 1100}};
    int saved = lorac_kernels_get_threads();
    for (int di = 0; di < LEN(DTYPES); di++)
        for (int si = 0; si < LEN(shapes); si++) {
            lorac_dtype_t dt = DTYPES[di];
            int64_t T = shapes[si][0], K = shapes[si][1], N = shapes[si][2];
            float *wx = xmalloc((size_t)(N * K) * sizeof(float));
            void *w = make_weights(dt, N * K, wx);
            float *x = rand_f32(T * K), *bias = rand_f32(N), *dout = rand_f32(T * N);
            float *dx0 = rand_f32(T * K), *dw0 = rand_f32(N * K);
            size_t so = (size_t)(T * N) * 4, sx = (size_t)(T * K) * 4, sw = (size_t)(N * K) * 4;
            float *o[4], *ob[4], *dx[4], *dw[4];
            for (int r = 0; r < 4; r++) {
                /* runs 0,1: 2 threads; run 2: 1 thread; run 3: 3 threads */
                lorac_kernels_set_threads(r == 2 ? 1 : r == 3 ? 3 : 2);
                o[r] = xmalloc(so), ob[r] = xmalloc(so), dx[r] = xmalloc(sx), dw[r] = xmalloc(sw);
                memcpy(dx[r], dx0, sx), memcpy(dw[r], dw0, sw);
                lorac_matmul_forward(o[r], x, w, dt, bias, T, K, N);
                lorac_matmul_forward_batch(ob[r], x, w, dt, bias, T, K, N);
                lorac_matmul_backward_input(dx[r], dout, w, dt, T, K, N);
                lorac_matmul_backward_weight(dw[r], NULL, dout, x, T, K, N);
            }
            for (int r = 1; r < 4; r++) {
                CHECK_MSG(memcmp(o[0], o[r], so) == 0, "%s %s forward run %d differs", isa,
                          lorac_dtype_name(dt), r);
                CHECK_MSG(memcmp(ob[0], ob[r], so) == 0, "%s %s forward_batch run %d differs", isa,
                          lorac_dtype_name(dt), r);
                CHECK_MSG(memcmp(dx[0], dx[r], sx) == 0, "%s %s dx run %d differs", isa,
                          lorac_dtype_name(dt), r);
                CHECK_MSG(memcmp(dw[0], dw[r], sw) == 0, "%s %s dw run %d differs", isa,
                          lorac_dtype_name(dt), r);
            }
            for (int r = 0; r < 4; r++) free(o[r]), free(ob[r]), free(dx[r]), free(dw[r]);
            free(wx), free(w), free(x), free(bias), free(dout), free(dx0), free(dw0);
        }
    lorac_kernels_set_threads(saved);
}

/* ---- conversion ----------------------------------------------------------- */

static int same_value(float a, float b) {
    if (a != a || b != b) return a != a && b != b; /* NaN payloads may be quietened */
    return memcmp(&a, &b, sizeof a) == 0;           /* bitwise: keeps -0 and subnormals */
}

static void test_convert(const char *isa) {
    uint16_t *h = xmalloc(65536 * sizeof(uint16_t));
    float *f = xmalloc(65536 * sizeof(float));
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    int bad_bf = 0, bad_f16 = 0, bad_f32 = 0;
    lorac_convert_to_f32(f, h, LORAC_DTYPE_BF16, 65536);
    for (int i = 0; i < 65536; i++) bad_bf += !same_value(f[i], lorac_bf16_to_f32(h[i]));
    lorac_convert_to_f32(f, h, LORAC_DTYPE_F16, 65536);
    for (int i = 0; i < 65536; i++) bad_f16 += !same_value(f[i], lorac_f16_to_f32(h[i]));
    CHECK_MSG(bad_bf == 0, "%s: %d bf16 patterns differ from lorac_bf16_to_f32", isa, bad_bf);
    CHECK_MSG(bad_f16 == 0, "%s: %d f16 patterns differ from lorac_f16_to_f32", isa, bad_f16);
    /* Specific f16 values: smallest subnormal, largest subnormal, inf, nan. */
    uint16_t sp[5] = {0x0001, 0x03ff, 0x7c00, 0xfc00, 0x7e00};
    float fs[5];
    lorac_convert_to_f32(fs, sp, LORAC_DTYPE_F16, 5);
    CHECK(fs[0] == 0x1p-24f && fs[1] == 1023 * 0x1p-24f);
    CHECK(isinf(fs[2]) && fs[2] > 0 && isinf(fs[3]) && fs[3] < 0 && isnan(fs[4]));
    /* Every length 0..40 at an odd offset: tails must not write past n. */
    float src32[48];
    for (int i = 0; i < 48; i++) src32[i] = frand();
    for (int n = 0; n <= 40; n++) {
        float dst[48];
        for (int i = 0; i < 48; i++) dst[i] = -7.0f;
        lorac_convert_to_f32(dst + 1, src32 + 3, LORAC_DTYPE_F32, n);
        int ok = dst[0] == -7.0f && dst[n + 1] == -7.0f;
        for (int i = 0; i < n; i++) ok &= dst[i + 1] == src32[i + 3];
        for (int i = 0; i < 48; i++) dst[i] = -7.0f;
        lorac_convert_to_f32(dst + 1, h + 0x3c01, LORAC_DTYPE_F16, n);
        ok &= dst[0] == -7.0f && dst[n + 1] == -7.0f;
        for (int i = 0; i < n; i++) ok &= dst[i + 1] == lorac_f16_to_f32(h[0x3c01 + i]);
        bad_f32 += !ok;
    }
    CHECK_MSG(bad_f32 == 0, "%s: %d tail lengths wrong", isa, bad_f32);
    free(h), free(f);
}

/* The vectorisable e^x of the softmax against libm in double. */
static void test_softmax_expf(void) {
    double worst = 0;
    for (int i = 0; i <= 870000; i++) {
        float x = -(float)i * 1e-4f;
        double ref = exp((double)x), got = softmax_expf(x);
        worst = fmax(worst, fabs(got - ref) / ref);
    }
    CHECK_MSG(worst < 4e-7, "softmax_expf max relative error %.3g", worst);
    CHECK(softmax_expf(0.0f) == 1.0f);
    CHECK(softmax_expf(-90.0f) == 0.0f && softmax_expf(-INFINITY) == 0.0f);
}

/* The path's exp_sum against libm in double: every length up to 40 (masked
 * tails), arguments over the whole range, -inf (a masked score) and below
 * -87 give 0, the sum is the sum of what was written. */
static void test_exp_sum(const char *isa) {
    const lorac_kernel_ops_t *ops = lorac_kernels_ops();
    float x[41];
    double worst = 0;
    int bad = 0;
    for (int n = 0; n <= 40; n++) {
        for (int rep = 0; rep < 50; rep++) {
            float in[41];
            for (int i = 0; i <= 40; i++) in[i] = x[i] = -(float)((rep * 41 + i * 37 + n) % 900) * 0.1f + 1e-3f * i;
            if (n > 3) x[3] = in[3] = -INFINITY;
            x[n] = in[n] = 123.0f; /* past the end: must stay untouched */
            double sum = ops->exp_sum(x, 0.5f, n), ref_sum = 0;
            for (int i = 0; i < n; i++) {
                double ref = in[i] - 0.5f < -87.0f ? 0.0 : exp((double)(in[i] - 0.5f));
                if (ref == 0.0) bad += x[i] != 0.0f;
                else worst = fmax(worst, fabs(x[i] - ref) / ref);
                ref_sum += x[i];
            }
            bad += x[n] != 123.0f;
            bad += fabs(sum - ref_sum) > 1e-12 * (ref_sum + 1);
        }
    }
    CHECK_MSG(worst < 4e-7 && bad == 0, "%s: exp_sum max relative error %.3g, %d wrong", isa, worst, bad);
}


/* ---- NF4 ------------------------------------------------------------------- */

/* Quantization as bitsandbytes decides it: x·(1/absmax) to the nearest of
 * the 16 values, a value exactly on a midpoint to the lower code, a block
 * of zeros to zeros; element 2j in byte j's high half. */
static void test_nf4_quantize(void) {
    const float *cb = lorac_nf4_codebook;
    for (int i = 0; i < 15; i++) CHECK(cb[i] < cb[i + 1]);
    CHECK(cb[0] == -1.0f && cb[7] == 0.0f && cb[15] == 1.0f);
    float v[64];
    uint8_t q[LORAC_NF4_BLOCK_BYTES];
    /* absmax 1 (v[63]): each codebook value, each midpoint, and just above it */
    for (int i = 0; i < 16; i++) v[i] = cb[i];
    for (int i = 0; i < 15; i++) {
        float mid = (float)(((double)cb[i] + cb[i + 1]) / 2);
        v[16 + i] = mid;
        v[31 + i] = nextafterf(mid, 2.0f);
    }
    for (int i = 46; i < 63; i++) v[i] = 0.01f * (float)(i - 54);
    v[63] = 1.0f;
    lorac_quantize_nf4(q, v, LORAC_DTYPE_F32, 64);
    float absmax;
    memcpy(&absmax, q, 4);
    CHECK(absmax == 1.0f);
    int bad = 0;
    for (int i = 0; i < 64; i++) {
        int code = (q[4 + i / 2] >> (i % 2 ? 0 : 4)) & 15;
        int want = i < 16 ? i : i < 31 ? i - 16 : i < 46 ? i - 30 : -1;
        if (want < 0) { /* the small values: nearest by distance */
            want = 0;
            for (int c = 1; c < 16; c++)
                if (fabsf(v[i] - cb[c]) < fabsf(v[i] - cb[want])) want = c;
        }
        if (code != want) bad++;
        if (lorac_nf4_value(q, i) != cb[code] * absmax) bad++;
    }
    CHECK_MSG(bad == 0, "nf4 quantize: %d codes wrong", bad);
    /* a block of zeros reads back as zeros; a short last block has its own absmax */
    float z[70] = {0};
    z[66] = -3.0f, z[67] = 3.0f; /* both ends of the codebook */
    uint8_t qz[2 * LORAC_NF4_BLOCK_BYTES];
    CHECK(lorac_dtype_bytes(LORAC_DTYPE_NF4, 70) == sizeof qz);
    lorac_quantize_nf4(qz, z, LORAC_DTYPE_F32, 70);
    for (int i = 0; i < 64; i++) CHECK(lorac_nf4_value(qz, i) == 0.0f);
    CHECK(lorac_nf4_value(qz, 66) == -3.0f && lorac_nf4_value(qz, 67) == 3.0f && lorac_nf4_value(qz, 64) == 0.0f);
    /* from BF16 the same codes as from its f32 values */
    uint16_t hb[64];
    float hf[64];
    for (int i = 0; i < 64; i++) hb[i] = lorac_f32_to_bf16(frand()), hf[i] = lorac_bf16_to_f32(hb[i]);
    uint8_t qa[LORAC_NF4_BLOCK_BYTES], qb[LORAC_NF4_BLOCK_BYTES];
    lorac_quantize_nf4(qa, hb, LORAC_DTYPE_BF16, 64);
    lorac_quantize_nf4(qb, hf, LORAC_DTYPE_F32, 64);
    CHECK(memcmp(qa, qb, sizeof qa) == 0);
}

/* Every product on an NF4 weight gives the bits of the same product on its
 * dequantized values in F32: the kernels read the same floats in the same
 * order. Row lengths K are multiples of 8 (lorac_nf4_supported), some not
 * of 64, so blocks run across rows. */
static void test_nf4_products(const char *isa) {
    static const int64_t ts[] = {1, 3, 17, 130};
    /* 64, 256, 7296: rows of whole blocks (7296: rows of 4 KB in NF4, whose dx panels are packed 4 at a time) */
    static const int64_t ks[] = {8, 64, 72, 256, 288, 1000, 7296};
    static const int64_t ns[] = {1, 5, 64, 100};
    int differ = 0, cases = 0;
    for (int ki = 0; ki < LEN(ks); ki++)
        for (int ni = 0; ni < LEN(ns); ni++) {
            int64_t K = ks[ki], N = ns[ni], R = 4;
            CHECK(lorac_nf4_supported(K));
            float *src = rand_f32(N * K), *deq = xmalloc(sizeof(float) * (size_t)(N * K));
            void *q = xmalloc(lorac_dtype_bytes(LORAC_DTYPE_NF4, N * K));
            lorac_quantize_nf4(q, src, LORAC_DTYPE_F32, N * K);
            for (int64_t i = 0; i < N * K; i++) deq[i] = lorac_nf4_value(q, i);
            float *conv = xmalloc(sizeof(float) * (size_t)(N * K));
            lorac_convert_to_f32(conv, q, LORAC_DTYPE_NF4, N * K);
            if (memcmp(conv, deq, sizeof(float) * (size_t)(N * K))) differ++;
            float *bias = rand_f32(N), *b = rand_f32(N * R), *a = rand_f32(R * K);
            for (int ti = 0; ti < LEN(ts); ti++) {
                int64_t T = ts[ti];
                float *x = rand_f32(T * K), *dout = rand_f32(T * N), *u = rand_f32(T * R), *du = rand_f32(T * R);
                float *o1 = xmalloc(sizeof(float) * (size_t)(T * N)), *o2 = xmalloc(sizeof(float) * (size_t)(T * N));
                float *d1 = rand_f32(T * K), *d2 = xmalloc(sizeof(float) * (size_t)(T * K));
                memcpy(d2, d1, sizeof(float) * (size_t)(T * K));
#define SAME(n, p, q_) differ += memcmp(p, q_, sizeof(float) * (size_t)(n)) != 0, cases++
                lorac_matmul_forward(o1, x, q, LORAC_DTYPE_NF4, bias, T, K, N);
                lorac_matmul_forward(o2, x, deq, LORAC_DTYPE_F32, bias, T, K, N);
                SAME(T * N, o1, o2);
                lorac_matmul_forward_batch(o1, x, q, LORAC_DTYPE_NF4, NULL, T, K, N);
                lorac_matmul_forward_batch(o2, x, deq, LORAC_DTYPE_F32, NULL, T, K, N);
                SAME(T * N, o1, o2);
                lorac_matmul_forward_train(o1, x, q, LORAC_DTYPE_NF4, NULL, bias, T, K, N, u, b, 0.5f, R);
                lorac_matmul_forward_train(o2, x, deq, LORAC_DTYPE_F32, NULL, bias, T, K, N, u, b, 0.5f, R);
                SAME(T * N, o1, o2);
                lorac_matmul_backward_input(d1, dout, q, LORAC_DTYPE_NF4, T, K, N);
                lorac_matmul_backward_input(d2, dout, deq, LORAC_DTYPE_F32, T, K, N);
                SAME(T * K, d1, d2);
                lorac_matmul_backward_input_set(d1, dout, q, LORAC_DTYPE_NF4, T, K, N);
                lorac_matmul_backward_input_set(d2, dout, deq, LORAC_DTYPE_F32, T, K, N);
                SAME(T * K, d1, d2);
                lorac_matmul_backward_input_train(d1, 0, dout, q, LORAC_DTYPE_NF4, NULL, T, K, N, du, a, R);
                lorac_matmul_backward_input_train(d2, 0, dout, deq, LORAC_DTYPE_F32, NULL, T, K, N, du, a, R);
                SAME(T * K, d1, d2);
#undef SAME
                free(x), free(dout), free(u), free(du), free(o1), free(o2), free(d1), free(d2);
            }
            free(src), free(deq), free(q), free(conv), free(bias), free(b), free(a);
        }
    printf("  nf4 products  %-8s      %d cases, %d differ from F32 on the dequantized weights\n", isa, cases, differ);
    CHECK_MSG(differ == 0, "%s nf4: %d products differ from F32 on the dequantized weights", isa, differ);
}

int main(void) {
    test_softmax_expf();
    printf("test_matmul: default path %s, %d threads\n", lorac_kernels_isa(),
           lorac_kernels_get_threads());
    CHECK(lorac_kernels_isa_available("portable"));
    CHECK(lorac_kernels_force_isa("no-such-isa") == -1);
    lorac_kernels_set_threads(3);
    CHECK(lorac_kernels_get_threads() == 3);
    lorac_kernels_set_threads(2);
    test_nf4_quantize();
    for (int i = 0; i < LEN(ISAS); i++) {
        if (tl_use_isa(ISAS[i]) != 0) continue;
        CHECK(strcmp(lorac_kernels_isa(), ISAS[i]) == 0);
        test_forward_shapes(ISAS[i]);
        test_exp_sum(ISAS[i]);
        test_lora_expand(ISAS[i]);
        test_fused_lora(ISAS[i]);
        test_forward_parts(ISAS[i]);
        test_forward_parts_lora(ISAS[i]);
        test_forward_degenerate();
        test_backward_input(ISAS[i]);
        test_aliased_rows(ISAS[i]);
        test_row_blocks(ISAS[i]);
        test_backward_weight(ISAS[i]);
        test_determinism(ISAS[i]);
        test_convert(ISAS[i]);
        test_nf4_products(ISAS[i]);
    }
    return tl_finish("test_matmul");
}
