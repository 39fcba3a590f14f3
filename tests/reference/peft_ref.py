"""Independent reference for PEFT LoRA adapters on a Llama model.

Written from PEFT's documented format and its matching rules (peft
LoraConfig docs; tuners_utils.check_target_module_exists,
utils.other.get_pattern_key, LoraModel._create_and_replace), in plain Python
with `re` -- not from lorac's C code, so the two can disagree:

  * a module of HF's LlamaForCausalLM ("model.layers.3.self_attn.q_proj") is
    adapted when target_modules selects it: a string is a regex that must
    re.fullmatch the name ("all-linear": every nn.Linear but lm_head); a list
    selects a name equal to an entry or ending in "." + entry, and then, with
    layers_to_transform, only in those layers (the layer index is the number
    after layers_pattern, or after any name, in the module name);
    exclude_modules removes names the same way;
  * its r and alpha are rank_pattern / alpha_pattern's value for the first key
    k (in file order) with re.match(rf"(.*\\.)?({k})$", name), else r /
    lora_alpha (defaults 8 and 8);
  * scale = alpha / r, or alpha / sqrt(r) with use_rslora;
  * adapter_model.safetensors holds "[base_model.model.]NAME.lora_A[.default].weight"
    [r, in] and lora_B [out, r]; W' = W + scale * B @ A. fan_in_fan_out is
    read as False for nn.Linear (as PEFT does, with a warning).

Used by tests/test_peft_variants.py and tests/test_merge_reference.py.
"""

import json
import math
import os
import re

import torch

import hf_model as hm

PROJ_BLOCK = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
              "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


# the decoder's module path: a text model's, and a Gemma 3 multimodal
# model's text model under transformers >= 4.52 and before
DECODER_PREFIXES = ("model", "model.language_model", "language_model.model")
# the modules of a multimodal model's other towers
OTHER_TOWERS = ("model.vision_tower.", "vision_tower.", "model.multi_modal_projector.", "multi_modal_projector.")


# Phi-3's modules: q, k, v in one qkv_proj, gate and up in one gate_up_proj
PHI3_BLOCK = {"qkv_proj": "self_attn", "o_proj": "self_attn", "gate_up_proj": "mlp", "down_proj": "mlp"}


def projection_names(c, prefix="model"):
    """Names of every LoRA-able projection of the model, in layer order."""
    blocks = PHI3_BLOCK if hm.is_phi3(c) else PROJ_BLOCK
    return [f"{prefix}.layers.{i}.{blocks[p]}.{p}" for i in range(c["num_hidden_layers"]) for p in blocks]


def decoder_prefix(names):
    """The decoder prefix the module names use (one of DECODER_PREFIXES)."""
    found = {p for n in names for p in DECODER_PREFIXES if n.startswith(p + ".layers.")}
    if len(found) != 1:
        raise ValueError(f"module names under {sorted(found) or 'no known prefix'}")
    return found.pop()


def _in_list(name, entries):
    return name in entries or any(name.endswith("." + e) for e in entries)


def _layer_ok(cfg, name):
    layers = cfg.get("layers_to_transform")
    if layers is None or (isinstance(layers, list) and not layers):
        return True
    pattern = cfg.get("layers_pattern")
    if not pattern:
        m = re.match(r".*\.[^.]*\.(\d+)\.", name)
    else:
        m = None
        for p in [pattern] if isinstance(pattern, str) else pattern:
            m = re.match(rf".*\.{p}\.(\d+)\.", name)
            if m:
                break
    if m is None:
        return False
    idx = int(m.group(1))
    return idx == layers if isinstance(layers, int) else idx in layers


def selected(cfg, name):
    """PEFT's check_target_module_exists for a projection name."""
    ex = cfg.get("exclude_modules")
    if ex:
        if isinstance(ex, str):
            if re.fullmatch(ex, name):
                return False
        elif _in_list(name, ex):
            return False
    t = cfg.get("target_modules")
    if isinstance(t, str):
        if t.lower() == "all-linear":
            return True
        return re.fullmatch(t, name) is not None
    if name in t:
        return True
    return _in_list(name, t) and _layer_ok(cfg, name)


def pattern_value(patterns, name, default):
    for k, v in (patterns or {}).items():
        if re.match(rf"(.*\.)?({k})$", name):
            return v
    return default


def module_settings(cfg, c, present=None, prefix="model"):
    """dict module name -> (r, alpha, scale) of the modules the config adapts.
    `present`: names the file holds, used when target_modules is absent."""
    out = {}
    for name in projection_names(c, prefix):
        if cfg.get("target_modules") is None:
            if name not in (present or ()):
                continue
        elif not selected(cfg, name):
            continue
        r = pattern_value(cfg.get("rank_pattern"), name, cfg.get("r", 8))
        alpha = pattern_value(cfg.get("alpha_pattern"), name, cfg.get("lora_alpha", 8))
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[name] = (r, alpha, scale)
    return out


def _module_of_key(key):
    """(module name, 'A' or 'B') of an adapter tensor key."""
    m = re.fullmatch(r"(?:base_model\.model\.)?(.*)\.lora_([AB])(?:\.default)?\.weight", key)
    if not m:
        raise ValueError(f"not a LoRA tensor: {key}")
    return m.group(1), m.group(2)


def load_adapter(dir, c):
    """dict module name -> (scale, A float64 [r, in], B float64 [out, r]),
    named as in a text model (model.layers...) whatever the decoder prefix
    of the file (a Gemma 3 multimodal model's); the vision tower's modules
    are left out (they do not touch the text model)."""
    with open(os.path.join(dir, "adapter_config.json")) as f:
        cfg = json.load(f)
    tensors = hm.load_safetensors(os.path.join(dir, "adapter_model.safetensors"))
    ab = {}
    for key, t in tensors.items():
        name, which = _module_of_key(key)
        if name.startswith(OTHER_TOWERS):  # a vision module: no part of the text model
            continue
        ab.setdefault(name, {})[which] = t.to(torch.float64)
    prefix = decoder_prefix(ab)
    settings = module_settings(cfg, c, present=set(ab), prefix=prefix)
    if set(settings) != set(ab):
        raise ValueError(f"config selects {sorted(set(settings) ^ set(ab))} differently from the file")
    out = {}
    for name, (r, _, scale) in settings.items():
        A, B = ab[name]["A"], ab[name]["B"]
        if A.shape[0] != r or B.shape[1] != r:
            raise ValueError(f"{name}: rank {A.shape[0]} in the file, {r} in the config")
        out["model" + name[len(prefix):]] = (scale, A, B)  # the text model's weight names
    return out


def delta_weights(dir, c):
    """dict HF weight name -> scale * B @ A (float64)."""
    return {name + ".weight": s * (B @ A) for name, (s, A, B) in load_adapter(dir, c).items()}


def apply_adapters(weights, c, adapters):
    """weights with W + sum(scale_i * s_i * B_i @ A_i), in float64.
    adapters: list of (dir, scale)."""
    w = {k: v.to(torch.float64) for k, v in weights.items()}
    for dir, k in adapters:
        for name, d in delta_weights(dir, c).items():
            w[name] = w[name] + k * d
    return w


def forward(weights, c, ids, adapters=()):
    """Float64 logits [T, V] of the base with the adapters applied."""
    return hm.llama_forward(apply_adapters(weights, c, adapters), c, ids)


DELETE = object()  # a cfg value that removes the field from adapter_config.json


def write_adapter(dir, cfg, tensors):
    """Writes an adapter directory: cfg (dict, completed with PEFT's usual
    fields unless given) and tensors (dict key -> torch tensor)."""
    os.makedirs(dir, exist_ok=True)
    full = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "random", "lora_dropout": 0.0,
            "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
            "use_rslora": False, "use_dora": False, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
            "layers_to_transform": None, "layers_pattern": None}
    full.update(cfg)
    for k in [k for k, v in cfg.items() if v is DELETE]:
        del full[k]
    with open(os.path.join(dir, "adapter_config.json"), "w") as f:
        json.dump(full, f, indent=2)
    hm.save_safetensors(os.path.join(dir, "adapter_model.safetensors"), tensors, metadata={"format": "pt"})


def random_lora(c, modules, seed=0, dtype=torch.float32):
    """dict module name -> (A [r, in], B [out, r]) random, B not zero, for
    modules: dict name -> r. Magnitudes make s*B@A move the logits clearly."""
    g = torch.Generator().manual_seed(seed)
    shapes = hm.tensor_shapes(c)
    out = {}
    for name, r in modules.items():
        o, i = shapes[name + ".weight"]
        A = torch.randn(r, i, generator=g) / math.sqrt(i)
        B = torch.randn(o, r, generator=g) * 0.3 / math.sqrt(r)
        out[name] = (A.to(dtype), B.to(dtype))
    return out


def lora_tensors(ab, prefix="base_model.model.", suffix=".weight"):
    """Adapter tensor dict from random_lora's output with PEFT's key form."""
    t = {}
    for name, (A, B) in ab.items():
        t[f"{prefix}{name}.lora_A{suffix}"] = A
        t[f"{prefix}{name}.lora_B{suffix}"] = B
    return t
