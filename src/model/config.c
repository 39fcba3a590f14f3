/* config.json for LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, SmolLM3ForCausalLM,
 * GraniteForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3ForConditionalGeneration's text model,
 * Phi3ForCausalLM and GPT2LMHeadModel. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "lorac/model.h"

static const struct { const char *name; lorac_arch_t arch; } k_archs[] = {
    {"LlamaForCausalLM", LORAC_ARCH_LLAMA},
    {"MistralForCausalLM", LORAC_ARCH_MISTRAL},
    {"Qwen2ForCausalLM", LORAC_ARCH_QWEN2},
    {"Qwen3ForCausalLM", LORAC_ARCH_QWEN3},
    {"SmolLM3ForCausalLM", LORAC_ARCH_SMOLLM3},
    {"GraniteForCausalLM", LORAC_ARCH_GRANITE},
    {"Gemma3ForCausalLM", LORAC_ARCH_GEMMA3},
    {"Gemma2ForCausalLM", LORAC_ARCH_GEMMA2},
    /* its text model: a Gemma3ForCausalLM under other names (lorac runs no vision tower) */
    {"Gemma3ForConditionalGeneration", LORAC_ARCH_GEMMA3},
    {"Phi3ForCausalLM", LORAC_ARCH_PHI3},
    {"GPT2LMHeadModel", LORAC_ARCH_GPT2},
};

/* Reads an integer field. required: absence is an error; otherwise *out keeps
 * its default. Values must be whole numbers in [lo, hi]. */
static lorac_status_t get_int(const cJSON *root, const char *label, const char *key, int required,
                              int64_t lo, int64_t hi, int32_t *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return lorac_error(LORAC_STATUS_FORMAT, "%s: missing field \"%s\"", label, key);
        return LORAC_STATUS_OK;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: field \"%s\" must be an integer", label, key);
    if (v->valuedouble < (double)lo || v->valuedouble > (double)hi)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: field \"%s\" = %.0f is outside [%lld, %lld]", label,
                           key, v->valuedouble, (long long)lo, (long long)hi);
    *out = (int32_t)v->valuedouble;
    return LORAC_STATUS_OK;
}

static lorac_status_t get_float(const cJSON *root, const char *label, const char *key, double lo,
                                double hi, float *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return LORAC_STATUS_OK;
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: field \"%s\" must be a number in [%g, %g]", label,
                           key, lo, hi);
    *out = (float)v->valuedouble;
    return LORAC_STATUS_OK;
}

static lorac_status_t get_bool(const cJSON *root, const char *label, const char *key, bool *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return LORAC_STATUS_OK;
    if (!cJSON_IsBool(v)) return lorac_error(LORAC_STATUS_FORMAT, "%s: field \"%s\" must be true or false", label, key);
    *out = cJSON_IsTrue(v);
    return LORAC_STATUS_OK;
}

/* One rotary parameter object: its "rope_theta" into *theta, and its type:
 * "default", "linear" (c->rope_linear_factor) or "llama3" (c's llama3
 * fields); local (Gemma 3's windowed layers) takes "default" only. */
static lorac_status_t parse_rope_object(const cJSON *rs, const char *label, const char *key, bool local,
                                        lorac_model_config_t *c, float *theta) {
    if (!cJSON_IsObject(rs)) return lorac_error(LORAC_STATUS_FORMAT, "%s: \"%s\" must be an object", label, key);
    lorac_status_t s = get_float(rs, label, "rope_theta", 1.0, 1e12, theta);
    if (s) return s;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!type) type = cJSON_GetObjectItemCaseSensitive(rs, "type");
    if (!type && cJSON_GetObjectItemCaseSensitive(rs, "rope_theta")) return LORAC_STATUS_OK; /* theta alone: default */
    if (!cJSON_IsString(type)) return lorac_error(LORAC_STATUS_FORMAT, "%s: \"%s\" has no \"rope_type\"", label, key);
    if (strcmp(type->valuestring, "default") == 0) return LORAC_STATUS_OK;
    if (!local && c->arch == LORAC_ARCH_PHI3 &&
        (strcmp(type->valuestring, "longrope") == 0 || strcmp(type->valuestring, "su") == 0)) {
        c->rope_longrope = true; /* its factors are read by parse_phi3, once the rotary width is known */
        return LORAC_STATUS_OK;
    }
    if (!local && strcmp(type->valuestring, "linear") == 0) {
        c->rope_linear_factor = 1.0f;
        return get_float(rs, label, "factor", 1.0, 1e6, &c->rope_linear_factor);
    }
    if (local || strcmp(type->valuestring, "llama3") != 0)
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: %s type \"%s\" is not supported (only \"default\"%s)", label,
                           key, type->valuestring,
                           local ? "" : c->arch == LORAC_ARCH_PHI3 ? ", \"linear\", \"llama3\" and \"longrope\""
                                                                   : ", \"linear\" and \"llama3\"");
    c->rope_llama3 = true;
    c->rope_factor = 8.0f; c->rope_low_freq_factor = 1.0f; c->rope_high_freq_factor = 4.0f;
    c->rope_original_max_position = 8192;
    if ((s = get_float(rs, label, "factor", 1.0, 1e6, &c->rope_factor)) ||
        (s = get_float(rs, label, "low_freq_factor", 1e-6, 1e6, &c->rope_low_freq_factor)) ||
        (s = get_float(rs, label, "high_freq_factor", 1e-6, 1e6, &c->rope_high_freq_factor)) ||
        (s = get_int(rs, label, "original_max_position_embeddings", 0, 1, INT32_MAX, &c->rope_original_max_position)))
        return s;
    if (c->rope_high_freq_factor <= c->rope_low_freq_factor)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: %s high_freq_factor must exceed low_freq_factor", label, key);
    return LORAC_STATUS_OK;
}

/* Rotary settings. transformers 4 wrote a top-level "rope_theta" and, for a
 * scaled model, "rope_scaling": {"rope_type": "llama3", "factor", ...};
 * transformers 5 writes one "rope_parameters" object holding both
 * ({"rope_type": "default", "rope_theta": 500000.0} or the llama3 fields
 * beside "rope_theta") and neither top-level key. Read as a 4.x
 * "rope_scaling" beside a top-level "rope_theta", a 5.x config would run
 * at the default theta of 10000: valid numbers, wrong model. Gemma 3's
 * 5.x config holds one object per attention kind, "full_attention" (the
 * global rotary) and "sliding_attention" (4.x's "rope_local_base_freq"). */
static lorac_status_t parse_rope(const cJSON *root, const char *label, lorac_model_config_t *c) {
    const char *key = "rope_parameters";
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!rs || cJSON_IsNull(rs)) rs = cJSON_GetObjectItemCaseSensitive(root, key = "rope_scaling");
    if (!rs || cJSON_IsNull(rs)) return LORAC_STATUS_OK;
    const cJSON *full = cJSON_GetObjectItemCaseSensitive(rs, "full_attention");
    if ((c->arch == LORAC_ARCH_GEMMA3 || c->arch == LORAC_ARCH_GEMMA2) && cJSON_IsObject(full)) {
        const cJSON *sliding = cJSON_GetObjectItemCaseSensitive(rs, "sliding_attention");
        lorac_status_t s = parse_rope_object(full, label, "rope_parameters.full_attention", false, c, &c->rope_theta);
        if (s || !sliding) return s;
        return parse_rope_object(sliding, label, "rope_parameters.sliding_attention", true, c, &c->rope_local_theta);
    }
    /* transformers 5 nests one object per attention kind for models that
     * have several (Gemma 2's sliding and full layers) */
    if (cJSON_IsObject(rs) && rs->child && cJSON_IsObject(rs->child) && !cJSON_GetObjectItemCaseSensitive(rs, "rope_type") &&
        !cJSON_GetObjectItemCaseSensitive(rs, "type"))
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: \"%s\" per layer type (\"%s\", ...) is not supported", label,
                           key, rs->child->string);
    return parse_rope_object(rs, label, key, false, c, &c->rope_theta);
}

/* SmolLM3's NoPE layers: "no_rope_layers", one 1 (rotary) or 0 (none) per
 * layer, or without it every "no_rope_layer_interval"-th layer (default 4:
 * layers 3, 7, 11, ...) without rotary, as SmolLM3Config computes it. */
static lorac_status_t parse_nope_layers(const cJSON *root, const char *label, lorac_model_config_t *c) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(root, "no_rope_layers");
    if (list && !cJSON_IsNull(list)) {
        if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) != c->n_layers)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: \"no_rope_layers\" must be a list of %d entries (one per layer)",
                               label, c->n_layers);
        int32_t l = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, list) {
            if (!cJSON_IsNumber(e) || (e->valuedouble != 0.0 && e->valuedouble != 1.0))
                return lorac_error(LORAC_STATUS_FORMAT, "%s: \"no_rope_layers\"[%d] must be 0 or 1", label, l);
            if (e->valuedouble == 0.0) c->nope_layers[l >> 6] |= (uint64_t)1 << (l & 63);
            l++;
        }
        return LORAC_STATUS_OK;
    }
    int32_t interval = 4;
    lorac_status_t s = get_int(root, label, "no_rope_layer_interval", 0, 1, INT32_MAX, &interval);
    if (s) return s;
    for (int32_t l = 0; l < c->n_layers; l++)
        if ((l + 1) % interval == 0) c->nope_layers[l >> 6] |= (uint64_t)1 << (l & 63);
    return LORAC_STATUS_OK;
}

/* Which layers attend through a sliding window, as transformers decides:
 * a "layer_types" list ("full_attention" / "sliding_attention", one per
 * layer) when the config has one; otherwise Mistral windows every layer
 * whenever "sliding_window" is set (MistralConfig's default 4096 when the
 * key is absent: Mistral 7B v0.1), Qwen2 and Qwen3 the layers from
 * "max_window_layers" on (default 28) when "use_sliding_window" is true,
 * SmolLM3 its NoPE layers when "use_sliding_window" is true, Gemma 3
 * every layer but each "sliding_window_pattern"-th (default 6; its window
 * 4096 unless set, none when null) and Gemma 2 every other one (layers 0,
 * 2, ...; Gemma2Config has no pattern key). Llama and
 * Granite have no window. A window the architecture does not switch on
 * ("use_sliding_window": false beside "sliding_window": 32768, as the
 * Qwen2.5 configs ship) is none. */
static lorac_status_t parse_sliding_window(const cJSON *root, const char *label, lorac_model_config_t *c) {
    if (c->arch == LORAC_ARCH_LLAMA || c->arch == LORAC_ARCH_GRANITE) return LORAC_STATUS_OK;
    bool gemma = c->arch == LORAC_ARCH_GEMMA2 || c->arch == LORAC_ARCH_GEMMA3;
    int32_t window = c->arch == LORAC_ARCH_MISTRAL || gemma ? 4096 : 0;
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
    if (w && cJSON_IsNull(w)) window = 0;
    lorac_status_t s = get_int(root, label, "sliding_window", 0, 1, INT32_MAX, &window);
    if (s) return s;
    /* Phi3Model masks every layer with the window whenever the config has one */
    bool use = c->arch == LORAC_ARCH_MISTRAL || gemma || c->arch == LORAC_ARCH_PHI3;
    if (!use && (s = get_bool(root, label, "use_sliding_window", &use))) return s;
    if (!use) window = 0;
    const cJSON *types = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
    if (types && !cJSON_IsNull(types)) {
        if (!cJSON_IsArray(types) || cJSON_GetArraySize(types) != c->n_layers)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: \"layer_types\" must be a list of %d entries (one per layer)",
                               label, c->n_layers);
        int32_t l = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, types) {
            if (!cJSON_IsString(e))
                return lorac_error(LORAC_STATUS_FORMAT, "%s: \"layer_types\"[%d] must be a string", label, l);
            if (strcmp(e->valuestring, "sliding_attention") == 0) {
                if (!window)
                    return lorac_error(LORAC_STATUS_FORMAT,
                                       "%s: \"layer_types\"[%d] is \"sliding_attention\" but the config sets no sliding "
                                       "window (\"sliding_window\" null or \"use_sliding_window\" false)",
                                       label, l);
                c->window_layers[l >> 6] |= (uint64_t)1 << (l & 63);
            } else if (strcmp(e->valuestring, "full_attention") != 0) {
                return lorac_error(LORAC_STATUS_UNSUPPORTED,
                                   "%s: \"layer_types\"[%d] = \"%s\" is not supported (\"full_attention\" or "
                                   "\"sliding_attention\")",
                                   label, l, e->valuestring);
            }
            l++;
        }
    } else if (window) {
        bool qwen = c->arch == LORAC_ARCH_QWEN2 || c->arch == LORAC_ARCH_QWEN3;
        int32_t from = qwen ? 28 : 0, pattern = c->arch == LORAC_ARCH_GEMMA2 ? 2 : 6;
        if (qwen && (s = get_int(root, label, "max_window_layers", 0, 0, INT32_MAX, &from))) return s;
        if (c->arch == LORAC_ARCH_GEMMA3 &&
            (s = get_int(root, label, "sliding_window_pattern", 0, 1, INT32_MAX, &pattern)))
            return s;
        for (int32_t l = from; l < c->n_layers; l++)
            if ((c->arch != LORAC_ARCH_SMOLLM3 || !lorac_model_layer_has_rope(c, l)) && (!gemma || (l + 1) % pattern != 0))
                c->window_layers[l >> 6] |= (uint64_t)1 << (l & 63);
    }
    /* sliding_window stays 0 unless some layer has the window */
    for (int32_t i = 0; i < LORAC_MAX_LAYERS / 64; i++)
        if (c->window_layers[i]) c->sliding_window = window;
    return LORAC_STATUS_OK;
}

/* Gemma 2 and 3 (Gemma2Config, Gemma3TextConfig): the embedding times
 * sqrt(hidden_size) (model.c rounds it to the embedding's dtype, as their
 * scaled embedding does), scores times query_pre_attn_scalar^-1/2 (default
 * 256) instead of head_dim^-1/2, RMSNorms by (1 + w), sandwich norms,
 * GeGLU; Gemma 3's windowed layers have their own rotary base; the
 * attention scores and the logits are soft-capped where the config says
 * (Gemma 2's defaults 50 and 30, Gemma 3's none; null: none). */
static lorac_status_t parse_gemma(const cJSON *root, const char *label, lorac_model_config_t *c) {
    bool v2 = c->arch == LORAC_ARCH_GEMMA2;
    const char *caps[] = {"attn_logit_softcapping", "final_logit_softcapping"};
    float *dst[] = {&c->attn_softcap, &c->final_softcap};
    for (int i = 0; i < 2; i++) {
        *dst[i] = v2 ? (i ? 30.0f : 50.0f) : 0.0f;
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, caps[i]);
        if (v && cJSON_IsNull(v)) *dst[i] = 0.0f;
        lorac_status_t s = get_float(root, label, caps[i], 1e-3, 1e6, dst[i]);
        if (s) return s;
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_activation");
    if (!act || cJSON_IsNull(act)) act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (act && !cJSON_IsNull(act) &&
        (!cJSON_IsString(act) ||
         (strcmp(act->valuestring, "gelu_pytorch_tanh") != 0 && strcmp(act->valuestring, "gelu_new") != 0)))
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: hidden_activation \"%s\" is not supported (\"gelu_pytorch_tanh\")",
                           label, cJSON_IsString(act) ? act->valuestring : "?");
    float scalar = 256.0f;
    lorac_status_t s = get_float(root, label, "query_pre_attn_scalar", 1e-6, 1e9, &scalar);
    if (s) return s;
    if (!v2 && !c->rope_local_theta) {
        c->rope_local_theta = 10000.0f;
        if ((s = get_float(root, label, "rope_local_base_freq", 1.0, 1e12, &c->rope_local_theta))) return s;
    }
    /* the attention kernels scale by head_dim^-1/2: q times sqrt(head_dim / scalar) */
    c->query_scale = (float)sqrt((double)c->head_dim / (double)scalar);
    c->embedding_multiplier = (float)sqrt((double)c->hidden_size);
    c->norm_offset = 1.0f;
    c->sandwich_norms = true;
    c->act = LORAC_ACT_GELU_TANH;
    return LORAC_STATUS_OK;
}

/* Granite's four multipliers, GraniteConfig's defaults 1 (attention_multiplier
 * 1 too: scores q·k unscaled unless the config says). */
static lorac_status_t parse_granite(const cJSON *root, const char *label, lorac_model_config_t *c) {
    float attention_multiplier = 1.0f;
    lorac_status_t s;
    if ((s = get_float(root, label, "embedding_multiplier", 1e-6, 1e6, &c->embedding_multiplier)) ||
        (s = get_float(root, label, "residual_multiplier", 1e-6, 1e6, &c->residual_multiplier)) ||
        (s = get_float(root, label, "logits_scaling", 1e-6, 1e6, &c->logits_scaling)) ||
        (s = get_float(root, label, "attention_multiplier", 1e-6, 1e6, &attention_multiplier)))
        return s;
    c->query_scale = (float)((double)attention_multiplier * sqrt((double)c->head_dim));
    return LORAC_STATUS_OK;
}

/* A list of n positive factors, one per rotary frequency. */
static lorac_status_t get_factors(const cJSON *o, const char *label, const char *key, int32_t n, float *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != n)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: rope_scaling \"%s\" must be a list of %d numbers (rotary width / 2)",
                           label, key, n);
    int32_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        if (!cJSON_IsNumber(e) || !(e->valuedouble > 0.0 && e->valuedouble < 1e12))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: rope_scaling \"%s\"[%d] must be a positive number", label, key, i);
        out[i++] = (float)e->valuedouble;
    }
    return LORAC_STATUS_OK;
}

/* Phi-3 (Phi3Config): SiLU only; rotary on the first partial_rotary_factor
 * of each head; "longrope" scaling: short_factor and long_factor, one per
 * rotary frequency, the switch past original_max_position_embeddings
 * (default max_position_embeddings), and an attention factor
 * ("attention_factor", else sqrt(1 + ln f / ln original) with f =
 * max_position_embeddings / original, 1 when f <= 1), as transformers'
 * _compute_longrope_parameters. */
static lorac_status_t parse_phi3(const cJSON *root, const char *label, lorac_model_config_t *c) {
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (act && !cJSON_IsNull(act) && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu") != 0))
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: hidden_act \"%s\" is not supported (\"silu\")", label,
                           cJSON_IsString(act) ? act->valuestring : "?");
    float partial = 1.0f;
    lorac_status_t s = get_float(root, label, "partial_rotary_factor", 1e-6, 1.0, &partial);
    if (s) return s;
    c->rotary_dim = (int32_t)((double)c->head_dim * (double)partial);
    if (c->rotary_dim < 2 || c->rotary_dim % 2 != 0)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: partial_rotary_factor %g of head_dim %d gives an odd or empty rotary width %d",
                           label, (double)partial, c->head_dim, c->rotary_dim);
    c->rope_original_max_position = c->max_position_embeddings;
    if ((s = get_int(root, label, "original_max_position_embeddings", 0, 1, INT32_MAX, &c->rope_original_max_position)))
        return s;
    c->rope_attention_factor = 1.0f;
    if (!c->rope_longrope) return LORAC_STATUS_OK;
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    if (!cJSON_IsObject(rs)) rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    int32_t n = c->rotary_dim / 2;
    if (n > LORAC_MAX_ROPE_FACTORS)
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: a rotary width of %d is more than lorac's %d frequencies", label,
                           c->rotary_dim, LORAC_MAX_ROPE_FACTORS);
    if ((s = get_factors(rs, label, "short_factor", n, c->rope_short_factor)) ||
        (s = get_factors(rs, label, "long_factor", n, c->rope_long_factor)))
        return s;
    const cJSON *af = cJSON_GetObjectItemCaseSensitive(rs, "attention_factor");
    if (af && !cJSON_IsNull(af)) return get_float(rs, label, "attention_factor", 1e-6, 1e6, &c->rope_attention_factor);
    double f = (double)c->max_position_embeddings / (double)c->rope_original_max_position;
    if (f > 1.0) c->rope_attention_factor = (float)sqrt(1.0 + log(f) / log((double)c->rope_original_max_position));
    return LORAC_STATUS_OK;
}

static lorac_status_t parse_eos(const cJSON *root, const char *label, lorac_model_config_t *c);

/* GPT-2 (GPT2Config: its own key names, and its defaults, those of the
 * 124M model, for the keys a config leaves out): LayerNorm, learned
 * positions, GELU (tanh) MLP of n_inner (4 · n_embd when null), fused
 * c_attn with biases everywhere, a tied head unless the config says. */
static lorac_status_t parse_gpt2(const cJSON *root, const char *label, lorac_model_config_t *c) {
    c->vocab_size = 50257, c->max_position_embeddings = 1024, c->hidden_size = 768, c->n_layers = 12, c->n_heads = 12;
    c->rms_norm_eps = 1e-5f;
    c->bos_id = 50256, c->n_eos = 1, c->eos_ids[0] = 50256;
    c->tie_word_embeddings = true;
    const int32_t big = 1 << 24;
    lorac_status_t s;
    if ((s = get_int(root, label, "vocab_size", 0, 1, big, &c->vocab_size)) ||
        (s = get_int(root, label, "n_positions", 0, 1, big, &c->max_position_embeddings)) ||
        (s = get_int(root, label, "n_embd", 0, 1, 1 << 20, &c->hidden_size)) ||
        (s = get_int(root, label, "n_layer", 0, 1, LORAC_MAX_LAYERS, &c->n_layers)) ||
        (s = get_int(root, label, "n_head", 0, 1, 4096, &c->n_heads)) ||
        (s = get_float(root, label, "layer_norm_epsilon", 0.0, 1.0, &c->rms_norm_eps)) ||
        (s = get_bool(root, label, "tie_word_embeddings", &c->tie_word_embeddings)) ||
        (s = get_int(root, label, "bos_token_id", 0, 0, INT32_MAX, &c->bos_id)))
        return s;
    if (cJSON_GetObjectItemCaseSensitive(root, "eos_token_id") && (s = parse_eos(root, label, c))) return s;
    if (c->hidden_size % c->n_heads != 0)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: n_embd (%d) must be a multiple of n_head (%d)", label, c->hidden_size,
                           c->n_heads);
    c->intermediate_size = 4 * c->hidden_size;
    if ((s = get_int(root, label, "n_inner", 0, 1, 1 << 22, &c->intermediate_size))) return s;
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
    if (act && !cJSON_IsNull(act) &&
        (!cJSON_IsString(act) ||
         (strcmp(act->valuestring, "gelu_new") != 0 && strcmp(act->valuestring, "gelu_pytorch_tanh") != 0)))
        return lorac_error(LORAC_STATUS_UNSUPPORTED,
                           "%s: activation_function \"%s\" is not supported (\"gelu_new\" or \"gelu_pytorch_tanh\")", label,
                           cJSON_IsString(act) ? act->valuestring : "?");
    bool scale_weights = true, cross = false;
    if ((s = get_bool(root, label, "scale_attn_weights", &scale_weights)) ||
        (s = get_bool(root, label, "scale_attn_by_inverse_layer_idx", &c->attn_scale_by_layer)) ||
        (s = get_bool(root, label, "add_cross_attention", &cross)))
        return s;
    if (cross) return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: \"add_cross_attention\": true is not supported", label);
    c->n_kv_heads = c->n_heads;
    c->head_dim = c->hidden_size / c->n_heads;
    c->rotary_dim = 0;
    /* the attention kernels scale by head_dim^-1/2; unscaled scores undo it */
    c->query_scale = scale_weights ? 1.0f : (float)sqrt((double)c->head_dim);
    c->embedding_multiplier = c->residual_multiplier = c->logits_scaling = 1.0f;
    c->layer_norm = c->learned_positions = c->plain_mlp = c->fused_qkv = true;
    c->qkv_bias = c->o_bias = c->mlp_bias = true;
    c->act = LORAC_ACT_GELU_TANH;
    snprintf(c->module_prefix, sizeof c->module_prefix, "transformer");
    snprintf(c->tensor_prefix, sizeof c->tensor_prefix, "transformer");
    return LORAC_STATUS_OK;
}

static lorac_status_t parse_eos(const cJSON *root, const char *label, lorac_model_config_t *c) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    c->n_eos = 0;
    if (!v || cJSON_IsNull(v)) return LORAC_STATUS_OK;
    if (cJSON_IsNumber(v)) {
        int32_t id = -1;
        lorac_status_t s = get_int(root, label, "eos_token_id", 1, 0, INT32_MAX, &id);
        if (s) return s;
        c->eos_ids[c->n_eos++] = id;
        return LORAC_STATUS_OK;
    }
    if (!cJSON_IsArray(v)) return lorac_error(LORAC_STATUS_FORMAT, "%s: \"eos_token_id\" must be an integer or a list", label);
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > INT32_MAX || e->valuedouble != floor(e->valuedouble))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: \"eos_token_id\" entries must be non-negative integers", label);
        if (c->n_eos < LORAC_MAX_EOS_IDS) c->eos_ids[c->n_eos++] = (int32_t)e->valuedouble;
    }
    return LORAC_STATUS_OK;
}

/* The fields of the LLaMA-family configs (every architecture but GPT-2):
 * sizes, rotary, biases, windows and each family's own settings. top is
 * the file's object, root the one holding the model's fields (Gemma 3
 * multimodal's "text_config"). */
static lorac_status_t parse_llama_family(const cJSON *top, const cJSON *root, const char *label, lorac_model_config_t *c) {
    lorac_status_t s;
    c->rms_norm_eps = c->arch == LORAC_ARCH_PHI3 ? 1e-5f : 1e-6f; /* Phi3Config's default */
    /* SmolLM3Config's and Gemma3TextConfig's defaults */
    c->rope_theta = c->arch == LORAC_ARCH_SMOLLM3 ? 2000000.0f : c->arch == LORAC_ARCH_GEMMA3 ? 1000000.0f : 10000.0f;
    c->rope_linear_factor = 1.0f;
    c->max_position_embeddings = c->arch == LORAC_ARCH_PHI3 ? 4096 : 2048;
    c->bos_id = -1;
    if (c->arch == LORAC_ARCH_PHI3) c->bos_id = 1, c->n_eos = 1, c->eos_ids[0] = 32000; /* Phi3Config's */
    c->tie_word_embeddings = c->arch == LORAC_ARCH_GEMMA2 || c->arch == LORAC_ARCH_GEMMA3; /* Gemma's configs' default */
    const int32_t big = 1 << 24;
    /* Gemma3TextConfig's defaults (Gemma 3 4B-27B configs leave several out) */
    int req = c->arch != LORAC_ARCH_GEMMA3;
    if (!req) {
        c->vocab_size = 262208, c->hidden_size = 2304, c->intermediate_size = 9216, c->n_layers = 26, c->n_heads = 8;
        c->max_position_embeddings = 131072, c->bos_id = 2, c->n_eos = 1, c->eos_ids[0] = 1;
    }
    if ((s = get_int(root, label, "vocab_size", req, 1, big, &c->vocab_size)) ||
        (s = get_int(root, label, "hidden_size", req, 1, 1 << 20, &c->hidden_size)) ||
        (s = get_int(root, label, "intermediate_size", req, 1, 1 << 22, &c->intermediate_size)) ||
        (s = get_int(root, label, "num_hidden_layers", req, 1, LORAC_MAX_LAYERS, &c->n_layers)) ||
        (s = get_int(root, label, "num_attention_heads", req, 1, 4096, &c->n_heads)))
        return s;
    c->n_kv_heads = c->arch == LORAC_ARCH_GEMMA3 ? 4 : c->n_heads; /* Gemma3TextConfig's default */
    /* Qwen3Config's head_dim defaults to 128 whatever the hidden size
     * (transformers reads it from the config object, which always has it);
     * the others' attention takes hidden_size / heads */
    bool gemma = c->arch == LORAC_ARCH_GEMMA2 || c->arch == LORAC_ARCH_GEMMA3;
    c->head_dim = c->arch == LORAC_ARCH_QWEN3 ? 128 : gemma ? 256 : c->hidden_size / c->n_heads;
    if ((s = get_int(root, label, "num_key_value_heads", 0, 1, 4096, &c->n_kv_heads)) ||
        (s = get_int(root, label, "head_dim", 0, 2, 1 << 16, &c->head_dim)) ||
        (s = get_int(root, label, "max_position_embeddings", 0, 1, INT32_MAX, &c->max_position_embeddings)) ||
        (s = get_float(root, label, "rms_norm_eps", 0.0, 1.0, &c->rms_norm_eps)) ||
        (s = get_float(root, label, "rope_theta", 1.0, 1e12, &c->rope_theta)) ||
        (s = get_bool(root, label, "tie_word_embeddings", &c->tie_word_embeddings)) ||
        (s = get_int(root, label, "bos_token_id", 0, 0, INT32_MAX, &c->bos_id)) ||
        (s = parse_rope(root, label, c)))
        return s;
    /* an absent eos_token_id keeps the default (Gemma 3's 1, else none) */
    if (cJSON_GetObjectItemCaseSensitive(root, "eos_token_id") && (s = parse_eos(root, label, c))) return s;
    if (top != root && ((s = get_int(top, label, "bos_token_id", 0, 0, INT32_MAX, &c->bos_id)) ||
                        (cJSON_GetObjectItemCaseSensitive(top, "eos_token_id") && (s = parse_eos(top, label, c)))))
        return s;
    c->rotary_dim = c->head_dim;
    if (c->arch == LORAC_ARCH_QWEN2) {
        c->qkv_bias = true; /* Qwen2 always has q/k/v biases, never o_proj bias */
    } else if (c->arch == LORAC_ARCH_PHI3) {
        c->fused_proj = true; /* no biases anywhere */
        if ((s = parse_phi3(root, label, c))) return s;
    } else {
        /* Qwen3: q/k/v/o biases as "attention_bias" says (as Llama), none in
         * the MLP whatever "mlp_bias" says (Qwen3MLP has none), and an
         * RMSNorm over each head of q and of k */
        bool attention_bias = false;
        if ((s = get_bool(root, label, "attention_bias", &attention_bias)) ||
            (c->arch != LORAC_ARCH_QWEN3 && !gemma && (s = get_bool(root, label, "mlp_bias", &c->mlp_bias))))
            return s;
        c->qkv_bias = c->o_bias = attention_bias;
        c->qk_norm = c->arch == LORAC_ARCH_QWEN3 || c->arch == LORAC_ARCH_GEMMA3;
    }
    if (c->arch == LORAC_ARCH_SMOLLM3 && (s = parse_nope_layers(root, label, c))) return s;
    if ((s = parse_sliding_window(root, label, c))) return s;
    c->embedding_multiplier = c->residual_multiplier = c->logits_scaling = c->query_scale = 1.0f;
    if (c->arch == LORAC_ARCH_GRANITE && (s = parse_granite(root, label, c))) return s;
    if (gemma && (s = parse_gemma(root, label, c))) return s;
    return LORAC_STATUS_OK;
}

/* quantization_config: none, or bitsandbytes' 4-bit NF4 (either storage of
 * the absmax: plain or double-quantized). Anything else would load as U8 or
 * I32 tensors the kernels cannot read, so it is named and refused here. */
static lorac_status_t parse_quantization(const cJSON *top, const char *label, lorac_model_config_t *c) {
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(top, "quantization_config");
    if (!q || cJSON_IsNull(q)) return LORAC_STATUS_OK;
    if (!cJSON_IsObject(q)) return lorac_error(LORAC_STATUS_FORMAT, "%s: \"quantization_config\" must be an object", label);
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(q, "quant_method");
    const char *name = cJSON_IsString(method) ? method->valuestring : "(none given)";
    if (strcmp(name, "bitsandbytes") != 0)
        return lorac_error(LORAC_STATUS_UNSUPPORTED,
                           "%s: quantization_config.quant_method \"%s\" is not supported: lorac reads bitsandbytes 4-bit "
                           "NF4 checkpoints, or give it the unquantized model (--quantize nf4 quantizes it as it loads)",
                           label, name);
    const cJSON *in4 = cJSON_GetObjectItemCaseSensitive(q, "load_in_4bit");
    if (!cJSON_IsTrue(in4)) in4 = cJSON_GetObjectItemCaseSensitive(q, "_load_in_4bit");
    const cJSON *in8 = cJSON_GetObjectItemCaseSensitive(q, "load_in_8bit");
    if (!cJSON_IsTrue(in8)) in8 = cJSON_GetObjectItemCaseSensitive(q, "_load_in_8bit");
    if (!cJSON_IsTrue(in4) && cJSON_IsTrue(in8))
        return lorac_error(LORAC_STATUS_UNSUPPORTED,
                           "%s: bitsandbytes' 8-bit (LLM.int8) checkpoints are not supported, only load_in_4bit with NF4",
                           label);
    if (!cJSON_IsTrue(in4))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: quantization_config (bitsandbytes) has neither load_in_4bit nor "
                           "load_in_8bit set", label);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(q, "bnb_4bit_quant_type");
    if (cJSON_IsString(type) && strcmp(type->valuestring, "nf4") != 0)
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: bnb_4bit_quant_type \"%s\" is not supported, only \"nf4\"", label,
                           type->valuestring);
    if (!cJSON_IsString(type)) /* transformers' default is fp4 */
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: bnb_4bit_quant_type is not given (bitsandbytes' default, fp4, is "
                           "not supported; only \"nf4\")", label);
    if (c->arch == LORAC_ARCH_GPT2)
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: bitsandbytes-quantized GPT-2 checkpoints are not supported", label);
    c->bnb_nf4 = true;
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_model_config_parse(const char *json, size_t len, const char *label,
                                        lorac_model_config_t *c) {
    memset(c, 0, sizeof *c);
    cJSON *doc = cJSON_ParseWithLength(json, len);
    if (!doc) return lorac_error(LORAC_STATUS_FORMAT, "%s: not valid JSON", label);
    /* top: the file's object; root: the one holding the model's fields */
    const cJSON *top = doc, *root = doc;
    lorac_status_t s = LORAC_STATUS_OK;
    if (!cJSON_IsObject(root)) { s = lorac_error(LORAC_STATUS_FORMAT, "%s: not a JSON object", label); goto done; }

    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *a0 = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
    if (!cJSON_IsString(a0)) { s = lorac_error(LORAC_STATUS_FORMAT, "%s: missing \"architectures\"", label); goto done; }
    size_t n_archs = sizeof k_archs / sizeof k_archs[0], i;
    for (i = 0; i < n_archs; i++) if (strcmp(a0->valuestring, k_archs[i].name) == 0) break;
    if (i == n_archs) {
        s = lorac_error(LORAC_STATUS_UNSUPPORTED,
                        "%s: architecture \"%s\" is not supported (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
                        "Qwen3ForCausalLM, SmolLM3ForCausalLM, GraniteForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, "
                        "Gemma3ForConditionalGeneration, Phi3ForCausalLM, GPT2LMHeadModel)",
                        label, a0->valuestring);
        goto done;
    }
    c->arch = k_archs[i].arch;
    snprintf(c->arch_name, sizeof c->arch_name, "%s", k_archs[i].name);
    snprintf(c->module_prefix, sizeof c->module_prefix, "model");
    snprintf(c->tensor_prefix, sizeof c->tensor_prefix, "model");
    if (strcmp(k_archs[i].name, "Gemma3ForConditionalGeneration") == 0) {
        /* the text model's fields are in "text_config" (Gemma3TextConfig's
         * defaults for those it leaves out: the released 4B-27B configs give
         * only the sizes that differ); end-of-sequence ids and dtype at the
         * top level win. transformers >= 4.52 names its modules
         * model.language_model.layers.N...; lorac_model_load finds which
         * names the checkpoint's tensors use. */
        root = cJSON_GetObjectItemCaseSensitive(top, "text_config");
        if (!cJSON_IsObject(root)) {
            s = lorac_error(LORAC_STATUS_FORMAT, "%s: Gemma3ForConditionalGeneration needs a \"text_config\" object", label);
            goto done;
        }
        c->text_of_multimodal = true;
        snprintf(c->module_prefix, sizeof c->module_prefix, "model.language_model");
        snprintf(c->tensor_prefix, sizeof c->tensor_prefix, "language_model.model");
    }

    if ((s = c->arch == LORAC_ARCH_GPT2 ? parse_gpt2(root, label, c) : parse_llama_family(top, root, label, c)))
        goto done;
    if ((s = parse_quantization(top, label, c))) goto done;
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(top, "torch_dtype");
    if (!cJSON_IsString(dt)) dt = cJSON_GetObjectItemCaseSensitive(root, "torch_dtype");
    if (cJSON_IsString(dt)) snprintf(c->torch_dtype, sizeof c->torch_dtype, "%s", dt->valuestring);

    if (c->n_heads % c->n_kv_heads != 0) {
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: num_attention_heads (%d) must be a multiple of num_key_value_heads (%d)",
                        label, c->n_heads, c->n_kv_heads);
        goto done;
    }
    if (!c->learned_positions && (c->head_dim % 2 != 0 || c->head_dim < 2)) {
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: head_dim (%d) must be even (hidden_size %d / heads %d)", label,
                        c->head_dim, c->hidden_size, c->n_heads);
        goto done;
    }
    if ((int64_t)c->head_dim * c->n_heads > (1 << 20)) {
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: head_dim * num_attention_heads is too large", label);
        goto done;
    }
done:
    cJSON_Delete(doc);
    return s;
}
