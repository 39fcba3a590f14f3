/* Streaming text output: hold back an incomplete trailing character, and
 * text that may be the start of a stop string. */
#include <string.h>

#include "lorac/infer.h"

static const char k_replacement[3] = {(char)0xef, (char)0xbf, (char)0xbd};

/* Expected length of a sequence from its lead byte; 0 if it cannot lead. */
static int seq_len(unsigned char c) {
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) return 2;
    if (c >= 0xe0 && c <= 0xef) return 3;
    if (c >= 0xf0 && c <= 0xf4) return 4;
    return 0;
}

size_t lorac_utf8_stream_push(lorac_utf8_stream_t *st, const char *bytes, size_t len, char *out) {
    size_t w = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)bytes[i];
        if (st->n_pending > 0) {
            if ((c & 0xc0) == 0x80) {
                st->pending[st->n_pending++] = (char)c;
                if (st->n_pending == seq_len((unsigned char)st->pending[0])) {
                    if (lorac_utf8_valid(st->pending, (size_t)st->n_pending)) {
                        memcpy(out + w, st->pending, (size_t)st->n_pending);
                        w += (size_t)st->n_pending;
                    } else {
                        memcpy(out + w, k_replacement, 3);
                        w += 3;
                    }
                    st->n_pending = 0;
                }
                continue;
            }
            /* the character was cut short: replace it, then handle c afresh */
            memcpy(out + w, k_replacement, 3);
            w += 3;
            st->n_pending = 0;
        }
        int n = seq_len(c);
        if (n == 1) out[w++] = (char)c;
        else if (n == 0) { memcpy(out + w, k_replacement, 3); w += 3; }
        else st->pending[st->n_pending++] = (char)c;
    }
    return w;
}

size_t lorac_utf8_stream_flush(lorac_utf8_stream_t *st, char *out) {
    if (st->n_pending == 0) return 0;
    st->n_pending = 0;
    memcpy(out, k_replacement, 3);
    return 3;
}

long lorac_stop_find(const char *const *stops, int32_t n_stops, const char *text, size_t len, size_t *safe) {
    long first = -1;
    for (int32_t i = 0; i < n_stops; i++) {
        size_t n = strlen(stops[i]);
        for (size_t at = 0; at + n <= len; at++)
            if (!memcmp(text + at, stops[i], n)) {
                if (first < 0 || (long)at < first) first = (long)at;
                break;
            }
    }
    size_t hold = 0;
    for (int32_t i = 0; i < n_stops; i++) {
        size_t n = strlen(stops[i]);
        for (size_t k = n - 1; k > hold; k--)
            if (k <= len && !memcmp(text + len - k, stops[i], k)) {
                hold = k;
                break;
            }
    }
    *safe = len - hold;
    return first;
}
