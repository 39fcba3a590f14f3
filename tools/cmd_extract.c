/* lorac extract: the LoRA adapter closest to a fine-tune (randomized SVD of
 * W_tuned − W_base per projection), written in PEFT's format, with the
 * share of ||ΔW||² each module kept. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "lorac/extract.h"
#include "lorac/lora.h"
#include "lorac/model.h"

static const char *k_usage =
    "usage: lorac extract --base MODEL --tuned MODEL --r R -o ADAPTER_DIR [--targets q_proj,v_proj|all-linear]\n"
    "                     [--layers 0-3,7] [--alpha A] [--power-iters 2] [--oversample 10] [--seed 42] [--json]\n"
    "  Writes the rank-R LoRA adapter whose s*B*A best approximates W_tuned - W_base on each selected\n"
    "  projection (default: all seven, every layer), as a PEFT adapter for the base model. The models must\n"
    "  have the same shape; their dtypes may differ. lora_alpha is R (scale 1) unless --alpha.\n"
    "  Prints, per module kind, the share of ||dW||_F^2 the rank-R adapter keeps (its energy);\n"
    "  --json prints the report as JSON, with every module.\n";

static void show_progress(void *user, int32_t done, int32_t total) {
    (void)user;
    fprintf(stderr, "\rextract: %d/%d modules", done, total);
    if (done == total) fputc('\n', stderr);
    fflush(stderr);
}

/* Energy summary of one module kind (or all, kind < 0). */
typedef struct {
    int32_t count;
    double min, sum, kept2, norm2;
} energy_t;

static energy_t summarize(const lorac_extract_stat_t *st, int32_t n, int kind) {
    energy_t e = {0, 1.0, 0, 0, 0};
    for (int32_t i = 0; i < n; i++) {
        if (kind >= 0 && (int)st[i].target != kind) continue;
        e.count++;
        e.min = fmin(e.min, st[i].energy);
        e.sum += st[i].energy;
        e.kept2 += st[i].kept2;
        e.norm2 += st[i].delta_norm2;
    }
    return e;
}

static double weighted(const energy_t *e) { return e->norm2 > 0 ? fmin(1.0, e->kept2 / e->norm2) : 1.0; }

static void add_energy(cJSON *o, const energy_t *e) {
    cJSON_AddNumberToObject(o, "modules", e->count);
    cJSON_AddNumberToObject(o, "energy_min", e->min);
    cJSON_AddNumberToObject(o, "energy_mean", e->count ? e->sum / e->count : 1.0);
    cJSON_AddNumberToObject(o, "energy_of_total", weighted(e));
}

/* c: the base's config, which names the modules (Phi-3's fused qkv_proj) */
static void print_json(const lorac_model_config_t *c, const char *base, const char *tuned, const char *out,
                       const lorac_extract_params_t *p, float alpha, const lorac_extract_stat_t *st, int32_t n,
                       double seconds) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "base", base);
    cJSON_AddStringToObject(root, "tuned", tuned);
    cJSON_AddStringToObject(root, "output", out);
    cJSON_AddNumberToObject(root, "r", p->r);
    cJSON_AddNumberToObject(root, "lora_alpha", alpha);
    cJSON_AddNumberToObject(root, "oversample", p->oversample);
    cJSON_AddNumberToObject(root, "power_iters", p->power_iters);
    cJSON_AddNumberToObject(root, "seed", (double)p->seed);
    cJSON_AddNumberToObject(root, "seconds", seconds);
    cJSON *mods = cJSON_AddArrayToObject(root, "modules");
    for (int32_t i = 0; i < n; i++) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddNumberToObject(m, "layer", st[i].layer);
        cJSON_AddStringToObject(m, "module", lorac_lora_module_name(c, st[i].target));
        cJSON_AddNumberToObject(m, "energy", st[i].energy);
        cJSON_AddNumberToObject(m, "delta_norm2", st[i].delta_norm2);
        cJSON_AddNumberToObject(m, "kept_norm2", st[i].kept2);
        cJSON_AddNumberToObject(m, "max_sigma", st[i].max_sigma);
        cJSON_AddNumberToObject(m, "seconds", st[i].seconds);
        cJSON_AddItemToArray(mods, m);
    }
    cJSON *kinds = cJSON_AddObjectToObject(root, "kinds");
    for (int t = 0; t < LORAC_LORA_COUNT; t++) {
        energy_t e = summarize(st, n, t);
        if (e.count) add_energy(cJSON_AddObjectToObject(kinds, lorac_lora_module_name(c, (lorac_lora_target_t)t)), &e);
    }
    energy_t all = summarize(st, n, -1);
    add_energy(cJSON_AddObjectToObject(root, "total"), &all);
    char *text = cJSON_Print(root);
    puts(text);
    free(text);
    cJSON_Delete(root);
}

static void print_text(const lorac_model_config_t *c, const char *out, const lorac_extract_params_t *p, float alpha,
                       const lorac_extract_stat_t *st, int32_t n, double seconds) {
    printf("extracted a rank-%d adapter (lora_alpha %g) into %s: %d modules, oversample %d, %d power iterations, seed %llu\n",
           p->r, (double)alpha, out, n, p->oversample, p->power_iters, (unsigned long long)p->seed);
    printf("  module        layers   energy min  energy mean  of ||dW||^2\n");
    for (int t = 0; t <= LORAC_LORA_COUNT; t++) {
        energy_t e = summarize(st, n, t < LORAC_LORA_COUNT ? t : -1);
        if (!e.count) continue;
        printf("  %-12s %7d   %9.4f%%  %10.4f%%  %10.4f%%\n", t < LORAC_LORA_COUNT ? lorac_lora_module_name(c, (lorac_lora_target_t)t) : "all",
               e.count, 100 * e.min, 100 * e.sum / e.count, 100 * weighted(&e));
    }
    printf("  (energy: the share of ||W_tuned - W_base||_F^2 the rank-%d adapter keeps)\n", p->r);
    printf("time: %.2f s\n", seconds);
}

int cmd_extract(int argc, char **argv) {
    const char *base_dir = NULL, *tuned_dir = NULL, *out = NULL, *targets = "all-linear", *layers = NULL;
    lorac_extract_params_t p = lorac_extract_default_params();
    int json = 0, have_r = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (cli_is_help(a)) { fputs(k_usage, stdout); return 0; }
        else if (!strcmp(a, "--base")) base_dir = cli_value(argc, argv, &i, "extract");
        else if (!strcmp(a, "--tuned")) tuned_dir = cli_value(argc, argv, &i, "extract");
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = cli_value(argc, argv, &i, "extract");
        else if (!strcmp(a, "--r")) { p.r = (int32_t)cli_int("extract", a, cli_value(argc, argv, &i, "extract"), 1, 65536); have_r = 1; }
        else if (!strcmp(a, "--alpha")) p.alpha = (float)cli_float("extract", a, cli_value(argc, argv, &i, "extract"), 1e-6, 1e9);
        else if (!strcmp(a, "--targets")) targets = cli_value(argc, argv, &i, "extract");
        else if (!strcmp(a, "--layers")) layers = cli_value(argc, argv, &i, "extract");
        else if (!strcmp(a, "--power-iters")) p.power_iters = (int32_t)cli_int("extract", a, cli_value(argc, argv, &i, "extract"), 0, 100);
        else if (!strcmp(a, "--oversample")) p.oversample = (int32_t)cli_int("extract", a, cli_value(argc, argv, &i, "extract"), 0, 10000);
        else if (!strcmp(a, "--seed")) p.seed = (uint64_t)cli_int("extract", a, cli_value(argc, argv, &i, "extract"), 0, INT64_MAX);
        else if (!strcmp(a, "--json")) json = 1;
        else cli_usage_error("extract", "unknown option '%s'", a);
    }
    if (!base_dir || !tuned_dir || !out || !have_r) cli_usage_error("extract", "--base, --tuned, --r and -o are required");
    if (lorac_lora_parse_targets(targets, &p.targets)) cli_usage_error("extract", "%s", lorac_error_message());

    double t0 = lorac_seconds();
    lorac_model_t *base, *tuned;
    cli_check(lorac_model_load(base_dir, &base));
    cli_check(lorac_model_load(tuned_dir, &tuned));
    const lorac_model_config_t *c = lorac_model_get_config(base);
    uint8_t *mask = malloc((size_t)c->n_layers);
    if (!mask) cli_die("out of memory");
    if (lorac_lora_parse_layers(layers, c->n_layers, mask)) cli_usage_error("extract", "%s", lorac_error_message());
    p.layers = mask;
    if (isatty(fileno(stderr))) p.progress = show_progress;

    lorac_adapter_t *adapter;
    lorac_extract_stat_t *st;
    cli_check(lorac_extract_adapter(base, tuned, &p, &adapter, &st));
    cli_check(lorac_adapter_save(adapter, out, base_dir));
    double seconds = lorac_seconds() - t0;
    float alpha = p.alpha > 0 ? p.alpha : (float)p.r;
    int32_t n = 0; /* the stats' modules: Phi-3's fused ones once */
    for (int32_t i = 0; i < lorac_adapter_n_modules(adapter); i++) n += !lorac_adapter_module(adapter, i)->in_group;
    if (json) print_json(c, base_dir, tuned_dir, out, &p, alpha, st, n, seconds);
    else print_text(c, out, &p, alpha, st, n, seconds);
    free(st);
    free(mask);
    lorac_adapter_free(adapter);
    lorac_model_free(tuned);
    lorac_model_free(base);
    return 0;
}
