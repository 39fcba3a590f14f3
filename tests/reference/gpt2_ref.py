"""Independent PyTorch reference for lorac's GPT-2 (GPT2LMHeadModel) forward pass.

Written from transformers' modeling_gpt2.py semantics, in float64 from the
stored weight values, without transformers:

  h = wte[ids] + wpe[positions]
  per block:  a = LayerNorm(h; ln_1) ; qkv = a @ c_attn.weight + c_attn.bias
              (Conv1D: weight (in, out)), split into q, k, v of n_embd each,
              heads of n_embd / n_head ; causal softmax(q k^T / sqrt(hd)) v
              (unscaled when scale_attn_weights is false; over l + 1 in
              layer l with scale_attn_by_inverse_layer_idx) ; h += merged @
              attn.c_proj.weight + bias
              m = LayerNorm(h; ln_2) ; h += gelu_new(m @ c_fc.weight + b) @
              mlp.c_proj.weight + b
  logits = LayerNorm(h; ln_f) @ wte^T (or lm_head.weight^T when untied)

LayerNorm: (x - mean) / sqrt(biased var + eps) * w + b; gelu_new:
x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

LoRA (PEFT on Conv1D, fan_in_fan_out=True): lora_A (r, in), lora_B (out, r)
as for nn.Linear; the module's output gains scale * x @ A^T @ B^T, and
merging adds scale * (B @ A)^T to the (in, out) weight.
"""

import json
import math
import os

import torch

import hf_model as hm

# module name (as PEFT and the files spell it) -> weight name in a block
MODULES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def make_config(D, L, H, V, n_positions, n_inner=None, tie=True, dtype="F32", **kw):
    c = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": V, "n_positions": n_positions,
        "n_embd": D, "n_layer": L, "n_head": H, "n_inner": n_inner, "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5, "bos_token_id": V - 1, "eos_token_id": V - 1, "tie_word_embeddings": tie,
        "torch_dtype": hm.ST_TO_CONFIG_DTYPE[dtype],
    }
    c.update(kw)
    return c


def inner(c):
    return c.get("n_inner") or 4 * c["n_embd"]


def tensor_shapes(c, prefix="transformer."):
    D, I, V = c["n_embd"], inner(c), c["vocab_size"]
    s = {f"{prefix}wte.weight": (V, D), f"{prefix}wpe.weight": (c["n_positions"], D),
         f"{prefix}ln_f.weight": (D,), f"{prefix}ln_f.bias": (D,)}
    if not c.get("tie_word_embeddings", True):
        s["lm_head.weight"] = (V, D)
    for l in range(c["n_layer"]):
        p = f"{prefix}h.{l}."
        s.update({p + "ln_1.weight": (D,), p + "ln_1.bias": (D,), p + "ln_2.weight": (D,), p + "ln_2.bias": (D,),
                  p + "attn.c_attn.weight": (D, 3 * D), p + "attn.c_attn.bias": (3 * D,),
                  p + "attn.c_proj.weight": (D, D), p + "attn.c_proj.bias": (D,),
                  p + "mlp.c_fc.weight": (D, I), p + "mlp.c_fc.bias": (I,),
                  p + "mlp.c_proj.weight": (I, D), p + "mlp.c_proj.bias": (D,)})
    return s


def random_weights(c, seed=0, prefix="transformer."):
    g = torch.Generator().manual_seed(seed)
    w = {}
    for name, shape in tensor_shapes(c, prefix).items():
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
            w[name] = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            w[name] = 0.1 * torch.randn(shape, generator=g)
        else:
            w[name] = torch.randn(shape, generator=g) / math.sqrt(shape[0] if "c_" in name else shape[1]) * \
                (1.0 if "c_" in name else 0.5)
    return w


def make_random_model(dir, c, dtype="F32", seed=0, prefix="transformer.", mask_buffers=False):
    """Writes config.json and model.safetensors; returns (config, weights as
    stored, read back) with the weights named under "transformer.".
    mask_buffers: also each layer's "attn.bias" causal-mask buffer (1, 1,
    n_positions, n_positions), as the original openai-community/gpt2
    checkpoint holds them; loaders leave them out."""
    w = random_weights(c, seed, prefix)
    if mask_buffers:
        P = c["n_positions"]
        for l in range(c["n_layer"]):
            w[f"{prefix}h.{l}.attn.bias"] = torch.ones(P, P).tril().view(1, 1, P, P)
    hm.write_model_dir(dir, c, w, dtype)
    c, w = load_model(dir)
    return c, {k: v for k, v in w.items() if not k.endswith(".attn.bias")}


def load_model(dir):
    with open(os.path.join(dir, "config.json")) as f:
        c = json.load(f)
    w = hm.load_safetensors(os.path.join(dir, "model.safetensors"))
    # the original checkpoint's names have no "transformer." prefix
    w = {k if k.startswith("transformer.") or k == "lm_head.weight" else "transformer." + k: v for k, v in w.items()}
    return c, w


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def forward(weights, c, ids, adapters=(), dtype=torch.float64):
    """Logits (T, V) for one sequence of ids. adapters: (A, B, scale) dicts
    keyed by "h.N.attn.c_attn" etc., applied unmerged."""
    W = {k: v.to(dtype) for k, v in weights.items()}
    D, H = c["n_embd"], c["n_head"]
    hd = D // H
    eps = c.get("layer_norm_epsilon", 1e-5)
    T = len(ids)
    ids_t = torch.tensor(ids)
    h = W["transformer.wte.weight"][ids_t] + W["transformer.wpe.weight"][torch.arange(T)]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    scale = 1.0 / math.sqrt(hd) if c.get("scale_attn_weights", True) else 1.0

    def conv1d(x, l, module):
        p = f"transformer.h.{l}.{module}"
        y = x @ W[p + ".weight"] + W[p + ".bias"]
        for ad in adapters:
            key = f"h.{l}.{module}"
            if key in ad:
                A, B, s = ad[key]
                y = y + s * (x @ A.to(dtype).T) @ B.to(dtype).T
        return y

    for l in range(c["n_layer"]):
        p = f"transformer.h.{l}."
        a = layer_norm(h, W[p + "ln_1.weight"], W[p + "ln_1.bias"], eps)
        qkv = conv1d(a, l, "attn.c_attn")
        q, k, v = qkv[:, :D], qkv[:, D:2 * D], qkv[:, 2 * D:]
        q = q.view(T, H, hd).transpose(0, 1)
        k = k.view(T, H, hd).transpose(0, 1)
        v = v.view(T, H, hd).transpose(0, 1)
        s = (q @ k.transpose(1, 2)) * scale
        if c.get("scale_attn_by_inverse_layer_idx", False):
            s = s / float(l + 1)
        s = s.masked_fill(mask, float("-inf"))
        o = (torch.softmax(s, -1) @ v).transpose(0, 1).reshape(T, D)
        h = h + conv1d(o, l, "attn.c_proj")
        m = layer_norm(h, W[p + "ln_2.weight"], W[p + "ln_2.bias"], eps)
        h = h + conv1d(gelu_new(conv1d(m, l, "mlp.c_fc")), l, "mlp.c_proj")
    h = layer_norm(h, W["transformer.ln_f.weight"], W["transformer.ln_f.bias"], eps)
    head = W["transformer.wte.weight"] if c.get("tie_word_embeddings", True) else W["lm_head.weight"]
    return h @ head.T


MOD_DIMS = {"attn.c_attn": lambda D, I: (D, 3 * D), "attn.c_proj": lambda D, I: (D, D),
            "mlp.c_fc": lambda D, I: (D, I), "mlp.c_proj": lambda D, I: (I, D)}


def random_adapter(c, modules, seed):
    """{"h.N.module": (A, B)} with B != 0, for modules {"h.N.module": r}."""
    g = torch.Generator().manual_seed(seed)
    D, I = c["n_embd"], inner(c)
    out = {}
    for key, r in modules.items():
        fin, fout = MOD_DIMS[key.split(".", 2)[2]](D, I)
        out[key] = ((torch.randn(r, fin, generator=g) / math.sqrt(fin)).float(),
                    (torch.randn(fout, r, generator=g) * 0.3 / math.sqrt(r)).float())
    return out


def write_adapter(dir, cfg, ab, prefix="base_model.model.transformer."):
    """A PEFT adapter directory: cfg over PEFT's usual fields for GPT-2,
    tensors from {"h.N.module": (A, B)}."""
    os.makedirs(dir, exist_ok=True)
    full = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": True,
            "use_rslora": False, "use_dora": False, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
            "layers_to_transform": None, "layers_pattern": None}
    full.update(cfg)
    with open(os.path.join(dir, "adapter_config.json"), "w") as f:
        json.dump(full, f)
    t = {}
    for key, (A, B) in ab.items():
        t[f"{prefix}{key}.lora_A.weight"] = A
        t[f"{prefix}{key}.lora_B.weight"] = B
    hm.save_safetensors(os.path.join(dir, "adapter_model.safetensors"), t, metadata={"format": "pt"})


def greedy(weights, c, ids, n):
    ids = list(ids)
    out = []
    for _ in range(n):
        nxt = int(torch.argmax(forward(weights, c, ids)[-1]))
        out.append(nxt)
        ids.append(nxt)
    return out


def main():
    """Writes a random GPT-2 model directory (for bench/bench_generate.sh)."""
    import argparse
    import shutil
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("dir")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--positions", type=int, default=1024)
    ap.add_argument("--dtype", default="F32", choices=["F32", "BF16", "F16"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tokenizer", help="tokenizer.json to copy in")
    a = ap.parse_args()
    c = make_config(a.dim, a.layers, a.heads, a.vocab, a.positions, dtype=a.dtype)
    make_random_model(a.dir, c, dtype=a.dtype, seed=a.seed)
    if a.tokenizer:
        shutil.copyfile(a.tokenizer, os.path.join(a.dir, "tokenizer.json"))
    print(a.dir)


if __name__ == "__main__":
    main()
