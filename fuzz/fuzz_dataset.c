/* libFuzzer target: dataset loading (JSONL, JSON arrays, plain text, every
 * format and chat template) with a tiny in-memory byte-level tokenizer, then
 * one epoch of batches. The first input byte picks the options, the rest is
 * the file; a file that starts with "#cols SPEC\n" gives SPEC as the column
 * renames (params.columns) and the rest as the file. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lorac/dataset.h"
#include "lorac/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Byte-level BPE over a few letters, with the special tokens the chat
 * templates need (chatml and qwen3, llama-2 / zephyr, llama-3, the mistral ones, gemma, phi3, phi4). */
static const char k_tokenizer[] =
    "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"H\": 0, \"e\": 1, \"l\": 2, \"o\": 3, \"\\u0120\": 4, \"He\": 5, "
    "\"ll\": 6, \"a\": 7, \"t\": 8, \"x\": 9, \"\\u010a\": 10, \"{\": 11, \"}\": 12}, \"merges\": [\"H e\", \"l l\"]},"
    " \"added_tokens\": ["
    "{\"id\": 13, \"content\": \"<s>\", \"special\": true}, {\"id\": 14, \"content\": \"</s>\", \"special\": true},"
    "{\"id\": 15, \"content\": \"<|im_start|>\", \"special\": true}, {\"id\": 16, \"content\": \"<|im_end|>\", \"special\": true},"
    "{\"id\": 17, \"content\": \"<|begin_of_text|>\", \"special\": true}, {\"id\": 18, \"content\": \"<|start_header_id|>\", \"special\": true},"
    "{\"id\": 19, \"content\": \"<|end_header_id|>\", \"special\": true}, {\"id\": 20, \"content\": \"<|eot_id|>\", \"special\": true},"
    "{\"id\": 21, \"content\": \"[INST]\", \"special\": true}, {\"id\": 22, \"content\": \"[/INST]\", \"special\": true},"
    "{\"id\": 23, \"content\": \"<bos>\", \"special\": true}, {\"id\": 24, \"content\": \"<eos>\", \"special\": true},"
    "{\"id\": 25, \"content\": \"<start_of_turn>\", \"special\": true}, {\"id\": 26, \"content\": \"<end_of_turn>\", \"special\": true},"
    "{\"id\": 27, \"content\": \"<|system|>\", \"special\": true}, {\"id\": 28, \"content\": \"<|user|>\", \"special\": true},"
    "{\"id\": 29, \"content\": \"<|assistant|>\", \"special\": true}, {\"id\": 30, \"content\": \"<|end|>\", \"special\": true},"
    "{\"id\": 31, \"content\": \"<|endoftext|>\", \"special\": true}, {\"id\": 32, \"content\": \"<|im_sep|>\", \"special\": true}],"
    " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true},"
    " \"post_processor\": {\"type\": \"ByteLevel\"}, \"decoder\": {\"type\": \"ByteLevel\"}}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static lorac_tokenizer_t *tok;
    if (!tok && lorac_tokenizer_load_json_memory(k_tokenizer, sizeof k_tokenizer - 1, "fuzz-tokenizer.json", &tok))
        abort(); /* the fixed tokenizer must load */
    if (size < 1) return 0;
    static const char *const templates[] = {"chatml", "llama-2", "llama-3", "llama-3.1", "zephyr", NULL, "bogus", "mistral"};
    /* slot 6 shares its three bits: the input's length picks one of these */
    static const char *const slot6[] = {"bogus", "mistral-v0.1", "mistral-v0.2", "mistral-v1", "mistral-v3",
                                        "qwen3", "gemma",        "gemma3",       "phi3",         "phi4",
                                        "phi4-unsloth", "phi4-mini"};
    uint8_t o = data[0];
    lorac_dataset_params_t p = lorac_dataset_default_params();
    p.format = (lorac_data_format_t)(o % 6);
    p.chat_template = templates[(o >> 3) & 7];
    if (((o >> 3) & 7) == 6) p.chat_template = slot6[size % (sizeof slot6 / sizeof slot6[0])];
    p.seq_len = 1 + (o >> 6) * 5;
    p.skip_bad = (o & 0x20) != 0;
    p.train_on_inputs = (o & 0x40) != 0;
    const char *file = (const char *)data + 1;
    size_t len = size - 1;
    char *cols = NULL;
    const char *nl;
    if (len >= 6 && !memcmp(file, "#cols ", 6) && (nl = memchr(file, '\n', len))) {
        if (!(cols = strndup(file + 6, (size_t)(nl - file - 6)))) abort();
        p.columns = cols;
        len -= (size_t)(nl + 1 - file);
        file = nl + 1;
    }
    lorac_dataset_t *ds = NULL;
    const char *label = (o & 0x80) ? "fuzz.txt" : "fuzz.jsonl";
    lorac_status_t s = lorac_dataset_load_memory(file, len, label, (o & 7) == 7 ? NULL : tok, &p, &ds);
    free(cols); /* the dataset keeps no pointer to it */
    if (s) return 0;
    enum { B = 2 };
    int32_t T = p.seq_len, tk[B * 17], tg[B * 17], ps[B * 17], sg[B * 17];
    lorac_data_cursor_t cur = lorac_data_cursor_init(o, (o & 1) != 0);
    lorac_data_batch_info_t info = {0};
    for (int i = 0; i < 100000 && !info.epoch_end; i++)
        if (lorac_dataset_read_batch(ds, &cur, B, T, (o & 2) != 0, tk, tg, ps, sg, &info)) abort();
    if (lorac_dataset_epoch_batches(ds, &cur, B, T, true) < 1) abort();
    lorac_dataset_free(ds);
    return 0;
}
