/* lorac convert --from llama2c: llama2.c checkpoint (+ tokenizer.bin) to a
 * HuggingFace model directory that runs through the same code as any HF
 * Llama model. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "lorac/export.h"
#include "lorac/formats.h"
#include "lorac/gguf.h"
#include "lorac/lora.h"
#include "lorac/safetensors.h"
#include "lorac/tokenizer.h"

static const char *k_usage =
    "usage: lorac convert --from llama2c CHECKPOINT.bin [--tokenizer TOKENIZER.bin] -o MODEL_DIR\n"
    "       lorac convert --to gguf MODEL_DIR -o MODEL.gguf [--outtype auto|f32|f16|bf16|q8_0]\n"
    "       lorac convert --to gguf --adapter ADAPTER_DIR --base MODEL_DIR -o ADAPTER.gguf [--outtype f32|f16|bf16]\n"
    "  --from llama2c writes config.json, model.safetensors (float32) and, with\n"
    "  --tokenizer, tokenizer.json. q/k rows move from llama2.c's interleaved\n"
    "  rotary layout to HuggingFace's rotate-half layout.\n"
    "  --to gguf writes a HuggingFace model, or a PEFT LoRA adapter of one, as\n"
    "  the GGUF file llama.cpp reads (llama-cli -m MODEL.gguf --lora ADAPTER.gguf).\n"
    "  --outtype: the matrices' type; auto (models) keeps the model's own, q8_0\n"
    "  (models) is llama.cpp's 8-bit blocks, f32 is the default for adapters.\n";

/* --outtype's value as a ggml type: auto (models), f32, f16, bf16, q8_0 (models) */
static uint32_t parse_outtype(const char *v, bool model) {
    if (model && !strcmp(v, "auto")) return LORAC_EXPORT_TYPE_AUTO;
    if (model && !strcmp(v, "q8_0")) return LORAC_GGML_TYPE_Q8_0;
    if (!strcmp(v, "f32")) return LORAC_GGML_TYPE_F32;
    if (!strcmp(v, "f16")) return LORAC_GGML_TYPE_F16;
    if (!strcmp(v, "bf16")) return LORAC_GGML_TYPE_BF16;
    cli_usage_error("convert", "--outtype must be %s, not '%s'", model ? "auto, f32, f16, bf16 or q8_0" : "f32, f16 or bf16",
                    v);
}

/* lorac convert --to gguf: a model directory, or an adapter with its base. */
static int convert_to_gguf(const char *model_dir, const char *adapter_dir, const char *base_dir, const char *outtype,
                           const char *out_path) {
    if (!adapter_dir) {
        if (!model_dir) cli_usage_error("convert", "--to gguf needs MODEL_DIR (or --adapter DIR --base MODEL_DIR)");
        if (base_dir) cli_usage_error("convert", "--base goes with --adapter");
        cli_check(lorac_export_model_gguf(model_dir, outtype ? parse_outtype(outtype, true) : LORAC_EXPORT_TYPE_AUTO, out_path));
        fprintf(stderr, "wrote %s (llama.cpp GGUF model) from %s\n", out_path, model_dir);
        return 0;
    }
    if (model_dir) cli_usage_error("convert", "give MODEL_DIR or --adapter, not both");
    if (!base_dir) cli_usage_error("convert", "--adapter needs --base MODEL_DIR (the adapter's base model)");
    uint32_t type = outtype ? parse_outtype(outtype, false) : LORAC_GGML_TYPE_F32;
    char *cfg_path = lorac_path_join(base_dir, "config.json");
    if (!cfg_path) cli_die("out of memory");
    size_t len = 0;
    char *text = cli_read_file(cfg_path, &len);
    lorac_model_config_t config;
    cli_check(lorac_model_config_parse(text, len, cfg_path, &config));
    lorac_adapter_t *adapter = NULL;
    cli_check(lorac_adapter_load(adapter_dir, &config, &adapter));
    cli_check(lorac_export_adapter_gguf(adapter, &config, type, out_path));
    fprintf(stderr, "wrote %s (llama.cpp GGUF LoRA, %d modules, alpha %g) from %s\n", out_path,
            lorac_adapter_n_modules(adapter), (double)lorac_adapter_params(adapter)->alpha, adapter_dir);
    lorac_adapter_free(adapter);
    free(text);
    free(cfg_path);
    return 0;
}

/* llama2.c (like Meta's checkpoints) rotates pairs (2j, 2j+1) of each head;
 * HF rotates (j, j + hd/2). Row h*hd + 2j + s moves to h*hd + s*hd/2 + j,
 * the inverse of HF's convert_llama_weights_to_hf permute(). */
static float *permute_rotary(const float *w, int32_t n_heads, int32_t head_dim, int32_t cols) {
    float *out = malloc(sizeof(float) * (size_t)n_heads * (size_t)head_dim * (size_t)cols);
    if (!out) cli_die("out of memory");
    int32_t half = head_dim / 2;
    for (int32_t h = 0; h < n_heads; h++)
        for (int32_t j = 0; j < half; j++)
            for (int32_t s = 0; s < 2; s++) {
                const float *src = w + ((size_t)h * head_dim + 2 * j + s) * (size_t)cols;
                float *dst = out + ((size_t)h * head_dim + s * half + j) * (size_t)cols;
                memcpy(dst, src, sizeof(float) * (size_t)cols);
            }
    return out;
}

static void write_config(const char *dir, const lorac_llama2c_checkpoint_t *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON *archs = cJSON_AddArrayToObject(o, "architectures");
    cJSON_AddItemToArray(archs, cJSON_CreateString("LlamaForCausalLM"));
    cJSON_AddStringToObject(o, "model_type", "llama");
    cJSON_AddNumberToObject(o, "hidden_size", c->dim);
    cJSON_AddNumberToObject(o, "intermediate_size", c->hidden_dim);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(o, "num_attention_heads", c->n_heads);
    cJSON_AddNumberToObject(o, "num_key_value_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(o, "max_position_embeddings", c->seq_len);
    cJSON_AddNumberToObject(o, "rms_norm_eps", 1e-5); /* llama2.c's RMSNorm epsilon */
    cJSON_AddNumberToObject(o, "rope_theta", 10000.0);
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->shared_classifier);
    cJSON_AddNumberToObject(o, "bos_token_id", 1);
    cJSON_AddNumberToObject(o, "eos_token_id", 2);
    cJSON_AddStringToObject(o, "torch_dtype", "float32");
    char *text = cJSON_Print(o);
    char *path = lorac_path_join(dir, "config.json");
    if (!text || !path) cli_die("out of memory");
    cli_check(lorac_file_write_atomic(path, text, strlen(text)));
    free(text); free(path);
    cJSON_Delete(o);
}

int cmd_convert(int argc, char **argv) {
    const char *from = NULL, *ckpt_path = NULL, *tok_path = NULL, *out_dir = NULL;
    const char *to = NULL, *model_dir = NULL, *adapter_dir = NULL, *base_dir = NULL, *outtype = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { fputs(k_usage, stdout); return 0; }
        else if (!strcmp(a, "--from")) { from = cli_value(argc, argv, &i, "convert"); ckpt_path = cli_value(argc, argv, &i, "convert"); }
        else if (!strcmp(a, "--to")) to = cli_value(argc, argv, &i, "convert");
        else if (!strcmp(a, "--tokenizer")) tok_path = cli_value(argc, argv, &i, "convert");
        else if (!strcmp(a, "--adapter")) adapter_dir = cli_value(argc, argv, &i, "convert");
        else if (!strcmp(a, "--base")) base_dir = cli_value(argc, argv, &i, "convert");
        else if (!strcmp(a, "--outtype")) outtype = cli_value(argc, argv, &i, "convert");
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out_dir = cli_value(argc, argv, &i, "convert");
        else if (a[0] != '-' && to && !model_dir) model_dir = a;
        else cli_usage_error("convert", "unknown option '%s'", a);
    }
    if (from && to) cli_usage_error("convert", "give --from or --to, not both");
    if (to) {
        if (strcmp(to, "gguf") != 0) cli_usage_error("convert", "unknown target format '%s' (only gguf)", to);
        if (!out_dir) cli_usage_error("convert", "-o FILE.gguf is required");
        if (tok_path) cli_usage_error("convert", "--tokenizer goes with --from llama2c");
        return convert_to_gguf(model_dir, adapter_dir, base_dir, outtype, out_dir);
    }
    if (adapter_dir || base_dir || outtype) cli_usage_error("convert", "--adapter, --base and --outtype go with --to gguf");
    if (!from || !out_dir) cli_usage_error("convert", "--from llama2c CHECKPOINT and -o MODEL_DIR are required");
    if (strcmp(from, "llama2c") != 0) cli_usage_error("convert", "unknown source format '%s' (only llama2c)", from);

    lorac_llama2c_checkpoint_t c;
    cli_check(lorac_llama2c_open(ckpt_path, &c));
    lorac_tokenizer_t *tok = NULL;
    if (tok_path) cli_check(lorac_tokenizer_load_llama2c(tok_path, c.vocab_size, &tok));
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) cli_die("%s: cannot create directory: %s", out_dir, strerror(errno));

    int32_t D = c.dim, F = c.hidden_dim, L = c.n_layers, hd = c.dim / c.n_heads, KV = hd * c.n_kv_heads;
    size_t n_tensors = 3 + 9 * (size_t)L;
    lorac_tensor_write_t *t = calloc(n_tensors, sizeof *t);
    char (*names)[96] = calloc(n_tensors, sizeof *names);
    float **owned = calloc(2 * (size_t)L, sizeof *owned);
    if (!t || !names || !owned) cli_die("out of memory");
    size_t k = 0;
#define ADD(NAME_FMT, LAYER, PTR, D0, D1)                                         \
    do {                                                                      \
        snprintf(names[k], sizeof names[k], NAME_FMT, LAYER);                 \
        t[k].name = names[k]; t[k].dtype = LORAC_DTYPE_F32; t[k].data = (PTR); \
        t[k].shape[0] = (D0); t[k].shape[1] = (D1); t[k].n_dims = (D1) ? 2 : 1; \
        k++;                                                                  \
    } while (0)
    ADD("model.embed_tokens.weight%.0d", 0, c.token_embedding, c.vocab_size, D);
    for (int32_t l = 0; l < L; l++) {
        owned[2 * l] = permute_rotary(c.wq + (size_t)l * D * D, c.n_heads, hd, D);
        owned[2 * l + 1] = permute_rotary(c.wk + (size_t)l * KV * D, c.n_kv_heads, hd, D);
        ADD("model.layers.%d.input_layernorm.weight", l, c.rms_att + (size_t)l * D, D, 0);
        ADD("model.layers.%d.self_attn.q_proj.weight", l, owned[2 * l], D, D);
        ADD("model.layers.%d.self_attn.k_proj.weight", l, owned[2 * l + 1], KV, D);
        ADD("model.layers.%d.self_attn.v_proj.weight", l, c.wv + (size_t)l * KV * D, KV, D);
        ADD("model.layers.%d.self_attn.o_proj.weight", l, c.wo + (size_t)l * D * D, D, D);
        ADD("model.layers.%d.post_attention_layernorm.weight", l, c.rms_ffn + (size_t)l * D, D, 0);
        ADD("model.layers.%d.mlp.gate_proj.weight", l, c.w1 + (size_t)l * F * D, F, D);
        ADD("model.layers.%d.mlp.down_proj.weight", l, c.w2 + (size_t)l * D * F, D, F);
        ADD("model.layers.%d.mlp.up_proj.weight", l, c.w3 + (size_t)l * F * D, F, D);
    }
    ADD("model.norm.weight%.0d", 0, c.rms_final, D, 0);
    if (!c.shared_classifier) ADD("lm_head.weight%.0d", 0, c.wcls, c.vocab_size, D);
#undef ADD
    char *st_path = lorac_path_join(out_dir, "model.safetensors");
    if (!st_path) cli_die("out of memory");
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    cli_check(lorac_safetensors_write(st_path, t, (int64_t)k, mk, mv, 1));
    write_config(out_dir, &c);
    if (tok) {
        char *tj = lorac_path_join(out_dir, "tokenizer.json");
        if (!tj) cli_die("out of memory");
        cli_check(lorac_tokenizer_save_llama2c_as_json(tok, tj));
        free(tj);
    }
    fprintf(stderr, "converted %s (dim %d, %d layers, %d heads, %d kv heads, vocab %d) to %s\n", ckpt_path, D, L,
            c.n_heads, c.n_kv_heads, c.vocab_size, out_dir);
    for (int32_t i = 0; i < 2 * L; i++) free(owned[i]);
    free(owned); free(names); free(t); free(st_path);
    lorac_tokenizer_free(tok);
    lorac_llama2c_close(&c);
    return 0;
}
