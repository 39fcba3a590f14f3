"""PyTorch peer for bench_adapters.sh: what a Python script with torch does
for the same two jobs, timed from start (reading the files) to the written
result:

  merge MODEL ADAPTER OUT   W' = W + s*B@A (PEFT's merge formula, f32, back
                            to the model's dtype) for every adapted
                            projection, written as OUT/model.safetensors;
  extract BASE TUNED R OUT  for each of the seven projections,
                            torch.svd_lowrank(W_tuned - W_base, q=R+10,
                            niter=2) -- the same randomized SVD lorac uses,
                            in f32 -- then B = U*sqrt(S), A = sqrt(S)*V^T,
                            written as OUT/adapter_model.safetensors.

Prints {"seconds": ...} as JSON. Threads: torch's default (set
OMP_NUM_THREADS); BLAS as the environment provides it.
"""
import json
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import hf_model  # noqa: E402

PROJ = re.compile(r"model\.layers\.\d+\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj\.weight")


def merge(model, adapter, out):
    w = hf_model.load_safetensors(os.path.join(model, "model.safetensors"))
    cfg = json.load(open(os.path.join(adapter, "adapter_config.json")))
    s = cfg["lora_alpha"] / cfg["r"]
    ad = hf_model.load_safetensors(os.path.join(adapter, "adapter_model.safetensors"))
    for key, A in ad.items():
        if ".lora_A." not in key:
            continue
        name = key[len("base_model.model."):].replace(".lora_A.weight", ".weight")
        B = ad[key.replace(".lora_A.", ".lora_B.")]
        W = w[name]
        w[name] = (W.float() + s * (B.float() @ A.float())).to(W.dtype)
    os.makedirs(out, exist_ok=True)
    hf_model.save_safetensors(os.path.join(out, "model.safetensors"), w, metadata={"format": "pt"})


def extract(base, tuned, r, out):
    bw = hf_model.load_safetensors(os.path.join(base, "model.safetensors"))
    tw = hf_model.load_safetensors(os.path.join(tuned, "model.safetensors"))
    torch.manual_seed(42)
    res = {}
    for name in bw:
        if not PROJ.fullmatch(name):
            continue
        dw = tw[name].float() - bw[name].float()
        U, S, V = torch.svd_lowrank(dw, q=min(r + 10, min(dw.shape)), niter=2)
        f = S[:r].sqrt()
        key = "base_model.model." + name[: -len(".weight")]
        res[key + ".lora_B.weight"] = (U[:, :r] * f).contiguous()
        res[key + ".lora_A.weight"] = (f[:, None] * V[:, :r].T).contiguous()
    os.makedirs(out, exist_ok=True)
    hf_model.save_safetensors(os.path.join(out, "adapter_model.safetensors"), res, metadata={"format": "pt"})


def main():
    t0 = time.perf_counter()
    if len(sys.argv) == 5 and sys.argv[1] == "merge":
        merge(*sys.argv[2:5])
    elif len(sys.argv) == 6 and sys.argv[1] == "extract":
        extract(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        sys.exit(__doc__)
    print(json.dumps({"seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
