/* lorac demo: for now, the foundation's story — convert the real TinyStories
 * stories260K checkpoint (from the fixtures) into a HuggingFace directory and
 * generate from it greedily. The LoRA demo replaces this with training. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

static const char *k_usage =
    "usage: lorac demo [--fixtures DIR] [--out DIR]\n"
    "  Converts the stories260K llama2.c checkpoint from the fixtures\n"
    "  (default $LORAC_FIXTURES or ../shared/fixtures) to a HuggingFace model\n"
    "  directory (default build/demo/stories260K) and generates a story.\n";

int cmd_demo(int argc, char **argv) {
    const char *fixtures = getenv("LORAC_FIXTURES"), *out = "build/demo/stories260K";
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) { fputs(k_usage, stdout); return 0; }
        else if (!strcmp(argv[i], "--fixtures")) fixtures = cli_value(argc, argv, &i, "demo");
        else if (!strcmp(argv[i], "--out")) out = cli_value(argc, argv, &i, "demo");
        else cli_usage_error("demo", "unknown option '%s'", argv[i]);
    }
    if (!fixtures || !*fixtures) fixtures = "../shared/fixtures";
    char ckpt[4096], tok[4096];
    snprintf(ckpt, sizeof ckpt, "%s/llama2c/stories260K.bin", fixtures);
    snprintf(tok, sizeof tok, "%s/llama2c/tok512.bin", fixtures);
    struct stat st;
    if (stat(ckpt, &st) != 0) cli_die("%s not found: set LORAC_FIXTURES or pass --fixtures DIR", ckpt);
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", out);
    for (char *p = parent + 1; *p; p++)
        if (*p == '/') { *p = '\0'; mkdir(parent, 0755); *p = '/'; }

    fprintf(stderr, "== 1. convert the llama2.c checkpoint %s to a HuggingFace directory\n", ckpt);
    char *conv[] = {"convert", "--from", "llama2c", ckpt, "--tokenizer", tok, "-o", (char *)out, NULL};
    int rc = cmd_convert(8, conv);
    if (rc) return rc;
    fprintf(stderr, "== 2. generate greedily from it (260K parameters, trained on TinyStories)\n");
    char *gen[] = {"generate", "-m", (char *)out, "-p", "Once upon a time", "-n", "120", "--temp", "0", NULL};
    return cmd_generate(9, gen);
}
