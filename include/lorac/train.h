/* lorac/train.h — the training loop: data → forward/backward → AdamW →
 * checkpoints, evaluation, metrics, and the adapter (or model) it writes.
 *
 * OUT/ receives adapter_config.json + adapter_model.safetensors (PEFT), or
 * with full = true a whole model directory; metrics.jsonl (one JSON object per
 * optimizer step); README.md (how it was trained); checkpoint-N/ every
 * save_every steps (atomic: a crash leaves the previous one whole). With
 * resume, training continues from the latest whole checkpoint and produces
 * bit-identical losses and weights to an uninterrupted run.
 */
#ifndef LORAC_TRAIN_H
#define LORAC_TRAIN_H

#include <stdbool.h>
#include <stdio.h>

#include "lorac/core.h"
#include "lorac/lora.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *model_dir, *data, *eval_data, *out_dir;
    double eval_split;           /* without eval_data: hold out this fraction (< 1) or count (>= 1) of data; 0 = none */
    const char *format;          /* auto|text|completion|alpaca|chat|tokens */
    const char *chat_template;   /* NULL: from tokenizer_config.json */
    const char *columns;         /* "output=summary,...": the data's keys renamed (lorac/dataset.h) */
    int32_t seq;
    bool pack, train_on_inputs, skip_bad, shuffle;
    lorac_lora_params_t lora;    /* targets/layers are filled from the strings below */
    const char *targets;         /* "q_proj,v_proj" or "all-linear"; NULL: PEFT's default for the model (q_proj,v_proj; Phi-3's qkv_proj) */
    const char *layers;          /* "0-3,7"; NULL = all */
    const char *init_adapter;
    bool full;
    bool quantize_nf4;           /* QLoRA: the frozen projections held in NF4 (lorac_model_load_params_t); not with full */
    double lr;
    const char *schedule;        /* constant|linear|cosine */
    int64_t warmup, steps;       /* steps 0: from epochs */
    double epochs;               /* 0: one epoch unless steps */
    int32_t batch, grad_accum;
    double clip, weight_decay, beta1, beta2, eps;
    uint64_t seed;
    int64_t save_every, eval_every;
    bool resume;
    int32_t max_bad_steps;       /* consecutive non-finite steps before stopping */
    FILE *log;                   /* progress and summary (stderr in the CLI); NULL: silent */
    int64_t inject_nan_step;     /* testing: poison a gradient at this step (0: never) */
    bool profile;                /* at the end, log where a step's time went (steps after the first) */
} lorac_train_params_t;

lorac_train_params_t lorac_train_default_params(void);

typedef struct {
    int64_t steps, tokens, skipped_steps;
    /* positions this run trained on (tokens counts every position of a
     * batch, padding included, as HF Trainer's input-token count does) that
     * held examples' tokens */
    int64_t example_tokens;
    double first_loss, last_loss;     /* training loss of the first/last step with targets (NaN: none had) */
    double eval_loss_before, eval_loss_after; /* NAN without eval data */
    double seconds, tokens_per_second;
    int64_t peak_rss_bytes, adapter_bytes;
} lorac_train_result_t;

/* Runs the whole training. Errors (bad data, I/O) come back as statuses with
 * messages; training stopped by too many non-finite steps is
 * LORAC_STATUS_FORMAT with the last good checkpoint kept. */
lorac_status_t lorac_train_run(const lorac_train_params_t *params, lorac_train_result_t *result);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_TRAIN_H */
