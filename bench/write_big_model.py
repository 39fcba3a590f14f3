"""Writes a random BF16 LLaMA-shaped model directory too big to hold in
memory as float32 (Llama-2-7B's shape is 27 GB of float32): the header is
computed from the shapes first, then each tensor is generated and written
a slab of rows at a time. Values as bench_train.sh's models: matrices
N(0, 0.02²), norm weights 1. Only the shapes and dtypes matter to the
benchmarks that read it.

Usage: write_big_model.py DIR --dim 4096 --hidden 11008 --layers 32 --heads 32 [--kv-heads N] [--vocab 32000]
"""
import argparse
import json
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import hf_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--hidden", type=int, required=True)
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=32000)
    a = ap.parse_args()
    cfg = dict(hidden_size=a.dim, intermediate_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=a.heads,
               num_key_value_heads=a.kv_heads or a.heads, vocab_size=a.vocab, max_position_embeddings=4096)
    c = hf_model.make_config(cfg, dtype="BF16")
    shapes = hf_model.tensor_shapes(c)
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        n = 1
        for s in shape:
            n *= s
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + 2 * n]}
        off += 2 * n
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * ((-len(hjson)) % 8)
    os.makedirs(a.dir, exist_ok=True)
    with open(os.path.join(a.dir, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    g = torch.Generator().manual_seed(1)
    path = os.path.join(a.dir, "model.safetensors")
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for name, shape in shapes.items():
            if len(shape) == 1:
                f.write(hf_model.tensor_bytes(torch.ones(shape, dtype=torch.bfloat16)))
                continue
            for r0 in range(0, shape[0], 1024):
                rows = min(1024, shape[0] - r0)
                t = (torch.randn(rows, shape[1], generator=g) * 0.02).to(torch.bfloat16)
                f.write(hf_model.tensor_bytes(t))
    os.replace(path + ".tmp", path)
    print(f"{a.dir}: {off / 1e9:.1f} GB of BF16 weights")


if __name__ == "__main__":
    main()
