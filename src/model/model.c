/* Loading a HuggingFace LLaMA-family model directory: config, mapped weights
 * checked against the config's shapes, rotary frequencies, tokenizer. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "lora/lora_internal.h"
#include "lorac/kernels.h"
#include "model/model_internal.h"

#define CONFIG_MAX_BYTES (16u << 20)

static void shape_str(const int64_t *shape, int n, char *buf, size_t cap) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < n && k < cap; i++) k += (size_t)snprintf(buf + k, cap - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

/* The view of tensor `kind` of `layer` once its shape and dtype are
 * checked, counted in n_params; *tv NULL when an optional one is absent. */
static lorac_status_t check_tensor(lorac_model_t *m, lorac_tensor_kind_t kind, int32_t layer, int required, char *name,
                                   size_t name_cap, const lorac_tensor_view_t **out) {
    lorac_tensor_name(&m->config, kind, layer, name, name_cap);
    const lorac_tensor_view_t *tv = lorac_weight_files_find(m->files, name);
    *out = NULL;
    if (!tv) {
        if (!required) return LORAC_STATUS_OK;
        return lorac_error(LORAC_STATUS_FORMAT, "%s: missing tensor \"%s\"", m->dir, name);
    }
    int64_t shape[2];
    int nd = lorac_tensor_expected_shape(kind, &m->config, shape);
    int ok = tv->n_dims == nd;
    for (int i = 0; ok && i < nd; i++) ok = tv->shape[i] == shape[i];
    if (!ok) {
        char want[64], got[128];
        shape_str(shape, nd, want, sizeof want);
        shape_str(tv->shape, tv->n_dims, got, sizeof got);
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor \"%s\" has shape %s, expected %s from config.json",
                           m->dir, name, got, want);
    }
    if (tv->dtype != LORAC_DTYPE_F32 && tv->dtype != LORAC_DTYPE_BF16 && tv->dtype != LORAC_DTYPE_F16)
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: tensor \"%s\" has dtype %s, expected F32, BF16 or F16",
                           m->dir, name, lorac_dtype_name(tv->dtype));
    m->n_params += tv->n_elements;
    *out = tv;
    return LORAC_STATUS_OK;
}

static int is_projection(lorac_tensor_kind_t kind) {
    return kind == LORAC_TENSOR_Q || kind == LORAC_TENSOR_K || kind == LORAC_TENSOR_V || kind == LORAC_TENSOR_O ||
           kind == LORAC_TENSOR_GATE || kind == LORAC_TENSOR_UP || kind == LORAC_TENSOR_DOWN || kind == LORAC_TENSOR_QKV ||
           kind == LORAC_TENSOR_GATE_UP;
}

/* Adds an NF4 tensor (aligned_alloc'd) to those the model frees; frees it
 * when the list cannot grow. */
static lorac_status_t keep_quantized(lorac_model_t *m, void *q) {
    void **list = realloc(m->quantized, sizeof *list * (size_t)(m->n_quantized + 1));
    if (!list) {
        free(q);
        return lorac_error(LORAC_STATUS_NOMEM, "out of memory quantizing the weights");
    }
    m->quantized = list;
    list[m->n_quantized++] = q;
    return LORAC_STATUS_OK;
}

/* A projection of a bitsandbytes 4-bit checkpoint (lorac_model_config_t's
 * bnb_nf4), stored as U8 codes: read into NF4 blocks the model keeps, and
 * the file's pages let go. */
static lorac_status_t load_bnb(lorac_model_t *m, lorac_tensor_kind_t kind, const char *name,
                               const lorac_tensor_view_t *tv, lorac_wref_t *out) {
    int64_t shape[2];
    lorac_tensor_expected_shape(kind, &m->config, shape);
    void *q;
    lorac_status_t s = lorac_bnb_read_nf4(lorac_bnb_find_in_weight_files, m->files, name, shape, NULL, &q);
    if (s) return lorac_error(s, "%s: %s", m->dir, lorac_error_message());
    if ((s = keep_quantized(m, q))) return s;
    /* the codes and their state are read once: their pages go back */
    lorac_file_release(tv->data, (size_t)tv->nbytes);
    for (int k = 0; k < LORAC_BNB_N_STATE; k++) {
        const lorac_tensor_view_t *c = lorac_bnb_state_tensor(lorac_bnb_find_in_weight_files, m->files, name, k);
        if (c) lorac_file_release(c->data, (size_t)c->nbytes);
    }
    m->n_params += shape[0] * shape[1];
    *out = (lorac_wref_t){q, LORAC_DTYPE_NF4};
    return LORAC_STATUS_OK;
}

/* Finds tensor `kind` of `layer`, checks its dtype and shape. Absent optional
 * tensors leave *out empty. An aligned copy (see below) is filled at once
 * when fill_now is set, else by fill_aligned_copies at the end of loading. */
static lorac_status_t find_tensor_fill(lorac_model_t *m, lorac_tensor_kind_t kind, int32_t layer, int required,
                                       int fill_now, lorac_wref_t *out) {
    char name[128];
    const lorac_tensor_view_t *tv;
    out->data = NULL;
    if (m->config.bnb_nf4 && is_projection(kind)) { /* U8 codes; a module the checkpoint left unquantized loads as usual */
        lorac_tensor_name(&m->config, kind, layer, name, sizeof name);
        tv = lorac_weight_files_find(m->files, name);
        if (tv && tv->dtype == LORAC_DTYPE_U8) return load_bnb(m, kind, name, tv, out);
    }
    lorac_status_t s = check_tensor(m, kind, layer, required, name, sizeof name, &tv);
    if (s || !tv) return s;
    out->data = tv->data;
    out->dtype = tv->dtype;
    /* safetensors only aligns what its writer chose to: HuggingFace's pads
     * the header to 8 bytes, so a file's tensors usually start 8, 16, ... 56
     * bytes past a cache line, and a tensor after an odd-sized one can start
     * at any byte. Kernels read elements through typed pointers, and every
     * vector load of a weight row off its cache line touches two lines
     * (measured by hand: lorac generate decoded 5-7% slower so at the 110M
     * shape, F32 and BF16), so such a tensor gets an aligned copy. The copy
     * is only allocated here; fill_aligned_copies fills it once every
     * tensor is known. */
    /* a model loaded for training leaves the projections' and the
     * classifier's f32 weights in the file, where the kernels repack them
     * (a tied classifier is the embedding) */
    int product = is_projection(kind) || kind == LORAC_TENSOR_LM_HEAD ||
                  (kind == LORAC_TENSOR_EMBED && m->config.tie_word_embeddings);
    int repacked = m->for_training && product && tv->dtype == LORAC_DTYPE_F32 && lorac_kernels_have_packed();
    /* a quantizing load reads the projections once, from the file */
    int quantized = m->quantize == LORAC_DTYPE_NF4 && is_projection(kind);
    if ((uintptr_t)tv->data % LORAC_WEIGHT_ALIGN != 0 && !repacked && !quantized) {
        aligned_copy_t *list = realloc(m->aligned_copies, sizeof *list * (size_t)(m->n_aligned_copies + 1));
        size_t padded = ((size_t)tv->nbytes + LORAC_WEIGHT_ALIGN - 1) / LORAC_WEIGHT_ALIGN * LORAC_WEIGHT_ALIGN;
        void *copy = aligned_alloc(LORAC_WEIGHT_ALIGN, padded > 0 ? padded : LORAC_WEIGHT_ALIGN);
        if (list) m->aligned_copies = list;
        if (!list || !copy) {
            free(copy);
            return lorac_error(LORAC_STATUS_NOMEM, "out of memory copying \"%s\"", name);
        }
        list[m->n_aligned_copies++] = (aligned_copy_t){copy, tv->data, (size_t)tv->nbytes, fill_now, 0};
        if (fill_now) {
            memcpy(copy, tv->data, (size_t)tv->nbytes);
            lorac_file_release(tv->data, (size_t)tv->nbytes);
        }
        out->data = copy;
    }
    return LORAC_STATUS_OK;
}

static lorac_status_t find_tensor(lorac_model_t *m, lorac_tensor_kind_t kind, int32_t layer, int required,
                                  lorac_wref_t *out) {
    return find_tensor_fill(m, kind, layer, required, 0, out);
}

void lorac_model_rope_table(const lorac_model_t *m, float *cs, const int32_t *pos, int64_t T, const float *inv_freq) {
    int64_t rot = m->config.rotary_dim;
    lorac_rope_table(cs, pos, inv_freq, T, rot);
    float f = m->config.rope_attention_factor;
    if (m->config.rope_longrope && f != 1.0f)
        for (int64_t i = 0; i < T * rot; i++) cs[i] *= f; /* cos · f and sin · f, as transformers scales them in f32 */
}

void lorac_model_release_weight(const lorac_model_t *m, const void *data, size_t nbytes) {
    for (int32_t i = 0; i < m->n_aligned_copies; i++) { /* heap memory (a fused tensor's rows too): handing it back would zero it */
        const char *dst = m->aligned_copies[i].dst, *p = data;
        if (p >= dst && p < dst + m->aligned_copies[i].n) return;
    }
    lorac_file_release(data, nbytes);
}

/* Bytes of a tensor copied by one task of fill_aligned_copies. */
#define COPY_PIECE ((size_t)8 << 20)

/* Fills the aligned copies from the mapped file in pieces shared among the
 * threads, and lets go of the mapped pages each piece came from, so that the
 * model is not held twice. The first write to fresh memory is a page fault
 * per page (in a VM, one the hypervisor must also serve), and the faults run
 * in parallel. Copy i owns pieces [first_piece, next copy's first_piece). */
static void fill_aligned_copies(lorac_model_t *m) {
    int64_t n_pieces = 0;
    for (int32_t i = 0; i < m->n_aligned_copies; i++) {
        aligned_copy_t *c = &m->aligned_copies[i];
        c->first_piece = n_pieces;
        if (!c->filled) n_pieces += (int64_t)((c->n + COPY_PIECE - 1) / COPY_PIECE);
    }
    #pragma omp parallel for schedule(dynamic, 1) num_threads(lorac_kernels_get_threads())
    for (int64_t p = 0; p < n_pieces; p++) {
        int32_t i = 0;
        while (i + 1 < m->n_aligned_copies && m->aligned_copies[i + 1].first_piece <= p) i++;
        const aligned_copy_t *c = &m->aligned_copies[i];
        size_t off = (size_t)(p - c->first_piece) * COPY_PIECE, n = c->n - off < COPY_PIECE ? c->n - off : COPY_PIECE;
        memcpy((char *)c->dst + off, (const char *)c->src + off, n);
        /* only whole pages inside the piece are released: the one a piece
         * boundary splits stays mapped (a few KB per 8 MB) */
        lorac_file_release((const char *)c->src + off, n);
    }
    for (int32_t i = 0; i < m->n_aligned_copies; i++) m->aligned_copies[i].filled = 1;
}

/* Biases are tiny; an f32 copy keeps the matmul kernels simple. */
static lorac_status_t load_bias(lorac_model_t *m, lorac_tensor_kind_t kind, int32_t layer, int required, float **out) {
    lorac_wref_t w;
    *out = NULL;
    lorac_status_t s = find_tensor_fill(m, kind, layer, required, 1, &w); /* read right here */
    if (s || !w.data) return s;
    int64_t shape[2];
    lorac_tensor_expected_shape(kind, &m->config, shape);
    *out = malloc(sizeof(float) * (size_t)shape[0]);
    if (!*out) return lorac_error(LORAC_STATUS_NOMEM, "out of memory for a bias");
    lorac_convert_to_f32(*out, w.data, w.dtype, shape[0]);
    return LORAC_STATUS_OK;
}

/* Row block [row0, row0 + rows) of a [*, cols] weight, in place (an NF4
 * one's block must start one of its blocks: GPT-2's c_attn, quantized
 * whole, splits at D·D and 2·D·D, multiples of 64 when D is of 8). */
static lorac_wref_t weight_rows(lorac_wref_t w, int64_t row0, int64_t cols) {
    LORAC_ASSERT(w.dtype != LORAC_DTYPE_NF4 || row0 * cols % LORAC_NF4_BLOCK == 0);
    w.data = (const char *)w.data + lorac_dtype_bytes(w.dtype, row0 * cols);
    return w;
}

/* Phi-3's fused projections, read as Llama's: q, k, v and gate, up are row
 * blocks of qkv_proj and gate_up_proj (no copies; every block starts a
 * whole number of rows in, so an aligned tensor stays aligned when its
 * rows are whole cache lines). */
static lorac_status_t load_fused(lorac_model_t *m, int32_t l) {
    lorac_layer_weights_t *L = &m->layers[l];
    const lorac_model_config_t *c = &m->config;
    int64_t D = c->hidden_size, Q = (int64_t)c->n_heads * c->head_dim, KV = (int64_t)c->n_kv_heads * c->head_dim;
    lorac_wref_t qkv, gate_up;
    lorac_status_t s;
    if ((s = find_tensor(m, LORAC_TENSOR_QKV, l, 1, &qkv)) || (s = find_tensor(m, LORAC_TENSOR_GATE_UP, l, 1, &gate_up)))
        return s;
    /* a bitsandbytes checkpoint quantized each fused tensor whole: its
     * parts are read in place only when each starts one of its blocks */
    if ((qkv.dtype == LORAC_DTYPE_NF4 && ((Q * D) % LORAC_NF4_BLOCK || ((Q + KV) * D) % LORAC_NF4_BLOCK)) ||
        (gate_up.dtype == LORAC_DTYPE_NF4 && (c->intermediate_size * D) % LORAC_NF4_BLOCK))
        return lorac_error(LORAC_STATUS_UNSUPPORTED,
                           "%s: layer %d's fused projections are quantized whole, and a part does not start one of "
                           "their blocks of %d",
                           m->dir, l, LORAC_NF4_BLOCK);
    L->wq = weight_rows(qkv, 0, D);
    L->wk = weight_rows(qkv, Q, D);
    L->wv = weight_rows(qkv, Q + KV, D);
    L->w_gate = weight_rows(gate_up, 0, D);
    L->w_up = weight_rows(gate_up, c->intermediate_size, D);
    return LORAC_STATUS_OK;
}

static lorac_status_t load_layer(lorac_model_t *m, int32_t l) {
    lorac_layer_weights_t *L = &m->layers[l];
    const lorac_model_config_t *c = &m->config;
    lorac_status_t s;
    if (c->fused_proj) {
        if ((s = find_tensor(m, LORAC_TENSOR_ATTN_NORM, l, 1, &L->attn_norm)) || (s = load_fused(m, l)) ||
            (s = find_tensor(m, LORAC_TENSOR_O, l, 1, &L->wo)) || (s = find_tensor(m, LORAC_TENSOR_FFN_NORM, l, 1, &L->ffn_norm)) ||
            (s = find_tensor(m, LORAC_TENSOR_DOWN, l, 1, &L->w_down)))
            return s;
        return LORAC_STATUS_OK;
    }
    if ((s = find_tensor(m, LORAC_TENSOR_ATTN_NORM, l, 1, &L->attn_norm)) ||
        (s = find_tensor(m, LORAC_TENSOR_Q, l, 1, &L->wq)) || (s = find_tensor(m, LORAC_TENSOR_K, l, 1, &L->wk)) ||
        (s = find_tensor(m, LORAC_TENSOR_V, l, 1, &L->wv)) || (s = find_tensor(m, LORAC_TENSOR_O, l, 1, &L->wo)) ||
        (s = find_tensor(m, LORAC_TENSOR_FFN_NORM, l, 1, &L->ffn_norm)) ||
        (s = find_tensor(m, LORAC_TENSOR_GATE, l, 1, &L->w_gate)) ||
        (s = find_tensor(m, LORAC_TENSOR_UP, l, 1, &L->w_up)) ||
        (s = find_tensor(m, LORAC_TENSOR_DOWN, l, 1, &L->w_down)))
        return s;
    if (c->qkv_bias &&
        ((s = load_bias(m, LORAC_TENSOR_Q_BIAS, l, 1, &L->bq)) || (s = load_bias(m, LORAC_TENSOR_K_BIAS, l, 1, &L->bk)) ||
         (s = load_bias(m, LORAC_TENSOR_V_BIAS, l, 1, &L->bv))))
        return s;
    if (c->o_bias && (s = load_bias(m, LORAC_TENSOR_O_BIAS, l, 1, &L->bo))) return s;
    if (c->qk_norm &&
        ((s = find_tensor(m, LORAC_TENSOR_Q_NORM, l, 1, &L->q_norm)) || (s = find_tensor(m, LORAC_TENSOR_K_NORM, l, 1, &L->k_norm))))
        return s;
    if (c->sandwich_norms && ((s = find_tensor(m, LORAC_TENSOR_ATTN_POST_NORM, l, 1, &L->attn_post_norm)) ||
                              (s = find_tensor(m, LORAC_TENSOR_FFN_POST_NORM, l, 1, &L->ffn_post_norm))))
        return s;
    if (c->mlp_bias &&
        ((s = load_bias(m, LORAC_TENSOR_GATE_BIAS, l, 1, &L->b_gate)) ||
         (s = load_bias(m, LORAC_TENSOR_UP_BIAS, l, 1, &L->b_up)) ||
         (s = load_bias(m, LORAC_TENSOR_DOWN_BIAS, l, 1, &L->b_down))))
        return s;
    return LORAC_STATUS_OK;
}

/* w's n values replaced by an NF4 copy, which the model keeps. */
static lorac_status_t quantize_weight(lorac_model_t *m, lorac_wref_t *w, int64_t n) {
    size_t bytes = (lorac_dtype_bytes(LORAC_DTYPE_NF4, n) + LORAC_WEIGHT_ALIGN - 1) / LORAC_WEIGHT_ALIGN * LORAC_WEIGHT_ALIGN;
    void *q = aligned_alloc(LORAC_WEIGHT_ALIGN, bytes > 0 ? bytes : LORAC_WEIGHT_ALIGN);
    if (!q) return lorac_error(LORAC_STATUS_NOMEM, "out of memory quantizing the weights (%.1f MB)", (double)bytes / 1e6);
    lorac_status_t s = keep_quantized(m, q);
    if (s) return s;
    lorac_quantize_nf4(q, w->data, w->dtype, n);
    w->data = q;
    w->dtype = LORAC_DTYPE_NF4;
    return LORAC_STATUS_OK;
}

/* A quantizing load's pass over the decoder layers' projections (GPT-2's
 * were quantized as they were transposed): each read from the mapped file,
 * where find_tensor_fill left it, then its pages let go. */
static lorac_status_t quantize_projections(lorac_model_t *m) {
    const lorac_model_config_t *c = &m->config;
    for (int32_t l = 0; l < c->n_layers; l++) {
        lorac_layer_weights_t *L = &m->layers[l];
        lorac_wref_t *w[LORAC_LORA_COUNT] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int t = 0; t < LORAC_LORA_COUNT; t++) {
            int32_t in, out;
            lorac_lora_target_dims(c, (lorac_lora_target_t)t, &in, &out);
            if (!w[t]->data || w[t]->dtype == LORAC_DTYPE_NF4) continue; /* GPT-2 has no gate */
            if (!lorac_nf4_supported(in)) {
                m->n_unquantized++;
                continue;
            }
            const void *src = w[t]->data;
            size_t src_bytes = lorac_dtype_bytes(w[t]->dtype, (int64_t)in * out);
            lorac_status_t s = quantize_weight(m, w[t], (int64_t)in * out);
            if (s) return s;
            lorac_model_release_weight(m, src, src_bytes);
        }
    }
    return LORAC_STATUS_OK;
}

int32_t lorac_model_n_unquantized(const lorac_model_t *m) { return m->n_unquantized; }

/* A GPT-2 Conv1D weight, (in, out) in the file, as the (out, in) the
 * kernels read: transposed into an aligned copy of its dtype (in tiles,
 * so both sides stay in cache), the mapped pages let go. */
static lorac_status_t find_transposed(lorac_model_t *m, lorac_tensor_kind_t kind, int32_t layer, lorac_wref_t *out) {
    char name[128];
    const lorac_tensor_view_t *tv;
    lorac_status_t s = check_tensor(m, kind, layer, 1, name, sizeof name, &tv);
    if (s) return s;
    int64_t in = tv->shape[0], n_out = tv->shape[1];
    size_t es = lorac_dtype_size(tv->dtype), nbytes = (size_t)tv->nbytes;
    size_t padded = (nbytes + LORAC_WEIGHT_ALIGN - 1) / LORAC_WEIGHT_ALIGN * LORAC_WEIGHT_ALIGN;
    aligned_copy_t *list = realloc(m->aligned_copies, sizeof *list * (size_t)(m->n_aligned_copies + 1));
    char *dst = aligned_alloc(LORAC_WEIGHT_ALIGN, padded > 0 ? padded : LORAC_WEIGHT_ALIGN);
    if (list) m->aligned_copies = list;
    if (!list || !dst) {
        free(dst);
        return lorac_error(LORAC_STATUS_NOMEM, "out of memory transposing \"%s\"", name);
    }
    list[m->n_aligned_copies++] = (aligned_copy_t){dst, tv->data, nbytes, 1, 0};
    const char *src = tv->data;
    enum { TILE = 32 };
    #pragma omp parallel for collapse(2) schedule(static) num_threads(lorac_kernels_get_threads())
    for (int64_t i0 = 0; i0 < in; i0 += TILE)
        for (int64_t o0 = 0; o0 < n_out; o0 += TILE)
            for (int64_t o = o0; o < o0 + TILE && o < n_out; o++)
                for (int64_t i = i0; i < i0 + TILE && i < in; i++)
                    memcpy(dst + (size_t)(o * in + i) * es, src + (size_t)(i * n_out + o) * es, es);
    lorac_file_release(tv->data, nbytes);
    out->data = dst;
    out->dtype = tv->dtype;
    if (m->quantize == LORAC_DTYPE_NF4 && lorac_nf4_supported(in)) { /* the copy goes as soon as it is quantized */
        s = quantize_weight(m, out, in * n_out);
        m->n_aligned_copies--;
        free(dst);
        if (s) out->data = NULL;
        return s;
    }
    return LORAC_STATUS_OK;
}

/* A LayerNorm's weight and bias as f32 copies; *w_ref reads the weight. */
static lorac_status_t load_layernorm(lorac_model_t *m, lorac_tensor_kind_t w_kind, lorac_tensor_kind_t b_kind,
                                     int32_t layer, float **w, float **b, lorac_wref_t *w_ref) {
    lorac_status_t s;
    if ((s = load_bias(m, w_kind, layer, 1, w)) || (s = load_bias(m, b_kind, layer, 1, b))) return s;
    *w_ref = (lorac_wref_t){*w, LORAC_DTYPE_F32};
    return LORAC_STATUS_OK;
}

/* A GPT-2 block: LayerNorms, c_attn transposed and read as q, k and v row
 * blocks with its bias split the same way, c_proj, c_fc (as up) and the
 * MLP's c_proj (as down), all with biases. */
static lorac_status_t load_gpt2_layer(lorac_model_t *m, int32_t l) {
    lorac_layer_weights_t *L = &m->layers[l];
    int64_t D = m->config.hidden_size;
    lorac_wref_t qkv;
    float *b_qkv = NULL;
    lorac_status_t s;
    if ((s = load_layernorm(m, LORAC_TENSOR_ATTN_NORM, LORAC_TENSOR_ATTN_NORM_BIAS, l, &L->attn_norm_w, &L->attn_norm_b,
                            &L->attn_norm)) ||
        (s = load_layernorm(m, LORAC_TENSOR_FFN_NORM, LORAC_TENSOR_FFN_NORM_BIAS, l, &L->ffn_norm_w, &L->ffn_norm_b,
                            &L->ffn_norm)) ||
        (s = find_transposed(m, LORAC_TENSOR_QKV, l, &qkv)) || (s = find_transposed(m, LORAC_TENSOR_O, l, &L->wo)) ||
        (s = find_transposed(m, LORAC_TENSOR_UP, l, &L->w_up)) ||
        (s = find_transposed(m, LORAC_TENSOR_DOWN, l, &L->w_down)) ||
        (s = load_bias(m, LORAC_TENSOR_O_BIAS, l, 1, &L->bo)) || (s = load_bias(m, LORAC_TENSOR_UP_BIAS, l, 1, &L->b_up)) ||
        (s = load_bias(m, LORAC_TENSOR_DOWN_BIAS, l, 1, &L->b_down)) ||
        (s = load_bias(m, LORAC_TENSOR_QKV_BIAS, l, 1, &b_qkv)))
        return s;
    L->wq = weight_rows(qkv, 0, D);
    L->wk = weight_rows(qkv, D, D);
    L->wv = weight_rows(qkv, 2 * D, D);
    L->bq = b_qkv; /* 3·D long: its first D are q's */
    L->bk = malloc(sizeof(float) * (size_t)D);
    L->bv = malloc(sizeof(float) * (size_t)D);
    if (!L->bk || !L->bv) return lorac_error(LORAC_STATUS_NOMEM, "out of memory for a bias");
    memcpy(L->bk, b_qkv + D, sizeof(float) * (size_t)D);
    memcpy(L->bv, b_qkv + 2 * D, sizeof(float) * (size_t)D);
    return LORAC_STATUS_OK;
}

/* GPT-2's global tensors; the prefix "transformer." unless the files name
 * them without it (the original openai-community/gpt2 checkpoint). */
static lorac_status_t load_gpt2_globals(lorac_model_t *m) {
    char name[128];
    lorac_tensor_name(&m->config, LORAC_TENSOR_EMBED, 0, name, sizeof name);
    if (!lorac_weight_files_find(m->files, name) && lorac_weight_files_find(m->files, "wte.weight"))
        m->config.tensor_prefix[0] = 0;
    lorac_status_t s;
    if ((s = find_tensor(m, LORAC_TENSOR_POS_EMBED, 0, 1, &m->pos_embed))) return s;
    return load_layernorm(m, LORAC_TENSOR_FINAL_NORM, LORAC_TENSOR_FINAL_NORM_BIAS, 0, &m->final_norm_w,
                          &m->final_norm_b, &m->final_norm);
}

/* inv_freq[i] = theta^(-2i/hd); scaled: with the config's scaling, linear
 * (every frequency divided by the factor) or Llama 3's frequency-dependent
 * one (the same piecewise rule as HF's _compute_llama3_parameters). */
static void compute_inv_freq(const lorac_model_config_t *c, float theta, int scaled, const float *longrope,
                             float *inv_freq) {
    int32_t half = c->rotary_dim / 2;
    for (int32_t i = 0; i < half; i++) {
        double f = 1.0 / pow((double)theta, (double)(2 * i) / (double)c->rotary_dim);
        if (longrope) f /= longrope[i]; /* Phi-3's: 1 / (factor · theta^(2i/d)) */
        if (scaled) f /= c->rope_linear_factor;
        if (scaled && c->rope_llama3) {
            double old_len = c->rope_original_max_position;
            double low_wavelen = old_len / c->rope_low_freq_factor;
            double high_wavelen = old_len / c->rope_high_freq_factor;
            double wavelen = 2.0 * M_PI / f;
            if (wavelen > low_wavelen) {
                f = f / c->rope_factor;
            } else if (wavelen >= high_wavelen) {
                double smooth = (old_len / wavelen - c->rope_low_freq_factor) /
                                (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (1.0 - smooth) * f / c->rope_factor + smooth * f;
            }
        }
        inv_freq[i] = (float)f;
    }
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int file_in_dir(const char *dir, const char *name) {
    char *path = lorac_path_join(dir, name);
    int ok = path && file_exists(path);
    free(path);
    return ok;
}

int lorac_model_dir_lacks_tokenizer(const char *dir) {
    return file_in_dir(dir, "config.json") && !file_in_dir(dir, "tokenizer.json");
}

static void add_eos(lorac_model_config_t *c, int32_t id) {
    if (id < 0 || id >= c->vocab_size) return;
    for (int32_t i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] == id) return;
    if (c->n_eos < LORAC_MAX_EOS_IDS) c->eos_ids[c->n_eos++] = id;
}

/* Reads dir/name as JSON; NULL (and OK) when the file is absent. */
static lorac_status_t read_optional_json(const char *dir, const char *name, cJSON **out) {
    *out = NULL;
    char *path = lorac_path_join(dir, name), *text = NULL;
    size_t len = 0;
    if (!path) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    lorac_status_t s = LORAC_STATUS_OK;
    if (file_exists(path) && !(s = lorac_file_read(path, CONFIG_MAX_BYTES, &text, &len))) {
        *out = cJSON_ParseWithLength(text, len);
        if (!*out || !cJSON_IsObject(*out)) {
            cJSON_Delete(*out);
            *out = NULL;
            s = lorac_error(LORAC_STATUS_FORMAT, "%s: not a JSON object", path);
        }
    }
    free(text);
    free(path);
    return s;
}

/* Generation stops at every end-of-sequence token the model's files name,
 * as transformers' generate does: config.json's eos_token_id, then
 * generation_config.json's (chat models list several there: Llama 3
 * instruct ends turns with <|eot_id|>), then tokenizer_config.json's
 * eos_token (SmolLM2-instruct: <|im_end|>), and the tokenizer's own as the
 * last resort. */
static lorac_status_t collect_eos_ids(lorac_model_t *m, const char *dir) {
    lorac_model_config_t *c = &m->config;
    cJSON *gen = NULL, *tcfg = NULL;
    lorac_status_t s = read_optional_json(dir, "generation_config.json", &gen);
    if (s) return s;
    const cJSON *e = gen ? cJSON_GetObjectItemCaseSensitive(gen, "eos_token_id") : NULL;
    if (cJSON_IsNumber(e)) add_eos(c, (int32_t)e->valuedouble);
    else if (cJSON_IsArray(e))
        for (const cJSON *it = e->child; it; it = it->next)
            if (cJSON_IsNumber(it)) add_eos(c, (int32_t)it->valuedouble);
    cJSON_Delete(gen);
    if (!m->tokenizer) return LORAC_STATUS_OK;
    if ((s = read_optional_json(dir, "tokenizer_config.json", &tcfg))) return s;
    const cJSON *t = tcfg ? cJSON_GetObjectItemCaseSensitive(tcfg, "eos_token") : NULL;
    if (cJSON_IsObject(t)) t = cJSON_GetObjectItemCaseSensitive(t, "content");
    if (cJSON_IsString(t)) add_eos(c, lorac_tokenizer_token_id(m->tokenizer, t->valuestring));
    cJSON_Delete(tcfg);
    if (c->n_eos == 0) add_eos(c, lorac_tokenizer_eos_id(m->tokenizer));
    return LORAC_STATUS_OK;
}

/* A multimodal checkpoint's text model: the released files name its tensors
 * language_model.model.*, transformers >= 4.52 (in some versions) and
 * other tools model.language_model.*. */
static lorac_status_t find_text_model(lorac_model_t *m) {
    static const char *const prefixes[] = {"language_model.model", "model.language_model"};
    for (size_t i = 0; i < 2; i++) {
        char name[96];
        snprintf(name, sizeof name, "%s.embed_tokens.weight", prefixes[i]);
        if (lorac_weight_files_find(m->files, name)) {
            snprintf(m->config.tensor_prefix, sizeof m->config.tensor_prefix, "%s", prefixes[i]);
            return LORAC_STATUS_OK;
        }
    }
    return lorac_error(LORAC_STATUS_FORMAT,
                       "%s: %s's text model not found: no tensor \"language_model.model.embed_tokens.weight\" "
                       "or \"model.language_model.embed_tokens.weight\"",
                       m->dir, m->config.arch_name);
}

lorac_status_t lorac_model_load(const char *dir, lorac_model_t **out) {
    lorac_model_load_params_t p = {.for_training = false};
    return lorac_model_load_ex(dir, &p, out);
}

lorac_status_t lorac_model_load_for_training(const char *dir, lorac_model_t **out) {
    lorac_model_load_params_t p = {.for_training = true};
    return lorac_model_load_ex(dir, &p, out);
}

lorac_status_t lorac_model_load_ex(const char *dir, const lorac_model_load_params_t *params, lorac_model_t **out) {
    *out = NULL;
    if (params->quantize != LORAC_DTYPE_F32 && params->quantize != LORAC_DTYPE_NF4)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "quantizing to %s: only NF4 is supported",
                           lorac_dtype_name(params->quantize) ? lorac_dtype_name(params->quantize) : "an unknown dtype");
    lorac_model_t *m = calloc(1, sizeof *m);
    if (!m) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    m->for_training = params->for_training;
    m->quantize = params->quantize;
    lorac_status_t s = LORAC_STATUS_OK;
    char *cfg_path = NULL, *cfg_text = NULL, *tok_path = NULL;
    size_t cfg_len = 0;
    m->dir = strdup(dir);
    cfg_path = lorac_path_join(dir, "config.json");
    tok_path = lorac_path_join(dir, "tokenizer.json");
    if (!m->dir || !cfg_path || !tok_path) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); goto fail; }

    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        s = lorac_error(LORAC_STATUS_IO, "%s: not a model directory (expected config.json and model.safetensors)", dir);
        goto fail;
    }
    if ((s = lorac_file_read(cfg_path, CONFIG_MAX_BYTES, &cfg_text, &cfg_len))) goto fail;
    if ((s = lorac_model_config_parse(cfg_text, cfg_len, cfg_path, &m->config))) goto fail;
    /* a quantizing load (or a quantized checkpoint's) reads the
     * projections once and lets them go: not the whole file in at once,
     * which would hold it all */
    if ((s = lorac_weight_files_open_ex(dir, m->quantize != LORAC_DTYPE_NF4 && !m->config.bnb_nf4, &m->files))) goto fail;
    if (m->config.text_of_multimodal && (s = find_text_model(m))) goto fail;

    const lorac_model_config_t *c = &m->config;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    m->inv_freq = malloc(sizeof(float) * (size_t)(c->rotary_dim / 2 + 1)); /* + 1: GPT-2 has none */
    m->inv_freq_local = c->rope_local_theta ? malloc(sizeof(float) * (size_t)(c->rotary_dim / 2)) : NULL;
    m->inv_freq_long = c->rope_longrope ? malloc(sizeof(float) * (size_t)(c->rotary_dim / 2)) : NULL;
    if (!m->layers || !m->inv_freq || (c->rope_local_theta && !m->inv_freq_local) ||
        (c->rope_longrope && !m->inv_freq_long)) {
        s = lorac_error(LORAC_STATUS_NOMEM, "out of memory");
        goto fail;
    }
    if (c->arch == LORAC_ARCH_GPT2 && (s = load_gpt2_globals(m))) goto fail;
    if ((s = find_tensor(m, LORAC_TENSOR_EMBED, 0, 1, &m->embed)) ||
        (!c->layer_norm && (s = find_tensor(m, LORAC_TENSOR_FINAL_NORM, 0, 1, &m->final_norm))))
        goto fail;
    if (c->tie_word_embeddings) {
        m->lm_head = m->embed;
    } else if ((s = find_tensor(m, LORAC_TENSOR_LM_HEAD, 0, 1, &m->lm_head))) {
        goto fail;
    }
    for (int32_t l = 0; l < c->n_layers; l++)
        if ((s = c->arch == LORAC_ARCH_GPT2 ? load_gpt2_layer(m, l) : load_layer(m, l))) goto fail;
    compute_inv_freq(c, c->rope_theta, 1, c->rope_longrope ? c->rope_short_factor : NULL, m->inv_freq);
    if (c->rope_local_theta) compute_inv_freq(c, c->rope_local_theta, 0, NULL, m->inv_freq_local);
    if (c->rope_longrope) compute_inv_freq(c, c->rope_theta, 1, c->rope_long_factor, m->inv_freq_long);
    /* Gemma 2 and 3 multiply the embedding by sqrt(hidden_size) rounded to the
     * embedding's dtype (34 for 1152 in bf16, not 33.94) */
    if ((c->arch == LORAC_ARCH_GEMMA2 || c->arch == LORAC_ARCH_GEMMA3) && m->embed.dtype != LORAC_DTYPE_F32) {
        uint16_t half_bits;
        lorac_kv_store(&half_bits, m->embed.dtype, &m->config.embedding_multiplier, 1);
        lorac_convert_to_f32(&m->config.embedding_multiplier, &half_bits, m->embed.dtype, 1);
    }
    /* the tokenizer before the weights are copied: a broken tokenizer.json
     * fails in milliseconds, not after seconds of copying */
    if (file_exists(tok_path) && (s = lorac_tokenizer_load_json(tok_path, &m->tokenizer))) goto fail;
    if (m->tokenizer && lorac_tokenizer_vocab_size(m->tokenizer) > c->vocab_size) {
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: tokenizer has %d tokens but the model's vocab_size is %d", tok_path,
                        lorac_tokenizer_vocab_size(m->tokenizer), c->vocab_size);
        goto fail;
    }
    if ((s = collect_eos_ids(m, dir))) goto fail;
    if (m->quantize == LORAC_DTYPE_NF4 && (s = quantize_projections(m))) goto fail;
    fill_aligned_copies(m);
    free(cfg_path); free(cfg_text); free(tok_path);
    *out = m;
    return LORAC_STATUS_OK;
fail:
    free(cfg_path); free(cfg_text); free(tok_path);
    lorac_model_free(m);
    return s;
}

void lorac_model_free(lorac_model_t *m) {
    if (!m) return;
    if (m->layers) {
        for (int32_t l = 0; l < m->config.n_layers; l++) {
            lorac_layer_weights_t *L = &m->layers[l];
            free(L->bq); free(L->bk); free(L->bv); free(L->bo);
            free(L->b_gate); free(L->b_up); free(L->b_down);
            free(L->attn_norm_w); free(L->attn_norm_b); free(L->ffn_norm_w); free(L->ffn_norm_b);
        }
    }
    free(m->final_norm_w); free(m->final_norm_b);
    free(m->layers);
    free(m->inv_freq);
    free(m->inv_freq_local);
    free(m->inv_freq_long);
    for (int32_t i = 0; i < m->n_aligned_copies; i++) free(m->aligned_copies[i].dst);
    free(m->aligned_copies);
    for (int32_t i = 0; i < m->n_quantized; i++) free(m->quantized[i]);
    free(m->quantized);
    lorac_tokenizer_free(m->tokenizer);
    lorac_weight_files_free(m->files);
    free(m->dir);
    free(m);
}

const lorac_model_config_t *lorac_model_get_config(const lorac_model_t *m) { return &m->config; }
const lorac_tokenizer_t *lorac_model_get_tokenizer(const lorac_model_t *m) { return m->tokenizer; }
lorac_dtype_t lorac_model_weight_dtype(const lorac_model_t *m) { return m->layers[0].wq.dtype; }
int64_t lorac_model_n_params(const lorac_model_t *m) { return m->n_params; }

int lorac_model_is_eos(const lorac_model_t *m, int32_t id) {
    for (int32_t i = 0; i < m->config.n_eos; i++)
        if (m->config.eos_ids[i] == id) return 1;
    return 0;
}
