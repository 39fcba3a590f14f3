/* lorac demo: the LoRA story end to end on a model lorac builds itself, with
 * no downloads and nothing from outside the repository:
 *   1. pretrain a small Llama from scratch (--full) to copy strings;
 *   2. LoRA-tune two adapters on the frozen base: reverse, and shift letters;
 *   3. answer held-out prompts with the base and each adapter, switching
 *      adapters on one loaded base;
 *   4. merge an adapter into the weights and check the output is unchanged. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli.h"
#include "lorac/kernels.h"
#include "lorac/lora.h"
#include "lorac/model.h"
#include "lorac/safetensors.h"
#include "lorac/train.h"

static const char *k_usage =
    "usage: lorac demo [--out DIR] [-t THREADS]\n"
    "  Builds a small Llama model from scratch, LoRA-tunes two adapters on it\n"
    "  and compares their answers, in about a minute. Files go to DIR\n"
    "  (default build/demo).\n";

#define CHARS "abcdefghijklmnopqrstuvwxyz>\n"
enum { DIM = 64, HIDDEN = 192, LAYERS = 2, HEADS = 4, VOCAB = 2 + (int)sizeof(CHARS) - 1 };

static void write_text(const char *dir, const char *name, const char *text) {
    char *path = lorac_path_join(dir, name);
    if (!path) cli_die("out of memory");
    cli_check(lorac_file_write_atomic(path, text, strlen(text)));
    free(path);
}

/* A character-level BPE tokenizer.json (no merges): <s>, </s>, then CHARS. */
static void write_tokenizer(const char *dir) {
    cJSON *o = cJSON_CreateObject(), *added = cJSON_AddArrayToObject(o, "added_tokens");
    const char *specials[2] = {"<s>", "</s>"};
    for (int i = 0; i < 2; i++) {
        cJSON *t = cJSON_CreateObject();
        cJSON_AddNumberToObject(t, "id", i);
        cJSON_AddStringToObject(t, "content", specials[i]);
        cJSON_AddBoolToObject(t, "special", 1);
        cJSON_AddItemToArray(added, t);
    }
    cJSON *post = cJSON_AddObjectToObject(o, "post_processor");
    cJSON_AddStringToObject(post, "type", "TemplateProcessing");
    cJSON *single = cJSON_AddArrayToObject(post, "single");
    cJSON *st = cJSON_CreateObject(), *sq = cJSON_CreateObject();
    cJSON_AddStringToObject(cJSON_AddObjectToObject(st, "SpecialToken"), "id", "<s>");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(sq, "Sequence"), "id", "A");
    cJSON_AddItemToArray(single, st);
    cJSON_AddItemToArray(single, sq);
    cJSON *sp = cJSON_AddObjectToObject(cJSON_AddObjectToObject(post, "special_tokens"), "<s>");
    cJSON_AddStringToObject(sp, "id", "<s>");
    cJSON *ids = cJSON_AddArrayToObject(sp, "ids");
    cJSON_AddItemToArray(ids, cJSON_CreateNumber(0));
    cJSON *toks = cJSON_AddArrayToObject(sp, "tokens");
    cJSON_AddItemToArray(toks, cJSON_CreateString("<s>"));
    cJSON_AddStringToObject(cJSON_AddObjectToObject(o, "decoder"), "type", "Fuse");
    cJSON *model = cJSON_AddObjectToObject(o, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    cJSON_AddNumberToObject(vocab, "<s>", 0);
    cJSON_AddNumberToObject(vocab, "</s>", 1);
    for (int i = 0; CHARS[i]; i++) {
        char c[2] = {CHARS[i], 0};
        cJSON_AddNumberToObject(vocab, c, 2 + i);
    }
    cJSON_AddArrayToObject(model, "merges");
    char *text = cJSON_Print(o);
    if (!text) cli_die("out of memory");
    write_text(dir, "tokenizer.json", text);
    free(text);
    cJSON_Delete(o);
}

static void write_base_model(const char *dir, uint64_t seed) {
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) cli_die("%s: cannot create: %s", dir, strerror(errno));
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": %d, "
             "\"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d, "
             "\"vocab_size\": %d, \"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-5, \"rope_theta\": 10000.0, "
             "\"tie_word_embeddings\": true, \"bos_token_id\": 0, \"eos_token_id\": 1, \"torch_dtype\": \"float32\"}\n",
             DIM, HIDDEN, LAYERS, HEADS, HEADS, VOCAB);
    write_text(dir, "config.json", cfg);
    write_tokenizer(dir);
    /* random initialisation: N(0, 0.02) matrices, unit norms */
    lorac_rng_t rng;
    lorac_rng_seed(&rng, seed);
    static const char *const per_layer[] = {"input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                            "self_attn.o_proj", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj",
                                            "mlp.down_proj"};
    enum { N_T = 2 + 9 * LAYERS };
    lorac_tensor_write_t t[N_T];
    char names[N_T][96];
    float *bufs[N_T];
    int n = 0;
    for (int k = -1; k <= LAYERS * 9; k++) {
        int64_t d0, d1 = 0;
        float std = 0.02f, one = 0.0f;
        if (k == -1) { snprintf(names[n], sizeof names[n], "model.embed_tokens.weight"); d0 = VOCAB; d1 = DIM; std = 0.1f; }
        else if (k == LAYERS * 9) { snprintf(names[n], sizeof names[n], "model.norm.weight"); d0 = DIM; std = 0; one = 1; }
        else {
            int l = k / 9, j = k % 9;
            snprintf(names[n], sizeof names[n], "model.layers.%d.%s.weight", l, per_layer[j]);
            if (j == 0 || j == 5) { d0 = DIM; std = 0; one = 1; }
            else if (j == 6 || j == 7) { d0 = HIDDEN; d1 = DIM; }
            else if (j == 8) { d0 = DIM; d1 = HIDDEN; }
            else { d0 = DIM; d1 = DIM; }
        }
        int64_t cnt = d0 * (d1 ? d1 : 1);
        bufs[n] = malloc(sizeof(float) * (size_t)cnt);
        if (!bufs[n]) cli_die("out of memory");
        for (int64_t i = 0; i < cnt; i++) bufs[n][i] = one + std * lorac_rng_normal(&rng);
        t[n] = (lorac_tensor_write_t){.name = names[n], .dtype = LORAC_DTYPE_F32, .n_dims = d1 ? 2 : 1,
                                      .shape = {d0, d1}, .data = bufs[n]};
        n++;
    }
    char *path = lorac_path_join(dir, "model.safetensors");
    cli_check(lorac_safetensors_write(path, t, n, NULL, NULL, 0));
    free(path);
    for (int i = 0; i < n; i++) free(bufs[i]);
}

/* ---- the tasks: strings of 3-6 letters ------------------------------------- */
typedef enum { TASK_COPY, TASK_REVERSE, TASK_SHIFT } task_t;

static void random_word(lorac_rng_t *rng, char *w) {
    int n = 3 + (int)(lorac_rng_u32(rng) % 4);
    for (int i = 0; i < n; i++) w[i] = (char)('a' + lorac_rng_u32(rng) % 26);
    w[n] = '\0';
}

static void answer(task_t task, const char *w, char *out) {
    size_t n = strlen(w);
    for (size_t i = 0; i < n; i++) {
        if (task == TASK_COPY) out[i] = w[i];
        else if (task == TASK_REVERSE) out[i] = w[n - 1 - i];
        else out[i] = (char)('a' + (w[i] - 'a' + 1) % 26);
    }
    out[n] = '\0';
}

/* Held-out words come from another seed and are checked against training. */
static void write_task(const char *path, task_t task, int n, uint64_t seed) {
    FILE *f = fopen(path, "w");
    if (!f) cli_die("%s: cannot write: %s", path, strerror(errno));
    lorac_rng_t rng;
    lorac_rng_seed(&rng, seed);
    char w[8], a[8];
    for (int i = 0; i < n; i++) {
        random_word(&rng, w);
        answer(task, w, a);
        fprintf(f, "{\"prompt\": \"%s>\", \"completion\": \"%s\"}\n", w, a);
    }
    fclose(f);
}

static lorac_train_result_t train(const char *model, const char *data, const char *out, int full, double lr, int64_t steps) {
    lorac_train_params_t p = lorac_train_default_params();
    p.model_dir = model;
    p.data = data;
    p.out_dir = out;
    p.seq = 16;
    p.batch = 32;
    p.steps = steps;
    p.lr = lr;
    p.warmup = steps / 10;
    p.schedule = "cosine";
    p.full = full;
    p.targets = "all-linear";
    p.lora.r = 8;
    p.lora.alpha = 16.0f;
    p.log = NULL;
    lorac_train_result_t r;
    cli_check(lorac_train_run(&p, &r));
    return r;
}

/* Greedy answer to "word>" (stops at EOS or a newline). */
static void generate(const lorac_model_t *m, lorac_context_t *ctx, const char *word, char *out, size_t cap, float *logits) {
    char prompt[16];
    snprintf(prompt, sizeof prompt, "%s>", word);
    int32_t *ids;
    size_t n;
    cli_check(lorac_tokenizer_encode(lorac_model_get_tokenizer(m), prompt, strlen(prompt), true, &ids, &n));
    lorac_context_clear_seq(ctx, 0);
    int32_t pos[16], seq[16] = {0};
    for (size_t i = 0; i < n; i++) pos[i] = (int32_t)i;
    lorac_batch_t b = {.n_tokens = (int32_t)n, .tokens = ids, .pos = pos, .seq_id = seq};
    cli_check(lorac_context_decode(ctx, &b, logits));
    size_t k = 0;
    for (int32_t p = (int32_t)n; k + 1 < cap && p < 32; p++) {
        int32_t best = 0;
        for (int32_t v = 1; v < VOCAB; v++) if (logits[v] > logits[best]) best = v;
        if (best < 2 || CHARS[best - 2] == '\n') break;
        out[k++] = CHARS[best - 2];
        lorac_batch_t nb = {.n_tokens = 1, .tokens = &best, .pos = &p, .seq_id = seq};
        cli_check(lorac_context_decode(ctx, &nb, logits));
    }
    out[k] = '\0';
    free(ids);
}

static int64_t file_size(const char *dir, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    return stat(path, &st) == 0 ? (int64_t)st.st_size : 0;
}

int cmd_demo(int argc, char **argv) {
    const char *out = "build/demo";
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) { fputs(k_usage, stdout); return 0; }
        else if (!strcmp(argv[i], "--out")) out = cli_value(argc, argv, &i, "demo");
        else if (!strcmp(argv[i], "-t") || !strcmp(argv[i], "--threads"))
            lorac_kernels_set_threads((int)cli_int("demo", argv[i], cli_value(argc, argv, &i, "demo"), 1, 1024));
        else cli_usage_error("demo", "unknown option '%s'", argv[i]);
    }
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", out);
    for (char *p = parent + 1; *p; p++)
        if (*p == '/') { *p = '\0'; mkdir(parent, 0755); *p = '/'; }
    if (mkdir(out, 0755) != 0 && errno != EEXIST) cli_die("%s: cannot create: %s", out, strerror(errno));
    char *init = lorac_path_join(out, "init"), *base = lorac_path_join(out, "base");
    char *copy = lorac_path_join(out, "copy.jsonl"), *rev = lorac_path_join(out, "reverse.jsonl");
    char *shift = lorac_path_join(out, "shift.jsonl"), *a_rev = lorac_path_join(out, "adapter-reverse");
    char *a_shift = lorac_path_join(out, "adapter-shift"), *merged = lorac_path_join(out, "merged-reverse");
    if (!init || !base || !copy || !rev || !shift || !a_rev || !a_shift || !merged) cli_die("out of memory");

    printf("lorac demo: LoRA end to end on a model built here from scratch (files in %s/)\n\n", out);
    double t0 = lorac_seconds();
    write_base_model(init, 1);
    write_task(copy, TASK_COPY, 8000, 11);
    write_task(rev, TASK_REVERSE, 8000, 12);
    write_task(shift, TASK_SHIFT, 8000, 13);
    lorac_train_result_t rb = train(init, copy, base, 1, 3e-3, 2500);
    lorac_model_t *model;
    cli_check(lorac_model_load(base, &model));
    printf("1. Base model: a %d-layer Llama (dim %d, %lld parameters), pretrained from random weights with\n"
           "   `train --full` to copy a word:  \"abcd>\" -> \"abcd\".  Loss %.2f -> %.3f in %.0f s.\n\n",
           LAYERS, DIM, (long long)lorac_model_n_params(model), rb.first_loss, rb.last_loss, lorac_seconds() - t0);

    double t1 = lorac_seconds();
    lorac_train_result_t ra = train(base, rev, a_rev, 0, 1e-2, 1500);
    double t2 = lorac_seconds();
    lorac_train_result_t rs = train(base, shift, a_shift, 0, 1e-2, 1500);
    double t3 = lorac_seconds();
    lorac_adapter_t *ad[2];
    cli_check(lorac_adapter_load(a_rev, lorac_model_get_config(model), &ad[0]));
    cli_check(lorac_adapter_load(a_shift, lorac_model_get_config(model), &ad[1]));
    int64_t trainable = lorac_adapter_n_params(ad[0]), full = 0;
    for (int32_t i = 0; i < lorac_adapter_n_modules(ad[0]); i++) {
        const lorac_lora_module_t *m = lorac_adapter_module(ad[0], i);
        full += (int64_t)m->in * m->out;
    }
    printf("2. Two LoRA adapters on the frozen base, r=8 on all seven projections:\n"
           "   trainable r*(in+out) = %lld numbers vs in*out = %lld in the adapted matrices (%.1f%%; %.1f%% of the model)\n"
           "     reverse  \"abcd>\" -> \"dcba\"   loss %.2f -> %.3f in %.0f s\n"
           "     shift    \"abcd>\" -> \"bcde\"   loss %.2f -> %.3f in %.0f s\n"
           "   adapter file %.1f KB vs base model file %.1f KB\n\n",
           (long long)trainable, (long long)full, 100.0 * (double)trainable / (double)full,
           100.0 * (double)trainable / (double)lorac_model_n_params(model), ra.first_loss, ra.last_loss, t2 - t1,
           rs.first_loss, rs.last_loss, t3 - t2, (double)file_size(a_rev, "adapter_model.safetensors") / 1024.0,
           (double)file_size(base, "model.safetensors") / 1024.0);

    /* 3. held-out words, one loaded base, adapters switched per column */
    lorac_context_params_t cp = {.n_ctx = 32, .n_seq = 1, .n_batch = 16};
    lorac_context_t *ctx;
    cli_check(lorac_context_init(model, cp, &ctx));
    float logits[VOCAB];
    const char *names[3] = {"base", "+reverse", "+shift"};
    task_t tasks[3] = {TASK_COPY, TASK_REVERSE, TASK_SHIFT};
    int right[3] = {0};
    const int n_words = 6;
    char words[6][8], got[6][3][32];
    lorac_rng_t rng;
    lorac_rng_seed(&rng, 999);
    double switch_time = 0;
    int switches = 0;
    for (int w = 0; w < n_words; w++) random_word(&rng, words[w]);
    for (int c = 0; c < 3; c++) {
        float one = 1.0f;
        double s0 = lorac_seconds();
        cli_check(lorac_context_set_adapters(ctx, c ? (const lorac_adapter_t *const *)&ad[c - 1] : NULL, &one, c ? 1 : 0));
        switch_time += lorac_seconds() - s0;
        switches++;
        for (int w = 0; w < n_words; w++) {
            generate(model, ctx, words[w], got[w][c], sizeof got[w][c], logits);
            char want[8];
            answer(tasks[c], words[w], want);
            right[c] += !strcmp(want, got[w][c]);
        }
    }
    printf("3. Held-out words (not in any training set), one loaded base, adapter switched per column\n"
           "   (a switch takes %.1f us; no weights are copied):\n     %-9s", 1e6 * switch_time / switches, "prompt");
    for (int c = 0; c < 3; c++) printf(" %-11s", names[c]);
    printf("\n");
    for (int w = 0; w < n_words; w++) {
        printf("     %-9s", words[w]);
        for (int c = 0; c < 3; c++) {
            char want[8];
            answer(tasks[c], words[w], want);
            printf(" %-8s %-2s", got[w][c], strcmp(want, got[w][c]) ? "x" : "ok");
        }
        printf("\n");
    }
    printf("     correct  ");
    for (int c = 0; c < 3; c++) printf(" %d/%d%-8s", right[c], n_words, "");
    printf("\n\n");

    /* 4. merge the reverse adapter into the weights: same answers, tiny logit difference */
    float one = 1.0f;
    cli_check(lorac_merge_write(base, (const lorac_adapter_t *const *)&ad[0], &one, 1, LORAC_DTYPE_COUNT, merged));
    lorac_model_t *mm;
    cli_check(lorac_model_load(merged, &mm));
    lorac_context_t *mctx;
    cli_check(lorac_context_init(mm, cp, &mctx));
    cli_check(lorac_context_set_adapters(ctx, (const lorac_adapter_t *const *)&ad[0], &one, 1));
    int same = 1;
    double max_diff = 0, max_logit = 0;
    for (int w = 0; w < n_words; w++) {
        char a[32], b[32];
        float la[VOCAB], lb[VOCAB];
        generate(model, ctx, words[w], a, sizeof a, la);
        generate(mm, mctx, words[w], b, sizeof b, lb);
        same &= !strcmp(a, b);
        for (int v = 0; v < VOCAB; v++) {
            max_diff = fmax(max_diff, fabs((double)la[v] - lb[v]));
            max_logit = fmax(max_logit, fabs((double)la[v]));
        }
    }
    printf("4. Merged W + s*B*A into a new model directory (%s/): its answers %s the unmerged\n"
           "   base + adapter's (largest logit difference %.2g, on logits up to %.1f).\n\n",
           merged, same ? "equal" : "DIFFER FROM", max_diff, max_logit);
    printf("Done in %.0f s. Try: lorac generate -m %s --adapter %s -p \"lorac>\" --temp 0 -n 8\n", lorac_seconds() - t0, base, a_rev);
    lorac_context_free(mctx);
    lorac_model_free(mm);
    lorac_context_free(ctx);
    lorac_adapter_free(ad[0]);
    lorac_adapter_free(ad[1]);
    lorac_model_free(model);
    free(init); free(base); free(copy); free(rev); free(shift); free(a_rev); free(a_shift); free(merged);
    return same ? 0 : 1;
}
