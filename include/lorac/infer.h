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

/* An amount added to one token's logit (OpenAI's logit_bias). */
typedef struct {
    int32_t token;
    float bias;
} lorac_logit_bias_t;

#define LORAC_SAMPLER_MAX_LOGIT_BIAS 1024

/* What a draw goes through, in vLLM's order: the logit biases, then the
 * penalties (repetition, frequency, presence) change the logits; the
 * temperature divides them; the softmax; min-p, top-k and top-p each drop
 * tokens; the draw is from what is left, renormalised. Greedy (temperature
 * 0) takes the argmax of the biased and penalised logits. */
typedef struct {
    float temperature;   /* 0 = greedy (argmax) */
    int32_t top_k;       /* <= 0: off */
    float top_p;         /* >= 1: off */
    float min_p;         /* 0 = off: drop tokens less likely than min_p times the most likely one */
    /* HF's and vLLM's repetition_penalty over every token of the prompt and
     * of the output so far: a positive logit is divided by it, a negative one
     * multiplied. 1 = off; > 0. */
    float repetition_penalty;
    /* OpenAI's penalties over the output so far (as vLLM counts them):
     * logit -= frequency_penalty * count + presence_penalty * (count > 0).
     * 0 = off; in [-2, 2] at the API. */
    float presence_penalty;
    float frequency_penalty;
    /* added to the logits before anything else; copied by lorac_sampler_init.
     * Ids outside the vocabulary are an error there; a repeated id adds up. */
    const lorac_logit_bias_t *logit_bias;
    int32_t n_logit_bias;  /* 0 .. LORAC_SAMPLER_MAX_LOGIT_BIAS */
    uint64_t seed;
} lorac_sampler_params_t;

/* temperature 0.8, top_k 40, top_p 0.95, seed 42 (llama.cpp's defaults); no
 * min-p, no penalties. */
lorac_sampler_params_t lorac_sampler_default_params(void);
/* Checks ranges: temperature finite and >= 0, top_p in (0, 1], min_p in
 * [0, 1], repetition_penalty finite and > 0, the other penalties finite,
 * logit biases finite and at most LORAC_SAMPLER_MAX_LOGIT_BIAS of them. */
lorac_status_t lorac_sampler_params_validate(const lorac_sampler_params_t *p);

typedef struct lorac_sampler lorac_sampler_t;
lorac_status_t lorac_sampler_init(const lorac_sampler_params_t *params, int32_t vocab_size, lorac_sampler_t **out);
void lorac_sampler_free(lorac_sampler_t *s);
/* The penalties' memory of the sequence. add_prompt records prompt tokens
 * (the repetition penalty's); sample records every token it returns as
 * output; reset forgets both (the RNG goes on), for a new sequence. Ids
 * outside the vocabulary are ignored. Without penalties these do nothing. */
void lorac_sampler_add_prompt(lorac_sampler_t *s, const int32_t *ids, int32_t n);
void lorac_sampler_accept(lorac_sampler_t *s, int32_t id); /* an output token that sample did not draw */
void lorac_sampler_reset(lorac_sampler_t *s);
/* Picks a token from `logits` (vocab_size floats; modified in place) and
 * records it as output. Ties in greedy mode go to the lowest id, like
 * argmax in PyTorch. */
int32_t lorac_sampler_sample(lorac_sampler_t *s, float *logits);
/* The distribution sample would draw from, without drawing or recording:
 * up to vocab_size (id, probability) pairs, most likely first (ties by id),
 * renormalised to sum to 1; returns how many. Greedy gives the argmax with
 * probability 1. `logits` is modified in place. */
int32_t lorac_sampler_distribution(lorac_sampler_t *s, float *logits, int32_t *ids, float *probs);

/* Stop strings over streamed text: the offset of the earliest match of any
 * of stops[0..n) in text[0..len), or -1. *safe gets how many leading bytes
 * can be released now: all but the longest tail that is a prefix of some
 * stop string (it may yet become one). Stops must be non-empty. */
long lorac_stop_find(const char *const *stops, int32_t n, const char *text, size_t len, size_t *safe);

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
