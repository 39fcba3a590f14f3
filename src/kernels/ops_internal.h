/* Small helpers shared by the plain-C kernels (ops.c, train_ops.c). */
#ifndef LORAC_OPS_INTERNAL_H
#define LORAC_OPS_INTERNAL_H

#include "lorac/core.h"

/* Element i of a small weight vector (norm weights) in its own dtype. */
static inline float weight_at(const void *w, lorac_dtype_t wtype, int64_t i) {
    switch (wtype) {
    case LORAC_DTYPE_BF16: return lorac_bf16_to_f32(((const uint16_t *)w)[i]);
    case LORAC_DTYPE_F16: return lorac_f16_to_f32(((const uint16_t *)w)[i]);
    default: return ((const float *)w)[i];
    }
}

static inline float dot_f32(const float *a, const float *b, int64_t n) {
    float s = 0.0f;
    /* omp simd: lets the compiler vectorise the reduction (a fixed order,
     * so still deterministic) without -ffast-math */
    #pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

#endif
