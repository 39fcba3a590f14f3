/* lorac/optim.h — AdamW, learning-rate schedules and gradient clipping.
 *
 * AdamW follows torch.optim.AdamW (amsgrad off) step for step, in f32:
 *   p -= lr·wd·p ; m = β1·m + (1−β1)·g ; v = β2·v + (1−β2)·g²
 *   p -= lr/(1−β1ᵗ) · m / (sqrt(v)/sqrt(1−β2ᵗ) + eps)
 * Schedules follow HuggingFace's get_{constant,linear,cosine}_schedule_with_warmup:
 * the lr of optimizer step s (0-based) is base_lr · λ(s).
 */
#ifndef LORAC_OPTIM_H
#define LORAC_OPTIM_H

#include "lorac/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One trainable tensor: f32 values and their gradient, both n floats. */
typedef struct {
    const char *name;
    float *data;
    float *grad;
    int64_t n;
} lorac_optim_param_t;

typedef struct {
    double beta1, beta2, eps, weight_decay;
} lorac_adamw_params_t;

/* beta1 0.9, beta2 0.999, eps 1e-8, weight_decay 0 (torch's defaults but wd). */
lorac_adamw_params_t lorac_adamw_default_params(void);

typedef struct lorac_adamw lorac_adamw_t;

/* Allocates zeroed moments for the params (the array is copied; the tensors
 * must outlive the optimizer). */
lorac_status_t lorac_adamw_init(const lorac_optim_param_t *params, int32_t n_params, lorac_adamw_params_t hp,
                                lorac_adamw_t **out);
void lorac_adamw_free(lorac_adamw_t *opt);

/* One update with learning rate lr; every gradient is first multiplied by
 * grad_scale (1/G for G accumulated micro-batches, times the clip factor). */
void lorac_adamw_step(lorac_adamw_t *opt, double lr, float grad_scale);
/* Steps taken so far (t in the bias correction). */
int64_t lorac_adamw_steps(const lorac_adamw_t *opt);
/* Moments of param i, n floats each (for checkpoints). */
float *lorac_adamw_exp_avg(lorac_adamw_t *opt, int32_t i);
float *lorac_adamw_exp_avg_sq(lorac_adamw_t *opt, int32_t i);
void lorac_adamw_set_steps(lorac_adamw_t *opt, int64_t steps);

/* Global L2 norm of all gradients, accumulated in double (times grad_scale).
 * NaN or inf when any gradient is not finite. */
double lorac_optim_grad_norm(const lorac_optim_param_t *params, int32_t n_params, float grad_scale);
/* torch.nn.utils.clip_grad_norm_'s factor: min(1, max_norm / (norm + 1e-6));
 * 1 when max_norm <= 0 (clipping off). */
float lorac_optim_clip_factor(double norm, double max_norm);

typedef enum {
    LORAC_SCHEDULE_CONSTANT = 0,
    LORAC_SCHEDULE_LINEAR,
    LORAC_SCHEDULE_COSINE
} lorac_schedule_t;

/* "constant", "linear", "cosine" -> 0 and *out; -1 if unknown. */
int lorac_schedule_parse(const char *name, lorac_schedule_t *out);
/* Learning rate of optimizer step `step` (0-based) of `total`. */
double lorac_schedule_lr(lorac_schedule_t kind, double base_lr, int64_t warmup, int64_t total, int64_t step);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_OPTIM_H */
