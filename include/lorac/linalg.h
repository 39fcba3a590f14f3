/* lorac/linalg.h — the small amount of dense linear algebra adapters need:
 * singular value decompositions in double precision.
 *
 * Matrices are row-major. Two entry points:
 *   - lorac_svd_dense: exact thin SVD of a small matrix (one-sided Jacobi),
 *     for r×r cores and test-sized matrices;
 *   - lorac_svd_randomized: the leading k singular triplets of a large
 *     matrix that is only touched through products with it (randomized range
 *     finder with power iterations, Halko–Martinsson–Tropp), so ΔW of a 1.1B
 *     model's projection never needs a full SVD.
 */
#ifndef LORAC_LINALG_H
#define LORAC_LINALG_H

#include <stdint.h>

#include "lorac/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Thin SVD of A (m, n): A = U·diag(S)·Vᵀ with S descending and >= 0,
 * k = min(m, n); U (m, k), S (k), V (n, k). U and/or V may be NULL when not
 * wanted. A is not modified. NOMEM when scratch cannot be allocated. */
lorac_status_t lorac_svd_dense(const double *A, int64_t m, int64_t n, double *U, double *S, double *V);

/* A matrix M (m, n) seen only through products with blocks of vectors.
 * X and Y are row-major with k columns. */
typedef struct {
    int64_t m, n;
    void (*apply)(void *self, const double *X, double *Y, int64_t k);   /* Y (m,k) = M·X, X (n,k) */
    void (*apply_t)(void *self, const double *X, double *Y, int64_t k); /* Y (n,k) = Mᵀ·X, X (m,k) */
    void *self;
} lorac_linop_t;

/* The k leading singular triplets of op's matrix: U (m, k), S (k), V (n, k),
 * S descending. Uses a Gaussian test matrix of k + oversample columns drawn
 * from `seed`, power_iters rounds of subspace iteration (re-orthonormalised
 * each time), and an exact SVD of the small projected matrix. k must be
 * <= min(m, n); k + oversample is clamped to min(m, n). Deterministic for a
 * given seed. */
lorac_status_t lorac_svd_randomized(const lorac_linop_t *op, int64_t k, int64_t oversample, int32_t power_iters,
                                    uint64_t seed, double *U, double *S, double *V);

/* SVD of the product B·A for B (out, r), A (r, in), without forming it:
 * QR of B and Aᵀ, then the SVD of the small core. U (out, r), S (r),
 * V (in, r) with B·A = U·diag(S)·Vᵀ, S descending; when r > min(out, in)
 * the triplets past min(out, in) are zero (S, and the U and V columns), so
 * a rank-r factorisation always results. U and/or V may be NULL. */
lorac_status_t lorac_svd_lowrank(const double *B, const double *A, int64_t out, int64_t r, int64_t in, double *U,
                                 double *S, double *V);

/* Singular values of scale·B·A for B (out, r), A (r, in) in f32 (an adapter
 * module), without forming the (out, in) product: QR of B and Aᵀ, then the
 * SVD of the r×r core. S gets r values, descending. */
lorac_status_t lorac_lowrank_singular_values(const float *B, const float *A, int64_t out, int64_t r, int64_t in,
                                             double scale, double *S);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_LINALG_H */
