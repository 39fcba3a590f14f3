"""QLoRA: a base whose projections are held in NF4 (`--quantize nf4`).

Against tests/reference/nf4_ref.py, a PyTorch NF4 written from
bitsandbytes' semantics (blocks of 64 of the flattened weight, absmax,
nearest of the 16 NormalFloat values):

- `lorac logits --quantize nf4` equals the float64 reference forward on the
  reference's dequantized projections (Llama with GQA, Qwen2 with biases and
  BF16 weights whose blocks run across rows, Phi-3's fused projections
  quantized as bitsandbytes quantizes the fused tensor, GPT-2's Conv1D
  weights quantized as their Linear (out, in) form, a PEFT adapter on the
  quantized base, the portable kernels) to 1e-5, and is further than that
  from the unquantized model (the flag did something);
- a projection whose rows are not a multiple of 8 long stays as it was, and
  the program says so;
- `lorac eval --quantize nf4` gives the reference's mean loss over the
  dequantized base;
- `lorac train --quantize nf4`: 3 AdamW steps of LoRA match torch autograd
  over the dequantized base (losses and every A and B to 1e-4);
- resuming a QLoRA run from its checkpoint gives the bits of the run made
  in one go, and a checkpoint of a quantized base is not resumed without
  --quantize nf4 (nor the other way round);
- bad flags are refused.

Run alone: LORAC_BIN=build/lorac /usr/bin/python3 tests/test_qlora.py
"""
import json
import os
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))
sys.path.insert(0, HERE)
import cli_harness as ch  # noqa: E402
import gpt2_ref  # noqa: E402
import hf_model as hm  # noqa: E402
import nf4_ref  # noqa: E402
import peft_ref as pr  # noqa: E402
import test_train_parity as tp  # noqa: E402

R = ch.Results("test_qlora")
TOL = 1e-5
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv_proj", "gate_up_proj")


def quantized_base(c, w, keep_in=None):
    """w with every decoder projection through the NF4 round trip, except
    those whose input width is in keep_in."""
    out = dict(w)
    for k, v in w.items():
        if k.endswith(".weight") and k.split(".")[-2] in PROJ and ".layers." in k:
            if keep_in and v.shape[1] in keep_in:
                continue
            out[k] = nf4_ref.roundtrip(v)
    return out


def check_logits(name, model, ids, ref_q, ref_plain, extra=(), env=None, want_stderr=None):
    ch.check_quantized_logits(R, name, model, ids, ref_q, ref_plain, ("--quantize", "nf4") + tuple(extra), env=env,
                              want_stderr=want_stderr, scratch_name="qlora", tol=TOL)


def llama_cases():
    d = ch.scratch("qlora")
    ids = [3, 17, 42, 5, 99, 64, 1, 23, 77, 8, 120, 31]
    # GQA, untied, F32
    c, w = hm.make_random_model(os.path.join(d, "llama"), dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                num_attention_heads=8, num_key_value_heads=2, vocab_size=128), seed=31)
    check_logits("llama-gqa-f32", os.path.join(d, "llama"), ids, hm.llama_forward(quantized_base(c, w), c, ids),
                 hm.llama_forward(w, c, ids))
    env = dict(os.environ, LORAC_ISA="portable")
    check_logits("llama-gqa-f32-portable", os.path.join(d, "llama"), ids, hm.llama_forward(quantized_base(c, w), c, ids),
                 hm.llama_forward(w, c, ids), env=env)
    # a PEFT adapter on every projection of the quantized base, unmerged
    ad = os.path.join(d, "llama-adapter")
    ch.write_random_adapter(ad, c, {"r": 4, "lora_alpha": 8, "target_modules": list(pr.PROJ_BLOCK)}, seed=7)
    check_logits("llama-adapter-on-nf4", os.path.join(d, "llama"), ids,
                 pr.forward(quantized_base(c, w), c, ids, [(ad, 1.0)]), pr.forward(w, c, ids, [(ad, 1.0)]),
                 extra=("--adapter", ad))
    # Qwen2: q/k/v biases, BF16 weights; hidden 40: blocks of 64 run across rows
    c, w = hm.make_random_model(os.path.join(d, "qwen2"), dict(hidden_size=40, intermediate_size=72, num_hidden_layers=2,
                                num_attention_heads=5, num_key_value_heads=1, vocab_size=97), dtype="BF16", arch="qwen2",
                                bias=True, seed=32)
    ids97 = [i % 97 for i in ids]
    check_logits("qwen2-bias-bf16-rows-across-blocks", os.path.join(d, "qwen2"), ids97,
                 hm.llama_forward(quantized_base(c, w), c, ids97), hm.llama_forward(w, c, ids97))
    # Phi-3: q, k, v (and gate, up) are row blocks of one tensor; lorac quantizes each block, which are the
    # blocks of the whole tensor when each block starts 64 elements in (hidden 64 here; 3072 in the released ones)
    c, w = hm.make_random_model(os.path.join(d, "phi3"), dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, vocab_size=89, partial_rotary_factor=0.5),
                                arch="phi3", seed=33)
    ids89 = [i % 89 for i in ids]
    check_logits("phi3-fused-as-one-tensor", os.path.join(d, "phi3"), ids89,
                 hm.llama_forward(quantized_base(c, w), c, ids89), hm.llama_forward(w, c, ids89))
    # hidden 36: the six projections 36 wide (q, k, v, gate, up, and o: 3 heads of 12) stay; down (64 wide) is quantized
    c, w = hm.make_random_model(os.path.join(d, "odd"), dict(hidden_size=36, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=3, num_key_value_heads=3, vocab_size=61), seed=34)
    ids61 = [i % 61 for i in ids]
    check_logits("rows-not-multiple-of-8-kept", os.path.join(d, "odd"), ids61,
                 hm.llama_forward(quantized_base(c, w, keep_in={36}), c, ids61), hm.llama_forward(w, c, ids61),
                 want_stderr="6 left as they were")


def eval_case():
    d = ch.scratch("qlora")
    c, w = hm.load_model(os.path.join(d, "llama"))
    rows = [[3, 17, 42, 5, 99, 64, 1, 23, 77, 8], [120, 31, 7, 7, 2, 90]]
    data = os.path.join(d, "eval.jsonl")
    with open(data, "w") as f:
        for r in rows:
            f.write('{"input_ids": %s}\n' % r)
    rc, out, err = ch.run(["eval", "-m", os.path.join(d, "llama"), "--data", data, "--format", "tokens", "--json",
                           "--quantize", "nf4", "-t", "2"])
    if rc != 0:
        R.record("eval-loss-on-nf4", False, f"exit {rc}: {err.strip()[-200:]}")
        return
    got = json.loads(out)["loss"]
    wq, total, count = quantized_base(c, w), 0.0, 0
    plain = 0.0
    for r in rows:
        for weights, acc in ((wq, "q"), (w, "p")):
            lg = hm.llama_forward(weights, c, r)
            ce = sum((torch.logsumexp(lg[t], 0) - lg[t, r[t + 1]]).item() for t in range(len(r) - 1))
            if acc == "q":
                total += ce
            else:
                plain += ce
        count += len(r) - 1
    ref, ref_plain = total / count, plain / count
    e = abs(got - ref) / abs(ref)
    R.record("eval-loss-on-nf4", e <= 1e-5 and abs(ref_plain - ref) / abs(ref) > 1e-4,
             f"loss {got:.6f} vs reference {ref:.6f} (rel {e:.1e}); unquantized {ref_plain:.6f}")


def gpt2_case():
    d = ch.scratch("qlora")
    c = gpt2_ref.make_config(64, 2, 4, 97, 32, n_inner=96)
    c, w = gpt2_ref.make_random_model(os.path.join(d, "gpt2"), c, seed=35)
    ids = [3, 17, 42, 5, 90, 64, 1, 23]
    wq = dict(w)
    for k, v in w.items():  # Conv1D (in, out): quantized as the Linear (out, in) it is
        if k.endswith(".weight") and any(m in k for m in (".c_attn.", ".c_proj.", ".c_fc.")):
            wq[k] = nf4_ref.roundtrip(v.t().contiguous()).t()
    check_logits("gpt2-conv1d-as-linear", os.path.join(d, "gpt2"), ids, gpt2_ref.forward(wq, c, ids),
                 gpt2_ref.forward(w, c, ids))


def training_cases():
    gqa = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               vocab_size=61)
    n0 = len(tp.results)
    tp.run_case("qlora-gqa-bias-all-linear", gqa, "llama", False, True, list(tp.MODULES), 4, 8, False, 3, 2, 1, 12, 1e-2,
                0.01, 1.0, "linear", 1, 41, extra_args=("--quantize", "nf4"), base_fn=quantized_base)
    tp.run_case("qlora-bf16-tied-qv", gqa, "llama", True, False, ["q_proj", "v_proj", "down_proj"], 4, 16, False, 3, 2, 2,
                12, 5e-3, 0.0, 0.5, "constant", 0, 42, extra_args=("--quantize", "nf4"), base_fn=quantized_base,
                dtype="BF16")
    for name, ok, msg in tp.results[n0:]:
        R.record(name, ok, msg)


def resume_case():
    d = ch.scratch("qlora")
    model, data = os.path.join(d, "llama"), os.path.join(d, "resume.jsonl")
    g = torch.Generator().manual_seed(5)
    with open(data, "w") as f:
        for _ in range(16):
            f.write('{"input_ids": %s}\n' % torch.randint(0, 128, (13,), generator=g).tolist())
    common = ["train", "-m", model, "--data", data, "--format", "tokens", "--batch", "2", "--seq", "12", "--r", "4",
              "--targets", "all-linear", "--schedule", "constant", "--lr", "1e-2", "--quantize", "nf4", "-t", "2"]
    straight, parts = os.path.join(d, "straight"), os.path.join(d, "parts")
    rc1, _, e1 = ch.run(common + ["-o", straight, "--steps", "4"])
    rc2, _, e2 = ch.run(common + ["-o", parts, "--steps", "2", "--save-every", "2"])
    plain = [a for a in common if a not in ("--quantize", "nf4")]
    rc3, _, e3 = ch.run(plain + ["-o", parts, "--steps", "4", "--resume"])
    R.record("resume-needs-quantize", rc3 == 1 and "trained on an NF4-quantized base; resume with --quantize nf4" in e3,
             f"exit {rc3}: {e3.strip()[-200:]}")
    rc4, _, e4 = ch.run(common + ["-o", parts, "--steps", "4", "--resume"])
    same = False
    if rc1 == rc2 == rc4 == 0:
        a = open(os.path.join(straight, "adapter_model.safetensors"), "rb").read()
        b = open(os.path.join(parts, "adapter_model.safetensors"), "rb").read()
        same = a == b
    R.record("resume-bit-identical", same and "continuing from" in e4,
             f"exits {rc1} {rc2} {rc4}; adapters {'identical' if same else 'differ'}" + ("" if same else (e1 + e2 + e4)[-300:]))


def bad_flags():
    d = ch.scratch("qlora")
    model = os.path.join(d, "llama")
    for args, want in [(["logits", "-m", model, "--ids", "1 2", "-o", os.path.join(d, "x.npy"), "--quantize", "q4"],
                        "--quantize expects nf4"),
                       (["train", "-m", model, "--data", "x.jsonl", "-o", os.path.join(d, "o"), "--full", "--quantize",
                         "nf4"], "--quantize freezes a quantized base"),
                       (["generate", "-m", model, "-p", "x", "--quantize"], "--quantize")]:
        rc, _, err = ch.run(args)
        R.record("refused: " + " ".join(args[:1] + args[-2:]), rc == 2 and want in err and "Sanitizer" not in err,
                 f"exit {rc}: {err.strip()[-160:]}")


def main():
    torch.set_num_threads(2)
    shutil.rmtree(ch.scratch("qlora"), ignore_errors=True)
    llama_cases()
    eval_case()
    gpt2_case()
    training_cases()
    resume_case()
    bad_flags()
    R.finish()


if __name__ == "__main__":
    main()
