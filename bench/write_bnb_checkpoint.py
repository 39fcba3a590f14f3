"""Writes a bitsandbytes 4-bit NF4 checkpoint (double-quantized absmax, as
unsloth's "-bnb-4bit" uploads are) of a single-file model directory, one
tensor at a time, so a 7B model's 13.5 GB of BF16 is never all in memory.
The tensors are those tests/reference/bnb_ref.py writes (and test_bnb.py
checks lorac against). Not a test.

Usage: bench/write_bnb_checkpoint.py SRC_MODEL_DIR DST_DIR
"""
import json
import os
import shutil
import struct
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
import bnb_ref  # noqa: E402
import hf_model as hm  # noqa: E402


def main():
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
    path = os.path.join(src, "model.safetensors")
    header, start, _ = hm.read_safetensors_header(path)
    header.pop("__metadata__", None)
    with open(os.path.join(src, "config.json")) as f:
        c = json.load(f)
    out_header, off = {}, 0
    tmp = os.path.join(dst, "data.tmp")
    with open(path, "rb") as f, open(tmp, "wb") as data:
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            tdt, ndt, _ = hm.ST_DTYPES[info["dtype"]]
            b, e = info["data_offsets"]
            f.seek(start + b)
            t = torch.from_numpy(np.frombuffer(f.read(e - b), dtype=ndt).copy().reshape(info["shape"]))
            if info["dtype"] == "BF16":
                t = t.view(torch.bfloat16)
            parts = {name: t}
            if bnb_ref.is_projection(name):
                q = bnb_ref.quantize_weight(t, True, c.get("torch_dtype", "bfloat16"))
                parts = {name + ("." + k if k else ""): v for k, v in q.items()}
            for k, v in parts.items():
                blob = hm.tensor_bytes(v)
                out_header[k] = {"dtype": hm.TORCH_TO_ST[v.dtype], "shape": list(v.shape),
                                 "data_offsets": [off, off + len(blob)]}
                data.write(blob)
                off += len(blob)
    out_header["__metadata__"] = {"format": "pt"}
    hjson = json.dumps(out_header, separators=(",", ":")).encode()
    hjson += b" " * ((-len(hjson)) % 8)
    with open(os.path.join(dst, "model.safetensors"), "wb") as out, open(tmp, "rb") as data:
        out.write(struct.pack("<Q", len(hjson)))
        out.write(hjson)
        shutil.copyfileobj(data, out, 64 << 20)
    os.remove(tmp)
    c["quantization_config"] = bnb_ref.quantization_config(True)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    for extra in ("tokenizer.json", "generation_config.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(src, extra)):
            shutil.copyfile(os.path.join(src, extra), os.path.join(dst, extra))
    print(f"{dst}: {os.path.getsize(os.path.join(dst, 'model.safetensors')) / 1e9:.2f} GB", file=sys.stderr)


if __name__ == "__main__":
    main()
