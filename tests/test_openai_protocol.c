/* The OpenAI protocol layer (lorac/openai.h) without a server: request
 * parsing and validation, every class of bad request with its status and
 * param, the prompt checks against a model, response / SSE / error / model
 * list bodies read back as JSON, generated text that is not valid UTF-8 or
 * holds NUL, the Prometheus text, and chat prompts with the generation
 * prompt (lorac_dataset_chat_render_generation, lorac_dataset_chat_tokens). */
#include <cjson/cJSON.h>

#include "lorac/http.h"
#include "lorac/openai.h"
#include "lorac/tokenizer.h"
#include "testlib.h"

static lorac_oai_request_t g_req;
static lorac_oai_error_t g_err;

static lorac_status_t parse(lorac_oai_kind_t kind, const char *body) {
    lorac_oai_request_free(&g_req);
    memset(&g_err, 0, sizeof g_err);
    return lorac_oai_request_parse(kind, body, strlen(body), &g_req, &g_err);
}

/* A bad body must give `status` with `param` ("" = none) and a message. */
static void expect_bad(lorac_oai_kind_t kind, const char *body, int status, const char *param) {
    lorac_status_t s = parse(kind, body);
    CHECK_MSG(s != LORAC_STATUS_OK && g_err.http_status == status && !strcmp(g_err.param, param) && g_err.message[0],
              "%s -> status %d param '%s' message '%s' (want %d '%s')", body, g_err.http_status, g_err.param,
              g_err.message, status, param);
    CHECK(g_req.model == NULL && g_req.prompts == NULL && g_req.messages == NULL); /* nothing left to free */
}

static cJSON *parse_json(const char *s) {
    cJSON *o = s ? cJSON_Parse(s) : NULL;
    CHECK_MSG(o != NULL, "not JSON: %s", s ? s : "(null)");
    return o;
}

static const char *str_at(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void test_parse_good(void) {
    CHECK(parse(LORAC_OAI_COMPLETION, "{\"model\": \"base\", \"prompt\": \"Once upon\"}") == LORAC_STATUS_OK);
    CHECK(!strcmp(g_req.model, "base") && !strcmp(g_req.prompts[0].text, "Once upon") && g_req.prompts[0].len == 9);
    CHECK(g_req.max_tokens == 16 && g_req.temperature == 1.0f && g_req.top_p == 1.0f && g_req.n == 1);
    CHECK(!g_req.stream && !g_req.has_seed && g_req.n_stop == 0 && g_req.top_k == 0 && !g_req.prompts[0].ids);

    CHECK(parse(LORAC_OAI_COMPLETION,
                "{\"model\": \"a\", \"prompt\": [1, 2, 3], \"max_tokens\": 5, \"temperature\": 0, \"top_p\": 0.5, "
                "\"n\": 3, \"seed\": -7, \"stop\": [\"x\", \"yz\"], \"stream\": true, \"stream_options\": "
                "{\"include_usage\": true}, \"top_k\": -1, \"ignore_eos\": true, \"user\": \"u\", \"logprobs\": null, "
                "\"stop_token_ids\": [2, 0, 7], "
                "\"echo\": false, \"presence_penalty\": 0, \"best_of\": 3, \"logit_bias\": {}}") == LORAC_STATUS_OK);
    CHECK(g_req.prompts[0].n_ids == 3 && g_req.prompts[0].ids[2] == 3 && !g_req.prompts[0].text);
    CHECK(g_req.max_tokens == 5 && g_req.temperature == 0.0f && g_req.top_p == 0.5f && g_req.n == 3);
    CHECK(g_req.has_seed && g_req.seed == (uint64_t)-7 && g_req.n_stop == 2 && !strcmp(g_req.stop[1], "yz"));
    CHECK(g_req.stream && g_req.include_usage && g_req.ignore_eos && g_req.top_k == 0);
    CHECK(g_req.n_stop_token_ids == 3 && g_req.stop_token_ids[0] == 2 && g_req.stop_token_ids[2] == 7);
    CHECK(g_req.presence_penalty == 0.0f && g_req.frequency_penalty == 0.0f && g_req.repetition_penalty == 1.0f &&
          g_req.min_p == 0.0f);
    CHECK(parse(LORAC_OAI_CHAT, "{\"model\": \"a\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
                                "\"presence_penalty\": -2, \"frequency_penalty\": 0.5, \"repetition_penalty\": 1.3, "
                                "\"min_p\": 0.05}") == LORAC_STATUS_OK);
    CHECK(g_req.presence_penalty == -2.0f && g_req.frequency_penalty == 0.5f && g_req.repetition_penalty == 1.3f &&
          g_req.min_p == 0.05f);
    CHECK(parse(LORAC_OAI_COMPLETION, "{\"model\": \"a\", \"prompt\": [1], \"logit_bias\": {\"7\": -100, \"0\": 2.5}}") ==
          LORAC_STATUS_OK);
    CHECK(g_req.n_logit_bias == 2 && g_req.logit_bias[0].token == 7 && g_req.logit_bias[0].bias == -100.0f &&
          g_req.logit_bias[1].token == 0 && g_req.logit_bias[1].bias == 2.5f);
    {
        static const int32_t one[1] = {1};
        CHECK(lorac_oai_request_check_prompt(&g_req, one, 1, 8, 64, &g_err) == LORAC_STATUS_OK);
        CHECK(lorac_oai_request_check_prompt(&g_req, one, 1, 7, 64, &g_err) == LORAC_STATUS_INVALID_ARG &&
              !strcmp(g_err.param, "logit_bias"));
    }

    /* a batch of one prompt is that prompt; a single stop string; nulls are "not given" */
    CHECK(parse(LORAC_OAI_COMPLETION, "{\"model\": \"a\", \"prompt\": [\"hi\"], \"stop\": \"\\n\", \"max_tokens\": null, "
                                      "\"temperature\": null}") == LORAC_STATUS_OK);
    CHECK(!strcmp(g_req.prompts[0].text, "hi") && g_req.n_stop == 1 && !strcmp(g_req.stop[0], "\n") && g_req.max_tokens == 16);
    CHECK(parse(LORAC_OAI_COMPLETION, "{\"model\": \"a\", \"prompt\": [[5, 6]]}") == LORAC_STATUS_OK);
    CHECK(g_req.prompts[0].n_ids == 2 && g_req.prompts[0].ids[0] == 5);
    CHECK(parse(LORAC_OAI_COMPLETION, "{\"model\": \"a\", \"prompt\": \"\", \"max_tokens\": 16.0, \"top_k\": 40}") ==
          LORAC_STATUS_OK);
    CHECK(g_req.prompts[0].len == 0 && g_req.top_k == 40);
    /* a batch of prompts: strings or token-id arrays, one kind; n choices each, at most 64 in all */
    CHECK(parse(LORAC_OAI_COMPLETION, "{\"model\": \"a\", \"prompt\": [\"x\", \"yz\", \"\"]}") == LORAC_STATUS_OK);
    CHECK(g_req.n_prompts == 3 && !strcmp(g_req.prompts[1].text, "yz") && g_req.prompts[2].len == 0);
    CHECK(parse(LORAC_OAI_COMPLETION, "{\"model\": \"a\", \"prompt\": [[1, 2], [3]], \"n\": 2}") == LORAC_STATUS_OK);
    CHECK(g_req.n_prompts == 2 && g_req.prompts[1].n_ids == 1 && g_req.prompts[1].ids[0] == 3 && g_req.n == 2);
    expect_bad(LORAC_OAI_COMPLETION, "{\"model\": \"a\", \"prompt\": [\"x\", [1]]}", 400, "prompt");
    expect_bad(LORAC_OAI_COMPLETION, "{\"model\": \"a\", \"prompt\": [[1], \"x\"]}", 400, "prompt");
    expect_bad(LORAC_OAI_COMPLETION, "{\"model\": \"a\", \"prompt\": [[1], []]}", 400, "prompt");
    expect_bad(LORAC_OAI_COMPLETION, "{\"model\": \"a\", \"prompt\": [[1], 2]}", 400, "prompt");
    {
        char big[2048] = "{\"model\": \"a\", \"prompt\": [";
        for (int i = 0; i < LORAC_OAI_MAX_PROMPTS + 1; i++) strcat(big, i ? ", \"p\"" : "\"p\"");
        strcat(big, "]}");
        expect_bad(LORAC_OAI_COMPLETION, big, 400, "prompt");
        strcpy(big, "{\"model\": \"a\", \"n\": 16, \"prompt\": [\"a\", \"b\", \"c\", \"d\", \"e\"]}");
        expect_bad(LORAC_OAI_COMPLETION, big, 400, "n");
    }
    /* escapes and non-ASCII text survive */
    CHECK(parse(LORAC_OAI_COMPLETION, "  {\"model\": \"a\", \"prompt\": \"\\u00e9t\\u00e9 \\ud83d\\ude00 \xe2\x82\xac\"}\n") ==
          LORAC_STATUS_OK);
    CHECK(!strcmp(g_req.prompts[0].text, "\xc3\xa9t\xc3\xa9 \xf0\x9f\x98\x80 \xe2\x82\xac"));

    CHECK(parse(LORAC_OAI_CHAT, "{\"model\": \"m\", \"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, "
                                "{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"}, "
                                "{\"type\": \"text\", \"text\": \"b\"}]}], \"max_completion_tokens\": 7}") ==
          LORAC_STATUS_OK);
    CHECK(g_req.n_messages == 2 && !strcmp(g_req.messages[0].role, "system") && !strcmp(g_req.messages[1].content, "a\nb"));
    CHECK(g_req.max_tokens == 7);
    CHECK(parse(LORAC_OAI_CHAT, "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}") == LORAC_STATUS_OK);
    CHECK(g_req.max_tokens == 0); /* chat: the rest of the context, filled by check_prompt */
}

static void test_parse_bad(void) {
    const lorac_oai_kind_t C = LORAC_OAI_COMPLETION, H = LORAC_OAI_CHAT;
    /* the body itself */
    expect_bad(C, "", 400, "");
    expect_bad(C, "   ", 400, "");
    expect_bad(C, "{", 400, "");
    expect_bad(C, "{\"model\": \"a\", \"prompt\": \"x\",}", 400, "");
    expect_bad(C, "{\"model\": \"a\", \"prompt\": \"x\"} {}", 400, "");
    expect_bad(C, "[1, 2]", 400, "");
    expect_bad(C, "\"text\"", 400, "");
    expect_bad(C, "null", 400, "");
    expect_bad(C, "{\"model\": \"a\", \"prompt\": \"\xff\xfe\"}", 400, "");     /* invalid UTF-8 */
    expect_bad(C, "{\"model\": \"a\", \"prompt\": \"\xc0\xaf\"}", 400, "");     /* overlong */
    expect_bad(C, "{\"model\": \"a\", \"prompt\": \"\xed\xa0\x80\"}", 400, ""); /* surrogate */
    expect_bad(C, "{\"model\": \"a\", \"prompt\": \"a\\u0000b\"}", 400, "");    /* would truncate */
    expect_bad(C, "{\"model\": \"a\", \"prompt\": \"\\ud800\"}", 400, "");      /* lone surrogate escape */
    {
        const char body[] = "{\"model\": \"a\", \"prompt\": \"a\0b\"}";
        lorac_oai_request_free(&g_req);
        CHECK(lorac_oai_request_parse(C, body, sizeof body - 1, &g_req, &g_err) && g_err.http_status == 400);
    }
    /* "\\u0000" is a backslash and text, not NUL */
    CHECK(parse(C, "{\"model\": \"a\", \"prompt\": \"a\\\\u0000b\"}") == LORAC_STATUS_OK && !strcmp(g_req.prompts[0].text, "a\\u0000b"));
    /* model */
    expect_bad(C, "{\"prompt\": \"x\"}", 400, "model");
    expect_bad(C, "{\"model\": 3, \"prompt\": \"x\"}", 400, "model");
    expect_bad(C, "{\"model\": null, \"prompt\": \"x\"}", 400, "model");
    /* prompt */
    expect_bad(C, "{\"model\": \"a\"}", 400, "prompt");
    expect_bad(C, "{\"model\": \"a\", \"prompt\": 5}", 400, "prompt");
    expect_bad(C, "{\"model\": \"a\", \"prompt\": []}", 400, "prompt");
    expect_bad(C, "{\"model\": \"a\", \"prompt\": [1, -1]}", 400, "prompt");
    expect_bad(C, "{\"model\": \"a\", \"prompt\": [1, 2.5]}", 400, "prompt");
    expect_bad(C, "{\"model\": \"a\", \"prompt\": [1, 3000000000]}", 400, "prompt");
    expect_bad(C, "{\"model\": \"a\", \"prompt\": [1, \"2\"]}", 400, "prompt");
    expect_bad(C, "{\"model\": \"a\", \"prompt\": {}}", 400, "prompt");
    /* numbers: types and ranges */
    const char *ranges[][2] = {
        {"\"temperature\": \"hot\"", "temperature"}, {"\"temperature\": -0.01", "temperature"},
        {"\"temperature\": 2.01", "temperature"},    {"\"temperature\": 1e999", "temperature"},
        {"\"top_p\": 0", "top_p"},                   {"\"top_p\": 1.0001", "top_p"},
        {"\"top_p\": -1", "top_p"},                  {"\"top_p\": true", "top_p"},
        {"\"max_tokens\": 0", "max_tokens"},         {"\"max_tokens\": -5", "max_tokens"},
        {"\"max_tokens\": 1.5", "max_tokens"},       {"\"max_tokens\": \"10\"", "max_tokens"},
        {"\"max_tokens\": 1e12", "max_tokens"},      {"\"n\": 0", "n"},
        {"\"n\": 17", "n"},                          {"\"n\": 2.5", "n"},
        {"\"top_k\": -2", "top_k"},                  {"\"seed\": 1.5", "seed"},
        {"\"seed\": 1e30", "seed"},                  {"\"seed\": \"1\"", "seed"},
        {"\"stream\": 1", "stream"},                 {"\"stream\": \"yes\"", "stream"},
        {"\"ignore_eos\": 0", "ignore_eos"},         {"\"stop\": \"\"", "stop"},
        {"\"stop\": [\"a\", \"\"]", "stop"},         {"\"stop\": [\"a\",\"b\",\"c\",\"d\",\"e\"]", "stop"},
        {"\"stop\": 3", "stop"},                     {"\"stop\": [3]", "stop"},
        {"\"stop_token_ids\": 3", "stop_token_ids"},   {"\"stop_token_ids\": [1.5]", "stop_token_ids"},
        {"\"stop_token_ids\": [-1]", "stop_token_ids"}, {"\"stop_token_ids\": [\"1\"]", "stop_token_ids"},
        {"\"stop_token_ids\": [1,2,3,4,5,6,7,8]", "stop_token_ids"},
        {"\"stream_options\": {\"include_usage\": true}", "stream_options"},
        {"\"stream\": true, \"stream_options\": 1", "stream_options"},
        {"\"stream\": true, \"stream_options\": {\"include_usage\": 1}", "stream_options.include_usage"},
        {"\"logprobs\": 21", "logprobs"},            {"\"echo\": 1", "echo"},
        {"\"logprobs\": -1", "logprobs"},            {"\"logprobs\": true", "logprobs"},
        {"\"logprobs\": 1.5", "logprobs"},
        {"\"suffix\": \"x\"", "suffix"},             {"\"best_of\": 2", "best_of"},
        {"\"presence_penalty\": 2.5", "presence_penalty"}, {"\"frequency_penalty\": -2.01", "frequency_penalty"},
        {"\"presence_penalty\": \"1\"", "presence_penalty"}, {"\"repetition_penalty\": 0", "repetition_penalty"},
        {"\"repetition_penalty\": 2.5", "repetition_penalty"}, {"\"repetition_penalty\": -1", "repetition_penalty"},
        {"\"min_p\": -0.1", "min_p"},                 {"\"min_p\": 1.5", "min_p"},
        {"\"min_p\": [0]", "min_p"},
        {"\"logit_bias\": {\"5\": 101}", "logit_bias"},  {"\"logit_bias\": {\"x\": 1}", "logit_bias"},
        {"\"logit_bias\": {\"-5\": 1}", "logit_bias"},   {"\"logit_bias\": {\"5 \": 1}", "logit_bias"},
        {"\"logit_bias\": {\"99999999999\": 1}", "logit_bias"}, {"\"logit_bias\": {\"5\": \"1\"}", "logit_bias"},
        {"\"logit_bias\": [5]", "logit_bias"},          {"\"logit_bias\": {\"\": 1}", "logit_bias"},
    };
    for (size_t i = 0; i < sizeof ranges / sizeof *ranges; i++) {
        char body[512];
        snprintf(body, sizeof body, "{\"model\": \"a\", \"prompt\": \"x\", %s}", ranges[i][0]);
        expect_bad(C, body, 400, ranges[i][1]);
    }
    char long_stop[600] = "{\"model\": \"a\", \"prompt\": \"x\", \"stop\": \"";
    size_t at = strlen(long_stop);
    memset(long_stop + at, 'z', LORAC_OAI_MAX_STOP_LEN + 1);
    strcpy(long_stop + at + LORAC_OAI_MAX_STOP_LEN + 1, "\"}");
    expect_bad(C, long_stop, 400, "stop");
    /* chat messages */
    expect_bad(H, "{\"model\": \"m\"}", 400, "messages");
    expect_bad(H, "{\"model\": \"m\", \"messages\": []}", 400, "messages");
    expect_bad(H, "{\"model\": \"m\", \"messages\": \"hi\"}", 400, "messages");
    expect_bad(H, "{\"model\": \"m\", \"messages\": [\"hi\"]}", 400, "messages");
    expect_bad(H, "{\"model\": \"m\", \"messages\": [{\"content\": \"hi\"}]}", 400, "messages");
    expect_bad(H, "{\"model\": \"m\", \"messages\": [{\"role\": \"wizard\", \"content\": \"hi\"}]}", 400, "messages");
    expect_bad(H, "{\"model\": \"m\", \"messages\": [{\"role\": \"user\"}]}", 400, "messages");
    expect_bad(H, "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": 5}]}", 400, "messages");
    expect_bad(H, "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}",
               400, "messages");
    expect_bad(H, "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{}]}", 400,
               "tools");
    expect_bad(H, "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
                  "\"response_format\": {\"type\": \"json_object\"}}", 400, "response_format");
    /* vLLM's chat_template_kwargs: an object; enable_thinking true or false; other variables ignored */
    expect_bad(H, "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
                  "\"chat_template_kwargs\": [1]}", 400, "chat_template_kwargs");
    expect_bad(H, "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
                  "\"chat_template_kwargs\": {\"enable_thinking\": \"no\"}}", 400, "chat_template_kwargs");
    CHECK(parse(H, "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}") == 0 &&
          g_req.enable_thinking == -1);
    CHECK(parse(H, "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
                   "\"chat_template_kwargs\": {\"enable_thinking\": false, \"custom\": [1]}}") == 0 &&
          g_req.enable_thinking == 0);
    CHECK(parse(H, "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
                   "\"chat_template_kwargs\": {\"enable_thinking\": true}}") == 0 &&
          g_req.enable_thinking == 1);
    /* a body nested too deep for cJSON is refused, not a crash */
    char deep[4200];
    size_t d = 0;
    d += (size_t)sprintf(deep, "{\"model\": \"a\", \"prompt\": ");
    for (int i = 0; i < 2000; i++) deep[d++] = '[';
    for (int i = 0; i < 2000; i++) deep[d++] = ']';
    strcpy(deep + d, "}");
    expect_bad(C, deep, 400, "");
    lorac_oai_request_free(&g_req);
}

static void test_check_prompt(void) {
    int32_t ids[4] = {1, 5, 9, 2};
    CHECK(parse(LORAC_OAI_COMPLETION, "{\"model\": \"a\", \"prompt\": \"x\", \"max_tokens\": 10}") == 0);
    CHECK(lorac_oai_request_check_prompt(&g_req, ids, 4, 10, 14, &g_err) == LORAC_STATUS_OK);
    CHECK(lorac_oai_request_check_prompt(&g_req, ids, 4, 10, 13, &g_err) && !strcmp(g_err.param, "max_tokens"));
    CHECK(lorac_oai_request_check_prompt(&g_req, ids, 4, 9, 100, &g_err) && !strcmp(g_err.param, "prompt") &&
          strstr(g_err.message, "token id 9"));
    CHECK(lorac_oai_request_check_prompt(&g_req, ids, 0, 10, 100, &g_err) && g_err.http_status == 400);
    int32_t neg[2] = {1, -3};
    CHECK(lorac_oai_request_check_prompt(&g_req, neg, 2, 10, 100, &g_err) && g_err.http_status == 400);
    CHECK(lorac_oai_request_check_prompt(&g_req, ids, 4, 10, 4, &g_err) && g_err.http_status == 400);
    CHECK(parse(LORAC_OAI_COMPLETION, "{\"model\": \"a\", \"prompt\": \"x\", \"stop_token_ids\": [3, 10]}") == 0);
    CHECK(lorac_oai_request_check_prompt(&g_req, ids, 4, 11, 100, &g_err) == LORAC_STATUS_OK);
    CHECK(lorac_oai_request_check_prompt(&g_req, ids, 4, 10, 100, &g_err) && !strcmp(g_err.param, "stop_token_ids") &&
          strstr(g_err.message, "stop token id 10"));
    CHECK(parse(LORAC_OAI_CHAT, "{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}") == 0);
    CHECK(lorac_oai_request_check_prompt(&g_req, ids, 4, 10, 64, &g_err) == LORAC_STATUS_OK && g_req.max_tokens == 60);
    lorac_oai_request_free(&g_req);
}

static void test_errors(void) {
    lorac_oai_error_t e;
    CHECK(lorac_oai_error_set(&e, 404, "invalid_request_error", "model", "model_not_found", "The model '%s' does not exist",
                              "zz") == LORAC_STATUS_NOT_FOUND);
    char *s = lorac_oai_error_json(&e);
    cJSON *o = parse_json(s);
    free(s);
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(o, "error");
    CHECK(err && !strcmp(str_at(err, "message"), "The model 'zz' does not exist"));
    CHECK(!strcmp(str_at(err, "type"), "invalid_request_error") && !strcmp(str_at(err, "param"), "model") &&
          !strcmp(str_at(err, "code"), "model_not_found"));
    cJSON_Delete(o);
    CHECK(lorac_oai_error_set(&e, 429, NULL, NULL, NULL, "busy") == LORAC_STATUS_BUSY);
    s = lorac_oai_error_json(&e);
    o = parse_json(s);
    err = cJSON_GetObjectItemCaseSensitive(o, "error");
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(err, "param")) && cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(err, "code")));
    cJSON_Delete(o);
    free(s);
    /* a message cut inside a character stays valid UTF-8 */
    char longmsg[2000];
    memset(longmsg, 'a', sizeof longmsg);
    for (size_t i = 1; i + 1 < sizeof longmsg; i += 2) memcpy(longmsg + i, "\xc3\xa9", 2);
    longmsg[sizeof longmsg - 1] = 0;
    lorac_oai_error_set(&e, 400, NULL, NULL, NULL, "%s", longmsg);
    CHECK(lorac_utf8_valid(e.message, strlen(e.message)));
    s = lorac_oai_stream_error(&e);
    CHECK(s && !strncmp(s, "data: {\"error\":", 15) && strstr(s, "\n\n") == s + strlen(s) - 2);
    free(s);
}

static void test_json_string(void) {
    const char raw[] = "a\"b\\c\n\x01\xff\xe2\x82" "\0" "\xf0\x9f\x98\x80";
    char *s = lorac_oai_json_string(raw, sizeof raw - 1);
    CHECK(s && lorac_utf8_valid(s, strlen(s)));
    char wrapped[256];
    snprintf(wrapped, sizeof wrapped, "[%s]", s);
    cJSON *o = parse_json(wrapped);
    CHECK(cJSON_IsString(o->child) && !strcmp(o->child->valuestring, "a\"b\\c\n\x01\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"));
    CHECK(strstr(s, "\\u0000\xf0\x9f\x98\x80\"") != NULL); /* NUL escaped, the emoji kept whole */
    cJSON_Delete(o);
    free(s);
}

static void test_logprobs_parse(void) {
    CHECK(parse(LORAC_OAI_COMPLETION, "{\"model\": \"a\", \"prompt\": \"x\", \"logprobs\": 3}") == LORAC_STATUS_OK);
    CHECK(g_req.logprobs && g_req.top_logprobs == 3);
    CHECK(parse(LORAC_OAI_COMPLETION, "{\"model\": \"a\", \"prompt\": \"x\", \"logprobs\": 0}") == LORAC_STATUS_OK);
    CHECK(g_req.logprobs && g_req.top_logprobs == 0);
    CHECK(parse(LORAC_OAI_COMPLETION, "{\"model\": \"a\", \"prompt\": \"x\", \"logprobs\": false}") == LORAC_STATUS_OK);
    CHECK(!g_req.logprobs && !g_req.echo);
    CHECK(parse(LORAC_OAI_COMPLETION, "{\"model\": \"a\", \"prompt\": [1, 2], \"logprobs\": 1, \"echo\": true}") ==
          LORAC_STATUS_OK);
    CHECK(g_req.logprobs && g_req.top_logprobs == 1 && g_req.echo);
    expect_bad(LORAC_OAI_COMPLETION, "{\"model\": \"a\", \"prompt\": \"x\", \"echo\": \"yes\"}", 400, "echo");
    const char *msgs = "\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]";
    char body[256];
    snprintf(body, sizeof body, "{\"model\": \"a\", %s, \"logprobs\": true, \"top_logprobs\": 20}", msgs);
    CHECK(parse(LORAC_OAI_CHAT, body) == LORAC_STATUS_OK && g_req.logprobs && g_req.top_logprobs == 20);
    snprintf(body, sizeof body, "{\"model\": \"a\", %s, \"logprobs\": true}", msgs);
    CHECK(parse(LORAC_OAI_CHAT, body) == LORAC_STATUS_OK && g_req.logprobs && g_req.top_logprobs == 0);
    snprintf(body, sizeof body, "{\"model\": \"a\", %s, \"logprobs\": false, \"top_logprobs\": null}", msgs);
    CHECK(parse(LORAC_OAI_CHAT, body) == LORAC_STATUS_OK && !g_req.logprobs);
    const char *bad[][2] = {{"\"top_logprobs\": 2", "top_logprobs"},
                            {"\"logprobs\": false, \"top_logprobs\": 2", "top_logprobs"},
                            {"\"logprobs\": true, \"top_logprobs\": 21", "top_logprobs"},
                            {"\"logprobs\": true, \"top_logprobs\": -1", "top_logprobs"},
                            {"\"logprobs\": 1", "logprobs"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(body, sizeof body, "{\"model\": \"a\", %s, %s}", msgs, bad[i][0]);
        expect_bad(LORAC_OAI_CHAT, body, 400, bad[i][1]);
    }
}

/* Log-probabilities in both shapes: tokens with a broken character and a
 * NUL, two top tokens with the same text, -inf. */
static void test_logprobs_json(void) {
    lorac_oai_token_logprob_t top[3] = {{" the", 4, -0.5f}, {"\xe2\x82", 2, -1.25f}, {" the", 4, -2.0f}};
    lorac_oai_token_logprob_t gen[2] = {{"\xe2\x82", 2, -1.25f}, {"a\0b", 3, -INFINITY}};
    lorac_oai_logprob_t items[2] = {{gen[0], top, 3}, {gen[1], top, 0}};
    lorac_oai_logprobs_t lp = {.tokens = items, .n = 2, .text_offset = 7};
    lorac_oai_choice_t ch = {.text = "x", .text_len = 1, .finish_reason = "stop", .logprobs = &lp};
    lorac_oai_meta_t m = {.kind = LORAC_OAI_COMPLETION, .id = "cmpl-1", .created = 1, .model = "base"};
    char *s = lorac_oai_response_json(&m, &ch, 1, &(lorac_oai_usage_t){1, 2, 0});
    cJSON *o = parse_json(s);
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "choices"), 0),
                                                      "logprobs");
    const cJSON *toks = cJSON_GetObjectItemCaseSensitive(l, "tokens"), *lps = cJSON_GetObjectItemCaseSensitive(l, "token_logprobs"),
                *tops = cJSON_GetObjectItemCaseSensitive(l, "top_logprobs"), *offs = cJSON_GetObjectItemCaseSensitive(l, "text_offset");
    CHECK(cJSON_GetArraySize(toks) == 2 && cJSON_GetArraySize(lps) == 2 && cJSON_GetArraySize(tops) == 2 &&
          cJSON_GetArraySize(offs) == 2);
    CHECK(!strcmp(cJSON_GetArrayItem(toks, 0)->valuestring, "\xef\xbf\xbd\xef\xbf\xbd"));
    CHECK(cJSON_GetArrayItem(lps, 0)->valuedouble == -1.25);
    CHECK(cJSON_GetArrayItem(lps, 1)->valuedouble < -1e38); /* -inf as the most negative float */
    /* the top tokens and the generated one, keyed by text: " the" once (the more likely), U+FFFD */
    const cJSON *t0 = cJSON_GetArrayItem(tops, 0), *t1 = cJSON_GetArrayItem(tops, 1);
    CHECK(cJSON_GetArraySize(t0) == 2 && cJSON_GetObjectItemCaseSensitive(t0, " the")->valuedouble == -0.5);
    CHECK(cJSON_GetObjectItemCaseSensitive(t0, "\xef\xbf\xbd\xef\xbf\xbd")->valuedouble == -1.25);
    CHECK(cJSON_GetArraySize(t1) == 1 && cJSON_GetObjectItemCaseSensitive(t1, "a\xef\xbf\xbd" "b") != NULL);
    /* offsets in characters from text_offset: the first token starts a character (one) */
    CHECK(cJSON_GetArrayItem(offs, 0)->valueint == 7 && cJSON_GetArrayItem(offs, 1)->valueint == 8);
    cJSON_Delete(o);
    free(s);
    /* an echoed prompt's first token: logprob and top null */
    lorac_oai_logprob_t echoed[2] = {{.token = {"<s>", 3, NAN}, .n_top = -1}, items[0]};
    lorac_oai_logprobs_t le = {.tokens = echoed, .n = 2, .text_offset = 0};
    ch.logprobs = &le;
    s = lorac_oai_response_json(&m, &ch, 1, &(lorac_oai_usage_t){1, 2, 0});
    o = parse_json(s);
    l = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "choices"), 0), "logprobs");
    CHECK(cJSON_IsNull(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(l, "token_logprobs"), 0)) &&
          cJSON_IsNull(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(l, "top_logprobs"), 0)) &&
          cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(l, "text_offset"), 1)->valueint == 3);
    cJSON_Delete(o);
    free(s);
    ch.logprobs = &lp;

    m.kind = LORAC_OAI_CHAT;
    s = lorac_oai_response_json(&m, &ch, 1, &(lorac_oai_usage_t){1, 2, 0});
    o = parse_json(s);
    l = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "choices"), 0), "logprobs");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(l, "content"), *e0 = cJSON_GetArrayItem(content, 0);
    CHECK(cJSON_GetArraySize(content) == 2 && !strcmp(str_at(e0, "token"), "\xef\xbf\xbd\xef\xbf\xbd"));
    const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(e0, "bytes");
    CHECK(cJSON_GetArraySize(bytes) == 2 && cJSON_GetArrayItem(bytes, 0)->valueint == 0xe2 &&
          cJSON_GetArrayItem(bytes, 1)->valueint == 0x82);
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(e0, "top_logprobs");
    CHECK(cJSON_GetArraySize(ct) == 3 && !strcmp(str_at(cJSON_GetArrayItem(ct, 2), "token"), " the") &&
          cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(ct, 2), "logprob")->valuedouble == -2.0);
    const cJSON *e1 = cJSON_GetArrayItem(content, 1);
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(e1, "bytes")) == 3 &&
          cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(e1, "top_logprobs")) == 0);
    cJSON_Delete(o);
    free(s);
    /* a stream chunk carries its tokens' */
    s = lorac_oai_stream_chunk(&m, 0, "x", 1, NULL, false, false, &lp);
    o = parse_json(s ? s + 6 : NULL);
    l = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "choices"), 0), "logprobs");
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(l, "content")) == 2);
    cJSON_Delete(o);
    free(s);
}

/* /tokenize, /detokenize bodies and answers (vLLM's shapes). */
static void test_tokenize(void) {
    lorac_oai_tokenize_request_t t;
    lorac_oai_error_t e;
    CHECK(lorac_oai_tokenize_parse(false, "{\"model\": \"m\", \"prompt\": \"hi there\"}", 36, &t, &e) == LORAC_STATUS_OK);
    CHECK(!strcmp(t.model, "m") && !strcmp(t.prompt, "hi there") && t.prompt_len == 8 && t.add_special_tokens);
    lorac_oai_tokenize_request_free(&t);
    const char *b = "{\"prompt\": \"x\", \"add_special_tokens\": false}";
    CHECK(lorac_oai_tokenize_parse(false, b, strlen(b), &t, &e) == LORAC_STATUS_OK && !t.add_special_tokens && !t.model);
    lorac_oai_tokenize_request_free(&t);
    b = "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"add_generation_prompt\": false}";
    CHECK(lorac_oai_tokenize_parse(false, b, strlen(b), &t, &e) == LORAC_STATUS_OK && t.n_messages == 1 &&
          !strcmp(t.messages[0].content, "a") && !t.add_generation_prompt && !t.prompt);
    lorac_oai_tokenize_request_free(&t);
    b = "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"chat_template_kwargs\": {\"enable_thinking\": false}}";
    CHECK(lorac_oai_tokenize_parse(false, b, strlen(b), &t, &e) == LORAC_STATUS_OK && t.enable_thinking == 0);
    lorac_oai_tokenize_request_free(&t);
    b = "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}], \"chat_template_kwargs\": {\"enable_thinking\": 0}}";
    CHECK(lorac_oai_tokenize_parse(false, b, strlen(b), &t, &e) == LORAC_STATUS_INVALID_ARG && e.http_status == 400 &&
          !strcmp(e.param, "chat_template_kwargs"));
    b = "{\"tokens\": [1, 0, 42]}";
    CHECK(lorac_oai_tokenize_parse(true, b, strlen(b), &t, &e) == LORAC_STATUS_OK && t.n_tokens == 3 && t.tokens[2] == 42);
    lorac_oai_tokenize_request_free(&t);
    b = "{\"tokens\": []}";
    CHECK(lorac_oai_tokenize_parse(true, b, strlen(b), &t, &e) == LORAC_STATUS_OK && t.n_tokens == 0);
    lorac_oai_tokenize_request_free(&t);
    const char *bad[][3] = {
        {"0", "{}", "prompt"}, {"0", "{\"prompt\": 5}", "prompt"}, {"0", "{\"prompt\": \"a\", \"messages\": []}", "messages"},
        {"0", "{\"messages\": [{\"role\": \"x\", \"content\": \"a\"}]}", "messages"},
        {"0", "{\"prompt\": \"a\", \"add_special_tokens\": 1}", "add_special_tokens"},
        {"0", "{\"model\": 3, \"prompt\": \"a\"}", "model"}, {"0", "[1]", ""}, {"0", "", ""},
        {"1", "{\"tokens\": [1.5]}", "tokens"}, {"1", "{\"tokens\": [-1]}", "tokens"}, {"1", "{\"tokens\": 3}", "tokens"},
        {"1", "{}", "tokens"}, {"1", "{\"tokens\": [\"1\"]}", "tokens"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        lorac_status_t st = lorac_oai_tokenize_parse(bad[i][0][0] == '1', bad[i][1], strlen(bad[i][1]), &t, &e);
        CHECK_MSG(st == LORAC_STATUS_INVALID_ARG && e.http_status == 400 && !strcmp(e.param, bad[i][2]) && !t.tokens &&
                  !t.prompt && !t.messages, "%s: status %d param '%s'", bad[i][1], st, e.param);
    }
    static const int32_t ids[3] = {1, 22, 333};
    char *s = lorac_oai_tokenize_json(ids, 3, 2048);
    cJSON *o = parse_json(s);
    CHECK(cJSON_GetObjectItemCaseSensitive(o, "count")->valueint == 3 &&
          cJSON_GetObjectItemCaseSensitive(o, "max_model_len")->valueint == 2048 &&
          cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "tokens"), 2)->valueint == 333 &&
          cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "token_strs")));
    cJSON_Delete(o);
    free(s);
    s = lorac_oai_detokenize_json("a\"b\xff", 4);
    o = parse_json(s);
    CHECK(!strcmp(str_at(o, "prompt"), "a\"b\xef\xbf\xbd"));
    cJSON_Delete(o);
    free(s);
    s = lorac_oai_tokenizer_info_json("<s>", NULL, 512);
    o = parse_json(s);
    CHECK(!strcmp(str_at(o, "bos_token"), "<s>") && cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "eos_token")) &&
          cJSON_GetObjectItemCaseSensitive(o, "model_max_length")->valueint == 512);
    cJSON_Delete(o);
    free(s);
}

static void test_responses(void) {
    lorac_oai_meta_t m = {.kind = LORAC_OAI_COMPLETION, .id = "cmpl-1", .created = 1700000000, .model = "base"};
    lorac_oai_choice_t ch[2] = {{.text = "hi\xe2\x82", .text_len = 5, .finish_reason = "length"},
                                {.text = "", .text_len = 0, .finish_reason = "stop"}};
    char *s = lorac_oai_response_json(&m, ch, 2, &(lorac_oai_usage_t){7, 9, 5});
    cJSON *o = parse_json(s);
    CHECK(!strcmp(str_at(o, "id"), "cmpl-1") && !strcmp(str_at(o, "object"), "text_completion"));
    CHECK(cJSON_GetObjectItemCaseSensitive(o, "created")->valuedouble == 1700000000 && !strcmp(str_at(o, "model"), "base"));
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(o, "choices");
    CHECK(cJSON_GetArraySize(choices) == 2);
    const cJSON *c0 = cJSON_GetArrayItem(choices, 0), *c1 = cJSON_GetArrayItem(choices, 1);
    CHECK(!strcmp(str_at(c0, "text"), "hi\xef\xbf\xbd\xef\xbf\xbd") && !strcmp(str_at(c0, "finish_reason"), "length"));
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(c0, "logprobs")));
    CHECK(cJSON_GetObjectItemCaseSensitive(c1, "index")->valueint == 1 && !strcmp(str_at(c1, "finish_reason"), "stop"));
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(o, "usage");
    CHECK(cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens")->valueint == 7 &&
          cJSON_GetObjectItemCaseSensitive(u, "completion_tokens")->valueint == 9 &&
          cJSON_GetObjectItemCaseSensitive(u, "total_tokens")->valueint == 16 &&
          cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens_details"),
                                           "cached_tokens")->valueint == 5);
    cJSON_Delete(o);
    free(s);

    m.kind = LORAC_OAI_CHAT;
    m.id = "chatcmpl-2";
    s = lorac_oai_response_json(&m, ch, 1, &(lorac_oai_usage_t){1, 2, 0});
    o = parse_json(s);
    CHECK(!strcmp(str_at(o, "object"), "chat.completion"));
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "choices"), 0),
                                                        "message");
    CHECK(!strcmp(str_at(msg, "role"), "assistant") && !strncmp(str_at(msg, "content"), "hi", 2));
    cJSON_Delete(o);
    free(s);

    /* SSE chunks: "data: {json}\n\n" */
    struct { bool role; const char *text; const char *finish; bool usage; } cases[] = {
        {true, NULL, NULL, true}, {false, "ab", NULL, false}, {false, "", "stop", true}};
    for (int k = 0; k < 2; k++) {
        m.kind = k ? LORAC_OAI_CHAT : LORAC_OAI_COMPLETION;
        for (int i = 0; i < 3; i++) {
            if (cases[i].role && !k) continue;
            s = lorac_oai_stream_chunk(&m, 3, cases[i].text, cases[i].text ? strlen(cases[i].text) : 0, cases[i].finish,
                                       cases[i].role, cases[i].usage, NULL);
            CHECK(s && !strncmp(s, "data: ", 6) && strlen(s) > 8 && !strcmp(s + strlen(s) - 2, "\n\n"));
            o = parse_json(s ? s + 6 : NULL);
            CHECK(!strcmp(str_at(o, "object"), k ? "chat.completion.chunk" : "text_completion"));
            const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "choices"), 0);
            CHECK(cJSON_GetObjectItemCaseSensitive(c, "index")->valueint == 3);
            const cJSON *fr = cJSON_GetObjectItemCaseSensitive(c, "finish_reason");
            CHECK(cases[i].finish ? cJSON_IsString(fr) && !strcmp(fr->valuestring, cases[i].finish) : cJSON_IsNull(fr));
            CHECK((cJSON_GetObjectItemCaseSensitive(o, "usage") != NULL) == cases[i].usage);
            if (k) {
                const cJSON *d = cJSON_GetObjectItemCaseSensitive(c, "delta");
                CHECK(cJSON_IsObject(d));
                if (cases[i].role) CHECK(!strcmp(str_at(d, "role"), "assistant"));
                else if (cases[i].finish) CHECK(d->child == NULL);
                else CHECK(!strcmp(str_at(d, "content"), "ab"));
            } else {
                CHECK(!strcmp(str_at(c, "text"), cases[i].text));
            }
            cJSON_Delete(o);
            free(s);
        }
    }
    s = lorac_oai_stream_usage_chunk(&m, &(lorac_oai_usage_t){4, 6, 3});
    o = parse_json(s ? s + 6 : NULL);
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "choices")) == 0);
    const cJSON *su = cJSON_GetObjectItemCaseSensitive(o, "usage");
    CHECK(cJSON_GetObjectItemCaseSensitive(su, "total_tokens")->valueint == 10 &&
          cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(su, "prompt_tokens_details"),
                                           "cached_tokens")->valueint == 3);
    cJSON_Delete(o);
    free(s);
    CHECK(!strcmp(lorac_oai_stream_done, "data: [DONE]\n\n"));

    const char *adapters[2] = {"sql", "poet"};
    s = lorac_oai_models_json("base", 5, adapters, 2);
    o = parse_json(s);
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(o, "data");
    CHECK(!strcmp(str_at(o, "object"), "list") && cJSON_GetArraySize(data) == 3);
    CHECK(!strcmp(str_at(cJSON_GetArrayItem(data, 0), "id"), "base") &&
          cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(data, 0), "parent")));
    CHECK(!strcmp(str_at(cJSON_GetArrayItem(data, 2), "id"), "poet") &&
          !strcmp(str_at(cJSON_GetArrayItem(data, 2), "parent"), "base") &&
          !strcmp(str_at(cJSON_GetArrayItem(data, 2), "object"), "model"));
    cJSON_Delete(o);
    free(s);
}

static void test_lora_requests(void) {
    char *name, *path;
    lorac_oai_error_t e;
    const char *b = "{\"lora_name\": \"sql\", \"lora_path\": \"/x/sql\"}";
    CHECK(lorac_oai_lora_request_parse(b, strlen(b), true, &name, &path, &e) == 0 && !strcmp(name, "sql") &&
          !strcmp(path, "/x/sql"));
    free(name);
    free(path);
    CHECK(lorac_oai_lora_request_parse(b, strlen(b), false, &name, &path, &e) == 0 && !path);
    free(name);
    const char *bad[] = {"", "{}", "[]", "{\"lora_name\": \"\"}", "{\"lora_name\": 5}", "{\"lora_name\": \"a\", \"lora_path\": 1}",
                         "{\"lora_name\": \"a\xff\"}", "nope"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK_MSG(lorac_oai_lora_request_parse(bad[i], strlen(bad[i]), true, &name, &path, &e) != 0 && e.http_status == 400 &&
                  !name && !path, "%s", bad[i]);
    }
}

static void test_metrics(void) {
    lorac_engine_metrics_t m = {0};
    m.requests_total = 5;
    m.requests_finished[LORAC_FINISH_STOP] = 3;
    m.requests_finished[LORAC_FINISH_CANCELLED] = 1;
    m.latency_counts[0] = 2;
    m.latency_counts[3] = 1;
    m.latency_counts[LORAC_SERVE_LATENCY_BUCKETS - 1] = 1;
    m.latency_sum_s = 200.5;
    m.waiting = 4;
    char *s = lorac_http_metrics_text(&m);
    CHECK(s != NULL);
    if (!s) return;
    CHECK(strstr(s, "\nlorac_requests_total 5\n") && strstr(s, "lorac_requests_finished_total{reason=\"stop\"} 3\n"));
    CHECK(strstr(s, "lorac_requests_finished_total{reason=\"cancelled\"} 1\n") && strstr(s, "\nlorac_queue_depth 4\n"));
    CHECK(strstr(s, "lorac_request_latency_seconds_bucket{le=\"0.05\"} 2\n"));
    CHECK(strstr(s, "lorac_request_latency_seconds_bucket{le=\"0.25\"} 2\n"));
    CHECK(strstr(s, "lorac_request_latency_seconds_bucket{le=\"0.5\"} 3\n"));  /* cumulative */
    CHECK(strstr(s, "lorac_request_latency_seconds_bucket{le=\"120\"} 3\n"));
    CHECK(strstr(s, "lorac_request_latency_seconds_bucket{le=\"+Inf\"} 4\n"));
    CHECK(strstr(s, "lorac_request_latency_seconds_count 4\n") && strstr(s, "lorac_request_latency_seconds_sum 200.5\n"));
    CHECK(strstr(s, "# TYPE lorac_request_latency_seconds histogram\n") && strstr(s, "# TYPE lorac_running gauge\n"));
    const char *names[] = {"lorac_requests_rejected_total", "lorac_prompt_tokens_total", "lorac_completion_tokens_total",
                           "lorac_batch_size", "lorac_adapters_loaded"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) CHECK_MSG(strstr(s, names[i]) != NULL, "%s", names[i]);
    free(s);
}

static void test_chat_prompts(void) {
    lorac_chat_message_t msgs[2] = {{"system", "Be brief."}, {"user", "Hi"}};
    struct { const char *tpl; const char *want; } cases[] = {
        {"chatml", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"},
        {"llama-3", "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"},
        {"zephyr", "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n"},
        {"llama-2", "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *out = NULL;
        size_t len = 0;
        CHECK(lorac_dataset_chat_render_generation(cases[i].tpl, NULL, msgs, 2, NULL, NULL, true, &out, &len) == 0);
        CHECK_MSG(out && !strcmp(out, cases[i].want) && len == strlen(cases[i].want), "%s: '%s'", cases[i].tpl,
                  out ? out : "(null)");
        free(out);
    }
    char *out = NULL;
    /* enable_thinking false: qwen3 closes an empty thinking block, chatml ignores it */
    CHECK(lorac_dataset_chat_render_generation("qwen3", NULL, msgs + 1, 1, NULL, NULL, false, &out, NULL) == 0 &&
          !strcmp(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"));
    free(out);
    CHECK(lorac_dataset_chat_render_generation("chatml", NULL, msgs + 1, 1, NULL, NULL, false, &out, NULL) == 0 &&
          !strcmp(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"));
    free(out);
    int thinking = 1;
    CHECK(lorac_dataset_chat_kwargs_parse("{\"enable_thinking\": false}", 26, &thinking) == 0 && thinking == 0);
    CHECK(lorac_dataset_chat_kwargs_parse("{\"other\": 1}", 12, &thinking) == 0 && thinking == 0);
    CHECK(lorac_dataset_chat_kwargs_parse("{\"enable_thinking\": true}", 25, &thinking) == 0 && thinking == 1);
    CHECK(lorac_dataset_chat_kwargs_parse("{\"enable_thinking\": 1}", 22, &thinking) == LORAC_STATUS_FORMAT &&
          strstr(lorac_error_message(), "true or false"));
    CHECK(lorac_dataset_chat_kwargs_parse("enable_thinking=false", 21, &thinking) == LORAC_STATUS_FORMAT &&
          strstr(lorac_error_message(), "JSON object"));
    CHECK(lorac_dataset_chat_kwargs_parse("{\"enable_thinking\": fal", 23, &thinking) == LORAC_STATUS_FORMAT);
    CHECK(lorac_dataset_chat_render_generation("nope", NULL, msgs, 2, NULL, NULL, true, &out, NULL) == LORAC_STATUS_INVALID_ARG);
    lorac_chat_message_t bad[1] = {{"wizard", "x"}};
    CHECK(lorac_dataset_chat_render_generation("chatml", NULL, bad, 1, NULL, NULL, true, &out, NULL) == LORAC_STATUS_FORMAT && !out);

    /* BOS/EOS strings and specials against real tokenizers */
    char path[2048], cfg[2048];
    snprintf(path, sizeof path, "%s/tokenizers/smollm2-360m-instruct-ft/tokenizer.json", tl_fixtures());
    snprintf(cfg, sizeof cfg, "%s/tokenizers/smollm2-360m-instruct-ft/tokenizer_config.json", tl_fixtures());
    lorac_tokenizer_t *sm = NULL, *tl = NULL;
    CHECK(lorac_tokenizer_load_json(path, &sm) == 0);
    char *bos = NULL, *eos = NULL;
    CHECK(sm && lorac_dataset_chat_tokens("chatml", sm, cfg, &bos, &eos) == 0 && !strcmp(eos, "<|im_end|>"));
    free(bos);
    free(eos);
    const char *name = NULL;
    char *sys = NULL;
    CHECK(lorac_dataset_chat_template_from_config(cfg, &name, &sys) == 0 && !strcmp(name, "chatml") && sys);
    CHECK(lorac_dataset_chat_render_generation(name, sys, msgs + 1, 1, NULL, NULL, true, &out, NULL) == 0 &&
          !strcmp(out, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                       "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"));
    free(out);
    free(sys);
    snprintf(path, sizeof path, "%s/tokenizers/tinyllama-1.1b-chat-v1.0/tokenizer.json", tl_fixtures());
    snprintf(cfg, sizeof cfg, "%s/tokenizers/tinyllama-1.1b-chat-v1.0/tokenizer_config.json", tl_fixtures());
    CHECK(lorac_tokenizer_load_json(path, &tl) == 0);
    CHECK(tl && lorac_dataset_chat_tokens("zephyr", tl, cfg, &bos, &eos) == 0 && !strcmp(bos, "<s>") && !strcmp(eos, "</s>"));
    free(bos);
    free(eos);
    /* TinyLlama's tokenizer has no <|im_start|> token: chatml is refused, naming it */
    CHECK(tl && lorac_dataset_chat_tokens("chatml", tl, NULL, &bos, &eos) == LORAC_STATUS_UNSUPPORTED && !bos && !eos &&
          strstr(lorac_error_message(), "<|im_start|>"));
    lorac_tokenizer_free(sm);
    lorac_tokenizer_free(tl);
}

int main(void) {
    test_parse_good();
    test_parse_bad();
    test_check_prompt();
    test_errors();
    test_json_string();
    test_responses();
    test_logprobs_parse();
    test_logprobs_json();
    test_tokenize();
    test_lora_requests();
    test_metrics();
    test_chat_prompts();
    return tl_finish("test_openai_protocol");
}
