/* lorac merge: W' = W + Σ scale·s·B·A written as a complete HuggingFace
 * model directory; reports per module kind the largest |ΔW| and, on a probe
 * sequence, the largest logit difference between the merged model and the
 * base with the adapters applied unmerged (for a BF16 base this is the
 * rounding of the merge). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "lorac/lora.h"
#include "lorac/model.h"

static const char *k_usage =
    "usage: lorac merge -m MODEL --adapter DIR[:SCALE] [--adapter ...] -o MODEL_DIR [--dtype auto|f32|bf16|f16]\n"
    "  Writes the base with every adapter merged in (computed in f32) as a complete model directory:\n"
    "  safetensors in the base's dtype unless --dtype, plus config, tokenizer and generation files.\n";

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

int cmd_merge(int argc, char **argv) {
    const char *model_dir = NULL, *out = NULL, *dtype_name = "auto";
    cli_adapters_t adapters = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { fputs(k_usage, stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_dir = cli_value(argc, argv, &i, "merge");
        else if (!strcmp(a, "--adapter")) cli_add_adapter(&adapters, "merge", cli_value(argc, argv, &i, "merge"));
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = cli_value(argc, argv, &i, "merge");
        else if (!strcmp(a, "--dtype")) dtype_name = cli_value(argc, argv, &i, "merge");
        else cli_usage_error("merge", "unknown option '%s'", a);
    }
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
