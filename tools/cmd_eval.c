/* lorac eval: the loss and perplexity of a model, with or without adapters,
 * on a dataset in any of train's formats: the numbers train prints for
 * --eval-data, for a base model and its adapters side by side, or for an
 * adapter someone else trained. Runs the inference path (the KV-cache
 * forward pass that generate and serve use), one example at a time. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "lorac/dataset.h"
#include "lorac/kernels.h"
#include "lorac/model.h"

static const char *k_usage =
    "usage: lorac eval -m MODEL [--adapter DIR[:SCALE]]... --data FILE [options]\n"
    "  Prints the mean loss over the data's targets and its perplexity, exp(loss): what train\n"
    "  reports for --eval-data, from the inference forward pass.\n"
    "  --adapter DIR[:S]    apply a PEFT LoRA adapter with scale S (default 1), unmerged; repeatable\n"
    "  --data FILE          JSONL (or a JSON array, or .txt) in one of train's formats\n"
    "  --format F           auto|text|completion|alpaca|chat|tokens (default auto)\n"
    "  --columns MAP        read the data's own keys as a format's, e.g. input=dialogue,output=summary\n"
    "  --chat-template T    " LORAC_CHAT_TEMPLATES " (default: from tokenizer_config.json)\n"
    "  --seq L              examples keep their first L + 1 tokens, as in train (default 256)\n"
    "  --train-on-inputs    count the prompts' tokens too, not only the responses'\n"
    "  --skip-bad           skip malformed lines (counted) instead of failing\n"
    "  --eval-split X --seed S  only the examples train --eval-split X --seed S held out of FILE\n"
    "  --json               one JSON object on stdout instead of the text line\n"
    "  --quantize nf4       hold the projections in 4-bit NormalFloat (QLoRA's NF4): about 3.5x less memory than BF16\n"
    "  -t, --threads N      compute threads (default: all cores)\n";

/* log(sum(exp(row))) - row[target], in double */
static double token_loss(const float *row, int32_t vocab, int32_t target) {
    return lorac_logsumexp(row, vocab) - row[target];
}

int cmd_eval(int argc, char **argv) {
    const char *model_dir = NULL, *data = NULL, *format = "auto";
    bool json = false;
    int quantize = 0;
    double split = 0;
    uint64_t seed = 42; /* train's default */
    bool seed_given = false;
    cli_adapters_t adapters = {0};
    lorac_dataset_params_t dp = lorac_dataset_default_params();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define VAL() cli_value(argc, argv, &i, "eval")
        if (cli_is_help(a)) { fputs(k_usage, stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_dir = VAL();
        else if (!strcmp(a, "--adapter")) cli_add_adapter(&adapters, "eval", VAL());
        else if (!strcmp(a, "--data")) data = VAL();
        else if (!strcmp(a, "--format")) format = VAL();
        else if (!strcmp(a, "--columns")) dp.columns = VAL();
        else if (!strcmp(a, "--chat-template")) dp.chat_template = VAL();
        else if (!strcmp(a, "--seq")) dp.seq_len = (int32_t)cli_int("eval", a, VAL(), 1, 1 << 20);
        else if (!strcmp(a, "--train-on-inputs")) dp.train_on_inputs = true;
        else if (!strcmp(a, "--skip-bad")) dp.skip_bad = true;
        else if (!strcmp(a, "--json")) json = true;
        else if (!strcmp(a, "--quantize")) quantize = cli_quantize_flag("eval", a, VAL());
        else if (!strcmp(a, "--eval-split")) split = cli_float("eval", a, VAL(), 1e-9, 1e15);
        else if (!strcmp(a, "--seed")) { seed = (uint64_t)cli_int("eval", a, VAL(), 0, INT64_MAX); seed_given = true; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads"))
            lorac_kernels_set_threads((int)cli_int("eval", a, VAL(), 1, 1024));
        else cli_usage_error("eval", "unknown option '%s'", a);
#undef VAL
    }
    if (!model_dir || !data) cli_usage_error("eval", "-m MODEL and --data FILE are required");
    if (seed_given && split == 0) cli_usage_error("eval", "--seed goes with --eval-split");
    if (lorac_data_format_parse(format, &dp.format))
        cli_usage_error("eval", "unknown --format '%s' (auto, text, completion, alpaca, chat, tokens)", format);
    if (dp.format != LORAC_DATA_TOKENS) cli_require_tokenizer(model_dir, "eval");

    lorac_model_t *model = cli_load_model(model_dir, quantize);
    const lorac_model_config_t *cfg = lorac_model_get_config(model);
    char *config = lorac_path_join(model_dir, "tokenizer_config.json");
    if (!config) cli_die("out of memory");
    struct stat st;
    dp.tokenizer_config = stat(config, &st) == 0 ? config : NULL;
    dp.vocab_size = cfg->vocab_size;
    lorac_dataset_t *ds;
    cli_check(lorac_dataset_load(data, lorac_model_get_tokenizer(model), &dp, &ds));
    if (split > 0) { /* the held-out side, as train split it off */
        int64_t n_eval = lorac_dataset_split_size(lorac_dataset_n_examples(ds), split);
        if (n_eval < 0) cli_usage_error("eval", "--eval-split %g: a fraction in (0, 1) or a whole number of examples", split);
        lorac_dataset_t *held;
        cli_check(lorac_dataset_split(ds, n_eval, seed, &held));
        lorac_dataset_free(ds);
        ds = held;
    }
    if (dp.seq_len + 1 > cfg->max_position_embeddings)
        cli_die("--seq %d is longer than the model's %d positions", dp.seq_len, cfg->max_position_embeddings - 1);

    /* one example at a time, its logits in chunks of n_batch positions */
    int32_t n_batch = dp.seq_len + 1 < 512 ? dp.seq_len + 1 : 512;
    cli_logits_run_t r;
    cli_logits_run_init(&r, model, &adapters, LORAC_DTYPE_F32, dp.seq_len + 1, n_batch);

    double t0 = lorac_seconds(), loss = 0.0;
    int64_t n_targets = 0, n_tokens = 0;
    for (int64_t e = 0; e < lorac_dataset_n_examples(ds); e++) {
        const int32_t *toks, *labels;
        int32_t n = lorac_dataset_example(ds, e, &toks, &labels);
        lorac_context_clear_seq(r.ctx, 0);
        /* position t predicts token t + 1 when that token is in the loss */
        for (int32_t done = 0; done < n - 1;) {
            int32_t k = n - 1 - done < n_batch ? n - 1 - done : n_batch;
            /* logits only where the next token is in the loss (a prompt's
             * positions skip the vocabulary-sized head); they come back in
             * batch order */
            for (int32_t j = 0; j < k; j++) r.pos[j] = done + j, r.want[j] = labels[done + j + 1] != -100;
            lorac_batch_t b = {.n_tokens = k, .tokens = toks + done, .pos = r.pos, .seq_id = r.seq, .logits = r.want};
            cli_check(lorac_context_decode(r.ctx, &b, r.logits));
            for (int32_t j = 0, row = 0; j < k; j++) {
                if (!r.want[j]) continue;
                loss += token_loss(r.logits + (size_t)row++ * (size_t)cfg->vocab_size, cfg->vocab_size,
                                   labels[done + j + 1]);
                n_targets++;
            }
            done += k;
        }
        n_tokens += n;
    }
    double secs = lorac_seconds() - t0;
    if (n_targets == 0) cli_die("%s: no token is in the loss (every label is masked)", data);
    double mean = loss / (double)n_targets;
    if (json) {
        printf("{\"examples\": %lld, \"tokens\": %lld, \"targets\": %lld, \"loss\": %.6f, \"perplexity\": %.6f}\n",
               (long long)lorac_dataset_n_examples(ds), (long long)n_tokens, (long long)n_targets, mean, exp(mean));
    } else {
        printf("eval: %lld examples (%s), %lld targets: loss %.4f, perplexity %.2f\n",
               (long long)lorac_dataset_n_examples(ds), lorac_data_format_name(lorac_dataset_format(ds)),
               (long long)n_targets, mean, exp(mean));
    }
    fprintf(stderr, "eval: %lld tokens in %.2f s (%.1f tokens/s, threads %d, %s kernels)", (long long)n_tokens, secs,
            (double)n_tokens / (secs > 0 ? secs : 1e-9), lorac_kernels_get_threads(), lorac_kernels_isa());
    if (lorac_dataset_n_skipped(ds)) fprintf(stderr, ", %lld malformed lines skipped", (long long)lorac_dataset_n_skipped(ds));
    if (lorac_dataset_n_truncated(ds))
        fprintf(stderr, ", %lld examples truncated to %d tokens", (long long)lorac_dataset_n_truncated(ds), dp.seq_len + 1);
    fputc('\n', stderr);

    free(config);
    lorac_dataset_free(ds);
    cli_logits_run_free(&r, &adapters);
    lorac_model_free(model);
    return 0;
}
