/* lorac/optim.h — AdamW, learning-rate schedules, gradient clipping, skipped
 * (non-finite) steps, and atomic training checkpoints.
 *
 * AdamW follows torch.optim.AdamW (amsgrad off, maximize off, the
 * single-tensor path of PyTorch 1.13) operation for operation, in f32, with
 * the scalars computed in double and rounded to f32 where torch does
 * (bit-identical to torch 1.13 on x86-64 in tests/test_optim.c):
 *   t += 1
 *   p  = p · f32(1 − lr·wd)                       (decoupled weight decay)
 *   m  = fma(f32(1 − β1), g, m · f32(β1))
 *   v  = fma(f32(1 − β2) · g, g, v · f32(β2))     (torch's kernels fuse these)
 *   denom = sqrt(v) / f32(sqrt(1 − β2ᵗ)) + f32(eps)
 *   p  = p + (f32(−lr/(1 − β1ᵗ)) · m) / denom
 * Schedules follow HuggingFace's get_{constant,linear,cosine}_schedule_with_warmup
 * under LambdaLR: the lr of optimizer step s (0-based: s steps already taken)
 * is base_lr · λ(s), λ computed in double as transformers does.
 *
 * Threads: an optimizer object is used by one thread at a time; the free
 * functions are reentrant.
 */
#ifndef LORAC_OPTIM_H
#define LORAC_OPTIM_H

#include <stdio.h>

#include "lorac/core.h"
#include "lorac/safetensors.h"

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

/* Allocates zeroed moments (m, v: n floats each) for every param. The array is
 * copied, the names and tensors are not: they must outlive the optimizer.
 * LORAC_STATUS_INVALID_ARG (naming the param) for a NULL or duplicate name,
 * n < 0, NULL data/grad with n > 0, beta outside [0, 1), eps or weight decay
 * negative or not finite; LORAC_STATUS_NOMEM when the moments do not fit. */
lorac_status_t lorac_adamw_init(const lorac_optim_param_t *params, int32_t n_params, lorac_adamw_params_t hp,
                                lorac_adamw_t **out);
void lorac_adamw_free(lorac_adamw_t *opt);

/* One update with learning rate lr; every gradient is first multiplied by
 * grad_scale (1/G for G accumulated micro-batches, times the clip factor).
 * Gradients are read, not changed. The caller has checked that loss and
 * gradients are finite (lorac_adamw_update does that for you); resets the
 * consecutive-skip counter. */
void lorac_adamw_step(lorac_adamw_t *opt, double lr, float grad_scale);

/* Records a step that was not taken (non-finite loss or gradients): weights,
 * moments and t are untouched, the skip counters go up. */
void lorac_adamw_skip(lorac_adamw_t *opt);

/* The usual call of a training step: norm = lorac_optim_grad_norm(·, grad_scale);
 * if loss or norm is not finite the step is skipped (lorac_adamw_skip),
 * otherwise taken with grad_scale · lorac_optim_clip_factor(norm, max_norm).
 * Returns 1 when the step was taken, 0 when skipped; *norm_out (may be NULL)
 * receives the norm before clipping. */
int lorac_adamw_update(lorac_adamw_t *opt, double lr, double loss, float grad_scale, double max_norm, double *norm_out);

/* Counters: steps taken (t in the bias correction), steps skipped in all, and
 * skipped since the last step taken. Saved and restored by checkpoints. */
typedef struct {
    int64_t steps, skipped, skipped_in_row;
} lorac_adamw_counters_t;
lorac_adamw_counters_t lorac_adamw_get_counters(const lorac_adamw_t *opt);
void lorac_adamw_set_counters(lorac_adamw_t *opt, lorac_adamw_counters_t counters);

/* Consecutive skipped steps that stop training by default. */
#define LORAC_ADAMW_MAX_SKIPPED_IN_ROW 10
/* 1 when skipped_in_row >= max_in_row (max_in_row <= 0 means the default):
 * the trainer stops and keeps its last checkpoint. */
int lorac_adamw_too_many_skipped(const lorac_adamw_t *opt, int32_t max_in_row);

/* Steps taken so far (t in the bias correction); set_steps changes only t. */
int64_t lorac_adamw_steps(const lorac_adamw_t *opt);
void lorac_adamw_set_steps(lorac_adamw_t *opt, int64_t steps);
/* The params as given to init, and the moments of param i, n floats each;
 * NULL for an index out of range. Valid until lorac_adamw_free. */
int32_t lorac_adamw_n_params(const lorac_adamw_t *opt);
const lorac_optim_param_t *lorac_adamw_param(const lorac_adamw_t *opt, int32_t i);
float *lorac_adamw_exp_avg(lorac_adamw_t *opt, int32_t i);
float *lorac_adamw_exp_avg_sq(lorac_adamw_t *opt, int32_t i);

/* Global L2 norm of all gradients times grad_scale (each g·grad_scale rounded
 * to f32 as the step sees it), squares summed in double. NaN or inf when any
 * gradient is not finite. */
double lorac_optim_grad_norm(const lorac_optim_param_t *params, int32_t n_params, float grad_scale);
/* torch.nn.utils.clip_grad_norm_'s factor: min(1, max_norm / (norm + 1e-6));
 * 1 when max_norm <= 0 (clipping off) or the norm is not finite. */
float lorac_optim_clip_factor(double norm, double max_norm);

typedef enum {
    LORAC_SCHEDULE_CONSTANT = 0,
    LORAC_SCHEDULE_LINEAR,
    LORAC_SCHEDULE_COSINE
} lorac_schedule_t;

/* "constant", "linear", "cosine" -> 0 and *out; -1 if unknown. */
int lorac_schedule_parse(const char *name, lorac_schedule_t *out);
/* "constant", ...; NULL for an out-of-range value. */
const char *lorac_schedule_name(lorac_schedule_t kind);
/* Learning rate of optimizer step `step` (0-based) of `total`, with a linear
 * warmup from 0 over the first `warmup` steps; cosine is HF's half cycle
 * (num_cycles 0.5). Never negative. */
double lorac_schedule_lr(lorac_schedule_t kind, double base_lr, int64_t warmup, int64_t total, int64_t step);

/* ---- checkpoints -------------------------------------------------------------
 * OUT/checkpoint-N/ holds
 *   params.safetensors      every optimizer param by name, F32 [n]
 *   optimizer.safetensors   "<name>.exp_avg", "<name>.exp_avg_sq", F32 [n]
 *   trainer_state.json      (written last) format/version, step, optimizer
 *                           counters, data position, RNG state (u64 values as
 *                           decimal strings), tokens, last/best loss (null for
 *                           none), the trainer's free-form object, and a
 *                           manifest: every other file's size and 64-bit checksum
 *   + the caller's files    e.g. adapter_model.safetensors + adapter_config.json
 *                           so the checkpoint is itself a PEFT adapter.
 * Save writes all of it into OUT/.checkpoint-N.tmp-<pid>/ (each file fsync'd),
 * fsyncs that directory, renames it to OUT/checkpoint-N (an existing
 * checkpoint-N is swapped out atomically with renameat2(RENAME_EXCHANGE) where
 * the kernel has it, else first renamed to OUT/.checkpoint-N.old-<pid>) and
 * fsyncs OUT. A kill at any moment therefore leaves every earlier checkpoint
 * whole, and checkpoint-N either absent, the old one, or the new one, whole.
 *
 * A checkpoint is whole when trainer_state.json parses and every file of its
 * manifest exists with the recorded size and checksum, and the two
 * safetensors files are valid and agree with each other.
 */

/* What the trainer passes to save and gets back from load. The RNG and data
 * fields are opaque to this module: saved and restored bit for bit. */
typedef struct {
    int64_t step;                /* training steps done, taken or skipped: the N of checkpoint-N (>= 0) */
    int64_t data_epoch, data_index, data_flags;
    uint64_t data_seed;
    uint64_t rng_state[4];
    int64_t tokens;
    double last_loss, best_loss; /* NaN: none (saved as null) */
    /* load/parse: the optimizer counters found in the file; save ignores this
     * field and saves the optimizer's own counters */
    lorac_adamw_counters_t optimizer;
    /* save: NULL or the text of a JSON object, stored as "trainer";
     * load/parse: a malloc'd compact JSON text of that object ("{}" when
     * absent), owned by the struct: release with lorac_checkpoint_state_clear */
    char *trainer_json;
} lorac_checkpoint_state_t;

/* Zeroes the struct, losses NaN, trainer_json NULL. */
lorac_checkpoint_state_t lorac_checkpoint_state_init(void);
/* Frees trainer_json (as returned by load/parse) and sets it to NULL. */
void lorac_checkpoint_state_clear(lorac_checkpoint_state_t *state);

/* An extra file written into the checkpoint from memory. */
typedef struct {
    const char *name;            /* plain file name: no '/', not a reserved name */
    const void *data;
    size_t len;
} lorac_checkpoint_file_t;

typedef struct {
    /* tensors written, as given (any dtype/shape), to tensors_file when
     * n_tensors > 0; tensors_file NULL means "adapter_model.safetensors" */
    const lorac_tensor_write_t *tensors;
    int64_t n_tensors;
    const char *tensors_file;
    const lorac_checkpoint_file_t *files;
    int32_t n_files;
    /* called with the temporary directory to write more files into it (e.g.
     * lorac_adapter_save(adapter, dir, base)); plain files only. NULL: none */
    lorac_status_t (*write_extra)(const char *dir, void *ctx);
    void *ctx;
    /* after a successful save of checkpoint-N, checkpoints numbered below N
     * are deleted but the keep_last − 1 newest of them; 0 keeps all (default) */
    int32_t keep_last;
} lorac_checkpoint_save_params_t;

lorac_checkpoint_save_params_t lorac_checkpoint_default_save_params(void);

/* Writes OUT/checkpoint-<state->step> as described above (OUT must exist),
 * then deletes stale temporary directories and applies keep_last (deletion
 * is best effort: it does not fail the save). On failure the earlier
 * checkpoints are untouched, checkpoint-N is the old one or the new one,
 * whole, and the temporary directory is removed; the status names the file. *path_out (may be NULL) receives the malloc'd
 * path of the checkpoint. The reserved names are params.safetensors,
 * optimizer.safetensors and trainer_state.json. */
lorac_status_t lorac_checkpoint_save(const char *out_dir, lorac_adamw_t *opt, const lorac_checkpoint_state_t *state,
                                     const lorac_checkpoint_save_params_t *params, char **path_out);

/* LORAC_STATUS_OK when dir is a whole checkpoint, else a status whose message
 * says what is wrong (missing file, size, checksum, invalid tensor file). */
lorac_status_t lorac_checkpoint_validate(const char *dir);

/* Validates dir, then restores every param's data, its moments and the
 * optimizer counters into opt and fills *state (trainer_json malloc'd). The
 * checkpoint's tensors must be exactly opt's params, by name and size; a
 * mismatch is LORAC_STATUS_FORMAT naming the tensor. On any failure opt and
 * *state are left unchanged. */
lorac_status_t lorac_checkpoint_load(const char *dir, lorac_adamw_t *opt, lorac_checkpoint_state_t *state);

/* Scans out_dir for checkpoint-<N> directories (hidden temporary ones are
 * ignored) and picks the highest N that is whole; broken ones are skipped with
 * a line "lorac: skipping <dir>: <reason>" on log (NULL: silent).
 * *path_out receives the malloc'd directory path. LORAC_STATUS_NOT_FOUND when
 * none is whole (or out_dir does not exist). Changes nothing on disk. */
lorac_status_t lorac_checkpoint_find_latest(const char *out_dir, int64_t *step_out, char **path_out, FILE *log);

/* Removes leftovers of interrupted saves, OUT/.checkpoint-*.tmp-<pid> and
 * .old-<pid>, whose process is no longer running. Returns how many
 * directories it removed, or -1 when out_dir cannot be read. */
int32_t lorac_checkpoint_cleanup(const char *out_dir);

/* Parses trainer_state.json text (len bytes, need not be NUL-terminated);
 * `label` names it in error messages. LORAC_STATUS_FORMAT naming the field
 * for anything malformed. On success *out is filled (trainer_json malloc'd). */
lorac_status_t lorac_checkpoint_state_parse(const char *text, size_t len, const char *label, lorac_checkpoint_state_t *out);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_OPTIM_H */
