"""lorac merge against a reference merge W + sum_i scale_i * s_i * B_i @ A_i.

A random tiny Llama and two PEFT adapters written from Python (one with
rank_pattern/alpha_pattern and rsLoRA, one with layers_to_transform; they
overlap on some projections) under $LORAC_TEST_TMP/merge_reference/. Then:

  * `lorac merge --adapter a:0.7` and `--adapter a:0.7 --adapter b:0.3`: every
    adapted weight equals the float64 reference merge (tests/reference/
    peft_ref.py) to 1e-6 relative (max|d| / max|ref| per tensor, F32 base);
    every other tensor is copied bit for bit;
  * the merged model's logits equal the base with the same adapters unmerged
    (`lorac logits --adapter a:0.7 --adapter b:0.3`) and the float64
    reference to 1e-5 relative;
  * a BF16 base merged in its own dtype, and an F32 base merged with
    --dtype bf16: every weight is the reference rounded to BF16, to one BF16
    unit in the last place;
  * the same merges of a random Gemma 3 model (its norms, windows and
    scaled embedding untouched by the merge) against the same references,
    and of a random Phi-3 model with adapters on its fused qkv_proj and
    gate_up_proj (one A and one B over the fused rows, as PEFT makes them).

Run alone: LORAC_BIN=build/lorac /usr/bin/python3 tests/test_merge_reference.py
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))
import hf_model as hm  # noqa: E402
import peft_ref as pr  # noqa: E402

SRC = os.environ.get("LORAC_SRC", os.path.dirname(HERE))
LORAC = os.environ.get("LORAC_BIN") or os.path.join(SRC, "build", "lorac")
TMP = os.path.join(os.environ.get("LORAC_TEST_TMP") or os.path.join(SRC, "build", "test-tmp"), "merge_reference")
SHAPE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=89)
CFG_A = {"r": 4, "lora_alpha": 8, "use_rslora": True, "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"],
         "rank_pattern": {"down_proj": 7}, "alpha_pattern": {r"layers\.2\..*": 3}}
CFG_B = {"r": 6, "lora_alpha": 12, "target_modules": ["q_proj", "gate_proj", "up_proj"], "layers_to_transform": [0, 2]}

results = []


def record(name, ok, msg):
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {msg}", flush=True)
    results.append((name, ok))


def lorac(args):
    p = subprocess.run([LORAC] + args, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stderr


def write_adapter(dir, c, cfg, seed):
    shutil.rmtree(dir, ignore_errors=True)
    settings = pr.module_settings(cfg, c)
    ab = pr.random_lora(c, {n: s[0] for n, s in settings.items()}, seed=seed)
    pr.write_adapter(dir, cfg, pr.lora_tensors(ab))


def check_weights(name, merged_dir, w, ref, tol, bf16):
    """Every tensor of merged_dir against ref (float64); untouched ones bit for bit."""
    got = hm.load_safetensors(os.path.join(merged_dir, "model.safetensors"))
    if set(got) != set(w):
        record(name, False, f"tensor names differ: {sorted(set(got) ^ set(w))[:5]}")
        return
    worst, n_adapted = 0.0, 0
    for k, t in got.items():
        r = ref[k]
        if not torch.equal(r, w[k].to(torch.float64)):
            n_adapted += 1
        if bf16:
            # one BF16 ulp of the reference, element by element
            if t.dtype != torch.bfloat16:
                record(name, False, f"{k} is {t.dtype}, expected bfloat16")
                return
            ulp = torch.clamp(r.abs(), min=1e-30) * 2.0 ** -7
            bad = ((t.double() - r).abs() > ulp).sum().item()
            if bad:
                record(name, False, f"{k}: {bad} elements more than one BF16 ulp from the reference")
                return
        elif torch.equal(r, w[k].to(torch.float64)):
            if not torch.equal(t, w[k]):
                record(name, False, f"{k} is not adapted but not copied bit for bit")
                return
        else:
            worst = max(worst, ((t.double() - r).abs().max() / r.abs().max()).item())
    ok = worst <= tol
    record(name, ok, f"{n_adapted} adapted tensors, largest rel diff {worst:.2e} (tol {tol:.0e})" if not bf16 else
           f"{n_adapted} adapted tensors, all within one BF16 ulp of the reference")


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def f32_cases(model, c, w, a, b, ids, prefix=""):
    for name, specs in [(prefix + "merge-one", [(a, 0.7)]), (prefix + "merge-two", [(a, 0.7), (b, 0.3)])]:
        out = os.path.join(TMP, name)
        shutil.rmtree(out, ignore_errors=True)
        args = ["merge", "-m", model, "-o", out]
        for d, k in specs:
            args += ["--adapter", f"{d}:{k}"]
        rc, err = lorac(args)
        if rc != 0:
            record(name, False, f"merge exited {rc}: {err.strip()[-1500:]}")
            continue
        ref_w = pr.apply_adapters(w, c, specs)
        check_weights(name + "-weights", out, w, ref_w, 1e-6, bf16=False)
        ids_s = " ".join(map(str, ids))
        rc1, e1 = lorac(["logits", "-m", out, "--ids", ids_s, "-o", os.path.join(TMP, name + "-merged.npy")])
        unmerged = ["logits", "-m", model, "--ids", ids_s, "-o", os.path.join(TMP, name + "-unmerged.npy")]
        for d, k in specs:
            unmerged += ["--adapter", f"{d}:{k}"]
        rc2, e2 = lorac(unmerged)
        if rc1 or rc2:
            record(name + "-logits", False, f"logits failed: {e1.strip()[-500:]} {e2.strip()[-500:]}")
            continue
        m = np.load(os.path.join(TMP, name + "-merged.npy")).astype(np.float64)
        u = np.load(os.path.join(TMP, name + "-unmerged.npy")).astype(np.float64)
        ref = hm.llama_forward(ref_w, c, ids).numpy()
        d1, d2 = rel(m, u), rel(m, ref)
        record(name + "-logits", d1 <= 1e-5 and d2 <= 1e-5,
               f"merged vs unmerged rel {d1:.2e}, merged vs float64 reference rel {d2:.2e} (tol 1e-05)")


def bf16_cases(model, c, w, a, b):
    # F32 base, --dtype bf16
    out = os.path.join(TMP, "merge-dtype-bf16")
    shutil.rmtree(out, ignore_errors=True)
    rc, err = lorac(["merge", "-m", model, "--adapter", a + ":0.5", "--adapter", b, "--dtype", "bf16", "-o", out])
    if rc != 0:
        record("merge-dtype-bf16", False, f"merge exited {rc}: {err.strip()[-1000:]}")
    else:
        check_weights("merge-dtype-bf16", out, w, pr.apply_adapters(w, c, [(a, 0.5), (b, 1.0)]), 0, bf16=True)
    # BF16 base, merged in its own dtype
    base16 = os.path.join(TMP, "model-bf16")
    shutil.rmtree(base16, ignore_errors=True)
    c16, w16 = hm.make_random_model(base16, SHAPE, dtype="BF16", seed=5)
    out = os.path.join(TMP, "merge-bf16-base")
    shutil.rmtree(out, ignore_errors=True)
    rc, err = lorac(["merge", "-m", base16, "--adapter", a + ":0.7", "-o", out])
    if rc != 0:
        record("merge-bf16-base", False, f"merge exited {rc}: {err.strip()[-1000:]}")
    else:
        check_weights("merge-bf16-base", out, w16, pr.apply_adapters(w16, c16, [(a, 0.7)]), 0, bf16=True)


def main():
    os.makedirs(TMP, exist_ok=True)
    print(f"lorac: {LORAC}\nfiles: {TMP}", flush=True)
    model = os.path.join(TMP, "model")
    shutil.rmtree(model, ignore_errors=True)
    c, w = hm.make_random_model(model, SHAPE, seed=4)
    a, b = os.path.join(TMP, "adapter-a"), os.path.join(TMP, "adapter-b")
    write_adapter(a, c, CFG_A, 21)
    write_adapter(b, c, CFG_B, 22)
    ids = torch.randint(0, c["vocab_size"], (13,), generator=torch.Generator().manual_seed(9)).tolist()
    f32_cases(model, c, w, a, b, ids)
    bf16_cases(model, c, w, a, b)
    gemma = os.path.join(TMP, "model-gemma3")
    shutil.rmtree(gemma, ignore_errors=True)
    cg, wg = hm.make_random_model(gemma, dict(SHAPE, head_dim=16, sliding_window=5, sliding_window_pattern=3),
                                  arch="gemma3", tie=True, seed=6)
    ga, gb = os.path.join(TMP, "gemma3-adapter-a"), os.path.join(TMP, "gemma3-adapter-b")
    write_adapter(ga, cg, CFG_A, 23)
    write_adapter(gb, cg, CFG_B, 24)
    f32_cases(gemma, cg, wg, ga, gb, ids, prefix="gemma3-")
    # Phi-3: PEFT's adapters on its fused qkv_proj and gate_up_proj (one A, one B over the fused rows), merged into
    # the fused weights; unmerged, lorac splits each into its q, k, v (gate, up) modules sharing the A
    phi = os.path.join(TMP, "model-phi3")
    shutil.rmtree(phi, ignore_errors=True)
    cp, wp = hm.make_random_model(phi, dict(SHAPE, partial_rotary_factor=0.5, sliding_window=6), arch="phi3", seed=7)
    pa, pb = os.path.join(TMP, "phi3-adapter-a"), os.path.join(TMP, "phi3-adapter-b")
    write_adapter(pa, cp, dict(CFG_A, target_modules=["qkv_proj", "o_proj", "down_proj"],
                               alpha_pattern={r"layers\.2\.self_attn\.qkv_proj": 3}), 25)
    write_adapter(pb, cp, dict(CFG_B, target_modules=["qkv_proj", "gate_up_proj"]), 26)
    f32_cases(phi, cp, wp, pa, pb, ids, prefix="phi3-")
    phi3_adapter_cases(phi, cp, pa, model)


def phi3_adapter_cases(phi, cp, pa, llama):
    """Fused and separate projections are not each other's; lorac train makes PEFT's default for Phi-3."""
    x = os.path.join(TMP, "x.npy")
    sep = os.path.join(TMP, "adapter-separate-on-phi3")
    shutil.rmtree(sep, ignore_errors=True)
    g = torch.Generator().manual_seed(31)
    pr.write_adapter(sep, {"r": 2, "lora_alpha": 2, "target_modules": ["q_proj"]},
                     {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(2, 64, generator=g),
                      "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(64, 2, generator=g)})
    for name, model, adapter, want in [
            ("phi3-refuses-separate-q_proj", phi, sep, "adapts q_proj, but Phi3ForCausalLM fuses it into qkv_proj"),
            ("llama-refuses-fused-qkv_proj", llama, pa, "adapts Phi-3's fused qkv_proj, but LlamaForCausalLM has separate")]:
        rc, err = lorac(["logits", "-m", model, "--ids", "1 2", "-o", x, "--adapter", adapter])
        record(name, rc == 1 and want in err, f"exit {rc}: {err.strip()[-300:]}")
    p = subprocess.run([LORAC, "inspect", pa], capture_output=True, text=True)
    q = subprocess.run([LORAC, "inspect", pa, "-m", phi], capture_output=True, text=True)
    record("phi3-adapter-inspect", p.returncode == 1 and "-m MODEL" in p.stderr and q.returncode == 0 and "qkv_proj" in q.stdout,
           f"without the model: exit {p.returncode} {p.stderr.strip()[-200:]}; with it: exit {q.returncode}")
    data = os.path.join(TMP, "phi3-tokens.jsonl")
    with open(data, "w") as f:
        for i in range(8):
            f.write(json.dumps({"input_ids": [(7 * i + k) % 89 for k in range(10)]}) + "\n")
    out = os.path.join(TMP, "phi3-trained")
    shutil.rmtree(out, ignore_errors=True)
    rc, err = lorac(["train", "-m", phi, "--data", data, "--format", "tokens", "-o", out, "--steps", "2", "--batch", "2",
                     "--seq", "10"])
    cfg = json.load(open(os.path.join(out, "adapter_config.json"))) if rc == 0 else {}
    t = hm.load_safetensors(os.path.join(out, "adapter_model.safetensors")) if rc == 0 else {}
    H, KV, D = cp["num_attention_heads"], cp["num_key_value_heads"], cp["hidden_size"]
    hd = D // H
    a_key = "base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight"
    shapes_ok = t and sorted(t) == sorted(k.replace("layers.0", f"layers.{l}") for l in range(cp["num_hidden_layers"])
                                          for k in (a_key, a_key.replace("lora_A", "lora_B"))) and \
        list(t[a_key].shape) == [8, D] and list(t[a_key.replace("lora_A", "lora_B")].shape) == [(H + 2 * KV) * hd, 8]
    record("phi3-train-default-targets", rc == 0 and cfg.get("target_modules") == ["qkv_proj"] and bool(shapes_ok),
           f"exit {rc}: target_modules {cfg.get('target_modules')}, tensors {sorted(t)[:2]} {err.strip()[-300:]}")
    rc, err = lorac(["train", "-m", phi, "--data", data, "--format", "tokens", "-o", out + "-q", "--steps", "1",
                     "--targets", "q_proj,o_proj"])
    record("phi3-train-refuses-part-of-qkv", rc == 1 and "qkv_proj is one module" in err, f"exit {rc}: {err.strip()[-300:]}")
    npass = sum(1 for _, ok in results if ok)
    print(f"{npass} passed, {len(results) - npass} failed")
    return 1 if len(results) != npass or not results else 0


if __name__ == "__main__":
    sys.exit(main())
