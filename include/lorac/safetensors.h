/* lorac/safetensors.h — strict, mmap'd safetensors reader and atomic writer.
 *
 * File format (https://huggingface.co/docs/safetensors):
 *   8 bytes   little-endian u64 N: length of the JSON header
 *   N bytes   UTF-8 JSON object:
 *               { "__metadata__": {"k": "v", ...},            (optional, str->str)
 *                 "<name>": {"dtype": "F32", "shape": [d0, d1, ...],
 *                            "data_offsets": [begin, end]}, ... }
 *             (writers pad it with spaces to a multiple of 8)
 *   rest      the byte buffer; offsets are relative to its start.
 *
 * The reader enforces every rule of the reference implementation: file of at
 * least 8 bytes; N <= 100,000,000 and 8 + N inside the file (checked add);
 * header valid UTF-8 JSON starting with '{'; known dtype; non-negative integer
 * dims; tensors sorted by offset, the first starting at 0, each starting where
 * the previous ended (no overlap, no gap); element count and byte count
 * computed with overflow checks and equal to end - begin; the last tensor ends
 * exactly at the end of the file; no duplicate names; __metadata__ maps
 * strings to strings. Anything else is LORAC_STATUS_FORMAT with a message
 * naming the file, the tensor and the rule.
 *
 * Ownership: tensor data points into the read-only mapping and stays valid
 * until lorac_safetensors_free. A reader may be shared across threads for
 * reading once opened. Tensor data is only as aligned as the file makes it
 * (lorac's writer pads the header so the buffer starts 8-byte aligned);
 * read elements with memcpy or check alignment before casting.
 */
#ifndef LORAC_SAFETENSORS_H
#define LORAC_SAFETENSORS_H

#include "lorac/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LORAC_MAX_DIMS 8
#define LORAC_SAFETENSORS_MAX_HEADER 100000000ull

typedef struct {
    const char *name;               /* NUL-terminated, owned by the reader */
    lorac_dtype_t dtype;
    int32_t n_dims;                 /* 0 for a scalar */
    int64_t shape[LORAC_MAX_DIMS];
    int64_t n_elements;             /* product of shape (1 for a scalar) */
    const void *data;               /* into the mapping (NULL when nbytes == 0) */
    uint64_t nbytes;
} lorac_tensor_view_t;

typedef struct lorac_safetensors lorac_safetensors_t;

/* Opens and validates `path`. On success *out owns the mapping. */
lorac_status_t lorac_safetensors_open(const char *path, lorac_safetensors_t **out);
/* The same with the file's pages read as they are touched (populate 0:
 * lorac_file_map_ex) instead of all at once. */
lorac_status_t lorac_safetensors_open_ex(const char *path, int populate, lorac_safetensors_t **out);

/* Validates an in-memory buffer (not copied: it must outlive the reader).
 * `label` names the buffer in error messages. Used by the fuzz target. */
lorac_status_t lorac_safetensors_open_memory(const void *data, size_t size, const char *label,
                                             lorac_safetensors_t **out);

void lorac_safetensors_free(lorac_safetensors_t *st);

/* Tensors in file (offset) order. */
int64_t lorac_safetensors_count(const lorac_safetensors_t *st);
const lorac_tensor_view_t *lorac_safetensors_get(const lorac_safetensors_t *st, int64_t index);
/* NULL when absent. */
const lorac_tensor_view_t *lorac_safetensors_find(const lorac_safetensors_t *st, const char *name);

/* __metadata__ entries; value lookup returns NULL when absent. */
int64_t lorac_safetensors_metadata_count(const lorac_safetensors_t *st);
const char *lorac_safetensors_metadata_key(const lorac_safetensors_t *st, int64_t index);
const char *lorac_safetensors_metadata_get(const lorac_safetensors_t *st, const char *key);

/* ---- a model's weights: one file or shards ---------------------------------
 * Opens <dir>/model.safetensors, or the shards listed in
 * <dir>/model.safetensors.index.json ("weight_map": name -> file). Shard names
 * must be plain file names inside `dir` (no '/', no ".."); every tensor named
 * in the index must be in its shard. If `dir` is itself a .safetensors file it
 * is opened alone. Lookups search all shards. */
typedef struct lorac_weight_files lorac_weight_files_t;

lorac_status_t lorac_weight_files_open(const char *dir, lorac_weight_files_t **out);
/* The same with populate 0: the shards' pages read as they are touched
 * (lorac_safetensors_open_ex). */
lorac_status_t lorac_weight_files_open_ex(const char *dir, int populate, lorac_weight_files_t **out);
void lorac_weight_files_free(lorac_weight_files_t *wf);
int64_t lorac_weight_files_count(const lorac_weight_files_t *wf);
const lorac_tensor_view_t *lorac_weight_files_get(const lorac_weight_files_t *wf, int64_t index);
const lorac_tensor_view_t *lorac_weight_files_find(const lorac_weight_files_t *wf, const char *name);

/* ---- writer --------------------------------------------------------------- */
typedef struct {
    const char *name;
    lorac_dtype_t dtype;
    int32_t n_dims;
    int64_t shape[LORAC_MAX_DIMS];
    const void *data;               /* n_elements * dtype size bytes */
} lorac_tensor_write_t;

/* Writes the tensors (in the given order) and optional metadata pairs
 * (meta_keys[i] -> meta_values[i]) to `path` atomically: temporary file,
 * fsync, rename. The header is padded with spaces to a multiple of 8. */
lorac_status_t lorac_safetensors_write(const char *path, const lorac_tensor_write_t *tensors,
                                       int64_t n_tensors, const char *const *meta_keys,
                                       const char *const *meta_values, int64_t n_meta);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_SAFETENSORS_H */
