/* Test helper for the loops over the kernels' instruction-set paths
 * (test_matmul, test_attention). Include after testlib.h. */
#ifndef LORAC_TEST_ISA_PATHS_H
#define LORAC_TEST_ISA_PATHS_H

#include "kernels/kernels_internal.h"
#include "testlib.h"

/* Switches the kernels to instruction-set path `isa` for a test loop.
 * Returns 0 when the path runs; otherwise prints that it is skipped and
 * returns -1. A skip is only legitimate on a CPU without the instructions:
 * in CI (CI=true) a path the CPU could run but the build left out fails the
 * test instead of passing silently. */
static inline int tl_use_isa(const char *isa) {
    if (lorac_kernels_force_isa(isa) == 0) return 0;
    int cpu_has = 0;
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    __builtin_cpu_init();
    if (strcmp(isa, "avx2") == 0) cpu_has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (strcmp(isa, "avx512") == 0)
        cpu_has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
    const char *ci = getenv("CI");
    if (cpu_has && ci && strcmp(ci, "true") == 0) {
        tl_failed++;
        fprintf(stderr, "%s: this CPU runs it but the build lacks the path (CI requires it)\n", isa);
    } else {
        printf("  %s: not available on this %s, skipped\n", isa, cpu_has ? "build" : "CPU");
    }
    return -1;
}

#endif
