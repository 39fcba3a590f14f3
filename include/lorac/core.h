/* lorac/core.h — status codes, error messages, dtypes and small helpers
 * shared by every lorac module.
 *
 * Errors come in two tiers (see DESIGN.md):
 *  - LORAC_ASSERT for our own invariants: prints file/line and calls the
 *    abort hook. Never used for anything input can cause.
 *  - lorac_status_t for everything input, I/O or memory can cause. A function
 *    that fails returns a non-zero status and records a human-readable message
 *    (naming the file, the field and what was expected) that
 *    lorac_error_message() returns. The message is thread-local: it stays valid
 *    until the next failing lorac call on the same thread.
 */
#ifndef LORAC_CORE_H
#define LORAC_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    LORAC_STATUS_OK = 0,
    LORAC_STATUS_IO,          /* file missing, unreadable, write failed */
    LORAC_STATUS_FORMAT,      /* malformed input file or data */
    LORAC_STATUS_NOMEM,       /* allocation failed or size overflow */
    LORAC_STATUS_INVALID_ARG, /* caller passed something out of range */
    LORAC_STATUS_UNSUPPORTED, /* well-formed but not something lorac handles */
    LORAC_STATUS_NOT_FOUND,   /* a named item (tensor, token, key) is absent */
    LORAC_STATUS_BUSY         /* a bounded resource is full (queue, slots); retry later */
} lorac_status_t;

/* Short constant name of a status ("format error", ...). Never NULL. */
const char *lorac_status_str(lorac_status_t status);

/* The message of the last failure on this thread ("" if none). */
const char *lorac_error_message(void);

/* Records a printf-style message for this thread and returns `status`, so
 * library code can write `return lorac_error(LORAC_STATUS_FORMAT, "...")`. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
lorac_status_t lorac_error(lorac_status_t status, const char *fmt, ...);

/* Clears this thread's message. */
void lorac_error_clear(void);

/* Invariant check: on failure prints "lorac: assertion failed" with file and
 * line to stderr and calls the abort hook (default: abort()). */
typedef void (*lorac_abort_hook_t)(const char *file, int line, const char *expr);
void lorac_set_abort_hook(lorac_abort_hook_t hook);
void lorac_assert_fail(const char *file, int line, const char *expr);
#define LORAC_ASSERT(x) \
    do { if (!(x)) lorac_assert_fail(__FILE__, __LINE__, #x); } while (0)

/* Element types of tensors, as safetensors names them. */
typedef enum {
    LORAC_DTYPE_F32 = 0,
    LORAC_DTYPE_F16,
    LORAC_DTYPE_BF16,
    LORAC_DTYPE_F64,
    LORAC_DTYPE_I8,
    LORAC_DTYPE_U8,
    LORAC_DTYPE_I16,
    LORAC_DTYPE_U16,
    LORAC_DTYPE_I32,
    LORAC_DTYPE_U32,
    LORAC_DTYPE_I64,
    LORAC_DTYPE_U64,
    LORAC_DTYPE_BOOL,
    LORAC_DTYPE_F8_E4M3,
    LORAC_DTYPE_F8_E5M2,
    LORAC_DTYPE_COUNT,
    /* lorac's own in-memory weight formats, never read from a file's
     * header (lorac_dtype_parse does not know them):
     * NF4, QLoRA's 4-bit NormalFloat (lorac/kernels.h, "NF4"). */
    LORAC_DTYPE_NF4 = 64
} lorac_dtype_t;
/* NF4's layout: each block of LORAC_NF4_BLOCK consecutive elements (of the
 * flattened tensor, as bitsandbytes blocks it) is its absmax (f32) and 32
 * bytes of 4-bit codes, element 2j in the high half of byte j. */
#define LORAC_NF4_BLOCK 64
#define LORAC_NF4_BLOCK_BYTES 36

/* "F32", "BF16", ... ; NULL for an out-of-range value. */
const char *lorac_dtype_name(lorac_dtype_t dtype);
/* Parses a safetensors dtype string; returns 0 and sets *out, or -1. */
int lorac_dtype_parse(const char *name, lorac_dtype_t *out);
/* Bytes per element (1, 2, 4 or 8); 0 for NF4, whose elements are half
 * a byte and share a scale per block (lorac_dtype_bytes). */
size_t lorac_dtype_size(lorac_dtype_t dtype);
/* Bytes that n elements take (n of a tensor's flattened elements, from
 * its start): n·lorac_dtype_size, or for NF4 its blocks' bytes. */
size_t lorac_dtype_bytes(lorac_dtype_t dtype, int64_t n);

/* Scalar conversions (round-to-nearest-even for the narrowing ones).
 * bf16 is the top half of an f32; widening it is inline so that loops
 * over bf16 weights vectorise (GCC vectorises this memcpy form). */
static inline float lorac_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}
uint16_t lorac_f32_to_bf16(float f);
/* f16 widened without branches on the value, so that loops over f16 data
 * (a KV cache, norm weights) vectorise: the exponent and mantissa bits put
 * in f32 position read as 2^(e-127)·1.m (or, for e = 0, the subnormal
 * m·2^-149), and the product by 2^112 rebiases them exactly to 2^(e-15)·1.m
 * (or m·2^-24); exponent 31 (inf, NaN) is set apart. */
static inline float lorac_f16_to_f32(uint16_t h) {
    uint32_t em = (uint32_t)(h & 0x7fffu) << 13, bits;
    float f;
    memcpy(&f, &em, sizeof f);
    f *= 0x1p112f;
    memcpy(&bits, &f, sizeof bits);
    uint32_t special = 0u - (uint32_t)((h & 0x7c00u) == 0x7c00u); /* all ones for inf and NaN: a mask, not a branch */
    bits = (bits & ~special) | ((em | 0x7f800000u) & special);
    bits |= (uint32_t)(h & 0x8000u) << 16;
    memcpy(&f, &bits, sizeof f);
    return f;
}
uint16_t lorac_f32_to_f16(float f);

/* Checked arithmetic: return 0 on success, -1 on overflow. */
int lorac_mul_u64(uint64_t a, uint64_t b, uint64_t *out);
int lorac_add_u64(uint64_t a, uint64_t b, uint64_t *out);

/* A whole file mapped read-only. data is NULL for an empty file. */
typedef struct {
    const uint8_t *data;
    size_t size;
} lorac_mapped_file_t;

/* Maps `path` read-only, reading it all in at once (MAP_POPULATE). On
 * failure returns LORAC_STATUS_IO with a message naming the path. Unmap
 * with lorac_file_unmap. */
lorac_status_t lorac_file_map(const char *path, lorac_mapped_file_t *out);
/* The same with populate 0: pages are read when first touched, so a reader
 * that goes through the file once and lets each part go
 * (lorac_file_release) never holds it all. */
lorac_status_t lorac_file_map_ex(const char *path, int populate, lorac_mapped_file_t *out);
void lorac_file_unmap(lorac_mapped_file_t *file);

/* Tells the kernel the n bytes at p, inside a mapping of lorac_file_map, are
 * no longer needed: the whole pages among them leave this process's memory
 * (they read back from the file if touched again). */
void lorac_file_release(const void *p, size_t n);

/* The alignment, in bytes, at which the kernels read weights fastest (a
 * cache line: a misaligned vector load touches two). */
#define LORAC_WEIGHT_ALIGN 64

/* Reads a whole file into a NUL-terminated malloc'd buffer (caller frees).
 * Fails on files over max_size bytes. */
lorac_status_t lorac_file_read(const char *path, size_t max_size, char **out, size_t *out_len);

/* Writes `len` bytes to `path` atomically: to "path.tmp.<pid>", fsync, rename,
 * then fsync of the directory. Either the old or the new file survives a crash. */
lorac_status_t lorac_file_write_atomic(const char *path, const void *data, size_t len);

/* The same for a file written in pieces (a model streamed tensor by
 * tensor): lorac_atomic_open creates "path.tmp.<pid>", lorac_atomic_write
 * appends to it (retrying short writes), lorac_atomic_commit fsyncs and
 * renames it over `path` (then fsyncs the directory), lorac_atomic_abort
 * removes it. Commit and abort release the struct; call exactly one of
 * them after a successful open. `path` must outlive the struct. */
typedef struct {
    int fd;
    char *tmp;
    const char *path;
} lorac_atomic_file_t;
lorac_status_t lorac_atomic_open(const char *path, lorac_atomic_file_t *f);
lorac_status_t lorac_atomic_write(lorac_atomic_file_t *f, const void *data, uint64_t len);
lorac_status_t lorac_atomic_commit(lorac_atomic_file_t *f);
void lorac_atomic_abort(lorac_atomic_file_t *f);

/* Validates UTF-8 (rejects overlongs, surrogates, > U+10FFFF). 1 if valid. */
int lorac_utf8_valid(const char *s, size_t len);

/* Appends n bytes to a growable string (*data of *len bytes in *cap),
 * doubling the capacity as needed and keeping a NUL after the bytes.
 * Returns 0, or -1 when out of memory (the string is then unchanged). The
 * modules' byte buffers are thin wrappers over it. */
int lorac_bytes_append(char **data, size_t *len, size_t *cap, const void *bytes, size_t n);

/* Random numbers: xorshift64* seeded through splitmix64. The state lives in
 * the caller's struct (never a global), so runs are reproducible and a
 * checkpoint can save it. */
typedef struct { uint64_t state; } lorac_rng_t;
void lorac_rng_seed(lorac_rng_t *rng, uint64_t seed);
uint32_t lorac_rng_u32(lorac_rng_t *rng);
/* Uniform in [0, 1). */
float lorac_rng_float(lorac_rng_t *rng);
/* Standard normal (Box-Muller; uses two uniforms per call). */
float lorac_rng_normal(lorac_rng_t *rng);

/* Seconds on the monotonic clock (for durations). */
double lorac_seconds(void);

/* Joins dir and name with '/' into a malloc'd string (NULL on OOM). */
char *lorac_path_join(const char *dir, const char *name);

#ifdef __cplusplus
}
#endif
#endif /* LORAC_CORE_H */
