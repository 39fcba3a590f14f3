/* lorac logits: float32 [T, vocab] logits of given token ids, as .npy. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "lorac/formats.h"
#include "lorac/kernels.h"
#include "lorac/model.h"

static const char *k_usage =
    "usage: lorac logits -m MODEL [--adapter DIR[:SCALE]]... --ids \"1 2 3\" -o OUT.npy [-t THREADS]\n"
    "  Writes the logits of every position, float32 [T, vocab], as a NumPy .npy file.\n"
    "  The model directory needs no tokenizer files.\n";

int cmd_logits(int argc, char **argv) {
    const char *model_dir = NULL, *ids_text = NULL, *out_path = NULL;
    cli_adapters_t adapters = {0};
    void *loaded[CLI_MAX_ADAPTERS] = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { fputs(k_usage, stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_dir = cli_value(argc, argv, &i, "logits");
        else if (!strcmp(a, "--adapter")) cli_add_adapter(&adapters, "logits", cli_value(argc, argv, &i, "logits"));
        else if (!strcmp(a, "--ids")) ids_text = cli_value(argc, argv, &i, "logits");
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out_path = cli_value(argc, argv, &i, "logits");
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads"))
            lorac_kernels_set_threads((int)cli_int("logits", a, cli_value(argc, argv, &i, "logits"), 1, 1024));
        else cli_usage_error("logits", "unknown option '%s'", a);
    }
    if (!model_dir || !ids_text || !out_path) cli_usage_error("logits", "-m, --ids and -o are required");
    int32_t n_ids;
    int32_t *ids = cli_parse_ids("logits", ids_text, &n_ids);
    if (n_ids == 0) cli_usage_error("logits", "--ids is empty");

    lorac_model_t *model;
    cli_check(lorac_model_load(model_dir, &model));
    const lorac_model_config_t *cfg = lorac_model_get_config(model);
    for (int32_t i = 0; i < n_ids; i++)
        if (ids[i] >= cfg->vocab_size) cli_die("token id %d is outside the vocabulary (0..%d)", ids[i], cfg->vocab_size - 1);

    lorac_context_params_t cp = {.n_ctx = n_ids, .n_seq = 1, .n_batch = n_ids};
    lorac_context_t *ctx;
    cli_check(lorac_context_init(model, cp, &ctx));
    cli_attach_adapters(&adapters, model, ctx, loaded);
    float *logits = malloc(sizeof(float) * (size_t)n_ids * (size_t)cfg->vocab_size);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n_ids), *seq = calloc((size_t)n_ids, sizeof(int32_t));
    int8_t *want = malloc((size_t)n_ids);
    if (!logits || !pos || !seq || !want) cli_die("out of memory");
    for (int32_t i = 0; i < n_ids; i++) { pos[i] = i; want[i] = 1; }
    lorac_batch_t b = {.n_tokens = n_ids, .tokens = ids, .pos = pos, .seq_id = seq, .logits = want};
    cli_check(lorac_context_decode(ctx, &b, logits));
    int64_t shape[2] = {n_ids, cfg->vocab_size};
    cli_check(lorac_npy_write_f32(out_path, logits, shape, 2));

    free(logits); free(pos); free(seq); free(want); free(ids);
    lorac_context_free(ctx);
    cli_free_adapters(&adapters, loaded);
    lorac_model_free(model);
    return 0;
}
