/* Status strings, thread-local error messages, dtypes, checked arithmetic. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "lorac/core.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Thread_local char g_error_message[1024];

const char *lorac_status_str(lorac_status_t status) {
    switch (status) {
    case LORAC_STATUS_OK: return "ok";
    case LORAC_STATUS_IO: return "I/O error";
    case LORAC_STATUS_FORMAT: return "format error";
    case LORAC_STATUS_NOMEM: return "out of memory";
    case LORAC_STATUS_INVALID_ARG: return "invalid argument";
    case LORAC_STATUS_UNSUPPORTED: return "unsupported";
    case LORAC_STATUS_NOT_FOUND: return "not found";
    case LORAC_STATUS_BUSY: return "busy";
    }
    return "unknown status";
}

const char *lorac_error_message(void) { return g_error_message; }

void lorac_error_clear(void) { g_error_message[0] = '\0'; }

lorac_status_t lorac_error(lorac_status_t status, const char *fmt, ...) {
    /* formatted apart, then copied: an argument may be the message itself
     * (lorac_error(s, "%s: %s", path, lorac_error_message()) adds context) */
    char text[sizeof g_error_message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    memcpy(g_error_message, text, sizeof text);
    return status;
}

static void default_abort_hook(const char *file, int line, const char *expr) {
    (void)file; (void)line; (void)expr;
    abort(); /* LORAC_ASSERT: invariant violated, not an input error */
}

static lorac_abort_hook_t g_abort_hook = default_abort_hook;

void lorac_set_abort_hook(lorac_abort_hook_t hook) {
    g_abort_hook = hook ? hook : default_abort_hook;
}

void lorac_assert_fail(const char *file, int line, const char *expr) {
    fprintf(stderr, "lorac: assertion failed: %s (%s:%d)\n", expr, file, line);
    g_abort_hook(file, line, expr);
}

static const struct { const char *name; size_t size; } k_dtypes[LORAC_DTYPE_COUNT] = {
    [LORAC_DTYPE_F32] = {"F32", 4},   [LORAC_DTYPE_F16] = {"F16", 2},
    [LORAC_DTYPE_BF16] = {"BF16", 2}, [LORAC_DTYPE_F64] = {"F64", 8},
    [LORAC_DTYPE_I8] = {"I8", 1},     [LORAC_DTYPE_U8] = {"U8", 1},
    [LORAC_DTYPE_I16] = {"I16", 2},   [LORAC_DTYPE_U16] = {"U16", 2},
    [LORAC_DTYPE_I32] = {"I32", 4},   [LORAC_DTYPE_U32] = {"U32", 4},
    [LORAC_DTYPE_I64] = {"I64", 8},   [LORAC_DTYPE_U64] = {"U64", 8},
    [LORAC_DTYPE_BOOL] = {"BOOL", 1}, [LORAC_DTYPE_F8_E4M3] = {"F8_E4M3", 1},
    [LORAC_DTYPE_F8_E5M2] = {"F8_E5M2", 1},
};

const char *lorac_dtype_name(lorac_dtype_t dtype) {
    if (dtype == LORAC_DTYPE_NF4) return "NF4";
    if ((int)dtype < 0 || dtype >= LORAC_DTYPE_COUNT) return NULL;
    return k_dtypes[dtype].name;
}

int lorac_dtype_parse(const char *name, lorac_dtype_t *out) {
    for (int i = 0; i < LORAC_DTYPE_COUNT; i++) {
        if (strcmp(name, k_dtypes[i].name) == 0) { *out = (lorac_dtype_t)i; return 0; }
    }
    return -1;
}

size_t lorac_dtype_size(lorac_dtype_t dtype) {
    if ((int)dtype < 0 || dtype >= LORAC_DTYPE_COUNT) return 0;
    return k_dtypes[dtype].size;
}

size_t lorac_dtype_bytes(lorac_dtype_t dtype, int64_t n) {
    if (dtype == LORAC_DTYPE_NF4)
        return (size_t)((n + LORAC_NF4_BLOCK - 1) / LORAC_NF4_BLOCK) * LORAC_NF4_BLOCK_BYTES;
    return (size_t)n * lorac_dtype_size(dtype);
}

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

uint16_t lorac_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

uint16_t lorac_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return sign | 0x7e00u;         /* NaN */
    if (abs >= 0x477ff000u) return sign | 0x7c00u;        /* overflow -> inf */
    if (abs < 0x38800000u) {                              /* subnormal or zero */
        /* value * 2^24, rounded to nearest even, is the subnormal mantissa */
        float v = bits_f32(abs) * 16777216.0f;
        uint32_t m = (uint32_t)v;
        float rem = v - (float)m;
        if (rem > 0.5f || (rem == 0.5f && (m & 1u))) m++;
        return sign | (uint16_t)m;
    }
    uint32_t r = abs + 0x0fffu + ((abs >> 13) & 1u) - (112u << 23);
    return sign | (uint16_t)(r >> 13);
}

int lorac_mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    if (a != 0 && b > UINT64_MAX / a) return -1;
    *out = a * b;
    return 0;
}

int lorac_add_u64(uint64_t a, uint64_t b, uint64_t *out) {
    if (b > UINT64_MAX - a) return -1;
    *out = a + b;
    return 0;
}

int lorac_utf8_valid(const char *str, size_t len) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t n; uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) { n = 1; cp = c & 0x1f; }
        else if (c >= 0xe0 && c <= 0xef) { n = 2; cp = c & 0x0f; }
        else if (c >= 0xf0 && c <= 0xf4) { n = 3; cp = c & 0x07; }
        else return 0;
        if (len - i <= n) return 0;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff))) return 0;
        if (cp >= 0xd800 && cp <= 0xdfff) return 0;
        i += n + 1;
    }
    return 1;
}

double lorac_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

char *lorac_path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t k = a;
    if (a > 0 && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

void lorac_rng_seed(lorac_rng_t *rng, uint64_t seed) {
    /* splitmix64 of the seed, so nearby seeds give unrelated streams and the
     * state is never zero (xorshift's fixed point) */
    uint64_t z = seed + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    rng->state = z ? z : 0x2545f4914f6cdd1dull;
}

uint32_t lorac_rng_u32(lorac_rng_t *rng) {
    uint64_t x = rng->state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng->state = x;
    return (uint32_t)((x * 0x2545f4914f6cdd1dull) >> 32);
}

float lorac_rng_float(lorac_rng_t *rng) {
    return (float)(lorac_rng_u32(rng) >> 8) / 16777216.0f;
}

float lorac_rng_normal(lorac_rng_t *rng) {
    /* u1 in (0, 1] so the log is finite */
    float u1 = 1.0f - lorac_rng_float(rng), u2 = lorac_rng_float(rng);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}

int lorac_bytes_append(char **data, size_t *len, size_t *cap, const void *bytes, size_t n) {
    if (n > SIZE_MAX / 2 - *len - 1) return -1;
    if (*len + n + 1 > *cap) {
        size_t grown_cap = *cap ? *cap : 256;
        while (grown_cap < *len + n + 1) grown_cap *= 2;
        char *p = realloc(*data, grown_cap);
        if (!p) return -1;
        *data = p;
        *cap = grown_cap;
    }
    if (n) memcpy(*data + *len, bytes, n);
    *len += n;
    (*data)[*len] = '\0';
    return 0;
}
