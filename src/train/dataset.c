/* Training data: reading JSONL / JSON-array / plain-text files, turning each
 * record of a known format into tokens and labels, and keeping them in one
 * contiguous array (see lorac/dataset.h for the formats and rules). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/dataset_internal.h"

static const char *const k_format_names[] = {"auto", "text", "completion", "alpaca", "chat", "tokens"};
#define N_FORMATS ((int)(sizeof k_format_names / sizeof *k_format_names))

int lorac_data_format_parse(const char *name, lorac_data_format_t *out) {
    for (int i = 0; name && i < N_FORMATS; i++)
        if (!strcmp(name, k_format_names[i])) { *out = (lorac_data_format_t)i; return 0; }
    if (name && !strcmp(name, "sharegpt")) { *out = LORAC_DATA_CHAT; return 0; } /* chat reads ShareGPT records too */
    return -1;
}

const char *lorac_data_format_name(lorac_data_format_t f) {
    return (int)f >= 0 && (int)f < N_FORMATS ? k_format_names[f] : "?";
}

lorac_dataset_params_t lorac_dataset_default_params(void) {
    lorac_dataset_params_t p = {.format = LORAC_DATA_AUTO, .seq_len = 256, .vocab_size = INT32_MAX, .add_eos = true};
    return p;
}

static const char k_alpaca_input[] =
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n";
static const char k_alpaca_no_input[] =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n";

/* ---- column renames ---- */
/* The keys a record's formats read; --columns may map any of them. */
static const char *const k_columns[] = {"text",  "prompt",        "completion", "instruction", "input",  "output",
                                        "messages", "conversations", "system",     "input_ids",   "labels"};
#define N_COLUMNS ((int)(sizeof k_columns / sizeof *k_columns))
/* Optional keys: a record without the file's column just lacks this one. */
static bool column_optional(const char *ours) {
    return !strcmp(ours, "input") || !strcmp(ours, "system") || !strcmp(ours, "labels");
}

typedef struct {
    const char *ours; /* one of k_columns */
    char *theirs;     /* the file's key, malloc'd */
} column_t;

/* ---- the loader's state ---- */
typedef struct {
    lorac_dataset_t *ds;
    const lorac_tokenizer_t *tok;
    const lorac_dataset_params_t *p;
    const char *label;
    int32_t vocab_limit; /* ids must be below it */
    int32_t eos;         /* appended to text/completion/alpaca, -1: none */
    /* chat */
    char *cfg_eos, *bos_str, *eos_str, *default_system;
    bool chat_ready;
    /* scratch, reused across records */
    int32_t *ids, *labs;
    int64_t n_ex, cap_ex;
    chat_render_t render;
    dbuf_t text;
    lorac_chat_message_t *msgs;
    size_t cap_msgs;
    column_t cols[N_COLUMNS];
    int n_cols;
} loader_t;

#define NOMEM() lorac_error(LORAC_STATUS_NOMEM, "out of memory loading a dataset")

static int ex_reserve(loader_t *L, int64_t extra) {
    if (L->n_ex + extra <= L->cap_ex) return 0;
    int64_t cap = L->cap_ex ? L->cap_ex : 1024;
    while (cap < L->n_ex + extra) cap *= 2;
    int32_t *a = realloc(L->ids, sizeof(int32_t) * (size_t)cap);
    if (a) L->ids = a;
    int32_t *b = a ? realloc(L->labs, sizeof(int32_t) * (size_t)cap) : NULL;
    if (!b) return -1;
    L->labs = b;
    L->cap_ex = cap;
    return 0;
}

/* Encodes text, turning the tokenizer's complaint (invalid UTF-8 inside a
 * JSON escape, say) into a record error. */
static lorac_status_t encode(loader_t *L, const char *text, size_t len, bool add_special, int32_t **ids, size_t *n) {
    lorac_status_t s = lorac_tokenizer_encode(L->tok, text, len, add_special, ids, n);
    if (s == LORAC_STATUS_NOMEM) return s;
    if (s) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", lorac_error_message());
        return lorac_error(LORAC_STATUS_FORMAT, "cannot tokenize: %s", msg);
    }
    return LORAC_STATUS_OK;
}

/* Appends text[pieces] to the example. Each chunk (a run of pieces from one
 * chunk_start to the next) is encoded whole; where trainability changes
 * inside a chunk, the boundary is the token count of the chunk's text up to
 * that point (TRL's rule: prompt tokens = len(encode(prompt))). When a merge
 * straddles the boundary the count still comes from the prefix, so the
 * straddling token goes to the later piece. add_special applies the
 * post-processor to the first chunk (BOS of text/completion/alpaca). */
static lorac_status_t encode_pieces(loader_t *L, const char *text, const chat_piece_t *pc, size_t np, bool add_special) {
    bool all = L->p->train_on_inputs;
    for (size_t a = 0; a < np;) {
        size_t b = a + 1;
        while (b < np && !pc[b].chunk_start) b++;
        size_t c0 = pc[a].start, c1 = pc[b - 1].end;
        bool special = add_special && a == 0;
        int32_t *ids;
        size_t n;
        lorac_status_t s = encode(L, text + c0, c1 - c0, special, &ids, &n);
        if (s) return s;
        if (ex_reserve(L, (int64_t)n)) { free(ids); return NOMEM(); }
        size_t done = 0; /* tokens of this chunk already labelled */
        for (size_t k = a; k < b; k++) {
            size_t upto = n;
            if (k + 1 < b && pc[k + 1].trainable != pc[k].trainable && !all) {
                int32_t *pre;
                size_t np_ids;
                if ((s = encode(L, text + c0, pc[k].end - c0, special, &pre, &np_ids))) { free(ids); return s; }
                free(pre);
                upto = np_ids < n ? np_ids : n;
                if (upto < done) upto = done;
            } else if (k + 1 < b) {
                continue; /* same label as the next piece: label them together */
            }
            bool in_loss = all || pc[k].trainable;
            for (; done < upto; done++) {
                L->ids[L->n_ex] = ids[done];
                L->labs[L->n_ex++] = in_loss ? ids[done] : -100;
            }
        }
        free(ids);
        a = b;
    }
    return LORAC_STATUS_OK;
}

static lorac_status_t append_eos(loader_t *L) {
    if (!L->p->add_eos || L->eos < 0 || (L->n_ex > 0 && L->ids[L->n_ex - 1] == L->eos)) return LORAC_STATUS_OK;
    if (ex_reserve(L, 1)) return NOMEM();
    L->ids[L->n_ex] = L->eos;
    L->labs[L->n_ex++] = L->eos;
    return LORAC_STATUS_OK;
}

/* A prompt (not in the loss) followed by a response (in the loss), encoded as
 * one string. */
static lorac_status_t prompt_response(loader_t *L, const char *prompt, size_t plen, const char *resp) {
    L->text.len = 0;
    if (dbuf_put(&L->text, prompt, plen) || dbuf_puts(&L->text, resp)) return NOMEM();
    chat_piece_t pc[2] = {{0, plen, false, true}, {plen, L->text.len, true, false}};
    lorac_status_t s = encode_pieces(L, L->text.s, pc, 2, true);
    return s ? s : append_eos(L);
}

static const char *json_type(const cJSON *v) {
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "invalid";
}

/* A string field; required fields must be there, optional ones may be
 * absent or null (then *out is NULL). */
static lorac_status_t str_field(const cJSON *o, const char *key, bool required, const char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    *out = NULL;
    if (!v || (!required && cJSON_IsNull(v))) {
        return required ? lorac_error(LORAC_STATUS_FORMAT, "missing \"%s\"", key) : LORAC_STATUS_OK;
    }
    if (!cJSON_IsString(v)) return lorac_error(LORAC_STATUS_FORMAT, "\"%s\" must be a string, not %s", key, json_type(v));
    *out = v->valuestring;
    return LORAC_STATUS_OK;
}

/* ---- formats ---- */
static lorac_status_t build_text(loader_t *L, const char *text) {
    if (!*text) return lorac_error(LORAC_STATUS_FORMAT, "empty \"text\"");
    chat_piece_t pc = {0, strlen(text), true, true};
    lorac_status_t s = encode_pieces(L, text, &pc, 1, true);
    return s ? s : append_eos(L);
}

static lorac_status_t build_completion(loader_t *L, const cJSON *o) {
    const char *prompt, *completion;
    lorac_status_t s;
    if ((s = str_field(o, "prompt", true, &prompt)) || (s = str_field(o, "completion", true, &completion))) return s;
    if (!*completion) return lorac_error(LORAC_STATUS_FORMAT, "empty \"completion\"");
    return prompt_response(L, prompt, strlen(prompt), completion);
}

static lorac_status_t build_alpaca(loader_t *L, const cJSON *o) {
    const char *instruction, *input, *output;
    lorac_status_t s;
    if ((s = str_field(o, "instruction", true, &instruction)) || (s = str_field(o, "input", false, &input)) ||
        (s = str_field(o, "output", true, &output)))
        return s;
    if (!*output) return lorac_error(LORAC_STATUS_FORMAT, "empty \"output\"");
    dbuf_t pr = {0};
    int bad = input && *input ? dbuf_puts(&pr, k_alpaca_input) || dbuf_puts(&pr, instruction) ||
                                    dbuf_puts(&pr, "\n\n### Input:\n") || dbuf_puts(&pr, input)
                              : dbuf_puts(&pr, k_alpaca_no_input) || dbuf_puts(&pr, instruction);
    bad = bad || dbuf_puts(&pr, "\n\n### Response:\n");
    s = bad ? NOMEM() : prompt_response(L, pr.s, pr.len, output);
    dbuf_free(&pr);
    return s;
}

/* ShareGPT's speaker names for the roles the templates know. */
static const char *sharegpt_role(const char *from) {
    if (!strcmp(from, "human")) return "user";
    if (!strcmp(from, "gpt")) return "assistant";
    return from; /* system, user, assistant; anything else the template refuses */
}

/* {"messages": [{"role", "content"}]} (OpenAI, TRL) or ShareGPT's
 * {"conversations": [{"from": "human|gpt|system", "value"}]}; either with an
 * optional top-level "system" string (LLaMA-Factory's ShareGPT column),
 * used when the conversation has no system message of its own. */
static lorac_status_t build_chat(loader_t *L, const cJSON *o) {
    const char *key = "messages";
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!msgs) msgs = cJSON_GetObjectItemCaseSensitive(o, key = "conversations");
    if (!msgs) return lorac_error(LORAC_STATUS_FORMAT, "missing \"messages\" (or \"conversations\")");
    if (!cJSON_IsArray(msgs)) return lorac_error(LORAC_STATUS_FORMAT, "\"%s\" must be an array, not %s", key, json_type(msgs));
    const char *system;
    lorac_status_t s = str_field(o, "system", false, &system);
    if (s) return s;
    size_t n = (size_t)cJSON_GetArraySize(msgs);
    if (n == 0) return lorac_error(LORAC_STATUS_FORMAT, "empty \"%s\"", key);
    if (n + 1 > L->cap_msgs) {
        lorac_chat_message_t *m = realloc(L->msgs, (n + 1) * sizeof *m);
        if (!m) return NOMEM();
        L->msgs = m;
        L->cap_msgs = n + 1;
    }
    size_t i = 0;
    if (system && *system) L->msgs[i++] = (lorac_chat_message_t){"system", system};
    bool assistant = false;
    const cJSON *m;
    size_t k = 0; /* 1-based place in the file's list, for messages */
    cJSON_ArrayForEach(m, msgs) {
        k++;
        if (!cJSON_IsObject(m)) return lorac_error(LORAC_STATUS_FORMAT, "message %zu must be an object, not %s", k, json_type(m));
        bool sharegpt = cJSON_GetObjectItemCaseSensitive(m, "from") != NULL;
        const char *rkey = sharegpt ? "from" : "role", *ckey = sharegpt ? "value" : "content";
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, rkey), *content = cJSON_GetObjectItemCaseSensitive(m, ckey);
        if (!role || !content) return lorac_error(LORAC_STATUS_FORMAT, "message %zu: missing \"%s\"", k, role ? ckey : rkey);
        if (!cJSON_IsString(role) || !cJSON_IsString(content))
            return lorac_error(LORAC_STATUS_FORMAT, "message %zu: \"%s\" must be a string, not %s", k,
                               cJSON_IsString(role) ? ckey : rkey, json_type(cJSON_IsString(role) ? content : role));
        L->msgs[i].role = sharegpt ? sharegpt_role(role->valuestring) : role->valuestring;
        L->msgs[i].content = content->valuestring;
        if (k == 1 && system && *system && !strcmp(L->msgs[i].role, "system")) {
            L->msgs[0] = L->msgs[1]; /* the conversation's own system message wins */
            continue;
        }
        assistant = assistant || !strcmp(L->msgs[i].role, "assistant");
        i++;
    }
    n = i;
    if (!assistant && !L->p->train_on_inputs)
        return lorac_error(LORAC_STATUS_FORMAT, "no assistant message, so nothing to train on (or use --train-on-inputs)");
    s = chat_render_pieces((chat_tpl_t)L->ds->chat_tpl, L->default_system, L->msgs, n, L->bos_str, L->eos_str,
                           &L->render);
    if (s) return s;
    if (L->render.text.len == 0) return lorac_error(LORAC_STATUS_FORMAT, "empty conversation");
    return encode_pieces(L, L->render.text.s, L->render.pieces, L->render.n, false);
}

/* A JSON number that is an integer in [lo, hi). */
static int json_int(const cJSON *v, double lo, double hi, int32_t *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= lo && d < hi) || d != (double)(int64_t)d) return -1;
    *out = (int32_t)d;
    return 0;
}

static lorac_status_t build_tokens(loader_t *L, const cJSON *o) {
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(o, "input_ids");
    const cJSON *labels = cJSON_GetObjectItemCaseSensitive(o, "labels");
    if (!ids) return lorac_error(LORAC_STATUS_FORMAT, "missing \"input_ids\"");
    if (!cJSON_IsArray(ids)) return lorac_error(LORAC_STATUS_FORMAT, "\"input_ids\" must be an array of token ids, not %s", json_type(ids));
    int n = cJSON_GetArraySize(ids);
    if (n == 0) return lorac_error(LORAC_STATUS_FORMAT, "empty \"input_ids\"");
    if (cJSON_IsNull(labels)) labels = NULL;
    if (labels && !cJSON_IsArray(labels))
        return lorac_error(LORAC_STATUS_FORMAT, "\"labels\" must be an array as long as \"input_ids\" (%d), not %s", n,
                           json_type(labels));
    if (labels && cJSON_GetArraySize(labels) != n)
        return lorac_error(LORAC_STATUS_FORMAT, "\"labels\" must be an array as long as \"input_ids\" (%d), not %d long",
                           n, cJSON_GetArraySize(labels));
    if (ex_reserve(L, n)) return NOMEM();
    const cJSON *lab = labels ? labels->child : NULL, *id;
    int k = 0;
    cJSON_ArrayForEach(id, ids) {
        int32_t v, l;
        if (json_int(id, 0, (double)L->vocab_limit, &v))
            return lorac_error(LORAC_STATUS_FORMAT, "input_ids must be integers in 0..%d (input_ids[%d] is not)",
                               L->vocab_limit - 1, k);
        l = v;
        if (lab) {
            if (json_int(lab, -100, (double)L->vocab_limit, &l) || (l != -100 && l != v))
                return lorac_error(LORAC_STATUS_FORMAT, "labels[%d] must be -100 or input_ids[%d] (%d)", k, k, v);
            lab = lab->next;
        }
        L->ids[L->n_ex] = v;
        L->labs[L->n_ex++] = l;
        k++;
    }
    return LORAC_STATUS_OK;
}

static lorac_data_format_t detect_format(const cJSON *o) {
    if (cJSON_GetObjectItemCaseSensitive(o, "messages") || cJSON_GetObjectItemCaseSensitive(o, "conversations"))
        return LORAC_DATA_CHAT;
    if (cJSON_GetObjectItemCaseSensitive(o, "input_ids")) return LORAC_DATA_TOKENS;
    if (cJSON_GetObjectItemCaseSensitive(o, "instruction") && cJSON_GetObjectItemCaseSensitive(o, "output"))
        return LORAC_DATA_ALPACA;
    if (cJSON_GetObjectItemCaseSensitive(o, "prompt") && cJSON_GetObjectItemCaseSensitive(o, "completion"))
        return LORAC_DATA_COMPLETION;
    if (cJSON_GetObjectItemCaseSensitive(o, "text")) return LORAC_DATA_TEXT;
    return LORAC_DATA_AUTO;
}

static lorac_status_t undetectable(const cJSON *o) {
    char keys[200] = "";
    size_t used = 0;
    const cJSON *k;
    cJSON_ArrayForEach(k, o) {
        int w = snprintf(keys + used, sizeof keys - used, "%s\"%s\"", used ? ", " : "", k->string);
        if (w < 0 || (size_t)w >= sizeof keys - used) { snprintf(keys + sizeof keys - 5, 5, "..."); break; }
        used += (size_t)w;
    }
    return lorac_error(LORAC_STATUS_FORMAT,
                       "cannot tell the format from the keys {%s}: expected text, prompt+completion, "
                       "instruction+output, messages, conversations or input_ids (or give --format, or rename keys with --columns)", keys);
}

/* Settles the chat template and the BOS/EOS strings it writes, once. Errors
 * here are about the model, not a line, so they are fatal. */
static lorac_status_t chat_prepare(loader_t *L) {
    if (L->chat_ready) return LORAC_STATUS_OK;
    const lorac_dataset_params_t *p = L->p;
    const char *name = NULL;
    lorac_status_t s;
    if (!L->tok) return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: chat data needs a tokenizer", L->label);
    if (p->chat_template) {
        name = lorac_dataset_chat_template_name(p->chat_template);
        if (!name)
            return lorac_error(LORAC_STATUS_INVALID_ARG,
                               "unknown chat template '%s' (" LORAC_CHAT_TEMPLATES ")", p->chat_template);
    } else if (p->tokenizer_config) {
        if ((s = lorac_dataset_chat_template_from_config(p->tokenizer_config, &name, &L->default_system))) return s;
    } else {
        return lorac_error(LORAC_STATUS_INVALID_ARG,
                           "%s: chat data needs a chat template and there is no tokenizer_config.json to recognise it "
                           "from; pass --chat-template " LORAC_CHAT_TEMPLATES, L->label);
    }
    chat_tpl_t t = (chat_tpl_t)chat_tpl_from_name(name);
    /* the BOS/EOS strings the template writes, each checked to be one token */
    if ((s = lorac_dataset_chat_tokens(name, L->tok, p->tokenizer_config, &L->bos_str, &L->eos_str))) return s;
    L->ds->chat_tpl = (int)t;
    L->chat_ready = true;
    return LORAC_STATUS_OK;
}

/* Builds the example of one parsed record into the scratch buffers. */
static lorac_status_t build_record(loader_t *L, const cJSON *o) {
    lorac_dataset_t *ds = L->ds;
    if (!cJSON_IsObject(o)) return lorac_error(LORAC_STATUS_FORMAT, "not a JSON object (%s)", json_type(o));
    lorac_data_format_t f = ds->format == LORAC_DATA_AUTO ? detect_format(o) : ds->format;
    if (f == LORAC_DATA_AUTO) return undetectable(o);
    if (f != LORAC_DATA_TOKENS && !L->tok)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: format %s needs a tokenizer", L->label, lorac_data_format_name(f));
    lorac_status_t s;
    if (f == LORAC_DATA_CHAT && (s = chat_prepare(L))) return s;
    ds->format = f; /* the first good record settles AUTO */
    switch (f) {
    case LORAC_DATA_TEXT: {
        const char *text;
        if ((s = str_field(o, "text", true, &text))) return s;
        return build_text(L, text);
    }
    case LORAC_DATA_COMPLETION: return build_completion(L, o);
    case LORAC_DATA_ALPACA: return build_alpaca(L, o);
    case LORAC_DATA_CHAT: return build_chat(L, o);
    case LORAC_DATA_TOKENS: return build_tokens(L, o);
    case LORAC_DATA_AUTO: break;
    }
    return LORAC_STATUS_OK;
}

/* Whether an example of n tokens has a target: a label after the first
 * (position t predicts label t + 1; the first is never predicted). */
static bool has_targets(const int32_t *labels, int64_t n) {
    for (int64_t i = 1; i < n; i++)
        if (labels[i] != -100) return true;
    return false;
}

/* Moves the scratch example into the dataset, truncated to seq_len + 1. */
static lorac_status_t commit_example(loader_t *L) {
    lorac_dataset_t *ds = L->ds;
    int64_t n = L->n_ex, max = (int64_t)ds->seq_len + 1;
    if (n == 0) return lorac_error(LORAC_STATUS_FORMAT, "empty example (no tokens)");
    bool cut = n > max;
    if (cut) { n = max; ds->truncated++; }
    if (ds->n_tok + n > ds->cap_tok) {
        int64_t cap = ds->cap_tok ? ds->cap_tok : 1 << 16;
        while (cap < ds->n_tok + n) cap *= 2;
        int32_t *t = realloc(ds->tokens, sizeof(int32_t) * (size_t)cap);
        if (t) ds->tokens = t;
        int32_t *l = t ? realloc(ds->labels, sizeof(int32_t) * (size_t)cap) : NULL;
        if (!l) return NOMEM();
        ds->labels = l;
        ds->cap_tok = cap;
    }
    if (ds->n + 2 > ds->cap) {
        int64_t cap = ds->cap ? 2 * ds->cap : 1024;
        int64_t *o = realloc(ds->offsets, sizeof(int64_t) * (size_t)cap);
        if (o) ds->offsets = o;
        uint8_t *c = o ? realloc(ds->cut, (size_t)cap) : NULL;
        if (!c) return NOMEM();
        ds->cut = c;
        ds->cap = cap;
    }
    ds->cut[ds->n] = cut;
    memcpy(ds->tokens + ds->n_tok, L->ids, sizeof(int32_t) * (size_t)n);
    memcpy(ds->labels + ds->n_tok, L->labs, sizeof(int32_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++) ds->n_trainable += L->labs[i] != -100;
    ds->no_targets += !has_targets(L->labs, n);
    ds->offsets[0] = 0;
    ds->n_tok += n;
    ds->offsets[++ds->n] = ds->n_tok;
    return LORAC_STATUS_OK;
}

/* Record errors (FORMAT) get "FILE:LINE: " and are skipped with skip_bad;
 * anything else (memory, an unusable chat template) stops the load. */
static lorac_status_t record_done(loader_t *L, lorac_status_t s, int64_t line) {
    if (!s) s = commit_example(L);
    if (s != LORAC_STATUS_FORMAT) return s;
    char msg[1200];
    snprintf(msg, sizeof msg, "%s:%lld: %s", L->label, (long long)line, lorac_error_message());
    if (!L->p->skip_bad) return lorac_error(LORAC_STATUS_FORMAT, "%s", msg);
    L->ds->skipped++;
    if (!L->ds->first_skip && !(L->ds->first_skip = strdup(msg))) return NOMEM();
    lorac_error_clear();
    return LORAC_STATUS_OK;
}

/* Parses params.columns, "ours=theirs[,ours=theirs...]", into L->cols. */
static lorac_status_t columns_parse(loader_t *L, const char *spec) {
    if (!spec) return LORAC_STATUS_OK;
    const char *q = spec;
    while (*q) {
        const char *comma = strchr(q, ','), *end = comma ? comma : q + strlen(q);
        const char *eq = memchr(q, '=', (size_t)(end - q));
        int len = (int)(end - q);
        if (!eq || eq == q || eq + 1 == end)
            return lorac_error(LORAC_STATUS_INVALID_ARG, "column map \"%.*s\": expected OURS=THEIRS, e.g. output=summary",
                               len, q);
        int k = 0;
        while (k < N_COLUMNS && (strlen(k_columns[k]) != (size_t)(eq - q) || memcmp(k_columns[k], q, (size_t)(eq - q))))
            k++;
        if (k == N_COLUMNS)
            return lorac_error(LORAC_STATUS_INVALID_ARG,
                               "column map \"%.*s\": \"%.*s\" is not a field of a format (text, prompt, completion, "
                               "instruction, input, output, messages, conversations, system, input_ids, labels)",
                               len, q, (int)(eq - q), q);
        for (int i = 0; i < L->n_cols; i++)
            if (L->cols[i].ours == k_columns[k])
                return lorac_error(LORAC_STATUS_INVALID_ARG, "column map: \"%s\" is mapped twice", k_columns[k]);
        column_t *c = &L->cols[L->n_cols];
        if (!(c->theirs = strndup(eq + 1, (size_t)(end - eq - 1)))) return NOMEM();
        c->ours = k_columns[k];
        L->n_cols++;
        q = comma ? comma + 1 : end;
    }
    return LORAC_STATUS_OK;
}

/* Renames the record's columns to the names its format reads. All sources
 * are copied before any key changes, so "a=b,b=a" swaps; a key already
 * named like a target is replaced. */
static lorac_status_t columns_apply(loader_t *L, cJSON *o) {
    if (!L->n_cols || !cJSON_IsObject(o)) return LORAC_STATUS_OK;
    cJSON *val[N_COLUMNS] = {0};
    lorac_status_t s = LORAC_STATUS_OK;
    for (int i = 0; i < L->n_cols && !s; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, L->cols[i].theirs);
        if (v) {
            if (!(val[i] = cJSON_Duplicate(v, true))) s = NOMEM();
        } else if (!column_optional(L->cols[i].ours)) {
            s = lorac_error(LORAC_STATUS_FORMAT, "missing \"%s\" (the column mapped to \"%s\")", L->cols[i].theirs,
                            L->cols[i].ours);
        }
    }
    for (int i = 0; i < L->n_cols && !s; i++) cJSON_DeleteItemFromObjectCaseSensitive(o, L->cols[i].theirs);
    for (int i = 0; i < L->n_cols && !s; i++) {
        cJSON_DeleteItemFromObjectCaseSensitive(o, L->cols[i].ours);
        if (val[i]) {
            if (!cJSON_AddItemToObject(o, L->cols[i].ours, val[i])) { s = NOMEM(); break; }
            val[i] = NULL;
        }
    }
    for (int i = 0; i < L->n_cols; i++) cJSON_Delete(val[i]);
    return s;
}

/* One JSON record of `len` bytes. */
static lorac_status_t take_json(loader_t *L, const char *json, size_t len, int64_t line) {
    L->n_ex = 0;
    lorac_status_t s = LORAC_STATUS_OK;
    cJSON *o = NULL;
    /* UTF-8 is checked on the raw bytes: cJSON would pass invalid bytes
     * through into strings */
    if (!lorac_utf8_valid(json, len)) s = lorac_error(LORAC_STATUS_FORMAT, "not valid UTF-8");
    else {
        const char *end = NULL;
        o = cJSON_ParseWithLengthOpts(json, len, &end, 0);
        if (o && end) /* nothing but whitespace may follow the value */
            for (const char *q = end; q < json + len; q++)
                if (!strchr(" \t\r\n", *q)) { cJSON_Delete(o); o = NULL; break; }
        if (!o) s = lorac_error(LORAC_STATUS_FORMAT, "not valid JSON");
        else if (!(s = columns_apply(L, o))) s = build_record(L, o);
    }
    cJSON_Delete(o);
    return record_done(L, s, line);
}

static bool blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!strchr(" \t\r\n", s[i])) return false;
    return true;
}

static lorac_status_t read_jsonl(loader_t *L, const char *data, size_t len) {
    int64_t line = 0;
    for (size_t start = 0; start < len;) {
        const char *nl = memchr(data + start, '\n', len - start);
        size_t end = nl ? (size_t)(nl - data) : len;
        line++;
        if (!blank(data + start, end - start)) {
            lorac_status_t s = take_json(L, data + start, end - start, line);
            if (s) return s;
        }
        start = end + 1;
    }
    return LORAC_STATUS_OK;
}

/* A JSON array of records. The elements are found by a small scanner that
 * tracks strings and nesting, so each is parsed on its own (no tree of the
 * whole file in memory) and errors can name the line an element starts on. */
static lorac_status_t read_json_array(loader_t *L, const char *d, size_t len, size_t i, int64_t line) {
    i++; /* '[' */
    for (bool first = true;; first = false) {
        while (i < len && strchr(" \t\r\n", d[i])) line += d[i++] == '\n';
        if (i < len && d[i] == ']' && first) { i++; break; }
        if (i >= len) return lorac_error(LORAC_STATUS_FORMAT, "%s:%lld: unterminated JSON array", L->label, (long long)line);
        size_t start = i;
        int64_t start_line = line;
        int depth = 0;
        bool in_str = false;
        for (; i < len; i++) {
            char c = d[i];
            if (c == '\n') line++;
            if (in_str) {
                if (c == '\\') { if (i + 1 < len && d[i + 1] == '\n') line++; i++; }
                else if (c == '"') in_str = false;
            } else if (c == '"') in_str = true;
            else if (c == '{' || c == '[') depth++;
            else if (c == '}' || c == ']') { if (depth == 0) break; depth--; }
            else if (c == ',' && depth == 0) break;
        }
        if (i >= len) return lorac_error(LORAC_STATUS_FORMAT, "%s:%lld: unterminated JSON array", L->label, (long long)start_line);
        if (d[i] == ']' && blank(d + start, i - start)) /* "[1, ]" */
            return lorac_error(LORAC_STATUS_FORMAT, "%s:%lld: expected a value before ']'", L->label, (long long)line);
        lorac_status_t s = take_json(L, d + start, i - start, start_line);
        if (s) return s;
        if (d[i++] == ']') break;
    }
    while (i < len && strchr(" \t\r\n", d[i])) line += d[i++] == '\n';
    if (i < len) return lorac_error(LORAC_STATUS_FORMAT, "%s:%lld: unexpected data after the JSON array", L->label, (long long)line);
    return LORAC_STATUS_OK;
}

/* Plain text: stories separated by <|endoftext|> lines, else by blank lines. */
static lorac_status_t read_plain_text(loader_t *L, const char *d, size_t len) {
    static const char sep[] = "<|endoftext|>";
    if (L->ds->format != LORAC_DATA_AUTO && L->ds->format != LORAC_DATA_TEXT)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: a .txt file holds plain text; its format is text, not %s",
                           L->label, lorac_data_format_name(L->ds->format));
    if (!L->tok) return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: text needs a tokenizer", L->label);
    L->ds->format = LORAC_DATA_TEXT;
    bool marker = memmem(d, len, sep, sizeof sep - 1) != NULL;
    int64_t line = 1;
    size_t i = 0;
    while (i < len) {
        /* find the end of this example */
        size_t end = i;
        int64_t start_line = line, end_line;
        if (marker) {
            const char *m = memmem(d + i, len - i, sep, sizeof sep - 1);
            end = m ? (size_t)(m - d) : len;
        } else {
            /* up to a line that is empty or all blanks */
            for (size_t j = i; j < len;) {
                const char *nl = memchr(d + j, '\n', len - j);
                size_t e = nl ? (size_t)(nl - d) : len;
                if (blank(d + j, e - j) && j > i) { end = j; break; }
                end = e;
                j = e + 1;
            }
        }
        end_line = line;
        for (size_t j = i; j < end; j++) end_line += d[j] == '\n';
        /* trim, counting the newlines skipped at the front for the line number */
        size_t a = i, b = end;
        while (a < b && strchr(" \t\r\n", d[a])) start_line += d[a++] == '\n';
        while (b > a && strchr(" \t\r\n", d[b - 1])) b--;
        if (b > a) {
            L->n_ex = 0;
            lorac_status_t s;
            if (!lorac_utf8_valid(d + a, b - a)) s = lorac_error(LORAC_STATUS_FORMAT, "not valid UTF-8");
            else {
                L->text.len = 0;
                s = dbuf_put(&L->text, d + a, b - a) ? NOMEM() : build_text(L, L->text.s);
            }
            if ((s = record_done(L, s, start_line))) return s;
        }
        line = end_line;
        i = marker && end < len ? end + sizeof sep - 1 : end;
        if (!marker && i < len) { /* skip the blank line(s) */
            while (i < len && strchr(" \t\r\n", d[i])) line += d[i++] == '\n';
        }
    }
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_dataset_load_memory(const char *data, size_t len, const char *label, const lorac_tokenizer_t *tok,
                                         const lorac_dataset_params_t *p, lorac_dataset_t **out) {
    *out = NULL;
    if (!label) label = "(memory)";
    if (p->seq_len < 1) return lorac_error(LORAC_STATUS_INVALID_ARG, "sequence length must be at least 1, not %d", p->seq_len);
    if ((int)p->format < 0 || (int)p->format >= N_FORMATS)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "bad dataset format %d", (int)p->format);
    lorac_dataset_t *ds = calloc(1, sizeof *ds);
    if (!ds) return NOMEM();
    ds->format = p->format;
    ds->chat_tpl = -1;
    ds->seq_len = p->seq_len;
    ds->perm_epoch = -1;
    loader_t L = {.ds = ds, .tok = tok, .p = p, .label = label, .eos = -1};
    L.vocab_limit = p->vocab_size > 0 ? p->vocab_size : INT32_MAX;
    if (tok && p->vocab_size == INT32_MAX) L.vocab_limit = lorac_tokenizer_vocab_size(tok);
    lorac_status_t s = columns_parse(&L, p->columns);
    if (s) goto done;
    char *cfg_bos = NULL; /* the chat templates read it themselves (lorac_dataset_chat_tokens) */
    if (p->tokenizer_config && (s = chat_config_tokens(p->tokenizer_config, &cfg_bos, &L.cfg_eos))) goto done;
    free(cfg_bos);
    if (tok) {
        L.eos = lorac_tokenizer_eos_id(tok);
        if (L.cfg_eos) { /* tokenizer_config's eos_token is what HF trainers append */
            int32_t id = lorac_tokenizer_token_id(tok, L.cfg_eos);
            if (id >= 0) L.eos = id;
        }
    }
    ds->pad_id = L.eos >= 0 ? L.eos : 0;

    size_t i = 0;
    if (len >= 3 && !memcmp(data, "\xEF\xBB\xBF", 3)) i = 3; /* BOM */
    size_t lab_len = strlen(label);
    int64_t line = 1;
    if (lab_len >= 4 && !strcmp(label + lab_len - 4, ".txt")) {
        s = read_plain_text(&L, data + i, len - i);
    } else {
        size_t j = i;
        while (j < len && strchr(" \t\r\n", data[j])) line += data[j++] == '\n';
        if (j < len && data[j] == '[') s = read_json_array(&L, data, len, j, line);
        else s = read_jsonl(&L, data + i, len - i);
    }
    if (s) goto done;
    if (ds->n == 0) {
        if (ds->skipped)
            s = lorac_error(LORAC_STATUS_FORMAT, "%s: no examples (%lld bad records skipped; the first: %s)", label,
                            (long long)ds->skipped, ds->first_skip);
        else
            s = lorac_error(LORAC_STATUS_FORMAT, "%s: no examples", label);
        goto done;
    }
    if (ds->format == LORAC_DATA_AUTO) ds->format = LORAC_DATA_TEXT; /* unreachable: a record settled it */
done:
    free(L.ids); free(L.labs); free(L.msgs);
    free(L.cfg_eos); free(L.bos_str); free(L.eos_str); free(L.default_system);
    chat_render_free(&L.render);
    dbuf_free(&L.text);
    for (int c = 0; c < L.n_cols; c++) free(L.cols[c].theirs);
    if (s) { lorac_dataset_free(ds); return s; }
    *out = ds;
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_dataset_load(const char *path, const lorac_tokenizer_t *tok, const lorac_dataset_params_t *p,
                                  lorac_dataset_t **out) {
    *out = NULL;
    lorac_mapped_file_t f;
    lorac_status_t s = lorac_file_map(path, &f);
    if (s) return s;
    s = lorac_dataset_load_memory(f.data ? (const char *)f.data : "", f.size, path, tok, p, out);
    lorac_file_unmap(&f);
    return s;
}

/* Appends example i of `from` to `to` (capacities already reserved). */
static void copy_example(lorac_dataset_t *to, const lorac_dataset_t *from, int64_t i) {
    int64_t a = from->offsets[i], n = from->offsets[i + 1] - a;
    memmove(to->tokens + to->n_tok, from->tokens + a, sizeof(int32_t) * (size_t)n);
    memmove(to->labels + to->n_tok, from->labels + a, sizeof(int32_t) * (size_t)n);
    /* count on the moved copy: compacting in place (to == from), the move
     * may have overwritten the source's tail */
    const int32_t *labels = to->labels + to->n_tok;
    for (int64_t k = 0; k < n; k++) to->n_trainable += labels[k] != -100;
    to->truncated += from->cut[i];
    to->no_targets += !has_targets(labels, n);
    to->cut[to->n] = from->cut[i];
    to->n_tok += n;
    to->offsets[++to->n] = to->n_tok;
}

int64_t lorac_dataset_split_size(int64_t n_examples, double split) {
    if (!(split > 0) || (split >= 1 && (split != floor(split) || split > 9e18))) return -1;
    int64_t n = split < 1 ? (int64_t)llround(split * (double)n_examples) : (int64_t)split;
    return n < 1 ? 1 : n;
}

lorac_status_t lorac_dataset_split(lorac_dataset_t *ds, int64_t n_eval, uint64_t seed, lorac_dataset_t **eval_out) {
    *eval_out = NULL;
    if (n_eval < 1 || n_eval >= ds->n)
        return lorac_error(LORAC_STATUS_INVALID_ARG, "a held-out split of %lld examples out of %lld leaves %s",
                           (long long)n_eval, (long long)ds->n, n_eval < 1 ? "nothing to evaluate on" : "nothing to train on");
    /* which examples: the first n_eval of a Fisher-Yates shuffle from its own stream of the seed */
    int64_t *idx = malloc(sizeof(int64_t) * (size_t)ds->n);
    uint8_t *held = calloc((size_t)ds->n, 1);
    lorac_dataset_t *ev = calloc(1, sizeof *ev);
    if (!idx || !held || !ev) { free(idx); free(held); free(ev); return NOMEM(); }
    for (int64_t i = 0; i < ds->n; i++) idx[i] = i;
    lorac_rng_t rng;
    lorac_rng_seed(&rng, seed ^ 0x6576616c73706c74ull); /* "evalsplt": not the batcher's epoch streams */
    for (int64_t i = 0; i < n_eval; i++) {
        uint64_t r = ((uint64_t)lorac_rng_u32(&rng) << 32) | lorac_rng_u32(&rng);
        int64_t j = i + (int64_t)(r % (uint64_t)(ds->n - i)), t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
        held[idx[i]] = 1;
    }
    free(idx);
    int64_t eval_tok = 0;
    for (int64_t i = 0; i < ds->n; i++)
        if (held[i]) eval_tok += ds->offsets[i + 1] - ds->offsets[i];
    *ev = (lorac_dataset_t){.format = ds->format, .chat_tpl = ds->chat_tpl, .seq_len = ds->seq_len,
                            .pad_id = ds->pad_id, .perm_epoch = -1};
    ev->tokens = malloc(sizeof(int32_t) * (size_t)(eval_tok ? eval_tok : 1));
    ev->labels = malloc(sizeof(int32_t) * (size_t)(eval_tok ? eval_tok : 1));
    ev->offsets = malloc(sizeof(int64_t) * (size_t)(n_eval + 1));
    ev->cut = malloc((size_t)(n_eval + 1));
    if (!ev->tokens || !ev->labels || !ev->offsets || !ev->cut) { free(held); lorac_dataset_free(ev); return NOMEM(); }
    ev->cap_tok = eval_tok;
    ev->cap = n_eval + 1;
    ev->offsets[0] = 0;
    /* both keep file order; the rest is compacted in place */
    int64_t n_all = ds->n;
    ds->n = ds->n_tok = ds->n_trainable = ds->truncated = ds->no_targets = 0; /* each side counts its own */
    for (int64_t i = 0; i < n_all; i++) {
        if (held[i]) copy_example(ev, ds, i);
        else copy_example(ds, ds, i); /* moves down: offsets[i + 1] is read before offsets[n + 1] is written */
    }
    free(held);
    free(ds->perm); /* the cached epoch order was of all examples */
    ds->perm = NULL;
    ds->perm_epoch = -1;
    *eval_out = ev;
    return LORAC_STATUS_OK;
}

void lorac_dataset_free(lorac_dataset_t *ds) {
    if (!ds) return;
    free(ds->tokens); free(ds->labels); free(ds->offsets); free(ds->cut); free(ds->perm); free(ds->first_skip);
    free(ds);
}

int64_t lorac_dataset_n_examples(const lorac_dataset_t *ds) { return ds->n; }
int64_t lorac_dataset_n_skipped(const lorac_dataset_t *ds) { return ds->skipped; }
int64_t lorac_dataset_n_truncated(const lorac_dataset_t *ds) { return ds->truncated; }
int64_t lorac_dataset_n_without_targets(const lorac_dataset_t *ds) { return ds->no_targets; }
int64_t lorac_dataset_n_tokens(const lorac_dataset_t *ds) { return ds->n_tok; }
int64_t lorac_dataset_n_trainable(const lorac_dataset_t *ds) { return ds->n_trainable; }
const char *lorac_dataset_first_skip_reason(const lorac_dataset_t *ds) { return ds->first_skip; }
lorac_data_format_t lorac_dataset_format(const lorac_dataset_t *ds) { return ds->format; }
int32_t lorac_dataset_seq_len(const lorac_dataset_t *ds) { return ds->seq_len; }
int32_t lorac_dataset_pad_id(const lorac_dataset_t *ds) { return ds->pad_id; }
const char *lorac_dataset_chat_template(const lorac_dataset_t *ds) {
    return ds->chat_tpl >= 0 ? chat_tpl_name((chat_tpl_t)ds->chat_tpl) : NULL;
}

int32_t lorac_dataset_example(const lorac_dataset_t *ds, int64_t i, const int32_t **tokens, const int32_t **labels) {
    if (i < 0 || i >= ds->n) return -1;
    int64_t a = ds->offsets[i], b = ds->offsets[i + 1];
    *tokens = ds->tokens + a;
    if (labels) *labels = ds->labels + a;
    return (int32_t)(b - a);
}
