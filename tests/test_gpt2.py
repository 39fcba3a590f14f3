"""GPT-2 (GPT2LMHeadModel) against an independent PyTorch reference
(tests/reference/gpt2_ref.py, float64, no transformers):

  * logits: random tiny GPT-2 models (tied and untied heads, F32 / BF16 /
    F16, "transformer."-prefixed names and the original checkpoint's
    unprefixed ones, unscaled and layer-scaled attention, an odd head
    size) through
    `lorac logits`: max|lorac - ref| / max|ref| <= 1e-5 (F32) or 1e-2;
  * generate: greedy decoding through the KV cache, on a model with GPT-2's
    real tokenizer (fixtures/tokenizers/gpt2), gives the reference's
    greedy ids, and stops at n_positions;
  * adapters: PEFT LoRA files on c_attn, attn.c_proj, c_fc and mlp.c_proj
    (fan_in_fan_out, "c_proj" selecting both, rank_pattern, layers) change
    the logits exactly as the reference applies them;
  * training: 3 AdamW steps of LoRA on every projection from the same
    initial adapter give the reference's losses and A, B to 1e-4; the
    saved adapter_config.json is what PEFT writes for GPT-2;
  * merge: the merged model's Conv1D weights are W + s (B A)^T, so the
    reference reading them gives the adapted logits; extract recovers the
    adapter from the merged model; two adapters combined into one (cat)
    give the reference's logits with both;
  * malformed models and unsupported requests fail with exit 1 and a
    message naming the problem.

Run alone: LORAC_BIN=build/lorac /usr/bin/python3 tests/test_gpt2.py
"""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))
import gpt2_ref as g2  # noqa: E402
import hf_model as hm  # noqa: E402

SRC = os.environ.get("LORAC_SRC", os.path.dirname(HERE))
LORAC = os.environ.get("LORAC_BIN") or os.path.join(SRC, "build", "lorac")
FIX = os.environ.get("LORAC_FIXTURES") or os.path.join(SRC, "..", "shared", "fixtures")
TMP = os.path.join(os.environ.get("LORAC_TEST_TMP") or os.path.join(SRC, "build", "test-tmp"), "gpt2")
TOL = {"F32": 1e-5, "BF16": 1e-2, "F16": 1e-2}
results = []


def check(name, ok, detail=""):
    results.append((name, bool(ok), detail))


def run(args, **kw):
    return subprocess.run([LORAC] + args, capture_output=True, text=True, **kw)


def lorac_logits(model, ids, adapters=()):
    out = os.path.join(TMP, "logits.npy")
    args = ["logits", "-m", model, "--ids", " ".join(map(str, ids)), "-o", out, "-t", "2"]
    for a in adapters:
        args += ["--adapter", a]
    p = run(args)
    if p.returncode != 0:
        raise RuntimeError(f"lorac logits failed: {p.stderr[-400:]}")
    return np.load(out).astype(np.float64)


def rel(a, b):
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(np.asarray(a, dtype=np.float64) - b).max() / np.abs(b).max())


def ids_for(V, T, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (T,), generator=g).tolist()


# ---------------------------------------------------------------------------
# logits
# ---------------------------------------------------------------------------

# name, make_config arguments, dtype, tensor name prefix, ids; the
# unprefixed one (the original checkpoint's names) with its mask buffers
LOGIT_CASES = [
    ("tied-f32", dict(D=48, L=2, H=3, V=97, n_positions=32, n_inner=100), "F32", "transformer.", 20),
    ("untied-bf16-unprefixed", dict(D=64, L=3, H=4, V=120, n_positions=40, tie=False), "BF16", "", 33),
    ("unscaled-f16", dict(D=32, L=1, H=2, V=50, n_positions=16, scale_attn_weights=False), "F16", "transformer.", 16),
    ("odd-head-f32", dict(D=45, L=2, H=3, V=61, n_positions=24, n_inner=70, layer_norm_epsilon=1e-3), "F32",
     "transformer.", 24),
    ("by-layer-f32", dict(D=32, L=3, H=2, V=50, n_positions=16, scale_attn_by_inverse_layer_idx=True), "F32",
     "transformer.", 16),
]


def logits_cases():
    for name, kw, dtype, prefix, T in LOGIT_CASES:
        d = os.path.join(TMP, "model-" + name)
        c = g2.make_config(dtype=dtype, **kw)
        c, w = g2.make_random_model(d, c, dtype=dtype, seed=len(name), prefix=prefix, mask_buffers=prefix == "")
        ids = ids_for(c["vocab_size"], T, 7)
        try:
            got = lorac_logits(d, ids)
        except RuntimeError as e:
            check("logits " + name, False, str(e))
            continue
        ref = g2.forward(w, c, ids).numpy()
        r = rel(got, ref)
        check("logits " + name, r <= TOL[dtype], f"max rel {r:.2e} (tol {TOL[dtype]:.0e})")
        p = run(["inspect", d, "--json"])
        info = json.loads(p.stdout) if p.returncode == 0 else {}
        n_params = sum(v.numel() for v in w.values())
        check("inspect " + name, info.get("n_params") == n_params and
              info.get("n_buffers", 0) == (c["n_layer"] if prefix == "" else 0),
              f"{info.get('n_params')} parameters (reference {n_params}), {info.get('n_buffers', 0)} mask buffers")
        # a sequence no longer than n_positions, and not one past it
        if name == "by-layer-f32":  # the feature matters: without it the reference is elsewhere
            off = rel(got, g2.forward(w, dict(c, scale_attn_by_inverse_layer_idx=False), ids).numpy())
            check("scale_attn_by_inverse_layer_idx matters", off > 100 * TOL[dtype], f"{off:.2e} from the unscaled reference")
        if name == "tied-f32":
            p = run(["logits", "-m", d, "--ids", " ".join(["1"] * 33), "-o", os.path.join(TMP, "x.npy")])
            check("logits past n_positions refused", p.returncode == 1 and "32 positions" in p.stderr, p.stderr.strip()[-200:])


# ---------------------------------------------------------------------------
# generate with GPT-2's tokenizer
# ---------------------------------------------------------------------------

def generate_case():
    d = os.path.join(TMP, "model-tokenizer")
    c = g2.make_config(D=32, L=2, H=2, V=50257, n_positions=24)
    c, w = g2.make_random_model(d, c, seed=11)
    shutil.copyfile(os.path.join(FIX, "tokenizers", "gpt2", "tokenizer.json"), os.path.join(d, "tokenizer.json"))
    prompt = "Hello world, this is GPT-2"
    tok = run(["tokenize", "-m", d, "-p", prompt])
    if tok.returncode != 0:
        check("tokenize with GPT-2's tokenizer", False, tok.stderr[-300:])
        return
    ids = [int(x) for x in tok.stdout.split()]
    # the ids GPT-2's tokenizer gives (HuggingFace tokenizers)
    check("tokenize with GPT-2's tokenizer", ids == [15496, 995, 11, 428, 318, 402, 11571, 12, 17], str(ids))
    n = 6
    want = g2.greedy(w, c, ids, n)
    gen = run(["generate", "-m", d, "-p", prompt, "-n", str(n), "--temp", "0", "--ignore-eos", "-t", "2"])
    dec = run(["tokenize", "-m", d, "--decode", " ".join(map(str, want))])
    ok = gen.returncode == 0 and dec.returncode == 0 and gen.stdout.rstrip("\n") == prompt + dec.stdout.rstrip("\n")
    check("generate greedy = reference", ok, f"{gen.stdout!r} vs {prompt + dec.stdout.rstrip(chr(10))!r} {gen.stderr[-200:]}")
    # 9 prompt tokens + 40 would pass the 24 positions: generation stops
    # there, the 16th token sampled from position 23's logits
    gen = run(["generate", "-m", d, "-p", prompt, "-n", "40", "--temp", "0", "--ignore-eos", "-t", "2"])
    check("generate stops at n_positions", gen.returncode == 0 and "generate: 16 tokens" in gen.stderr and
          "stop: context" in gen.stderr, f"rc {gen.returncode}; {gen.stderr.strip()[-200:]}")


# ---------------------------------------------------------------------------
# adapters
# ---------------------------------------------------------------------------

def adapter_cases():
    d = os.path.join(TMP, "model-tied-f32")
    c, w = g2.load_model(d)
    ids = ids_for(c["vocab_size"], 18, 3)
    base = g2.forward(w, c, ids)
    L = c["n_layer"]
    # every module, "c_proj" selecting both of its kinds
    mods = {f"h.{l}.{m}": 4 for l in range(L) for m in g2.MODULES}
    ab = g2.random_adapter(c, mods, 1)
    ad = os.path.join(TMP, "adapter-all")
    g2.write_adapter(ad, {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_proj", "c_fc"]}, ab)
    ref = g2.forward(w, c, ids, [{k: (A, B, 2.0) for k, (A, B) in ab.items()}]).numpy()
    got = lorac_logits(d, ids, [ad])
    moved = float(np.abs(ref - base.numpy()).max())
    check("adapter on every module", rel(got, ref) <= 1e-5 and moved > 0.5,
          f"max rel {rel(got, ref):.2e}, the adapter moves logits by {moved:.2f}")
    got = lorac_logits(d, ids, [ad + ":0.5"])
    ref_half = g2.forward(w, c, ids, [{k: (A, B, 1.0) for k, (A, B) in ab.items()}]).numpy()
    check("adapter at scale 0.5", rel(got, ref_half) <= 1e-5, f"max rel {rel(got, ref_half):.2e}")
    # one layer's attention output alone, with a rank and alpha pattern
    mods = {"h.1.attn.c_proj": 3, "h.1.attn.c_attn": 2}
    ab = g2.random_adapter(c, mods, 2)
    ad = os.path.join(TMP, "adapter-patterns")
    g2.write_adapter(ad, {"r": 2, "lora_alpha": 4, "target_modules": ["attn.c_proj", "c_attn"], "layers_to_transform": [1],
                       "rank_pattern": {"h.1.attn.c_proj": 3}, "alpha_pattern": {"h.1.attn.c_proj": 1.5}}, ab)
    ref = g2.forward(w, c, ids, [{"h.1.attn.c_proj": (*ab["h.1.attn.c_proj"], 0.5),
                                  "h.1.attn.c_attn": (*ab["h.1.attn.c_attn"], 2.0)}]).numpy()
    got = lorac_logits(d, ids, [ad])
    check("adapter with layers, rank and alpha patterns", rel(got, ref) <= 1e-5, f"max rel {rel(got, ref):.2e}")
    # the same adapter as a llama.cpp LoRA file: inspect -m reads it as lorac
    # applies it, so its modules' singular values are the directory's
    gguf = os.path.join(TMP, "adapter-patterns.gguf")
    p = run(["convert", "--to", "gguf", "--adapter", ad, "--base", d, "-o", gguf])
    reports = [run(["inspect", x, "-m", d, "--json"]) for x in (ad, gguf)]
    ok = p.returncode == 0 and all(r.returncode == 0 for r in reports)
    if ok:
        a, b = (json.loads(r.stdout) for r in reports)
        sv = [[m["singular_values"] for m in x["modules"]] for x in (a, b)]
        ok = b["format"] == "gguf" and len(sv[0]) == len(sv[1]) == 4 and all(
            np.allclose(u, v, rtol=1e-5, atol=0) for u, v in zip(*sv))
    check("inspect -m of the GGUF LoRA = of its directory", ok, (p.stderr + reports[1].stderr)[-250:])
    # a Llama adapter on GPT-2, and a GPT-2 adapter with a module the config does not select
    bad = os.path.join(TMP, "adapter-llama-names")
    os.makedirs(bad, exist_ok=True)
    hm.save_safetensors(os.path.join(bad, "adapter_model.safetensors"), {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 48),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(48, 2)})
    with open(os.path.join(bad, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["q_proj"]}, f)
    p = run(["logits", "-m", d, "--adapter", bad, "--ids", "1 2", "-o", os.path.join(TMP, "x.npy")])
    check("Llama adapter on GPT-2 refused", p.returncode == 1 and "GPT2LMHeadModel" in p.stderr, p.stderr.strip()[-250:])
    p = run(["inspect", os.path.join(TMP, "adapter-all")])
    check("GPT-2 adapter without -m: asks for the model", p.returncode == 1 and "-m MODEL" in p.stderr,
          p.stderr.strip()[-250:])


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------

def train_case():
    d = os.path.join(TMP, "train")
    os.makedirs(d, exist_ok=True)
    # layer 1's scores over 2 (scale_attn_by_inverse_layer_idx), through the backward too
    c = g2.make_config(D=32, L=2, H=2, V=71, n_positions=20, n_inner=48, tie=False, scale_attn_by_inverse_layer_idx=True)
    c, w = g2.make_random_model(os.path.join(d, "model"), c, seed=5)
    r, alpha, steps, batch, seq, lr, wd = 4, 8.0, 3, 2, 16, 0.02, 0.01
    mods = {f"h.{l}.{m}": r for l in range(c["n_layer"]) for m in g2.MODULES}
    init = {k: (A, B * 0.2) for k, (A, B) in g2.random_adapter(c, mods, 9).items()}
    ad = os.path.join(d, "init")
    g2.write_adapter(ad, {"r": r, "lora_alpha": alpha, "target_modules": ["c_attn", "c_proj", "c_fc"]}, init)
    # Adam's first steps move each element by about lr whatever its
    # gradient's size, so an element whose gradient is near 0 (1e-8, the
    # size of f32's rounding of the others) moves by f32 noise: with data
    # seed 4 one such element of h.0.mlp.c_proj's B differed by 1e-2
    # relative, seeds 5-8 agree to 2e-5. Seed 5.
    g = torch.Generator().manual_seed(5)
    rows = []
    with open(os.path.join(d, "data.jsonl"), "w") as f:
        for i in range(steps * batch):
            n = 5 + int(torch.randint(0, seq - 4, (1,), generator=g))
            ids = torch.randint(0, c["vocab_size"], (n,), generator=g).tolist()
            labels = [-100 if t < 2 and i % 2 == 0 else x for t, x in enumerate(ids)]
            rows.append((ids, labels))
            f.write(json.dumps({"input_ids": ids, "labels": labels}) + "\n")
    out = os.path.join(d, "out")
    p = run(["train", "-m", os.path.join(d, "model"), "--data", os.path.join(d, "data.jsonl"), "--format", "tokens",
             "-o", out, "--no-shuffle", "--init-adapter", ad, "--steps", str(steps), "--batch", str(batch), "--seq",
             str(seq), "--lr", str(lr), "--weight-decay", str(wd), "--clip", "1.0", "--schedule", "constant",
             "--warmup", "0", "-t", "2"])
    if p.returncode != 0:
        check("train parity", False, "lorac train failed: " + p.stderr[-400:])
        return None
    got_losses = [json.loads(line)["loss"] for line in open(os.path.join(out, "metrics.jsonl"))]
    got = hm.load_safetensors(os.path.join(out, "adapter_model.safetensors"))
    scale = alpha / r
    params = {}
    for k, (A, B) in init.items():
        params[k] = (A.double().clone().requires_grad_(True), B.double().clone().requires_grad_(True))
    leaves = [t for ab in params.values() for t in ab]
    opt = torch.optim.AdamW(leaves, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    ref_losses = []
    for s in range(steps):
        opt.zero_grad()
        total, count = 0.0, 0
        for b in range(batch):
            ids, labels = rows[s * batch + b]
            logits = g2.forward(w, c, ids, [{k: (A, B, scale) for k, (A, B) in params.items()}])
            for t in range(len(ids) - 1):
                if labels[t + 1] != -100:
                    total = total + torch.logsumexp(logits[t], 0) - logits[t, labels[t + 1]]
                    count += 1
        loss = total / count
        loss.backward()
        ref_losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(leaves, 1.0)
        opt.step()
    worst_loss = max(abs(a - b) / abs(b) for a, b in zip(got_losses, ref_losses))
    worst, where = 0.0, ""
    for k, (A, B) in params.items():
        for ab, ref in (("A", A), ("B", B)):
            name = f"base_model.model.transformer.{k}.lora_{ab}.weight"
            if name not in got:
                worst, where = float("inf"), name + " missing"
                continue
            diff = (got[name].double() - ref.detach()).abs().max().item() / ref.detach().abs().max().item()
            if diff > worst:
                worst, where = diff, name
    check("train parity (3 AdamW steps, every module)", len(got_losses) == steps and worst_loss <= 1e-4 and worst <= 1e-4,
          f"losses {['%.5f' % x for x in got_losses]} vs {['%.5f' % x for x in ref_losses]}: max rel {worst_loss:.2e}; "
          f"A/B max rel {worst:.2e} ({where})")
    with open(os.path.join(out, "adapter_config.json")) as f:
        cfg = json.load(f)
    check("trained adapter_config.json is PEFT's for GPT-2",
          cfg.get("fan_in_fan_out") is True and sorted(cfg.get("target_modules", [])) == ["attn.c_proj", "c_attn", "c_fc",
                                                                                           "mlp.c_proj"],
          json.dumps({k: cfg.get(k) for k in ("fan_in_fan_out", "target_modules")}))
    # the default targets: c_attn, as PEFT's for gpt2
    out2 = os.path.join(d, "out-default")
    p = run(["train", "-m", os.path.join(d, "model"), "--data", os.path.join(d, "data.jsonl"), "--format", "tokens",
             "-o", out2, "--steps", "1", "--batch", "1", "--seq", str(seq), "-t", "2"])
    ok = p.returncode == 0
    if ok:
        with open(os.path.join(out2, "adapter_config.json")) as f:
            ok = json.load(f).get("target_modules") == ["c_attn"]
    check("default targets: c_attn", ok, p.stderr[-300:])
    return os.path.join(d, "model"), out, c, w


# ---------------------------------------------------------------------------
# merge and extract
# ---------------------------------------------------------------------------

def merge_case(trained):
    if trained is None:
        check("merge", False, "no trained adapter")
        return
    model, adapter, c, w = trained
    merged = os.path.join(TMP, "merged")
    p = run(["merge", "-m", model, "--adapter", adapter, "-o", merged])
    if p.returncode != 0:
        check("merge", False, p.stderr[-300:])
        return
    ids = ids_for(c["vocab_size"], 14, 21)
    with_adapter = lorac_logits(model, ids, [adapter])
    mc, mw = g2.load_model(merged)
    ref = g2.forward(mw, mc, ids).numpy()  # the reference reads the merged Conv1D weights as they are
    r1 = rel(with_adapter, ref)
    r2 = rel(lorac_logits(merged, ids), ref)
    check("merge: Conv1D weights W + s (B A)^T", r1 <= 1e-5 and r2 <= 1e-5, f"adapter vs merged ref {r1:.2e}, "
          f"lorac on merged {r2:.2e}")
    ex = os.path.join(TMP, "extracted")
    p = run(["extract", "--base", model, "--tuned", merged, "--r", "4", "-o", ex, "--targets", "all-linear"])
    if p.returncode != 0:
        check("extract from the merged model", False, p.stderr[-300:])
        return
    r3 = rel(lorac_logits(model, ids, [ex]), ref)
    check("extract from the merged model", r3 <= 1e-4, f"max rel {r3:.2e}")
    # two adapters combined into one (cat: exact), against the reference
    # applying both at their weights
    init = os.path.join(TMP, "train", "init")
    comb = os.path.join(TMP, "combined")
    p = run(["merge", "-m", model, "--adapter", adapter + ":0.6", "--adapter", init + ":0.4", "--to-adapter", comb])
    if p.returncode != 0:
        check("merge --to-adapter (cat)", False, p.stderr[-300:])
        return
    both = []
    for d, weight in ((adapter, 0.6), (init, 0.4)):
        t = hm.load_safetensors(os.path.join(d, "adapter_model.safetensors"))
        mods = {k[len("base_model.model.transformer."):-len(".lora_A.weight")] for k in t if k.endswith(".lora_A.weight")}
        both.append({m: (t[f"base_model.model.transformer.{m}.lora_A.weight"],
                         t[f"base_model.model.transformer.{m}.lora_B.weight"], weight * 2.0) for m in mods})
    ref2 = g2.forward(w, c, ids, both).numpy()
    r4 = rel(lorac_logits(model, ids, [comb]), ref2)
    check("merge --to-adapter (cat) of two adapters", r4 <= 1e-5, f"max rel {r4:.2e}")


# ---------------------------------------------------------------------------
# malformed models and refusals
# ---------------------------------------------------------------------------

def malformed_cases():
    base = os.path.join(TMP, "model-tied-f32")
    c, w = g2.load_model(base)

    def variant(name, cfg_change=None, tensors_change=None):
        d = os.path.join(TMP, "bad-" + name)
        cc = dict(c)
        if cfg_change:
            cc.update(cfg_change)
        ww = dict(w)
        if tensors_change:
            tensors_change(ww)
        hm.write_model_dir(d, cc, ww)
        return run(["logits", "-m", d, "--ids", "1 2 3", "-o", os.path.join(TMP, "x.npy")])

    def linear_layout(ww):
        ww["transformer.h.0.attn.c_attn.weight"] = ww["transformer.h.0.attn.c_attn.weight"].T.contiguous()

    cases = [
        ("Linear-layout c_attn", variant("linear-layout", tensors_change=linear_layout),
         ["transformer.h.0.attn.c_attn.weight", "[144, 48]", "[48, 144]"]),
        ("missing wpe", variant("no-wpe", tensors_change=lambda ww: ww.pop("transformer.wpe.weight")),
         ["missing tensor", "transformer.wpe.weight"]),
        ("missing ln_1 bias", variant("no-ln-bias", tensors_change=lambda ww: ww.pop("transformer.h.1.ln_1.bias")),
         ["transformer.h.1.ln_1.bias"]),
        ("relu activation", variant("relu", {"activation_function": "relu"}), ["activation_function", "relu"]),
        ("n_embd not a multiple of n_head", variant("heads", {"n_head": 5}), ["n_embd", "n_head"]),
        ("cross-attention", variant("cross", {"add_cross_attention": True}), ["add_cross_attention"]),
        ("negative n_positions", variant("npos", {"n_positions": -4}), ["n_positions"]),
    ]
    for name, p, needles in cases:
        ok = p.returncode == 1 and p.stderr.startswith("lorac: error:") and all(n in p.stderr for n in needles)
        check("malformed: " + name, ok, p.stderr.strip()[-250:])
    data = os.path.join(TMP, "train", "data.jsonl")
    model = os.path.join(TMP, "train", "model")
    for name, extra, needle in [("--full refused", ["--full"], "full fine-tuning"),
                                ("gate_proj refused", ["--targets", "gate_proj"], "no gate_proj"),
                                ("q_proj alone refused", ["--targets", "q_proj"], "c_attn is one module"),
                                ("--seq past n_positions refused", ["--seq", "64"], "20 positions")]:
        p = run(["train", "-m", model, "--data", data, "--format", "tokens", "-o", os.path.join(TMP, "never"),
                 "--steps", "1", "--seq", "16"] + extra)
        check("train: " + name, p.returncode == 1 and needle in p.stderr, p.stderr.strip()[-250:])


def main():
    os.makedirs(TMP, exist_ok=True)
    logits_cases()
    generate_case()
    adapter_cases()
    trained = train_case()
    merge_case(trained)
    malformed_cases()
    bad = [r for r in results if not r[1]]
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    print(f"{len(results) - len(bad)}/{len(results)} checks passed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
