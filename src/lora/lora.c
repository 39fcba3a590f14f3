/* LoRA adapters: targets, initialisation and the LoRA layer pair. PEFT file
 * I/O is in peft.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora/lora_internal.h"
#include "lorac/kernels.h"

static const char *const k_target_names[LORAC_LORA_COUNT] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
};

const char *lorac_lora_target_name(lorac_lora_target_t t) {
    return (int)t >= 0 && t < LORAC_LORA_COUNT ? k_target_names[t] : NULL;
}

int lorac_lora_target_from_name(const char *name, size_t len) {
    for (int t = 0; t < LORAC_LORA_COUNT; t++)
        if (strlen(k_target_names[t]) == len && strncmp(name, k_target_names[t], len) == 0) return t;
    return -1;
}

/* GPT-2's modules (GATE has none): c_proj is both the attention's output
 * and the MLP's down projection, so each is named with its block, as
 * PEFT's target_modules can select one alone ("attn.c_proj" matches
 * "transformer.h.0.attn.c_proj" only) */
static const char *const k_gpt2_modules[LORAC_LORA_COUNT] = {
    "c_attn", "c_attn", "c_attn", "attn.c_proj", NULL, "c_fc", "mlp.c_proj",
};
static const char *const k_gpt2_paths[LORAC_LORA_COUNT] = {
    "attn.c_attn", "attn.c_attn", "attn.c_attn", "attn.c_proj", NULL, "mlp.c_fc", "mlp.c_proj",
};

const char *lorac_lora_module_name(const lorac_model_config_t *c, lorac_lora_target_t t) {
    if (c->arch == LORAC_ARCH_GPT2) return k_gpt2_modules[t] ? k_gpt2_modules[t] : "(none)";
    int size, lead = lorac_lora_group(c, t, &size);
    if (size == 1) return k_target_names[t];
    return lead == LORAC_LORA_Q ? "qkv_proj" : "gate_up_proj";
}

void lorac_lora_module_path(const lorac_model_config_t *c, int32_t layer, int t, char *buf, size_t cap) {
    if (c->arch == LORAC_ARCH_GPT2) {
        snprintf(buf, cap, "%s.h.%d.%s", c->module_prefix[0] ? c->module_prefix : "transformer", layer,
                 k_gpt2_paths[t] ? k_gpt2_paths[t] : "(none)");
        return;
    }
    snprintf(buf, cap, "%s.layers.%d.%s.%s", c->module_prefix[0] ? c->module_prefix : "model", layer,
             t <= LORAC_LORA_O ? "self_attn" : "mlp", lorac_lora_module_name(c, (lorac_lora_target_t)t));
}

lorac_status_t lorac_lora_parse_targets(const char *text, uint32_t *mask) {
    *mask = 0;
    if (strcmp(text, "all-linear") == 0 || strcmp(text, "all") == 0) {
        *mask = (1u << LORAC_LORA_COUNT) - 1;
        return LORAC_STATUS_OK;
    }
    const char *p = text;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        int t = lorac_lora_target_from_name(p, len);
        if ((len == 8 && strncmp(p, "qkv_proj", 8) == 0) || (len == 6 && strncmp(p, "c_attn", 6) == 0)) {
            *mask |= 1u << LORAC_LORA_Q | 1u << LORAC_LORA_K | 1u << LORAC_LORA_V;
        } else if (len == 6 && strncmp(p, "c_proj", 6) == 0) { /* GPT-2's: both, as PEFT's suffix match */
            *mask |= 1u << LORAC_LORA_O | 1u << LORAC_LORA_DOWN;
        } else if (len == 11 && strncmp(p, "attn.c_proj", 11) == 0) {
            *mask |= 1u << LORAC_LORA_O;
        } else if (len == 10 && strncmp(p, "mlp.c_proj", 10) == 0) {
            *mask |= 1u << LORAC_LORA_DOWN;
        } else if (len == 4 && strncmp(p, "c_fc", 4) == 0) {
            *mask |= 1u << LORAC_LORA_UP;
        } else if (len == 12 && strncmp(p, "gate_up_proj", 12) == 0) {
            *mask |= 1u << LORAC_LORA_GATE | 1u << LORAC_LORA_UP;
        } else if (t < 0) {
            return lorac_error(LORAC_STATUS_INVALID_ARG,
                               "unknown target module '%.*s' (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, "
                               "Phi-3's qkv_proj and gate_up_proj, GPT-2's c_attn, c_proj, attn.c_proj, mlp.c_proj "
                               "and c_fc, or all-linear)",
                               (int)len, p);
        } else {
            *mask |= 1u << t;
        }
        p += len + (end ? 1 : 0);
    }
    if (!*mask) return lorac_error(LORAC_STATUS_INVALID_ARG, "no target modules given");
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_lora_parse_layers(const char *text, int32_t n_layers, uint8_t *mask) {
    if (!text || !*text || strcmp(text, "all") == 0) {
        memset(mask, 1, (size_t)n_layers);
        return LORAC_STATUS_OK;
    }
    memset(mask, 0, (size_t)n_layers);
    const char *p = text;
    while (*p) {
        char *end;
        long a = strtol(p, &end, 10), b = a;
        if (end == p) return lorac_error(LORAC_STATUS_INVALID_ARG, "bad layer list '%s' (expected e.g. 0-3,7)", text);
        if (*end == '-') {
            const char *q = end + 1;
            b = strtol(q, &end, 10);
            if (end == q) return lorac_error(LORAC_STATUS_INVALID_ARG, "bad layer list '%s' (expected e.g. 0-3,7)", text);
        }
        if (a < 0 || b < a || b >= n_layers)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "layer range %ld-%ld is outside 0..%d", a, b, n_layers - 1);
        for (long l = a; l <= b; l++) mask[l] = 1;
        if (*end == ',') end++;
        else if (*end) return lorac_error(LORAC_STATUS_INVALID_ARG, "bad layer list '%s' (expected e.g. 0-3,7)", text);
        p = end;
    }
    return LORAC_STATUS_OK;
}

lorac_lora_params_t lorac_lora_default_params(void) {
    lorac_lora_params_t p = {.r = 8, .alpha = 16.0f, .dropout = 0.0f, .rslora = false,
                             .targets = (1u << LORAC_LORA_Q) | (1u << LORAC_LORA_V), .layers = NULL,
                             .init = LORAC_LORA_INIT_KAIMING, .seed = 42};
    return p;
}

void lorac_lora_target_dims(const lorac_model_config_t *c, lorac_lora_target_t t, int32_t *in, int32_t *out) {
    int32_t D = c->hidden_size, I = c->intermediate_size;
    int32_t Q = c->n_heads * c->head_dim, KV = c->n_kv_heads * c->head_dim;
    switch (t) {
    case LORAC_LORA_Q: *in = D; *out = Q; break;
    case LORAC_LORA_K: case LORAC_LORA_V: *in = D; *out = KV; break;
    case LORAC_LORA_O: *in = Q; *out = D; break;
    case LORAC_LORA_GATE: case LORAC_LORA_UP: *in = D; *out = I; break;
    case LORAC_LORA_DOWN: default: *in = I; *out = D; break;
    }
}

float lorac_lora_scale(float alpha, int32_t r, bool rslora) {
    return rslora ? alpha / sqrtf((float)r) : alpha / (float)r;
}

float lorac_lora_module_alpha(const lorac_lora_module_t *m, bool rslora) {
    return rslora ? m->scale * sqrtf((float)m->r) : m->scale * (float)m->r;
}

static lorac_status_t check_params(const lorac_lora_params_t *params) {
    if (params->r < 1 || params->r > 65536) return lorac_error(LORAC_STATUS_INVALID_ARG, "LoRA rank r = %d must be in 1..65536", params->r);
    if (!(params->dropout >= 0.0f && params->dropout < 1.0f))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "LoRA dropout %g must be in [0, 1)", (double)params->dropout);
    if (!isfinite(params->alpha)) return lorac_error(LORAC_STATUS_INVALID_ARG, "LoRA alpha must be finite");
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_adapter_alloc_ranks(const lorac_model_config_t *config, const lorac_lora_params_t *params,
                                         const int32_t *ranks, const float *scales, lorac_adapter_t **out) {
    *out = NULL;
    lorac_status_t s = check_params(params);
    if (s) return s;
    if (config->n_layers < 1 || config->n_layers > 1000000)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "model config has %d layers", config->n_layers);
    int32_t n_slots = config->n_layers * LORAC_LORA_COUNT, n = 0;
    for (int32_t i = 0; i < n_slots; i++) {
        if (ranks[i] < 0 || ranks[i] > 65536)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "LoRA rank r = %d must be in 1..65536", ranks[i]);
        n += ranks[i] > 0;
    }
    lorac_adapter_t *a = calloc(1, sizeof *a);
    if (!a) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    a->config = *config;
    a->params = *params;
    a->layer_mask = calloc((size_t)config->n_layers, 1);
    a->index = calloc((size_t)n_slots, sizeof(int32_t));
    a->modules = calloc((size_t)(n ? n : 1), sizeof *a->modules);
    if (!a->layer_mask || !a->index || !a->modules) { lorac_adapter_free(a); return lorac_error(LORAC_STATUS_NOMEM, "out of memory"); }
    /* params describe the union of the adapted slots: every target and layer
     * that has at least one module */
    a->params.layers = a->layer_mask;
    a->params.targets = 0;
    for (int32_t l = 0; l < config->n_layers; l++) {
        const lorac_lora_module_t *lead = NULL; /* of the current fused group */
        int64_t lead_row = 0;
        for (int t = 0; t < LORAC_LORA_COUNT; t++) {
            int32_t slot = l * LORAC_LORA_COUNT + t;
            int size, first = lorac_lora_group(config, t, &size);
            /* a fused group is adapted whole, with one rank and scale, or not at all */
            for (int k = first; size > 1 && t == first && k < first + size; k++)
                if (ranks[l * LORAC_LORA_COUNT + k] != ranks[slot] || scales[l * LORAC_LORA_COUNT + k] != scales[slot]) {
                    lorac_adapter_free(a);
                    return lorac_error(LORAC_STATUS_INVALID_ARG,
                                       "layer %d: %s is one module: its %s can only be adapted together, with one rank "
                                       "and alpha", l, lorac_lora_module_name(config, (lorac_lora_target_t)t),
                                       first == LORAC_LORA_Q ? "q, k and v" : "gate and up");
                }
            a->index[slot] = -1;
            if (!ranks[slot]) continue;
            if (!lorac_lora_target_exists(config, t)) {
                lorac_adapter_free(a);
                return lorac_error(LORAC_STATUS_INVALID_ARG, "%s has no %s to adapt", config->arch_name,
                                   lorac_lora_target_name((lorac_lora_target_t)t));
            }
            lorac_lora_module_t *m = &a->modules[a->n_modules];
            m->layer = l;
            m->target = (lorac_lora_target_t)t;
            m->r = ranks[slot];
            m->scale = scales[slot];
            lorac_lora_target_dims(config, m->target, &m->in, &m->out);
            if (size > 1 && t != first) { /* A and rows of B from the group's first module */
                m->A = lead->A;
                m->B = lead->B + lead_row * m->r;
                m->in_group = true;
                lead_row += m->out;
            } else {
                int64_t rows = m->out;
                if (size > 1) {
                    for (int k = first + 1; k < first + size; k++) {
                        int32_t in_k, out_k;
                        lorac_lora_target_dims(config, (lorac_lora_target_t)k, &in_k, &out_k);
                        rows += out_k;
                    }
                    m->group_out = (int32_t)rows;
                    lead = m;
                    lead_row = m->out;
                }
                m->A = calloc((size_t)m->r * (size_t)m->in, sizeof(float));
                m->B = calloc((size_t)rows * (size_t)m->r, sizeof(float));
                if (!m->A || !m->B) {
                    free(m->A); free(m->B);
                    lorac_adapter_free(a);
                    return lorac_error(LORAC_STATUS_NOMEM, "out of memory for LoRA weights");
                }
            }
            a->index[slot] = a->n_modules++;
            a->layer_mask[l] = 1;
            a->params.targets |= 1u << t;
        }
    }
    *out = a;
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_adapter_alloc(const lorac_model_config_t *config, const lorac_lora_params_t *params,
                                   lorac_adapter_t **out) {
    *out = NULL;
    lorac_status_t s = check_params(params);
    if (s) return s;
    int32_t n_slots = config->n_layers * LORAC_LORA_COUNT;
    int32_t *ranks = malloc(sizeof(int32_t) * (size_t)(n_slots ? n_slots : 1));
    float *scales = malloc(sizeof(float) * (size_t)(n_slots ? n_slots : 1));
    if (!ranks || !scales) { free(ranks); free(scales); return lorac_error(LORAC_STATUS_NOMEM, "out of memory"); }
    float scale = lorac_lora_scale(params->alpha, params->r, params->rslora);
    for (int32_t l = 0; l < config->n_layers; l++)
        for (int t = 0; t < LORAC_LORA_COUNT; t++) {
            int on = (!params->layers || params->layers[l]) && (params->targets >> t & 1u);
            /* all-linear: what the architecture has */
            if (params->targets == (1u << LORAC_LORA_COUNT) - 1 && !lorac_lora_target_exists(config, t)) on = 0;
            ranks[l * LORAC_LORA_COUNT + t] = on ? params->r : 0;
            scales[l * LORAC_LORA_COUNT + t] = scale;
        }
    s = lorac_adapter_alloc_ranks(config, params, ranks, scales, out);
    free(ranks); free(scales);
    return s;
}

lorac_status_t lorac_adapter_init(const lorac_model_config_t *config, const lorac_lora_params_t *params,
                                  lorac_adapter_t **out) {
    lorac_status_t s = lorac_adapter_alloc(config, params, out);
    if (s) return s;
    lorac_adapter_t *a = *out;
    lorac_rng_t rng;
    lorac_rng_seed(&rng, params->seed);
    for (int32_t i = 0; i < a->n_modules; i++) {
        lorac_lora_module_t *m = &a->modules[i];
        int64_t n = (int64_t)m->r * m->in;
        if (m->in_group) continue; /* the group's A, drawn for its first module */
        if (params->init == LORAC_LORA_INIT_GAUSSIAN) {
            /* PEFT init_lora_weights="gaussian": normal with std 1/r */
            for (int64_t k = 0; k < n; k++) m->A[k] = lorac_rng_normal(&rng) / (float)m->r;
        } else {
            /* kaiming_uniform_(A, a=sqrt(5)): gain sqrt(2/(1+5)), bound
             * gain*sqrt(3/fan_in) = 1/sqrt(fan_in) with fan_in = in */
            float bound = 1.0f / sqrtf((float)m->in);
            for (int64_t k = 0; k < n; k++) m->A[k] = (2.0f * lorac_rng_float(&rng) - 1.0f) * bound;
        }
        /* B stays zero: the adapted model starts exactly at the base */
    }
    return LORAC_STATUS_OK;
}

void lorac_adapter_free(lorac_adapter_t *a) {
    if (!a) return;
    if (a->modules)
        for (int32_t i = 0; i < a->n_modules; i++) {
            if (!a->modules[i].in_group) { /* a fused group's are its first module's */
                free(a->modules[i].A);
                free(a->modules[i].B);
            }
            free(a->modules[i].Bt);
        }
    free(a->modules);
    free(a->layer_mask);
    free(a->index);
    free(a);
}

/* dst (cols, rows) = src (rows, cols) transposed. */
static void transpose_f32(float *dst, const float *src, int64_t rows, int64_t cols) {
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) dst[j * rows + i] = src[i * cols + j];
}

lorac_status_t lorac_adapter_prepare_inference(lorac_adapter_t *a) {
    for (int32_t i = 0; i < a->n_modules; i++) {
        lorac_lora_module_t *m = &a->modules[i];
        if (!m->Bt) m->Bt = malloc(sizeof(float) * (size_t)m->out * (size_t)m->r);
        if (!m->Bt) return lorac_error(LORAC_STATUS_NOMEM, "out of memory for the adapter's transposed B");
        transpose_f32(m->Bt, m->B, m->out, m->r);
    }
    return LORAC_STATUS_OK;
}

int32_t lorac_adapter_n_modules(const lorac_adapter_t *a) { return a->n_modules; }
lorac_lora_module_t *lorac_adapter_module(lorac_adapter_t *a, int32_t i) {
    return i >= 0 && i < a->n_modules ? &a->modules[i] : NULL;
}
const lorac_lora_params_t *lorac_adapter_params(const lorac_adapter_t *a) { return &a->params; }

const lorac_lora_module_t *lorac_adapter_find(const lorac_adapter_t *a, int32_t layer, lorac_lora_target_t t) {
    if (layer < 0 || layer >= a->config.n_layers || (int)t < 0 || t >= LORAC_LORA_COUNT) return NULL;
    int32_t i = a->index[layer * LORAC_LORA_COUNT + t];
    return i >= 0 ? &a->modules[i] : NULL;
}

int64_t lorac_adapter_n_params(const lorac_adapter_t *a) {
    int64_t n = 0;
    for (int32_t i = 0; i < a->n_modules; i++) /* a fused group's A once */
        n += (int64_t)a->modules[i].r * ((a->modules[i].in_group ? 0 : a->modules[i].in) + a->modules[i].out);
    return n;
}

// x is (T,in), u is (T,r), y is (T,out). u = x·Aᵀ ; y += s·u·Bᵀ
void lorac_lora_shrink(float *u, const float *x, const lorac_lora_module_t *m, int64_t T) {
    lorac_matmul_forward(u, x, m->A, LORAC_DTYPE_F32, NULL, T, m->in, m->r);
}

void lorac_lora_forward(float *y, float *u, const float *x, const lorac_lora_module_t *m, int64_t T) {
    lorac_lora_shrink(u, x, m, T);
    lorac_lora_expand_forward(y, u, m->B, m->scale, T, m->out, m->r);
}

// dy is (T,out); x (T,in) and u (T,r) are what forward saw; du is (T,r) scratch.
// dB += s·dyᵀ·u ; du = s·dy·B ; dA += duᵀ·x ; dx += du·A (dx may be NULL)
void lorac_lora_backward(float *dx, float *dA, float *dB, float *du, const float *dy, const float *x,
                         const float *u, const lorac_lora_module_t *m, int64_t T) {
    int64_t n_u = T * m->r, r = m->r, out = m->out;
    /* du first holds s·u, the input of B's weight gradient */
    memcpy(du, u, sizeof(float) * (size_t)n_u);
    lorac_scale(du, m->scale, n_u);
    /* dBᵀ (r, out) += (s·u)ᵀ·dy, on a transposed copy of dB in the
     * scratch after du: the product then reads dy by rows (64-column
     * panels) where dB += dyᵀ·(s·u) read it a few columns at a time down
     * all T rows, each row out floats apart (a line a row, a stride the
     * prefetchers do not follow). The same products summed in the same
     * order: the same bits. */
    float *dbt = du + n_u;
    transpose_f32(dbt, dB, out, r);
    lorac_matmul_backward_weight(dbt, NULL, du, dy, T, out, r);
    transpose_f32(dB, dbt, r, out);
    memset(du, 0, sizeof(float) * (size_t)n_u);
    lorac_matmul_backward_input(du, dy, m->B, LORAC_DTYPE_F32, T, m->r, m->out);
    lorac_scale(du, m->scale, n_u);
    lorac_matmul_backward_weight(dA, NULL, du, x, T, m->in, m->r);
    if (dx) lorac_matmul_backward_input(dx, du, m->A, LORAC_DTYPE_F32, T, m->in, m->r);
}
