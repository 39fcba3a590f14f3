/* bench_attention — one decode step's attention (lorac_attention_forward,
 * one query token) on one thread and on two, over context lengths, to place
 * the kernel's ATTENTION_PARALLEL_MIN_ELEMS: where the two-thread time
 * drops below the one-thread time, starting the second thread pays.
 *
 * ops.c is compiled into this program with ATTENTION_PARALLEL_MIN_ELEMS=1,
 * so the two-thread column always runs two threads; the library itself
 * runs one thread below its threshold. Each time is the median of 7
 * rounds of 2000 calls, the two thread counts alternating.
 *
 * With a third argument `prompt` it times a whole prompt's attention
 * instead (T tokens in one call, token t seeing positions 0..t, as
 * `lorac generate` runs a prompt) for T of 128, 512 and 1929, two threads
 * only (the library's threshold would choose them too): median ms of 7
 * rounds of a few calls, and ns per (query, position) pair.
 *
 * Build and run:
 *   make -C bench out/bench_attention && bench/out/bench_attention [15m|110m] [f32|bf16|f16] [prompt]
 * (15m: 6 heads of 48; 110m: 12 heads of 64; no GQA in either; the second
 * argument is the KV cache's dtype, f32 by default.) */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lorac/kernels.h"

#define ROUNDS 7
#define CALLS 2000

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const char *shape = argc > 1 ? argv[1] : "15m", *dtype = argc > 2 ? argv[2] : "f32";
    int prompt = argc > 3 && !strcmp(argv[3], "prompt");
    int64_t H = 6, hd = 48;
    lorac_dtype_t dt = LORAC_DTYPE_F32;
    if (!strcmp(dtype, "bf16")) dt = LORAC_DTYPE_BF16;
    else if (!strcmp(dtype, "f16")) dt = LORAC_DTYPE_F16;
    if (strcmp(shape, "110m") == 0) H = 12, hd = 64;
    if ((strcmp(shape, "110m") && strcmp(shape, "15m")) || (dt == LORAC_DTYPE_F32 && strcmp(dtype, "f32")) ||
        (argc > 3 && !prompt)) {
        fprintf(stderr, "usage: bench_attention [15m|110m] [f32|bf16|f16] [prompt]\n");
        return 2;
    }
    const int64_t KVH = H, max_n = prompt ? 1929 : 1024;
    float *k = malloc(sizeof(float) * (size_t)(max_n * KVH * hd)), *v = malloc(sizeof(float) * (size_t)(max_n * KVH * hd));
    int64_t max_t = prompt ? max_n : 1; /* query tokens */
    float *q = malloc(sizeof(float) * (size_t)(max_t * H * hd)), *out = malloc(sizeof(float) * (size_t)(max_t * H * hd));
    float *scratch = malloc(sizeof(float) * (size_t)lorac_attention_scratch_floats(max_n, 2));
    if (!k || !v || !q || !out || !scratch) return 1;
    for (int64_t i = 0; i < max_n * KVH * hd; i++) k[i] = 0.01f * (float)(i % 97) - 0.5f, v[i] = 0.01f * (float)(i % 89) - 0.4f;
    for (int64_t i = 0; i < max_t * H * hd; i++) q[i] = 0.1f * (float)(i % 7);
    /* the cache in its dtype */
    void *kst = malloc(sizeof(float) * (size_t)(max_n * KVH * hd)), *vst = malloc(sizeof(float) * (size_t)(max_n * KVH * hd));
    if (!kst || !vst) return 1;
    lorac_kv_store(kst, dt, k, max_n * KVH * hd);
    lorac_kv_store(vst, dt, v, max_n * KVH * hd);
    const void *k_rows[1] = {kst}, *v_rows[1] = {vst};
    if (prompt) {
        const void **kr = malloc(sizeof(void *) * (size_t)max_t), **vr = malloc(sizeof(void *) * (size_t)max_t);
        int32_t *n_ctx = malloc(sizeof(int32_t) * (size_t)max_t);
        if (!kr || !vr || !n_ctx) return 1;
        for (int64_t t = 0; t < max_t; t++) kr[t] = kst, vr[t] = vst, n_ctx[t] = (int32_t)t + 1;
        static const int64_t tokens[] = {128, 512, 1929};
        printf("# bench_attention: %s shape (%lld heads of %lld), %s KV cache, whole prompts, 2 threads; median of %d "
               "rounds\n", shape, (long long)H, (long long)hd, lorac_dtype_name(dt), ROUNDS);
        printf("| prompt tokens | ms | ns per (query, position) pair of a head |\n|---:|---:|---:|\n");
        lorac_kernels_set_threads(2);
        for (size_t ti = 0; ti < sizeof tokens / sizeof tokens[0]; ti++) {
            int64_t T = tokens[ti], calls = T >= 1000 ? 2 : T >= 500 ? 8 : 100;
            double t[ROUNDS];
            for (int r = 0; r < ROUNDS; r++) {
                double t0 = now_us();
                for (int64_t c = 0; c < calls; c++) lorac_attention_forward(out, scratch, q, kr, vr, dt, n_ctx, T, H, KVH, hd, 0.0f);
                t[r] = (now_us() - t0) / (double)calls;
            }
            qsort(t, ROUNDS, sizeof(double), cmp_double);
            double pairs = (double)T * (double)(T + 1) / 2 * (double)H;
            printf("| %lld | %.2f | %.3f |\n", (long long)T, t[ROUNDS / 2] / 1e3, t[ROUNDS / 2] * 1e3 / pairs);
        }
        free(kr); free(vr); free(n_ctx); free(k); free(v); free(kst); free(vst); free(q); free(out); free(scratch);
        return 0;
    }
    static const int32_t lengths[] = {10, 20, 30, 40, 60, 106, 170, 512, 1024};
    printf("# bench_attention: %s shape (%lld heads of %lld), %s KV cache, one query token; median us of %d rounds "
           "of %d calls\n", shape, (long long)H, (long long)hd, lorac_dtype_name(dt), ROUNDS, CALLS);
    printf("| positions | cache values read | 1 thread us | 2 threads us | 2 / 1 |\n|---:|---:|---:|---:|---:|\n");
    for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++) {
        int32_t n = lengths[li];
        double t[2][ROUNDS];
        for (int r = 0; r < ROUNDS; r++)
            for (int th = 0; th < 2; th++) {
                lorac_kernels_set_threads(th + 1);
                double t0 = now_us();
                for (int c = 0; c < CALLS; c++) lorac_attention_forward(out, scratch, q, k_rows, v_rows, dt, &n, 1, H, KVH, hd, 0.0f);
                t[th][r] = (now_us() - t0) / CALLS;
            }
        qsort(t[0], ROUNDS, sizeof(double), cmp_double);
        qsort(t[1], ROUNDS, sizeof(double), cmp_double);
        double one = t[0][ROUNDS / 2], two = t[1][ROUNDS / 2];
        printf("| %d | %lld | %.2f | %.2f | %.2f |\n", n, (long long)(n * H * hd), one, two, two / one);
    }
    free(k); free(v); free(kst); free(vst); free(q); free(out); free(scratch);
    return 0;
}
