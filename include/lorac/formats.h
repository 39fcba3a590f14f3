/* lorac/formats.h — small file formats: NumPy .npy (writer) and llama2.c
 * checkpoints (reader). safetensors has its own header.
 *
 * llama2.c checkpoint (.bin, "legacy" version 0 as written by llama2.c's
 * export.py --version 0 and by Karpathy's tinyllamas):
 *   7 little-endian int32: dim, hidden_dim, n_layers, n_heads, n_kv_heads,
 *   vocab_size, seq_len. A negative vocab_size means the classifier is
 *   stored separately (unshared); |vocab_size| is the vocabulary.
 *   Then float32 arrays: token_embedding (vocab, dim), rms_att (L, dim),
 *   wq (L, dim, dim), wk (L, kv_dim, dim), wv (L, kv_dim, dim),
 *   wo (L, dim, dim), rms_ffn (L, dim), w1 (L, hidden, dim),
 *   w2 (L, dim, hidden), w3 (L, hidden, dim), rms_final (dim),
 *   freq_cis real + imag (seq_len * head_size/2 each, unused),
 *   and wcls (vocab, dim) only when unshared.
 *   kv_dim = dim * n_kv_heads / n_heads. wq/wk rows are in llama2.c's
 *   interleaved rotary layout (pairs (2i, 2i+1)).
 */
#ifndef LORAC_FORMATS_H
#define LORAC_FORMATS_H

#include <stdbool.h>

#include "lorac/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Writes a float32 C-order array of `n_dims` dims (<= 8) to `path` as
 * NumPy .npy version 1.0, atomically. */
lorac_status_t lorac_npy_write_f32(const char *path, const float *data, const int64_t *shape, int32_t n_dims);

typedef struct {
    int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
    bool shared_classifier;
    /* pointers into the mapping (float32, little-endian) */
    const float *token_embedding, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3, *rms_final, *wcls;
    lorac_mapped_file_t file;
} lorac_llama2c_checkpoint_t;

/* Maps and validates a checkpoint: positive sizes, heads dividing dim,
 * n_kv_heads dividing n_heads, even head size, and a file size that equals
 * (or, for files with trailing data, is at least) the computed size, all
 * with overflow checks. */
lorac_status_t lorac_llama2c_open(const char *path, lorac_llama2c_checkpoint_t *out);
/* Same over a buffer the caller keeps alive (used by the fuzz target). */
lorac_status_t lorac_llama2c_parse(const void *data, size_t size, const char *label, lorac_llama2c_checkpoint_t *out);
void lorac_llama2c_close(lorac_llama2c_checkpoint_t *ckpt);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_FORMATS_H */
