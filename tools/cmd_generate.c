/* lorac generate: the prompt and then the generated text on stdout, streamed
 * as produced; statistics on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli.h"
#include "lorac/dataset.h"
#include "lorac/infer.h"
#include "lorac/kernels.h"
#include "lorac/model.h"

static const char *k_usage =
    "usage: lorac generate -m MODEL (-p TEXT | -f FILE) [options]\n"
    "  -m, --model DIR      HuggingFace model directory (config.json, *.safetensors, tokenizer.json)\n"
    "  --adapter DIR[:S]    apply a PEFT LoRA adapter with scale S (default 1), unmerged; repeatable\n"
    "  -p, --prompt TEXT    prompt text (may be empty)\n"
    "  -f, --file FILE      read the prompt from FILE\n"
    "  -n, --n-predict N    tokens to generate (default 128)\n"
    "  --temp T             temperature, 0 = greedy (default 0.8)\n"
    "  --top-k K            keep the K most likely tokens, 0 = off (default 40)\n"
    "  --top-p P            nucleus sampling mass in (0, 1], 1 = off (default 0.95)\n"
    "  --seed S             random seed (default 42)\n"
    "  --ignore-eos         keep going past end-of-sequence tokens until -n\n"
    "  --chat               the prompt is a user message: render it with the chat template, print only the\n"
    "                       reply, stop at the end of the assistant's turn\n"
    "  --system TEXT        system message for --chat\n"
    "  --chat-template T    " LORAC_CHAT_TEMPLATES " (default: from tokenizer_config.json)\n"
    "  -c, --ctx N          context length (default: prompt + n, capped at the model's maximum)\n"
    "  -t, --threads N      compute threads (default: all cores)\n";

/* --chat: renders [system,] user prompt with the chat template and the
 * assistant's generation prompt, as HF's apply_chat_template(...,
 * add_generation_prompt=True) does, and encodes it without the
 * post-processor (the template writes its own BOS). *eot gets the id of the
 * token that ends the assistant's turn. */
static void chat_prompt(const char *model_dir, const lorac_tokenizer_t *tok, const char *tpl_flag, const char *system,
                        const char *prompt, size_t prompt_len, int32_t **ids, size_t *n_ids, int32_t *eot) {
    char *config = lorac_path_join(model_dir, "tokenizer_config.json"), *default_system = NULL, *bos = NULL, *eos = NULL;
    if (!config) cli_die("out of memory");
    struct stat st;
    bool have_config = stat(config, &st) == 0;
    const char *tpl = tpl_flag;
    if (tpl && !(tpl = lorac_dataset_chat_template_name(tpl_flag)))
        cli_usage_error("generate", "unknown --chat-template '%s' (" LORAC_CHAT_TEMPLATES ")", tpl_flag);
    if (!tpl) {
        if (!have_config)
            cli_die("%s: no tokenizer_config.json to find the chat template in; pass --chat-template "
                    LORAC_CHAT_TEMPLATES, model_dir);
        cli_check(lorac_dataset_chat_template_from_config(config, &tpl, &default_system));
    }
    cli_check(lorac_dataset_chat_tokens(tpl, tok, have_config ? config : NULL, &bos, &eos));
    char *user = strndup(prompt, prompt_len);
    if (!user) cli_die("out of memory");
    if (strlen(user) != prompt_len) cli_die("the prompt holds a NUL byte");
    lorac_chat_message_t msgs[2];
    size_t n = 0;
    if (system) msgs[n++] = (lorac_chat_message_t){"system", system};
    msgs[n++] = (lorac_chat_message_t){"user", user};
    char *text;
    size_t len;
    cli_check(lorac_dataset_chat_render_generation(tpl, default_system, msgs, n, bos, eos, &text, &len));
    cli_check(lorac_tokenizer_encode(tok, text, len, false, ids, n_ids));
    *eot = lorac_tokenizer_token_id(tok, lorac_dataset_chat_end_of_turn(tpl, eos));
    free(text); free(user); free(bos); free(eos); free(default_system); free(config);
}

/* Prints a token's bytes through the UTF-8 stream (whole characters only). */
static void emit_token(const lorac_tokenizer_t *tok, lorac_utf8_stream_t *st, int32_t id, int strip_space) {
    char bytes[512], out[3 * 512 + 3];
    int32_t n = lorac_tokenizer_token_bytes(tok, id, bytes, (int32_t)sizeof bytes);
    if (n <= 0) return;
    const char *b = bytes;
    if (strip_space && b[0] == ' ') { b++; n--; }
    size_t w = lorac_utf8_stream_push(st, b, (size_t)n, out);
    fwrite(out, 1, w, stdout);
    fflush(stdout);
}

int cmd_generate(int argc, char **argv) {
    const char *model_dir = NULL, *prompt = NULL, *prompt_file = NULL;
    int64_t n_predict = 128, n_ctx_flag = 0;
    int ignore_eos = 0, threads = 0, chat = 0;
    const char *system = NULL, *tpl_flag = NULL;
    lorac_sampler_params_t sp = lorac_sampler_default_params();
    cli_adapters_t adapters = {0};
    void *loaded[CLI_MAX_ADAPTERS] = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { fputs(k_usage, stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_dir = cli_value(argc, argv, &i, "generate");
        else if (!strcmp(a, "--adapter")) cli_add_adapter(&adapters, "generate", cli_value(argc, argv, &i, "generate"));
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) prompt = cli_value(argc, argv, &i, "generate");
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) prompt_file = cli_value(argc, argv, &i, "generate");
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) n_predict = cli_int("generate", a, cli_value(argc, argv, &i, "generate"), 0, 1 << 30);
        else if (!strcmp(a, "--temp")) sp.temperature = (float)cli_float("generate", a, cli_value(argc, argv, &i, "generate"), 0.0, 100.0);
        else if (!strcmp(a, "--top-k")) sp.top_k = (int32_t)cli_int("generate", a, cli_value(argc, argv, &i, "generate"), 0, INT32_MAX);
        else if (!strcmp(a, "--top-p")) sp.top_p = (float)cli_float("generate", a, cli_value(argc, argv, &i, "generate"), 1e-9, 1.0);
        else if (!strcmp(a, "--seed")) sp.seed = (uint64_t)cli_int("generate", a, cli_value(argc, argv, &i, "generate"), 0, INT64_MAX);
        else if (!strcmp(a, "--ignore-eos")) ignore_eos = 1;
        else if (!strcmp(a, "--chat")) chat = 1;
        else if (!strcmp(a, "--system")) system = cli_value(argc, argv, &i, "generate");
        else if (!strcmp(a, "--chat-template")) tpl_flag = cli_value(argc, argv, &i, "generate");
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) n_ctx_flag = cli_int("generate", a, cli_value(argc, argv, &i, "generate"), 1, 1 << 24);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) threads = (int)cli_int("generate", a, cli_value(argc, argv, &i, "generate"), 1, 1024);
        else cli_usage_error("generate", "unknown option '%s'", a);
    }
    if (!model_dir) cli_usage_error("generate", "-m MODEL is required");
    if (!prompt == !prompt_file) cli_usage_error("generate", "give exactly one of -p TEXT or -f FILE");
    if (!chat && (system || tpl_flag)) cli_usage_error("generate", "--system and --chat-template go with --chat");
    if (threads) lorac_kernels_set_threads(threads);

    char *file_text = NULL;
    size_t prompt_len;
    if (prompt_file) { file_text = cli_read_file(prompt_file, &prompt_len); prompt = file_text; }
    else prompt_len = strlen(prompt);

    cli_require_tokenizer(model_dir, "generate");
    lorac_model_t *model;
    cli_check(lorac_model_load(model_dir, &model));
    const lorac_model_config_t *cfg = lorac_model_get_config(model);
    const lorac_tokenizer_t *tok = lorac_model_get_tokenizer(model);
    if (!tok) cli_die("%s: no tokenizer.json in the model directory (generate needs one)", model_dir);

    int32_t *ids, eot = -1;
    size_t n_ids;
    if (chat) chat_prompt(model_dir, tok, tpl_flag, system, prompt, prompt_len, &ids, &n_ids, &eot);
    else cli_check(lorac_tokenizer_encode(tok, prompt, prompt_len, true, &ids, &n_ids));
    if (n_ids == 0) cli_die("the prompt encodes to no tokens and the tokenizer adds no BOS; give a non-empty prompt");
    int64_t n_ctx = n_ctx_flag ? n_ctx_flag : (int64_t)n_ids + n_predict;
    if (n_ctx > cfg->max_position_embeddings) n_ctx = cfg->max_position_embeddings;
    if ((int64_t)n_ids > n_ctx)
        cli_die("the prompt is %zu tokens, longer than the context of %lld", n_ids, (long long)n_ctx);

    lorac_context_params_t cp = lorac_context_default_params();
    cp.n_ctx = (int32_t)n_ctx;
    cp.n_batch = (int32_t)(n_ids < 512 ? n_ids : 512);
    lorac_context_t *ctx;
    cli_check(lorac_context_init(model, cp, &ctx));
    cli_attach_adapters(&adapters, model, ctx, loaded);
    lorac_sampler_t *sampler;
    cli_check(lorac_sampler_init(&sp, cfg->vocab_size, &sampler));
    float *logits = malloc(sizeof(float) * (size_t)cfg->vocab_size);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)cp.n_batch), *seq = calloc((size_t)cp.n_batch, sizeof(int32_t));
    if (!logits || !pos || !seq) cli_die("out of memory");

    if (!chat) { /* a chat prints only the reply */
        fwrite(prompt, 1, prompt_len, stdout);
        fflush(stdout);
    }

    /* the prompt, in batches of up to n_batch tokens */
    double t0 = lorac_seconds();
    for (size_t done = 0; done < n_ids;) {
        int32_t n = (int32_t)(n_ids - done < (size_t)cp.n_batch ? n_ids - done : (size_t)cp.n_batch);
        for (int32_t j = 0; j < n; j++) pos[j] = (int32_t)done + j;
        lorac_batch_t b = {.n_tokens = n, .tokens = ids + done, .pos = pos, .seq_id = seq, .logits = NULL};
        cli_check(lorac_context_decode(ctx, &b, logits));
        done += (size_t)n;
    }
    double t1 = lorac_seconds();

    /* SentencePiece decoders drop the space that starts the text: only the
     * first generated token can start it, when the prompt printed nothing
     * (a chat's reply is decoded on its own, as HF decodes generated ids) */
    int strip_space = lorac_tokenizer_strips_leading_space(tok) && (prompt_len == 0 || chat);
    lorac_utf8_stream_t stream = {0};
    int64_t n_gen = 0;
    const char *stop = "length";
    int32_t p = (int32_t)n_ids;
    while (n_gen < n_predict) {
        int32_t next = lorac_sampler_sample(sampler, logits);
        n_gen++;
        if (!ignore_eos && lorac_model_is_eos(model, next)) { stop = "eos"; break; }
        if (!ignore_eos && next == eot) { stop = "end of turn"; break; }
        emit_token(tok, &stream, next, strip_space && n_gen == 1);
        if (n_gen == n_predict) break;
        if (p >= n_ctx) { stop = "context"; break; }
        int32_t zero = 0;
        lorac_batch_t b = {.n_tokens = 1, .tokens = &next, .pos = &p, .seq_id = &zero, .logits = NULL};
        cli_check(lorac_context_decode(ctx, &b, logits));
        p++;
    }
    char tail[8];
    size_t w = lorac_utf8_stream_flush(&stream, tail);
    fwrite(tail, 1, w, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    double t2 = lorac_seconds();
    fprintf(stderr, "\nprompt: %zu tokens, %.1f tok/s\n", n_ids, (double)n_ids / (t1 - t0));
    fprintf(stderr, "generate: %lld tokens, %.1f tok/s (stop: %s, threads %d, %s kernels)\n", (long long)n_gen,
            n_gen > 0 ? (double)n_gen / (t2 - t1) : 0.0, stop, lorac_kernels_get_threads(), lorac_kernels_isa());

    free(logits); free(pos); free(seq); free(ids); free(file_text);
    lorac_sampler_free(sampler);
    lorac_context_free(ctx);
    cli_free_adapters(&adapters, loaded);
    lorac_model_free(model);
    return 0;
}
