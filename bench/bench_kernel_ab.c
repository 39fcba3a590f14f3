/* bench_kernel_ab — two builds of one kernel path, timed turn about in one
 * process, on the products of a training step.
 *
 * This VM's speed drifts by 10-30% from one run to the next, more than most
 * tuning changes gain. Here the two builds (A, B: the same source compiled
 * with different -D settings, see `make -C bench ab`) alternate every 0.15 s
 * on the same shape, so drift hits both alike, and swap output buffers every
 * round; the table gives each build's median over the rounds and B/A. The shapes are a step's (bench_matmul's
 * --training ones): the training forward and dx (matmul_packed on the
 * weight repacked by lorac_pack_weight where the path has it, as a LoRA
 * step runs them; else matmul_set_bt and matmul_acc) and dw (matmul_acc
 * on a transposed a, --full's), each shared by two threads as
 * lorac's matmul drivers share it (by 16-column panels of the output, dw by
 * rows), plus the loss's block products (the batch's rows x 1008
 * vocabulary columns, each thread on its half of the rows, as
 * lorac_crossentropy_classifier runs them). Both builds must give the same bits; each shape checks that.
 *
 * Build and run (the AVX2 path; ISA=avx512 builds that file instead, with
 * its LORAC_AVX512_* sizes):
 *   make -C bench ab A="-DLORAC_AVX2_MBLOCK=264" B="" && bench/out/bench_kernel_ab [15m|110m|1b] [rounds]
 */
#include "bench_common.h"
#include "kernels/kernels_internal.h"

extern const lorac_kernel_ops_t lorac_ab_ops_a, lorac_ab_ops_b;

typedef enum { FWD, DX, DW } product_t;
static const char *const PRODUCT_NAMES[] = {"fwd", "dx", "dw"};

typedef struct {
    int64_t T, N, K; /* x (T,K), w (N,K), out (T,N) */
    int frozen;      /* the loss's classifier block: no dw, threads split by rows */
} shape_t;

typedef struct {
    const char *name;
    shape_t shapes[5];
} model_t;

static const model_t MODELS[] = {
    {"15m", {{1024, 288, 288, 0}, {1024, 768, 288, 0}, {1024, 288, 768, 0}, {1024, 1008, 288, 1}, {0, 0, 0, 0}}},
    {"110m", {{1024, 768, 768, 0}, {1024, 2048, 768, 0}, {1024, 768, 2048, 0}, {1024, 1008, 768, 1}, {0, 0, 0, 0}}},
    {"1b",
     {{512, 2048, 2048, 0}, {512, 5632, 2048, 0}, {512, 2048, 5632, 0}, {512, 256, 2048, 0}, {512, 1008, 2048, 1}}},
};

static float *rand_f32(int64_t n, uint64_t seed) {
    float *p = aligned_alloc(64, ((size_t)n * sizeof(float) + 63) / 64 * 64);
    if (!p) {
        fprintf(stderr, "bench_kernel_ab: out of memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < n; i++) p[i] = bench_frand(&seed);
    return p;
}

static int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

/* The forward (c = x·wᵀ) or dx (c += dout·w) product on rows [r0,r1)
 * and columns [c0,c1) of c, with w repacked as P (matmul_packed). */
static void packed_product(const lorac_kernel_ops_t *o, product_t p, float *c, const float *x, const float *dout,
                           const float *P, int64_t T, int64_t N, int64_t K, int64_t r0, int64_t r1, int64_t c0,
                           int64_t c1) {
    if (p == FWD) o->matmul_packed(c, x, K, P, T, K, N, r0, r1, c0, c1, 1, 1, NULL, NULL, 0);
    else o->matmul_packed(c, dout, N, P, T, N, K, r0, r1, c0, c1, 0, 0, NULL, NULL, 0);
}

/* One product on two threads, split as the drivers split it. Where the
 * path has matmul_packed (AVX2), the forward and dx products read the
 * weight repacked (P, lorac_pack_weight), as a LoRA step runs them. */
static void run(const lorac_kernel_ops_t *o, product_t p, const shape_t *s, float *c, const float *x,
                const float *w, const float *P, const float *dout) {
    int64_t T = s->T, N = s->N, K = s->K;
#pragma omp parallel num_threads(2)
    {
        int i = omp_get_thread_num();
        if (p == DW) { /* dw (N,K) += doutᵀ·x: rows of dw in multiples of 4 */
            int64_t chunk = round_up((N + 1) / 2, 4), n0 = i * chunk, n1 = n0 + chunk < N ? n0 + chunk : N;
            if (n0 < n1) o->matmul_acc(c, dout, 1, N, x, LORAC_DTYPE_F32, N, T, K, n0, n1, 0, K);
        } else if (s->frozen) { /* each thread its half of the rows, every column */
            int64_t half = round_up((T + 1) / 2, 6), r0 = i * half, r1 = r0 + half < T ? r0 + half : T;
            if (r0 < r1 && o->matmul_packed) packed_product(o, p, c, x, dout, P, T, N, K, r0, r1, 0, p == FWD ? N : K);
            else if (r0 < r1) {
                if (p == FWD) o->matmul_set_bt(c, x, K, 1, w, LORAC_DTYPE_F32, T, K, N, r0, r1, 0, N);
                else o->matmul_acc(c, dout, N, 1, w, LORAC_DTYPE_F32, T, N, K, r0, r1, 0, K);
            }
        } else {
            int64_t C = p == FWD ? N : K, half = round_up((C + 1) / 2, o->split_cols);
            int64_t c0 = i * half, c1 = c0 + half < C ? c0 + half : C;
            if (c0 < c1 && o->matmul_packed) packed_product(o, p, c, x, dout, P, T, N, K, 0, T, c0, c1);
            else if (c0 < c1) {
                if (p == FWD) o->matmul_set_bt(c, x, K, 1, w, LORAC_DTYPE_F32, T, K, N, 0, T, c0, c1);
                else o->matmul_acc(c, dout, N, 1, w, LORAC_DTYPE_F32, T, N, K, 0, T, c0, c1);
            }
        }
    }
}

int main(int argc, char **argv) {
    const char *which = argc > 1 ? argv[1] : "15m";
    int rounds = argc > 2 ? atoi(argv[2]) : 11;
    if (rounds < 1 || rounds > 200) rounds = 11;
    const model_t *m = NULL;
    for (size_t i = 0; i < sizeof MODELS / sizeof MODELS[0]; i++)
        if (strcmp(MODELS[i].name, which) == 0) m = &MODELS[i];
    if (!m || !lorac_ab_ops_a.name || !lorac_ab_ops_b.name) {
        fprintf(stderr, "usage: bench_kernel_ab [15m|110m|1b] [rounds]  (the path must be compiled in)\n");
        return 2;
    }
    if (!lorac_kernels_isa_available(lorac_ab_ops_a.name)) {
        fprintf(stderr, "bench_kernel_ab: this CPU cannot run the %s path\n", lorac_ab_ops_a.name);
        return 2;
    }
    printf("bench_kernel_ab: %s path, %s shapes, %d rounds of 0.15 s a build, 2 threads\n", lorac_ab_ops_a.name,
           m->name, rounds);
    printf("%-18s %-4s %10s %10s %7s\n", "T x N x K", "op", "A GF/s", "B GF/s", "B/A");
    const lorac_kernel_ops_t *ops[2] = {&lorac_ab_ops_a, &lorac_ab_ops_b};
    int mismatches = 0;
    for (int si = 0; si < 5 && m->shapes[si].T; si++) {
        const shape_t *s = &m->shapes[si];
        int64_t T = s->T, N = s->N, K = s->K;
        float *w = rand_f32(N * K, 11), *x = rand_f32(T * K, 12), *dout = rand_f32(T * N, 13);
        float *P = rand_f32(lorac_packed_weight_floats(N, K), 15);
        lorac_pack_weight(P, w, N, K);
        int64_t c_n = T * N > T * K ? T * N : T * K;
        c_n = c_n > N * K ? c_n : N * K;
        float *c[2] = {rand_f32(c_n, 14), rand_f32(c_n, 14)};
        for (product_t p = FWD; p <= DW; p++) {
            if (p == DW && s->frozen) continue;
            double flop = 2.0 * (double)T * (double)N * (double)K, rate[2][200];
            /* same bits: one call each, from equal c */
            for (int v = 0; v < 2; v++) run(ops[v], p, s, c[v], x, w, P, dout);
            int64_t out_n = p == FWD ? T * N : p == DX ? T * K : N * K;
            if (memcmp(c[0], c[1], (size_t)out_n * sizeof(float)) != 0) {
                printf("  %s %lldx%lldx%lld: A and B differ\n", PRODUCT_NAMES[p], (long long)T, (long long)N,
                       (long long)K);
                mismatches++;
            }
            for (int r = 0; r < rounds; r++)
                for (int v = 0; v < 2; v++) {
                    double t0 = bench_now(), t;
                    long calls = 0;
                    do {
                        run(ops[v], p, s, c[(v + r) % 2], x, w, P, dout);
                        calls++;
                        t = bench_now() - t0;
                    } while (t < 0.15);
                    rate[v][r] = flop * (double)calls / t / 1e9;
                }
            double a = bench_median(rate[0], rounds), b = bench_median(rate[1], rounds);
            char dims[32];
            snprintf(dims, sizeof dims, "%lldx%lldx%lld", (long long)T, (long long)N, (long long)K);
            printf("%-18s %-4s %10.1f %10.1f %7.3f\n", dims, PRODUCT_NAMES[p], a, b, b / a);
            fflush(stdout);
            /* the timed calls accumulated into c (each build used both
             * buffers in turn, so that where a buffer lies favours neither):
             * start the next product equal */
            memcpy(c[1], c[0], (size_t)c_n * sizeof(float));
        }
        free(w), free(P), free(x), free(dout), free(c[0]), free(c[1]);
    }
    return mismatches ? 1 : 0;
}
