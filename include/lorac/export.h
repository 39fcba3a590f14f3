/* lorac/export.h — adapters and models for llama.cpp, as GGUF files (and
 * llama.cpp's LoRA files read back as adapters).
 *
 * llama.cpp runs a LoRA from a GGUF file of its own layout, written for one
 * base model converted to GGUF by its convert_hf_to_gguf.py (`llama-cli -m
 * base.gguf --lora adapter.gguf`, `llama-server --lora`): lorac writes that
 * layout directly from a PEFT adapter, as llama.cpp's
 * convert_lora_to_gguf.py does, with no Python.
 *
 * The adapter file holds general.architecture (llama.cpp's name of the base
 * architecture: "llama" for Llama and Mistral, "qwen2", "qwen3", "gemma2",
 * "gemma3", "phi3", "granite", "smollm3"), general.type "adapter",
 * adapter.type "lora", adapter.lora.alpha, and per adapted projection
 * blk.N.<name>.weight.lora_a (GGUF ne [in, r]) and .lora_b (ne [r, out]),
 * the same row-major numbers as PEFT's lora_A (r, in) and lora_B (out, r).
 * llama.cpp scales each pair by alpha / r; where a module's scale differs
 * (rsLoRA, rank_pattern, alpha_pattern), its B is multiplied by the ratio,
 * so every module applies exactly its own scale. Two conversions as in
 * llama.cpp's converter: for the "llama"-family architectures (Llama,
 * Mistral, Granite, SmolLM3), whose GGUF q/k weights are permuted from
 * HuggingFace's rotate-half rotary layout to GGML's interleaved one, the
 * rows of q's and k's lora_B are permuted the same way; Phi-3's fused
 * qkv_proj and gate_up_proj become attn_qkv and ffn_up.
 */
#ifndef LORAC_EXPORT_H
#define LORAC_EXPORT_H

#include "lorac/core.h"
#include "lorac/gguf.h"
#include "lorac/lora.h"
#include "lorac/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* llama.cpp's name of the config's architecture ("llama", "qwen2", ...). */
const char *lorac_export_gguf_arch(const lorac_model_config_t *config);

/* Writes `adapter`, which fits a model with `config`, as a llama.cpp LoRA
 * GGUF at `path` (atomically), its tensors in `ggml_type`: F32 (exact),
 * F16 or BF16 (lorac/gguf.h's LORAC_GGML_TYPE_*). */
lorac_status_t lorac_export_adapter_gguf(const lorac_adapter_t *adapter, const lorac_model_config_t *config,
                                         uint32_t ggml_type, const char *path);

/* Reads a llama.cpp LoRA GGUF (lorac's or llama.cpp's convert_lora_to_gguf.py's)
 * as an adapter of a model with `config` (required): general.type
 * "adapter", adapter.type "lora" and general.architecture the model's, as
 * llama.cpp checks; F32, F16 or BF16 lora_a/lora_b pairs of the projections
 * (Phi-3's attn_qkv and ffn_up as its fused modules), each scaled by
 * alpha / r (1 without adapter.lora.alpha), as llama.cpp scales them; the
 * llama family's q/k lora_b rows permuted back to HuggingFace's order.
 * lorac_adapter_load reads such a file in place of a PEFT directory.
 * Errors name the file and the tensor; token_embd/output LoRAs and
 * quantized ones are LORAC_STATUS_UNSUPPORTED. */
lorac_status_t lorac_import_adapter_gguf(const char *path, const lorac_model_config_t *config, lorac_adapter_t **out);
/* The same from an opened file (`label` names it in errors; the fuzz target
 * reads from memory). */
lorac_status_t lorac_import_adapter_gguf_open(const lorac_gguf_t *g, const char *label,
                                              const lorac_model_config_t *config, lorac_adapter_t **out);

/* lorac_export_model_gguf's type for "the model's own" (F32, F16 or BF16,
 * the embedding's). */
#define LORAC_EXPORT_TYPE_AUTO 0xffffffffu

/* Writes the HuggingFace model in model_dir (config.json, safetensors
 * weights, tokenizer.json, and tokenizer_config.json's chat_template when
 * it has one) as a llama.cpp GGUF model at `path` (atomically), matrices in
 * `ggml_type` (F32, F16, BF16, Q8_0, or LORAC_EXPORT_TYPE_AUTO; a matrix
 * whose rows are not whole Q8_0 blocks is F16), norms and biases in F32,
 * as llama.cpp's convert_hf_to_gguf.py writes them, for every architecture
 * lorac runs (see gguf_model.c for each one's conversions). The tokenizer
 * must be one llama.cpp has (SentencePiece-style BPE with byte fallback, or
 * byte-level BPE with GPT-2's, Llama 3's, Qwen2's or SmolLM's
 * pre-tokenizer). A config llama.cpp would run otherwise (Gemma windows on
 * other layers, a multimodal checkpoint, ...) is LORAC_STATUS_UNSUPPORTED,
 * saying what; a window llama.cpp ignores (Mistral, Phi-3) is written with
 * a warning on stderr. */
lorac_status_t lorac_export_model_gguf(const char *model_dir, uint32_t ggml_type, const char *path);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_EXPORT_H */
