/* lorac tokenize: token ids of a text, or text of ids (--decode). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "lorac/tokenizer.h"

static const char *k_usage =
    "usage: lorac tokenize -m MODEL_DIR_OR_TOKENIZER_JSON (-p TEXT | -f FILE) [--no-special]\n"
    "       lorac tokenize -m MODEL_DIR_OR_TOKENIZER_JSON --decode \"IDS\" [--skip-special]\n"
    "  Prints the ids space-separated on one line; --no-special leaves out the\n"
    "  post-processor's tokens (e.g. BOS). --decode prints the text of the ids.\n";

int cmd_tokenize(int argc, char **argv) {
    const char *path = NULL, *prompt = NULL, *file = NULL, *decode = NULL;
    int special = 1, skip_special = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { fputs(k_usage, stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) path = cli_value(argc, argv, &i, "tokenize");
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) prompt = cli_value(argc, argv, &i, "tokenize");
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) file = cli_value(argc, argv, &i, "tokenize");
        else if (!strcmp(a, "--decode")) decode = cli_value(argc, argv, &i, "tokenize");
        else if (!strcmp(a, "--no-special")) special = 0;
        else if (!strcmp(a, "--skip-special")) skip_special = 1;
        else cli_usage_error("tokenize", "unknown option '%s'", a);
    }
    if (!path) cli_usage_error("tokenize", "-m is required");
    if ((prompt != NULL) + (file != NULL) + (decode != NULL) != 1)
        cli_usage_error("tokenize", "give exactly one of -p TEXT, -f FILE or --decode IDS");

    struct stat st;
    char *json_path = (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) ? lorac_path_join(path, "tokenizer.json") : strdup(path);
    if (!json_path) cli_die("out of memory");
    lorac_tokenizer_t *tok;
    cli_check(lorac_tokenizer_load_json(json_path, &tok));

    if (decode) {
        int32_t n;
        int32_t *ids = cli_parse_ids("tokenize", decode, &n);
        char *text;
        size_t len;
        cli_check(lorac_tokenizer_decode(tok, ids, (size_t)n, skip_special, &text, &len));
        fwrite(text, 1, len, stdout);
        fputc('\n', stdout);
        free(text);
        free(ids);
    } else {
        char *file_text = NULL;
        size_t len;
        if (file) { file_text = cli_read_file(file, &len); prompt = file_text; }
        else len = strlen(prompt);
        int32_t *ids;
        size_t n;
        cli_check(lorac_tokenizer_encode(tok, prompt, len, special, &ids, &n));
        for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        fputc('\n', stdout);
        free(ids);
        free(file_text);
    }
    lorac_tokenizer_free(tok);
    free(json_path);
    return 0;
}
