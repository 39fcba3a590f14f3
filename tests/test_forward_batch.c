/* The forward pass over batches: a prompt processed as one batch equals the
 * same tokens one at a time; two sequences in one batch equal each alone;
 * bad batches are refused without touching the cache; repeated runs are
 * bit-identical; a sliding window keeps all of that. (Parity with PyTorch is tests/test_logits_parity.py.) */
#include <sys/stat.h>

#include "lorac/kernels.h"
#include "lorac/model.h"
#include "lorac/safetensors.h"
#include "testlib.h"

enum { D = 32, I = 56, L = 2, H = 4, KVH = 2, HD = 8, V = 50 };

static float frand(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) & 0xffffff) / 16777216.0f - 0.5f;
}

static char g_dir[4096];

/* window > 0: the same weights as Mistral with a sliding window of that many positions */
static void write_model(int window) {
    snprintf(g_dir, sizeof g_dir, "%s/forward-batch-model%s", tl_tmpdir(), window ? "-window" : "");
    mkdir(g_dir, 0755);
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", g_dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"architectures\": [\"%s\"], \"hidden_size\": %d, \"intermediate_size\": %d, "
               "\"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d, "
               "\"vocab_size\": %d, \"rms_norm_eps\": 1e-5, \"tie_word_embeddings\": false, \"sliding_window\": %d}",
            window ? "MistralForCausalLM" : "LlamaForCausalLM", D, I, L, H, KVH, V, window);
    fclose(f);
    static char names[64][96];
    static float data[64][V * D > I * D ? V * D : I * D];
    lorac_tensor_write_t t[64];
    int n = 0;
    uint64_t seed = 1;
    const struct { const char *fmt; int per_layer; int64_t d0, d1; float scale, offset; } spec[] = {
        {"model.embed_tokens.weight", 0, V, D, 1.0f, 0},
        {"model.layers.%d.input_layernorm.weight", 1, D, 0, 0.2f, 1},
        {"model.layers.%d.self_attn.q_proj.weight", 1, H * HD, D, 0.5f, 0},
        {"model.layers.%d.self_attn.k_proj.weight", 1, KVH * HD, D, 0.5f, 0},
        {"model.layers.%d.self_attn.v_proj.weight", 1, KVH * HD, D, 0.5f, 0},
        {"model.layers.%d.self_attn.o_proj.weight", 1, D, H * HD, 0.5f, 0},
        {"model.layers.%d.post_attention_layernorm.weight", 1, D, 0, 0.2f, 1},
        {"model.layers.%d.mlp.gate_proj.weight", 1, I, D, 0.5f, 0},
        {"model.layers.%d.mlp.up_proj.weight", 1, I, D, 0.5f, 0},
        {"model.layers.%d.mlp.down_proj.weight", 1, D, I, 0.5f, 0},
        {"model.norm.weight", 0, D, 0, 0.2f, 1},
        {"lm_head.weight", 0, V, D, 0.5f, 0},
    };
    for (size_t s = 0; s < sizeof spec / sizeof spec[0]; s++) {
        for (int l = 0; l < (spec[s].per_layer ? L : 1); l++) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
            if (spec[s].per_layer) snprintf(names[n], sizeof names[n], spec[s].fmt, l);
            else snprintf(names[n], sizeof names[n], "%s", spec[s].fmt);
#pragma GCC diagnostic pop
            int64_t count = spec[s].d0 * (spec[s].d1 ? spec[s].d1 : 1);
            for (int64_t i = 0; i < count; i++) data[n][i] = spec[s].offset + spec[s].scale * frand(&seed);
            t[n] = (lorac_tensor_write_t){.name = names[n], .dtype = LORAC_DTYPE_F32, .n_dims = spec[s].d1 ? 2 : 1,
                                          .shape = {spec[s].d0, spec[s].d1}, .data = data[n]};
            n++;
        }
    }
    snprintf(path, sizeof path, "%s/model.safetensors", g_dir);
    lorac_status_t st = lorac_safetensors_write(path, t, n, NULL, NULL, 0);
    CHECK_MSG(st == LORAC_STATUS_OK, "%s", lorac_error_message());
}

static double max_rel_diff(const float *a, const float *b, int64_t n) {
    double md = 0, mx = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        md = d > md ? d : md;
        mx = fabs(b[i]) > mx ? fabs(b[i]) : mx;
    }
    return md / (mx > 0 ? mx : 1);
}

/* The prompt toks (n <= 12) as one batch in sequence 0, every row's logits
 * into batch_logits, and token by token in sequence 1 into step_logits;
 * both sequences start empty. */
static void prompt_two_ways(lorac_context_t *ctx, const int32_t *toks, int n, float *batch_logits, float *step_logits) {
    int32_t pos[12], seq[12];
    int8_t want[12];
    for (int i = 0; i < n; i++) { pos[i] = i; seq[i] = 0; want[i] = 1; }
    lorac_batch_t b = {.n_tokens = n, .tokens = toks, .pos = pos, .seq_id = seq, .logits = want};
    CHECK(lorac_context_decode(ctx, &b, batch_logits) == LORAC_STATUS_OK);
    for (int i = 0; i < n; i++) {
        int32_t p = i, sid = 1;
        lorac_batch_t one = {.n_tokens = 1, .tokens = &toks[i], .pos = &p, .seq_id = &sid, .logits = NULL};
        CHECK(lorac_context_decode(ctx, &one, step_logits + i * V) == LORAC_STATUS_OK);
    }
}

int main(void) {
    write_model(0);
    lorac_model_t *m;
    lorac_status_t s = lorac_model_load(g_dir, &m);
    CHECK_MSG(s == LORAC_STATUS_OK, "%s", lorac_error_message());
    if (s) return tl_finish("test_forward_batch");

    const int32_t toks_a[7] = {1, 7, 3, 49, 0, 22, 5}, toks_b[5] = {2, 9, 9, 40, 11};
    lorac_context_params_t cp = {.n_ctx = 16, .n_seq = 2, .n_batch = 12};
    lorac_context_t *ctx;
    CHECK(lorac_context_init(m, cp, &ctx) == LORAC_STATUS_OK);

    /* sequence A as one batch, all logits */
    float batch_logits[7 * V], step_logits[7 * V];
    int32_t pos[12], seq[12];
    int8_t want[12];
    for (int i = 0; i < 7; i++) { pos[i] = i; seq[i] = 0; want[i] = 1; }
    lorac_batch_t b = {.n_tokens = 7, .tokens = toks_a, .pos = pos, .seq_id = seq, .logits = want};
    CHECK(lorac_context_decode(ctx, &b, batch_logits) == LORAC_STATUS_OK);
    CHECK(lorac_context_seq_len(ctx, 0) == 7);

    /* the same one token at a time, in sequence 1 */
    lorac_context_clear_seq(ctx, 1);
    for (int i = 0; i < 7; i++) {
        int32_t p = i, sid = 1;
        lorac_batch_t one = {.n_tokens = 1, .tokens = &toks_a[i], .pos = &p, .seq_id = &sid, .logits = NULL};
        CHECK(lorac_context_decode(ctx, &one, step_logits + i * V) == LORAC_STATUS_OK);
    }
    double d = max_rel_diff(step_logits, batch_logits, 7 * V);
    printf("batched prompt vs token-by-token: max rel diff %.3g\n", d);
    CHECK(d <= 1e-5);

    /* keep_seq: rewind sequence 1 to 4 positions, decode other tokens there,
     * rewind again and decode A's tail: the logits are A's, whatever the
     * forgotten positions held */
    lorac_context_keep_seq(ctx, 1, 9); /* past its length: nothing changes */
    CHECK(lorac_context_seq_len(ctx, 1) == 7);
    lorac_context_keep_seq(ctx, 1, 4);
    CHECK(lorac_context_seq_len(ctx, 1) == 4);
    int32_t other[3] = {8, 8, 8}, tail_pos[3] = {4, 5, 6}, tail_seq[3] = {1, 1, 1};
    int8_t tail_want[3] = {1, 1, 1};
    float tail_logits[3 * V];
    lorac_batch_t ob = {.n_tokens = 3, .tokens = other, .pos = tail_pos, .seq_id = tail_seq, .logits = tail_want};
    CHECK(lorac_context_decode(ctx, &ob, tail_logits) == LORAC_STATUS_OK);
    lorac_context_keep_seq(ctx, 1, 4);
    int32_t wrong_pos = 5;
    lorac_batch_t wb1 = {.n_tokens = 1, .tokens = &toks_a[4], .pos = &wrong_pos, .seq_id = tail_seq, .logits = NULL};
    CHECK(lorac_context_decode(ctx, &wb1, tail_logits) == LORAC_STATUS_INVALID_ARG); /* must continue at 4 */
    lorac_batch_t tb = {.n_tokens = 3, .tokens = toks_a + 4, .pos = tail_pos, .seq_id = tail_seq, .logits = tail_want};
    CHECK(lorac_context_decode(ctx, &tb, tail_logits) == LORAC_STATUS_OK);
    d = max_rel_diff(tail_logits, batch_logits + 4 * V, 3 * V);
    printf("after keep_seq(4) and a detour: max rel diff %.3g\n", d);
    CHECK(d <= 1e-5);

    /* two sequences interleaved in one batch vs each alone */
    lorac_context_clear_seq(ctx, 0);
    lorac_context_clear_seq(ctx, 1);
    int32_t mixed[12];
    int na = 0, nb = 0, k = 0;
    while (na < 7 || nb < 5) {
        if (na < 7) { mixed[k] = toks_a[na]; pos[k] = na; seq[k] = 0; want[k] = 1; na++; k++; }
        if (nb < 5) { mixed[k] = toks_b[nb]; pos[k] = nb; seq[k] = 1; want[k] = 1; nb++; k++; }
    }
    float mixed_logits[12 * V];
    lorac_batch_t mb = {.n_tokens = 12, .tokens = mixed, .pos = pos, .seq_id = seq, .logits = want};
    CHECK(lorac_context_decode(ctx, &mb, mixed_logits) == LORAC_STATUS_OK);
    float alone_b[5 * V];
    lorac_context_clear_seq(ctx, 1);
    int32_t pb[5] = {0, 1, 2, 3, 4}, sb[5] = {1, 1, 1, 1, 1};
    int8_t wb[5] = {1, 1, 1, 1, 1};
    lorac_batch_t bb = {.n_tokens = 5, .tokens = toks_b, .pos = pb, .seq_id = sb, .logits = wb};
    CHECK(lorac_context_decode(ctx, &bb, alone_b) == LORAC_STATUS_OK);
    double worst = 0;
    na = nb = 0;
    for (int i = 0; i < 12; i++) {
        const float *ref = seq[i] == 0 ? batch_logits + pos[i] * V : alone_b + pos[i] * V;
        double di = max_rel_diff(mixed_logits + i * V, ref, V);
        worst = di > worst ? di : worst;
    }
    printf("two sequences in one batch vs alone: max rel diff %.3g\n", worst);
    CHECK(worst <= 1e-5);

    /* bad batches are refused and leave the cache alone */
    int32_t len0 = lorac_context_seq_len(ctx, 0);
    int32_t bad_tok = V, p0 = len0, s0 = 0, bad_pos = len0 + 1, bad_seq = 2, ok_tok = 1;
    lorac_batch_t bad1 = {.n_tokens = 1, .tokens = &bad_tok, .pos = &p0, .seq_id = &s0};
    CHECK(lorac_context_decode(ctx, &bad1, step_logits) == LORAC_STATUS_INVALID_ARG);
    lorac_batch_t bad2 = {.n_tokens = 1, .tokens = &ok_tok, .pos = &bad_pos, .seq_id = &s0};
    CHECK(lorac_context_decode(ctx, &bad2, step_logits) == LORAC_STATUS_INVALID_ARG);
    lorac_batch_t bad3 = {.n_tokens = 1, .tokens = &ok_tok, .pos = &p0, .seq_id = &bad_seq};
    CHECK(lorac_context_decode(ctx, &bad3, step_logits) == LORAC_STATUS_INVALID_ARG);
    lorac_batch_t bad4 = {.n_tokens = 13, .tokens = mixed, .pos = pos, .seq_id = seq};
    CHECK(lorac_context_decode(ctx, &bad4, step_logits) == LORAC_STATUS_INVALID_ARG);
    CHECK(lorac_context_seq_len(ctx, 0) == len0);
    /* past the context */
    lorac_context_clear_seq(ctx, 0);
    int32_t far = 16;
    lorac_batch_t bad5 = {.n_tokens = 1, .tokens = &ok_tok, .pos = &far, .seq_id = &s0};
    CHECK(lorac_context_decode(ctx, &bad5, step_logits) == LORAC_STATUS_INVALID_ARG);

    /* repeatable: the same batch again gives bit-identical logits, also with
     * another thread count */
    float again[7 * V];
    for (int threads = 1; threads <= 2; threads++) {
        lorac_kernels_set_threads(threads);
        lorac_context_clear_seq(ctx, 0);
        for (int i = 0; i < 7; i++) { pos[i] = i; seq[i] = 0; want[i] = 1; }
        CHECK(lorac_context_decode(ctx, &b, again) == LORAC_STATUS_OK);
        CHECK_MSG(memcmp(again, batch_logits, sizeof again) == 0, "threads=%d not bit-identical", threads);
    }

    lorac_context_free(ctx);

    /* a BF16 / F16 KV cache: a prompt as one batch and token by token read
     * the same stored values; the logits move off the F32 cache's */
    for (int k16 = 0; k16 < 2; k16++) {
        lorac_context_params_t hp = cp;
        hp.kv_dtype = k16 ? LORAC_DTYPE_F16 : LORAC_DTYPE_BF16;
        CHECK(lorac_context_init(m, hp, &ctx) == LORAC_STATUS_OK);
        float half_batch[7 * V];
        prompt_two_ways(ctx, toks_a, 7, half_batch, step_logits);
        double dh = max_rel_diff(step_logits, half_batch, 7 * V), off = max_rel_diff(half_batch, batch_logits, 7 * V);
        printf("%s KV cache: batched vs token-by-token %.3g, against the F32 cache %.3g\n", k16 ? "F16" : "BF16", dh, off);
        CHECK(dh <= 1e-5 && off > 1e-5);
        lorac_context_free(ctx);
    }
    lorac_context_params_t bad_kv = cp;
    bad_kv.kv_dtype = LORAC_DTYPE_I8;
    CHECK(lorac_context_init(m, bad_kv, &ctx) == LORAC_STATUS_INVALID_ARG && strstr(lorac_error_message(), "I8"));
    lorac_model_free(m);

    /* a sliding window of 3: the first 3 positions see what they saw without
     * it (the same rows, the same bits), the later ones less; a prompt as
     * one batch still equals its tokens one at a time, also with a 16-bit
     * cache (PyTorch parity with windows is in test_logits_parity.py) */
    write_model(3);
    s = lorac_model_load(g_dir, &m);
    CHECK_MSG(s == LORAC_STATUS_OK, "%s", lorac_error_message());
    if (s) return tl_finish("test_forward_batch");
    for (int kv = 0; kv < 2; kv++) {
        lorac_context_params_t wp = cp;
        wp.kv_dtype = kv ? LORAC_DTYPE_BF16 : LORAC_DTYPE_F32;
        CHECK(lorac_context_init(m, wp, &ctx) == LORAC_STATUS_OK);
        float window_batch[7 * V];
        prompt_two_ways(ctx, toks_a, 7, window_batch, step_logits);
        double dw = max_rel_diff(step_logits, window_batch, 7 * V);
        printf("window 3, %s cache: batched vs token-by-token %.3g\n", kv ? "BF16" : "F32", dw);
        CHECK(dw <= 1e-5);
        if (!kv) {
            CHECK_MSG(memcmp(window_batch, batch_logits, 3 * V * sizeof(float)) == 0, "positions 0-2 moved");
            for (int i = 3; i < 7; i++)
                CHECK_MSG(max_rel_diff(window_batch + i * V, batch_logits + i * V, V) > 1e-3, "position %d did not move", i);
        }
        lorac_context_free(ctx);
    }
    lorac_model_free(m);
    return tl_finish("test_forward_batch");
}
