/* Private helpers shared by extract.c and combine.c. */
#ifndef LORAC_EXTRACT_INTERNAL_H
#define LORAC_EXTRACT_INTERNAL_H

#include "lorac/model.h"

/* LORAC_STATUS_INVALID_ARG unless a and b give every LoRA projection the
 * same shape (layers, hidden and intermediate sizes, heads, KV heads,
 * head_dim); the message names the field and both values, calling the two
 * sides what_a and what_b. */
lorac_status_t lorac_lora_check_same_shape(const lorac_model_config_t *a, const lorac_model_config_t *b,
                                           const char *what_a, const char *what_b);

#endif
