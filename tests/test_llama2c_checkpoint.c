/* llama2.c checkpoint reader: a small valid file, every truncation of it,
 * and malformed headers; plus the real stories260K fixture. */
#include <stdint.h>

#include "lorac/formats.h"
#include "testlib.h"

/* dim 8, hidden 12, 1 layer, 2 heads, 1 kv head, vocab 6, seq_len 4 */
static size_t make_checkpoint(uint8_t **out, int32_t vocab_field, int extra_bytes) {
    int32_t h[7] = {8, 12, 1, 2, 1, vocab_field, 4};
    int32_t V = vocab_field < 0 ? -vocab_field : vocab_field;
    size_t floats = (size_t)V * 8 + 8 + 64 + 2 * 32 + 64 + 8 + 3 * 96 + 8 + 4 * 4 / 1 + (vocab_field < 0 ? (size_t)V * 8 : 0);
    /* freq_cis: seq_len * head_size = 4 * 4 = 16 floats (counted above as 4*4) */
    size_t size = 28 + floats * 4 + (size_t)extra_bytes;
    uint8_t *buf = calloc(1, size);
    memcpy(buf, h, sizeof h);
    float *f = (float *)(buf + 28);
    for (size_t i = 0; i < floats; i++) f[i] = (float)i * 0.01f;
    *out = buf;
    return size;
}

static void expect_fail(const uint8_t *data, size_t size, const char *substr) {
    lorac_llama2c_checkpoint_t c;
    lorac_status_t s = lorac_llama2c_parse(data, size, "ckpt.bin", &c);
    CHECK_MSG(s == LORAC_STATUS_FORMAT, "size %zu: status %d", size, s);
    CHECK_MSG(strstr(lorac_error_message(), substr) != NULL && strstr(lorac_error_message(), "ckpt.bin") != NULL,
              "message '%s' lacks '%s'", lorac_error_message(), substr);
}

int main(void) {
    uint8_t *buf;
    size_t size = make_checkpoint(&buf, 6, 0);
    lorac_llama2c_checkpoint_t c;
    CHECK_MSG(lorac_llama2c_parse(buf, size, "ckpt.bin", &c) == LORAC_STATUS_OK, "%s", lorac_error_message());
    CHECK(c.dim == 8 && c.n_kv_heads == 1 && c.shared_classifier && c.wcls == c.token_embedding);
    CHECK(c.wq == c.rms_att + 8);
    CHECK(c.rms_final == c.w3 + 96);

    for (size_t n = 0; n < size; n++) {
        lorac_status_t s = lorac_llama2c_parse(buf, n, "ckpt.bin", &c);
        CHECK_MSG(s == LORAC_STATUS_FORMAT, "truncated to %zu bytes was accepted", n);
    }
    uint8_t *big;
    size_t big_size = make_checkpoint(&big, 6, 4);
    expect_fail(big, big_size, "needs");
    free(big);

    int32_t *h = (int32_t *)buf;
    const struct { int field; int32_t value; const char *substr; } bad[] = {
        {0, 0, "dim = 0"}, {0, -8, "dim = -8"}, {1, -1, "hidden_dim"}, {2, 0, "n_layers"},
        {3, 3, "divide"}, {4, 3, "divide"}, {4, 0, "n_kv_heads"}, {5, INT32_MIN, "vocab_size"},
        {5, 7, "needs"}, {6, 0, "seq_len"}, {2, INT32_MAX, "needs"}, {0, 2, "divide"},
        {0, 65536, "needs"}, {1, INT32_MAX, "needs"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t saved = h[bad[i].field];
        h[bad[i].field] = bad[i].value;
        expect_fail(buf, size, bad[i].substr);
        h[bad[i].field] = saved;
    }
    free(buf);

    /* unshared classifier: negative vocab_size, wcls after freq_cis */
    size = make_checkpoint(&buf, -6, 0);
    CHECK_MSG(lorac_llama2c_parse(buf, size, "ckpt.bin", &c) == LORAC_STATUS_OK, "%s", lorac_error_message());
    CHECK(!c.shared_classifier && c.vocab_size == 6 && c.wcls == c.rms_final + 8 + 16);
    free(buf);

    /* the real checkpoint */
    char path[4096];
    snprintf(path, sizeof path, "%s/llama2c/stories260K.bin", tl_fixtures());
    CHECK_MSG(lorac_llama2c_open(path, &c) == LORAC_STATUS_OK, "%s", lorac_error_message());
    CHECK(c.dim == 64 && c.hidden_dim == 172 && c.n_layers == 5 && c.n_heads == 8 && c.n_kv_heads == 4 &&
          c.vocab_size == 512 && c.seq_len == 512 && c.shared_classifier);
    lorac_llama2c_close(&c);
    CHECK(lorac_llama2c_open("/nonexistent/ckpt.bin", &c) == LORAC_STATUS_IO);
    CHECK(strstr(lorac_error_message(), "/nonexistent/ckpt.bin") != NULL);
    return tl_finish("test_llama2c_checkpoint");
}
