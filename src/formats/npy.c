/* NumPy .npy writer (format version 1.0, little-endian float32, C order). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lorac/formats.h"

lorac_status_t lorac_npy_write_f32(const char *path, const float *data, const int64_t *shape, int32_t n_dims) {
    if (n_dims < 0 || n_dims > 8) return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: %d dims (at most 8)", path, n_dims);
    char dict[256];
    size_t k = (size_t)snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    uint64_t n = 1;
    for (int32_t i = 0; i < n_dims; i++) {
        if (shape[i] < 0 || lorac_mul_u64(n, (uint64_t)shape[i], &n) != 0)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: bad shape", path);
        k += (size_t)snprintf(dict + k, sizeof dict - k, "%lld%s", (long long)shape[i], n_dims == 1 ? "," : (i + 1 < n_dims ? ", " : ""));
    }
    k += (size_t)snprintf(dict + k, sizeof dict - k, "), }");
    /* magic(6) + version(2) + header length(2) + dict, padded with spaces and
     * a final newline to a multiple of 64 bytes (what NumPy writes) */
    size_t header = 10 + k + 1;
    size_t padded = (header + 63) / 64 * 64;
    uint64_t bytes;
    if (lorac_mul_u64(n, 4, &bytes) != 0 || bytes > SIZE_MAX - padded)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: array too large", path);
    uint8_t *buf = malloc(padded + (size_t)bytes);
    if (!buf) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", path);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    uint16_t hlen = (uint16_t)(padded - 10);
    buf[8] = (uint8_t)(hlen & 0xff);
    buf[9] = (uint8_t)(hlen >> 8);
    memcpy(buf + 10, dict, k);
    memset(buf + 10 + k, ' ', padded - 10 - k - 1);
    buf[padded - 1] = '\n';
    if (bytes) memcpy(buf + padded, data, (size_t)bytes);
    lorac_status_t s = lorac_file_write_atomic(path, buf, padded + (size_t)bytes);
    free(buf);
    return s;
}
