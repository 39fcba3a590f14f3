"""bitsandbytes 4-bit NF4 checkpoints (what transformers saves from
BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"), and the
"-bnb-4bit" uploads QLoRA users download), read without --quantize.

Against tests/reference/bnb_ref.py, which writes such a checkpoint from a
random model and reads it back in PyTorch from bitsandbytes' documented
serialization:

- `lorac logits` equals the float64 reference forward over the weights the
  checkpoint holds, to 1e-5: Llama with GQA and double-quantized absmax
  spanning two nested blocks (also on the portable kernels, and with a PEFT
  adapter on every projection), Qwen2 with biases, BF16 tensors, plain f32
  absmax, a last block cut short and one projection kept unquantized,
  Phi-3 whose fused tensors were quantized whole;
- `lorac train` on such a checkpoint: 3 AdamW steps of LoRA match torch
  autograd over the checkpoint's weights, and a run resumed from its
  checkpoint is bit-identical to one made in one go;
- malformed checkpoints (a companion tensor missing or of the wrong size,
  a quantization state that is not JSON, of another blocksize, shape or
  quant type, a quant_map that is not NF4's, 8-bit, fp4 and GPTQ configs)
  end in `lorac: error:` naming the problem, exit 1;
- `lorac merge` into such a checkpoint writes an unquantized model (each
  projection dequantized to the dtype it was quantized from, as unsloth's
  "merged_16bit" does), whose logits are those of the reference's merge
  (in float64, rounded to the checkpoint's dtype) of the adapter into the
  checkpoint's weights, F32 and BF16;
- what cannot work on a 4-bit base is refused: exporting it to GGUF, full
  training;
- `lorac inspect` counts two parameters a code byte and names the
  quantization.

Run alone: LORAC_BIN=build/lorac /usr/bin/python3 tests/test_bnb.py
"""
import json
import os
import shutil
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))
sys.path.insert(0, HERE)
import bnb_ref  # noqa: E402
import cli_harness as ch  # noqa: E402
import hf_model as hm  # noqa: E402
import peft_ref as pr  # noqa: E402
import test_train_parity as tp  # noqa: E402

R = ch.Results("test_bnb")
TOL = 1e-5
IDS = [3, 17, 42, 5, 99, 64, 1, 23, 77, 8, 120, 31]


def check_logits(name, model, ids, ref_q, ref_plain, extra=(), env=None):
    ch.check_quantized_logits(R, name, model, ids, ref_q, ref_plain, extra, env=env, scratch_name="bnb", tol=TOL)


def make(name, cfg, nested=True, keep=(), **kw):
    """A random model saved as a bitsandbytes checkpoint: (dir, config,
    weights as read back, weights before quantization)."""
    d = os.path.join(ch.scratch("bnb"), name)
    c, w = hm.make_random_model(d, cfg, **kw)
    return d, c, bnb_ref.write_checkpoint(d, c, w, nested=nested, keep=keep), w


def logits_cases():
    # hidden 128, intermediate 160: gate/up/down have 320 blocks, so the double-quantized absmax spans 2 nested blocks
    d, c, wq, w = make("llama", dict(hidden_size=128, intermediate_size=160, num_hidden_layers=2, num_attention_heads=8,
                                     num_key_value_heads=2, vocab_size=128), seed=51)
    check_logits("llama-gqa-double-quant", d, IDS, hm.llama_forward(wq, c, IDS), hm.llama_forward(w, c, IDS))
    check_logits("llama-gqa-double-quant-portable", d, IDS, hm.llama_forward(wq, c, IDS), hm.llama_forward(w, c, IDS),
                 env=dict(os.environ, LORAC_ISA="portable"))
    ad = os.path.join(ch.scratch("bnb"), "llama-adapter")
    ch.write_random_adapter(ad, c, {"r": 4, "lora_alpha": 8, "target_modules": list(pr.PROJ_BLOCK)}, seed=9)
    check_logits("llama-adapter-on-bnb", d, IDS, pr.forward(wq, c, IDS, [(ad, 1.0)]), pr.forward(w, c, IDS, [(ad, 1.0)]),
                 extra=("--adapter", ad))
    # Qwen2: biases, BF16, the absmax in f32 (no double quantization); gate and up (76 x 40) end in a half block;
    # down_proj left in BF16, as a module in llm_int8_skip_modules is
    d, c, wq, w = make("qwen2", dict(hidden_size=40, intermediate_size=76, num_hidden_layers=2, num_attention_heads=5,
                                     num_key_value_heads=1, vocab_size=97), nested=False, keep=("down_proj",),
                       dtype="BF16", arch="qwen2", bias=True, seed=52)
    ids = [i % 97 for i in IDS]
    check_logits("qwen2-bias-bf16-plain-absmax-short-block", d, ids, hm.llama_forward(wq, c, ids),
                 hm.llama_forward(w, c, ids))
    # Phi-3: qkv_proj and gate_up_proj quantized whole, as bitsandbytes quantizes a fused Linear
    d, c, wq, w = make("phi3", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=89, partial_rotary_factor=0.5), arch="phi3", seed=53)
    ids = [i % 89 for i in IDS]
    check_logits("phi3-fused-quantized-whole", d, ids, hm.llama_forward(wq, c, ids), hm.llama_forward(w, c, ids))


def training_case():
    gqa = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               vocab_size=61)
    n0 = len(tp.results)
    tp.run_case("bnb-gqa-all-linear", gqa, "llama", False, False, list(tp.MODULES), 4, 8, False, 3, 2, 1, 12, 1e-2,
                0.01, 1.0, "linear", 1, 54, model_fn=lambda d, c, w: bnb_ref.write_checkpoint(d, c, w, nested=True))
    for name, ok, msg in tp.results[n0:]:
        R.record(name, ok, msg)


def resume_case():
    """A run on a checkpoint resumed from its own checkpoint gives the bits of one made in one go."""
    d = ch.scratch("bnb")
    model, data = os.path.join(d, "llama"), os.path.join(d, "resume.jsonl")
    g = torch.Generator().manual_seed(6)
    with open(data, "w") as f:
        for _ in range(8):
            f.write('{"input_ids": %s}\n' % torch.randint(0, 128, (11,), generator=g).tolist())
    common = ["train", "-m", model, "--data", data, "--format", "tokens", "--batch", "2", "--seq", "10", "--r", "4",
              "--targets", "all-linear", "--schedule", "constant", "--lr", "1e-2", "-t", "2"]
    straight, parts = os.path.join(d, "straight"), os.path.join(d, "parts")
    for p in (straight, parts):
        shutil.rmtree(p, ignore_errors=True)
    rc1, _, e1 = ch.run(common + ["-o", straight, "--steps", "4"])
    rc2, _, e2 = ch.run(common + ["-o", parts, "--steps", "2", "--save-every", "2"])
    rc3, _, e3 = ch.run(common + ["-o", parts, "--steps", "4", "--resume"])
    same = rc1 == rc2 == rc3 == 0 and open(os.path.join(straight, "adapter_model.safetensors"), "rb").read() == \
        open(os.path.join(parts, "adapter_model.safetensors"), "rb").read()
    R.record("resume-bit-identical", same and "continuing from" in e3 and "bitsandbytes 4-bit checkpoint" in e1,
             f"exits {rc1} {rc2} {rc3}; adapters {'identical' if same else 'differ'}" + ("" if same else (e1 + e3)[-300:]))


def rewrite(src, name, tensor_fn=None, config_fn=None):
    """A copy of model dir src with its tensors and config changed."""
    d = os.path.join(ch.scratch("bnb"), "bad-" + name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(src, d)
    if tensor_fn:
        t = hm.load_safetensors(os.path.join(d, "model.safetensors"))
        tensor_fn(t)
        hm.save_safetensors(os.path.join(d, "model.safetensors"), t)
    if config_fn:
        path = os.path.join(d, "config.json")
        c = json.load(open(path))
        config_fn(c)
        json.dump(c, open(path, "w"))
    return d


def set_state(key, value):
    def fn(t):
        k = "model.layers.1.mlp.up_proj.weight.quant_state.bitsandbytes__nf4"
        s = json.loads(bytes(t[k].tolist()).decode())
        s[key] = value
        t[k] = torch.tensor(list(json.dumps(s).encode()), dtype=torch.uint8)
    return fn


def set_quant(**kv):
    return lambda c: c["quantization_config"].update(kv)


def malformed_cases():
    src = os.path.join(ch.scratch("bnb"), "llama")
    up = "model.layers.1.mlp.up_proj.weight"

    def drop(suffix):
        return lambda t: t.pop(up + suffix)

    def shorten(suffix):
        return lambda t: t.__setitem__(up + suffix, t[up + suffix][:-1])

    def not_json(t):
        t[up + ".quant_state.bitsandbytes__nf4"] = torch.tensor(list(b"{\"quant_type\": \"nf4\""), dtype=torch.uint8)

    def other_map(t):
        t[up + ".quant_map"] = t[up + ".quant_map"].clone()
        t[up + ".quant_map"][3] = 0.25

    def renamed_state(t):  # as fp4 would be saved
        t[up + ".quant_state.bitsandbytes__fp4"] = t.pop(up + ".quant_state.bitsandbytes__nf4")

    cases = [
        ("absmax-missing", drop(".absmax"), None, '"model.layers.1.mlp.up_proj.weight.absmax" is missing'),
        ("nested-absmax-short", shorten(".nested_absmax"), None, "nested_absmax\" is F32 with 1 elements, expected F32 with 2"),
        ("codes-short", lambda t: t.__setitem__(up, t[up][:-1]), None, "expected U8 of"),
        ("state-not-json", not_json, None, "quantization state is not a JSON object"),
        ("state-blocksize-128", set_state("blocksize", 128), None, "blocksize 128 is not supported, only 64"),
        ("state-shape", set_state("shape", [160, 64]), None, "has shape [160, 64], expected [160, 128]"),
        ("state-fp4", set_state("quant_type", "fp4"), None, "quant_type \"fp4\" is not supported"),
        ("state-fp4-name", renamed_state, None, "quantized to bitsandbytes' fp4"),
        ("state-nested-dtype", set_state("nested_dtype", "float16"), None, "\"nested_dtype\" must be \"float32\""),
        ("quant-map", other_map, None, "quant_map\"[3] is 0.25, not NF4's"),
        ("config-8bit", None, set_quant(load_in_4bit=False, _load_in_4bit=False, load_in_8bit=True),
         "8-bit (LLM.int8) checkpoints are not supported"),
        ("config-fp4", None, set_quant(bnb_4bit_quant_type="fp4"), "bnb_4bit_quant_type \"fp4\" is not supported"),
        ("config-gptq", None, lambda c: c.__setitem__("quantization_config", {"quant_method": "gptq", "bits": 4}),
         "quant_method \"gptq\" is not supported"),
    ]
    for name, tfn, cfn, want in cases:
        d = rewrite(src, name, tfn, cfn)
        rc, _, err = ch.run(["logits", "-m", d, "--ids", "1 2 3", "-o", os.path.join(d, "x.npy")])
        R.record("malformed: " + name, rc == 1 and "lorac: error:" in err and want in err and "Sanitizer" not in err,
                 f"exit {rc}: {err.strip()[-220:]}")


def refused_cases():
    d = os.path.join(ch.scratch("bnb"), "llama")
    ad = os.path.join(ch.scratch("bnb"), "llama-adapter")
    out = os.path.join(ch.scratch("bnb"), "out")
    data = os.path.join(ch.scratch("bnb"), "rows.jsonl")
    with open(data, "w") as f:
        f.write('{"input_ids": [1, 2, 3, 4, 5, 6]}\n')
    for name, args, want in [
        ("export-gguf", ["convert", "--to", "gguf", d, "-o", out + ".gguf"], "bitsandbytes 4-bit checkpoint"),
        ("train-full", ["train", "-m", d, "--data", data, "--format", "tokens", "--full", "-o", out + "-full",
                        "--steps", "1", "--seq", "6"], "full training needs the unquantized model"),
    ]:
        rc, _, err = ch.run(args)
        R.record("refused: " + name, rc == 1 and want in err and "Sanitizer" not in err, f"exit {rc}: {err.strip()[-200:]}")


def merge_cases():
    """merge into a bitsandbytes checkpoint: every projection dequantized to
    the dtype it was quantized from, the adapter added, no quantization left."""
    for name in ("llama", "qwen2"):
        d = os.path.join(ch.scratch("bnb"), name)
        out = os.path.join(ch.scratch("bnb"), name + "-merged")
        c, _ = hm.load_model(d)
        wq = bnb_ref.read_checkpoint(d)
        ad = os.path.join(ch.scratch("bnb"), name + "-merge-adapter")
        ch.write_random_adapter(ad, c, {"r": 4, "lora_alpha": 8, "target_modules": list(pr.PROJ_BLOCK)}, seed=11)
        shutil.rmtree(out, ignore_errors=True)
        rc, _, err = ch.run(["merge", "-m", d, "--adapter", ad, "-o", out])
        if rc != 0:
            R.record(f"merge-{name}", False, f"exit {rc}: {err.strip()[-200:]}")
            continue
        cfg = json.load(open(os.path.join(out, "config.json")))
        header, _, _ = hm.read_safetensors_header(os.path.join(out, "model.safetensors"))
        dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
        ids = [i % c["vocab_size"] for i in IDS]
        # the reference's merge: W + s·B·A in float64, rounded to float32, then to the checkpoint's dtype
        want_dtype = {"float32": "F32", "bfloat16": "BF16"}[c["torch_dtype"]]
        tdt = hm.ST_DTYPES[want_dtype][0]
        merged = {k: v.to(torch.float32).to(tdt).to(torch.float64) for k, v in pr.apply_adapters(wq, c, [(ad, 1.0)]).items()}
        ref = hm.llama_forward(merged, c, ids)
        got, err = ch.logits(out, ids, scratch_name="bnb")
        e = ch.rel(got, ref) if got is not None else float("inf")
        R.record(f"merge-{name}-dequantized", "quantization_config" not in cfg and dtypes == {want_dtype} and e <= TOL,
                 f"quantization_config {'gone' if 'quantization_config' not in cfg else 'kept'}; dtypes {sorted(dtypes)} "
                 f"(want {want_dtype}); logits of the merged model vs the reference's merge of the checkpoint's "
                 f"weights: {e:.2e} (tol {TOL})")


def inspect_case():
    d = os.path.join(ch.scratch("bnb"), "llama")
    c, _ = hm.load_model(d)
    rc, out, err = ch.run(["inspect", d, "--json"])
    info = json.loads(out) if rc == 0 else {}
    want = sum(int(np.prod(s)) for s in hm.tensor_shapes(c).values())
    R.record("inspect-counts-parameters", info.get("n_params") == want and info.get("quantization") == "bitsandbytes-nf4",
             f"exit {rc}: n_params {info.get('n_params')} (the unquantized model has {want}), quantization "
             f"{info.get('quantization')}")


def main():
    torch.set_num_threads(2)
    shutil.rmtree(ch.scratch("bnb"), ignore_errors=True)
    logits_cases()
    training_case()
    resume_case()
    malformed_cases()
    refused_cases()
    merge_cases()
    inspect_case()
    R.finish()


if __name__ == "__main__":
    main()
