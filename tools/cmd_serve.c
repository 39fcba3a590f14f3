/* lorac serve: an OpenAI-compatible HTTP server over one base model and the
 * adapters of a directory (lorac/http.h over lorac/serve.h). Runs until
 * SIGINT or SIGTERM, then stops cleanly and exits 0. */
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "lorac/dataset.h"
#include "lorac/http.h"
#include "lorac/kernels.h"
#include "lorac/model.h"
#include "lorac/serve.h"

static const char *k_usage =
    "usage: lorac serve -m MODEL [options]\n"
    "  -m, --model DIR          HuggingFace model directory (config.json, *.safetensors, tokenizer.json)\n"
    "  --adapters DIR           PEFT adapters, one per subdirectory; a request's \"model\" names one\n"
    "  --max-loras N            adapters kept in memory, least recently used evicted (default 8)\n"
    "  --max-seqs N             sequences decoded together (KV slots; default 8)\n"
    "  --ctx N                  positions per sequence, prompt + completion (default: the model's\n"
    "                           max_position_embeddings, at most 2048; past it with a warning)\n"
    "  --batch N                most tokens in one forward pass (default 512)\n"
    "  --kv-cache-dtype T       f32 (default), bf16 or f16: the KV cache's values; bf16/f16 halve its memory\n"
    "  --quantize nf4           hold the base's projections in QLoRA's 4-bit NormalFloat (about 3.5x less than BF16)\n"
    "  --no-prefix-cache        decode every prompt whole (default: a prompt that starts as a finished or\n"
    "                           running request's did, on the same adapter, reuses its keys and values)\n"
    "  --max-queue N            requests waiting beyond --max-seqs before 429 (default 64)\n"
    "  --host ADDR              address to listen on (default 127.0.0.1: this machine only)\n"
    "  --port N                 port (default 8000; 0 = any free port, printed at start)\n"
    "  -t, --threads N          compute threads (default: all cores)\n"
    "  --allow-admin            enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter\n"
    "  --served-model-name NAME the base model's name in requests (default: MODEL's directory name)\n"
    "  --chat-template NAME     " LORAC_CHAT_TEMPLATES " (default: recognised from\n"
    "                           MODEL/tokenizer_config.json; without one, chat requests get 400)\n"
    "  --chat-template-kwargs J template variables for requests that give none, e.g.\n"
    "                           '{\"enable_thinking\": false}' (qwen3: answer without reasoning)\n"
    "  --max-body BYTES         request body limit, larger gets 413 (default 1048576)\n"
    "  --max-connections N      concurrent connections (default 2 * (max-seqs + max-queue) + 16)\n"
    "  --log-requests           one line per request on stderr\n";

/* The last path component of dir, trailing slashes ignored. */
static char *dir_name(const char *dir) {
    char *copy = strdup(dir);
    if (!copy) cli_die("out of memory");
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/') copy[--n] = '\0';
    char *slash = strrchr(copy, '/');
    char *name = strdup(slash && slash[1] ? slash + 1 : copy);
    free(copy);
    if (!name) cli_die("out of memory");
    return name;
}

int cmd_serve(int argc, char **argv) {
    const char *model_dir = NULL, *adapters = NULL, *served = NULL, *tpl_flag = NULL, *kwargs = NULL;
    lorac_engine_params_t ep = lorac_engine_default_params();
    lorac_http_params_t hp = lorac_http_default_params();
    int threads = 0, quantize = 0;
    int64_t max_conn = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define VAL() cli_value(argc, argv, &i, "serve")
        if (cli_is_help(a)) { fputs(k_usage, stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_dir = VAL();
        else if (!strcmp(a, "--adapters")) adapters = VAL();
        else if (!strcmp(a, "--max-loras")) ep.max_loras = (int32_t)cli_int("serve", a, VAL(), 1, 4096);
        else if (!strcmp(a, "--max-seqs")) ep.max_seqs = (int32_t)cli_int("serve", a, VAL(), 1, 4096);
        else if (!strcmp(a, "--ctx")) ep.n_ctx = (int32_t)cli_int("serve", a, VAL(), 2, 1 << 24);
        else if (!strcmp(a, "--kv-cache-dtype")) ep.kv_dtype = cli_kv_dtype("serve", a, VAL());
        else if (!strcmp(a, "--quantize")) quantize = cli_quantize_flag("serve", a, VAL());
        else if (!strcmp(a, "--no-prefix-cache")) ep.no_prefix_cache = true;
        else if (!strcmp(a, "--batch")) ep.n_batch = (int32_t)cli_int("serve", a, VAL(), 1, 1 << 20);
        else if (!strcmp(a, "--max-queue")) ep.max_queue = (int32_t)cli_int("serve", a, VAL(), 0, 1 << 20);
        else if (!strcmp(a, "--host")) hp.host = VAL();
        else if (!strcmp(a, "--port")) hp.port = (int32_t)cli_int("serve", a, VAL(), 0, 65535);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) threads = (int)cli_int("serve", a, VAL(), 1, 1024);
        else if (!strcmp(a, "--allow-admin")) hp.allow_admin = true;
        else if (!strcmp(a, "--served-model-name")) served = VAL();
        else if (!strcmp(a, "--chat-template")) tpl_flag = VAL();
        else if (!strcmp(a, "--chat-template-kwargs")) kwargs = VAL();
        else if (!strcmp(a, "--max-body")) hp.max_body = (size_t)cli_int("serve", a, VAL(), 1, (int64_t)1 << 32);
        else if (!strcmp(a, "--max-connections")) max_conn = cli_int("serve", a, VAL(), 1, 1 << 16);
        else if (!strcmp(a, "--log-requests")) hp.log_requests = true;
        else cli_usage_error("serve", "unknown option '%s'", a);
#undef VAL
    }
    if (!model_dir) cli_usage_error("serve", "-m MODEL is required");
    if (served && !served[0]) cli_usage_error("serve", "--served-model-name must not be empty");
    const char *tpl = NULL;
    if (tpl_flag && !(tpl = lorac_dataset_chat_template_name(tpl_flag)))
        cli_usage_error("serve", "unknown chat template '%s' (" LORAC_CHAT_TEMPLATES ")", tpl_flag);
    int thinking = 1;
    if (kwargs && lorac_dataset_chat_kwargs_parse(kwargs, strlen(kwargs), &thinking))
        cli_usage_error("serve", "--chat-template-kwargs: %s", lorac_error_message());
    if (adapters) {
        struct stat st;
        if (stat(adapters, &st) || !S_ISDIR(st.st_mode)) cli_die("%s: not a directory (--adapters)", adapters);
    }
    if (threads) lorac_kernels_set_threads(threads);

    /* Signals are taken by sigwait below: blocked before any thread starts,
     * so every thread inherits the mask and none is interrupted. */
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
    signal(SIGPIPE, SIG_IGN);

    cli_require_tokenizer(model_dir, "serve");
    lorac_model_t *model = cli_load_model(model_dir, quantize);
    const lorac_tokenizer_t *tok = lorac_model_get_tokenizer(model);
    if (!tok) cli_die("%s: no tokenizer.json in the model directory (serving needs one)", model_dir);

    /* the chat template: the flag's, else the one tokenizer_config.json names */
    cli_chat_t chat;
    if (cli_chat_setup(&chat, model_dir, tok, tpl)) {
        if (tpl_flag) cli_die("%s", lorac_error_message());
        fprintf(stderr, "lorac serve: no chat template (%s); /v1/chat/completions will answer 400\n",
                lorac_error_message());
    }

    char *name = served ? strdup(served) : dir_name(model_dir);
    if (!name) cli_die("out of memory");
    ep.adapters_dir = adapters;
    cli_warn_past_positions(ep.n_ctx, lorac_model_get_config(model)->max_position_embeddings);
    lorac_engine_t *engine;
    cli_check(lorac_engine_start(model, &ep, &engine));

    hp.served_model_name = name;
    hp.chat_template = chat.tpl;
    hp.chat_default_system = chat.default_system;
    hp.chat_bos = chat.bos;
    hp.chat_eos = chat.eos;
    hp.chat_thinking_off = !thinking;
    hp.adapters_dir = adapters;
    hp.max_connections = (int32_t)(max_conn ? max_conn : 2 * ((int64_t)ep.max_seqs + ep.max_queue) + 16);
    lorac_http_server_t *srv;
    lorac_status_t s = lorac_http_server_start(engine, &hp, &srv);
    if (s) {
        lorac_engine_stop(engine);
        cli_check(s);
    }
    const char *host = hp.host && hp.host[0] ? hp.host : "127.0.0.1";
    int bracket = strchr(host, ':') != NULL; /* IPv6 literal */
    printf("lorac serve: listening on http://%s%s%s:%d\n", bracket ? "[" : "", host, bracket ? "]" : "",
           lorac_http_server_port(srv));
    fflush(stdout);
    lorac_adapter_info_t info[1];
    int32_t n_adapters = lorac_engine_list_adapters(engine, info, 0);
    double kv_mb = (double)lorac_engine_kv_bytes(engine) / 1e6; /* keys and values */
    fprintf(stderr, "lorac serve: model '%s' (%s), %d adapter%s%s%s, chat template %s, %d slots x %d positions "
            "(KV cache %.1f MB, %s), %s kernels x %d threads%s\n", name, model_dir, n_adapters,
            n_adapters == 1 ? "" : "s", adapters ? " in " : "", adapters ? adapters : "", chat.tpl ? chat.tpl : "none",
            ep.max_seqs, lorac_engine_n_ctx(engine), kv_mb, lorac_dtype_name(ep.kv_dtype), lorac_kernels_isa(),
            lorac_kernels_get_threads(), hp.allow_admin ? ", admin endpoints on" : "");

    int sig = 0;
    while (sigwait(&stop_signals, &sig) != 0) {}
    fprintf(stderr, "lorac serve: %s, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    lorac_http_server_stop(srv); /* stops the engine too */
    lorac_model_free(model);
    free(name);
    cli_chat_free(&chat);
    return 0;
}
