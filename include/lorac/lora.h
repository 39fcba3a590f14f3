/* lorac/lora.h — LoRA adapters: W' = W + s·B·A on chosen projections.
 *
 * An adapter holds, for each adapted (layer, projection), A (r, in) and
 * B (out, r) in f32 and the scale s = alpha / r (alpha / sqrt(r) with
 * rsLoRA). Projection names are PEFT's: q_proj, k_proj, v_proj, o_proj,
 * gate_proj, up_proj, down_proj.
 *
 * Files are PEFT's format: adapter_config.json + adapter_model.safetensors
 * with keys base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight
 * (r, in) and ...lora_B.weight (out, r).
 *
 * An adapter is independent of any model object; it only has to fit the
 * model's config (checked when it is attached or created).
 */
#ifndef LORAC_LORA_H
#define LORAC_LORA_H

#include <stdbool.h>

#include "lorac/core.h"
#include "lorac/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    LORAC_LORA_Q = 0,
    LORAC_LORA_K,
    LORAC_LORA_V,
    LORAC_LORA_O,
    LORAC_LORA_GATE,
    LORAC_LORA_UP,
    LORAC_LORA_DOWN,
    LORAC_LORA_COUNT
} lorac_lora_target_t;

/* "q_proj", ... */
const char *lorac_lora_target_name(lorac_lora_target_t t);
/* PEFT's name of the module that holds target t in a model with this
 * config: the target's own, Phi-3's fused "qkv_proj" / "gate_up_proj", or
 * GPT-2's "c_attn" (q, k, v), "attn.c_proj" (o), "c_fc" (up),
 * "mlp.c_proj" (down). */
const char *lorac_lora_module_name(const lorac_model_config_t *c, lorac_lora_target_t t);
/* The module's path in the HuggingFace model, as PEFT names it, into buf:
 * "model.layers.3.self_attn.q_proj" (Phi-3's q, k and v:
 * "model.layers.3.self_attn.qkv_proj"; a multimodal Gemma 3's under its
 * module_prefix), GPT-2's "transformer.h.3.attn.c_attn" (q, k and v),
 * ".attn.c_proj", ".mlp.c_fc", ".mlp.c_proj". */
void lorac_lora_module_path(const lorac_model_config_t *c, int32_t layer, int t, char *buf, size_t cap);
/* Parses "q_proj,v_proj" or "all-linear" into a bit mask (1 << target);
 * Phi-3's fused modules "qkv_proj" and "gate_up_proj" set q, k, v and
 * gate, up (on a model without them, the same three and two separately);
 * GPT-2's "c_attn" sets q, k, v, "c_fc" up, "attn.c_proj" o, "mlp.c_proj"
 * down and "c_proj" both, as PEFT's suffix match selects both. */
lorac_status_t lorac_lora_parse_targets(const char *text, uint32_t *mask);
/* Parses "0-3,7" into a per-layer mask of n_layers bytes (1 = adapted);
 * NULL or "" or "all" selects every layer. */
lorac_status_t lorac_lora_parse_layers(const char *text, int32_t n_layers, uint8_t *mask);

typedef enum {
    LORAC_LORA_INIT_KAIMING = 0, /* A ~ kaiming_uniform(a=sqrt(5)), PEFT's default */
    LORAC_LORA_INIT_GAUSSIAN     /* A ~ N(0, 1/r) */
} lorac_lora_init_t;

typedef struct {
    int32_t r;
    float alpha;
    float dropout;         /* on the adapter's input only, as PEFT */
    bool rslora;           /* s = alpha / sqrt(r) instead of alpha / r */
    uint32_t targets;      /* bit mask of lorac_lora_target_t */
    const uint8_t *layers; /* n_layers bytes, NULL = all */
    lorac_lora_init_t init;
    uint64_t seed;
} lorac_lora_params_t;

/* r 8, alpha 16, dropout 0, q_proj + v_proj, all layers, kaiming, seed 42. */
lorac_lora_params_t lorac_lora_default_params(void);

/* One adapted projection. */
typedef struct {
    int32_t layer;
    lorac_lora_target_t target;
    int32_t r, in, out;
    float scale;
    float *A;   /* (r, in) */
    float *B;   /* (out, r) */
    float *Bt;  /* (r, out) copy of B for decode, or NULL: see lorac_adapter_prepare_inference */
    /* Phi-3's fused projections (config.fused_proj): PEFT's one LoRA on
     * qkv_proj (gate_up_proj) is here the modules of q, k and v (gate, up)
     * sharing one A, each B its rows of the group's B. The group's first
     * module (q, gate) owns them: group_out is the group's rows (its B is
     * (group_out, r)); the others have in_group set and point into it.
     * group_out 0 and in_group false elsewhere. */
    int32_t group_out;
    bool in_group;
} lorac_lora_module_t;

/* The target that names m's PEFT module: its own, or, for a fused group's
 * member, the group's first (q for Phi-3's qkv_proj, gate for gate_up_proj). */
static inline lorac_lora_target_t lorac_lora_module_head(const lorac_lora_module_t *m) {
    return !m->in_group ? m->target : m->target <= LORAC_LORA_V ? LORAC_LORA_Q : LORAC_LORA_GATE;
}

typedef struct lorac_adapter lorac_adapter_t;

/* A new adapter for a model with this config: A initialised from the seed,
 * B zero, so the adapted model starts exactly at the base model. */
lorac_status_t lorac_adapter_init(const lorac_model_config_t *config, const lorac_lora_params_t *params,
                                  lorac_adapter_t **out);
void lorac_adapter_free(lorac_adapter_t *adapter);

int32_t lorac_adapter_n_modules(const lorac_adapter_t *adapter);
lorac_lora_module_t *lorac_adapter_module(lorac_adapter_t *adapter, int32_t index);
/* NULL when (layer, target) is not adapted. */
const lorac_lora_module_t *lorac_adapter_find(const lorac_adapter_t *adapter, int32_t layer, lorac_lora_target_t target);
const lorac_lora_params_t *lorac_adapter_params(const lorac_adapter_t *adapter);
/* Adds to every module a transposed copy of B, which turns the expand
 * y += s·u·Bᵀ of a few rows (decode) into streaming axpys instead of
 * rank-long dot products. For adapters that are only applied (serving,
 * generate); call it again after changing B, as the copy is not updated. */
lorac_status_t lorac_adapter_prepare_inference(lorac_adapter_t *adapter);
/* Trainable numbers: Σ r·(in+out). */
int64_t lorac_adapter_n_params(const lorac_adapter_t *adapter);

/* Writes OUT/adapter_config.json and OUT/adapter_model.safetensors in
 * PEFT's format (creating OUT), each atomically. base_model names the base
 * in base_model_name_or_path. Modules whose r or alpha differ from the
 * adapter's defaults get rank_pattern / alpha_pattern entries; a set of
 * modules that is not (targets x layers) is written as a list of full
 * module names in target_modules. */
lorac_status_t lorac_adapter_save(const lorac_adapter_t *adapter, const char *dir, const char *base_model);
/* Reads a PEFT adapter directory (adapter_config.json +
 * adapter_model.safetensors) written by lorac, PEFT or other tools, and
 * checks it fits `config`: shapes, layers and targets; errors name the
 * tensor, the expected and the found shape.
 *
 * Accepted, with PEFT's own semantics: keys with or without the
 * "base_model.model." prefix and with ".lora_A.weight" or
 * ".lora_A.default.weight"; target_modules as a list (exact name or
 * ".name" suffix), a regex string (fully matched against the module name,
 * e.g. "model.layers.0.self_attn.q_proj"), "all-linear" or absent (then the
 * tensors present decide); exclude_modules; layers_to_transform (int or
 * list) with layers_pattern; rank_pattern and alpha_pattern (first key, in
 * file order, whose regex matches the end of the module name after a '.',
 * so modules may have different r and scale); use_rslora; fan_in_fan_out
 * (meaningless for nn.Linear: PEFT reads it as false, and so does lorac,
 * after a warning on stderr); F32, F16 and BF16 weights. Missing "r" and
 * "lora_alpha" take PEFT's defaults, 8 and 8.
 *
 * Refused (LORAC_STATUS_UNSUPPORTED, saying which): DoRA (use_dora or
 * lora_magnitude_vector tensors), embedding and lm_head adapters,
 * modules_to_save, bias other than "none", lora_bias, peft_type other than
 * LORA, initialisations that rewrite the base weights (PiSSA, OLoRA, CorDA,
 * LoftQ), layer_replication, target_parameters, trainable tokens, aLoRA.
 * Tensors the config does not select, a lora_A without its lora_B (or the
 * reverse) and tensors that are no LoRA weight are LORAC_STATUS_FORMAT.
 *
 * `config` may be NULL (for inspection): the model's sizes and layer count
 * are then taken from the tensors themselves, and the adapter fits no
 * model.
 *
 * A path to a llama.cpp LoRA file (GGUF) is read instead by
 * lorac_import_adapter_gguf (lorac/export.h), which needs `config`. */
lorac_status_t lorac_adapter_load(const char *dir, const lorac_model_config_t *config, lorac_adapter_t **out);

/* lorac_adapter_load from memory: the text of adapter_config.json and the
 * bytes of adapter_model.safetensors (not retained after the call). Errors
 * name them "adapter_config.json" and "adapter_model.safetensors". */
lorac_status_t lorac_adapter_load_memory(const char *config_json, size_t config_len, const void *safetensors,
                                         size_t safetensors_len, const lorac_model_config_t *config,
                                         lorac_adapter_t **out);

/* The module's alpha: scale·r (scale·sqrt(r) with rsLoRA). */
float lorac_lora_module_alpha(const lorac_lora_module_t *m, bool rslora);

/* Writes a complete HuggingFace model directory to out_dir: every tensor of
 * the base in model_dir, with W' = W + Σ_i scales[i] · s_i · B_i·A_i computed
 * in f32 for each adapted projection, stored in `dtype` (LORAC_DTYPE_COUNT:
 * each tensor's own dtype), plus the base's config, tokenizer and generation
 * files. Unadapted tensors are copied bit for bit. */
lorac_status_t lorac_merge_write(const char *model_dir, const lorac_adapter_t *const *adapters, const float *scales,
                                 int32_t n, lorac_dtype_t dtype, const char *out_dir);

/* ---- the LoRA layer pair (llm.c style; see lora.c) -------------------------
 * forward:  u = x·Aᵀ (T, r); y += s · u·Bᵀ (T, out). x is (T, in).
 * backward: dB += s · dyᵀ·u ; du = s · dy·B ; dA += duᵀ·x ; dx += du·A.
 * du is scratch of T·r + r·out floats. */
void lorac_lora_forward(float *y, float *u, const float *x, const lorac_lora_module_t *m, int64_t T);
void lorac_lora_backward(float *dx, float *dA, float *dB, float *du, const float *dy, const float *x,
                         const float *u, const lorac_lora_module_t *m, int64_t T);
/* The forward's first half alone, u = x·Aᵀ: training then adds s·u·Bᵀ in
 * the base weight's own product (lorac_matmul_forward_train), and in the
 * backward calls lorac_lora_backward with dx NULL and adds du·A in the
 * base's dx product (lorac_matmul_backward_input_train): the same bits as
 * the pair after the base product, without a second pass over y and dx. */
void lorac_lora_shrink(float *u, const float *x, const lorac_lora_module_t *m, int64_t T);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_LORA_H */
