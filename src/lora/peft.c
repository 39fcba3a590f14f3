/* PEFT adapter files: adapter_config.json + adapter_model.safetensors.
 *
 * Loading does what PEFT does when it puts an adapter on a Llama model
 * (peft/tuners/tuners_utils.py check_target_module_exists,
 * peft/utils/other.py get_pattern_key, LoraModel._create_and_replace):
 *   1. the config selects modules among the model's module names
 *      ("model.layers.3.self_attn.q_proj", ...) and gives each its r and
 *      alpha (rank_pattern / alpha_pattern);
 *   2. the file must hold exactly the lora_A [r, in] and lora_B [out, r] of
 *      those modules; anything else is an error naming the tensor.
 * Regexes (target_modules as a string, exclude_modules, layers_pattern,
 * pattern keys) run through PCRE2, wrapped the way PEFT wraps them for
 * Python's re. Everything the config or the file can say that changes the
 * computation and that lorac does not implement is refused by name. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "lora/lora_internal.h"
#include "lorac/export.h"
#include "lorac/gguf.h"
#include "lorac/kernels.h"
#include "lorac/safetensors.h"

#define ADAPTER_CONFIG_MAX (1u << 20)
#define PEFT_PREFIX "base_model.model."
#define NAME_MAX_LEN 128
/* A module name is under 64 bytes, so a regex that needs more steps than
 * this is pathological (and would hang a fuzzer): an error, not a wait. */
#define REGEX_MATCH_LIMIT 200000u
/* More layers than any model has: a layer index past this in an adapter
 * inspected without its model is an error, not a huge allocation. */
#define MAX_INFERRED_LAYERS 10000

/* ---- module names ------------------------------------------------------- */

static const char *target_block(int t) { return t <= LORAC_LORA_O ? "self_attn" : "mlp"; }

/* The decoder's module path: "model", or a multimodal model's text model
 * ("model.language_model"; "language_model.model" in adapters made under
 * transformers < 4.52). */
static const char *decoder_prefix(const lorac_model_config_t *c) {
    return c->module_prefix[0] ? c->module_prefix : "model";
}

static void module_key(const lorac_adapter_t *a, const lorac_lora_module_t *m, char which, char *buf, size_t cap) {
    char name[NAME_MAX_LEN];
    lorac_lora_module_path(&a->config, m->layer, m->target, name, sizeof name);
    snprintf(buf, cap, PEFT_PREFIX "%s.lora_%c.weight", name, which);
}

/* ---- saving --------------------------------------------------------------- */

/* 1 when the modules are exactly (every adapted layer) x (every adapted
 * target), so target_modules + layers_to_transform describe them. */
static int modules_are_product(const lorac_adapter_t *a) {
    for (int32_t l = 0; l < a->config.n_layers; l++)
        for (int t = 0; t < LORAC_LORA_COUNT; t++)
            if (a->layer_mask[l] && (a->params.targets >> t & 1u) && a->index[l * LORAC_LORA_COUNT + t] < 0) return 0;
    return 1;
}

static void add_targets_and_layers(cJSON *o, const lorac_adapter_t *a) {
    cJSON *targets = cJSON_AddArrayToObject(o, "target_modules");
    if (!modules_are_product(a)) {
        /* exact module names: PEFT selects a module named in the list itself */
        char name[NAME_MAX_LEN];
        for (int32_t i = 0; i < a->n_modules; i++) {
            if (a->modules[i].in_group) continue; /* its group's name is its first module's */
            lorac_lora_module_path(&a->config, a->modules[i].layer, a->modules[i].target, name, sizeof name);
            cJSON_AddItemToArray(targets, cJSON_CreateString(name));
        }
        cJSON_AddNullToObject(o, "layers_to_transform");
        return;
    }
    int all_layers = 1;
    for (int32_t l = 0; l < a->config.n_layers; l++) all_layers &= a->layer_mask[l] != 0;
    if (a->config.text_of_multimodal) {
        /* a list of names would also select the vision tower's q_proj,
         * k_proj and v_proj: a regex (re.fullmatch on the module name) keeps
         * PEFT to the language model, under either naming of its modules;
         * PEFT reads no layers_to_transform beside a regex, so the layers
         * are in it too */
        char re[4096];
        size_t k = (size_t)snprintf(re, sizeof re, ".*language_model.*\\.layers\\.(%s", all_layers ? "\\d+" : "");
        const char *sep = "";
        for (int32_t l = 0; !all_layers && l < a->config.n_layers && k < sizeof re; l++)
            if (a->layer_mask[l]) k += (size_t)snprintf(re + k, sizeof re - k, "%s%d", sep, l), sep = "|";
        if (k < sizeof re) k += (size_t)snprintf(re + k, sizeof re - k, ")\\.(self_attn|mlp)\\.(");
        sep = "";
        for (int t = 0; t < LORAC_LORA_COUNT && k < sizeof re; t++)
            if (a->params.targets >> t & 1u)
                k += (size_t)snprintf(re + k, sizeof re - k, "%s%s", sep, lorac_lora_target_name((lorac_lora_target_t)t)), sep = "|";
        if (k < sizeof re) snprintf(re + k, sizeof re - k, ")");
        cJSON_DeleteItemFromObjectCaseSensitive(o, "target_modules");
        cJSON_AddStringToObject(o, "target_modules", re);
        cJSON_AddNullToObject(o, "layers_to_transform");
        return;
    }
    for (int t = 0; t < LORAC_LORA_COUNT; t++) {
        int size;
        if ((a->params.targets >> t & 1u) && lorac_lora_group(&a->config, t, &size) == t)
            cJSON_AddItemToArray(targets, cJSON_CreateString(lorac_lora_module_name(&a->config, (lorac_lora_target_t)t)));
    }
    if (all_layers) {
        cJSON_AddNullToObject(o, "layers_to_transform");
    } else {
        cJSON *layers = cJSON_AddArrayToObject(o, "layers_to_transform");
        for (int32_t l = 0; l < a->config.n_layers; l++)
            if (a->layer_mask[l]) cJSON_AddItemToArray(layers, cJSON_CreateNumber(l));
    }
}

/* Modules whose r or alpha differ from the adapter's defaults get a
 * rank_pattern / alpha_pattern entry "layers.3.self_attn.q_proj": PEFT
 * matches a key against the end of the module name after a '.', in old
 * (".*\.KEY$") and new ("(.*\.)?(KEY)$") versions alike. */
static void add_patterns(cJSON *o, const lorac_adapter_t *a) {
    const lorac_lora_params_t *p = &a->params;
    cJSON *ranks = cJSON_AddObjectToObject(o, "rank_pattern");
    cJSON *alphas = cJSON_AddObjectToObject(o, "alpha_pattern");
    for (int32_t i = 0; i < a->n_modules; i++) {
        const lorac_lora_module_t *m = &a->modules[i];
        if (m->in_group) continue; /* its group's first module speaks for it */
        char name[NAME_MAX_LEN];
        lorac_lora_module_path(&a->config, m->layer, m->target, name, sizeof name);
        const char *key = name + strlen(decoder_prefix(&a->config)) + 1;
        if (m->r != p->r) cJSON_AddNumberToObject(ranks, key, m->r);
        double alpha = (double)lorac_lora_module_alpha(m, p->rslora);
        if (fabs(alpha - (double)p->alpha) > 1e-5 * fmax(1.0, fabs((double)p->alpha)))
            cJSON_AddNumberToObject(alphas, key, (double)(float)alpha);
    }
}

static char *config_json(const lorac_adapter_t *a, const char *base_model) {
    const lorac_lora_params_t *p = &a->params;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "peft_type", "LORA");
    cJSON_AddStringToObject(o, "task_type", "CAUSAL_LM");
    cJSON_AddStringToObject(o, "base_model_name_or_path", base_model ? base_model : "");
    cJSON_AddNumberToObject(o, "r", p->r);
    cJSON_AddNumberToObject(o, "lora_alpha", p->alpha);
    cJSON_AddNumberToObject(o, "lora_dropout", p->dropout);
    add_targets_and_layers(o, a);
    cJSON_AddBoolToObject(o, "use_rslora", p->rslora);
    cJSON_AddStringToObject(o, "bias", "none");
    /* GPT-2's projections are Conv1D, whose weights PEFT reads as (in, out) */
    cJSON_AddBoolToObject(o, "fan_in_fan_out", a->config.arch == LORAC_ARCH_GPT2);
    cJSON_AddBoolToObject(o, "inference_mode", 1);
    if (p->init == LORAC_LORA_INIT_GAUSSIAN) cJSON_AddStringToObject(o, "init_lora_weights", "gaussian");
    else cJSON_AddBoolToObject(o, "init_lora_weights", 1);
    cJSON_AddNullToObject(o, "layers_pattern");
    add_patterns(o, a);
    cJSON_AddNullToObject(o, "modules_to_save");
    cJSON_AddBoolToObject(o, "use_dora", 0);
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    return text;
}

lorac_status_t lorac_adapter_save(const lorac_adapter_t *a, const char *dir, const char *base_model) {
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return lorac_error(LORAC_STATUS_IO, "%s: cannot create directory: %s", dir, strerror(errno));
    lorac_status_t s = LORAC_STATUS_OK;
    lorac_tensor_write_t *t = calloc((size_t)(2 * a->n_modules + 1), sizeof *t);
    char (*names)[160] = calloc((size_t)(2 * a->n_modules + 1), sizeof *names);
    char *cfg = config_json(a, base_model);
    char *st_path = lorac_path_join(dir, "adapter_model.safetensors");
    char *cfg_path = lorac_path_join(dir, "adapter_config.json");
    if (!t || !names || !cfg || !st_path || !cfg_path) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); goto done; }
    int32_t n_t = 0;
    for (int32_t i = 0; i < a->n_modules; i++) {
        const lorac_lora_module_t *m = &a->modules[i];
        if (m->in_group) continue; /* Phi-3's qkv_proj: one A and the group's B, written with its first module */
        module_key(a, m, 'A', names[n_t], sizeof names[0]);
        module_key(a, m, 'B', names[n_t + 1], sizeof names[0]);
        t[n_t] = (lorac_tensor_write_t){.name = names[n_t], .dtype = LORAC_DTYPE_F32, .n_dims = 2,
                                        .shape = {m->r, m->in}, .data = m->A};
        t[n_t + 1] = (lorac_tensor_write_t){.name = names[n_t + 1], .dtype = LORAC_DTYPE_F32, .n_dims = 2,
                                            .shape = {m->group_out ? m->group_out : m->out, m->r}, .data = m->B};
        n_t += 2;
    }
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    if ((s = lorac_safetensors_write(st_path, t, n_t, mk, mv, 1))) goto done;
    s = lorac_file_write_atomic(cfg_path, cfg, strlen(cfg));
done:
    free(t); free(names); free(cfg); free(st_path); free(cfg_path);
    return s;
}

/* ---- regexes (PCRE2 standing in for Python's re) ---------------------------- */

typedef struct {
    pcre2_code *code;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    const char *pattern; /* the user's part, for messages (owned by the cJSON tree) */
} peft_regex_t;

static void regex_free(peft_regex_t *r) {
    pcre2_match_data_free(r->md);
    pcre2_match_context_free(r->mctx);
    pcre2_code_free(r->code);
    memset(r, 0, sizeof *r);
}

/* Compiles prefix + pattern + suffix, which is how PEFT embeds a user's
 * pattern (e.g. rf"(.*\.)?({key})$"). `anchored` gives re.match, `full`
 * re.fullmatch. */
static lorac_status_t regex_compile(peft_regex_t *r, const char *prefix, const char *pattern, const char *suffix,
                                   int full, const char *label, const char *what) {
    memset(r, 0, sizeof *r);
    r->pattern = pattern;
    size_t n = strlen(prefix) + strlen(pattern) + strlen(suffix) + 1;
    char *text = malloc(n);
    if (!text) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    snprintf(text, n, "%s%s%s", prefix, pattern, suffix);
    int err;
    PCRE2_SIZE erroff;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED | (full ? PCRE2_ENDANCHORED : 0);
    r->code = pcre2_compile((PCRE2_SPTR)text, PCRE2_ZERO_TERMINATED, opts, &err, &erroff, NULL);
    free(text);
    if (!r->code) {
        char msg[256];
        pcre2_get_error_message(err, (PCRE2_UCHAR *)msg, sizeof msg);
        return lorac_error(LORAC_STATUS_FORMAT, "%s: %s \"%.200s\" is not a valid regex: %s", label, what, pattern, msg);
    }
    r->md = pcre2_match_data_create_from_pattern(r->code, NULL);
    r->mctx = pcre2_match_context_create(NULL);
    if (!r->md || !r->mctx) { regex_free(r); return lorac_error(LORAC_STATUS_NOMEM, "out of memory"); }
    pcre2_set_match_limit(r->mctx, REGEX_MATCH_LIMIT);
    pcre2_set_depth_limit(r->mctx, REGEX_MATCH_LIMIT);
    return LORAC_STATUS_OK;
}

/* 1 on a match, 0 on none, -1 with *s set when PCRE2 gives up. When group1
 * is given it receives the last capture group as an integer (-1 if unset). */
static int regex_match(peft_regex_t *r, const char *subject, long *group1, const char *label, lorac_status_t *s) {
    int rc = pcre2_match(r->code, (PCRE2_SPTR)subject, strlen(subject), 0, 0, r->md, r->mctx);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc < 0) {
        char msg[256];
        pcre2_get_error_message(rc, (PCRE2_UCHAR *)msg, sizeof msg);
        *s = lorac_error(LORAC_STATUS_FORMAT, "%s: regex \"%.200s\" failed on \"%s\": %s", label, r->pattern, subject, msg);
        return -1;
    }
    if (group1) {
        /* the integer group is the last one PEFT's wrapper adds, whatever
         * groups the user's part brings */
        uint32_t g = 0;
        pcre2_pattern_info(r->code, PCRE2_INFO_CAPTURECOUNT, &g);
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(r->md);
        *group1 = -1;
        if (g >= 1 && (int)g < rc && ov[2 * g] != PCRE2_UNSET && ov[2 * g + 1] - ov[2 * g] <= 9)
            *group1 = strtol(subject + ov[2 * g], NULL, 10);
    }
    return 1;
}

/* ---- adapter_config.json ---------------------------------------------------- */

typedef enum { TARGETS_FROM_FILE = 0, TARGETS_ALL_LINEAR, TARGETS_REGEX, TARGETS_LIST } targets_kind_t;

typedef struct {
    const char *label;
    cJSON *root;
    lorac_lora_params_t params; /* r, alpha, dropout, rslora: the defaults of every module */
    targets_kind_t targets_kind;
    const cJSON *targets;        /* target_modules: the string or the array */
    const cJSON *exclude;        /* exclude_modules: string, array or NULL */
    const cJSON *layers;         /* layers_to_transform: number, array or NULL */
    const cJSON *layers_pattern; /* string, array or NULL */
    const cJSON *rank_pattern, *alpha_pattern; /* objects or NULL */
} peft_config_t;

/* Present and saying something: not null, false, 0, "" or an empty list/object. */
static int json_set(const cJSON *v) {
    if (!v || cJSON_IsNull(v) || cJSON_IsFalse(v)) return 0;
    if (cJSON_IsArray(v) || cJSON_IsObject(v)) return v->child != NULL;
    if (cJSON_IsString(v)) return v->valuestring[0] != '\0';
    return 1;
}

static int json_is_int(const cJSON *v, double lo, double hi) {
    return cJSON_IsNumber(v) && v->valuedouble >= lo && v->valuedouble <= hi && v->valuedouble == floor(v->valuedouble);
}

/* null, a string, or an array of strings */
static lorac_status_t check_string_or_list(const peft_config_t *pc, const cJSON *v, const char *field) {
    if (!v || cJSON_IsNull(v) || cJSON_IsString(v)) return LORAC_STATUS_OK;
    if (cJSON_IsArray(v)) {
        for (const cJSON *e = v->child; e; e = e->next)
            if (!cJSON_IsString(e)) return lorac_error(LORAC_STATUS_FORMAT, "%s: every entry of \"%s\" must be a string", pc->label, field);
        return LORAC_STATUS_OK;
    }
    return lorac_error(LORAC_STATUS_FORMAT, "%s: \"%s\" must be a string or a list of strings", pc->label, field);
}

/* Settings that change the computation in ways lorac does not implement. */
static lorac_status_t refuse_unsupported(const peft_config_t *pc) {
    const cJSON *o = pc->root, *v;
    static const struct { const char *field, *what; } set_refusals[] = {
        {"use_dora", "DoRA (\"use_dora\": true)"},
        {"modules_to_save", "modules_to_save (fully trained extra modules)"},
        {"lora_bias", "LoRA biases (\"lora_bias\": true)"},
        {"layer_replication", "layer_replication"},
        {"target_parameters", "target_parameters (LoRA on nn.Parameter)"},
        {"trainable_token_indices", "trainable tokens (\"trainable_token_indices\")"},
        {"alora_invocation_tokens", "activated LoRA (\"alora_invocation_tokens\")"},
        {"use_qalora", "QA-LoRA (\"use_qalora\": true)"},
    };
    for (size_t i = 0; i < sizeof set_refusals / sizeof set_refusals[0]; i++)
        if (json_set(cJSON_GetObjectItemCaseSensitive(o, set_refusals[i].field)))
            return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: %s is not supported", pc->label, set_refusals[i].what);
    v = cJSON_GetObjectItemCaseSensitive(o, "peft_type");
    if (v && !cJSON_IsNull(v) && (!cJSON_IsString(v) || strcmp(v->valuestring, "LORA") != 0))
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: peft_type %s is not supported (only \"LORA\")", pc->label,
                           cJSON_IsString(v) ? v->valuestring : "(not a string)");
    v = cJSON_GetObjectItemCaseSensitive(o, "bias");
    if (v && !cJSON_IsNull(v) && (!cJSON_IsString(v) || strcmp(v->valuestring, "none") != 0))
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: bias training (\"bias\": \"%s\") is not supported, only \"none\"", pc->label,
                           cJSON_IsString(v) ? v->valuestring : "(not a string)");
    /* these initialisations subtract the initial B·A from the base weights,
     * so the saved A and B only mean something on that rewritten base */
    v = cJSON_GetObjectItemCaseSensitive(o, "init_lora_weights");
    if (cJSON_IsString(v)) {
        static const char *const rewrites[] = {"pissa", "olora", "corda", "loftq"};
        for (size_t i = 0; i < 4; i++)
            if (strncmp(v->valuestring, rewrites[i], strlen(rewrites[i])) == 0)
                return lorac_error(LORAC_STATUS_UNSUPPORTED,
                                   "%s: init_lora_weights \"%s\" changes the base weights, so the adapter does not apply to "
                                   "the original base; save it converted to plain LoRA "
                                   "(PEFT: save_pretrained(..., path_initial_model_for_weight_conversion=...))",
                                   pc->label, v->valuestring);
    }
    return LORAC_STATUS_OK;
}

static lorac_status_t parse_numbers(peft_config_t *pc) {
    const cJSON *o = pc->root, *v;
    lorac_lora_params_t *p = &pc->params;
    *p = lorac_lora_default_params();
    /* PEFT's LoraConfig defaults for absent fields */
    p->r = 8;
    p->alpha = 8.0f;
    v = cJSON_GetObjectItemCaseSensitive(o, "r");
    if (v && !cJSON_IsNull(v)) {
        if (!json_is_int(v, 1, 65536)) return lorac_error(LORAC_STATUS_FORMAT, "%s: \"r\" must be an integer in 1..65536", pc->label);
        p->r = (int32_t)v->valuedouble;
    }
    v = cJSON_GetObjectItemCaseSensitive(o, "lora_alpha");
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsNumber(v) || !isfinite((float)v->valuedouble))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: \"lora_alpha\" must be a number", pc->label);
        p->alpha = (float)v->valuedouble;
    }
    v = cJSON_GetObjectItemCaseSensitive(o, "lora_dropout");
    if (cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < 1) p->dropout = (float)v->valuedouble;
    v = cJSON_GetObjectItemCaseSensitive(o, "use_rslora");
    if (v && !cJSON_IsNull(v) && !cJSON_IsBool(v))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: \"use_rslora\" must be true or false", pc->label);
    p->rslora = cJSON_IsTrue(v);
    v = cJSON_GetObjectItemCaseSensitive(o, "init_lora_weights");
    if (cJSON_IsString(v) && strcmp(v->valuestring, "gaussian") == 0) p->init = LORAC_LORA_INIT_GAUSSIAN;
    return LORAC_STATUS_OK;
}

static lorac_status_t check_pattern_object(const peft_config_t *pc, const cJSON *v, const char *field, int ranks) {
    if (!v || cJSON_IsNull(v)) return LORAC_STATUS_OK;
    if (!cJSON_IsObject(v)) return lorac_error(LORAC_STATUS_FORMAT, "%s: \"%s\" must be an object", pc->label, field);
    for (const cJSON *e = v->child; e; e = e->next) {
        if (ranks && !json_is_int(e, 1, 65536))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: %s[\"%s\"] must be an integer in 1..65536", pc->label, field, e->string);
        if (!ranks && (!cJSON_IsNumber(e) || !isfinite((float)e->valuedouble)))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: %s[\"%s\"] must be a number", pc->label, field, e->string);
    }
    return LORAC_STATUS_OK;
}

static lorac_status_t parse_selection(peft_config_t *pc) {
    const cJSON *o = pc->root;
    lorac_status_t s;
    pc->targets = cJSON_GetObjectItemCaseSensitive(o, "target_modules");
    if ((s = check_string_or_list(pc, pc->targets, "target_modules"))) return s;
    if (!pc->targets || cJSON_IsNull(pc->targets)) pc->targets_kind = TARGETS_FROM_FILE;
    else if (cJSON_IsArray(pc->targets)) pc->targets_kind = TARGETS_LIST;
    else if (strcasecmp(pc->targets->valuestring, "all-linear") == 0) pc->targets_kind = TARGETS_ALL_LINEAR;
    else pc->targets_kind = TARGETS_REGEX;
    if (pc->targets_kind == TARGETS_LIST && !pc->targets->child)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: \"target_modules\" is an empty list", pc->label);

    pc->exclude = cJSON_GetObjectItemCaseSensitive(o, "exclude_modules");
    if ((s = check_string_or_list(pc, pc->exclude, "exclude_modules"))) return s;
    pc->layers_pattern = cJSON_GetObjectItemCaseSensitive(o, "layers_pattern");
    if ((s = check_string_or_list(pc, pc->layers_pattern, "layers_pattern"))) return s;

    pc->layers = cJSON_GetObjectItemCaseSensitive(o, "layers_to_transform");
    if (pc->layers && cJSON_IsNull(pc->layers)) pc->layers = NULL;
    if (pc->layers) {
        const cJSON *e = cJSON_IsArray(pc->layers) ? pc->layers->child : pc->layers;
        if (!cJSON_IsArray(pc->layers) && !cJSON_IsNumber(pc->layers))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: \"layers_to_transform\" must be an integer or a list of integers", pc->label);
        for (; e; e = cJSON_IsArray(pc->layers) ? e->next : NULL)
            if (!json_is_int(e, 0, 1e6))
                return lorac_error(LORAC_STATUS_FORMAT, "%s: \"layers_to_transform\" entries must be integers >= 0", pc->label);
        if (cJSON_IsArray(pc->layers) && !pc->layers->child) pc->layers = NULL; /* PEFT: [] means every layer */
    }
    /* PEFT's LoraConfig refuses these combinations when it is built */
    if (pc->layers && (pc->targets_kind == TARGETS_REGEX || pc->targets_kind == TARGETS_ALL_LINEAR))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: layers_to_transform cannot be used when target_modules is a string (PEFT refuses it too)", pc->label);
    if (json_set(pc->layers_pattern) && !pc->layers)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: layers_pattern is given without layers_to_transform (PEFT refuses it too)", pc->label);

    pc->rank_pattern = cJSON_GetObjectItemCaseSensitive(o, "rank_pattern");
    pc->alpha_pattern = cJSON_GetObjectItemCaseSensitive(o, "alpha_pattern");
    if ((s = check_pattern_object(pc, pc->rank_pattern, "rank_pattern", 1))) return s;
    return check_pattern_object(pc, pc->alpha_pattern, "alpha_pattern", 0);
}

static void config_free(peft_config_t *pc) {
    cJSON_Delete(pc->root);
    pc->root = NULL;
}

static lorac_status_t config_parse(const char *label, const char *text, size_t len, peft_config_t *pc) {
    memset(pc, 0, sizeof *pc);
    pc->label = label;
    pc->root = cJSON_ParseWithLength(text, len);
    if (!pc->root || !cJSON_IsObject(pc->root)) {
        config_free(pc);
        return lorac_error(LORAC_STATUS_FORMAT, "%s: not a JSON object", label);
    }
    lorac_status_t s;
    if ((s = refuse_unsupported(pc)) || (s = parse_numbers(pc)) || (s = parse_selection(pc))) {
        config_free(pc);
        return s;
    }
    return LORAC_STATUS_OK;
}

/* ---- which modules the config selects ------------------------------------ */

/* The config's regexes, compiled once. */
typedef struct {
    const peft_config_t *pc;
    peft_regex_t target, exclude;
    peft_regex_t *layer_res, *rank_res, *alpha_res;
    int32_t n_layer_res, n_rank, n_alpha;
} matcher_t;

static void matcher_free(matcher_t *m) {
    regex_free(&m->target);
    regex_free(&m->exclude);
    for (int32_t i = 0; i < m->n_layer_res; i++) regex_free(&m->layer_res[i]);
    for (int32_t i = 0; i < m->n_rank; i++) regex_free(&m->rank_res[i]);
    for (int32_t i = 0; i < m->n_alpha; i++) regex_free(&m->alpha_res[i]);
    free(m->layer_res); free(m->rank_res); free(m->alpha_res);
}

/* rf"(.*\.)?({key})$" with re.match: the key matches the end of the name,
 * after a '.' or from its start (get_pattern_key). */
static lorac_status_t compile_pattern_keys(const peft_config_t *pc, const cJSON *obj, const char *field,
                                           peft_regex_t **out, int32_t *n_out) {
    int32_t n = obj && cJSON_IsObject(obj) ? cJSON_GetArraySize(obj) : 0;
    *out = calloc((size_t)(n ? n : 1), sizeof **out);
    if (!*out) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    int32_t i = 0;
    for (const cJSON *e = n ? obj->child : NULL; e; e = e->next, i++) {
        lorac_status_t s = regex_compile(&(*out)[i], "(.*\\.)?(", e->string, ")$", 0, pc->label, field);
        if (s) { *n_out = i; return s; }
    }
    *n_out = n;
    return LORAC_STATUS_OK;
}

static lorac_status_t matcher_init(matcher_t *m, const peft_config_t *pc) {
    memset(m, 0, sizeof *m);
    m->pc = pc;
    lorac_status_t s;
    if (pc->targets_kind == TARGETS_REGEX &&
        (s = regex_compile(&m->target, "", pc->targets->valuestring, "", 1, pc->label, "target_modules")))
        return s;
    if (cJSON_IsString(pc->exclude) && (s = regex_compile(&m->exclude, "", pc->exclude->valuestring, "", 1, pc->label, "exclude_modules")))
        return s;
    /* layer index: rf".*\.{pattern}\.(\d+)\.", or r".*\.[^.]*\.(\d+)\." without a pattern */
    const cJSON *lp = pc->layers_pattern;
    int32_t n = cJSON_IsString(lp) && lp->valuestring[0] ? 1 : cJSON_IsArray(lp) ? cJSON_GetArraySize(lp) : 0;
    m->layer_res = calloc((size_t)(n ? n : 1), sizeof *m->layer_res);
    if (!m->layer_res) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    if (n == 0) {
        if ((s = regex_compile(&m->layer_res[0], ".*\\.[^.]*\\.(\\d+)\\.", "", "", 0, pc->label, "layers_pattern"))) return s;
        m->n_layer_res = 1;
    } else {
        const cJSON *e = cJSON_IsString(lp) ? lp : lp->child;
        for (; e && m->n_layer_res < n; e = e->next) {
            if ((s = regex_compile(&m->layer_res[m->n_layer_res], ".*\\.", e->valuestring, "\\.(\\d+)\\.", 0, pc->label, "layers_pattern")))
                return s;
            m->n_layer_res++;
        }
    }
    if ((s = compile_pattern_keys(pc, pc->rank_pattern, "rank_pattern key", &m->rank_res, &m->n_rank))) return s;
    return compile_pattern_keys(pc, pc->alpha_pattern, "alpha_pattern key", &m->alpha_res, &m->n_alpha);
}

static int list_has(const cJSON *list, const char *name, int suffix) {
    size_t n = strlen(name);
    for (const cJSON *e = list->child; e; e = e->next) {
        const char *k = e->valuestring;
        size_t kn = strlen(k);
        if (!suffix && strcmp(k, name) == 0) return 1;
        if (suffix && kn < n && name[n - kn - 1] == '.' && strcmp(name + n - kn, k) == 0) return 1;
    }
    return 0;
}

/* PEFT's layers_to_transform test for a module found by suffix. */
static int layer_selected(matcher_t *m, const char *name, lorac_status_t *s) {
    const cJSON *layers = m->pc->layers;
    if (!layers) return 1;
    long index = -1;
    for (int32_t i = 0; i < m->n_layer_res && index < 0; i++) {
        int hit = regex_match(&m->layer_res[i], name, &index, m->pc->label, s);
        if (hit < 0) return -1;
        if (!hit) index = -1;
    }
    if (index < 0) return 0;
    const cJSON *e = cJSON_IsArray(layers) ? layers->child : layers;
    for (; e; e = cJSON_IsArray(layers) ? e->next : NULL)
        if ((long)e->valuedouble == index) return 1;
    return 0;
}

/* check_target_module_exists: 1 selected, 0 not, -1 error (*s set). */
static int module_selected(matcher_t *m, const char *name, int is_projection, lorac_status_t *s) {
    const peft_config_t *pc = m->pc;
    if (cJSON_IsString(pc->exclude)) {
        int hit = regex_match(&m->exclude, name, NULL, pc->label, s);
        if (hit) return hit < 0 ? -1 : 0;
    } else if (cJSON_IsArray(pc->exclude) && (list_has(pc->exclude, name, 0) || list_has(pc->exclude, name, 1))) {
        return 0;
    }
    switch (pc->targets_kind) {
    case TARGETS_ALL_LINEAR: return is_projection; /* every nn.Linear but the output head */
    case TARGETS_REGEX: return regex_match(&m->target, name, NULL, pc->label, s);
    case TARGETS_LIST:
        if (list_has(pc->targets, name, 0)) return 1; /* named exactly: no layer test */
        if (!list_has(pc->targets, name, 1)) return 0;
        return layer_selected(m, name, s);
    case TARGETS_FROM_FILE: default: return 0;
    }
}

/* get_pattern_key: the first key (in file order) that matches, else none. */
static int pattern_value(peft_regex_t *res, int32_t n, const cJSON *obj, const char *name, const char *label,
                         double *value, lorac_status_t *s) {
    const cJSON *e = n ? obj->child : NULL;
    for (int32_t i = 0; i < n; i++, e = e->next) {
        int hit = regex_match(&res[i], name, NULL, label, s);
        if (hit < 0) return -1;
        if (hit) { *value = e->valuedouble; return 1; }
    }
    return 0;
}

/* Modules of HF's LlamaForCausalLM that are not adapted projections: a
 * config that selects one of them is not something lorac can apply. */
static lorac_status_t refuse_other_module(matcher_t *m, const char *name) {
    lorac_status_t s = LORAC_STATUS_OK;
    int hit = module_selected(m, name, 0, &s);
    if (hit < 0) return s;
    if (!hit) return LORAC_STATUS_OK;
    const char *dot = strrchr(name, '.');
    if (dot && (strcmp(dot, ".embed_tokens") == 0 || strcmp(dot, ".wte") == 0 || strcmp(dot, ".wpe") == 0))
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: embedding adapters are not supported (target_modules selects %s)", m->pc->label, name);
    if (strcmp(name, "lm_head") == 0)
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: adapters on the output head are not supported (target_modules selects lm_head)", m->pc->label);
    return lorac_error(LORAC_STATUS_UNSUPPORTED,
                       "%s: target_modules selects \"%s\", which is not one of the projections lorac adapts "
                       "(q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; GPT-2's c_attn, c_proj, "
                       "c_fc)", m->pc->label, name);
}

static lorac_status_t check_other_modules(matcher_t *m, const lorac_model_config_t *mc) {
    static const char *const globals[] = {"", ".embed_tokens", ".layers", ".norm", ".rotary_emb", NULL};
    static const char *const per_layer[] = {"", ".self_attn", ".mlp", ".mlp.act_fn", ".input_layernorm",
                                            ".post_attention_layernorm", NULL};
    /* GPT2LMHeadModel's */
    static const char *const gpt2_globals[] = {"", ".wte", ".wpe", ".drop", ".h", ".ln_f", NULL};
    static const char *const gpt2_per_layer[] = {"", ".ln_1", ".attn", ".attn.attn_dropout", ".attn.resid_dropout", ".ln_2",
                                                 ".mlp", ".mlp.act", ".mlp.dropout", NULL};
    bool gpt2 = mc->arch == LORAC_ARCH_GPT2;
    const char *const *g = gpt2 ? gpt2_globals : globals, *const *pl = gpt2 ? gpt2_per_layer : per_layer;
    lorac_status_t s;
    char name[NAME_MAX_LEN];
    for (size_t i = 0; g[i]; i++) {
        snprintf(name, sizeof name, "%s%s", decoder_prefix(mc), g[i]);
        if ((s = refuse_other_module(m, name))) return s;
    }
    if ((s = refuse_other_module(m, "lm_head"))) return s;
    for (int32_t l = 0; l < mc->n_layers; l++)
        for (size_t i = 0; pl[i]; i++) {
            snprintf(name, sizeof name, "%s.%s.%d%s", decoder_prefix(mc), gpt2 ? "h" : "layers", l, pl[i]);
            if ((s = refuse_other_module(m, name))) return s;
        }
    return LORAC_STATUS_OK;
}

/* Per slot (layer * LORAC_LORA_COUNT + target): the rank (0 = not adapted)
 * and alpha the config gives. present[] marks the modules the file has, which
 * decide when the config has no target_modules. */
static lorac_status_t select_modules(const peft_config_t *pc, const lorac_model_config_t *mc, const uint8_t *present,
                                     int32_t *rank, float *alpha) {
    int32_t n_layers = mc->n_layers;
    /* PEFT sets fan_in_fan_out as each module's class needs, with a warning
     * when the config says otherwise: the LoRA weights mean the same */
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(pc->root, "fan_in_fan_out")) && mc->arch != LORAC_ARCH_GPT2)
        fprintf(stderr, "lorac: warning: %s: fan_in_fan_out is true, but %s's projections are nn.Linear (weights "
                        "stored [out, in]): read as false, as PEFT does\n", pc->label, mc->arch_name);
    matcher_t m;
    lorac_status_t s = matcher_init(&m, pc);
    if (s) { matcher_free(&m); return s; }
    if (pc->layers) {
        const cJSON *e = cJSON_IsArray(pc->layers) ? pc->layers->child : pc->layers;
        for (; e; e = cJSON_IsArray(pc->layers) ? e->next : NULL)
            if (e->valuedouble >= n_layers) {
                s = lorac_error(LORAC_STATUS_FORMAT, "%s: layers_to_transform names layer %d but the model has %d layers",
                                pc->label, (int)e->valuedouble, n_layers);
                goto done;
            }
    }
    if (pc->targets_kind != TARGETS_FROM_FILE && (s = check_other_modules(&m, mc))) goto done;
    int32_t n_selected = 0;
    for (int32_t slot = 0; slot < n_layers * LORAC_LORA_COUNT; slot++) {
        char name[NAME_MAX_LEN];
        lorac_lora_module_path(mc, slot / LORAC_LORA_COUNT, slot % LORAC_LORA_COUNT, name, sizeof name);
        rank[slot] = 0;
        alpha[slot] = pc->params.alpha;
        if (!lorac_lora_target_exists(mc, slot % LORAC_LORA_COUNT)) continue; /* GPT-2's gate */
        int hit = pc->targets_kind == TARGETS_FROM_FILE ? present[slot] : module_selected(&m, name, 1, &s);
        if (hit < 0) goto done;
        if (!hit) continue;
        double v;
        int got = pattern_value(m.rank_res, m.n_rank, pc->rank_pattern, name, pc->label, &v, &s);
        if (got < 0) goto done;
        rank[slot] = got ? (int32_t)v : pc->params.r;
        got = pattern_value(m.alpha_res, m.n_alpha, pc->alpha_pattern, name, pc->label, &v, &s);
        if (got < 0) goto done;
        if (got) alpha[slot] = (float)v;
        n_selected++;
    }
    if (!n_selected) {
        char *t = pc->targets ? cJSON_PrintUnformatted(pc->targets) : NULL;
        s = lorac_error(LORAC_STATUS_FORMAT, "%s: target_modules %.200s selects no module of this model%s", pc->label,
                        t ? t : "(absent)", pc->layers ? " in the layers of layers_to_transform" : "");
        free(t);
    }
done:
    matcher_free(&m);
    return s;
}

/* ---- adapter_model.safetensors ---------------------------------------------- */

/* One LoRA tensor of the file. */
typedef struct {
    const lorac_tensor_view_t *tv;
    int32_t layer;
    int target;
    int which; /* 0 = lora_A, 1 = lora_B */
    int prefix; /* index in k_decoder_prefixes */
    int other;  /* 1: a module of another tower (vision) */
    int fused;  /* 1: Phi-3's qkv_proj or gate_up_proj (target is the group's first) */
} lora_tensor_t;

/* How adapters name the decoder: a text model's "model", Gemma 3
 * multimodal's "model.language_model" (transformers >= 4.52) or
 * "language_model.model" (before) */
static const char *const k_decoder_prefixes[] = {"model", "model.language_model", "language_model.model", "transformer"};
#define N_DECODER_PREFIXES 3 /* the Llama-style ones; GPT2_PREFIX is GPT-2's */
#define GPT2_PREFIX 3
/* the modules of a multimodal model's other towers */
static const char *const k_other_towers[] = {"model.vision_tower.", "vision_tower.", "model.multi_modal_projector.",
                                             "multi_modal_projector."};

/* The layer index at q (at most 6 digits, no leading zero) and the '.'
 * after it: the rest of the name, or NULL. */
static const char *parse_layer_index(const char *q, const char *end, int32_t *layer) {
    long l = 0;
    const char *digits = q;
    while (q < end && *q >= '0' && *q <= '9' && q - digits < 7) l = l * 10 + (*q++ - '0');
    if (q == digits || q >= end || *q != '.' || (*digits == '0' && q - digits > 1)) return NULL;
    *layer = (int32_t)l;
    return q + 1;
}

/* GPT-2's "transformer.h.N.attn.c_attn" (q, k and v in one module),
 * ".attn.c_proj" (o), ".mlp.c_fc" (up), ".mlp.c_proj" (down). */
static int parse_gpt2_module(const char *p, size_t len, int32_t *layer, int *target, int *fused) {
    static const struct { const char *tail; int target; } tails[] = {
        {"attn.c_attn", LORAC_LORA_Q}, {"attn.c_proj", LORAC_LORA_O}, {"mlp.c_fc", LORAC_LORA_UP}, {"mlp.c_proj", LORAC_LORA_DOWN}};
    const char *end = p + len, *q = parse_layer_index(p + 14, end, layer); /* past "transformer.h." */
    if (!q) return -1;
    for (size_t k = 0; k < sizeof tails / sizeof tails[0]; k++)
        if ((size_t)(end - q) == strlen(tails[k].tail) && memcmp(q, tails[k].tail, (size_t)(end - q)) == 0) {
            *target = tails[k].target;
            *fused = tails[k].target == LORAC_LORA_Q;
            return 0;
        }
    return -1;
}

/* "PREFIX.layers.N.(self_attn|mlp).TARGET" (or GPT-2's) -> layer, target
 * and prefix, or -1; fused modules (Phi-3's, GPT-2's c_attn) give their
 * group's first target and *fused. */
static int parse_module(const char *p, size_t len, int32_t *layer, int *target, int *prefix, int *fused) {
    size_t plen = 0;
    int k;
    *fused = 0;
    if (len > 14 && strncmp(p, "transformer.h.", 14) == 0) {
        *prefix = GPT2_PREFIX;
        return parse_gpt2_module(p, len, layer, target, fused);
    }
    for (k = 0; k < N_DECODER_PREFIXES; k++) {
        plen = strlen(k_decoder_prefixes[k]);
        if (len > plen + 8 && strncmp(p, k_decoder_prefixes[k], plen) == 0 && strncmp(p + plen, ".layers.", 8) == 0) break;
    }
    if (k == N_DECODER_PREFIXES) return -1;
    *prefix = k;
    const char *end = p + len, *q = parse_layer_index(p + plen + 8, end, layer);
    if (!q) return -1;
    for (int t = 0; t < LORAC_LORA_COUNT; t++) {
        char tail[64];
        int n = snprintf(tail, sizeof tail, "%s.%s", target_block(t), lorac_lora_target_name((lorac_lora_target_t)t));
        if ((size_t)(end - q) == (size_t)n && memcmp(q, tail, (size_t)n) == 0) {
            *target = t;
            return 0;
        }
    }
    static const struct { const char *tail; int target; } groups[] = {{"self_attn.qkv_proj", LORAC_LORA_Q},
                                                                       {"mlp.gate_up_proj", LORAC_LORA_GATE}};
    for (int k = 0; k < 2; k++)
        if ((size_t)(end - q) == strlen(groups[k].tail) && memcmp(q, groups[k].tail, strlen(groups[k].tail)) == 0) {
            *target = groups[k].target;
            *fused = 1;
            return 0;
        }
    return -1;
}

/* Classifies a tensor name; errors say what the tensor is when it is a
 * kind of adapter lorac refuses. */
static lorac_status_t classify_tensor(const char *label, const lorac_tensor_view_t *tv, lora_tensor_t *out) {
    const char *name = tv->name;
    if (strstr(name, "lora_magnitude_vector"))
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: tensor \"%s\" is a DoRA magnitude vector: DoRA is not supported", label, name);
    if (strstr(name, "lora_embedding_A") || strstr(name, "lora_embedding_B"))
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: tensor \"%s\" belongs to an embedding adapter: embedding adapters are not supported", label, name);
    const char *p = strncmp(name, PEFT_PREFIX, strlen(PEFT_PREFIX)) == 0 ? name + strlen(PEFT_PREFIX) : name;
    const char *ab = strstr(p, ".lora_A.") ? strstr(p, ".lora_A.") : strstr(p, ".lora_B.");
    if (!ab)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor \"%s\" is not a LoRA weight (expected "
                           PEFT_PREFIX "model.layers.N.self_attn.q_proj.lora_A.weight and the like)", label, name);
    const char *rest = ab + 8;
    if (strcmp(rest, "bias") == 0 || strcmp(rest, "default.bias") == 0)
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: tensor \"%s\" is a LoRA bias (lora_bias): not supported", label, name);
    if (strcmp(rest, "weight") != 0 && strcmp(rest, "default.weight") != 0)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor \"%s\": expected .lora_%c.weight or .lora_%c.default.weight", label,
                           name, ab[6], ab[6]);
    out->tv = tv;
    out->which = ab[6] == 'B';
    if (parse_module(p, (size_t)(ab - p), &out->layer, &out->target, &out->prefix, &out->fused) == 0) return LORAC_STATUS_OK;
    size_t mlen = (size_t)(ab - p);
    for (size_t k = 0; k < sizeof k_other_towers / sizeof k_other_towers[0]; k++)
        if (strncmp(p, k_other_towers[k], strlen(k_other_towers[k])) == 0) {
            out->other = 1;
            out->layer = -1;
            return LORAC_STATUS_OK;
        }
    if ((mlen >= 13 && strncmp(p + mlen - 13, ".embed_tokens", 13) == 0) || (mlen == 7 && strncmp(p, "lm_head", 7) == 0) ||
        (mlen == 22 && strncmp(p, "language_model.lm_head", 22) == 0))
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: tensor \"%s\" adapts %.*s: embedding and output-head adapters are not supported",
                           label, name, (int)mlen, p);
    return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor \"%s\" adapts \"%.*s\", which is not a projection of a Llama model "
                       "(model.layers.N.self_attn.{q,k,v,o}_proj or model.layers.N.mlp.{gate,up,down}_proj) or of "
                       "GPT-2 (transformer.h.N.attn.{c_attn,c_proj} or transformer.h.N.mlp.{c_fc,c_proj})",
                       label, name, (int)mlen, p);
}

/* Without a model config the sizes come from the tensors: the first tensor
 * that shows a size sets it; the shape check then catches disagreement. */
static void infer_model_config(const lora_tensor_t *lt, int64_t n, int32_t n_layers, lorac_model_config_t *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->arch_name, sizeof c->arch_name, "(inferred from the adapter)");
    c->n_layers = n_layers;
    int32_t D = 0, Q = 0, KV = 0, I = 0;
    for (int64_t i = 0; i < n; i++) {
        const lorac_tensor_view_t *tv = lt[i].tv;
        if (tv->n_dims != 2 || tv->shape[0] < 1 || tv->shape[1] < 1 || tv->shape[0] > (1 << 24) || tv->shape[1] > (1 << 24)) continue;
        int t = lt[i].target;
        int32_t in = lt[i].which ? 0 : (int32_t)tv->shape[1], out = lt[i].which ? (int32_t)tv->shape[0] : 0;
        int32_t *in_dim = t == LORAC_LORA_O ? &Q : t == LORAC_LORA_DOWN ? &I : &D;
        int32_t *out_dim = t == LORAC_LORA_Q ? &Q : t <= LORAC_LORA_V ? &KV : t == LORAC_LORA_O || t == LORAC_LORA_DOWN ? &D : &I;
        if (in && !*in_dim) *in_dim = in;
        if (out && !*out_dim) *out_dim = out;
    }
    c->hidden_size = D ? D : 1;
    c->intermediate_size = I ? I : 1;
    c->head_dim = 1;
    c->n_heads = Q ? Q : 1;
    c->n_kv_heads = KV ? KV : 1;
}

static void shape_text(const lorac_tensor_view_t *tv, char *buf, size_t cap) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int32_t d = 0; d < tv->n_dims && k < cap; d++)
        k += (size_t)snprintf(buf + k, cap - k, d ? ", %lld" : "%lld", (long long)tv->shape[d]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

/* A [r, in] and B [out, r], in a dtype lorac reads. */
static lorac_status_t check_module_tensors(const char *label, const lora_tensor_t *ab[2], int32_t r, int32_t in, int32_t out) {
    for (int k = 0; k < 2; k++) {
        const lorac_tensor_view_t *tv = ab[k]->tv;
        int64_t want0 = k ? out : r, want1 = k ? r : in;
        if (tv->n_dims != 2 || tv->shape[0] != want0 || tv->shape[1] != want1) {
            char found[200];
            shape_text(tv, found, sizeof found);
            const lorac_tensor_view_t *A = ab[0]->tv, *B = ab[1]->tv;
            if (A->n_dims == 2 && B->n_dims == 2 && A->shape[1] == in && B->shape[0] == out && A->shape[0] == B->shape[1])
                return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor \"%s\" has shape %s, expected [%lld, %lld]: the tensors have "
                                   "rank %lld but the adapter's config gives this module r = %d (\"r\" / rank_pattern)", label,
                                   tv->name, found, (long long)want0, (long long)want1, (long long)A->shape[0], r);
            return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor \"%s\" has shape %s, expected [%lld, %lld] = %s for this model "
                               "(in %d, out %d, r %d)", label, tv->name, found, (long long)want0, (long long)want1,
                               k ? "[out, r]" : "[r, in]", in, out, r);
        }
        if (tv->dtype != LORAC_DTYPE_F32 && tv->dtype != LORAC_DTYPE_F16 && tv->dtype != LORAC_DTYPE_BF16)
            return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: tensor \"%s\" has dtype %s (F32, F16 or BF16 expected)", label,
                               tv->name, lorac_dtype_name(tv->dtype));
    }
    return LORAC_STATUS_OK;
}

static lorac_status_t copy_weights(const char *label, const lorac_tensor_view_t *tv, float *dst) {
    /* through a bounce buffer: file data need not be aligned */
    void *tmp = malloc((size_t)tv->nbytes + 1);
    if (!tmp) return lorac_error(LORAC_STATUS_NOMEM, "out of memory reading \"%s\"", tv->name);
    if (tv->nbytes) memcpy(tmp, tv->data, (size_t)tv->nbytes);
    lorac_convert_to_f32(dst, tmp, tv->dtype, tv->n_elements);
    free(tmp);
    for (int64_t i = 0; i < tv->n_elements; i++)
        if (!isfinite(dst[i]))
            return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor \"%s\" holds a non-finite value (element %lld)", label, tv->name, (long long)i);
    return LORAC_STATUS_OK;
}

/* The loader's working state. */
typedef struct {
    const char *cfg_label, *st_label;
    peft_config_t pc;
    lora_tensor_t *tensors;
    int64_t n_tensors;
    lorac_model_config_t mc;
    const lora_tensor_t **slots; /* (n_layers * COUNT * 2): A and B per slot */
    uint8_t *present;
    int32_t *rank;
    float *alpha, *scale;
} loader_t;

static void loader_free(loader_t *ld) {
    config_free(&ld->pc);
    free(ld->tensors); free(ld->slots); free(ld->present); free(ld->rank); free(ld->alpha); free(ld->scale);
}

/* A LoRA on another tower (Gemma 3's vision tower, which lorac does not
 * run) may only be one that changes nothing: its lora_B all zeros, as
 * PEFT leaves those a text-only run selected ("q_proj" names the vision
 * tower's too) but never trained. */
static lorac_status_t check_other_tower_zero(const char *label, const lorac_tensor_view_t *tv) {
    float *w = malloc(sizeof(float) * (size_t)(tv->n_elements ? tv->n_elements : 1));
    if (!w) return lorac_error(LORAC_STATUS_NOMEM, "out of memory reading \"%s\"", tv->name);
    lorac_status_t s = tv->dtype == LORAC_DTYPE_F32 || tv->dtype == LORAC_DTYPE_F16 || tv->dtype == LORAC_DTYPE_BF16
                           ? copy_weights(label, tv, w)
                           : lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: tensor \"%s\" has dtype %s (F32, F16 or BF16 expected)",
                                         label, tv->name, lorac_dtype_name(tv->dtype));
    for (int64_t i = 0; !s && i < tv->n_elements; i++)
        if (w[i] != 0.0f)
            s = lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: tensor \"%s\" adapts a module outside the language model (the vision "
                            "tower or its projector), which lorac does not run: only Gemma 3's text model is supported",
                            label, tv->name);
    free(w);
    return s;
}

/* Classifies every tensor and fixes the model config (given or inferred). */
static lorac_status_t scan_tensors(loader_t *ld, const lorac_safetensors_t *st, const lorac_model_config_t *mc) {
    ld->n_tensors = lorac_safetensors_count(st);
    ld->tensors = calloc((size_t)(ld->n_tensors ? ld->n_tensors : 1), sizeof *ld->tensors);
    if (!ld->tensors) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    if (!ld->n_tensors) return lorac_error(LORAC_STATUS_FORMAT, "%s: no LoRA tensors", ld->st_label);
    int32_t max_layer = -1;
    int64_t n = 0;
    int prefix = -1;
    for (int64_t i = 0; i < ld->n_tensors; i++) {
        lora_tensor_t *t = &ld->tensors[n];
        memset(t, 0, sizeof *t); /* the slot may hold a skipped tensor's fields */
        lorac_status_t s = classify_tensor(ld->st_label, lorac_safetensors_get(st, i), t);
        if (s) return s;
        if (t->other) { /* kept out of the adapter, if it changes nothing */
            if (t->which && (s = check_other_tower_zero(ld->st_label, t->tv))) return s;
            continue;
        }
        if (prefix >= 0 && t->prefix != prefix)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor \"%s\" names its module under \"%s\" but \"%s\" uses \"%s\"",
                               ld->st_label, t->tv->name, k_decoder_prefixes[t->prefix], ld->tensors[0].tv->name,
                               k_decoder_prefixes[prefix]);
        prefix = t->prefix;
        max_layer = t->layer > max_layer ? t->layer : max_layer;
        n++;
    }
    ld->n_tensors = n;
    if (!n) return lorac_error(LORAC_STATUS_FORMAT, "%s: no LoRA tensors of the language model", ld->st_label);
    /* GPT-2's modules are GPT-2's alone */
    if (mc && (prefix == GPT2_PREFIX) != (mc->arch == LORAC_ARCH_GPT2))
        return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor \"%s\" adapts a module of %s, but the model is %s", ld->st_label,
                           ld->tensors[0].tv->name, prefix == GPT2_PREFIX ? "GPT-2" : "a Llama-style model", mc->arch_name);
    if (!mc && prefix == GPT2_PREFIX)
        return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: tensor \"%s\" adapts GPT-2's fused c_attn or its Conv1D "
                           "projections: their shapes are the model's to say (give the model: -m MODEL)",
                           ld->st_label, ld->tensors[0].tv->name);
    /* Phi-3's fused modules and a model's separate ones are not each other's */
    for (int64_t i = 0; i < n && prefix != GPT2_PREFIX; i++) {
        const lora_tensor_t *t = &ld->tensors[i];
        const char *fused = t->target <= LORAC_LORA_V ? "qkv_proj" : "gate_up_proj"; /* the module that holds it */
        int size = 1;
        if (mc) lorac_lora_group(mc, t->target, &size);
        if (mc && t->fused && !mc->fused_proj)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor \"%s\" adapts Phi-3's fused %s, but %s has separate "
                               "projections", ld->st_label, t->tv->name, fused, mc->arch_name);
        if (mc && !t->fused && size > 1)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor \"%s\" adapts %s, but %s fuses it into %s", ld->st_label,
                               t->tv->name, lorac_lora_target_name((lorac_lora_target_t)t->target), mc->arch_name, fused);
        if (!mc && t->fused)
            return lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: tensor \"%s\" adapts Phi-3's fused %s: how its rows split "
                               "among the projections is the model's to say (give the model: -m MODEL)",
                               ld->st_label, t->tv->name, fused);
    }
    if (mc) {
        ld->mc = *mc;
        if (prefix != GPT2_PREFIX && (prefix > 0) != mc->text_of_multimodal)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: the adapter's modules are under \"%s\" (%s), but the model is %s",
                               ld->st_label, k_decoder_prefixes[prefix], prefix ? "a multimodal model's text model" : "a text model",
                               mc->arch_name);
        snprintf(ld->mc.module_prefix, sizeof ld->mc.module_prefix, "%s", k_decoder_prefixes[prefix]);
        return LORAC_STATUS_OK;
    }
    /* a config's layers_to_transform may name layers past the file's last:
     * count them in, so the missing tensors are what the error names */
    const cJSON *layers = ld->pc.layers;
    for (const cJSON *e = cJSON_IsArray(layers) ? layers->child : layers; e; e = cJSON_IsArray(layers) ? e->next : NULL)
        if (e->valuedouble > max_layer) max_layer = (int32_t)e->valuedouble;
    if (max_layer >= MAX_INFERRED_LAYERS)
        return lorac_error(LORAC_STATUS_FORMAT, "%s: layer index %d is past any model's (%d layers at most without a model to check against)",
                           ld->st_label, max_layer, MAX_INFERRED_LAYERS);
    infer_model_config(ld->tensors, ld->n_tensors, max_layer + 1, &ld->mc);
    snprintf(ld->mc.module_prefix, sizeof ld->mc.module_prefix, "%s", k_decoder_prefixes[prefix]);
    ld->mc.text_of_multimodal = prefix > 0;
    return LORAC_STATUS_OK;
}

/* Files each tensor under its (layer, target) slot. */
static lorac_status_t fill_slots(loader_t *ld) {
    int32_t n_slots = ld->mc.n_layers * LORAC_LORA_COUNT;
    ld->slots = calloc((size_t)n_slots * 2, sizeof *ld->slots);
    ld->present = calloc((size_t)n_slots, 1);
    ld->rank = calloc((size_t)n_slots, sizeof *ld->rank);
    ld->alpha = calloc((size_t)n_slots, sizeof *ld->alpha);
    ld->scale = calloc((size_t)n_slots, sizeof *ld->scale);
    if (!ld->slots || !ld->present || !ld->rank || !ld->alpha || !ld->scale) return lorac_error(LORAC_STATUS_NOMEM, "out of memory");
    for (int64_t i = 0; i < ld->n_tensors; i++) {
        const lora_tensor_t *t = &ld->tensors[i];
        if (t->layer >= ld->mc.n_layers)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor \"%s\" is for layer %d but the model has %d layers", ld->st_label,
                               t->tv->name, t->layer, ld->mc.n_layers);
        int32_t slot = t->layer * LORAC_LORA_COUNT + t->target;
        const lora_tensor_t **p = &ld->slots[2 * slot + t->which];
        if (*p)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: tensors \"%s\" and \"%s\" are both lora_%c of the same module", ld->st_label,
                               (*p)->tv->name, t->tv->name, t->which ? 'B' : 'A');
        *p = t;
        ld->present[slot] = 1;
        int size;
        lorac_lora_group(&ld->mc, t->target, &size);
        for (int k = 1; t->fused && k < size; k++) ld->present[slot + k] = 1; /* the group's other members */
    }
    return LORAC_STATUS_OK;
}

/* The file must hold A and B of every selected module and nothing else. */
static lorac_status_t match_file_to_selection(loader_t *ld) {
    for (int32_t slot = 0; slot < ld->mc.n_layers * LORAC_LORA_COUNT; slot++) {
        const lora_tensor_t *A = ld->slots[2 * slot], *B = ld->slots[2 * slot + 1];
        char name[NAME_MAX_LEN];
        lorac_lora_module_path(&ld->mc, slot / LORAC_LORA_COUNT, slot % LORAC_LORA_COUNT, name, sizeof name);
        int size, t = slot % LORAC_LORA_COUNT;
        if (lorac_lora_group(&ld->mc, t, &size) != t) continue; /* a fused group's tensors are its first member's */
        if (ld->present[slot] && !ld->rank[slot])
            return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor \"%s\" adapts %s, which %s does not select (target_modules, "
                               "exclude_modules, layers_to_transform)", ld->st_label, (A ? A : B)->tv->name, name, ld->cfg_label);
        if (!A != !B)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: tensor \"%s\" has no matching lora_%c: the lora_%c of %s is missing",
                               ld->st_label, (A ? A : B)->tv->name, A ? 'B' : 'A', A ? 'B' : 'A', name);
        if (ld->rank[slot] && !A)
            return lorac_error(LORAC_STATUS_FORMAT, "%s: missing tensor \"" PEFT_PREFIX "%s.lora_A.weight\" (and its lora_B): %s "
                               "selects this module", ld->st_label, name, ld->cfg_label);
    }
    return LORAC_STATUS_OK;
}

static lorac_status_t check_shapes(loader_t *ld) {
    for (int32_t slot = 0; slot < ld->mc.n_layers * LORAC_LORA_COUNT; slot++) {
        if (!ld->rank[slot]) continue;
        int32_t in, out, size, t = slot % LORAC_LORA_COUNT;
        lorac_lora_target_dims(&ld->mc, (lorac_lora_target_t)t, &in, &out);
        int first = lorac_lora_group(&ld->mc, t, &size);
        for (int k = 1; first == t && k < size; k++) { /* a fused group's B: every member's rows */
            int32_t in_k, out_k;
            lorac_lora_target_dims(&ld->mc, (lorac_lora_target_t)(t + k), &in_k, &out_k);
            out += out_k;
        }
        lorac_status_t s = first == t ? check_module_tensors(ld->st_label, &ld->slots[2 * slot], ld->rank[slot], in, out)
                                      : LORAC_STATUS_OK;
        if (s) return s;
        ld->scale[slot] = lorac_lora_scale(ld->alpha[slot], ld->rank[slot], ld->pc.params.rslora);
    }
    return LORAC_STATUS_OK;
}

static lorac_status_t load_adapter(loader_t *ld, const char *text, size_t len, const lorac_safetensors_t *st,
                                   const lorac_model_config_t *mc, lorac_adapter_t **out) {
    lorac_status_t s;
    lorac_adapter_t *a = NULL;
    if ((s = config_parse(ld->cfg_label, text, len, &ld->pc))) return s;
    if ((s = scan_tensors(ld, st, mc)) || (s = fill_slots(ld))) return s;
    if ((s = select_modules(&ld->pc, &ld->mc, ld->present, ld->rank, ld->alpha))) return s;
    if ((s = match_file_to_selection(ld)) || (s = check_shapes(ld))) return s;
    if ((s = lorac_adapter_alloc_ranks(&ld->mc, &ld->pc.params, ld->rank, ld->scale, &a))) return s;
    for (int32_t i = 0; i < a->n_modules && !s; i++) {
        lorac_lora_module_t *m = &a->modules[i];
        if (m->in_group) continue; /* read with its group's first module */
        int32_t slot = m->layer * LORAC_LORA_COUNT + m->target;
        if (!(s = copy_weights(ld->st_label, ld->slots[2 * slot]->tv, m->A))) s = copy_weights(ld->st_label, ld->slots[2 * slot + 1]->tv, m->B);
    }
    if (s) { lorac_adapter_free(a); return s; }
    *out = a;
    return LORAC_STATUS_OK;
}

lorac_status_t lorac_adapter_load_memory(const char *config_json, size_t config_len, const void *safetensors,
                                         size_t safetensors_len, const lorac_model_config_t *config,
                                         lorac_adapter_t **out) {
    *out = NULL;
    loader_t ld = {.cfg_label = "adapter_config.json", .st_label = "adapter_model.safetensors"};
    lorac_safetensors_t *st = NULL;
    lorac_status_t s = lorac_safetensors_open_memory(safetensors, safetensors_len, ld.st_label, &st);
    if (!s) s = load_adapter(&ld, config_json, config_len, st, config, out);
    loader_free(&ld);
    lorac_safetensors_free(st);
    return s;
}

lorac_status_t lorac_adapter_load(const char *dir, const lorac_model_config_t *config, lorac_adapter_t **out) {
    *out = NULL;
    if (lorac_gguf_is_file(dir)) return lorac_import_adapter_gguf(dir, config, out); /* llama.cpp's LoRA file */
    char *cfg_path = lorac_path_join(dir, "adapter_config.json");
    char *st_path = lorac_path_join(dir, "adapter_model.safetensors");
    char *bin_path = lorac_path_join(dir, "adapter_model.bin");
    char *text = NULL;
    size_t len = 0;
    lorac_safetensors_t *st = NULL;
    loader_t ld = {.cfg_label = cfg_path, .st_label = st_path};
    lorac_status_t s;
    struct stat sb;
    if (!cfg_path || !st_path || !bin_path) { s = lorac_error(LORAC_STATUS_NOMEM, "out of memory"); goto done; }
    if ((s = lorac_file_read(cfg_path, ADAPTER_CONFIG_MAX, &text, &len))) goto done;
    if (stat(st_path, &sb) != 0 && stat(bin_path, &sb) == 0) {
        s = lorac_error(LORAC_STATUS_UNSUPPORTED, "%s: PyTorch pickle adapters are not supported; save the adapter as "
                        "adapter_model.safetensors (PEFT: save_pretrained(..., safe_serialization=True))", bin_path);
        goto done;
    }
    if ((s = lorac_safetensors_open(st_path, &st))) goto done;
    s = load_adapter(&ld, text, len, st, config, out);
done:
    loader_free(&ld);
    lorac_safetensors_free(st);
    free(cfg_path); free(st_path); free(bin_path); free(text);
    return s;
}
