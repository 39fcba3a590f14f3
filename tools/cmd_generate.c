/* lorac generate: the prompt and then the generated text on stdout, streamed
 * as produced; statistics on stderr. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "lorac/dataset.h"
#include "lorac/infer.h"
#include "lorac/kernels.h"
#include "lorac/model.h"

static const char *k_usage =
    "usage: lorac generate -m MODEL (-p TEXT | -f FILE | --chat -i) [options]\n"
    "  -m, --model DIR      HuggingFace model directory (config.json, *.safetensors, tokenizer.json)\n"
    "  --adapter DIR[:S]    apply a PEFT LoRA adapter with scale S (default 1), unmerged; repeatable\n"
    "  -p, --prompt TEXT    prompt text (may be empty)\n"
    "  -f, --file FILE      read the prompt from FILE\n"
    "  -n, --n-predict N    tokens to generate (default 128)\n"
    "  --temp T             temperature, 0 = greedy (default 0.8)\n"
    "  --top-k K            keep the K most likely tokens, 0 = off (default 40)\n"
    "  --top-p P            nucleus sampling mass in (0, 1], 1 = off (default 0.95)\n"
    "  --min-p P            drop tokens less likely than P times the most likely one, 0 = off (default 0)\n"
    "  --repeat-penalty R   tokens already in the prompt or the output: positive logits divided by R,\n"
    "                       negative ones multiplied, 1 = off (default 1; HF's and vLLM's repetition_penalty)\n"
    "  --presence-penalty P subtract P from the logits of tokens already generated, in [-2, 2] (default 0)\n"
    "  --frequency-penalty F  subtract F times the count of each token already generated (default 0)\n"
    "  --logit-bias ID+B    add B to token ID's logit (ID-B subtracts; -inf bans it); repeatable\n"
    "  --seed S             random seed (default 42)\n"
    "  --ignore-eos         keep going past end-of-sequence tokens until -n\n"
    "  --stop TEXT          end the output before TEXT (not printed); repeatable\n"
    "  --chat               the prompt is a user message: render it with the chat template, print only the\n"
    "                       reply, stop at the end of the assistant's turn\n"
    "  --system TEXT        system message for --chat\n"
    "  -i, --interactive    with --chat: after each reply read the next user message from stdin (one line; EOF\n"
    "                       ends), keeping the conversation and the cache of its unchanged tokens\n"
    "  --chat-template T    " LORAC_CHAT_TEMPLATES " (default: from tokenizer_config.json)\n"
    "  --chat-template-kwargs J  template variables, e.g. '{\"enable_thinking\": false}' (qwen3: answer\n"
    "                       without reasoning)\n"
    "  -c, --ctx N          context length (default: prompt + n, capped at the model's maximum)\n"
    "  --kv-cache-dtype T   f32 (default), bf16 or f16: the KV cache's values; bf16/f16 halve its memory\n"
    "  --quantize nf4       hold the projections in 4-bit NormalFloat (QLoRA's NF4): about 3.5x less memory than BF16\n"
    "  -t, --threads N      compute threads (default: all cores)\n";

/* --chat: the template and the strings it writes, settled once. */
typedef struct {
    cli_chat_t t;
    int32_t eot; /* the token that ends the assistant's turn, -1 if the tokenizer lacks it */
    int thinking; /* the template's enable_thinking (--chat-template-kwargs) */
} chat_t;

static void chat_setup(chat_t *c, const char *model_dir, const lorac_tokenizer_t *tok, const char *tpl_flag) {
    const char *tpl = tpl_flag ? lorac_dataset_chat_template_name(tpl_flag) : NULL;
    if (tpl_flag && !tpl)
        cli_usage_error("generate", "unknown --chat-template '%s' (" LORAC_CHAT_TEMPLATES ")", tpl_flag);
    cli_check(cli_chat_setup(&c->t, model_dir, tok, tpl));
    c->eot = lorac_tokenizer_token_id(tok, lorac_dataset_chat_end_of_turn(c->t.tpl, c->t.eos));
}

/* The conversation rendered with the assistant's generation prompt, as HF's
 * apply_chat_template(..., add_generation_prompt=True) does, and encoded
 * without the post-processor (the template writes its own BOS). */
static void chat_ids(const chat_t *c, const lorac_tokenizer_t *tok, const lorac_chat_message_t *m, size_t n,
                     int32_t **ids, size_t *n_ids) {
    char *text;
    size_t len;
    const cli_chat_t *t = &c->t;
    cli_check(lorac_dataset_chat_render_generation(t->tpl, t->default_system, m, n, t->bos, t->eos, c->thinking != 0,
                                                   &text, &len));
    cli_check(lorac_tokenizer_encode(tok, text, len, false, ids, n_ids));
    free(text);
}

/* What one run of sampling needs. */
typedef struct {
    const lorac_model_t *model;
    const lorac_tokenizer_t *tok;
    lorac_context_t *ctx;
    lorac_sampler_t *sampler;
    float *logits;
    int32_t *pos, *seq, n_batch, n_ctx;
    int64_t n_predict;
    int ignore_eos;
    int32_t eot;      /* a chat's end of turn, -1: none */
    int32_t *cached;  /* (n_ctx) the tokens in the cache, in order */
    int32_t n_cached;
    char *reply;      /* the text printed by the last generate(), NUL-terminated */
    size_t reply_len, reply_cap;
    const char *const *stops; /* --stop strings */
    int32_t n_stops;
    char *held;       /* text not printed yet: it may begin a stop string */
    size_t n_held, cap_held;
} gen_t;

/* Prints what of the held text is safe (all of it when `all`), keeping it in
 * g->reply. Returns 1 when a stop string matched: the text before it is
 * printed, the rest dropped. */
static int release(gen_t *g, int all) {
    size_t safe = g->n_held;
    long at = g->n_stops ? lorac_stop_find(g->stops, g->n_stops, g->held, g->n_held, &safe) : -1;
    if (at >= 0) safe = (size_t)at;
    else if (all) safe = g->n_held;
    fwrite(g->held, 1, safe, stdout);
    fflush(stdout);
    if (lorac_bytes_append(&g->reply, &g->reply_len, &g->reply_cap, g->held, safe)) cli_die("out of memory");
    memmove(g->held, g->held + safe, g->n_held - safe);
    g->n_held -= safe;
    if (at >= 0) g->n_held = 0;
    return at >= 0;
}

/* A token's bytes through the UTF-8 stream (whole characters only), then
 * printed as far as the stop strings allow. Returns 1 at a stop string. */
static int emit_token(gen_t *g, lorac_utf8_stream_t *st, int32_t id, int strip_space) {
    char bytes[512], out[3 * 512 + 3];
    int32_t n = lorac_tokenizer_token_bytes(g->tok, id, bytes, (int32_t)sizeof bytes);
    if (n <= 0) return 0;
    const char *b = bytes;
    if (strip_space && b[0] == ' ') { b++; n--; }
    size_t w = lorac_utf8_stream_push(st, b, (size_t)n, out);
    if (lorac_bytes_append(&g->held, &g->n_held, &g->cap_held, out, w)) cli_die("out of memory");
    return release(g, 0);
}

/* Decodes ids[from .. to) into the cache in batches (the logits of the last). */
static void decode_range(gen_t *g, const int32_t *ids, int32_t from, int32_t to) {
    for (int32_t done = from; done < to;) {
        int32_t n = to - done < g->n_batch ? to - done : g->n_batch;
        for (int32_t j = 0; j < n; j++) g->pos[j] = done + j;
        lorac_batch_t b = {.n_tokens = n, .tokens = ids + done, .pos = g->pos, .seq_id = g->seq, .logits = NULL};
        cli_check(lorac_context_decode(g->ctx, &b, g->logits));
        if (ids != g->cached) memcpy(g->cached + done, ids + done, sizeof(int32_t) * (size_t)n);
        done += n;
    }
}

/* Phi-3's longrope: transformers rotates a sequence with its long factors
 * once it is longer than original_max_position_embeddings, and recomputes
 * the cache when generation takes it across. So does this: before the
 * cache grows to len, a cache rotated with the short factors that len
 * needs the long ones for is dropped (the caller decodes it again), and a
 * fresh one is decoded with the factors of its whole length. Returns the
 * cached length to continue from. */
static int32_t rope_switch(gen_t *g, int32_t len) {
    if (!lorac_model_get_config(g->model)->rope_longrope) return g->n_cached;
    int32_t from = g->n_cached;
    if (from > 0 && !lorac_context_seq_rope_long(g->ctx, 0) && lorac_model_rope_long(lorac_model_get_config(g->model), len))
        from = 0;
    if (from == 0) {
        lorac_context_clear_seq(g->ctx, 0);
        lorac_context_set_seq_rope_len(g->ctx, 0, len);
    }
    return from;
}

/* Feeds ids[g->n_cached ..] (the prompt past what the cache already holds)
 * in batches, then samples up to n_predict tokens, printing each and
 * feeding it back. Returns why it stopped; *n_gen and the two phases'
 * seconds for the statistics. */
static const char *generate(gen_t *g, const int32_t *ids, int32_t n_ids, int strip_space, int64_t *n_gen, double *t_prompt,
                            double *t_gen) {
    double t0 = lorac_seconds();
    lorac_sampler_reset(g->sampler); /* the penalties count this prompt and this reply */
    lorac_sampler_add_prompt(g->sampler, ids, n_ids);
    decode_range(g, ids, rope_switch(g, n_ids), n_ids);
    g->n_cached = n_ids;
    double t1 = lorac_seconds();
    lorac_utf8_stream_t stream = {0};
    const char *stop = "length";
    g->reply_len = 0;
    *n_gen = 0;
    while (*n_gen < g->n_predict) {
        int32_t next = lorac_sampler_sample(g->sampler, g->logits);
        ++*n_gen;
        if (!g->ignore_eos && lorac_model_is_eos(g->model, next)) { stop = "eos"; break; }
        if (!g->ignore_eos && next == g->eot) { stop = "end of turn"; break; }
        if (emit_token(g, &stream, next, strip_space && *n_gen == 1)) { stop = "stop string"; break; }
        if (*n_gen == g->n_predict) break;
        if (g->n_cached >= g->n_ctx) { stop = "context"; break; }
        int32_t p = g->n_cached, zero = 0;
        if (rope_switch(g, p + 1) == 0) decode_range(g, g->cached, 0, p); /* again, with the long factors */
        lorac_batch_t b = {.n_tokens = 1, .tokens = &next, .pos = &p, .seq_id = &zero, .logits = NULL};
        cli_check(lorac_context_decode(g->ctx, &b, g->logits));
        g->cached[g->n_cached++] = next;
    }
    char tail[8];
    size_t w = lorac_utf8_stream_flush(&stream, tail);
    if (strcmp(stop, "stop string")) { /* what was held back, unless a stop string ended it */
        if (lorac_bytes_append(&g->held, &g->n_held, &g->cap_held, tail, w)) cli_die("out of memory");
        release(g, 1);
    }
    g->n_held = 0;
    fputc('\n', stdout);
    fflush(stdout);
    if (lorac_bytes_append(&g->reply, &g->reply_len, &g->reply_cap, "", 1)) cli_die("out of memory");
    g->reply_len--; /* the NUL is not text */
    *t_prompt = t1 - t0;
    *t_gen = lorac_seconds() - t1;
    return stop;
}

static char *dup_text(const char *s) {
    char *d = strdup(s);
    if (!d) cli_die("out of memory");
    return d;
}

/* --chat -i: one user message a line from stdin until EOF; each turn
 * re-renders the whole conversation (so the template decides, as for a chat
 * request) and decodes only the tokens after the longest prefix the cache
 * already holds. */
static void interactive(gen_t *g, const chat_t *c, const char *system, const char *first) {
    size_t cap = 16, n = 0;
    lorac_chat_message_t *m = malloc(cap * sizeof *m);
    if (!m) cli_die("out of memory");
    if (system) m[n++] = (lorac_chat_message_t){"system", dup_text(system)};
    char *line = NULL;
    size_t line_cap = 0;
    const char *user = first;
    for (;;) {
        if (!user) {
            fputs("> ", stderr);
            ssize_t got = getline(&line, &line_cap, stdin);
            if (got < 0) break;
            while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = '\0';
            if (got == 0) continue;
            if ((size_t)got != strlen(line)) { fprintf(stderr, "lorac generate: a line with a NUL byte is skipped\n"); continue; }
            user = line;
        }
        if (n + 2 > cap) {
            lorac_chat_message_t *grown = realloc(m, 2 * cap * sizeof *m);
            if (!grown) cli_die("out of memory");
            m = grown;
            cap *= 2;
        }
        m[n++] = (lorac_chat_message_t){"user", dup_text(user)};
        user = NULL;
        int32_t *ids;
        size_t n_ids;
        chat_ids(c, g->tok, m, n, &ids, &n_ids);
        if (n_ids >= (size_t)g->n_ctx) {
            fprintf(stderr, "lorac generate: the conversation (%zu tokens) fills the context of %d; -c sets a larger one\n",
                    n_ids, g->n_ctx);
            free(ids);
            break;
        }
        int32_t keep = 0; /* the longest prefix already cached; at least one token is decoded for the logits */
        while (keep < g->n_cached && keep + 1 < (int32_t)n_ids && g->cached[keep] == ids[keep]) keep++;
        keep = lorac_context_keep_seq(g->ctx, 0, keep); /* 0 when the windows have moved past it */
        g->n_cached = keep;
        int64_t n_gen;
        double tp, tg;
        const char *stop = generate(g, ids, (int32_t)n_ids, lorac_tokenizer_strips_leading_space(g->tok), &n_gen, &tp, &tg);
        fprintf(stderr, "[prompt %zu tokens (%d cached), %.1f tok/s; %lld tokens, %.1f tok/s; stop: %s]\n", n_ids, keep,
                (double)((int32_t)n_ids - keep) / (tp > 0 ? tp : 1e-9), (long long)n_gen, n_gen ? (double)n_gen / tg : 0.0,
                stop);
        free(ids);
        m[n++] = (lorac_chat_message_t){"assistant", dup_text(g->reply)};
    }
    for (size_t i = 0; i < n; i++) free((char *)m[i].content);
    free(m);
    free(line);
}

typedef struct {
    lorac_logit_bias_t v[LORAC_SAMPLER_MAX_LOGIT_BIAS];
    int32_t n;
} logit_biases_t;

/* llama.cpp's --logit-bias TOKEN_ID(+|-)BIAS: "15043+1", "2-inf". */
static void add_logit_bias(logit_biases_t *b, const char *arg) {
    char *end = NULL;
    long id = strtol(arg, &end, 10);
    double bias = 0;
    int ok = end != arg && id >= 0 && id <= INT32_MAX && (*end == '+' || *end == '-');
    if (ok && !strcmp(end + 1, "inf")) {
        bias = *end == '-' ? -INFINITY : INFINITY;
    } else if (ok) {
        char *e2 = NULL;
        bias = strtod(end + 1, &e2);
        ok = e2 != end + 1 && !*e2 && isfinite(bias) && end[1] != '+' && end[1] != '-';
        if (*end == '-') bias = -bias;
    }
    if (!ok) cli_usage_error("generate", "--logit-bias expects TOKEN_ID+BIAS or TOKEN_ID-BIAS (e.g. 15043+1, 2-inf), got '%s'", arg);
    if (b->n == LORAC_SAMPLER_MAX_LOGIT_BIAS) cli_usage_error("generate", "at most %d --logit-bias", LORAC_SAMPLER_MAX_LOGIT_BIAS);
    /* -inf bans a token; a finite stand-in keeps the sampler's input finite */
    b->v[b->n++] = (lorac_logit_bias_t){(int32_t)id, isinf(bias) ? (bias < 0 ? -1e30f : 1e30f) : (float)bias};
}

int cmd_generate(int argc, char **argv) {
    const char *model_dir = NULL, *prompt = NULL, *prompt_file = NULL;
    int64_t n_predict = 128, n_ctx_flag = 0;
    lorac_dtype_t kv_dtype = LORAC_DTYPE_F32;
    int ignore_eos = 0, threads = 0, chat = 0, interactive_mode = 0, quantize = 0;
    const char *system = NULL, *tpl_flag = NULL, *kwargs = NULL;
    lorac_sampler_params_t sp = lorac_sampler_default_params();
    logit_biases_t bias = {0};
    const char *stops[16];
    int32_t n_stops = 0;
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
        else if (!strcmp(a, "--min-p")) sp.min_p = (float)cli_float("generate", a, cli_value(argc, argv, &i, "generate"), 0.0, 1.0);
        else if (!strcmp(a, "--repeat-penalty") || !strcmp(a, "--repetition-penalty"))
            sp.repetition_penalty = (float)cli_float("generate", a, cli_value(argc, argv, &i, "generate"), 1e-6, 100.0);
        else if (!strcmp(a, "--presence-penalty")) sp.presence_penalty = (float)cli_float("generate", a, cli_value(argc, argv, &i, "generate"), -2.0, 2.0);
        else if (!strcmp(a, "--frequency-penalty")) sp.frequency_penalty = (float)cli_float("generate", a, cli_value(argc, argv, &i, "generate"), -2.0, 2.0);
        else if (!strcmp(a, "--logit-bias")) add_logit_bias(&bias, cli_value(argc, argv, &i, "generate"));
        else if (!strcmp(a, "--seed")) sp.seed = (uint64_t)cli_int("generate", a, cli_value(argc, argv, &i, "generate"), 0, INT64_MAX);
        else if (!strcmp(a, "--ignore-eos")) ignore_eos = 1;
        else if (!strcmp(a, "--stop")) {
            const char *v = cli_value(argc, argv, &i, "generate");
            if (!v[0]) cli_usage_error("generate", "--stop needs a non-empty text");
            if (n_stops == (int32_t)(sizeof stops / sizeof *stops)) cli_usage_error("generate", "at most 16 --stop");
            stops[n_stops++] = v;
        }
        else if (!strcmp(a, "--chat")) chat = 1;
        else if (!strcmp(a, "-i") || !strcmp(a, "--interactive")) interactive_mode = 1;
        else if (!strcmp(a, "--system")) system = cli_value(argc, argv, &i, "generate");
        else if (!strcmp(a, "--chat-template")) tpl_flag = cli_value(argc, argv, &i, "generate");
        else if (!strcmp(a, "--chat-template-kwargs")) kwargs = cli_value(argc, argv, &i, "generate");
        else if (!strcmp(a, "--kv-cache-dtype")) kv_dtype = cli_kv_dtype("generate", a, cli_value(argc, argv, &i, "generate"));
        else if (!strcmp(a, "--quantize")) quantize = cli_quantize_flag("generate", a, cli_value(argc, argv, &i, "generate"));
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) n_ctx_flag = cli_int("generate", a, cli_value(argc, argv, &i, "generate"), 1, 1 << 24);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) threads = (int)cli_int("generate", a, cli_value(argc, argv, &i, "generate"), 1, 1024);
        else cli_usage_error("generate", "unknown option '%s'", a);
    }
    if (!model_dir) cli_usage_error("generate", "-m MODEL is required");
    if (prompt && prompt_file) cli_usage_error("generate", "give one of -p TEXT or -f FILE, not both");
    if (!prompt && !prompt_file && !interactive_mode) cli_usage_error("generate", "give -p TEXT or -f FILE");
    if (!chat && (system || tpl_flag || kwargs || interactive_mode))
        cli_usage_error("generate", "--system, --chat-template, --chat-template-kwargs and --interactive go with --chat");
    int thinking = 1;
    if (kwargs && lorac_dataset_chat_kwargs_parse(kwargs, strlen(kwargs), &thinking))
        cli_usage_error("generate", "--chat-template-kwargs: %s", lorac_error_message());
    if (threads) lorac_kernels_set_threads(threads);
    sp.logit_bias = bias.v;
    sp.n_logit_bias = bias.n;

    char *file_text = NULL;
    size_t prompt_len = 0;
    if (prompt_file) { file_text = cli_read_file(prompt_file, &prompt_len); prompt = file_text; }
    else if (prompt) prompt_len = strlen(prompt);
    if (chat && prompt && strlen(prompt) != prompt_len) cli_die("%s holds a NUL byte; a chat message is text", prompt_file);

    cli_require_tokenizer(model_dir, "generate");
    lorac_model_t *model = cli_load_model(model_dir, quantize);
    const lorac_model_config_t *cfg = lorac_model_get_config(model);
    const lorac_tokenizer_t *tok = lorac_model_get_tokenizer(model);
    if (!tok) cli_die("%s: no tokenizer.json in the model directory (generate needs one)", model_dir);

    chat_t c = {.eot = -1, .thinking = thinking};
    if (chat) chat_setup(&c, model_dir, tok, tpl_flag);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (!interactive_mode || prompt) {
        if (chat) {
            lorac_chat_message_t m[2] = {{"system", system}, {"user", prompt}};
            chat_ids(&c, tok, system ? m : m + 1, system ? 2 : 1, &ids, &n_ids);
        } else {
            cli_check(lorac_tokenizer_encode(tok, prompt, prompt_len, true, &ids, &n_ids));
        }
        if (n_ids == 0) cli_die("the prompt encodes to no tokens and the tokenizer adds no BOS; give a non-empty prompt");
    }
    /* a conversation grows: it gets the model's context, up to 4096 positions, unless -c says otherwise; -c may
     * go past the positions the model was trained on (rotary extrapolates; quality may drop), as llama.cpp's
     * --ctx-size may, with a warning */
    int64_t n_ctx = n_ctx_flag ? n_ctx_flag : interactive_mode ? 4096 : (int64_t)n_ids + n_predict;
    if (!n_ctx_flag && n_ctx > cfg->max_position_embeddings) n_ctx = cfg->max_position_embeddings;
    if (n_ctx_flag) cli_warn_past_positions(n_ctx, cfg->max_position_embeddings);
    if ((int64_t)n_ids > n_ctx)
        cli_die("the prompt is %zu tokens, longer than the context of %lld", n_ids, (long long)n_ctx);

    lorac_context_params_t cp = lorac_context_default_params();
    cp.n_ctx = (int32_t)n_ctx;
    cp.kv_dtype = kv_dtype;
    cp.n_batch = (int32_t)(interactive_mode || n_ids >= 512 ? 512 : n_ids);
    lorac_context_t *ctx;
    cli_check(lorac_context_init(model, cp, &ctx));
    cli_attach_adapters(&adapters, model, ctx, loaded);
    gen_t g = {.model = model, .tok = tok, .ctx = ctx, .n_batch = cp.n_batch, .n_ctx = cp.n_ctx, .n_predict = n_predict,
               .ignore_eos = ignore_eos, .eot = c.eot, .stops = stops, .n_stops = n_stops};
    cli_check(lorac_sampler_init(&sp, cfg->vocab_size, &g.sampler));
    g.logits = malloc(sizeof(float) * (size_t)cfg->vocab_size);
    g.pos = malloc(sizeof(int32_t) * (size_t)cp.n_batch);
    g.seq = calloc((size_t)cp.n_batch, sizeof(int32_t));
    g.cached = malloc(sizeof(int32_t) * (size_t)cp.n_ctx);
    if (!g.logits || !g.pos || !g.seq || !g.cached) cli_die("out of memory");

    if (interactive_mode) {
        interactive(&g, &c, system, prompt ? prompt : NULL);
    } else {
        if (!chat) { /* a chat prints only the reply */
            fwrite(prompt, 1, prompt_len, stdout);
            fflush(stdout);
        }
        /* SentencePiece decoders drop the space that starts the text: only the
         * first generated token can start it, when the prompt printed nothing
         * (a chat's reply is decoded on its own, as HF decodes generated ids) */
        int strip_space = lorac_tokenizer_strips_leading_space(tok) && (prompt_len == 0 || chat);
        int64_t n_gen;
        double tp, tg;
        const char *stop = generate(&g, ids, (int32_t)n_ids, strip_space, &n_gen, &tp, &tg);
        fprintf(stderr, "\nprompt: %zu tokens, %.1f tok/s\n", n_ids, (double)n_ids / tp);
        fprintf(stderr, "generate: %lld tokens, %.1f tok/s (stop: %s, threads %d, %s kernels)\n", (long long)n_gen,
                n_gen > 0 ? (double)n_gen / tg : 0.0, stop, lorac_kernels_get_threads(), lorac_kernels_isa());
    }

    free(g.logits); free(g.pos); free(g.seq); free(g.cached); free(g.reply); free(g.held); free(ids); free(file_text);
    cli_chat_free(&c.t);
    lorac_sampler_free(g.sampler);
    lorac_context_free(ctx);
    cli_free_adapters(&adapters, loaded);
    lorac_model_free(model);
    return 0;
}
