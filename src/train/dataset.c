/* Training data: JSONL formats, chat templates, tokenization, batching. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lorac/dataset.h"

#define DATA_MAX_BYTES ((size_t)8 << 30)

struct lorac_dataset {
    int32_t *tokens, *labels;  /* all examples, back to back */
    int64_t n_tok, cap_tok;
    int64_t *offsets;          /* (n + 1) */
    int64_t n, cap;
    int64_t skipped, truncated;
    lorac_data_format_t format;
    int64_t *perm;             /* order of the epoch perm_epoch */
    int64_t perm_epoch;
    uint64_t perm_seed;
    int32_t perm_shuffle;
};

static const char *const k_format_names[] = {"auto", "text", "completion", "alpaca", "chat", "tokens"};

int lorac_data_format_parse(const char *name, lorac_data_format_t *out) {
    for (int i = 0; i < 6; i++)
        if (!strcmp(name, k_format_names[i])) { *out = (lorac_data_format_t)i; return 0; }
    return -1;
}

const char *lorac_data_format_name(lorac_data_format_t f) {
    return (int)f >= 0 && (int)f < 6 ? k_format_names[f] : "?";
}

lorac_dataset_params_t lorac_dataset_default_params(void) {
    lorac_dataset_params_t p = {.format = LORAC_DATA_AUTO, .seq_len = 256, .vocab_size = INT32_MAX};
    return p;
}

/* ---- building one example out of segments ---------------------------------- */
typedef struct {
    int32_t *tok, *lab;
    int64_t n, cap;
} example_t;

static int ex_push(example_t *e, int32_t tok, int32_t lab) {
    if (e->n == e->cap) {
        int64_t cap = e->cap ? 2 * e->cap : 256;
        int32_t *t = realloc(e->tok, sizeof(int32_t) * (size_t)cap), *l = t ? realloc(e->lab, sizeof(int32_t) * (size_t)cap) : NULL;
        if (t) e->tok = t;
        if (!t || !l) return -1;
        e->lab = l;
        e->cap = cap;
    }
    e->tok[e->n] = tok;
    e->lab[e->n] = lab;
    e->n++;
    return 0;
}

/* Tokenizes text (no special tokens added) and appends it, in the loss or not. */
static lorac_status_t ex_text(example_t *e, const lorac_tokenizer_t *tok, const char *text, int in_loss) {
    int32_t *ids;
    size_t n;
    lorac_status_t s = lorac_tokenizer_encode(tok, text, strlen(text), false, &ids, &n);
    if (s) return s;
    for (size_t i = 0; i < n; i++)
        if (ex_push(e, ids[i], in_loss ? ids[i] : -100)) { free(ids); return lorac_error(LORAC_STATUS_NOMEM, "out of memory"); }
    free(ids);
    return LORAC_STATUS_OK;
}

static lorac_status_t ex_special(example_t *e, int32_t id, int in_loss) {
    if (id < 0) return LORAC_STATUS_OK;
    if (ex_push(e, id, in_loss ? id : -100)) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    return LORAC_STATUS_OK;
}

/* The BOS the tokenizer's post-processor adds (if any): encode "" with specials. */
static int32_t added_bos(const lorac_tokenizer_t *tok) {
    int32_t *ids;
    size_t n;
    if (lorac_tokenizer_encode(tok, "", 0, true, &ids, &n) != LORAC_STATUS_OK) return -1;
    int32_t bos = n > 0 ? ids[0] : -1;
    free(ids);
    return bos;
}

static const char *str_field(const cJSON *o, const char *key, int required, const char *where, lorac_status_t *s) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) *s = lorac_error(LORAC_STATUS_FORMAT, "%s: missing \"%s\"", where, key);
        return NULL;
    }
    if (!cJSON_IsString(v)) {
        *s = lorac_error(LORAC_STATUS_FORMAT, "%s: \"%s\" must be a string", where, key);
        return NULL;
    }
    return v->valuestring;
}

/* ---- chat templates -------------------------------------------------------- */
typedef enum { TPL_CHATML, TPL_LLAMA2, TPL_LLAMA3, TPL_ZEPHYR, TPL_NONE } chat_template_t;

static chat_template_t template_by_name(const char *name) {
    if (!strcmp(name, "chatml")) return TPL_CHATML;
    if (!strcmp(name, "llama-2") || !strcmp(name, "llama2")) return TPL_LLAMA2;
    if (!strcmp(name, "llama-3") || !strcmp(name, "llama3")) return TPL_LLAMA3;
    if (!strcmp(name, "zephyr")) return TPL_ZEPHYR;
    return TPL_NONE;
}

/* Recognises the family of a tokenizer_config.json chat_template by the
 * markers it writes. */
static lorac_status_t template_from_config(const char *path, chat_template_t *out) {
    char *text;
    size_t len;
    lorac_status_t s = lorac_file_read(path, (size_t)64 << 20, &text, &len);
    if (s) return lorac_error(s, "%s; give --chat-template chatml|llama-2|llama-3|zephyr", lorac_error_message());
    cJSON *o = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *t = o ? cJSON_GetObjectItemCaseSensitive(o, "chat_template") : NULL;
    const char *tpl = cJSON_IsString(t) ? t->valuestring : NULL;
    *out = TPL_NONE;
    if (tpl) {
        if (strstr(tpl, "<|im_start|>")) *out = TPL_CHATML;
        else if (strstr(tpl, "<|start_header_id|>")) *out = TPL_LLAMA3;
        else if (strstr(tpl, "<|user|>") || strstr(tpl, "<|assistant|>")) *out = TPL_ZEPHYR;
        else if (strstr(tpl, "[INST]")) *out = TPL_LLAMA2;
    }
    cJSON_Delete(o);
    if (*out == TPL_NONE)
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: %s; give --chat-template chatml|llama-2|llama-3|zephyr", path,
                           tpl ? "its chat_template is not one lorac recognises" : "no chat_template");
    return LORAC_STATUS_OK;
}

/* Renders the conversation turn by turn; only assistant turns (their content
 * and end-of-turn marker) are in the loss unless train_on_inputs. */
static lorac_status_t ex_chat(example_t *e, const lorac_tokenizer_t *tok, chat_template_t tpl, const cJSON *messages,
                              const char *where, int all_in_loss) {
    if (!cJSON_IsArray(messages) || cJSON_GetArraySize(messages) == 0)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: \"messages\" must be a non-empty array", where);
    lorac_status_t s = LORAC_STATUS_OK;
    const char *system = NULL;
    char buf[256];
    int first_user = 1;
    if (tpl == TPL_LLAMA3 && (s = ex_text(e, tok, "<|begin_of_text|>", all_in_loss))) return s;
    const cJSON *m;
    cJSON_ArrayForEach(m, messages) {
        if (!cJSON_IsObject(m)) return lorac_error(LORAC_STATUS_FORMAT, "%s: each message must be an object", where);
        const char *role = str_field(m, "role", 1, where, &s);
        if (s) return s;
        const char *content = str_field(m, "content", 1, where, &s);
        if (s) return s;
        int assistant = !strcmp(role, "assistant");
        if (!assistant && strcmp(role, "user") && strcmp(role, "system"))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: unknown role \"%s\" (system, user or assistant)", where, role);
        int loss = assistant || all_in_loss;
        switch (tpl) {
        case TPL_CHATML:
            snprintf(buf, sizeof buf, "<|im_start|>%s\n", role);
            if ((s = ex_text(e, tok, buf, all_in_loss)) || (s = ex_text(e, tok, content, loss)) ||
                (s = ex_text(e, tok, "<|im_end|>", loss)) || (s = ex_text(e, tok, "\n", all_in_loss)))
                return s;
            break;
        case TPL_LLAMA3:
            snprintf(buf, sizeof buf, "<|start_header_id|>%s<|end_header_id|>\n\n", role);
            if ((s = ex_text(e, tok, buf, all_in_loss)) || (s = ex_text(e, tok, content, loss)) ||
                (s = ex_text(e, tok, "<|eot_id|>", loss)))
                return s;
            break;
        case TPL_ZEPHYR:
            snprintf(buf, sizeof buf, "<|%s|>\n", role);
            if ((s = ex_text(e, tok, buf, all_in_loss)) || (s = ex_text(e, tok, content, loss)) ||
                (s = ex_text(e, tok, "</s>", loss)) || (s = ex_text(e, tok, "\n", all_in_loss)))
                return s;
            break;
        case TPL_LLAMA2:
            /* <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s> */
            if (!strcmp(role, "system")) { system = content; break; }
            if (!assistant) {
                if ((s = ex_text(e, tok, "<s>", all_in_loss)) || (s = ex_text(e, tok, "[INST] ", all_in_loss))) return s;
                if (first_user && system) {
                    if ((s = ex_text(e, tok, "<<SYS>>\n", all_in_loss)) || (s = ex_text(e, tok, system, all_in_loss)) ||
                        (s = ex_text(e, tok, "\n<</SYS>>\n\n", all_in_loss)))
                        return s;
                }
                first_user = 0;
                if ((s = ex_text(e, tok, content, all_in_loss)) || (s = ex_text(e, tok, " [/INST]", all_in_loss))) return s;
            } else {
                if ((s = ex_text(e, tok, " ", loss)) || (s = ex_text(e, tok, content, loss)) ||
                    (s = ex_text(e, tok, " </s>", loss)))
                    return s;
            }
            break;
        case TPL_NONE: break;
        }
    }
    return LORAC_STATUS_OK;
}

/* ---- one record ---------------------------------------------------------------- */
static lorac_data_format_t detect_format(const cJSON *o) {
    if (cJSON_GetObjectItemCaseSensitive(o, "input_ids")) return LORAC_DATA_TOKENS;
    if (cJSON_GetObjectItemCaseSensitive(o, "messages")) return LORAC_DATA_CHAT;
    if (cJSON_GetObjectItemCaseSensitive(o, "instruction") && cJSON_GetObjectItemCaseSensitive(o, "output"))
        return LORAC_DATA_ALPACA;
    if (cJSON_GetObjectItemCaseSensitive(o, "prompt") && cJSON_GetObjectItemCaseSensitive(o, "completion"))
        return LORAC_DATA_COMPLETION;
    if (cJSON_GetObjectItemCaseSensitive(o, "text")) return LORAC_DATA_TEXT;
    return LORAC_DATA_AUTO;
}

static const char k_alpaca_input[] =
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n%s\n\n### Input:\n%s\n\n### Response:\n";
static const char k_alpaca_no_input[] =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n%s\n\n### Response:\n";

typedef struct {
    const lorac_tokenizer_t *tok;
    const lorac_dataset_params_t *p;
    chat_template_t tpl;
    int32_t bos, eos;
} ctx_t;

static lorac_status_t build_example(ctx_t *c, lorac_data_format_t fmt, const cJSON *o, const char *where, example_t *e) {
    lorac_status_t s = LORAC_STATUS_OK;
    int all = c->p->train_on_inputs;
    if (fmt == LORAC_DATA_TOKENS) {
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(o, "input_ids");
        const cJSON *labels = cJSON_GetObjectItemCaseSensitive(o, "labels");
        if (!cJSON_IsArray(ids)) return lorac_error(LORAC_STATUS_FORMAT, "%s: \"input_ids\" must be an array of token ids", where);
        if (labels && !cJSON_IsNull(labels) && (!cJSON_IsArray(labels) || cJSON_GetArraySize(labels) != cJSON_GetArraySize(ids)))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: \"labels\" must be an array as long as \"input_ids\" (%d)", where,
                               cJSON_GetArraySize(ids));
        const cJSON *lab = cJSON_IsArray(labels) ? labels->child : NULL, *id;
        cJSON_ArrayForEach(id, ids) {
            double v = cJSON_IsNumber(id) ? id->valuedouble : -1;
            if (!cJSON_IsNumber(id) || v < 0 || v >= c->p->vocab_size || v != (double)(int32_t)v)
                return lorac_error(LORAC_STATUS_FORMAT, "%s: input_ids must be integers in 0..%d", where, c->p->vocab_size - 1);
            int32_t l = (int32_t)v;
            if (lab) {
                double lv = cJSON_IsNumber(lab) ? lab->valuedouble : -2;
                if (lv != -100 && (lv < 0 || lv >= c->p->vocab_size || lv != (double)(int32_t)lv))
                    return lorac_error(LORAC_STATUS_FORMAT, "%s: labels must be token ids or -100", where);
                l = (int32_t)lv;
                lab = lab->next;
            }
            if (ex_push(e, (int32_t)v, l)) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
        }
        return e->n > 0 ? LORAC_STATUS_OK : lorac_error(LORAC_STATUS_FORMAT, "%s: empty input_ids", where);
    }
    if (!c->tok) return lorac_error(LORAC_STATUS_INVALID_ARG, "%s: format %s needs a tokenizer", where, lorac_data_format_name(fmt));
    if (fmt == LORAC_DATA_CHAT) {
        if ((s = ex_chat(e, c->tok, c->tpl, cJSON_GetObjectItemCaseSensitive(o, "messages"), where, all))) return s;
        return e->n > 0 ? LORAC_STATUS_OK : lorac_error(LORAC_STATUS_FORMAT, "%s: empty conversation", where);
    }
    if ((s = ex_special(e, c->bos, all))) return s;
    if (fmt == LORAC_DATA_TEXT) {
        const char *text = str_field(o, "text", 1, where, &s);
        if (s) return s;
        if (!*text) return lorac_error(LORAC_STATUS_FORMAT, "%s: empty \"text\"", where);
        if ((s = ex_text(e, c->tok, text, 1))) return s;
    } else if (fmt == LORAC_DATA_COMPLETION) {
        const char *prompt = str_field(o, "prompt", 1, where, &s);
        if (s) return s;
        const char *completion = str_field(o, "completion", 1, where, &s);
        if (s) return s;
        if ((s = ex_text(e, c->tok, prompt, all)) || (s = ex_text(e, c->tok, completion, 1))) return s;
    } else if (fmt == LORAC_DATA_ALPACA) {
        const char *instruction = str_field(o, "instruction", 1, where, &s);
        if (s) return s;
        const char *input = str_field(o, "input", 0, where, &s);
        if (s) return s;
        const char *output = str_field(o, "output", 1, where, &s);
        if (s) return s;
        size_t n = strlen(instruction) + (input ? strlen(input) : 0) + sizeof k_alpaca_input;
        char *prompt = malloc(n);
        if (!prompt) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
        if (input && *input) snprintf(prompt, n, k_alpaca_input, instruction, input);
        else snprintf(prompt, n, k_alpaca_no_input, instruction);
#pragma GCC diagnostic pop
        s = ex_text(e, c->tok, prompt, all);
        free(prompt);
        if (s || (s = ex_text(e, c->tok, output, 1))) return s;
    }
    return ex_special(e, c->eos, 1);
}

static lorac_status_t add_example(lorac_dataset_t *ds, example_t *e, int32_t seq_len) {
    int64_t n = e->n;
    if (n > seq_len) { n = seq_len; ds->truncated++; }
    if (ds->n_tok + n > ds->cap_tok) {
        int64_t cap = ds->cap_tok ? ds->cap_tok : 4096;
        while (cap < ds->n_tok + n) cap *= 2;
        int32_t *t = realloc(ds->tokens, sizeof(int32_t) * (size_t)cap), *l = t ? realloc(ds->labels, sizeof(int32_t) * (size_t)cap) : NULL;
        if (t) ds->tokens = t;
        if (!t || !l) return lorac_error(LORAC_STATUS_NOMEM, "out of memory for the dataset");
        ds->labels = l;
        ds->cap_tok = cap;
    }
    if (ds->n + 2 > ds->cap) {
        int64_t cap = ds->cap ? 2 * ds->cap : 1024;
        int64_t *o = realloc(ds->offsets, sizeof(int64_t) * (size_t)cap);
        if (!o) return lorac_error(LORAC_STATUS_NOMEM, "out of memory for the dataset");
        ds->offsets = o;
        ds->cap = cap;
        if (ds->n == 0) ds->offsets[0] = 0;
    }
    memcpy(ds->tokens + ds->n_tok, e->tok, sizeof(int32_t) * (size_t)n);
    memcpy(ds->labels + ds->n_tok, e->lab, sizeof(int32_t) * (size_t)n);
    ds->n_tok += n;
    ds->n++;
    ds->offsets[ds->n] = ds->n_tok;
    return LORAC_STATUS_OK;
}

/* Handles one record; a malformed one is an error or, with skip_bad, counted. */
static lorac_status_t take_record(lorac_dataset_t *ds, ctx_t *c, const cJSON *o, const char *where, example_t *e) {
    lorac_status_t s = LORAC_STATUS_OK;
    e->n = 0;
    if (!cJSON_IsObject(o)) s = lorac_error(LORAC_STATUS_FORMAT, "%s: not a JSON object", where);
    if (!s && ds->format == LORAC_DATA_AUTO) {
        ds->format = detect_format(o);
        if (ds->format == LORAC_DATA_AUTO)
            s = lorac_error(LORAC_STATUS_FORMAT, "%s: cannot tell the format from the keys (text, prompt+completion, "
                            "instruction+output, messages or input_ids); give --format", where);
    }
    if (!s) s = build_example(c, ds->format, o, where, e);
    if (!s) return add_example(ds, e, c->p->seq_len);
    if (c->p->skip_bad && s != LORAC_STATUS_NOMEM) { ds->skipped++; return LORAC_STATUS_OK; }
    return s;
}

lorac_status_t lorac_dataset_load(const char *path, const lorac_tokenizer_t *tok, const lorac_dataset_params_t *p,
                                  lorac_dataset_t **out) {
    *out = NULL;
    if (p->seq_len < 2) return lorac_error(LORAC_STATUS_INVALID_ARG, "sequence length must be at least 2");
    lorac_dataset_t *ds = calloc(1, sizeof *ds);
    if (!ds) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    ds->format = p->format;
    ds->perm_epoch = -1;
    char *text = NULL, where[512];
    size_t len = 0;
    example_t e = {0};
    ctx_t c = {.tok = tok, .p = p, .tpl = TPL_NONE, .bos = -1, .eos = -1};
    lorac_status_t s;
    if ((s = lorac_file_read(path, DATA_MAX_BYTES, &text, &len))) goto done;
    if (tok) {
        c.bos = added_bos(tok);
        c.eos = lorac_tokenizer_eos_id(tok);
    }
    if (p->format == LORAC_DATA_CHAT || p->format == LORAC_DATA_AUTO) {
        if (p->chat_template) {
            c.tpl = template_by_name(p->chat_template);
            if (c.tpl == TPL_NONE) {
                s = lorac_error(LORAC_STATUS_INVALID_ARG, "unknown chat template '%s' (chatml, llama-2, llama-3, zephyr)", p->chat_template);
                goto done;
            }
        }
    }
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\n' || text[i] == '\r' || text[i] == '\t')) i++;
    if (i < len && text[i] == '[') {
        /* a JSON array of records, as the Alpaca release ships */
        if (!lorac_utf8_valid(text, len)) { s = lorac_error(LORAC_STATUS_FORMAT, "%s: not valid UTF-8", path); goto done; }
        cJSON *arr = cJSON_ParseWithLength(text, len);
        if (!cJSON_IsArray(arr)) { cJSON_Delete(arr); s = lorac_error(LORAC_STATUS_FORMAT, "%s: not a valid JSON array", path); goto done; }
        int64_t k = 0;
        const cJSON *o;
        cJSON_ArrayForEach(o, arr) {
            k++;
            snprintf(where, sizeof where, "%s: record %lld", path, (long long)k);
            if (ds->format == LORAC_DATA_CHAT || (ds->format == LORAC_DATA_AUTO && cJSON_GetObjectItemCaseSensitive(o, "messages"))) {
                if (c.tpl == TPL_NONE && (s = p->tokenizer_config ? template_from_config(p->tokenizer_config, &c.tpl)
                                                                  : lorac_error(LORAC_STATUS_INVALID_ARG, "chat data needs --chat-template (no tokenizer_config.json)"))) break;
            }
            if ((s = take_record(ds, &c, o, where, &e))) break;
        }
        cJSON_Delete(arr);
        if (s) goto done;
    } else {
        int64_t line = 0;
        size_t start = 0;
        while (start < len) {
            size_t end = start;
            while (end < len && text[end] != '\n') end++;
            line++;
            size_t n = end - start;
            while (n > 0 && (text[start + n - 1] == '\r' || text[start + n - 1] == ' ' || text[start + n - 1] == '\t')) n--;
            snprintf(where, sizeof where, "%s:%lld", path, (long long)line);
            if (n > 0) {
                cJSON *o = NULL;
                if (!lorac_utf8_valid(text + start, n)) s = lorac_error(LORAC_STATUS_FORMAT, "%s: not valid UTF-8", where);
                else if (!(o = cJSON_ParseWithLength(text + start, n))) s = lorac_error(LORAC_STATUS_FORMAT, "%s: not valid JSON", where);
                if (!s && (ds->format == LORAC_DATA_CHAT || (ds->format == LORAC_DATA_AUTO && cJSON_GetObjectItemCaseSensitive(o, "messages"))) &&
                    c.tpl == TPL_NONE)
                    s = p->tokenizer_config ? template_from_config(p->tokenizer_config, &c.tpl)
                                            : lorac_error(LORAC_STATUS_INVALID_ARG, "chat data needs --chat-template (no tokenizer_config.json)");
                if (!s) s = take_record(ds, &c, o, where, &e);
                else if (p->skip_bad && s == LORAC_STATUS_FORMAT) { ds->skipped++; s = LORAC_STATUS_OK; }
                cJSON_Delete(o);
                if (s) goto done;
            }
            start = end + 1;
        }
    }
    if (ds->n == 0) { s = lorac_error(LORAC_STATUS_FORMAT, "%s: no examples%s", path, ds->skipped ? " (every line was skipped)" : ""); goto done; }
    ds->perm = malloc(sizeof(int64_t) * (size_t)ds->n);
    if (!ds->perm) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); goto done; }
done:
    free(text);
    free(e.tok);
    free(e.lab);
    if (s) { lorac_dataset_free(ds); return s; }
    *out = ds;
    return LORAC_STATUS_OK;
}

void lorac_dataset_free(lorac_dataset_t *ds) {
    if (!ds) return;
    free(ds->tokens); free(ds->labels); free(ds->offsets); free(ds->perm);
    free(ds);
}

int64_t lorac_dataset_n_examples(const lorac_dataset_t *ds) { return ds->n; }
int64_t lorac_dataset_n_skipped(const lorac_dataset_t *ds) { return ds->skipped; }
int64_t lorac_dataset_n_truncated(const lorac_dataset_t *ds) { return ds->truncated; }
lorac_data_format_t lorac_dataset_format(const lorac_dataset_t *ds) { return ds->format; }

int32_t lorac_dataset_example(const lorac_dataset_t *ds, int64_t i, const int32_t **tokens, const int32_t **labels) {
    int64_t a = ds->offsets[i], b = ds->offsets[i + 1];
    *tokens = ds->tokens + a;
    *labels = ds->labels + a;
    return (int32_t)(b - a);
}

/* ---- batching ------------------------------------------------------------------ */
lorac_data_cursor_t lorac_data_cursor_init(uint64_t seed, bool shuffle) {
    lorac_data_cursor_t c = {.seed = seed, .epoch = 0, .index = 0, .shuffle = shuffle};
    return c;
}

/* The order of an epoch depends only on (seed, epoch): resuming needs no
 * more state than the cursor. */
static void ensure_perm(lorac_dataset_t *ds, const lorac_data_cursor_t *cur) {
    if (ds->perm_epoch == cur->epoch && ds->perm_seed == cur->seed && ds->perm_shuffle == cur->shuffle) return;
    for (int64_t i = 0; i < ds->n; i++) ds->perm[i] = i;
    if (cur->shuffle) {
        lorac_rng_t rng;
        lorac_rng_seed(&rng, cur->seed * 0x9e3779b97f4a7c15ull + (uint64_t)cur->epoch + 1);
        for (int64_t i = ds->n - 1; i > 0; i--) {
            uint64_t r = ((uint64_t)lorac_rng_u32(&rng) << 32) | lorac_rng_u32(&rng);
            int64_t j = (int64_t)(r % (uint64_t)(i + 1));
            int64_t t = ds->perm[i]; ds->perm[i] = ds->perm[j]; ds->perm[j] = t;
        }
    }
    ds->perm_epoch = cur->epoch;
    ds->perm_seed = cur->seed;
    ds->perm_shuffle = cur->shuffle;
}

static int64_t peek_example(lorac_dataset_t *ds, const lorac_data_cursor_t *cur) {
    ensure_perm(ds, cur);
    return ds->perm[cur->index];
}

static void advance(lorac_dataset_t *ds, lorac_data_cursor_t *cur) {
    if (++cur->index >= ds->n) { cur->index = 0; cur->epoch++; }
}

int64_t lorac_dataset_next_batch(lorac_dataset_t *ds, lorac_data_cursor_t *cur, int32_t batch, int32_t seq_len,
                                 bool pack, int32_t *tokens, int32_t *targets, int32_t *pos) {
    int64_t n_targets = 0;
    for (int32_t b = 0; b < batch; b++) {
        int32_t *tk = tokens + (int64_t)b * seq_len, *tg = targets + (int64_t)b * seq_len, *ps = pos + (int64_t)b * seq_len;
        int32_t used = 0;
        do {
            const int32_t *et, *el;
            int32_t n = lorac_dataset_example(ds, peek_example(ds, cur), &et, &el);
            if (n > seq_len) n = seq_len;
            if (used > 0 && used + n > seq_len) break; /* the next row starts with it */
            for (int32_t t = 0; t < n; t++) {
                tk[used + t] = et[t];
                ps[used + t] = t;
                /* position t predicts token t+1 of the same example only */
                tg[used + t] = t + 1 < n ? el[t + 1] : -100;
                if (tg[used + t] != -100) n_targets++;
            }
            used += n;
            advance(ds, cur);
        } while (pack && used < seq_len);
        for (int32_t t = used; t < seq_len; t++) { tk[t] = 0; tg[t] = -100; ps[t] = t - used; }
    }
    return n_targets;
}

int64_t lorac_dataset_batches_per_epoch(const lorac_dataset_t *ds, int32_t batch, int32_t seq_len, bool pack) {
    int64_t rows = 0;
    if (!pack) rows = ds->n;
    else {
        int64_t used = 0;
        for (int64_t i = 0; i < ds->n; i++) {
            int64_t n = ds->offsets[i + 1] - ds->offsets[i];
            if (used > 0 && used + n > seq_len) { rows++; used = 0; }
            used += n;
        }
        if (used > 0) rows++;
    }
    int64_t b = (rows + batch - 1) / batch;
    return b > 0 ? b : 1;
}
