/* bnb.c — projections of a bitsandbytes 4-bit NF4 checkpoint, read as
 * lorac's NF4 (lorac/kernels.h).
 *
 * transformers saves a Linear4bit's weight "X.weight" as bitsandbytes'
 * QuantState.as_dict(packed=True) lays it out, beside the packed codes:
 *
 *   X.weight                               U8 [(n + 1) / 2, 1]: two codes a
 *                                          byte, element 2j in the high nibble
 *   X.weight.absmax                        F32 [blocks], or with double
 *                                          quantization U8 [blocks]
 *   X.weight.quant_map                     F32 [16], the NF4 values
 *   X.weight.nested_absmax                 F32 [ceil(blocks / nested_blocksize)]
 *   X.weight.nested_quant_map              F32 [256], bitsandbytes' 8-bit
 *                                          dynamic map
 *   X.weight.quant_state.bitsandbytes__nf4 U8: UTF-8 JSON of the rest,
 *                                          {"quant_type", "blocksize",
 *                                          "dtype", "shape", and when nested
 *                                          "nested_blocksize", "nested_dtype",
 *                                          "nested_offset"}
 *
 * where n = rows · cols and a block is `blocksize` consecutive elements of
 * the flattened weight. Dequantized, element i is
 * quant_map[code_i] · absmax[i / blocksize], each block's absmax being
 * nested_quant_map[q_b] · nested_absmax[b / nested_blocksize] + nested_offset
 * when nested, in f32 with each operation rounded (bitsandbytes'
 * dequantize_blockwise, then `absmax += offset`). The codes and absmaxes
 * are lorac's NF4 blocks already (blocksize 64); only the absmax is
 * decoded here. bitsandbytes rounds the dequantized weight to the
 * checkpoint's dtype ("dtype", bf16 for most) before its matmul; lorac's
 * kernels keep it in f32, as they do for --quantize nf4. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "lorac/kernels.h"
#include "model/model_internal.h"

#define QUANT_STATE_MAX_BYTES 4096

static const struct { const char *name; lorac_dtype_t dtype; } k_dtypes[] = {
    {"float32", LORAC_DTYPE_F32}, {"float16", LORAC_DTYPE_F16}, {"bfloat16", LORAC_DTYPE_BF16}};

/* Reads the quant_state JSON's fields into qs; errors name `label`. */
lorac_status_t lorac_bnb_parse_quant_state(const void *bytes, size_t n, const char *label, lorac_bnb_quant_state_t *qs) {
    memset(qs, 0, sizeof *qs);
    if (n > QUANT_STATE_MAX_BYTES)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: quantization state of %zu bytes (at most %d)", label, n,
                           QUANT_STATE_MAX_BYTES);
    cJSON *doc = cJSON_ParseWithLength(bytes, n);
    lorac_status_t s = LORAC_STATUS_OK;
    if (!cJSON_IsObject(doc)) {
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: quantization state is not a JSON object", label);
        goto done;
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(doc, "quant_type");
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(doc, "blocksize");
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(doc, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(doc, "shape");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "nf4") != 0) {
        s = lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: quant_type %s%s%s is not supported, only \"nf4\"", label,
                        cJSON_IsString(type) ? "\"" : "", cJSON_IsString(type) ? type->valuestring : "(missing)",
                        cJSON_IsString(type) ? "\"" : "");
        goto done;
    }
    if (!cJSON_IsNumber(bs) || bs->valuedouble != LORAC_NF4_BLOCK) {
        if (cJSON_IsNumber(bs))
            s = lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: blocksize %g is not supported, only %d", label, bs->valuedouble,
                            LORAC_NF4_BLOCK);
        else
            s = lorac_error(LORAC_STATUS_FORMAT, "%s: quantization state has no \"blocksize\"", label);
        goto done;
    }
    int known = 0;
    for (size_t i = 0; cJSON_IsString(dtype) && i < sizeof k_dtypes / sizeof k_dtypes[0]; i++)
        if (strcmp(dtype->valuestring, k_dtypes[i].name) == 0) {
            known = 1;
            qs->dtype = k_dtypes[i].dtype;
        }
    if (!known) {
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: quantization state's \"dtype\" must be float32, float16 or bfloat16",
                        label);
        goto done;
    }
    if (!cJSON_IsArray(shape) || cJSON_GetArraySize(shape) != 2) {
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: quantization state's \"shape\" must be [rows, cols]", label);
        goto done;
    }
    for (int d = 0; d < 2; d++) {
        const cJSON *v = cJSON_GetArrayItem(shape, d);
        if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > (double)(1 << 24) ||
            v->valuedouble != floor(v->valuedouble)) {
            s = lorac_error(LORAC_STATUS_FORMAT, "%s: quantization state's \"shape\" must be two positive integers", label);
            goto done;
        }
        qs->shape[d] = (int64_t)v->valuedouble;
    }
    const cJSON *nbs = cJSON_GetObjectItemCaseSensitive(doc, "nested_blocksize");
    const cJSON *ndt = cJSON_GetObjectItemCaseSensitive(doc, "nested_dtype");
    const cJSON *noff = cJSON_GetObjectItemCaseSensitive(doc, "nested_offset");
    if (!nbs && !ndt && !noff) goto done; /* the absmax in f32 */
    if (!cJSON_IsNumber(nbs) || nbs->valuedouble < 1 || nbs->valuedouble > 4096 ||
        nbs->valuedouble != floor(nbs->valuedouble)) {
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: \"nested_blocksize\" must be an integer in [1, 4096]", label);
        goto done;
    }
    if (!cJSON_IsString(ndt) || strcmp(ndt->valuestring, "float32") != 0) {
        s = lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: \"nested_dtype\" must be \"float32\"", label);
        goto done;
    }
    if (!cJSON_IsNumber(noff) || !isfinite(noff->valuedouble)) {
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: \"nested_offset\" must be a number", label);
        goto done;
    }
    qs->nested = 1;
    qs->nested_blocksize = (int64_t)nbs->valuedouble;
    qs->nested_offset = (float)noff->valuedouble; /* the f32 tensor .item() printed */
done:
    cJSON_Delete(doc);
    return s;
}

/* The companion `suffix` of weight `name`, of dtype `dtype` and n elements. */
static lorac_status_t companion(lorac_bnb_find_fn find, const void *files, const char *name, const char *suffix,
                                lorac_dtype_t dtype, int64_t n, const lorac_tensor_view_t **out) {
    char full[256];
    snprintf(full, sizeof full, "%s.%s", name, suffix);
    const lorac_tensor_view_t *tv = find(files, full);
    *out = tv;
    if (!tv)
        return lorac_error(LORAC_STATUS_FORMAT, "\"%s\" is bitsandbytes-quantized but \"%s\" is missing", name, full);
    if (tv->dtype != dtype || (n >= 0 && tv->n_elements != n))
        return lorac_error(LORAC_STATUS_FORMAT, "\"%s\" is %s with %lld elements, expected %s with %lld", full,
                           lorac_dtype_name(tv->dtype), (long long)tv->n_elements, lorac_dtype_name(dtype), (long long)n);
    return LORAC_STATUS_OK;
}

static float f32_at(const lorac_tensor_view_t *tv, int64_t i) {
    float v; /* by memcpy: a tensor in a mapped file may start at any byte */
    memcpy(&v, (const char *)tv->data + i * 4, sizeof v);
    return v;
}

const char *const lorac_bnb_state_suffixes[LORAC_BNB_N_STATE] = {
    ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".quant_state.bitsandbytes__nf4",
    ".quant_state.bitsandbytes__fp4"};

const lorac_tensor_view_t *lorac_bnb_find_in_weight_files(const void *wf, const char *name) {
    return lorac_weight_files_find(wf, name);
}

const lorac_tensor_view_t *lorac_bnb_state_tensor(lorac_bnb_find_fn find, const void *files, const char *name, int k) {
    char full[512];
    if ((size_t)snprintf(full, sizeof full, "%s%s", name, lorac_bnb_state_suffixes[k]) >= sizeof full) return NULL;
    return find(files, full);
}

int lorac_bnb_is_weight(lorac_bnb_find_fn find, const void *files, const lorac_tensor_view_t *tv) {
    if (tv->dtype != LORAC_DTYPE_U8) return 0;
    for (int k = 0; k < LORAC_BNB_N_STATE; k++)
        if (lorac_bnb_state_tensor(find, files, tv->name, k)) return 1;
    return 0;
}

int lorac_bnb_is_state(lorac_bnb_find_fn find, const void *files, const char *name) {
    size_t n = strlen(name);
    for (int k = 0; k < LORAC_BNB_N_STATE; k++) {
        size_t sn = strlen(lorac_bnb_state_suffixes[k]);
        char base[512];
        if (n <= sn || n - sn >= sizeof base || strcmp(name + n - sn, lorac_bnb_state_suffixes[k]) != 0) continue;
        memcpy(base, name, n - sn);
        base[n - sn] = 0;
        const lorac_tensor_view_t *w = find(files, base);
        return w && w->dtype == LORAC_DTYPE_U8;
    }
    return 0;
}

lorac_status_t lorac_bnb_read_nf4(lorac_bnb_find_fn find, const void *files, const char *name, const int64_t *want,
                                  lorac_bnb_quant_state_t *state, void **out) {
    *out = NULL;
    const lorac_tensor_view_t *w = find(files, name), *qs_tv, *qmap, *absmax, *nabs = NULL, *nmap = NULL;
    if (!w) return lorac_error(LORAC_STATUS_FORMAT, "missing tensor \"%s\"", name);
    char qs_name[256];
    snprintf(qs_name, sizeof qs_name, "%s.quant_state.bitsandbytes__nf4", name);
    if (!find(files, qs_name)) {
        char fp4[256];
        snprintf(fp4, sizeof fp4, "%s.quant_state.bitsandbytes__fp4", name);
        if (find(files, fp4))
            return lorac_error(LORAC_STATUS_UNSUPPORTED, "\"%s\" is quantized to bitsandbytes' fp4; only nf4 is supported",
                               name);
    }
    lorac_status_t s = companion(find, files, name, "quant_state.bitsandbytes__nf4", LORAC_DTYPE_U8, -1, &qs_tv);
    if (s) return s;
    lorac_bnb_quant_state_t qs;
    if ((s = lorac_bnb_parse_quant_state(qs_tv->data, (size_t)qs_tv->nbytes, qs_name, &qs))) return s;
    if (want && (qs.shape[0] != want[0] || qs.shape[1] != want[1]))
        return lorac_error(LORAC_STATUS_FORMAT, "\"%s\" has shape [%lld, %lld], expected [%lld, %lld] from config.json",
                           name, (long long)qs.shape[0], (long long)qs.shape[1], (long long)want[0], (long long)want[1]);
    int64_t rows = qs.shape[0], cols = qs.shape[1];
    if (!lorac_nf4_supported(cols))
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "\"%s\": rows of %lld NF4 values are not supported (a multiple of 8)",
                           name, (long long)cols);
    int64_t n = rows * cols, blocks = (n + LORAC_NF4_BLOCK - 1) / LORAC_NF4_BLOCK;
    if (w->dtype != LORAC_DTYPE_U8 || w->nbytes != (uint64_t)(n + 1) / 2)
        return lorac_error(LORAC_STATUS_FORMAT, "\"%s\" is %s of %llu bytes, expected U8 of %lld (two 4-bit codes a byte)",
                           name, lorac_dtype_name(w->dtype), (unsigned long long)w->nbytes, (long long)(n + 1) / 2);
    if ((s = companion(find, files, name, "quant_map", LORAC_DTYPE_F32, 16, &qmap))) return s;
    /* the codes index the file's 16 values, which the kernels take to be
     * the NF4 ones: another table would give other weights */
    for (int i = 0; i < 16; i++)
        if (!(fabsf(f32_at(qmap, i) - lorac_nf4_codebook[i]) <= 1e-6f))
            return lorac_error(LORAC_STATUS_UNSUPPORTED, "\"%s.quant_map\"[%d] is %g, not NF4's %g", name, i,
                               (double)f32_at(qmap, i), (double)lorac_nf4_codebook[i]);
    if ((s = companion(find, files, name, "absmax", qs.nested ? LORAC_DTYPE_U8 : LORAC_DTYPE_F32, blocks, &absmax)))
        return s;
    if (qs.nested) {
        int64_t nested_blocks = (blocks + qs.nested_blocksize - 1) / qs.nested_blocksize;
        if ((s = companion(find, files, name, "nested_absmax", LORAC_DTYPE_F32, nested_blocks, &nabs)) ||
            (s = companion(find, files, name, "nested_quant_map", LORAC_DTYPE_F32, 256, &nmap)))
            return s;
    }
    size_t bytes = lorac_dtype_bytes(LORAC_DTYPE_NF4, n);
    size_t padded = (bytes + LORAC_WEIGHT_ALIGN - 1) / LORAC_WEIGHT_ALIGN * LORAC_WEIGHT_ALIGN;
    uint8_t *q = aligned_alloc(LORAC_WEIGHT_ALIGN, padded);
    if (!q) return lorac_error(LORAC_STATUS_NOMEM, "out of memory reading \"%s\" (%.1f MB)", name, (double)padded / 1e6);
    const uint8_t *codes = w->data, *qabs = absmax->data;
    for (int64_t b = 0; b < blocks; b++) {
        uint8_t *block = q + b * LORAC_NF4_BLOCK_BYTES;
        float a;
        if (qs.nested) {
            /* two roundings, as bitsandbytes: code · absmax, then + offset
             * (volatile: never contracted into one FMA) */
            volatile float scaled = f32_at(nmap, qabs[b]) * f32_at(nabs, b / qs.nested_blocksize);
            a = scaled + qs.nested_offset;
        } else {
            a = f32_at(absmax, b);
        }
        memcpy(block, &a, sizeof a);
        int64_t len = n - b * LORAC_NF4_BLOCK < LORAC_NF4_BLOCK ? n - b * LORAC_NF4_BLOCK : LORAC_NF4_BLOCK;
        memset(block + sizeof a, 0, LORAC_NF4_BLOCK / 2);
        memcpy(block + sizeof a, codes + b * (LORAC_NF4_BLOCK / 2), (size_t)(len + 1) / 2);
        if (len % 2) block[sizeof a + len / 2] &= 0xf0; /* an odd count's last byte holds one code */
    }
    if (padded > bytes) memset(q + bytes, 0, padded - bytes);
    if (state) *state = qs;
    *out = q;
    return LORAC_STATUS_OK;
}
