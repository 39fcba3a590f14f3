/* lorac — LoRA fine-tuning and serving for transformer models. Thin: parses
 * the command name and hands the rest of argv to tools/cmd_*.c. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* spins before an idle OpenMP thread sleeps (see set_openmp_wait_policy) */
#define LORAC_GOMP_SPINCOUNT "10000"

#include "cli.h"
#include "lorac/dataset.h"
#include "lorac/lora.h"
#include "lorac/model.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} k_commands[] = {
    {"generate", cmd_generate, "generate text from a prompt"},
    {"logits", cmd_logits, "write the logits of given token ids to a .npy file"},
    {"tokenize", cmd_tokenize, "print the token ids of a text (or decode ids)"},
    {"inspect", cmd_inspect, "describe a model directory or a safetensors file"},
    {"convert", cmd_convert, "convert a llama2.c checkpoint to a HuggingFace directory, or a model or adapter to GGUF"},
    {"train", cmd_train, "fine-tune with LoRA (or --full) on a JSONL dataset"},
    {"eval", cmd_eval, "loss and perplexity of a model (and adapters) on a dataset"},
    {"merge", cmd_merge, "merge LoRA adapters into the weights, as a model directory"},
    {"extract", cmd_extract, "extract a LoRA adapter from a fine-tuned model (SVD of the weight difference)"},
    {"serve", cmd_serve, "serve the model and its adapters over an OpenAI-compatible HTTP API"},
    {"demo", cmd_demo, "run the built-in demo"},
};

static void print_usage(FILE *f) {
    fprintf(f, "usage: lorac COMMAND [options]   (lorac COMMAND --help for details)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof k_commands / sizeof k_commands[0]; i++)
        fprintf(f, "  %-10s %s\n", k_commands[i].name, k_commands[i].summary);
}

_Noreturn void cli_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("lorac: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

_Noreturn void cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "lorac %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(see 'lorac %s --help')\n", cmd);
    va_end(ap);
    exit(2);
}

void cli_check(lorac_status_t status) {
    if (status != LORAC_STATUS_OK) {
        const char *msg = lorac_error_message();
        cli_die("%s", msg[0] ? msg : lorac_status_str(status));
    }
}

const char *cli_value(int argc, char **argv, int *i, const char *cmd) {
    if (*i + 1 >= argc) cli_usage_error(cmd, "option %s needs a value", argv[*i]);
    *i += 1;
    return argv[*i];
}

int64_t cli_int(const char *cmd, const char *flag, const char *value, int64_t lo, int64_t hi) {
    char *end;
    errno = 0;
    long long v = strtoll(value, &end, 10);
    if (errno || end == value || *end || v < lo || v > hi)
        cli_usage_error(cmd, "%s expects an integer in [%lld, %lld], got '%s'", flag, (long long)lo, (long long)hi, value);
    return v;
}

double cli_float(const char *cmd, const char *flag, const char *value, double lo, double hi) {
    char *end;
    errno = 0;
    double v = strtod(value, &end);
    if (errno || end == value || *end || !(v >= lo && v <= hi))
        cli_usage_error(cmd, "%s expects a number in [%g, %g], got '%s'", flag, lo, hi, value);
    return v;
}

lorac_dtype_t cli_kv_dtype(const char *cmd, const char *flag, const char *value) {
    lorac_dtype_t t;
    char up[8] = {0};
    for (size_t i = 0; value[i] && i + 1 < sizeof up; i++) up[i] = (char)toupper((unsigned char)value[i]);
    if (strlen(value) >= sizeof up || lorac_dtype_parse(up, &t) ||
        (t != LORAC_DTYPE_F32 && t != LORAC_DTYPE_BF16 && t != LORAC_DTYPE_F16))
        cli_usage_error(cmd, "%s expects f32, bf16 or f16, got '%s'", flag, value);
    return t;
}

int cli_quantize_flag(const char *cmd, const char *flag, const char *value) {
    if (strcasecmp(value, "nf4") != 0) cli_usage_error(cmd, "%s expects nf4, got '%s'", flag, value);
    return 1;
}

struct lorac_model *cli_load_model(const char *model_dir, int quantize) {
    lorac_model_load_params_t p = {.quantize = quantize ? LORAC_DTYPE_NF4 : LORAC_DTYPE_F32};
    lorac_model_t *model;
    cli_check(lorac_model_load_ex(model_dir, &p, &model));
    if (quantize) {
        fprintf(stderr, "quantized the projections to NF4 (4-bit NormalFloat, blocks of 64)");
        if (lorac_model_n_unquantized(model))
            fprintf(stderr, "; %d left as they were (rows not a multiple of 8 long)", lorac_model_n_unquantized(model));
        fputc('\n', stderr);
    }
    return model;
}

int cli_is_help(const char *arg) { return strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0; }

int32_t *cli_parse_ids(const char *cmd, const char *text, int32_t *n_out) {
    size_t cap = 16, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) cli_die("out of memory");
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) cli_usage_error(cmd, "bad token id list near '%.20s'", p);
        if (n == cap) {
            cap *= 2;
            int32_t *nb = realloc(ids, cap * sizeof *ids);
            if (!nb) cli_die("out of memory");
            ids = nb;
        }
        ids[n++] = (int32_t)v;
        p = end;
    }
    *n_out = (int32_t)n;
    return ids;
}

void cli_require_tokenizer(const char *model_dir, const char *cmd) {
    /* checked before the model loads (a multi-GB model takes seconds to map
     * and copy); a directory that is no model at all is left to the loader,
     * whose error names config.json */
    if (lorac_model_dir_lacks_tokenizer(model_dir))
        cli_die("%s: no tokenizer.json in the model directory (%s needs one)", model_dir, cmd);
}

char *cli_read_file(const char *path, size_t *len) {
    char *text;
    cli_check(lorac_file_read(path, (size_t)1 << 30, &text, len));
    return text;
}

void cli_add_adapter(cli_adapters_t *a, const char *cmd, const char *spec) {
    if (a->n == CLI_MAX_ADAPTERS) cli_usage_error(cmd, "at most %d --adapter options", CLI_MAX_ADAPTERS);
    /* DIR or DIR:SCALE; a ':' whose tail is not a number belongs to DIR */
    char *copy = strdup(spec);
    if (!copy) cli_die("out of memory");
    float scale = 1.0f;
    char *colon = strrchr(copy, ':');
    if (colon) {
        char *end;
        errno = 0;
        double v = strtod(colon + 1, &end);
        if (end != colon + 1 && !*end && !errno) {
            if (!(v > -1e6 && v < 1e6)) cli_usage_error(cmd, "adapter scale '%s' out of range", colon + 1);
            scale = (float)v;
            *colon = '\0';
        }
    }
    a->dirs[a->n] = copy;
    a->scales[a->n] = scale;
    a->n++;
}

void cli_attach_adapters(cli_adapters_t *a, const struct lorac_model *model, struct lorac_context *ctx, void **loaded) {
    for (int i = 0; i < a->n; i++) {
        cli_check(lorac_adapter_load(a->dirs[i], lorac_model_get_config(model), (lorac_adapter_t **)&loaded[i]));
        cli_check(lorac_adapter_prepare_inference(loaded[i]));
    }
    cli_check(lorac_context_set_adapters(ctx, (const lorac_adapter_t *const *)loaded, a->scales, a->n));
}

void cli_free_adapters(cli_adapters_t *a, void **loaded) {
    for (int i = 0; i < a->n; i++) {
        lorac_adapter_free(loaded[i]);
        free((char *)a->dirs[i]);
    }
}

void cli_logits_run_init(cli_logits_run_t *r, const struct lorac_model *model, cli_adapters_t *a, lorac_dtype_t kv_dtype,
                         int32_t n_ctx, int32_t n_batch) {
    memset(r, 0, sizeof *r);
    lorac_context_params_t cp = {.n_ctx = n_ctx, .n_seq = 1, .n_batch = n_batch, .kv_dtype = kv_dtype};
    cli_check(lorac_context_init(model, cp, &r->ctx));
    cli_attach_adapters(a, model, r->ctx, r->loaded);
    r->logits = malloc(sizeof(float) * (size_t)n_batch * (size_t)lorac_model_get_config(model)->vocab_size);
    r->pos = malloc(sizeof(int32_t) * (size_t)n_batch);
    r->seq = calloc((size_t)n_batch, sizeof(int32_t));
    r->want = malloc((size_t)n_batch);
    if (!r->logits || !r->pos || !r->seq || !r->want) cli_die("out of memory");
    memset(r->want, 1, (size_t)n_batch);
}

void cli_logits_run_free(cli_logits_run_t *r, cli_adapters_t *a) {
    free(r->logits); free(r->pos); free(r->seq); free(r->want);
    lorac_context_free(r->ctx);
    cli_free_adapters(a, r->loaded);
}

lorac_status_t cli_chat_setup(cli_chat_t *c, const char *model_dir, const struct lorac_tokenizer *tok, const char *tpl) {
    memset(c, 0, sizeof *c);
    char *config = lorac_path_join(model_dir, "tokenizer_config.json");
    if (!config) cli_die("out of memory");
    struct stat st;
    bool have_config = stat(config, &st) == 0;
    lorac_status_t s = LORAC_STATUS_OK;
    if (!tpl && !have_config)
        s = lorac_error(LORAC_STATUS_UNSUPPORTED, "%s has no tokenizer_config.json to find the chat template in; pass "
                        "--chat-template " LORAC_CHAT_TEMPLATES, model_dir);
    else if (!tpl)
        s = lorac_dataset_chat_template_from_config(config, &tpl, &c->default_system);
    if (!s) s = lorac_dataset_chat_tokens(tpl, tok, have_config ? config : NULL, &c->bos, &c->eos);
    free(config);
    if (s) {
        cli_chat_free(c);
        return s;
    }
    c->tpl = tpl;
    return LORAC_STATUS_OK;
}

void cli_warn_past_positions(int64_t n_ctx, int32_t max_pos) {
    if (max_pos > 0 && n_ctx > max_pos)
        fprintf(stderr, "lorac: warning: a context of %lld is past the model's max_position_embeddings (%d); "
                        "it was not trained on later positions\n", (long long)n_ctx, max_pos);
}

void cli_chat_free(cli_chat_t *c) {
    free(c->bos); free(c->eos); free(c->default_system);
    memset(c, 0, sizeof *c);
}

/* OpenMP threads that wait for work spin before they sleep: libgomp about
 * 300k spins, LLVM's libomp 200 ms. When another process shares the cores,
 * a spinning thread burns the time slice its partner needs, and each of the
 * hundreds of parallel regions of a decode step or training step then costs
 * a scheduler tick (bench/bench_spin.sh: a small training run takes 39 s
 * instead of 1.9 s when both cores are busy). A short spin keeps most of the
 * uncontended speed (the next region comes within microseconds) and sleeps
 * soon under contention. Both
 * runtimes read these variables only at start-up, so lorac sets them and
 * runs itself again, once, unless the user set them. */
static void set_openmp_wait_policy(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT") || getenv("KMP_BLOCKTIME") || getenv("LORAC_NO_REEXEC"))
        return;
    setenv("GOMP_SPINCOUNT", LORAC_GOMP_SPINCOUNT, 1);
    setenv("KMP_BLOCKTIME", "1", 1);
    setenv("LORAC_NO_REEXEC", "1", 1);
    execv("/proc/self/exe", argv);
    /* no /proc: carry on with the runtime's defaults */
}

int main(int argc, char **argv) {
    set_openmp_wait_policy(argv);
    if (argc < 2) { print_usage(stderr); return 2; }
    if (cli_is_help(argv[1])) { print_usage(stdout); return 0; }
    for (size_t i = 0; i < sizeof k_commands / sizeof k_commands[0]; i++)
        if (strcmp(argv[1], k_commands[i].name) == 0) return k_commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "lorac: unknown command '%s'\n", argv[1]);
    print_usage(stderr);
    return 2;
}
