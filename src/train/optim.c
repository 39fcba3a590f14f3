/* AdamW, schedules, gradient norm and clipping (lorac/optim.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lorac/optim.h"

struct lorac_adamw {
    lorac_optim_param_t *params;
    int32_t n_params;
    float **m, **v;
    lorac_adamw_params_t hp;
    int64_t t;
};

lorac_adamw_params_t lorac_adamw_default_params(void) {
    lorac_adamw_params_t p = {.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.0};
    return p;
}

lorac_status_t lorac_adamw_init(const lorac_optim_param_t *params, int32_t n_params, lorac_adamw_params_t hp,
                                lorac_adamw_t **out) {
    *out = NULL;
    lorac_adamw_t *o = calloc(1, sizeof *o);
    if (!o) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    o->n_params = n_params;
    o->hp = hp;
    o->params = malloc(sizeof *o->params * (size_t)(n_params ? n_params : 1));
    o->m = calloc((size_t)(n_params ? n_params : 1), sizeof(float *));
    o->v = calloc((size_t)(n_params ? n_params : 1), sizeof(float *));
    if (!o->params || !o->m || !o->v) { lorac_adamw_free(o); return lorac_error(LORAC_STATUS_NOMEM, "out of memory"); }
    memcpy(o->params, params, sizeof *o->params * (size_t)n_params);
    for (int32_t i = 0; i < n_params; i++) {
        o->m[i] = calloc((size_t)params[i].n, sizeof(float));
        o->v[i] = calloc((size_t)params[i].n, sizeof(float));
        if (!o->m[i] || !o->v[i]) { lorac_adamw_free(o); return lorac_error(LORAC_STATUS_NOMEM, "out of memory for optimizer moments"); }
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
    o->t++;
    /* the scalars as torch computes them: bias corrections in double, then
     * step_size = lr / bc1 and denom = sqrt(v) / sqrt(bc2) + eps in f32 */
    double bc1 = 1.0 - pow(o->hp.beta1, (double)o->t), bc2 = 1.0 - pow(o->hp.beta2, (double)o->t);
    float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    float b1 = (float)o->hp.beta1, b2 = (float)o->hp.beta2, eps = (float)o->hp.eps;
    float decay = (float)(1.0 - lr * o->hp.weight_decay);
    for (int32_t i = 0; i < o->n_params; i++) {
        float *p = o->params[i].data, *g = o->params[i].grad, *m = o->m[i], *v = o->v[i];
        for (int64_t k = 0; k < o->params[i].n; k++) {
            float gk = g[k] * grad_scale;
            p[k] *= decay;
            m[k] = m[k] * b1 + (1.0f - b1) * gk;
            v[k] = v[k] * b2 + (1.0f - b2) * gk * gk;
            float denom = sqrtf(v[k]) / bc2_sqrt + eps;
            p[k] -= step_size * m[k] / denom;
        }
    }
}

int64_t lorac_adamw_steps(const lorac_adamw_t *o) { return o->t; }
void lorac_adamw_set_steps(lorac_adamw_t *o, int64_t steps) { o->t = steps; }
float *lorac_adamw_exp_avg(lorac_adamw_t *o, int32_t i) { return i >= 0 && i < o->n_params ? o->m[i] : NULL; }
float *lorac_adamw_exp_avg_sq(lorac_adamw_t *o, int32_t i) { return i >= 0 && i < o->n_params ? o->v[i] : NULL; }

double lorac_optim_grad_norm(const lorac_optim_param_t *params, int32_t n_params, float grad_scale) {
    double ss = 0.0;
    for (int32_t i = 0; i < n_params; i++)
        for (int64_t k = 0; k < params[i].n; k++) {
            double g = (double)(params[i].grad[k] * grad_scale);
            ss += g * g;
        }
    return sqrt(ss);
}

float lorac_optim_clip_factor(double norm, double max_norm) {
    if (max_norm <= 0.0 || !isfinite(norm)) return 1.0f;
    double f = max_norm / (norm + 1e-6);
    return f < 1.0 ? (float)f : 1.0f;
}

int lorac_schedule_parse(const char *name, lorac_schedule_t *out) {
    if (!strcmp(name, "constant")) *out = LORAC_SCHEDULE_CONSTANT;
    else if (!strcmp(name, "linear")) *out = LORAC_SCHEDULE_LINEAR;
    else if (!strcmp(name, "cosine")) *out = LORAC_SCHEDULE_COSINE;
    else return -1;
    return 0;
}

double lorac_schedule_lr(lorac_schedule_t kind, double base_lr, int64_t warmup, int64_t total, int64_t step) {
    if (step < warmup) return base_lr * (double)step / (double)(warmup > 1 ? warmup : 1);
    double span = (double)(total - warmup > 1 ? total - warmup : 1);
    double progress = (double)(step - warmup) / span;
    switch (kind) {
    case LORAC_SCHEDULE_LINEAR: {
        double f = (double)(total - step) / span;
        return base_lr * (f > 0.0 ? f : 0.0);
    }
    case LORAC_SCHEDULE_COSINE: {
        double f = 0.5 * (1.0 + cos(M_PI * progress));
        return base_lr * (f > 0.0 ? f : 0.0);
    }
    case LORAC_SCHEDULE_CONSTANT:
    default: return base_lr;
    }
}
