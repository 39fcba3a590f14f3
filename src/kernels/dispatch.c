/* dispatch.c — picks the instruction-set path once (cpuid, LORAC_ISA) and
 * holds the kernels' thread count.
 *
 * The choice is made on the first kernel call under pthread_once, so any
 * number of threads may call kernels concurrently from the start. Afterwards
 * the table pointer is only read (atomically, relaxed: it points to constant
 * tables), except through the test hook lorac_kernels_force_isa. */
#include "kernels_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static _Atomic(const lorac_kernel_ops_t *) g_ops;
static atomic_int g_threads; /* <= 0: OpenMP default */

/* Paths from lowest to highest. */
static const lorac_kernel_ops_t *const g_paths[] = {
    &lorac_kernel_ops_portable,
    &lorac_kernel_ops_avx2,
    &lorac_kernel_ops_avx512,
};
#define N_PATHS ((int)(sizeof g_paths / sizeof g_paths[0]))

/* Whether the CPU (and OS, which __builtin_cpu_supports checks through
 * xgetbv) can run path i. */
static int cpu_can_run(int i) {
    if (i == 0) return 1;
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    __builtin_cpu_init();
    /* clang's __builtin_cpu_supports has no "f16c": read CPUID.1:ECX. The
     * OS-support (xgetbv) check for the AVX state F16C needs is part of
     * __builtin_cpu_supports("avx2"). */
    unsigned a = 0, b = 0, c = 0, d = 0;
    int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
    if (i == 1) return avx2;
    if (i == 2)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
    return 0;
}

static int path_usable(int i) { return g_paths[i]->name != NULL && cpu_can_run(i); }

static int path_index(const char *name) {
    for (int i = 0; i < N_PATHS; i++)
        if (g_paths[i]->name && strcmp(g_paths[i]->name, name) == 0) return i;
    return -1;
}

static void choose_once(void) {
    int best = 0;
    for (int i = 0; i < N_PATHS; i++)
        if (path_usable(i)) best = i;
    const char *env = getenv("LORAC_ISA");
    if (env && *env) {
        int want = path_index(env);
        /* Only a lower path can be forced: a higher one would crash with
         * SIGILL, which is worse than ignoring the request. The library does
         * not print, so a bad value silently keeps the best path; the
         * benchmarks and tests print lorac_kernels_isa(). */
        if (want >= 0 && want <= best && path_usable(want)) best = want;
    }
    atomic_store_explicit(&g_ops, g_paths[best], memory_order_release);
}

const lorac_kernel_ops_t *lorac_kernels_ops(void) {
    pthread_once(&g_once, choose_once);
    return atomic_load_explicit(&g_ops, memory_order_acquire);
}

const char *lorac_kernels_isa(void) { return lorac_kernels_ops()->name; }

int lorac_kernels_isa_available(const char *name) {
    int i = name ? path_index(name) : -1;
    return i >= 0 && path_usable(i);
}

int lorac_kernels_force_isa(const char *name) {
    pthread_once(&g_once, choose_once);
    if (!lorac_kernels_isa_available(name)) return -1;
    atomic_store_explicit(&g_ops, g_paths[path_index(name)], memory_order_release);
    return 0;
}

void lorac_kernels_set_threads(int n_threads) { atomic_store(&g_threads, n_threads); }

int lorac_kernels_get_threads(void) {
    int n = atomic_load(&g_threads);
    return n > 0 ? n : omp_get_max_threads();
}

/* Below ~64K multiply-adds a kernel runs in a few microseconds, about what
 * waking an OpenMP team costs, so threads would only add latency. */
#define LORAC_MIN_PARALLEL_WORK ((int64_t)1 << 16)

int lorac_kernels_threads_for(int64_t work, int64_t max_blocks) {
    if (work < LORAC_MIN_PARALLEL_WORK || max_blocks <= 1) return 1;
    int64_t n = lorac_kernels_get_threads();
    if (n > max_blocks) n = max_blocks;
    return n < 1 ? 1 : (int)n;
}
