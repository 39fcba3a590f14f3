/* The training attention kernels against a direct double-precision
 * implementation of the same formulas: rows longer than one query block
 * (the kernels work in blocks of 64 queries of one head, or of fewer
 * tokens of a grouped-query group's heads stacked), one head per kv head
 * and groups of 2, 3 and 8 (blocks of 64, 42 and 16 tokens: a last block
 * short of a whole one each time), a row with two packed examples, a head
 * size that is not a multiple of 16, on every instruction-set path and for
 * 1 and 3 threads; and once with Gemma 2's soft-capped scores. */
#include <stdint.h>

#include "kernels/kernels_internal.h"
#include "testlib.h"
#include "isa_paths.h"

enum { B = 2, T = 150, HMAX = 8, HD = 24 };
static int H, KVH;    /* the shape under test */
static float g_softcap; /* > 0: scores soft-capped, cap · tanh(s / cap) */
#define QN (B * T * H * HD)
#define KN (B * T * KVH * HD)

static uint64_t rng = 0x853c49e6748fea9bull;
static float frand(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((double)(rng >> 40) / (double)(1ull << 23) - 1.0);
}

static float q[B * T * HMAX * HD], k[B * T * HMAX * HD], v[B * T * HMAX * HD], dout[B * T * HMAX * HD];
static int32_t start[B * T];
static double ref_out[B * T * HMAX * HD], ref_lse[B * T * HMAX], ref_dq[B * T * HMAX * HD];
static double ref_dk[B * T * HMAX * HD], ref_dv[B * T * HMAX * HD];

/* Reference: for each query, P = softmax(scale·q·k_j) over its visible
 * keys (with a soft-cap c: of z_j = c·tanh(scale·q·k_j / c)), O = Σ P_j v_j;
 * backward dP_j = dO·v_j, dS_j = P_j (dP_j − dO·O) (· (1 − (z_j / c)²)),
 * dq = scale Σ dS_j k_j, dk_j += scale dS_j q, dv_j += P_j dO. */
static void reference(void) {
    double scale = 1.0 / sqrt((double)HD), p[T], capd[T];
    memset(ref_dq, 0, sizeof ref_dq), memset(ref_dk, 0, sizeof ref_dk), memset(ref_dv, 0, sizeof ref_dv);
    memset(ref_out, 0, sizeof ref_out), memset(ref_lse, 0, sizeof ref_lse);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                int kvh = h / (H / KVH), s0 = start[b * T + t];
                const float *qv = q + ((b * T + t) * H + h) * HD, *dov = dout + ((b * T + t) * H + h) * HD;
                double mx = -INFINITY, sum = 0;
                for (int j = s0; j <= t; j++) {
                    const float *kv = k + ((b * T + j) * KVH + kvh) * HD;
                    double s = 0;
                    for (int i = 0; i < HD; i++) s += (double)qv[i] * kv[i];
                    p[j] = s * scale, capd[j] = 1;
                    if (g_softcap > 0) {
                        double z = g_softcap * tanh(p[j] / g_softcap);
                        p[j] = z, capd[j] = 1 - (z / g_softcap) * (z / g_softcap);
                    }
                    mx = fmax(mx, p[j]);
                }
                for (int j = s0; j <= t; j++) p[j] = exp(p[j] - mx), sum += p[j];
                double *o = ref_out + ((b * T + t) * H + h) * HD, delta = 0;
                for (int i = 0; i < HD; i++) o[i] = 0;
                for (int j = s0; j <= t; j++) {
                    p[j] /= sum;
                    for (int i = 0; i < HD; i++) o[i] += p[j] * v[((b * T + j) * KVH + kvh) * HD + i];
                }
                ref_lse[(b * T + t) * H + h] = mx + log(sum);
                for (int i = 0; i < HD; i++) delta += (double)dov[i] * o[i];
                for (int j = s0; j <= t; j++) {
                    int kvi = ((b * T + j) * KVH + kvh) * HD;
                    double dp = 0;
                    for (int i = 0; i < HD; i++) dp += (double)dov[i] * v[kvi + i];
                    double ds = p[j] * (dp - delta) * scale * capd[j];
                    for (int i = 0; i < HD; i++) {
                        ref_dq[((b * T + t) * H + h) * HD + i] += ds * k[kvi + i];
                        ref_dk[kvi + i] += ds * qv[i];
                        ref_dv[kvi + i] += p[j] * dov[i];
                    }
                }
            }
}

/* max |got − ref| / max |ref|; infinite where got has a NaN (an element
 * the kernel left unwritten: fmax ignores a NaN) */
static double rel_err(const float *got, const double *ref, int n) {
    double d = 0, m = 0;
    for (int i = 0; i < n; i++) {
        if (isnan(got[i])) return INFINITY;
        d = fmax(d, fabs(got[i] - ref[i])), m = fmax(m, fabs(ref[i]));
    }
    return d / m;
}

static void check_path(const char *isa, int threads) {
    static float out[B * T * HMAX * HD], lse[B * T * HMAX], dq[B * T * HMAX * HD];
    static float dk[B * T * HMAX * HD], dv[B * T * HMAX * HD];
    lorac_kernels_set_threads(threads);
    float *scratch = malloc(sizeof(float) * (size_t)lorac_attention_train_scratch_floats(T, HD, threads));
    if (!scratch) abort();
    lorac_attention_train_forward(out, lse, scratch, q, k, v, start, B, T, H, KVH, HD, g_softcap);
    /* the backward pass sets every gradient element: start them at NaN */
    for (int i = 0; i < QN; i++) dq[i] = NAN;
    for (int i = 0; i < KN; i++) dk[i] = dv[i] = NAN;
    lorac_attention_train_backward(dq, dk, dv, scratch, dout, q, k, v, out, lse, start, B, T, H, KVH, HD, g_softcap);
    double e_out = rel_err(out, ref_out, QN), e_dq = rel_err(dq, ref_dq, QN);
    double e_dk = rel_err(dk, ref_dk, KN), e_dv = rel_err(dv, ref_dv, KN), e_lse = 0;
    for (int i = 0; i < B * T * H; i++) e_lse = fmax(e_lse, fabs(lse[i] - ref_lse[i]));
    printf("  H %d KVH %d softcap %g %-8s %d threads: out %.2g lse %.2g dq %.2g dk %.2g dv %.2g\n", H, KVH, g_softcap,
           isa, threads, e_out, e_lse, e_dq, e_dk, e_dv);
    CHECK_MSG(e_out < 1e-5 && e_lse < 1e-5, "H %d KVH %d %s forward: out %g lse %g", H, KVH, isa, e_out, e_lse);
    CHECK_MSG(e_dq < 1e-5 && e_dk < 1e-5 && e_dv < 1e-5, "H %d KVH %d %s backward: dq %g dk %g dv %g", H, KVH, isa,
              e_dq, e_dk, e_dv);
    free(scratch);
}

int main(void) {
    static const int shapes[][2] = {{4, 2}, {3, 3}, {6, 2}, {8, 1}, {4, 2}}; /* H, KVH */
    static const char *const isas[] = {"portable", "avx2", "avx512"};
    for (int sh = 0; sh < 5; sh++) {
        H = shapes[sh][0], KVH = shapes[sh][1];
        g_softcap = sh == 4 ? 1.5f : 0.0f; /* scores of up to ~4: the cap bends them */
        for (int i = 0; i < QN; i++) q[i] = 2.0f * frand(), dout[i] = frand();
        for (int i = 0; i < KN; i++) k[i] = 2.0f * frand(), v[i] = frand();
        /* row 0 one example; row 1 two packed examples, the second from t = 70 */
        for (int t = 0; t < T; t++) start[t] = 0, start[T + t] = t < 70 ? 0 : 70;
        reference();
        for (int i = 0; i < 3; i++) {
            if (tl_use_isa(isas[i]) != 0) continue;
            check_path(isas[i], 1);
            check_path(isas[i], 3);
        }
    }
    return tl_finish("test_attention");
}
