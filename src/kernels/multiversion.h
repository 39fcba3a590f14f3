/* LORAC_MULTIVERSION: compile a plain-C kernel for AVX-512, AVX2 and the
 * baseline, and let the dynamic loader pick the best clone for this CPU
 * (GCC function multi-versioning through an ifunc). The matmuls have
 * hand-written paths (dispatch.c); this serves the simpler loops, which the
 * compiler vectorises well once it may use wide registers. Off where ifuncs
 * are unavailable or get in the way (clang builds, sanitizers: the ifunc
 * resolvers run before ThreadSanitizer's runtime is up and crash). */
#ifndef LORAC_MULTIVERSION_H
#define LORAC_MULTIVERSION_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(__SANITIZE_THREAD__) && defined(__linux__)
#define LORAC_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
/* for loops with fmaf: the "avx2" target lacks FMA (AVX-512F implies it),
 * so its fmaf would be a libm call per element */
#define LORAC_MULTIVERSION_FMA __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define LORAC_MULTIVERSION
#define LORAC_MULTIVERSION_FMA
#endif

#endif
