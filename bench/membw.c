/* membw — the machine's memory bandwidth, the bound for decode (T = 1)
 * matmuls, which read every weight once per token.
 *
 * Read: each thread sums its contiguous share of a 1 GiB buffer (best of 5).
 * Copy: memcpy of 1 GiB halves per thread; reported STREAM-style as
 * (bytes read + bytes written) / time.
 * Build and run: make -C bench && bench/out/membw */
#include "bench_common.h"

#define GIB ((size_t)1 << 30)

static double copy_bw(float *dst, const float *src, size_t bytes, int nt, int reps) {
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now();
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int i = 0; i < nt; i++) {
            size_t part = bytes / (size_t)nt, a = part * (size_t)i;
            size_t len = i == nt - 1 ? bytes - a : part;
            memcpy((char *)dst + a, (const char *)src + a, len);
        }
        double dt = bench_now() - t0;
        if (dt < best) best = dt;
    }
    return 2.0 * (double)bytes / best / 1e9;
}

int main(void) {
    float *a = aligned_alloc(64, GIB), *b = aligned_alloc(64, GIB);
    if (!a || !b) {
        fprintf(stderr, "membw: cannot allocate 2 GiB\n");
        return 1;
    }
    /* Touch every page (in parallel, so pages spread like the readers). */
    size_t n = GIB / sizeof(float);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 1023), b[i] = 0;
    printf("%-8s %12s %12s\n", "threads", "read GB/s", "copy GB/s");
    for (int nt = 1; nt <= 2; nt++)
        printf("%-8d %12.1f %12.1f\n", nt, bench_read_bw(a, GIB, nt, 5), copy_bw(b, a, GIB, nt, 3));
    printf("FMA peak: %.1f GFLOP/s (1 thread), %.1f GFLOP/s (2 threads)\n", bench_fma_peak(1, 20000000),
           bench_fma_peak(2, 20000000));
    free(a), free(b);
    return 0;
}
