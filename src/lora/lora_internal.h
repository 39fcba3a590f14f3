/* Private layout of an adapter, shared by lora.c and peft.c. */
#ifndef LORAC_LORA_INTERNAL_H
#define LORAC_LORA_INTERNAL_H

#include "lorac/lora.h"

struct lorac_adapter {
    lorac_model_config_t config;
    lorac_lora_params_t params;   /* params.layers points at layer_mask */
    uint8_t *layer_mask;          /* (n_layers) */
    lorac_lora_module_t *modules; /* in (layer, target) order */
    int32_t n_modules;
    int32_t *index;               /* (n_layers * LORAC_LORA_COUNT) -> module or -1 */
};

/* Allocates modules with A = B = 0 for every selected (layer, target). */
lorac_status_t lorac_adapter_alloc(const lorac_model_config_t *config, const lorac_lora_params_t *params,
                                   lorac_adapter_t **out);
/* The same with a rank and a scale per slot (n_layers * LORAC_LORA_COUNT,
 * layer-major; rank 0 = not adapted), for adapters whose modules differ
 * (PEFT's rank_pattern / alpha_pattern). params->r and alpha stay the
 * adapter's defaults; params->targets and layers become the union of the
 * adapted slots. */
lorac_status_t lorac_adapter_alloc_ranks(const lorac_model_config_t *config, const lorac_lora_params_t *params,
                                         const int32_t *ranks, const float *scales, lorac_adapter_t **out);
void lorac_lora_target_dims(const lorac_model_config_t *c, lorac_lora_target_t t, int32_t *in, int32_t *out);
float lorac_lora_scale(float alpha, int32_t r, bool rslora);
/* Target index of a PEFT module name of `len` bytes, or -1. */
int lorac_lora_target_from_name(const char *name, size_t len);

/* Phi-3 (fused_proj) and GPT-2 (fused_qkv): the fused group of target t,
 * by its first target and size (Q and 3 for q, k, v; GATE and 2 for
 * Phi-3's gate, up); t and 1 elsewhere. */
static inline int lorac_lora_group(const lorac_model_config_t *c, int t, int *size) {
    if ((c->fused_proj || c->fused_qkv) && t <= LORAC_LORA_V && t != LORAC_LORA_O) { *size = 3; return LORAC_LORA_Q; }
    if (c->fused_proj && (t == LORAC_LORA_GATE || t == LORAC_LORA_UP)) { *size = 2; return LORAC_LORA_GATE; }
    *size = 1;
    return t;
}


/* 0 for a target the architecture lacks (GPT-2's plain MLP has no gate). */
static inline int lorac_lora_target_exists(const lorac_model_config_t *c, int t) {
    return !(c->plain_mlp && t == LORAC_LORA_GATE);
}


#endif
