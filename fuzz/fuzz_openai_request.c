/* libFuzzer target: OpenAI request bodies through the parser and validator
 * (lorac/openai.h), then whatever parsed through the prompt checks, the chat
 * templates with their generation prompt, and the response builders, with
 * the input's own bytes as "generated" text and as log-probabilities' token
 * texts (any bytes: invalid UTF-8, NUL).
 * The first byte picks the endpoint: completions, chat, or the LoRA admin
 * and /tokenize, /detokenize bodies. Every body built must be valid UTF-8. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lorac/openai.h"

static void check_utf8(char *s) {
    if (s && !lorac_utf8_valid(s, strlen(s))) abort();
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int which = data[0] % 3;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    lorac_oai_error_t err;
    if (which == 2) {
        char *name, *path;
        if (lorac_oai_lora_request_parse(body, len, data[0] & 4, &name, &path, &err) == LORAC_STATUS_OK) {
            free(name);
            free(path);
        } else {
            check_utf8(lorac_oai_error_json(&err));
        }
        /* and as /tokenize or /detokenize bodies */
        lorac_oai_tokenize_request_t t;
        if (lorac_oai_tokenize_parse(data[0] & 8, body, len, &t, &err) == LORAC_STATUS_OK) {
            check_utf8(lorac_oai_tokenize_json(t.tokens, t.n_tokens, 512));
            if (t.prompt) check_utf8(lorac_oai_detokenize_json(t.prompt, t.prompt_len));
            lorac_oai_tokenize_request_free(&t);
        } else {
            check_utf8(lorac_oai_error_json(&err));
        }
        char *z = strndup(body, len); /* a C string: up to the first NUL */
        check_utf8(lorac_oai_tokenizer_info_json(len ? z : NULL, NULL, 7));
        free(z);
        return 0;
    }
    lorac_oai_kind_t kind = which ? LORAC_OAI_CHAT : LORAC_OAI_COMPLETION;
    lorac_oai_request_t req;
    if (lorac_oai_request_parse(kind, body, len, &req, &err)) {
        check_utf8(lorac_oai_error_json(&err));
        return 0;
    }
    static const int32_t ids[4] = {1, 2, 300, 5};
    if (req.n_prompts && req.prompts[0].ids)
        lorac_oai_request_check_prompt(&req, req.prompts[0].ids, req.prompts[0].n_ids, 512, 256, &err);
    else lorac_oai_request_check_prompt(&req, ids, 4, 512, 256, &err);
    if (kind == LORAC_OAI_CHAT) {
        static const char *const templates[] = {"chatml", "llama-2", "llama-3", "llama-3.1", "zephyr", "qwen3"};
        char *out = NULL;
        if (lorac_dataset_chat_render_generation(templates[data[0] % 6], NULL, req.messages, req.n_messages, NULL,
                                                 NULL, req.enable_thinking != 0, &out, NULL) == LORAC_STATUS_OK)
            check_utf8(out);
    }
    lorac_oai_meta_t m = {.kind = kind, .id = "cmpl-fuzz", .created = 1, .model = req.model};
    /* log-probabilities whose token texts are pieces of the input: any
     * bytes (NUL, broken UTF-8) as texts and as completions' object keys */
    lorac_oai_token_logprob_t top[3];
    lorac_oai_logprob_t items[2];
    for (int i = 0; i < 3; i++)
        top[i] = (lorac_oai_token_logprob_t){.text = body + (len * (size_t)i) / 3, .len = len / 3,
                                            .logprob = i == 2 ? -INFINITY : -(float)i};
    items[0] = (lorac_oai_logprob_t){.token = top[1], .top = top, .n_top = 3};
    items[1] = (lorac_oai_logprob_t){.token = top[2], .top = top, .n_top = 0};
    lorac_oai_logprob_t echoed[3] = {{.token = {body, len / 2, NAN}, .n_top = -1}, items[0], items[1]};
    lorac_oai_logprobs_t lp = {.tokens = data[0] & 8 ? echoed : items, .n = data[0] & 8 ? 3 : 2, .text_offset = 5};
    lorac_oai_choice_t c = {.text = body, .text_len = len, .finish_reason = "stop", .logprobs = &lp};
    check_utf8(lorac_oai_response_json(&m, &c, 1, &(lorac_oai_usage_t){3, 4, 1}));
    check_utf8(lorac_oai_stream_chunk(&m, 0, body, len, NULL, false, req.include_usage, &lp));
    check_utf8(lorac_oai_stream_chunk(&m, 0, NULL, 0, "length", kind == LORAC_OAI_CHAT, false, NULL));
    const char *const names[1] = {req.model};
    check_utf8(lorac_oai_models_json("base", 1, names, 1));
    lorac_oai_request_free(&req);
    return 0;
}
