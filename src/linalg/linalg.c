/* Dense linear algebra for adapters, in double precision: thin SVD by
 * one-sided Jacobi, Householder QR, the randomized truncated SVD of an
 * operator (Halko, Martinsson and Tropp, "Finding structure with
 * randomness", algorithms 4.4 and 5.1) and the SVD of a low-rank product.
 *
 * Inside this file matrices are kept column-major ("colmajor"): column j of
 * an (m, n) matrix is c[j*m .. j*m + m). Jacobi rotations and Householder
 * reflections both work on whole columns, which are then contiguous. Note
 * that the column-major form of a row-major (m, n) matrix is the row-major
 * buffer of its transpose, which saves copies below. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lorac/linalg.h"

/* One-sided Jacobi stops rotating a pair of columns once their cosine is
 * below this: a few units in the last place. */
#define JACOBI_TOL 1e-15
/* Quadratic convergence makes ~10 sweeps typical; this only bounds a
 * pathological input. */
#define JACOBI_MAX_SWEEPS 80

static double dot(const double *a, const double *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy(double *y, double a, const double *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* dst (cols, rows) = srcᵀ for src (rows, cols), both row-major. */
static void transpose(double *dst, const double *src, int64_t rows, int64_t cols) {
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) dst[j * rows + i] = src[i * cols + j];
}

static double *alloc_doubles(int64_t n) {
    return malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
}

static int all_finite(const double *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* ---- Householder QR ------------------------------------------------------ */

/* Thin QR of the colmajor (m, n) matrix `a` (overwritten by the reflectors):
 * Q colmajor (m, p) with orthonormal columns, R colmajor (p, n) upper
 * trapezoidal, p = min(m, n). Q or R may be NULL. Householder rather than
 * Gram-Schmidt because rank-deficient inputs (an exactly low-rank matrix
 * sampled with oversampling, a zero matrix) still give an orthonormal Q. */
static lorac_status_t qr_colmajor(double *a, int64_t m, int64_t n, double *Q, double *R) {
    int64_t p = m < n ? m : n;
    double *beta = alloc_doubles(p), *rdiag = alloc_doubles(p);
    if (!beta || !rdiag) { free(beta); free(rdiag); return lorac_error(LORAC_STATUS_NOMEM, "out of memory for a QR factorisation"); }
    for (int64_t j = 0; j < p; j++) {
        double *v = a + j * m + j;
        int64_t len = m - j;
        double norm = sqrt(dot(v, v, len));
        if (norm == 0) { beta[j] = 0; rdiag[j] = 0; continue; }
        /* reflect x onto -sign(x0)·|x|·e0, the choice without cancellation */
        double alpha = v[0] >= 0 ? -norm : norm;
        v[0] -= alpha;
        beta[j] = 1.0 / (norm * (norm + fabs(v[0] + alpha))); /* 2 / vᵀv */
        rdiag[j] = alpha;
        for (int64_t c = j + 1; c < n; c++) {
            double *col = a + c * m + j;
            axpy(col, -beta[j] * dot(v, col, len), v, len);
        }
    }
    if (R) {
        memset(R, 0, sizeof(double) * (size_t)(p * n));
        for (int64_t c = 0; c < n; c++)
            for (int64_t i = 0; i < p && i <= c; i++) R[c * p + i] = i == c ? rdiag[c] : a[c * m + i];
    }
    if (Q) {
        /* Q = H_0 ··· H_{p-1} applied to the first p columns of I, last
         * reflector first; H_j leaves columns c < j alone (they are zero in
         * rows >= j at that point) */
        memset(Q, 0, sizeof(double) * (size_t)(m * p));
        for (int64_t c = 0; c < p; c++) Q[c * m + c] = 1.0;
        for (int64_t j = p - 1; j >= 0; j--) {
            if (beta[j] == 0) continue;
            const double *v = a + j * m + j;
            for (int64_t c = j; c < p; c++) {
                double *col = Q + c * m + j;
                axpy(col, -beta[j] * dot(v, col, m - j), v, m - j);
            }
        }
    }
    free(beta);
    free(rdiag);
    return LORAC_STATUS_OK;
}

/* Replaces the row-major (m, k) matrix Y (m >= k) by an orthonormal basis
 * of its column space (row-major, same shape). scratch holds 2·m·k. */
static lorac_status_t orthonormalize_rows(double *Y, int64_t m, int64_t k, double *scratch) {
    double *a = scratch, *q = scratch + m * k;
    transpose(a, Y, m, k); /* colmajor Y */
    lorac_status_t s = qr_colmajor(a, m, k, q, NULL);
    if (s) return s;
    transpose(Y, q, k, m);
    return LORAC_STATUS_OK;
}

/* ---- one-sided Jacobi ------------------------------------------------------ */

/* Rotates columns of the colmajor (m, n) matrix G (and of V, colmajor
 * (n, n), when given) until they are mutually orthogonal: then G = U·diag(S)
 * with S the column norms. Hestenes' method; the rotation angle is chosen
 * as in Demmel and Veselić (1992), which keeps it accurate for tiny
 * singular values. */
static void jacobi_orthogonalize(double *G, int64_t m, int64_t n, double *V) {
    for (int sweep = 0; sweep < JACOBI_MAX_SWEEPS; sweep++) {
        int rotated = 0;
        for (int64_t p = 0; p + 1 < n; p++)
            for (int64_t q = p + 1; q < n; q++) {
                double *gp = G + p * m, *gq = G + q * m;
                double alpha = dot(gp, gp, m), beta = dot(gq, gq, m), gamma = dot(gp, gq, m);
                if (gamma == 0 || fabs(gamma) <= JACOBI_TOL * sqrt(alpha) * sqrt(beta)) continue;
                rotated = 1;
                double zeta = (beta - alpha) / (2 * gamma);
                double t = (zeta >= 0 ? 1.0 : -1.0) / (fabs(zeta) + hypot(1.0, zeta));
                double c = 1.0 / sqrt(1 + t * t), s = c * t;
                for (int64_t i = 0; i < m; i++) {
                    double x = gp[i], y = gq[i];
                    gp[i] = c * x - s * y;
                    gq[i] = s * x + c * y;
                }
                if (V) {
                    double *vp = V + p * n, *vq = V + q * n;
                    for (int64_t i = 0; i < n; i++) {
                        double x = vp[i], y = vq[i];
                        vp[i] = c * x - s * y;
                        vq[i] = s * x + c * y;
                    }
                }
            }
        if (!rotated) break;
    }
}

/* Makes column j of the colmajor (m, n) matrix U a unit vector orthogonal
 * to every column whose index is in done[0..n_done): for the left vectors of
 * zero singular values, which Jacobi leaves as zero columns. Tries the unit
 * vectors e_0, e_1, ... and keeps the first that stays long after two
 * rounds of Gram-Schmidt (one of them does, since n_done < m). */
static void complete_column(double *U, int64_t m, int64_t j, const int64_t *done, int64_t n_done) {
    double *u = U + j * m;
    for (int64_t e = 0; e < m; e++) {
        memset(u, 0, sizeof(double) * (size_t)m);
        u[e] = 1.0;
        for (int round = 0; round < 2; round++)
            for (int64_t d = 0; d < n_done; d++) {
                const double *o = U + done[d] * m;
                axpy(u, -dot(o, u, m), o, m);
            }
        double norm = sqrt(dot(u, u, m));
        if (norm > 0.5) {
            for (int64_t i = 0; i < m; i++) u[i] /= norm;
            return;
        }
    }
}

/* SVD of the colmajor (m, n) matrix G with m >= n (G is overwritten):
 * Uc colmajor (m, n), S (n) descending, Vc colmajor (n, n); Uc/Vc may be
 * NULL. A tall G is first reduced to its n×n triangle R (G = Q·R), so the
 * O(sweeps·n²) Jacobi passes run over n-long columns instead of m-long. */
static lorac_status_t svd_tall(double *G, int64_t m, int64_t n, double *Uc, double *S, double *Vc) {
    lorac_status_t s = LORAC_STATUS_OK;
    double *Q = NULL, *R = NULL, *V = alloc_doubles(n * n), *W = NULL;
    int64_t *order = malloc(sizeof(int64_t) * (size_t)(n ? n : 1)), *done = malloc(sizeof(int64_t) * (size_t)(n ? n : 1));
    if (!V || !order || !done) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory for an SVD"); goto out; }
    double *work = G; /* the matrix Jacobi rotates: G itself or R */
    int64_t rows = m;
    if (m > n) {
        Q = alloc_doubles(m * n);
        R = alloc_doubles(n * n);
        if (!Q || !R) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory for an SVD"); goto out; }
        if ((s = qr_colmajor(G, m, n, Q, R))) goto out;
        work = R;
        rows = n;
    }
    memset(V, 0, sizeof(double) * (size_t)(n * n));
    for (int64_t i = 0; i < n; i++) V[i * n + i] = 1.0;
    jacobi_orthogonalize(work, rows, n, V);

    /* singular values are the column norms; order them descending
     * (insertion sort: n is small and ties keep their order) */
    for (int64_t j = 0; j < n; j++) {
        S[j] = sqrt(dot(work + j * rows, work + j * rows, rows));
        order[j] = j;
    }
    for (int64_t i = 1; i < n; i++)
        for (int64_t j = i; j > 0 && S[order[j]] > S[order[j - 1]]; j--) {
            int64_t t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
        }
    double *sorted = alloc_doubles(n);
    if (!sorted) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory for an SVD"); goto out; }
    for (int64_t j = 0; j < n; j++) sorted[j] = S[order[j]];
    memcpy(S, sorted, sizeof(double) * (size_t)n);
    free(sorted);
    if (Vc)
        for (int64_t j = 0; j < n; j++) memcpy(Vc + j * n, V + order[j] * n, sizeof(double) * (size_t)n);
    if (!Uc) goto out;

    /* left vectors: normalised columns of the rotated matrix (in the R
     * case, mapped back through Q) */
    W = alloc_doubles(rows * n);
    if (!W) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory for an SVD"); goto out; }
    int64_t n_done = 0;
    for (int64_t j = 0; j < n; j++) {
        const double *g = work + order[j] * rows;
        double *w = W + j * rows;
        if (S[j] > 0) {
            for (int64_t i = 0; i < rows; i++) w[i] = g[i] / S[j];
            done[n_done++] = j;
        }
    }
    for (int64_t j = 0; j < n; j++)
        if (!(S[j] > 0)) { complete_column(W, rows, j, done, n_done); done[n_done++] = j; }
    if (m > n) {
        /* Uc = Q · W, W (n, n) */
        memset(Uc, 0, sizeof(double) * (size_t)(m * n));
        for (int64_t j = 0; j < n; j++)
            for (int64_t t = 0; t < n; t++) axpy(Uc + j * m, W[j * n + t], Q + t * m, m);
    } else {
        memcpy(Uc, W, sizeof(double) * (size_t)(m * n));
    }
out:
    free(Q); free(R); free(V); free(W); free(order); free(done);
    return s;
}

lorac_status_t lorac_svd_dense(const double *A, int64_t m, int64_t n, double *U, double *S, double *V) {
    if (m < 0 || n < 0) return lorac_error(LORAC_STATUS_INVALID_ARG, "SVD of a (%lld, %lld) matrix", (long long)m, (long long)n);
    if (m == 0 || n == 0) return LORAC_STATUS_OK;
    if (!all_finite(A, m * n)) return lorac_error(LORAC_STATUS_INVALID_ARG, "SVD input has a non-finite entry");
    /* work on the tall one of A and Aᵀ: for m >= n the colmajor A is
     * transpose(A); for m < n the colmajor Aᵀ is A's own buffer, and
     * A = V·S·Uᵀ swaps the roles of the two factors */
    int tall = m >= n;
    int64_t rows = tall ? m : n, k = tall ? n : m;
    double *G = alloc_doubles(m * n), *Uc = alloc_doubles(rows * k), *Vc = alloc_doubles(k * k);
    lorac_status_t s = LORAC_STATUS_OK;
    if (!G || !Uc || !Vc) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory for a %lld x %lld SVD", (long long)m, (long long)n); goto out; }
    if (tall) transpose(G, A, m, n);
    else memcpy(G, A, sizeof(double) * (size_t)(m * n));
    if ((s = svd_tall(G, rows, k, Uc, S, Vc))) goto out;
    double *left = tall ? U : V, *right = tall ? V : U;
    if (left) transpose(left, Uc, k, rows);  /* row-major (rows, k) */
    if (right) transpose(right, Vc, k, k);   /* row-major (k, k) */
out:
    free(G); free(Uc); free(Vc);
    return s;
}

/* ---- randomized SVD ------------------------------------------------------- */

/* Y = op·X (or opᵀ·X), then a check that the operator gave finite numbers. */
static lorac_status_t apply_op(const lorac_linop_t *op, int transposed, const double *X, double *Y, int64_t l) {
    if (transposed) op->apply_t(op->self, X, Y, l);
    else op->apply(op->self, X, Y, l);
    int64_t rows = transposed ? op->n : op->m;
    if (!all_finite(Y, rows * l)) return lorac_error(LORAC_STATUS_INVALID_ARG, "the matrix has a non-finite entry");
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_svd_randomized(const lorac_linop_t *op, int64_t k, int64_t oversample, int32_t power_iters,
                                    uint64_t seed, double *U, double *S, double *V) {
    int64_t m = op->m, n = op->n, mn = m < n ? m : n;
    if (m < 0 || n < 0 || k < 0 || k > mn || oversample < 0 || power_iters < 0)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "randomized SVD of rank %lld (oversample %lld, %d power iterations) of a (%lld, %lld) matrix",
                           (long long)k, (long long)oversample, power_iters, (long long)m, (long long)n);
    if (k == 0) return LORAC_STATUS_OK;
    int64_t l = k + oversample < mn ? k + oversample : mn;
    lorac_status_t s = LORAC_STATUS_OK;
    double *Q = alloc_doubles(m * l), *Z = alloc_doubles(n * l), *scratch = alloc_doubles(2 * (m > n ? m : n) * l);
    double *Ub = alloc_doubles(n * l), *Sb = alloc_doubles(l), *Vb = alloc_doubles(l * l);
    if (!Q || !Z || !scratch || !Ub || !Sb || !Vb) {
        s = lorac_error(LORAC_STATUS_NOMEM, "out of memory for a rank-%lld SVD of a %lld x %lld matrix", (long long)k, (long long)m, (long long)n);
        goto out;
    }
    /* Gaussian test matrix Ω (n, l), drawn row by row from the seed */
    lorac_rng_t rng;
    lorac_rng_seed(&rng, seed);
    for (int64_t i = 0; i < n * l; i++) Z[i] = lorac_rng_normal(&rng);
    /* range finder: Q = orth(M·Ω), then power_iters rounds of
     * Q = orth(M·orth(Mᵀ·Q)); orthonormalising between the products keeps
     * the small singular directions from being lost to rounding */
    if ((s = apply_op(op, 0, Z, Q, l)) || (s = orthonormalize_rows(Q, m, l, scratch))) goto out;
    for (int32_t it = 0; it < power_iters; it++) {
        if ((s = apply_op(op, 1, Q, Z, l)) || (s = orthonormalize_rows(Z, n, l, scratch))) goto out;
        if ((s = apply_op(op, 0, Z, Q, l)) || (s = orthonormalize_rows(Q, m, l, scratch))) goto out;
    }
    /* M ≈ Q·Qᵀ·M = Q·Bᵀ with Bᵀ = Mᵀ·Q (n, l) = Ub·diag(Sb)·Vbᵀ, so
     * M ≈ (Q·Vb)·diag(Sb)·Ubᵀ */
    if ((s = apply_op(op, 1, Q, Z, l))) goto out;
    if ((s = lorac_svd_dense(Z, n, l, Ub, Sb, Vb))) goto out;
    memcpy(S, Sb, sizeof(double) * (size_t)k);
    if (U)
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < k; j++) {
                double acc = 0;
                for (int64_t t = 0; t < l; t++) acc += Q[i * l + t] * Vb[t * l + j];
                U[i * k + j] = acc;
            }
    if (V)
        for (int64_t i = 0; i < n; i++) memcpy(V + i * k, Ub + i * l, sizeof(double) * (size_t)k);
out:
    free(Q); free(Z); free(scratch); free(Ub); free(Sb); free(Vb);
    return s;
}

/* ---- low-rank products ------------------------------------------------------ */

lorac_status_t lorac_svd_lowrank(const double *B, const double *A, int64_t out, int64_t r, int64_t in, double *U,
                                 double *S, double *V) {
    if (out < 0 || r < 0 || in < 0)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "SVD of a (%lld, %lld)·(%lld, %lld) product", (long long)out,
                           (long long)r, (long long)r, (long long)in);
    if (r == 0) return LORAC_STATUS_OK;
    if (U) memset(U, 0, sizeof(double) * (size_t)(out * r));
    if (V) memset(V, 0, sizeof(double) * (size_t)(in * r));
    memset(S, 0, sizeof(double) * (size_t)r);
    if (out == 0 || in == 0) return LORAC_STATUS_OK;
    if (!all_finite(B, out * r) || !all_finite(A, r * in))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "low-rank SVD input has a non-finite entry");
    /* B = Qb·Rb and Aᵀ = Qa·Ra, so B·A = Qb·(Rb·Raᵀ)·Qaᵀ and the SVD of the
     * small core C = Rb·Raᵀ (pb, pa) gives everything */
    int64_t pb = out < r ? out : r, pa = in < r ? in : r, q = pb < pa ? pb : pa;
    lorac_status_t s = LORAC_STATUS_OK;
    double *bc = alloc_doubles(out * r), *ac = alloc_doubles(in * r);
    double *Qb = alloc_doubles(out * pb), *Rb = alloc_doubles(pb * r), *Qa = alloc_doubles(in * pa), *Ra = alloc_doubles(pa * r);
    double *C = alloc_doubles(pb * pa), *Uc = alloc_doubles(pb * q), *Sc = alloc_doubles(q), *Vc = alloc_doubles(pa * q);
    if (!bc || !ac || !Qb || !Rb || !Qa || !Ra || !C || !Uc || !Sc || !Vc) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory for a low-rank SVD"); goto out; }
    transpose(bc, B, out, r);                     /* colmajor B */
    memcpy(ac, A, sizeof(double) * (size_t)(r * in)); /* colmajor Aᵀ */
    if ((s = qr_colmajor(bc, out, r, Qb, Rb)) || (s = qr_colmajor(ac, in, r, Qa, Ra))) goto out;
    for (int64_t i = 0; i < pb; i++)
        for (int64_t j = 0; j < pa; j++) {
            double acc = 0;
            for (int64_t t = 0; t < r; t++) acc += Rb[t * pb + i] * Ra[t * pa + j];
            C[i * pa + j] = acc;
        }
    if ((s = lorac_svd_dense(C, pb, pa, Uc, Sc, Vc))) goto out;
    memcpy(S, Sc, sizeof(double) * (size_t)q);
    /* U[:, :q] = Qb·Uc and V[:, :q] = Qa·Vc; columns q.. stay zero */
    for (int64_t i = 0; U && i < out; i++)
        for (int64_t j = 0; j < q; j++) {
            double acc = 0;
            for (int64_t t = 0; t < pb; t++) acc += Qb[t * out + i] * Uc[t * q + j];
            U[i * r + j] = acc;
        }
    for (int64_t i = 0; V && i < in; i++)
        for (int64_t j = 0; j < q; j++) {
            double acc = 0;
            for (int64_t t = 0; t < pa; t++) acc += Qa[t * in + i] * Vc[t * q + j];
            V[i * r + j] = acc;
        }
out:
    free(bc); free(ac); free(Qb); free(Rb); free(Qa); free(Ra); free(C); free(Uc); free(Sc); free(Vc);
    return s;
}

lorac_status_t lorac_lowrank_singular_values(const float *B, const float *A, int64_t out, int64_t r, int64_t in,
                                             double scale, double *S) {
    if (out < 0 || r < 0 || in < 0)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "singular values of a (%lld, %lld)·(%lld, %lld) product",
                           (long long)out, (long long)r, (long long)r, (long long)in);
    double *b = alloc_doubles(out * r), *a = alloc_doubles(r * in);
    if (!b || !a) { free(b); free(a); return lorac_error(LORAC_STATUS_NOMEM, "out of memory for a low-rank SVD"); }
    for (int64_t i = 0; i < out * r; i++) b[i] = B[i];
    for (int64_t i = 0; i < r * in; i++) a[i] = A[i];
    lorac_status_t s = lorac_svd_lowrank(b, a, out, r, in, NULL, S, NULL);
    for (int64_t i = 0; !s && i < r; i++) S[i] *= fabs(scale);
    free(b); free(a);
    return s;
}
