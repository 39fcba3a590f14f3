"""Independent PyTorch reference for lorac's LLaMA-family forward pass.

What is here, all in plain Python + numpy + torch (no transformers, no
safetensors package):

  * save_safetensors / load_safetensors: a minimal safetensors writer and a
    strict reader (F32, F16, BF16).
  * make_random_model: writes a HuggingFace model directory (config.json with
    LlamaConfig field names + model.safetensors with HF tensor names) holding a
    random tiny Llama / Mistral / Qwen2 / Qwen3 / SmolLM3 / Granite / Gemma 3 model.
  * llama_forward: the forward pass of HF LlamaForCausalLM (and Mistral and
    Qwen2, which are the same computation, and Qwen3, which adds an RMSNorm
    over each head of q and of k before rotary, as modeling_qwen3.py's
    q_norm / k_norm, and SmolLM3, which leaves rotary out of its NoPE
    layers, as modeling_smollm3.py's use_rope, and Granite, whose
    embedding_multiplier, residual_multiplier, attention_multiplier and
    logits_scaling scale the embedding, each block's output, the attention
    scores and the logits, as modeling_granite.py does, and Gemma 3's text
    model, modeling_gemma3.py: RMSNorms by (1 + w), the embedding times
    sqrt(hidden_size) in its dtype, q/k norms, scores times
    query_pre_attn_scalar^-1/2, each block's output normalised before the
    residual add, gelu_pytorch_tanh, windowed layers every but each
    sliding_window_pattern-th with rope_local_base_freq) in float64, from the
    stored weight values (BF16/F16 values are upcast exactly), returning
    logits [T, V].

It follows transformers' modeling_llama.py semantics: RMSNorm
x * rsqrt(mean(x^2) + eps) * w, rotary embeddings in the rotate-half layout
with inv_freq = 1 / theta^(2i/d) (Llama-3 rope_scaling applied to inv_freq as
_compute_llama3_parameters does), grouped-query attention (kv head h // (H/KV)
serves query head h, as repeat_kv does), causal softmax attention scaled by
1/sqrt(head_dim), SwiGLU MLP down(silu(gate(x)) * up(x)), final norm, lm_head
(or the embedding when tied).

Differences from HF that are deliberate: everything is computed in float64
(HF computes in the model dtype, and inv_freq / the rotary angles in float32).
tests/reference/selfcheck.py checks this against a second, loop-based
implementation and measures the float32-rotary difference.

Used by tests/test_logits_parity.py, tests/test_reference_selfcheck.py and
bench/torch_generate.py.
"""

import json
import math
import os
import struct

import numpy as np
import torch

# ---------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------

# safetensors dtype name -> (torch dtype, numpy dtype of the raw little-endian
# storage, bytes per element). BF16 has no numpy dtype: its bits travel as int16.
ST_DTYPES = {
    "F32": (torch.float32, np.dtype("<f4"), 4),
    "F16": (torch.float16, np.dtype("<f2"), 2),
    "BF16": (torch.bfloat16, np.dtype("<i2"), 2),
    "U8": (torch.uint8, np.dtype("u1"), 1),  # a bitsandbytes checkpoint's codes and states
}
TORCH_TO_ST = {v[0]: k for k, v in ST_DTYPES.items()}
# config.json "torch_dtype" spelling
ST_TO_CONFIG_DTYPE = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def tensor_bytes(t):
    """Raw little-endian bytes of a contiguous F32/F16/BF16 tensor."""
    st = TORCH_TO_ST[t.dtype]
    t = t.detach().contiguous().cpu()
    if st == "BF16":
        arr = t.view(torch.int16).numpy()
    else:
        arr = t.numpy()
    return arr.astype(ST_DTYPES[st][1], copy=False).tobytes()


def save_safetensors(path, tensors, metadata=None, order=None):
    """Write tensors (dict name -> torch tensor) as a safetensors file.

    Layout: u64 little-endian header length N, N bytes of JSON header (padded
    with spaces so N is a multiple of 8), then the tensor bytes back to back
    in the order of `order` (default: sorted names); data_offsets are relative
    to the end of the header.
    """
    names = list(order) if order is not None else sorted(tensors)
    header = {}
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    off = 0
    for name in names:
        t = tensors[name]
        b = tensor_bytes(t)
        header[name] = {
            "dtype": TORCH_TO_ST[t.dtype],
            "shape": [int(s) for s in t.shape],
            "data_offsets": [off, off + len(b)],
        }
        blobs.append(b)
        off += len(b)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((-len(hjson)) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_safetensors_header(path):
    """(header dict, data start offset, file size) after basic validation."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: shorter than 8 bytes")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000 or 8 + n > size:
            raise ValueError(f"{path}: header length {n} out of range")
        header = json.loads(f.read(n).decode("utf-8"))
    return header, 8 + n, size


def load_safetensors(path):
    """Read a safetensors file into dict name -> torch tensor (file dtype).

    Checks that offsets are contiguous from 0, sizes match shapes and no bytes
    follow the last tensor, so a broken writer cannot go unnoticed.
    """
    header, start, size = read_safetensors_header(path)
    header.pop("__metadata__", None)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    out = {}
    expect = 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        tdt, ndt, es = ST_DTYPES[info["dtype"]]
        shape = info["shape"]
        b, e = info["data_offsets"]
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if b != expect or e - b != n * es:
            raise ValueError(f"{path}: {name}: bad data_offsets {b},{e}")
        expect = e
        arr = np.frombuffer(data, dtype=ndt, count=n, offset=b).copy().reshape(shape)
        t = torch.from_numpy(arr)
        if info["dtype"] == "BF16":
            t = t.view(torch.bfloat16)
        out[name] = t
    if start + expect != size:
        raise ValueError(f"{path}: {size - start - expect} bytes after the last tensor")
    return out


# ---------------------------------------------------------------------------
# random models
# ---------------------------------------------------------------------------

ARCHS = {
    "llama": ("LlamaForCausalLM", "llama"),
    "mistral": ("MistralForCausalLM", "mistral"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "smollm3": ("SmolLM3ForCausalLM", "smollm3"),
    "granite": ("GraniteForCausalLM", "granite"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
    "gemma2": ("Gemma2ForCausalLM", "gemma2"),
    "phi3": ("Phi3ForCausalLM", "phi3"),
}

LLAMA3_ROPE_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def make_config(cfg, dtype="F32", tie=False, bias=False, arch="llama"):
    """config.json contents for the shape dict `cfg`.

    cfg keys: hidden_size, intermediate_size, num_hidden_layers,
    num_attention_heads, num_key_value_heads (default = heads), vocab_size,
    optional head_dim, rms_norm_eps (1e-5), rope_theta (10000),
    max_position_embeddings (2048), rope_scaling, bos_token_id (1),
    eos_token_id (2).
    bias: Llama -> attention_bias (q, k, v and o biases, as HF does);
    Qwen2 always has q/k/v biases and no o bias; Mistral has none; Qwen3
    -> attention_bias (as Llama), and it always writes head_dim, as
    Qwen3's configs do.
    """
    archname, model_type = ARCHS[arch]
    c = {
        "architectures": [archname],
        "model_type": model_type,
        "hidden_size": cfg["hidden_size"],
        "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_attention_heads": cfg["num_attention_heads"],
        "num_key_value_heads": cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
        "hidden_act": "silu",
        "rms_norm_eps": cfg.get("rms_norm_eps", 1e-5),
        "rope_theta": cfg.get("rope_theta", 10000.0),
        "max_position_embeddings": cfg.get("max_position_embeddings", 2048),
        "vocab_size": cfg["vocab_size"],
        "tie_word_embeddings": bool(tie),
        "bos_token_id": cfg.get("bos_token_id", 1),
        "eos_token_id": cfg.get("eos_token_id", 2),
        "torch_dtype": ST_TO_CONFIG_DTYPE[dtype],
        "initializer_range": 0.02,
        "use_cache": True,
    }
    if cfg.get("head_dim") is not None:
        c["head_dim"] = cfg["head_dim"]
    if cfg.get("rope_scaling") is not None:
        c["rope_scaling"] = dict(cfg["rope_scaling"])
    if arch == "llama":
        c["attention_bias"] = bool(bias)
        c["mlp_bias"] = False
    elif arch == "mistral":
        if bias:
            raise ValueError("Mistral has no biases")
        c["sliding_window"] = cfg.get("sliding_window", 4096)
    elif arch == "qwen2":
        if cfg.get("head_dim") is not None:
            raise ValueError("Qwen2 takes head_dim = hidden_size / heads")
        c["use_sliding_window"] = cfg.get("use_sliding_window", False)
        c["sliding_window"] = cfg.get("sliding_window", 4096)
        c["max_window_layers"] = cfg.get("max_window_layers", c["num_hidden_layers"])
    elif arch == "granite":
        c["attention_bias"] = bool(bias)
        c["mlp_bias"] = False
        # Granite 3's kind of values: attention_multiplier 1/head_dim, not 1/sqrt(head_dim)
        hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        c["embedding_multiplier"] = cfg.get("embedding_multiplier", 12.0)
        c["residual_multiplier"] = cfg.get("residual_multiplier", 0.22)
        c["attention_multiplier"] = cfg.get("attention_multiplier", 1.0 / hd)
        c["logits_scaling"] = cfg.get("logits_scaling", 8.0)
    elif arch == "smollm3":
        c["attention_bias"] = bool(bias)
        c["mlp_bias"] = False
        c["use_sliding_window"] = cfg.get("use_sliding_window", False)
        if cfg.get("sliding_window") is not None:
            c["sliding_window"] = cfg["sliding_window"]
        # an explicit list, or SmolLM3Config's default from the interval
        if cfg.get("no_rope_layers") is not None:
            c["no_rope_layers"] = list(cfg["no_rope_layers"])
        else:
            c["no_rope_layer_interval"] = cfg.get("no_rope_layer_interval", 4)
    elif arch in ("gemma2", "gemma3"):
        # Gemma2Config's and Gemma3TextConfig's fields: sandwich norms, GeGLU,
        # a scaled embedding, query_pre_attn_scalar, windowed layers; Gemma 3
        # adds q/k norms and gives its windowed layers (all but every
        # sliding_window_pattern-th) their own rotary base; Gemma 2 windows
        # every other layer and soft-caps the attention scores and logits
        if bias:
            raise ValueError("Gemma has no biases here")
        c["head_dim"] = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        c["hidden_activation"] = "gelu_pytorch_tanh"
        del c["hidden_act"]
        c["attention_bias"] = False
        c["query_pre_attn_scalar"] = cfg.get("query_pre_attn_scalar", c["head_dim"])
        c["sliding_window"] = cfg.get("sliding_window", 4096)
        v2 = arch == "gemma2"
        c["attn_logit_softcapping"] = cfg.get("attn_logit_softcapping", 50.0 if v2 else None)
        c["final_logit_softcapping"] = cfg.get("final_logit_softcapping", 30.0 if v2 else None)
        if not v2:
            c["sliding_window_pattern"] = cfg.get("sliding_window_pattern", 6)
            c["rope_local_base_freq"] = cfg.get("rope_local_base_freq", 10000.0)
            c["rope_theta"] = cfg.get("rope_theta", 1000000.0)
    elif arch == "phi3":
        # Phi3Config: fused qkv_proj and gate_up_proj, rotary on the first
        # partial_rotary_factor of each head, "longrope" scaling (short and
        # long factors per frequency, an attention factor from
        # max_position_embeddings / original_max_position_embeddings), a
        # sliding window on every layer when set
        if bias:
            raise ValueError("Phi-3 has no biases")
        c["sliding_window"] = cfg.get("sliding_window")
        for k in ("partial_rotary_factor", "original_max_position_embeddings"):
            if cfg.get(k) is not None:
                c[k] = cfg[k]
    elif arch == "qwen3":
        c["head_dim"] = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        c["attention_bias"] = bool(bias)
        c["use_sliding_window"] = cfg.get("use_sliding_window", False)
        c["sliding_window"] = cfg.get("sliding_window")
        c["max_window_layers"] = cfg.get("max_window_layers", c["num_hidden_layers"])
    if cfg.get("layer_types") is not None:
        c["layer_types"] = list(cfg["layer_types"])
    return c


def head_dim_of(c):
    hd = c.get("head_dim")
    if hd is None and c.get("model_type") == "qwen3":
        return 128  # Qwen3Config's default, whatever the hidden size
    if hd is None and c.get("model_type") in ("gemma3_text", "gemma2"):
        return 256  # Gemma3TextConfig's and Gemma2Config's
    return hd if hd is not None else c["hidden_size"] // c["num_attention_heads"]


def has_qkv_bias(c):
    return c["model_type"] == "qwen2" or bool(c.get("attention_bias", False))


def has_o_bias(c):
    return c["model_type"] in ("llama", "qwen3", "smollm3", "granite") and bool(c.get("attention_bias", False))


def is_phi3(c):
    return c.get("model_type") == "phi3"


def rotary_dim_of(c):
    """The rotated part of each head: head_dim times partial_rotary_factor (Phi-3's; 1 elsewhere)."""
    return int(head_dim_of(c) * float(c.get("partial_rotary_factor", 1.0)))


def unfused(weights, c):
    """Phi-3's qkv_proj and gate_up_proj split into Llama's q/k/v and
    gate/up weights (rows: q, then k, then v; gate, then up), the rest as is."""
    if not is_phi3(c):
        return weights
    H, KV, hd, F = c["num_attention_heads"], c["num_key_value_heads"], head_dim_of(c), c["intermediate_size"]
    out = {}
    for name, t in weights.items():
        if name.endswith("self_attn.qkv_proj.weight"):
            p = name[: -len("qkv_proj.weight")]
            out[p + "q_proj.weight"] = t[: H * hd]
            out[p + "k_proj.weight"] = t[H * hd: (H + KV) * hd]
            out[p + "v_proj.weight"] = t[(H + KV) * hd:]
        elif name.endswith("mlp.gate_up_proj.weight"):
            p = name[: -len("gate_up_proj.weight")]
            out[p + "gate_proj.weight"], out[p + "up_proj.weight"] = t[:F], t[F:]
        else:
            out[name] = t
    return out


def is_gemma3(c):
    return c.get("model_type") == "gemma3_text"


def is_gemma(c):
    """Gemma 2 or 3: (1 + w) norms, sandwich norms, GeGLU, a scaled embedding."""
    return c.get("model_type") in ("gemma3_text", "gemma2")


def softcaps(c):
    """(attention scores, logits) soft-caps, None where absent (Gemma 2's defaults 50 and 30)."""
    if c.get("model_type") == "gemma2":
        return c.get("attn_logit_softcapping", 50.0), c.get("final_logit_softcapping", 30.0)
    return c.get("attn_logit_softcapping"), c.get("final_logit_softcapping")


def multipliers(c, embed_dtype=torch.float32):
    """(embedding, residual, attention score, logits divisor): Granite's
    (GraniteConfig's defaults 1); Gemma 3's sqrt(hidden_size) rounded to the
    embedding's dtype (Gemma3TextScaledWordEmbedding casts it so) and
    query_pre_attn_scalar^-1/2; else 1, 1, 1/sqrt(head_dim), 1."""
    if is_gemma(c):
        emb = float(torch.tensor(c["hidden_size"] ** 0.5, dtype=embed_dtype))
        return emb, 1.0, float(c.get("query_pre_attn_scalar", 256)) ** -0.5, 1.0
    if c.get("model_type") != "granite":
        return 1.0, 1.0, 1.0 / math.sqrt(head_dim_of(c)), 1.0
    return (float(c.get("embedding_multiplier", 1.0)), float(c.get("residual_multiplier", 1.0)),
            float(c.get("attention_multiplier", 1.0)), float(c.get("logits_scaling", 1.0)))


def has_qk_norm(c):
    return c.get("model_type") in ("qwen3", "gemma3_text")


def rope_layers(c):
    """1 for each layer that applies rotary, 0 for SmolLM3's NoPE layers
    (its no_rope_layers, else every no_rope_layer_interval-th layer)."""
    L = c["num_hidden_layers"]
    if c.get("model_type") != "smollm3":
        return [1] * L
    if c.get("no_rope_layers") is not None:
        return list(c["no_rope_layers"])
    n = c.get("no_rope_layer_interval", 4)
    return [int((i + 1) % n != 0) for i in range(L)]


def attention_windows(c):
    """Each layer's sliding window W (the token at position t sees keys
    t - W + 1 .. t, transformers' `kv_idx > q_idx - sliding_window`) or
    None for full attention, as transformers' configs decide: MistralConfig
    windows every layer when sliding_window is set (default 4096);
    Qwen2Config and Qwen3Config keep the window only with
    use_sliding_window and put it on the layers from max_window_layers on;
    SmolLM3Config on its NoPE layers with use_sliding_window; an explicit
    layer_types list wins."""
    L = c["num_hidden_layers"]
    mt = c.get("model_type")
    if mt in ("llama", "granite"):
        return [None] * L
    if mt == "phi3" and c.get("layer_types") is None:  # Phi3Model: the window on every layer when set
        return [c.get("sliding_window")] * L
    W = c.get("sliding_window", 4096 if mt in ("mistral", "gemma3_text", "gemma2") else None)
    if mt not in ("mistral", "gemma3_text", "gemma2", "phi3") and not c.get("use_sliding_window", False):
        W = None
    if c.get("layer_types") is not None:
        types = c["layer_types"]
    elif mt == "mistral":
        types = ["sliding_attention" if W else "full_attention"] * L
    elif mt == "gemma2":  # Gemma2Config: layers 0, 2, 4, ... windowed
        types = ["sliding_attention" if W and (i + 1) % 2 else "full_attention" for i in range(L)]
    elif mt == "gemma3_text":  # Gemma3TextConfig: every sliding_window_pattern-th layer global
        n = c.get("sliding_window_pattern", 6)
        types = ["sliding_attention" if W and (i + 1) % n else "full_attention" for i in range(L)]
    elif mt in ("qwen2", "qwen3"):
        first = c.get("max_window_layers", 28)
        types = ["sliding_attention" if W and i >= first else "full_attention" for i in range(L)]
    else:  # smollm3
        types = ["sliding_attention" if W and not r else "full_attention" for r in rope_layers(c)]
    return [W if t == "sliding_attention" else None for t in types]


def tensor_shapes(c):
    """Ordered dict name -> shape of every tensor the config implies."""
    D, F, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    H, KV = c["num_attention_heads"], c["num_key_value_heads"]
    hd = head_dim_of(c)
    s = {"model.embed_tokens.weight": [V, D]}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        s[p + "input_layernorm.weight"] = [D]
        if is_phi3(c):
            s[p + "self_attn.qkv_proj.weight"] = [(H + 2 * KV) * hd, D]
        else:
            s[p + "self_attn.q_proj.weight"] = [H * hd, D]
            s[p + "self_attn.k_proj.weight"] = [KV * hd, D]
            s[p + "self_attn.v_proj.weight"] = [KV * hd, D]
        s[p + "self_attn.o_proj.weight"] = [D, H * hd]
        if has_qkv_bias(c):
            s[p + "self_attn.q_proj.bias"] = [H * hd]
            s[p + "self_attn.k_proj.bias"] = [KV * hd]
            s[p + "self_attn.v_proj.bias"] = [KV * hd]
        if has_o_bias(c):
            s[p + "self_attn.o_proj.bias"] = [D]
        if has_qk_norm(c):
            s[p + "self_attn.q_norm.weight"] = [hd]
            s[p + "self_attn.k_norm.weight"] = [hd]
        s[p + "post_attention_layernorm.weight"] = [D]
        if is_gemma(c):  # post_attention_layernorm is the attention output's norm there
            s[p + "pre_feedforward_layernorm.weight"] = [D]
            s[p + "post_feedforward_layernorm.weight"] = [D]
        if is_phi3(c):
            s[p + "mlp.gate_up_proj.weight"] = [2 * F, D]
        else:
            s[p + "mlp.gate_proj.weight"] = [F, D]
            s[p + "mlp.up_proj.weight"] = [F, D]
        s[p + "mlp.down_proj.weight"] = [D, F]
    s["model.norm.weight"] = [D]
    if not c["tie_word_embeddings"]:
        s["lm_head.weight"] = [V, D]
    return s


def random_weights(c, seed=0, scale=None):
    """Random float32 weights for config c.

    Matrices are N(0, (gain/sqrt(fan_in))^2) -- std 0.02..0.15 for the sizes
    used here -- so that every sub-layer moves the residual stream and the
    attention scores are far from uniform (a bug in attention or rotary
    changes the logits by much more than the tolerance). Norm weights are
    1 + N(0, 0.1^2), biases N(0, 0.1^2), the embedding N(0, 0.25^2)
    (so that tied logits are not dominated by the token's own embedding).
    `scale` (a float) replaces gain/sqrt(fan_in) by a fixed std, as HF's
    initializer_range does (the benchmark uses 0.02).
    """
    g = torch.Generator().manual_seed(seed)
    w = {}
    for name, shape in tensor_shapes(c).items():
        if name.endswith("norm.weight"):  # input_/post_attention_layernorm, q_norm, k_norm, model.norm
            # Gemma's norms scale by 1 + w
            t = (0.0 if is_gemma(c) else 1.0) + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=g)
        elif name == "model.embed_tokens.weight":
            t = torch.randn(shape, generator=g) * (0.25 if scale is None else scale)
        else:
            std = scale if scale is not None else 1.0 / math.sqrt(shape[1])
            t = torch.randn(shape, generator=g) * std
        w[name] = t.to(torch.float32)
    return w


def make_random_model(dir, cfg, dtype="F32", seed=0, tie=False, bias=False, arch="llama",
                      scale=None, tokenizer_json=None):
    """Write a random HF model directory; returns (config dict, weights as stored).

    dtype: "F32", "BF16" or "F16" for every tensor in model.safetensors.
    The returned weights are read back from the written file, so they are
    exactly what a loader sees.
    """
    c = make_config(cfg, dtype=dtype, tie=tie, bias=bias, arch=arch)
    write_model_dir(dir, c, random_weights(c, seed=seed, scale=scale), dtype)
    if tokenizer_json is not None:
        import shutil
        shutil.copyfile(tokenizer_json, os.path.join(dir, "tokenizer.json"))
    return load_model(dir)


def write_model_dir(dir, config, tensors, dtype=None):
    """config.json and model.safetensors (tensors cast to dtype, "F32" ... or None: as they are)."""
    os.makedirs(dir, exist_ok=True)
    if dtype is not None:
        tensors = {k: v.to(ST_DTYPES[dtype][0]) for k, v in tensors.items()}
    with open(os.path.join(dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    save_safetensors(os.path.join(dir, "model.safetensors"), tensors, metadata={"format": "pt"})


def load_model(dir):
    """(config dict, weights dict) of a single-file model directory; a
    Gemma3ForConditionalGeneration directory gives its text model (text_model)."""
    with open(os.path.join(dir, "config.json")) as f:
        c = json.load(f)
    return text_model(c, load_safetensors(os.path.join(dir, "model.safetensors")))


# ---------------------------------------------------------------------------
# Gemma 3's multimodal checkpoints (Gemma3ForConditionalGeneration, 4B-27B)
# ---------------------------------------------------------------------------

# Gemma3TextConfig's defaults: the released configs' "text_config" gives only
# what differs from them (gemma-3-4b-it: hidden_size, intermediate_size,
# num_hidden_layers, rope_scaling, sliding_window)
GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
    "tie_word_embeddings": True, "rope_theta": 1000000.0, "attention_bias": False, "query_pre_attn_scalar": 256,
    "sliding_window": 4096, "final_logit_softcapping": None, "attn_logit_softcapping": None, "rope_scaling": None,
    "rope_local_base_freq": 10000.0, "sliding_window_pattern": 6,
}

# where the text model's tensors are: the released files' names, and those of
# transformers >= 4.52's module tree
MULTIMODAL_LAYOUTS = {
    "released": ("language_model.model.", "language_model.lm_head.weight", ""),
    "modules": ("model.language_model.", "lm_head.weight", "model."),
}


def text_model(c, w):
    """(config, weights) of the text model of a Gemma3ForConditionalGeneration
    checkpoint as a Gemma3ForCausalLM's: text_config over Gemma3TextConfig's
    defaults (the top level's eos/bos ids win), tensors renamed to
    model.* / lm_head.weight, the vision tower's left out. Other models
    pass through."""
    if (c.get("architectures") or [None])[0] != "Gemma3ForConditionalGeneration":
        return c, w
    t = dict(GEMMA3_TEXT_DEFAULTS)
    t.update(c["text_config"])
    t.update({"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text"})
    for k in ("eos_token_id", "bos_token_id"):
        if k in c:
            t[k] = c[k]
    out = {}
    for prefix, head, _ in MULTIMODAL_LAYOUTS.values():
        for name, v in w.items():
            if name.startswith(prefix):
                out["model." + name[len(prefix):]] = v
            elif name == head and name.startswith("language_model") == prefix.startswith("language_model"):
                out["lm_head.weight"] = v
        if out:
            break
    return t, out


def make_multimodal_gemma3(dir, cfg, dtype="F32", seed=0, tie=True, layout="released", eos=(1, 106)):
    """A random Gemma3ForConditionalGeneration directory: a Gemma 3 text
    model whose text_config leaves out every field equal to
    Gemma3TextConfig's default (as the released configs do), the top-level
    eos ids `eos`, the text tensors under `layout`'s names, and a few
    vision-tower and projector tensors (lorac must leave them alone).
    Returns (text config, text weights) as load_model reads them, and the
    file's tensors."""
    c = make_config(cfg, dtype=dtype, tie=tie, arch="gemma3")
    w = random_weights(c, seed=seed)
    tc = {k: v for k, v in c.items() if k not in ("architectures", "torch_dtype")
          and not (k in GEMMA3_TEXT_DEFAULTS and GEMMA3_TEXT_DEFAULTS[k] == v)}
    top = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
           "boi_token_index": 255999, "eoi_token_index": 256000, "image_token_index": 262144,
           "mm_tokens_per_image": 4, "eos_token_id": list(eos), "initializer_range": 0.02,
           "text_config": tc, "torch_dtype": ST_TO_CONFIG_DTYPE[dtype],
           "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 24,
                             "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 8, "patch_size": 4}}
    prefix, head, other = MULTIMODAL_LAYOUTS[layout]
    g = torch.Generator().manual_seed(seed + 7919)
    D = c["hidden_size"]
    files = {}
    for name, t in w.items():
        files[head if name == "lm_head.weight" else prefix + name[len("model."):]] = t
    vt = other + "vision_tower.vision_model."
    for name, shape in [(vt + "embeddings.patch_embedding.weight", [16, 3, 4, 4]),
                        (vt + "embeddings.patch_embedding.bias", [16]),
                        (vt + "encoder.layers.0.self_attn.q_proj.weight", [16, 16]),
                        (vt + "encoder.layers.0.self_attn.v_proj.weight", [16, 16]),
                        (vt + "encoder.layers.0.mlp.fc1.weight", [24, 16]),
                        (other + "multi_modal_projector.mm_input_projection_weight", [16, D]),
                        (other + "multi_modal_projector.mm_soft_emb_norm.weight", [16])]:
        files[name] = 0.1 * torch.randn(shape, generator=g)
    write_model_dir(dir, top, files, dtype)
    ct, wt = load_model(dir)
    return ct, wt, load_safetensors(os.path.join(dir, "model.safetensors"))


# ---------------------------------------------------------------------------
# reference forward (float64)
# ---------------------------------------------------------------------------

def default_inv_freq(c, dtype=torch.float64):
    """1 / theta^(2i/d), i = 0 .. d/2-1, d = head_dim (its rotated part, rotary_dim_of)."""
    d = rotary_dim_of(c)
    theta = float(c.get("rope_theta", 10000.0))
    exponent = torch.arange(0, d, 2, dtype=torch.int64).to(dtype) / d
    return 1.0 / (theta ** exponent)


def llama3_scale_inv_freq(inv_freq, rs):
    """transformers' _compute_llama3_parameters, applied to inv_freq."""
    factor = float(rs["factor"])
    low_freq_factor = float(rs["low_freq_factor"])
    high_freq_factor = float(rs["high_freq_factor"])
    old_context_len = float(rs["original_max_position_embeddings"])
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # wavelen < high_freq_wavelen: unchanged; wavelen > low_freq_wavelen: / factor
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    # in between: interpolate with a smooth factor
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


def longrope_attention_factor(c):
    """transformers' _compute_longrope_parameters: sqrt(1 + ln(f) / ln(original))
    with f = max_position_embeddings / original_max_position_embeddings (1 when f <= 1)."""
    rs = c["rope_scaling"]
    if rs.get("attention_factor") is not None:
        return float(rs["attention_factor"])
    orig = c.get("original_max_position_embeddings", c["max_position_embeddings"])
    f = c["max_position_embeddings"] / orig
    return 1.0 if f <= 1.0 else math.sqrt(1 + math.log(f) / math.log(orig))


def rope_inv_freq(c, dtype=torch.float64, local=False, seq_len=None):
    """The rotary frequencies; local: Gemma 3's windowed layers' own
    (rope_local_base_freq, unscaled); seq_len: the length of the sequence
    (Phi-3's longrope takes its long factors past original_max_position_embeddings)."""
    if local:
        return default_inv_freq(dict(c, rope_theta=c.get("rope_local_base_freq", 10000.0)), dtype)
    inv = default_inv_freq(c, dtype)
    rs = c.get("rope_scaling")
    if rs:
        kind = rs.get("rope_type", rs.get("type"))
        if kind in ("longrope", "su"):
            orig = c.get("original_max_position_embeddings", c["max_position_embeddings"])
            ext = rs["long_factor"] if seq_len is not None and seq_len > orig else rs["short_factor"]
            inv = inv / torch.tensor(ext, dtype=torch.float64).to(dtype)
        elif kind == "llama3":
            inv = llama3_scale_inv_freq(inv, rs)
        elif kind == "linear":  # _compute_linear_scaling_rope_parameters
            inv = inv / float(rs["factor"])
        elif kind not in (None, "default"):
            raise NotImplementedError(f"rope_scaling type {kind}")
    return inv


def rotary_cos_sin(c, positions, hf_float32=False, local=False, rope_len=None):
    """cos, sin of shape [T, rotary_dim] (each half repeated, HF layout),
    times longrope's attention factor where the config has one; rope_len:
    the length that picks longrope's factors (transformers: the longest
    sequence of the batch), by default the positions' own.

    hf_float32=True reproduces HF's float32 inv_freq and angle computation
    (then upcast), to measure how much that rounding matters.
    """
    seq_len = rope_len if rope_len is not None else int(positions.max()) + 1 if len(positions) else 0
    rs = c.get("rope_scaling") or {}
    mscale = longrope_attention_factor(c) if rs.get("rope_type", rs.get("type")) in ("longrope", "su") else 1.0
    if hf_float32:
        inv = rope_inv_freq(c, torch.float32, local, seq_len)
        ang = (positions.to(torch.float32)[:, None] * inv[None, :]).to(torch.float64)
        emb = torch.cat([ang, ang], dim=-1)
        return (emb.cos() * mscale).to(torch.float32).double(), (emb.sin() * mscale).to(torch.float32).double()
    inv = rope_inv_freq(c, torch.float64, local, seq_len)
    ang = positions.to(torch.float64)[:, None] * inv[None, :]
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos() * mscale, emb.sin() * mscale


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def llama_forward(weights, c, ids, hf_float32_rope=False, return_hidden=False, kv_dtype=None,
                  exact_embed_scale=False, rope_len=None):
    """Logits [T, V] (float64) of HF LlamaForCausalLM for one sequence `ids`.

    weights: dict of HF tensor name -> tensor (any dtype; values upcast to
    float64 exactly). c: config dict (config.json contents). kv_dtype
    (torch.bfloat16 or torch.float16): keys (after rotary) and values are
    rounded to it through float32 before attention reads them, as a KV
    cache of that dtype stores them (vLLM's and llama.cpp's caches do the
    same).
    """
    weights = unfused(weights, c)  # Phi-3's fused projections, split

    def W(name):
        return weights[name].to(torch.float64)

    def linear(x, name):
        y = x @ W(name + ".weight").T
        if name + ".bias" in weights:
            y = y + W(name + ".bias")
        return y

    ids = torch.as_tensor(ids, dtype=torch.int64)
    T = ids.shape[0]
    H = c["num_attention_heads"]
    KV = c.get("num_key_value_heads", H)
    hd = head_dim_of(c)
    eps = float(c.get("rms_norm_eps", 1e-6))
    assert H % KV == 0
    rep = H // KV

    gemma = is_gemma(c)
    att_cap, final_cap = softcaps(c)
    # Gemma3RMSNorm scales by (1 + w)
    def norm(x, name):
        return rms_norm(x, W(name) + 1.0 if gemma else W(name), eps)

    # exact_embed_scale: Gemma's sqrt(hidden_size) not rounded to the embedding's dtype (a test's contrast)
    emb_dtype = torch.float64 if exact_embed_scale else weights["model.embed_tokens.weight"].dtype
    emb_mult, res_mult, att_scale, logits_div = multipliers(c, emb_dtype)
    x = W("model.embed_tokens.weight")[ids] * emb_mult            # (T, D)
    cos, sin = rotary_cos_sin(c, torch.arange(T), hf_float32_rope, rope_len=rope_len)  # (T, rotary_dim)
    cos, sin = cos[:, None, :], sin[:, None, :]
    # Gemma 3's windowed layers rotate with rope_local_base_freq
    cos_l, sin_l = rotary_cos_sin(c, torch.arange(T), hf_float32_rope, local=True)
    cos_l, sin_l = cos_l[:, None, :], sin_l[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    t_idx, s_idx = torch.arange(T)[:, None], torch.arange(T)[None, :]
    use_rope, windows = rope_layers(c), attention_windows(c)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = norm(x, p + "input_layernorm.weight")
        q = linear(h, p + "self_attn.q_proj").view(T, H, hd)
        k = linear(h, p + "self_attn.k_proj").view(T, KV, hd)
        v = linear(h, p + "self_attn.v_proj").view(T, KV, hd)
        if p + "self_attn.q_norm.weight" in weights:  # Qwen3: each head normalised
            q = norm(q, p + "self_attn.q_norm.weight")
            k = norm(k, p + "self_attn.k_norm.weight")
        if use_rope[i]:
            cs, sn = (cos_l, sin_l) if is_gemma3(c) and windows[i] is not None else (cos, sin)
            rd = cs.shape[-1]  # Phi-3's partial rotary: the rest of each head passes through
            q = torch.cat([q[..., :rd] * cs + rotate_half(q[..., :rd]) * sn, q[..., rd:]], dim=-1)
            k = torch.cat([k[..., :rd] * cs + rotate_half(k[..., :rd]) * sn, k[..., rd:]], dim=-1)
        if kv_dtype is not None:
            k = k.to(torch.float32).to(kv_dtype).to(torch.float64)
            v = v.to(torch.float32).to(kv_dtype).to(torch.float64)
        # repeat_kv: query head j uses kv head j // rep
        k = k.repeat_interleave(rep, dim=1)                       # (T, H, hd)
        v = v.repeat_interleave(rep, dim=1)
        scores = torch.einsum("thd,shd->hts", q, k) * att_scale    # (H, T, T)
        if att_cap is not None:  # Gemma 2's soft-capping, before the mask
            scores = torch.tanh(scores / att_cap) * att_cap
        visible = causal if windows[i] is None else causal & (s_idx > t_idx - windows[i])
        scores = scores.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        o = torch.einsum("hts,shd->thd", probs, v).reshape(T, H * hd)
        if gemma:  # sandwich norms, GeGLU (gelu_pytorch_tanh)
            x = x + norm(linear(o, p + "self_attn.o_proj"), p + "post_attention_layernorm.weight")
            h = norm(x, p + "pre_feedforward_layernorm.weight")
            act = torch.nn.functional.gelu(linear(h, p + "mlp.gate_proj"), approximate="tanh")
            m = linear(act * linear(h, p + "mlp.up_proj"), p + "mlp.down_proj")
            x = x + norm(m, p + "post_feedforward_layernorm.weight")
            continue
        x = x + res_mult * linear(o, p + "self_attn.o_proj")
        h = rms_norm(x, W(p + "post_attention_layernorm.weight"), eps)
        gate = linear(h, p + "mlp.gate_proj")
        up = linear(h, p + "mlp.up_proj")
        x = x + res_mult * linear(torch.nn.functional.silu(gate) * up, p + "mlp.down_proj")
    x = norm(x, "model.norm.weight")
    head = W("lm_head.weight") if "lm_head.weight" in weights else W("model.embed_tokens.weight")
    logits = x @ head.T / logits_div
    if final_cap is not None:
        logits = torch.tanh(logits / final_cap) * final_cap
    return (logits, x) if return_hidden else logits


if __name__ == "__main__":
    # Small command-line helper: write a random model directory.
    import argparse

    ap = argparse.ArgumentParser(description="write a random HF LLaMA-family model")
    ap.add_argument("dir")
    ap.add_argument("--dim", type=int, default=288)
    ap.add_argument("--hidden", type=int, default=768, help="intermediate_size")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--head-dim", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dtype", default="F32", choices=sorted(ST_DTYPES))
    ap.add_argument("--arch", default="llama", choices=sorted(ARCHS))
    ap.add_argument("--tie", action="store_true")
    ap.add_argument("--bias", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--std", type=float, default=None, help="fixed std of matrices (default 1/sqrt(fan_in))")
    ap.add_argument("--max-pos", type=int, default=2048)
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json to copy in")
    a = ap.parse_args()
    cfg = dict(hidden_size=a.dim, intermediate_size=a.hidden, num_hidden_layers=a.layers,
               num_attention_heads=a.heads, num_key_value_heads=a.kv_heads or a.heads,
               head_dim=a.head_dim, vocab_size=a.vocab, max_position_embeddings=a.max_pos)
    make_random_model(a.dir, cfg, dtype=a.dtype, seed=a.seed, tie=a.tie, bias=a.bias,
                      arch=a.arch, scale=a.std, tokenizer_json=a.tokenizer)
    print(a.dir)
