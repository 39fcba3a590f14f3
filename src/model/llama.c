/* The LLaMA-family forward pass over a batch of tokens from one or more
 * sequences, with a per-sequence KV cache.
 *
 * Per layer (x is the residual stream, (T,D)):
 *   xn = rmsnorm(x) ; q,k,v = xn·Wqᵀ,Wkᵀ,Wvᵀ (+b) ; [Qwen3: rmsnorm each head of q, k]
 *   rope(q,k) [not in SmolLM3's NoPE layers] ; cache k,v
 *   x += attention(q, cache)·Woᵀ
 *   xn = rmsnorm(x) ; x += (silu(xn·Wgᵀ) * xn·Wuᵀ)·Wdᵀ
 * then logits = rmsnorm(x)·Wheadᵀ for the rows that want them. Granite
 * scales the embedding, each x += (times residual_multiplier), q (query_scale)
 * and the logits (1 / logits_scaling). Gemma 3 scales the embedding and q,
 * takes every norm's weight as (1 + w), normalises each block's output
 * before adding it to x (sandwich norms), uses gelu for silu, and gives
 * its windowed layers their own rotary base; Gemma 2 does the same but
 * the last, and soft-caps the attention scores and the logits. GPT-2
 * (config flags): LayerNorms with biases, learned positions added to the
 * embedding instead of rotary, x += down(gelu(up(xn))) with no gate. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lora/lora_internal.h"
#include "lorac/kernels.h"
#include "model/model_internal.h"

#define MAX_ADAPTERS 64
/* Most products computed in one call (q, k and v) */
#define PARTS_MAX 3

struct lorac_context {
    const lorac_model_t *model;
    lorac_context_params_t params;
    int64_t kv_dim;            /* n_kv_heads * head_dim */
    size_t kv_size;            /* bytes of one cached value (params.kv_dtype) */
    /* The KV cache, of params.kv_dtype: a sequence's rows are its layers'
     * in order, layer l's layer_rows[l] rows of kv_dim values from row
     * layer_off[l]. A layer without a window keeps n_ctx rows, position p in
     * row p. A windowed layer reads only its last sliding_window positions,
     * so it keeps fewer (window_rows, when that is below n_ctx): position p
     * in row p - win_lo[seq], where win_lo is the first position still held;
     * when a batch would run past the last row, the rows a window can still
     * need are moved to the front (compact_windows). */
    void *k_cache, *v_cache;
    int32_t *layer_rows;       /* (n_layers) */
    int64_t *layer_off;        /* (n_layers) */
    int64_t seq_rows;          /* Σ layer_rows: one sequence's rows */
    int32_t window_rows;       /* rows of a windowed layer (n_ctx when it would not save any) */
    int32_t *win_lo;           /* (n_seq) position in a windowed layer's first row */
    int32_t *seq_len;          /* (n_seq) cached positions */
    int32_t *seq_seen;         /* (n_seq) scratch for batch validation */
    /* (n_seq) Phi-3's longrope: 1 when a sequence's cached positions were
     * rotated with the long factors (it was longer than
     * rope_original_max_position when they were computed) */
    uint8_t *seq_long;
    int32_t *seq_rope_len;     /* (n_seq) lorac_context_set_seq_rope_len's, 0 when not given */
    /* activations for n_batch tokens */
    float *x, *xn, *q, *k, *v, *att, *proj, *gate, *up;
    /* (n_batch, head_dim): the batch's rotary cosines and sines (computed
     * in double), once a decode for every layer's q and k, as training
     * does; each layer used to compute its own */
    float *rope_cs;
    float *rope_cs_local;      /* the same from the model's inv_freq_local (Gemma 3's windowed layers); NULL: none */
    float *att_scratch;        /* attention scores of att_threads threads */
    int att_threads;
    const void **k_rows, **v_rows;
    int32_t *n_visible;
    /* unmerged LoRA adapters applied to every projection */
    const lorac_adapter_t *adapters[MAX_ADAPTERS];
    float adapter_scales[MAX_ADAPTERS];
    int32_t n_adapters;
    /* per-sequence adapters (mixed-adapter batches) */
    const lorac_adapter_t **seq_adapter; /* (n_seq) NULL = none */
    float *seq_scale;          /* (n_seq) */
    /* this decode's runs of consecutive tokens sharing a sequence adapter */
    int32_t n_runs;
    int64_t *run_start, *run_len;      /* (n_batch) */
    const lorac_adapter_t **run_adapter; /* (n_batch) */
    float *run_scale;          /* (n_batch) */
    /* the LoRA terms of one product's parts (up to PARTS_MAX), rebuilt for
     * each, and the scratch for their shrink results (grown per batch) */
    lorac_lora_segment_t *lora_segs; /* (PARTS_MAX * (MAX_ADAPTERS + n_batch)) */
    float *lora_u;
    int64_t lora_u_cap;
};

lorac_context_params_t lorac_context_default_params(void) {
    lorac_context_params_t p = {.n_ctx = 2048, .n_seq = 1, .n_batch = 512};
    return p;
}

static float *alloc_floats(int64_t n, int *failed) {
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!p) *failed = 1;
    return p;
}

lorac_status_t lorac_context_init(const lorac_model_t *model, lorac_context_params_t p, lorac_context_t **out) {
    *out = NULL;
    const lorac_model_config_t *c = &model->config;
    if (p.n_ctx < 1 || p.n_seq < 1 || p.n_batch < 1)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "context: n_ctx, n_seq and n_batch must be positive");
    if (p.kv_dtype != LORAC_DTYPE_F32 && p.kv_dtype != LORAC_DTYPE_BF16 && p.kv_dtype != LORAC_DTYPE_F16)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "context: KV cache dtype %s (F32, BF16 or F16)",
                           lorac_dtype_name(p.kv_dtype) ? lorac_dtype_name(p.kv_dtype) : "out of range");
    lorac_context_t *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return lorac_error(LORAC_STATUS_NOMEM, "out of memory for the context");
    ctx->model = model;
    ctx->params = p;
    ctx->kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
    ctx->kv_size = lorac_dtype_size(p.kv_dtype);
    int64_t B = p.n_batch, D = c->hidden_size, Q = (int64_t)c->n_heads * c->head_dim;
    int failed = 0;
    ctx->layer_rows = malloc(sizeof(int32_t) * (size_t)c->n_layers);
    ctx->layer_off = malloc(sizeof(int64_t) * (size_t)c->n_layers);
    ctx->win_lo = calloc((size_t)p.n_seq, sizeof(int32_t));
    if (!ctx->layer_rows || !ctx->layer_off || !ctx->win_lo) {
        lorac_context_free(ctx);
        return lorac_error(LORAC_STATUS_NOMEM, "out of memory for the context");
    }
    /* A batch's first token at position p0 needs positions p0 - W + 1 ..,
     * and the batch writes up to n_batch positions from p0 before any is
     * read: W + n_batch - 1 rows at once. The slack past that is how many
     * positions go by between two moves of the last W - 1 rows to the
     * front: one row moved a token for W <= 256, 16 at W = 4096, where each
     * token's attention reads 4096 rows a layer. */
    int64_t W = c->sliding_window, slack = W < 256 ? W : 256;
    int64_t wrows = W + p.n_batch - 1 + slack;
    ctx->window_rows = W > 0 && wrows < p.n_ctx ? (int32_t)wrows : p.n_ctx;
    ctx->seq_rows = 0;
    for (int32_t l = 0; l < c->n_layers; l++) {
        ctx->layer_rows[l] = lorac_model_layer_window(c, l) ? ctx->window_rows : p.n_ctx;
        ctx->layer_off[l] = ctx->seq_rows;
        ctx->seq_rows += ctx->layer_rows[l];
    }
    int64_t cache = (int64_t)p.n_seq * ctx->seq_rows * ctx->kv_dim;
    ctx->k_cache = malloc(ctx->kv_size * (size_t)cache);
    ctx->v_cache = malloc(ctx->kv_size * (size_t)cache);
    if (!ctx->k_cache || !ctx->v_cache) failed = 1;
    ctx->x = alloc_floats(B * D, &failed);
    ctx->xn = alloc_floats(B * D, &failed);
    ctx->q = alloc_floats(B * Q, &failed);
    ctx->k = alloc_floats(B * ctx->kv_dim, &failed);
    ctx->v = alloc_floats(B * ctx->kv_dim, &failed);
    ctx->att = alloc_floats(B * Q, &failed);
    ctx->proj = alloc_floats(B * D, &failed);
    ctx->gate = alloc_floats(B * c->intermediate_size, &failed);
    ctx->up = alloc_floats(B * c->intermediate_size, &failed);
    ctx->rope_cs = alloc_floats(B * c->head_dim, &failed); /* rotary_dim <= head_dim per token */
    if (model->inv_freq_local) ctx->rope_cs_local = alloc_floats(B * c->head_dim, &failed);
    /* one score row per thread the kernels may use (grown in decode if the
     * thread count is raised later) */
    ctx->att_threads = lorac_kernels_get_threads();
    ctx->att_scratch = alloc_floats(lorac_attention_scratch_floats(p.n_ctx, ctx->att_threads), &failed);
    ctx->k_rows = malloc(sizeof(void *) * (size_t)B);
    ctx->v_rows = malloc(sizeof(void *) * (size_t)B);
    ctx->n_visible = malloc(sizeof(int32_t) * (size_t)B);
    ctx->seq_len = calloc((size_t)p.n_seq, sizeof(int32_t));
    ctx->seq_seen = calloc((size_t)p.n_seq, sizeof(int32_t));
    ctx->seq_long = calloc((size_t)p.n_seq, 1);
    ctx->seq_rope_len = calloc((size_t)p.n_seq, sizeof(int32_t));
    ctx->seq_adapter = calloc((size_t)p.n_seq, sizeof *ctx->seq_adapter);
    ctx->seq_scale = calloc((size_t)p.n_seq, sizeof(float));
    ctx->run_start = malloc(sizeof(int64_t) * (size_t)B);
    ctx->run_len = malloc(sizeof(int64_t) * (size_t)B);
    ctx->run_adapter = malloc(sizeof *ctx->run_adapter * (size_t)B);
    ctx->run_scale = malloc(sizeof(float) * (size_t)B);
    ctx->lora_segs = malloc(sizeof *ctx->lora_segs * (size_t)(PARTS_MAX * (MAX_ADAPTERS + B)));
    if (failed || !ctx->k_rows || !ctx->v_rows || !ctx->n_visible || !ctx->seq_len || !ctx->seq_seen || !ctx->seq_long || !ctx->seq_rope_len ||
        !ctx->seq_adapter || !ctx->seq_scale || !ctx->run_start || !ctx->run_len || !ctx->run_adapter ||
        !ctx->run_scale || !ctx->lora_segs) {
        lorac_context_free(ctx);
        return lorac_error(LORAC_STATUS_NOMEM, "out of memory for the KV cache and activations (%d sequences of %d positions, batch %d)",
                           p.n_seq, p.n_ctx, p.n_batch);
    }
    *out = ctx;
    return LORAC_STATUS_OK;
}

void lorac_context_free(lorac_context_t *ctx) {
    if (!ctx) return;
    free(ctx->k_cache); free(ctx->v_cache);
    free(ctx->layer_rows); free(ctx->layer_off); free(ctx->win_lo);
    free(ctx->x); free(ctx->xn); free(ctx->q); free(ctx->k); free(ctx->v);
    free(ctx->att); free(ctx->proj); free(ctx->gate); free(ctx->up); free(ctx->rope_cs); free(ctx->rope_cs_local);
    free(ctx->att_scratch);
    free(ctx->k_rows); free(ctx->v_rows); free(ctx->n_visible);
    free(ctx->seq_len); free(ctx->seq_seen); free(ctx->seq_long); free(ctx->seq_rope_len);
    free(ctx->seq_adapter); free(ctx->seq_scale);
    free(ctx->run_start); free(ctx->run_len); free(ctx->run_adapter); free(ctx->run_scale);
    free(ctx->lora_segs); free(ctx->lora_u);
    free(ctx);
}

static bool adapter_fits(const lorac_model_config_t *c, const lorac_adapter_t *a) {
    const lorac_model_config_t *ac = &a->config;
    return ac->hidden_size == c->hidden_size && ac->n_layers == c->n_layers &&
           ac->intermediate_size == c->intermediate_size && ac->n_heads == c->n_heads &&
           ac->n_kv_heads == c->n_kv_heads && ac->head_dim == c->head_dim;
}

static int32_t adapter_max_rank(const lorac_adapter_t *a) {
    int32_t max_r = 0;
    for (int32_t k = 0; k < a->n_modules; k++) max_r = a->modules[k].r > max_r ? a->modules[k].r : max_r;
    return max_r;
}

lorac_status_t lorac_context_set_seq_adapter(lorac_context_t *ctx, int32_t seq_id, const lorac_adapter_t *adapter,
                                             float scale) {
    if (seq_id < 0 || seq_id >= ctx->params.n_seq)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "sequence id %d is outside 0..%d", seq_id, ctx->params.n_seq - 1);
    if (adapter && !adapter_fits(&ctx->model->config, adapter))
        return lorac_error(LORAC_STATUS_INVALID_ARG, "the adapter was made for a model of another shape");
    if (!isfinite(scale)) return lorac_error(LORAC_STATUS_INVALID_ARG, "adapter scale must be finite");
    ctx->seq_adapter[seq_id] = adapter;
    ctx->seq_scale[seq_id] = scale;
    return LORAC_STATUS_OK;
}

/* Splits the batch into runs of consecutive tokens whose sequences carry the
 * same adapter and scale (per-sequence LoRA segments), and makes sure the
 * shrink scratch holds one product's results: for each of its parts, every
 * row at each attached adapter's largest rank, and each run's rows at its
 * adapter's. */
static lorac_status_t plan_seq_adapters(lorac_context_t *ctx, const lorac_batch_t *b) {
    ctx->n_runs = 0;
    int64_t per_part = 0;
    for (int32_t i = 0; i < ctx->n_adapters; i++) per_part += (int64_t)b->n_tokens * adapter_max_rank(ctx->adapters[i]);
    for (int32_t t = 0; t < b->n_tokens; t++) {
        const lorac_adapter_t *a = ctx->seq_adapter[b->seq_id[t]];
        float s = ctx->seq_scale[b->seq_id[t]];
        if (!a || s == 0.0f) continue;
        per_part += adapter_max_rank(a);
        int32_t n = ctx->n_runs;
        if (n > 0 && ctx->run_adapter[n - 1] == a && ctx->run_scale[n - 1] == s &&
            ctx->run_start[n - 1] + ctx->run_len[n - 1] == t) {
            ctx->run_len[n - 1]++;
            continue;
        }
        ctx->run_start[n] = t;
        ctx->run_len[n] = 1;
        ctx->run_adapter[n] = a;
        ctx->run_scale[n] = s;
        ctx->n_runs++;
    }
    int64_t need = PARTS_MAX * per_part;
    if (need > ctx->lora_u_cap) {
        float *u = realloc(ctx->lora_u, sizeof(float) * (size_t)need);
        if (!u) return lorac_error(LORAC_STATUS_NOMEM, "out of memory for adapter scratch");
        ctx->lora_u = u;
        ctx->lora_u_cap = need;
    }
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_context_set_adapters(lorac_context_t *ctx, const lorac_adapter_t *const *adapters,
                                          const float *scales, int32_t n) {
    const lorac_model_config_t *c = &ctx->model->config;
    if (n < 0 || n > MAX_ADAPTERS) return lorac_error(LORAC_STATUS_INVALID_ARG, "at most %d adapters at once", MAX_ADAPTERS);
    for (int32_t i = 0; i < n; i++) {
        if (!adapter_fits(c, adapters[i]))
            return lorac_error(LORAC_STATUS_INVALID_ARG, "adapter %d was made for a model of another shape", i);
        if (!isfinite(scales[i])) return lorac_error(LORAC_STATUS_INVALID_ARG, "adapter scale must be finite");
    }
    for (int32_t i = 0; i < n; i++) { ctx->adapters[i] = adapters[i]; ctx->adapter_scales[i] = scales[i]; }
    ctx->n_adapters = n;
    return LORAC_STATUS_OK;
}

/* The LoRA terms of the adapters that adapt (layer, target), for the part
 * of a product that computes it: y (T,out) += scale_i · s_i · (x·A_iᵀ)·B_iᵀ
 * for each adapter attached to every row, in order, then the per-sequence
 * runs' adapters on their rows. *n_segs and *u_used count the segments and
 * the scratch the product's earlier parts took. */
static void add_lora_terms(lorac_context_t *ctx, int32_t layer, lorac_lora_target_t target, lorac_matmul_part_t *part,
                           int64_t T, int32_t *n_segs, int64_t *u_used) {
    lorac_lora_segment_t *segs = ctx->lora_segs + *n_segs;
    int32_t n = 0;
    for (int32_t i = 0; i < ctx->n_adapters; i++) {
        const lorac_lora_module_t *m = lorac_adapter_find(ctx->adapters[i], layer, target);
        if (!m) continue;
        segs[n++] = (lorac_lora_segment_t){.start = 0, .len = T, .u_offset = *u_used, .r = m->r,
                                           .scale = m->scale * ctx->adapter_scales[i], .A = m->A, .B = m->B, .Bt = m->Bt};
        *u_used += T * m->r;
    }
    for (int32_t g = 0; g < ctx->n_runs; g++) {
        const lorac_lora_module_t *m = lorac_adapter_find(ctx->run_adapter[g], layer, target);
        if (!m) continue;
        segs[n++] = (lorac_lora_segment_t){.start = ctx->run_start[g], .len = ctx->run_len[g], .u_offset = *u_used,
                                           .r = m->r, .scale = m->scale * ctx->run_scale[g], .A = m->A, .B = m->B,
                                           .Bt = m->Bt};
        *u_used += ctx->run_len[g] * m->r;
    }
    part->lora = n > 0 ? segs : NULL;
    part->n_lora = n;
    *n_segs += n;
}

/* parts[i] (T rows of x, K wide) = x·w_iᵀ + bias_i plus the LoRA terms of
 * targets[i]: the base products and every adapter on them in one parallel
 * region. */
static void adapted_product(lorac_context_t *ctx, int32_t layer, lorac_matmul_part_t *parts,
                            const lorac_lora_target_t *targets, int n, const float *x, int64_t T, int64_t K) {
    int32_t n_segs = 0;
    int64_t u_used = 0;
    for (int i = 0; i < n; i++) add_lora_terms(ctx, layer, targets[i], &parts[i], T, &n_segs, &u_used);
    lorac_matmul_forward_parts_lora(parts, n, x, T, K, ctx->lora_u);
}

void lorac_context_clear_seq(lorac_context_t *ctx, int32_t seq_id) {
    if (seq_id >= 0 && seq_id < ctx->params.n_seq)
        ctx->seq_len[seq_id] = 0, ctx->seq_rope_len[seq_id] = 0, ctx->win_lo[seq_id] = 0;
}

void lorac_context_set_seq_rope_len(lorac_context_t *ctx, int32_t seq_id, int32_t len) {
    if (seq_id >= 0 && seq_id < ctx->params.n_seq && len >= 0) ctx->seq_rope_len[seq_id] = len;
}

int lorac_context_seq_rope_long(const lorac_context_t *ctx, int32_t seq_id) {
    return seq_id >= 0 && seq_id < ctx->params.n_seq && ctx->seq_len[seq_id] > 0 && ctx->seq_long[seq_id];
}

/* Whether layer l keeps its rows from win_lo (a windowed layer with fewer
 * rows than n_ctx) rather than from position 0. */
static bool rows_from_win_lo(const lorac_context_t *ctx, int32_t l) { return ctx->layer_rows[l] != ctx->params.n_ctx; }

/* Whether sequence s still holds what a token at position n sees: in the
 * windowed layers, positions n - W + 1 .. n - 1 (their rows are reused
 * once a window has passed them). */
static bool holds_window_of(const lorac_context_t *ctx, int32_t s, int32_t n) {
    int32_t need = n - ctx->model->config.sliding_window + 1;
    return ctx->win_lo[s] <= (need > 0 ? need : 0);
}

int32_t lorac_context_keep_seq(lorac_context_t *ctx, int32_t seq_id, int32_t n) {
    if (seq_id < 0 || seq_id >= ctx->params.n_seq) return 0;
    if (n >= 0 && n < ctx->seq_len[seq_id]) {
        if (holds_window_of(ctx, seq_id, n)) ctx->seq_len[seq_id] = n;
        else lorac_context_clear_seq(ctx, seq_id);
    }
    return ctx->seq_len[seq_id];
}

int32_t lorac_context_copy_seq(lorac_context_t *ctx, int32_t src, int32_t dst, int32_t n) {
    int32_t n_seq = ctx->params.n_seq;
    if (src < 0 || src >= n_seq || dst < 0 || dst >= n_seq || src == dst) return 0;
    lorac_context_clear_seq(ctx, dst);
    if (n > ctx->seq_len[src]) n = ctx->seq_len[src];
    if (n <= 0 || !holds_window_of(ctx, src, n)) return 0;
    int64_t KV = ctx->kv_dim;
    size_t es = ctx->kv_size;
    for (int32_t l = 0; l < ctx->model->config.n_layers; l++) {
        int32_t rows = rows_from_win_lo(ctx, l) ? n - ctx->win_lo[src] : n;
        int64_t from = ((int64_t)src * ctx->seq_rows + ctx->layer_off[l]) * KV;
        int64_t to = ((int64_t)dst * ctx->seq_rows + ctx->layer_off[l]) * KV;
        size_t bytes = (size_t)(rows * KV) * es;
        memcpy((char *)ctx->k_cache + (size_t)to * es, (char *)ctx->k_cache + (size_t)from * es, bytes);
        memcpy((char *)ctx->v_cache + (size_t)to * es, (char *)ctx->v_cache + (size_t)from * es, bytes);
    }
    ctx->win_lo[dst] = ctx->win_lo[src];
    ctx->seq_long[dst] = ctx->seq_long[src];
    ctx->seq_rope_len[dst] = ctx->seq_rope_len[src];
    ctx->seq_len[dst] = n;
    return n;
}

size_t lorac_context_kv_bytes(const lorac_context_t *ctx) {
    return 2 * ctx->kv_size * (size_t)(ctx->params.n_seq * ctx->seq_rows * ctx->kv_dim);
}

/* Before a batch takes a sequence past its windowed layers' last row, the
 * rows its windows can still read (from the window of its next position)
 * move to the front of each windowed layer; the rows a window no longer
 * reaches are dropped. The batch fits after the move: its tokens of the
 * sequence number at most n_batch, and window_rows holds W + n_batch - 1. */
static void compact_windows(lorac_context_t *ctx) {
    const lorac_model_config_t *c = &ctx->model->config;
    int64_t KV = ctx->kv_dim;
    size_t es = ctx->kv_size;
    for (int32_t s = 0; s < ctx->params.n_seq; s++) {
        if (ctx->seq_seen[s] - ctx->win_lo[s] <= ctx->window_rows) continue;
        int32_t lo = ctx->seq_len[s] - c->sliding_window + 1; /* > win_lo: the batch overflows by its own length */
        int64_t from = (int64_t)(lo - ctx->win_lo[s]) * KV, n = (int64_t)(ctx->seq_len[s] - lo) * KV;
        for (int32_t l = 0; l < c->n_layers; l++) {
            if (!rows_from_win_lo(ctx, l)) continue; /* keeps every position */
            int64_t base = ((int64_t)s * ctx->seq_rows + ctx->layer_off[l]) * KV;
            memmove((char *)ctx->k_cache + (size_t)base * es, (char *)ctx->k_cache + (size_t)(base + from) * es,
                    (size_t)n * es);
            memmove((char *)ctx->v_cache + (size_t)base * es, (char *)ctx->v_cache + (size_t)(base + from) * es,
                    (size_t)n * es);
        }
        ctx->win_lo[s] = lo;
    }
}

int32_t lorac_context_seq_len(const lorac_context_t *ctx, int32_t seq_id) {
    if (seq_id < 0 || seq_id >= ctx->params.n_seq) return 0;
    return ctx->seq_len[seq_id];
}

/* Rejects a batch that would index outside the vocabulary or the cache, or
 * that does not continue each sequence's cache position by position. */
static lorac_status_t validate_batch(lorac_context_t *ctx, const lorac_batch_t *b) {
    const lorac_model_config_t *c = &ctx->model->config;
    if (b->n_tokens < 1 || b->n_tokens > ctx->params.n_batch)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "batch of %d tokens: must be 1..%d", b->n_tokens, ctx->params.n_batch);
    memcpy(ctx->seq_seen, ctx->seq_len, sizeof(int32_t) * (size_t)ctx->params.n_seq);
    for (int32_t i = 0; i < b->n_tokens; i++) {
        int32_t tok = b->tokens[i], s = b->seq_id[i], pos = b->pos[i];
        if (tok < 0 || tok >= c->vocab_size)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "token id %d is outside the vocabulary (0..%d)", tok, c->vocab_size - 1);
        if (s < 0 || s >= ctx->params.n_seq)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "sequence id %d is outside 0..%d", s, ctx->params.n_seq - 1);
        if (pos != ctx->seq_seen[s])
            return lorac_error(LORAC_STATUS_INVALID_ARG, "token %d of sequence %d has position %d, expected %d", i, s, pos,
                               ctx->seq_seen[s]);
        if (pos >= ctx->params.n_ctx)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "position %d is past the context size %d", pos, ctx->params.n_ctx);
        if (c->learned_positions && pos >= c->max_position_embeddings)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "position %d is past the %d positions the model has learned (n_positions)",
                               pos, c->max_position_embeddings);
        ctx->seq_seen[s]++;
    }
    if (!c->rope_longrope) return LORAC_STATUS_OK;
    /* Phi-3's longrope rotates a sequence with its long factors once it is
     * longer than rope_original_max_position, every position of it
     * (transformers' generate recomputes the whole cache at the switch):
     * cached positions rotated with the other factors would be wrong */
    for (int32_t i = 0; i < b->n_tokens; i++) {
        int32_t s = b->seq_id[i], len = ctx->seq_seen[s];
        int want = lorac_model_rope_long(c, len > ctx->seq_rope_len[s] ? len : ctx->seq_rope_len[s]);
        if (ctx->seq_len[s] > 0 && want != ctx->seq_long[s])
            return lorac_error(LORAC_STATUS_INVALID_ARG,
                               "sequence %d grows to %d positions, %s the %d (original_max_position_embeddings) past "
                               "which Phi-3's rotary takes its long factors, and its first %d positions were rotated "
                               "with the %s ones: decode the whole sequence in one batch (as transformers recomputes it)",
                               s, len, want ? "past" : "within", c->rope_original_max_position, ctx->seq_len[s],
                               want ? "short" : "long");
    }
    for (int32_t i = 0; i < b->n_tokens; i++) {
        int32_t s = b->seq_id[i];
        int32_t len = ctx->seq_seen[s] > ctx->seq_rope_len[s] ? ctx->seq_seen[s] : ctx->seq_rope_len[s];
        if (ctx->seq_len[s] == 0) ctx->seq_long[s] = (uint8_t)lorac_model_rope_long(c, len);
    }
    return LORAC_STATUS_OK;
}

static void embed_tokens(float *x, const lorac_wref_t *embed, const int32_t *tokens, int64_t T, int64_t D) {
    size_t row_bytes = (size_t)D * lorac_dtype_size(embed->dtype);
    for (int64_t t = 0; t < T; t++)
        lorac_convert_to_f32(x + t * D, (const uint8_t *)embed->data + (size_t)tokens[t] * row_bytes, embed->dtype, D);
}

/* GPT-2's learned positions: row pos[t] of the table added to token t's,
 * widened in scratch (T, D) first. */
static void add_positions(float *x, float *scratch, const lorac_wref_t *table, const int32_t *pos, int64_t T, int64_t D) {
    embed_tokens(scratch, table, pos, T, D);
    for (int64_t i = 0; i < T * D; i++) x[i] += scratch[i];
}

/* x += s·y; s is 1 but for Granite's residual_multiplier (and then x + y exactly) */
static void add_inplace(float *x, const float *y, float s, int64_t n) {
    if (s == 1.0f) {
        for (int64_t i = 0; i < n; i++) x[i] += y[i];
    } else {
        for (int64_t i = 0; i < n; i++) x[i] += s * y[i];
    }
}


/* out = rmsnorm(x) with the weight w (read as 1 + w for Gemma), T rows of
 * C; GPT-2's LayerNorm with f32 w and the bias b (layer_norm) */
static void norm(float *out, const float *x, const lorac_wref_t *w, const float *b, const lorac_model_config_t *c,
                 int64_t T, int64_t C) {
    if (c->layer_norm) lorac_layernorm_forward(out, NULL, NULL, x, w->data, b, c->rms_norm_eps, T, C);
    else lorac_rmsnorm_forward_offset(out, NULL, x, w->data, w->dtype, c->norm_offset, c->rms_norm_eps, T, C);
}

static void attention_block(lorac_context_t *ctx, const lorac_batch_t *b, int32_t l) {
    const lorac_model_t *m = ctx->model;
    const lorac_model_config_t *c = &m->config;
    const lorac_layer_weights_t *L = &m->layers[l];
    int64_t T = b->n_tokens, D = c->hidden_size, H = c->n_heads, KVH = c->n_kv_heads, hd = c->head_dim;
    int64_t Q = H * hd, KV = ctx->kv_dim;
    int32_t window = lorac_model_layer_window(c, l);

    norm(ctx->xn, ctx->x, &L->attn_norm, L->attn_norm_b, c, T, D);
    lorac_matmul_part_t qkv[3] = {{ctx->q, L->wq.data, L->wq.dtype, L->bq, Q, NULL, 0},
                                  {ctx->k, L->wk.data, L->wk.dtype, L->bk, KV, NULL, 0},
                                  {ctx->v, L->wv.data, L->wv.dtype, L->bv, KV, NULL, 0}};
    const lorac_lora_target_t qkv_targets[3] = {LORAC_LORA_Q, LORAC_LORA_K, LORAC_LORA_V};
    adapted_product(ctx, l, qkv, qkv_targets, 3, ctx->xn, T, D);
    if (c->qk_norm) { /* in place: a row's sum of squares is taken before it is scaled */
        norm(ctx->q, ctx->q, &L->q_norm, NULL, c, T * H, hd);
        norm(ctx->k, ctx->k, &L->k_norm, NULL, c, T * KVH, hd);
    }
    if (lorac_model_layer_has_rope(c, l)) { /* not in SmolLM3's NoPE layers */
        const float *cs = window && ctx->rope_cs_local ? ctx->rope_cs_local : ctx->rope_cs;
        lorac_rope_apply_partial(ctx->q, cs, T, H, hd, c->rotary_dim, 1);
        lorac_rope_apply_partial(ctx->k, cs, T, KVH, hd, c->rotary_dim, 1);
    }
    float qs = lorac_model_layer_query_scale(c, l); /* Granite's, Gemma's, GPT-2's score scales */
    if (qs != 1.0f) lorac_scale(ctx->q, qs, T * Q);

    /* Write this batch's keys and values into the cache first, so each token
     * attends to its own sequence's earlier tokens of the same batch (read
     * back from the cache, in its dtype, as later tokens will read them). */
    lorac_dtype_t kvt = ctx->params.kv_dtype;
    size_t es = ctx->kv_size;
    bool from_win_lo = rows_from_win_lo(ctx, l);
    for (int64_t t = 0; t < T; t++) {
        int32_t s = b->seq_id[t], lo = from_win_lo ? ctx->win_lo[s] : 0;
        int64_t base = ((int64_t)s * ctx->seq_rows + ctx->layer_off[l] - lo) * KV; /* where position 0 would be */
        int64_t at = base + (int64_t)b->pos[t] * KV;
        lorac_kv_store((char *)ctx->k_cache + (size_t)at * es, kvt, ctx->k + t * KV, KV);
        lorac_kv_store((char *)ctx->v_cache + (size_t)at * es, kvt, ctx->v + t * KV, KV);
        /* a sliding window's token sees the last `window` positions: its
         * rows start there */
        int32_t first = window && b->pos[t] >= window ? b->pos[t] + 1 - window : 0;
        int64_t from = base + (int64_t)first * KV;
        ctx->k_rows[t] = (const char *)ctx->k_cache + (size_t)from * es;
        ctx->v_rows[t] = (const char *)ctx->v_cache + (size_t)from * es;
        ctx->n_visible[t] = b->pos[t] + 1 - first;
    }
    lorac_attention_forward(ctx->att, ctx->att_scratch, ctx->q, ctx->k_rows, ctx->v_rows, kvt, ctx->n_visible, T, H, KVH,
                            hd, c->attn_softcap);
    lorac_matmul_part_t o = {ctx->proj, L->wo.data, L->wo.dtype, L->bo, D, NULL, 0};
    const lorac_lora_target_t o_target = LORAC_LORA_O;
    adapted_product(ctx, l, &o, &o_target, 1, ctx->att, T, Q);
    if (c->sandwich_norms) norm(ctx->proj, ctx->proj, &L->attn_post_norm, NULL, c, T, D);
    add_inplace(ctx->x, ctx->proj, c->residual_multiplier, T * D);
}

static void mlp_block(lorac_context_t *ctx, int64_t T, int32_t l) {
    const lorac_model_config_t *c = &ctx->model->config;
    const lorac_layer_weights_t *L = &ctx->model->layers[l];
    int64_t D = c->hidden_size, I = c->intermediate_size;
    norm(ctx->xn, ctx->x, &L->ffn_norm, L->ffn_norm_b, c, T, D);
    if (c->plain_mlp) { /* GPT-2: down(gelu(up(xn))) */
        lorac_matmul_part_t up = {ctx->up, L->w_up.data, L->w_up.dtype, L->b_up, I, NULL, 0};
        const lorac_lora_target_t up_target = LORAC_LORA_UP;
        adapted_product(ctx, l, &up, &up_target, 1, ctx->xn, T, D);
        lorac_gelu_forward(ctx->gate, ctx->up, T * I);
    } else {
        lorac_matmul_part_t gate_up[2] = {{ctx->gate, L->w_gate.data, L->w_gate.dtype, L->b_gate, I, NULL, 0},
                                          {ctx->up, L->w_up.data, L->w_up.dtype, L->b_up, I, NULL, 0}};
        const lorac_lora_target_t gate_up_targets[2] = {LORAC_LORA_GATE, LORAC_LORA_UP};
        adapted_product(ctx, l, gate_up, gate_up_targets, 2, ctx->xn, T, D);
        if (c->act == LORAC_ACT_GELU_TANH) lorac_geglu_forward(ctx->gate, ctx->gate, ctx->up, T, I);
        else lorac_swiglu_forward(ctx->gate, ctx->gate, ctx->up, T, I);
    }
    lorac_matmul_part_t down = {ctx->proj, L->w_down.data, L->w_down.dtype, L->b_down, D, NULL, 0};
    const lorac_lora_target_t down_target = LORAC_LORA_DOWN;
    adapted_product(ctx, l, &down, &down_target, 1, ctx->gate, T, I);
    if (c->sandwich_norms) norm(ctx->proj, ctx->proj, &L->ffn_post_norm, NULL, c, T, D);
    add_inplace(ctx->x, ctx->proj, c->residual_multiplier, T * D);
}

lorac_status_t lorac_context_decode(lorac_context_t *ctx, const lorac_batch_t *b, float *logits) {
    lorac_status_t s = validate_batch(ctx, b);
    if (s) return s;
    s = plan_seq_adapters(ctx, b);
    if (s) return s;
    int threads = lorac_kernels_get_threads();
    if (threads > ctx->att_threads) {
        float *grown = realloc(ctx->att_scratch,
                               sizeof(float) * (size_t)lorac_attention_scratch_floats(ctx->params.n_ctx, threads));
        if (!grown) return lorac_error(LORAC_STATUS_NOMEM, "out of memory for attention scratch");
        ctx->att_scratch = grown;
        ctx->att_threads = threads;
    }
    const lorac_model_t *m = ctx->model;
    const lorac_model_config_t *c = &m->config;
    int64_t T = b->n_tokens, D = c->hidden_size;

    embed_tokens(ctx->x, &m->embed, b->tokens, T, D);
    if (c->learned_positions) add_positions(ctx->x, ctx->xn, &m->pos_embed, b->pos, T, D);
    if (c->embedding_multiplier != 1.0f) lorac_scale(ctx->x, c->embedding_multiplier, T * D);
    if (m->inv_freq_long) { /* Phi-3: each token with its sequence's factors (seq_long) */
        for (int64_t t = 0; t < T; t++)
            lorac_model_rope_table(m, ctx->rope_cs + t * c->rotary_dim, b->pos + t, 1,
                                   ctx->seq_long[b->seq_id[t]] ? m->inv_freq_long : m->inv_freq);
    } else {
        lorac_model_rope_table(m, ctx->rope_cs, b->pos, T, m->inv_freq);
    }
    if (ctx->rope_cs_local) lorac_model_rope_table(m, ctx->rope_cs_local, b->pos, T, m->inv_freq_local);
    if (ctx->window_rows < ctx->params.n_ctx) compact_windows(ctx);
    for (int32_t l = 0; l < c->n_layers; l++) {
        attention_block(ctx, b, l);
        mlp_block(ctx, T, l);
    }
    memcpy(ctx->seq_len, ctx->seq_seen, sizeof(int32_t) * (size_t)ctx->params.n_seq);

    /* Gather the rows that want logits (by default only the last), then one
     * matmul against the head: the head is the largest matrix of small models. */
    int64_t n_out = 0;
    for (int64_t t = 0; t < T; t++) {
        int want = b->logits ? b->logits[t] != 0 : t == T - 1;
        if (want) {
            if (n_out != t) memcpy(ctx->x + n_out * D, ctx->x + t * D, sizeof(float) * (size_t)D);
            n_out++;
        }
    }
    if (n_out == 0 || !logits) return LORAC_STATUS_OK;
    norm(ctx->xn, ctx->x, &m->final_norm, m->final_norm_b, c, n_out, D);
    /* Granite's logits / logits_scaling, as the head's input divided: a linear map */
    if (c->logits_scaling != 1.0f) lorac_scale(ctx->xn, 1.0f / c->logits_scaling, n_out * D);
    lorac_matmul_forward(logits, ctx->xn, m->lm_head.data, m->lm_head.dtype, NULL, n_out, D, c->vocab_size);
    if (c->final_softcap > 0.0f) lorac_softcap(logits, c->final_softcap, NULL, n_out * c->vocab_size); /* Gemma 2's */
    return LORAC_STATUS_OK;
}
