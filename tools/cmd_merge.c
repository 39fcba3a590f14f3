/* lorac merge: W' = W + Σ scale·s·B·A written as a complete HuggingFace
 * model directory; reports per module kind the largest |ΔW| and, on a probe
 * sequence, the largest logit difference between the merged model and the
 * base with the adapters applied unmerged (for a BF16 base this is the
 * rounding of the merge).
 *
 * With --to-adapter, the adapters are instead combined into one PEFT
 * adapter (PEFT's add_weighted_adapter: cat, linear or svd; see
 * lorac/extract.h), reporting how far each module kind is from the exact
 * weighted sum. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "lorac/extract.h"
#include "lorac/lora.h"
#include "lorac/model.h"

static const char *k_usage =
    "usage: lorac merge -m MODEL --adapter DIR[:SCALE] [--adapter ...] -o MODEL_DIR [--dtype auto|f32|bf16|f16]\n"
    "       lorac merge -m MODEL --adapter DIR[:WEIGHT] [--adapter ...] --to-adapter ADAPTER_DIR\n"
    "                   [--combination cat|linear|svd] [--r R]\n"
    "  Writes the base with every adapter merged in (computed in f32) as a complete model directory:\n"
    "  safetensors in the base's dtype unless --dtype, plus config, tokenizer and generation files.\n"
    "  A bitsandbytes 4-bit base is written dequantized, in the dtype it was quantized from.\n"
    "  With --to-adapter, combines the adapters into one PEFT adapter instead, as PEFT's\n"
    "  add_weighted_adapter does (the model only gives the shapes):\n"
    "    cat     (default) stacks the adapters: rank = sum of ranks, exactly sum_i WEIGHT_i * dW_i\n"
    "    linear  adds the A's and the B's, each times sqrt(WEIGHT*scale): needs equal ranks; not exact\n"
    "    svd     the best rank-R approximation of sum_i WEIGHT_i * dW_i; --r R is required\n"
    "  A single adapter is always combined linearly, as in PEFT.\n";

/* Logits of a fixed probe sequence (ids 1..min(16, V-1)), with or without adapters. */
static float *probe_logits(const lorac_model_t *m, const lorac_adapter_t *const *ads, const float *scales, int n, int32_t *T) {
    const lorac_model_config_t *c = lorac_model_get_config(m);
    int32_t len = c->vocab_size > 17 ? 16 : c->vocab_size - 1;
    if (len < 1) len = 1;
    lorac_context_params_t cp = {.n_ctx = len, .n_seq = 1, .n_batch = len};
    lorac_context_t *ctx;
    cli_check(lorac_context_init(m, cp, &ctx));
    cli_check(lorac_context_set_adapters(ctx, ads, scales, n));
    int32_t ids[16], pos[16], seq[16] = {0};
    int8_t want[16];
    for (int32_t i = 0; i < len; i++) { ids[i] = (i * 7919 + 1) % c->vocab_size; pos[i] = i; want[i] = 1; }
    float *logits = malloc(sizeof(float) * (size_t)len * (size_t)c->vocab_size);
    if (!logits) cli_die("out of memory");
    lorac_batch_t b = {.n_tokens = len, .tokens = ids, .pos = pos, .seq_id = seq, .logits = want};
    cli_check(lorac_context_decode(ctx, &b, logits));
    lorac_context_free(ctx);
    *T = len;
    return logits;
}

/* --to-adapter: one PEFT adapter combining the others, and per module kind
 * the largest relative distance of its s·B·A from Σ weight·s_i·B_i·A_i. */
static int combine_to_adapter(const char *model_dir, cli_adapters_t *adapters, const char *out, const char *mode_name,
                              int32_t r) {
    lorac_combine_t mode;
    if (lorac_combine_parse(mode_name, &mode)) cli_usage_error("merge", "%s", lorac_error_message());
    if (mode == LORAC_COMBINE_SVD && r == 0 && adapters->n > 1)
        cli_usage_error("merge", "--combination svd needs the rank of the result: --r R");
    if (mode != LORAC_COMBINE_SVD && r != 0) cli_usage_error("merge", "--r goes with --combination svd");
    lorac_model_t *base;
    cli_check(lorac_model_load(model_dir, &base));
    lorac_adapter_t *ads[CLI_MAX_ADAPTERS], *res;
    for (int i = 0; i < adapters->n; i++) cli_check(lorac_adapter_load(adapters->dirs[i], lorac_model_get_config(base), &ads[i]));
    const lorac_adapter_t *const *in = (const lorac_adapter_t *const *)ads;
    cli_check(lorac_adapter_combine(in, adapters->scales, adapters->n, mode, r, &res));
    cli_check(lorac_adapter_save(res, out, model_dir));

    double worst[LORAC_LORA_COUNT] = {0};
    for (int32_t i = 0; i < lorac_adapter_n_modules(res); i++) {
        const lorac_lora_module_t *m = lorac_adapter_module(res, i);
        double e;
        cli_check(lorac_adapter_combine_error(res, in, adapters->scales, adapters->n, m->layer, m->target, &e));
        worst[m->target] = fmax(worst[m->target], e);
    }
    const lorac_lora_params_t *p = lorac_adapter_params(res);
    fprintf(stderr, "combined %d adapter(s) (%s%s) into %s: r=%d, lora_alpha=%g, %d modules\n", adapters->n,
            adapters->n == 1 ? "linear" : mode_name, adapters->n == 1 && mode != LORAC_COMBINE_LINEAR ? ", as PEFT does for one adapter" : "",
            out, p->r, (double)p->alpha, lorac_adapter_n_modules(res));
    fprintf(stderr, "  largest |s*B*A - sum_i w_i*s_i*B_i*A_i|_F / |sum_i ...|_F per module kind:");
    for (int t = 0; t < LORAC_LORA_COUNT; t++)
        if (p->targets >> t & 1u) fprintf(stderr, " %s %.2g", lorac_lora_target_name((lorac_lora_target_t)t), worst[t]);
    fputc('\n', stderr);
    lorac_adapter_free(res);
    for (int i = 0; i < adapters->n; i++) lorac_adapter_free(ads[i]);
    void *none[CLI_MAX_ADAPTERS] = {0};
    cli_free_adapters(adapters, none);
    lorac_model_free(base);
    return 0;
}

int cmd_merge(int argc, char **argv) {
    const char *model_dir = NULL, *out = NULL, *dtype_name = NULL, *to_adapter = NULL, *combination = NULL;
    int32_t r = 0;
    cli_adapters_t adapters = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { fputs(k_usage, stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_dir = cli_value(argc, argv, &i, "merge");
        else if (!strcmp(a, "--adapter")) cli_add_adapter(&adapters, "merge", cli_value(argc, argv, &i, "merge"));
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = cli_value(argc, argv, &i, "merge");
        else if (!strcmp(a, "--dtype")) dtype_name = cli_value(argc, argv, &i, "merge");
        else if (!strcmp(a, "--to-adapter")) to_adapter = cli_value(argc, argv, &i, "merge");
        else if (!strcmp(a, "--combination")) combination = cli_value(argc, argv, &i, "merge");
        else if (!strcmp(a, "--r")) r = (int32_t)cli_int("merge", a, cli_value(argc, argv, &i, "merge"), 1, 65536);
        else cli_usage_error("merge", "unknown option '%s'", a);
    }
    if (to_adapter) {
        if (!model_dir || adapters.n == 0) cli_usage_error("merge", "-m MODEL and --adapter DIR are required");
        if (out || dtype_name) cli_usage_error("merge", "--to-adapter writes an adapter: -o and --dtype are for a merged model");
        return combine_to_adapter(model_dir, &adapters, to_adapter, combination ? combination : "cat", r);
    }
    if (combination || r) cli_usage_error("merge", "--combination and --r go with --to-adapter");
    if (!dtype_name) dtype_name = "auto";
    if (!model_dir || !out || adapters.n == 0) cli_usage_error("merge", "-m MODEL, --adapter DIR and -o MODEL_DIR are required");
    lorac_dtype_t dtype;
    if (!strcmp(dtype_name, "auto")) dtype = LORAC_DTYPE_COUNT;
    else if (!strcmp(dtype_name, "f32")) dtype = LORAC_DTYPE_F32;
    else if (!strcmp(dtype_name, "bf16")) dtype = LORAC_DTYPE_BF16;
    else if (!strcmp(dtype_name, "f16")) dtype = LORAC_DTYPE_F16;
    else cli_usage_error("merge", "--dtype must be auto, f32, bf16 or f16");

    lorac_model_t *base;
    cli_check(lorac_model_load(model_dir, &base));
    lorac_adapter_t *ads[CLI_MAX_ADAPTERS];
    for (int i = 0; i < adapters.n; i++) cli_check(lorac_adapter_load(adapters.dirs[i], lorac_model_get_config(base), &ads[i]));
    cli_check(lorac_merge_write(model_dir, (const lorac_adapter_t *const *)ads, adapters.scales, adapters.n, dtype, out));

    /* largest |ΔW| per module kind, from the adapters (ΔW = Σ c·B·A) */
    double max_dw[LORAC_LORA_COUNT] = {0};
    for (int k = 0; k < adapters.n; k++)
        for (int32_t i = 0; i < lorac_adapter_n_modules(ads[k]); i++) {
            const lorac_lora_module_t *m = lorac_adapter_module(ads[k], i);
            double c = (double)adapters.scales[k] * m->scale;
            for (int32_t o = 0; o < m->out; o++)
                for (int32_t j = 0; j < m->in; j++) {
                    double d = 0;
                    for (int32_t r = 0; r < m->r; r++) d += (double)m->B[(int64_t)o * m->r + r] * m->A[(int64_t)r * m->in + j];
                    max_dw[m->target] = fmax(max_dw[m->target], fabs(c * d));
                }
        }
    fprintf(stderr, "merged %d adapter(s) into %s\n  largest |dW| per module kind:", adapters.n, out);
    for (int t = 0; t < LORAC_LORA_COUNT; t++)
        if (max_dw[t] > 0) fprintf(stderr, " %s %.3g", lorac_lora_target_name((lorac_lora_target_t)t), max_dw[t]);
    fputc('\n', stderr);

    lorac_model_t *merged;
    cli_check(lorac_model_load(out, &merged));
    int32_t T;
    float *a = probe_logits(base, (const lorac_adapter_t *const *)ads, adapters.scales, adapters.n, &T);
    float *b = probe_logits(merged, NULL, NULL, 0, &T);
    int64_t n = (int64_t)T * lorac_model_get_config(base)->vocab_size;
    double diff = 0, mx = 0;
    for (int64_t i = 0; i < n; i++) { diff = fmax(diff, fabs((double)a[i] - b[i])); mx = fmax(mx, fabs((double)a[i])); }
    fprintf(stderr, "  probe of %d tokens: largest logit difference merged vs base + adapters unmerged: %.3g (%.2g relative)\n",
            T, diff, mx > 0 ? diff / mx : 0.0);
    free(a); free(b);
    lorac_model_free(merged);
    for (int i = 0; i < adapters.n; i++) lorac_adapter_free(ads[i]);
    void *none[CLI_MAX_ADAPTERS] = {0};
    cli_free_adapters(&adapters, none);
    lorac_model_free(base);
    return 0;
}
