/* OpenAI request parsing/validation and response building (lorac/openai.h).
 *
 * The checks follow what OpenAI's API and vLLM answer for the same body, so a
 * client that works against them gets the same refusals here. Every refusal
 * names the field (OpenAI's "param") and says what was expected. */
#include "lorac/openai.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char lorac_oai_stream_done[] = "data: [DONE]\n\n";

/* ---- errors -------------------------------------------------------------------- */

static const char *default_type(int status) {
    switch (status) {
    case 404: return "not_found_error";
    case 413: return "invalid_request_error";
    case 429: return "rate_limit_error";
    case 500: return "internal_server_error";
    case 503: return "service_unavailable";
    default: return "invalid_request_error";
    }
}

lorac_status_t lorac_oai_error_set(lorac_oai_error_t *err, int http_status, const char *type, const char *param,
                                   const char *code, const char *fmt, ...) {
    err->http_status = http_status;
    err->type = type ? type : default_type(http_status);
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    /* a message cut inside a multi-byte character must stay valid UTF-8 */
    size_t n = strlen(err->message);
    while (n > 0 && !lorac_utf8_valid(err->message, n)) err->message[--n] = '\0';
    if (http_status == 404) return LORAC_STATUS_NOT_FOUND;
    if (http_status == 429 || http_status == 503) return LORAC_STATUS_BUSY;
    if (http_status >= 500) return LORAC_STATUS_IO;
    return LORAC_STATUS_INVALID_ARG;
}

static char *print_and_delete(cJSON *o) {
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

static cJSON *error_object(const lorac_oai_error_t *err) {
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    if (!e) { cJSON_Delete(root); return NULL; }
    cJSON_AddStringToObject(e, "message", err->message);
    cJSON_AddStringToObject(e, "type", err->type ? err->type : default_type(err->http_status));
    if (err->param[0]) cJSON_AddStringToObject(e, "param", err->param);
    else cJSON_AddNullToObject(e, "param");
    if (err->code) cJSON_AddStringToObject(e, "code", err->code);
    else cJSON_AddNullToObject(e, "code");
    return root;
}

char *lorac_oai_error_json(const lorac_oai_error_t *err) { return print_and_delete(error_object(err)); }

/* ---- JSON string literals for generated text ------------------------------------ */

/* Length of the valid UTF-8 character at s (n bytes left), or 0. */
static size_t utf8_char_len(const unsigned char *s, size_t n) {
    size_t want = s[0] < 0x80 ? 1 : (s[0] & 0xE0) == 0xC0 ? 2 : (s[0] & 0xF0) == 0xE0 ? 3 : (s[0] & 0xF8) == 0xF0 ? 4 : 0;
    if (!want || want > n) return 0;
    return lorac_utf8_valid((const char *)s, want) ? want : 0;
}

char *lorac_oai_json_string(const char *s, size_t len) {
    /* worst case: every byte becomes "\ufffd"-sized (6 bytes) */
    if (len > (SIZE_MAX - 3) / 6) return NULL;
    char *out = malloc(6 * len + 3), *w = out;
    if (!out) return NULL;
    const unsigned char *p = (const unsigned char *)s;
    *w++ = '"';
    for (size_t i = 0; i < len;) {
        unsigned char c = p[i];
        size_t n = utf8_char_len(p + i, len - i);
        if (n == 0) { /* invalid byte: U+FFFD, raw (3 bytes) */
            memcpy(w, "\xEF\xBF\xBD", 3);
            w += 3;
            i++;
            continue;
        }
        if (n > 1) { memcpy(w, p + i, n); w += n; i += n; continue; }
        i++;
        switch (c) {
        case '"': *w++ = '\\'; *w++ = '"'; break;
        case '\\': *w++ = '\\'; *w++ = '\\'; break;
        case '\n': *w++ = '\\'; *w++ = 'n'; break;
        case '\r': *w++ = '\\'; *w++ = 'r'; break;
        case '\t': *w++ = '\\'; *w++ = 't'; break;
        case '\b': *w++ = '\\'; *w++ = 'b'; break;
        case '\f': *w++ = '\\'; *w++ = 'f'; break;
        default:
            if (c < 0x20) w += sprintf(w, "\\u%04x", c);
            else *w++ = (char)c;
        }
    }
    *w++ = '"';
    *w = '\0';
    return out;
}

/* Adds "key": "<text>" with lorac_oai_json_string's escaping. */
static int add_text(cJSON *o, const char *key, const char *text, size_t len) {
    char *lit = lorac_oai_json_string(text ? text : "", text ? len : 0);
    if (!lit) return -1;
    cJSON *raw = cJSON_AddRawToObject(o, key, lit);
    free(lit);
    return raw ? 0 : -1;
}

/* ---- request parsing ---------------------------------------------------------------- */

/* A NUL byte, or a "\u0000" escape (after an even number of backslashes),
 * would end the C string cJSON hands back, silently truncating a prompt:
 * refused instead. */
static int has_nul(const char *s, size_t len) {
    if (memchr(s, 0, len)) return 1;
    for (size_t i = 0; i + 6 <= len; i++) {
        if (s[i] != '\\') continue;
        size_t run = 1;
        while (i + run < len && s[i + run] == '\\') run++;
        i += run - 1; /* s[i] is the last backslash of the run */
        if (run % 2 == 1 && i + 6 <= len && !memcmp(s + i + 1, "u0000", 5)) return 1;
    }
    return 0;
}

static const cJSON *field(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

#define BAD(param, ...) lorac_oai_error_set(err, 400, NULL, param, NULL, __VA_ARGS__)
#define NOMEM() lorac_oai_error_set(err, 500, NULL, NULL, NULL, "out of memory")

static int is_integer(const cJSON *v) {
    return cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble == floor(v->valuedouble);
}

/* An optional integer in [lo, hi]; *present tells whether it was given. */
static lorac_status_t get_int(const cJSON *o, const char *key, double lo, double hi, int64_t *out, bool *present,
                              lorac_oai_error_t *err) {
    const cJSON *v = field(o, key);
    if (present) *present = v != NULL;
    if (!v) return LORAC_STATUS_OK;
    if (!is_integer(v)) return BAD(key, "'%s' must be an integer", key);
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return BAD(key, "'%s' is %.17g; it must be in [%.17g, %.17g]", key, v->valuedouble, lo, hi);
    *out = (int64_t)v->valuedouble;
    return LORAC_STATUS_OK;
}

static lorac_status_t get_number(const cJSON *o, const char *key, double *out, lorac_oai_error_t *err) {
    const cJSON *v = field(o, key);
    if (!v) return LORAC_STATUS_OK;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return BAD(key, "'%s' must be a finite number", key);
    *out = v->valuedouble;
    return LORAC_STATUS_OK;
}

static lorac_status_t get_bool(const cJSON *o, const char *key, bool *out, lorac_oai_error_t *err) {
    const cJSON *v = field(o, key);
    if (!v) return LORAC_STATUS_OK;
    if (!cJSON_IsBool(v)) return BAD(key, "'%s' must be true or false", key);
    *out = cJSON_IsTrue(v);
    return LORAC_STATUS_OK;
}

/* Token ids: a non-empty array of integers in [0, INT32_MAX] (the vocabulary
 * check comes with the model, in check_prompt). */
static lorac_status_t parse_ids(const cJSON *arr, lorac_oai_prompt_t *p, lorac_oai_error_t *err) {
    int n = cJSON_GetArraySize(arr);
    if (n < 1) return BAD("prompt", "'prompt' must not be empty");
    p->ids = malloc(sizeof(int32_t) * (size_t)n);
    if (!p->ids) return NOMEM();
    const cJSON *v;
    int i = 0;
    cJSON_ArrayForEach(v, arr) {
        if (!is_integer(v) || v->valuedouble < 0 || v->valuedouble > INT32_MAX)
            return BAD("prompt", "'prompt' token %d is not a token id (an integer >= 0)", i);
        p->ids[i++] = (int32_t)v->valuedouble;
    }
    p->n_ids = n;
    return LORAC_STATUS_OK;
}

/* One prompt: a string or an array of token ids. */
static lorac_status_t parse_one_prompt(const cJSON *p, lorac_oai_prompt_t *out, lorac_oai_error_t *err) {
    if (cJSON_IsString(p)) {
        out->len = strlen(p->valuestring);
        return (out->text = strdup(p->valuestring)) ? LORAC_STATUS_OK : NOMEM();
    }
    if (!cJSON_IsArray(p)) return BAD("prompt", "'prompt' must be a string or an array of token ids");
    return parse_ids(p, out, err);
}

static lorac_status_t parse_prompt(const cJSON *o, lorac_oai_request_t *r, lorac_oai_error_t *err) {
    const cJSON *p = field(o, "prompt");
    if (!p) return BAD("prompt", "'prompt' is required");
    /* a batch: an array of strings or of token-id arrays, one kind */
    bool batch = cJSON_IsArray(p) && (cJSON_IsString(p->child) || cJSON_IsArray(p->child));
    int n = batch ? cJSON_GetArraySize(p) : 1;
    if (n > LORAC_OAI_MAX_PROMPTS) return BAD("prompt", "a batch holds at most %d prompts", LORAC_OAI_MAX_PROMPTS);
    if (!(r->prompts = calloc((size_t)n, sizeof *r->prompts))) return NOMEM();
    r->n_prompts = n;
    if (!batch) return parse_one_prompt(p, &r->prompts[0], err);
    const cJSON *one;
    int i = 0;
    cJSON_ArrayForEach(one, p) {
        if (cJSON_IsString(one) != cJSON_IsString(p->child) || !(cJSON_IsString(one) || cJSON_IsArray(one)))
            return BAD("prompt", "a batch of prompts is all strings or all arrays of token ids");
        lorac_status_t s = parse_one_prompt(one, &r->prompts[i++], err);
        if (s) return s;
    }
    return LORAC_STATUS_OK;
}

/* content: a string, or OpenAI's content parts [{type: "text", text}],
 * joined with "\n" as vLLM does. */
static lorac_status_t parse_content(const cJSON *c, size_t i, char **out, lorac_oai_error_t *err) {
    if (cJSON_IsString(c)) return (*out = strdup(c->valuestring)) ? LORAC_STATUS_OK : NOMEM();
    if (!cJSON_IsArray(c))
        return BAD("messages", "messages[%zu].content must be a string or an array of text parts", i);
    size_t total = 1;
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type"),
                    *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type) || strcmp(type->valuestring, "text") || !cJSON_IsString(text))
            return BAD("messages", "messages[%zu].content: only parts {\"type\": \"text\", \"text\": string} are supported", i);
        total += strlen(text->valuestring) + 1;
    }
    char *s = malloc(total), *w = s;
    if (!s) return NOMEM();
    cJSON_ArrayForEach(part, c) {
        const char *t = cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring;
        if (w != s) *w++ = '\n';
        size_t n = strlen(t);
        memcpy(w, t, n);
        w += n;
    }
    *w = '\0';
    *out = s;
    return LORAC_STATUS_OK;
}

/* vLLM's chat_template_kwargs, the chat template's extra variables: lorac's
 * templates read one, Qwen3's enable_thinking; others are ignored, as a
 * Jinja template ignores variables it does not use. */
static lorac_status_t parse_template_kwargs(const cJSON *o, int8_t *enable_thinking, lorac_oai_error_t *err) {
    *enable_thinking = -1;
    const cJSON *k = field(o, "chat_template_kwargs");
    if (!k) return LORAC_STATUS_OK;
    if (!cJSON_IsObject(k)) return BAD("chat_template_kwargs", "'chat_template_kwargs' must be an object");
    const cJSON *v = field(k, "enable_thinking");
    if (v && !cJSON_IsBool(v))
        return BAD("chat_template_kwargs", "'chat_template_kwargs.enable_thinking' must be true or false");
    if (v) *enable_thinking = cJSON_IsTrue(v) ? 1 : 0;
    return LORAC_STATUS_OK;
}

static lorac_status_t parse_messages(const cJSON *o, lorac_oai_request_t *r, lorac_oai_error_t *err) {
    lorac_status_t ks = parse_template_kwargs(o, &r->enable_thinking, err);
    if (ks) return ks;
    const cJSON *m = field(o, "messages");
    if (!m) return BAD("messages", "'messages' is required");
    if (!cJSON_IsArray(m)) return BAD("messages", "'messages' must be an array of {role, content}");
    int n = cJSON_GetArraySize(m);
    if (n < 1) return BAD("messages", "'messages' must not be empty");
    r->messages = calloc((size_t)n, sizeof *r->messages);
    if (!r->messages) return NOMEM();
    const cJSON *msg;
    size_t i = 0;
    cJSON_ArrayForEach(msg, m) {
        if (!cJSON_IsObject(msg)) return BAD("messages", "messages[%zu] must be an object {role, content}", i);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(msg, "role"),
                    *content = cJSON_GetObjectItemCaseSensitive(msg, "content");
        if (!cJSON_IsString(role)) return BAD("messages", "messages[%zu].role must be a string", i);
        if (strcmp(role->valuestring, "system") && strcmp(role->valuestring, "user") &&
            strcmp(role->valuestring, "assistant"))
            return BAD("messages", "messages[%zu].role '%.64s' is not supported (system, user or assistant)", i,
                       role->valuestring);
        if (field(msg, "tool_calls")) return BAD("messages", "messages[%zu]: tool calls are not supported", i);
        char *text = NULL, *rs = strdup(role->valuestring);
        if (!rs) return NOMEM();
        r->messages[i].role = rs;
        r->n_messages = i + 1;
        lorac_status_t s = parse_content(content, i, &text, err);
        if (s) return s;
        r->messages[i].content = text;
        i++;
    }
    return LORAC_STATUS_OK;
}

static lorac_status_t parse_stop(const cJSON *o, lorac_oai_request_t *r, lorac_oai_error_t *err) {
    const cJSON *s = field(o, "stop");
    if (!s) return LORAC_STATUS_OK;
    const cJSON *one = s;
    int n = 1;
    if (cJSON_IsArray(s)) {
        n = cJSON_GetArraySize(s);
        if (n > LORAC_OAI_MAX_STOP) return BAD("stop", "'stop' holds at most %d strings", LORAC_OAI_MAX_STOP);
        one = s->child;
    } else if (!cJSON_IsString(s)) {
        return BAD("stop", "'stop' must be a string or an array of strings");
    }
    for (int i = 0; i < n; i++, one = one->next) {
        if (!cJSON_IsString(one)) return BAD("stop", "'stop' must be a string or an array of strings");
        size_t len = strlen(one->valuestring);
        if (len == 0) return BAD("stop", "stop strings must not be empty");
        if (len > LORAC_OAI_MAX_STOP_LEN) return BAD("stop", "stop strings are at most %d bytes", LORAC_OAI_MAX_STOP_LEN);
        if (!(r->stop[i] = strdup(one->valuestring))) return NOMEM();
        r->n_stop = i + 1;
    }
    return LORAC_STATUS_OK;
}

/* {"token id": bias}: ids as decimal strings, biases in [-100, 100]. */
static lorac_status_t parse_logit_bias(const cJSON *o, lorac_oai_request_t *r, lorac_oai_error_t *err) {
    const cJSON *m = field(o, "logit_bias"), *v;
    if (!m) return LORAC_STATUS_OK;
    if (!cJSON_IsObject(m)) return BAD("logit_bias", "'logit_bias' must be an object {\"token id\": bias}");
    int n = cJSON_GetArraySize(m);
    if (n > LORAC_SAMPLER_MAX_LOGIT_BIAS)
        return BAD("logit_bias", "'logit_bias' holds at most %d tokens", LORAC_SAMPLER_MAX_LOGIT_BIAS);
    if (n == 0) return LORAC_STATUS_OK;
    if (!(r->logit_bias = malloc(sizeof *r->logit_bias * (size_t)n))) return NOMEM();
    cJSON_ArrayForEach(v, m) {
        const char *k = v->string;
        char *end = NULL;
        long id = k && *k >= '0' && *k <= '9' ? strtol(k, &end, 10) : -1;
        if (id < 0 || id > INT32_MAX || !end || *end || strlen(k) > 10)
            return BAD("logit_bias", "'logit_bias' keys must be token ids (\"123\"), not '%.40s'", k ? k : "");
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= -100 && v->valuedouble <= 100))
            return BAD("logit_bias", "the bias for token %ld must be a number in [-100, 100]", id);
        r->logit_bias[r->n_logit_bias++] = (lorac_logit_bias_t){(int32_t)id, (float)v->valuedouble};
    }
    return LORAC_STATUS_OK;
}

static lorac_status_t parse_stop_token_ids(const cJSON *o, lorac_oai_request_t *r, lorac_oai_error_t *err) {
    const cJSON *a = field(o, "stop_token_ids"), *v;
    if (!a) return LORAC_STATUS_OK;
    if (!cJSON_IsArray(a)) return BAD("stop_token_ids", "'stop_token_ids' must be an array of token ids");
    if (cJSON_GetArraySize(a) > LORAC_OAI_MAX_STOP_TOKEN_IDS)
        return BAD("stop_token_ids", "'stop_token_ids' holds at most %d ids", LORAC_OAI_MAX_STOP_TOKEN_IDS);
    cJSON_ArrayForEach(v, a) {
        if (!is_integer(v) || v->valuedouble < 0 || v->valuedouble > INT32_MAX)
            return BAD("stop_token_ids", "'stop_token_ids' must be an array of token ids (integers >= 0)");
        r->stop_token_ids[r->n_stop_token_ids++] = (int32_t)v->valuedouble;
    }
    return LORAC_STATUS_OK;
}

/* Fields that would change the output if ignored. */
static lorac_status_t refuse_unsupported(const cJSON *o, lorac_oai_kind_t kind, int32_t n, lorac_oai_error_t *err) {
    const cJSON *v;
    if (kind == LORAC_OAI_CHAT && (v = field(o, "echo")) && !cJSON_IsFalse(v))
        return BAD("echo", "'echo' is not supported for chat");
    if ((v = field(o, "suffix")) && !(cJSON_IsString(v) && !v->valuestring[0]))
        return BAD("suffix", "'suffix' is not supported");
    if ((v = field(o, "best_of")) && !(is_integer(v) && v->valuedouble == n))
        return BAD("best_of", "'best_of' other than n is not supported");
    if (kind == LORAC_OAI_CHAT && (v = field(o, "tools")) && !(cJSON_IsArray(v) && !v->child))
        return BAD("tools", "'tools' is not supported");
    if (kind == LORAC_OAI_CHAT && (v = field(o, "response_format"))) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(v, "type");
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "text"))
            return BAD("response_format", "only response_format {\"type\": \"text\"} is supported");
    }
    return LORAC_STATUS_OK;
}

static lorac_status_t parse_fields(const cJSON *o, lorac_oai_kind_t kind, lorac_oai_request_t *r,
                                   lorac_oai_error_t *err) {
    lorac_status_t s;
    const cJSON *model = field(o, "model");
    if (!model) return BAD("model", "'model' is required");
    if (!cJSON_IsString(model)) return BAD("model", "'model' must be a string");
    if (!(r->model = strdup(model->valuestring))) return NOMEM();

    s = kind == LORAC_OAI_CHAT ? parse_messages(o, r, err) : parse_prompt(o, r, err);
    if (s) return s;

    int64_t v = 0;
    bool given = false;
    const char *mt_key = kind == LORAC_OAI_CHAT && field(o, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    if ((s = get_int(o, mt_key, 1, INT32_MAX, &v, &given, err))) return s;
    r->max_tokens = given ? (int32_t)v : kind == LORAC_OAI_COMPLETION ? 16 : 0;
    if ((s = get_int(o, "n", 1, LORAC_OAI_MAX_N, &v, &given, err))) return s;
    r->n = given ? (int32_t)v : 1;
    if (r->n_prompts * r->n > LORAC_OAI_MAX_CHOICES)
        return BAD("n", "%d prompts with n = %d make %d choices; at most %d in one request", r->n_prompts, r->n,
                   r->n_prompts * r->n, LORAC_OAI_MAX_CHOICES);
    if ((s = get_int(o, "top_k", -1, INT32_MAX, &v, &given, err))) return s;
    r->top_k = given && v > 0 ? (int32_t)v : 0;
    if ((s = get_int(o, "seed", -9223372036854775808.0, 9223372036854774784.0, &v, &r->has_seed, err))) return s;
    r->seed = r->has_seed ? (uint64_t)v : 0;

    double t = 1.0, p = 1.0;
    if ((s = get_number(o, "temperature", &t, err))) return s;
    if (!(t >= 0 && t <= 2)) return BAD("temperature", "'temperature' is %g; it must be in [0, 2]", t);
    if ((s = get_number(o, "top_p", &p, err))) return s;
    if (!(p > 0 && p <= 1)) return BAD("top_p", "'top_p' is %g; it must be in (0, 1]", p);
    r->temperature = (float)t;
    r->top_p = (float)p;
    double min_p = 0, presence = 0, frequency = 0, repetition = 1;
    if ((s = get_number(o, "min_p", &min_p, err))) return s;
    if (!(min_p >= 0 && min_p <= 1)) return BAD("min_p", "'min_p' is %g; it must be in [0, 1]", min_p);
    if ((s = get_number(o, "presence_penalty", &presence, err))) return s;
    if (!(presence >= -2 && presence <= 2))
        return BAD("presence_penalty", "'presence_penalty' is %g; it must be in [-2, 2]", presence);
    if ((s = get_number(o, "frequency_penalty", &frequency, err))) return s;
    if (!(frequency >= -2 && frequency <= 2))
        return BAD("frequency_penalty", "'frequency_penalty' is %g; it must be in [-2, 2]", frequency);
    if ((s = get_number(o, "repetition_penalty", &repetition, err))) return s;
    if (!(repetition > 0 && repetition <= 2))
        return BAD("repetition_penalty", "'repetition_penalty' is %g; it must be in (0, 2]", repetition);
    r->min_p = (float)min_p;
    r->presence_penalty = (float)presence;
    r->frequency_penalty = (float)frequency;
    r->repetition_penalty = (float)repetition;

    if (kind == LORAC_OAI_COMPLETION && (s = get_bool(o, "echo", &r->echo, err))) return s;
    if (kind == LORAC_OAI_COMPLETION) { /* an integer; false as null, which some clients send */
        const cJSON *lp = field(o, "logprobs");
        if (lp && !cJSON_IsFalse(lp) && (s = get_int(o, "logprobs", 0, LORAC_OAI_MAX_TOP_LOGPROBS, &v, &r->logprobs, err)))
            return s;
        r->top_logprobs = r->logprobs ? (int32_t)v : 0;
    } else {
        if ((s = get_bool(o, "logprobs", &r->logprobs, err))) return s;
        if ((s = get_int(o, "top_logprobs", 0, LORAC_OAI_MAX_TOP_LOGPROBS, &v, &given, err))) return s;
        if (given && !r->logprobs) return BAD("top_logprobs", "'top_logprobs' needs 'logprobs': true");
        r->top_logprobs = given ? (int32_t)v : 0;
    }
    if ((s = parse_stop(o, r, err))) return s;
    if ((s = parse_stop_token_ids(o, r, err))) return s;
    if ((s = parse_logit_bias(o, r, err))) return s;
    if ((s = get_bool(o, "stream", &r->stream, err))) return s;
    if ((s = get_bool(o, "ignore_eos", &r->ignore_eos, err))) return s;
    const cJSON *so = field(o, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so)) return BAD("stream_options", "'stream_options' must be an object");
        if (!r->stream) return BAD("stream_options", "'stream_options' is only allowed when 'stream' is true");
        if ((s = get_bool(so, "include_usage", &r->include_usage, err))) {
            snprintf(err->param, sizeof err->param, "stream_options.include_usage");
            return s;
        }
    }
    return refuse_unsupported(o, kind, r->n, err);
}

lorac_status_t lorac_oai_request_parse(lorac_oai_kind_t kind, const char *body, size_t len, lorac_oai_request_t *out,
                                       lorac_oai_error_t *err) {
    memset(out, 0, sizeof *out);
    out->kind = kind;
    if (!body || len == 0) return BAD(NULL, "the request body is empty; send a JSON object");
    if (!lorac_utf8_valid(body, len)) return BAD(NULL, "the request body is not valid UTF-8");
    if (has_nul(body, len)) return BAD(NULL, "strings must not contain NUL characters (\\u0000)");
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(body, len, &end, false);
    if (!o) return BAD(NULL, "the request body is not valid JSON");
    while (end && (size_t)(end - body) < len && strchr(" \t\r\n", *end) && *end) end++;
    lorac_status_t s;
    if (end && (size_t)(end - body) < len) s = BAD(NULL, "the request body has data after the JSON value");
    else if (!cJSON_IsObject(o)) s = BAD(NULL, "the request body must be a JSON object");
    else s = parse_fields(o, kind, out, err);
    cJSON_Delete(o);
    if (s) {
        lorac_oai_request_free(out);
        memset(out, 0, sizeof *out);
        out->kind = kind;
    }
    return s;
}

/* Messages whose role and content strings the array owns. */
static void free_messages(lorac_chat_message_t *m, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free((char *)m[i].role);
        free((char *)m[i].content);
    }
    free(m);
}

void lorac_oai_request_free(lorac_oai_request_t *r) {
    if (!r) return;
    free(r->model);
    for (int32_t i = 0; i < r->n_prompts; i++) free(r->prompts[i].text), free(r->prompts[i].ids);
    free(r->prompts);
    free_messages(r->messages, r->n_messages);
    for (int32_t i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->logit_bias);
    memset(r, 0, sizeof *r);
}

lorac_status_t lorac_oai_request_check_prompt(lorac_oai_request_t *r, const int32_t *ids, int32_t n_ids,
                                              int32_t vocab_size, int32_t n_ctx, lorac_oai_error_t *err) {
    const char *what = r->kind == LORAC_OAI_CHAT ? "messages" : "prompt";
    if (n_ids < 1) return BAD(what, "the %s encodes to no tokens; send a non-empty one", what);
    for (int32_t i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= vocab_size)
            return BAD(what, "token id %d (at %d) is outside the vocabulary [0, %d)", ids[i], i, vocab_size);
    for (int32_t i = 0; i < r->n_logit_bias; i++)
        if (r->logit_bias[i].token >= vocab_size)
            return BAD("logit_bias", "logit_bias token id %d is outside the vocabulary [0, %d)", r->logit_bias[i].token,
                       vocab_size);
    for (int32_t i = 0; i < r->n_stop_token_ids; i++)
        if (r->stop_token_ids[i] >= vocab_size)
            return BAD("stop_token_ids", "stop token id %d is outside the vocabulary [0, %d)", r->stop_token_ids[i],
                       vocab_size);
    if (n_ids >= n_ctx)
        return BAD(what, "this model's maximum context length is %d tokens; the %s has %d tokens, leaving no room to "
                   "generate", n_ctx, what, n_ids);
    if (r->max_tokens == 0) r->max_tokens = n_ctx - n_ids;
    if ((int64_t)n_ids + r->max_tokens > n_ctx)
        return BAD("max_tokens", "this model's maximum context length is %d tokens; you requested %lld tokens (%d in "
                   "the %s, %d for the completion); reduce the %s or max_tokens", n_ctx,
                   (long long)n_ids + r->max_tokens, n_ids, what, r->max_tokens, what);
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_oai_lora_request_parse(const char *body, size_t len, bool allow_path, char **name, char **path,
                                            lorac_oai_error_t *err) {
    *name = *path = NULL;
    if (!body || len == 0) return BAD(NULL, "the request body is empty; send {\"lora_name\": ...}");
    if (!lorac_utf8_valid(body, len) || has_nul(body, len))
        return BAD(NULL, "the request body is not valid UTF-8 text");
    cJSON *o = cJSON_ParseWithLength(body, len);
    lorac_status_t s = LORAC_STATUS_OK;
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(o, "lora_name"),
                *p = allow_path ? field(o, "lora_path") : NULL;
    if (!cJSON_IsObject(o)) s = BAD(NULL, "the request body must be a JSON object {\"lora_name\": ...}");
    else if (!cJSON_IsString(n) || !n->valuestring[0]) s = BAD("lora_name", "'lora_name' must be a non-empty string");
    else if (p && !cJSON_IsString(p)) s = BAD("lora_path", "'lora_path' must be a string");
    else if (!(*name = strdup(n->valuestring)) || (p && !(*path = strdup(p->valuestring)))) s = NOMEM();
    cJSON_Delete(o);
    if (s) {
        free(*name);
        free(*path);
        *name = *path = NULL;
    }
    return s;
}

/* ---- /tokenize, /detokenize --------------------------------------------------------- */

static lorac_status_t parse_tokenize_fields(const cJSON *o, bool detokenize, lorac_oai_tokenize_request_t *r,
                                            lorac_oai_error_t *err) {
    const cJSON *v = field(o, "model");
    if (v && !cJSON_IsString(v)) return BAD("model", "'model' must be a string");
    if (v && !(r->model = strdup(v->valuestring))) return NOMEM();
    if (detokenize) {
        const cJSON *a = field(o, "tokens"), *x;
        if (!cJSON_IsArray(a)) return BAD("tokens", "'tokens' must be an array of token ids");
        int n = cJSON_GetArraySize(a);
        if (n > 0 && !(r->tokens = malloc(sizeof(int32_t) * (size_t)n))) return NOMEM();
        cJSON_ArrayForEach(x, a) {
            if (!is_integer(x) || x->valuedouble < 0 || x->valuedouble > INT32_MAX)
                return BAD("tokens", "'tokens' must be an array of token ids (integers >= 0)");
            r->tokens[r->n_tokens++] = (int32_t)x->valuedouble;
        }
        return LORAC_STATUS_OK;
    }
    lorac_status_t s;
    r->add_special_tokens = r->add_generation_prompt = true;
    if ((s = get_bool(o, "add_special_tokens", &r->add_special_tokens, err))) return s;
    if ((s = get_bool(o, "add_generation_prompt", &r->add_generation_prompt, err))) return s;
    const cJSON *prompt = field(o, "prompt"), *messages = field(o, "messages");
    if (!prompt == !messages) return BAD(prompt ? "messages" : "prompt", "give one of 'prompt' (a string) or 'messages'");
    if (prompt) {
        if (!cJSON_IsString(prompt)) return BAD("prompt", "'prompt' must be a string");
        r->prompt_len = strlen(prompt->valuestring);
        if (!(r->prompt = strdup(prompt->valuestring))) return NOMEM();
        return LORAC_STATUS_OK;
    }
    /* the chat endpoint's rules, through its parser */
    lorac_oai_request_t chat = {.kind = LORAC_OAI_CHAT};
    s = parse_messages(o, &chat, err);
    r->messages = chat.messages;
    r->n_messages = chat.n_messages;
    r->enable_thinking = chat.enable_thinking;
    return s;
}

lorac_status_t lorac_oai_tokenize_parse(bool detokenize, const char *body, size_t len, lorac_oai_tokenize_request_t *out,
                                        lorac_oai_error_t *err) {
    memset(out, 0, sizeof *out);
    if (!body || len == 0) return BAD(NULL, "the request body is empty; send a JSON object");
    if (!lorac_utf8_valid(body, len)) return BAD(NULL, "the request body is not valid UTF-8");
    if (has_nul(body, len)) return BAD(NULL, "strings must not contain NUL characters (\\u0000)");
    cJSON *o = cJSON_ParseWithLength(body, len);
    lorac_status_t s = cJSON_IsObject(o) ? parse_tokenize_fields(o, detokenize, out, err)
                                         : BAD(NULL, "the request body must be one JSON object");
    cJSON_Delete(o);
    if (s) lorac_oai_tokenize_request_free(out);
    return s;
}

void lorac_oai_tokenize_request_free(lorac_oai_tokenize_request_t *r) {
    if (!r) return;
    free(r->model);
    free(r->prompt);
    free_messages(r->messages, r->n_messages);
    free(r->tokens);
    memset(r, 0, sizeof *r);
}

char *lorac_oai_tokenize_json(const int32_t *ids, int32_t n, int32_t max_len) {
    cJSON *o = cJSON_CreateObject(), *a = o ? cJSON_AddArrayToObject(o, "tokens") : NULL;
    if (!a) { cJSON_Delete(o); return NULL; }
    for (int32_t i = 0; i < n; i++) {
        cJSON *x = cJSON_CreateNumber(ids[i]);
        if (!x || !cJSON_AddItemToArray(a, x)) { cJSON_Delete(x); cJSON_Delete(o); return NULL; }
    }
    if (!cJSON_AddNumberToObject(o, "count", n) || !cJSON_AddNumberToObject(o, "max_model_len", max_len) ||
        !cJSON_AddNullToObject(o, "token_strs")) {
        cJSON_Delete(o);
        return NULL;
    }
    return print_and_delete(o);
}

char *lorac_oai_detokenize_json(const char *text, size_t len) {
    cJSON *o = cJSON_CreateObject();
    if (!o || add_text(o, "prompt", text, len)) { cJSON_Delete(o); return NULL; }
    return print_and_delete(o);
}

char *lorac_oai_tokenizer_info_json(const char *bos, const char *eos, int32_t max_len) {
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "tokenizer_class", "PreTrainedTokenizerFast") ||
        (bos ? add_text(o, "bos_token", bos, strlen(bos)) : !cJSON_AddNullToObject(o, "bos_token")) ||
        (eos ? add_text(o, "eos_token", eos, strlen(eos)) : !cJSON_AddNullToObject(o, "eos_token")) ||
        !cJSON_AddNullToObject(o, "pad_token") || !cJSON_AddNumberToObject(o, "model_max_length", max_len)) {
        cJSON_Delete(o);
        return NULL;
    }
    return print_and_delete(o);
}

/* ---- responses ------------------------------------------------------------------- */

static cJSON *response_head(const lorac_oai_meta_t *m, const char *object) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "id", m->id ? m->id : "");
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)m->created);
    cJSON_AddStringToObject(o, "model", m->model ? m->model : "");
    return o;
}

static int add_usage(cJSON *o, const lorac_oai_usage_t *usage) {
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    if (!u) return -1;
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)usage->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)usage->completion_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(usage->prompt_tokens + usage->completion_tokens));
    cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    if (!d) return -1;
    cJSON_AddNumberToObject(d, "cached_tokens", (double)usage->cached_tokens);
    return 0;
}

static void add_finish(cJSON *c, const char *finish_reason) {
    if (finish_reason) cJSON_AddStringToObject(c, "finish_reason", finish_reason);
    else cJSON_AddNullToObject(c, "finish_reason");
}

/* `len` bytes as valid UTF-8 without NUL, for object keys (cJSON takes them
 * as C strings and escapes them itself): each invalid byte and NUL becomes
 * U+FFFD, as lorac_oai_json_string writes invalid bytes. */
static char *clean_key(const char *text, size_t len) {
    char *out = malloc(3 * len + 1), *w = out;
    if (!out) return NULL;
    const unsigned char *p = (const unsigned char *)text;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_char_len(p + i, len - i);
        if (n == 0 || p[i] == 0) {
            memcpy(w, "\xEF\xBF\xBD", 3);
            w += 3;
            i++;
        } else {
            memcpy(w, p + i, n);
            w += n;
            i += n;
        }
    }
    *w = 0;
    return out;
}

/* Characters in `len` bytes as a client's string counts them: every byte
 * that does not continue a character starts one. */
static int64_t utf8_chars(const char *s, size_t len) {
    int64_t n = 0;
    for (size_t i = 0; i < len; i++) n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

/* A log-probability as JSON: NaN marks "none" (an echoed prompt's first
 * token) and is null; a token the model rules out (raw logit -inf) gets the
 * most negative float, as cJSON would write any non-finite number as null. */
static double finite_logprob(float lp) { return isfinite(lp) ? (double)lp : -3.4028234663852886e38; }

static cJSON *logprob_json(float lp) { return isnan(lp) ? cJSON_CreateNull() : cJSON_CreateNumber(finite_logprob(lp)); }

static cJSON *chat_token_logprob(const lorac_oai_token_logprob_t *t) {
    cJSON *o = cJSON_CreateObject(), *bytes;
    if (!o || add_text(o, "token", t->text, t->len) || !cJSON_AddNumberToObject(o, "logprob", finite_logprob(t->logprob)) ||
        !(bytes = cJSON_AddArrayToObject(o, "bytes"))) {
        cJSON_Delete(o);
        return NULL;
    }
    for (size_t i = 0; i < t->len; i++) {
        cJSON *b = cJSON_CreateNumber((unsigned char)t->text[i]);
        if (!b || !cJSON_AddItemToArray(bytes, b)) { cJSON_Delete(b); cJSON_Delete(o); return NULL; }
    }
    return o;
}

/* Adds "logprobs" to choice c: null, or the tokens' in the kind's shape. */
static int add_logprobs(cJSON *c, bool chat, const lorac_oai_logprobs_t *lp) {
    if (!lp) return cJSON_AddNullToObject(c, "logprobs") ? 0 : -1;
    cJSON *o = cJSON_AddObjectToObject(c, "logprobs");
    if (!o) return -1;
    if (chat) {
        cJSON *content = cJSON_AddArrayToObject(o, "content");
        if (!content) return -1;
        for (int32_t i = 0; i < lp->n; i++) {
            cJSON *e = chat_token_logprob(&lp->tokens[i].token), *top;
            if (!e || !cJSON_AddItemToArray(content, e)) { cJSON_Delete(e); return -1; }
            if (!(top = cJSON_AddArrayToObject(e, "top_logprobs"))) return -1;
            for (int32_t k = 0; k < lp->tokens[i].n_top; k++) {
                cJSON *t = chat_token_logprob(&lp->tokens[i].top[k]);
                if (!t || !cJSON_AddItemToArray(top, t)) { cJSON_Delete(t); return -1; }
            }
        }
        return 0;
    }
    cJSON *tokens = cJSON_AddArrayToObject(o, "tokens"), *lps = cJSON_AddArrayToObject(o, "token_logprobs"),
          *tops = cJSON_AddArrayToObject(o, "top_logprobs"), *offsets = cJSON_AddArrayToObject(o, "text_offset");
    if (!tokens || !lps || !tops || !offsets) return -1;
    int64_t offset = lp->text_offset;
    for (int32_t i = 0; i < lp->n; i++) {
        const lorac_oai_logprob_t *t = &lp->tokens[i];
        char *lit = lorac_oai_json_string(t->token.text, t->token.len);
        cJSON *tok = lit ? cJSON_CreateRaw(lit) : NULL, *num = logprob_json(t->token.logprob),
              *off = cJSON_CreateNumber((double)offset), *top = t->n_top < 0 ? cJSON_CreateNull() : cJSON_CreateObject();
        free(lit);
        int bad = !cJSON_AddItemToArray(tokens, tok);
        if (bad) cJSON_Delete(tok);
        if (!cJSON_AddItemToArray(lps, num)) { cJSON_Delete(num); bad = 1; }
        if (!cJSON_AddItemToArray(offsets, off)) { cJSON_Delete(off); bad = 1; }
        if (!cJSON_AddItemToArray(tops, top)) { cJSON_Delete(top); bad = 1; }
        if (bad) return -1;
        /* the top tokens and the generated one (OpenAI: up to n_top + 1) */
        for (int32_t k = 0; k <= t->n_top; k++) { /* none for n_top < 0 */
            const lorac_oai_token_logprob_t *x = k < t->n_top ? &t->top[k] : &t->token;
            char *key = clean_key(x->text, x->len);
            if (!key) return -1;
            if (!cJSON_GetObjectItemCaseSensitive(top, key) &&
                !cJSON_AddNumberToObject(top, key, finite_logprob(x->logprob))) {
                free(key);
                return -1;
            }
            free(key);
        }
        offset += utf8_chars(t->token.text, t->token.len);
    }
    return 0;
}

char *lorac_oai_response_json(const lorac_oai_meta_t *m, const lorac_oai_choice_t *choices, int32_t n,
                              const lorac_oai_usage_t *usage) {
    bool chat = m->kind == LORAC_OAI_CHAT;
    cJSON *o = response_head(m, chat ? "chat.completion" : "text_completion");
    cJSON *arr = o ? cJSON_AddArrayToObject(o, "choices") : NULL;
    if (!arr) { cJSON_Delete(o); return NULL; }
    for (int32_t i = 0; i < n; i++) {
        cJSON *c = cJSON_CreateObject();
        if (!c || !cJSON_AddItemToArray(arr, c)) { cJSON_Delete(c); cJSON_Delete(o); return NULL; }
        cJSON_AddNumberToObject(c, "index", i);
        if (chat) {
            cJSON *msg = cJSON_AddObjectToObject(c, "message");
            if (!msg) { cJSON_Delete(o); return NULL; }
            cJSON_AddStringToObject(msg, "role", "assistant");
            if (add_text(msg, "content", choices[i].text, choices[i].text_len)) { cJSON_Delete(o); return NULL; }
        } else if (add_text(c, "text", choices[i].text, choices[i].text_len)) {
            cJSON_Delete(o);
            return NULL;
        }
        if (add_logprobs(c, chat, choices[i].logprobs)) { cJSON_Delete(o); return NULL; }
        add_finish(c, choices[i].finish_reason);
    }
    if (add_usage(o, usage)) { cJSON_Delete(o); return NULL; }
    return print_and_delete(o);
}

/* "data: " + json + "\n\n" */
static char *sse(char *json) {
    if (!json) return NULL;
    size_t n = strlen(json);
    char *out = malloc(n + 9);
    if (out) {
        memcpy(out, "data: ", 6);
        memcpy(out + 6, json, n);
        memcpy(out + 6 + n, "\n\n", 3);
    }
    free(json);
    return out;
}

char *lorac_oai_stream_chunk(const lorac_oai_meta_t *m, int32_t index, const char *text, size_t text_len,
                             const char *finish_reason, bool role_delta, bool usage_null,
                             const lorac_oai_logprobs_t *logprobs) {
    bool chat = m->kind == LORAC_OAI_CHAT;
    cJSON *o = response_head(m, chat ? "chat.completion.chunk" : "text_completion");
    cJSON *arr = o ? cJSON_AddArrayToObject(o, "choices") : NULL, *c = cJSON_CreateObject();
    if (!arr || !c || !cJSON_AddItemToArray(arr, c)) { cJSON_Delete(c); cJSON_Delete(o); return NULL; }
    cJSON_AddNumberToObject(c, "index", index);
    int bad = 0;
    if (chat) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (!d) bad = 1;
        else if (role_delta) {
            cJSON_AddStringToObject(d, "role", "assistant");
            cJSON_AddStringToObject(d, "content", "");
        } else if (text_len > 0 || !finish_reason) {
            bad = add_text(d, "content", text, text_len);
        }
    } else {
        bad = add_text(c, "text", text, text_len);
    }
    if (!bad) bad = add_logprobs(c, chat, logprobs);
    add_finish(c, finish_reason);
    if (usage_null) cJSON_AddNullToObject(o, "usage");
    if (bad) { cJSON_Delete(o); return NULL; }
    return sse(print_and_delete(o));
}

char *lorac_oai_stream_usage_chunk(const lorac_oai_meta_t *m, const lorac_oai_usage_t *usage) {
    cJSON *o = response_head(m, m->kind == LORAC_OAI_CHAT ? "chat.completion.chunk" : "text_completion");
    if (!o || !cJSON_AddArrayToObject(o, "choices") || add_usage(o, usage)) {
        cJSON_Delete(o);
        return NULL;
    }
    return sse(print_and_delete(o));
}

char *lorac_oai_stream_error(const lorac_oai_error_t *err) { return sse(lorac_oai_error_json(err)); }

static cJSON *model_entry(const char *id, int64_t created, const char *parent) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "object", "model");
    cJSON_AddNumberToObject(o, "created", (double)created);
    cJSON_AddStringToObject(o, "owned_by", "lorac");
    cJSON_AddStringToObject(o, "root", id);
    if (parent) cJSON_AddStringToObject(o, "parent", parent);
    else cJSON_AddNullToObject(o, "parent");
    return o;
}

char *lorac_oai_models_json(const char *base, int64_t created, const char *const *adapters, int32_t n_adapters) {
    cJSON *o = cJSON_CreateObject();
    if (o) cJSON_AddStringToObject(o, "object", "list");
    cJSON *data = o ? cJSON_AddArrayToObject(o, "data") : NULL;
    if (!data) { cJSON_Delete(o); return NULL; }
    for (int32_t i = -1; i < n_adapters; i++) {
        cJSON *e = i < 0 ? model_entry(base, created, NULL) : model_entry(adapters[i], created, base);
        if (!e || !cJSON_AddItemToArray(data, e)) { cJSON_Delete(e); cJSON_Delete(o); return NULL; }
    }
    return print_and_delete(o);
}
