/* AdamW, schedules, gradient norm and clipping (lorac/optim.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lorac/kernels.h"
#include "lorac/optim.h"

struct lorac_adamw {
    lorac_optim_param_t *params;
    int32_t n_params;
    float **m, **v;
    lorac_adamw_params_t hp;
    lorac_adamw_counters_t c;
};

lorac_adamw_params_t lorac_adamw_default_params(void) {
    lorac_adamw_params_t p = {.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.0};
    return p;
}

static lorac_status_t check_args(const lorac_optim_param_t *params, int32_t n_params, lorac_adamw_params_t hp) {
    if (n_params < 0 || (n_params > 0 && !params))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "adamw: %d params", (int)n_params);
    /* written as !(x >= 0) so that NaN fails too */
    if (!(hp.beta1 >= 0.0 && hp.beta1 < 1.0) || !(hp.beta2 >= 0.0 && hp.beta2 < 1.0))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "adamw: betas (%g, %g) must be in [0, 1)", hp.beta1, hp.beta2);
    if (!(hp.eps >= 0.0 && isfinite(hp.eps)))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "adamw: eps %g must be finite and >= 0", hp.eps);
    if (!(hp.weight_decay >= 0.0 && isfinite(hp.weight_decay)))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "adamw: weight decay %g must be finite and >= 0", hp.weight_decay);
    for (int32_t i = 0; i < n_params; i++) {
        const lorac_optim_param_t *p = &params[i];
        if (!p->name) return lorac_error(LORAC_STATUS_INVALID_ARG, "adamw: param %d has no name", (int)i);
        if (p->n < 0 || (p->n > 0 && (!p->data || !p->grad)))
            return lorac_error(LORAC_STATUS_INVALID_ARG, "adamw: param \"%s\": %lld values without data or gradient",
                               p->name, (long long)p->n);
        /* names key the checkpoint tensors, so they must be unique; the
         * quadratic check is fine for the few hundred tensors of a model */
        for (int32_t j = 0; j < i; j++)
            if (!strcmp(params[j].name, p->name))
                return lorac_error(LORAC_STATUS_INVALID_ARG, "adamw: param \"%s\" given twice", p->name);
    }
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_adamw_init(const lorac_optim_param_t *params, int32_t n_params, lorac_adamw_params_t hp,
                                lorac_adamw_t **out) {
    *out = NULL;
    lorac_status_t s = check_args(params, n_params, hp);
    if (s) return s;
    lorac_adamw_t *o = calloc(1, sizeof *o);
    if (!o) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    size_t np = (size_t)(n_params ? n_params : 1);
    o->hp = hp;
    o->params = malloc(sizeof *o->params * np);
    o->m = calloc(np, sizeof(float *));
    o->v = calloc(np, sizeof(float *));
    if (!o->params || !o->m || !o->v) { lorac_adamw_free(o); return lorac_error(LORAC_STATUS_NOMEM, "out of memory"); }
    if (n_params) memcpy(o->params, params, sizeof *o->params * (size_t)n_params);
    o->n_params = n_params;
    for (int32_t i = 0; i < n_params; i++) {
        /* at least one float each so a NULL always means out of memory */
        size_t n = (size_t)(params[i].n ? params[i].n : 1);
        o->m[i] = calloc(n, sizeof(float));
        o->v[i] = calloc(n, sizeof(float));
        if (!o->m[i] || !o->v[i]) {
            lorac_adamw_free(o);
            return lorac_error(LORAC_STATUS_NOMEM, "out of memory for the moments of \"%s\" (%lld values)", params[i].name,
                               (long long)params[i].n);
        }
    }
    *out = o;
    return LORAC_STATUS_OK;
}

void lorac_adamw_free(lorac_adamw_t *o) {
    if (!o) return;
    for (int32_t i = 0; i < o->n_params; i++) {
        if (o->m) free(o->m[i]);
        if (o->v) free(o->v[i]);
    }
    free(o->m); free(o->v); free(o->params);
    free(o);
}

void lorac_adamw_step(lorac_adamw_t *o, double lr, float grad_scale) {
    o->c.steps++;
    o->c.skipped_in_row = 0;
    /* The scalars as torch 1.13's _single_tensor_adamw computes them: Python
     * doubles (bias corrections, step size, 1 - beta), each rounded to f32
     * when it meets an f32 tensor. */
    double t = (double)o->c.steps;
    double bc1 = 1.0 - pow(o->hp.beta1, t), bc2 = 1.0 - pow(o->hp.beta2, t);
    lorac_adamw_coefs_t c = {
        .grad_scale = grad_scale,
        .decay = (float)(1.0 - lr * o->hp.weight_decay),
        .beta1 = (float)o->hp.beta1, .one_minus_beta1 = (float)(1.0 - o->hp.beta1),
        .beta2 = (float)o->hp.beta2, .one_minus_beta2 = (float)(1.0 - o->hp.beta2),
        .bias_correction2_sqrt = (float)sqrt(bc2), .eps = (float)o->hp.eps,
        .neg_step_size = (float)(-(lr / bc1)),
    };
    for (int32_t i = 0; i < o->n_params; i++)
        lorac_adamw_update_f32(o->params[i].data, o->m[i], o->v[i], o->params[i].grad, o->params[i].n, &c);
}

void lorac_adamw_skip(lorac_adamw_t *o) {
    o->c.skipped++;
    o->c.skipped_in_row++;
}

int lorac_adamw_update(lorac_adamw_t *o, double lr, double loss, float grad_scale, double max_norm, double *norm_out) {
    double norm = lorac_optim_grad_norm(o->params, o->n_params, grad_scale);
    if (norm_out) *norm_out = norm;
    if (!isfinite(loss) || !isfinite(norm)) {
        lorac_adamw_skip(o);
        return 0;
    }
    lorac_adamw_step(o, lr, grad_scale * lorac_optim_clip_factor(norm, max_norm));
    return 1;
}

lorac_adamw_counters_t lorac_adamw_get_counters(const lorac_adamw_t *o) { return o->c; }
void lorac_adamw_set_counters(lorac_adamw_t *o, lorac_adamw_counters_t c) { o->c = c; }

int lorac_adamw_too_many_skipped(const lorac_adamw_t *o, int32_t max_in_row) {
    if (max_in_row <= 0) max_in_row = LORAC_ADAMW_MAX_SKIPPED_IN_ROW;
    return o->c.skipped_in_row >= max_in_row;
}

int64_t lorac_adamw_steps(const lorac_adamw_t *o) { return o->c.steps; }
void lorac_adamw_set_steps(lorac_adamw_t *o, int64_t steps) { o->c.steps = steps; }
int32_t lorac_adamw_n_params(const lorac_adamw_t *o) { return o->n_params; }
const lorac_optim_param_t *lorac_adamw_param(const lorac_adamw_t *o, int32_t i) {
    return i >= 0 && i < o->n_params ? &o->params[i] : NULL;
}
float *lorac_adamw_exp_avg(lorac_adamw_t *o, int32_t i) { return i >= 0 && i < o->n_params ? o->m[i] : NULL; }
float *lorac_adamw_exp_avg_sq(lorac_adamw_t *o, int32_t i) { return i >= 0 && i < o->n_params ? o->v[i] : NULL; }

double lorac_optim_grad_norm(const lorac_optim_param_t *params, int32_t n_params, float grad_scale) {
    /* double accumulation: f32 squares would overflow above ~1.8e19 and lose
     * digits over millions of terms; NaN/inf propagate into the sum */
    double ss = 0.0;
    for (int32_t i = 0; i < n_params; i++) ss += lorac_sum_squares_f32(params[i].grad, params[i].n, grad_scale);
    return sqrt(ss);
}

float lorac_optim_clip_factor(double norm, double max_norm) {
    if (max_norm <= 0.0 || !isfinite(norm)) return 1.0f;
    double f = max_norm / (norm + 1e-6);
    return f < 1.0 ? (float)f : 1.0f;
}

static const char *const schedule_names[] = {"constant", "linear", "cosine"};

int lorac_schedule_parse(const char *name, lorac_schedule_t *out) {
    for (int k = 0; name && k < 3; k++)
        if (!strcmp(name, schedule_names[k])) { *out = (lorac_schedule_t)k; return 0; }
    return -1;
}

const char *lorac_schedule_name(lorac_schedule_t kind) {
    return (unsigned)kind < 3 ? schedule_names[kind] : NULL;
}

/* HF's lr_lambda functions, term for term, so that base_lr * lambda rounds
 * exactly as LambdaLR's does. */
static double schedule_lambda(lorac_schedule_t kind, int64_t warmup, int64_t total, int64_t step) {
    if (step < warmup) return (double)step / (double)(warmup > 1 ? warmup : 1);
    if (kind == LORAC_SCHEDULE_CONSTANT) return 1.0;
    double span = (double)(total - warmup > 1 ? total - warmup : 1);
    if (kind == LORAC_SCHEDULE_LINEAR) {
        double f = (double)(total - step) / span;
        return f > 0.0 ? f : 0.0;
    }
    double progress = (double)(step - warmup) / span;
    double f = 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress)); /* num_cycles = 0.5 */
    return f > 0.0 ? f : 0.0;
}

double lorac_schedule_lr(lorac_schedule_t kind, double base_lr, int64_t warmup, int64_t total, int64_t step) {
    return base_lr * schedule_lambda(kind, warmup, total, step);
}
