/* Unicode NFC, tokenizer.json's {"type": "NFC"} normalizer (Qwen2/2.5/3's
 * tokenizers): canonical decomposition, canonical ordering of combining
 * marks, canonical composition, as UAX #15 defines them. The data are
 * src/tokenizer/nfc_tables.h (scripts/gen-nfc-tables.py): Unicode 9.0's,
 * as HuggingFace tokenizers' NFC has them, so that a character assigned
 * later passes as a starter, as it does there. Hangul syllables decompose
 * and compose by formula. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/nfc_tables.h"
#include "tokenizer/tok_internal.h"

/* Hangul (UAX #15, "Hangul"): S = SBase + (L·VCount + V)·TCount + T */
enum {
    S_BASE = 0xAC00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11A7,
    L_COUNT = 19, V_COUNT = 21, T_COUNT = 28, N_COUNT = V_COUNT * T_COUNT, S_COUNT = L_COUNT * N_COUNT
};

static unsigned ccc_of(uint32_t cp) {
    if (cp < 0x300) return 0; /* the first combining mark is U+0300 */
    size_t lo = 0, hi = sizeof k_nfc_ccc / sizeof *k_nfc_ccc;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (k_nfc_ccc[mid].cp == cp) return k_nfc_ccc[mid].ccc;
        if (k_nfc_ccc[mid].cp < cp) lo = mid + 1;
        else hi = mid;
    }
    return 0;
}

/* The one-level canonical decomposition of cp into a (and b, 0 for a
 * singleton); 0 when cp has none. */
static int decomp_of(uint32_t cp, uint32_t *a, uint32_t *b) {
    if (cp < 0xC0) return 0; /* the first decomposable code point is U+00C0 */
    size_t lo = 0, hi = sizeof k_nfc_decomp / sizeof *k_nfc_decomp;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (k_nfc_decomp[mid].cp == cp) { *a = k_nfc_decomp[mid].a; *b = k_nfc_decomp[mid].b; return 1; }
        if (k_nfc_decomp[mid].cp < cp) lo = mid + 1;
        else hi = mid;
    }
    return 0;
}

/* The primary composite of (a, b), or 0. */
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= L_BASE && a < L_BASE + L_COUNT && b >= V_BASE && b < V_BASE + V_COUNT)
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a >= S_BASE && a < S_BASE + S_COUNT && (a - S_BASE) % T_COUNT == 0 && b > T_BASE && b < T_BASE + T_COUNT)
        return a + (b - T_BASE);
    size_t lo = 0, hi = sizeof k_nfc_comp / sizeof *k_nfc_comp;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        uint32_t ma = k_nfc_comp[mid].a, mb = k_nfc_comp[mid].b;
        if (ma == a && mb == b) return k_nfc_comp[mid].c;
        if (ma < a || (ma == a && mb < b)) lo = mid + 1;
        else hi = mid;
    }
    return 0;
}

static int is_second(uint32_t cp) {
    size_t lo = 0, hi = sizeof k_nfc_second / sizeof *k_nfc_second;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (k_nfc_second[mid] == cp) return 1;
        if (k_nfc_second[mid] < cp) lo = mid + 1;
        else hi = mid;
    }
    return 0;
}

/* Appends the full canonical decomposition of cp to out[*n] on. */
static void decompose(uint32_t cp, uint32_t *out, size_t *n) {
    if (cp >= S_BASE && cp < S_BASE + S_COUNT) {
        uint32_t s = cp - S_BASE, t = s % T_COUNT;
        out[(*n)++] = L_BASE + s / N_COUNT;
        out[(*n)++] = V_BASE + (s % N_COUNT) / T_COUNT;
        if (t) out[(*n)++] = T_BASE + t;
        return;
    }
    uint32_t a, b;
    if (!decomp_of(cp, &a, &b)) { out[(*n)++] = cp; return; }
    decompose(a, out, n); /* a may decompose again; b never does */
    if (b) out[(*n)++] = b;
}

static size_t utf8_put(uint32_t cp, char *o) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* NFC of one chunk s[0, n) into b, with cp room for n * NFC_MAX_DECOMPOSITION code points. */
static int nfc_chunk(tok_buf_t *b, const char *s, size_t n, size_t limit, uint32_t *cp) {
    size_t m = 0;
    for (size_t k = 0; k < n;) {
        uint32_t c;
        k += (size_t)tok_utf8_char((const unsigned char *)s + k, n - k, &c);
        decompose(c, cp, &m);
    }
    /* canonical ordering: each run of non-starters sorted by class, stably */
    for (size_t k = 1; k < m; k++) {
        unsigned c = ccc_of(cp[k]);
        if (c == 0) continue;
        size_t j = k;
        uint32_t x = cp[k];
        while (j > 0) {
            unsigned p = ccc_of(cp[j - 1]);
            if (p == 0 || p <= c) break;
            cp[j] = cp[j - 1];
            j--;
        }
        cp[j] = x;
    }
    /* canonical composition: a character joins the last starter unless a
     * character between them blocks it (one of class 0, or of a class not
     * below its own); a leading non-starter (class 256 here) joins nothing */
    size_t out = m > 0 ? 1 : 0, starter = 0;
    unsigned last = m > 0 && ccc_of(cp[0]) ? 256 : 0;
    for (size_t k = 1; k < m; k++) {
        uint32_t c = cp[k], comp = compose(cp[starter], c);
        unsigned cls = ccc_of(c);
        if (comp && (last < cls || last == 0)) {
            cp[starter] = comp;
            continue;
        }
        if (cls == 0) starter = out;
        last = cls;
        cp[out++] = c;
    }
    for (size_t k = 0; k < out; k++) {
        char u[4];
        size_t len = utf8_put(cp[k], u);
        if (b->n + len > limit) return -2;
        if (tok_buf_add(b, u, len)) return -1;
    }
    return 0;
}

/* 1 when text can be cut for normalizing right before cp: cp decomposes
 * to a starter (class 0) that is not the second of any composite's pair,
 * so nothing before it composes with it or reorders across it (every ASCII
 * character, most letters and ideographs). */
static int cut_before(uint32_t cp) {
    if (cp < 0x80) return 1;
    uint32_t d[NFC_MAX_DECOMPOSITION];
    size_t k = 0;
    decompose(cp, d, &k);
    return ccc_of(d[0]) == 0 && !is_second(d[0]);
}

/* Bytes of text normalized at once, about: a chunk ends where cut_before
 * allows, so the scratch stays small whatever the text's length. */
#define NFC_CHUNK 4096

int tok_nfc_into(tok_buf_t *b, const char *s, size_t n, size_t limit) {
    size_t i = 0;
    while (i < n && (unsigned char)s[i] < 0x80) i++;
    if (i == n) return b->n + n > limit ? -2 : tok_buf_add(b, s, n); /* ASCII is its own NFC */
    uint32_t *cp = NULL;
    size_t cap = 0;
    int rc = 0;
    for (size_t start = 0; start < n && rc == 0;) {
        size_t end = n - start > NFC_CHUNK ? start + NFC_CHUNK : n;
        while (end < n && ((unsigned char)s[end] & 0xC0) == 0x80) end++; /* to a character's first byte */
        while (end < n) {
            uint32_t c;
            int len = tok_utf8_char((const unsigned char *)s + end, n - end, &c);
            if (cut_before(c)) break;
            end += (size_t)len;
        }
        size_t need = (end - start) * NFC_MAX_DECOMPOSITION;
        if (need > cap) {
            uint32_t *grown = realloc(cp, sizeof *cp * need);
            if (!grown) { rc = -1; break; }
            cp = grown;
            cap = need;
        }
        rc = nfc_chunk(b, s + start, end - start, limit, cp);
        start = end;
    }
    free(cp);
    return rc;
}
