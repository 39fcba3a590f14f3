/* Extracting a LoRA adapter from a fine-tune: for each projection, the
 * best rank-r approximation of ΔW = W_tuned − W_base found by a randomized
 * SVD, split into B and A.
 *
 * ΔW is never stored. The SVD sees it as an operator whose products stream
 * over the two read-only weight mappings a block of rows at a time: rows
 * are converted from their dtype to f32 (exact for F32, BF16 and F16), the
 * difference is taken in double (exact too) and the products accumulate in
 * double. ||ΔW||_F² for the energy report is summed during the first pass. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lora/extract_internal.h"
#include "lora/lora_internal.h"
#include "lorac/extract.h"
#include "lorac/kernels.h"
#include "lorac/linalg.h"
#include "model/model_internal.h"

/* Rows of ΔW converted at once: enough to reuse each loaded vector of the
 * other operand four times, small enough to stay in cache. */
#define DELTA_ROWS 4
_Static_assert(DELTA_ROWS == 4, "rows_times and delta_apply_t name the four rows of a block");
/* Columns of the product kept in registers by the inner kernel. */
#define TILE 8

lorac_extract_params_t lorac_extract_default_params(void) {
    lorac_extract_params_t p = {.r = 16, .alpha = 0, .targets = (1u << LORAC_LORA_COUNT) - 1, .layers = NULL,
                                .oversample = 10, .power_iters = 2, .seed = 42, .progress = NULL,
                                .progress_user = NULL};
    return p;
}

lorac_status_t lorac_lora_check_same_shape(const lorac_model_config_t *a, const lorac_model_config_t *b,
                                           const char *what_a, const char *what_b) {
    const struct { const char *name; int32_t a, b; } f[] = {
        {"num_hidden_layers", a->n_layers, b->n_layers},
        {"hidden_size", a->hidden_size, b->hidden_size},
        {"intermediate_size", a->intermediate_size, b->intermediate_size},
        {"num_attention_heads", a->n_heads, b->n_heads},
        {"num_key_value_heads", a->n_kv_heads, b->n_kv_heads},
        {"head_dim", a->head_dim, b->head_dim},
    };
    for (size_t k = 0; k < sizeof f / sizeof f[0]; k++)
        if (f[k].a != f[k].b)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "%s has %s %d but %s has %d: not the same model shape",
                               what_a, f[k].name, f[k].a, what_b, f[k].b);
    return LORAC_STATUS_OK;
}

/* ---- ΔW as an operator -------------------------------------------------------- */

typedef struct {
    const void *tuned, *base;
    lorac_dtype_t tuned_dtype, base_dtype;
    int64_t m, n;        /* out, in */
    float *ft, *fb;      /* (DELTA_ROWS, n) converted rows */
    double *d;           /* (DELTA_ROWS, n) differences */
    double *xp, *yp;     /* operands padded to whole tiles */
    double norm2;        /* Σ ΔW², summed by the first apply */
    int count_norm;
} delta_op_t;

/* Rows [i0, i0 + rows) of ΔW into op->d, in double. */
static void delta_rows(delta_op_t *op, int64_t i0, int64_t rows) {
    int64_t n = op->n, count = rows * n;
    lorac_convert_to_f32(op->ft, (const char *)op->tuned + (size_t)(i0 * n) * lorac_dtype_size(op->tuned_dtype),
                         op->tuned_dtype, count);
    lorac_convert_to_f32(op->fb, (const char *)op->base + (size_t)(i0 * n) * lorac_dtype_size(op->base_dtype),
                         op->base_dtype, count);
    for (int64_t k = 0; k < count; k++) op->d[k] = (double)op->ft[k] - (double)op->fb[k];
    if (op->count_norm)
        for (int64_t k = 0; k < count; k++) op->norm2 += op->d[k] * op->d[k];
    /* the kernels always run over DELTA_ROWS rows; missing ones add zero */
    memset(op->d + count, 0, sizeof(double) * (size_t)((DELTA_ROWS - rows) * n));
}

static int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

/* Copies X (rows, l) into xp (rows, lp) with lp = round_up(l, TILE), the
 * extra columns zero, so the kernels below always work on whole tiles. */
static void pad_columns(double *xp, const double *X, int64_t rows, int64_t l, int64_t lp) {
    for (int64_t i = 0; i < rows; i++) {
        memcpy(xp + i * lp, X + i * l, sizeof(double) * (size_t)l);
        memset(xp + i * lp + l, 0, sizeof(double) * (size_t)(lp - l));
    }
}

// d is (DELTA_ROWS, n), xp is (n, lp), y is (DELTA_ROWS, lp). y = d·xp.
// A DELTA_ROWS x TILE block of y stays in registers while j runs.
static void rows_times(double *y, const double *d, const double *xp, int64_t n, int64_t lp) {
    const double *d0 = d, *d1 = d + n, *d2 = d + 2 * n, *d3 = d + 3 * n;
    for (int64_t c0 = 0; c0 < lp; c0 += TILE) {
        double a0[TILE] = {0}, a1[TILE] = {0}, a2[TILE] = {0}, a3[TILE] = {0};
        for (int64_t j = 0; j < n; j++) {
            const double *x = xp + j * lp + c0;
            #pragma omp simd
            for (int c = 0; c < TILE; c++) {
                a0[c] += d0[j] * x[c];
                a1[c] += d1[j] * x[c];
                a2[c] += d2[j] * x[c];
                a3[c] += d3[j] * x[c];
            }
        }
        memcpy(y + c0, a0, sizeof a0);
        memcpy(y + lp + c0, a1, sizeof a1);
        memcpy(y + 2 * lp + c0, a2, sizeof a2);
        memcpy(y + 3 * lp + c0, a3, sizeof a3);
    }
}

// Y (m, l) = ΔW · X, X (n, l)
static void delta_apply(void *self, const double *X, double *Y, int64_t l) {
    delta_op_t *op = self;
    int64_t lp = round_up(l, TILE);
    pad_columns(op->xp, X, op->n, l, lp);
    for (int64_t i0 = 0; i0 < op->m; i0 += DELTA_ROWS) {
        int64_t rows = op->m - i0 < DELTA_ROWS ? op->m - i0 : DELTA_ROWS;
        delta_rows(op, i0, rows);
        rows_times(op->yp, op->d, op->xp, op->n, lp);
        for (int64_t r = 0; r < rows; r++) memcpy(Y + (i0 + r) * l, op->yp + r * lp, sizeof(double) * (size_t)l);
    }
    op->count_norm = 0;
}

// Y (n, l) = ΔWᵀ · X, X (m, l): each block of rows of ΔW adds its
// DELTA_ROWS outer products into every row of Y
static void delta_apply_t(void *self, const double *X, double *Y, int64_t l) {
    delta_op_t *op = self;
    int64_t lp = round_up(l, TILE), n = op->n;
    memset(op->yp, 0, sizeof(double) * (size_t)(n * lp));
    for (int64_t i0 = 0; i0 < op->m; i0 += DELTA_ROWS) {
        int64_t rows = op->m - i0 < DELTA_ROWS ? op->m - i0 : DELTA_ROWS;
        delta_rows(op, i0, rows);
        /* the block's rows of X, padded: x (DELTA_ROWS, lp) */
        for (int r = 0; r < DELTA_ROWS; r++)
            for (int64_t c = 0; c < lp; c++) op->xp[r * lp + c] = r < rows && c < l ? X[(i0 + r) * l + c] : 0.0;
        const double *x0 = op->xp, *x1 = x0 + lp, *x2 = x1 + lp, *x3 = x2 + lp;
        const double *d0 = op->d, *d1 = d0 + n, *d2 = d1 + n, *d3 = d2 + n;
        for (int64_t j = 0; j < n; j++) {
            double *y = op->yp + j * lp;
            #pragma omp simd
            for (int64_t c = 0; c < lp; c++) y[c] += d0[j] * x0[c] + d1[j] * x1[c] + d2[j] * x2[c] + d3[j] * x3[c];
        }
    }
    for (int64_t j = 0; j < n; j++) memcpy(Y + j * l, op->yp + j * lp, sizeof(double) * (size_t)l);
    op->count_norm = 0;
}

static void delta_op_free(delta_op_t *op) {
    free(op->ft); free(op->fb); free(op->d); free(op->xp); free(op->yp);
}

static lorac_status_t delta_op_init(delta_op_t *op, const lorac_wref_t *tuned, const lorac_wref_t *base, int64_t m,
                                    int64_t n, int64_t l) {
    memset(op, 0, sizeof *op);
    op->tuned = tuned->data;
    op->base = base->data;
    op->tuned_dtype = tuned->dtype;
    op->base_dtype = base->dtype;
    op->m = m;
    op->n = n;
    op->count_norm = 1;
    int64_t lp = round_up(l, TILE), big = m > n ? m : n;
    op->ft = malloc(sizeof(float) * (size_t)(DELTA_ROWS * n));
    op->fb = malloc(sizeof(float) * (size_t)(DELTA_ROWS * n));
    op->d = malloc(sizeof(double) * (size_t)(DELTA_ROWS * n));
    op->xp = malloc(sizeof(double) * (size_t)(big * lp));
    op->yp = malloc(sizeof(double) * (size_t)(big * lp));
    if (!op->ft || !op->fb || !op->d || !op->xp || !op->yp) {
        delta_op_free(op);
        return lorac_error(LORAC_STATUS_NOMEM, "out of memory for a %lld x %lld weight difference", (long long)m, (long long)n);
    }
    return LORAC_STATUS_OK;
}

/* ---- extraction ------------------------------------------------------------------ */

static const lorac_wref_t *projection(const lorac_model_t *model, int32_t layer, lorac_lora_target_t t) {
    const lorac_layer_weights_t *L = &model->layers[layer];
    switch (t) {
    case LORAC_LORA_Q: return &L->wq;
    case LORAC_LORA_K: return &L->wk;
    case LORAC_LORA_V: return &L->wv;
    case LORAC_LORA_O: return &L->wo;
    case LORAC_LORA_GATE: return &L->w_gate;
    case LORAC_LORA_UP: return &L->w_up;
    case LORAC_LORA_DOWN: default: return &L->w_down;
    }
}

static lorac_status_t check_params(const lorac_model_config_t *c, const lorac_extract_params_t *p) {
    if (p->r < 1) return lorac_error(LORAC_STATUS_INVALID_ARG, "extract rank r = %d must be at least 1", p->r);
    if (p->oversample < 0 || p->power_iters < 0 || p->power_iters > 100)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "oversample %d must be >= 0 and power iterations %d in 0..100",
                           p->oversample, p->power_iters);
    if (!isfinite(p->alpha)) return lorac_error(LORAC_STATUS_INVALID_ARG, "extract alpha must be finite");
    if (!(p->targets & ((1u << LORAC_LORA_COUNT) - 1))) return lorac_error(LORAC_STATUS_INVALID_ARG, "no target modules to extract");
    for (int t = 0; t < LORAC_LORA_COUNT; t++) {
        if (!(p->targets >> t & 1u)) continue;
        int32_t in, out;
        lorac_lora_target_dims(c, (lorac_lora_target_t)t, &in, &out);
        if (p->r > in || p->r > out)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "rank %d exceeds the %s matrix (%d x %d): r must be at most %d",
                               p->r, lorac_lora_target_name((lorac_lora_target_t)t), out, in, in < out ? in : out);
    }
    return LORAC_STATUS_OK;
}

/* One module: the randomized SVD of its ΔW, then B = U·sqrt(S/s) and
 * A = sqrt(S/s)·Vᵀ so that s·B·A = U·S·Vᵀ. */
static lorac_status_t extract_module(const lorac_model_t *base, const lorac_model_t *tuned,
                                     const lorac_extract_params_t *p, lorac_lora_module_t *m,
                                     lorac_extract_stat_t *st) {
    double t0 = lorac_seconds();
    int64_t out = m->out, in = m->in, r = m->r;
    int64_t l = r + p->oversample < (in < out ? in : out) ? r + p->oversample : (in < out ? in : out);
    delta_op_t op;
    lorac_status_t s = delta_op_init(&op, projection(tuned, m->layer, m->target), projection(base, m->layer, m->target),
                                     out, in, l);
    if (s) return s;
    double *U = malloc(sizeof(double) * (size_t)(out * r)), *S = malloc(sizeof(double) * (size_t)r),
           *V = malloc(sizeof(double) * (size_t)(in * r));
    if (!U || !S || !V) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory extracting a module"); goto out; }
    lorac_linop_t lin = {.m = out, .n = in, .apply = delta_apply, .apply_t = delta_apply_t, .self = &op};
    /* each module draws its own test matrix, so a module's result does not
     * depend on which other modules were selected */
    uint64_t seed = p->seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(m->layer * LORAC_LORA_COUNT + m->target + 1));
    s = lorac_svd_randomized(&lin, r, p->oversample, p->power_iters, seed, U, S, V);
    if (s) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", lorac_error_message());
        lorac_error(s, "layer %d %s: %s", m->layer, lorac_lora_target_name(m->target), msg);
        goto out;
    }
    double kept2 = 0;
    for (int64_t t = 0; t < r; t++) {
        kept2 += S[t] * S[t];
        double f = sqrt(S[t] / m->scale);
        for (int64_t o = 0; o < out; o++) m->B[o * r + t] = (float)(U[o * r + t] * f);
        for (int64_t k = 0; k < in; k++) m->A[t * in + k] = (float)(V[k * r + t] * f);
    }
    st->layer = m->layer;
    st->target = m->target;
    st->delta_norm2 = op.norm2;
    st->kept2 = kept2;
    /* rounding can put the kept energy a hair above the total */
    st->energy = op.norm2 > 0 ? fmin(1.0, kept2 / op.norm2) : 1.0;
    st->max_sigma = S[0];
    st->seconds = lorac_seconds() - t0;
out:
    delta_op_free(&op);
    free(U); free(S); free(V);
    return s;
}

lorac_status_t lorac_extract_adapter(const lorac_model_t *base, const lorac_model_t *tuned,
                                     const lorac_extract_params_t *params, lorac_adapter_t **out,
                                     lorac_extract_stat_t **stats) {
    *out = NULL;
    if (stats) *stats = NULL;
    const lorac_model_config_t *c = lorac_model_get_config(base);
    lorac_status_t s;
    if ((s = lorac_lora_check_same_shape(c, lorac_model_get_config(tuned), "the base model", "the tuned model")) ||
        (s = check_params(c, params)))
        return s;
    if (c->bnb_nf4 || lorac_model_get_config(tuned)->bnb_nf4) /* its weights are rounded to 4 bits: ΔW would be mostly noise */
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "extract reads unquantized models; %s is a bitsandbytes 4-bit checkpoint",
                           c->bnb_nf4 ? "the base model" : "the tuned model");
    lorac_lora_params_t lp = lorac_lora_default_params();
    lp.r = params->r;
    lp.alpha = params->alpha > 0 ? params->alpha : (float)params->r;
    lp.targets = params->targets & ((1u << LORAC_LORA_COUNT) - 1);
    lp.layers = params->layers;
    lp.seed = params->seed;
    lorac_adapter_t *a;
    if ((s = lorac_adapter_alloc(c, &lp, &a))) return s;
    if (a->n_modules == 0) {
        lorac_adapter_free(a);
        return lorac_error(LORAC_STATUS_INVALID_ARG, "the targets and layers given select no module to extract");
    }
    lorac_extract_stat_t *st = calloc((size_t)(a->n_modules ? a->n_modules : 1), sizeof *st);
    if (!st) { lorac_adapter_free(a); return lorac_error(LORAC_STATUS_NOMEM, "out of memory"); }
    int32_t n_st = 0;
    for (int32_t i = 0; i < a->n_modules && !s; i++) {
        /* Phi-3's fused group: one SVD over all its rows (the members' B
         * rows follow its first's, in both models' weights too), which
         * writes the members' rows and their shared A */
        if (a->modules[i].in_group) continue;
        lorac_lora_module_t whole = a->modules[i];
        if (whole.group_out) whole.out = whole.group_out;
        s = extract_module(base, tuned, params, &whole, &st[n_st++]);
        if (!s && params->progress) params->progress(params->progress_user, i + 1, a->n_modules);
    }
    if (s || !stats) free(st);
    if (s) { lorac_adapter_free(a); return s; }
    if (stats) *stats = st;
    *out = a;
    return LORAC_STATUS_OK;
}
