/* lorac inspect: architecture, parameter count, dtypes and tensors of a
 * model directory or a single safetensors file. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "lorac/model.h"
#include "lorac/safetensors.h"

static const char *k_usage =
    "usage: lorac inspect PATH [--json]\n"
    "  PATH is a model directory (config.json + safetensors) or a .safetensors file.\n"
    "  Prints the architecture, parameter count, dtypes and the tensor list.\n";

static void shape_text(const lorac_tensor_view_t *t, char *buf, size_t cap) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int32_t d = 0; d < t->n_dims && k < cap; d++)
        k += (size_t)snprintf(buf + k, cap - k, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

int cmd_inspect(int argc, char **argv) {
    const char *path = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) { fputs(k_usage, stdout); return 0; }
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (argv[i][0] == '-') cli_usage_error("inspect", "unknown option '%s'", argv[i]);
        else if (!path) path = argv[i];
        else cli_usage_error("inspect", "only one PATH");
    }
    if (!path) cli_usage_error("inspect", "PATH is required");

    struct stat st;
    if (stat(path, &st) != 0) cli_die("%s: no such file or directory", path);
    int is_dir = S_ISDIR(st.st_mode);
    lorac_model_config_t cfg;
    int have_cfg = 0;
    if (is_dir) {
        char *cfg_path = lorac_path_join(path, "config.json");
        if (!cfg_path) cli_die("out of memory");
        size_t len;
        char *text = cli_read_file(cfg_path, &len);
        cli_check(lorac_model_config_parse(text, len, cfg_path, &cfg));
        have_cfg = 1;
        free(text);
        free(cfg_path);
    }
    lorac_weight_files_t *wf;
    cli_check(lorac_weight_files_open(path, &wf));

    int64_t n = lorac_weight_files_count(wf), n_params = 0, bytes = 0;
    int64_t per_dtype[LORAC_DTYPE_COUNT] = {0};
    for (int64_t i = 0; i < n; i++) {
        const lorac_tensor_view_t *t = lorac_weight_files_get(wf, i);
        n_params += t->n_elements;
        bytes += (int64_t)t->nbytes;
        per_dtype[t->dtype] += t->n_elements;
    }

    if (json) {
        cJSON *root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "path", path);
        if (have_cfg) {
            cJSON_AddStringToObject(root, "architecture", cfg.arch_name);
            cJSON_AddNumberToObject(root, "hidden_size", cfg.hidden_size);
            cJSON_AddNumberToObject(root, "intermediate_size", cfg.intermediate_size);
            cJSON_AddNumberToObject(root, "num_hidden_layers", cfg.n_layers);
            cJSON_AddNumberToObject(root, "num_attention_heads", cfg.n_heads);
            cJSON_AddNumberToObject(root, "num_key_value_heads", cfg.n_kv_heads);
            cJSON_AddNumberToObject(root, "head_dim", cfg.head_dim);
            cJSON_AddNumberToObject(root, "vocab_size", cfg.vocab_size);
            cJSON_AddBoolToObject(root, "tie_word_embeddings", cfg.tie_word_embeddings);
        }
        cJSON_AddNumberToObject(root, "n_params", (double)n_params);
        cJSON_AddNumberToObject(root, "n_bytes", (double)bytes);
        cJSON *dt = cJSON_AddObjectToObject(root, "dtypes");
        for (int d = 0; d < LORAC_DTYPE_COUNT; d++)
            if (per_dtype[d]) cJSON_AddNumberToObject(dt, lorac_dtype_name((lorac_dtype_t)d), (double)per_dtype[d]);
        cJSON *arr = cJSON_AddArrayToObject(root, "tensors");
        for (int64_t i = 0; i < n; i++) {
            const lorac_tensor_view_t *t = lorac_weight_files_get(wf, i);
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "name", t->name);
            cJSON_AddStringToObject(o, "dtype", lorac_dtype_name(t->dtype));
            cJSON *shape = cJSON_AddArrayToObject(o, "shape");
            for (int32_t d = 0; d < t->n_dims; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
            cJSON_AddItemToArray(arr, o);
        }
        char *s = cJSON_Print(root);
        if (!s) cli_die("out of memory");
        puts(s);
        free(s);
        cJSON_Delete(root);
    } else {
        printf("%s\n", path);
        if (have_cfg) {
            printf("  architecture  %s\n", cfg.arch_name);
            printf("  hidden %d, intermediate %d, layers %d, heads %d, kv heads %d, head_dim %d, vocab %d%s\n",
                   cfg.hidden_size, cfg.intermediate_size, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                   cfg.vocab_size, cfg.tie_word_embeddings ? ", tied embeddings" : "");
        }
        printf("  parameters    %lld (%.2f M), %.2f MB\n", (long long)n_params, (double)n_params / 1e6, (double)bytes / 1e6);
        printf("  dtypes       ");
        for (int d = 0; d < LORAC_DTYPE_COUNT; d++)
            if (per_dtype[d]) printf(" %s: %lld", lorac_dtype_name((lorac_dtype_t)d), (long long)per_dtype[d]);
        printf("\n  tensors       %lld\n", (long long)n);
        for (int64_t i = 0; i < n; i++) {
            const lorac_tensor_view_t *t = lorac_weight_files_get(wf, i);
            char shape[160];
            shape_text(t, shape, sizeof shape);
            printf("    %-56s %-5s %s\n", t->name, lorac_dtype_name(t->dtype), shape);
        }
    }
    lorac_weight_files_free(wf);
    return 0;
}
