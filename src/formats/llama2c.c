/* llama2.c checkpoint reader (layout in lorac/formats.h). */
#include <stdio.h>
#include <string.h>

#include "lorac/formats.h"

#define HEADER_BYTES 28u

lorac_status_t lorac_llama2c_parse(const void *data, size_t size, const char *label, lorac_llama2c_checkpoint_t *c) {
    memset(c, 0, sizeof *c);
    if (size < HEADER_BYTES)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: %zu bytes is too short for a llama2.c checkpoint header (28 bytes)", label, size);
    int32_t h[7];
    memcpy(h, data, sizeof h);
    c->dim = h[0]; c->hidden_dim = h[1]; c->n_layers = h[2]; c->n_heads = h[3];
    c->n_kv_heads = h[4]; c->vocab_size = h[5]; c->seq_len = h[6];
    c->shared_classifier = c->vocab_size > 0;
    if (c->vocab_size < 0) {
        if (c->vocab_size == INT32_MIN) return lorac_error(LORAC_STATUS_FORMAT, "%s: vocab_size out of range", label);
        c->vocab_size = -c->vocab_size;
    }
    static const char *names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
    int32_t vals[7] = {c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size, c->seq_len};
    for (int i = 0; i < 7; i++)
        if (vals[i] <= 0)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: header field %s = %d must be positive (not a llama2.c checkpoint?)",
                               label, names[i], vals[i]);
    if (c->dim % c->n_heads != 0 || c->n_heads % c->n_kv_heads != 0 || (c->dim / c->n_heads) % 2 != 0)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: dim %d, n_heads %d, n_kv_heads %d do not divide evenly into even-sized heads",
                           label, c->dim, c->n_heads, c->n_kv_heads);
    uint64_t D = (uint64_t)c->dim, F = (uint64_t)c->hidden_dim, L = (uint64_t)c->n_layers, V = (uint64_t)c->vocab_size;
    uint64_t KV = D / (uint64_t)c->n_heads * (uint64_t)c->n_kv_heads, hs = D / (uint64_t)c->n_heads;
    /* sizes in floats, each product checked; dims are < 2^31 so D*D etc. fit,
     * but L * D * D may not */
    uint64_t parts[13];
    int bad = 0;
    bad |= lorac_mul_u64(V, D, &parts[0]);
    bad |= lorac_mul_u64(L, D, &parts[1]);
    bad |= lorac_mul_u64(L, D * D, &parts[2]);
    bad |= lorac_mul_u64(L, KV * D, &parts[3]);
    parts[4] = parts[3];
    parts[5] = parts[2];
    parts[6] = parts[1];
    bad |= lorac_mul_u64(L, F * D, &parts[7]);
    parts[8] = parts[7];
    parts[9] = parts[7];
    parts[10] = D;
    bad |= lorac_mul_u64((uint64_t)c->seq_len, hs, &parts[11]); /* real + imag: seq_len * hs/2 each */
    parts[12] = c->shared_classifier ? 0 : parts[0];
    uint64_t total = 0;
    for (int i = 0; i < 13 && !bad; i++) bad |= lorac_add_u64(total, parts[i], &total);
    uint64_t bytes = 0;
    if (bad || lorac_mul_u64(total, 4, &bytes) || lorac_add_u64(bytes, HEADER_BYTES, &bytes))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: header sizes overflow", label);
    if (bytes != size)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: file is %zu bytes but the header (dim %d, hidden %d, layers %d, vocab %d%s) needs %llu",
                           label, size, c->dim, c->hidden_dim, c->n_layers, c->vocab_size,
                           c->shared_classifier ? "" : ", unshared classifier", (unsigned long long)bytes);
    const float *p = (const float *)((const uint8_t *)data + HEADER_BYTES);
    const float **dst[11] = {&c->token_embedding, &c->rms_att, &c->wq, &c->wk, &c->wv, &c->wo,
                             &c->rms_ffn, &c->w1, &c->w2, &c->w3, &c->rms_final};
    for (int i = 0; i < 11; i++) { *dst[i] = p; p += parts[i]; }
    p += parts[11];
    c->wcls = c->shared_classifier ? c->token_embedding : p;
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_llama2c_open(const char *path, lorac_llama2c_checkpoint_t *out) {
    lorac_mapped_file_t f;
    lorac_status_t s = lorac_file_map(path, &f);
    if (s) return s;
    s = lorac_llama2c_parse(f.data, f.size, path, out);
    if (s) { lorac_file_unmap(&f); return s; }
    out->file = f;
    return LORAC_STATUS_OK;
}

void lorac_llama2c_close(lorac_llama2c_checkpoint_t *c) {
    lorac_file_unmap(&c->file);
}
