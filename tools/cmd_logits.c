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
    "                    [--kv-cache-dtype f32|bf16|f16] [--quantize nf4]\n"
    "  Writes the logits of every position, float32 [T, vocab], as a NumPy .npy file.\n"
    "  The model directory needs no tokenizer files. --kv-cache-dtype: the keys and values\n"
    "  the attention reads, rounded as a bf16 or f16 KV cache stores them (default f32).\n"
    "  --quantize nf4: the projections held in QLoRA's 4-bit NormalFloat, as train --quantize\n"
    "  trains on them.\n";

int cmd_logits(int argc, char **argv) {
    const char *model_dir = NULL, *ids_text = NULL, *out_path = NULL;
    cli_adapters_t adapters = {0};
    lorac_dtype_t kv_dtype = LORAC_DTYPE_F32;
    int quantize = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { fputs(k_usage, stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_dir = cli_value(argc, argv, &i, "logits");
        else if (!strcmp(a, "--adapter")) cli_add_adapter(&adapters, "logits", cli_value(argc, argv, &i, "logits"));
        else if (!strcmp(a, "--ids")) ids_text = cli_value(argc, argv, &i, "logits");
        else if (!strcmp(a, "--kv-cache-dtype")) kv_dtype = cli_kv_dtype("logits", a, cli_value(argc, argv, &i, "logits"));
        else if (!strcmp(a, "--quantize")) quantize = cli_quantize_flag("logits", a, cli_value(argc, argv, &i, "logits"));
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out_path = cli_value(argc, argv, &i, "logits");
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads"))
            lorac_kernels_set_threads((int)cli_int("logits", a, cli_value(argc, argv, &i, "logits"), 1, 1024));
        else cli_usage_error("logits", "unknown option '%s'", a);
    }
    if (!model_dir || !ids_text || !out_path) cli_usage_error("logits", "-m, --ids and -o are required");
    int32_t n_ids;
    int32_t *ids = cli_parse_ids("logits", ids_text, &n_ids);
    if (n_ids == 0) cli_usage_error("logits", "--ids is empty");

    lorac_model_t *model = cli_load_model(model_dir, quantize);
    const lorac_model_config_t *cfg = lorac_model_get_config(model);
    for (int32_t i = 0; i < n_ids; i++)
        if (ids[i] >= cfg->vocab_size) cli_die("token id %d is outside the vocabulary (0..%d)", ids[i], cfg->vocab_size - 1);

    cli_logits_run_t r;
    cli_logits_run_init(&r, model, &adapters, kv_dtype, n_ids, n_ids);
    for (int32_t i = 0; i < n_ids; i++) r.pos[i] = i;
    lorac_batch_t b = {.n_tokens = n_ids, .tokens = ids, .pos = r.pos, .seq_id = r.seq, .logits = r.want};
    cli_check(lorac_context_decode(r.ctx, &b, r.logits));
    int64_t shape[2] = {n_ids, cfg->vocab_size};
    cli_check(lorac_npy_write_f32(out_path, r.logits, shape, 2));

    free(ids);
    cli_logits_run_free(&r, &adapters);
    lorac_model_free(model);
    return 0;
}
