/* The forward pass over batches: a prompt processed as one batch equals the
 * same tokens one at a time; two sequences in one batch equal each alone;
 * bad batches are refused without touching the cache; repeated runs are
 * bit-identical; a sliding window keeps all of that, also when its layers
 * keep only the rows it can still read; Phi-3's longrope
 * factors are a sequence's, fixed by its first batch or its given length.
 * (Parity with PyTorch is tests/test_logits_parity.py.) */
#include <sys/stat.h>
#include <unistd.h>

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

/* One tensor of a test model: name (with %d for per-layer ones), shape, values offset + scale·U(-0.5, 0.5). */
typedef struct { const char *fmt; int per_layer; int64_t d0, d1; float scale, offset; } tensor_spec_t;

/* Writes dir/model.safetensors from the specs, random values drawn in order from seed. */
static void write_tensors(const char *dir, const tensor_spec_t *spec, size_t n_spec, uint64_t seed) {
    enum { MAX_T = 64, MAX_N = 2 * I * D > V * D ? 2 * I * D : V * D };
    static char names[MAX_T][96];
    static float data[MAX_T][MAX_N];
    lorac_tensor_write_t t[MAX_T];
    int n = 0;
    for (size_t k = 0; k < n_spec; k++)
        for (int l = 0; l < (spec[k].per_layer ? L : 1); l++) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
            if (spec[k].per_layer) snprintf(names[n], sizeof names[n], spec[k].fmt, l);
            else snprintf(names[n], sizeof names[n], "%s", spec[k].fmt);
#pragma GCC diagnostic pop
            int64_t count = spec[k].d0 * (spec[k].d1 ? spec[k].d1 : 1);
            for (int64_t i = 0; i < count; i++) data[n][i] = spec[k].offset + spec[k].scale * frand(&seed);
            t[n] = (lorac_tensor_write_t){.name = names[n], .dtype = LORAC_DTYPE_F32, .n_dims = spec[k].d1 ? 2 : 1,
                                          .shape = {spec[k].d0, spec[k].d1}, .data = data[n]};
            n++;
        }
    char path[4300];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    lorac_status_t st = lorac_safetensors_write(path, t, n, NULL, NULL, 0);
    CHECK_MSG(st == LORAC_STATUS_OK, "%s", lorac_error_message());
}

/* window > 0: the same weights as Mistral with a sliding window of that many positions */
static void write_model(int window) {
    /* the process id in the name: ctest runs this binary twice at once (the _thread_limit copy) */
    snprintf(g_dir, sizeof g_dir, "%s/forward-batch-model%s.%d", tl_tmpdir(), window ? "-window" : "", (int)getpid());
    mkdir(g_dir, 0755);
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", g_dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"architectures\": [\"%s\"], \"hidden_size\": %d, \"intermediate_size\": %d, "
               "\"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d, "
               "\"vocab_size\": %d, \"rms_norm_eps\": 1e-5, \"tie_word_embeddings\": false, \"sliding_window\": %d}",
            window ? "MistralForCausalLM" : "LlamaForCausalLM", D, I, L, H, KVH, V, window);
    fclose(f);
    static const tensor_spec_t spec[] = {
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
    write_tensors(g_dir, spec, sizeof spec / sizeof spec[0], 1);
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

/* Phi-3 with longrope switching past 4 positions (fused projections, rotary
 * on half of each head): a sequence's factors are fixed by its first batch
 * (or the length lorac_context_set_seq_rope_len gives), so a prompt decoded
 * in pieces with the hint equals it in one batch; without the hint the
 * piece that crosses the switch is refused and the cache kept, and so is a
 * sequence kept back within the switch after long-factor positions. */
static void test_phi3_longrope(void) {
    char dir[4200], path[4300];
    snprintf(dir, sizeof dir, "%s/forward-batch-phi3.%d", tl_tmpdir(), (int)getpid());
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"architectures\": [\"Phi3ForCausalLM\"], \"hidden_size\": %d, \"intermediate_size\": %d, "
               "\"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"vocab_size\": %d, "
               "\"partial_rotary_factor\": 0.5, \"max_position_embeddings\": 64, \"original_max_position_embeddings\": 4, "
               "\"rope_scaling\": {\"type\": \"longrope\", \"short_factor\": [1.0, 1.5], \"long_factor\": [4.0, 9.0]}}",
            D, I, L, H, KVH, V);
    fclose(f);
    static const tensor_spec_t spec[] = {
        {"model.embed_tokens.weight", 0, V, D, 1.0f, 0},
        {"model.layers.%d.input_layernorm.weight", 1, D, 0, 0.2f, 1},
        {"model.layers.%d.self_attn.qkv_proj.weight", 1, (H + 2 * KVH) * HD, D, 0.5f, 0},
        {"model.layers.%d.self_attn.o_proj.weight", 1, D, H * HD, 0.5f, 0},
        {"model.layers.%d.post_attention_layernorm.weight", 1, D, 0, 0.2f, 1},
        {"model.layers.%d.mlp.gate_up_proj.weight", 1, 2 * I, D, 0.5f, 0},
        {"model.layers.%d.mlp.down_proj.weight", 1, D, I, 0.5f, 0},
        {"model.norm.weight", 0, D, 0, 0.2f, 1},
        {"lm_head.weight", 0, V, D, 0.5f, 0},
    };
    write_tensors(dir, spec, sizeof spec / sizeof spec[0], 3);
    lorac_model_t *m;
    lorac_status_t s = lorac_model_load(dir, &m);
    CHECK_MSG(s == LORAC_STATUS_OK, "%s", lorac_error_message());
    if (s) return;
    lorac_context_params_t cp = {.n_ctx = 16, .n_seq = 2, .n_batch = 8};
    lorac_context_t *ctx;
    CHECK(lorac_context_init(m, cp, &ctx) == LORAC_STATUS_OK);
    const int32_t toks[7] = {1, 7, 3, 49, 0, 22, 5};
    int32_t pos[7], seq0[7] = {0}, seq1[7] = {1, 1, 1, 1, 1, 1, 1};
    int8_t want[7] = {1, 1, 1, 1, 1, 1, 1};
    for (int i = 0; i < 7; i++) pos[i] = i;
    float whole[7 * V], pieces[7 * V];
    lorac_batch_t b = {.n_tokens = 7, .tokens = toks, .pos = pos, .seq_id = seq0, .logits = want};
    CHECK(lorac_context_decode(ctx, &b, whole) == LORAC_STATUS_OK && lorac_context_seq_rope_long(ctx, 0));
    /* in pieces of 3, 3 and 1 with the hint: the same logits */
    lorac_context_set_seq_rope_len(ctx, 1, 7);
    for (int from = 0; from < 7; from += 3) {
        int cnt = 7 - from < 3 ? 7 - from : 3;
        lorac_batch_t p = {.n_tokens = cnt, .tokens = toks + from, .pos = pos + from, .seq_id = seq1, .logits = want};
        CHECK(lorac_context_decode(ctx, &p, pieces + from * V) == LORAC_STATUS_OK);
    }
    double d = max_rel_diff(pieces, whole, 7 * V);
    printf("phi3 longrope: a prompt in pieces with its length given vs in one batch: max rel diff %.3g\n", d);
    CHECK(d <= 1e-5);
    /* without the hint the second piece crosses the switch: refused, the cache kept */
    lorac_context_clear_seq(ctx, 1);
    lorac_batch_t p0 = {.n_tokens = 3, .tokens = toks, .pos = pos, .seq_id = seq1, .logits = NULL};
    CHECK(lorac_context_decode(ctx, &p0, pieces) == LORAC_STATUS_OK && !lorac_context_seq_rope_long(ctx, 1));
    lorac_batch_t p1 = {.n_tokens = 3, .tokens = toks + 3, .pos = pos + 3, .seq_id = seq1, .logits = NULL};
    CHECK(lorac_context_decode(ctx, &p1, pieces) == LORAC_STATUS_INVALID_ARG &&
          strstr(lorac_error_message(), "grows to 6 positions, past the 4") && lorac_context_seq_len(ctx, 1) == 3);
    /* a long-factor sequence kept back within the switch and grown again: refused */
    lorac_context_keep_seq(ctx, 0, 2);
    lorac_batch_t p2 = {.n_tokens = 1, .tokens = toks + 2, .pos = pos + 2, .seq_id = seq0, .logits = NULL};
    CHECK(lorac_context_decode(ctx, &p2, pieces) == LORAC_STATUS_INVALID_ARG &&
          strstr(lorac_error_message(), "grows to 3 positions, within the 4") && lorac_context_seq_len(ctx, 0) == 2);
    lorac_context_free(ctx);
    lorac_model_free(m);
}

/* Feeds both sequences of ctx n tokens each (toks0, toks1) in batches of
 * both, sizes cycling 1 .. 4 tokens of each sequence (at most `most` in
 * all), and stores every token's logits at logits[seq][pos]. */
static void feed_two(lorac_context_t *ctx, const int32_t *toks0, const int32_t *toks1, int n, int most,
                     float *logits0, float *logits1) {
    int done[2] = {0, 0}, turn = 0;
    while (done[0] < n || done[1] < n) {
        int32_t tok[8], pos[8], seq[8];
        int8_t want[8];
        int k = 0;
        for (int sq = 0; sq < 2; sq++) {
            int take = 1 + (turn + 2 * sq) % 4; /* the two sequences' pieces out of step */
            for (int j = 0; j < take && done[sq] < n && k < most; j++, k++) {
                tok[k] = (sq ? toks1 : toks0)[done[sq]], pos[k] = done[sq]++, seq[k] = sq, want[k] = 1;
            }
        }
        turn++;
        float out[8 * V];
        lorac_batch_t b = {.n_tokens = k, .tokens = tok, .pos = pos, .seq_id = seq, .logits = want};
        CHECK_MSG(lorac_context_decode(ctx, &b, out) == LORAC_STATUS_OK, "%s", lorac_error_message());
        for (int i = 0; i < k; i++) memcpy((seq[i] ? logits1 : logits0) + pos[i] * V, out + i * V, sizeof(float) * V);
    }
}

/* A windowed layer keeps W + n_batch - 1 + min(W, 256) rows a sequence,
 * not n_ctx: with a window of 3 and batches of 4, 9 rows of 64. Two
 * sequences fed in pieces of 1-4 tokens, their rows moved to the front
 * again and again, give the bits of a context that keeps every position
 * (one whose n_batch leaves nothing to save), F32 and BF16 caches;
 * keep_seq inside the rows still held keeps them, one past them clears
 * the sequence and says so; copy_seq the same. */
static void test_window_rows(void) {
    enum { N = 60, CTX = 64 };
    write_model(3);
    lorac_model_t *m;
    lorac_status_t s = lorac_model_load(g_dir, &m);
    CHECK_MSG(s == LORAC_STATUS_OK, "%s", lorac_error_message());
    if (s) return;
    int32_t toks[2][N];
    uint64_t seed = 11;
    for (int sq = 0; sq < 2; sq++)
        for (int i = 0; i < N; i++) toks[sq][i] = (int32_t)((frand(&seed) + 0.5f) * V) % V;
    static float got[2][N * V], want[2][N * V];
    for (int kv = 0; kv < 2; kv++) {
        lorac_dtype_t kvt = kv ? LORAC_DTYPE_BF16 : LORAC_DTYPE_F32;
        lorac_context_t *small, *full;
        CHECK(lorac_context_init(m, (lorac_context_params_t){.n_ctx = CTX, .n_seq = 2, .n_batch = 4, .kv_dtype = kvt},
                                 &small) == LORAC_STATUS_OK);
        CHECK(lorac_context_init(m, (lorac_context_params_t){.n_ctx = CTX, .n_seq = 2, .n_batch = 64, .kv_dtype = kvt},
                                 &full) == LORAC_STATUS_OK);
        size_t row = 2 * lorac_dtype_size(kvt) * KVH * HD; /* a key and a value */
        printf("window 3, %s cache: %zu bytes with batches of 4, %zu with 64\n", kv ? "BF16" : "F32",
               lorac_context_kv_bytes(small), lorac_context_kv_bytes(full));
        CHECK(lorac_context_kv_bytes(small) == 2 * L * 9 * row && lorac_context_kv_bytes(full) == 2 * L * CTX * row);
        feed_two(small, toks[0], toks[1], N, 4, got[0], got[1]);
        feed_two(full, toks[0], toks[1], N, 4, want[0], want[1]);
        CHECK_MSG(memcmp(got, want, sizeof got) == 0, "%s cache: rows moved to the front changed the logits",
                  kv ? "BF16" : "F32");
        /* copy_seq: sequence 0's first N - 1 positions into sequence 1, then a token there gives the bits of
         * the same token after sequence 0's own first N - 1 (below); 20 positions are gone in the small one */
        int32_t last = N - 1, one = 1, tok1 = (toks[0][N - 1] + 1) % V;
        float from_copy[2][V];
        CHECK(lorac_context_copy_seq(small, 0, 1, last) == last && lorac_context_copy_seq(full, 0, 1, last) == last);
        CHECK(lorac_context_seq_len(small, 1) == last && lorac_context_seq_len(small, 0) == N);
        lorac_batch_t cb = {.n_tokens = 1, .tokens = &tok1, .pos = &last, .seq_id = &one, .logits = NULL};
        CHECK(lorac_context_decode(small, &cb, from_copy[0]) == LORAC_STATUS_OK);
        CHECK(lorac_context_decode(full, &cb, from_copy[1]) == LORAC_STATUS_OK);
        CHECK_MSG(memcmp(from_copy[0], from_copy[1], sizeof from_copy[0]) == 0, "a token after copy_seq");
        CHECK(lorac_context_copy_seq(small, 0, 1, 20) == 0 && lorac_context_seq_len(small, 1) == 0);
        CHECK(lorac_context_copy_seq(full, 0, 1, 20) == 20 && lorac_context_copy_seq(full, 1, 1, 5) == 0);
        /* keep_seq one position back: its window is still held */
        int32_t n = N - 1, zero = 0;
        CHECK(lorac_context_keep_seq(small, 0, n) == n && lorac_context_keep_seq(full, 0, n) == n);
        lorac_batch_t b = {.n_tokens = 1, .tokens = &tok1, .pos = &n, .seq_id = &zero, .logits = NULL};
        CHECK(lorac_context_decode(small, &b, got[0]) == LORAC_STATUS_OK);
        CHECK(lorac_context_decode(full, &b, want[0]) == LORAC_STATUS_OK);
        CHECK_MSG(memcmp(got[0], want[0], sizeof(float) * V) == 0, "after keep_seq(%d)", n);
        CHECK_MSG(memcmp(got[0], from_copy[0], sizeof(float) * V) == 0, "copy_seq and keep_seq differ");
        /* 20 positions: the rows of 18 and 19 were reused long ago */
        CHECK(lorac_context_keep_seq(small, 1, 20) == 0 && lorac_context_seq_len(small, 1) == 0);
        CHECK(lorac_context_keep_seq(full, 1, 20) == 20);
        CHECK(lorac_context_keep_seq(small, 1, 5) == 0); /* nothing to keep: stays empty */
        lorac_context_free(small);
        lorac_context_free(full);
    }
    lorac_model_free(m);
}

int main(void) {
    test_phi3_longrope();
    test_window_rows();
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
