/* kernels_internal.h — private to src/kernels (and its tests/benchmarks).
 *
 * Each instruction-set path (portable C, AVX2+FMA+F16C, AVX-512) provides one
 * lorac_kernel_ops_t of single-threaded block kernels. The drivers in matmul.c
 * split the work into blocks, run them under OpenMP, and call the table that
 * dispatch.c chose once from cpuid (or LORAC_ISA).
 *
 * Block kernels must compute every output element with a summation order that
 * does not depend on where the block boundaries fall; that is what makes the
 * results bit-identical for any thread count on the same path.
 */
#ifndef LORAC_KERNELS_INTERNAL_H
#define LORAC_KERNELS_INTERNAL_H

#include "lorac/kernels.h"

#if defined(__GNUC__)
#define LORAC_ALWAYS_INLINE static inline __attribute__((always_inline))
#define LORAC_NOINLINE static __attribute__((noinline))
#else
#define LORAC_ALWAYS_INLINE static inline
#define LORAC_NOINLINE static
#endif

/* Forward on output columns [n0,n1) of all T rows.
 * out is (T,N), x is (T,K), w is (N,K) in wtype, bias is (N) or NULL.
 * out[t,n] = Σ_k x[t,k]·w[n,k] (+ bias[n]); every k-reduction in the same
 * fixed order whatever T, n0, n1 are. */
typedef void (*lorac_matmul_fwd_fn)(float *out, const float *x, const void *w, lorac_dtype_t wtype,
                                    const float *bias, int64_t T, int64_t K, int64_t N,
                                    int64_t n0, int64_t n1);

/* Accumulating product on the block rows [m0,m1) × columns [k0,k1) of c:
 * c is (M,K) f32, a is (M,L) f32 with element (m,l) at a[m*a_rs + l*a_cs]
 * (so a transposed operand needs no copy), b is (L,K) row-major in btype.
 * c[m,k] += Σ_l a[m,l]·b[l,k], as one chain of multiply-adds over l in
 * increasing order, starting from the old c[m,k].
 * backward_input is c=dx (T,K), a=dout (T,N), b=w (N,K);
 * backward_weight is c=dw (N,K), a=doutᵀ, b=x (T,K). */
typedef void (*lorac_matmul_acc_fn)(float *c, const float *a, int64_t a_rs, int64_t a_cs,
                                    const void *b, lorac_dtype_t btype, int64_t M, int64_t L,
                                    int64_t K, int64_t m0, int64_t m1, int64_t k0, int64_t k1);

/* A product with a short second sum: matmul_acc (b_t = 0) or matmul_acc_bt
 * (b_t = 1), or their set forms (set = 1), with each chain of c[m,k] then
 * going on over j < tr with ta[m*tr + j] · tb(j, k), before c is stored:
 * c[m,k] (+)= Σ_l a[m,l]·b(l,k) + Σ_j ta[m,j]·tb(j,k), tb f32 in b's
 * orientation ((tr,K) row-major, or (K,tr) when b_t). The bits of the
 * product followed by an accumulating product of the tail, without the
 * second pass over c: LoRA's expand fused into the base weights' product.
 * tr <= LORAC_TAIL_MAX. */
#define LORAC_TAIL_MAX 64
typedef void (*lorac_matmul_tail_fn)(float *c, const float *a, int64_t a_rs, int64_t a_cs, const void *b,
                                     lorac_dtype_t btype, int64_t M, int64_t L, int64_t K, int64_t m0, int64_t m1,
                                     int64_t k0, int64_t k1, int b_t, int set, const float *ta, const float *tb,
                                     int64_t tr);

/* matmul_tail with b a frozen f32 weight w (N rows, its K columns)
 * pre-packed by lorac_pack_weight into P: b_t = 1 is the forward, c =
 * x·wᵀ (b = w as (K,L): c's columns k0, k1 are w's rows, k0 a multiple of
 * 16); b_t = 0 is dx, c = dout·w (b = w as (L,K)). The bits of matmul_tail
 * on w itself. */
typedef void (*lorac_matmul_packed_fn)(float *c, const float *a, int64_t a_rs, const float *P, int64_t M, int64_t L,
                                       int64_t K, int64_t m0, int64_t m1, int64_t k0, int64_t k1, int b_t, int set,
                                       const float *ta, const float *tb, int64_t tr);

/* dst (n) f32 = src (n) in dtype (F32, BF16, F16). */
typedef void (*lorac_convert_fn)(float *dst, const void *src, lorac_dtype_t dtype, int64_t n);

/* x[i] = e^(x[i] − shift) for i < n, in place; returns Σ e^(x[i] − shift)
 * summed in double (softmax denominators over 100k+ terms keep their
 * precision). Arguments are ≤ 0 (shift is the row's max); below −87 the
 * result is 0, as it is for −inf (masked scores). */
typedef double (*lorac_exp_sum_fn)(float *x, float shift, int64_t n);

/* Attention at inference for nq <= LORAC_ATTENTION_GROUP queries that read
 * the same cache rows (one kv head of one sequence): query i's output o[i]
 * (hd) = Σ_p a_p · v_p with a = softmax over p < n[i] of scale · q[i]·k_p
 * (softcap > 0: of softcap · tanh(scale · q[i]·k_p / softcap), Gemma 2's),
 * where k_p = krows + p·stride bytes and v_p = vrows + p·stride are cache
 * rows of hd values in kv (F32, BF16, F16); scores[i] is scratch for the
 * call's largest n[j] floats (a kernel may score a group's rows past a
 * query's own n, and not read them). Each score and each element of o[i] is summed in an order fixed
 * by p, n[i] and hd alone, so a query gets the same bits whatever else its
 * call or group holds: a prompt run as one batch gives the bits of its
 * tokens one by one. */
#define LORAC_ATTENTION_GROUP 4
typedef void (*lorac_attention_fn)(float *const *o, float *const *scores, const float *const *q, const int32_t *n,
                                   int nq, const char *krows, const char *vrows, int64_t stride, lorac_dtype_t kv,
                                   int64_t hd, float scale, float softcap);

typedef struct {
    const char *name; /* "portable", "avx2", "avx512"; NULL if not compiled in */
    lorac_matmul_fwd_fn matmul_fwd;
    lorac_matmul_acc_fn matmul_acc;
    /* matmul_acc with b given transposed: b is (K,L) row-major in btype,
     * c[m,k] += Σ_l a[m,l]·b[k,l], one chain over l in increasing order.
     * With c = out, a = x, b = w this is the forward product summed the
     * way the backward kernels sum (not bitwise a matmul_fwd result).
     * matmul_set_bt is the same with c's old values ignored (c = a·bᵀ),
     * and matmul_set is matmul_acc so (c = a·b): the bits of zeroing c
     * first, without the pass over it. All three NULL on paths without
     * them. */
    lorac_matmul_acc_fn matmul_acc_bt;
    lorac_matmul_acc_fn matmul_set_bt;
    lorac_matmul_acc_fn matmul_set;
    lorac_matmul_tail_fn matmul_tail; /* NULL: the drivers make two calls */
    lorac_matmul_packed_fn matmul_packed; /* NULL: training's weights stay unpacked */
    lorac_convert_fn convert;
    lorac_exp_sum_fn exp_sum;
    lorac_attention_fn attention;
    /* Pieces per thread that a decode product (T < 4) is cut into, the
     * rows handed out as threads come free: fewer, longer pieces suit a
     * matmul_fwd that streams a piece in long runs. */
    int decode_pieces;
    /* Columns of c that a thread's share of an accumulating product is a
     * multiple of when it is split by columns (see split_panels). */
    int split_cols;
} lorac_kernel_ops_t;

/* The portable exp_sum (softmax_expf per element), shared by the AVX2 path. */
double lorac_exp_sum_portable(float *x, float shift, int64_t n);

/* The attention of each path (ops.c, attention_avx2.c, attention_avx512.c);
 * the AVX2 one hands head sizes that are not a multiple of 8 to the
 * portable one. */
void lorac_attention_portable(float *const *o, float *const *scores, const float *const *q, const int32_t *n, int nq,
                              const char *krows, const char *vrows, int64_t stride, lorac_dtype_t kv, int64_t hd,
                              float scale, float softcap);
void lorac_attention_avx2(float *const *o, float *const *scores, const float *const *q, const int32_t *n, int nq,
                          const char *krows, const char *vrows, int64_t stride, lorac_dtype_t kv, int64_t hd,
                          float scale, float softcap);
void lorac_attention_avx512(float *const *o, float *const *scores, const float *const *q, const int32_t *n, int nq,
                            const char *krows, const char *vrows, int64_t stride, lorac_dtype_t kv, int64_t hd,
                            float scale, float softcap);

/* The tables. A SIMD table has name == NULL when its file was compiled
 * without the instruction-set flags (non-x86 or a build without them). */
extern const lorac_kernel_ops_t lorac_kernel_ops_portable;
extern const lorac_kernel_ops_t lorac_kernel_ops_avx2;
extern const lorac_kernel_ops_t lorac_kernel_ops_avx512;

/* The table in use (chosen once, thread-safely, on first call). */
const lorac_kernel_ops_t *lorac_kernels_ops(void);

/* Test/benchmark hook: switches to the path called `name`. Returns 0, or -1
 * (and changes nothing) if that path is unknown or this CPU cannot run it.
 * Not safe while another thread is running kernels. */
int lorac_kernels_force_isa(const char *name);

/* 1 if the path called `name` is compiled in and this CPU can run it. */
int lorac_kernels_isa_available(const char *name);

/* Threads to use for a kernel of `work` multiply-adds that can be split into
 * at most `max_blocks` blocks: 1 for small work (OpenMP start-up would cost
 * more than it saves), else min(lorac_kernels_get_threads(), max_blocks). */
int lorac_kernels_threads_for(int64_t work, int64_t max_blocks);

#endif /* LORAC_KERNELS_INTERNAL_H */
