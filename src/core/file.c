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

lorac_status_t lorac_file_map(const char *path, lorac_mapped_file_t *out) { return lorac_file_map_ex(path, 1, out); }

lorac_status_t lorac_file_map_ex(const char *path, int populate, lorac_mapped_file_t *out) {
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
        if (populate) flags |= MAP_POPULATE;
#else
        (void)populate;
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

lorac_status_t lorac_atomic_open(const char *path, lorac_atomic_file_t *f) {
    size_t n = strlen(path) + 32;
    f->path = path;
    f->fd = -1;
    if (!(f->tmp = malloc(n))) return lorac_error(LORAC_STATUS_NOMEM, "%s: out of memory", path);
    snprintf(f->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (f->fd < 0) {
        lorac_status_t s = lorac_error(LORAC_STATUS_IO, "%s: cannot create: %s", f->tmp, strerror(errno));
        free(f->tmp);
        f->tmp = NULL;
        return s;
    }
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_atomic_write(lorac_atomic_file_t *f, const void *data, uint64_t len) {
    const uint8_t *p = data;
    while (len > 0) {
        size_t chunk = len > (1u << 30) ? (1u << 30) : (size_t)len;
        ssize_t w = write(f->fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR) continue;
            return lorac_error(LORAC_STATUS_IO, "%s: write failed: %s", f->tmp, strerror(errno));
        }
        p += w;
        len -= (uint64_t)w;
    }
    return LORAC_STATUS_OK;
}

void lorac_atomic_abort(lorac_atomic_file_t *f) {
    if (f->fd >= 0) close(f->fd);
    if (f->tmp) unlink(f->tmp);
    free(f->tmp);
    f->tmp = NULL;
    f->fd = -1;
}

lorac_status_t lorac_atomic_commit(lorac_atomic_file_t *f) {
    lorac_status_t s = LORAC_STATUS_OK;
    if (fsync(f->fd) != 0) s = lorac_error(LORAC_STATUS_IO, "%s: fsync failed: %s", f->tmp, strerror(errno));
    if (close(f->fd) != 0 && !s) s = lorac_error(LORAC_STATUS_IO, "%s: close failed: %s", f->tmp, strerror(errno));
    f->fd = -1;
    if (!s && rename(f->tmp, f->path) != 0)
        s = lorac_error(LORAC_STATUS_IO, "%s: rename failed: %s", f->path, strerror(errno));
    if (s) {
        lorac_atomic_abort(f);
        return s;
    }
    free(f->tmp);
    f->tmp = NULL;
    fsync_parent_dir(f->path);
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_file_write_atomic(const char *path, const void *data, size_t len) {
    lorac_atomic_file_t f;
    lorac_status_t s = lorac_atomic_open(path, &f);
    if (s) return s;
    if ((s = lorac_atomic_write(&f, data, len))) {
        lorac_atomic_abort(&f);
        return s;
    }
    return lorac_atomic_commit(&f);
}
