/* Gradients of the training pass against central finite differences of its
 * own loss, for every LoRA target kind, for full fine-tuning, with GQA,
 * biases, tied embeddings, masked targets, packed rows, and a vocabulary
 * the loss takes in several blocks. The forward is
 * f32, so the comparison is a normalised error over many sampled elements:
 * |g - fd| / (|g| + |fd|) summed, as test-backend-ops does.
 * (Exact agreement with PyTorch's autograd is tests/test_train_parity.py.) */
#include "lorac/kernels.h"
#include "lorac/lora.h"
#include "lorac/model.h"
#include "testlib.h"
#include "tinymodel.h"

enum { B = 2, T = 9 };

static int32_t g_tokens[B * T], g_targets[B * T], g_pos[B * T];

static void make_batch(int V) {
    unsigned long long s = 99;
    for (int i = 0; i < B * T; i++) {
        g_tokens[i] = (int32_t)((tiny_rand(&s) + 0.5f) * (float)V) % V;
        g_targets[i] = (int32_t)((tiny_rand(&s) + 0.5f) * (float)V) % V;
    }
    /* row 0: one example with its first 2 targets masked (a prompt);
     * row 1: two packed examples (positions restart at 4), last target masked */
    for (int t = 0; t < T; t++) {
        g_pos[t] = t;
        g_pos[T + t] = t < 4 ? t : t - 4;
    }
    g_targets[0] = g_targets[1] = -100;
    g_targets[T + 3] = -100; /* no prediction across the example boundary */
    g_targets[2 * T - 1] = -100;
}

static double run_loss(lorac_train_pass_t *p) {
    double sum;
    int64_t n;
    lorac_status_t s = lorac_train_pass_run(p, g_tokens, g_targets, g_pos, false, NULL, &sum, &n);
    CHECK_MSG(s == LORAC_STATUS_OK, "%s", lorac_error_message());
    return sum / (double)n;
}

/* Compares analytic and numeric gradients on up to `per_param` elements of
 * every parameter; returns the worst normalised error over parameters. */
static double check_grads(lorac_train_pass_t *p, int per_param, const char *label) {
    double sum; int64_t n;
    lorac_train_pass_zero_grad(p);
    CHECK(lorac_train_pass_run(p, g_tokens, g_targets, g_pos, true, NULL, &sum, &n) == LORAC_STATUS_OK);
    double worst = 0.0;
    const char *worst_name = "";
    unsigned long long s = 5;
    for (int32_t i = 0; i < lorac_train_pass_n_params(p); i++) {
        const char *name; float *data, *grad; int64_t cnt;
        lorac_train_pass_param(p, i, &name, &data, &grad, &cnt);
        double num = 0, den = 0;
        for (int k = 0; k < per_param && k < cnt; k++) {
            int64_t e = cnt <= per_param ? k : (int64_t)((tiny_rand(&s) + 0.5f) * (float)cnt) % cnt;
            float v = data[e];
            float h = 1e-2f * (fabsf(v) > 1.0f ? fabsf(v) : 1.0f);
            data[e] = v + h; double lp = run_loss(p);
            data[e] = v - h; double lm = run_loss(p);
            data[e] = v;
            double fd = (lp - lm) / (double)(2 * h);
            num += fabs(fd - grad[e]);
            den += fabs(fd) + fabs(grad[e]);
        }
        double err = den > 1e-9 ? num / den : 0.0;
        if (err > worst) { worst = err; worst_name = name; }
        if (den <= 1e-9) CHECK_MSG(0, "%s: %s has an all-zero gradient sample", label, name);
    }
    printf("%s: %d params, worst normalised error %.2e (%s)\n", label, lorac_train_pass_n_params(p), worst, worst_name);
    return worst;
}

static void lora_case(const char *label, tiny_model_t tm, const char *targets) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/gradcheck-%s", tl_tmpdir(), label);
    CHECK(tiny_model_write(dir, &tm) == 0);
    lorac_model_t *m;
    if (lorac_model_load(dir, &m) != LORAC_STATUS_OK) { CHECK_MSG(0, "%s", lorac_error_message()); return; }
    make_batch(tm.V);
    lorac_lora_params_t lp = lorac_lora_default_params();
    lp.r = 3; lp.alpha = 6.0f;
    CHECK(lorac_lora_parse_targets(targets, &lp.targets) == LORAC_STATUS_OK);
    lorac_adapter_t *a;
    CHECK(lorac_adapter_init(lorac_model_get_config(m), &lp, &a) == LORAC_STATUS_OK);
    /* B starts at zero, which would make every A gradient zero: randomise it */
    unsigned long long s = 17;
    for (int32_t i = 0; i < lorac_adapter_n_modules(a); i++) {
        lorac_lora_module_t *mod = lorac_adapter_module(a, i);
        for (int64_t k = 0; k < (int64_t)mod->out * mod->r; k++) mod->B[k] = 0.5f * tiny_rand(&s);
    }
    lorac_train_pass_t *p;
    lorac_train_pass_params_t pp = {.batch = B, .seq_len = T};
    CHECK(lorac_train_pass_init(m, a, pp, &p) == LORAC_STATUS_OK);
    CHECK(check_grads(p, 12, label) < 5e-3);
    lorac_train_pass_free(p);
    lorac_adapter_free(a);
    lorac_model_free(m);
}

static void full_case(const char *label, tiny_model_t tm) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/gradcheck-%s", tl_tmpdir(), label);
    CHECK(tiny_model_write(dir, &tm) == 0);
    lorac_model_t *m;
    if (lorac_model_load(dir, &m) != LORAC_STATUS_OK) { CHECK_MSG(0, "%s", lorac_error_message()); return; }
    make_batch(tm.V);
    lorac_train_pass_t *p;
    lorac_train_pass_params_t pp = {.batch = B, .seq_len = T};
    CHECK(lorac_train_pass_init(m, NULL, pp, &p) == LORAC_STATUS_OK);
    CHECK(check_grads(p, 8, label) < 5e-3);
    lorac_train_pass_free(p);
    lorac_model_free(m);
}

int main(void) {
    lorac_kernels_set_threads(2);
    tiny_model_t gqa = {.D = 16, .I = 24, .L = 2, .H = 4, .KVH = 2, .HD = 4, .V = 23, .seed = 3};
    lora_case("lora-gqa-all-linear", gqa, "all-linear");
    tiny_model_t biased = gqa;
    biased.bias = 1; biased.tied = 1; biased.seed = 4;
    lora_case("lora-bias-tied", biased, "q_proj,k_proj,v_proj,o_proj,down_proj");
    tiny_model_t qwen = {.D = 12, .I = 20, .L = 1, .H = 3, .KVH = 1, .HD = 6, .V = 19, .qwen2 = 1, .bias = 1, .seed = 5};
    lora_case("lora-qwen2-mqa", qwen, "gate_proj,up_proj,v_proj");
    /* 2500 tokens: the loss runs over the vocabulary in 3 blocks (online softmax) */
    tiny_model_t wide = {.D = 16, .I = 24, .L = 1, .H = 4, .KVH = 4, .HD = 4, .V = 2500, .seed = 7};
    lora_case("lora-vocab-blocks", wide, "q_proj,v_proj,up_proj");
    full_case("full-gqa-bias", biased);
    tiny_model_t untied = gqa;
    untied.seed = 6;
    full_case("full-untied", untied);
    return tl_finish("test_train_gradcheck");
}
