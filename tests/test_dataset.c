/* Training data (lorac/dataset.h): every format with real tokenizers and real
 * datasets from the fixtures, chat templates against the strings the models'
 * own Jinja templates render, malformed input, truncation, and the batcher's
 * determinism, resume and packing rules.
 *
 * Expected ids are computed independently here: the expected text is written
 * out by hand and encoded whole with lorac_tokenizer_encode (itself checked
 * against HF tokenizers in test_tokenizer), and loss boundaries are the token
 * counts of encoded prefixes of that text. */
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lorac/dataset.h"
#include "lorac/tokenizer.h"
#include "testlib.h"

static lorac_tokenizer_t *g_tl, *g_sm; /* TinyLlama (SentencePiece BPE), SmolLM2 (byte-level, chatml) */
static char g_tl_cfg[1024], g_sm_cfg[1024];

static char *tmp_path(const char *name) {
    static char buf[8][1024];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 1024, "%s/dataset_%s", tl_tmpdir(), name);
    return p;
}

static const char *write_file(const char *name, const char *data, size_t len) {
    const char *path = tmp_path(name);
    FILE *f = fopen(path, "wb");
    if (!f) { fprintf(stderr, "cannot write %s\n", path); exit(1); }
    if (len) fwrite(data, 1, len, f);
    fclose(f);
    return path;
}
#define WRITE(name, lit) write_file(name, lit, sizeof(lit) - 1)

static int32_t *enc(const lorac_tokenizer_t *tok, const char *s, bool special, size_t *n) {
    int32_t *ids = NULL;
    if (lorac_tokenizer_encode(tok, s, strlen(s), special, &ids, n)) {
        fprintf(stderr, "encode failed: %s\n", lorac_error_message());
        exit(1);
    }
    return ids;
}

static size_t enc_len(const lorac_tokenizer_t *tok, const char *s, size_t len, bool special) {
    int32_t *ids = NULL;
    size_t n = 0;
    if (lorac_tokenizer_encode(tok, s, len, special, &ids, &n)) exit(1);
    free(ids);
    return n;
}

static lorac_dataset_t *load_ok(const char *path, const lorac_tokenizer_t *tok, const lorac_dataset_params_t *p) {
    lorac_dataset_t *ds = NULL;
    lorac_status_t s = lorac_dataset_load(path, tok, p, &ds);
    CHECK_MSG(s == LORAC_STATUS_OK, "%s: %s", path, lorac_error_message());
    return ds;
}

/* Example i must be `want` (n ids) with labels -100 outside [lo_k, hi_k) ranges. */
static void check_example(const lorac_dataset_t *ds, int64_t i, const int32_t *want, size_t n, const size_t *ranges,
                          size_t n_ranges, const char *what) {
    const int32_t *t, *l;
    int32_t len = lorac_dataset_example(ds, i, &t, &l);
    CHECK_MSG(len == (int32_t)n, "%s: %d tokens, want %zu", what, len, n);
    if (len != (int32_t)n) return;
    int bad_tok = 0, bad_lab = 0;
    for (size_t k = 0; k < n; k++) {
        bool in = false;
        for (size_t r = 0; r < n_ranges; r++) in = in || (k >= ranges[2 * r] && k < ranges[2 * r + 1]);
        if (t[k] != want[k]) bad_tok++;
        if (l[k] != (in ? want[k] : -100)) bad_lab++;
    }
    CHECK_MSG(bad_tok == 0, "%s: %d tokens differ", what, bad_tok);
    CHECK_MSG(bad_lab == 0, "%s: %d labels differ", what, bad_lab);
}

/* ids of `s` (+ EOS when eos >= 0) */
static int32_t *with_eos(const lorac_tokenizer_t *tok, const char *s, bool special, int32_t eos, size_t *n) {
    int32_t *ids = enc(tok, s, special, n);
    if (eos >= 0) {
        ids = realloc(ids, sizeof(int32_t) * (*n + 1));
        ids[(*n)++] = eos;
    }
    return ids;
}

/* Example i must be the text example `s`: all of encode(s) + EOS in the loss. */
static void check_text_example(const lorac_dataset_t *ds, int64_t i, const lorac_tokenizer_t *tok, const char *s,
                               int32_t eos, const char *what) {
    size_t n;
    int32_t *w = with_eos(tok, s, true, eos, &n);
    size_t all[2] = {0, n};
    check_example(ds, i, w, n, all, 1, what);
    free(w);
}

/* ---- formats ---- */
static void test_text(void) {
    lorac_dataset_params_t p = lorac_dataset_default_params();
    const char *path = WRITE("text.jsonl", "{\"text\": \"Hello world, this is a test.\"}\n\n  \n{\"text\": \"Second \\u00e9 line\", \"id\": 7}\n");
    lorac_dataset_t *ds = load_ok(path, g_tl, &p);
    if (!ds) return;
    CHECK(lorac_dataset_n_examples(ds) == 2);
    CHECK(lorac_dataset_format(ds) == LORAC_DATA_TEXT);
    size_t n;
    int32_t *w = with_eos(g_tl, "Hello world, this is a test.", true, 2, &n);
    CHECK(w[0] == 1); /* TinyLlama's post-processor adds <s> */
    size_t all[2] = {0, n};
    check_example(ds, 0, w, n, all, 1, "text/tinyllama 0");
    free(w);
    w = with_eos(g_tl, "Second \xc3\xa9 line", true, 2, &n);
    all[1] = n;
    check_example(ds, 1, w, n, all, 1, "text/tinyllama 1");
    free(w);
    lorac_dataset_free(ds);

    /* SmolLM2: no BOS; EOS from tokenizer_config.json is <|im_end|> */
    p.tokenizer_config = g_sm_cfg;
    ds = load_ok(path, g_sm, &p);
    if (!ds) return;
    w = with_eos(g_sm, "Hello world, this is a test.", true, lorac_tokenizer_token_id(g_sm, "<|im_end|>"), &n);
    all[1] = n;
    check_example(ds, 0, w, n, all, 1, "text/smollm2");
    CHECK(lorac_dataset_pad_id(ds) == lorac_tokenizer_token_id(g_sm, "<|im_end|>"));
    free(w);
    lorac_dataset_free(ds);

    p = lorac_dataset_default_params();
    p.add_eos = false;
    ds = load_ok(path, g_tl, &p);
    if (ds) {
        w = enc(g_tl, "Hello world, this is a test.", true, &n);
        all[1] = n;
        check_example(ds, 0, w, n, all, 1, "text without eos");
        free(w);
        lorac_dataset_free(ds);
    }
}

/* prompt + response encoded whole; prompt = first len(encode(prompt)) tokens */
static void check_prompt_response(const lorac_dataset_t *ds, int64_t i, const lorac_tokenizer_t *tok, const char *prompt,
                                  const char *response, bool train_on_inputs, const char *what) {
    size_t len = strlen(prompt) + strlen(response) + 1, n;
    char *whole = malloc(len);
    snprintf(whole, len, "%s%s", prompt, response);
    int32_t *w = with_eos(tok, whole, true, lorac_tokenizer_eos_id(tok), &n);
    size_t r[2] = {train_on_inputs ? 0 : enc_len(tok, prompt, strlen(prompt), true), n};
    check_example(ds, i, w, n, r, 1, what);
    free(w);
    free(whole);
}

static void test_completion(void) {
    const char *path = WRITE("completion.jsonl",
                             "{\"prompt\": \"Q: What is the capital of France?\\nA:\", \"completion\": \" Paris.\"}\n"
                             "{\"prompt\": \"\", \"completion\": \"Only a completion\"}\n");
    for (int toi = 0; toi < 2; toi++) {
        lorac_dataset_params_t p = lorac_dataset_default_params();
        p.train_on_inputs = toi;
        lorac_dataset_t *ds = load_ok(path, g_tl, &p);
        if (!ds) return;
        CHECK(lorac_dataset_format(ds) == LORAC_DATA_COMPLETION);
        check_prompt_response(ds, 0, g_tl, "Q: What is the capital of France?\nA:", " Paris.", toi, "completion 0");
        check_prompt_response(ds, 1, g_tl, "", "Only a completion", toi, "completion 1");
        /* one string: " Paris." is "▁Paris", not "▁" "▁Paris" as a separate encode would give */
        const int32_t *t, *l;
        int32_t n = lorac_dataset_example(ds, 0, &t, &l);
        size_t np;
        int32_t *paris = enc(g_tl, " Paris.", false, &np);
        CHECK(n > 3 && t[n - 3] != paris[0]);
        free(paris);
        lorac_dataset_free(ds);
    }
}

static const char k_alpaca_in[] =
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n### Instruction:\nTranslate to French.\n\n### Input:\n"
    "Good morning\n\n### Response:\n";
static const char k_alpaca_noin[] =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nName a color.\n\n### Response:\n";

static void test_alpaca(void) {
    const char *path = WRITE("alpaca.jsonl",
                             "{\"instruction\": \"Translate to French.\", \"input\": \"Good morning\", \"output\": \"Bonjour\"}\n"
                             "{\"instruction\": \"Name a color.\", \"input\": \"\", \"output\": \"Blue\"}\n"
                             "{\"instruction\": \"Name a color.\", \"output\": \"Blue\"}\n"
                             "{\"instruction\": \"Name a color.\", \"input\": null, \"output\": \"Blue\"}\n");
    lorac_dataset_params_t p = lorac_dataset_default_params();
    lorac_dataset_t *ds = load_ok(path, g_sm, &p);
    if (!ds) return;
    CHECK(lorac_dataset_format(ds) == LORAC_DATA_ALPACA);
    CHECK(lorac_dataset_n_examples(ds) == 4);
    check_prompt_response(ds, 0, g_sm, k_alpaca_in, "Bonjour", false, "alpaca with input");
    for (int i = 1; i < 4; i++) check_prompt_response(ds, i, g_sm, k_alpaca_noin, "Blue", false, "alpaca without input");
    lorac_dataset_free(ds);

    /* the real Alpaca releases: JSON arrays */
    char fx[1024];
    const char *files[2] = {"alpaca_data_1k.json", "alpaca_en_demo.json"};
    int64_t counts[2] = {1000, 999};
    for (int f = 0; f < 2; f++) {
        snprintf(fx, sizeof fx, "%s/datasets/alpaca/%s", tl_fixtures(), files[f]);
        p.seq_len = 4096;
        ds = load_ok(fx, g_tl, &p);
        if (!ds) continue;
        CHECK_MSG(lorac_dataset_n_examples(ds) == counts[f], "%s: %lld examples", files[f],
                  (long long)lorac_dataset_n_examples(ds));
        CHECK(lorac_dataset_n_truncated(ds) == 0 && lorac_dataset_n_skipped(ds) == 0);
        CHECK(lorac_dataset_n_trainable(ds) > 0 && lorac_dataset_n_trainable(ds) < lorac_dataset_n_tokens(ds));
        lorac_dataset_free(ds);
    }
    /* the first record of alpaca_data_1k, rebuilt here */
    snprintf(fx, sizeof fx, "%s/datasets/alpaca/alpaca_data_1k.json", tl_fixtures());
    p.seq_len = 4096;
    ds = load_ok(fx, g_tl, &p);
    if (ds) {
        check_prompt_response(ds, 0, g_tl,
                              "Below is an instruction that describes a task. Write a response that appropriately "
                              "completes the request.\n\n### Instruction:\nRe-write the following sentence, making it "
                              "more concise:\n \nThe two were walking together, and they were going to a nearby "
                              "store.\n\n### Response:\n",
                              "They walked to a nearby store.", false, "alpaca_data_1k[0]");
        lorac_dataset_free(ds);
    }
    p.seq_len = 64; /* long answers get cut to seq_len + 1 */
    ds = load_ok(fx, g_tl, &p);
    if (ds) {
        CHECK(lorac_dataset_n_truncated(ds) > 0);
        const int32_t *t, *l;
        int32_t maxn = 0;
        for (int64_t i = 0; i < lorac_dataset_n_examples(ds); i++) {
            int32_t n = lorac_dataset_example(ds, i, &t, &l);
            if (n > maxn) maxn = n;
        }
        CHECK(maxn == 65);
        lorac_dataset_free(ds);
    }
}

/* ---- chat ---- */
static const lorac_chat_message_t k_sys = {"system", "You are helpful."};
static const lorac_chat_message_t k_conv[4] = {
    {"user", "Hi there"},
    {"assistant", "Hello! How can I help?"},
    {"user", "Tell me a joke."},
    {"assistant", "Why did the chicken cross the road?"},
};

/* What jinja2 renders (trim_blocks, lstrip_blocks, as transformers does) from
 * the real templates: TinyLlama's tokenizer_config.json (zephyr), SmolLM2's
 * chat_template.jinja and Qwen2.5 (chatml), Llama 2's, Meta-Llama-3's, and the
 * Llama 3.1 / 3.2 fixtures (llama-3.1), for [system] + k_conv. */
static const char k_zephyr[] =
    "<|system|>\nYou are helpful.</s>\n<|user|>\nHi there</s>\n<|assistant|>\nHello! How can I help?</s>\n"
    "<|user|>\nTell me a joke.</s>\n<|assistant|>\nWhy did the chicken cross the road?</s>\n";
static const char k_chatml[] =
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    "Hello! How can I help?<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n"
    "Why did the chicken cross the road?<|im_end|>\n";
static const char k_chatml_smol_default[] =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    "Hello! How can I help?<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n"
    "Why did the chicken cross the road?<|im_end|>\n";
static const char k_llama2[] =
    "<s>[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nHi there [/INST] Hello! How can I help? </s>"
    "<s>[INST] Tell me a joke. [/INST] Why did the chicken cross the road? </s>";
static const char k_mistral_v01[] =
    "<s>[INST] Hi there [/INST]Hello! How can I help?</s> [INST] Tell me a joke. [/INST]"
    "Why did the chicken cross the road?</s> ";
static const char k_mistral_v02[] =
    "<s>[INST] Hi there [/INST]Hello! How can I help?</s>[INST] Tell me a joke. [/INST]"
    "Why did the chicken cross the road?</s>";
static const char k_mistral_v1[] =
    "<s> [INST] You are helpful.\n\nHi there [/INST] Hello! How can I help?</s> [INST] Tell me a joke. [/INST]"
    " Why did the chicken cross the road?</s>";
static const char k_llama3[] =
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    "Hello! How can I help?<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nWhy did the chicken cross the road?<|eot_id|>";
static const char k_llama31[] =
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n\nYou are helpful.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    "Hello! How can I help?<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nWhy did the chicken cross the road?<|eot_id|>";
static const char k_llama31_nosys[] =
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
    "Today Date: 26 Jul 2024\n\n<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    "Hello! How can I help?<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nWhy did the chicken cross the road?<|eot_id|>";

static void check_render(const char *tpl, const char *def_sys, bool with_sys, const char *want) {
    lorac_chat_message_t m[5];
    size_t n = 0;
    if (with_sys) m[n++] = k_sys;
    for (int i = 0; i < 4; i++) m[n++] = k_conv[i];
    char *out = NULL;
    size_t len = 0;
    lorac_status_t s = lorac_dataset_chat_render(tpl, def_sys, m, n, NULL, NULL, &out, &len);
    CHECK_MSG(s == LORAC_STATUS_OK, "%s: %s", tpl, lorac_error_message());
    CHECK_MSG(out && len == strlen(want) && !strcmp(out, want), "%s renders\n%s\nwant\n%s", tpl, out ? out : "", want);
    free(out);
}

static void test_chat_render(void) {
    /* where a reply ends: the marker after each assistant turn in the renderings above */
    CHECK(!strcmp(lorac_dataset_chat_end_of_turn("chatml", "</s>"), "<|im_end|>"));
    CHECK(!strcmp(lorac_dataset_chat_end_of_turn("llama-3", "<|end_of_text|>"), "<|eot_id|>"));
    CHECK(!strcmp(lorac_dataset_chat_end_of_turn("llama3.2", NULL), "<|eot_id|>"));
    CHECK(!strcmp(lorac_dataset_chat_end_of_turn("zephyr", "<|endoftext|>"), "<|endoftext|>"));
    CHECK(!strcmp(lorac_dataset_chat_end_of_turn("llama-2", NULL), "</s>"));
    CHECK(!strcmp(lorac_dataset_chat_end_of_turn("gemma", "<eos>"), "<end_of_turn>"));
    CHECK(!strcmp(lorac_dataset_chat_end_of_turn("gemma3", NULL), "<end_of_turn>"));
    CHECK(!strcmp(lorac_dataset_chat_end_of_turn("phi-3", "</s>"), "<|end|>"));
    CHECK(!strcmp(lorac_dataset_chat_end_of_turn("phi-4", "</s>"), "<|im_end|>"));
    CHECK(!strcmp(lorac_dataset_chat_end_of_turn("phi-4-mini", "</s>"), "<|end|>"));
    CHECK(lorac_dataset_chat_end_of_turn("granite", "</s>") == NULL); /* not a template lorac renders */
    check_render("zephyr", NULL, true, k_zephyr);
    check_render("chatml", NULL, true, k_chatml);
    check_render("chatml", "You are a helpful AI assistant named SmolLM, trained by Hugging Face", false,
                 k_chatml_smol_default);
    check_render("chatml", "ignored when there is a system message", true, k_chatml);
    check_render("llama-2", NULL, true, k_llama2);
    check_render("llama-3", NULL, true, k_llama3);
    check_render("llama-3.1", NULL, true, k_llama31);
    check_render("llama3.2", NULL, false, k_llama31_nosys);
    /* contents are stripped by llama-2/3 (Jinja trim / .strip()), not by chatml */
    lorac_chat_message_t m[2] = {{"user", "  hi \n"}, {"assistant", "\tyo  "}};
    char *out;
    CHECK(lorac_dataset_chat_render("llama-2", NULL, m, 2, NULL, NULL, &out, NULL) == 0 &&
          !strcmp(out, "<s>[INST] hi [/INST] yo </s>"));
    free(out);
    CHECK(lorac_dataset_chat_render("chatml", NULL, m, 2, NULL, NULL, &out, NULL) == 0 &&
          !strcmp(out, "<|im_start|>user\n  hi \n<|im_end|>\n<|im_start|>assistant\n\tyo  <|im_end|>\n"));
    free(out);
    /* refusals */
    lorac_chat_message_t bad[2] = {{"user", "a"}, {"user", "b"}};
    CHECK(lorac_dataset_chat_render("llama-2", NULL, bad, 2, NULL, NULL, &out, NULL) == LORAC_STATUS_FORMAT);
    CHECK(strstr(lorac_error_message(), "alternate") != NULL);
    lorac_chat_message_t robot[1] = {{"robot", "a"}};
    CHECK(lorac_dataset_chat_render("chatml", NULL, robot, 1, NULL, NULL, &out, NULL) == LORAC_STATUS_FORMAT);
    CHECK(strstr(lorac_error_message(), "unknown role") != NULL);
    CHECK(lorac_dataset_chat_render("vicuna", NULL, m, 2, NULL, NULL, &out, NULL) == LORAC_STATUS_INVALID_ARG);
    CHECK(lorac_dataset_chat_template_name("llama2") && !strcmp(lorac_dataset_chat_template_name("llama2"), "llama-2"));
    CHECK(lorac_dataset_chat_template_name("nope") == NULL);
}

static char *read_all(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "cannot read %s\n", path); exit(1); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (fread(s, 1, (size_t)n, f) != (size_t)n) exit(1);
    s[n] = '\0';
    fclose(f);
    return s;
}

/* A chat template by its golden-file path: under the fixtures, or, for
 * models not among them, tests/data/chat/templates/ in the source tree. */
static char *read_template(const char *file) {
    if (!strncmp(file, "tests/", 6)) return tl_read_source(file, NULL);
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", tl_fixtures(), file);
    return read_all(path);
}

/* A template file with text written before and after it (malloc'd). */
static char *wrapped_template(const char *file, const char *before, const char *after) {
    char *t = read_template(file);
    size_t n = strlen(before) + strlen(t) + strlen(after) + 1;
    char *w = malloc(n);
    snprintf(w, n, "%s%s%s", before, t, after);
    free(t);
    return w;
}

static void test_chat_recognize(void) {
    const char *name;
    char *def = NULL;
    CHECK(lorac_dataset_chat_template_from_config(g_tl_cfg, &name, &def) == LORAC_STATUS_OK && !strcmp(name, "zephyr") && !def);
    /* SmolLM2's tokenizer_config.json has no chat_template: chat_template.jinja beside it */
    CHECK(lorac_dataset_chat_template_from_config(g_sm_cfg, &name, &def) == LORAC_STATUS_OK && !strcmp(name, "chatml"));
    CHECK(def && !strcmp(def, "You are a helpful AI assistant named SmolLM, trained by Hugging Face"));
    free(def);
    static const struct { const char *file, *name, *def; } cases[] = {
        {"chat-templates/Qwen-Qwen2.5-7B-Instruct.jinja", "chatml",
         "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."},
        {"chat-templates/meta-llama-Llama-3.1-8B-Instruct.jinja", "llama-3.1", NULL},
        {"chat-templates/meta-llama-Llama-3.2-3B-Instruct.jinja", "llama-3.1", NULL},
        {"tokenizers/llama3.2/chat_template.jinja", "llama-3.1", NULL},
        {"chat-templates/google-gemma-2-2b-it.jinja", "gemma", NULL},
        {"tests/data/chat/templates/gemma3.jinja", "gemma3", NULL},
        {"chat-templates/microsoft-Phi-3.5-mini-instruct.jinja", "phi3", NULL},
        {"chat-templates/mistralai-Mistral-Nemo-Instruct-2407.jinja", "mistral", NULL},
        {"tests/data/chat/templates/mistral-7b-instruct-v0.1.jinja", "mistral-v0.1", NULL},
        {"tests/data/chat/templates/mixtral-8x7b-instruct-v0.1.jinja", "mistral-v0.2", NULL},
        {"tests/data/chat/templates/mistral-instruct-v1.jinja", "mistral-v1", NULL},
        {"tests/data/chat/templates/mistral-7b-instruct-v0.3.jinja", "mistral-v3", NULL},
        {"tests/data/chat/templates/qwen3.jinja", "qwen3", NULL},
        {"tests/data/chat/templates/phi4.jinja", "phi4", NULL},
        {"tests/data/chat/templates/phi4-unsloth.jinja", "phi4-unsloth", NULL},
        {"tests/data/chat/templates/phi4-mini.jinja", "phi4-mini", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *jinja = read_template(cases[i].file);
        def = NULL;
        lorac_status_t s = lorac_dataset_chat_template_recognize(jinja, &name, &def);
        if (cases[i].name) {
            CHECK_MSG(s == 0 && !strcmp(name, cases[i].name), "%s: %s", cases[i].file, s ? lorac_error_message() : name);
            CHECK_MSG(cases[i].def ? def && !strcmp(def, cases[i].def) : !def, "%s default system: %s", cases[i].file,
                      def ? def : "(none)");
        } else {
            CHECK_MSG(s == LORAC_STATUS_UNSUPPORTED && strstr(lorac_error_message(), "--chat-template"), "%s: %d %s",
                      cases[i].file, s, lorac_error_message());
        }
        free(def);
        free(jinja);
    }
    /* Phi-3 templates other than Phi-3.5's exactly: with a BOS, or writing empty system messages */
    char *phi = read_template("chat-templates/microsoft-Phi-3.5-mini-instruct.jinja");
    size_t phi_len = strlen(phi);
    char *variant = wrapped_template("chat-templates/microsoft-Phi-3.5-mini-instruct.jinja", "{{ bos_token }}", "");
    CHECK(lorac_dataset_chat_template_recognize(variant, &name, &def) == LORAC_STATUS_UNSUPPORTED &&
          strstr(lorac_error_message(), "a Phi template other than Phi-3.5's"));
    char *cut = strstr(phi, " and message['content']");
    CHECK(cut != NULL);
    if (cut) {
        memmove(cut, cut + strlen(" and message['content']"), strlen(cut + strlen(" and message['content']")) + 1);
        CHECK(lorac_dataset_chat_template_recognize(phi, &name, &def) == LORAC_STATUS_UNSUPPORTED &&
              strstr(lorac_error_message(), "a Phi template other than Phi-3.5's"));
    }
    /* Phi-4's with anything changed (a BOS, the header moved) is not ChatML's and not Phi-4's: refused */
    char *phi4 = wrapped_template("tests/data/chat/templates/phi4.jinja", "{{ bos_token }}", "\n");
    CHECK(lorac_dataset_chat_template_recognize(phi4, &name, &def) == LORAC_STATUS_UNSUPPORTED &&
          strstr(lorac_error_message(), "a Phi-4 template (<|im_sep|>) other than microsoft/phi-4's"));
    free(phi4);
    phi4 = wrapped_template("tests/data/chat/templates/phi4.jinja", "\n", "\n"); /* whitespace around: the same */
    CHECK(lorac_dataset_chat_template_recognize(phi4, &name, &def) == LORAC_STATUS_OK && !strcmp(name, "phi4"));
    free(phi4);
    /* the same template with Jinja's \n escapes where the fixture has newlines renders the same: recognised */
    char *escaped = malloc(2 * phi_len + 1), *e = escaped;
    char *orig = read_template("chat-templates/microsoft-Phi-3.5-mini-instruct.jinja");
    for (const char *q = orig; *q; q++) {
        if (*q == '\n') *e++ = '\\', *e++ = 'n';
        else *e++ = *q;
    }
    *e = '\0';
    CHECK_MSG(lorac_dataset_chat_template_recognize(escaped, &name, &def) == LORAC_STATUS_OK && !strcmp(name, "phi3"),
              "escaped Phi-3.5 template: %s", lorac_error_message());
    free(escaped);
    free(orig);
    free(variant);
    free(phi);
    /* v0.3's template as a copy quotes it with the system message in the last user turn whether or not the
     * conversation ends there ("message == user_messages[-1]", which also matches an earlier user turn of the
     * same content), and one without the replies' trim: neither renders as v0.3's, NeMo's or v0.1's: refused */
    static const char v3_user_last[] =
        "{{- bos_token }}\n{%- for message in loop_messages %}\n{%- if (message == user_messages[-1]) and "
        "system_message is defined %}\n{{- \"[INST] \" + system_message + \"\\n\\n\" + message[\"content\"] + "
        "\"[/INST]\" }}\n{%- else %}\n{{- \"[INST] \" + message[\"content\"] + \"[/INST]\" }}\n{%- endif %}\n"
        "{%- if not loop.last %}{%- endif %}\n{{- \" \" + message[\"content\"]|trim + eos_token}}";
    static const char v3_untrimmed[] =
        "{{- bos_token }}\n{%- for message in loop_messages %}\n{%- if loop.last and system_message is defined %}\n"
        "{{- \"[INST] \" + system_message + \"\\n\\n\" + message[\"content\"] + \"[/INST]\" }}\n{%- else %}\n"
        "{{- \"[INST] \" + message[\"content\"] + \"[/INST]\" }}\n{%- endif %}\n{{- \" \" + message[\"content\"] + "
        "eos_token}}";
    CHECK(lorac_dataset_chat_template_recognize(v3_user_last, &name, NULL) == LORAC_STATUS_UNSUPPORTED &&
          strstr(lorac_error_message(), "other than NeMo's"));
    CHECK(lorac_dataset_chat_template_recognize(v3_untrimmed, &name, NULL) == LORAC_STATUS_UNSUPPORTED &&
          strstr(lorac_error_message(), "other than NeMo's"));
    /* Qwen3's with a reply's reasoning kept before the last question too (a public fork's
     * "loop.index0 > ns.last_query_index or reasoning_content"), and QwQ's way (reasoning always dropped,
     * "<think>\n" opening the generation prompt): <think> templates that are not Qwen3's are refused, not
     * rendered as plain ChatML */
    char *q3 = read_template("tests/data/chat/templates/qwen3.jinja");
    char *fork = q3 ? malloc(strlen(q3) + 64) : NULL;
    const char *at = q3 ? strstr(q3, "ns.last_query_index %}") : NULL;
    CHECK(fork && at);
    if (fork && at) {
        size_t k = (size_t)(at - q3) + strlen("ns.last_query_index");
        snprintf(fork, strlen(q3) + 64, "%.*s or reasoning_content%s", (int)k, q3, q3 + k);
        CHECK(lorac_dataset_chat_template_recognize(fork, &name, NULL) == LORAC_STATUS_UNSUPPORTED &&
              strstr(lorac_error_message(), "<think> blocks other than Qwen3's") &&
              strstr(lorac_error_message(), "--chat-template"));
    }
    /* a derived one (a Qwen3 fine-tune's GGUF) whose generation prompt always closes an empty thinking block */
    static const char gen_if[] = "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
                                 "        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}\n";
    at = q3 ? strstr(q3, gen_if) : NULL;
    CHECK(fork && at);
    if (fork && at) {
        snprintf(fork, strlen(q3) + 64, "%.*s    {{- '<think>\\n\\n</think>\\n\\n' }}\n%s", (int)(at - q3), q3,
                 at + strlen(gen_if));
        CHECK(lorac_dataset_chat_template_recognize(fork, &name, NULL) == LORAC_STATUS_UNSUPPORTED);
        CHECK(strstr(fork, "enable_thinking") == NULL);
    }
    free(fork);
    free(q3);
    /* Gemma 3's with the system message and a single newline before the first turn (a GGUF's copy): refused */
    char *g3 = read_template("tests/data/chat/templates/gemma3.jinja");
    const char *two = g3 ? strstr(g3, "'\\n\\n' -%}") : NULL;
    CHECK(two);
    if (two) {
        char *one = malloc(strlen(g3) + 1);
        snprintf(one, strlen(g3) + 1, "%.*s'\\n' -%%}%s", (int)(two - g3), g3, two + strlen("'\\n\\n' -%}"));
        CHECK(lorac_dataset_chat_template_recognize(one, &name, NULL) == LORAC_STATUS_UNSUPPORTED &&
              strstr(lorac_error_message(), "a Gemma template other than Gemma 2's and 3's"));
        free(one);
    }
    free(g3);
    CHECK(lorac_dataset_chat_template_recognize(
              "{%- for message in messages %}{%- if message.role == \"assistant\" %}{%- set content = "
              "message.content.split('</think>')[-1].lstrip('\\n') %}{{- '<|im_start|>' + message.role + '\\n' + content + "
              "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
              "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}",
              &name, NULL) == LORAC_STATUS_UNSUPPORTED);
    /* v0.1's, with a system role added by hand: not v0.1's any more */
    CHECK(lorac_dataset_chat_template_recognize("{{ bos_token }}{% for message in messages %}{% if message['role'] == "
                                                "'system' %}{{ message['content'] }}{% elif message['role'] == 'user' %}"
                                                "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
                                                "'assistant' %}{{ message['content'] + eos_token + ' ' }}{% endif %}{% endfor %}",
                                                &name, NULL) == LORAC_STATUS_UNSUPPORTED);
    /* Llama 2's and Meta-Llama-3's templates as HF shipped them */
    CHECK(lorac_dataset_chat_template_recognize("{% if messages[0]['role'] == 'system' %}...{{ bos_token + '[INST] ' + "
                                                "content.strip() + ' [/INST]' }}...'<<SYS>>\\n'", &name, NULL) == 0 &&
          !strcmp(name, "llama-2"));
    CHECK(lorac_dataset_chat_template_recognize("{% set content = '<|start_header_id|>' + message['role'] + "
                                                "'<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}",
                                                &name, NULL) == 0 && !strcmp(name, "llama-3"));
    /* a config without any template (and no chat_template.jinja beside it) */
    const char *cfg = WRITE("notpl_tokenizer_config.json", "{\"eos_token\": \"</s>\"}");
    CHECK(lorac_dataset_chat_template_from_config(cfg, &name, &def) == LORAC_STATUS_UNSUPPORTED &&
          strstr(lorac_error_message(), "no chat_template") && strstr(lorac_error_message(), "--chat-template"));
}

/* The real templates of the fixtures, recognised and rendered by lorac,
 * against what jinja2 renders from them (tests/data/chat/golden.json, from
 * tests/reference/gen_chat_golden.py) over several conversations, with and
 * without the generation prompt. */
static void test_chat_golden(void) {
    static const struct { const char *golden, *lorac; } names[] = {
        {"qwen2.5", "chatml"}, {"smollm2", "chatml"}, {"tinyllama", "zephyr"},
        {"llama-3.1", "llama-3.1"}, {"llama-3.2", "llama-3.1"}, {"mistral-nemo", "mistral"},
        {"mistral-v0.1", "mistral-v0.1"}, {"mistral-v0.2", "mistral-v0.2"}, {"mistral-v1", "mistral-v1"},
        {"mistral-v3", "mistral-v3"}, {"qwen3", "qwen3"}, {"gemma-2", "gemma"}, {"gemma-3", "gemma3"},
        {"phi-3.5", "phi3"}, {"phi-4", "phi4"}, {"phi-4-unsloth", "phi4-unsloth"},
        {"phi-4-mini", "phi4-mini"},
    };
    char *text = tl_read_source("tests/data/chat/golden.json", NULL);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    const cJSON *cases = cJSON_GetObjectItem(root, "cases"), *c;
    CHECK_MSG(cJSON_GetArraySize(cases) >= 50, "tests/data/chat/golden.json: %d cases", cJSON_GetArraySize(cases));
    int n_done = 0, n_refused = 0;
    cJSON_ArrayForEach(c, cases) {
        const char *tname = cJSON_GetObjectItem(c, "template")->valuestring;
        const char *file = cJSON_GetObjectItem(c, "file")->valuestring;
        const cJSON *key = cJSON_GetObjectItem(c, "key"), *bos = cJSON_GetObjectItem(c, "bos"),
                    *eos = cJSON_GetObjectItem(c, "eos");
        char fx[1200], what[300];
        snprintf(fx, sizeof fx, "%s/%s", tl_fixtures(), file);
        snprintf(what, sizeof what, "%s, %s%s%s", tname, cJSON_GetObjectItem(c, "conversation")->valuestring,
                 cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt")) ? ", generation prompt" : "",
                 cJSON_IsFalse(cJSON_GetObjectItem(c, "enable_thinking")) ? ", enable_thinking false" : "");
        const char *name = NULL;
        char *def = NULL;
        lorac_status_t s;
        if (cJSON_IsString(key)) {
            s = lorac_dataset_chat_template_from_config(fx, &name, &def);
        } else {
            char *jinja = read_template(file);
            s = lorac_dataset_chat_template_recognize(jinja, &name, &def);
            free(jinja);
        }
        const char *want_name = NULL;
        for (size_t i = 0; i < sizeof names / sizeof *names; i++)
            if (!strcmp(names[i].golden, tname)) want_name = names[i].lorac;
        CHECK_MSG(s == LORAC_STATUS_OK && want_name && !strcmp(name, want_name), "%s: recognised as %s (%s)", what,
                  s ? "nothing" : name, s ? lorac_error_message() : "");
        if (s) { free(def); continue; }
        const cJSON *msgs = cJSON_GetObjectItem(c, "messages"), *m;
        lorac_chat_message_t conv[8];
        size_t n = 0;
        cJSON_ArrayForEach(m, msgs) {
            if (n == 8) break;
            conv[n].role = cJSON_GetObjectItem(m, "role")->valuestring;
            conv[n++].content = cJSON_GetObjectItem(m, "content")->valuestring;
        }
        char *out = NULL;
        size_t len = 0;
        const char *b = cJSON_IsString(bos) ? bos->valuestring : NULL, *e = cJSON_IsString(eos) ? eos->valuestring : NULL;
        s = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"))
                ? lorac_dataset_chat_render_generation(name, def, conv, n, b, e,
                                                       !cJSON_IsFalse(cJSON_GetObjectItem(c, "enable_thinking")), &out,
                                                       &len)
                : lorac_dataset_chat_render(name, def, conv, n, b, e, &out, &len);
        if (cJSON_IsTrue(cJSON_GetObjectItem(c, "refused"))) { /* raise_exception in the template */
            CHECK_MSG(s == LORAC_STATUS_FORMAT, "%s: jinja2 refuses it, lorac renders\n%s", what, s ? "" : out);
            n_done += s == LORAC_STATUS_FORMAT;
            n_refused++;
            free(out);
            free(def);
            continue;
        }
        const char *want = cJSON_GetObjectItem(c, "text")->valuestring;
        CHECK_MSG(s == LORAC_STATUS_OK && len == strlen(want) && !strcmp(out, want), "%s: lorac renders\n%s\njinja2\n%s",
                  what, s ? lorac_error_message() : out, want);
        n_done += s == LORAC_STATUS_OK;
        free(out);
        free(def);
    }
    CHECK(n_done == cJSON_GetArraySize(cases));
    CHECK_MSG(n_refused >= 20, "%d refused cases", n_refused);
    cJSON_Delete(root);
}

/* token ranges of the assistant replies (content + end marker) in `text`,
 * from the token counts of encoded prefixes */
static size_t reply_ranges(const lorac_tokenizer_t *tok, const char *text, const char *open, const char *close,
                           size_t *ranges) {
    size_t n = 0;
    for (const char *p = strstr(text, open); p; p = strstr(p, open)) {
        const char *a = p + strlen(open), *b = strstr(a, close) + strlen(close);
        ranges[2 * n] = enc_len(tok, text, (size_t)(a - text), false);
        ranges[2 * n + 1] = enc_len(tok, text, (size_t)(b - text), false);
        n++;
        p = b;
    }
    return n;
}

static void conv_jsonl(char *buf, size_t cap, bool with_sys) {
    snprintf(buf, cap,
             "{\"messages\": [%s{\"role\": \"user\", \"content\": \"Hi there\"}, {\"role\": \"assistant\", \"content\": "
             "\"Hello! How can I help?\"}, {\"role\": \"user\", \"content\": \"Tell me a joke.\"}, {\"role\": "
             "\"assistant\", \"content\": \"Why did the chicken cross the road?\"}]}\n",
             with_sys ? "{\"role\": \"system\", \"content\": \"You are helpful.\"}, " : "");
}

/* The first record of `jsonl` must render to want_text, with the loss on
 * the replies between `open` and `close` (or everywhere with
 * train_on_inputs). */
static void check_chat_jsonl(const char *file, const char *jsonl, const lorac_tokenizer_t *tok, const char *tpl,
                             const char *cfg, const char *want_text, const char *open, const char *close,
                             const char *want_name) {
    const char *path = write_file(file, jsonl, strlen(jsonl));
    for (int toi = 0; toi < 2; toi++) {
        lorac_dataset_params_t p = lorac_dataset_default_params();
        p.chat_template = tpl;
        p.tokenizer_config = cfg;
        p.train_on_inputs = toi;
        lorac_dataset_t *ds = load_ok(path, tok, &p);
        if (!ds) return;
        CHECK(lorac_dataset_format(ds) == LORAC_DATA_CHAT);
        CHECK_MSG(!strcmp(lorac_dataset_chat_template(ds), want_name), "%s: template %s", file, lorac_dataset_chat_template(ds));
        size_t n, r[8];
        int32_t *w = enc(tok, want_text, false, &n);
        size_t nr = toi ? 1 : reply_ranges(tok, want_text, open, close, r);
        if (toi) { r[0] = 0; r[1] = n; }
        CHECK(nr >= 1);
        check_example(ds, 0, w, n, r, nr, file);
        free(w);
        lorac_dataset_free(ds);
    }
}

static void check_chat(const char *file, const lorac_tokenizer_t *tok, const char *tpl, const char *cfg, bool with_sys,
                       const char *want_text, const char *open, const char *close, const char *want_name) {
    char buf[1024];
    conv_jsonl(buf, sizeof buf, with_sys);
    check_chat_jsonl(file, buf, tok, tpl, cfg, want_text, open, close, want_name);
}

/* ShareGPT records ({"conversations": [{"from", "value"}]}, human/gpt) and
 * the top-level "system" string render as the same conversation does. */
static void test_sharegpt(void) {
    static const char k_turns[] =
        "{\"from\": \"human\", \"value\": \"Hi there\"}, {\"from\": \"gpt\", \"value\": \"Hello! How can I help?\"}, "
        "{\"from\": \"human\", \"value\": \"Tell me a joke.\"}, {\"from\": \"gpt\", \"value\": "
        "\"Why did the chicken cross the road?\"}";
    char buf[2048];
    snprintf(buf, sizeof buf, "{\"conversations\": [{\"from\": \"system\", \"value\": \"You are helpful.\"}, %s]}\n", k_turns);
    check_chat_jsonl("sharegpt.jsonl", buf, g_sm, "chatml", NULL, k_chatml, "<|im_start|>assistant\n", "<|im_end|>", "chatml");
    check_chat_jsonl("sharegpt_zephyr.jsonl", buf, g_tl, NULL, g_tl_cfg, k_zephyr, "<|assistant|>\n", "</s>", "zephyr");
    /* LLaMA-Factory's system column */
    snprintf(buf, sizeof buf, "{\"system\": \"You are helpful.\", \"conversations\": [%s]}\n", k_turns);
    check_chat_jsonl("sharegpt_system.jsonl", buf, g_sm, "chatml", NULL, k_chatml, "<|im_start|>assistant\n", "<|im_end|>",
                     "chatml");
    /* a conversation's own system message wins over the column; an empty column is none */
    char conv[1024];
    conv_jsonl(conv, sizeof conv, true);
    snprintf(buf, sizeof buf, "{\"system\": \"Be terse.\", %s", conv + 1);
    check_chat_jsonl("messages_system.jsonl", buf, g_sm, "chatml", NULL, k_chatml, "<|im_start|>assistant\n", "<|im_end|>",
                     "chatml");
    snprintf(buf, sizeof buf, "{\"system\": \"\", \"conversations\": [%s]}\n", k_turns);
    check_chat_jsonl("sharegpt_nosys.jsonl", buf, g_sm, NULL, g_sm_cfg, k_chatml_smol_default, "<|im_start|>assistant\n", "<|im_end|>", "chatml");
    /* Qwen3's template: ChatML whose last reply opens with an empty thinking block, in the loss with the reply
     * (SmolLM2's tokenizer has the same <|im_start|> and <|im_end|>) */
    static const char k_qwen3[] =
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        "<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        "Why did the chicken cross the road?<|im_end|>\n";
    snprintf(buf, sizeof buf, "{\"conversations\": [%s]}\n", k_turns);
    check_chat_jsonl("sharegpt_qwen3.jsonl", buf, g_sm, "qwen3", NULL, k_qwen3, "<|im_start|>assistant\n", "<|im_end|>",
                     "qwen3");
    lorac_data_format_t f;
    CHECK(lorac_data_format_parse("sharegpt", &f) == 0 && f == LORAC_DATA_CHAT);
}

/* --columns: a dataset's own key names read as a format's. */
static void test_columns(void) {
    lorac_dataset_params_t p = lorac_dataset_default_params();
    /* SAMSum's {instruction, dialogue, summary} as alpaca, its first record rebuilt here */
    char fx[1200];
    snprintf(fx, sizeof fx, "%s/datasets/samsum/test.json", tl_fixtures());
    p.columns = "input=dialogue,output=summary";
    p.seq_len = 1024;
    lorac_dataset_t *ds = load_ok(fx, g_tl, &p);
    if (ds) {
        CHECK(lorac_dataset_n_examples(ds) == 819 && lorac_dataset_format(ds) == LORAC_DATA_ALPACA);
        char *text = read_all(fx);
        cJSON *arr = cJSON_Parse(text), *r0 = cJSON_GetArrayItem(arr, 0);
        char prompt[8192];
        snprintf(prompt, sizeof prompt,
                 "Below is an instruction that describes a task, paired with an input that provides further context. "
                 "Write a response that appropriately completes the request.\n\n### Instruction:\n%s\n\n### Input:\n%s"
                 "\n\n### Response:\n",
                 cJSON_GetObjectItem(r0, "instruction")->valuestring, cJSON_GetObjectItem(r0, "dialogue")->valuestring);
        check_prompt_response(ds, 0, g_tl, prompt, cJSON_GetObjectItem(r0, "summary")->valuestring, false, "samsum[0]");
        cJSON_Delete(arr);
        free(text);
        lorac_dataset_free(ds);
    }
    /* a swap; a key already named like a target is replaced; an optional column may be absent */
    const char *path = WRITE("columns.jsonl",
                             "{\"prompt\": \"Paris.\", \"completion\": \"Q: capital of France? A: \"}\n"
                             "{\"text\": \"ignored\", \"body\": \"the body\"}\n");
    p = lorac_dataset_default_params();
    p.columns = "prompt=completion,completion=prompt";
    p.skip_bad = true; /* the second line has neither */
    ds = load_ok(path, g_tl, &p);
    if (ds) {
        CHECK(lorac_dataset_n_examples(ds) == 1 && lorac_dataset_n_skipped(ds) == 1);
        check_prompt_response(ds, 0, g_tl, "Q: capital of France? A: ", "Paris.", false, "swapped columns");
        char want[1300];
        snprintf(want, sizeof want, "%s:2: missing \"completion\" (the column mapped to \"prompt\")", path);
        CHECK_MSG(strstr(lorac_dataset_first_skip_reason(ds), want), "%s", lorac_dataset_first_skip_reason(ds));
        lorac_dataset_free(ds);
    }
    p = lorac_dataset_default_params();
    p.columns = "text=body";
    p.skip_bad = true;
    ds = load_ok(path, g_tl, &p);
    if (ds) {
        CHECK(lorac_dataset_n_examples(ds) == 1 && lorac_dataset_format(ds) == LORAC_DATA_TEXT);
        check_text_example(ds, 0, g_tl, "the body", 2, "text=body");
        lorac_dataset_free(ds);
    }
    path = WRITE("columns2.jsonl", "{\"q\": \"Name a color.\", \"a\": \"Blue\"}\n");
    p = lorac_dataset_default_params();
    p.columns = "instruction=q,output=a,input=context";
    ds = load_ok(path, g_sm, &p);
    if (ds) {
        check_prompt_response(ds, 0, g_sm, k_alpaca_noin, "Blue", false, "alpaca from q/a");
        lorac_dataset_free(ds);
    }
    /* ShareGPT under another name */
    char buf[1024];
    snprintf(buf, sizeof buf,
             "{\"dialog\": [{\"from\": \"human\", \"value\": \"Hi there\"}, {\"from\": \"gpt\", \"value\": "
             "\"Hello! How can I help?\"}, {\"from\": \"human\", \"value\": \"Tell me a joke.\"}, {\"from\": \"gpt\", "
             "\"value\": \"Why did the chicken cross the road?\"}], \"sys\": \"You are helpful.\"}\n");
    path = write_file("columns3.jsonl", buf, strlen(buf));
    p = lorac_dataset_default_params();
    p.columns = "conversations=dialog,system=sys";
    p.chat_template = "chatml";
    ds = load_ok(path, g_sm, &p);
    if (ds) {
        size_t n, r[8];
        int32_t *w = enc(g_sm, k_chatml, false, &n);
        size_t nr = reply_ranges(g_sm, k_chatml, "<|im_start|>assistant\n", "<|im_end|>", r);
        check_example(ds, 0, w, n, r, nr, "conversations=dialog");
        free(w);
        lorac_dataset_free(ds);
    }
    /* malformed maps: whole-load errors naming the entry */
    static const struct { const char *spec, *substr; } bad[] = {
        {"output", "column map \"output\": expected OURS=THEIRS"},
        {"output=", "column map \"output=\": expected OURS=THEIRS"},
        {"=summary", "column map \"=summary\": expected OURS=THEIRS"},
        {"input=dialogue,,output=summary", "column map \"\": expected OURS=THEIRS"},
        {"outpt=summary", "\"outpt\" is not a field of a format"},
        {"role=from", "\"role\" is not a field of a format"},
        {"output=a,output=b", "\"output\" is mapped twice"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        p = lorac_dataset_default_params();
        p.columns = bad[i].spec;
        ds = NULL;
        lorac_status_t s = lorac_dataset_load(path, g_sm, &p, &ds);
        CHECK_MSG(s == LORAC_STATUS_INVALID_ARG && !ds && strstr(lorac_error_message(), bad[i].substr), "%s: %d '%s'",
                  bad[i].spec, s, lorac_error_message());
    }
}

/* A fixture's tokenizer.json with `n` more special tokens, numbered from
 * first_id: the control tokens of a model whose own files are not among
 * the fixtures. */
static lorac_tokenizer_t *tokenizer_with_specials(const char *fixture, int first_id, const char *const *extra, int n) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", tl_fixtures(), fixture);
    char *text = read_all(path);
    cJSON *tj = cJSON_Parse(text);
    free(text);
    cJSON *added = cJSON_GetObjectItem(tj, "added_tokens");
    for (int i = 0; i < n; i++) {
        cJSON *t = cJSON_CreateObject();
        cJSON_AddNumberToObject(t, "id", first_id + i);
        cJSON_AddStringToObject(t, "content", extra[i]);
        cJSON_AddBoolToObject(t, "special", 1); /* the other flags default to false */
        cJSON_AddItemToArray(added, t);
    }
    char *js = cJSON_PrintUnformatted(tj);
    cJSON_Delete(tj);
    lorac_tokenizer_t *tok = NULL;
    CHECK_MSG(lorac_tokenizer_load_json_memory(js, strlen(js), fixture, &tok) == LORAC_STATUS_OK, "%s: %s", fixture,
              lorac_error_message());
    free(js);
    return tok;
}

/* Roles that do not alternate are refused, naming the message. */
static void check_alternation_refused(const lorac_tokenizer_t *tok, const char *tpl) {
    const char *bad = WRITE("chat_mistral_bad.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, "
                                                       "{\"role\": \"user\", \"content\": \"b\"}]}\n");
    lorac_dataset_params_t p = lorac_dataset_default_params();
    p.chat_template = tpl;
    p.train_on_inputs = true;
    lorac_dataset_t *ds = NULL;
    CHECK_MSG(lorac_dataset_load(bad, tok, &p, &ds) == LORAC_STATUS_FORMAT &&
              strstr(lorac_error_message(), "message 2 is \"user\" where \"assistant\" was expected"),
              "%s: %s", tpl, lorac_error_message());
    lorac_dataset_free(ds);
}

/* Mistral NeMo's template on training data: SmolLM2's tokenizer with
 * <s>, </s>, [INST] and [/INST] added as special tokens, as NeMo's tokenizer
 * has them. The rendering is what jinja2 renders from NeMo's template (see
 * tests/data/chat/golden.json); the loss is on each reply and its </s>. */
static void test_chat_mistral_data(void) {
    static const char *const extra[4] = {"<s>", "</s>", "[INST]", "[/INST]"};
    lorac_tokenizer_t *tok =
        tokenizer_with_specials("tokenizers/smollm2-360m-instruct-ft/tokenizer.json", 49153, extra, 4);
    if (!tok) return;
    static const char want[] = "<s>[INST]Hi there[/INST]Hello! How can I help?</s>[INST]Tell me a joke.[/INST]"
                               "Why did the chicken cross the road?</s>";
    char buf[1024];
    conv_jsonl(buf, sizeof buf, true); /* the system message is dropped: the conversation ends with a reply */
    check_chat_jsonl("chat_mistral.jsonl", buf, tok, "mistral", NULL, want, "[/INST]", "</s>", "mistral");
    check_alternation_refused(tok, "mistral");
    lorac_tokenizer_free(tok);
}

/* Gemma's templates on training data: SmolLM2's tokenizer with <bos>, <eos>,
 * <start_of_turn> and <end_of_turn> added as special tokens, as Gemma's
 * vocabulary has them. The renderings are what jinja2 renders from Gemma 3's
 * and Gemma 2's templates (tests/data/chat/golden.json); the loss is on each
 * reply and its <end_of_turn>, not on the newline after it. */
static void test_chat_gemma_data(void) {
    static const char *const extra[4] = {"<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"};
    lorac_tokenizer_t *tok =
        tokenizer_with_specials("tokenizers/smollm2-360m-instruct-ft/tokenizer.json", 49153, extra, 4);
    if (!tok) return;
    static const char turns[] = "<start_of_turn>model\nHello! How can I help?<end_of_turn>\n<start_of_turn>user\n"
                                "Tell me a joke.<end_of_turn>\n<start_of_turn>model\nWhy did the chicken cross the road?"
                                "<end_of_turn>\n";
    char want[1024], buf[1024];
    snprintf(want, sizeof want, "<bos><start_of_turn>user\nYou are helpful.\n\nHi there<end_of_turn>\n%s", turns);
    conv_jsonl(buf, sizeof buf, true);
    check_chat_jsonl("chat_gemma3.jsonl", buf, tok, "gemma3", NULL, want, "<start_of_turn>model\n", "<end_of_turn>",
                     "gemma3");
    snprintf(want, sizeof want, "<bos><start_of_turn>user\nHi there<end_of_turn>\n%s", turns);
    conv_jsonl(buf, sizeof buf, false);
    check_chat_jsonl("chat_gemma.jsonl", buf, tok, "gemma", NULL, want, "<start_of_turn>model\n", "<end_of_turn>",
                     "gemma");
    check_alternation_refused(tok, "gemma3");
    /* Gemma 2's template refuses a system message */
    conv_jsonl(buf, sizeof buf, true);
    const char *path = write_file("chat_gemma_system.jsonl", buf, strlen(buf));
    lorac_dataset_params_t p = lorac_dataset_default_params();
    p.chat_template = "gemma";
    lorac_dataset_t *ds = NULL;
    CHECK_MSG(lorac_dataset_load(path, tok, &p, &ds) == LORAC_STATUS_FORMAT &&
                  strstr(lorac_error_message(), "a system message is not supported"),
              "%s", lorac_error_message());
    lorac_dataset_free(ds);
    lorac_tokenizer_free(tok);
}

/* Phi-3.5's template on training data: TinyLlama's SentencePiece tokenizer
 * (Llama 2's, which Phi-3's extends) with Phi-3's control tokens added as
 * special tokens. The rendering is what jinja2 renders from Phi-3.5-mini's
 * template (tests/data/chat/golden.json): the loss is on each reply and its
 * <|end|>, not on the newline after it or the closing <|endoftext|>; an
 * empty system message is left out; roles need not alternate. */
static void test_chat_phi3_data(void) {
    static const char *const extra[5] = {"<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"};
    lorac_tokenizer_t *tok =
        tokenizer_with_specials("tokenizers/tinyllama-1.1b-chat-v1.0/tokenizer.json", 32000, extra, 5);
    if (!tok) return;
    static const char turns[] = "<|user|>\nHi there<|end|>\n<|assistant|>\nHello! How can I help?<|end|>\n<|user|>\n"
                                "Tell me a joke.<|end|>\n<|assistant|>\nWhy did the chicken cross the road?<|end|>\n"
                                "<|endoftext|>";
    char want[1024], buf[1024];
    snprintf(want, sizeof want, "<|system|>\nYou are helpful.<|end|>\n%s", turns);
    conv_jsonl(buf, sizeof buf, true);
    check_chat_jsonl("chat_phi3.jsonl", buf, tok, "phi3", NULL, want, "<|assistant|>\n", "<|end|>", "phi3");
    snprintf(buf, sizeof buf, "{\"messages\": [{\"role\": \"system\", \"content\": \"\"}, {\"role\": \"user\", "
             "\"content\": \"Hi there\"}, {\"role\": \"assistant\", \"content\": \"Hello! How can I help?\"}, "
             "{\"role\": \"user\", \"content\": \"Tell me a joke.\"}, {\"role\": \"assistant\", \"content\": "
             "\"Why did the chicken cross the road?\"}]}\n");
    check_chat_jsonl("chat_phi3_empty_system.jsonl", buf, tok, "phi-3.5", NULL, turns, "<|assistant|>\n", "<|end|>", "phi3");
    lorac_tokenizer_free(tok);
}

/* Phi-4's templates on training data: GPT-2's byte-level tokenizer (Phi-4's
 * is byte-level BPE too) with Phi-4's three control tokens added as special
 * tokens. The renderings are what jinja2 renders from microsoft/phi-4's
 * template and Unsloth's copy (tests/data/chat/golden.json), the same for a
 * conversation that ends with a reply; the loss is on each reply and its
 * <|im_end|>. They differ on a pending question: microsoft/phi-4's writes
 * the assistant header after it even without a generation prompt. */
static void test_chat_phi4_data(void) {
    static const char *const extra[3] = {"<|im_start|>", "<|im_sep|>", "<|im_end|>"};
    lorac_tokenizer_t *tok = tokenizer_with_specials("tokenizers/gpt2/tokenizer.json", 50257, extra, 3);
    if (!tok) return;
    static const char want[] =
        "<|im_start|>system<|im_sep|>You are helpful.<|im_end|><|im_start|>user<|im_sep|>Hi there<|im_end|>"
        "<|im_start|>assistant<|im_sep|>Hello! How can I help?<|im_end|><|im_start|>user<|im_sep|>Tell me a joke."
        "<|im_end|><|im_start|>assistant<|im_sep|>Why did the chicken cross the road?<|im_end|>";
    char buf[1024];
    conv_jsonl(buf, sizeof buf, true);
    check_chat_jsonl("chat_phi4.jsonl", buf, tok, "phi-4", NULL, want, "<|im_start|>assistant<|im_sep|>", "<|im_end|>",
                     "phi4");
    check_chat_jsonl("chat_phi4_unsloth.jsonl", buf, tok, "phi4-unsloth", NULL, want, "<|im_start|>assistant<|im_sep|>",
                     "<|im_end|>", "phi4-unsloth");
    lorac_chat_message_t m[1] = {{"user", "Hi"}};
    char *out = NULL, *out2 = NULL;
    CHECK(lorac_dataset_chat_render("phi4", NULL, m, 1, NULL, NULL, &out, NULL) == 0 &&
          !strcmp(out, "<|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>"));
    CHECK(lorac_dataset_chat_render("phi4-unsloth", NULL, m, 1, NULL, NULL, &out2, NULL) == 0 &&
          !strcmp(out2, "<|im_start|>user<|im_sep|>Hi<|im_end|>"));
    free(out);
    free(out2);
    CHECK(!strcmp(lorac_dataset_chat_end_of_turn("phi4", NULL), "<|im_end|>"));
    lorac_tokenizer_free(tok);
}

/* Phi-4-mini's template on training data: GPT-2's byte-level tokenizer
 * (which has <|endoftext|>) with Phi-4-mini's role tokens and <|end|>
 * added as special tokens. The rendering is what jinja2 renders from
 * Phi-4-mini-instruct's template (tests/data/chat/golden.json): no
 * newlines, <|endoftext|> after the last turn (not in the loss), the loss
 * on each reply and its <|end|>; an empty system message is kept. */
static void test_chat_phi4_mini_data(void) {
    static const char *const extra[4] = {"<|system|>", "<|user|>", "<|assistant|>", "<|end|>"};
    lorac_tokenizer_t *tok = tokenizer_with_specials("tokenizers/gpt2/tokenizer.json", 50257, extra, 4);
    if (!tok) return;
    static const char want[] = "<|system|>You are helpful.<|end|><|user|>Hi there<|end|><|assistant|>Hello! How can I "
                               "help?<|end|><|user|>Tell me a joke.<|end|><|assistant|>Why did the chicken cross the "
                               "road?<|end|><|endoftext|>";
    char buf[1024];
    conv_jsonl(buf, sizeof buf, true);
    check_chat_jsonl("chat_phi4_mini.jsonl", buf, tok, "phi-4-mini", NULL, want, "<|assistant|>", "<|end|>", "phi4-mini");
    lorac_chat_message_t m[2] = {{"system", ""}, {"user", "Hi"}};
    char *out = NULL;
    CHECK(lorac_dataset_chat_render_generation("phi4-mini", NULL, m, 2, NULL, NULL, true, &out, NULL) == 0 &&
          !strcmp(out, "<|system|><|end|><|user|>Hi<|end|><|assistant|>"));
    free(out);
    lorac_tokenizer_free(tok);
}

/* Mistral 7B Instruct v0.3's template on training data: TinyLlama's
 * SentencePiece tokenizer (the kind v0.3 has) with [INST] and [/INST] added
 * as special tokens, as v0.3's vocabulary has them. The rendering is what
 * jinja2 renders from v0.3's template (tests/data/chat/golden.json); the
 * loss is on each reply, its leading space and its </s>. */
static void test_chat_mistral_v3_data(void) {
    static const char *const extra[2] = {"[INST]", "[/INST]"};
    lorac_tokenizer_t *tok =
        tokenizer_with_specials("tokenizers/tinyllama-1.1b-chat-v1.0/tokenizer.json", 32000, extra, 2);
    if (!tok) return;
    static const char want[] = "<s>[INST] Hi there[/INST] Hello! How can I help?</s>[INST] Tell me a joke.[/INST]"
                               " Why did the chicken cross the road?</s>";
    char buf[1024];
    conv_jsonl(buf, sizeof buf, true); /* the system message is dropped here too */
    check_chat_jsonl("chat_mistral_v3.jsonl", buf, tok, "mistral-v0.3", NULL, want, "[/INST]", "</s>", "mistral-v3");
    /* replies are stripped (Jinja's trim), the prompt's turns are not; a system message before a pending question */
    static const char want2[] = "<s>[INST]  Hi [/INST] Hello!</s>[INST] Be brief.\n\nWhy?[/INST]";
    char *out = NULL;
    lorac_chat_message_t m[4] = {{"system", "Be brief."}, {"user", " Hi "}, {"assistant", "\n Hello!\xe3\x80\x80"},
                                 {"user", "Why?"}};
    CHECK(lorac_dataset_chat_render("mistral-v3", NULL, m, 4, NULL, NULL, &out, NULL) == 0 && !strcmp(out, want2));
    free(out);
    check_alternation_refused(tok, "mistral-v3");
    lorac_tokenizer_free(tok);
}

static void test_chat_data(void) {
    check_chat("chat_chatml.jsonl", g_sm, "chatml", NULL, true, k_chatml, "<|im_start|>assistant\n", "<|im_end|>", "chatml");
    /* recognised from SmolLM2's files, with its default system message */
    check_chat("chat_smol.jsonl", g_sm, NULL, g_sm_cfg, false, k_chatml_smol_default, "<|im_start|>assistant\n",
               "<|im_end|>", "chatml");
    /* recognised from TinyLlama's tokenizer_config.json */
    check_chat("chat_zephyr.jsonl", g_tl, NULL, g_tl_cfg, true, k_zephyr, "<|assistant|>\n", "</s>", "zephyr");
    check_chat("chat_llama2.jsonl", g_tl, "llama-2", g_tl_cfg, true, k_llama2, "[/INST]", "</s>", "llama-2");
    /* Mistral 7B's and Mixtral's [INST] templates on TinyLlama's SentencePiece tokenizer (Llama 2's, the kind
     * Mistral 7B v0.1/v0.2 have, with [INST] as plain text): renderings as jinja2 renders those templates
     * (tests/data/chat/golden.json), the loss on each reply and its </s> (and, for mistral-v1, the space before it) */
    check_chat("chat_mistral_v01.jsonl", g_tl, "mistral-v0.1", NULL, false, k_mistral_v01, "[/INST]", "</s>",
               "mistral-v0.1");
    check_chat("chat_mistral_v02.jsonl", g_tl, "mixtral", NULL, false, k_mistral_v02, "[/INST]", "</s>", "mistral-v0.2");
    check_chat("chat_mistral_v1.jsonl", g_tl, "mistral-v1", NULL, true, k_mistral_v1, "[/INST]", "</s>", "mistral-v1");

    char buf[1024];
    conv_jsonl(buf, sizeof buf, true);
    const char *path = write_file("chat_err.jsonl", buf, strlen(buf));
    lorac_dataset_params_t p = lorac_dataset_default_params();
    lorac_dataset_t *ds = NULL;
    /* no template and nothing to recognise it from */
    CHECK(lorac_dataset_load(path, g_tl, &p, &ds) != 0 && strstr(lorac_error_message(), "--chat-template"));
    /* a template whose special tokens the tokenizer lacks */
    p.chat_template = "llama-3";
    CHECK(lorac_dataset_load(path, g_tl, &p, &ds) == LORAC_STATUS_UNSUPPORTED &&
          strstr(lorac_error_message(), "<|start_header_id|>"));
    p.chat_template = "chatml";
    CHECK(lorac_dataset_load(path, g_tl, &p, &ds) == LORAC_STATUS_UNSUPPORTED &&
          strstr(lorac_error_message(), "<|im_start|>"));
    p.chat_template = "bogus";
    CHECK(lorac_dataset_load(path, g_tl, &p, &ds) == LORAC_STATUS_INVALID_ARG);
    /* Phi-3.5's and Gemma 2's templates, which lorac knows, on a tokenizer without their turn markers */
    static const struct { const char *file, *want; } unusable[] = {
        {"chat-templates/microsoft-Phi-3.5-mini-instruct.jinja", "\"<|system|>\", which is not a single token"},
        {"chat-templates/google-gemma-2-2b-it.jinja", "\"<start_of_turn>\", which is not a single token"},
    };
    for (size_t i = 0; i < sizeof unusable / sizeof *unusable; i++) {
        char cfgbuf[2048], fx[1200];
        snprintf(fx, sizeof fx, "%s/%s", tl_fixtures(), unusable[i].file);
        char *jinja = read_all(fx);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "chat_template", jinja);
        char *js = cJSON_PrintUnformatted(o);
        const char *cfg = write_file("unusable_tokenizer_config.json", js, strlen(js));
        snprintf(cfgbuf, sizeof cfgbuf, "%s", cfg);
        free(js); free(jinja); cJSON_Delete(o);
        p.chat_template = NULL;
        p.tokenizer_config = cfgbuf;
        CHECK_MSG(lorac_dataset_load(path, g_tl, &p, &ds) == LORAC_STATUS_UNSUPPORTED &&
                      strstr(lorac_error_message(), unusable[i].want) && strstr(lorac_error_message(), "--chat-template"),
                  "%s: %s", unusable[i].file, lorac_error_message());
    }
}

/* ---- real datasets in other shapes ---- */
static void test_samsum_and_tinystories(void) {
    char fx[1200];
    lorac_dataset_params_t p = lorac_dataset_default_params();
    lorac_dataset_t *ds = NULL;
    /* SAMSum records are {instruction, dialogue, summary}: not a format */
    snprintf(fx, sizeof fx, "%s/datasets/samsum/test.json", tl_fixtures());
    CHECK(lorac_dataset_load(fx, g_tl, &p, &ds) == LORAC_STATUS_FORMAT);
    char want[1400];
    snprintf(want, sizeof want, "%s:2: cannot tell the format", fx);
    CHECK_MSG(strstr(lorac_error_message(), want) && strstr(lorac_error_message(), "\"dialogue\""), "%s", lorac_error_message());
    /* turned into completion records, they load */
    char *text = read_all(fx);
    cJSON *arr = cJSON_Parse(text);
    free(text);
    CHECK(cJSON_GetArraySize(arr) == 819);
    const char *out = tmp_path("samsum.jsonl");
    FILE *f = fopen(out, "w");
    const cJSON *r;
    cJSON_ArrayForEach(r, arr) {
        cJSON *c = cJSON_CreateObject();
        char prompt[8192];
        snprintf(prompt, sizeof prompt, "%s\n\n%s\n\nSummary: ", cJSON_GetObjectItem(r, "instruction")->valuestring,
                 cJSON_GetObjectItem(r, "dialogue")->valuestring);
        cJSON_AddStringToObject(c, "prompt", prompt);
        cJSON_AddStringToObject(c, "completion", cJSON_GetObjectItem(r, "summary")->valuestring);
        char *line = cJSON_PrintUnformatted(c);
        fprintf(f, "%s\n", line);
        free(line);
        cJSON_Delete(c);
    }
    fclose(f);
    cJSON_Delete(arr);
    p.seq_len = 1024;
    ds = load_ok(out, g_tl, &p);
    if (ds) {
        CHECK(lorac_dataset_n_examples(ds) == 819 && lorac_dataset_format(ds) == LORAC_DATA_COMPLETION);
        lorac_dataset_free(ds);
    }

    /* TinyStories as plain text: <|endoftext|>-separated, or paragraphs */
    p = lorac_dataset_default_params();
    p.seq_len = 1024;
    snprintf(fx, sizeof fx, "%s/datasets/tinystories/tinystories_sample.txt", tl_fixtures());
    ds = load_ok(fx, g_tl, &p);
    text = read_all(fx);
    if (ds) {
        CHECK_MSG(lorac_dataset_n_examples(ds) == 5, "%lld stories", (long long)lorac_dataset_n_examples(ds));
        /* the first story, trimmed, and the same stories as JSONL text records give the same tokens */
        char *sep = strstr(text, "<|endoftext|>");
        *sep = '\0';
        char *a = text;
        while (*a == '\n' || *a == ' ') a++;
        size_t len = strlen(a);
        while (len && (a[len - 1] == '\n' || a[len - 1] == ' ')) a[--len] = '\0';
        size_t n;
        int32_t *w = with_eos(g_tl, a, true, 2, &n);
        size_t all[2] = {0, n};
        check_example(ds, 0, w, n, all, 1, "tinystories story 0");
        free(w);
        cJSON *rec = cJSON_CreateObject();
        cJSON_AddStringToObject(rec, "text", a);
        char *line = cJSON_PrintUnformatted(rec);
        const char *jp = write_file("story.jsonl", line, strlen(line));
        lorac_dataset_t *d2 = load_ok(jp, g_tl, &p);
        if (d2) {
            const int32_t *t1, *t2, *l;
            int32_t n1 = lorac_dataset_example(ds, 0, &t1, &l), n2 = lorac_dataset_example(d2, 0, &t2, &l);
            CHECK(n1 == n2 && !memcmp(t1, t2, sizeof(int32_t) * (size_t)n1));
            lorac_dataset_free(d2);
        }
        free(line);
        cJSON_Delete(rec);
        lorac_dataset_free(ds);
    }
    free(text);
    snprintf(fx, sizeof fx, "%s/datasets/tinystories/tinystories_train_head.txt", tl_fixtures());
    ds = load_ok(fx, g_tl, &p);
    if (ds) {
        CHECK_MSG(lorac_dataset_n_examples(ds) == 1230, "%lld paragraphs", (long long)lorac_dataset_n_examples(ds));
        size_t n;
        int32_t *w = with_eos(g_tl,
                              "One day, a little girl named Lily found a needle in her room. She knew it was difficult "
                              "to play with it because it was sharp. Lily wanted to share the needle with her mom, so "
                              "she could sew a button on her shirt.", true, 2, &n);
        size_t all[2] = {0, n};
        check_example(ds, 0, w, n, all, 1, "tinystories paragraph 0");
        free(w);
        lorac_dataset_free(ds);
    }
    p.format = LORAC_DATA_CHAT;
    CHECK(lorac_dataset_load(fx, g_tl, &p, &ds) == LORAC_STATUS_INVALID_ARG);
}

/* ---- detection ---- */
static void test_auto(void) {
    static const struct { const char *line; lorac_data_format_t want; } cases[] = {
        {"{\"text\": \"x y\"}", LORAC_DATA_TEXT},
        {"{\"prompt\": \"a\", \"completion\": \"b\"}", LORAC_DATA_COMPLETION},
        {"{\"instruction\": \"a\", \"output\": \"b\"}", LORAC_DATA_ALPACA},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}", LORAC_DATA_CHAT},
        {"{\"input_ids\": [1, 2, 3]}", LORAC_DATA_TOKENS},
        {"{\"conversations\": [{\"from\": \"human\", \"value\": \"a\"}, {\"from\": \"gpt\", \"value\": \"b\"}]}", LORAC_DATA_CHAT},
        {"{\"text\": \"also has prompt\", \"prompt\": \"a\"}", LORAC_DATA_TEXT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *path = write_file("auto.jsonl", cases[i].line, strlen(cases[i].line));
        lorac_dataset_params_t p = lorac_dataset_default_params();
        p.chat_template = "zephyr";
        lorac_dataset_t *ds = load_ok(path, g_tl, &p);
        if (!ds) continue;
        CHECK_MSG(lorac_dataset_format(ds) == cases[i].want, "%s: %s", cases[i].line, lorac_data_format_name(lorac_dataset_format(ds)));
        lorac_dataset_free(ds);
    }
    lorac_data_format_t f;
    CHECK(lorac_data_format_parse("alpaca", &f) == 0 && f == LORAC_DATA_ALPACA);
    CHECK(lorac_data_format_parse("jsonl", &f) == -1);
    CHECK(!strcmp(lorac_data_format_name(LORAC_DATA_TOKENS), "tokens"));
}

/* ---- malformed input ---- */
typedef struct {
    const char *data;
    size_t len;
    lorac_data_format_t format;
    int line;           /* 0: a whole-file error ("FILE: ...") */
    const char *substr;
} bad_case_t;
#define BAD(lit, fmt, line, sub) {lit, sizeof(lit) - 1, fmt, line, sub}

static const bad_case_t k_bad[] = {
    BAD("{\"text\": \"a fine line\"}\n{\"text\": 5}\n", LORAC_DATA_AUTO, 2, "\"text\" must be a string, not a number"),
    BAD("{\"text\": \"ok\"}\n{\"text\": \"broken\n", LORAC_DATA_AUTO, 2, "not valid JSON"),
    BAD("{\"text\": \"ok\"}\n{\"text\": \"\xff\xfe\"}\n", LORAC_DATA_AUTO, 2, "not valid UTF-8"),
    BAD("{\"text\": \"ok\"}\n{\"text\": \"over\xc0\xaflong\"}\n", LORAC_DATA_AUTO, 2, "not valid UTF-8"),
    BAD("{\"text\": \"ok\"}\n{\"text\": \"cut \xe2\x82\"}\n", LORAC_DATA_AUTO, 2, "not valid UTF-8"),
    BAD("{\"text\": \"ok\"}\n\n[1, 2]\n", LORAC_DATA_AUTO, 3, "not a JSON object"),
    BAD("{\"text\": \"ok\"}\n\"just a string\"\n", LORAC_DATA_AUTO, 2, "not a JSON object"),
    BAD("{\"text\": \"a\"} trailing\n", LORAC_DATA_AUTO, 1, "not valid JSON"),
    BAD("{\"text\": \"a\"}{\"text\": \"b\"}\n", LORAC_DATA_AUTO, 1, "not valid JSON"),
    BAD("{\"text\": \"\"}\n", LORAC_DATA_AUTO, 1, "empty \"text\""),
    BAD("{\"text\": null}\n", LORAC_DATA_TEXT, 1, "\"text\" must be a string, not null"),
    BAD("{\"text\": [\"a\"]}\n", LORAC_DATA_AUTO, 1, "\"text\" must be a string, not an array"),
    BAD("{\"nothing\": \"here\"}\n", LORAC_DATA_AUTO, 1, "cannot tell the format"),
    BAD("{\"text\": \"a fine line\"}\n", LORAC_DATA_COMPLETION, 1, "missing \"prompt\""),
    BAD("{\"prompt\": \"a\", \"completion\": 3}\n", LORAC_DATA_AUTO, 1, "\"completion\" must be a string"),
    BAD("{\"prompt\": \"a\", \"completion\": \"\"}\n", LORAC_DATA_AUTO, 1, "empty \"completion\""),
    BAD("{\"instruction\": \"a\", \"input\": 3, \"output\": \"b\"}\n", LORAC_DATA_AUTO, 1, "\"input\" must be a string"),
    BAD("{\"instruction\": \"a\", \"input\": \"b\"}\n", LORAC_DATA_ALPACA, 1, "missing \"output\""),
    BAD("{\"messages\": []}\n", LORAC_DATA_AUTO, 1, "empty \"messages\""),
    BAD("{\"messages\": \"hi\"}\n", LORAC_DATA_AUTO, 1, "\"messages\" must be an array, not a string"),
    BAD("{\"messages\": [\"hi\"]}\n", LORAC_DATA_AUTO, 1, "message 1 must be an object"),
    BAD("{\"messages\": [{\"role\": \"user\"}]}\n", LORAC_DATA_AUTO, 1, "message 1: missing \"content\""),
    BAD("{\"messages\": [{\"role\": \"user\", \"content\": 5}]}\n", LORAC_DATA_AUTO, 1, "message 1: \"content\" must be a string, not a number"),
    BAD("{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"y\"}]}\n",
        LORAC_DATA_AUTO, 1, "message 1: unknown role \"robot\""),
    BAD("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n", LORAC_DATA_AUTO, 1, "no assistant message"),
    BAD("{\"conversations\": {}}\n", LORAC_DATA_AUTO, 1, "\"conversations\" must be an array, not an object"),
    BAD("{\"conversations\": []}\n", LORAC_DATA_AUTO, 1, "empty \"conversations\""),
    BAD("{\"conversations\": [{\"from\": \"human\", \"value\": \"x\"}, {\"from\": \"gpt\"}]}\n", LORAC_DATA_AUTO, 1,
        "message 2: missing \"value\""),
    BAD("{\"conversations\": [{\"from\": 1, \"value\": \"x\"}]}\n", LORAC_DATA_AUTO, 1, "message 1: \"from\" must be a string, not a number"),
    BAD("{\"conversations\": [{\"from\": \"observation\", \"value\": \"x\"}, {\"from\": \"gpt\", \"value\": \"y\"}]}\n",
        LORAC_DATA_AUTO, 1, "message 1: unknown role \"observation\""),
    BAD("{\"conversations\": [{\"from\": \"human\", \"value\": \"x\"}]}\n", LORAC_DATA_AUTO, 1, "no assistant message"),
    BAD("{\"system\": 3, \"conversations\": [{\"from\": \"gpt\", \"value\": \"x\"}]}\n", LORAC_DATA_AUTO, 1,
        "\"system\" must be a string, not a number"),
    BAD("{\"text\": \"a\"}\n", LORAC_DATA_CHAT, 1, "missing \"messages\" (or \"conversations\")"),
    BAD("{\"input_ids\": [1, 2, 3], \"labels\": [1, 2]}\n", LORAC_DATA_AUTO, 1, "\"labels\" must be an array as long as \"input_ids\" (3)"),
    BAD("{\"input_ids\": [1, 2, 3], \"labels\": 5}\n", LORAC_DATA_AUTO, 1, "\"labels\" must be an array as long as"),
    BAD("{\"input_ids\": [1, 2, 99999]}\n", LORAC_DATA_AUTO, 1, "input_ids must be integers in 0..31999"),
    BAD("{\"input_ids\": [1, -1]}\n", LORAC_DATA_AUTO, 1, "input_ids must be integers"),
    BAD("{\"input_ids\": [1, 2.5]}\n", LORAC_DATA_AUTO, 1, "input_ids must be integers"),
    BAD("{\"input_ids\": [1, \"2\"]}\n", LORAC_DATA_AUTO, 1, "input_ids must be integers"),
    BAD("{\"input_ids\": \"1 2\"}\n", LORAC_DATA_AUTO, 1, "\"input_ids\" must be an array of token ids, not a string"),
    BAD("{\"input_ids\": []}\n", LORAC_DATA_AUTO, 1, "empty \"input_ids\""),
    BAD("{\"input_ids\": [1, 2], \"labels\": [-100, 7]}\n", LORAC_DATA_AUTO, 1, "labels[1] must be -100 or input_ids[1]"),
    BAD("[\n  {\"text\": \"a\"},\n  {\"text\": 5}\n]\n", LORAC_DATA_AUTO, 3, "\"text\" must be a string"),
    BAD("[\n  {\"text\": \"a\"},\n  {\"text\": \"b\"}\n", LORAC_DATA_AUTO, 3, "unterminated JSON array"),
    BAD("[{\"text\": \"a\"}] extra", LORAC_DATA_AUTO, 1, "unexpected data after the JSON array"),
    BAD("[{\"text\": \"a\"}, ]", LORAC_DATA_AUTO, 1, "expected a value"),
    BAD("[{\"text\": \"a\"}, {\"text\": \"b\xff\"}]", LORAC_DATA_AUTO, 1, "not valid UTF-8"),
    BAD("", LORAC_DATA_AUTO, 0, "no examples"),
    BAD("\n\n   \n", LORAC_DATA_AUTO, 0, "no examples"),
    BAD("[]", LORAC_DATA_AUTO, 0, "no examples"),
    BAD(" [ \n ] \n", LORAC_DATA_AUTO, 0, "no examples"),
};

static void test_malformed(void) {
    for (size_t i = 0; i < sizeof k_bad / sizeof *k_bad; i++) {
        const bad_case_t *c = &k_bad[i];
        const char *path = write_file("bad.jsonl", c->data, c->len);
        lorac_dataset_params_t p = lorac_dataset_default_params();
        p.format = c->format;
        p.chat_template = "zephyr";
        lorac_dataset_t *ds = NULL;
        lorac_status_t s = lorac_dataset_load(path, g_tl, &p, &ds);
        char want[1200];
        if (c->line) snprintf(want, sizeof want, "%s:%d: %s", path, c->line, c->substr);
        else snprintf(want, sizeof want, "%s: %s", path, c->substr);
        CHECK_MSG(s == LORAC_STATUS_FORMAT && !ds && strstr(lorac_error_message(), want), "case %zu: status %d, '%s' (want '%s')",
                  i, s, lorac_error_message(), want);
        lorac_dataset_free(ds);
    }
    /* a lone surrogate in an escape: an error naming the line (cJSON or the tokenizer refuses it) */
    const char *path = WRITE("surrogate.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"\\ud800 x\"}\n");
    lorac_dataset_params_t p = lorac_dataset_default_params();
    lorac_dataset_t *ds = NULL;
    char want[1200];
    snprintf(want, sizeof want, "%s:2: ", path);
    CHECK_MSG(lorac_dataset_load(path, g_tl, &p, &ds) == LORAC_STATUS_FORMAT && strstr(lorac_error_message(), want), "%s",
              lorac_error_message());
    /* a missing file */
    CHECK(lorac_dataset_load(tmp_path("does-not-exist.jsonl"), g_tl, &p, &ds) == LORAC_STATUS_IO && !ds);
    /* bad parameters */
    p.seq_len = 0;
    CHECK(lorac_dataset_load(path, g_tl, &p, &ds) == LORAC_STATUS_INVALID_ARG);
}

static void test_skip_bad(void) {
    const char *path = WRITE("skip.jsonl", "{\"text\": \"one\"}\n{\"text\": 5}\n{\"text\": \"two\"}\nnot json\n\n{\"text\": \"three\"}\n");
    lorac_dataset_params_t p = lorac_dataset_default_params();
    p.skip_bad = true;
    lorac_dataset_t *ds = load_ok(path, g_tl, &p);
    if (ds) {
        CHECK(lorac_dataset_n_examples(ds) == 3 && lorac_dataset_n_skipped(ds) == 2);
        char want[1200];
        snprintf(want, sizeof want, "%s:2: \"text\" must be a string", path);
        CHECK(lorac_dataset_first_skip_reason(ds) && strstr(lorac_dataset_first_skip_reason(ds), want));
        check_text_example(ds, 2, g_tl, "three", 2, "after skipped lines");
        lorac_dataset_free(ds);
    }
    /* the first record being bad does not fix the format: the next good one does */
    path = WRITE("skip2.jsonl", "{\"nothing\": 1}\n{\"prompt\": \"a\", \"completion\": \"b\"}\n");
    ds = load_ok(path, g_tl, &p);
    if (ds) {
        CHECK(lorac_dataset_format(ds) == LORAC_DATA_COMPLETION && lorac_dataset_n_skipped(ds) == 1);
        lorac_dataset_free(ds);
    }
    path = WRITE("skip3.jsonl", "{\"text\": 1}\n{\"text\": 2}\n");
    CHECK(lorac_dataset_load(path, g_tl, &p, &ds) == LORAC_STATUS_FORMAT && strstr(lorac_error_message(), "no examples (2 bad records skipped"));
    p.skip_bad = false;
    CHECK(lorac_dataset_load(path, g_tl, &p, &ds) == LORAC_STATUS_FORMAT);
}

static void test_truncation(void) {
    const char *path = WRITE("long.jsonl", "{\"text\": \"one two three four five six seven eight nine ten eleven twelve "
                                           "thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty\"}\n"
                                           "{\"text\": \"short\"}\n");
    lorac_dataset_params_t p = lorac_dataset_default_params();
    p.seq_len = 16;
    lorac_dataset_t *ds = load_ok(path, g_tl, &p);
    if (!ds) return;
    CHECK(lorac_dataset_n_truncated(ds) == 1 && lorac_dataset_n_examples(ds) == 2);
    size_t n;
    int32_t *w = enc(g_tl, "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                           "sixteen seventeen eighteen nineteen twenty", true, &n);
    CHECK(n > 17);
    size_t all[2] = {0, 17};
    check_example(ds, 0, w, 17, all, 1, "truncated to seq_len + 1");
    free(w);
    lorac_dataset_free(ds);
}

static void test_tokens(void) {
    const char *path = WRITE("tokens.jsonl", "{\"input_ids\": [5, 6, 7, 8], \"labels\": [-100, -100, 7, 8]}\n"
                                             "{\"input_ids\": [9, 10], \"labels\": null}\n{\"input_ids\": [11]}\n");
    lorac_dataset_params_t p = lorac_dataset_default_params();
    lorac_dataset_t *ds = load_ok(path, NULL, &p); /* no tokenizer needed */
    if (!ds) return;
    CHECK(lorac_dataset_format(ds) == LORAC_DATA_TOKENS && lorac_dataset_n_examples(ds) == 3);
    int32_t w0[4] = {5, 6, 7, 8}, w1[2] = {9, 10}, w2[1] = {11};
    size_t r0[2] = {2, 4}, r1[2] = {0, 2}, r2[2] = {0, 1};
    check_example(ds, 0, w0, 4, r0, 1, "tokens 0");
    check_example(ds, 1, w1, 2, r1, 1, "tokens 1");
    check_example(ds, 2, w2, 1, r2, 1, "tokens 2");
    CHECK(lorac_dataset_n_trainable(ds) == 5 && lorac_dataset_n_tokens(ds) == 7);
    lorac_dataset_free(ds);
    p.vocab_size = 8; /* the model's vocabulary */
    CHECK(lorac_dataset_load(path, NULL, &p, &ds) == LORAC_STATUS_FORMAT && strstr(lorac_error_message(), "0..7"));
    p = lorac_dataset_default_params();
    p.format = LORAC_DATA_TEXT;
    CHECK(lorac_dataset_load(WRITE("t.jsonl", "{\"text\": \"a\"}"), NULL, &p, &ds) == LORAC_STATUS_INVALID_ARG);
}

/* ---- batches ---- */
/* A tokens-format set: example i has length len(i) and tokens 1000*i + k, so
 * each token says where it came from. */
static lorac_dataset_t *synthetic(int n, int seq_len, int (*len)(int)) {
    size_t cap = 1 << 20, used = 0;
    char *buf = malloc(cap);
    for (int i = 0; i < n; i++) {
        used += (size_t)snprintf(buf + used, cap - used, "{\"input_ids\": [");
        for (int k = 0; k < len(i); k++) used += (size_t)snprintf(buf + used, cap - used, "%s%d", k ? ", " : "", 1000 * i + k);
        used += (size_t)snprintf(buf + used, cap - used, "], \"labels\": [");
        /* the first two tokens are "prompt" */
        for (int k = 0; k < len(i); k++) used += (size_t)snprintf(buf + used, cap - used, "%s%d", k ? ", " : "", k < 2 ? -100 : 1000 * i + k);
        used += (size_t)snprintf(buf + used, cap - used, "]}\n");
    }
    lorac_dataset_params_t p = lorac_dataset_default_params();
    p.seq_len = seq_len;
    lorac_dataset_t *ds = NULL;
    if (lorac_dataset_load_memory(buf, used, "synthetic.jsonl", NULL, &p, &ds)) {
        fprintf(stderr, "synthetic: %s\n", lorac_error_message());
        exit(1);
    }
    free(buf);
    return ds;
}

static int len_var(int i) { return 1 + (i * 7) % 13; }  /* 1..13 */
static int len_long(int i) { return i == 3 ? 40 : 3 + i % 5; }

typedef struct { int32_t *tok, *tgt, *pos, *seg; } rows_t;
static rows_t rows_alloc(int B, int T) {
    rows_t r;
    size_t n = (size_t)B * (size_t)T * sizeof(int32_t);
    r.tok = malloc(n); r.tgt = malloc(n); r.pos = malloc(n); r.seg = malloc(n);
    return r;
}
static void rows_free(rows_t *r) { free(r->tok); free(r->tgt); free(r->pos); free(r->seg); }

/* Checks every row's invariants against the dataset; marks seen examples. */
static void check_rows(const lorac_dataset_t *ds, const rows_t *r, int B, int T, bool pack, int *seen) {
    for (int b = 0; b < B; b++) {
        int32_t *tk = r->tok + b * T, *tg = r->tgt + b * T, *ps = r->pos + b * T, *sg = r->seg + b * T;
        int t = 0, seg = 0;
        while (t < T && sg[t] >= 0) {
            CHECK(sg[t] == seg && ps[t] == 0);
            int e = tk[t] / 1000; /* the example this segment holds */
            const int32_t *et, *el;
            int32_t n = lorac_dataset_example(ds, e, &et, &el), slots = n < T ? n : T;
            int ok = 1;
            for (int k = 0; k < slots; k++) {
                ok &= t + k < T && tk[t + k] == et[k] && ps[t + k] == k && sg[t + k] == seg;
                ok &= tg[t + k] == (k + 1 < n ? el[k + 1] : -100);
            }
            CHECK_MSG(ok, "row %d: example %d is not whole and in order", b, e);
            seen[e]++;
            t += slots;
            seg++;
            if (!pack) break;
        }
        CHECK(pack || seg <= 1);
        for (int k = t; k < T; k++) {
            if (sg[k] != -1 || tg[k] != -100 || ps[k] != 0 || tk[k] != lorac_dataset_pad_id(ds)) {
                CHECK_MSG(0, "row %d: bad padding at %d", b, k);
                break;
            }
        }
    }
}

static void test_batches(void) {
    const int N = 37, T = 16, B = 3;
    lorac_dataset_t *ds = synthetic(N, T, len_var);
    rows_t r = rows_alloc(B, T);
    int seen[64];
    for (int pack = 0; pack < 2; pack++) {
        for (int shuffle = 0; shuffle < 2; shuffle++) {
            lorac_data_cursor_t cur = lorac_data_cursor_init(42, shuffle);
            for (int epoch = 0; epoch < 3; epoch++) {
                memset(seen, 0, sizeof seen);
                int64_t batches = 0, want = lorac_dataset_epoch_batches(ds, &cur, B, T, pack);
                lorac_data_batch_info_t info;
                int first[64], nf = 0;
                do {
                    if (lorac_dataset_read_batch(ds, &cur, B, T, pack, r.tok, r.tgt, r.pos, r.seg, &info)) { CHECK(0); break; }
                    check_rows(ds, &r, B, T, pack, seen);
                    if (nf < 64) first[nf++] = r.tok[0] / 1000;
                    int64_t nt = 0;
                    for (int i = 0; i < B * T; i++) nt += r.tgt[i] != -100;
                    CHECK(nt == info.n_targets);
                    batches++;
                } while (!info.epoch_end && batches < 1000);
                CHECK(cur.epoch == epoch + 1 && cur.index == 0);
                CHECK_MSG(batches == want, "pack %d shuffle %d epoch %d: %lld batches, counted %lld", pack, shuffle, epoch,
                          (long long)batches, (long long)want);
                if (!pack) CHECK(batches == (N + B - 1) / B && lorac_dataset_batches_per_epoch(ds, B, T, false) == batches);
                int once = 1;
                for (int i = 0; i < N; i++) once &= seen[i] == 1;
                CHECK_MSG(once, "pack %d shuffle %d epoch %d: not every example exactly once", pack, shuffle, epoch);
                if (!shuffle && !pack) CHECK(first[0] == 0 && first[1] == B);
                (void)first;
            }
        }
    }
    /* packing fills rows: fewer rows than examples */
    CHECK(lorac_dataset_batches_per_epoch(ds, 1, T, true) < N);
    rows_free(&r);
    lorac_dataset_free(ds);

    /* an example of T + 1 tokens fills a row, its last token only a target */
    ds = synthetic(6, 16, len_long); /* example 3 has 40 tokens: kept 17 */
    CHECK(lorac_dataset_n_truncated(ds) == 1);
    r = rows_alloc(1, 16);
    lorac_data_cursor_t cur = lorac_data_cursor_init(0, false);
    cur.index = 3;
    lorac_data_batch_info_t info;
    CHECK(lorac_dataset_read_batch(ds, &cur, 1, 16, true, r.tok, r.tgt, r.pos, r.seg, &info) == 0);
    CHECK(r.tok[0] == 3000 && r.tok[15] == 3015 && r.tgt[15] == 3016 && r.seg[15] == 0 && info.examples == 1);
    CHECK(info.n_targets == 15); /* tokens 2..16 are in the loss; token 2 is the target of slot 1 */
    /* packing at a boundary: the next example starts at position 0 and the
     * previous one's last slot predicts nothing */
    CHECK(lorac_dataset_read_batch(ds, &cur, 1, 16, true, r.tok, r.tgt, r.pos, r.seg, &info) == 0);
    int n4 = len_long(4);
    CHECK(r.tok[0] == 4000 && r.pos[n4 - 1] == n4 - 1 && r.tgt[n4 - 1] == -100);
    CHECK(r.tok[n4] == 5000 && r.pos[n4] == 0 && r.seg[n4] == 1 && r.seg[n4 - 1] == 0);
    CHECK(info.epoch_end && cur.epoch == 1);
    /* errors */
    cur.index = 99;
    CHECK(lorac_dataset_read_batch(ds, &cur, 1, 16, true, r.tok, r.tgt, r.pos, r.seg, &info) == LORAC_STATUS_INVALID_ARG);
    cur.index = 0;
    CHECK(lorac_dataset_read_batch(ds, &cur, 0, 16, true, r.tok, r.tgt, r.pos, r.seg, &info) == LORAC_STATUS_INVALID_ARG);
    CHECK(lorac_dataset_next_batch(ds, &cur, 0, 16, false, r.tok, r.tgt, r.pos) == -1);
    rows_free(&r);
    lorac_dataset_free(ds);
}

/* Same seed, same batches; a cursor saved mid-epoch and restored into a
 * freshly loaded dataset continues exactly as the uninterrupted run. */
/* 1 when x and y hold the same examples in the same order. */
static int same_examples(const lorac_dataset_t *x, const lorac_dataset_t *y) {
    if (lorac_dataset_n_examples(x) != lorac_dataset_n_examples(y)) return 0;
    for (int64_t i = 0; i < lorac_dataset_n_examples(x); i++) {
        const int32_t *t1, *l1, *t2, *l2;
        int32_t n1 = lorac_dataset_example(x, i, &t1, &l1), n2 = lorac_dataset_example(y, i, &t2, &l2);
        if (n1 != n2 || memcmp(t1, t2, sizeof(int32_t) * (size_t)n1) || memcmp(l1, l2, sizeof(int32_t) * (size_t)n1)) return 0;
    }
    return 1;
}

/* lorac_dataset_split: n_eval examples held out at random from the seed,
 * the rest kept; every example lands on exactly one side, in file order. */
static void test_split(void) {
    char fx[1200];
    snprintf(fx, sizeof fx, "%s/datasets/tinystories/tinystories_train_head.txt", tl_fixtures());
    lorac_dataset_params_t p = lorac_dataset_default_params();
    p.seq_len = 64;
    lorac_dataset_t *all = load_ok(fx, g_tl, &p), *a = load_ok(fx, g_tl, &p), *b = load_ok(fx, g_tl, &p);
    lorac_dataset_t *ev_a = NULL, *ev_b = NULL;
    if (!all || !a || !b) return;
    int64_t n = lorac_dataset_n_examples(all);
    CHECK(lorac_dataset_split(a, 123, 7, &ev_a) == LORAC_STATUS_OK && ev_a);
    if (!ev_a) return;
    CHECK(lorac_dataset_n_examples(ev_a) == 123 && lorac_dataset_n_examples(a) == n - 123);
    CHECK(lorac_dataset_n_tokens(a) + lorac_dataset_n_tokens(ev_a) == lorac_dataset_n_tokens(all));
    CHECK(lorac_dataset_n_trainable(a) + lorac_dataset_n_trainable(ev_a) == lorac_dataset_n_trainable(all));
    /* each side counts its own truncated examples (at seq 64 many of the stories are) */
    CHECK(lorac_dataset_n_truncated(all) > 20 && lorac_dataset_n_truncated(ev_a) > 0 &&
          lorac_dataset_n_truncated(a) + lorac_dataset_n_truncated(ev_a) == lorac_dataset_n_truncated(all));
    int64_t full_len = 0;
    for (int64_t i = 0; i < lorac_dataset_n_examples(ev_a); i++) {
        const int32_t *t, *l;
        full_len += lorac_dataset_example(ev_a, i, &t, &l) == 65;
    }
    CHECK(lorac_dataset_n_truncated(ev_a) <= full_len);
    /* walk the original: each example is the next one of exactly one side */
    int64_t ia = 0, ie = 0, bad = 0, held_in_first_half = 0;
    for (int64_t i = 0; i < n; i++) {
        const int32_t *t, *l, *t2, *l2;
        int32_t len = lorac_dataset_example(all, i, &t, &l);
        lorac_dataset_t *side = NULL;
        int64_t *k = NULL;
        int32_t len_a = ia < lorac_dataset_n_examples(a) ? lorac_dataset_example(a, ia, &t2, &l2) : -1;
        if (len_a == len && !memcmp(t, t2, sizeof(int32_t) * (size_t)len) && !memcmp(l, l2, sizeof(int32_t) * (size_t)len)) {
            side = a; k = &ia;
        } else if (ie < lorac_dataset_n_examples(ev_a) && lorac_dataset_example(ev_a, ie, &t2, &l2) == len &&
                   !memcmp(t, t2, sizeof(int32_t) * (size_t)len) && !memcmp(l, l2, sizeof(int32_t) * (size_t)len)) {
            side = ev_a; k = &ie;
            held_in_first_half += i < n / 2;
        }
        if (!side) { bad++; continue; }
        (*k)++;
    }
    CHECK_MSG(bad == 0 && ia == n - 123 && ie == 123, "%lld examples on neither side", (long long)bad);
    CHECK(held_in_first_half > 30 && held_in_first_half < 93); /* spread over the file, not its head */
    /* the same seed holds out the same examples; another seed others */
    CHECK(lorac_dataset_split(b, 123, 7, &ev_b) == LORAC_STATUS_OK && ev_b);
    CHECK(ev_b && same_examples(ev_a, ev_b) && same_examples(a, b));
    lorac_dataset_free(ev_b);
    lorac_dataset_free(b);
    b = load_ok(fx, g_tl, &p);
    CHECK(lorac_dataset_split(b, 123, 8, &ev_b) == LORAC_STATUS_OK);
    CHECK(ev_b && !same_examples(ev_a, ev_b));
    /* both sides batch through a whole epoch */
    lorac_dataset_t *sides[2] = {a, ev_a};
    for (int s = 0; s < 2; s++) {
        int32_t tok[4 * 64], tgt[4 * 64], pos[4 * 64];
        lorac_data_cursor_t cur = lorac_data_cursor_init(1, true);
        lorac_data_batch_info_t info = {0};
        int64_t examples = 0;
        for (int i = 0; i < 10000 && !info.epoch_end; i++) {
            if (lorac_dataset_read_batch(sides[s], &cur, 4, 64, false, tok, tgt, pos, NULL, &info)) { CHECK(0); break; }
            examples += info.examples;
        }
        CHECK(examples == lorac_dataset_n_examples(sides[s]));
    }
    /* --eval-split's sizes */
    CHECK(lorac_dataset_split_size(1230, 0.1) == 123 && lorac_dataset_split_size(1230, 200) == 200);
    CHECK(lorac_dataset_split_size(3, 0.01) == 1 && lorac_dataset_split_size(1230, 1) == 1);
    CHECK(lorac_dataset_split_size(10, 0) == -1 && lorac_dataset_split_size(10, -0.5) == -1 &&
          lorac_dataset_split_size(10, 2.5) == -1);
    /* nothing left on one side */
    lorac_dataset_t *ev = NULL;
    CHECK(lorac_dataset_split(all, n, 7, &ev) == LORAC_STATUS_INVALID_ARG && !ev &&
          strstr(lorac_error_message(), "nothing to train on"));
    CHECK(lorac_dataset_split(all, 0, 7, &ev) == LORAC_STATUS_INVALID_ARG && !ev);
    CHECK(lorac_dataset_n_examples(all) == n); /* a refused split changes nothing */
    lorac_dataset_free(ev_a); lorac_dataset_free(ev_b); lorac_dataset_free(a); lorac_dataset_free(b); lorac_dataset_free(all);

    /* masked labels (alpaca: the loss only on responses, some cut off by a
     * short seq): the counts of trainable labels and of examples with
     * nothing to learn split exactly, though the kept side is compacted in
     * place (it once counted labels from the moved-over source). At 80
     * tokens many responses are cut off; at 1024 lengths vary, so a
     * held-out example is often shorter than the kept one after it. */
    snprintf(fx, sizeof fx, "%s/datasets/alpaca/alpaca_data_1k.json", tl_fixtures());
    for (int32_t seq = 80; seq <= 1024; seq += 944) {
        p.seq_len = seq;
        all = load_ok(fx, g_tl, &p);
        a = load_ok(fx, g_tl, &p);
        ev_a = NULL;
        if (!all || !a) return;
        if (seq == 80)
            CHECK_MSG(lorac_dataset_n_without_targets(all) > 10 &&
                      lorac_dataset_n_without_targets(all) < lorac_dataset_n_examples(all),
                      "%lld without targets", (long long)lorac_dataset_n_without_targets(all));
        CHECK(lorac_dataset_split(a, 300, 3, &ev_a) == LORAC_STATUS_OK && ev_a);
        if (ev_a) {
            CHECK(lorac_dataset_n_trainable(a) + lorac_dataset_n_trainable(ev_a) == lorac_dataset_n_trainable(all));
            CHECK(lorac_dataset_n_without_targets(a) + lorac_dataset_n_without_targets(ev_a) ==
                  lorac_dataset_n_without_targets(all));
            int64_t direct = 0, none = 0;
            for (int64_t i = 0; i < lorac_dataset_n_examples(a); i++) {
                const int32_t *t, *l;
                int32_t len = lorac_dataset_example(a, i, &t, &l), any = 0;
                for (int32_t k = 0; k < len; k++) direct += l[k] != -100, any |= k > 0 && l[k] != -100;
                none += !any;
            }
            CHECK_MSG(direct == lorac_dataset_n_trainable(a) && none == lorac_dataset_n_without_targets(a),
                      "seq %d: %lld trainable labels counted, %lld in the kept side", seq, (long long)direct,
                      (long long)lorac_dataset_n_trainable(a));
        }
        lorac_dataset_free(ev_a); lorac_dataset_free(a); lorac_dataset_free(all);
    }
    /* the overlap made certain: a 3-token example held out before a kept
     * 40-token one whose last 10 labels count */
    char two[1024];
    int used = snprintf(two, sizeof two, "{\"input_ids\": [1, 2, 3], \"labels\": [-100, -100, 3]}\n{\"input_ids\": [");
    for (int k = 0; k < 40; k++) used += snprintf(two + used, sizeof two - (size_t)used, "%s%d", k ? ", " : "", 10 + k);
    used += snprintf(two + used, sizeof two - (size_t)used, "], \"labels\": [");
    for (int k = 0; k < 40; k++) used += snprintf(two + used, sizeof two - (size_t)used, "%s%d", k ? ", " : "", k < 30 ? -100 : 10 + k);
    used += snprintf(two + used, sizeof two - (size_t)used, "]}\n");
    int checked = 0;
    for (uint64_t seed = 1; seed < 40 && !checked; seed++) {
        lorac_dataset_params_t q = lorac_dataset_default_params();
        q.seq_len = 64;
        lorac_dataset_t *d = NULL, *e = NULL;
        CHECK(lorac_dataset_load_memory(two, (size_t)used, "two.jsonl", NULL, &q, &d) == LORAC_STATUS_OK);
        if (d && lorac_dataset_split(d, 1, seed, &e) == LORAC_STATUS_OK && lorac_dataset_n_tokens(e) == 3) {
            CHECK_MSG(lorac_dataset_n_trainable(d) == 10 && lorac_dataset_n_trainable(e) == 1,
                      "kept side: %lld trainable labels, 10 expected", (long long)lorac_dataset_n_trainable(d));
            checked = 1;
        }
        lorac_dataset_free(e);
        lorac_dataset_free(d);
    }
    CHECK(checked);
}

static void test_determinism_resume(void) {
    const int N = 29, T = 12, B = 2, STEPS = 50, CUT = 17;
    for (int pack = 0; pack < 2; pack++) {
        lorac_dataset_t *a = synthetic(N, T, len_var), *b = synthetic(N, T, len_var);
        rows_t ra = rows_alloc(B, T), rb = rows_alloc(B, T);
        size_t sz = (size_t)B * T * sizeof(int32_t);
        int32_t *log = malloc(sz * STEPS);
        lorac_data_cursor_t ca = lorac_data_cursor_init(1234, true);
        for (int s = 0; s < STEPS; s++) {
            lorac_dataset_next_batch(a, &ca, B, T, pack, ra.tok, ra.tgt, ra.pos);
            memcpy(log + (size_t)s * B * T, ra.tok, sz);
        }
        /* run b to CUT, "checkpoint" the cursor as bytes, restore into a new dataset */
        lorac_data_cursor_t cb = lorac_data_cursor_init(1234, true);
        int same = 1;
        for (int s = 0; s < CUT; s++) {
            lorac_dataset_next_batch(b, &cb, B, T, pack, rb.tok, rb.tgt, rb.pos);
            same &= !memcmp(rb.tok, log + (size_t)s * B * T, sz);
        }
        CHECK_MSG(same, "pack %d: same seed, different batches", pack);
        unsigned char saved[sizeof cb];
        memcpy(saved, &cb, sizeof cb);
        CHECK(cb.index != 0); /* mid-epoch */
        lorac_dataset_free(b);
        b = synthetic(N, T, len_var);
        lorac_data_cursor_t cr;
        memcpy(&cr, saved, sizeof cr);
        same = 1;
        for (int s = CUT; s < STEPS; s++) {
            lorac_dataset_next_batch(b, &cr, B, T, pack, rb.tok, rb.tgt, rb.pos);
            same &= !memcmp(rb.tok, log + (size_t)s * B * T, sz);
        }
        CHECK_MSG(same, "pack %d: resumed run differs", pack);
        CHECK(cr.epoch == ca.epoch && cr.index == ca.index);
        /* epochs and seeds give different orders */
        int32_t o1[8], o2[8], o3[8];
        for (int e = 0; e < 3; e++) {
            lorac_data_cursor_t c = lorac_data_cursor_init(e == 2 ? 99 : 1234, true);
            c.epoch = e == 1;
            for (int i = 0; i < 8; i++) {
                lorac_dataset_next_batch(b, &c, 1, T, false, rb.tok, rb.tgt, rb.pos);
                (e == 0 ? o1 : e == 1 ? o2 : o3)[i] = rb.tok[0];
            }
        }
        CHECK(memcmp(o1, o2, sizeof o1) != 0 && memcmp(o1, o3, sizeof o1) != 0);
        free(log);
        rows_free(&ra);
        rows_free(&rb);
        lorac_dataset_free(a);
        lorac_dataset_free(b);
    }
}

int main(void) {
    char path[1200];
    snprintf(path, sizeof path, "%s/tokenizers/tinyllama-1.1b-chat-v1.0/tokenizer.json", tl_fixtures());
    if (lorac_tokenizer_load_json(path, &g_tl)) { fprintf(stderr, "%s\n", lorac_error_message()); return 1; }
    snprintf(path, sizeof path, "%s/tokenizers/smollm2-360m-instruct-ft/tokenizer.json", tl_fixtures());
    if (lorac_tokenizer_load_json(path, &g_sm)) { fprintf(stderr, "%s\n", lorac_error_message()); return 1; }
    snprintf(g_tl_cfg, sizeof g_tl_cfg, "%s/tokenizers/tinyllama-1.1b-chat-v1.0/tokenizer_config.json", tl_fixtures());
    snprintf(g_sm_cfg, sizeof g_sm_cfg, "%s/tokenizers/smollm2-360m-instruct-ft/tokenizer_config.json", tl_fixtures());

    test_text();
    test_completion();
    test_alpaca();
    test_chat_render();
    test_chat_recognize();
    test_chat_golden();
    test_chat_phi3_data();
    test_chat_phi4_data();
    test_chat_phi4_mini_data();
    test_chat_gemma_data();
    test_chat_data();
    test_chat_mistral_data();
    test_chat_mistral_v3_data();
    test_samsum_and_tinystories();
    test_sharegpt();
    test_columns();
    test_auto();
    test_malformed();
    test_skip_bad();
    test_truncation();
    test_tokens();
    test_batches();
    test_determinism_resume();
    test_split();

    lorac_tokenizer_free(g_tl);
    lorac_tokenizer_free(g_sm);
    return tl_finish("test_dataset");
}
