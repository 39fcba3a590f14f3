/* bench_decode_split — where a decode step's time goes: the weight products
 * against everything else.
 *
 * For one model, ROUNDS rounds of two measurements, alternating:
 *   full:     G single-token lorac_context_decode steps after an 8-token
 *             prompt (greedy decode's work minus sampling);
 *   products: the same step's matrix products alone, the way decode runs
 *             them (q/k/v as one call, o, gate/up as one call, down, per
 *             layer, then the LM head), on the model's own weights, G times.
 * Per round, the median time per token of each. Reported: the median over
 * rounds of each, the median of each round's rest of the step (full -
 * products, as a share of full: attention, norms, rotary, SwiGLU,
 * residuals, the threads' waits), and the products' weight bytes per token
 * against the read bandwidth measured in the same run (bench_read_bw over
 * 1 GiB; above 100% when part of the weights stays in the L3 cache between
 * tokens), and against a plain read of a buffer as large as those bytes,
 * repeated (each round's best of 20, third in the round), which is what
 * the caches can deliver to a step that reads that much: the ceiling of
 * the products when the weights fit the L3. Rounds alternate because this
 * VM's speed drifts by 20-30% over seconds.
 * Not a test: timings depend on the machine and on what else runs on it.
 *
 * Usage: bench_decode_split MODEL_DIR [-g G] [-t THREADS] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "lorac/kernels.h"
#include "lorac/model.h"
#include "model/model_internal.h"

#define ROUNDS 7

static void die(const char *what) {
    fprintf(stderr, "%s: %s\n", what, lorac_error_message());
    exit(1);
}

/* Median seconds per decode step over G steps after an 8-token prompt. */
static double full_step(const lorac_model_t *model, int G, double *t) {
    const lorac_model_config_t *c = lorac_model_get_config(model);
    lorac_context_params_t cp = lorac_context_default_params();
    cp.n_ctx = G + 16;
    lorac_context_t *ctx;
    if (lorac_context_init(model, cp, &ctx)) die("context");
    float *logits = malloc(sizeof(float) * (size_t)c->vocab_size);
    if (!logits) die("memory");
    int32_t prompt[8] = {1, 450, 4996, 17354, 1701, 432, 1, 2}, pos[8], seq[8] = {0};
    for (int i = 0; i < 8; i++) pos[i] = i, prompt[i] %= c->vocab_size;
    lorac_batch_t b = {.n_tokens = 8, .tokens = prompt, .pos = pos, .seq_id = seq};
    if (lorac_context_decode(ctx, &b, logits)) die("decode");
    for (int i = 0; i < G; i++) {
        int32_t tok = (100 + i) % c->vocab_size, p = 8 + i, s = 0;
        lorac_batch_t d = {.n_tokens = 1, .tokens = &tok, .pos = &p, .seq_id = &s};
        double t0 = bench_now();
        if (lorac_context_decode(ctx, &d, logits)) die("decode");
        t[i] = bench_now() - t0;
    }
    free(logits);
    lorac_context_free(ctx);
    return bench_median(t, G);
}

/* Median seconds per step of the step's products alone; *bytes gets the
 * weight bytes one step reads. */
static double products_step(const lorac_model_t *m, int G, double *t, double *bytes) {
    const lorac_model_config_t *c = &m->config;
    int64_t D = c->hidden_size, I = c->intermediate_size, Q = (int64_t)c->n_heads * c->head_dim;
    int64_t KV = (int64_t)c->n_kv_heads * c->head_dim, V = c->vocab_size;
    int64_t widest = V > 2 * I ? V : 2 * I;
    float *x = malloc(sizeof(float) * (size_t)(I > Q ? (I > D ? I : D) : (Q > D ? Q : D)));
    float *y = malloc(sizeof(float) * (size_t)(widest + Q + 2 * KV));
    if (!x || !y) die("memory");
    for (int64_t i = 0; i < (I > Q ? I : Q) || i < D; i++) x[i] = 0.01f * (float)(i % 13) - 0.06f;
    double b = 0;
    for (int i = 0; i < G; i++) {
        double t0 = bench_now();
        for (int32_t l = 0; l < c->n_layers; l++) {
            const lorac_layer_weights_t *L = &m->layers[l];
            lorac_matmul_part_t qkv[3] = {{y, L->wq.data, L->wq.dtype, L->bq, Q, NULL, 0},
                                          {y + Q, L->wk.data, L->wk.dtype, L->bk, KV, NULL, 0},
                                          {y + Q + KV, L->wv.data, L->wv.dtype, L->bv, KV, NULL, 0}};
            lorac_matmul_forward_parts(qkv, 3, x, 1, D);
            lorac_matmul_forward(y, x, L->wo.data, L->wo.dtype, L->bo, 1, Q, D);
            lorac_matmul_part_t gu[2] = {{y, L->w_gate.data, L->w_gate.dtype, L->b_gate, I, NULL, 0},
                                         {y + I, L->w_up.data, L->w_up.dtype, L->b_up, I, NULL, 0}};
            lorac_matmul_forward_parts(gu, 2, x, 1, D);
            lorac_matmul_forward(y, x, L->w_down.data, L->w_down.dtype, L->b_down, 1, I, D);
            if (i == 0)
                b += (double)lorac_dtype_size(L->wq.dtype) * (double)(Q * D + 2 * KV * D + D * Q + 3 * I * D);
        }
        lorac_matmul_forward(y, x, m->lm_head.data, m->lm_head.dtype, NULL, 1, D, V);
        t[i] = bench_now() - t0;
        if (i == 0) b += (double)lorac_dtype_size(m->lm_head.dtype) * (double)(V * D);
    }
    free(x);
    free(y);
    *bytes = b;
    return bench_median(t, G);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_decode_split MODEL_DIR [-g G] [-t THREADS]\n");
        return 2;
    }
    const char *model_dir = argv[1];
    int G = 128, threads = 2;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-g")) G = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-t")) threads = atoi(argv[i + 1]);
    }
    if (G < 1) G = 1;
    lorac_kernels_set_threads(threads);
    lorac_model_t *model;
    if (lorac_model_load(model_dir, &model)) die(model_dir);
    const lorac_model_config_t *c = lorac_model_get_config(model);
    size_t bw_bytes = (size_t)1 << 30;
    float *bw_buf = malloc(bw_bytes);
    if (!bw_buf) die("memory");
    for (size_t i = 0; i < bw_bytes / sizeof(float); i++) bw_buf[i] = 1.0f;
    double bw = bench_read_bw(bw_buf, bw_bytes, threads, 3);
    free(bw_buf);

    double *t = malloc(sizeof(double) * (size_t)G), full[ROUNDS], prod[ROUNDS], rest[ROUNDS], same[ROUNDS], bytes = 0;
    float *same_buf = NULL;
    size_t same_n = 0; /* floats in same_buf: the products' bytes, whole lines of 64 floats */
    if (!t) die("memory");
    for (int r = 0; r < ROUNDS; r++) {
        full[r] = full_step(model, G, t);
        prod[r] = products_step(model, G, t, &bytes);
        rest[r] = (full[r] - prod[r]) / full[r];
        if (!same_buf) { /* the products' byte count is known after their first run */
            same_n = (size_t)bytes / sizeof(float) / 64 * 64;
            if (!(same_buf = malloc(same_n * sizeof(float)))) die("memory");
            for (size_t i = 0; i < same_n; i++) same_buf[i] = 1.0f;
        }
        same[r] = bench_read_bw(same_buf, same_n * sizeof(float), threads, 20);
    }
    free(t);
    free(same_buf);
    double f = bench_median(full, ROUNDS), p = bench_median(prod, ROUNDS), share = bench_median(rest, ROUNDS);
    double same_bw = bench_median(same, ROUNDS);
    printf("# bench_decode_split: %s (dim %d, %d layers, %s weights), %d decode steps, %d threads, %s kernels\n",
           model_dir, c->hidden_size, c->n_layers, lorac_dtype_name(lorac_model_weight_dtype(model)), G, threads,
           lorac_kernels_isa());
    printf("# read bandwidth %.1f GB/s (best of 3 over 1 GiB); weight bytes per token %.1f MB, read again and again "
           "%.1f GB/s; medians of %d rounds\n", bw, bytes / 1e6, same_bw, ROUNDS);
    printf("| full step ms | products ms | rest of the step | products GB/s | products %% of read bandwidth | products "
           "%% of a same-size read | full tok/s |\n|---:|---:|---:|---:|---:|---:|---:|\n");
    printf("| %.3f | %.3f | %.0f%% | %.1f | %.0f%% | %.0f%% | %.1f |\n", f * 1e3, p * 1e3, 100.0 * share,
           bytes / p / 1e9, 100.0 * bytes / p / 1e9 / bw, 100.0 * bytes / p / 1e9 / same_bw, 1.0 / f);
    lorac_model_free(model);
    return 0;
}
