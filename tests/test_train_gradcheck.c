/* Gradients of the training pass against central finite differences of its
 * own loss, for every LoRA target kind, for full fine-tuning, with GQA,
 * biases, Qwen3's per-head q/k norms, sliding windows, Gemma 3's norms and GeGLU, Gemma 2's soft-caps, tied embeddings, masked targets, packed rows, a vocabulary the
 * loss takes in several blocks, and an adapter on the upper layers only. The forward is
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

/* An adapter of rank r on targets (in the layers "0-3,7" names, NULL: all)
 * with B random (from zero, every A gradient would be zero), the same for
 * the same arguments. */
static lorac_adapter_t *random_adapter(const lorac_model_t *m, int r, float alpha, const char *targets,
                                       const char *layers) {
    lorac_lora_params_t lp = lorac_lora_default_params();
    lp.r = r; lp.alpha = alpha;
    CHECK(lorac_lora_parse_targets(targets, &lp.targets) == LORAC_STATUS_OK);
    uint8_t mask[64];
    if (layers) {
        CHECK(lorac_lora_parse_layers(layers, lorac_model_get_config(m)->n_layers, mask) == LORAC_STATUS_OK);
        lp.layers = mask;
    }
    lorac_adapter_t *a;
    CHECK(lorac_adapter_init(lorac_model_get_config(m), &lp, &a) == LORAC_STATUS_OK);
    unsigned long long s = 17;
    for (int32_t i = 0; i < lorac_adapter_n_modules(a); i++) {
        lorac_lora_module_t *mod = lorac_adapter_module(a, i);
        for (int64_t k = 0; k < (int64_t)mod->out * mod->r; k++) mod->B[k] = 0.5f * tiny_rand(&s);
    }
    return a;
}

/* The tiny model written under the label and loaded, with the batch made
 * for its vocabulary; NULL (a failed check) if it does not load. */
static lorac_model_t *load_tiny(const char *label, tiny_model_t tm) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/gradcheck-%s", tl_tmpdir(), label);
    CHECK(tiny_model_write(dir, &tm) == 0);
    lorac_model_t *m;
    if (lorac_model_load(dir, &m) != LORAC_STATUS_OK) { CHECK_MSG(0, "%s", lorac_error_message()); return NULL; }
    make_batch(tm.V);
    return m;
}

static void lora_case(const char *label, tiny_model_t tm, const char *targets, const char *layers) {
    lorac_model_t *m = load_tiny(label, tm);
    if (!m) return;
    lorac_adapter_t *a = random_adapter(m, 3, 6.0f, targets, layers);
    lorac_train_pass_t *p;
    lorac_train_pass_params_t pp = {.batch = B, .seq_len = T};
    CHECK(lorac_train_pass_init(m, a, pp, &p) == LORAC_STATUS_OK);
    CHECK(check_grads(p, 12, label) < 5e-3);
    lorac_train_pass_free(p);
    lorac_adapter_free(a);
    lorac_model_free(m);
}

static void full_case(const char *label, tiny_model_t tm) {
    lorac_model_t *m = load_tiny(label, tm);
    if (!m) return;
    lorac_train_pass_t *p;
    lorac_train_pass_params_t pp = {.batch = B, .seq_len = T};
    CHECK(lorac_train_pass_init(m, NULL, pp, &p) == LORAC_STATUS_OK);
    CHECK(check_grads(p, 8, label) < 5e-3);
    lorac_train_pass_free(p);
    lorac_model_free(m);
}

/* Logits of tokens 0..n-1 (one sequence) by the inference path. */
static void infer_logits(const lorac_model_t *m, int n, float *logits) {
    lorac_context_params_t cp = {.n_ctx = n, .n_seq = 1, .n_batch = n};
    lorac_context_t *ctx;
    CHECK(lorac_context_init(m, cp, &ctx) == LORAC_STATUS_OK);
    int32_t tok[64], pos[64], seq[64];
    int8_t want[64];
    for (int i = 0; i < n; i++) tok[i] = (i * 7 + 3) % lorac_model_get_config(m)->vocab_size, pos[i] = i, seq[i] = 0, want[i] = 1;
    lorac_batch_t b = {.n_tokens = n, .tokens = tok, .pos = pos, .seq_id = seq, .logits = want};
    CHECK(lorac_context_decode(ctx, &b, logits) == LORAC_STATUS_OK);
    lorac_context_free(ctx);
}

/* A model loaded for training (lorac_model_load_for_training: its f32
 * projections left in the file, repacked by the pass, whose pages it then
 * hands back) trains with the bits of an ordinarily loaded one: loss and
 * every gradient, at 144 rows (the batch kernels' path) and a vocabulary
 * of whole 16-row groups in blocks; and afterwards still infers the same
 * logits, the handed-back pages read again from the file. */
static void for_training_case(void) {
    enum { RB = 2, RT = 72 };
    tiny_model_t tm = {.D = 32, .I = 48, .L = 2, .H = 4, .KVH = 2, .HD = 8, .V = 1040, .seed = 8};
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/gradcheck-for-training", tl_tmpdir());
    CHECK(tiny_model_write(dir, &tm) == 0);
    lorac_model_t *m[2];
    CHECK(lorac_model_load(dir, &m[0]) == LORAC_STATUS_OK);
    CHECK(lorac_model_load_for_training(dir, &m[1]) == LORAC_STATUS_OK);
    static int32_t tok[RB * RT], tgt[RB * RT], pos[RB * RT];
    unsigned long long s = 5;
    for (int i = 0; i < RB * RT; i++) {
        tok[i] = (int32_t)((tiny_rand(&s) + 0.5f) * (float)tm.V) % tm.V;
        tgt[i] = (int32_t)((tiny_rand(&s) + 0.5f) * (float)tm.V) % tm.V;
        pos[i] = i % RT;
    }
    double loss[2];
    float *grads[2] = {NULL, NULL};
    int64_t n_grads = 0;
    for (int k = 0; k < 2; k++) {
        lorac_adapter_t *a = random_adapter(m[k], 4, 8.0f, "all-linear", NULL);
        lorac_train_pass_t *p;
        lorac_train_pass_params_t pp = {.batch = RB, .seq_len = RT};
        CHECK(lorac_train_pass_init(m[k], a, pp, &p) == LORAC_STATUS_OK);
        lorac_train_pass_zero_grad(p);
        double sum = 0;
        int64_t n = 0;
        CHECK(lorac_train_pass_run(p, tok, tgt, pos, true, NULL, &sum, &n) == LORAC_STATUS_OK);
        loss[k] = sum;
        n_grads = 0;
        for (int32_t i = 0; i < lorac_train_pass_n_params(p); i++) {
            int64_t cnt;
            lorac_train_pass_param(p, i, NULL, NULL, NULL, &cnt);
            n_grads += cnt;
        }
        grads[k] = malloc(sizeof(float) * (size_t)n_grads);
        int64_t at = 0;
        for (int32_t i = 0; i < lorac_train_pass_n_params(p); i++) {
            float *g;
            int64_t cnt;
            lorac_train_pass_param(p, i, NULL, NULL, &g, &cnt);
            memcpy(grads[k] + at, g, sizeof(float) * (size_t)cnt);
            at += cnt;
        }
        lorac_train_pass_free(p);
        lorac_adapter_free(a);
    }
    CHECK_MSG(loss[0] == loss[1] && memcmp(grads[0], grads[1], sizeof(float) * (size_t)n_grads) == 0,
              "a model loaded for training trains with other bits (loss %.9g vs %.9g)", loss[0], loss[1]);
    static float lg[2][40 * 1040];
    for (int k = 0; k < 2; k++) infer_logits(m[k], 40, lg[k]);
    CHECK_MSG(memcmp(lg[0], lg[1], sizeof lg[0]) == 0, "a model loaded for training infers other logits after training");
    printf("for-training load: loss %.6f, %lld gradients and 40 x %d logits bitwise equal\n", loss[0] / (RB * RT),
           (long long)n_grads, tm.V);
    free(grads[0]), free(grads[1]);
    lorac_model_free(m[0]), lorac_model_free(m[1]);
}

int main(void) {
    lorac_kernels_set_threads(2);
    for_training_case();
    tiny_model_t gqa = {.D = 16, .I = 24, .L = 2, .H = 4, .KVH = 2, .HD = 4, .V = 23, .seed = 3};
    lora_case("lora-gqa-all-linear", gqa, "all-linear", NULL);
    tiny_model_t biased = gqa;
    biased.bias = 1; biased.tied = 1; biased.seed = 4;
    lora_case("lora-bias-tied", biased, "q_proj,k_proj,v_proj,o_proj,down_proj", NULL);
    tiny_model_t qwen = {.D = 12, .I = 20, .L = 1, .H = 3, .KVH = 1, .HD = 6, .V = 19, .qwen2 = 1, .bias = 1, .seed = 5};
    lora_case("lora-qwen2-mqa", qwen, "gate_proj,up_proj,v_proj", NULL);
    /* 2500 tokens: the loss runs over the vocabulary in 3 blocks (online softmax) */
    tiny_model_t wide = {.D = 16, .I = 24, .L = 1, .H = 4, .KVH = 4, .HD = 4, .V = 2500, .seed = 7};
    lora_case("lora-vocab-blocks", wide, "q_proj,v_proj,up_proj", NULL);
    /* only the upper layers adapted: the backward pass stops at layer 1 */
    tiny_model_t deep = gqa;
    deep.L = 3, deep.seed = 9;
    lora_case("lora-upper-layers", deep, "all-linear", "1-2");
    /* Qwen3: the q/k norms between the projections and rotary; head_dim 8 != 16 / 4 */
    tiny_model_t qwen3 = {.D = 16, .I = 24, .L = 2, .H = 4, .KVH = 2, .HD = 8, .V = 23, .qwen3 = 1, .seed = 10};
    lora_case("lora-qwen3-qk", qwen3, "q_proj,k_proj,o_proj", NULL);
    full_case("full-gqa-bias", biased);
    qwen3.bias = 1, qwen3.tied = 1, qwen3.seed = 11;
    full_case("full-qwen3-bias-tied", qwen3);
    /* SmolLM3: layer 1 of 2 without rotary */
    tiny_model_t smollm3 = gqa;
    smollm3.nope_interval = 2, smollm3.seed = 12;
    lora_case("lora-smollm3-nope", smollm3, "q_proj,k_proj", NULL);
    /* Granite: the embedding, residual, attention and logits multipliers */
    tiny_model_t granite = gqa;
    granite.granite = 1, granite.seed = 13;
    lora_case("lora-granite", granite, "all-linear", NULL);
    granite.tied = 1, granite.seed = 14;
    full_case("full-granite-tied", granite);
    /* sliding windows of 3 over rows of 9 (one of them two packed examples):
     * Mistral's on every layer, Qwen2's on layer 1 only */
    tiny_model_t windowed = gqa;
    windowed.window = 3, windowed.seed = 15;
    lora_case("lora-mistral-window", windowed, "q_proj,k_proj,v_proj", NULL);
    tiny_model_t qwen_window = {.D = 12, .I = 20, .L = 2, .H = 3, .KVH = 1, .HD = 6, .V = 19, .qwen2 = 1, .bias = 1, .window = 3,
                                .seed = 16};
    full_case("full-qwen2-window", qwen_window);
    /* Gemma 3: (1 + w) norms, sandwich norms, GeGLU, q/k norms, the scaled
     * embedding, query_pre_attn_scalar; windows of 3 with their own rotary
     * base on layer 0 */
    tiny_model_t gemma3 = gqa;
    gemma3.gemma3 = 1, gemma3.tied = 1, gemma3.window = 3, gemma3.seed = 17;
    lora_case("lora-gemma3", gemma3, "all-linear", NULL);
    gemma3.seed = 18;
    full_case("full-gemma3-tied", gemma3);
    /* Gemma 2: the attention scores and logits soft-capped */
    tiny_model_t gemma2 = gqa;
    gemma2.gemma2 = 1, gemma2.tied = 1, gemma2.window = 3, gemma2.seed = 19;
    lora_case("lora-gemma2-softcaps", gemma2, "q_proj,k_proj,v_proj,down_proj", NULL);
    gemma2.seed = 20;
    full_case("full-gemma2-tied", gemma2);
    tiny_model_t untied = gqa;
    untied.seed = 6;
    full_case("full-untied", untied);
    return tl_finish("test_train_gradcheck");
}
