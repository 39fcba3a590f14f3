/* lorac/linalg.h: dense SVD (reconstruction, orthogonality, order),
 * randomized SVD (exact low rank, decaying spectrum against the dense SVD,
 * determinism), the SVD of a low-rank product, and degenerate shapes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lorac/linalg.h"
#include "testlib.h"

static double *random_matrix(int64_t m, int64_t n, uint64_t seed) {
    lorac_rng_t rng;
    lorac_rng_seed(&rng, seed);
    double *a = malloc(sizeof(double) * (size_t)(m * n + 1));
    for (int64_t i = 0; i < m * n; i++) a[i] = lorac_rng_normal(&rng);
    return a;
}

static double frob(const double *a, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * a[i];
    return sqrt(s);
}

/* max |U·diag(S)·Vᵀ − A| / max(1, max |A|) for U (m,k), V (n,k). */
static double reconstruction_error(const double *A, const double *U, const double *S, const double *V, int64_t m,
                                   int64_t n, int64_t k) {
    double err = 0, amax = 1;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double acc = 0;
            for (int64_t t = 0; t < k; t++) acc += U[i * k + t] * S[t] * V[j * k + t];
            err = fmax(err, fabs(acc - A[i * n + j]));
            amax = fmax(amax, fabs(A[i * n + j]));
        }
    return err / amax;
}

/* max |XᵀX − I| for X (rows, k) row-major. */
static double orthogonality_error(const double *X, int64_t rows, int64_t k) {
    double err = 0;
    for (int64_t a = 0; a < k; a++)
        for (int64_t b = 0; b < k; b++) {
            double acc = 0;
            for (int64_t i = 0; i < rows; i++) acc += X[i * k + a] * X[i * k + b];
            err = fmax(err, fabs(acc - (a == b ? 1.0 : 0.0)));
        }
    return err;
}

static int descending_nonneg(const double *S, int64_t k) {
    for (int64_t i = 0; i < k; i++)
        if (S[i] < 0 || (i > 0 && S[i] > S[i - 1])) return 0;
    return 1;
}

static void check_dense(int64_t m, int64_t n, const double *A, const char *label) {
    int64_t k = m < n ? m : n;
    double *U = malloc(sizeof(double) * (size_t)(m * k)), *S = malloc(sizeof(double) * (size_t)k),
           *V = malloc(sizeof(double) * (size_t)(n * k));
    CHECK(lorac_svd_dense(A, m, n, U, S, V) == LORAC_STATUS_OK);
    double rec = reconstruction_error(A, U, S, V, m, n, k);
    double ou = orthogonality_error(U, m, k), ov = orthogonality_error(V, n, k);
    CHECK_MSG(rec <= 1e-12, "%s (%lld x %lld): reconstruction error %.3g", label, (long long)m, (long long)n, rec);
    CHECK_MSG(ou <= 1e-12 && ov <= 1e-12, "%s (%lld x %lld): |UᵀU-I| %.3g |VᵀV-I| %.3g", label, (long long)m,
              (long long)n, ou, ov);
    CHECK_MSG(descending_nonneg(S, k), "%s: singular values not descending", label);
    /* only S wanted: the same values */
    double *S2 = malloc(sizeof(double) * (size_t)k);
    CHECK(lorac_svd_dense(A, m, n, NULL, S2, NULL) == LORAC_STATUS_OK);
    double d = 0;
    for (int64_t i = 0; i < k; i++) d = fmax(d, fabs(S2[i] - S[i]));
    CHECK_MSG(d <= 1e-12 * fmax(1.0, S[0]), "%s: S without U, V differs by %.3g", label, d);
    free(U); free(S); free(V); free(S2);
}

static void test_dense_random(void) {
    static const int64_t shapes[][2] = {{1, 1}, {1, 7}, {7, 1}, {5, 5}, {12, 5}, {5, 12}, {40, 17}, {17, 40}, {64, 64}, {3, 100}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        double *A = random_matrix(shapes[i][0], shapes[i][1], 100 + i);
        check_dense(shapes[i][0], shapes[i][1], A, "random");
        free(A);
    }
}

/* A known spectrum: U0·diag(s)·V0ᵀ from orthonormal factors of random
 * matrices, with repeated and zero singular values. */
static void test_dense_known_spectrum(void) {
    int64_t m = 30, n = 20, k = 20;
    double *G1 = random_matrix(m, k, 7), *G2 = random_matrix(n, k, 8);
    double *U0 = malloc(sizeof(double) * (size_t)(m * k)), *V0 = malloc(sizeof(double) * (size_t)(n * k)),
           *S0 = malloc(sizeof(double) * (size_t)k), *scr = malloc(sizeof(double) * (size_t)k);
    /* orthonormal factors from this library's own SVD are fine here: the
     * check is that the values come back */
    CHECK(lorac_svd_dense(G1, m, k, U0, scr, NULL) == LORAC_STATUS_OK);
    CHECK(lorac_svd_dense(G2, n, k, V0, scr, NULL) == LORAC_STATUS_OK);
    double spec[20] = {9, 7, 7, 7, 3, 1e-3, 1e-6, 1e-9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    double *A = calloc((size_t)(m * n), sizeof(double));
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++)
            for (int64_t t = 0; t < k; t++) A[i * n + j] += U0[i * k + t] * spec[t] * V0[j * k + t];
    check_dense(m, n, A, "known spectrum");
    CHECK(lorac_svd_dense(A, m, n, NULL, S0, NULL) == LORAC_STATUS_OK);
    double worst = 0;
    for (int64_t i = 0; i < k; i++) worst = fmax(worst, fabs(S0[i] - spec[i]));
    CHECK_MSG(worst <= 1e-13, "known spectrum recovered to %.3g", worst);
    free(G1); free(G2); free(U0); free(V0); free(S0); free(scr); free(A);
}

static void test_dense_degenerate(void) {
    double zero[12] = {0};
    check_dense(3, 4, zero, "zero 3x4");
    check_dense(4, 3, zero, "zero 4x3");
    double one[1] = {-2.5};
    double u, s, v;
    CHECK(lorac_svd_dense(one, 1, 1, &u, &s, &v) == LORAC_STATUS_OK);
    CHECK_NEAR(s, 2.5, 1e-15);
    CHECK_NEAR(u * s * v, -2.5, 1e-15);
    double row[3] = {3, 0, 4}, S[1], U[1], V[3];
    CHECK(lorac_svd_dense(row, 1, 3, U, S, V) == LORAC_STATUS_OK);
    CHECK_NEAR(S[0], 5.0, 1e-14);
    /* rank one with a zero column in the middle */
    double r1[6] = {1, 0, 2, 2, 0, 4};
    check_dense(2, 3, r1, "rank one");
    CHECK(lorac_svd_dense(zero, 0, 3, NULL, S, NULL) == LORAC_STATUS_OK);
    double bad[2] = {1, NAN};
    CHECK(lorac_svd_dense(bad, 1, 2, NULL, S, NULL) == LORAC_STATUS_INVALID_ARG);
    CHECK(lorac_svd_dense(row, -1, 3, NULL, S, NULL) == LORAC_STATUS_INVALID_ARG);
}

/* ---- randomized ----------------------------------------------------------- */

typedef struct {
    const double *A;
    int64_t m, n;
    int calls;
} dense_op_t;

static void dense_apply(void *self, const double *X, double *Y, int64_t k) {
    dense_op_t *d = self;
    d->calls++;
    for (int64_t i = 0; i < d->m; i++)
        for (int64_t c = 0; c < k; c++) {
            double acc = 0;
            for (int64_t j = 0; j < d->n; j++) acc += d->A[i * d->n + j] * X[j * k + c];
            Y[i * k + c] = acc;
        }
}

static void dense_apply_t(void *self, const double *X, double *Y, int64_t k) {
    dense_op_t *d = self;
    d->calls++;
    for (int64_t j = 0; j < d->n; j++)
        for (int64_t c = 0; c < k; c++) {
            double acc = 0;
            for (int64_t i = 0; i < d->m; i++) acc += d->A[i * d->n + j] * X[i * k + c];
            Y[j * k + c] = acc;
        }
}

/* A (m, n) = Σ_t spec[t]·u_t·v_tᵀ with random orthonormal u, v. */
static double *matrix_with_spectrum(int64_t m, int64_t n, const double *spec, int64_t k, uint64_t seed) {
    double *G1 = random_matrix(m, k, seed), *G2 = random_matrix(n, k, seed + 1);
    double *U0 = malloc(sizeof(double) * (size_t)(m * k)), *V0 = malloc(sizeof(double) * (size_t)(n * k)),
           *scr = malloc(sizeof(double) * (size_t)k);
    lorac_svd_dense(G1, m, k, U0, scr, NULL);
    lorac_svd_dense(G2, n, k, V0, scr, NULL);
    double *A = calloc((size_t)(m * n), sizeof(double));
    for (int64_t i = 0; i < m; i++)
        for (int64_t t = 0; t < k; t++) {
            double c = U0[i * k + t] * spec[t];
            for (int64_t j = 0; j < n; j++) A[i * n + j] += c * V0[j * k + t];
        }
    free(G1); free(G2); free(U0); free(V0); free(scr);
    return A;
}

static void test_randomized_exact_rank(void) {
    int64_t m = 120, n = 80, k = 6;
    double spec[6] = {50, 20, 5, 1, 0.3, 0.01};
    double *A = matrix_with_spectrum(m, n, spec, k, 11);
    dense_op_t d = {A, m, n, 0};
    lorac_linop_t op = {m, n, dense_apply, dense_apply_t, &d};
    double *U = malloc(sizeof(double) * (size_t)(m * k)), *S = malloc(sizeof(double) * (size_t)k),
           *V = malloc(sizeof(double) * (size_t)(n * k));
    CHECK(lorac_svd_randomized(&op, k, 10, 2, 42, U, S, V) == LORAC_STATUS_OK);
    double worst = 0;
    for (int64_t i = 0; i < k; i++) worst = fmax(worst, fabs(S[i] - spec[i]) / spec[0]);
    CHECK_MSG(worst <= 1e-10, "exact rank %lld: S recovered to %.3g relative", (long long)k, worst);
    CHECK_MSG(reconstruction_error(A, U, S, V, m, n, k) <= 1e-10, "exact rank reconstruction %.3g",
              reconstruction_error(A, U, S, V, m, n, k));
    CHECK(orthogonality_error(U, m, k) <= 1e-12 && orthogonality_error(V, n, k) <= 1e-12);
    CHECK_MSG(d.calls == 6, "1 + 2·2 + 1 products expected, got %d", d.calls);
    /* without oversampling and power iterations it is still exact */
    CHECK(lorac_svd_randomized(&op, k, 0, 0, 1, NULL, S, NULL) == LORAC_STATUS_OK);
    worst = 0;
    for (int64_t i = 0; i < k; i++) worst = fmax(worst, fabs(S[i] - spec[i]) / spec[0]);
    CHECK_MSG(worst <= 1e-10, "exact rank, no oversampling: %.3g", worst);
    free(A); free(U); free(S); free(V);
}

static void test_randomized_decaying(void) {
    int64_t m = 90, n = 150, full = 90, k = 8;
    double *spec = malloc(sizeof(double) * (size_t)full);
    for (int64_t i = 0; i < full; i++) spec[i] = pow(0.7, (double)i);
    double *A = matrix_with_spectrum(m, n, spec, full, 21);
    double *Sd = malloc(sizeof(double) * (size_t)full);
    CHECK(lorac_svd_dense(A, m, n, NULL, Sd, NULL) == LORAC_STATUS_OK);
    dense_op_t d = {A, m, n, 0};
    lorac_linop_t op = {m, n, dense_apply, dense_apply_t, &d};
    double *U = malloc(sizeof(double) * (size_t)(m * k)), *S = malloc(sizeof(double) * (size_t)k),
           *V = malloc(sizeof(double) * (size_t)(n * k));
    CHECK(lorac_svd_randomized(&op, k, 10, 3, 5, U, S, V) == LORAC_STATUS_OK);
    double worst = 0;
    for (int64_t i = 0; i < k; i++) worst = fmax(worst, fabs(S[i] - Sd[i]) / Sd[i]);
    CHECK_MSG(worst <= 1e-8, "decaying spectrum: top-%lld values within %.3g of the dense SVD", (long long)k, worst);
    /* residual ||A − U S Vᵀ||_F² against Eckart–Young's Σ dropped σ² */
    double *R = malloc(sizeof(double) * (size_t)(m * n)), opt = 0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double acc = 0;
            for (int64_t t = 0; t < k; t++) acc += U[i * k + t] * S[t] * V[j * k + t];
            R[i * n + j] = A[i * n + j] - acc;
        }
    for (int64_t i = k; i < full; i++) opt += Sd[i] * Sd[i];
    double res = frob(R, m * n);
    CHECK_MSG(res * res <= opt * (1 + 1e-6), "residual² %.9g vs optimal %.9g", res * res, opt);
    /* deterministic for a seed, different for another */
    double *S2 = malloc(sizeof(double) * (size_t)k), *U2 = malloc(sizeof(double) * (size_t)(m * k));
    CHECK(lorac_svd_randomized(&op, k, 10, 3, 5, U2, S2, NULL) == LORAC_STATUS_OK);
    CHECK(memcmp(S, S2, sizeof(double) * (size_t)k) == 0 && memcmp(U, U2, sizeof(double) * (size_t)(m * k)) == 0);
    CHECK(lorac_svd_randomized(&op, k, 2, 0, 6, NULL, S2, NULL) == LORAC_STATUS_OK);
    CHECK(memcmp(S, S2, sizeof(double) * (size_t)k) != 0);
    free(spec); free(A); free(Sd); free(U); free(S); free(V); free(R); free(S2); free(U2);
}

static void test_randomized_degenerate(void) {
    double zero[20] = {0};
    dense_op_t d = {zero, 4, 5, 0};
    lorac_linop_t op = {4, 5, dense_apply, dense_apply_t, &d};
    double U[16], S[4], V[20];
    CHECK(lorac_svd_randomized(&op, 4, 10, 2, 1, U, S, V) == LORAC_STATUS_OK);
    CHECK(S[0] == 0 && S[3] == 0);
    CHECK(orthogonality_error(U, 4, 4) <= 1e-12);
    CHECK(lorac_svd_randomized(&op, 5, 0, 0, 1, U, S, V) == LORAC_STATUS_INVALID_ARG);
    CHECK(lorac_svd_randomized(&op, 0, 0, 0, 1, U, S, V) == LORAC_STATUS_OK);
    /* m = 1 and n = 1 */
    double row[5] = {1, 2, 3, 4, 5};
    dense_op_t dr = {row, 1, 5, 0};
    lorac_linop_t opr = {1, 5, dense_apply, dense_apply_t, &dr};
    CHECK(lorac_svd_randomized(&opr, 1, 10, 2, 1, U, S, V) == LORAC_STATUS_OK);
    CHECK_NEAR(S[0], sqrt(55.0), 1e-13);
    dense_op_t dc = {row, 5, 1, 0};
    lorac_linop_t opc = {5, 1, dense_apply, dense_apply_t, &dc};
    CHECK(lorac_svd_randomized(&opc, 1, 10, 2, 1, U, S, V) == LORAC_STATUS_OK);
    CHECK_NEAR(S[0], sqrt(55.0), 1e-13);
    CHECK(reconstruction_error(row, U, S, V, 5, 1, 1) <= 1e-14);
    double bad[4] = {1, INFINITY, 0, 0};
    dense_op_t db = {bad, 2, 2, 0};
    lorac_linop_t opb = {2, 2, dense_apply, dense_apply_t, &db};
    CHECK(lorac_svd_randomized(&opb, 1, 1, 1, 1, U, S, V) == LORAC_STATUS_INVALID_ARG);
}

/* ---- low-rank products ------------------------------------------------------- */

static void check_lowrank(int64_t out, int64_t r, int64_t in, uint64_t seed) {
    double *B = random_matrix(out, r, seed), *A = random_matrix(r, in, seed + 50);
    double *P = calloc((size_t)(out * in), sizeof(double));
    for (int64_t i = 0; i < out; i++)
        for (int64_t t = 0; t < r; t++)
            for (int64_t j = 0; j < in; j++) P[i * in + j] += B[i * r + t] * A[t * in + j];
    int64_t k = out < in ? out : in;
    double *Sd = malloc(sizeof(double) * (size_t)k), *S = malloc(sizeof(double) * (size_t)r);
    double *U = malloc(sizeof(double) * (size_t)(out * r)), *V = malloc(sizeof(double) * (size_t)(in * r));
    CHECK(lorac_svd_dense(P, out, in, NULL, Sd, NULL) == LORAC_STATUS_OK);
    CHECK(lorac_svd_lowrank(B, A, out, r, in, U, S, V) == LORAC_STATUS_OK);
    double worst = 0;
    for (int64_t i = 0; i < r; i++) worst = fmax(worst, fabs(S[i] - (i < k ? Sd[i] : 0.0)));
    CHECK_MSG(worst <= 1e-12 * Sd[0], "lowrank (%lld,%lld,%lld): values differ from the dense SVD by %.3g",
              (long long)out, (long long)r, (long long)in, worst);
    double rec = reconstruction_error(P, U, S, V, out, in, r);
    CHECK_MSG(rec <= 1e-12, "lowrank (%lld,%lld,%lld): reconstruction %.3g", (long long)out, (long long)r, (long long)in, rec);
    /* the f32 entry point with a scale */
    float *Bf = malloc(sizeof(float) * (size_t)(out * r)), *Af = malloc(sizeof(float) * (size_t)(r * in));
    for (int64_t i = 0; i < out * r; i++) { Bf[i] = (float)B[i]; B[i] = Bf[i]; }
    for (int64_t i = 0; i < r * in; i++) { Af[i] = (float)A[i]; A[i] = Af[i]; }
    double *S2 = malloc(sizeof(double) * (size_t)r);
    CHECK(lorac_svd_lowrank(B, A, out, r, in, NULL, S, NULL) == LORAC_STATUS_OK);
    CHECK(lorac_lowrank_singular_values(Bf, Af, out, r, in, -0.5, S2) == LORAC_STATUS_OK);
    worst = 0;
    for (int64_t i = 0; i < r; i++) worst = fmax(worst, fabs(S2[i] - 0.5 * S[i]));
    CHECK_MSG(worst <= 1e-12 * S[0], "f32 singular values differ by %.3g", worst);
    free(B); free(A); free(P); free(Sd); free(S); free(U); free(V); free(Bf); free(Af); free(S2);
}

static void test_lowrank(void) {
    check_lowrank(40, 4, 30, 1);
    check_lowrank(30, 8, 50, 2);
    check_lowrank(6, 10, 9, 3);  /* r > out: the extra values are zero */
    check_lowrank(1, 3, 7, 4);
    check_lowrank(7, 3, 1, 5);
    /* a zero factor */
    double B[6] = {0}, A[6] = {1, 2, 3, 4, 5, 6}, S[2], U[6], V[6];
    CHECK(lorac_svd_lowrank(B, A, 3, 2, 3, U, S, V) == LORAC_STATUS_OK);
    CHECK(S[0] == 0 && S[1] == 0);
}

int main(void) {
    test_dense_random();
    test_dense_known_spectrum();
    test_dense_degenerate();
    test_randomized_exact_rank();
    test_randomized_decaying();
    test_randomized_degenerate();
    test_lowrank();
    return tl_finish("test_linalg");
}
