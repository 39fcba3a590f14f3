/* bench_serve — a load generator for the serving engine (lorac/serve.h).
 *
 * In one run, the same N requests (prompt P tokens, G generated tokens each,
 * greedy, ignore EOS) are served three ways:
 *   mixed     every request names its own adapter (N distinct adapters, ranks
 *             alternating 8 and 16, all seven projections), all submitted at
 *             once: one continuous batch of mixed adapters;
 *   merged    the same requests on a model with one adapter merged into its
 *             weights (lorac_merge_write), all at once: the throughput a
 *             single-task deployment gets;
 *   one-by-one  the requests grouped by adapter and served one adapter at a
 *             time (what a server that cannot batch different adapters does:
 *             with one request per adapter, one request at a time).
 * For each: aggregate generated tokens/s, time to first token and the gaps
 * between tokens (per-token latency) at p50/p99, and the ratios the issue
 * sets goals for (mixed ≥ 0.8× merged, ≥ 4× one-by-one).
 *
 * Usage: bench_serve MODEL_DIR WORK_DIR [-n N] [-p P] [-g G] [-t THREADS] [-T all|qv]
 * (-T: adapters on all seven projections, default, or on q_proj+v_proj).
 * WORK_DIR receives the adapters and the merged model (reused when present). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "lorac/kernels.h"
#include "lorac/lora.h"
#include "lorac/serve.h"

#define MAX_TOK 4096

typedef struct {
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    int *n_done;
    double t_submit, t_first, t_last;
    double *gaps;   /* (G) */
    int n_gaps, n_tokens;
} req_stats_t;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void on_event(void *user, const lorac_serve_event_t *ev) {
    req_stats_t *r = user;
    double t = now_s();
    if (ev->token >= 0) {
        if (r->n_tokens == 0) r->t_first = t;
        else r->gaps[r->n_gaps++] = t - r->t_last;
        r->t_last = t;
        r->n_tokens++;
    }
    if (ev->finish != LORAC_FINISH_NONE) {
        pthread_mutex_lock(r->mu);
        (*r->n_done)++;
        pthread_cond_broadcast(r->cv);
        pthread_mutex_unlock(r->mu);
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double percentile(double *v, int n, double p) {
    if (n == 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    int i = (int)(p * (n - 1) + 0.5);
    return v[i];
}

typedef struct {
    double tok_s, ttft_p50, ttft_p99, itl_p50, itl_p99, wall;
} result_t;

/* Serves the n requests, each naming adapter names[i] when use_adapters:
 * all submitted at once, or (one_by_one) each after the previous finished. */
static result_t run(const lorac_model_t *model, const char *adapters_dir, int n, int P, int G, char names[][32],
                    int use_adapters, int one_by_one) {
    lorac_engine_params_t ep = lorac_engine_default_params();
    ep.max_seqs = n;
    ep.n_ctx = P + G + 1;
    ep.n_batch = n > 512 ? n : 512;
    ep.max_queue = n;
    ep.max_loras = n;
    ep.adapters_dir = adapters_dir;
    lorac_engine_t *e = NULL;
    if (lorac_engine_start(model, &ep, &e)) {
        fprintf(stderr, "engine: %s\n", lorac_error_message());
        exit(1);
    }
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    int n_done = 0;
    req_stats_t *st = calloc((size_t)n, sizeof *st);
    int32_t *prompt = malloc(sizeof(int32_t) * (size_t)P);
    /* warm the adapters (loading is not what is measured) */
    if (use_adapters)
        for (int i = 0; i < n; i++) lorac_engine_load_adapter(e, names[i]);
    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        st[i] = (req_stats_t){.mu = &mu, .cv = &cv, .n_done = &n_done};
        st[i].gaps = malloc(sizeof(double) * (size_t)G);
        prompt[0] = 1;
        for (int j = 1; j < P; j++) prompt[j] = 100 + (i * 131 + j * 17) % 20000;
        lorac_serve_request_t q = {.prompt = prompt, .n_prompt = P, .adapter = use_adapters ? names[i] : NULL,
                                   .max_tokens = G, .ignore_eos = true, .callback = on_event, .user = &st[i]};
        q.sampler = lorac_sampler_default_params();
        q.sampler.temperature = 0;
        st[i].t_submit = now_s();
        if (lorac_engine_submit(e, &q, NULL)) {
            fprintf(stderr, "submit: %s\n", lorac_error_message());
            exit(1);
        }
        if (one_by_one) { /* wait for it before the next adapter's request */
            pthread_mutex_lock(&mu);
            while (n_done < i + 1) pthread_cond_wait(&cv, &mu);
            pthread_mutex_unlock(&mu);
        }
    }
    pthread_mutex_lock(&mu);
    while (n_done < n) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    double wall = now_s() - t0;
    lorac_engine_stop(e);

    double *ttft = malloc(sizeof(double) * (size_t)n), *gaps = malloc(sizeof(double) * (size_t)n * (size_t)G);
    int n_gaps = 0;
    long total = 0;
    for (int i = 0; i < n; i++) {
        ttft[i] = st[i].t_first - st[i].t_submit;
        memcpy(gaps + n_gaps, st[i].gaps, sizeof(double) * (size_t)st[i].n_gaps);
        n_gaps += st[i].n_gaps;
        total += st[i].n_tokens;
        free(st[i].gaps);
    }
    result_t r = {.tok_s = (double)total / wall, .wall = wall};
    r.ttft_p50 = percentile(ttft, n, 0.5);
    r.ttft_p99 = percentile(ttft, n, 0.99);
    r.itl_p50 = percentile(gaps, n_gaps, 0.5);
    r.itl_p99 = percentile(gaps, n_gaps, 0.99);
    free(ttft); free(gaps); free(st); free(prompt);
    return r;
}

static int exists(const char *path) {
    struct stat s;
    return stat(path, &s) == 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_serve MODEL_DIR WORK_DIR [-n N] [-p P] [-g G] [-t THREADS]\n");
        return 2;
    }
    const char *model_dir = argv[1], *work = argv[2];
    int n = 32, P = 32, G = 64, threads = 2;
    const char *targets = "all";
    const char *only = getenv("BENCH_SERVE_ONLY"); /* "mixed": profile that mode alone */
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-n")) n = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-p")) P = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-g")) G = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-t")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-T")) targets = argv[i + 1];
    }
    int all_linear = strcmp(targets, "qv") != 0;
    if (n < 1 || n > 256 || P < 1 || G < 2 || P + G >= MAX_TOK) { fprintf(stderr, "bad sizes\n"); return 2; }
    lorac_kernels_set_threads(threads);
    lorac_model_t *model;
    if (lorac_model_load(model_dir, &model)) { fprintf(stderr, "%s\n", lorac_error_message()); return 1; }
    const lorac_model_config_t *c = lorac_model_get_config(model);

    char adapters_dir[4096], merged_dir[4096];
    snprintf(adapters_dir, sizeof adapters_dir, "%s/adapters-%s", work, all_linear ? "all" : "qv");
    snprintf(merged_dir, sizeof merged_dir, "%s/merged-%s", work, all_linear ? "all" : "qv");
    mkdir(work, 0755);
    mkdir(adapters_dir, 0755);
    char (*names)[32] = calloc((size_t)n, sizeof *names);
    lorac_adapter_t *first = NULL;
    for (int i = 0; i < n; i++) {
        int r = i % 2 ? 16 : 8;
        snprintf(names[i], sizeof names[i], "task%02d-r%d", i, r);
        char dir[8192], cfg[8300];
        snprintf(dir, sizeof dir, "%s/%s", adapters_dir, names[i]);
        snprintf(cfg, sizeof cfg, "%s/adapter_config.json", dir);
        if (exists(cfg) && i > 0) continue;
        lorac_lora_params_t p = lorac_lora_default_params();
        p.r = r;
        p.alpha = 2.0f * (float)r;
        p.targets = all_linear ? (1u << LORAC_LORA_COUNT) - 1 : (1u << LORAC_LORA_Q) | (1u << LORAC_LORA_V);
        p.seed = 1000 + (uint64_t)i;
        lorac_adapter_t *a;
        if (lorac_adapter_init(c, &p, &a)) { fprintf(stderr, "%s\n", lorac_error_message()); return 1; }
        lorac_rng_t rng;
        lorac_rng_seed(&rng, 77 + (uint64_t)i);
        for (int32_t k = 0; k < lorac_adapter_n_modules(a); k++) {
            lorac_lora_module_t *m = lorac_adapter_module(a, k);
            for (int64_t j = 0; j < (int64_t)m->out * m->r; j++) m->B[j] = 0.01f * lorac_rng_normal(&rng);
        }
        if (!exists(cfg) && lorac_adapter_save(a, dir, model_dir)) { fprintf(stderr, "%s\n", lorac_error_message()); return 1; }
        if (i == 0) first = a;
        else lorac_adapter_free(a);
    }
    char merged_cfg[8300];
    snprintf(merged_cfg, sizeof merged_cfg, "%s/config.json", merged_dir);
    if (!exists(merged_cfg)) {
        const lorac_adapter_t *one[1] = {first};
        float scale = 1.0f;
        if (lorac_merge_write(model_dir, one, &scale, 1, LORAC_DTYPE_COUNT, merged_dir)) {
            fprintf(stderr, "merge: %s\n", lorac_error_message());
            return 1;
        }
    }
    lorac_adapter_free(first);
    lorac_model_t *merged;
    if (lorac_model_load(merged_dir, &merged)) { fprintf(stderr, "%s\n", lorac_error_message()); return 1; }

    printf("# bench_serve: %d requests, prompt %d, %d generated tokens each, %d threads, %s kernels\n", n, P, G,
           threads, lorac_kernels_isa());
    printf("# model %s (dim %d, %d layers); adapters r8/r16 on %s\n", model_dir, c->hidden_size, c->n_layers,
           all_linear ? "all seven projections" : "q_proj+v_proj (PEFT's default)");
    result_t mixed = run(model, adapters_dir, n, P, G, names, 1, 0);
    if (only && !strcmp(only, "mixed")) {
        printf("mixed: %.1f tokens/s, per-token p50 %.1f ms\n", mixed.tok_s, 1e3 * mixed.itl_p50);
        return 0;
    }
    result_t merged_r = run(merged, NULL, n, P, G, names, 0, 0);
    result_t one = run(model, adapters_dir, n, P, G, names, 1, 1);
    printf("| mode | tokens/s | TTFT p50 | TTFT p99 | per-token p50 | per-token p99 | wall |\n");
    printf("|---|---|---|---|---|---|---|\n");
    const char *labels[3] = {"mixed adapters, one batch", "merged model, one batch", "one adapter at a time"};
    result_t *rs[3] = {&mixed, &merged_r, &one};
    for (int i = 0; i < 3; i++)
        printf("| %s | %.1f | %.0f ms | %.0f ms | %.1f ms | %.1f ms | %.1f s |\n", labels[i], rs[i]->tok_s,
               1e3 * rs[i]->ttft_p50, 1e3 * rs[i]->ttft_p99, 1e3 * rs[i]->itl_p50, 1e3 * rs[i]->itl_p99, rs[i]->wall);
    printf("mixed / merged throughput: %.2fx (goal >= 0.8x)\n", mixed.tok_s / merged_r.tok_s);
    printf("mixed / one-at-a-time throughput: %.2fx (goal >= 4x)\n", mixed.tok_s / one.tok_s);
    lorac_model_free(merged);
    lorac_model_free(model);
    free(names);
    return 0;
}
