/* Shared by the GGUF exporters: llama.cpp's names for architectures and
 * tensors, and its rotary row order. */
#ifndef LORAC_EXPORT_INTERNAL_H
#define LORAC_EXPORT_INTERNAL_H

#include <stdbool.h>

#include "lorac/model.h"
#include "model/model_internal.h"

/* llama.cpp's name of a tensor kind, without "blk.N." and ".weight"/".bias"
 * ("attn_q", "token_embd", ...). */
const char *lorac_export_gguf_tensor(lorac_tensor_kind_t kind);
/* true for the architectures whose GGUF q/k rows llama.cpp's converter
 * permutes into GGML's interleaved rotary order (its LlamaModel family). */
bool lorac_export_permutes_rotary(const lorac_model_config_t *c);
/* The HuggingFace row that GGUF row `row` of q or k holds: row
 * h·hd + 2j + s comes from h·hd + s·hd/2 + j where the architecture is
 * permuted, else the row itself. */
int64_t lorac_export_rotary_row(const lorac_model_config_t *c, int64_t row);

/* The ggml type of a tensor dtype (F32, F16, BF16; F32 for anything else)
 * and the reverse (LORAC_DTYPE_COUNT for a type that is none of them). */
uint32_t lorac_export_ggml_type(lorac_dtype_t dtype);
lorac_dtype_t lorac_export_dtype(uint32_t ggml_type);
/* n f32 values stored at dst as ggml `type`: F32, F16, BF16, or Q8_0 (n a
 * multiple of 32: blocks of an f16 scale d = max|x| / 127 and 32 int8
 * round(x / d), half away from zero, 0 where d is 0, as ggml's reference
 * quantizer and llama.cpp's converter make them). */
void lorac_export_store(void *dst, const float *src, int64_t n, uint32_t type);

#endif
