/* bench_common.h — timer, median and machine peers (read bandwidth, FMA
 * peak) shared by the C benchmarks. Compiled with -march=native (see
 * bench/Makefile): the peers measure the machine, not lorac's kernels. */
#ifndef LORAC_BENCH_COMMON_H
#define LORAC_BENCH_COMMON_H

#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* A uniform value in [-1, 1) from the xorshift state *s (nonzero): the
 * benchmarks' inputs, the same every run. */
static inline float bench_frand(uint64_t *s) {
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return (float)((double)(*s >> 40) / (double)(1ull << 23) - 1.0);
}

/* Median of v[0..n) (n >= 1); sorts v. */
static inline double bench_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Σ of n floats, several independent vector accumulators so the loop is
 * limited by loads, not by add latency. */
static inline float bench_read_sum(const float *p, size_t n) {
    size_t i = 0;
#if defined(__AVX512F__)
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_loadu_ps(p + i));
        a1 = _mm512_add_ps(a1, _mm512_loadu_ps(p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_loadu_ps(p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_loadu_ps(p + i + 48));
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#elif defined(__AVX2__)
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    float s = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
#else
    float s = 0;
#endif
    for (; i < n; i++) s += p[i];
    return s;
}

static volatile float bench_sink;

/* Read bandwidth in GB/s (1e9 bytes/s) over `bytes` of buf with `nt`
 * threads, each summing its contiguous share; best of `reps` runs. */
static inline double bench_read_bw(const float *buf, size_t bytes, int nt, int reps) {
    size_t n = bytes / sizeof(float);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now();
        float total = 0;
#pragma omp parallel for schedule(static) num_threads(nt) reduction(+ : total)
        for (int i = 0; i < nt; i++) {
            size_t a = n / (size_t)nt * (size_t)i, b = i == nt - 1 ? n : a + n / (size_t)nt;
            total += bench_read_sum(buf + a, b - a);
        }
        double dt = bench_now() - t0;
        bench_sink = total;
        if (dt < best) best = dt;
    }
    return (double)bytes / best / 1e9;
}

/* Peak f32 FMA rate of nt cores in GFLOP/s (2 flops per lane per FMA), best
 * of 3 runs of `iters` steps: 16 independent accumulator chains, enough for
 * 2 FMA ports x 4-5 cycles latency. */
static inline double bench_fma_peak(int nt, long iters) {
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        double t0 = bench_now();
#pragma omp parallel num_threads(nt)
        {
#if defined(__AVX512F__)
            __m512 a[16], m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
            for (int j = 0; j < 16; j++) a[j] = _mm512_set1_ps((float)j);
            for (long i = 0; i < iters; i++)
#pragma GCC unroll 16
                for (int j = 0; j < 16; j++) a[j] = _mm512_fmadd_ps(a[j], m, c);
            __m512 s = a[0];
            for (int j = 1; j < 16; j++) s = _mm512_add_ps(s, a[j]);
            bench_sink = _mm512_reduce_add_ps(s);
#elif defined(__AVX2__) && defined(__FMA__)
            __m256 a[12], m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
            for (int j = 0; j < 12; j++) a[j] = _mm256_set1_ps((float)j);
            for (long i = 0; i < iters; i++)
#pragma GCC unroll 12
                for (int j = 0; j < 12; j++) a[j] = _mm256_fmadd_ps(a[j], m, c);
            /* every chain feeds the result: a chain nothing reads is
             * dead code (GCC kept one FMA of the 12, and the figure was
             * 12 times that chain's latency-bound rate) */
            __m256 s = a[0];
            for (int j = 1; j < 12; j++) s = _mm256_add_ps(s, a[j]);
            float t[8];
            _mm256_storeu_ps(t, s);
            bench_sink = t[0];
#endif
        }
        double dt = bench_now() - t0;
        if (dt < best) best = dt;
    }
#if defined(__AVX512F__)
    double flops = 2.0 * 16 * 16 * (double)iters * nt;
#elif defined(__AVX2__) && defined(__FMA__)
    double flops = 2.0 * 8 * 12 * (double)iters * nt;
#else
    double flops = 0;
#endif
    return flops / best / 1e9;
}

#endif
