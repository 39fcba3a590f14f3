/* The training loop (lorac/train.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "lorac/dataset.h"
#include "lorac/kernels.h"
#include "lorac/lora.h"
#include "lorac/model.h"
#include "lorac/optim.h"
#include "lorac/safetensors.h"
#include "lorac/train.h"
#include "train/trainer_internal.h"

lorac_train_params_t lorac_train_default_params(void) {
    lorac_train_params_t p;
    memset(&p, 0, sizeof p);
    p.format = "auto";
    p.seq = 256;
    p.shuffle = true;
    p.lora = lorac_lora_default_params();
    p.targets = NULL; /* the model's default: PEFT's (q_proj, v_proj; Phi-3's qkv_proj) */
    p.lr = 2e-4;
    p.schedule = "linear";
    p.batch = 4;
    p.grad_accum = 1;
    p.clip = 1.0;
    p.beta1 = 0.9;
    p.beta2 = 0.999;
    p.eps = 1e-8;
    p.seed = 42;
    p.max_bad_steps = 10;
    return p;
}

int64_t trainer_peak_rss(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (int64_t)ru.ru_maxrss * 1024;
}

/* ---- trainable-parameter report ------------------------------------------- */
static void report_trainable(FILE *log, const lorac_model_t *model, const lorac_adapter_t *a) {
    if (!log) return;
    int64_t per_kind[LORAC_LORA_COUNT] = {0}, full_kind[LORAC_LORA_COUNT] = {0};
    int32_t count[LORAC_LORA_COUNT] = {0}, rank[LORAC_LORA_COUNT] = {0};
    lorac_adapter_t *aa = (lorac_adapter_t *)a;
    for (int32_t i = 0; i < lorac_adapter_n_modules(aa); i++) {
        const lorac_lora_module_t *m = lorac_adapter_module(aa, i);
        /* Phi-3's fused modules: one row per qkv_proj / gate_up_proj, the shared A counted once */
        int t = (int)lorac_lora_module_head(m);
        per_kind[t] += (int64_t)m->r * ((m->in_group ? 0 : m->in) + m->out);
        full_kind[t] += (int64_t)m->in * m->out;
        count[t] += !m->in_group;
        rank[t] = m->r;
    }
    int64_t total = lorac_adapter_n_params(aa), base = lorac_model_n_params(model), full = 0;
    fprintf(log, "LoRA: r=%d alpha=%g%s dropout=%g\n", lorac_adapter_params(aa)->r, (double)lorac_adapter_params(aa)->alpha,
            lorac_adapter_params(aa)->rslora ? " (rsLoRA)" : "", (double)lorac_adapter_params(aa)->dropout);
    fprintf(log, "  %-12s %7s %12s %14s %8s\n", "module", "layers", "r*(in+out)", "in*out", "ratio");
    for (int t = 0; t < LORAC_LORA_COUNT; t++) {
        if (!count[t]) continue;
        full += full_kind[t];
        fprintf(log, "  %-12s %7d %12lld %14lld %7.2f%%  (r=%d)\n",
                lorac_lora_module_name(lorac_model_get_config(model), (lorac_lora_target_t)t), count[t],
                (long long)per_kind[t], (long long)full_kind[t], 100.0 * (double)per_kind[t] / (double)full_kind[t], rank[t]);
    }
    fprintf(log, "  trainable %lld parameters = %.3f%% of the adapted matrices (%lld), %.3f%% of the base model (%lld)\n",
            (long long)total, 100.0 * (double)total / (double)full, (long long)full, 100.0 * (double)total / (double)base,
            (long long)base);
}

/* ---- checkpoints ------------------------------------------------------------
 * The layout and atomicity are lorac/optim.h's (lorac_checkpoint_save); the
 * trainer adds the PEFT adapter files and its own counters. */
typedef struct {
    lorac_train_pass_t *pass;
    lorac_adamw_t *opt;
    lorac_adapter_t *adapter;
    const char *base_model;
    lorac_optim_param_t *params;
    int32_t n_params;
    bool quantized; /* the base's projections in NF4 (--quantize nf4) */
} run_t;

typedef struct {
    int64_t step;
    lorac_data_cursor_t cursor;
    lorac_rng_t rng;
    int64_t skipped, bad_in_row, tokens;
} train_state_t;

static lorac_status_t write_adapter_files(const char *dir, void *ctx) {
    run_t *r = ctx;
    return lorac_adapter_save(r->adapter, dir, r->base_model);
}

static lorac_status_t save_checkpoint(const char *out_dir, run_t *r, const train_state_t *ts) {
    lorac_checkpoint_state_t st = lorac_checkpoint_state_init();
    st.step = ts->step;
    st.data_seed = ts->cursor.seed;
    st.data_epoch = ts->cursor.epoch;
    st.data_index = ts->cursor.index;
    st.data_flags = ts->cursor.shuffle;
    st.rng_state[0] = ts->rng.state;
    st.tokens = ts->tokens;
    char trainer[128];
    snprintf(trainer, sizeof trainer, "{\"skipped\": %lld, \"bad_in_row\": %lld%s}", (long long)ts->skipped,
             (long long)ts->bad_in_row, r->quantized ? ", \"base\": \"nf4\"" : "");
    st.trainer_json = trainer;
    lorac_checkpoint_save_params_t sp = lorac_checkpoint_default_save_params();
    if (r->adapter) { sp.write_extra = write_adapter_files; sp.ctx = r; }
    return lorac_checkpoint_save(out_dir, r->opt, &st, &sp, NULL);
}

static int64_t json_int(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : 0;
}

/* Restores the latest whole checkpoint; returns its step, -1 for none, or
 * -2 (with the error set) for one trained on another base: its steps went
 * through an NF4-quantized base and this run's does not, or the other way. */
static int64_t resume_latest(const char *out_dir, run_t *r, train_state_t *ts, FILE *log) {
    int64_t n;
    char *path = NULL;
    if (lorac_checkpoint_find_latest(out_dir, &n, &path, log) != LORAC_STATUS_OK) return -1;
    lorac_checkpoint_state_t st = lorac_checkpoint_state_init();
    lorac_status_t s = lorac_checkpoint_load(path, r->opt, &st);
    free(path);
    if (s) {
        if (log) fprintf(log, "resume: %s\n", lorac_error_message());
        return -1;
    }
    ts->step = st.step;
    ts->cursor.seed = st.data_seed;
    ts->cursor.epoch = st.data_epoch;
    ts->cursor.index = st.data_index;
    ts->cursor.shuffle = (int32_t)st.data_flags;
    ts->rng.state = st.rng_state[0];
    ts->tokens = st.tokens;
    cJSON *t = st.trainer_json ? cJSON_Parse(st.trainer_json) : NULL;
    ts->skipped = json_int(t, "skipped");
    ts->bad_in_row = json_int(t, "bad_in_row");
    bool was_quantized = cJSON_IsString(cJSON_GetObjectItemCaseSensitive(t, "base"));
    cJSON_Delete(t);
    lorac_checkpoint_state_clear(&st);
    if (was_quantized != r->quantized) {
        lorac_error(LORAC_STATUS_INVALID_ARG, "%s/checkpoint-%lld was trained on %s base; resume %s --quantize nf4%s",
                    out_dir, (long long)n, was_quantized ? "an NF4-quantized" : "an unquantized",
                    was_quantized ? "with" : "without",
                    was_quantized ? " (or on the bitsandbytes checkpoint it was trained on)"
                                  : ", on the unquantized model it was trained on");
        return -2;
    }
    return n;
}

/* ---- --profile ---------------------------------------------------------------- */
/* --profile: the time of the timed steps (every step of this run after its
 * first, which also pays for first-touching the activations), by phase. */
typedef struct {
    double phase[LORAC_PHASE_COUNT], flops[LORAC_PHASE_COUNT]; /* lorac_train_pass_time_phases */
    double data, optim, step;        /* batches, zero + norm + AdamW, whole steps */
    int64_t steps, tokens;
} step_profile_t;

static void print_profile(FILE *log, const step_profile_t *pr) {
    if (!pr->steps) {
        fprintf(log, "profile: no step after the first to time (use --steps 2 or more)\n");
        return;
    }
    double n = (double)pr->steps, accounted = pr->data + pr->optim;
    fprintf(log, "profile: %lld steps after the first, %.1f ms a step, %.1f tokens/s\n", (long long)pr->steps,
            1e3 * pr->step / n, (double)pr->tokens / pr->step);
    fprintf(log, "  %-16s %10s %7s %9s\n", "phase", "ms/step", "share", "GFLOP/s");
    for (int i = 0; i < LORAC_PHASE_COUNT; i++) {
        accounted += pr->phase[i];
        fprintf(log, "  %-16s %10.2f %6.1f%%", lorac_train_phase_name((lorac_train_phase_t)i), 1e3 * pr->phase[i] / n,
                100.0 * pr->phase[i] / pr->step);
        if (pr->flops[i] > 0 && pr->phase[i] > 0) fprintf(log, " %9.1f", pr->flops[i] / pr->phase[i] / 1e9);
        fputc('\n', log);
    }
    fprintf(log, "  %-16s %10.2f %6.1f%%\n", "optimizer", 1e3 * pr->optim / n, 100.0 * pr->optim / pr->step);
    fprintf(log, "  %-16s %10.2f %6.1f%%\n", "data", 1e3 * pr->data / n, 100.0 * pr->data / pr->step);
    fprintf(log, "  %-16s %10.2f %6.1f%%\n", "other", 1e3 * (pr->step - accounted) / n,
            100.0 * (pr->step - accounted) / pr->step);
}

/* ---- evaluation -------------------------------------------------------------- */
static lorac_status_t evaluate(lorac_train_pass_t *pass, lorac_dataset_t *eval, int32_t B, int32_t T, bool pack,
                               int32_t *tok, int32_t *tgt, int32_t *pos, double *mean_loss) {
    lorac_data_cursor_t cur = lorac_data_cursor_init(0, false);
    double sum = 0.0;
    int64_t n = 0;
    while (cur.epoch == 0) {
        lorac_dataset_next_batch(eval, &cur, B, T, pack, tok, tgt, pos);
        double s;
        int64_t k;
        lorac_status_t st = lorac_train_pass_run(pass, tok, tgt, pos, false, NULL, &s, &k);
        if (st) return st;
        sum += s;
        n += k;
    }
    *mean_loss = n ? sum / (double)n : NAN;
    return LORAC_STATUS_OK;
}

/* ---- outputs ------------------------------------------------------------------ */
/* --targets, or PEFT's default for the model: q_proj and v_proj, Phi-3's
 * fused qkv_proj, GPT-2's c_attn (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING). */
static const char *targets_or_default(const lorac_train_params_t *p, const lorac_model_config_t *c) {
    return p->targets ? p->targets : c->fused_proj ? "qkv_proj" : c->fused_qkv ? "c_attn" : "q_proj,v_proj";
}

static void write_readme(const lorac_train_params_t *p, const lorac_train_result_t *res, int64_t n_trainable,
                         const char *format, const char *targets) {
    char path[4200];
    snprintf(path, sizeof path, "%s/README.md", p->out_dir);
    char *text = NULL; /* sized to fit: the paths in it may be long */
    int n = asprintf(&text,
                     "# %s fine-tune of %s\n\n"
                     "Trained with `lorac train` on `%s` (format %s%s%s), %lld steps of batch %d x %d tokens"
                     " (gradient accumulation %d), lr %g (%s schedule, %lld warmup steps), weight decay %g, clip %g, seed %llu.\n\n"
                     "%lld trainable parameters%s%s%s.\n\n"
                     "Training loss %.4f -> %.4f; held-out loss %s.\n\n"
                     "Load it with PEFT (`PeftModel.from_pretrained(base, \"%s\")`) or `lorac generate -m %s --adapter %s`.\n",
                     p->full ? "Full" : "LoRA", p->model_dir, p->data, format, p->columns ? ", columns " : "",
                     p->columns ? p->columns : "", (long long)res->steps, p->batch, p->seq, p->grad_accum, p->lr,
                     p->schedule, (long long)p->warmup, p->weight_decay, p->clip, (unsigned long long)p->seed,
                     (long long)n_trainable, p->full ? "" : " (LoRA on ",
                     p->full ? "" : p->init_adapter ? "the modules of the --init-adapter" : targets, p->full ? "" : ")",
                     res->first_loss, res->last_loss,
                     isnan(res->eval_loss_after) ? "not measured" : "see metrics.jsonl", p->out_dir, p->model_dir,
                     p->out_dir);
    if (n < 0) return; /* out of memory: no README, the adapter is what matters */
    lorac_file_write_atomic(path, text, (size_t)n);
    free(text);
}

/* The trained tensors in f32, and every tensor of the base that training
 * does not touch (a multimodal model's vision tower) as it was, so the
 * directory is a whole model. */
static lorac_status_t save_full_model(const char *model_dir, const char *out_dir, run_t *r) {
    lorac_weight_files_t *wf;
    lorac_status_t s = lorac_weight_files_open(model_dir, &wf);
    if (s) return s;
    int64_t n_base = lorac_weight_files_count(wf), n = r->n_params;
    lorac_tensor_write_t *t = calloc((size_t)(r->n_params + n_base), sizeof *t);
    if (!t) { lorac_weight_files_free(wf); return lorac_error(LORAC_STATUS_NOMEM, "out of memory"); }
    for (int64_t i = 0; i < n_base; i++) {
        const lorac_tensor_view_t *tv = lorac_weight_files_get(wf, i);
        int32_t k = 0;
        while (k < r->n_params && strcmp(r->params[k].name, tv->name) != 0) k++;
        if (k < r->n_params) continue;
        t[n].name = tv->name;
        t[n].dtype = tv->dtype;
        t[n].data = tv->data;
        t[n].n_dims = tv->n_dims;
        memcpy(t[n].shape, tv->shape, sizeof t[n].shape);
        n++;
    }
    for (int32_t i = 0; i < r->n_params; i++) {
        const lorac_tensor_view_t *tv = lorac_weight_files_find(wf, r->params[i].name);
        t[i].name = r->params[i].name;
        t[i].dtype = LORAC_DTYPE_F32;
        t[i].data = r->params[i].data;
        t[i].n_dims = tv ? tv->n_dims : 1;
        for (int d = 0; d < t[i].n_dims; d++) t[i].shape[d] = tv ? tv->shape[d] : r->params[i].n;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    s = lorac_safetensors_write(path, t, n, mk, mv, 1);
    lorac_weight_files_free(wf);
    free(t);
    /* config and tokenizer files travel along unchanged */
    static const char *const files[] = {"config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
                                        "special_tokens_map.json"};
    for (size_t i = 0; !s && i < sizeof files / sizeof files[0]; i++) {
        char src[4200], *text;
        size_t len;
        snprintf(src, sizeof src, "%s/%s", model_dir, files[i]);
        if (lorac_file_read(src, (size_t)1 << 30, &text, &len) != LORAC_STATUS_OK) continue;
        snprintf(path, sizeof path, "%s/%s", out_dir, files[i]);
        s = lorac_file_write_atomic(path, text, len);
        free(text);
    }
    return s;
}

/* ---- the loop ------------------------------------------------------------------ */
lorac_status_t lorac_train_run(const lorac_train_params_t *p, lorac_train_result_t *res) {
    memset(res, 0, sizeof *res);
    res->eval_loss_before = res->eval_loss_after = NAN;
    FILE *log = p->log;
    lorac_status_t s = LORAC_STATUS_OK;
    lorac_model_t *model = NULL;
    lorac_dataset_t *data = NULL, *eval = NULL;
    lorac_adapter_t *adapter = NULL;
    lorac_train_pass_t *pass = NULL;
    lorac_adamw_t *opt = NULL;
    lorac_optim_param_t *params = NULL;
    int32_t *tok = NULL, *tgt = NULL, *pos = NULL;
    FILE *metrics = NULL;
    char path[4200];

    lorac_data_format_t fmt;
    lorac_schedule_t sched;
    if (lorac_data_format_parse(p->format, &fmt)) return lorac_error(LORAC_STATUS_INVALID_ARG, "unknown --format '%s'", p->format);
    if (lorac_schedule_parse(p->schedule, &sched)) return lorac_error(LORAC_STATUS_INVALID_ARG, "unknown --schedule '%s'", p->schedule);
    if (p->eval_split && p->eval_data)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "give --eval-data or --eval-split, not both");
    if (p->eval_split && lorac_dataset_split_size(1, p->eval_split) < 0)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "--eval-split %g: a fraction of the data in (0, 1) or a whole number of examples",
                           p->eval_split);
    if (mkdir(p->out_dir, 0755) != 0 && errno != EEXIST)
        return lorac_error(LORAC_STATUS_IO, "%s: cannot create directory: %s", p->out_dir, strerror(errno));

    /* a named text format needs the tokenizer: say so before the weights
     * load (seconds for a multi-GB model), not after */
    if (fmt != LORAC_DATA_TOKENS && fmt != LORAC_DATA_AUTO && lorac_model_dir_lacks_tokenizer(p->model_dir))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "%s has no tokenizer.json: only --format tokens can train without one",
                           p->model_dir);

    if (p->full && p->quantize_nf4)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "full training updates every weight; a quantized base is for LoRA");
    lorac_model_load_params_t lp = {.for_training = !p->full, .quantize = p->quantize_nf4 ? LORAC_DTYPE_NF4 : LORAC_DTYPE_F32};
    if ((s = lorac_model_load_ex(p->model_dir, &lp, &model))) goto done;
    const lorac_model_config_t *cfg = lorac_model_get_config(model);
    bool quantized_base = p->quantize_nf4 || cfg->bnb_nf4;
    if (p->full && cfg->bnb_nf4) {
        s = lorac_error(LORAC_STATUS_INVALID_ARG, "%s is a bitsandbytes 4-bit checkpoint: full training needs the "
                        "unquantized model (a quantized base is for LoRA)", p->model_dir);
        goto done;
    }
    if (cfg->bnb_nf4 && log)
        fprintf(log, "base: a bitsandbytes 4-bit checkpoint, its projections read as NF4\n");
    else if (p->quantize_nf4 && log) {
        fprintf(log, "base: projections quantized to NF4 (QLoRA's 4-bit NormalFloat, blocks of 64)");
        if (lorac_model_n_unquantized(model))
            fprintf(log, "; %d left as they were (rows not a multiple of 8 long)", lorac_model_n_unquantized(model));
        fputc('\n', log);
    }
    const lorac_tokenizer_t *tk = lorac_model_get_tokenizer(model);
    if (cfg->learned_positions && p->seq > cfg->max_position_embeddings) {
        s = lorac_error(LORAC_STATUS_INVALID_ARG, "--seq %d is longer than the %d positions %s has learned (n_positions)",
                        p->seq, cfg->max_position_embeddings, cfg->arch_name);
        goto done;
    }
    lorac_dataset_params_t dp = lorac_dataset_default_params();
    dp.format = fmt;
    dp.chat_template = p->chat_template;
    dp.columns = p->columns;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", p->model_dir);
    struct stat st;
    dp.tokenizer_config = stat(path, &st) == 0 ? path : NULL;
    dp.seq_len = p->seq;
    dp.vocab_size = cfg->vocab_size;
    dp.train_on_inputs = p->train_on_inputs;
    dp.skip_bad = p->skip_bad;
    if (!tk && fmt != LORAC_DATA_TOKENS) {
        s = lorac_error(LORAC_STATUS_INVALID_ARG, "%s has no tokenizer.json: only --format tokens can train without one", p->model_dir);
        goto done;
    }
    if ((s = lorac_dataset_load(p->data, tk, &dp, &data))) goto done;
    if (p->eval_data && (s = lorac_dataset_load(p->eval_data, tk, &dp, &eval))) goto done;
    if (p->eval_split > 0) { /* held out from the training data, the same examples on every run of this seed */
        int64_t n_eval = lorac_dataset_split_size(lorac_dataset_n_examples(data), p->eval_split);
        if ((s = lorac_dataset_split(data, n_eval, p->seed, &eval))) goto done;
    }
    if (log) {
        fprintf(log, "data: %lld examples (%s)", (long long)lorac_dataset_n_examples(data),
                lorac_data_format_name(lorac_dataset_format(data)));
        if (lorac_dataset_n_skipped(data)) fprintf(log, ", %lld malformed lines skipped", (long long)lorac_dataset_n_skipped(data));
        if (lorac_dataset_n_truncated(data)) fprintf(log, ", %lld truncated to %d tokens", (long long)lorac_dataset_n_truncated(data), p->seq + 1);
        if (lorac_dataset_n_without_targets(data))
            fprintf(log, ", %lld with nothing to learn (the response masked or past --seq)",
                    (long long)lorac_dataset_n_without_targets(data));
        if (eval) fprintf(log, "; eval: %lld examples%s", (long long)lorac_dataset_n_examples(eval),
                          p->eval_data ? "" : " held out from the data");
        if (eval && lorac_dataset_n_truncated(eval)) fprintf(log, ", %lld truncated", (long long)lorac_dataset_n_truncated(eval));
        if (eval && lorac_dataset_n_without_targets(eval))
            fprintf(log, ", %lld with nothing to score", (long long)lorac_dataset_n_without_targets(eval));
        fputc('\n', log);
    }

    if (!p->full) {
        if (p->init_adapter) {
            if ((s = lorac_adapter_load(p->init_adapter, cfg, &adapter))) goto done;
        } else {
            lorac_lora_params_t lp = p->lora;
            uint8_t *layers = malloc((size_t)cfg->n_layers);
            if (!layers) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); goto done; }
            if (!(s = lorac_lora_parse_targets(targets_or_default(p, cfg), &lp.targets)) &&
                !(s = lorac_lora_parse_layers(p->layers, cfg->n_layers, layers))) {
                lp.layers = layers;
                s = lorac_adapter_init(cfg, &lp, &adapter);
            }
            free(layers);
            if (s) goto done;
        }
        report_trainable(log, model, adapter);
    } else if (log) {
        fprintf(log, "full fine-tuning: %lld parameters in f32 master weights\n", (long long)lorac_model_n_params(model));
    }

    lorac_train_pass_params_t pp = {.batch = p->batch, .seq_len = p->seq};
    if ((s = lorac_train_pass_init(model, adapter, pp, &pass))) goto done;
    int32_t np = lorac_train_pass_n_params(pass);
    params = calloc((size_t)np, sizeof *params);
    if (!params) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); goto done; }
    int64_t n_trainable = 0;
    for (int32_t i = 0; i < np; i++) {
        lorac_train_pass_param(pass, i, &params[i].name, &params[i].data, &params[i].grad, &params[i].n);
        n_trainable += params[i].n;
    }
    lorac_adamw_params_t hp = {.beta1 = p->beta1, .beta2 = p->beta2, .eps = p->eps, .weight_decay = p->weight_decay};
    if ((s = lorac_adamw_init(params, np, hp, &opt))) goto done;

    int64_t per_epoch = lorac_dataset_batches_per_epoch(data, p->batch, p->seq, p->pack);
    int64_t total = p->steps ? p->steps
                             : (int64_t)ceil((p->epochs > 0 ? p->epochs : 1.0) * (double)per_epoch / (double)p->grad_accum);
    if (total < 1) total = 1;
    size_t n_rows = (size_t)p->batch * (size_t)p->seq;
    tok = malloc(sizeof(int32_t) * n_rows); tgt = malloc(sizeof(int32_t) * n_rows); pos = malloc(sizeof(int32_t) * n_rows);
    if (!tok || !tgt || !pos) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); goto done; }

    run_t run = {.pass = pass, .opt = opt, .adapter = adapter, .base_model = p->model_dir, .params = params, .n_params = np,
                 .quantized = quantized_base};
    train_state_t ts = {.step = 0, .cursor = lorac_data_cursor_init(p->seed, p->shuffle)};
    lorac_rng_seed(&ts.rng, p->seed ^ 0xd1b54a32d192ed03ull);
    snprintf(path, sizeof path, "%s/metrics.jsonl", p->out_dir);
    if (p->resume) {
        int64_t at = resume_latest(p->out_dir, &run, &ts, log);
        if (at == -2) {
            s = LORAC_STATUS_INVALID_ARG;
            goto done;
        }
        if (at < 0) {
            if (log) fprintf(log, "resume: no whole checkpoint in %s, starting from step 0\n", p->out_dir);
        } else if (log) {
            fprintf(log, "resume: continuing from %s/checkpoint-%lld\n", p->out_dir, (long long)at);
        }
        /* keep the metrics of the steps the checkpoint covers, drop the rest */
        char *old = NULL;
        size_t len = 0;
        if (lorac_file_read(path, (size_t)1 << 30, &old, &len) != LORAC_STATUS_OK) old = NULL;
        metrics = fopen(path, "w");
        for (char *line = old; metrics && line && *line;) {
            char *nl = strchr(line, '\n');
            long long step;
            if (sscanf(line, "{\"step\": %lld", &step) == 1 && step <= ts.step)
                fwrite(line, 1, nl ? (size_t)(nl - line + 1) : strlen(line), metrics);
            line = nl ? nl + 1 : NULL;
        }
        free(old);
    } else {
        metrics = fopen(path, "w");
    }
    if (!metrics) { s = lorac_error(LORAC_STATUS_IO, "%s: cannot write: %s", path, strerror(errno)); goto done; }

    if (eval && ts.step == 0) {
        if ((s = evaluate(pass, eval, p->batch, p->seq, p->pack, tok, tgt, pos, &res->eval_loss_before))) goto done;
        if (log) fprintf(log, "eval before training: loss %.4f, perplexity %.2f\n", res->eval_loss_before, exp(res->eval_loss_before));
    }
    double t_start = lorac_seconds(), last_eval = res->eval_loss_before;
    int64_t tokens_at_start = ts.tokens;
    int tty = log && isatty(fileno(log));
    step_profile_t prof = {0};
    int64_t first_step = ts.step;
    bool have_loss = false;
    res->first_loss = res->last_loss = NAN; /* until a step has targets */
    for (; ts.step < total; ) {
        bool timed = p->profile && ts.step > first_step;
        double t_step = lorac_seconds();
        lorac_train_pass_zero_grad(pass);
        double t_lap = lorac_seconds();
        if (timed) prof.optim += t_lap - t_step;
        double loss_sum = 0.0;
        int32_t scored = 0; /* micro-batches with a target */
        for (int32_t g = 0; g < p->grad_accum; g++) {
            lorac_data_batch_info_t info = {0};
            lorac_dataset_read_batch(data, &ts.cursor, p->batch, p->seq, p->pack, tok, tgt, pos, NULL, &info);
            res->example_tokens += info.n_tokens;
            if (timed) prof.data += lorac_seconds() - t_lap;
            double ls;
            int64_t k;
            lorac_train_pass_time_phases(pass, timed ? prof.phase : NULL, prof.flops);
            s = lorac_train_pass_run(pass, tok, tgt, pos, true, &ts.rng, &ls, &k);
            lorac_train_pass_time_phases(pass, NULL, NULL);
            if (s) goto done;
            t_lap = lorac_seconds();
            loss_sum += k ? ls / (double)k : 0.0;
            scored += k > 0;
            ts.tokens += (int64_t)n_rows;
        }
        /* the mean of the micro-batches' losses; a batch without a single
         * target (every response masked or past --seq) has none to learn
         * from: its step is skipped, not taken on momentum alone */
        bool empty = scored == 0;
        double loss = empty ? NAN : loss_sum / scored;
        if (p->inject_nan_step == ts.step + 1) params[0].grad[0] = NAN; /* test hook */
        float scale = 1.0f / (float)p->grad_accum;
        double norm = lorac_optim_grad_norm(params, np, scale);
        double lr = lorac_schedule_lr(sched, p->lr, p->warmup, total, lorac_adamw_steps(opt));
        int skipped = empty || !isfinite(loss) || !isfinite(norm);
        ts.step++;
        if (skipped) {
            /* weights and moments stay as they were */
            ts.skipped++;
            ts.bad_in_row += !empty; /* only non-finite steps stop training */
            if (log && empty)
                fprintf(log, "%sstep %lld: no targets in the batch (every response masked or past --seq), step skipped "
                        "(%lld so far)\n", tty ? "\n" : "", (long long)ts.step, (long long)ts.skipped);
            else if (log)
                fprintf(log, "%sstep %lld: non-finite %s, step skipped (%lld so far)\n", tty ? "\n" : "", (long long)ts.step,
                        isfinite(loss) ? "gradient" : "loss", (long long)ts.skipped);
        } else {
            ts.bad_in_row = 0;
            lorac_adamw_step(opt, lr, scale * lorac_optim_clip_factor(norm, p->clip));
        }
        if (timed) {
            double now = lorac_seconds();
            prof.optim += now - t_lap;
            prof.step += now - t_step;
            prof.steps++;
            prof.tokens += (int64_t)n_rows * p->grad_accum;
        }
        double elapsed = lorac_seconds() - t_start;
        double tps = elapsed > 0 ? (double)(ts.tokens - tokens_at_start) / elapsed : 0.0;
        int do_eval = eval && p->eval_every && ts.step % p->eval_every == 0 && ts.step < total;
        if (do_eval) {
            if ((s = evaluate(pass, eval, p->batch, p->seq, p->pack, tok, tgt, pos, &last_eval))) goto done;
        }
        fprintf(metrics, "{\"step\": %lld, \"epoch\": %.4f, \"loss\": ", (long long)ts.step,
                (double)ts.cursor.epoch + (double)ts.cursor.index / (double)lorac_dataset_n_examples(data));
        if (isfinite(loss)) fprintf(metrics, "%.9g", loss); else fprintf(metrics, "null"); /* JSON has no NaN */
        fprintf(metrics, ", \"eval_loss\": ");
        if (do_eval) fprintf(metrics, "%.9g", last_eval); else fprintf(metrics, "null");
        fprintf(metrics, ", \"lr\": %.9g, \"grad_norm\": %.9g, \"tokens_per_second\": %.1f, \"skipped\": %lld, \"elapsed\": %.3f}\n",
                lr, isfinite(norm) ? norm : -1.0, tps, (long long)ts.skipped, elapsed);
        fflush(metrics);
        if (isfinite(loss)) { /* the first and last steps that had a loss */
            if (!have_loss) res->first_loss = loss;
            have_loss = true;
            res->last_loss = loss;
        }
        res->steps = ts.step;
        if (log) {
            double eta = ts.step > 0 ? elapsed / (double)ts.step * (double)(total - ts.step) : 0;
            if (tty) fprintf(log, "\r[%lld/%lld] loss %.4f  eval %.4f  lr %.2e  %.0f tok/s  %.0fs  ETA %.0fs   ", (long long)ts.step,
                             (long long)total, loss, last_eval, lr, tps, elapsed, eta);
            else if (ts.step == 1 || ts.step == total || ts.step % 10 == 0 || do_eval)
                fprintf(log, "step %lld/%lld loss %.4f%s lr %.2e grad_norm %.3f %.0f tok/s\n", (long long)ts.step, (long long)total,
                        loss, do_eval ? "" : "", lr, norm, tps);
            if (do_eval && !tty) fprintf(log, "eval at step %lld: loss %.4f, perplexity %.2f\n", (long long)ts.step, last_eval, exp(last_eval));
        }
        if (p->save_every && ts.step % p->save_every == 0) {
            if ((s = save_checkpoint(p->out_dir, &run, &ts))) goto done;
        }
        if (ts.bad_in_row >= p->max_bad_steps) {
            s = lorac_error(LORAC_STATUS_FORMAT, "%lld non-finite steps in a row: training stopped (the last checkpoint is kept)",
                            (long long)ts.bad_in_row);
            goto done;
        }
    }
    if (tty) fputc('\n', log);
    if (p->profile && log) print_profile(log, &prof);
    res->seconds = lorac_seconds() - t_start;
    res->tokens = ts.tokens;
    res->skipped_steps = ts.skipped;
    res->tokens_per_second = res->seconds > 0 ? (double)(ts.tokens - tokens_at_start) / res->seconds : 0.0;
    if (eval) {
        if ((s = evaluate(pass, eval, p->batch, p->seq, p->pack, tok, tgt, pos, &res->eval_loss_after))) goto done;
        if (log) fprintf(log, "eval after training: loss %.4f, perplexity %.2f (before: %.4f)\n", res->eval_loss_after,
                         exp(res->eval_loss_after), res->eval_loss_before);
    }
    if (p->full) s = save_full_model(p->model_dir, p->out_dir, &run);
    else s = lorac_adapter_save(adapter, p->out_dir, p->model_dir);
    if (s) goto done;
    snprintf(path, sizeof path, "%s/%s", p->out_dir, p->full ? "model.safetensors" : "adapter_model.safetensors");
    if (stat(path, &st) == 0) res->adapter_bytes = (int64_t)st.st_size;
    res->peak_rss_bytes = trainer_peak_rss();
    char format[96]; /* "chat, template chatml": the adapter is only right with the template it learned */
    const char *tpl = lorac_dataset_chat_template(data);
    snprintf(format, sizeof format, "%s%s%s", lorac_data_format_name(lorac_dataset_format(data)),
             tpl ? ", template " : "", tpl ? tpl : "");
    write_readme(p, res, n_trainable, format, targets_or_default(p, lorac_model_get_config(model)));
    char padding_note[64] = "";
    int64_t run_tokens = res->tokens - tokens_at_start; /* this run's positions; short examples leave padding */
    if (res->example_tokens < run_tokens)
        snprintf(padding_note, sizeof padding_note, " (%.1f%% of them padding)",
                 100.0 * (double)(run_tokens - res->example_tokens) / (double)run_tokens);
    if (log)
        fprintf(log, "train: %lld steps, %lld tokens%s, %.1f tokens/s, peak RSS %.1f MB, %s %.2f MB, loss %.4f -> %.4f%s\n",
                (long long)res->steps, (long long)res->tokens, padding_note, res->tokens_per_second, (double)res->peak_rss_bytes / 1e6,
                p->full ? "model" : "adapter", (double)res->adapter_bytes / 1e6, res->first_loss, res->last_loss,
                res->skipped_steps ? " (some steps skipped)" : "");
done:
    if (metrics) fclose(metrics);
    free(tok); free(tgt); free(pos); free(params);
    lorac_adamw_free(opt);
    lorac_train_pass_free(pass);
    lorac_adapter_free(adapter);
    lorac_dataset_free(data);
    lorac_dataset_free(eval);
    lorac_model_free(model);
    return s;
}
