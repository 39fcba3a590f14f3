/* The elementwise kernels — RMSNorm (forward, backward with the weight
 * gradient; also with Gemma's (1 + w) weight), SwiGLU and GeGLU (forward,
 * backward), GPT-2's LayerNorm (its dx against finite differences) and
 * GELU, and rotary (forward, backward; and
 * from a table of its cosines and sines, bitwise equal to those) —
 * the softmax and the inference attention against direct double-precision formulas, at a size that runs threaded
 * (above LORAC_PARALLEL_MIN_ELEMS) and at one row (decode, unthreaded),
 * and bitwise equal for 1, 2 and 3 threads: each output element is made by
 * one thread in a fixed order, so the thread count must not change a bit. */
#include <stdint.h>

#include "lorac/kernels.h"
#include "testlib.h"
#include "isa_paths.h"

enum { T = 300, C = 200, HEADS = 5, HD = C / HEADS, N = T * C };

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((double)(rng >> 40) / (double)(1ull << 23) - 1.0);
}

static float x[N], dout[N], gate[N], up[N], w[C], inv_freq[HD / 2];
static int32_t pos[T];

/* max |got − ref| / max |ref| over n values */
static double rel_err(const float *got, const double *ref, int64_t n) {
    double d = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(got[i])) return INFINITY; /* unwritten (fmax ignores a NaN) */
        d = fmax(d, fabs(got[i] - ref[i])), m = fmax(m, fabs(ref[i]));
    }
    return m > 0 ? d / m : d;
}

typedef struct {
    float norm[N], rstd[T], dx[N], dw[C], swi[N], dgate[N], dup[N], rope[N], drope[N];
    float norm1[N], rstd1[T], dx1[N], dw1[C], geg[N], dgate_g[N], dup_g[N]; /* (1 + w) norm, GeGLU */
    float rope_cs[T * HD], rope_t[N], drope_t[N];
} outputs_t;

/* Every kernel on rows [0, rows) with the given thread count. */
static void run_all(outputs_t *o, int rows, int threads) {
    lorac_kernels_set_threads(threads);
    int64_t n = (int64_t)rows * C;
    lorac_rmsnorm_forward(o->norm, o->rstd, x, w, LORAC_DTYPE_F32, 1e-5f, rows, C);
    memset(o->dx, 0, sizeof o->dx), memset(o->dw, 0, sizeof o->dw);
    lorac_rmsnorm_backward(o->dx, o->dw, dout, x, w, LORAC_DTYPE_F32, o->rstd, rows, C);
    lorac_swiglu_forward(o->swi, gate, up, rows, C);
    for (int64_t i = 0; i < n; i++) o->dgate[i] = o->dup[i] = NAN; /* set, not accumulated */
    lorac_swiglu_backward(o->dgate, o->dup, dout, gate, up, rows, C);
    lorac_rmsnorm_forward_offset(o->norm1, o->rstd1, x, w, LORAC_DTYPE_F32, 1.0f, 1e-5f, rows, C);
    memset(o->dx1, 0, sizeof o->dx1), memset(o->dw1, 0, sizeof o->dw1);
    lorac_rmsnorm_backward_offset(o->dx1, o->dw1, dout, x, w, LORAC_DTYPE_F32, 1.0f, o->rstd1, rows, C);
    lorac_geglu_forward(o->geg, gate, up, rows, C);
    for (int64_t i = 0; i < n; i++) o->dgate_g[i] = o->dup_g[i] = NAN;
    lorac_geglu_backward(o->dgate_g, o->dup_g, dout, gate, up, rows, C);
    memcpy(o->rope, x, sizeof(float) * (size_t)n);
    lorac_rope_forward(o->rope, pos, inv_freq, rows, HEADS, HD);
    memcpy(o->drope, o->rope, sizeof(float) * (size_t)n);
    lorac_rope_backward(o->drope, pos, inv_freq, rows, HEADS, HD);
    /* the training step's way: one table, then both directions from it */
    lorac_rope_table(o->rope_cs, pos, inv_freq, rows, HD);
    memcpy(o->rope_t, x, sizeof(float) * (size_t)n);
    lorac_rope_apply(o->rope_t, o->rope_cs, rows, HEADS, HD, 1);
    memcpy(o->drope_t, o->rope_t, sizeof(float) * (size_t)n);
    lorac_rope_apply(o->drope_t, o->rope_cs, rows, HEADS, HD, -1);
}

/* Phi-3's partial rotary: lorac_rope_apply_partial over the first ROT of
 * each head's HD values (pairs i, i + ROT/2, the frequencies of a ROT-wide
 * head) against double, the rest untouched, the backward undoing it, and
 * the whole width bitwise equal to lorac_rope_apply; 1 and 3 threads. */
static void check_rope_partial(void) {
    enum { ROT = 16 };
    static float got[N], back[N], whole[N], cs[T * HD];
    float freq[ROT / 2];
    for (int i = 0; i < ROT / 2; i++) freq[i] = (float)pow(100.0, -2.0 * i / ROT);
    for (int threads = 1; threads <= 3; threads += 2) {
        lorac_kernels_set_threads(threads);
        lorac_rope_table(cs, pos, freq, T, ROT);
        memcpy(got, x, sizeof got);
        lorac_rope_apply_partial(got, cs, T, HEADS, HD, ROT, 1);
        memcpy(back, got, sizeof back);
        lorac_rope_apply_partial(back, cs, T, HEADS, HD, ROT, -1);
        double err = 0, m = 0, undo = 0;
        int untouched = 1;
        for (int t = 0; t < T; t++)
            for (int h = 0; h < HEADS; h++) {
                const float *v = x + (t * HEADS + h) * HD, *g = got + (t * HEADS + h) * HD;
                for (int i = 0; i < ROT / 2; i++) {
                    double a = (double)pos[t] * (double)freq[i], c = cos(a), s = sin(a);
                    double r0 = v[i] * c - v[i + ROT / 2] * s, r1 = v[i + ROT / 2] * c + v[i] * s;
                    err = fmax(err, fmax(fabs(g[i] - r0), fabs(g[i + ROT / 2] - r1)));
                    m = fmax(m, fmax(fabs(r0), fabs(r1)));
                }
                for (int i = ROT; i < HD; i++) untouched &= g[i] == v[i];
            }
        for (int64_t i = 0; i < N; i++) undo = fmax(undo, fabs(back[i] - x[i]));
        CHECK_MSG(err / m < 2e-6 && untouched && undo < 1e-5, "partial rotary, %d threads: rel %.2g, rest untouched %d, "
                  "backward leaves %.2g", threads, err / m, untouched, undo);
        lorac_rope_table(cs, pos, inv_freq, T, HD);
        memcpy(got, x, sizeof got), memcpy(whole, x, sizeof whole);
        lorac_rope_apply_partial(got, cs, T, HEADS, HD, HD, 1);
        lorac_rope_apply(whole, cs, T, HEADS, HD, 1);
        CHECK(memcmp(got, whole, sizeof got) == 0);
    }
}

/* GELU's tanh approximation and its derivative, in double */
static double gelu_ref(double g) { return 0.5 * g * (1.0 + tanh(sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g))); }
static double gelu_grad_ref(double g) {
    double u = sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g), th = tanh(u);
    return 0.5 * (1.0 + th) + 0.5 * g * (1.0 - th * th) * sqrt(2.0 / M_PI) * (1.0 + 3.0 * 0.044715 * g * g);
}

/* RMSNorm with the weight w + off (off 0 or Gemma's 1), forward and backward, in double */
static void norm_ref(double *norm, double *dx, double *dw, int rows, double off) {
    memset(dw, 0, sizeof(double) * C);
    for (int t = 0; t < rows; t++) {
        const float *xt = x + t * C, *dy = dout + t * C;
        double ss = 0, dot = 0;
        for (int c = 0; c < C; c++) ss += (double)xt[c] * xt[c];
        double r = 1.0 / sqrt(ss / C + 1e-5);
        for (int c = 0; c < C; c++) norm[t * C + c] = xt[c] * r * (w[c] + off), dot += (double)dy[c] * (w[c] + off) * xt[c];
        for (int c = 0; c < C; c++) {
            dx[t * C + c] = r * (w[c] + off) * dy[c] - xt[c] * dot * r * r * r / C;
            dw[c] += (double)dy[c] * xt[c] * r;
        }
    }
}

/* GeGLU over a wide range of gate values (up = dout = 1), saturation and
 * 1e20 included: forward within 2e-6 and gradient within 4e-6 of
 * max(1, |reference|), and finite. */
static void check_geglu_range(void) {
    enum { M = 4100 };
    static float g[M], one[M], out[M], dg[M], du[M];
    int m = 0;
    for (int i = -2000; i <= 2000; i++) g[m++] = (float)i * 0.01f; /* -20 .. 20 */
    const float far[] = {-1e20f, -1e6f, -100.0f, -30.0f, -25.0f, 25.0f, 30.0f, 100.0f, 1e6f, 1e20f, 1e-30f, -1e-30f,
                         0.0f, -0.0f, 3.4e38f, -3.4e38f};
    for (size_t i = 0; i < sizeof far / sizeof far[0]; i++) g[m++] = far[i];
    for (int i = 0; i < m; i++) one[i] = 1.0f;
    lorac_geglu_forward(out, g, one, 1, m);
    lorac_geglu_backward(dg, du, one, g, one, 1, m);
    double e_f = 0, e_b = 0;
    for (int i = 0; i < m; i++) {
        double rf = gelu_ref(g[i]), rb = fabs(g[i]) > 1e15 ? (g[i] > 0) : gelu_grad_ref(g[i]);
        CHECK_MSG(isfinite(out[i]) && isfinite(dg[i]) && du[i] == out[i], "GeGLU at %g: %g, %g", g[i], out[i], dg[i]);
        e_f = fmax(e_f, fabs(out[i] - rf) / fmax(1.0, fabs(rf)));
        e_b = fmax(e_b, fabs(dg[i] - rb) / fmax(1.0, fabs(rb)));
    }
    printf("  GeGLU over [-20, 20] and far out: forward %.2g, gradient %.2g\n", e_f, e_b);
    CHECK_MSG(e_f < 2e-6 && e_b < 4e-6, "GeGLU range: forward %g, gradient %g", e_f, e_b);
}

static void check_reference(const outputs_t *o, int rows) {
    static double norm[N], dx[N], dw[C], swi[N], dgate[N], dup[N], rope[N];
    static double norm1[N], dx1[N], dw1[C], geg[N], dgate_g[N], dup_g[N];
    int64_t n = (int64_t)rows * C;
    norm_ref(norm, dx, dw, rows, 0.0);
    norm_ref(norm1, dx1, dw1, rows, 1.0);
    for (int t = 0; t < rows; t++) {
        const float *xt = x + t * C;
        for (int h = 0; h < HEADS; h++)
            for (int i = 0; i < HD / 2; i++) {
                double a = (double)pos[t] * inv_freq[i], cs = cos(a), sn = sin(a);
                const float *v = xt + h * HD;
                rope[t * C + h * HD + i] = v[i] * cs - v[i + HD / 2] * sn;
                rope[t * C + h * HD + i + HD / 2] = v[i + HD / 2] * cs + v[i] * sn;
            }
    }
    for (int64_t i = 0; i < n; i++) {
        double g = gate[i], s = 1.0 / (1.0 + exp(-g));
        swi[i] = g * s * up[i];
        dgate[i] = dout[i] * up[i] * s * (1.0 + g * (1.0 - s));
        dup[i] = dout[i] * g * s;
        geg[i] = gelu_ref(g) * up[i];
        dgate_g[i] = dout[i] * up[i] * gelu_grad_ref(g);
        dup_g[i] = dout[i] * gelu_ref(g);
    }
    double e[8] = {rel_err(o->norm, norm, n), rel_err(o->dx, dx, n), rel_err(o->dw, dw, C),
                   rel_err(o->swi, swi, n), rel_err(o->dgate, dgate, n), rel_err(o->dup, dup, n),
                   rel_err(o->rope, rope, n), 0};
    for (int64_t i = 0; i < n; i++) e[7] = fmax(e[7], fabs(o->drope[i] - x[i])); /* backward undoes forward */
    printf("  %3d rows: norm %.2g dx %.2g dw %.2g swiglu %.2g dgate %.2g dup %.2g rope %.2g rope back %.2g\n",
           rows, e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]);
    for (int i = 0; i < 8; i++) CHECK_MSG(e[i] < 2e-6, "%d rows, output %d: error %g", rows, i, e[i]);
    double g[6] = {rel_err(o->norm1, norm1, n), rel_err(o->dx1, dx1, n), rel_err(o->dw1, dw1, C),
                   rel_err(o->geg, geg, n), rel_err(o->dgate_g, dgate_g, n), rel_err(o->dup_g, dup_g, n)};
    printf("  %3d rows: (1 + w) norm %.2g dx %.2g dw %.2g geglu %.2g dgate %.2g dup %.2g\n", rows, g[0], g[1], g[2], g[3],
           g[4], g[5]);
    /* GeGLU's gradient through σ(2u)(1 − σ(2u)) loses a few more bits (1.6e-6 seen) */
    for (int i = 0; i < 6; i++)
        CHECK_MSG(g[i] < (i == 4 ? 4e-6 : 2e-6), "%d rows, (1 + w) norm / GeGLU output %d: error %g", rows, i, g[i]);
    CHECK_MSG(memcmp(o->rope, o->rope_t, sizeof(float) * (size_t)n) == 0 &&
                  memcmp(o->drope, o->drope_t, sizeof(float) * (size_t)n) == 0,
              "%d rows: rotary from the table differs from rotary in some bit", rows);
}

/* Inference attention over a KV cache, 6 query heads on 2 kv heads
 * (grouped-query) and on 6, head sizes 64 and 36 (36: a short last chunk on
 * the AVX-512 path, the portable loops on the AVX2 one), on every
 * instruction-set path, for an F32 cache and for BF16 and F16 ones, whose
 * reference reads the values as stored (rounded by lorac_kv_store, checked
 * against the scalar conversions here). AT query tokens over one cache:
 * three seeing 1, 57 and 300 positions, then a prompt of AT - 3 tokens
 * seeing 264 .. 300 (token t its own row and its past). All of them in one
 * call against double, with the same bits for 1, 2 and 3 threads; and each
 * token alone (a decode step) with the bits it has in the call, which
 * takes a prompt's tokens, and a kv head's query heads, several at a time. */
enum { AT = 40, AH = 6, AHD_MAX = 64, ACTX = 300, NKV_MAX = ACTX * AH * AHD_MAX };
static float att_q[AT * AH * AHD_MAX], att_kc[NKV_MAX], att_vc[NKV_MAX], att_kw[NKV_MAX], att_vw[NKV_MAX];
static float att_out[AT * AH * AHD_MAX], att_first[AT * AH * AHD_MAX], att_one[AH * AHD_MAX];
static float att_scratch[4 * 3 * ACTX]; /* lorac_attention_scratch_floats(ACTX, 3), checked below */
static uint32_t att_kst[NKV_MAX], att_vst[NKV_MAX]; /* the cache in its dtype (4 bytes a value at most) */
static double att_ref[AT * AH * AHD_MAX];

static void check_attention_case(const char *isa, lorac_dtype_t dt, int kvh_count, int hd, float softcap) {
    const int nkv = ACTX * kvh_count * hd, nq = AT * AH * hd;
    const char *name = lorac_dtype_name(dt);
    for (int i = 0; i < nq; i++) att_q[i] = frand();
    for (int i = 0; i < nkv; i++) att_kc[i] = frand(), att_vc[i] = frand();
    lorac_kv_store(att_kst, dt, att_kc, nkv);
    lorac_kv_store(att_vst, dt, att_vc, nkv);
    int bad_store = 0;
    for (int i = 0; i < nkv; i++) { /* the values as the cache holds them, widened */
        const uint16_t *k16 = (const uint16_t *)att_kst, *v16 = (const uint16_t *)att_vst;
        if (dt == LORAC_DTYPE_BF16) {
            att_kw[i] = lorac_bf16_to_f32(k16[i]), att_vw[i] = lorac_bf16_to_f32(v16[i]);
            bad_store += k16[i] != lorac_f32_to_bf16(att_kc[i]) || v16[i] != lorac_f32_to_bf16(att_vc[i]);
        } else if (dt == LORAC_DTYPE_F16) {
            att_kw[i] = lorac_f16_to_f32(k16[i]), att_vw[i] = lorac_f16_to_f32(v16[i]);
            bad_store += k16[i] != lorac_f32_to_f16(att_kc[i]) || v16[i] != lorac_f32_to_f16(att_vc[i]);
        } else {
            memcpy(&att_kw[i], &att_kst[i], 4), memcpy(&att_vw[i], &att_vst[i], 4);
            bad_store += att_kw[i] != att_kc[i] || att_vw[i] != att_vc[i];
        }
    }
    CHECK_MSG(bad_store == 0, "%s cache: %d values stored otherwise than the scalar conversion", name, bad_store);
    const void *krows[AT], *vrows[AT];
    int32_t n_ctx[AT] = {1, 57, ACTX};
    for (int t = 0; t < AT; t++) krows[t] = att_kst, vrows[t] = att_vst;
    for (int t = 3; t < AT; t++) n_ctx[t] = ACTX - (AT - 1 - t);
    for (int t = 0; t < AT; t++)
        for (int h = 0; h < AH; h++) {
            int kvh = h / (AH / kvh_count);
            const float *qv = att_q + (t * AH + h) * hd;
            double sc[ACTX], mx = -INFINITY, sum = 0;
            for (int p = 0; p < n_ctx[t]; p++) {
                double d = 0;
                for (int i = 0; i < hd; i++) d += (double)qv[i] * att_kw[(p * kvh_count + kvh) * hd + i];
                sc[p] = d / sqrt((double)hd);
                if (softcap > 0) sc[p] = softcap * tanh(sc[p] / softcap); /* Gemma 2's soft-capping */
                mx = fmax(mx, sc[p]);
            }
            for (int p = 0; p < n_ctx[t]; p++) sum += sc[p] = exp(sc[p] - mx);
            for (int i = 0; i < hd; i++) {
                double o = 0;
                for (int p = 0; p < n_ctx[t]; p++) o += sc[p] / sum * att_vw[(p * kvh_count + kvh) * hd + i];
                att_ref[(t * AH + h) * hd + i] = o;
            }
        }
    for (int threads = 1; threads <= 3; threads++) {
        lorac_kernels_set_threads(threads);
        for (int i = 0; i < nq; i++) att_out[i] = NAN;
        lorac_attention_forward(att_out, att_scratch, att_q, krows, vrows, dt, n_ctx, AT, AH, kvh_count, hd, softcap);
        if (threads == 1) {
            double e = rel_err(att_out, att_ref, nq);
            printf("  attention, %s path, %s cache, %d kv heads, head size %d, softcap %g: %.2g\n", isa, name, kvh_count,
                   hd, softcap, e);
            CHECK_MSG(e < 1e-5, "attention (%s, %s cache, %d kv heads, hd %d) error %g", isa, name, kvh_count, hd, e);
            memcpy(att_first, att_out, sizeof(float) * (size_t)nq);
        } else {
            CHECK_MSG(memcmp(att_first, att_out, sizeof(float) * (size_t)nq) == 0,
                      "attention (%s, %s cache, %d kv heads, hd %d): %d threads differ from 1 in some bit", isa, name,
                      kvh_count, hd, threads);
        }
    }
    int differ = 0;
    for (int t = 0; t < AT; t++) { /* each token alone, as a decode step: 1 thread for the short rows, then 2 */
        lorac_kernels_set_threads(1 + t % 2);
        lorac_attention_forward(att_one, att_scratch, att_q + t * AH * hd, krows + t, vrows + t, dt, n_ctx + t, 1, AH,
                                kvh_count, hd, softcap);
        differ += memcmp(att_one, att_first + t * AH * hd, sizeof(float) * (size_t)(AH * hd)) != 0;
    }
    CHECK_MSG(differ == 0, "attention (%s, %s cache, %d kv heads, hd %d): %d tokens alone differ from the call of all",
              isa, name, kvh_count, hd, differ);
}

static void check_attention(void) {
    CHECK(lorac_attention_scratch_floats(ACTX, 3) <= (int64_t)(sizeof att_scratch / sizeof att_scratch[0]));
    const char *isas[] = {"portable", "avx2", "avx512"}, *chosen = lorac_kernels_ops()->name;
    static const lorac_dtype_t dts[] = {LORAC_DTYPE_F32, LORAC_DTYPE_BF16, LORAC_DTYPE_F16};
    for (int i = 0; i < 3; i++) {
        if (tl_use_isa(isas[i]) != 0) continue;
        for (int d = 0; d < 3; d++)
            for (int kvh = 2; kvh <= AH; kvh += AH - 2)
                for (int hd = AHD_MAX; hd >= 36; hd -= AHD_MAX - 36)
                    for (int cap = 0; cap <= (d < 2); cap++) /* soft-capped scores with F32 and BF16 caches */
                        check_attention_case(isas[i], dts[d], kvh, hd, cap ? 0.3f : 0.0f);
    }
    CHECK(lorac_kernels_force_isa(chosen) == 0);
}

/* lorac_logsumexp against libm in double on every instruction-set path:
 * rows of 1 to 33001 values (chunk and vector tails), a wide range, -inf
 * entries; NaN anywhere gives NaN, all -inf or none gives -inf, +inf
 * gives +inf. */
static void check_logsumexp(void) {
    enum { LN = 33001 };
    static float row[LN];
    static const int64_t lens[] = {1, 7, 16, 1023, 1024, 1025, 32000, LN};
    const char *isas[] = {"portable", "avx2", "avx512"}, *chosen = lorac_kernels_ops()->name;
    for (int i = 0; i < 3; i++) {
        if (tl_use_isa(isas[i]) != 0) continue;
        double worst = 0;
        for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
            int64_t n = lens[li];
            for (int64_t j = 0; j < n; j++) row[j] = 30.0f * frand() + (j % 97 == 5 ? 40.0f : 0.0f);
            if (n > 16) row[3] = -INFINITY, row[n - 2] = -INFINITY;
            double mx = -INFINITY, sum = 0;
            for (int64_t j = 0; j < n; j++) mx = fmax(mx, row[j]);
            for (int64_t j = 0; j < n; j++) sum += exp((double)row[j] - mx);
            worst = fmax(worst, fabs(lorac_logsumexp(row, n) - (mx + log(sum))));
        }
        printf("  logsumexp, %s path: max |error| %.2g\n", isas[i], worst);
        CHECK_MSG(worst < 1e-5, "logsumexp (%s): error %g", isas[i], worst);
        row[0] = 1.0f, row[1] = NAN, row[2] = 2.0f;
        CHECK_MSG(isnan(lorac_logsumexp(row, 3)), "logsumexp (%s): a NaN did not give NaN", isas[i]);
        row[0] = row[1] = -INFINITY;
        CHECK_MSG(lorac_logsumexp(row, 2) == -INFINITY && lorac_logsumexp(row, 0) == -INFINITY,
                  "logsumexp (%s): all -inf or none did not give -inf", isas[i]);
        row[1] = INFINITY;
        CHECK_MSG(lorac_logsumexp(row, 2) == INFINITY, "logsumexp (%s): +inf did not give +inf", isas[i]);
    }
    CHECK(lorac_kernels_force_isa(chosen) == 0);
}

/* The double-precision loss of one row of logits z (V) with the given
 * target, and dLoss/dx (D) = Σ_v p_v·W_v − W_target for the classifier w
 * (V, D). z is overwritten. */
static void reference_crossentropy_row(double *z, int V, int D, const float *w, int target, double *loss, double *dx) {
    double m = -INFINITY, sum = 0;
    for (int v = 0; v < V; v++) m = fmax(m, z[v]);
    double z_target = z[target];
    for (int v = 0; v < V; v++) sum += z[v] = exp(z[v] - m);
    *loss = m + log(sum) - z_target;
    for (int d = 0; d < D; d++) {
        double g = -(double)w[target * D + d];
        for (int v = 0; v < V; v++) g += z[v] / sum * w[v * D + d];
        dx[d] = g;
    }
}

/* The online softmax's running state for R rows, as before the first
 * block: no max yet, empty sums, acc (R x D) zero. */
static void online_reset(int R, int D, float *mx, double *others, float *acc) {
    for (int t = 0; t < R; t++) mx[t] = -INFINITY, others[t] = 0;
    memset(acc, 0, sizeof(float) * (size_t)R * (size_t)D);
}

/* The online softmax's results (row max, others' sum, target logit, acc)
 * turned into each row's loss and dx, against the reference: the worst
 * relative errors of the loss, of dx on rows 1.. and of dx on row 0. */
static void online_errors(int R, int D, const float *w, const int32_t *tg, const float *mx, const double *others,
                          const float *tl, const float *acc, const double *ref_loss, const double *ref_dx,
                          double *worst_loss, double *worst_dx, double *row0_dx) {
    *worst_loss = *worst_dx = *row0_dx = 0;
    for (int t = 0; t < R; t++) {
        double sum = others[t] + exp((double)tl[t] - mx[t]);
        double loss = mx[t] + log(sum) - tl[t];
        *worst_loss = fmax(*worst_loss, fabs(loss - ref_loss[t]) / fmax(fabs(ref_loss[t]), 1e-3));
        float dxr[64]; /* D <= 64 */
        for (int d = 0; d < D; d++)
            dxr[d] = acc[t * D + d] * (float)(1.0 / sum) - (float)(others[t] / sum) * w[tg[t] * D + d];
        double e = rel_err(dxr, ref_dx + t * D, D);
        if (t == 0) *row0_dx = e;
        else *worst_dx = fmax(*worst_dx, e);
    }
}

/* The online cross-entropy (lorac_crossentropy_online_block) run block by
 * block as the trainer does, the products done here, against the direct
 * double-precision loss and dLoss/dx = Σ p_v W_v − W_target. Rows where the
 * target's probability is within 1e-9 of 1 (its gradient is then tiny and a
 * naive acc/S − W_target would lose it to cancellation) and where the max
 * turns up in a late block (the rescaling) are among them; each block size
 * runs at 1 and 3 threads, bitwise equal. */
static void check_online_crossentropy(void) {
    enum { R = 800, V = 45, D = 9 }; /* R·V above LORAC_PARALLEL_MIN_ELEMS: one block runs threaded */
    static float xs[R * D], wv[V * D], z[R * V], acc[R * D], mx[R], tl[R], first_acc[R * D];
    static double others[R], ref_dx[R * D], ref_loss[R];
    static int32_t tg[R];
    for (int i = 0; i < R * D; i++) xs[i] = frand();
    for (int i = 0; i < V * D; i++) wv[i] = 2.0f * frand();
    for (int t = 0; t < R; t++) tg[t] = (t * 7 + 3) % V;
    double zr[V];
    for (int t = 0; t < R; t++) {
        for (int v = 0; v < V; v++) {
            double a = 0;
            for (int d = 0; d < D; d++) a += (double)xs[t * D + d] * wv[v * D + d];
            /* row 0: the target far above the rest (p ≈ 1 − 1e-10);
             * row 1: the max in the last column */
            zr[v] = a + (t == 0 && v == tg[t] ? 25.0 : 0.0) + (t == 1 && v == V - 1 ? 9.0 : 0.0);
        }
        reference_crossentropy_row(zr, V, D, wv, tg[t], &ref_loss[t], ref_dx + t * D);
    }
    static const int block_cols[] = {V, 16, 7, 1};
    for (int b = 0; b < 4; b++)
        for (int threads = 1; threads <= 3; threads += 2) {
            lorac_kernels_set_threads(threads);
            int cols = block_cols[b];
            online_reset(R, D, mx, others, acc);
            for (int v0 = 0; v0 < V; v0 += cols) {
                int w = V - v0 < cols ? V - v0 : cols;
                for (int t = 0; t < R; t++)
                    for (int j = 0; j < w; j++) {
                        float a = 0;
                        for (int d = 0; d < D; d++) a += xs[t * D + d] * wv[(v0 + j) * D + d];
                        if (t == 0 && v0 + j == tg[t]) a += 25.0f;
                        if (t == 1 && v0 + j == V - 1) a += 9.0f;
                        z[t * w + j] = a;
                    }
                lorac_crossentropy_online_block(z, R, w, v0, tg, mx, others, tl, acc, D);
                for (int t = 0; t < R; t++)
                    for (int j = 0; j < w; j++)
                        for (int d = 0; d < D; d++) acc[t * D + d] += z[t * w + j] * wv[(v0 + j) * D + d];
            }
            double worst_loss, worst_dx, worst_small;
            online_errors(R, D, wv, tg, mx, others, tl, acc, ref_loss, ref_dx, &worst_loss, &worst_dx, &worst_small);
            if (threads == 1) {
                printf("  online cross-entropy, blocks of %d: loss %.2g, dx %.2g, dx at p = 1 - 1e-10: %.2g\n", cols,
                       worst_loss, worst_dx, worst_small);
                memcpy(first_acc, acc, sizeof acc);
            } else {
                CHECK_MSG(memcmp(first_acc, acc, sizeof acc) == 0, "online cross-entropy: %d threads differ from 1",
                          threads);
            }
            CHECK_MSG(worst_loss < 1e-5 && worst_dx < 1e-5 && worst_small < 1e-4,
                      "online cross-entropy, blocks of %d: loss %g, dx %g, near-certain row %g", cols, worst_loss,
                      worst_dx, worst_small);
        }
}

/* lorac_crossentropy_classifier (the trainer's loss over a frozen
 * classifier, each thread on its own rows) against the direct
 * double-precision loss and dLoss/dx, and bitwise against the three calls
 * per block it replaces (lorac_matmul_forward_batch, the online block,
 * lorac_matmul_backward_input), for F32 and BF16 classifiers, blocks of
 * 64 and 96 columns (the last block 64), at 1, 2 and 3 threads, and for
 * F32 also from the classifier repacked (lorac_pack_weight) where the path
 * reads it. Sizes take the batch kernels' path (at least 128 rows, 64
 * columns). */
static void check_classifier_crossentropy(void) {
    enum { R = 301, V = 256, D = 40 };
    static float xs[R * D], wf[V * D], z[R * 96], acc[R * D], ref_acc[R * D], mx[R], tl[R], ref_mx[R], ref_tl[R];
    static uint16_t wb16[V * D];
    static float packed[V * D]; /* V is a multiple of 16 */
    static double others[R], ref_others[R], ref_dx[R * D], ref_loss[R];
    static int32_t tg[R];
    for (int i = 0; i < R * D; i++) xs[i] = 2.0f * frand();
    for (int i = 0; i < V * D; i++) wb16[i] = lorac_f32_to_bf16(frand());
    for (int t = 0; t < R; t++) tg[t] = (t * 13 + 5) % V;
    for (int dt = 0; dt < 2; dt++) {
        lorac_dtype_t wt = dt ? LORAC_DTYPE_BF16 : LORAC_DTYPE_F32;
        for (int i = 0; i < V * D; i++) wf[i] = lorac_bf16_to_f32(wb16[i]);
        const void *w = dt ? (const void *)wb16 : (const void *)wf;
        lorac_pack_weight(packed, wf, V, D);
        for (int t = 0; t < R; t++) {
            double zr[V];
            for (int v = 0; v < V; v++) {
                double a = 0;
                for (int d = 0; d < D; d++) a += (double)xs[t * D + d] * wf[v * D + d];
                zr[v] = a;
            }
            reference_crossentropy_row(zr, V, D, wf, tg[t], &ref_loss[t], ref_dx + t * D);
        }
        static const int block_cols[] = {64, 96};
        for (int b = 0; b < 2; b++)
            for (int threads = 1; threads <= 3; threads++) {
                lorac_kernels_set_threads(threads);
                int cols = block_cols[b];
                /* the three calls per block */
                online_reset(R, D, ref_mx, ref_others, ref_acc);
                for (int v0 = 0; v0 < V; v0 += cols) {
                    int n = V - v0 < cols ? V - v0 : cols;
                    const void *wv = (const char *)w + (size_t)v0 * D * lorac_dtype_size(wt);
                    lorac_matmul_forward_batch(z, xs, wv, wt, NULL, R, D, n);
                    lorac_crossentropy_online_block(z, R, n, v0, tg, ref_mx, ref_others, ref_tl, ref_acc, D);
                    lorac_matmul_backward_input(ref_acc, z, wv, wt, R, D, n);
                }
                /* repeated: a thread that runs a block ahead must not
                 * touch the rows of one a block behind (the last block's
                 * row stride is shorter) */
                for (int rep = 0; rep < (threads > 1 ? 30 : 1); rep++)
                    for (int from_packed = 0; from_packed <= (dt == 0); from_packed++) {
                        online_reset(R, D, mx, others, acc);
                        lorac_crossentropy_classifier(xs, w, wt, from_packed ? packed : NULL, R, D, V, cols, tg, z, mx,
                                                      others, tl, acc);
                        CHECK_MSG(memcmp(acc, ref_acc, sizeof acc) == 0 && memcmp(mx, ref_mx, sizeof mx) == 0 &&
                                      memcmp(others, ref_others, sizeof others) == 0 &&
                                      memcmp(tl, ref_tl, sizeof tl) == 0,
                                  "classifier cross-entropy (%s%s, blocks of %d, %d threads, run %d): not the bits of the "
                                  "three calls",
                                  lorac_dtype_name(wt), from_packed ? ", repacked" : "", cols, threads, rep + 1);
                    }
                double worst_loss, worst_dx, row0_dx;
                online_errors(R, D, wf, tg, mx, others, tl, acc, ref_loss, ref_dx, &worst_loss, &worst_dx, &row0_dx);
                worst_dx = fmax(worst_dx, row0_dx);
                if (threads == 1)
                    printf("  classifier cross-entropy, %s, blocks of %d: loss %.2g, dx %.2g\n", lorac_dtype_name(wt),
                           cols, worst_loss, worst_dx);
                CHECK_MSG(worst_loss < 1e-5 && worst_dx < 1e-5, "classifier cross-entropy (%s, blocks of %d): loss %g, dx %g",
                          lorac_dtype_name(wt), cols, worst_loss, worst_dx);
            }
        /* fewer rows than threads' shares: 4 rows at 3 threads (the third
         * thread has none) */
        lorac_kernels_set_threads(3);
        online_reset(R, D, mx, others, acc);
        lorac_crossentropy_classifier(xs, w, wt, dt == 0 ? packed : NULL, 4, D, V, 64, tg, z, mx, others, tl, acc);
        double few_loss, few_dx, few_row0;
        online_errors(4, D, wf, tg, mx, others, tl, acc, ref_loss, ref_dx, &few_loss, &few_dx, &few_row0);
        CHECK_MSG(few_loss < 1e-5 && fmax(few_dx, few_row0) < 1e-5, "classifier cross-entropy (%s, 4 rows): loss %g, dx %g",
                  lorac_dtype_name(wt), few_loss, fmax(few_dx, few_row0));
    }
}

/* Σ_c dout[c] · LayerNorm(xt)[c] in double (the loss whose gradient
 * lorac_layernorm_backward gives), weight w, bias bias */
static double layernorm_loss(const double *xt, const float *dy, const float *bias) {
    double mu = 0, var = 0, l = 0;
    for (int c = 0; c < C; c++) mu += xt[c];
    mu /= C;
    for (int c = 0; c < C; c++) var += (xt[c] - mu) * (xt[c] - mu);
    double r = 1.0 / sqrt(var / C + 1e-5);
    for (int c = 0; c < C; c++) l += dy[c] * ((xt[c] - mu) * r * w[c] + bias[c]);
    return l;
}

/* GPT-2's LayerNorm and GELU: the forward against double, the LayerNorm's
 * input gradient against central finite differences of layernorm_loss,
 * GELU's against gelu_grad_ref; T rows threaded and 1 row, and the same
 * bits at 1 and 3 threads. */
static void check_layernorm_gelu(void) {
    static float out[N], mean[T], rstd[T], dx[N], gl[N], dg[N], out3[N], dx3[N], gl3[N], dg3[N], bias[C];
    for (int c = 0; c < C; c++) bias[c] = 0.3f * frand();
    for (int rows = T; rows >= 1; rows = rows == T ? 1 : 0) {
        int64_t n = (int64_t)rows * C;
        for (int threads = 1; threads <= 3; threads += 2) {
            lorac_kernels_set_threads(threads);
            float *o = threads == 1 ? out : out3, *d = threads == 1 ? dx : dx3;
            float *g = threads == 1 ? gl : gl3, *dgl = threads == 1 ? dg : dg3;
            lorac_layernorm_forward(o, mean, rstd, x, w, bias, 1e-5f, rows, C);
            memset(d, 0, sizeof(float) * (size_t)n);
            lorac_layernorm_backward(d, dout, x, w, mean, rstd, rows, C);
            lorac_gelu_forward(g, x, n);
            lorac_gelu_backward(dgl, dout, x, n);
        }
        CHECK_MSG(memcmp(out, out3, sizeof(float) * (size_t)n) == 0 && memcmp(dx, dx3, sizeof(float) * (size_t)n) == 0 &&
                  memcmp(gl, gl3, sizeof(float) * (size_t)n) == 0 && memcmp(dg, dg3, sizeof(float) * (size_t)n) == 0,
                  "%d rows: LayerNorm or GELU differ between 1 and 3 threads", rows);
        double e_fwd = 0, m_fwd = 0, e_fd = 0, m_fd = 0, e_g = 0, e_dg = 0;
        static double xt[C];
        for (int t = 0; t < rows; t++) {
            for (int c = 0; c < C; c++) xt[c] = x[t * C + c];
            double mu = 0, var = 0;
            for (int c = 0; c < C; c++) mu += xt[c];
            mu /= C;
            for (int c = 0; c < C; c++) var += (xt[c] - mu) * (xt[c] - mu);
            double r = 1.0 / sqrt(var / C + 1e-5);
            for (int c = 0; c < C; c++) {
                double ref = (xt[c] - mu) * r * w[c] + bias[c];
                e_fwd = fmax(e_fwd, fabs(out[t * C + c] - ref)), m_fwd = fmax(m_fwd, fabs(ref));
            }
            for (int c = 0; c < C && t < 4; c++) { /* finite differences on a few rows: C² work a row */
                const double h = 1e-4;
                double keep = xt[c];
                xt[c] = keep + h;
                double lp = layernorm_loss(xt, dout + t * C, bias);
                xt[c] = keep - h;
                double lm = layernorm_loss(xt, dout + t * C, bias);
                xt[c] = keep;
                double fd = (lp - lm) / (2 * h);
                e_fd = fmax(e_fd, fabs(dx[t * C + c] - fd)), m_fd = fmax(m_fd, fabs(fd));
            }
        }
        for (int64_t i = 0; i < n; i++) {
            e_g = fmax(e_g, fabs(gl[i] - gelu_ref(x[i])) / fmax(1.0, fabs(gelu_ref(x[i]))));
            double want = dout[i] * gelu_grad_ref(x[i]);
            e_dg = fmax(e_dg, fabs(dg[i] - want) / fmax(1.0, fabs(want)));
        }
        printf("  layernorm %d rows: forward %.2g, dx vs finite differences %.2g; gelu %.2g, gelu' %.2g\n", rows,
               e_fwd / m_fwd, e_fd / m_fd, e_g, e_dg);
        CHECK_MSG(e_fwd / m_fwd < 2e-6 && e_fd / m_fd < 1e-5 && e_g < 2e-6 && e_dg < 4e-6,
                  "%d rows: layernorm %.2g, its dx %.2g, gelu %.2g, gelu' %.2g", rows, e_fwd / m_fwd, e_fd / m_fd, e_g, e_dg);
    }
}

int main(void) {
    for (int i = 0; i < N; i++) x[i] = 3.0f * frand(), dout[i] = frand(), up[i] = frand();
    /* gates over the whole useful range of the sigmoid, both tails included */
    for (int i = 0; i < N; i++) gate[i] = 20.0f * frand();
    gate[0] = -100.0f, gate[1] = 100.0f, gate[2] = 0.0f;
    for (int c = 0; c < C; c++) w[c] = 1.0f + 0.5f * frand();
    for (int i = 0; i < HD / 2; i++) inv_freq[i] = (float)pow(10000.0, -2.0 * i / HD);
    for (int t = 0; t < T; t++) pos[t] = (t * 37 + 5) % 4096;
    /* softmax over a vocabulary-sized row, with -inf (masked) entries */
    {
        enum { V = 32000 };
        static float row[V];
        static double ref[V];
        for (int i = 0; i < V; i++) row[i] = 12.0f * frand();
        row[5] = -INFINITY, row[6] = -200.0f;
        double mx = -INFINITY, sum = 0;
        for (int i = 0; i < V; i++) mx = row[i] > mx ? row[i] : mx; /* not fmax: GCC 12 for aarch64 crashes on it here */
        for (int i = 0; i < V; i++) sum += ref[i] = exp(row[i] - mx);
        for (int i = 0; i < V; i++) ref[i] /= sum;
        lorac_softmax_forward(row, 1, V);
        double e = rel_err(row, ref, V);
        printf("  softmax over %d: %.2g\n", V, e);
        CHECK_MSG(e < 2e-6 && row[5] == 0.0f && row[6] == 0.0f, "softmax error %g", e);
    }
    static outputs_t one, many;
    static const int rows[] = {T, 1};
    for (int r = 0; r < 2; r++) {
        run_all(&one, rows[r], 1);
        check_reference(&one, rows[r]);
        for (int threads = 2; threads <= 3; threads++) {
            run_all(&many, rows[r], threads);
            CHECK_MSG(memcmp(&one, &many, sizeof one) == 0, "%d rows: %d threads differ from 1 in some bit", rows[r],
                      threads);
        }
    }
    check_geglu_range();
    check_layernorm_gelu();
    check_rope_partial();
    check_attention();
    check_logsumexp();
    check_online_crossentropy();
    check_classifier_crossentropy();
    return tl_finish("test_ops");
}
