/* bench_adapter_decode — what an unmerged adapter costs during decode, and
 * what switching adapters costs.
 *
 * For ranks 8, 16 and 64 on all seven projections (and on q_proj+v_proj,
 * PEFT's default), decode tokens/s of base + unmerged adapter against the
 * same adapter merged into the weights (lorac_merge_write into WORK_DIR) and
 * against the base alone, one sequence, G tokens after a short prompt,
 * ROUNDS rounds of the three in rotated order: the best rate of each, and
 * the median over rounds of each round's slowdown. Then the time of an
 * adapter switch (lorac_context_set_adapters and
 * lorac_context_set_seq_adapter) against one decode step of the base.
 *
 * Usage: bench_adapter_decode MODEL_DIR WORK_DIR [-g G] [-t THREADS] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "bench_common.h"
#include "lorac/kernels.h"
#include "lorac/lora.h"

/* Rounds of (merged, base, unmerged) decode runs. */
#define ROUNDS 7

static void die(const char *what) {
    fprintf(stderr, "%s: %s\n", what, lorac_error_message());
    exit(1);
}

/* Decode tokens/s over G steps (after an 8-token prompt). */
static double decode_rate(const lorac_model_t *model, const lorac_adapter_t *adapter, int G) {
    const lorac_model_config_t *c = lorac_model_get_config(model);
    lorac_context_params_t cp = lorac_context_default_params();
    cp.n_ctx = G + 16;
    lorac_context_t *ctx;
    if (lorac_context_init(model, cp, &ctx)) die("context");
    float scale = 1.0f;
    if (adapter && lorac_context_set_adapters(ctx, &adapter, &scale, 1)) die("adapter");
    float *logits = malloc(sizeof(float) * (size_t)c->vocab_size);
    int32_t prompt[8] = {1, 450, 4996, 17354, 1701, 432, 1, 2}, pos[8], seq[8] = {0};
    for (int i = 0; i < 8; i++) pos[i] = i;
    lorac_batch_t b = {.n_tokens = 8, .tokens = prompt, .pos = pos, .seq_id = seq};
    if (lorac_context_decode(ctx, &b, logits)) die("decode");
    double t0 = bench_now();
    for (int i = 0; i < G; i++) {
        int32_t tok = 100 + i, p = 8 + i, s = 0;
        lorac_batch_t d = {.n_tokens = 1, .tokens = &tok, .pos = &p, .seq_id = &s};
        if (lorac_context_decode(ctx, &d, logits)) die("decode");
    }
    double rate = G / (bench_now() - t0);
    free(logits);
    lorac_context_free(ctx);
    return rate;
}

static lorac_adapter_t *make_adapter(const lorac_model_config_t *c, int r, uint32_t targets) {
    lorac_lora_params_t p = lorac_lora_default_params();
    p.r = r;
    p.alpha = 2.0f * (float)r;
    p.targets = targets;
    lorac_adapter_t *a;
    if (lorac_adapter_init(c, &p, &a)) die("adapter");
    lorac_rng_t rng;
    lorac_rng_seed(&rng, (uint64_t)r);
    for (int32_t k = 0; k < lorac_adapter_n_modules(a); k++) {
        lorac_lora_module_t *m = lorac_adapter_module(a, k);
        for (int64_t j = 0; j < (int64_t)m->out * m->r; j++) m->B[j] = 0.01f * lorac_rng_normal(&rng);
    }
    if (lorac_adapter_prepare_inference(a)) die("adapter");
    return a;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_adapter_decode MODEL_DIR WORK_DIR [-g G] [-t THREADS]\n");
        return 2;
    }
    const char *model_dir = argv[1], *work = argv[2];
    int G = 64, threads = 2;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-g")) G = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-t")) threads = atoi(argv[i + 1]);
    }
    lorac_kernels_set_threads(threads);
    mkdir(work, 0755);
    lorac_model_t *model;
    if (lorac_model_load(model_dir, &model)) die(model_dir);
    const lorac_model_config_t *c = lorac_model_get_config(model);
    printf("# bench_adapter_decode: %s (dim %d, %d layers), %d decode steps, %d threads, %s kernels\n", model_dir,
           c->hidden_size, c->n_layers, G, threads, lorac_kernels_isa());
    printf("| adapter | merged tok/s | base tok/s | unmerged tok/s | unmerged slower than merged (median of %d rounds) | than base |\n"
           "|---|---|---|---|---|---|\n", ROUNDS);
    const int ranks[3] = {8, 16, 64};
    const uint32_t all = (1u << LORAC_LORA_COUNT) - 1, qv = (1u << LORAC_LORA_Q) | (1u << LORAC_LORA_V);
    for (int ti = 0; ti < 2; ti++)
        for (int ri = 0; ri < 3; ri++) {
            uint32_t targets = ti == 0 ? all : qv;
            lorac_adapter_t *a = make_adapter(c, ranks[ri], targets);
            char merged_dir[4096];
            snprintf(merged_dir, sizeof merged_dir, "%s/merged-r%d-%s", work, ranks[ri], ti == 0 ? "all" : "qv");
            const lorac_adapter_t *one[1] = {a};
            float scale = 1.0f;
            if (lorac_merge_write(model_dir, one, &scale, 1, LORAC_DTYPE_COUNT, merged_dir)) die("merge");
            lorac_model_t *merged;
            if (lorac_model_load(merged_dir, &merged)) die(merged_dir);
            /* Rounds of the three runs, in an order rotated each round;
             * this VM's speed drifts by 10-20% over minutes, so the
             * slowdowns are the median over rounds of each round's own
             * ratio, and the rates the best of each. The base model without
             * an adapter runs the merged model's kernels on the same pages
             * the unmerged run reads, so it is reported too: between two
             * copies of the same weights (base and merged) best rates
             * differ by up to ~10%. */
            double best[3] = {0, 0, 0}, slow_m[ROUNDS], slow_b[ROUNDS];
            for (int rep = 0; rep < ROUNDS; rep++) {
                double r[3];
                for (int k = 0; k < 3; k++) {
                    int which = (rep + k) % 3; /* 0 merged, 1 base, 2 unmerged */
                    r[which] = decode_rate(which == 0 ? merged : model, which == 2 ? a : NULL, G);
                    best[which] = r[which] > best[which] ? r[which] : best[which];
                }
                slow_m[rep] = r[0] / r[2] - 1.0;
                slow_b[rep] = r[1] / r[2] - 1.0;
            }
            printf("| r=%d, %s | %.1f | %.1f | %.1f | %.1f%% | %.1f%% |\n", ranks[ri],
                   ti == 0 ? "all seven projections" : "q_proj+v_proj", best[0], best[1], best[2],
                   100.0 * bench_median(slow_m, ROUNDS), 100.0 * bench_median(slow_b, ROUNDS));
            fflush(stdout);
            lorac_model_free(merged);
            lorac_adapter_free(a);
        }

    /* switching: attach/detach calls against one base decode step */
    lorac_adapter_t *a = make_adapter(c, 16, all), *b = make_adapter(c, 8, all);
    lorac_context_params_t cp = lorac_context_default_params();
    cp.n_ctx = 64;
    cp.n_seq = 2;
    lorac_context_t *ctx;
    if (lorac_context_init(model, cp, &ctx)) die("context");
    const int N = 100000;
    float scale = 1.0f;
    double t0 = bench_now();
    for (int i = 0; i < N; i++) {
        const lorac_adapter_t *which = i & 1 ? a : b;
        lorac_context_set_adapters(ctx, &which, &scale, 1);
    }
    double t_global = (bench_now() - t0) / N;
    t0 = bench_now();
    for (int i = 0; i < N; i++) lorac_context_set_seq_adapter(ctx, i & 1, i & 2 ? a : b, 1.0f);
    double t_seq = (bench_now() - t0) / N;
    double step = 1.0 / decode_rate(model, NULL, G);
    printf("adapter switch: set_adapters %.2f us, set_seq_adapter %.3f us; one decode step %.2f ms (%.0fx longer)\n",
           1e6 * t_global, 1e6 * t_seq, 1e3 * step, step / t_global);
    lorac_context_free(ctx);
    lorac_adapter_free(a);
    lorac_adapter_free(b);
    lorac_model_free(model);
    return 0;
}
