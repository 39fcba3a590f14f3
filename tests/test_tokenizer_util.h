/* Helpers shared by the tokenizer tests: file reading, the llama.cpp test
 * vector format, building a Llama 3 tokenizer.json from encoder.json +
 * vocab.bpe, and a monotonic clock. */
#ifndef LORAC_TEST_TOKENIZER_UTIL_H
#define LORAC_TEST_TOKENIZER_UTIL_H

#include <cjson/cJSON.h>
#include <stdint.h>
#include <time.h>

#include "lorac/tokenizer.h"
#include "testlib.h"

static inline char *tt_read(const char *path, size_t *len) {
    char *data = NULL;
    size_t n = 0;
    if (lorac_file_read(path, (size_t)1 << 30, &data, &n) != LORAC_STATUS_OK) {
        fprintf(stderr, "cannot read %s: %s\n", path, lorac_error_message());
        return NULL;
    }
    if (len) *len = n;
    return data;
}

static inline char *tt_fixture(const char *rel) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", tl_fixtures(), rel);
    return buf;
}

static inline double tt_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline int tt_ids_equal(const int32_t *a, size_t na, const cJSON *b) {
    if ((size_t)cJSON_GetArraySize(b) != na) return 0;
    size_t i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, b) if ((int32_t)it->valuedouble != a[i++]) return 0;
    return 1;
}

static inline void tt_print_ids(const char *what, const int32_t *ids, size_t n) {
    fprintf(stderr, "  %s:", what);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", (int)ids[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

/* The Llama 3 pre-tokenizer regex (fixtures README). */
static const char tt_llama3_regex[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* Builds the tokenizer.json HF would have for Llama 3.2 from the fixture's
 * encoder.json + vocab.bpe: BPE with ignore_merges, Split(regex) +
 * ByteLevel(use_regex=false), the 256 special tokens 128000..128255, BOS
 * template, ByteLevel decoder. Returns a malloc'd JSON string or NULL. */
static inline char *tt_build_llama3_json(void) {
    char *enc = tt_read(tt_fixture("tokenizers/llama3.2/encoder.json"), NULL);
    size_t blen;
    char *bpe = tt_read(tt_fixture("tokenizers/llama3.2/vocab.bpe"), &blen);
    if (!enc || !bpe) { free(enc); free(bpe); return NULL; }
    cJSON *vocab = cJSON_Parse(enc);
    free(enc);
    cJSON *root = cJSON_CreateObject(), *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddNullToObject(model, "unk_token");
    cJSON_AddBoolToObject(model, "ignore_merges", 1);
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON *merges = cJSON_AddArrayToObject(model, "merges");
    for (char *line = bpe, *end; line < bpe + blen; line = end + 1) {
        end = strchr(line, '\n');
        if (!end) end = bpe + blen;
        *end = '\0';
        if (*line && strncmp(line, "#version", 8) != 0) cJSON_AddItemToArray(merges, cJSON_CreateString(line));
    }
    free(bpe);
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    for (int id = 128000, r = 0; id < 128256; id++) {
        char name[64];
        switch (id) {
        case 128000: strcpy(name, "<|begin_of_text|>"); break;
        case 128001: strcpy(name, "<|end_of_text|>"); break;
        case 128004: strcpy(name, "<|finetune_right_pad_id|>"); break;
        case 128006: strcpy(name, "<|start_header_id|>"); break;
        case 128007: strcpy(name, "<|end_header_id|>"); break;
        case 128008: strcpy(name, "<|eom_id|>"); break;
        case 128009: strcpy(name, "<|eot_id|>"); break;
        case 128010: strcpy(name, "<|python_tag|>"); break;
        default: snprintf(name, sizeof name, "<|reserved_special_token_%d|>", r++); break;
        }
        cJSON *t = cJSON_CreateObject();
        cJSON_AddNumberToObject(t, "id", id);
        cJSON_AddStringToObject(t, "content", name);
        cJSON_AddBoolToObject(t, "special", 1);
        cJSON_AddItemToArray(added, t);
    }
    cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer");
    cJSON_AddStringToObject(pre, "type", "Sequence");
    cJSON *pres = cJSON_AddArrayToObject(pre, "pretokenizers");
    cJSON *split = cJSON_CreateObject(), *bl = cJSON_CreateObject();
    cJSON_AddStringToObject(split, "type", "Split");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(split, "pattern"), "Regex", tt_llama3_regex);
    cJSON_AddStringToObject(split, "behavior", "Isolated");
    cJSON_AddBoolToObject(split, "invert", 0);
    cJSON_AddStringToObject(bl, "type", "ByteLevel");
    cJSON_AddBoolToObject(bl, "add_prefix_space", 0);
    cJSON_AddBoolToObject(bl, "use_regex", 0);
    cJSON_AddItemToArray(pres, split);
    cJSON_AddItemToArray(pres, bl);
    cJSON *post = cJSON_Parse("{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<|begin_of_text|>\",\"type_id\":0}},"
                              "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":{\"<|begin_of_text|>\":"
                              "{\"id\":\"<|begin_of_text|>\",\"ids\":[128000],\"tokens\":[\"<|begin_of_text|>\"]}}}");
    cJSON_AddItemToObject(root, "post_processor", post);
    cJSON_AddStringToObject(cJSON_AddObjectToObject(root, "decoder"), "type", "ByteLevel");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

#endif
