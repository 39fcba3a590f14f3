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

#endif
