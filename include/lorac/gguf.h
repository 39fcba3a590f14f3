/* lorac/gguf.h — GGUF, the file format of llama.cpp and ggml: a strict,
 * mmap'd reader and an atomic, streaming writer.
 *
 * File format (version 3, little-endian; ggml's gguf.cpp is the reference):
 *   u32 magic "GGUF", u32 version, u64 n_tensors, u64 n_kv
 *   n_kv pairs:      string key, u32 value type, value
 *   n_tensors infos: string name, u32 n_dims, u64 ne[n_dims] (ne[0] is the
 *                    innermost, contiguous dimension), u32 ggml type,
 *                    u64 offset into the data section
 *   padding to `general.alignment` (u32, default 32), then the data section:
 *   each tensor where its offset says, padded to the alignment.
 *   string = u64 length + bytes (no NUL); array = u32 element type + u64
 *   count + elements.
 *
 * The reader enforces ggml's rules: the magic; version 2 or 3; counts that
 * fit the file; strings, arrays and values inside the file; known value
 * types, no nested arrays; no duplicate keys; general.alignment a u32 power
 * of two; tensor names shorter than 64 bytes and unique; 1 to 4 dims, none
 * negative, their product without overflow; a known tensor type whose block
 * size divides ne[0]; each tensor's offset exactly where the previous padded
 * one ends (the first at 0); the data section inside the file. Anything else
 * is LORAC_STATUS_FORMAT with a message naming the file and the rule.
 *
 * Shapes in this API are outermost first, as PyTorch and safetensors write
 * them: a GGUF tensor with ne = [in, out] has shape {out, in}.
 *
 * Ownership: strings and tensor data point into the read-only mapping and
 * stay valid until lorac_gguf_free. Strings are not NUL-terminated in the
 * file; the reader returns them with their length. A reader may be shared
 * across threads for reading once opened.
 */
#ifndef LORAC_GGUF_H
#define LORAC_GGUF_H

#include <stdbool.h>
#include <stddef.h>

#include "lorac/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    LORAC_GGUF_UINT8 = 0,
    LORAC_GGUF_INT8 = 1,
    LORAC_GGUF_UINT16 = 2,
    LORAC_GGUF_INT16 = 3,
    LORAC_GGUF_UINT32 = 4,
    LORAC_GGUF_INT32 = 5,
    LORAC_GGUF_FLOAT32 = 6,
    LORAC_GGUF_BOOL = 7,
    LORAC_GGUF_STRING = 8,
    LORAC_GGUF_ARRAY = 9,
    LORAC_GGUF_UINT64 = 10,
    LORAC_GGUF_INT64 = 11,
    LORAC_GGUF_FLOAT64 = 12,
    LORAC_GGUF_TYPE_COUNT
} lorac_gguf_type_t;

/* ggml tensor types lorac writes; the reader knows every type ggml has
 * (quantized ones included) for validation and inspection. */
#define LORAC_GGML_TYPE_F32 0u
#define LORAC_GGML_TYPE_F16 1u
#define LORAC_GGML_TYPE_BF16 30u
#define LORAC_GGML_TYPE_Q8_0 8u  /* blocks of 32: an f16 scale d, 32 int8 q; x = d·q */

#define LORAC_GGUF_MAX_DIMS 4
#define LORAC_GGUF_MAX_NAME 64          /* tensor names are shorter than this */
#define LORAC_GGUF_DEFAULT_ALIGNMENT 32

/* "F32", "Q4_K", ...; NULL for a type ggml does not have. */
const char *lorac_ggml_type_name(uint32_t type);
/* Elements per block and bytes per block; 0 for an unknown type. */
int64_t lorac_ggml_block_size(uint32_t type);
int64_t lorac_ggml_type_size(uint32_t type);
/* "UINT32", "STRING", ...; NULL when out of range. */
const char *lorac_gguf_type_name(lorac_gguf_type_t type);

/* ---- reader ---------------------------------------------------------------- */

typedef struct {
    const char *name;      /* not NUL-terminated: name_len bytes */
    size_t name_len;
    uint32_t type;         /* ggml type */
    int32_t n_dims;
    int64_t shape[LORAC_GGUF_MAX_DIMS]; /* outermost first */
    int64_t n_elements;
    const void *data;      /* into the mapping */
    uint64_t nbytes;       /* without the padding */
} lorac_gguf_tensor_t;

typedef struct lorac_gguf lorac_gguf_t;

/* 1 when `path` is a regular file that starts with GGUF's magic. */
int lorac_gguf_is_file(const char *path);

lorac_status_t lorac_gguf_open(const char *path, lorac_gguf_t **out);
/* Validates a buffer that the caller keeps alive; `label` names it in
 * errors. Used by the fuzz target and the tests. */
lorac_status_t lorac_gguf_open_memory(const void *data, size_t size, const char *label, lorac_gguf_t **out);
void lorac_gguf_free(lorac_gguf_t *g);

uint32_t lorac_gguf_version(const lorac_gguf_t *g);
uint32_t lorac_gguf_alignment(const lorac_gguf_t *g);
/* Offset of the data section in the file. */
uint64_t lorac_gguf_data_offset(const lorac_gguf_t *g);

int64_t lorac_gguf_n_kv(const lorac_gguf_t *g);
/* Key i (NUL-terminated, owned by the reader). */
const char *lorac_gguf_key(const lorac_gguf_t *g, int64_t i);
/* Index of `key`, or -1. */
int64_t lorac_gguf_find_key(const lorac_gguf_t *g, const char *key);
lorac_gguf_type_t lorac_gguf_kv_type(const lorac_gguf_t *g, int64_t i);

/* Scalar values, converted when exact: get_int accepts every integer type
 * and BOOL; get_float FLOAT32 and FLOAT64. LORAC_STATUS_FORMAT (naming the
 * key, the expected and the found type) otherwise. */
lorac_status_t lorac_gguf_get_int(const lorac_gguf_t *g, int64_t i, int64_t *out);
lorac_status_t lorac_gguf_get_uint(const lorac_gguf_t *g, int64_t i, uint64_t *out);
lorac_status_t lorac_gguf_get_float(const lorac_gguf_t *g, int64_t i, double *out);
lorac_status_t lorac_gguf_get_string(const lorac_gguf_t *g, int64_t i, const char **s, size_t *len);

/* Arrays: element type and count; elements as above (j < count). */
lorac_gguf_type_t lorac_gguf_array_type(const lorac_gguf_t *g, int64_t i);
int64_t lorac_gguf_array_count(const lorac_gguf_t *g, int64_t i);
lorac_status_t lorac_gguf_array_int(const lorac_gguf_t *g, int64_t i, int64_t j, int64_t *out);
lorac_status_t lorac_gguf_array_float(const lorac_gguf_t *g, int64_t i, int64_t j, double *out);
lorac_status_t lorac_gguf_array_string(const lorac_gguf_t *g, int64_t i, int64_t j, const char **s, size_t *len);

int64_t lorac_gguf_n_tensors(const lorac_gguf_t *g);
const lorac_gguf_tensor_t *lorac_gguf_tensor(const lorac_gguf_t *g, int64_t i);
/* NULL when absent. */
const lorac_gguf_tensor_t *lorac_gguf_find_tensor(const lorac_gguf_t *g, const char *name);

/* ---- writer ----------------------------------------------------------------
 * Collects metadata and tensor descriptions, then writes the file in one
 * pass to "<path>.tmp.<pid>", fsyncs and renames it. Tensor data comes from
 * a pointer or, so that a converted model never sits whole in memory, from
 * a callback that fills one tensor's bytes into a buffer of exactly that
 * size when the writer reaches it. Keys are written in the order they were
 * set (setting a key again replaces nothing: it is an error). */

typedef struct lorac_gguf_writer lorac_gguf_writer_t;
/* Fills dst (nbytes bytes) with the tensor's data. */
typedef lorac_status_t (*lorac_gguf_fill_fn)(void *user, void *dst, uint64_t nbytes);

/* NULL when out of memory. */
lorac_gguf_writer_t *lorac_gguf_writer_new(void);
void lorac_gguf_writer_free(lorac_gguf_writer_t *w);

lorac_status_t lorac_gguf_set_string(lorac_gguf_writer_t *w, const char *key, const char *value);
lorac_status_t lorac_gguf_set_u32(lorac_gguf_writer_t *w, const char *key, uint32_t value);
lorac_status_t lorac_gguf_set_i32(lorac_gguf_writer_t *w, const char *key, int32_t value);
lorac_status_t lorac_gguf_set_f32(lorac_gguf_writer_t *w, const char *key, float value);
lorac_status_t lorac_gguf_set_bool(lorac_gguf_writer_t *w, const char *key, bool value);
/* Strings of the given lengths (lens NULL: NUL-terminated). */
lorac_status_t lorac_gguf_set_array_string(lorac_gguf_writer_t *w, const char *key, const char *const *values,
                                           const size_t *lens, int64_t n);
lorac_status_t lorac_gguf_set_array_f32(lorac_gguf_writer_t *w, const char *key, const float *values, int64_t n);
lorac_status_t lorac_gguf_set_array_i32(lorac_gguf_writer_t *w, const char *key, const int32_t *values, int64_t n);

/* A tensor of `type` (F32, F16, BF16, or Q8_0 with rows of whole blocks)
 * and shape (outermost first);
 * exactly one of data (kept by pointer until the write) and fill. */
lorac_status_t lorac_gguf_add_tensor(lorac_gguf_writer_t *w, const char *name, uint32_t type, int32_t n_dims,
                                     const int64_t *shape, const void *data, lorac_gguf_fill_fn fill, void *user);
lorac_status_t lorac_gguf_write(const lorac_gguf_writer_t *w, const char *path);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_GGUF_H */
