/* config.json parsing: the supported architectures and a table of malformed
 * inputs, each of which must fail with a message naming the problem. */
#include <string.h>

#include "lorac/model.h"
#include "testlib.h"

#define BASE "\"hidden_size\": 64, \"intermediate_size\": 172, \"num_hidden_layers\": 2, " \
             "\"num_attention_heads\": 8, \"vocab_size\": 512"

static void expect_ok(const char *json, lorac_model_config_t *c) {
    lorac_status_t s = lorac_model_config_parse(json, strlen(json), "config.json", c);
    CHECK_MSG(s == LORAC_STATUS_OK, "%s -> %s", json, lorac_error_message());
}

static void expect_fail(const char *json, lorac_status_t want, const char *substr) {
    lorac_model_config_t c;
    lorac_status_t s = lorac_model_config_parse(json, strlen(json), "config.json", &c);
    CHECK_MSG(s == want, "%s: status %d, want %d (%s)", json, s, want, lorac_error_message());
    CHECK_MSG(strstr(lorac_error_message(), substr) != NULL, "message '%s' lacks '%s'", lorac_error_message(), substr);
    CHECK_MSG(strstr(lorac_error_message(), "config.json") != NULL, "message '%s' lacks the file name", lorac_error_message());
}

int main(void) {
    lorac_model_config_t c;
    expect_ok("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"num_key_value_heads\": 4, "
              "\"rms_norm_eps\": 1e-5, \"tie_word_embeddings\": true, \"bos_token_id\": 1, \"eos_token_id\": 2}", &c);
    CHECK(c.arch == LORAC_ARCH_LLAMA && c.hidden_size == 64 && c.n_kv_heads == 4 && c.head_dim == 8);
    CHECK(c.tie_word_embeddings && !c.qkv_bias && c.bos_id == 1 && c.n_eos == 1 && c.eos_ids[0] == 2);
    CHECK_NEAR(c.rms_norm_eps, 1e-5, 1e-12);
    CHECK_NEAR(c.rope_theta, 10000.0, 0);

    expect_ok("{\"architectures\": [\"Qwen2ForCausalLM\"], " BASE ", \"rope_theta\": 1000000.0}", &c);
    CHECK(c.arch == LORAC_ARCH_QWEN2 && c.qkv_bias && !c.o_bias && c.n_kv_heads == 8);
    CHECK_NEAR(c.rope_theta, 1e6, 0);

    expect_ok("{\"architectures\": [\"MistralForCausalLM\"], " BASE ", \"head_dim\": 16, \"eos_token_id\": [2, 7]}", &c);
    CHECK(c.arch == LORAC_ARCH_MISTRAL && c.head_dim == 16 && c.n_eos == 2 && c.eos_ids[1] == 7);

    /* Qwen3: per-head q/k norms; head_dim 128 when the config omits it (Qwen3Config's default, not 64 / 8);
     * biases as attention_bias says, never in the MLP */
    expect_ok("{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE ", \"num_key_value_heads\": 2, \"mlp_bias\": true}", &c);
    CHECK(c.arch == LORAC_ARCH_QWEN3 && c.qk_norm && c.head_dim == 128 && !c.qkv_bias && !c.o_bias && !c.mlp_bias);
    expect_ok("{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE ", \"head_dim\": 16, \"attention_bias\": true}", &c);
    CHECK(c.qk_norm && c.head_dim == 16 && c.qkv_bias && c.o_bias);
    expect_ok("{\"architectures\": [\"Qwen2ForCausalLM\"], " BASE "}", &c);
    CHECK(!c.qk_norm && c.head_dim == 8);
    for (int32_t l = 0; l < c.n_layers; l++) CHECK(lorac_model_layer_has_rope(&c, l));

    /* SmolLM3: NoPE layers every no_rope_layer_interval-th layer (default 4), or as no_rope_layers lists them;
     * rope_theta 2e6 when absent (SmolLM3Config's default) */
    expect_ok("{\"architectures\": [\"SmolLM3ForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 172, "
              "\"num_hidden_layers\": 130, \"num_attention_heads\": 8, \"vocab_size\": 512}", &c);
    CHECK(c.arch == LORAC_ARCH_SMOLLM3 && !c.qk_norm && !c.qkv_bias);
    CHECK_NEAR(c.rope_theta, 2e6, 0);
    int n_nope = 0;
    for (int32_t l = 0; l < c.n_layers; l++) {
        n_nope += !lorac_model_layer_has_rope(&c, l);
        CHECK_MSG(lorac_model_layer_has_rope(&c, l) == ((l + 1) % 4 != 0), "layer %d", l);
    }
    CHECK(n_nope == 32); /* layers 3, 7, ..., 127: the bits past the first word too */
    expect_ok("{\"architectures\": [\"SmolLM3ForCausalLM\"], " BASE ", \"no_rope_layer_interval\": 1, \"rope_theta\": 5e6}", &c);
    CHECK(!lorac_model_layer_has_rope(&c, 0) && !lorac_model_layer_has_rope(&c, 1));
    CHECK_NEAR(c.rope_theta, 5e6, 0);
    expect_ok("{\"architectures\": [\"SmolLM3ForCausalLM\"], " BASE ", \"no_rope_layers\": [0, 1], \"no_rope_layer_interval\": 1}", &c);
    CHECK(!lorac_model_layer_has_rope(&c, 0) && lorac_model_layer_has_rope(&c, 1));
    expect_ok("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"no_rope_layers\": [0, 0]}", &c);
    CHECK(lorac_model_layer_has_rope(&c, 0) && lorac_model_layer_has_rope(&c, 1)); /* only SmolLM3 reads it */

    /* Sliding windows, as transformers decides (see parse_sliding_window) */
    expect_ok("{\"architectures\": [\"MistralForCausalLM\"], " BASE "}", &c); /* MistralConfig's default 4096 */
    CHECK(c.sliding_window == 4096 && lorac_model_layer_window(&c, 0) == 4096 && lorac_model_layer_window(&c, 1) == 4096);
    expect_ok("{\"architectures\": [\"MistralForCausalLM\"], " BASE ", \"sliding_window\": null}", &c); /* v0.2, v0.3 */
    CHECK(c.sliding_window == 0 && lorac_model_layer_window(&c, 0) == 0 && lorac_model_layer_window(&c, 1) == 0);
    expect_ok("{\"architectures\": [\"Qwen2ForCausalLM\"], " BASE ", \"sliding_window\": 32768, "
              "\"use_sliding_window\": false, \"max_window_layers\": 0}", &c); /* as the Qwen2.5 configs ship */
    CHECK(c.sliding_window == 0 && lorac_model_layer_window(&c, 0) == 0 && lorac_model_layer_window(&c, 1) == 0);
    expect_ok("{\"architectures\": [\"Qwen2ForCausalLM\"], " BASE ", \"sliding_window\": 64, "
              "\"use_sliding_window\": true, \"max_window_layers\": 1}", &c);
    CHECK(c.sliding_window == 64 && lorac_model_layer_window(&c, 0) == 0 && lorac_model_layer_window(&c, 1) == 64);
    expect_ok("{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE ", \"sliding_window\": 64, "
              "\"use_sliding_window\": true}", &c); /* max_window_layers 28 by default: none of 2 */
    CHECK(c.sliding_window == 0 && lorac_model_layer_window(&c, 1) == 0);
    expect_ok("{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE ", \"sliding_window\": 64, \"use_sliding_window\": true, "
              "\"max_window_layers\": 2, \"layer_types\": [\"sliding_attention\", \"full_attention\"]}", &c);
    CHECK(c.sliding_window == 64 && lorac_model_layer_window(&c, 0) == 64 && lorac_model_layer_window(&c, 1) == 0);
    expect_ok("{\"architectures\": [\"SmolLM3ForCausalLM\"], " BASE ", \"sliding_window\": 9, \"use_sliding_window\": true, "
              "\"no_rope_layers\": [1, 0]}", &c); /* the NoPE layers */
    CHECK(c.sliding_window == 9 && lorac_model_layer_window(&c, 0) == 0 && lorac_model_layer_window(&c, 1) == 9);
    expect_ok("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"sliding_window\": 9, \"use_sliding_window\": true, "
              "\"layer_types\": [\"sliding_attention\", \"sliding_attention\"]}", &c); /* LlamaConfig has none */
    CHECK(c.sliding_window == 0 && lorac_model_layer_window(&c, 0) == 0);
    expect_fail("{\"architectures\": [\"Qwen2ForCausalLM\"], " BASE ", \"sliding_window\": 64, "
                "\"layer_types\": [\"sliding_attention\", \"full_attention\"]}",
                LORAC_STATUS_FORMAT, "sets no sliding window");
    expect_fail("{\"architectures\": [\"MistralForCausalLM\"], " BASE ", \"layer_types\": [\"full_attention\"]}",
                LORAC_STATUS_FORMAT, "\"layer_types\" must be a list of 2 entries");
    expect_fail("{\"architectures\": [\"MistralForCausalLM\"], " BASE ", \"layer_types\": [\"full_attention\", 3]}",
                LORAC_STATUS_FORMAT, "\"layer_types\"[1] must be a string");
    expect_fail("{\"architectures\": [\"MistralForCausalLM\"], " BASE ", \"layer_types\": [\"chunked_attention\", "
                "\"full_attention\"]}", LORAC_STATUS_UNSUPPORTED, "\"chunked_attention\" is not supported");
    expect_fail("{\"architectures\": [\"MistralForCausalLM\"], " BASE ", \"sliding_window\": 0}",
                LORAC_STATUS_FORMAT, "\"sliding_window\" = 0 is outside");
    expect_fail("{\"architectures\": [\"Qwen2ForCausalLM\"], " BASE ", \"use_sliding_window\": 1}",
                LORAC_STATUS_FORMAT, "\"use_sliding_window\" must be true or false");

    expect_ok("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"attention_bias\": true, \"mlp_bias\": true, "
              "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 32.0, \"low_freq_factor\": 1.0, "
              "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}}", &c);
    CHECK(c.qkv_bias && c.o_bias && c.mlp_bias && c.rope_llama3 && c.rope_original_max_position == 8192);
    CHECK_NEAR(c.rope_factor, 32.0, 0);

    /* transformers 5: rope_theta and the scaling in "rope_parameters" */
    expect_ok("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rope_parameters\": {\"rope_type\": \"default\", "
              "\"rope_theta\": 500000.0}}", &c);
    CHECK(!c.rope_llama3);
    CHECK_NEAR(c.rope_theta, 5e5, 0);
    expect_ok("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rope_parameters\": {\"rope_type\": \"llama3\", "
              "\"rope_theta\": 500000.0, \"factor\": 32.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
              "\"original_max_position_embeddings\": 8192}}", &c);
    CHECK(c.rope_llama3 && c.rope_original_max_position == 8192);
    CHECK_NEAR(c.rope_factor, 32.0, 0);
    CHECK_NEAR(c.rope_theta, 5e5, 0);
    expect_ok("{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE ", \"rope_parameters\": {\"rope_theta\": 1000000}}", &c);
    CHECK_NEAR(c.rope_theta, 1e6, 0);
    /* rope_parameters wins over a stale top-level rope_theta */
    expect_ok("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rope_theta\": 10000.0, \"rope_parameters\": "
              "{\"rope_type\": \"default\", \"rope_theta\": 1000000.0}}", &c);
    CHECK_NEAR(c.rope_theta, 1e6, 0);
    expect_ok("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rope_theta\": 20000.0, \"rope_parameters\": null}", &c);
    CHECK_NEAR(c.rope_theta, 2e4, 0);

    /* Granite: the four multipliers, attention_multiplier applied as q times it times sqrt(head_dim) */
    expect_ok("{\"architectures\": [\"GraniteForCausalLM\"], " BASE ", \"embedding_multiplier\": 12.0, "
              "\"residual_multiplier\": 0.22, \"attention_multiplier\": 0.015625, \"logits_scaling\": 8.0, "
              "\"attention_bias\": true}", &c);
    CHECK(c.arch == LORAC_ARCH_GRANITE && c.qkv_bias && c.o_bias && !c.qk_norm);
    CHECK_NEAR(c.embedding_multiplier, 12.0, 0);
    CHECK_NEAR(c.residual_multiplier, 0.22, 1e-7);
    CHECK_NEAR(c.logits_scaling, 8.0, 0);
    CHECK_NEAR(c.query_scale, 0.015625 * sqrt(8.0), 1e-7);
    expect_ok("{\"architectures\": [\"GraniteForCausalLM\"], " BASE "}", &c); /* GraniteConfig's defaults: 1 */
    CHECK(c.embedding_multiplier == 1.0f && c.residual_multiplier == 1.0f && c.logits_scaling == 1.0f);
    CHECK_NEAR(c.query_scale, sqrt(8.0), 1e-6);
    expect_ok("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"embedding_multiplier\": 12.0}", &c);
    CHECK(c.embedding_multiplier == 1.0f && c.query_scale == 1.0f); /* only Granite reads them */

    /* malformed */
    expect_fail("{\"architectures\": [\"GraniteForCausalLM\"], " BASE ", \"logits_scaling\": 0}", LORAC_STATUS_FORMAT,
                "logits_scaling");
    expect_fail("{\"architectures\": [\"GraniteForCausalLM\"], " BASE ", \"residual_multiplier\": \"x\"}",
                LORAC_STATUS_FORMAT, "residual_multiplier");
    expect_fail("{\"architectures\": [\"SmolLM3ForCausalLM\"], " BASE ", \"no_rope_layers\": [1]}", LORAC_STATUS_FORMAT,
                "\"no_rope_layers\" must be a list of 2 entries");
    expect_fail("{\"architectures\": [\"SmolLM3ForCausalLM\"], " BASE ", \"no_rope_layers\": [1, 2]}", LORAC_STATUS_FORMAT,
                "\"no_rope_layers\"[1] must be 0 or 1");
    expect_fail("{\"architectures\": [\"SmolLM3ForCausalLM\"], " BASE ", \"no_rope_layers\": \"1,0\"}", LORAC_STATUS_FORMAT,
                "no_rope_layers");
    expect_fail("{\"architectures\": [\"SmolLM3ForCausalLM\"], " BASE ", \"no_rope_layer_interval\": 0}", LORAC_STATUS_FORMAT,
                "no_rope_layer_interval");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rope_parameters\": [1]}", LORAC_STATUS_FORMAT,
                "\"rope_parameters\" must be an object");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rope_parameters\": {\"rope_type\": \"yarn\", "
                "\"rope_theta\": 1e6, \"factor\": 4.0}}", LORAC_STATUS_UNSUPPORTED, "rope_parameters type \"yarn\"");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rope_parameters\": {\"rope_type\": \"default\", "
                "\"rope_theta\": \"big\"}}", LORAC_STATUS_FORMAT, "rope_theta");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rope_parameters\": {\"full_attention\": "
                "{\"rope_type\": \"default\", \"rope_theta\": 1e6}}}", LORAC_STATUS_UNSUPPORTED, "per layer type");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rope_parameters\": {\"factor\": 4.0}}",
                LORAC_STATUS_FORMAT, "no \"rope_type\"");
    /* Gemma 3 (Gemma3TextConfig's defaults: head_dim 256, rope_theta 1e6, local base 1e4, window 4096 on every
     * layer but each 6th, tied, query_pre_attn_scalar 256); 5.x's per-layer-type rope_parameters */
    expect_ok("{\"architectures\": [\"Gemma3ForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 172, "
              "\"num_hidden_layers\": 7, \"num_attention_heads\": 4, \"num_key_value_heads\": 1, \"vocab_size\": 512, "
              "\"hidden_activation\": \"gelu_pytorch_tanh\", \"attn_logit_softcapping\": null}", &c);
    CHECK(c.arch == LORAC_ARCH_GEMMA3 && c.head_dim == 256 && c.qk_norm && c.sandwich_norms && c.tie_word_embeddings);
    CHECK(c.act == LORAC_ACT_GELU_TANH && !c.qkv_bias && !c.mlp_bias && c.rope_linear_factor == 1.0f);
    CHECK_NEAR(c.norm_offset, 1.0, 0);
    CHECK_NEAR(c.rope_theta, 1e6, 0);
    CHECK_NEAR(c.rope_local_theta, 1e4, 0);
    CHECK_NEAR(c.query_scale, 1.0, 0); /* 256^-1/2 is head_dim^-1/2 */
    CHECK_NEAR(c.embedding_multiplier, 8.0, 0);
    CHECK(c.sliding_window == 4096);
    for (int32_t l = 0; l < 7; l++) CHECK_MSG((lorac_model_layer_window(&c, l) != 0) == (l != 5), "layer %d", l);
    expect_ok("{\"architectures\": [\"Gemma3ForCausalLM\"], " BASE ", \"head_dim\": 16, \"query_pre_attn_scalar\": 64, "
              "\"sliding_window\": 512, \"sliding_window_pattern\": 2, \"rope_local_base_freq\": 5000, "
              "\"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 8.0}, \"tie_word_embeddings\": false}", &c);
    CHECK(c.sliding_window == 512 && lorac_model_layer_window(&c, 0) == 512 && lorac_model_layer_window(&c, 1) == 0);
    CHECK(!c.tie_word_embeddings);
    CHECK_NEAR(c.query_scale, 0.5, 0); /* scores times 64^-1/2 = 16^-1/2 / 2 */
    CHECK_NEAR(c.rope_linear_factor, 8.0, 0);
    CHECK_NEAR(c.rope_local_theta, 5000, 0);
    expect_ok("{\"architectures\": [\"Gemma3ForCausalLM\"], " BASE ", \"rope_parameters\": {\"full_attention\": "
              "{\"rope_type\": \"linear\", \"factor\": 8.0, \"rope_theta\": 2e6}, \"sliding_attention\": "
              "{\"rope_type\": \"default\", \"rope_theta\": 2e4}}}", &c);
    CHECK_NEAR(c.rope_theta, 2e6, 0);
    CHECK_NEAR(c.rope_linear_factor, 8.0, 0);
    CHECK_NEAR(c.rope_local_theta, 2e4, 0);
    expect_ok("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rope_scaling\": {\"type\": \"linear\", "
              "\"factor\": 2.0}}", &c); /* linear scaling is not Gemma's alone */
    CHECK_NEAR(c.rope_linear_factor, 2.0, 0);
    CHECK(c.norm_offset == 0.0f && !c.sandwich_norms && c.act == LORAC_ACT_SILU && c.rope_local_theta == 0.0f);
    CHECK(c.attn_softcap == 0.0f && c.final_softcap == 0.0f); /* Gemma 3 has none unless its config says */
    expect_ok("{\"architectures\": [\"Gemma3ForCausalLM\"], " BASE ", \"final_logit_softcapping\": 30.0}", &c);
    CHECK(c.attn_softcap == 0.0f && c.final_softcap == 30.0f);
    /* Gemma3ForConditionalGeneration (gemma-3-4b-it's config.json): the text model's fields in text_config over
     * Gemma3TextConfig's defaults, the top level's eos ids and dtype */
    expect_ok("{\"architectures\": [\"Gemma3ForConditionalGeneration\"], \"boi_token_index\": 255999, "
              "\"eos_token_id\": [1, 106], \"model_type\": \"gemma3\", \"text_config\": {\"hidden_size\": 2560, "
              "\"intermediate_size\": 10240, \"model_type\": \"gemma3_text\", \"num_hidden_layers\": 34, "
              "\"rope_scaling\": {\"factor\": 8.0, \"rope_type\": \"linear\"}, \"sliding_window\": 1024}, "
              "\"torch_dtype\": \"bfloat16\", \"vision_config\": {\"hidden_size\": 1152, \"num_hidden_layers\": 27}}", &c);
    CHECK(c.arch == LORAC_ARCH_GEMMA3 && c.text_of_multimodal && !strcmp(c.arch_name, "Gemma3ForConditionalGeneration"));
    CHECK(c.hidden_size == 2560 && c.intermediate_size == 10240 && c.n_layers == 34 && c.vocab_size == 262208);
    CHECK(c.n_heads == 8 && c.n_kv_heads == 4 && c.head_dim == 256 && c.max_position_embeddings == 131072);
    CHECK(c.tie_word_embeddings && c.bos_id == 2 && c.n_eos == 2 && c.eos_ids[0] == 1 && c.eos_ids[1] == 106);
    CHECK(c.sliding_window == 1024 && lorac_model_layer_window(&c, 0) && !lorac_model_layer_window(&c, 5));
    CHECK(!strcmp(c.module_prefix, "model.language_model") && !strcmp(c.tensor_prefix, "language_model.model"));
    CHECK(!strcmp(c.torch_dtype, "bfloat16"));
    CHECK_NEAR(c.rope_linear_factor, 8.0, 0);
    CHECK_NEAR(c.rope_theta, 1e6, 0);
    CHECK_NEAR(c.query_scale, 1.0, 0);
    /* the text model's own eos and bos without top-level ones; a text model's prefixes are "model" */
    expect_ok("{\"architectures\": [\"Gemma3ForConditionalGeneration\"], \"text_config\": {" BASE
              ", \"eos_token_id\": 7, \"bos_token_id\": 3}}", &c);
    CHECK(c.n_eos == 1 && c.eos_ids[0] == 7 && c.bos_id == 3 && c.vocab_size == 512 && c.n_kv_heads == 4);
    expect_ok("{\"architectures\": [\"Gemma3ForCausalLM\"], " BASE "}", &c);
    CHECK(!c.text_of_multimodal && !strcmp(c.module_prefix, "model") && !strcmp(c.tensor_prefix, "model"));
    CHECK(c.n_eos == 1 && c.eos_ids[0] == 1 && c.bos_id == 2); /* Gemma3TextConfig's */
    expect_fail("{\"architectures\": [\"Gemma3ForConditionalGeneration\"], " BASE "}", LORAC_STATUS_FORMAT,
                "needs a \"text_config\" object");
    expect_fail("{\"architectures\": [\"Gemma3ForConditionalGeneration\"], \"text_config\": [1]}", LORAC_STATUS_FORMAT,
                "text_config");
    expect_fail("{\"architectures\": [\"Gemma3ForConditionalGeneration\"], \"text_config\": {\"num_attention_heads\": 6}}",
                LORAC_STATUS_FORMAT, "multiple of num_key_value_heads");
    /* Phi-3 (Phi3Config's defaults: eps 1e-5, bos 1, eos 32000, no window, whole-head rotary; Phi-3.5-mini's
     * longrope: the attention factor sqrt(1 + ln 32 / ln 4096) from 131072 / 4096) */
    expect_ok("{\"architectures\": [\"Phi3ForCausalLM\"], " BASE ", \"num_key_value_heads\": 8}", &c);
    CHECK(c.arch == LORAC_ARCH_PHI3 && c.fused_proj && c.rotary_dim == 8 && !c.rope_longrope && c.sliding_window == 0);
    CHECK(c.bos_id == 1 && c.n_eos == 1 && c.eos_ids[0] == 32000 && !c.qkv_bias && !c.tie_word_embeddings);
    CHECK_NEAR(c.rms_norm_eps, 1e-5, 1e-12);
    expect_ok("{\"architectures\": [\"Phi3ForCausalLM\"], \"hidden_size\": 3072, \"intermediate_size\": 8192, "
              "\"num_hidden_layers\": 32, \"num_attention_heads\": 32, \"num_key_value_heads\": 32, \"vocab_size\": 32064, "
              "\"max_position_embeddings\": 131072, \"original_max_position_embeddings\": 4096, \"sliding_window\": 262144, "
              "\"rope_scaling\": {\"type\": \"longrope\", \"short_factor\": [" /* 48 factors */
              "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1.5], "
              "\"long_factor\": [2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,"
              "40]}, \"eos_token_id\": 32000}", &c);
    CHECK(c.rope_longrope && c.rotary_dim == 96 && c.rope_original_max_position == 4096 && c.sliding_window == 262144);
    CHECK(c.rope_short_factor[47] == 1.5f && c.rope_long_factor[0] == 2.0f && c.rope_long_factor[47] == 40.0f);
    CHECK_NEAR(c.rope_attention_factor, 1.1902380714238083, 1e-6);
    CHECK(lorac_model_rope_long(&c, 4096) == 0 && lorac_model_rope_long(&c, 4097) == 1);
    /* Phi-4-mini's kind: rotary on 3/4 of each head, an explicit attention_factor, transformers 5's rope_parameters */
    expect_ok("{\"architectures\": [\"Phi3ForCausalLM\"], " BASE ", \"head_dim\": 16, \"partial_rotary_factor\": 0.75, "
              "\"rope_parameters\": {\"rope_type\": \"longrope\", \"rope_theta\": 250000, \"short_factor\": [1,2,3,4,5,6], "
              "\"long_factor\": [6,5,4,3,2,1], \"attention_factor\": 1.25}}", &c);
    CHECK(c.rotary_dim == 12 && c.rope_longrope && c.rope_short_factor[5] == 6.0f && c.rope_original_max_position == 4096);
    CHECK_NEAR(c.rope_attention_factor, 1.25, 0);
    CHECK_NEAR(c.rope_theta, 250000, 0);
    expect_fail("{\"architectures\": [\"Phi3ForCausalLM\"], " BASE ", \"rope_scaling\": {\"type\": \"longrope\", "
                "\"short_factor\": [1, 1, 1], \"long_factor\": [1, 1, 1, 1]}}", LORAC_STATUS_FORMAT,
                "\"short_factor\" must be a list of 4 numbers");
    expect_fail("{\"architectures\": [\"Phi3ForCausalLM\"], " BASE ", \"rope_scaling\": {\"type\": \"su\", "
                "\"short_factor\": [1, 1, 1, 1], \"long_factor\": [1, 0, 1, 1]}}", LORAC_STATUS_FORMAT,
                "\"long_factor\"[1] must be a positive number");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rope_scaling\": {\"type\": \"longrope\", "
                "\"short_factor\": [1, 1, 1, 1], \"long_factor\": [1, 1, 1, 1]}}", LORAC_STATUS_UNSUPPORTED,
                "type \"longrope\" is not supported");
    expect_fail("{\"architectures\": [\"Phi3ForCausalLM\"], " BASE ", \"partial_rotary_factor\": 0.4}",
                LORAC_STATUS_FORMAT, "odd or empty rotary width");
    expect_fail("{\"architectures\": [\"Phi3ForCausalLM\"], " BASE ", \"hidden_act\": \"gelu\"}",
                LORAC_STATUS_UNSUPPORTED, "hidden_act \"gelu\"");
    expect_fail("{\"architectures\": [\"Phi3ForCausalLM\"], " BASE ", \"rope_scaling\": {\"type\": \"yarn\", "
                "\"factor\": 4}}", LORAC_STATUS_UNSUPPORTED, "\"longrope\"");
    /* Gemma 2 (Gemma2Config's defaults: caps 50 and 30, head_dim 256, every other layer windowed from layer 0,
     * no q/k norms, one rotary base) */
    expect_ok("{\"architectures\": [\"Gemma2ForCausalLM\"], \"hidden_size\": 64, \"intermediate_size\": 172, "
              "\"num_hidden_layers\": 5, \"num_attention_heads\": 4, \"vocab_size\": 512}", &c);
    CHECK(c.arch == LORAC_ARCH_GEMMA2 && c.head_dim == 256 && !c.qk_norm && c.sandwich_norms && c.tie_word_embeddings);
    CHECK(c.act == LORAC_ACT_GELU_TANH && c.rope_local_theta == 0.0f && c.sliding_window == 4096);
    CHECK(c.attn_softcap == 50.0f && c.final_softcap == 30.0f && c.norm_offset == 1.0f);
    CHECK_NEAR(c.rope_theta, 10000.0, 0);
    for (int32_t l = 0; l < 5; l++) CHECK_MSG((lorac_model_layer_window(&c, l) != 0) == (l % 2 == 0), "layer %d", l);
    expect_ok("{\"architectures\": [\"Gemma2ForCausalLM\"], " BASE ", \"attn_logit_softcapping\": null, "
              "\"final_logit_softcapping\": 5.5, \"sliding_window\": null}", &c);
    CHECK(c.attn_softcap == 0.0f && c.final_softcap == 5.5f && c.sliding_window == 0);
    expect_fail("{\"architectures\": [\"Gemma2ForCausalLM\"], " BASE ", \"attn_logit_softcapping\": -50}",
                LORAC_STATUS_FORMAT, "attn_logit_softcapping");
    expect_fail("{\"architectures\": [\"Gemma2ForCausalLM\"], " BASE ", \"final_logit_softcapping\": \"30\"}",
                LORAC_STATUS_FORMAT, "final_logit_softcapping");
    expect_fail("{\"architectures\": [\"Gemma3ForCausalLM\"], " BASE ", \"hidden_activation\": \"gelu\"}",
                LORAC_STATUS_UNSUPPORTED, "hidden_activation \"gelu\" is not supported");
    expect_fail("{\"architectures\": [\"Gemma3ForCausalLM\"], " BASE ", \"rope_parameters\": {\"full_attention\": "
                "{\"rope_type\": \"default\"}, \"sliding_attention\": {\"rope_type\": \"linear\", \"factor\": 2}}}",
                LORAC_STATUS_UNSUPPORTED, "rope_parameters.sliding_attention type \"linear\"");
    expect_fail("{\"architectures\": [\"Gemma3ForCausalLM\"], " BASE ", \"query_pre_attn_scalar\": -1}",
                LORAC_STATUS_FORMAT, "query_pre_attn_scalar");
    expect_fail("{\"architectures\": [\"Gemma3ForCausalLM\"], " BASE ", \"sliding_window_pattern\": 0}",
                LORAC_STATUS_FORMAT, "sliding_window_pattern");
    /* GPT-2 (GPT2Config's names, and its defaults, the 124M model's, for what is left out) */
    expect_ok("{\"architectures\": [\"GPT2LMHeadModel\"]}", &c);
    CHECK(c.arch == LORAC_ARCH_GPT2 && c.hidden_size == 768 && c.n_layers == 12 && c.n_heads == 12 && c.n_kv_heads == 12);
    CHECK(c.head_dim == 64 && c.intermediate_size == 3072 && c.vocab_size == 50257 && c.max_position_embeddings == 1024);
    CHECK(c.layer_norm && c.learned_positions && c.plain_mlp && c.fused_qkv && c.qkv_bias && c.o_bias && c.mlp_bias);
    CHECK(c.rotary_dim == 0 && !lorac_model_layer_has_rope(&c, 0) && c.tie_word_embeddings && c.query_scale == 1.0f);
    CHECK(c.bos_id == 50256 && c.n_eos == 1 && c.eos_ids[0] == 50256 && strcmp(c.tensor_prefix, "transformer") == 0);
    CHECK_NEAR(c.rms_norm_eps, 1e-5, 1e-12);
    expect_ok("{\"architectures\": [\"GPT2LMHeadModel\"], \"n_embd\": 48, \"n_head\": 3, \"n_layer\": 2, "
              "\"n_inner\": 100, \"n_positions\": 32, \"layer_norm_epsilon\": 1e-3, \"scale_attn_weights\": false, "
              "\"tie_word_embeddings\": false, \"activation_function\": \"gelu_pytorch_tanh\"}", &c);
    CHECK(c.head_dim == 16 && c.intermediate_size == 100 && c.max_position_embeddings == 32 && !c.tie_word_embeddings);
    CHECK_NEAR(c.query_scale, 4.0, 1e-6); /* unscaled scores: q times sqrt(head_dim) undoes the kernels' scale */
    CHECK(!c.attn_scale_by_layer && lorac_model_layer_query_scale(&c, 1) == c.query_scale);
    expect_ok("{\"architectures\": [\"GPT2LMHeadModel\"], \"scale_attn_by_inverse_layer_idx\": true}", &c);
    CHECK(c.attn_scale_by_layer && lorac_model_layer_query_scale(&c, 0) == 1.0f && lorac_model_layer_query_scale(&c, 3) == 0.25f);
    expect_fail("{\"architectures\": [\"GPT2LMHeadModel\"], \"n_embd\": 50, \"n_head\": 3}", LORAC_STATUS_FORMAT,
                "must be a multiple of n_head");
    expect_fail("{\"architectures\": [\"GPT2LMHeadModel\"], \"activation_function\": \"gelu\"}",
                LORAC_STATUS_UNSUPPORTED, "activation_function \"gelu\"");
    expect_fail("{\"architectures\": [\"GPT2LMHeadModel\"], \"add_cross_attention\": true}", LORAC_STATUS_UNSUPPORTED,
                "add_cross_attention");
    expect_fail("{\"architectures\": [\"GPT2LMHeadModel\"], \"n_positions\": 0}", LORAC_STATUS_FORMAT, "n_positions");
    expect_fail("{\"architectures\": [\"GPT2LMHeadModel\"], \"n_inner\": \"big\"}", LORAC_STATUS_FORMAT, "n_inner");
    expect_fail("", LORAC_STATUS_FORMAT, "not valid JSON");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], ", LORAC_STATUS_FORMAT, "not valid JSON");
    expect_fail("[1, 2]", LORAC_STATUS_FORMAT, "not a JSON object");
    expect_fail("{" BASE "}", LORAC_STATUS_FORMAT, "architectures");
    expect_fail("{\"architectures\": [\"FalconForCausalLM\"], " BASE "}", LORAC_STATUS_UNSUPPORTED, "FalconForCausalLM");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64}", LORAC_STATUS_FORMAT, "missing field \"vocab_size\"");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"num_key_value_heads\": 3}", LORAC_STATUS_FORMAT, "multiple");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": -64, \"intermediate_size\": 172, "
                "\"num_hidden_layers\": 2, \"num_attention_heads\": 8, \"vocab_size\": 512}", LORAC_STATUS_FORMAT, "hidden_size");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64.5, \"intermediate_size\": 172, "
                "\"num_hidden_layers\": 2, \"num_attention_heads\": 8, \"vocab_size\": 512}", LORAC_STATUS_FORMAT, "integer");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": \"64\", \"intermediate_size\": 172, "
                "\"num_hidden_layers\": 2, \"num_attention_heads\": 8, \"vocab_size\": 512}", LORAC_STATUS_FORMAT, "integer");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 1e300, \"intermediate_size\": 172, "
                "\"num_hidden_layers\": 2, \"num_attention_heads\": 8, \"vocab_size\": 512}", LORAC_STATUS_FORMAT, "outside");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"head_dim\": 7}", LORAC_STATUS_FORMAT, "head_dim");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rms_norm_eps\": -1}", LORAC_STATUS_FORMAT, "rms_norm_eps");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"tie_word_embeddings\": 1}", LORAC_STATUS_FORMAT, "true or false");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"eos_token_id\": [-1]}", LORAC_STATUS_FORMAT, "eos_token_id");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rope_scaling\": {\"rope_type\": \"yarn\"}}",
                LORAC_STATUS_UNSUPPORTED, "yarn");
    expect_fail("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rope_scaling\": 3}", LORAC_STATUS_FORMAT, "rope_scaling");
    return tl_finish("test_model_config");
}
