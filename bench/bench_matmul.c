/* bench_matmul — lorac_matmul_* speed against the machine's own peers
 * measured in the same run: read bandwidth (decode, T = 1, is bound by
 * streaming the weights once per token) and the FMA peak (T >= 32).
 *
 * GEMV ("cold"): the weights are many copies of the matrix filling >= 1 GiB,
 * used in turn, so every call reads from DRAM as a real decode step does
 * (a 110M-parameter model is 440 MB in f32; here L3 is large enough to hold a
 * single 32000x768 matrix, which would flatter a hot loop).
 * GEMM: one matrix, T = 64 and 256, GFLOP/s = 2·T·N·K / time: the forward
 * (batch-invariant, inference), the training forward (lorac_matmul_forward_batch,
 * packed; below 128 rows it is the same call), dx and dw.
 *
 * Without --quick, also the TinyLlama-1.1B training shapes (--training:
 * only those).
 *
 * Build and run: make -C bench && bench/out/bench_matmul [--quick | --training]
 * LORAC_ISA=avx2|portable picks a lower path. */
#include "bench_common.h"
#include "kernels/kernels_internal.h"

#define GIB ((size_t)1 << 30)

/* NF4: QLoRA's 4-bit weights (--quantize nf4), quantized from the F32 values */
static const lorac_dtype_t DTYPES[] = {LORAC_DTYPE_F32, LORAC_DTYPE_BF16, LORAC_DTYPE_F16, LORAC_DTYPE_NF4};
#define N_DTYPES ((int)(sizeof DTYPES / sizeof DTYPES[0]))
/* 110M Llama-style model (dim 768, hidden 2048, vocab 32000): (N, K). */
static const int64_t SHAPES[][2] = {{768, 768}, {2048, 768}, {768, 2048}, {32000, 768}};

/* count copies of an (N,K) matrix in dtype, back to back. */
static void *make_weights(lorac_dtype_t dt, int64_t N, int64_t K, int64_t count) {
    size_t one = lorac_dtype_bytes(dt, N * K);
    char *w = aligned_alloc(64, (one * (size_t)count + 63) / 64 * 64);
    float *f = dt == LORAC_DTYPE_NF4 ? malloc(sizeof(float) * (size_t)(N * K)) : NULL;
    if (!w || (dt == LORAC_DTYPE_NF4 && !f)) return free(w), free(f), NULL;
    uint64_t s = 88172645463325252ull;
    for (int64_t i = 0; i < N * K; i++) {
        float v = bench_frand(&s) * 0.05f;
        if (dt == LORAC_DTYPE_F32) ((float *)w)[i] = v;
        else if (dt == LORAC_DTYPE_BF16) ((uint16_t *)w)[i] = lorac_f32_to_bf16(v);
        else if (dt == LORAC_DTYPE_F16) ((uint16_t *)w)[i] = lorac_f32_to_f16(v);
        else f[i] = v;
    }
    if (f) lorac_quantize_nf4(w, f, LORAC_DTYPE_F32, N * K);
    free(f);
    for (int64_t c = 1; c < count; c++) memcpy(w + one * (size_t)c, w, one);
    return w;
}

static float *rand_f32(int64_t n) {
    float *p = malloc((size_t)n * sizeof(float));
    uint64_t s = 0x2545F4914F6CDD1Dull;
    for (int64_t i = 0; p && i < n; i++) p[i] = bench_frand(&s);
    return p;
}

/* Seconds per call of f(i) for i = 0, 1, ... : at least min_calls calls and
 * min_s seconds; the best of 3 such rounds. */
#define TIME_CALLS(result, min_calls, min_s, body)                                       \
    do {                                                                                 \
        double best_ = 1e30;                                                             \
        for (int round_ = 0; round_ < 3; round_++) {                                     \
            long calls_ = 0;                                                             \
            double t0_ = bench_now(), dt_;                                               \
            do {                                                                         \
                long i = calls_;                                                         \
                (void)i;                                                                 \
                body;                                                                    \
                calls_++;                                                                \
                dt_ = bench_now() - t0_;                                                 \
            } while (calls_ < (min_calls) || dt_ < (min_s));                             \
            if (dt_ / (double)calls_ < best_) best_ = dt_ / (double)calls_;              \
        }                                                                                \
        result = best_;                                                                  \
    } while (0)

/* The shapes a training step runs (f32, 2 threads): the training forward,
 * dx and dw, against the FMA peak. The weights come from DRAM/L3 as in a
 * real step. Per model as bench_train.sh runs it: T = batch x 256 rows. */
typedef struct {
    const char *name;
    int64_t T, shapes[4][2];
} train_model_t;
static const train_model_t TRAIN_MODELS[] = {
    {"TinyLlama-1.1B", 512, {{2048, 2048}, {5632, 2048}, {2048, 5632}, {256, 2048}}},
    {"110M", 1024, {{768, 768}, {2048, 768}, {768, 2048}, {32000, 768}}},
    {"15M", 1024, {{288, 288}, {768, 288}, {288, 768}, {32000, 288}}},
};

static void training_shapes(const train_model_t *m, double min_s) {
    const int64_t T = m->T;
    printf("\nTraining shapes (%s, T = %lld, F32, 2 threads)\n", m->name, (long long)T);
    printf("%-12s %9s %9s %9s %8s\n", "N x K", "fwd GF/s", "dx GF/s", "dw GF/s", "peak");
    lorac_kernels_set_threads(2);
    for (int si = 0; si < 4; si++) {
        int64_t N = m->shapes[si][0], K = m->shapes[si][1];
        float *w = (float *)make_weights(LORAC_DTYPE_F32, N, K, 1), *x = rand_f32(T * K);
        float *out = malloc((size_t)(T * N) * sizeof(float)), *dout = rand_f32(T * N), *dx = rand_f32(T * K);
        float *dw = rand_f32(N * K);
        if (!w || !x || !out || !dout || !dx || !dw) exit(1);
        double flop = 2.0 * (double)T * (double)N * (double)K, peak = bench_fma_peak(2, 2000000), sf, sdx, sdw;
        TIME_CALLS(sf, 2, min_s, lorac_matmul_forward_batch(out, x, w, LORAC_DTYPE_F32, NULL, T, K, N));
        TIME_CALLS(sdx, 2, min_s, lorac_matmul_backward_input(dx, dout, w, LORAC_DTYPE_F32, T, K, N));
        TIME_CALLS(sdw, 2, min_s, lorac_matmul_backward_weight(dw, NULL, dout, x, T, K, N));
        printf("%5lldx%-6lld %9.1f %9.1f %9.1f %8.1f\n", (long long)N, (long long)K, flop / sf / 1e9,
               flop / sdx / 1e9, flop / sdw / 1e9, peak);
        free(w), free(x), free(out), free(dout), free(dx), free(dw);
    }
}

int main(int argc, char **argv) {
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    if (argc > 1 && strcmp(argv[1], "--training") == 0) {
        /* --training [1b|110m|15m]: one model's shapes (default 1.1B) */
        const char *which = argc > 2 ? argv[2] : "1b";
        int mi = strcmp(which, "110m") == 0 ? 1 : strcmp(which, "15m") == 0 ? 2 : 0;
        training_shapes(&TRAIN_MODELS[mi], 0.4);
        return 0;
    }
    double min_s = quick ? 0.1 : 0.4;
    printf("bench_matmul: path %s\n", lorac_kernels_isa());
    /* Other processes compete for the same cores; say how busy it was. */
    FILE *la = fopen("/proc/loadavg", "r");
    char load[64] = "?";
    if (la && fgets(load, sizeof load, la)) printf("load average at start: %s", load);
    if (la) fclose(la);

    /* Peers, measured again right before every row: this machine is a VM
     * whose bandwidth and clock move by up to 2x from one second to the next,
     * so a ratio against a peer measured once would mostly show that noise. */
    float *bwbuf = aligned_alloc(64, GIB);
    if (!bwbuf) return 1;
    for (size_t i = 0; i < GIB / sizeof(float); i++) bwbuf[i] = (float)(i & 255);
    printf("\nGEMV (T=1, weights from DRAM)\n");
    printf("%-12s %-5s %3s %10s %9s %10s %8s %9s\n", "N x K", "dtype", "thr", "us/call", "GB/s",
           "read GB/s", "%read", "Gw/s");
    for (int si = 0; si < 4; si++)
        for (int di = 0; di < N_DTYPES; di++) {
            int64_t N = SHAPES[si][0], K = SHAPES[si][1];
            lorac_dtype_t dt = DTYPES[di];
            size_t one = lorac_dtype_bytes(dt, N * K);
            int64_t count = (int64_t)(GIB / one) + 1;
            void *w = make_weights(dt, N, K, count);
            float *x = rand_f32(K), *out = malloc((size_t)N * sizeof(float));
            if (!w || !x || !out) return 1;
            for (int nt = 1; nt <= 2; nt++) {
                lorac_kernels_set_threads(nt);
                double bw = bench_read_bw(bwbuf, GIB, nt, 3), sec;
                TIME_CALLS(sec, count, min_s,
                           lorac_matmul_forward(out, x, (const char *)w + one * (size_t)(i % count),
                                                dt, NULL, 1, K, N));
                double gbs = (double)one / sec / 1e9;
                printf("%5lldx%-6lld %-5s %3d %10.1f %9.1f %10.1f %7.0f%% %9.2f\n", (long long)N,
                       (long long)K, lorac_dtype_name(dt), nt, sec * 1e6, gbs, bw, 100.0 * gbs / bw,
                       (double)(N * K) / sec / 1e9);
            }
            free(w), free(x), free(out);
        }
    free(bwbuf);

    printf("\nGEMM (forward), backward dx and dw\n");
    printf("%-12s %-5s %4s %3s %8s %8s %8s %6s %8s %8s %8s\n", "N x K", "dtype", "T", "thr", "fwd ms",
           "GFLOP/s", "peak", "%peak", "batch GF", "dx GF/s", "dw GF/s");
    static const int64_t TT[] = {64, 256};
    for (int si = 0; si < 4; si++)
        for (int ti = 0; ti < 2; ti++)
            for (int di = 0; di < N_DTYPES; di++) {
                int64_t N = SHAPES[si][0], K = SHAPES[si][1], T = TT[ti];
                if (N == 32000 && T == 256) continue; /* 12.6 GFLOP: too slow for a table row */
                lorac_dtype_t dt = DTYPES[di];
                void *w = make_weights(dt, N, K, 1);
                float *x = rand_f32(T * K), *out = malloc((size_t)(T * N) * sizeof(float));
                float *dout = rand_f32(T * N), *dx = rand_f32(T * K), *dw = rand_f32(N * K);
                if (!w || !x || !out || !dout || !dx || !dw) return 1;
                double flop = 2.0 * (double)T * (double)N * (double)K;
                for (int nt = 1; nt <= 2; nt++) {
                    lorac_kernels_set_threads(nt);
                    double peak = bench_fma_peak(nt, 2000000), sf, sfb, sdx, sdw = 0;
                    TIME_CALLS(sf, 2, min_s, lorac_matmul_forward(out, x, w, dt, NULL, T, K, N));
                    TIME_CALLS(sfb, 2, min_s, lorac_matmul_forward_batch(out, x, w, dt, NULL, T, K, N));
                    TIME_CALLS(sdx, 2, min_s, lorac_matmul_backward_input(dx, dout, w, dt, T, K, N));
                    if (dt == LORAC_DTYPE_F32) /* dw does not depend on the weight dtype */
                        TIME_CALLS(sdw, 2, min_s,
                                   lorac_matmul_backward_weight(dw, NULL, dout, x, T, K, N));
                    char dws[16] = "-";
                    if (sdw > 0) snprintf(dws, sizeof dws, "%.1f", flop / sdw / 1e9);
                    printf("%5lldx%-6lld %-5s %4lld %3d %8.2f %8.1f %8.1f %5.0f%% %8.1f %8.1f %8s\n",
                           (long long)N, (long long)K, lorac_dtype_name(dt), (long long)T, nt,
                           sf * 1e3, flop / sf / 1e9, peak, 100.0 * flop / sf / 1e9 / peak,
                           flop / sfb / 1e9, flop / sdx / 1e9, dws);
                }
                free(w), free(x), free(out), free(dout), free(dx), free(dw);
            }
    if (!quick) training_shapes(&TRAIN_MODELS[0], min_s);
    return 0;
}
