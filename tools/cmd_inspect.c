/* lorac inspect: architecture, parameter count, dtypes and tensors of a
 * model directory or a single safetensors file; for a PEFT adapter
 * directory its targets, ranks, parameter counts and the singular values of
 * each module's update s·B·A. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "lorac/gguf.h"
#include "lorac/linalg.h"
#include "lorac/lora.h"
#include "lorac/model.h"
#include "model/model_internal.h"
#include "lorac/safetensors.h"

static const char *k_usage =
    "usage: lorac inspect PATH [-m MODEL] [--json]\n"
    "  PATH is a model directory (config.json + safetensors), a .safetensors file, a PEFT adapter\n"
    "  directory (adapter_config.json + adapter_model.safetensors) or a GGUF file (metadata and tensors).\n"
    "  A model: the architecture, parameter count, dtypes and the tensor list.\n"
    "  An adapter: targets, layers, r, alpha and scaling (per module with rank_pattern/alpha_pattern),\n"
    "  trainable parameters r*(in+out) per module kind against in*out, and per module the singular values\n"
    "  of s*B*A: sigma_1, sigma_r and the effective rank (how many singular values hold 99%% of the sum of\n"
    "  sigma^2). With -m MODEL the adapter is checked against the model and compared with its parameter\n"
    "  count and weight size; without it the sizes come from the tensors.\n"
    "  A llama.cpp LoRA file (GGUF) with -m MODEL gets the adapter report, read as lorac applies it.\n"
    "  --json prints the same as JSON.\n";

static void shape_text(const lorac_tensor_view_t *t, char *buf, size_t cap) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int32_t d = 0; d < t->n_dims && k < cap; d++)
        k += (size_t)snprintf(buf + k, cap - k, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

/* Prints and frees a JSON report. */
/* "0-3,7" of the indices i < n where on[i] is set. */
static void ranges_text(const uint8_t *on, int32_t n, char *buf, size_t cap) {
    size_t k = 0;
    buf[0] = '\0';
    for (int32_t l = 0; l < n && k < cap; l++) {
        if (!on[l] || (l > 0 && on[l - 1])) continue;
        int32_t e = l;
        while (e + 1 < n && on[e + 1]) e++;
        k += (size_t)snprintf(buf + k, cap - k, e > l ? "%s%d-%d" : "%s%d", k ? "," : "", l, e);
    }
}

/* The layers with a sliding window, as ranges ("" when none). */
static void window_layers_text(const lorac_model_config_t *c, char *buf, size_t cap) {
    uint8_t *on = calloc((size_t)c->n_layers + 1, 1);
    if (!on) cli_die("out of memory");
    for (int32_t l = 0; l < c->n_layers; l++) on[l] = lorac_model_layer_window(c, l) > 0;
    ranges_text(on, c->n_layers, buf, cap);
    free(on);
}

static void print_json(cJSON *root) {
    char *s = cJSON_Print(root);
    if (!s) cli_die("out of memory");
    puts(s);
    free(s);
    cJSON_Delete(root);
}

static int inspect_model(const char *path, int json);
static int inspect_adapter(const char *path, const char *model_dir, int json);

int cmd_inspect(int argc, char **argv) {
    const char *path = NULL, *model = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (cli_is_help(argv[i])) { fputs(k_usage, stdout); return 0; }
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) model = cli_value(argc, argv, &i, "inspect");
        else if (argv[i][0] == '-') cli_usage_error("inspect", "unknown option '%s'", argv[i]);
        else if (!path) path = argv[i];
        else cli_usage_error("inspect", "only one PATH");
    }
    if (!path) cli_usage_error("inspect", "PATH is required");
    char *adapter_cfg = lorac_path_join(path, "adapter_config.json");
    if (!adapter_cfg) cli_die("out of memory");
    struct stat ast;
    int is_adapter = stat(adapter_cfg, &ast) == 0;
    free(adapter_cfg);
    if (is_adapter) return inspect_adapter(path, model, json);
    int gguf = lorac_gguf_is_file(path);
    /* a llama.cpp LoRA is read as an adapter against its model */
    if (model && gguf) return inspect_adapter(path, model, json);
    if (model)
        cli_usage_error("inspect", "-m MODEL goes with an adapter directory or a GGUF LoRA (PATH holds no "
                                   "adapter_config.json and is no GGUF file)");
    if (gguf) return inspect_gguf(path, json);
    return inspect_model(path, json);
}

static int inspect_model(const char *path, int json) {
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
    /* a multimodal checkpoint: which of its tensors are the text model lorac runs */
    const char *text_prefix = NULL;
    int64_t text_tensors = 0, text_params = 0;
    if (have_cfg && cfg.text_of_multimodal) {
        static const char *const prefixes[] = {"language_model.model", "model.language_model"};
        for (int k = 0; k < 2 && !text_prefix; k++) {
            char name[96];
            snprintf(name, sizeof name, "%s.embed_tokens.weight", prefixes[k]);
            if (lorac_weight_files_find(wf, name)) text_prefix = prefixes[k];
        }
    }
    int64_t n_buffers = 0; /* GPT-2's saved attention masks */
    int64_t n_bnb_weights = 0, n_bnb_states = 0;
    for (int64_t i = 0; i < n; i++) {
        const lorac_tensor_view_t *t = lorac_weight_files_get(wf, i);
        size_t nl = strlen(t->name);
        /* the original GPT-2 checkpoint keeps each layer's causal mask
         * ("h.N.attn.bias", (1, 1, n_positions, n_positions)): a buffer,
         * not a parameter */
        if (have_cfg && cfg.arch == LORAC_ARCH_GPT2 && t->n_dims == 4 &&
            ((nl > 10 && !strcmp(t->name + nl - 10, ".attn.bias")) ||
             (nl > 17 && !strcmp(t->name + nl - 17, ".attn.masked_bias")))) {
            n_buffers++;
            bytes += (int64_t)t->nbytes;
            continue;
        }
        /* a bitsandbytes checkpoint: a projection's U8 codes hold two
         * parameters a byte; its quantization state is not a parameter */
        if (have_cfg && cfg.bnb_nf4 && lorac_bnb_is_state(lorac_bnb_find_in_weight_files, wf, t->name)) {
            n_bnb_states++;
            bytes += (int64_t)t->nbytes;
            continue;
        }
        int packed = have_cfg && cfg.bnb_nf4 && lorac_bnb_is_weight(lorac_bnb_find_in_weight_files, wf, t);
        n_bnb_weights += packed;
        n_params += packed ? 2 * t->n_elements : t->n_elements;
        bytes += (int64_t)t->nbytes;
        per_dtype[t->dtype] += t->n_elements;
        /* the released files' head is language_model.lm_head.weight, the others' lm_head.weight */
        int released = text_prefix && text_prefix[0] == 'l';
        if (text_prefix && (strncmp(t->name, text_prefix, strlen(text_prefix)) == 0 ||
                            !strcmp(t->name, released ? "language_model.lm_head.weight" : "lm_head.weight")))
            text_tensors++, text_params += t->n_elements;
    }

    if (json) {
        cJSON *root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "path", path);
        if (have_cfg) {
            cJSON_AddStringToObject(root, "architecture", cfg.arch_name);
            if (cfg.bnb_nf4) cJSON_AddStringToObject(root, "quantization", "bitsandbytes-nf4");
            cJSON_AddNumberToObject(root, "hidden_size", cfg.hidden_size);
            cJSON_AddNumberToObject(root, "intermediate_size", cfg.intermediate_size);
            cJSON_AddNumberToObject(root, "num_hidden_layers", cfg.n_layers);
            cJSON_AddNumberToObject(root, "num_attention_heads", cfg.n_heads);
            cJSON_AddNumberToObject(root, "num_key_value_heads", cfg.n_kv_heads);
            cJSON_AddNumberToObject(root, "head_dim", cfg.head_dim);
            cJSON_AddNumberToObject(root, "vocab_size", cfg.vocab_size);
            cJSON_AddBoolToObject(root, "tie_word_embeddings", cfg.tie_word_embeddings);
            cJSON_AddNumberToObject(root, "rotary_dim", cfg.rotary_dim); /* Phi-3's partial rotary: less than head_dim */
            if (cfg.rope_longrope) { /* Phi-3's longrope: where its long factors take over, and its attention factor */
                cJSON *lr = cJSON_AddObjectToObject(root, "longrope");
                cJSON_AddNumberToObject(lr, "original_max_position_embeddings", cfg.rope_original_max_position);
                cJSON_AddNumberToObject(lr, "attention_factor", cfg.rope_attention_factor);
            }
            if (cfg.sliding_window) {
                cJSON_AddNumberToObject(root, "sliding_window", cfg.sliding_window);
                cJSON *wl = cJSON_AddArrayToObject(root, "sliding_window_layers");
                for (int32_t l = 0; l < cfg.n_layers; l++)
                    if (lorac_model_layer_window(&cfg, l)) cJSON_AddItemToArray(wl, cJSON_CreateNumber(l));
            } else {
                cJSON_AddNullToObject(root, "sliding_window");
            }
            if (text_prefix) {
                cJSON *tm = cJSON_AddObjectToObject(root, "text_model");
                cJSON_AddStringToObject(tm, "tensor_prefix", text_prefix);
                cJSON_AddNumberToObject(tm, "n_tensors", (double)text_tensors);
                cJSON_AddNumberToObject(tm, "n_params", (double)text_params);
                cJSON_AddNumberToObject(root, "n_other_tensors", (double)(n - text_tensors));
            }
            /* Gemma 2's soft-caps, under config.json's names; null without one */
            const char *cap_names[2] = {"attn_logit_softcapping", "final_logit_softcapping"};
            const float caps[2] = {cfg.attn_softcap, cfg.final_softcap};
            for (int i = 0; i < 2; i++) {
                if (caps[i] > 0.0f) cJSON_AddNumberToObject(root, cap_names[i], caps[i]);
                else cJSON_AddNullToObject(root, cap_names[i]);
            }
        }
        cJSON_AddNumberToObject(root, "n_params", (double)n_params);
        if (n_buffers) cJSON_AddNumberToObject(root, "n_buffers", (double)n_buffers);
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
        print_json(root);
    } else {
        printf("%s\n", path);
        if (have_cfg) {
            printf("  architecture  %s\n", cfg.arch_name);
            printf("  hidden %d, intermediate %d, layers %d, heads %d, kv heads %d, head_dim %d, vocab %d%s\n",
                   cfg.hidden_size, cfg.intermediate_size, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                   cfg.vocab_size, cfg.tie_word_embeddings ? ", tied embeddings" : "");
            if (cfg.sliding_window) {
                char layers[512];
                window_layers_text(&cfg, layers, sizeof layers);
                printf("  sliding window %d positions, layers %s\n", cfg.sliding_window, layers);
            }
            if (cfg.learned_positions)
                printf("  positions     learned, %d (no rotary); LayerNorm, GELU MLP, fused c_attn, biases\n",
                       cfg.max_position_embeddings);
            else if (cfg.rotary_dim != cfg.head_dim)
                printf("  rotary        the first %d of each head's %d values\n", cfg.rotary_dim, cfg.head_dim);
            if (cfg.rope_longrope)
                printf("  rope scaling  longrope: short factors up to %d positions, long ones past them; attention "
                       "factor %.6g\n", cfg.rope_original_max_position, (double)cfg.rope_attention_factor);
            if (cfg.fused_proj) printf("  projections   fused: qkv_proj (q, k, v), gate_up_proj (gate, up)\n");
            if (text_prefix)
                printf("  text model    %s.* : %lld tensors, %lld parameters; the other %lld tensors (vision tower, "
                       "projector) are not run\n", text_prefix, (long long)text_tensors, (long long)text_params,
                       (long long)(n - text_tensors));
            else if (cfg.text_of_multimodal)
                printf("  text model    not found (no language_model.model.* or model.language_model.* embedding)\n");
            if (cfg.attn_softcap > 0.0f || cfg.final_softcap > 0.0f)
                printf("  soft-caps     attention scores %g, logits %g (0: none)\n", (double)cfg.attn_softcap,
                       (double)cfg.final_softcap);
        }
        printf("  parameters    %lld (%.2f M), %.2f MB\n", (long long)n_params, (double)n_params / 1e6, (double)bytes / 1e6);
        if (n_bnb_weights)
            printf("  quantization  bitsandbytes 4-bit NF4: %lld projections as U8 codes (two a byte), read as NF4; "
                   "%lld tensors of quantization state\n", (long long)n_bnb_weights, (long long)n_bnb_states);
        if (n_buffers)
            printf("  buffers       %lld attention masks (attn.bias), not parameters: lorac does not read them\n",
                   (long long)n_buffers);
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

/* ---- adapters ----------------------------------------------------------- */

/* Per module kind (q_proj, ...): how many modules, their ranks, r·(in+out)
 * and in·out. */
typedef struct {
    int32_t count, r_min, r_max;
    int64_t n_params, n_dense;
} kind_stats_t;

typedef struct {
    const char *path;
    int gguf;                  /* a llama.cpp LoRA file, not a PEFT directory */
    cJSON *cfg;                    /* adapter_config.json as written */
    lorac_adapter_t *adapter;
    int have_model;
    lorac_model_config_t mc;       /* with -m */
    int64_t base_params, base_bytes, file_bytes;
    int32_t n_layers;              /* the model's, or the adapter's last layer + 1 */
    kind_stats_t kinds[LORAC_LORA_COUNT];
    int64_t n_params, n_dense;
    int32_t r_min, r_max;
    float alpha_min, alpha_max, scale_min, scale_max;
    double **sv;                   /* per module: r singular values of s·B·A, descending */
    int32_t *eff_rank;
} adapter_report_t;

/* How many of the descending singular values it takes to hold 99% of
 * Σσ² (the squared Frobenius norm of s·B·A); 0 for a zero update. */
static int32_t effective_rank(const double *S, int32_t r) {
    double total = 0, run = 0;
    for (int32_t i = 0; i < r; i++) total += S[i] * S[i];
    if (!(total > 0)) return 0;
    for (int32_t i = 0; i < r; i++) {
        run += S[i] * S[i];
        if (run >= 0.99 * total) return i + 1;
    }
    return r;
}

/* The adapter's modules as PEFT counts them (Phi-3's qkv_proj is one). */
static int32_t peft_modules(const adapter_report_t *rp) {
    int32_t n = 0;
    for (int32_t i = 0; i < lorac_adapter_n_modules(rp->adapter); i++) n += !lorac_adapter_module(rp->adapter, i)->in_group;
    return n;
}

/* A kind's PEFT name: its target's, or with the model Phi-3's fused module's. */
static const char *kind_name(const adapter_report_t *rp, int t) {
    return rp->have_model ? lorac_lora_module_name(&rp->mc, (lorac_lora_target_t)t) : lorac_lora_target_name((lorac_lora_target_t)t);
}

/* "layers.3.self_attn.q_proj" (the module's path past the decoder's
 * prefix); a fused module's rows "layers.3.self_attn.qkv_proj[q]",
 * GPT-2's "h.3.attn.c_attn[q]" */
static void module_label(const adapter_report_t *rp, const lorac_lora_module_t *m, char *buf, size_t cap) {
    char path[160];
    lorac_lora_module_path(&rp->mc, m->layer, m->target, path, sizeof path);
    const char *label = strstr(path, rp->mc.arch == LORAC_ARCH_GPT2 ? ".h." : ".layers.");
    label = label ? label + 1 : path;
    static const char *const rows[LORAC_LORA_COUNT] = {"q", "k", "v", "o", "gate", "up", "down"};
    if (!m->in_group && !m->group_out) snprintf(buf, cap, "%s", label);
    else snprintf(buf, cap, "%s[%s]", label, rows[m->target]);
}

static const char *bytes_text(int64_t n, char *buf, size_t cap) {
    if (n >= 1000000000) snprintf(buf, cap, "%.2f GB", (double)n / 1e9);
    else if (n >= 1000000) snprintf(buf, cap, "%.2f MB", (double)n / 1e6);
    else if (n >= 1000) snprintf(buf, cap, "%.1f KB", (double)n / 1e3);
    else snprintf(buf, cap, "%lld B", (long long)n);
    return buf;
}

/* "0-3,7" of the layers that have at least one module. */
static void layers_text(const adapter_report_t *rp, char *buf, size_t cap) {
    uint8_t *on = calloc((size_t)rp->n_layers + 1, 1);
    if (!on) cli_die("out of memory");
    for (int32_t i = 0; i < lorac_adapter_n_modules(rp->adapter); i++) on[lorac_adapter_module(rp->adapter, i)->layer] = 1;
    ranges_text(on, rp->n_layers, buf, cap);
    free(on);
}

static void load_model_side(adapter_report_t *rp, const char *model_dir) {
    char *cfg_path = lorac_path_join(model_dir, "config.json");
    if (!cfg_path) cli_die("out of memory");
    size_t len;
    char *text = cli_read_file(cfg_path, &len);
    cli_check(lorac_model_config_parse(text, len, cfg_path, &rp->mc));
    free(text);
    free(cfg_path);
    lorac_weight_files_t *wf;
    cli_check(lorac_weight_files_open(model_dir, &wf));
    for (int64_t i = 0; i < lorac_weight_files_count(wf); i++) {
        const lorac_tensor_view_t *t = lorac_weight_files_get(wf, i);
        rp->base_params += t->n_elements;
        rp->base_bytes += (int64_t)t->nbytes;
    }
    lorac_weight_files_free(wf);
    rp->have_model = 1;
}

static void gather_stats(adapter_report_t *rp) {
    const lorac_lora_params_t *p = lorac_adapter_params(rp->adapter);
    int32_t n = lorac_adapter_n_modules(rp->adapter);
    rp->sv = calloc((size_t)n + 1, sizeof *rp->sv);
    rp->eff_rank = calloc((size_t)n + 1, sizeof *rp->eff_rank);
    if (!rp->sv || !rp->eff_rank) cli_die("out of memory");
    for (int32_t i = 0; i < n; i++) {
        const lorac_lora_module_t *m = lorac_adapter_module(rp->adapter, i);
        /* Phi-3's fused modules: one kind per qkv_proj / gate_up_proj, its shared A counted once */
        kind_stats_t *k = &rp->kinds[lorac_lora_module_head(m)];
        int64_t np = (int64_t)m->r * ((m->in_group ? 0 : m->in) + m->out), nd = (int64_t)m->in * m->out;
        float alpha = lorac_lora_module_alpha(m, p->rslora);
        k->r_min = k->count && k->r_min < m->r ? k->r_min : m->r;
        k->r_max = k->count && k->r_max > m->r ? k->r_max : m->r;
        k->count += !m->in_group;
        k->n_params += np;
        k->n_dense += nd;
        rp->n_params += np;
        rp->n_dense += nd;
        rp->r_min = i && rp->r_min < m->r ? rp->r_min : m->r;
        rp->r_max = i && rp->r_max > m->r ? rp->r_max : m->r;
        rp->alpha_min = i && rp->alpha_min < alpha ? rp->alpha_min : alpha;
        rp->alpha_max = i && rp->alpha_max > alpha ? rp->alpha_max : alpha;
        rp->scale_min = i && rp->scale_min < m->scale ? rp->scale_min : m->scale;
        rp->scale_max = i && rp->scale_max > m->scale ? rp->scale_max : m->scale;
        if (!rp->have_model && m->layer + 1 > rp->n_layers) rp->n_layers = m->layer + 1;
        rp->sv[i] = malloc(sizeof(double) * (size_t)m->r);
        if (!rp->sv[i]) cli_die("out of memory");
        cli_check(lorac_lowrank_singular_values(m->B, m->A, m->out, m->r, m->in, m->scale, rp->sv[i]));
        rp->eff_rank[i] = effective_rank(rp->sv[i], m->r);
    }
}

static void load_report(adapter_report_t *rp, const char *path, const char *model_dir) {
    memset(rp, 0, sizeof *rp);
    rp->path = path;
    if (model_dir) load_model_side(rp, model_dir);
    cli_check(lorac_adapter_load(path, rp->have_model ? &rp->mc : NULL, &rp->adapter));
    rp->gguf = lorac_gguf_is_file(path);
    struct stat st;
    if (rp->gguf) { /* no adapter_config.json: the file is everything */
        if (stat(path, &st) == 0) rp->file_bytes = (int64_t)st.st_size;
    } else {
        char *cfg_path = lorac_path_join(path, "adapter_config.json");
        char *st_path = lorac_path_join(path, "adapter_model.safetensors");
        if (!cfg_path || !st_path) cli_die("out of memory");
        size_t len;
        char *text = cli_read_file(cfg_path, &len);
        rp->cfg = cJSON_ParseWithLength(text, len); /* loaded above, so it parses */
        free(text);
        if (stat(st_path, &st) == 0) rp->file_bytes = (int64_t)st.st_size;
        free(cfg_path);
        free(st_path);
    }
    if (rp->have_model) rp->n_layers = rp->mc.n_layers;
    gather_stats(rp);
}

static void free_report(adapter_report_t *rp) {
    for (int32_t i = 0; rp->sv && i < lorac_adapter_n_modules(rp->adapter); i++) free(rp->sv[i]);
    free(rp->sv);
    free(rp->eff_rank);
    lorac_adapter_free(rp->adapter);
    cJSON_Delete(rp->cfg);
}

static const char *cfg_string(const adapter_report_t *rp, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(rp->cfg, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static void print_range_f(const char *what, float lo, float hi, const char *per) {
    if (lo == hi) printf("  %-14s %g\n", what, (double)lo);
    else printf("  %-14s %g..%g per module (%s)\n", what, (double)lo, (double)hi, per);
}

static void print_adapter_text(const adapter_report_t *rp) {
    const lorac_lora_params_t *p = lorac_adapter_params(rp->adapter);
    char buf[1024], b1[32], b2[32];
    printf("%s  (%s)\n", rp->path, rp->gguf ? "llama.cpp LoRA adapter, GGUF" : "PEFT LoRA adapter");
    if (*cfg_string(rp, "base_model_name_or_path")) printf("  base model     %s\n", cfg_string(rp, "base_model_name_or_path"));
    if (rp->have_model)
        printf("  fits the model (hidden %d, intermediate %d, %d layers, %d heads, %d kv heads)\n", rp->mc.hidden_size,
               rp->mc.intermediate_size, rp->mc.n_layers, rp->mc.n_heads, rp->mc.n_kv_heads);
    else
        printf("  sizes from the tensors (-m MODEL checks the adapter against a model)\n");
    size_t k = 0;
    buf[0] = '\0';
    for (int t = 0; t < LORAC_LORA_COUNT; t++)
        if (rp->kinds[t].count) k += (size_t)snprintf(buf + k, sizeof buf - k, "%s%s", k ? ", " : "", kind_name(rp, t));
    printf("  targets        %s\n", buf);
    layers_text(rp, buf, sizeof buf);
    printf("  layers         %s (of %d)\n", buf, rp->n_layers);
    if (rp->r_min == rp->r_max) printf("  r              %d\n", rp->r_min);
    else printf("  r              %d..%d per module (rank_pattern; default %d)\n", rp->r_min, rp->r_max, p->r);
    print_range_f("alpha", rp->alpha_min, rp->alpha_max, "alpha_pattern");
    printf("  scaling        %s", p->rslora ? "alpha/sqrt(r) (rsLoRA)" : "alpha/r");
    if (rp->scale_min == rp->scale_max) printf(" = %g\n", (double)rp->scale_min);
    else printf(" = %g..%g per module\n", (double)rp->scale_min, (double)rp->scale_max);
    printf("  modules        %d\n", peft_modules(rp));
    printf("  trainable parameters, r*(in+out) against in*out of the adapted matrices:\n");
    printf("    %-10s %6s %14s %14s %9s\n", "module", "count", "r*(in+out)", "in*out", "ratio");
    for (int t = 0; t < LORAC_LORA_COUNT; t++) {
        const kind_stats_t *ks = &rp->kinds[t];
        if (!ks->count) continue;
        printf("    %-10s %6d %14lld %14lld %8.3f%%", kind_name(rp, t), ks->count,
               (long long)ks->n_params, (long long)ks->n_dense, 100.0 * (double)ks->n_params / (double)ks->n_dense);
        if (ks->r_min == ks->r_max) printf("  (r=%d)\n", ks->r_min);
        else printf("  (r=%d..%d)\n", ks->r_min, ks->r_max);
    }
    printf("    %-10s %6d %14lld %14lld %8.3f%%\n", "total", peft_modules(rp), (long long)rp->n_params,
           (long long)rp->n_dense, 100.0 * (double)rp->n_params / (double)rp->n_dense);
    if (rp->have_model) {
        printf("  of the base    %.4f%% of its %lld parameters\n", 100.0 * (double)rp->n_params / (double)rp->base_params,
               (long long)rp->base_params);
        printf("  file size      %s (%s) vs %s of base weights (%.3f%%)\n", bytes_text(rp->file_bytes, b1, sizeof b1),
               rp->gguf ? "the GGUF file" : "adapter_model.safetensors", bytes_text(rp->base_bytes, b2, sizeof b2),
               100.0 * (double)rp->file_bytes / (double)rp->base_bytes);
    } else {
        printf("  file size      %s (adapter_model.safetensors)\n", bytes_text(rp->file_bytes, b1, sizeof b1));
    }
    printf("  per module, with the singular values sigma of s*B*A (effective rank: how many hold 99%% of sum sigma^2):\n");
    printf("    %-28s %5s %5s %5s %8s %8s %9s %10s %10s\n", "module", "in", "out", "r", "alpha", "scale", "eff.rank",
           "sigma_1", "sigma_r");
    for (int32_t i = 0; i < lorac_adapter_n_modules(rp->adapter); i++) {
        const lorac_lora_module_t *m = lorac_adapter_module(rp->adapter, i);
        module_label(rp, m, buf, sizeof buf);
        printf("    %-28s %5d %5d %5d %8g %8g %9d %10.4g %10.4g\n", buf, m->in, m->out, m->r,
               (double)lorac_lora_module_alpha(m, p->rslora), (double)m->scale, rp->eff_rank[i], rp->sv[i][0],
               rp->sv[i][m->r - 1]);
    }
}

static void print_adapter_json(const adapter_report_t *rp) {
    const lorac_lora_params_t *p = lorac_adapter_params(rp->adapter);
    cJSON *root = cJSON_CreateObject();
    char buf[1024];
    cJSON_AddStringToObject(root, "path", rp->path);
    cJSON_AddStringToObject(root, "kind", "lora_adapter");
    cJSON_AddStringToObject(root, "format", rp->gguf ? "gguf" : "peft");
    cJSON_AddStringToObject(root, "base_model_name_or_path", cfg_string(rp, "base_model_name_or_path"));
    cJSON_AddBoolToObject(root, "checked_against_model", rp->have_model);
    cJSON *targets = cJSON_AddArrayToObject(root, "targets");
    for (int t = 0; t < LORAC_LORA_COUNT; t++)
        if (rp->kinds[t].count) cJSON_AddItemToArray(targets, cJSON_CreateString(kind_name(rp, t)));
    layers_text(rp, buf, sizeof buf);
    cJSON_AddStringToObject(root, "layers", buf);
    cJSON_AddNumberToObject(root, "n_layers", rp->n_layers);
    cJSON_AddNumberToObject(root, "r", p->r);
    cJSON_AddNumberToObject(root, "r_min", rp->r_min);
    cJSON_AddNumberToObject(root, "r_max", rp->r_max);
    cJSON_AddNumberToObject(root, "lora_alpha", p->alpha);
    cJSON_AddBoolToObject(root, "use_rslora", p->rslora);
    cJSON_AddNumberToObject(root, "n_modules", peft_modules(rp));
    cJSON_AddNumberToObject(root, "n_params", (double)rp->n_params);
    cJSON_AddNumberToObject(root, "n_adapted_params", (double)rp->n_dense);
    cJSON_AddNumberToObject(root, "params_ratio", (double)rp->n_params / (double)rp->n_dense);
    cJSON_AddNumberToObject(root, "file_bytes", (double)rp->file_bytes);
    if (rp->have_model) {
        cJSON_AddNumberToObject(root, "base_params", (double)rp->base_params);
        cJSON_AddNumberToObject(root, "base_params_fraction", (double)rp->n_params / (double)rp->base_params);
        cJSON_AddNumberToObject(root, "base_weight_bytes", (double)rp->base_bytes);
    }
    cJSON *kinds = cJSON_AddObjectToObject(root, "module_kinds");
    for (int t = 0; t < LORAC_LORA_COUNT; t++) {
        const kind_stats_t *ks = &rp->kinds[t];
        if (!ks->count) continue;
        cJSON *o = cJSON_AddObjectToObject(kinds, kind_name(rp, t));
        cJSON_AddNumberToObject(o, "count", ks->count);
        cJSON_AddNumberToObject(o, "r_min", ks->r_min);
        cJSON_AddNumberToObject(o, "r_max", ks->r_max);
        cJSON_AddNumberToObject(o, "n_params", (double)ks->n_params);
        cJSON_AddNumberToObject(o, "n_adapted_params", (double)ks->n_dense);
    }
    cJSON *mods = cJSON_AddArrayToObject(root, "modules");
    for (int32_t i = 0; i < lorac_adapter_n_modules(rp->adapter); i++) {
        const lorac_lora_module_t *m = lorac_adapter_module(rp->adapter, i);
        cJSON *o = cJSON_CreateObject();
        module_label(rp, m, buf, sizeof buf);
        cJSON_AddStringToObject(o, "name", buf);
        cJSON_AddNumberToObject(o, "layer", m->layer);
        cJSON_AddStringToObject(o, "target", lorac_lora_target_name(m->target));
        cJSON_AddNumberToObject(o, "r", m->r);
        cJSON_AddNumberToObject(o, "alpha", lorac_lora_module_alpha(m, p->rslora));
        cJSON_AddNumberToObject(o, "scale", m->scale);
        cJSON_AddNumberToObject(o, "in", m->in);
        cJSON_AddNumberToObject(o, "out", m->out);
        cJSON_AddNumberToObject(o, "n_params", (double)m->r * (m->in + m->out));
        cJSON_AddNumberToObject(o, "effective_rank", rp->eff_rank[i]);
        cJSON_AddNumberToObject(o, "sigma_1", rp->sv[i][0]);
        cJSON_AddNumberToObject(o, "sigma_r", rp->sv[i][m->r - 1]);
        cJSON *sv = cJSON_AddArrayToObject(o, "singular_values");
        for (int32_t k = 0; k < m->r; k++) cJSON_AddItemToArray(sv, cJSON_CreateNumber(rp->sv[i][k]));
        cJSON_AddItemToArray(mods, o);
    }
    print_json(root);
}

static int inspect_adapter(const char *path, const char *model_dir, int json) {
    adapter_report_t rp;
    load_report(&rp, path, model_dir);
    if (json) print_adapter_json(&rp);
    else print_adapter_text(&rp);
    free_report(&rp);
    return 0;
}
