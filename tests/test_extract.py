"""lorac extract against numpy: the adapter of a model that differs from
its base by a LoRA update, and the best low-rank approximation of a full
fine-tune.

Everything under $LORAC_TEST_TMP/extract/:

  (a) a random tiny Llama (F32, and a BF16 base with an F32 tuned model, as
      `train --full` writes them) plus a random rank-4 adapter merged in
      Python (float64, then rounded to the tuned model's dtype):
      `lorac extract --r 4` gives an adapter whose s*B@A equals the update
      to 1e-5 relative on every projection, and reports >= 99.999% energy;
      the same with --alpha (another scale, the same product) and with
      --targets/--layers (only those modules are written);
  (b) a "full fine-tune": a perturbation of full rank with a decaying
      spectrum on every projection; at ranks 1, 2, 4, 8, 16 the reported
      energy grows and equals 1 - ||dW - s*B@A||_F^2/||dW||^2 of the adapter
      written, and that residual matches Eckart-Young's optimum (the sum of
      the dropped sigma^2 of numpy's SVD of the same dW) to 1e-6; the adapter
      is the same for the same seed;
  (c) `lorac train --full` for a few steps on the real stories260K model
      (from the fixtures), then extract at ranks 2, 8, 32: energy grows, and
      the residual is within 5% of the optimum computed by numpy with the
      default 2 power iterations, within 1e-4 with 8;
  (d) errors: models of different shapes, r larger than a matrix, missing
      flags, an unknown target;
  (e) Phi-3: a rank-4 update of each fused qkv_proj / gate_up_proj (one A
      over its rows) comes back from one SVD per fused module, subsets by
      --targets qkv_proj,down_proj, and q_proj alone refused.

Run alone: LORAC_BIN=build/lorac /usr/bin/python3 tests/test_extract.py
"""

import json
import os
import shutil
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))
import cli_harness as ch  # noqa: E402
import hf_model as hm  # noqa: E402
import peft_ref as pr  # noqa: E402

TMP = ch.scratch("extract")
SHAPE = ch.TINY_SHAPE

results = ch.Results("test_extract")
record = results.record
lorac = ch.run


def extract(base, tuned, out, r, extra=()):
    """Runs lorac extract --json; returns (report dict or None, stderr)."""
    shutil.rmtree(out, ignore_errors=True)
    rc, so, se = lorac(["extract", "--base", base, "--tuned", tuned, "--r", str(r), "-o", out, "--json"] + list(extra))
    if rc != 0:
        return None, se
    return json.loads(so), se


def write_tuned(dir, c, weights, deltas, dtype):
    """A model directory with weights + deltas (float64) rounded to dtype."""
    os.makedirs(dir, exist_ok=True)
    tdt = hm.ST_DTYPES[dtype][0]
    out = {}
    for k, v in weights.items():
        w = v.to(torch.float64)
        if k in deltas:
            w = w + deltas[k]
        out[k] = w.to(tdt)
    cc = dict(c)
    cc["torch_dtype"] = hm.ST_TO_CONFIG_DTYPE[dtype]
    with open(os.path.join(dir, "config.json"), "w") as f:
        json.dump(cc, f, indent=2)
    hm.save_safetensors(os.path.join(dir, "model.safetensors"), out, metadata={"format": "pt"})
    return hm.load_model(dir)[1]


def actual_deltas(base_w, tuned_w):
    """dW = tuned - base in float64 for every projection, as lorac sees them."""
    return {k: tuned_w[k].to(torch.float64) - base_w[k].to(torch.float64)
            for k in base_w if any(p in k for p in pr.PROJ_BLOCK) and k.endswith("proj.weight")}


def rel(a, b):
    return float((a - b).abs().max() / max(b.abs().max(), 1e-300))


# ---------------------------------------------------------------------------
# (a) a merged adapter comes back
# ---------------------------------------------------------------------------

def case_recover(name, base_dtype, tuned_dtype):
    base = os.path.join(TMP, f"{name}-base")
    c, w = hm.make_random_model(base, SHAPE, dtype=base_dtype, seed=1)
    names = pr.projection_names(c)
    ab = pr.random_lora(c, {n: 4 for n in names}, seed=2)
    scale = 2.0  # lora_alpha 8 / r 4
    deltas = {n + ".weight": scale * (B.double() @ A.double()) for n, (A, B) in ab.items()}
    tuned = os.path.join(TMP, f"{name}-tuned")
    tw = write_tuned(tuned, c, w, deltas, tuned_dtype)
    # the update as stored: for F32 the rounding of W + dW is ~1e-7 of W
    want = actual_deltas(w, tw)
    for label, extra in [("", []), ("-alpha", ["--alpha", "32"])]:
        out = os.path.join(TMP, f"{name}-ad{label}")
        rep, err = extract(base, tuned, out, 4, extra)
        if rep is None:
            record(f"{name}{label}", False, f"extract failed: {err.strip()[-800:]}")
            continue
        got = pr.delta_weights(out, c)
        worst = max(rel(got[k], want[k]) for k in want)
        energy = min(m["energy"] for m in rep["modules"])
        cfg = json.load(open(os.path.join(out, "adapter_config.json")))
        alpha_ok = cfg["r"] == 4 and cfg["lora_alpha"] == (32 if extra else 4)
        ok = set(got) == set(want) and worst <= 1e-5 and energy >= 0.99999 and alpha_ok and len(rep["modules"]) == 21
        record(f"{name}{label}", ok, f"{len(got)} modules, s*B@A vs dW largest rel diff {worst:.2e} (tol 1e-5), "
               f"min energy {energy:.7f}, r {cfg['r']} alpha {cfg['lora_alpha']}")
    # a subset of targets and layers
    out = os.path.join(TMP, f"{name}-subset")
    rep, err = extract(base, tuned, out, 4, ["--targets", "q_proj,down_proj", "--layers", "0,2"])
    if rep is None:
        record(f"{name}-subset", False, f"extract failed: {err.strip()[-800:]}")
        return
    got = pr.delta_weights(out, c)
    expect = {f"model.layers.{l}.{b}.weight" for l in (0, 2) for b in ("self_attn.q_proj", "mlp.down_proj")}
    worst = max(rel(got[k], want[k]) for k in got)
    record(f"{name}-subset", set(got) == expect and worst <= 1e-5,
           f"modules {sorted(got)} ; largest rel diff {worst:.2e}")


def case_recover_phi3():
    """Phi-3's fused qkv_proj and gate_up_proj: a rank-4 update of each fused weight (one A over its rows, as
    PEFT's) comes back from one SVD per fused module; --targets qkv_proj,down_proj extracts those only, and
    q_proj alone is refused (q, k and v are one module)."""
    base = os.path.join(TMP, "phi3-base")
    c, w = hm.make_random_model(base, dict(SHAPE, partial_rotary_factor=0.5), dtype="F32", seed=1, arch="phi3")
    names = pr.projection_names(c)
    ab = pr.random_lora(c, {n: 4 for n in names}, seed=3)
    deltas = {n + ".weight": 2.0 * (B.double() @ A.double()) for n, (A, B) in ab.items()}
    tuned = os.path.join(TMP, "phi3-tuned")
    want = actual_deltas(w, write_tuned(tuned, c, w, deltas, "F32"))
    out = os.path.join(TMP, "phi3-ad")
    rep, err = extract(base, tuned, out, 4)
    if rep is None:
        record("phi3-recover", False, f"extract failed: {err.strip()[-800:]}")
        return
    got = pr.delta_weights(out, c)
    worst = max(rel(got[k], want[k]) for k in want)
    kinds = sorted(rep["kinds"])
    ok = set(got) == set(want) and len(want) == 12 and worst <= 1e-5 and len(rep["modules"]) == 12 and \
        kinds == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
    record("phi3-recover", ok, f"{len(got)} fused/plain modules, s*B@A vs dW largest rel diff {worst:.2e} (tol 1e-5), "
           f"{len(rep['modules'])} reported, kinds {kinds}")
    rep, err = extract(base, tuned, out + "-subset", 4, ["--targets", "qkv_proj,down_proj", "--layers", "1"])
    got = pr.delta_weights(out + "-subset", c) if rep else {}
    expect = {"model.layers.1.self_attn.qkv_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    record("phi3-subset", set(got) == expect and max(rel(got[k], want[k]) for k in got) <= 1e-5,
           f"modules {sorted(got)} {err.strip()[-300:]}")
    rep, err = extract(base, tuned, out + "-q", 4, ["--targets", "q_proj"])
    record("phi3-refuses-q_proj-alone", rep is None and "qkv_proj is one module" in err, err.strip()[-300:])


# ---------------------------------------------------------------------------
# (b) a full-rank update with a decaying spectrum
# ---------------------------------------------------------------------------

def decaying_delta(shape, g):
    """U diag(sigma) V^T with random orthonormal U, V and sigma_i = 0.05 * 0.8^i."""
    o, i = shape
    k = min(o, i)
    U, _ = torch.linalg.qr(torch.randn(o, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(i, k, generator=g, dtype=torch.float64))
    s = 0.05 * 0.8 ** torch.arange(k, dtype=torch.float64)
    return (U * s) @ V.T


def check_ranks(name, base, tuned, c, want, ranks, excess_tol, extra=()):
    """Extract at each rank. The reported energy must grow with the rank and
    equal 1 - residual/||dW||^2 of the adapter written; the residual
    ||dW - s*B@A||_F^2 must be at least Eckart-Young's optimum (the sum of
    the dropped sigma^2 from numpy's SVD, which nothing beats) and at most
    that optimum times 1 + excess_tol (how close the randomized SVD gets)."""
    svals = {k: np.linalg.svd(v.numpy(), compute_uv=False) for k, v in want.items()}
    prev, ok, lines = None, True, []
    for r in ranks:
        out = os.path.join(TMP, f"{name}-r{r}")
        rep, err = extract(base, tuned, out, r, extra)
        if rep is None:
            record(f"{name}-r{r}", False, f"extract failed: {err.strip()[-800:]}")
            return
        got = pr.delta_weights(out, c)
        worst_excess, worst_energy, below = 0.0, 0.0, False
        for m in rep["modules"]:
            key = next(k for k in want if k.startswith(f"model.layers.{m['layer']}.") and f".{m['module']}." in k)
            s = svals[key]
            total, opt = float((s ** 2).sum()), float((s[r:] ** 2).sum())
            res = float(((want[key] - got[key]) ** 2).sum())
            # 1e-6 of ||dW||^2 is the rounding of the f32 factors
            if res - opt > 1e-6 * total:
                worst_excess = max(worst_excess, (res - opt) / opt)
            below |= res < opt - 1e-6 * total
            worst_energy = max(worst_energy, abs(m["energy"] - (1 - res / total)))
            if m["delta_norm2"] <= 0 or abs(m["delta_norm2"] - total) > 1e-9 * total:
                ok = False
                lines.append(f"{key}: ||dW||^2 {m['delta_norm2']} vs numpy {total}")
        mean = rep["total"]["energy_mean"]
        this_ok = worst_excess <= excess_tol and not below and worst_energy <= 1e-6 and (prev is None or mean > prev)
        ok &= this_ok
        lines.append(f"r={r}: mean energy {mean:.6f} (= 1 - residual/||dW||^2 to {worst_energy:.1e}), "
                     f"residual^2 within {worst_excess:.1e} of the optimum{' BELOW IT' if below else ''}")
        prev = mean
    record(name + "".join(extra), ok, "; ".join(lines))


def case_full_rank():
    base = os.path.join(TMP, "full-base")
    c, w = hm.make_random_model(base, SHAPE, dtype="F32", seed=3)
    g = torch.Generator().manual_seed(4)
    deltas = {n + ".weight": decaying_delta(w[n + ".weight"].shape, g) for n in pr.projection_names(c)}
    tuned = os.path.join(TMP, "full-tuned")
    tw = write_tuned(tuned, c, w, deltas, "F32")
    check_ranks("full-rank", base, tuned, c, actual_deltas(w, tw), [1, 2, 4, 8, 16], 1e-6)
    # deterministic for a seed
    a, _ = extract(base, tuned, os.path.join(TMP, "seed-a"), 8, ["--seed", "7"])
    b, _ = extract(base, tuned, os.path.join(TMP, "seed-b"), 8, ["--seed", "7"])
    same = a is not None and b is not None and open(os.path.join(TMP, "seed-a", "adapter_model.safetensors"), "rb").read() == \
        open(os.path.join(TMP, "seed-b", "adapter_model.safetensors"), "rb").read()
    record("same-seed", same, "two runs with --seed 7 write identical adapter files" if same else "runs differ")


# ---------------------------------------------------------------------------
# (c) a real full fine-tune
# ---------------------------------------------------------------------------

def case_trained():
    ckpt = os.path.join(ch.FIXTURES, "llama2c", "stories260K.bin")
    if not os.path.exists(ckpt):
        record("train-full", False, f"fixture {ckpt} missing (set LORAC_FIXTURES)")
        return
    base = os.path.join(TMP, "s260k")
    shutil.rmtree(base, ignore_errors=True)
    rc, _, err = lorac(["convert", "--from", "llama2c", ckpt, "--tokenizer", os.path.join(ch.FIXTURES, "llama2c", "tok512.bin"),
                        "-o", base])
    if rc:
        record("train-full", False, f"convert failed: {err[-500:]}")
        return
    text = open(os.path.join(ch.FIXTURES, "datasets", "tinystories", "tinystories_train_head.txt"), encoding="utf-8").read()
    paras = [p.strip() for p in text.split("\n\n") if p.strip()][:200]
    data = os.path.join(TMP, "train.jsonl")
    with open(data, "w") as f:
        for p in paras:
            f.write(json.dumps({"text": p}) + "\n")
    tuned = os.path.join(TMP, "s260k-full")
    shutil.rmtree(tuned, ignore_errors=True)
    rc, _, err = lorac(["train", "-m", base, "--data", data, "-o", tuned, "--full", "--steps", "4", "--batch", "4",
                        "--seq", "64", "--lr", "1e-3", "-t", "2"])
    if rc:
        record("train-full", False, f"train --full failed: {err[-800:]}")
        return
    c, bw = hm.load_model(base)
    tw = hm.load_model(tuned)[1]
    want = actual_deltas(bw, tw)
    # Adam's first steps give a flat spectrum, where two power iterations
    # land within a few percent of the optimum and eight within ~1e-5
    check_ranks("train-full", base, tuned, c, want, [2, 8, 32], 0.05)
    check_ranks("train-full", base, tuned, c, want, [2, 8], 1e-4, ["--power-iters", "8"])


# ---------------------------------------------------------------------------
# (d) errors
# ---------------------------------------------------------------------------

def case_errors():
    base = os.path.join(TMP, "full-base")
    other = os.path.join(TMP, "other-shape")
    hm.make_random_model(other, dict(SHAPE, intermediate_size=80), dtype="F32", seed=5)
    out = os.path.join(TMP, "err")
    cases = [
        ("shape", ["--base", base, "--tuned", other, "--r", "4", "-o", out], 1, "intermediate_size 96"),
        ("rank", ["--base", base, "--tuned", base, "--r", "40", "-o", out, "--targets", "k_proj"], 1, "exceeds the k_proj matrix"),
        ("missing-r", ["--base", base, "--tuned", base, "-o", out], 2, "--r"),
        ("target", ["--base", base, "--tuned", base, "--r", "2", "-o", out, "--targets", "foo"], 2, "unknown target module 'foo'"),
        ("layers", ["--base", base, "--tuned", base, "--r", "2", "-o", out, "--layers", "7"], 2, "outside 0..2"),
        ("no-model", ["--base", os.path.join(TMP, "nope"), "--tuned", base, "--r", "2", "-o", out], 1, "nope"),
    ]
    for name, args, want_rc, want_msg in cases:
        rc, _, err = lorac(["extract"] + args)
        ok = rc == want_rc and want_msg in err and "Segmentation" not in err
        record(f"error-{name}", ok, f"exit {rc} (want {want_rc}): {err.strip().splitlines()[0] if err.strip() else ''}")
    # the same base and tuned model: dW = 0, an all-zero adapter with energy 1
    rep, err = extract(base, base, out, 2)
    ok = rep is not None and all(m["energy"] == 1.0 and m["delta_norm2"] == 0 for m in rep["modules"])
    if ok:
        t = hm.load_safetensors(os.path.join(out, "adapter_model.safetensors"))
        ok = all(float(v.abs().max()) == 0 for v in t.values())
    record("zero-delta", ok, "identical models give a zero adapter with energy 1" if ok else f"{err[-300:]}")


def main():
    case_recover("f32", "F32", "F32")
    case_recover("bf16-base", "BF16", "F32")
    case_recover_phi3()
    case_full_rank()
    case_trained()
    case_errors()
    results.finish()


if __name__ == "__main__":
    main()
