/* Shared helpers of the lorac command-line program. Only the CLI may exit:
 * cli_die prints "lorac: error: ..." and exits 1; cli_usage_error exits 2. */
#ifndef LORAC_CLI_H
#define LORAC_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "lorac/core.h"

_Noreturn void cli_die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Exits with the library's message when status is not OK. */
void cli_check(lorac_status_t status);

/* inspect's report of a GGUF file. */
int inspect_gguf(const char *path, int json);

/* Flag parsing: argv[*i] is the flag; its value is argv[*i + 1]. */
const char *cli_value(int argc, char **argv, int *i, const char *cmd);
int64_t cli_int(const char *cmd, const char *flag, const char *value, int64_t lo, int64_t hi);
double cli_float(const char *cmd, const char *flag, const char *value, double lo, double hi);
/* --kv-cache-dtype's value: f32, bf16 or f16 (any case); else a usage error. */
lorac_dtype_t cli_kv_dtype(const char *cmd, const char *flag, const char *value);
/* --quantize's value: nf4 (any case), else a usage error; returns 1. */
int cli_quantize_flag(const char *cmd, const char *flag, const char *value);
struct lorac_model;
/* Loads MODEL_DIR (lorac_model_load), with its projections quantized to NF4
 * when quantize is set (saying so on stderr); exits on failure. */
struct lorac_model *cli_load_model(const char *model_dir, int quantize);
/* 1 when argv[i] is -h or --help. */
int cli_is_help(const char *arg);

/* Parses "1 2 3" or "1,2,3" into a malloc'd array. */
int32_t *cli_parse_ids(const char *cmd, const char *text, int32_t *n_out);
/* Reads a whole file (for -f); exits on error. */
char *cli_read_file(const char *path, size_t *len);
/* Dies with a clear message when MODEL_DIR has a config.json but no tokenizer.json. */
void cli_require_tokenizer(const char *model_dir, const char *cmd);

/* Warns on stderr when an asked-for context goes past the model's
 * max_position_embeddings (generate -c, serve --ctx: honoured, as llama.cpp's
 * --ctx-size). */
void cli_warn_past_positions(int64_t n_ctx, int32_t max_position_embeddings);

/* --adapter DIR[:SCALE], repeatable (generate, logits). */
#define CLI_MAX_ADAPTERS 16
typedef struct {
    const char *dirs[CLI_MAX_ADAPTERS];
    float scales[CLI_MAX_ADAPTERS];
    int n;
} cli_adapters_t;
void cli_add_adapter(cli_adapters_t *a, const char *cmd, const char *spec);
struct lorac_model;
struct lorac_context;
/* Loads the adapters against the model and attaches them to the context;
 * returns them for cli_free_adapters. */
void cli_attach_adapters(cli_adapters_t *a, const struct lorac_model *model, struct lorac_context *ctx, void **loaded);
void cli_free_adapters(cli_adapters_t *a, void **loaded);

/* A one-sequence context with the --adapter flags attached, and buffers to
 * decode up to n_batch tokens a call with the logits of every one (logits,
 * logits; eval). Exits on failure. */
typedef struct {
    struct lorac_context *ctx;
    void *loaded[CLI_MAX_ADAPTERS];
    float *logits;   /* (n_batch, vocab) */
    int32_t *pos, *seq;
    int8_t *want;    /* (n_batch) which rows' logits to return: all 1 (eval sets its own) */
} cli_logits_run_t;
void cli_logits_run_init(cli_logits_run_t *r, const struct lorac_model *model, cli_adapters_t *a, lorac_dtype_t kv_dtype,
                         int32_t n_ctx,
                         int32_t n_batch);
void cli_logits_run_free(cli_logits_run_t *r, cli_adapters_t *a);

/* A model directory's chat template: tpl (a name the caller accepted) or,
 * when NULL, the one its tokenizer_config.json (or chat_template.jinja)
 * names, with that template's default system message, and the BOS/EOS
 * strings it writes for this tokenizer. On failure (no config to find it
 * in, a template lorac cannot render, a special string that is not one
 * token) the library's message says why and *c is left empty. */
typedef struct {
    const char *tpl;  /* canonical name, static */
    char *bos, *eos, *default_system;
} cli_chat_t;
struct lorac_tokenizer;
lorac_status_t cli_chat_setup(cli_chat_t *c, const char *model_dir, const struct lorac_tokenizer *tok, const char *tpl);
void cli_chat_free(cli_chat_t *c);

int cmd_generate(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_extract(int argc, char **argv);

#endif
