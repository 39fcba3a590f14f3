"""A bitsandbytes 4-bit NF4 checkpoint, as transformers saves one, written and
read back in PyTorch (bitsandbytes itself is not in Debian).

Written from bitsandbytes' documented serialization (QuantState.as_dict(
packed=True), which Linear4bit's state dict saves beside "X.weight"):

- "X.weight": U8 [(n + 1) // 2, 1], the NF4 codes of the flattened weight
  two a byte, element 2j in the high nibble;
- "X.weight.quant_map": F32 [16], the NF4 values;
- "X.weight.absmax": the blocks' absmax, F32 [blocks]; with double
  quantization (bnb_4bit_use_double_quant) their mean `offset` is taken
  off and the rest quantized in blocks of 256 with bitsandbytes' 8-bit
  dynamic map: U8 [blocks], with "X.weight.nested_absmax" F32 [ceil(blocks /
  256)] and "X.weight.nested_quant_map" F32 [256];
- "X.weight.quant_state.bitsandbytes__nf4": U8, json.dumps of {"quant_type",
  "blocksize", "dtype", "shape"} and when nested {"nested_blocksize",
  "nested_dtype", "nested_offset"}.

Read back: absmax = nested_quant_map[q] * nested_absmax[b // 256] +
offset (two f32 roundings), then element i = NF4[code_i] * absmax[i // 64]
in f32 (bitsandbytes then rounds that to "dtype"; lorac keeps f32, and so
does this reference).
"""
import json
import os

import torch

import hf_model as hm
import nf4_ref

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj", "gate_up_proj")
NESTED_BLOCK = 256


def dynamic_map():
    """bitsandbytes' signed 8-bit dynamic map (create_dynamic_map(signed=True,
    max_exponent_bits=7, total_bits=8)): for exponent e = 0..6, the means of
    2^e + 1 evenly spaced fractions in [0.1, 1] scaled by 10^(e - 6), both
    signs; then 0 and 1; sorted."""
    data = []
    for e in range(7):
        n = 2 ** e + 1
        bounds = torch.linspace(0.1, 1, n)
        means = ((bounds[:-1] + bounds[1:]) / 2.0).tolist()
        data += [10.0 ** (e - 6) * m for m in means] + [-(10.0 ** (e - 6)) * m for m in means]
    data += [0.0, 1.0]
    assert len(data) == 256
    return torch.tensor(sorted(data), dtype=torch.float32)


def quantize_8bit(x, code):
    """Blockwise (256) 8-bit codes of f32 x against `code`: nearest value of
    x / absmax (which code lorac reads is up to the file, so any rule
    would do)."""
    n = x.numel()
    pad = (-n) % NESTED_BLOCK
    xp = torch.cat([x, torch.zeros(pad)]).reshape(-1, NESTED_BLOCK)
    absmax = xp.abs().amax(dim=1)
    scaled = (xp / absmax[:, None]).reshape(-1)[:n]
    q = (scaled[:, None] - code[None, :]).abs().argmin(dim=1).to(torch.uint8)
    return q, absmax


def pack_codes(codes):
    c = codes.to(torch.uint8)
    if c.numel() % 2:
        c = torch.cat([c, torch.zeros(1, dtype=torch.uint8)])
    return (c[0::2] << 4) | c[1::2]


def quantize_weight(w, nested, dtype_name="bfloat16"):
    """The tensors bitsandbytes saves for weight w (rows, cols), by suffix."""
    codes, absmax = nf4_ref.quantize(w)
    out = {"": pack_codes(codes).reshape(-1, 1), "quant_map": nf4_ref.codebook()}
    state = {"quant_type": "nf4", "blocksize": nf4_ref.BLOCK, "dtype": dtype_name, "shape": list(w.shape)}
    if nested:
        offset = absmax.mean()
        code = dynamic_map()
        q, nabs = quantize_8bit(absmax - offset, code)
        out.update({"absmax": q, "nested_absmax": nabs, "nested_quant_map": code})
        state.update({"nested_blocksize": NESTED_BLOCK, "nested_dtype": "float32", "nested_offset": offset.item()})
    else:
        out["absmax"] = absmax
    out["quant_state.bitsandbytes__nf4"] = torch.tensor(list(json.dumps(state).encode("utf-8")), dtype=torch.uint8)
    return out


def dequantize(t, name):
    """Weight `name` of the saved tensors t, as bitsandbytes reads it back (f32)."""
    state = json.loads(bytes(t[name + ".quant_state.bitsandbytes__nf4"].tolist()).decode("utf-8"))
    rows, cols = state["shape"]
    n = rows * cols
    packed = t[name].reshape(-1)
    codes = torch.stack([packed >> 4, packed & 15], dim=1).reshape(-1)[:n].long()
    if "nested_offset" in state:
        q = t[name + ".absmax"].long()
        nabs = t[name + ".nested_absmax"].repeat_interleave(state["nested_blocksize"])[:q.numel()]
        absmax = t[name + ".nested_quant_map"][q] * nabs  # f32, rounded
        absmax = absmax + torch.tensor(state["nested_offset"], dtype=torch.float32)  # f32, rounded again
    else:
        absmax = t[name + ".absmax"]
    scale = absmax.repeat_interleave(state["blocksize"])[:n]
    return (t[name + ".quant_map"][codes] * scale).reshape(rows, cols)


def is_projection(name):
    return name.endswith(".weight") and ".layers." in name and name.split(".")[-2] in PROJ


def quantization_config(nested):
    """config.json's quantization_config as transformers writes it for
    BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", ...)."""
    return {"_load_in_4bit": True, "_load_in_8bit": False, "bnb_4bit_compute_dtype": "bfloat16",
            "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": nested,
            "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False,
            "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0, "load_in_4bit": True, "load_in_8bit": False,
            "quant_method": "bitsandbytes"}


def read_checkpoint(dir):
    """The weights of the bitsandbytes checkpoint in model dir `dir` as it
    reads back (quantized projections dequantized, f32), state tensors left out."""
    t = hm.load_safetensors(os.path.join(dir, "model.safetensors"))
    out = {}
    for k, v in t.items():
        if k + ".quant_map" in t:
            out[k] = dequantize(t, k)
        elif not any(k.endswith(s) for s in (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map")) \
                and ".quant_state." not in k:
            out[k] = v.to(torch.float32)
    return out


def write_checkpoint(dir, c, w, nested=True, keep=()):
    """Rewrites model directory `dir` (config c, weights w as stored) as a
    bitsandbytes 4-bit checkpoint: every decoder projection (but those named
    in keep) quantized; returns the weights as it reads back, all f32."""
    tensors, seen = {}, dict(w)
    dtype_name = c.get("torch_dtype", "float32")
    for k, v in w.items():
        if is_projection(k) and not any(s in k for s in keep):
            for suffix, t in quantize_weight(v, nested, dtype_name).items():
                tensors[k + ("." + suffix if suffix else "")] = t
        else:
            tensors[k] = v
    c = dict(c, quantization_config=quantization_config(nested))
    with open(os.path.join(dir, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    hm.save_safetensors(os.path.join(dir, "model.safetensors"), tensors, metadata={"format": "pt"})
    for k, v in w.items():
        seen[k] = dequantize(tensors, k) if k + ".quant_map" in tensors else v.to(torch.float32)
    return seen
