"""lorac merge --to-adapter against PEFT's add_weighted_adapter, written
again in numpy from PEFT's source (peft/tuners/lora/model.py, with the
fixes of PRs #2918, #3111 and #3449):

  cat     A = concat_i(w_i * s_i * A_i) (rows), B = concat_i(B_i) (columns),
          r = sum of the adapters' r, zero rows/columns where an adapter
          lacks the module; lora_alpha = r, use_rslora false;
  linear  equal r required; A = sum_i sign(w_i s_i) sqrt|w_i s_i| A_i,
          B = sum_i sqrt|w_i s_i| B_i;
  svd     dW = sum_i w_i s_i B_i A_i, U S Vh = svd(dW), B = U[:, :r] S[:r],
          A = Vh[:r];
  one adapter: always linear.

Under $LORAC_TEST_TMP/combine/ with a random tiny Llama and three random
PEFT adapters (different ranks, targets, layers, alphas, one with rsLoRA):

  (a) cat: the tensors equal the numpy definition, and the model's logits
      with the combined adapter equal those with both adapters applied with
      their weights (`logits --adapter a:0.7 --adapter b:0.3`) to 1e-5;
  (b) svd at a rank holding the whole sum gives the same logits as cat; at a
      smaller rank B@A equals numpy's truncated SVD and A's rows are
      orthonormal (S is in B, as PEFT puts it);
  (c) linear (with a negative weight) and a single adapter equal the numpy
      definition on the written tensors;
  (d) errors: linear with different ranks, svd without --r, an unknown
      combination, -o with --to-adapter, adapters for another model.

Run alone: LORAC_BIN=build/lorac /usr/bin/python3 tests/test_combine.py
"""

import json
import math
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))
import cli_harness as ch  # noqa: E402
import hf_model as hm  # noqa: E402
import peft_ref as pr  # noqa: E402

TMP = ch.scratch("combine")
SHAPE = ch.TINY_SHAPE
IDS = [1, 5, 9, 33, 2, 70, 88, 3, 41, 17]
CFG_A = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"]}
CFG_B = {"r": 6, "lora_alpha": 12, "target_modules": ["q_proj", "gate_proj", "up_proj"], "layers_to_transform": [0, 2]}
CFG_C = {"r": 4, "lora_alpha": 4, "use_rslora": True, "target_modules": ["q_proj", "k_proj", "v_proj"]}

results = ch.Results("test_combine")
record = results.record


def combine(model, specs, out, extra):
    """(exit status, stderr) of lorac merge --to-adapter OUT."""
    shutil.rmtree(out, ignore_errors=True)
    args = ["merge", "-m", model, "--to-adapter", out] + list(extra)
    for d, w in specs:
        args += ["--adapter", f"{d}:{w}"]
    rc, _, err = ch.run(args)
    return rc, err


def combined(name, model, specs, extra):
    """The directory of a successful combination, or None after recording the failure."""
    out = os.path.join(TMP, name)
    rc, err = combine(model, specs, out, extra)
    if rc:
        record(name, False, f"exit {rc}: {err[-800:]}")
        return None
    return out


def logits(model, specs, name):
    path = os.path.join(TMP, name + ".npy")
    args = ["logits", "-m", model, "--ids", " ".join(map(str, IDS)), "-o", path]
    for d, w in specs:
        args += ["--adapter", f"{d}:{w}"]
    rc, _, err = ch.run(args)
    if rc:
        raise RuntimeError(f"logits failed: {err[-500:]}")
    return np.load(path).astype(np.float64)


def rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def written(dir):
    """(config, dict module -> (A, B) float64 numpy) of an adapter directory."""
    cfg = json.load(open(os.path.join(dir, "adapter_config.json")))
    t = hm.load_safetensors(os.path.join(dir, "adapter_model.safetensors"))
    out = {}
    for k, v in t.items():
        name, which = pr._module_of_key(k)
        out.setdefault(name, [None, None])["AB".index(which)] = v.double().numpy()
    return cfg, out


def factors(dir, c):
    """dict module -> (scale, A, B) float64 numpy, read with the PEFT reference loader."""
    return {n: (s, A.numpy(), B.numpy()) for n, (s, A, B) in pr.load_adapter(dir, c).items()}


# ---- numpy versions of PEFT's definitions ----------------------------------------

def peft_rank(dir):
    cfg = json.load(open(os.path.join(dir, "adapter_config.json")))
    return max([cfg.get("r", 8)] + list((cfg.get("rank_pattern") or {}).values()))


def ref_cat(c, specs):
    ads = [(factors(d, c), w) for d, w in specs]
    r = sum(peft_rank(d) for d, _ in specs)
    mods = sorted(set().union(*[set(f) for f, _ in ads]))
    out = {}
    for name in mods:
        As = [w * s * A for f, w in ads if name in f for s, A, _ in [f[name]]]
        Bs = [B for f, w in ads if name in f for _, _, B in [f[name]]]
        A, B = np.concatenate(As, 0), np.concatenate(Bs, 1)
        pad = r - A.shape[0]
        out[name] = (np.pad(A, ((0, pad), (0, 0))), np.pad(B, ((0, 0), (0, pad))))
    return r, out


def ref_linear(c, specs):
    ads = [(factors(d, c), w) for d, w in specs]
    r = peft_rank(specs[0][0])
    out = {}
    for name in sorted(set().union(*[set(f) for f, _ in ads])):
        A = B = 0
        for f, w in ads:
            if name in f:
                s, Ai, Bi = f[name]
                ws = w * s
                A = A + math.copysign(math.sqrt(abs(ws)), ws) * np.pad(Ai, ((0, r - Ai.shape[0]), (0, 0)))
                B = B + math.sqrt(abs(ws)) * np.pad(Bi, ((0, 0), (0, r - Bi.shape[1])))
        out[name] = (A, B)
    return r, out


def ref_delta_sum(c, specs):
    ads = [(factors(d, c), w) for d, w in specs]
    out = {}
    for f, w in ads:
        for name, (s, A, B) in f.items():
            out[name] = out.get(name, 0) + w * s * (B @ A)
    return out


def compare_tensors(name, dir, r, ref, tol):
    cfg, got = written(dir)
    ok = cfg["r"] == r and cfg["lora_alpha"] == r and cfg["use_rslora"] is False and set(got) == set(ref)
    ok &= not cfg.get("rank_pattern") and not cfg.get("alpha_pattern")
    worst = 0.0
    for m, (A, B) in ref.items():
        if m not in got or got[m][0].shape != A.shape or got[m][1].shape != B.shape:
            ok = False
            continue
        worst = max(worst, rel(got[m][0], A) if np.abs(A).max() > 0 else float(np.abs(got[m][0]).max()),
                    rel(got[m][1], B) if np.abs(B).max() > 0 else float(np.abs(got[m][1]).max()))
    ok &= worst <= tol
    record(name, ok, f"r={cfg['r']} alpha={cfg['lora_alpha']} rslora={cfg['use_rslora']}, {len(got)} modules "
           f"(want {len(ref)}), largest rel diff of A and B from the numpy definition {worst:.2e} (tol {tol:.0e})")


# ---- the cases -------------------------------------------------------------------------

def case_cat(model, c, specs, both):
    out = combined("cat", model, specs, ["--combination", "cat"])
    if not out:
        return
    r, ref = ref_cat(c, specs)
    compare_tensors("cat-tensors", out, r, ref, 1e-6)
    d = rel(logits(model, [(out, 1)], "cat"), both)
    record("cat-logits", d <= 1e-5, f"logits with the cat adapter vs a:0.7 + b:0.3 unmerged: {d:.2e} (tol 1e-5)")
    default = combined("default", model, specs, [])
    same = default is not None and open(os.path.join(default, "adapter_model.safetensors"), "rb").read() == \
        open(os.path.join(out, "adapter_model.safetensors"), "rb").read()
    record("cat-default", same, "no --combination is cat")


def case_svd(model, c, specs, both, a, cc):
    out = combined("svd-full", model, specs, ["--combination", "svd", "--r", "10"])
    if out:
        d = rel(logits(model, [(out, 1)], "svd-full"), both)
        record("svd-full-logits", d <= 1e-5, f"svd at r=10 (the whole sum) vs a:0.7 + b:0.3 unmerged: {d:.2e} (tol 1e-5)")
        got = pr.delta_weights(out, c)
        want = ref_delta_sum(c, specs)
        worst = max(rel(got[n + ".weight"].numpy(), want[n]) for n in want)
        record("svd-full-delta", worst <= 1e-5 and set(got) == {n + ".weight" for n in want},
               f"s*B@A equals sum w*s*B_i@A_i to {worst:.2e}")
    out = combined("svd-3", model, specs, ["--combination", "svd", "--r", "3"])
    if out:
        cfg, got = written(out)
        worst, orth = 0.0, 0.0
        for n, dw in ref_delta_sum(c, specs).items():
            U, S, Vh = np.linalg.svd(dw)
            ref = (U[:, :3] * S[:3]) @ Vh[:3]
            A, B = got[n]
            worst = max(worst, rel(B @ A, ref))
            orth = max(orth, float(np.abs(A @ A.T - np.eye(3)).max()))
        ok = cfg["r"] == 3 and cfg["lora_alpha"] == 3 and worst <= 1e-5 and orth <= 1e-5
        record("svd-3", ok, f"B@A vs numpy's rank-3 truncation {worst:.2e}, |A A^T - I| {orth:.1e} (S in B)")
    out = combined("svd-rslora", model, [(a, 1.0), (cc, 0.5)], ["--combination", "svd", "--r", "8"])
    if out:
        got = pr.delta_weights(out, c)
        want = ref_delta_sum(c, [(a, 1.0), (cc, 0.5)])
        worst = max(rel(got[n + ".weight"].numpy(), want[n]) for n in want)
        record("svd-rslora", worst <= 1e-5, f"an rsLoRA adapter and another at r=8 (their sum's rank): {worst:.2e}")


def case_linear(model, c, a, b, cc):
    lin = [(a, 0.6), (cc, -0.4)]
    out = combined("linear", model, lin, ["--combination", "linear"])
    if out:
        r, ref = ref_linear(c, lin)
        compare_tensors("linear-tensors", out, r, ref, 1e-6)
    out = combined("one", model, [(b, 0.3)], ["--combination", "cat"])
    if out:
        r, ref = ref_linear(c, [(b, 0.3)])
        compare_tensors("one-adapter-is-linear", out, r, ref, 1e-6)
        d = rel(logits(model, [(out, 1)], "one"), logits(model, [(b, 0.3)], "b-part"))
        record("one-adapter-logits", d <= 1e-5, f"logits vs b:0.3 unmerged {d:.2e}")


def case_errors(model, a, b):
    other = os.path.join(TMP, "other")
    oc, _ = hm.make_random_model(os.path.join(TMP, "other-model"), dict(SHAPE, hidden_size=48), dtype="F32", seed=9)
    ch.write_random_adapter(other, oc, CFG_A, 5)
    err_cases = [
        ("linear-ranks", [(a, 1), (b, 1)], ["--combination", "linear"], 1, "same r"),
        ("svd-no-r", [(a, 1), (b, 1)], ["--combination", "svd"], 2, "--r R"),
        ("unknown", [(a, 1), (b, 1)], ["--combination", "ties"], 2, "unknown combination 'ties'"),
        ("r-without-svd", [(a, 1), (b, 1)], ["--r", "4"], 2, "--r goes with --combination svd"),
        ("with-o", [(a, 1)], ["-o", os.path.join(TMP, "x")], 2, "-o and --dtype are for a merged model"),
        ("other-model", [(a, 1), (other, 1)], [], 1, "other"),
    ]
    for name, sp, extra, want_rc, want_msg in err_cases:
        rc, err = combine(model, sp, os.path.join(TMP, "err"), extra)
        ok = rc == want_rc and want_msg in err
        record(f"error-{name}", ok, f"exit {rc} (want {want_rc}): {err.strip().splitlines()[0] if err.strip() else ''}")


def case_phi3():
    """Phi-3's fused qkv_proj and gate_up_proj are one module each (one A over the fused rows): every
    combination treats them so, against the same numpy definitions over PEFT's modules."""
    model = os.path.join(TMP, "model-phi3")
    c, _ = hm.make_random_model(model, dict(SHAPE, partial_rotary_factor=0.5), dtype="F32", seed=11, arch="phi3")
    a, b = os.path.join(TMP, "phi3-a"), os.path.join(TMP, "phi3-b")
    ch.write_random_adapter(a, c, {"r": 4, "lora_alpha": 8, "target_modules": ["qkv_proj", "down_proj"]}, 12)
    ch.write_random_adapter(b, c, {"r": 4, "lora_alpha": 4, "target_modules": ["qkv_proj", "gate_up_proj"],
                                   "layers_to_transform": [1]}, 13)
    specs = [(a, 0.7), (b, -0.3)]
    both = logits(model, specs, "phi3-both")
    out = combined("phi3-cat", model, specs, ["--combination", "cat"])
    if out:
        r, ref = ref_cat(c, specs)
        compare_tensors("phi3-cat-tensors", out, r, ref, 1e-6)
        d = rel(logits(model, [(out, 1)], "phi3-cat"), both)
        record("phi3-cat-logits", d <= 1e-5, f"logits with the cat adapter vs a:0.7 + b:-0.3 unmerged: {d:.2e}")
    out = combined("phi3-linear", model, specs, ["--combination", "linear"])
    if out:
        r, ref = ref_linear(c, specs)
        compare_tensors("phi3-linear-tensors", out, r, ref, 1e-6)
    out = combined("phi3-svd", model, specs, ["--combination", "svd", "--r", "8"])
    if out:
        got, want = pr.delta_weights(out, c), ref_delta_sum(c, specs)
        worst = max(rel(got[n + ".weight"].numpy(), want[n]) for n in want)
        d = rel(logits(model, [(out, 1)], "phi3-svd"), both)
        record("phi3-svd", worst <= 1e-5 and d <= 1e-5 and set(got) == {n + ".weight" for n in want},
               f"s*B@A of each fused module equals sum w*s*B_i@A_i to {worst:.2e}; logits {d:.2e}")


def main():
    model = os.path.join(TMP, "model")
    c, _ = hm.make_random_model(model, SHAPE, dtype="F32", seed=1)
    a, b, cc = (os.path.join(TMP, x) for x in ("a", "b", "c"))
    for d, cfg, seed in [(a, CFG_A, 2), (b, CFG_B, 3), (cc, CFG_C, 4)]:
        ch.write_random_adapter(d, c, cfg, seed)
    specs = [(a, 0.7), (b, 0.3)]
    both = logits(model, specs, "both")
    case_cat(model, c, specs, both)
    case_svd(model, c, specs, both, a, cc)
    case_linear(model, c, a, b, cc)
    case_errors(model, a, b)
    case_phi3()
    results.finish()


if __name__ == "__main__":
    main()
