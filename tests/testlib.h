/* Minimal test harness: CHECK macros that count, and a closing line
 * "N passed, N failed" that CI reads. Every test exits non-zero on failure. */
#ifndef LORAC_TESTLIB_H
#define LORAC_TESTLIB_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tl_passed, tl_failed;

#define CHECK(cond) do { \
    if (cond) tl_passed++; \
    else { tl_failed++; fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); } \
} while (0)

#define CHECK_MSG(cond, ...) do { \
    if (cond) tl_passed++; \
    else { tl_failed++; fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
           fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } \
} while (0)

#define CHECK_NEAR(a, b, tol) CHECK_MSG(fabs((double)(a) - (double)(b)) <= (tol), \
    "%.9g vs %.9g (tol %g)", (double)(a), (double)(b), (double)(tol))

/* Fixtures directory; in CI a missing LORAC_FIXTURES is a failure. */
static inline const char *tl_fixtures(void) {
    const char *f = getenv("LORAC_FIXTURES");
    if (!f || !*f) {
        fprintf(stderr, "LORAC_FIXTURES is not set\n");
        exit(1);
    }
    return f;
}

static inline const char *tl_tmpdir(void) {
    const char *t = getenv("LORAC_TEST_TMP");
    return (t && *t) ? t : "/tmp";
}

/* A file committed under the source tree (tests/data/...), read whole and
 * NUL-terminated (*len, when not NULL, gets its size); NULL with a message on
 * stderr when it cannot be read. The tree is $LORAC_SRC (ctest sets it),
 * else the current directory. */
static inline char *tl_read_source(const char *rel, size_t *len) {
    const char *src = getenv("LORAC_SRC");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", src && *src ? src : ".", rel);
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    long n = -1;
    if (f && fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (text = malloc((size_t)n + 1)) && fread(text, 1, (size_t)n, f) == (size_t)n) {
        text[n] = 0;
        if (len) *len = (size_t)n;
    } else {
        fprintf(stderr, "cannot read %s (is LORAC_SRC the source tree?)\n", path);
        free(text);
        text = NULL;
    }
    if (f) fclose(f);
    return text;
}

static inline int tl_finish(const char *name) {
    printf("%s: %d passed, %d failed\n", name, tl_passed, tl_failed);
    return tl_failed ? 1 : 0;
}

#endif
