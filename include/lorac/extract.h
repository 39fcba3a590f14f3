/* lorac/extract.h — adapters made from other things than training:
 *
 *   - extraction: the LoRA adapter closest to a fine-tune, from the
 *     difference ΔW = W_tuned − W_base of each projection, truncated to rank
 *     r by a randomized SVD (lorac/linalg.h);
 *   - combination: one adapter from several weighted ones, with the
 *     semantics of PEFT's LoraModel.add_weighted_adapter (cat, linear, svd).
 *
 * Both return a new adapter (free it with lorac_adapter_free) that
 * lorac_adapter_save writes in PEFT's format.
 */
#ifndef LORAC_EXTRACT_H
#define LORAC_EXTRACT_H

#include <stdint.h>

#include "lorac/core.h"
#include "lorac/lora.h"
#include "lorac/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- extraction ------------------------------------------------------------ */

typedef struct {
    int32_t r;               /* rank of every extracted module */
    float alpha;             /* lora_alpha written; <= 0 means r (scale 1) */
    uint32_t targets;        /* bit mask of lorac_lora_target_t */
    const uint8_t *layers;   /* n_layers bytes (1 = extract), NULL = all */
    int32_t oversample;      /* extra random directions of the range finder */
    int32_t power_iters;     /* subspace iterations; more = closer to the best rank-r */
    uint64_t seed;           /* the Gaussian test matrices; same seed, same adapter */
    /* called after each module with the number done and the total (may be NULL) */
    void (*progress)(void *user, int32_t done, int32_t total);
    void *progress_user;
} lorac_extract_params_t;

/* r 16, alpha = r, all seven projections, all layers, oversample 10,
 * 2 power iterations, seed 42, no progress callback. */
lorac_extract_params_t lorac_extract_default_params(void);

/* What one module kept. */
typedef struct {
    int32_t layer;
    lorac_lora_target_t target;
    double delta_norm2;      /* ||ΔW||_F², exact (double sums over the weights) */
    double kept2;            /* Σ of the r kept σ² */
    double energy;           /* kept2 / delta_norm2; 1 when ΔW = 0 */
    double max_sigma;        /* σ_1 */
    double seconds;          /* wall time spent on this module */
} lorac_extract_stat_t;

/* Extracts an adapter from two models of the same shape (hidden size,
 * intermediate size, layers, heads, KV heads, head_dim; a mismatch is
 * LORAC_STATUS_INVALID_ARG naming the field and both values). Weights may be
 * F32, BF16 or F16, each model in its own dtype: rows are converted as they
 * are streamed from the mappings and differences are taken and accumulated
 * in double, so no copy of a weight matrix is made.
 *
 * For each selected module: ΔW ≈ U·diag(S)·Vᵀ (rank r, randomized SVD with
 * the params' oversampling, power iterations and seed), and with the
 * adapter's scale s = alpha / r: B = U·sqrt(S/s), A = sqrt(S/s)·Vᵀ, so that
 * s·B·A is the best rank-r approximation the SVD found and the singular
 * values are split evenly between A and B. r must be at most min(in, out) of
 * every selected module. Phi-3's fused qkv_proj (gate_up_proj) is one
 * module, as PEFT's: one SVD of the difference over all its rows.
 *
 * *out receives the adapter (config of `base`); *stats, when stats is not
 * NULL, a malloc'd array of one entry per module as PEFT counts them (a
 * fused group once, under its first target), in the adapter's module
 * order (free() it). On failure nothing is returned. */
lorac_status_t lorac_extract_adapter(const lorac_model_t *base, const lorac_model_t *tuned,
                                     const lorac_extract_params_t *params, lorac_adapter_t **out,
                                     lorac_extract_stat_t **stats);

/* ---- combination --------------------------------------------------------------
 * PEFT's add_weighted_adapter (peft/tuners/lora/model.py, including the
 * fixes of PEFT PRs #2918, #3111 and #3449: signed weights, the svd path
 * scaling each adapter once, use_rslora off in the result). With w_i the
 * weights and s_i each module's scale:
 *
 *   cat     A = [w_1·s_1·A_1; w_2·s_2·A_2; ...] (rows stacked),
 *           B = [B_1, B_2, ...] (columns stacked); exact: B·A = Σ w_i·s_i·B_i·A_i.
 *           r = Σ r_i. A module that only some adapters have gets their
 *           rows, then zero rows up to r, as PEFT fills it.
 *   linear  every adapter must have the same r (PEFT compares each
 *           adapter's r, or the largest of r and its rank_pattern values);
 *           with c_i = sqrt(|w_i·s_i|): A = Σ sign(w_i·s_i)·c_i·A_i,
 *           B = Σ c_i·B_i. Not B·A = Σ w_i·s_i·B_i·A_i in general: the cross
 *           terms B_i·A_j stay, as in PEFT.
 *   svd     ΔW = Σ w_i·s_i·B_i·A_i (in double, from the stacked factors,
 *           never as an out×in matrix) truncated to rank r: B = U·diag(S),
 *           A = Vᵀ (PEFT puts S into B). r <= 0 means the largest adapter
 *           r (PEFT's svd_rank=None).
 *
 * As in PEFT, a single adapter is always combined `linear`, whatever mode
 * says. The result has lora_alpha = r (scale 1: the scales are folded into
 * the factors), use_rslora off, the dropout of the first adapter, and the
 * union of the adapters' modules, each of rank r: a module with fewer
 * directions (a smaller rank_pattern rank, or min(in, out) < r for svd) is
 * padded with zero rows of A and zero columns of B, which PEFT loads
 * unchanged.
 *
 * Errors: LORAC_STATUS_INVALID_ARG for n < 1, linear with different ranks
 * (naming both adapters' r), adapters for different model shapes, a
 * non-finite weight. */
typedef enum {
    LORAC_COMBINE_CAT = 0,
    LORAC_COMBINE_LINEAR,
    LORAC_COMBINE_SVD
} lorac_combine_t;

/* "cat", "linear", "svd"; NULL for an out-of-range value. */
const char *lorac_combine_name(lorac_combine_t mode);
/* Parses "cat" / "linear" / "svd". */
lorac_status_t lorac_combine_parse(const char *name, lorac_combine_t *mode);

lorac_status_t lorac_adapter_combine(const lorac_adapter_t *const *adapters, const float *weights, int32_t n,
                                     lorac_combine_t mode, int32_t r, lorac_adapter_t **out);

/* How far a combined adapter's module is from the exact weighted sum:
 * ||s·B·A − Σ w_i·s_i·B_i·A_i||_F / ||Σ w_i·s_i·B_i·A_i||_F for one
 * (layer, target), computed from the factors through their Gram matrices
 * (no out×in matrix). *rel is 0 when both sides are zero, and infinite when
 * only the combination is nonzero. */
lorac_status_t lorac_adapter_combine_error(const lorac_adapter_t *combined, const lorac_adapter_t *const *adapters,
                                           const float *weights, int32_t n, int32_t layer, lorac_lora_target_t target,
                                           double *rel);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_EXTRACT_H */
