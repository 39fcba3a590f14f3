/* File helpers: read-only mmap, whole-file reads, atomic writes. */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* madvise */
#include "lorac/core.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

lorac_status_t lorac_file_map(const char *path, lorac_mapped_file_t *out) {
    out->data = NULL;
    out->size = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return lorac_error(LORAC_STATUS_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return lorac_error(LORAC_STATUS_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return lorac_error(LORAC_STATUS_IO, "%s: not a regular file", path);
    }
    if (st.st_size > 0) {
        /* MAP_POPULATE reads the file in now (sequentially, fast) instead of
         * page-faulting it in piece by piece during the first forward pass */
        int flags = MAP_PRIVATE;
#ifdef MAP_POPULATE
        flags |= MAP_POPULATE;
#endif
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, flags, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return lorac_error(LORAC_STATUS_IO, "%s: cannot mmap: %s", path, strerror(e));
        }
        out->data = p;
        out->size = (size_t)st.st_size;
    }
    close(fd);
    return LORAC_STATUS_OK;
}

void lorac_file_release(const void *p, size_t n) {
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || n == 0) return;
    uintptr_t lo = ((uintptr_t)p + (uintptr_t)page - 1) / (uintptr_t)page * (uintptr_t)page;
    uintptr_t hi = ((uintptr_t)p + n) / (uintptr_t)page * (uintptr_t)page;
    if (lo < hi) madvise((void *)lo, hi - lo, MADV_DONTNEED); /* advice only: failure changes nothing */
}

void lorac_file_unmap(lorac_mapped_file_t *file) {
    if (file->data) munmap((void *)file->data, file->size);
    file->data = NULL;
    file->size = 0;
}

lorac_status_t lorac_file_read(const char *path, size_t max_size, char **out, size_t *out_len) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return lorac_error(LORAC_STATUS_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (!buf) { fclose(f); return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", path); }
    for (;;) {
        if (len + 1 >= cap) {
            if (cap > max_size + 1) {
                free(buf); fclose(f);
                return lorac_error(LORAC_STATUS_FORMAT, "%s: file larger than %zu bytes", path, max_size);
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) { free(buf); fclose(f); return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", path); }
            buf = nb;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - 1 - len, f);
        len += n;
        if (n == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) { free(buf); return lorac_error(LORAC_STATUS_IO, "%s: read error", path); }
    if (len > max_size) {
        free(buf);
        return lorac_error(LORAC_STATUS_FORMAT, "%s: file larger than %zu bytes", path, max_size);
    }
    buf[len] = '\0';
    *out = buf;
    if (out_len) *out_len = len;
    return LORAC_STATUS_OK;
}

static void fsync_parent_dir(const char *path) {
    char *copy = strdup(path);
    if (!copy) return;
    int fd = open(dirname(copy), O_RDONLY);
    if (fd >= 0) { fsync(fd); close(fd); }
    free(copy);
}

lorac_status_t lorac_file_write_atomic(const char *path, const void *data, size_t len) {
    size_t n = strlen(path) + 32;
    char *tmp = malloc(n);
    if (!tmp) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", path);
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        lorac_status_t s = lorac_error(LORAC_STATUS_IO, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return s;
    }
    const uint8_t *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            lorac_status_t s = lorac_error(LORAC_STATUS_IO, "%s: write failed: %s", tmp, strerror(errno));
            close(fd); unlink(tmp); free(tmp);
            return s;
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        lorac_status_t s = lorac_error(LORAC_STATUS_IO, "%s: fsync failed: %s", tmp, strerror(errno));
        unlink(tmp); free(tmp);
        return s;
    }
    if (rename(tmp, path) != 0) {
        lorac_status_t s = lorac_error(LORAC_STATUS_IO, "%s: rename failed: %s", path, strerror(errno));
        unlink(tmp); free(tmp);
        return s;
    }
    free(tmp);
    fsync_parent_dir(path);
    return LORAC_STATUS_OK;
}
