/* llama.cpp's names: one table of architectures, one of tensors. They are
 * llama.cpp's (gguf-py's constants.py, MODEL_ARCH_NAMES and
 * TENSOR_NAMES), matched to lorac's architectures and tensor kinds. */
#include <math.h>
#include <string.h>

#include "export/export_internal.h"
#include "lorac/export.h"
#include "lorac/gguf.h"

static const struct {
    lorac_arch_t arch;
    const char *gguf;
    bool permute; /* converted by llama.cpp's LlamaModel, which permutes q/k */
} k_archs[] = {
    {LORAC_ARCH_LLAMA, "llama", true},     {LORAC_ARCH_MISTRAL, "llama", true},
    {LORAC_ARCH_GRANITE, "granite", true}, {LORAC_ARCH_SMOLLM3, "smollm3", true},
    {LORAC_ARCH_QWEN2, "qwen2", false},    {LORAC_ARCH_QWEN3, "qwen3", false},
    {LORAC_ARCH_GEMMA2, "gemma2", false},  {LORAC_ARCH_GEMMA3, "gemma3", false},
    {LORAC_ARCH_PHI3, "phi3", false},      {LORAC_ARCH_GPT2, "gpt2", false},
};

static const char *const k_tensors[LORAC_TENSOR_COUNT] = {
    [LORAC_TENSOR_EMBED] = "token_embd",
    [LORAC_TENSOR_FINAL_NORM] = "output_norm",
    [LORAC_TENSOR_LM_HEAD] = "output",
    [LORAC_TENSOR_ATTN_NORM] = "attn_norm",
    [LORAC_TENSOR_Q] = "attn_q",
    [LORAC_TENSOR_K] = "attn_k",
    [LORAC_TENSOR_V] = "attn_v",
    [LORAC_TENSOR_O] = "attn_output",
    [LORAC_TENSOR_Q_BIAS] = "attn_q",
    [LORAC_TENSOR_K_BIAS] = "attn_k",
    [LORAC_TENSOR_V_BIAS] = "attn_v",
    [LORAC_TENSOR_O_BIAS] = "attn_output",
    [LORAC_TENSOR_FFN_NORM] = "ffn_norm",
    [LORAC_TENSOR_GATE] = "ffn_gate",
    [LORAC_TENSOR_UP] = "ffn_up",
    [LORAC_TENSOR_DOWN] = "ffn_down",
    [LORAC_TENSOR_GATE_BIAS] = "ffn_gate",
    [LORAC_TENSOR_UP_BIAS] = "ffn_up",
    [LORAC_TENSOR_DOWN_BIAS] = "ffn_down",
    [LORAC_TENSOR_Q_NORM] = "attn_q_norm",
    [LORAC_TENSOR_K_NORM] = "attn_k_norm",
    [LORAC_TENSOR_ATTN_POST_NORM] = "post_attention_norm",
    [LORAC_TENSOR_FFN_POST_NORM] = "post_ffw_norm",
    [LORAC_TENSOR_QKV] = "attn_qkv",
    [LORAC_TENSOR_GATE_UP] = "ffn_up",
    [LORAC_TENSOR_POS_EMBED] = "position_embd",
    [LORAC_TENSOR_QKV_BIAS] = "attn_qkv",
    [LORAC_TENSOR_ATTN_NORM_BIAS] = "attn_norm",
    [LORAC_TENSOR_FFN_NORM_BIAS] = "ffn_norm",
    [LORAC_TENSOR_FINAL_NORM_BIAS] = "output_norm",
};

const char *lorac_export_gguf_tensor(lorac_tensor_kind_t kind) {
    return (unsigned)kind < LORAC_TENSOR_COUNT ? k_tensors[kind] : NULL;
}

/* The config's row of k_archs, or -1. */
static int arch_index(const lorac_model_config_t *c) {
    for (size_t i = 0; i < sizeof k_archs / sizeof k_archs[0]; i++)
        if (k_archs[i].arch == c->arch) return (int)i;
    return -1;
}

const char *lorac_export_gguf_arch(const lorac_model_config_t *config) {
    int i = arch_index(config);
    return i < 0 ? NULL : k_archs[i].gguf;
}

bool lorac_export_permutes_rotary(const lorac_model_config_t *c) {
    int i = arch_index(c);
    return i >= 0 && k_archs[i].permute;
}

int64_t lorac_export_rotary_row(const lorac_model_config_t *c, int64_t row) {
    if (!lorac_export_permutes_rotary(c)) return row;
    int64_t hd = c->head_dim, i = row % hd;
    return row - i + (i & 1) * (hd / 2) + i / 2;
}

uint32_t lorac_export_ggml_type(lorac_dtype_t d) {
    return d == LORAC_DTYPE_BF16 ? LORAC_GGML_TYPE_BF16 : d == LORAC_DTYPE_F16 ? LORAC_GGML_TYPE_F16 : LORAC_GGML_TYPE_F32;
}

lorac_dtype_t lorac_export_dtype(uint32_t t) {
    return t == LORAC_GGML_TYPE_F32    ? LORAC_DTYPE_F32
           : t == LORAC_GGML_TYPE_F16  ? LORAC_DTYPE_F16
           : t == LORAC_GGML_TYPE_BF16 ? LORAC_DTYPE_BF16
                                       : LORAC_DTYPE_COUNT;
}

static void quantize_q8_0(uint8_t *dst, const float *x, int64_t n) {
    for (int64_t b = 0; b < n / 32; b++, x += 32, dst += 34) {
        float amax = 0.0f;
        for (int k = 0; k < 32; k++) amax = fmaxf(amax, fabsf(x[k]));
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        uint16_t h = lorac_f32_to_f16(d);
        memcpy(dst, &h, 2);
        for (int k = 0; k < 32; k++) dst[2 + k] = (uint8_t)(int8_t)roundf(x[k] * id);
    }
}

void lorac_export_store(void *dst, const float *src, int64_t n, uint32_t type) {
    if (type == LORAC_GGML_TYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof *src);
    } else if (type == LORAC_GGML_TYPE_Q8_0) {
        quantize_q8_0(dst, src, n);
    } else {
        uint8_t *p = dst;
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = type == LORAC_GGML_TYPE_F16 ? lorac_f32_to_f16(src[i]) : lorac_f32_to_bf16(src[i]);
            memcpy(p + 2 * i, &h, 2);
        }
    }
}
