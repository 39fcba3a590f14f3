"""PEFT adapter variants: `lorac logits --adapter DIR` against an independent
Python reference (tests/reference/peft_ref.py: PEFT's matching rules with
Python's `re`, W + s*B@A, the float64 forward of tests/reference/hf_model.py).

A random tiny Llama (GQA, 3 layers) is written under
$LORAC_TEST_TMP/peft_variants/; then, for each variant seen in the wild
(prefix or not, ".default", rank_pattern + alpha_pattern, rsLoRA,
layers_to_transform with and without layers_pattern, regex and all-linear
target_modules, exclude_modules, F16/BF16 weights, fan_in_fan_out, absent
fields), an adapter is written from Python: the reference decides which
modules the config selects and with which r, random A and B are written for
exactly those, and lorac's logits must equal the reference's to 1e-5
relative (max|d| / max|ref|). Any disagreement on which modules a config
selects shows up as a lorac load error (a tensor it does not expect, or one
missing).

Round trips: adapters lorac writes (`lorac train` a few steps, plain, with
--layers/--rslora, and continuing from a rank_pattern adapter and from a
non-rectangular one) read by the Python reference give lorac's logits.

Run alone: LORAC_BIN=build/lorac /usr/bin/python3 tests/test_peft_variants.py [CASE...]
"""

import json
import os
import re
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
TMP = os.path.join(os.environ.get("LORAC_TEST_TMP") or os.path.join(SRC, "build", "test-tmp"), "peft_variants")
TOL = 1e-5
ALL = list(pr.PROJ_BLOCK)
D = pr.DELETE

# GQA (4 heads, 2 kv heads, head_dim 12), odd intermediate and vocab sizes
SHAPE = dict(hidden_size=48, intermediate_size=100, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=97)

# name -> (adapter_config fields, write options). The reference decides the
# modules and ranks from the config; "modules" overrides that for configs
# without target_modules (the file decides).
VARIANTS = {
    "prefix": ({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}, {}),
    "no-prefix": ({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}, {"prefix": ""}),
    "dot-default": ({"r": 4, "lora_alpha": 8, "target_modules": ["k_proj", "down_proj"]}, {"suffix": ".default.weight"}),
    "no-prefix-dot-default": ({"r": 4, "lora_alpha": 8, "target_modules": ["o_proj"]},
                              {"prefix": "", "suffix": ".default.weight"}),
    "rank-alpha-pattern": ({"r": 4, "lora_alpha": 8, "target_modules": ALL,
                            "rank_pattern": {"layers.0.self_attn.q_proj": 3, "q_proj": 8,
                                             "model.layers.2.mlp.down_proj": 2, r"mlp\.(gate|up)_proj": 6},
                            "alpha_pattern": {"v_proj": 32, r"layers\.1\..*": 3}}, {}),
    "rslora": ({"r": 16, "lora_alpha": 8, "use_rslora": True, "target_modules": ["k_proj", "o_proj", "up_proj"]}, {}),
    "rslora-patterns": ({"r": 4, "lora_alpha": 6, "use_rslora": True, "target_modules": ["q_proj", "down_proj"],
                         "rank_pattern": {"down_proj": 9}, "alpha_pattern": {"down_proj": 5}}, {}),
    "layers-int": ({"r": 4, "lora_alpha": 8, "target_modules": ["o_proj", "gate_proj"], "layers_to_transform": 1}, {}),
    "layers-list-pattern": ({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "down_proj"],
                             "layers_to_transform": [0, 2], "layers_pattern": "layers"}, {}),
    "layers-pattern-list": ({"r": 5, "lora_alpha": 8, "target_modules": ["v_proj", "up_proj"],
                             "layers_to_transform": [1], "layers_pattern": ["h", "layers"]}, {}),
    "regex": ({"r": 4, "lora_alpha": 8, "target_modules": r".*\.(q_proj|down_proj)"}, {}),
    "regex-layers": ({"r": 6, "lora_alpha": 4,
                      "target_modules": r"model\.layers\.[02]\.(self_attn\.(k|o)_proj|mlp\.up_proj)"}, {}),
    "all-linear": ({"r": 2, "lora_alpha": 4, "target_modules": "all-linear"}, {}),
    "suffix-paths": ({"r": 4, "lora_alpha": 8, "target_modules": ["self_attn.q_proj", "mlp.up_proj"]}, {}),
    "full-names": ({"r": 3, "lora_alpha": 5,
                    "target_modules": ["model.layers.0.self_attn.q_proj", "model.layers.2.mlp.down_proj"]}, {}),
    "exclude-list": ({"r": 4, "lora_alpha": 8, "target_modules": ALL,
                      "exclude_modules": ["model.layers.1.mlp.gate_proj", "o_proj"]}, {}),
    "exclude-regex": ({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "gate_proj"],
                       "exclude_modules": r".*\.layers\.0\..*"}, {}),
    "f16-weights": ({"r": 8, "lora_alpha": 16, "target_modules": ALL}, {"dtype": torch.float16}),
    "bf16-weights": ({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "down_proj"]},
                     {"dtype": torch.bfloat16}),
    "fan-in-fan-out": ({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "fan_in_fan_out": True},
                       {"warning": "fan_in_fan_out"}),
    "no-target-modules": ({"r": 4, "lora_alpha": 8, "target_modules": D},
                          {"modules": {"model.layers.0.self_attn.k_proj": 4, "model.layers.1.mlp.up_proj": 4}}),
    "peft-defaults": ({"r": D, "lora_alpha": D, "target_modules": ["v_proj"], "bias": D, "peft_type": D,
                       "use_rslora": D, "rank_pattern": D, "alpha_pattern": D, "layers_to_transform": D,
                       "layers_pattern": D, "modules_to_save": D, "fan_in_fan_out": D, "use_dora": D}, {}),
}

results = []


def record(name, ok, msg):
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {msg}", flush=True)
    results.append((name, ok))


def run_lorac(args):
    try:
        p = subprocess.run([LORAC] + args, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        return None, "", f"{LORAC} not found"
    except subprocess.TimeoutExpired:
        return None, "", "timed out"
    return p.returncode, p.stdout, p.stderr


def lorac_logits(model, adapters, ids, out):
    """(logits, stderr) of `lorac logits`; adapters: list of "DIR[:SCALE]"."""
    args = ["logits", "-m", model, "--ids", " ".join(map(str, ids)), "-o", out]
    for a in adapters:
        args += ["--adapter", a]
    rc, _, err = run_lorac(args)
    if rc != 0:
        return None, f"lorac exited {rc}: {err.strip()[-1500:]}"
    return np.load(out).astype(np.float64), err


def compare(name, got, ref, base_ref, extra=""):
    d = np.abs(got - ref).max() / np.abs(ref).max()
    effect = np.abs(ref - base_ref).max() / np.abs(base_ref).max()
    ok = d <= TOL and effect > 100 * TOL
    record(name, ok, f"rel={d:.2e} (tol {TOL:.0e}), adapter moves logits by {effect:.2e} rel{extra}")


def write_variant(dir, c, cfg, opts, seed):
    """Writes the adapter; returns the reference's module -> (r, alpha, scale)."""
    shutil.rmtree(dir, ignore_errors=True)
    full_cfg = {k: v for k, v in cfg.items() if v is not D}
    modules = opts.get("modules")
    settings = pr.module_settings(full_cfg, c, present=set(modules or ()))
    ab = pr.random_lora(c, {n: s[0] for n, s in settings.items()}, seed=seed, dtype=opts.get("dtype", torch.float32))
    tensors = pr.lora_tensors(ab, prefix=opts.get("prefix", "base_model.model."), suffix=opts.get("suffix", ".weight"))
    pr.write_adapter(dir, cfg, tensors)
    return settings


def variant_cases(model, c, w, ids, base_ref, want):
    for seed, (name, (cfg, opts)) in enumerate(VARIANTS.items()):
        if want and name not in want:
            continue
        d = os.path.join(TMP, "adapters", name)
        settings = write_variant(d, c, cfg, opts, 100 + seed)
        ref = pr.forward(w, c, ids, [(d, 1.0)]).numpy()
        got, err = lorac_logits(model, [d], ids, os.path.join(TMP, f"{name}.npy"))
        if got is None:
            record(name, False, err)
            continue
        ranks = sorted({s[0] for s in settings.values()})
        extra = f"; {len(settings)} modules, r in {ranks}"
        if opts.get("warning") and opts["warning"] not in err:
            record(name, False, f"no warning mentioning {opts['warning']} on stderr: {err!r}")
            continue
        compare(name, got, ref, base_ref, extra)
    if not want or "stack" in want:
        # two adapters at once with scales, one of them with per-module ranks
        a, b = os.path.join(TMP, "adapters", "rank-alpha-pattern"), os.path.join(TMP, "adapters", "regex")
        if os.path.isdir(a) and os.path.isdir(b):
            ref = pr.forward(w, c, ids, [(a, 0.7), (b, -0.4)]).numpy()
            got, err = lorac_logits(model, [a + ":0.7", b + ":-0.4"], ids, os.path.join(TMP, "stack.npy"))
            if got is None:
                record("stack", False, err)
            else:
                compare("stack", got, ref, base_ref)


def train(model, out, extra):
    args = ["train", "-m", model, "--data", os.path.join(TMP, "tokens.jsonl"), "--format", "tokens", "-o", out,
            "--steps", "3", "--batch", "2", "--seq", "16", "--lr", "2e-2", "-t", "2"] + extra
    rc, _, err = run_lorac(args)
    return rc, err


def round_trip_cases(model, c, w, ids, base_ref, want):
    g = torch.Generator().manual_seed(7)
    with open(os.path.join(TMP, "tokens.jsonl"), "w") as f:
        for _ in range(16):
            f.write(json.dumps({"input_ids": torch.randint(0, c["vocab_size"], (17,), generator=g).tolist()}) + "\n")
    cases = [
        ("roundtrip-all-linear", ["--targets", "all-linear", "--r", "4", "--alpha", "8"], None),
        ("roundtrip-layers-rslora", ["--targets", "q_proj,down_proj", "--layers", "0,2", "--rslora", "--r", "6",
                                     "--alpha", "3"], None),
        # continuing from an adapter with rank_pattern/alpha_pattern: the saved
        # one keeps its per-module ranks and alphas
        ("roundtrip-rank-pattern", [], "rank-alpha-pattern"),
        # from a set of modules that is no targets x layers product
        ("roundtrip-non-rectangular", [], "exclude-list"),
    ]
    for name, extra, init in cases:
        if want and name not in want:
            continue
        out = os.path.join(TMP, name)
        shutil.rmtree(out, ignore_errors=True)
        if init:
            src = os.path.join(TMP, "adapters", init)
            if not os.path.isdir(src):
                write_variant(src, c, VARIANTS[init][0], VARIANTS[init][1], 999)
            extra = ["--init-adapter", src]
        rc, err = train(model, out, extra)
        if rc != 0:
            record(name, False, f"lorac train exited {rc}: {err.strip()[-1500:]}")
            continue
        try:
            ref = pr.forward(w, c, ids, [(out, 1.0)]).numpy()
        except Exception as e:  # noqa: BLE001
            record(name, False, f"the reference cannot read lorac's adapter: {e}")
            continue
        got, err = lorac_logits(model, [out], ids, os.path.join(TMP, f"{name}.npy"))
        if got is None:
            record(name, False, err)
            continue
        with open(os.path.join(out, "adapter_config.json")) as f:
            saved = json.load(f)
        note = ""
        if init:
            src_settings = pr.module_settings(VARIANTS[init][0], c)
            out_settings = pr.module_settings(saved, c)
            same = {k: v[:2] for k, v in src_settings.items()} == {k: v[:2] for k, v in out_settings.items()}
            if not same:
                record(name, False, f"saved config selects other modules or ranks: {saved}")
                continue
            note = f"; rank_pattern {len(saved['rank_pattern'])} keys, target_modules {len(saved['target_modules'])} entries"
        compare(name, got, ref, base_ref, note)


def effective_rank(sv):
    """How many of the descending singular values hold 99% of sum sigma^2."""
    e = np.cumsum(np.asarray(sv) ** 2)
    return 0 if e[-1] <= 0 else int(np.searchsorted(e, 0.99 * e[-1]) + 1)


def write_low_rank(d, c):
    """r = 6 on q_proj and down_proj, but B·A of rank 2 in layer 0 and 0 (B
    zero, a fresh adapter) in layer 2: effective ranks 2, 6, 0."""
    cfg = {"r": 6, "lora_alpha": 12, "target_modules": ["q_proj", "down_proj"]}
    ab = pr.random_lora(c, {n: 6 for n in pr.module_settings(cfg, c)}, seed=77)
    for name, (A, B) in ab.items():
        if ".0." in name:
            B[:, 2:] = 0
        if ".2." in name:
            B.zero_()
    shutil.rmtree(d, ignore_errors=True)
    pr.write_adapter(d, cfg, pr.lora_tensors(ab))


def check_spectrum(mod, m, scale, A, B):
    """The module's singular values against numpy's SVD of s*B@A, to 1e-6 of
    sigma_1 (lorac's s is a float32: alpha/r rounded)."""
    ref = np.linalg.svd(scale * (B.numpy() @ A.numpy()), compute_uv=False)[: A.shape[0]]
    sv = np.asarray(m["singular_values"])
    top = max(ref[0], 1e-300)
    if sv.shape != ref.shape or np.abs(sv - ref).max() > 1e-6 * top + 1e-300:
        return f"{mod}: singular values {sv[:3]}... differ from numpy's {ref[:3]}..."
    if m["effective_rank"] != effective_rank(ref) or abs(m["sigma_1"] - ref[0]) > 1e-6 * top \
            or abs(m["sigma_r"] - ref[-1]) > 1e-6 * top:
        return f"{mod}: effective rank {m['effective_rank']} sigma_1 {m['sigma_1']} sigma_r {m['sigma_r']}, " \
               f"expected {effective_rank(ref)} {ref[0]} {ref[-1]}"
    return None


def inspect_cases(model, c, w, want):
    """`lorac inspect ADAPTER [-m MODEL] --json` against the reference's view
    of the adapter: per module r, alpha, scale, sizes and the singular values
    of s*B*A (numpy's SVD); parameter counts; the base's share and file sizes."""
    for name in ["rank-alpha-pattern", "rslora-patterns", "layers-list-pattern", "low-rank"]:
        case = "inspect-" + name
        if want and case not in want:
            continue
        d = os.path.join(TMP, "adapters", name)
        if name == "low-rank":
            write_low_rank(d, c)
        elif not os.path.isdir(d):
            write_variant(d, c, *VARIANTS[name], 500)
        with open(os.path.join(d, "adapter_config.json")) as f:
            settings = pr.module_settings(json.load(f), c)
        weights = pr.load_adapter(d, c)
        eff = []
        shapes = hm.tensor_shapes(c)
        problems = []
        for args in (["-m", model], []):
            rc, out, err = run_lorac(["inspect", d, "--json"] + args)
            if rc != 0:
                problems.append(f"inspect {' '.join(args)} exited {rc}: {err.strip()[-500:]}")
                continue
            j = json.loads(out)
            got = {"model." + m["name"]: m for m in j["modules"]}
            if set(got) != set(settings):
                problems.append(f"modules differ: {sorted(set(got) ^ set(settings))}")
                continue
            n_params = n_dense = 0
            for mod, (r, alpha, scale) in settings.items():
                o, i = shapes[mod + ".weight"]
                m = got[mod]
                n_params += r * (i + o)
                n_dense += i * o
                if (m["r"], m["in"], m["out"]) != (r, i, o) or abs(m["alpha"] - alpha) > 1e-5 * abs(alpha) \
                        or abs(m["scale"] - scale) > 1e-6 * abs(scale):
                    problems.append(f"{mod}: got r {m['r']} alpha {m['alpha']} scale {m['scale']} in {m['in']} "
                                    f"out {m['out']}, expected {r} {alpha} {scale} {i} {o}")
                _, A, B = weights[mod]
                p = check_spectrum(mod, m, scale, A, B)
                if p:
                    problems.append(p)
                if args:
                    eff.append(m["effective_rank"])
            if (j["n_params"], j["n_adapted_params"]) != (n_params, n_dense):
                problems.append(f"n_params {j['n_params']}/{j['n_adapted_params']}, expected {n_params}/{n_dense}")
            if j["file_bytes"] != os.path.getsize(os.path.join(d, "adapter_model.safetensors")):
                problems.append("file_bytes is not the file's size")
            if args:
                base = sum(t.numel() for t in w.values())
                if j["base_params"] != base or abs(j["base_params_fraction"] - n_params / base) > 1e-12:
                    problems.append(f"base_params {j['base_params']} (expected {base})")
        rc, out, err = run_lorac(["inspect", d])
        if rc != 0 or "PEFT LoRA adapter" not in out or "total" not in out:
            problems.append(f"text inspect exited {rc}: {err.strip()[-300:]}")
        if name == "low-rank" and sorted(set(eff)) != [0, 2, 6]:
            problems.append(f"effective ranks {eff}, expected 2 (layer 0), 6 (layer 1), 0 (layer 2)")
        record(case, not problems, "; ".join(problems[:5]) if problems else
               f"{len(settings)} modules: r, alpha, scale, sizes, parameter counts and singular values agree "
               f"(effective ranks {sorted(set(eff))})")


def main():
    want = set(sys.argv[1:])
    os.makedirs(TMP, exist_ok=True)
    print(f"lorac: {LORAC}\nfiles: {TMP}", flush=True)
    model = os.path.join(TMP, "model")
    shutil.rmtree(model, ignore_errors=True)
    c, w = hm.make_random_model(model, SHAPE, seed=11)
    ids = torch.randint(0, c["vocab_size"], (11,), generator=torch.Generator().manual_seed(3)).tolist()
    base_ref = hm.llama_forward(w, c, ids).numpy()
    variant_cases(model, c, w, ids, base_ref, want)
    round_trip_cases(model, c, w, ids, base_ref, want)
    inspect_cases(model, c, w, want)
    npass = sum(1 for _, ok in results if ok)
    print(f"{npass} passed, {len(results) - npass} failed")
    return 1 if len(results) != npass or not results else 0


if __name__ == "__main__":
    sys.exit(main())
