/* lorac/infer.h — sampling and streaming text output for generation.
 *
 * The sampler is a per-run object (it owns its RNG state); with the same
 * seed, parameters and logits it draws the same tokens on every machine.
 */
#ifndef LORAC_INFER_H
#define LORAC_INFER_H

#include "lorac/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    float temperature;   /* 0 = greedy (argmax) */
    int32_t top_k;       /* <= 0: off */
    float top_p;         /* >= 1: off */
    uint64_t seed;
} lorac_sampler_params_t;

/* temperature 0.8, top_k 40, top_p 0.95, seed 42 (llama.cpp's defaults). */
lorac_sampler_params_t lorac_sampler_default_params(void);
/* Checks ranges: temperature finite and >= 0, top_p in (0, 1]. */
lorac_status_t lorac_sampler_params_validate(const lorac_sampler_params_t *p);

typedef struct lorac_sampler lorac_sampler_t;
lorac_status_t lorac_sampler_init(const lorac_sampler_params_t *params, int32_t vocab_size, lorac_sampler_t **out);
void lorac_sampler_free(lorac_sampler_t *s);
/* Picks a token from `logits` (vocab_size floats; modified in place). Ties
 * in greedy mode go to the lowest id, like argmax in PyTorch. */
int32_t lorac_sampler_sample(lorac_sampler_t *s, float *logits);

/* Streaming UTF-8: bytes go in as tokens produce them; only whole characters
 * come out, so a character split across tokens is never printed half. */
typedef struct {
    char pending[8];
    int32_t n_pending;
} lorac_utf8_stream_t;

/* Appends `len` bytes; writes the complete characters (and any invalid bytes,
 * as U+FFFD) into out, returning how many bytes were written. `out` must hold
 * 3 * len + 3 bytes (every byte may turn into a 3-byte U+FFFD). */
size_t lorac_utf8_stream_push(lorac_utf8_stream_t *st, const char *bytes, size_t len, char *out);
/* Flushes what is left (an incomplete character becomes U+FFFD). out holds 8 bytes. */
size_t lorac_utf8_stream_flush(lorac_utf8_stream_t *st, char *out);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_INFER_H */
