/* The batcher: examples in a per-epoch shuffled order, laid into rows of
 * (inputs, targets, positions, segments), with or without packing. The whole
 * state is the cursor (seed, epoch, index, shuffle): the order of an epoch
 * is recomputed from (seed, epoch), so a checkpoint that saved the cursor
 * resumes bit-exactly, mid-epoch included. */
#include <stdlib.h>
#include <string.h>

#include "train/dataset_internal.h"

lorac_data_cursor_t lorac_data_cursor_init(uint64_t seed, bool shuffle) {
    lorac_data_cursor_t c = {.seed = seed, .epoch = 0, .index = 0, .shuffle = shuffle ? 1 : 0};
    return c;
}

/* Uniform in [0, bound) without modulo bias (rejection of the short tail). */
static uint64_t rng_below(lorac_rng_t *rng, uint64_t bound) {
    uint64_t threshold = (0 - bound) % bound;
    for (;;) {
        uint64_t hi = lorac_rng_u32(rng), r = (hi << 32) | lorac_rng_u32(rng);
        if (r >= threshold) return r % bound;
    }
}

/* Epoch e's order: Fisher-Yates from an RNG seeded with the seed mixed with
 * e (lorac_rng_seed runs splitmix64 over it, so nearby values give unrelated
 * streams). */
static void make_order(int64_t *perm, int64_t n, uint64_t seed, int64_t epoch, int32_t shuffle) {
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    if (!shuffle) return;
    lorac_rng_t rng;
    lorac_rng_seed(&rng, seed ^ (0x9e3779b97f4a7c15ull * ((uint64_t)epoch + 1)));
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)rng_below(&rng, (uint64_t)i + 1);
        int64_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* The cached order of the cursor's epoch (NULL on allocation failure). */
static const int64_t *epoch_order(lorac_dataset_t *ds, const lorac_data_cursor_t *cur) {
    if (!ds->perm && !(ds->perm = malloc(sizeof(int64_t) * (size_t)ds->n))) return NULL;
    int32_t sh = cur->shuffle ? 1 : 0;
    if (ds->perm_epoch != cur->epoch || ds->perm_seed != cur->seed || ds->perm_shuffle != sh) {
        make_order(ds->perm, ds->n, cur->seed, cur->epoch, sh);
        ds->perm_epoch = cur->epoch;
        ds->perm_seed = cur->seed;
        ds->perm_shuffle = sh;
    }
    return ds->perm;
}

static int32_t ex_len(const lorac_dataset_t *ds, int64_t i) { return (int32_t)(ds->offsets[i + 1] - ds->offsets[i]); }

lorac_status_t lorac_dataset_read_batch(lorac_dataset_t *ds, lorac_data_cursor_t *cur, int32_t batch, int32_t seq_len,
                                        bool pack, int32_t *tokens, int32_t *targets, int32_t *pos, int32_t *segments,
                                        lorac_data_batch_info_t *info) {
    if (info) memset(info, 0, sizeof *info);
    if (batch < 1 || seq_len < 1)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "batch (%d) and sequence length (%d) must be at least 1", batch, seq_len);
    if (cur->index < 0 || cur->index >= ds->n || cur->epoch < 0)
        return lorac_error(LORAC_STATUS_INVALID_ARG,
                           "data cursor (epoch %lld, index %lld) does not fit a dataset of %lld examples",
                           (long long)cur->epoch, (long long)cur->index, (long long)ds->n);
    const int64_t *order = epoch_order(ds, cur);
    if (!order) return lorac_error(LORAC_STATUS_NOMEM, "out of memory for the data order");
    const int32_t T = seq_len;
    int32_t rows = 0, examples = 0;
    int64_t n_targets = 0, n_tokens = 0;
    for (int32_t b = 0; b < batch; b++) {
        size_t row = (size_t)b * (size_t)T;
        int32_t *tk = tokens + row, *tg = targets + row, *ps = pos + row, *sg = segments ? segments + row : NULL;
        int32_t used = 0, seg = 0;
        while (cur->index < ds->n) {
            int64_t e = order[cur->index];
            const int32_t *et = ds->tokens + ds->offsets[e], *el = ds->labels + ds->offsets[e];
            int32_t n = ex_len(ds, e), slots = n < T ? n : T;
            if (used > 0 && used + slots > T) break; /* whole examples only: it starts the next row */
            for (int32_t t = 0; t < slots; t++) {
                tk[used + t] = et[t];
                ps[used + t] = t;
                if (sg) sg[used + t] = seg;
                /* slot t predicts the example's token t+1, never the next example's first */
                int32_t y = t + 1 < n ? el[t + 1] : -100;
                tg[used + t] = y;
                n_targets += y != -100;
            }
            used += slots;
            seg++;
            examples++;
            cur->index++;
            if (!pack) break;
        }
        if (used > 0) rows++;
        n_tokens += used;
        /* padding is a segment of its own, each token at position 0: it
         * attends only to itself, and the batch's largest position is its
         * longest example's (which picks Phi-3's rotary factors, as the
         * longest sequence of a padded batch does in transformers) */
        for (int32_t t = used; t < T; t++) {
            tk[t] = ds->pad_id;
            tg[t] = -100;
            ps[t] = 0;
            if (sg) sg[t] = -1;
        }
    }
    bool end = cur->index >= ds->n;
    if (end) {
        cur->epoch++;
        cur->index = 0;
    }
    if (info) {
        info->rows = rows;
        info->examples = examples;
        info->n_targets = n_targets;
        info->n_tokens = n_tokens;
        info->epoch_end = end;
    }
    return LORAC_STATUS_OK;
}

int64_t lorac_dataset_next_batch(lorac_dataset_t *ds, lorac_data_cursor_t *cur, int32_t batch, int32_t seq_len,
                                 bool pack, int32_t *tokens, int32_t *targets, int32_t *pos) {
    lorac_data_batch_info_t info;
    if (lorac_dataset_read_batch(ds, cur, batch, seq_len, pack, tokens, targets, pos, NULL, &info)) return -1;
    return info.n_targets;
}

/* Rows needed for the examples in `order` (NULL: file order). */
static int64_t count_rows(const lorac_dataset_t *ds, const int64_t *order, int32_t T, bool pack) {
    if (!pack) return ds->n;
    int64_t rows = 0, used = 0;
    for (int64_t i = 0; i < ds->n; i++) {
        int64_t n = ex_len(ds, order ? order[i] : i), slots = n < T ? n : T;
        if (used > 0 && used + slots > T) { rows++; used = 0; }
        used += slots;
    }
    return rows + (used > 0);
}

int64_t lorac_dataset_batches_per_epoch(const lorac_dataset_t *ds, int32_t batch, int32_t seq_len, bool pack) {
    if (batch < 1 || seq_len < 1) return -1;
    int64_t rows = count_rows(ds, NULL, seq_len, pack);
    return (rows + batch - 1) / batch;
}

int64_t lorac_dataset_epoch_batches(const lorac_dataset_t *ds, const lorac_data_cursor_t *cur, int32_t batch,
                                    int32_t seq_len, bool pack) {
    if (batch < 1 || seq_len < 1) return -1;
    if (!pack || !cur->shuffle) return lorac_dataset_batches_per_epoch(ds, batch, seq_len, pack);
    int64_t *order = malloc(sizeof(int64_t) * (size_t)ds->n);
    if (!order) return -1;
    make_order(order, ds->n, cur->seed, cur->epoch, 1);
    int64_t rows = count_rows(ds, order, seq_len, pack);
    free(order);
    return (rows + batch - 1) / batch;
}
