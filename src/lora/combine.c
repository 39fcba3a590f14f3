/* Combining weighted adapters into one, with the semantics of PEFT's
 * LoraModel.add_weighted_adapter (see lorac/extract.h for the formulas).
 *
 * Every module of the result has the same rank r and scale 1, so the file
 * needs no rank_pattern or alpha_pattern: PEFT sets lora_alpha = r and
 * clears both patterns in the combined config, and its cat path leaves the
 * rows an adapter set lacks at zero, which is what the padding here
 * reproduces. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora/extract_internal.h"
#include "lora/lora_internal.h"
#include "lorac/extract.h"
#include "lorac/linalg.h"

static const char *const k_mode_names[] = {"cat", "linear", "svd"};

const char *lorac_combine_name(lorac_combine_t mode) {
    return (int)mode >= 0 && mode <= LORAC_COMBINE_SVD ? k_mode_names[mode] : NULL;
}

lorac_status_t lorac_combine_parse(const char *name, lorac_combine_t *mode) {
    for (int i = 0; i <= LORAC_COMBINE_SVD; i++)
        if (strcmp(name, k_mode_names[i]) == 0) { *mode = (lorac_combine_t)i; return LORAC_STATUS_OK; }
    return lorac_error(LORAC_STATUS_INVALID_ARG, "unknown combination '%s' (cat, linear or svd)", name);
}

/* PEFT's rank of an adapter in _check_add_weighted_adapter: r, or the
 * largest of r and the rank_pattern values, i.e. of its modules' ranks. */
static int32_t adapter_rank(const lorac_adapter_t *a) {
    int32_t r = a->params.r;
    for (int32_t i = 0; i < a->n_modules; i++)
        if (a->modules[i].r > r) r = a->modules[i].r;
    return r;
}

static lorac_status_t check_same_shape(const lorac_adapter_t *const *ads, int32_t n) {
    for (int32_t i = 1; i < n; i++) {
        char other[32];
        snprintf(other, sizeof other, "adapter %d", i + 1);
        lorac_status_t s = lorac_lora_check_same_shape(&ads[0]->config, &ads[i]->config, "adapter 1", other);
        if (s) return s;
    }
    return LORAC_STATUS_OK;
}

/* The combined adapter's r, by PEFT's rules for each mode. */
static lorac_status_t combined_rank(const lorac_adapter_t *const *ads, int32_t n, lorac_combine_t mode, int32_t r,
                                    int32_t *out) {
    int32_t sum = 0, max = 0;
    for (int32_t i = 0; i < n; i++) {
        int32_t ri = adapter_rank(ads[i]);
        if (mode == LORAC_COMBINE_LINEAR && ri != adapter_rank(ads[0]))
            return lorac_error(LORAC_STATUS_INVALID_ARG,
                               "combination linear needs adapters of the same r (as PEFT): adapter 1 has r=%d, adapter %d has r=%d; use cat or svd",
                               adapter_rank(ads[0]), i + 1, ri);
        if (sum > 65536 - ri) return lorac_error(LORAC_STATUS_INVALID_ARG, "combined rank exceeds 65536");
        sum += ri;
        if (ri > max) max = ri;
    }
    if (mode == LORAC_COMBINE_CAT) *out = sum;
    else if (mode == LORAC_COMBINE_LINEAR) *out = max;
    else *out = r > 0 ? r : max;
    if (*out < 1 || *out > 65536) return lorac_error(LORAC_STATUS_INVALID_ARG, "combined rank %d must be in 1..65536", *out);
    return LORAC_STATUS_OK;
}

/* cat: rows w·s·A and columns B of each adapter that has the module, one
 * after the other; the rest of the rank stays zero. */
static void combine_cat(lorac_lora_module_t *dst, const lorac_lora_module_t *const *src, const float *w, int32_t n) {
    int32_t off = 0;
    for (int32_t i = 0; i < n; i++) {
        const lorac_lora_module_t *m = src[i];
        if (!m) continue;
        double c = (double)w[i] * m->scale;
        for (int64_t k = 0; k < (int64_t)m->r * m->in; k++) dst->A[(int64_t)off * m->in + k] = (float)(c * m->A[k]);
        for (int32_t o = 0; o < m->out; o++)
            memcpy(dst->B + (int64_t)o * dst->r + off, m->B + (int64_t)o * m->r, sizeof(float) * (size_t)m->r);
        off += m->r;
    }
}

/* linear: A = Σ sign·sqrt(|w·s|)·A_i and B = Σ sqrt(|w·s|)·B_i, the sign
 * on A only (PEFT PR #2918), each in the first r_i rows/columns. */
static void combine_linear(lorac_lora_module_t *dst, const lorac_lora_module_t *const *src, const float *w, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        const lorac_lora_module_t *m = src[i];
        if (!m) continue;
        double ws = (double)w[i] * m->scale, c = sqrt(fabs(ws)), ca = ws < 0 ? -c : c;
        for (int64_t k = 0; k < (int64_t)m->r * m->in; k++) dst->A[k] += (float)(ca * m->A[k]);
        for (int32_t o = 0; o < m->out; o++)
            for (int32_t t = 0; t < m->r; t++) dst->B[(int64_t)o * dst->r + t] += (float)(c * m->B[(int64_t)o * m->r + t]);
    }
}

/* The stacked factors of Σ w_i·s_i·B_i·A_i over the adapters that have the
 * module (with, when `self` is given, -s·B·A of that module first):
 * Bs (out, R) and As (R, in), double, malloc'd. */
static lorac_status_t stack_factors(const lorac_lora_module_t *self, const lorac_lora_module_t *const *src,
                                    const float *w, int32_t n, double **Bs, double **As, int64_t *R_out,
                                    int64_t *out_dim, int64_t *in_dim) {
    int64_t R = 0, in = 0, out = 0;
    for (int32_t i = -1; i < n; i++) {
        const lorac_lora_module_t *m = i < 0 ? self : src[i];
        if (m) { R += m->r; in = m->in; out = m->out; }
    }
    *Bs = malloc(sizeof(double) * (size_t)(out * R + 1));
    *As = malloc(sizeof(double) * (size_t)(R * in + 1));
    if (!*Bs || !*As) { free(*Bs); free(*As); return lorac_error(LORAC_STATUS_NOMEM, "out of memory combining adapters"); }
    int64_t off = 0;
    for (int32_t i = -1; i < n; i++) {
        const lorac_lora_module_t *m = i < 0 ? self : src[i];
        if (!m) continue;
        double c = i < 0 ? -(double)m->scale : (double)w[i] * m->scale;
        for (int64_t t = 0; t < m->r; t++)
            for (int64_t k = 0; k < in; k++) (*As)[(off + t) * in + k] = c * m->A[t * in + k];
        for (int64_t o = 0; o < out; o++)
            for (int64_t t = 0; t < m->r; t++) (*Bs)[o * R + off + t] = m->B[o * m->r + t];
        off += m->r;
    }
    *R_out = R;
    *out_dim = out;
    *in_dim = in;
    return LORAC_STATUS_OK;
}

/* svd: the truncated SVD of the exact weighted sum, B = U·diag(S), A = Vᵀ;
 * directions beyond the sum's rank come out zero. */
static lorac_status_t combine_svd(lorac_lora_module_t *dst, const lorac_lora_module_t *const *src, const float *w,
                                  int32_t n) {
    double *Bs, *As;
    int64_t R, out, in, r = dst->r;
    lorac_status_t s = stack_factors(NULL, src, w, n, &Bs, &As, &R, &out, &in);
    if (s) return s;
    double *U = malloc(sizeof(double) * (size_t)(out * R)), *S = malloc(sizeof(double) * (size_t)R),
           *V = malloc(sizeof(double) * (size_t)(in * R));
    if (!U || !S || !V) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory combining adapters"); goto out; }
    if ((s = lorac_svd_lowrank(Bs, As, out, R, in, U, S, V))) goto out;
    int64_t keep = r < R ? r : R;
    for (int64_t o = 0; o < out; o++)
        for (int64_t t = 0; t < keep; t++) dst->B[o * r + t] = (float)(U[o * R + t] * S[t]);
    for (int64_t t = 0; t < keep; t++)
        for (int64_t k = 0; k < in; k++) dst->A[t * in + k] = (float)V[k * R + t];
out:
    free(Bs); free(As); free(U); free(S); free(V);
    return s;
}

static lorac_status_t check_weights(const float *w, int32_t n) {
    for (int32_t i = 0; i < n; i++)
        if (!isfinite(w[i])) return lorac_error(LORAC_STATUS_INVALID_ARG, "weight of adapter %d is not finite", i + 1);
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_adapter_combine(const lorac_adapter_t *const *adapters, const float *weights, int32_t n,
                                     lorac_combine_t mode, int32_t r, lorac_adapter_t **out) {
    *out = NULL;
    if (n < 1) return lorac_error(LORAC_STATUS_INVALID_ARG, "no adapters to combine");
    if (!lorac_combine_name(mode)) return lorac_error(LORAC_STATUS_INVALID_ARG, "unknown combination %d", (int)mode);
    if (n == 1) mode = LORAC_COMBINE_LINEAR; /* PEFT: one adapter can only be combined linearly */
    lorac_status_t s;
    int32_t new_r = 0;
    if ((s = check_weights(weights, n)) || (s = check_same_shape(adapters, n)) ||
        (s = combined_rank(adapters, n, mode, r, &new_r)))
        return s;
    const lorac_model_config_t *cfg = &adapters[0]->config;
    int32_t n_slots = cfg->n_layers * LORAC_LORA_COUNT;
    int32_t *ranks = calloc((size_t)(n_slots ? n_slots : 1), sizeof(int32_t));
    float *scales = malloc(sizeof(float) * (size_t)(n_slots ? n_slots : 1));
    if (!ranks || !scales) { free(ranks); free(scales); return lorac_error(LORAC_STATUS_NOMEM, "out of memory"); }
    for (int32_t slot = 0; slot < n_slots; slot++) {
        scales[slot] = 1.0f;
        for (int32_t i = 0; i < n; i++)
            if (adapters[i]->index[slot] >= 0) ranks[slot] = new_r;
    }
    /* PEFT: replace(config of the first adapter, r=new_rank,
     * lora_alpha=new_rank, use_rslora=False, no patterns) */
    lorac_lora_params_t params = adapters[0]->params;
    params.r = new_r;
    params.alpha = (float)new_r;
    params.rslora = false;
    params.layers = NULL;
    lorac_adapter_t *res;
    s = lorac_adapter_alloc_ranks(cfg, &params, ranks, scales, &res);
    free(ranks);
    free(scales);
    if (s) return s;
    const lorac_lora_module_t **src = malloc(sizeof *src * (size_t)n);
    lorac_lora_module_t *whole = malloc(sizeof *whole * (size_t)(n + 1));
    if (!src || !whole) { free(src); free(whole); lorac_adapter_free(res); return lorac_error(LORAC_STATUS_NOMEM, "out of memory"); }
    for (int32_t k = 0; !s && k < res->n_modules; k++) {
        /* Phi-3's fused qkv_proj (gate_up_proj) is one module: combined as
         * its first member with the B of all the group's rows (contiguous),
         * which writes the members' rows and their shared A */
        if (res->modules[k].in_group) continue;
        lorac_lora_module_t *dst = &whole[n];
        *dst = res->modules[k];
        if (dst->group_out) dst->out = dst->group_out;
        for (int32_t i = 0; i < n; i++) {
            const lorac_lora_module_t *m = lorac_adapter_find(adapters[i], dst->layer, dst->target);
            src[i] = m ? &whole[i] : NULL;
            if (m) whole[i] = *m, whole[i].out = m->group_out ? m->group_out : m->out;
        }
        if (mode == LORAC_COMBINE_CAT) combine_cat(dst, src, weights, n);
        else if (mode == LORAC_COMBINE_LINEAR) combine_linear(dst, src, weights, n);
        else s = combine_svd(dst, src, weights, n);
    }
    free(src);
    free(whole);
    if (s) { lorac_adapter_free(res); return s; }
    *out = res;
    return LORAC_STATUS_OK;
}

/* ||B·A||_F² of the stacked factors of a module, from their singular
 * values (QR of both factors first, so a difference that cancels to ~0 is
 * measured to rounding, not to the square root of it as a Gram-matrix
 * formula would). */
static lorac_status_t stacked_norm2(const lorac_lora_module_t *self, const lorac_lora_module_t *const *src,
                                    const float *w, int32_t n, double *norm2) {
    double *Bs, *As, *S = NULL;
    int64_t R, out, in;
    *norm2 = 0;
    lorac_status_t s = stack_factors(self, src, w, n, &Bs, &As, &R, &out, &in);
    if (s) return s;
    if (!(S = malloc(sizeof(double) * (size_t)(R + 1)))) s = lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    if (!s) s = lorac_svd_lowrank(Bs, As, out, R, in, NULL, S, NULL);
    for (int64_t i = 0; !s && i < R; i++) *norm2 += S[i] * S[i];
    free(Bs); free(As); free(S);
    return s;
}

lorac_status_t lorac_adapter_combine_error(const lorac_adapter_t *combined, const lorac_adapter_t *const *adapters,
                                           const float *weights, int32_t n, int32_t layer, lorac_lora_target_t target,
                                           double *rel) {
    *rel = 0;
    if (n < 1) return lorac_error(LORAC_STATUS_INVALID_ARG, "no adapters to compare with");
    const lorac_lora_module_t *self = lorac_adapter_find(combined, layer, target);
    const lorac_lora_module_t **src = malloc(sizeof *src * (size_t)n);
    if (!src) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    for (int32_t i = 0; i < n; i++) src[i] = lorac_adapter_find(adapters[i], layer, target);
    double ref2, diff2;
    lorac_status_t s = stacked_norm2(NULL, src, weights, n, &ref2);
    if (!s) s = stacked_norm2(self, src, weights, n, &diff2);
    free(src);
    if (s) return s;
    *rel = ref2 > 0 ? sqrt(diff2 / ref2) : diff2 > 0 ? INFINITY : 0.0;
    return LORAC_STATUS_OK;
}
