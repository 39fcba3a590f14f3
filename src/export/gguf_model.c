/* A HuggingFace model directory as a llama.cpp GGUF model, the file its
 * convert_hf_to_gguf.py would write: the same metadata keys, tensor names
 * and layouts, so that llama.cpp loads it and lorac's GGUF adapters fit it.
 * Every architecture lorac runs: Llama and Mistral ("llama", q/k rows
 * permuted to GGML's interleaved rotary order, Llama 3's rope scaling as
 * the rope_freqs tensor), Qwen2, Qwen3, Granite (its four multipliers),
 * SmolLM3, Gemma 2 and 3 (norm weights stored as 1 + w, as llama.cpp's
 * RMSNorm multiplies by the weight alone; soft-caps; windows) and Phi-3
 * (fused projections; longrope as its two factor tensors), and GPT-2
 * (its Conv1D weights transposed to (out, in), as the converter does, and
 * a tied head written as "output" too, as there). Where llama.cpp
 * fixes by architecture what a config may vary (which layers have a window,
 * Gemma's attention scale, SmolLM3's NoPE layers), a config that differs
 * is refused rather than written into a file that would compute something
 * else. Tokenizers: see tokenizer/tok_gguf.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "export/export_internal.h"
#include "lorac/dataset.h"
#include "lorac/export.h"
#include "lorac/gguf.h"
#include "lorac/kernels.h"
#include "lorac/safetensors.h"
#include "lorac/tokenizer.h"
#include "tokenizer/tok_gguf.h"

/* llama.cpp's file types (llama_ftype) */
enum { FTYPE_ALL_F32 = 0, FTYPE_MOSTLY_F16 = 1, FTYPE_MOSTLY_Q8_0 = 7, FTYPE_MOSTLY_BF16 = 32 };

/* One tensor's source and conversion, for the writer's fill callback. */
typedef struct {
    const lorac_tensor_view_t *src;
    uint32_t type;                  /* ggml type written */
    bool rotary;                    /* q or k of an architecture whose rows are permuted */
    bool transpose;                 /* a GPT-2 Conv1D weight: (in, out) in the file, written (out, in) */
    float shift;                    /* added to every value: Gemma's norms are 1 + w */
    const lorac_model_config_t *config;
} tensor_job_t;

static lorac_status_t fill_tensor(void *user, void *dst, uint64_t nbytes) {
    const tensor_job_t *j = user;
    (void)nbytes; /* the writer sized dst from the same shape and type */
    int64_t n = j->src->n_elements, cols = j->src->n_dims == 2 ? j->src->shape[j->transpose ? 0 : 1] : n;
    int64_t rows = n / (cols ? cols : 1);
    size_t es = lorac_dtype_size(j->src->dtype), src_row = (size_t)cols * es;
    float *row = malloc((size_t)(cols ? cols : 1) * sizeof *row);
    if (!row) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    /* bytes of one row in the written type */
    int64_t row_bytes = cols / lorac_ggml_block_size(j->type) * lorac_ggml_type_size(j->type);
    for (int64_t r = 0; r < rows; r++) {
        int64_t from = j->rotary ? lorac_export_rotary_row(j->config, r) : r;
        if (j->transpose) /* row r is column r of the (in, out) weight */
            for (int64_t c = 0; c < cols; c++)
                lorac_convert_to_f32(row + c, (const uint8_t *)j->src->data + (size_t)(c * rows + r) * es, j->src->dtype, 1);
        else
            lorac_convert_to_f32(row, (const uint8_t *)j->src->data + (size_t)from * src_row, j->src->dtype, cols);
        if (j->shift != 0.0f)
            for (int64_t c = 0; c < cols; c++) row[c] += j->shift;
        lorac_export_store((uint8_t *)dst + r * row_bytes, row, cols, j->type);
    }
    free(row);
    return LORAC_STATUS_OK;
}

static bool layer_windowed(const lorac_model_config_t *c, int32_t l) { return lorac_model_layer_window(c, l) > 0; }

/* true when the config's windowed layers are those llama.cpp gives a
 * window by architecture: a pattern of period n whose last layer is global
 * (Gemma 2: n 2, Gemma 3: n 6), or every layer (n 1). */
static bool windows_match(const lorac_model_config_t *c, int32_t n) {
    for (int32_t l = 0; l < c->n_layers; l++)
        if (layer_windowed(c, l) != (n == 1 || l % n < n - 1)) return false;
    return true;
}

/* Gemma's attention scale in llama.cpp: 1/sqrt(head_dim), but for the 27B
 * models (Gemma 2: 46 layers, Gemma 3: 62) 1/sqrt(hidden / heads); lorac's
 * query_scale is sqrt(head_dim / query_pre_attn_scalar). */
static bool gemma_scale_matches(const lorac_model_config_t *c) {
    bool big = c->n_layers == (c->arch == LORAC_ARCH_GEMMA2 ? 46 : 62);
    double scalar = big ? (double)c->hidden_size / c->n_heads : (double)c->head_dim;
    double want = sqrt((double)c->head_dim / scalar);
    return fabs(c->query_scale - want) <= 1e-6 * want;
}

/* What lorac can write for llama.cpp; LORAC_STATUS_UNSUPPORTED otherwise. */
static lorac_status_t check_exportable(const lorac_model_config_t *c, const char *dir) {
    const char *why = NULL;
    bool gemma = c->arch == LORAC_ARCH_GEMMA2 || c->arch == LORAC_ARCH_GEMMA3;
    if (!lorac_export_gguf_arch(c))
        why = "lorac writes no llama.cpp file of this architecture yet";
    else if (c->bnb_nf4)
        why = "a bitsandbytes 4-bit checkpoint's projections have no llama.cpp type (export the unquantized model)";
    else if (c->attn_scale_by_layer)
        why = "llama.cpp's gpt2 has no scale_attn_by_inverse_layer_idx";
    else if (c->text_of_multimodal)
        why = "a multimodal checkpoint's text model is not written (llama.cpp keeps the vision tower in a separate mmproj file)";
    else if (gemma && c->sliding_window && !windows_match(c, c->arch == LORAC_ARCH_GEMMA2 ? 2 : 6))
        why = "its windowed layers are not the ones llama.cpp windows (Gemma 2: every other one; Gemma 3: all but every 6th)";
    else if (gemma && !gemma_scale_matches(c))
        why = "query_pre_attn_scalar is not the one llama.cpp uses for this model size";
    else if (c->arch == LORAC_ARCH_GEMMA3 && c->sliding_window && c->rope_local_theta != 10000.0f)
        why = "llama.cpp rotates Gemma 3's windowed layers with base 10000";
    else if (c->arch == LORAC_ARCH_SMOLLM3) {
        for (int32_t l = 0; l < c->n_layers && !why; l++)
            if (lorac_model_layer_has_rope(c, l) != ((l + 1) % 4 != 0))
                why = "llama.cpp's SmolLM3 has no rotary in every 4th layer exactly";
    } else if (c->rotary_dim != c->head_dim && c->arch != LORAC_ARCH_PHI3 && !c->learned_positions)
        why = "partial rotary embeddings are only written for Phi-3";
    else if (c->rope_longrope && c->arch != LORAC_ARCH_PHI3)
        why = "longrope is only written for Phi-3";
    else if (c->qk_norm && c->arch != LORAC_ARCH_QWEN3 && c->arch != LORAC_ARCH_GEMMA3)
        why = "q/k norms are only written for Qwen3 and Gemma 3";
    if (why) return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s (%s): %s", dir, c->arch_name, why);
    /* written as llama.cpp's own converter writes them, which its model
     * then runs without the window (Mistral 7B v0.1, Phi-3-mini) */
    if (c->sliding_window && !gemma)
        fprintf(stderr, "lorac: warning: %s (%s): llama.cpp's %s attends to every earlier position; past %d tokens its "
                        "outputs differ from transformers', which keeps a window of %d\n",
                dir, c->arch_name, lorac_export_gguf_arch(c), (int)c->sliding_window, (int)c->sliding_window);
    return LORAC_STATUS_OK;
}

/* Llama 3's rope scaling as llama.cpp's per-frequency divisors (its
 * converter's generate_extra_tensors, from transformers' formula). */
static float *llama3_rope_freqs(const lorac_model_config_t *c) {
    int32_t half = c->head_dim / 2;
    float *f = malloc((size_t)half * sizeof *f);
    if (!f) return NULL;
    double low_wavelen = c->rope_original_max_position / c->rope_low_freq_factor;
    double high_wavelen = c->rope_original_max_position / c->rope_high_freq_factor;
    for (int32_t i = 0; i < half; i++) {
        double freq = 1.0 / pow((double)c->rope_theta, (2.0 * i) / c->head_dim);
        double wavelen = 2.0 * 3.14159265358979323846 / freq;
        if (wavelen < high_wavelen) f[i] = 1.0f;
        else if (wavelen > low_wavelen) f[i] = c->rope_factor;
        else {
            double smooth = (c->rope_original_max_position / wavelen - c->rope_low_freq_factor) /
                            (c->rope_high_freq_factor - c->rope_low_freq_factor);
            f[i] = (float)(1.0 / ((1.0 - smooth) / c->rope_factor + smooth));
        }
    }
    return f;
}

static bool is_bias(lorac_tensor_kind_t k) {
    return k == LORAC_TENSOR_Q_BIAS || k == LORAC_TENSOR_K_BIAS || k == LORAC_TENSOR_V_BIAS || k == LORAC_TENSOR_O_BIAS ||
           k == LORAC_TENSOR_GATE_BIAS || k == LORAC_TENSOR_UP_BIAS || k == LORAC_TENSOR_DOWN_BIAS ||
           k == LORAC_TENSOR_QKV_BIAS || k == LORAC_TENSOR_ATTN_NORM_BIAS || k == LORAC_TENSOR_FFN_NORM_BIAS ||
           k == LORAC_TENSOR_FINAL_NORM_BIAS;
}
static bool is_norm(lorac_tensor_kind_t k) {
    return k == LORAC_TENSOR_FINAL_NORM || k == LORAC_TENSOR_ATTN_NORM || k == LORAC_TENSOR_FFN_NORM ||
           k == LORAC_TENSOR_Q_NORM || k == LORAC_TENSOR_K_NORM || k == LORAC_TENSOR_ATTN_POST_NORM ||
           k == LORAC_TENSOR_FFN_POST_NORM;
}

/* Whether the config's model has a tensor of this kind (in each layer). */
static bool kind_present(const lorac_model_config_t *c, lorac_tensor_kind_t k) {
    switch (k) {
    /* llama.cpp reuses token_embd; GPT-2's converter writes the tied head
     * as output too */
    case LORAC_TENSOR_LM_HEAD: return !c->tie_word_embeddings || c->arch == LORAC_ARCH_GPT2;
    case LORAC_TENSOR_Q: case LORAC_TENSOR_K: case LORAC_TENSOR_V: return !c->fused_proj && !c->fused_qkv;
    case LORAC_TENSOR_GATE: return !c->fused_proj && !c->plain_mlp;
    case LORAC_TENSOR_UP: return !c->fused_proj;
    case LORAC_TENSOR_QKV: return c->fused_proj || c->fused_qkv;
    case LORAC_TENSOR_GATE_UP: return c->fused_proj;
    case LORAC_TENSOR_Q_BIAS: case LORAC_TENSOR_K_BIAS: case LORAC_TENSOR_V_BIAS: return c->qkv_bias && !c->fused_qkv;
    case LORAC_TENSOR_QKV_BIAS: return c->qkv_bias && c->fused_qkv;
    case LORAC_TENSOR_O_BIAS: return c->o_bias;
    case LORAC_TENSOR_GATE_BIAS: return c->mlp_bias && !c->plain_mlp;
    case LORAC_TENSOR_UP_BIAS: case LORAC_TENSOR_DOWN_BIAS: return c->mlp_bias;
    case LORAC_TENSOR_POS_EMBED: return c->learned_positions;
    case LORAC_TENSOR_ATTN_NORM_BIAS: case LORAC_TENSOR_FFN_NORM_BIAS: case LORAC_TENSOR_FINAL_NORM_BIAS:
        return c->layer_norm;
    case LORAC_TENSOR_Q_NORM: case LORAC_TENSOR_K_NORM: return c->qk_norm;
    case LORAC_TENSOR_ATTN_POST_NORM: case LORAC_TENSOR_FFN_POST_NORM: return c->sandwich_norms;
    default: return true;
    }
}

static lorac_status_t set_hparams(lorac_gguf_writer_t *w, const lorac_model_config_t *c, const char *arch) {
    char key[96];
    lorac_status_t s = LORAC_STATUS_OK;
#define KEY(suffix) (snprintf(key, sizeof key, "%s.%s", arch, suffix), key)
    if (!s) s = lorac_gguf_set_u32(w, KEY("context_length"), (uint32_t)c->max_position_embeddings);
    if (!s) s = lorac_gguf_set_u32(w, KEY("embedding_length"), (uint32_t)c->hidden_size);
    if (!s) s = lorac_gguf_set_u32(w, KEY("block_count"), (uint32_t)c->n_layers);
    if (!s) s = lorac_gguf_set_u32(w, KEY("feed_forward_length"), (uint32_t)c->intermediate_size);
    if (!s) s = lorac_gguf_set_u32(w, KEY("attention.head_count"), (uint32_t)c->n_heads);
    if (!s) s = lorac_gguf_set_u32(w, KEY("attention.head_count_kv"), (uint32_t)c->n_kv_heads);
    if (c->learned_positions) { /* GPT-2: no rotary; a LayerNorm's eps */
        if (!s) s = lorac_gguf_set_f32(w, KEY("attention.layer_norm_epsilon"), c->rms_norm_eps);
        if (!s) s = lorac_gguf_set_u32(w, KEY("vocab_size"), (uint32_t)c->vocab_size);
        return s;
    }
    if (!s) s = lorac_gguf_set_f32(w, KEY("rope.freq_base"), c->rope_theta);
    if (!s) s = lorac_gguf_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), c->rms_norm_eps);
    if (!s) s = lorac_gguf_set_u32(w, KEY("rope.dimension_count"), (uint32_t)c->rotary_dim);
    if (!s && c->head_dim * c->n_heads != c->hidden_size) {
        s = lorac_gguf_set_u32(w, KEY("attention.key_length"), (uint32_t)c->head_dim);
        if (!s) s = lorac_gguf_set_u32(w, KEY("attention.value_length"), (uint32_t)c->head_dim);
    }
    if (!s) s = lorac_gguf_set_u32(w, KEY("vocab_size"), (uint32_t)c->vocab_size);
    if (!s && c->rope_linear_factor != 1.0f) {
        s = lorac_gguf_set_string(w, KEY("rope.scaling.type"), "linear");
        if (!s) s = lorac_gguf_set_f32(w, KEY("rope.scaling.factor"), c->rope_linear_factor);
    }
    if (!s && c->sliding_window && (c->arch == LORAC_ARCH_GEMMA2 || c->arch == LORAC_ARCH_GEMMA3))
        s = lorac_gguf_set_u32(w, KEY("attention.sliding_window"), (uint32_t)c->sliding_window);
    if (!s && c->rope_local_theta && c->sliding_window) s = lorac_gguf_set_f32(w, KEY("rope.freq_base_swa"), c->rope_local_theta);
    if (!s && c->attn_softcap) s = lorac_gguf_set_f32(w, KEY("attn_logit_softcapping"), c->attn_softcap);
    if (!s && c->final_softcap) s = lorac_gguf_set_f32(w, KEY("final_logit_softcapping"), c->final_softcap);
    if (!s && c->arch == LORAC_ARCH_GRANITE) {
        s = lorac_gguf_set_f32(w, KEY("embedding_scale"), c->embedding_multiplier);
        if (!s) s = lorac_gguf_set_f32(w, KEY("residual_scale"), c->residual_multiplier);
        if (!s) s = lorac_gguf_set_f32(w, KEY("logit_scale"), c->logits_scaling);
        if (!s) s = lorac_gguf_set_f32(w, KEY("attention.scale"), c->query_scale / sqrtf((float)c->head_dim));
    }
    if (!s && c->rope_longrope) {
        s = lorac_gguf_set_f32(w, KEY("rope.scaling.attn_factor"), c->rope_attention_factor);
        if (!s) s = lorac_gguf_set_u32(w, KEY("rope.scaling.original_context_length"), (uint32_t)c->rope_original_max_position);
    }
#undef KEY
    return s;
}

static lorac_status_t set_tokenizer(lorac_gguf_writer_t *w, const tok_gguf_vocab_t *v, const char *chat_template) {
    lorac_status_t s = lorac_gguf_set_string(w, "tokenizer.ggml.model", v->model);
    if (!s) s = lorac_gguf_set_string(w, "tokenizer.ggml.pre", v->pre);
    if (!s) s = lorac_gguf_set_array_string(w, "tokenizer.ggml.tokens", (const char *const *)v->tokens, v->token_lens, v->n_tokens);
    if (!s && v->scores) s = lorac_gguf_set_array_f32(w, "tokenizer.ggml.scores", v->scores, v->n_tokens);
    if (!s) s = lorac_gguf_set_array_i32(w, "tokenizer.ggml.token_type", v->types, v->n_tokens);
    if (!s && v->merges) s = lorac_gguf_set_array_string(w, "tokenizer.ggml.merges", (const char *const *)v->merges, NULL, v->n_merges);
    if (!s && v->bos >= 0) s = lorac_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos);
    if (!s && v->eos >= 0) s = lorac_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos);
    if (!s && v->unk >= 0) s = lorac_gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)v->unk);
    if (!s) s = lorac_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", v->add_bos);
    if (!s) s = lorac_gguf_set_bool(w, "tokenizer.ggml.add_eos_token", v->add_eos);
    if (!s && !strcmp(v->model, "llama")) s = lorac_gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", v->add_space_prefix);
    if (!s && chat_template) s = lorac_gguf_set_string(w, "tokenizer.chat_template", chat_template);
    return s;
}

/* The model's chat template (lorac_dataset_chat_template_text: the string,
 * a list's "default", or chat_template.jinja), malloc'd, or NULL when it has
 * none or no readable tokenizer_config.json. */
static char *read_chat_template(const char *dir) {
    char *path = lorac_path_join(dir, "tokenizer_config.json"), *out = NULL;
    if (path && lorac_dataset_chat_template_text(path, &out)) out = NULL;
    lorac_error_clear();
    free(path);
    return out;
}

lorac_status_t lorac_export_model_gguf(const char *model_dir, uint32_t ggml_type, const char *path) {
    if (!model_dir || !path) return lorac_error(LORAC_STATUS_INVALID_ARG, "export: NULL argument");
    if (ggml_type != LORAC_GGML_TYPE_F32 && ggml_type != LORAC_GGML_TYPE_F16 && ggml_type != LORAC_GGML_TYPE_BF16 &&
        ggml_type != LORAC_GGML_TYPE_Q8_0 && ggml_type != LORAC_EXPORT_TYPE_AUTO)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "export: GGUF matrices are written as F32, F16, BF16 or Q8_0");
    lorac_model_config_t config;
    lorac_weight_files_t *files = NULL;
    lorac_tokenizer_t *tok = NULL;
    lorac_gguf_writer_t *w = NULL;
    tok_gguf_vocab_t vocab = {0};
    tensor_job_t *jobs = NULL;
    float *rope_freqs = NULL;
    char *chat_template = NULL, *text = NULL, *cfg_path = lorac_path_join(model_dir, "config.json");
    char *tok_path = lorac_path_join(model_dir, "tokenizer.json");
    size_t len = 0;
    lorac_status_t s = !cfg_path || !tok_path ? lorac_error(LORAC_STATUS_NOMEM, "out of memory") : LORAC_STATUS_OK;
    if (!s) s = lorac_file_read(cfg_path, (size_t)16 << 20, &text, &len);
    if (!s) s = lorac_model_config_parse(text, len, cfg_path, &config);
    if (!s) s = check_exportable(&config, model_dir);
    if (!s) s = lorac_tokenizer_load_json(tok_path, &tok);
    if (!s && (s = tok_gguf_vocab(tok, config.vocab_size, &vocab)))
        s = lorac_error(s, "%s: %s", tok_path, lorac_error_message());
    if (!s) s = lorac_weight_files_open(model_dir, &files);
    if (s) goto done;

    const char *arch = lorac_export_gguf_arch(&config);
    const lorac_tensor_kind_t layer_kinds[] = {
        LORAC_TENSOR_ATTN_NORM, LORAC_TENSOR_ATTN_NORM_BIAS, LORAC_TENSOR_Q, LORAC_TENSOR_Q_BIAS, LORAC_TENSOR_K,
        LORAC_TENSOR_K_BIAS, LORAC_TENSOR_V, LORAC_TENSOR_V_BIAS, LORAC_TENSOR_O, LORAC_TENSOR_O_BIAS,
        LORAC_TENSOR_Q_NORM, LORAC_TENSOR_K_NORM, LORAC_TENSOR_QKV, LORAC_TENSOR_QKV_BIAS, LORAC_TENSOR_ATTN_POST_NORM,
        LORAC_TENSOR_FFN_NORM, LORAC_TENSOR_FFN_NORM_BIAS, LORAC_TENSOR_GATE, LORAC_TENSOR_GATE_BIAS, LORAC_TENSOR_UP,
        LORAC_TENSOR_UP_BIAS, LORAC_TENSOR_GATE_UP, LORAC_TENSOR_DOWN, LORAC_TENSOR_DOWN_BIAS,
        LORAC_TENSOR_FFN_POST_NORM};
    const int n_layer_kinds = (int)(sizeof layer_kinds / sizeof layer_kinds[0]);
    int64_t max_jobs = 6 + (int64_t)config.n_layers * n_layer_kinds;
    jobs = calloc((size_t)max_jobs, sizeof *jobs);
    w = lorac_gguf_writer_new();
    if (!jobs || !w) {
        s = lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", path);
        goto done;
    }
    char hf[256], name[LORAC_GGUF_MAX_NAME];
    const lorac_tensor_view_t *embed;
    lorac_tensor_name(&config, LORAC_TENSOR_EMBED, 0, hf, sizeof hf);
    if (!(embed = lorac_weight_files_find(files, hf))) {
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: missing tensor %s", model_dir, hf);
        goto done;
    }
    uint32_t matrix_type = ggml_type == LORAC_EXPORT_TYPE_AUTO ? lorac_export_ggml_type(embed->dtype) : ggml_type;
    s = lorac_gguf_set_string(w, "general.architecture", arch);
    if (!s) {
        const char *base = strrchr(model_dir, '/');
        char model_name[256];
        snprintf(model_name, sizeof model_name, "%s", base && base[1] ? base + 1 : model_dir);
        s = lorac_gguf_set_string(w, "general.name", model_name);
    }
    if (!s) s = lorac_gguf_set_u32(w, "general.file_type", matrix_type == LORAC_GGML_TYPE_F32    ? FTYPE_ALL_F32
                                                           : matrix_type == LORAC_GGML_TYPE_F16  ? FTYPE_MOSTLY_F16
                                                           : matrix_type == LORAC_GGML_TYPE_Q8_0 ? FTYPE_MOSTLY_Q8_0
                                                                                                 : FTYPE_MOSTLY_BF16);
    if (!s) s = set_hparams(w, &config, arch);
    if (!s) s = set_tokenizer(w, &vocab, (chat_template = read_chat_template(model_dir)));

    int64_t n_jobs = 0;
    for (int32_t l = -1; !s && l < config.n_layers; l++) {
        /* layer -1: the global tensors, written first as llama.cpp's converter does */
        const lorac_tensor_kind_t globals[] = {LORAC_TENSOR_EMBED, LORAC_TENSOR_POS_EMBED, LORAC_TENSOR_FINAL_NORM,
                                               LORAC_TENSOR_FINAL_NORM_BIAS, LORAC_TENSOR_LM_HEAD};
        int nk = l < 0 ? 5 : n_layer_kinds;
        for (int k = 0; !s && k < nk; k++) {
            lorac_tensor_kind_t kind = l < 0 ? globals[k] : layer_kinds[k];
            if (!kind_present(&config, kind)) continue;
            /* GPT-2's tied head: the embedding's rows again */
            lorac_tensor_kind_t src_kind = kind == LORAC_TENSOR_LM_HEAD && config.tie_word_embeddings ? LORAC_TENSOR_EMBED : kind;
            lorac_tensor_name(&config, src_kind, l, hf, sizeof hf);
            const lorac_tensor_view_t *t = lorac_weight_files_find(files, hf);
            if (!t) {
                s = lorac_error(LORAC_STATUS_FORMAT, "%s: missing tensor %s", model_dir, hf);
                break;
            }
            int64_t shape[2];
            int nd = lorac_tensor_expected_shape(src_kind, &config, shape);
            if (t->n_dims != nd || t->shape[0] != shape[0] || (nd == 2 && t->shape[1] != shape[1])) {
                s = lorac_error(LORAC_STATUS_FORMAT, "%s: tensor %s has shape [%lld, %lld] (%d dims), expected [%lld, %lld]",
                                model_dir, hf, (long long)(t->n_dims > 0 ? t->shape[0] : 0),
                                (long long)(t->n_dims > 1 ? t->shape[1] : 0), (int)t->n_dims, (long long)shape[0],
                                (long long)(nd == 2 ? shape[1] : 0));
                break;
            }
            if (t->dtype != LORAC_DTYPE_F32 && t->dtype != LORAC_DTYPE_F16 && t->dtype != LORAC_DTYPE_BF16) {
                s = lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: tensor %s is %s; GGUF export reads F32, F16 and BF16",
                                model_dir, hf, lorac_dtype_name(t->dtype));
                break;
            }
            const char *gname = lorac_export_gguf_tensor(kind);
            bool bias = is_bias(kind);
            if (l < 0) snprintf(name, sizeof name, "%s.%s", gname, bias ? "bias" : "weight");
            else snprintf(name, sizeof name, "blk.%d.%s.%s", (int)l, gname, bias ? "bias" : "weight");
            /* GPT-2's Conv1D projections, (in, out) in the file: written (out, in) */
            bool transpose = lorac_tensor_is_conv1d(&config, kind);
            if (transpose) {
                int64_t in = shape[0];
                shape[0] = shape[1];
                shape[1] = in;
            }
            tensor_job_t *j = &jobs[n_jobs++];
            j->src = t;
            j->config = &config;
            j->transpose = transpose;
            /* vectors (norms, biases) stay f32, as llama.cpp's converter
             * keeps them; a matrix whose rows are not whole Q8_0 blocks
             * falls back to f16, as there */
            j->type = nd == 1 ? LORAC_GGML_TYPE_F32 : matrix_type;
            if (j->type == LORAC_GGML_TYPE_Q8_0 && shape[1] % 32) j->type = LORAC_GGML_TYPE_F16;
            j->rotary = kind == LORAC_TENSOR_Q || kind == LORAC_TENSOR_K || kind == LORAC_TENSOR_Q_BIAS ||
                        kind == LORAC_TENSOR_K_BIAS;
            j->shift = is_norm(kind) ? config.norm_offset : 0.0f;
            s = lorac_gguf_add_tensor(w, name, j->type, nd, shape, NULL, fill_tensor, j);
        }
    }
    if (!s && config.rope_longrope) {
        int64_t half = config.rotary_dim / 2;
        s = lorac_gguf_add_tensor(w, "rope_factors_long.weight", LORAC_GGML_TYPE_F32, 1, &half, config.rope_long_factor, NULL, NULL);
        if (!s) s = lorac_gguf_add_tensor(w, "rope_factors_short.weight", LORAC_GGML_TYPE_F32, 1, &half,
                                          config.rope_short_factor, NULL, NULL);
    }
    if (!s && config.rope_llama3) {
        int64_t half = config.head_dim / 2;
        if (!(rope_freqs = llama3_rope_freqs(&config))) s = lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", path);
        else s = lorac_gguf_add_tensor(w, "rope_freqs.weight", LORAC_GGML_TYPE_F32, 1, &half, rope_freqs, NULL, NULL);
    }
    if (!s) s = lorac_gguf_write(w, path);
done:
    lorac_gguf_writer_free(w);
    tok_gguf_vocab_free(&vocab);
    lorac_tokenizer_free(tok);
    lorac_weight_files_free(files);
    free(jobs);
    free(rope_freqs);
    free(chat_template);
    free(text);
    free(cfg_path);
    free(tok_path);
    return s;
}
