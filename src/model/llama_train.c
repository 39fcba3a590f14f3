/* The training pass: explicit forward and backward through the LLaMA stack
 * (llm.c style), with LoRA on any projection or full fine-tuning.
 *
 * Per layer the forward keeps what the backward needs (shapes for N = B·T
 * tokens): x_in, xn1 (N,D), rstd1 (N), q (N,H·hd) after rotary, k, v
 * (N,KVH·hd), att (N,H·hd), lse (N,H), x_mid, xn2 (N,D), rstd2 (N), gate, up,
 * h (N,I), and per LoRA module u = x·Aᵀ (N,r) plus the dropout mask; with
 * Qwen3's per-head norms also q and k as projected, and their rstd; with
 * Gemma's sandwich norms also the o and down products before their
 * norms, and their rstd; with GPT-2's LayerNorms also each row's mean
 * (mean1, mean2), its MLP keeping up (before the GELU) and h, no gate.
 * Attention probabilities are recomputed in the backward pass from lse
 * rather than stored (B·H·T² floats per layer would dominate memory).
 * The classifier and the loss run in chunks of rows, fused with their
 * backward, so the (N, vocab) logits never exist at once. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "lora/lora_internal.h"
#include "lorac/kernels.h"
#include "model/model_internal.h"

/* Rows of the loss taken at once. With a frozen classifier (LoRA) up to
 * LOSS_CHUNK: a whole 4 x 256 batch, so that the classifier (37 MB at 32k
 * x 288, more than the L3) streams from memory once a step, not once per
 * few hundred rows. Each thread takes its share of the rows through every
 * block of LOSS_BLOCK vocabulary columns (lorac_crossentropy_classifier):
 * the block's logits, an online softmax, their product with the block's
 * rows of the classifier, while those are still in cache, so a block of
 * 4 MB is alive, not the whole vocabulary's logits. Training the
 * classifier itself (--full) needs every probability before its weight
 * gradient, so there whole rows are kept: LOSS_CHUNK_FULL rows, fewer for
 * big vocabularies to stay near 32 MB. */
#define LOSS_CHUNK 1024
#define LOSS_CHUNK_FULL 256
#define LOSS_BLOCK 1024
static int64_t loss_chunk_rows(int64_t vocab) {
    int64_t rows = ((int64_t)8 << 20) / (vocab > 0 ? vocab : 1);
    return rows < 64 ? 64 : rows > LOSS_CHUNK_FULL ? LOSS_CHUNK_FULL : rows;
}
/* Columns of a block: the vocabulary in equal blocks of at most
 * LOSS_BLOCK, whole 16-column panels (32000 as 32 x 1008, not 31 x 1024
 * and a short one). */
static int64_t loss_block_cols(int64_t vocab) {
    int64_t blocks = (vocab + LOSS_BLOCK - 1) / LOSS_BLOCK;
    int64_t cols = blocks > 0 ? (vocab + blocks - 1) / blocks : 1;
    cols = (cols + 15) / 16 * 16;
    return cols < vocab ? cols : vocab > 0 ? vocab : 1;
}

/* One projection: base weight (+ bias), optionally a LoRA module, and the
 * gradient buffers of whatever is trained. */
typedef struct {
    lorac_wref_t w;
    const float *bias;
    float *dw, *db;               /* full fine-tuning */
    const lorac_lora_module_t *lora;
    float *dA, *dB;               /* LoRA */
    const float *packed;          /* w repacked (lorac_pack_weight), or NULL */
    int32_t in, out;
} linear_t;

typedef struct {
    lorac_wref_t attn_norm, ffn_norm;
    const float *attn_norm_b, *ffn_norm_b; /* layer_norm (GPT-2): the LayerNorms' biases */
    float *d_attn_norm, *d_ffn_norm; /* full fine-tuning */
    lorac_wref_t q_norm, k_norm;     /* qk_norm (Qwen3, Gemma 3) */
    float *d_q_norm, *d_k_norm;      /* full fine-tuning with qk_norm */
    lorac_wref_t attn_post_norm, ffn_post_norm; /* sandwich_norms (Gemma 2, 3) */
    float *d_attn_post_norm, *d_ffn_post_norm;  /* full fine-tuning with sandwich_norms */
    linear_t proj[LORAC_LORA_COUNT]; /* indexed like lorac_lora_target_t */
} train_layer_t;

typedef struct {
    float *x_in, *rstd1, *xn1, *q, *k, *v, *att, *lse, *x_mid, *rstd2, *xn2, *gate, *up, *h;
    float *mean1, *mean2; /* layer_norm (GPT-2): the LayerNorms' row means (N) */
    float *q_raw, *k_raw, *rstd_q, *rstd_k; /* qk_norm: q (N,H·hd), k before their norms; rstd (N·H), (N·KVH) */
    float *o_raw, *rstd_po, *m_raw, *rstd_pm; /* sandwich_norms: the o and down products (N,D) before their norms */
    float *u[LORAC_LORA_COUNT];      /* (N, r) */
    uint8_t *keep[LORAC_LORA_COUNT]; /* (N, in) dropout mask, when dropout > 0 */
    float *xdrop[LORAC_LORA_COUNT];  /* (N, in) dropped input, when dropout > 0 */
} layer_acts_t;

typedef struct {
    char name[128];
    float *data, *grad;
    int64_t n;
} param_t;

struct lorac_train_pass {
    const lorac_model_t *model;
    lorac_adapter_t *adapter;   /* NULL: full fine-tuning */
    int32_t B, T;
    int64_t N;
    train_layer_t *layers;
    lorac_wref_t embed, final_norm, lm_head;
    const float *lm_head_packed;  /* the frozen classifier repacked, or NULL */
    float *packed_arena;          /* the frozen weights repacked (setup_packed) */
    float *d_embed, *d_final_norm, *d_lm_head; /* full only; d_lm_head == d_embed when tied */
    /* the loss takes whole rows of logits (loss_chunk_whole): with a trained
     * classifier, or Gemma 2's soft-capped logits */
    bool whole_rows;
    float *chunk_capd;            /* whole_rows with final_softcap: dz/dlogit of each logit */
    int32_t grad_floor;           /* the lowest layer with a gradient: backward stops there */
    layer_acts_t *acts;
    float *x_final, *rstd_f, *xn_f;
    float *mean_f;                /* layer_norm: the final LayerNorm's row means */
    const float *final_norm_b;    /* layer_norm: its bias */
    /* backward scratch */
    float *dres, *dres2, *dxn, *dxn_f, *tmp, *dh, *dgate, *dup, *datt, *dq, *dk, *dv, *du, *dx_lora;
    float *dq_raw, *dk_raw; /* qk_norm: the gradients of q and k as projected */
    float *d_post;          /* sandwich_norms: the gradient of a block's product before its norm */
    float *chunk_x, *chunk_logits, *chunk_dx, *chunk_losses;
    float *chunk_max, *chunk_target_logit, *chunk_wrow; /* the online softmax (frozen classifier) */
    double *chunk_others;
    int32_t *chunk_targets, *start;
    int32_t *start_window; /* start with the sliding window's limit (windowed layers); NULL: none */
    float *rope_cs; /* (N, head_dim): lorac_rope_table of the step's positions */
    float *rope_cs_local; /* the same from the model's inv_freq_local (Gemma 3's windowed layers); NULL: none */
    float *att_scratch;
    int att_threads;
    param_t *params;
    int32_t n_params;
    void *arena;          /* activations and scratch, one allocation */
    void *full_arena;     /* master weights and their gradients (full only) */
    void *grad_arena;     /* LoRA gradients */
    double *phase_seconds, *phase_flops; /* lorac_train_pass_time_phases; NULL: not timed */
    double lap_start;
};

/* The first token each token of layer l attends to (see lorac_attention_train_forward). */
static const int32_t *layer_start(const lorac_train_pass_t *p, int32_t l) {
    return lorac_model_layer_window(&p->model->config, l) ? p->start_window : p->start;
}

/* Rows of the pass's loss chunks (at most the batch's rows). */
static int64_t loss_rows(const lorac_train_pass_t *p) {
    int64_t rows = p->whole_rows ? loss_chunk_rows(p->model->config.vocab_size) : LOSS_CHUNK;
    return rows < p->N ? rows : p->N > 0 ? p->N : 1;
}

/* ---- memory planning -------------------------------------------------------- */
/* Two passes over the same carving code: the first only counts bytes. */
typedef struct {
    uint8_t *base;
    size_t used;
} arena_t;

/* The activations on 2 MB pages where the kernel gives them (Linux, THP
 * on request): the products walk their rows a few KB apart, a page each
 * on 4 KB pages. Freed with free(). */
static void *alloc_huge(size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const size_t huge = (size_t)2 << 20;
    if (bytes >= huge) {
        void *p = NULL;
        size_t rounded = (bytes + huge - 1) / huge * huge;
        if (posix_memalign(&p, huge, rounded) != 0) return NULL;
        madvise(p, rounded, MADV_HUGEPAGE); /* advice: without it, 4 KB pages */
        return p;
    }
#endif
    return malloc(bytes);
}

static void *carve(arena_t *a, size_t bytes) {
    size_t off = (a->used + 63) & ~(size_t)63; /* cache-line aligned */
    a->used = off + bytes;
    return a->base ? a->base + off : NULL;
}
#define CARVE(a, ptr, count) ((ptr) = carve((a), sizeof(*(ptr)) * (size_t)(count)))

static void plan_activations(lorac_train_pass_t *p, arena_t *a) {
    const lorac_model_config_t *c = &p->model->config;
    int64_t N = p->N, D = c->hidden_size, I = c->intermediate_size, H = c->n_heads;
    int64_t Q = H * c->head_dim, KV = (int64_t)c->n_kv_heads * c->head_dim;
    int64_t max_in = I > D ? I : D, max_r = 1;
    max_in = Q > max_in ? Q : max_in;
    for (int32_t l = 0; l < c->n_layers; l++) {
        layer_acts_t *s = &p->acts[l];
        CARVE(a, s->x_in, N * D); CARVE(a, s->rstd1, N); CARVE(a, s->xn1, N * D);
        CARVE(a, s->q, N * Q); CARVE(a, s->k, N * KV); CARVE(a, s->v, N * KV);
        CARVE(a, s->att, N * Q); CARVE(a, s->lse, N * H);
        CARVE(a, s->x_mid, N * D); CARVE(a, s->rstd2, N); CARVE(a, s->xn2, N * D);
        if (!c->plain_mlp) CARVE(a, s->gate, N * I); /* GPT-2: no gate */
        CARVE(a, s->up, N * I); CARVE(a, s->h, N * I);
        if (c->layer_norm) { CARVE(a, s->mean1, N); CARVE(a, s->mean2, N); }
        if (c->qk_norm) {
            CARVE(a, s->q_raw, N * Q); CARVE(a, s->k_raw, N * KV);
            CARVE(a, s->rstd_q, N * H); CARVE(a, s->rstd_k, N * c->n_kv_heads);
        }
        if (c->sandwich_norms) {
            CARVE(a, s->o_raw, N * D); CARVE(a, s->rstd_po, N);
            CARVE(a, s->m_raw, N * D); CARVE(a, s->rstd_pm, N);
        }
        for (int t = 0; t < LORAC_LORA_COUNT; t++) {
            const lorac_lora_module_t *m = p->layers[l].proj[t].lora;
            if (!m) continue;
            max_r = m->r > max_r ? m->r : max_r;
            CARVE(a, s->u[t], N * m->r);
            if (p->adapter->params.dropout > 0.0f && m->in_group) {
                /* a fused group (Phi-3's qkv_proj) drops its one input once, as PEFT's one module does */
                int size, first = lorac_lora_group(c, t, &size);
                s->keep[t] = s->keep[first];
                s->xdrop[t] = s->xdrop[first];
            } else if (p->adapter->params.dropout > 0.0f) {
                CARVE(a, s->keep[t], N * m->in); CARVE(a, s->xdrop[t], N * m->in);
            }
        }
    }
    CARVE(a, p->x_final, N * D); CARVE(a, p->rstd_f, N); CARVE(a, p->xn_f, N * D);
    if (c->layer_norm) CARVE(a, p->mean_f, N);
    CARVE(a, p->dres, N * D); CARVE(a, p->dres2, N * D); CARVE(a, p->dxn, N * D); CARVE(a, p->dxn_f, N * D);
    CARVE(a, p->tmp, N * D); CARVE(a, p->dh, N * I); CARVE(a, p->dup, N * I);
    if (!c->plain_mlp) CARVE(a, p->dgate, N * I);
    CARVE(a, p->datt, N * Q); CARVE(a, p->dq, N * Q); CARVE(a, p->dk, N * KV); CARVE(a, p->dv, N * KV);
    if (c->qk_norm) { CARVE(a, p->dq_raw, N * Q); CARVE(a, p->dk_raw, N * KV); }
    if (c->sandwich_norms) CARVE(a, p->d_post, N * D);
    /* du: lorac_lora_backward's scratch, (N, r) and dB's transposed copy
     * (r, out); no projection's out exceeds max_in */
    CARVE(a, p->du, N * max_r + max_r * max_in); CARVE(a, p->dx_lora, N * max_in);
    int64_t lr = loss_rows(p);
    CARVE(a, p->chunk_x, lr * D); CARVE(a, p->chunk_dx, lr * D);
    CARVE(a, p->chunk_logits, lr * (p->whole_rows ? c->vocab_size : loss_block_cols(c->vocab_size)));
    if (c->final_softcap > 0.0f) CARVE(a, p->chunk_capd, lr * c->vocab_size);
    CARVE(a, p->chunk_losses, lr); CARVE(a, p->chunk_targets, lr);
    CARVE(a, p->chunk_max, lr); CARVE(a, p->chunk_target_logit, lr);
    CARVE(a, p->chunk_others, lr); CARVE(a, p->chunk_wrow, D);
    CARVE(a, p->start, N); CARVE(a, p->rope_cs, N * c->head_dim);
    if (c->sliding_window) CARVE(a, p->start_window, N);
    if (p->model->inv_freq_local) CARVE(a, p->rope_cs_local, N * c->head_dim);
}

static lorac_status_t add_param(lorac_train_pass_t *p, const char *name, float *data, float *grad, int64_t n) {
    param_t *np = realloc(p->params, sizeof(param_t) * (size_t)(p->n_params + 1));
    if (!np) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    p->params = np;
    param_t *q = &p->params[p->n_params++];
    snprintf(q->name, sizeof q->name, "%s", name);
    q->data = data; q->grad = grad; q->n = n;
    return LORAC_STATUS_OK;
}

static const lorac_tensor_kind_t k_target_kind[LORAC_LORA_COUNT] = {
    LORAC_TENSOR_Q, LORAC_TENSOR_K, LORAC_TENSOR_V, LORAC_TENSOR_O, LORAC_TENSOR_GATE, LORAC_TENSOR_UP, LORAC_TENSOR_DOWN};
static const lorac_tensor_kind_t k_target_bias[LORAC_LORA_COUNT] = {
    LORAC_TENSOR_Q_BIAS, LORAC_TENSOR_K_BIAS, LORAC_TENSOR_V_BIAS, LORAC_TENSOR_O_BIAS,
    LORAC_TENSOR_GATE_BIAS, LORAC_TENSOR_UP_BIAS, LORAC_TENSOR_DOWN_BIAS};

static void base_layer(const lorac_model_t *m, int32_t l, train_layer_t *L) {
    const lorac_layer_weights_t *W = &m->layers[l];
    const lorac_wref_t *w[LORAC_LORA_COUNT] = {&W->wq, &W->wk, &W->wv, &W->wo, &W->w_gate, &W->w_up, &W->w_down};
    const float *b[LORAC_LORA_COUNT] = {W->bq, W->bk, W->bv, W->bo, W->b_gate, W->b_up, W->b_down};
    L->attn_norm = W->attn_norm;
    L->ffn_norm = W->ffn_norm;
    L->attn_norm_b = W->attn_norm_b;
    L->ffn_norm_b = W->ffn_norm_b;
    L->q_norm = W->q_norm;
    L->k_norm = W->k_norm;
    L->attn_post_norm = W->attn_post_norm;
    L->ffn_post_norm = W->ffn_post_norm;
    for (int t = 0; t < LORAC_LORA_COUNT; t++) {
        L->proj[t].w = *w[t];
        L->proj[t].bias = b[t];
        lorac_lora_target_dims(&m->config, (lorac_lora_target_t)t, &L->proj[t].in, &L->proj[t].out);
    }
}

/* With LoRA, the frozen f32 weights of the adapted layers' products and
 * the classifier are repacked once for the kernels (lorac_pack_weight), so
 * that no product gathers its panels from the weight's rows again, and
 * the mapped file's pages of each are handed back (lorac_model_release_weight):
 * memory stays at one copy. A tied classifier is also the embedding: the
 * step's embedding rows are then read from the repacked copy too
 * (embed_rows), so its pages go back as well. */
static lorac_status_t setup_packed(lorac_train_pass_t *p) {
    const lorac_model_config_t *c = &p->model->config;
    if (!lorac_kernels_have_packed()) return LORAC_STATUS_OK;
    int64_t total = 0;
    for (int32_t l = 0; l < c->n_layers; l++)
        for (int t = 0; t < LORAC_LORA_COUNT; t++) {
            const linear_t *q = &p->layers[l].proj[t];
            if (q->w.data && q->w.dtype == LORAC_DTYPE_F32) total += lorac_packed_weight_floats(q->out, q->in);
        }
    int pack_head = p->lm_head.dtype == LORAC_DTYPE_F32 && !p->whole_rows; /* loss_chunk_whole reads it as is */
    if (pack_head) total += lorac_packed_weight_floats(c->vocab_size, c->hidden_size);
    if (total == 0) return LORAC_STATUS_OK;
    float *P = alloc_huge(sizeof(float) * (size_t)total);
    if (!P) return lorac_error(LORAC_STATUS_NOMEM, "out of memory for the repacked weights (%.1f MB)",
                               (double)total * sizeof(float) / 1e6);
    p->packed_arena = P;
    for (int32_t l = 0; l < c->n_layers; l++)
        for (int t = 0; t < LORAC_LORA_COUNT; t++) {
            linear_t *q = &p->layers[l].proj[t];
            if (!q->w.data || q->w.dtype != LORAC_DTYPE_F32) continue; /* GPT-2 has no gate */
            lorac_pack_weight(P, q->w.data, q->out, q->in);
            lorac_model_release_weight(p->model, q->w.data, sizeof(float) * (size_t)q->out * (size_t)q->in);
            q->packed = P;
            P += lorac_packed_weight_floats(q->out, q->in);
        }
    if (pack_head) {
        lorac_pack_weight(P, p->lm_head.data, c->vocab_size, c->hidden_size);
        lorac_model_release_weight(p->model, p->lm_head.data,
                                   sizeof(float) * (size_t)c->vocab_size * (size_t)c->hidden_size);
        p->lm_head_packed = P;
    }
    return LORAC_STATUS_OK;
}

/* Full fine-tuning: f32 master copies of every weight, with gradients. */
static lorac_status_t setup_full(lorac_train_pass_t *p) {
    const lorac_model_t *m = p->model;
    const lorac_model_config_t *c = &m->config;
    int64_t D = c->hidden_size, V = c->vocab_size;
    /* count floats: each tensor twice (data + grad) */
    int64_t total = 2 * (V * D + D) + (c->tie_word_embeddings ? 0 : 2 * V * D);
    for (int32_t l = 0; l < c->n_layers; l++) {
        train_layer_t *L = &p->layers[l];
        total += 4 * D + (c->qk_norm ? 4 * (int64_t)c->head_dim : 0) + (c->sandwich_norms ? 4 * D : 0);
        for (int t = 0; t < LORAC_LORA_COUNT; t++)
            total += 2 * (int64_t)L->proj[t].in * L->proj[t].out + (L->proj[t].bias ? 2 * L->proj[t].out : 0);
    }
    float *f = calloc((size_t)total, sizeof(float));
    if (!f) return lorac_error(LORAC_STATUS_NOMEM, "out of memory for f32 master weights (%lld floats)", (long long)total);
    p->full_arena = f;
    char name[128];
    lorac_status_t s;
#define MASTER(WREF, COUNT, GRAD, KIND, LAYER)                                        \
    do {                                                                          \
        float *data_ = f; f += (COUNT);                                           \
        (GRAD) = f; f += (COUNT);                                                 \
        lorac_convert_to_f32(data_, (WREF).data, (WREF).dtype, (COUNT));          \
        (WREF).data = data_; (WREF).dtype = LORAC_DTYPE_F32;                      \
        lorac_tensor_name(c, (KIND), (LAYER), name, sizeof name);                 \
        if ((s = add_param(p, name, data_, (GRAD), (COUNT)))) return s;           \
    } while (0)
    MASTER(p->embed, V * D, p->d_embed, LORAC_TENSOR_EMBED, 0);
    for (int32_t l = 0; l < c->n_layers; l++) {
        train_layer_t *L = &p->layers[l];
        MASTER(L->attn_norm, D, L->d_attn_norm, LORAC_TENSOR_ATTN_NORM, l);
        for (int t = 0; t < LORAC_LORA_COUNT; t++) {
            linear_t *q = &p->layers[l].proj[t];
            if (c->fused_proj && (t == LORAC_LORA_K || t == LORAC_LORA_V || t == LORAC_LORA_UP)) continue;
            if (c->fused_proj && (t == LORAC_LORA_Q || t == LORAC_LORA_GATE)) {
                /* Phi-3's qkv_proj and gate_up_proj: one master and one
                 * gradient each, whose row blocks are the projections'
                 * (contiguous in the file too, so one conversion) */
                int parts = t == LORAC_LORA_Q ? 3 : 2;
                int64_t count = 0;
                for (int k = 0; k < parts; k++) count += (int64_t)q[k].in * q[k].out;
                lorac_wref_t fused = q->w;
                float *grad;
                MASTER(fused, count, grad, t == LORAC_LORA_Q ? LORAC_TENSOR_QKV : LORAC_TENSOR_GATE_UP, l);
                float *d = (float *)fused.data;
                for (int k = 0; k < parts; k++) {
                    q[k].w.data = d;
                    q[k].w.dtype = LORAC_DTYPE_F32;
                    q[k].dw = grad;
                    d += (int64_t)q[k].in * q[k].out;
                    grad += (int64_t)q[k].in * q[k].out;
                }
                continue;
            }
            MASTER(q->w, (int64_t)q->in * q->out, q->dw, k_target_kind[t], l);
            if (q->bias) {
                lorac_wref_t bref = {q->bias, LORAC_DTYPE_F32};
                MASTER(bref, q->out, q->db, k_target_bias[t], l);
                q->bias = bref.data;
            }
        }
        if (c->qk_norm) {
            MASTER(L->q_norm, c->head_dim, L->d_q_norm, LORAC_TENSOR_Q_NORM, l);
            MASTER(L->k_norm, c->head_dim, L->d_k_norm, LORAC_TENSOR_K_NORM, l);
        }
        MASTER(L->ffn_norm, D, L->d_ffn_norm, LORAC_TENSOR_FFN_NORM, l);
        if (c->sandwich_norms) {
            MASTER(L->attn_post_norm, D, L->d_attn_post_norm, LORAC_TENSOR_ATTN_POST_NORM, l);
            MASTER(L->ffn_post_norm, D, L->d_ffn_post_norm, LORAC_TENSOR_FFN_POST_NORM, l);
        }
    }
    MASTER(p->final_norm, D, p->d_final_norm, LORAC_TENSOR_FINAL_NORM, 0);
    if (c->tie_word_embeddings) {
        p->lm_head = p->embed;
        p->d_lm_head = p->d_embed;
    } else {
        MASTER(p->lm_head, V * D, p->d_lm_head, LORAC_TENSOR_LM_HEAD, 0);
    }
#undef MASTER
    return LORAC_STATUS_OK;
}

static lorac_status_t setup_lora(lorac_train_pass_t *p) {
    lorac_adapter_t *a = p->adapter;
    const lorac_model_config_t *c = &p->model->config;
    if (a->config.hidden_size != c->hidden_size || a->config.n_layers != c->n_layers ||
        a->config.intermediate_size != c->intermediate_size || a->config.n_heads != c->n_heads ||
        a->config.n_kv_heads != c->n_kv_heads || a->config.head_dim != c->head_dim)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "the adapter was made for a model of another shape");
    int64_t total = 0;
    for (int32_t i = 0; i < a->n_modules; i++) total += (int64_t)a->modules[i].r * (a->modules[i].in + a->modules[i].out);
    float *g = calloc((size_t)(total ? total : 1), sizeof(float));
    if (!g) return lorac_error(LORAC_STATUS_NOMEM, "out of memory for LoRA gradients");
    p->grad_arena = g;
    float *group_dA = NULL, *group_dB = NULL; /* of the current fused group (Phi-3) */
    for (int32_t i = 0; i < a->n_modules; i++) {
        lorac_lora_module_t *m = &a->modules[i];
        linear_t *q = &p->layers[m->layer].proj[m->target];
        q->lora = m;
        if (m->in_group) {
            /* the group's one A gathers every member's gradient (the
             * backward adds into dA); B's rows are the member's */
            q->dA = group_dA;
            q->dB = group_dB;
            group_dB += (int64_t)m->out * m->r;
            continue;
        }
        int64_t b_rows = m->group_out ? m->group_out : m->out;
        q->dA = group_dA = g; g += (int64_t)m->r * m->in;
        q->dB = g; g += b_rows * m->r;
        group_dB = q->dB + (int64_t)m->out * m->r;
        char module[96], name[128];
        lorac_status_t s;
        lorac_lora_module_path(&a->config, m->layer, m->target, module, sizeof module); /* PEFT's keys */
        snprintf(name, sizeof name, "base_model.model.%s.lora_A.weight", module);
        if ((s = add_param(p, name, m->A, q->dA, (int64_t)m->r * m->in))) return s;
        snprintf(name, sizeof name, "base_model.model.%s.lora_B.weight", module);
        if ((s = add_param(p, name, m->B, q->dB, b_rows * m->r))) return s;
    }
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_train_pass_init(const lorac_model_t *model, lorac_adapter_t *adapter,
                                     lorac_train_pass_params_t params, lorac_train_pass_t **out) {
    *out = NULL;
    if (params.batch < 1 || params.seq_len < 1)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "batch and seq_len must be positive");
    const lorac_model_config_t *c = &model->config;
    lorac_train_pass_t *p = calloc(1, sizeof *p);
    if (!p) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    p->model = model;
    p->adapter = adapter;
    p->B = params.batch;
    p->T = params.seq_len;
    p->N = (int64_t)params.batch * params.seq_len;
    p->layers = calloc((size_t)c->n_layers, sizeof *p->layers);
    p->acts = calloc((size_t)c->n_layers, sizeof *p->acts);
    lorac_status_t s = LORAC_STATUS_OK;
    if (!p->layers || !p->acts) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); goto fail; }
    for (int32_t l = 0; l < c->n_layers; l++) base_layer(model, l, &p->layers[l]);
    p->embed = model->embed;
    p->final_norm = model->final_norm;
    p->final_norm_b = model->final_norm_b;
    p->lm_head = model->lm_head;
    if (!adapter && c->arch == LORAC_ARCH_GPT2) {
        s = lorac_error(LORAC_STATUS_UNSUPPORTED, "full fine-tuning of %s is not supported: train a LoRA adapter", c->arch_name);
        goto fail;
    }
    if ((s = adapter ? setup_lora(p) : setup_full(p))) goto fail;
    p->whole_rows = p->d_lm_head || c->final_softcap > 0.0f;
    if (adapter && (s = setup_packed(p))) goto fail;
    /* Below the lowest adapted layer nothing has a gradient (LoRA keeps
     * the embedding frozen), so the backward pass ends there, as autograd
     * ends where no tensor needs a gradient (with --layers 12-21 on a
     * 22-layer model it covers 10 layers). */
    p->grad_floor = adapter ? c->n_layers : 0;
    if (adapter)
        for (int32_t i = 0; i < adapter->n_modules; i++)
            if (adapter->modules[i].layer < p->grad_floor) p->grad_floor = adapter->modules[i].layer;

    arena_t a = {NULL, 0};
    plan_activations(p, &a);
    a.base = alloc_huge(a.used);
    if (!a.base) {
        s = lorac_error(LORAC_STATUS_NOMEM, "out of memory for activations (%.1f MB for batch %d x %d)",
                        (double)a.used / 1e6, p->B, p->T);
        goto fail;
    }
    p->arena = a.base;
    a.used = 0;
    plan_activations(p, &a);
    p->att_threads = lorac_kernels_get_threads();
    p->att_scratch = malloc(sizeof(float) *
                            (size_t)lorac_attention_train_scratch_floats(p->T, c->head_dim, p->att_threads));
    if (!p->att_scratch) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); goto fail; }
    *out = p;
    return LORAC_STATUS_OK;
fail:
    lorac_train_pass_free(p);
    return s;
}

void lorac_train_pass_free(lorac_train_pass_t *p) {
    if (!p) return;
    free(p->layers); free(p->acts); free(p->arena); free(p->full_arena); free(p->grad_arena);
    free(p->att_scratch); free(p->params); free(p->packed_arena);
    free(p);
}

int32_t lorac_train_pass_n_params(const lorac_train_pass_t *p) { return p->n_params; }

void lorac_train_pass_param(lorac_train_pass_t *p, int32_t i, const char **name, float **data, float **grad, int64_t *n) {
    param_t *q = &p->params[i];
    if (name) *name = q->name;
    if (data) *data = q->data;
    if (grad) *grad = q->grad;
    if (n) *n = q->n;
}

void lorac_train_pass_zero_grad(lorac_train_pass_t *p) {
    for (int32_t i = 0; i < p->n_params; i++) memset(p->params[i].grad, 0, sizeof(float) * (size_t)p->params[i].n);
}

/* ---- phase timing -------------------------------------------------------------
 * One lap timer along the pass: lap() charges the time since the previous
 * lap (or the run's start) to a phase. Untimed, it costs a branch. */

static const char *const PHASE_NAMES[LORAC_PHASE_COUNT] = {
    "base forward", "base dx", "base dw", "lora", "attention", "rope", "rmsnorm", "swiglu",
    "embed/add/zero", "loss"};

const char *lorac_train_phase_name(lorac_train_phase_t phase) {
    return phase >= 0 && phase < LORAC_PHASE_COUNT ? PHASE_NAMES[phase] : "?";
}

void lorac_train_pass_time_phases(lorac_train_pass_t *p, double *seconds, double *flops) {
    p->phase_seconds = seconds;
    p->phase_flops = seconds ? flops : NULL;
}

/* lap() for a product phase: also counts its flops, 2·m·n·k. */
static void lap_product(lorac_train_pass_t *p, lorac_train_phase_t phase, int64_t m, int64_t n, int64_t k) {
    if (!p->phase_seconds) return;
    double now = lorac_seconds();
    p->phase_seconds[phase] += now - p->lap_start;
    if (p->phase_flops) p->phase_flops[phase] += 2.0 * (double)m * (double)n * (double)k;
    p->lap_start = now;
}

static void lap(lorac_train_pass_t *p, lorac_train_phase_t phase) { lap_product(p, phase, 0, 0, 0); }

/* ---- the layer pairs -------------------------------------------------------- */

// out (N,out) = x·Wᵀ + b (+ s·dropout(x)·Aᵀ·Bᵀ)
static void linear_forward(lorac_train_pass_t *p, const linear_t *q, float *out, const float *x, layer_acts_t *s,
                           int t, int64_t N, float dropout, lorac_rng_t *rng) {
    if (!q->lora) {
        lorac_matmul_forward_train(out, x, q->w.data, q->w.dtype, q->packed, q->bias, N, q->in, q->out, NULL, NULL,
                                   0.0f, 0);
        lap_product(p, LORAC_PHASE_BASE_FORWARD, N, q->in, q->out);
        return;
    }
    const float *xl = x;
    if (dropout > 0.0f && s->xdrop[t] && q->lora->in_group) {
        xl = s->xdrop[t]; /* the mask and dropped input of the group's first module, on the same input */
    } else if (dropout > 0.0f && s->xdrop[t]) {
        /* inverted dropout, as torch.nn.Dropout: keep with 1-p, scale by 1/(1-p);
         * without an rng (evaluation) every element is kept unscaled */
        float keep_scale = rng ? 1.0f / (1.0f - dropout) : 1.0f;
        int64_t n = N * q->in;
        for (int64_t i = 0; i < n; i++) {
            uint8_t keep = rng ? lorac_rng_float(rng) >= dropout : 1;
            s->keep[t][i] = keep;
            s->xdrop[t][i] = keep ? x[i] * keep_scale : 0.0f;
        }
        xl = s->xdrop[t];
    }
    /* the adapter's u = xl·Aᵀ, then the base product with s·u·Bᵀ added
     * to each output before it is stored (the bits of the two after) */
    lorac_lora_shrink(s->u[t], xl, q->lora, N);
    lap(p, LORAC_PHASE_LORA);
    lorac_matmul_forward_train(out, x, q->w.data, q->w.dtype, q->packed, q->bias, N, q->in, q->out, s->u[t],
                               q->lora->B, q->lora->scale, q->lora->r);
    lap_product(p, LORAC_PHASE_BASE_FORWARD, N, q->in, q->out);
}

// dx (N,in) += dout·W (+ LoRA's share), or = with set_dx (the first
// gradient into dx: no zeroing pass); full: dW += doutᵀ·x, db += Σ dout;
// LoRA: dA, dB. dx NULL: only the weight gradients (nothing reads the input's).
static void linear_backward(lorac_train_pass_t *p, const linear_t *q, float *dx, bool set_dx, const float *dout,
                            const float *x, layer_acts_t *s, int t, float dropout, int has_rng) {
    int64_t N = p->N;
    const float *x_lora = q->lora && dropout > 0.0f && s->xdrop[t] ? s->xdrop[t] : x; /* the adapter's input */
    /* Without dropout's mask, the adapter's dA, dB and du = s·dy·B come
     * first, and dx's base product adds du·A to each element before it is
     * stored (the bits of the two after). */
    const lorac_lora_module_t *fused = dx && q->lora && x_lora == x ? q->lora : NULL;
    if (fused) {
        lorac_lora_backward(NULL, q->dA, q->dB, p->du, dout, x, s->u[t], fused, N);
        lap(p, LORAC_PHASE_LORA);
    }
    if (dx) {
        lorac_matmul_backward_input_train(dx, set_dx, dout, q->w.data, q->w.dtype, q->packed, N, q->in, q->out,
                                          fused ? p->du : NULL, fused ? fused->A : NULL, fused ? fused->r : 0);
        lap_product(p, LORAC_PHASE_BASE_DX, N, q->in, q->out);
    }
    if (q->dw) {
        lorac_matmul_backward_weight(q->dw, q->db, dout, x, N, q->in, q->out);
        lap_product(p, LORAC_PHASE_BASE_DW, N, q->in, q->out);
    }
    if (!q->lora || fused) return;
    if (dx && x_lora != x) {
        /* gradient through the dropout mask: d x = keep/(1-p) · d xdrop */
        int64_t n = N * q->in;
        memset(p->dx_lora, 0, sizeof(float) * (size_t)n);
        lorac_lora_backward(p->dx_lora, q->dA, q->dB, p->du, dout, x_lora, s->u[t], q->lora, N);
        float keep_scale = has_rng ? 1.0f / (1.0f - dropout) : 1.0f;
        for (int64_t i = 0; i < n; i++) if (s->keep[t][i]) dx[i] += p->dx_lora[i] * keep_scale;
    } else {
        lorac_lora_backward(dx, q->dA, q->dB, p->du, dout, x_lora, s->u[t], q->lora, N);
    }
    lap(p, LORAC_PHASE_LORA);
}

/* out = a + s·b; s is 1 but for Granite's residual_multiplier (and then a + b exactly) */
static void add_into(float *out, const float *a, const float *b, float s, int64_t n) {
    if (s == 1.0f) {
        for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
    } else {
        for (int64_t i = 0; i < n; i++) out[i] = a[i] + s * b[i];
    }
}


/* The gradient a block's output gets from dres: dres itself, or Granite's
 * residual_multiplier times it (in scratch). */
static const float *block_grad(const lorac_train_pass_t *p, const float *dres, float *scratch, int64_t n) {
    float s = p->model->config.residual_multiplier;
    if (s == 1.0f) return dres;
    for (int64_t i = 0; i < n; i++) scratch[i] = s * dres[i];
    return scratch;
}

/* out = rmsnorm(x) with the weight w (read as 1 + w for Gemma), rstd kept; T rows of C */
static void norm_forward(const lorac_train_pass_t *p, float *out, float *rstd, const float *x, const lorac_wref_t *w,
                         int64_t T, int64_t C) {
    const lorac_model_config_t *c = &p->model->config;
    lorac_rmsnorm_forward_offset(out, rstd, x, w->data, w->dtype, c->norm_offset, c->rms_norm_eps, T, C);
}

/* dx += its backward given dout; dw += the weight's gradient when dw is given */
static void norm_backward(const lorac_train_pass_t *p, float *dx, float *dw, const float *dout, const float *x,
                          const lorac_wref_t *w, const float *rstd, int64_t T, int64_t C) {
    lorac_rmsnorm_backward_offset(dx, dw, dout, x, w->data, w->dtype, p->model->config.norm_offset, rstd, T, C);
}

/* A block's input norm: norm_forward, or GPT-2's LayerNorm (f32 w, bias b,
 * its row means kept too) */
static void block_norm_forward(const lorac_train_pass_t *p, float *out, float *mean, float *rstd, const float *x,
                               const lorac_wref_t *w, const float *b, int64_t T, int64_t C) {
    const lorac_model_config_t *c = &p->model->config;
    if (c->layer_norm) lorac_layernorm_forward(out, mean, rstd, x, w->data, b, c->rms_norm_eps, T, C);
    else norm_forward(p, out, rstd, x, w, T, C);
}

/* Its backward: dx += ...; the LayerNorm's weight and bias stay frozen
 * (GPT-2 trains LoRA only) */
static void block_norm_backward(const lorac_train_pass_t *p, float *dx, float *dw, const float *dout, const float *x,
                                const lorac_wref_t *w, const float *mean, const float *rstd, int64_t T, int64_t C) {
    if (p->model->config.layer_norm) lorac_layernorm_backward(dx, dout, x, w->data, mean, rstd, T, C);
    else norm_backward(p, dx, dw, dout, x, w, rstd, T, C);
}

/* The gradient of a block's product given dout, that of its sandwich norm's
 * output (raw: the product, rstd its norm's), in d_post; dw += the norm
 * weight's gradient when given. */
static const float *post_norm_backward(lorac_train_pass_t *p, const float *dout, const float *raw, const lorac_wref_t *w,
                                       float *dw, const float *rstd) {
    int64_t D = p->model->config.hidden_size;
    memset(p->d_post, 0, sizeof(float) * (size_t)(p->N * D));
    norm_backward(p, p->d_post, dw, dout, raw, w, rstd, p->N, D);
    return p->d_post;
}

/* The rotary table of layer l: Gemma 3's windowed layers have their own. */
static const float *layer_rope(const lorac_train_pass_t *p, int32_t l) {
    return p->rope_cs_local && lorac_model_layer_window(&p->model->config, l) ? p->rope_cs_local : p->rope_cs;
}

static void layer_forward(lorac_train_pass_t *p, int32_t l, float *x_out, float dropout,
                          lorac_rng_t *rng) {
    const lorac_model_t *m = p->model;
    const lorac_model_config_t *c = &m->config;
    train_layer_t *L = &p->layers[l];
    layer_acts_t *s = &p->acts[l];
    int64_t N = p->N, D = c->hidden_size, H = c->n_heads, KVH = c->n_kv_heads, hd = c->head_dim;

    block_norm_forward(p, s->xn1, s->mean1, s->rstd1, s->x_in, &L->attn_norm, L->attn_norm_b, N, D);
    lap(p, LORAC_PHASE_NORMS);
    linear_forward(p, &L->proj[LORAC_LORA_Q], c->qk_norm ? s->q_raw : s->q, s->xn1, s, LORAC_LORA_Q, N, dropout, rng);
    linear_forward(p, &L->proj[LORAC_LORA_K], c->qk_norm ? s->k_raw : s->k, s->xn1, s, LORAC_LORA_K, N, dropout, rng);
    linear_forward(p, &L->proj[LORAC_LORA_V], s->v, s->xn1, s, LORAC_LORA_V, N, dropout, rng);
    if (c->qk_norm) { /* Qwen3: each head of q and of k normalised, one weight for every head */
        norm_forward(p, s->q, s->rstd_q, s->q_raw, &L->q_norm, N * H, hd);
        norm_forward(p, s->k, s->rstd_k, s->k_raw, &L->k_norm, N * KVH, hd);
        lap(p, LORAC_PHASE_NORMS);
    }
    if (lorac_model_layer_has_rope(c, l)) { /* not in SmolLM3's NoPE layers */
        lorac_rope_apply_partial(s->q, layer_rope(p, l), N, H, hd, c->rotary_dim, 1);
        lorac_rope_apply_partial(s->k, layer_rope(p, l), N, KVH, hd, c->rotary_dim, 1);
    }
    float qs = lorac_model_layer_query_scale(c, l); /* Granite's, Gemma's, GPT-2's score scales */
    if (qs != 1.0f) lorac_scale(s->q, qs, N * H * hd);
    lap(p, LORAC_PHASE_ROPE);
    lorac_attention_train_forward(s->att, s->lse, p->att_scratch, s->q, s->k, s->v, layer_start(p, l), p->B, p->T, H, KVH,
                                  hd, c->attn_softcap);
    lap(p, LORAC_PHASE_ATTENTION);
    /* with sandwich norms the block's product is kept and normalised into tmp */
    linear_forward(p, &L->proj[LORAC_LORA_O], c->sandwich_norms ? s->o_raw : p->tmp, s->att, s, LORAC_LORA_O, N, dropout,
                   rng);
    if (c->sandwich_norms) norm_forward(p, p->tmp, s->rstd_po, s->o_raw, &L->attn_post_norm, N, D);
    add_into(s->x_mid, s->x_in, p->tmp, c->residual_multiplier, N * D);
    lap(p, LORAC_PHASE_ELEMENTWISE);

    block_norm_forward(p, s->xn2, s->mean2, s->rstd2, s->x_mid, &L->ffn_norm, L->ffn_norm_b, N, D);
    lap(p, LORAC_PHASE_NORMS);
    if (!c->plain_mlp) linear_forward(p, &L->proj[LORAC_LORA_GATE], s->gate, s->xn2, s, LORAC_LORA_GATE, N, dropout, rng);
    linear_forward(p, &L->proj[LORAC_LORA_UP], s->up, s->xn2, s, LORAC_LORA_UP, N, dropout, rng);
    if (c->plain_mlp) lorac_gelu_forward(s->h, s->up, N * c->intermediate_size); /* GPT-2: gelu(up) */
    else if (c->act == LORAC_ACT_GELU_TANH) lorac_geglu_forward(s->h, s->gate, s->up, N, c->intermediate_size);
    else lorac_swiglu_forward(s->h, s->gate, s->up, N, c->intermediate_size);
    lap(p, LORAC_PHASE_SWIGLU);
    linear_forward(p, &L->proj[LORAC_LORA_DOWN], c->sandwich_norms ? s->m_raw : p->tmp, s->h, s, LORAC_LORA_DOWN, N,
                   dropout, rng);
    if (c->sandwich_norms) norm_forward(p, p->tmp, s->rstd_pm, s->m_raw, &L->ffn_post_norm, N, D);
    add_into(x_out, s->x_mid, p->tmp, c->residual_multiplier, N * D);
    lap(p, LORAC_PHASE_ELEMENTWISE);
}

/* dres (N,D) holds dLoss/d(layer output); on return it holds dLoss/d(x_in),
 * except in the lowest layer with a gradient, whose input gradient nothing
 * reads (see the end). */
static void layer_backward(lorac_train_pass_t *p, int32_t l, float *dres, float dropout, int has_rng) {
    const lorac_model_t *m = p->model;
    const lorac_model_config_t *c = &m->config;
    train_layer_t *L = &p->layers[l];
    layer_acts_t *s = &p->acts[l];
    int64_t N = p->N, D = c->hidden_size, I = c->intermediate_size, H = c->n_heads, KVH = c->n_kv_heads, hd = c->head_dim;

    /* MLP: out = x_mid + r·down(silu(gate(xn2)) * up(xn2)), r = 1 but for Granite; Gemma: gelu, and the
     * down product through its post norm */
    const float *d_down = block_grad(p, dres, p->dres2, N * D);
    if (c->sandwich_norms) d_down = post_norm_backward(p, d_down, s->m_raw, &L->ffn_post_norm, L->d_ffn_post_norm, s->rstd_pm);
    linear_backward(p, &L->proj[LORAC_LORA_DOWN], p->dh, true, d_down, s->h, s, LORAC_LORA_DOWN, dropout, has_rng);
    if (c->plain_mlp) lorac_gelu_backward(p->dup, p->dh, s->up, N * I);
    else if (c->act == LORAC_ACT_GELU_TANH) lorac_geglu_backward(p->dgate, p->dup, p->dh, s->gate, s->up, N, I);
    else lorac_swiglu_backward(p->dgate, p->dup, p->dh, s->gate, s->up, N, I);
    lap(p, LORAC_PHASE_SWIGLU);
    if (!c->plain_mlp)
        linear_backward(p, &L->proj[LORAC_LORA_GATE], p->dxn, true, p->dgate, s->xn2, s, LORAC_LORA_GATE, dropout, has_rng);
    linear_backward(p, &L->proj[LORAC_LORA_UP], p->dxn, c->plain_mlp, p->dup, s->xn2, s, LORAC_LORA_UP, dropout, has_rng);
    /* residual: dres already holds d x_mid's direct share */
    block_norm_backward(p, dres, L->d_ffn_norm, p->dxn, s->x_mid, &L->ffn_norm, s->mean2, s->rstd2, N, D);
    lap(p, LORAC_PHASE_NORMS);

    /* attention: x_mid = x_in + o(attention(rope(q), rope(k), v)), q and k through their norms first with qk_norm,
     * o through its post norm with sandwich norms */
    const float *d_o = block_grad(p, dres, p->dres2, N * D);
    if (c->sandwich_norms) d_o = post_norm_backward(p, d_o, s->o_raw, &L->attn_post_norm, L->d_attn_post_norm, s->rstd_po);
    linear_backward(p, &L->proj[LORAC_LORA_O], p->datt, true, d_o, s->att, s, LORAC_LORA_O, dropout, has_rng);
    lorac_attention_train_backward(p->dq, p->dk, p->dv, p->att_scratch, p->datt, s->q, s->k, s->v, s->att, s->lse,
                                   layer_start(p, l), p->B, p->T, H, KVH, hd, c->attn_softcap);
    lap(p, LORAC_PHASE_ATTENTION);
    float qs = lorac_model_layer_query_scale(c, l);
    if (qs != 1.0f) lorac_scale(p->dq, qs, N * H * hd); /* q was scaled after rotary */
    if (lorac_model_layer_has_rope(c, l)) {
        lorac_rope_apply_partial(p->dq, layer_rope(p, l), N, H, hd, c->rotary_dim, -1);
        lorac_rope_apply_partial(p->dk, layer_rope(p, l), N, KVH, hd, c->rotary_dim, -1);
    }
    lap(p, LORAC_PHASE_ROPE);
    const float *dq = p->dq, *dk = p->dk; /* the gradients of q and k as projected */
    if (c->qk_norm) {
        memset(p->dq_raw, 0, sizeof(float) * (size_t)(N * H * hd));
        memset(p->dk_raw, 0, sizeof(float) * (size_t)(N * KVH * hd));
        norm_backward(p, p->dq_raw, L->d_q_norm, p->dq, s->q_raw, &L->q_norm, s->rstd_q, N * H, hd);
        norm_backward(p, p->dk_raw, L->d_k_norm, p->dk, s->k_raw, &L->k_norm, s->rstd_k, N * KVH, hd);
        dq = p->dq_raw;
        dk = p->dk_raw;
        lap(p, LORAC_PHASE_NORMS);
    }
    /* Below the lowest layer with a gradient (the first layer's input is
     * the embedding lookup) nothing reads d x_in when the embedding and
     * this norm are frozen (LoRA): q, k and v give only their LoRA
     * gradients and the norm's backward is skipped. */
    float *dxn = l > p->grad_floor || p->d_embed || L->d_attn_norm ? p->dxn : NULL;
    linear_backward(p, &L->proj[LORAC_LORA_Q], dxn, true, dq, s->xn1, s, LORAC_LORA_Q, dropout, has_rng);
    linear_backward(p, &L->proj[LORAC_LORA_K], dxn, false, dk, s->xn1, s, LORAC_LORA_K, dropout, has_rng);
    linear_backward(p, &L->proj[LORAC_LORA_V], dxn, false, p->dv, s->xn1, s, LORAC_LORA_V, dropout, has_rng);
    if (dxn)
        block_norm_backward(p, dres, L->d_attn_norm, dxn, s->x_in, &L->attn_norm, s->mean1, s->rstd1, N, D);
    lap(p, LORAC_PHASE_NORMS);
}

/* The loss of the chunk's n rows (chunk_x, chunk_targets) into
 * chunk_losses, and with grads dLoss/dx (times scale) into chunk_dx, by
 * blocks of the vocabulary (lorac_crossentropy_classifier): each block's
 * logits, its softmax terms, then their product with the block's rows of
 * the classifier, while those are still in cache. The classifier is read
 * once per chunk instead of twice, and its logits never reach DRAM. */
static void loss_chunk_online(lorac_train_pass_t *p, int64_t n, bool grads, float scale) {
    const lorac_model_config_t *c = &p->model->config;
    int64_t D = c->hidden_size, V = c->vocab_size, cols = loss_block_cols(V);
    size_t es = lorac_dtype_size(p->lm_head.dtype);
    for (int64_t t = 0; t < n; t++) p->chunk_max[t] = -INFINITY, p->chunk_others[t] = 0.0;
    if (grads) memset(p->chunk_dx, 0, sizeof(float) * (size_t)(n * D));
    lap(p, LORAC_PHASE_ELEMENTWISE);
    lorac_crossentropy_classifier(p->chunk_x, p->lm_head.data, p->lm_head.dtype, p->lm_head_packed, n, D, V, cols,
                                  p->chunk_targets, p->chunk_logits, p->chunk_max, p->chunk_others,
                                  p->chunk_target_logit, grads ? p->chunk_dx : NULL);
    for (int64_t t = 0; t < n; t++) {
        double mx = p->chunk_max[t], target = p->chunk_target_logit[t], others = p->chunk_others[t];
        double sum = others + exp(target - mx);
        p->chunk_losses[t] = (float)(mx + log(sum) - target);
        if (!grads) continue;
        /* dLoss/dx = Σ_v p_v·W_v − W_target = acc/S − (1 − p_target)·W_target */
        int64_t row = p->chunk_targets[t];
        if (p->lm_head_packed) /* the row from the repacked copy (the mapped one was handed back) */
            lorac_packed_weight_row(p->chunk_wrow, p->lm_head_packed, row, D);
        else
            lorac_convert_to_f32(p->chunk_wrow, (const char *)p->lm_head.data + (size_t)(row * D) * es, p->lm_head.dtype,
                                 D);
        float g = (float)(scale / sum), g_target = (float)(scale * others / sum);
        float *dx = p->chunk_dx + t * D;
        for (int64_t i = 0; i < D; i++) dx[i] = dx[i] * g - g_target * p->chunk_wrow[i];
    }
    lap_product(p, LORAC_PHASE_LOSS, grads ? 2 * n : n, D, V); /* logits, and dx */
}

/* loss_chunk_online's contract with whole rows of logits, for a trained
 * classifier (--full), whose weight gradient needs every probability
 * (d_lm_head += dlogitsᵀ·x), and for Gemma 2's soft-capped logits, whose
 * gradient goes through the cap: z = cap·tanh(l / cap), dz/dl = 1 − (z/cap)². */
static void loss_chunk_whole(lorac_train_pass_t *p, int64_t n, bool grads, float scale) {
    const lorac_model_config_t *c = &p->model->config;
    int64_t D = c->hidden_size, V = c->vocab_size;
    float cap = c->final_softcap;
    lorac_matmul_forward_batch(p->chunk_logits, p->chunk_x, p->lm_head.data, p->lm_head.dtype, NULL, n, D, V);
    if (cap > 0.0f) lorac_softcap(p->chunk_logits, cap, p->chunk_capd, n * V);
    lorac_crossentropy_forward_backward(p->chunk_logits, p->chunk_losses, p->chunk_targets, scale, n, V);
    if (grads) {
        if (cap > 0.0f)
            for (int64_t i = 0; i < n * V; i++) p->chunk_logits[i] *= p->chunk_capd[i];
        memset(p->chunk_dx, 0, sizeof(float) * (size_t)(n * D));
        lorac_matmul_backward_input(p->chunk_dx, p->chunk_logits, p->lm_head.data, p->lm_head.dtype, n, D, V);
        if (p->d_lm_head) lorac_matmul_backward_weight(p->d_lm_head, NULL, p->chunk_logits, p->chunk_x, n, D, V);
    }
    lap_product(p, LORAC_PHASE_LOSS, grads ? 3 * n : n, D, V); /* logits, and dx and the classifier's dw */
}

/* Classifier + cross-entropy in chunks of rows that have a target, fused
 * with their backward when grads is set: dxn_f rows get dLoss/dxn_f. */
static lorac_status_t loss_forward_backward(lorac_train_pass_t *p, const int32_t *targets, bool grads, double *loss_sum,
                                            int64_t *n_targets) {
    const lorac_model_config_t *c = &p->model->config;
    int64_t N = p->N, D = c->hidden_size, V = c->vocab_size, n_valid = 0;
    for (int64_t i = 0; i < N; i++) {
        if (targets[i] == -100) continue;
        if (targets[i] < 0 || targets[i] >= V)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "target %d at position %lld is outside the vocabulary", targets[i], (long long)i);
        n_valid++;
    }
    *loss_sum = 0.0;
    *n_targets = n_valid;
    if (grads) memset(p->dxn_f, 0, sizeof(float) * (size_t)(N * D));
    if (n_valid == 0) return LORAC_STATUS_OK;
    float scale = 1.0f / (float)n_valid; /* mean over the batch's targets */
    int64_t rows[LOSS_CHUNK];
    int64_t max_rows = loss_rows(p);
    int64_t i = 0;
    while (i < N) {
        int64_t n = 0;
        for (; i < N && n < max_rows; i++) {
            if (targets[i] == -100) continue;
            rows[n] = i;
            memcpy(p->chunk_x + n * D, p->xn_f + i * D, sizeof(float) * (size_t)D);
            p->chunk_targets[n] = targets[i];
            n++;
        }
        if (n == 0) break;
        lap(p, LORAC_PHASE_ELEMENTWISE);
        if (p->whole_rows) loss_chunk_whole(p, n, grads, scale);
        else loss_chunk_online(p, n, grads, scale);
        for (int64_t k = 0; k < n; k++) *loss_sum += p->chunk_losses[k];
        if (grads)
            for (int64_t k = 0; k < n; k++) memcpy(p->dxn_f + rows[k] * D, p->chunk_dx + k * D, sizeof(float) * (size_t)D);
        lap(p, LORAC_PHASE_ELEMENTWISE);
    }
    return LORAC_STATUS_OK;
}

/* x (N,D) = the embedding's rows of the N tokens: from the repacked
 * classifier where that is the embedding (tied, its mapped pages handed
 * back by setup_packed), else from the embedding itself. The same values. */
static void embed_rows(lorac_train_pass_t *p, float *x, const int32_t *tokens, int64_t N) {
    int64_t D = p->model->config.hidden_size;
    if (p->lm_head_packed && p->lm_head.data == p->embed.data) {
        for (int64_t i = 0; i < N; i++) lorac_packed_weight_row(x + i * D, p->lm_head_packed, tokens[i], D);
        return;
    }
    size_t row_bytes = (size_t)D * lorac_dtype_size(p->embed.dtype);
    for (int64_t i = 0; i < N; i++)
        lorac_convert_to_f32(x + i * D, (const uint8_t *)p->embed.data + (size_t)tokens[i] * row_bytes, p->embed.dtype, D);
}

/* GPT-2's learned positions: row pos[i] of the table added to x's row i
 * (through xn_f, not yet in use). */
static void add_positions(lorac_train_pass_t *p, float *x, const int32_t *pos, int64_t N) {
    int64_t D = p->model->config.hidden_size;
    const lorac_wref_t *table = &p->model->pos_embed;
    size_t row_bytes = (size_t)D * lorac_dtype_size(table->dtype);
    for (int64_t i = 0; i < N; i++) {
        float *row = p->xn_f + i * D;
        lorac_convert_to_f32(row, (const uint8_t *)table->data + (size_t)pos[i] * row_bytes, table->dtype, D);
        for (int64_t k = 0; k < D; k++) x[i * D + k] += row[k];
    }
}

lorac_status_t lorac_train_pass_run(lorac_train_pass_t *p, const int32_t *tokens, const int32_t *targets,
                                    const int32_t *pos, bool grads, lorac_rng_t *rng, double *loss_sum,
                                    int64_t *n_targets) {
    const lorac_model_t *m = p->model;
    const lorac_model_config_t *c = &m->config;
    int64_t N = p->N, D = c->hidden_size;
    if (p->phase_seconds) p->lap_start = lorac_seconds();
    for (int64_t i = 0; i < N; i++) {
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "token %d at position %lld is outside the vocabulary", tokens[i], (long long)i);
        int64_t t = i % p->T;
        if (pos[i] < 0 || pos[i] > t)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "position %d at row index %lld: must be in 0..%lld", pos[i], (long long)t, (long long)t);
        if (c->learned_positions && pos[i] >= c->max_position_embeddings)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "position %d is past the %d positions the model has learned (n_positions)",
                               pos[i], c->max_position_embeddings);
        p->start[i] = (int32_t)(t - pos[i]);
        /* a windowed layer's token sees the last sliding_window tokens of its example */
        if (p->start_window) {
            int64_t w = t + 1 - c->sliding_window;
            p->start_window[i] = w > p->start[i] ? (int32_t)w : p->start[i];
        }
    }
    int threads = lorac_kernels_get_threads();
    if (threads > p->att_threads) {
        float *grown = realloc(p->att_scratch,
                               sizeof(float) * (size_t)lorac_attention_train_scratch_floats(p->T, c->head_dim, threads));
        if (!grown) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
        p->att_scratch = grown;
        p->att_threads = threads;
    }
    float dropout = p->adapter ? p->adapter->params.dropout : 0.0f;
    if (!grads) rng = NULL;

    /* forward */
    lap(p, LORAC_PHASE_ELEMENTWISE);
    /* Phi-3's longrope: the long factors when the step's longest position
     * passes rope_original_max_position, as transformers decides from
     * position_ids */
    int32_t max_pos = 0;
    for (int64_t i = 0; m->inv_freq_long && i < N; i++) max_pos = pos[i] > max_pos ? pos[i] : max_pos;
    lorac_model_rope_table(m, p->rope_cs, pos, N,
                           m->inv_freq_long && lorac_model_rope_long(c, (int64_t)max_pos + 1) ? m->inv_freq_long : m->inv_freq);
    if (p->rope_cs_local) lorac_model_rope_table(m, p->rope_cs_local, pos, N, m->inv_freq_local);
    lap(p, LORAC_PHASE_ROPE);
    embed_rows(p, p->acts[0].x_in, tokens, N);
    if (c->embedding_multiplier != 1.0f) lorac_scale(p->acts[0].x_in, c->embedding_multiplier, N * D);
    if (c->learned_positions) add_positions(p, p->acts[0].x_in, pos, N);
    lap(p, LORAC_PHASE_ELEMENTWISE);
    for (int32_t l = 0; l < c->n_layers; l++)
        layer_forward(p, l, l + 1 < c->n_layers ? p->acts[l + 1].x_in : p->x_final, dropout, rng);
    block_norm_forward(p, p->xn_f, p->mean_f, p->rstd_f, p->x_final, &p->final_norm, p->final_norm_b, N, D);
    /* Granite's logits / logits_scaling: the classifier's input divided (the backward reads x_final, not xn_f) */
    if (c->logits_scaling != 1.0f) lorac_scale(p->xn_f, 1.0f / c->logits_scaling, N * D);
    lap(p, LORAC_PHASE_NORMS);
    lorac_status_t s = loss_forward_backward(p, targets, grads, loss_sum, n_targets);
    if (s || !grads || *n_targets == 0) return s;

    /* backward */
    memset(p->dres, 0, sizeof(float) * (size_t)(N * D));
    if (c->logits_scaling != 1.0f) lorac_scale(p->dxn_f, 1.0f / c->logits_scaling, N * D);
    lap(p, LORAC_PHASE_ELEMENTWISE);
    block_norm_backward(p, p->dres, p->d_final_norm, p->dxn_f, p->x_final, &p->final_norm, p->mean_f, p->rstd_f, N, D);
    lap(p, LORAC_PHASE_NORMS);
    for (int32_t l = c->n_layers - 1; l >= p->grad_floor; l--) layer_backward(p, l, p->dres, dropout, rng != NULL);
    if (p->d_embed) {
        float em = c->embedding_multiplier; /* 1 but for Granite and Gemma */
        for (int64_t i = 0; i < N; i++) {
            float *row = p->d_embed + (int64_t)tokens[i] * D;
            for (int64_t k = 0; k < D; k++) row[k] += em * p->dres[i * D + k];
        }
    }
    lap(p, LORAC_PHASE_ELEMENTWISE);
    return LORAC_STATUS_OK;
}
