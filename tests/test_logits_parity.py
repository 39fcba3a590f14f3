"""Logits parity: `lorac logits` against the PyTorch reference (tests/reference/hf_model.py).

Random tiny LLaMA-family models are written as HF directories under
$LORAC_TEST_TMP/logits_parity/; for each, `$LORAC_BIN logits -m DIR --ids "..."
-o OUT.npy` must give float32 [T, vocab] logits with
max|lorac - ref| / max|ref| <= 1e-5 (F32 weights) or 1e-2 (BF16/F16 weights),
where ref is the float64 forward of the stored weight values.
Some models run again with `--kv-cache-dtype bf16` and `f16`, against the
reference with its keys and values rounded as such a cache stores them
(through float32: a value within float32's error of a rounding boundary
may round the other way, so the bound is 1e-4), and must differ from the
unrounded reference by more than that bound (else the flag did nothing).
Then malformed model directories must fail with exit code 1 and a message
naming the offending tensor.

Run alone: LORAC_BIN=build/lorac /usr/bin/python3 tests/test_logits_parity.py [CASE...]
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

SRC = os.environ.get("LORAC_SRC", os.path.dirname(HERE))
LORAC = os.environ.get("LORAC_BIN") or os.path.join(SRC, "build", "lorac")
TMP = os.path.join(os.environ.get("LORAC_TEST_TMP") or os.path.join(SRC, "build", "test-tmp"), "logits_parity")

TOL = {"F32": 1e-5, "BF16": 1e-2, "F16": 1e-2}
KV_TOL = 1e-4
# the cases run again with a BF16 and an F16 KV cache
KV_CASES = {"llama-gqa-tied-f32", "llama-bias-gqa-bf16", "qwen2-mqa-tied-f32", "mistral-headdim-f16",
            "qwen3-gqa-tied-f32", "mistral-window-gqa-f32", "gemma3-window-tied-f32", "phi3-partial-longrope-long-f32"}
# Phi-3's "longrope": 4 frequencies (rotary width 8 of head_dim 16), switching at 8 positions
LONGROPE = {"type": "longrope", "short_factor": [1.0, 1.3, 2.0, 3.5], "long_factor": [1.5, 4.0, 9.0, 20.0]}


def cfg(D, F, L, H, KV, V, **kw):
    d = dict(hidden_size=D, intermediate_size=F, num_hidden_layers=L, num_attention_heads=H,
             num_key_value_heads=KV, vocab_size=V)
    d.update(kw)
    return d


# name, shape, make_random_model keywords, number of ids
CASES = [
    # MHA, odd sizes: hidden 48 = 3 heads x 16, intermediate 100, vocab 97, untied
    ("llama-mha-odd-f32", cfg(48, 100, 2, 3, 3, 97), dict(dtype="F32"), 13),
    # GQA 8 heads / 2 kv heads, tied embeddings, rms_norm_eps 1e-6
    ("llama-gqa-tied-f32", cfg(64, 160, 3, 8, 2, 128, rms_norm_eps=1e-6), dict(dtype="F32", tie=True), 20),
    # head_dim override (20 != 48/4), GQA, theta 1e6
    ("llama-headdim-f32", cfg(48, 100, 2, 4, 2, 97, head_dim=20, rope_theta=1e6), dict(dtype="F32"), 11),
    # Llama attention_bias (q, k, v and o biases), GQA, BF16 weights
    ("llama-bias-gqa-bf16", cfg(64, 96, 2, 4, 2, 101), dict(dtype="BF16", bias=True), 16),
    # Qwen2: q/k/v biases, no o bias; 7 heads of 8, one kv head (MQA), tied
    ("qwen2-mqa-tied-f32", cfg(56, 120, 2, 7, 1, 113, rms_norm_eps=1e-6, rope_theta=1e6),
     dict(dtype="F32", arch="qwen2", tie=True), 17),
    ("qwen2-gqa-bf16", cfg(64, 136, 2, 4, 2, 89), dict(dtype="BF16", arch="qwen2"), 9),
    # Qwen3: an RMSNorm over each head of q and of k before rotary; head_dim
    # 24 != 64 / 4 (as Qwen3-0.6B's 128 != 1024 / 16), GQA, tied, theta 1e6
    ("qwen3-gqa-tied-f32", cfg(64, 136, 2, 4, 2, 89, head_dim=24, rms_norm_eps=1e-6, rope_theta=1e6),
     dict(dtype="F32", arch="qwen3", tie=True), 18),
    # Qwen3 with attention_bias (q, k, v and o biases), BF16, untied
    ("qwen3-bias-bf16", cfg(48, 100, 2, 6, 3, 97, head_dim=16), dict(dtype="BF16", arch="qwen3", bias=True), 13),
    # SmolLM3: no rotary in every 4th layer (layers 3 and 7 of 8), tied, theta 2e6 (its default, not written)
    ("smollm3-nope-tied-f32", cfg(48, 100, 8, 4, 2, 97), dict(dtype="F32", arch="smollm3", tie=True), 15),
    # SmolLM3 with an explicit no_rope_layers list and attention_bias, BF16
    ("smollm3-list-bias-bf16", cfg(64, 96, 3, 4, 1, 89, no_rope_layers=[0, 1, 0], rope_theta=5e6),
     dict(dtype="BF16", arch="smollm3", bias=True), 12),
    # Granite: embedding, residual, attention and logits multipliers (Granite 3's kind), tied, biases
    ("granite-tied-bias-f32", cfg(64, 96, 2, 4, 2, 97), dict(dtype="F32", arch="granite", tie=True, bias=True), 14),
    # Granite with a sharper attention (attention_multiplier 0.4), BF16, untied
    ("granite-bf16", cfg(48, 100, 2, 4, 4, 89, attention_multiplier=0.4, embedding_multiplier=3.0),
     dict(dtype="BF16", arch="granite"), 11),
    # Llama 3 rope_scaling; original_max_position_embeddings small so that every
    # band (unchanged, smoothed, divided) matters at these short positions
    ("llama3-rope-f32", cfg(64, 128, 2, 4, 2, 97, rope_theta=500000.0,
                            rope_scaling=dict(hm.LLAMA3_ROPE_SCALING, original_max_position_embeddings=64)),
     dict(dtype="F32"), 19),
    # Llama 3 rope_scaling with the real Llama 3.1 values, BF16, tied (as Llama 3.2 1B)
    ("llama3-real-bf16", cfg(64, 128, 2, 4, 1, 97, rope_theta=500000.0, rope_scaling=hm.LLAMA3_ROPE_SCALING),
     dict(dtype="BF16", tie=True), 12),
    # the same two as transformers 5 writes their config.json ("rope_parameters")
    ("llama3-rope-transformers5-f32", cfg(64, 128, 2, 4, 2, 97, rope_theta=500000.0,
                                          rope_scaling=dict(hm.LLAMA3_ROPE_SCALING, original_max_position_embeddings=64)),
     dict(dtype="F32"), 19),
    ("qwen3-theta-transformers5-f32", cfg(64, 136, 2, 4, 2, 89, head_dim=24, rope_theta=1e6),
     dict(dtype="F32", arch="qwen3"), 18),
    # Mistral, GQA, head_dim override (as Mistral Nemo), F16 weights
    ("mistral-headdim-f16", cfg(80, 144, 2, 4, 2, 103, head_dim=16), dict(dtype="F16", arch="mistral"), 15),
    # one token
    ("llama-one-token-f32", cfg(48, 100, 1, 3, 3, 97), dict(dtype="F32"), 1),
    # 10 MB embedding and head off their cache lines in the file: the loader
    # copies them aligned in 8 MB pieces, in parallel (model.c)
    ("llama-bigvocab-misaligned-f32", cfg(64, 96, 1, 4, 2, 40000), dict(dtype="F32"), 7),
    # sliding windows (see attention_windows): Mistral's on every layer, a
    # window of 5 over 19 tokens, GQA
    ("mistral-window-gqa-f32", cfg(64, 128, 2, 4, 2, 97, sliding_window=5), dict(dtype="F32", arch="mistral"), 19),
    # Qwen2 with use_sliding_window: layers 1 and 2 of 3 (max_window_layers 1), BF16
    ("qwen2-window-layers-bf16", cfg(64, 136, 3, 4, 2, 89, use_sliding_window=True, sliding_window=4,
                                     max_window_layers=1), dict(dtype="BF16", arch="qwen2"), 14),
    # Qwen3 with an explicit layer_types list (the window on layer 0 only), tied
    ("qwen3-layer-types-f32", cfg(64, 136, 2, 4, 2, 89, head_dim=24, use_sliding_window=True, sliding_window=6,
                                  layer_types=["sliding_attention", "full_attention"]),
     dict(dtype="F32", arch="qwen3", tie=True), 17),
    # SmolLM3: the window on its NoPE layers (1 and 3)
    ("smollm3-window-nope-f32", cfg(48, 100, 4, 4, 2, 97, use_sliding_window=True, sliding_window=3,
                                    no_rope_layers=[1, 0, 1, 0]), dict(dtype="F32", arch="smollm3"), 13),
    # Gemma 3: (1 + w) norms, sandwich norms, GeGLU, q/k norms, the embedding
    # times sqrt(64), query_pre_attn_scalar 24 != head_dim 16; windows of 4
    # on layers 0 and 2 (sliding_window_pattern 2) with their own rotary base
    ("gemma3-window-tied-f32", cfg(64, 128, 4, 4, 2, 97, head_dim=16, sliding_window=4, sliding_window_pattern=2,
                                   query_pre_attn_scalar=24, rope_local_base_freq=100.0),
     dict(dtype="F32", arch="gemma3", tie=True), 15),
    # Gemma 3 in BF16: sqrt(48) = 6.93 rounds to 6.9375 in the embedding's
    # dtype; linear rope scaling on the global layer 1; MQA, untied
    ("gemma3-linear-rope-bf16", cfg(48, 100, 2, 4, 1, 89, head_dim=12, sliding_window=3, sliding_window_pattern=2,
                                    rope_scaling={"rope_type": "linear", "factor": 4.0}),
     dict(dtype="BF16", arch="gemma3"), 11),
    # Gemma 2: Gemma 3's layers without q/k norms or a local rotary base, every other layer windowed, the
    # attention scores and the logits soft-capped (caps of 1 and 2 here, so that they bend these scores)
    ("gemma2-softcap-tied-f32", cfg(64, 128, 3, 4, 2, 97, head_dim=16, sliding_window=4, query_pre_attn_scalar=20,
                                    attn_logit_softcapping=1.0, final_logit_softcapping=2.0),
     dict(dtype="F32", arch="gemma2", tie=True), 15),
    # Gemma 2 with Gemma2Config's caps (50, 30), BF16, MQA
    ("gemma2-defaults-bf16", cfg(48, 100, 2, 4, 1, 89, head_dim=12, sliding_window=3),
     dict(dtype="BF16", arch="gemma2", tie=True), 11),
    # Phi-3: fused qkv_proj and gate_up_proj, rotary on the first half of each head, longrope past its 8 original
    # positions (15 tokens: the long factors) with the attention factor sqrt(1 + ln 8 / ln 8), GQA
    ("phi3-partial-longrope-long-f32", cfg(64, 96, 2, 4, 2, 97, partial_rotary_factor=0.5,
                                           original_max_position_embeddings=8, max_position_embeddings=64,
                                           rope_scaling=LONGROPE), dict(dtype="F32", arch="phi3"), 15),
    # the same within its 8 original positions (the short factors), BF16, tied
    ("phi3-longrope-short-bf16", cfg(64, 96, 2, 4, 2, 97, partial_rotary_factor=0.5,
                                     original_max_position_embeddings=8, max_position_embeddings=64,
                                     rope_scaling=LONGROPE), dict(dtype="BF16", arch="phi3", tie=True), 8),
    # Phi-3-mini-4k's kind: no scaling, a window (5) on every layer; rotary on half of each head
    ("phi3-window-partial-f32", cfg(48, 100, 2, 4, 4, 89, partial_rotary_factor=0.5, sliding_window=5),
     dict(dtype="F32", arch="phi3"), 13),
]

results = []  # (name, ok)


def record(name, ok, msg):
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {msg}", flush=True)
    results.append((name, ok))


def run_lorac(args):
    cmd = [LORAC] + args
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        return None, "", f"{LORAC} not found"
    except subprocess.TimeoutExpired:
        return None, "", "timed out after 300 s"
    return p.returncode, p.stdout, p.stderr


def kv_case(name, d, c, w, ids):
    """lorac logits with a BF16 and an F16 KV cache against the reference
    rounding its keys and values the same way."""
    for kv_name, kv_t in (("bf16", torch.bfloat16), ("f16", torch.float16)):
        case = f"{name}-kv-{kv_name}"
        ref = hm.llama_forward(w, c, ids, kv_dtype=kv_t).numpy()
        plain = hm.llama_forward(w, c, ids).numpy()
        out = os.path.join(d, f"logits-kv-{kv_name}.npy")
        args = ["logits", "-m", d, "--ids", " ".join(map(str, ids)), "-o", out, "--kv-cache-dtype", kv_name]
        rc, _, err = run_lorac(args)
        if rc != 0:
            record(case, False, f"lorac exited {rc}: {err.strip()[-2000:]}")
            continue
        got = np.load(out).astype(np.float64)
        r = float(np.abs(got - ref).max() / np.abs(ref).max())
        r_plain = float(np.abs(got - plain).max() / np.abs(plain).max())
        # lorac's f32 keys and the reference's float64 ones differ in their last bits, so a value within an
        # f32 ulp or two of a rounding midpoint (about 1 in 30,000 for bf16) may round the other way: one
        # bf16 ulp (2^-8) in one element, up to ~1e-3 in the logits. So the bound is KV_TOL or a quarter of
        # the rounding's whole effect, whichever is larger: a cache that stored f32, or truncated, misses it
        tol = max(KV_TOL, r_plain / 4)
        record(case, r <= tol and r_plain > 1.5 * KV_TOL,
               f"rel={r:.2e} against the rounded reference (tol {tol:.1e}), {r_plain:.2e} against the unrounded "
               f"one (must exceed {1.5 * KV_TOL:.1e})")


def parity_case(name, shape, kw, T, seed):
    d = os.path.join(TMP, name)
    shutil.rmtree(d, ignore_errors=True)
    c, w = hm.make_random_model(d, shape, seed=seed, **kw)
    if "transformers5" in name:
        # config.json as transformers 5 writes it: rope_theta and the scaling
        # fields in one "rope_parameters" object, no top-level keys; the
        # reference keeps reading the 4.x form c, which means the same
        v5 = {k: v for k, v in c.items() if k not in ("rope_theta", "rope_scaling")}
        v5["rope_parameters"] = dict(c.get("rope_scaling") or {"rope_type": "default"}, rope_theta=c["rope_theta"])
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(v5, f, indent=2)
    if "misaligned" in name:
        _, start, _ = hm.read_safetensors_header(os.path.join(d, "model.safetensors"))
        if start % 64 == 0:
            record(name, False, f"tensor data starts at {start}, a multiple of 64: the case tests nothing")
            return
    g = torch.Generator().manual_seed(1000 + seed)
    ids = torch.randint(0, c["vocab_size"], (T,), generator=g).tolist()
    ref = hm.llama_forward(w, c, ids).numpy()
    out = os.path.join(d, "logits.npy")
    args = ["logits", "-m", d, "--ids", " ".join(map(str, ids)), "-o", out]
    rc, _, err = run_lorac(args)
    if rc != 0:
        record(name, False, f"lorac exited {rc}: {err.strip()[-2000:]}\n      command: {LORAC} {' '.join(args)}")
        return
    try:
        got = np.load(out)
    except Exception as e:  # noqa: BLE001
        record(name, False, f"cannot load {out}: {e}")
        return
    if got.dtype != np.float32 or got.shape != (T, c["vocab_size"]):
        record(name, False, f"got {got.dtype} {got.shape}, expected float32 {(T, c['vocab_size'])}")
        return
    if not np.all(np.isfinite(got)):
        record(name, False, "non-finite logits")
        return
    diff = np.abs(got.astype(np.float64) - ref)
    r = float(diff.max() / np.abs(ref).max())
    t, v = np.unravel_index(int(diff.argmax()), diff.shape)
    tol = TOL[kw.get("dtype", "F32")]
    same_argmax = int((got.argmax(-1) == ref.argmax(-1)).sum())
    record(name, r <= tol,
           f"max|d|={diff.max():.3e} max|ref|={np.abs(ref).max():.3f} rel={r:.2e} (tol {tol:.0e}) "
           f"worst at t={t} v={v}; argmax agrees {same_argmax}/{T}")
    if hm.is_gemma(c) and kw.get("dtype", "F32") != "F32":
        # Gemma's embedding scale is sqrt(hidden_size) rounded to the embedding's dtype: lorac must be
        # far closer to that than to the unrounded scale (the gap is below the BF16 bound)
        exact = hm.llama_forward(w, c, ids, exact_embed_scale=True).numpy()
        gap = float(np.abs(exact - ref).max() / np.abs(ref).max())
        record(name + "-embed-scale-rounded", r < gap / 10,
               f"rel {r:.2e} against the rounded scale's reference, which the unrounded scale moves by {gap:.2e}")
    if hm.is_gemma(c):
        # lorac reads the same soft-caps off config.json as the reference (null: none)
        rc, out_json, err = run_lorac(["inspect", d, "--json"])
        got = json.loads(out_json) if rc == 0 else {}
        got_caps = (got.get("attn_logit_softcapping", "absent"), got.get("final_logit_softcapping", "absent"))
        record(name + "-inspect-softcaps", got_caps == hm.softcaps(c),
               f"lorac inspect: {got_caps}, reference: {hm.softcaps(c)}")
    if any(cap is not None for cap in hm.softcaps(c)) and kw.get("dtype", "F32") == "F32":
        # the soft-caps must matter here: without them the reference moves by far more than the bound
        uncapped = hm.llama_forward(w, dict(c, attn_logit_softcapping=None, final_logit_softcapping=None), ids).numpy()
        moved = float(np.abs(uncapped - ref).max() / np.abs(ref).max())
        record(name + "-softcaps-matter", moved > 10 * tol,
               f"the reference without its soft-caps moves by rel={moved:.2e} (must exceed {10 * tol:.0e})")
    if hm.is_phi3(c) and kw.get("dtype", "F32") == "F32":
        # each of Phi-3's rotary features must matter here: the reference without it moves by far more than the bound
        rs = c.get("rope_scaling")
        contrasts = []
        if rs is None:
            contrasts.append(("partial-rotary", hm.llama_forward(w, dict(c, partial_rotary_factor=1.0), ids)))
        else:
            orig = c["original_max_position_embeddings"]
            contrasts.append(("long-factors" if T > orig else "short-factors",
                              hm.llama_forward(w, c, ids, rope_len=1 if T > orig else 10 * orig)))
            contrasts.append(("attention-factor", hm.llama_forward(w, dict(c, rope_scaling=dict(rs, attention_factor=1.0)),
                                                                   ids)))
        for what, other in contrasts:
            moved = float(np.abs(other.numpy() - ref).max() / np.abs(ref).max())
            record(f"{name}-{what}-matter", moved > 10 * tol,
                   f"the reference without them moves by rel={moved:.2e} (must exceed {10 * tol:.0e})")
        # lorac inspect reads the same rotary width and longrope settings as the reference
        rc, out_json, err = run_lorac(["inspect", d, "--json"])
        got = json.loads(out_json) if rc == 0 else {}
        lr = got.get("longrope") or {}
        want_lr = (c["original_max_position_embeddings"], hm.longrope_attention_factor(c)) if rs else None
        got_lr = (lr.get("original_max_position_embeddings"), lr.get("attention_factor")) if lr else None
        ok = got.get("rotary_dim") == hm.rotary_dim_of(c) and (got_lr is None) == (want_lr is None) and (
            want_lr is None or (got_lr[0] == want_lr[0] and abs(got_lr[1] - want_lr[1]) < 1e-6))
        record(name + "-inspect-rotary", ok, f"lorac inspect: rotary_dim {got.get('rotary_dim')}, longrope {got_lr}; "
                                             f"reference: {hm.rotary_dim_of(c)}, {want_lr}")
    windows = hm.attention_windows(c)
    if any(windows):
        # lorac reads the same windows off config.json as the reference
        rc, out_json, err = run_lorac(["inspect", d, "--json"])
        got_w = json.loads(out_json) if rc == 0 else {}
        want_w = dict(sliding_window=next(W for W in windows if W), sliding_window_layers=[
            i for i, W in enumerate(windows) if W])
        got_w = {k: got_w.get(k) for k in want_w}
        record(name + "-inspect-windows", got_w == want_w, f"lorac inspect: {got_w}, reference: {want_w}")
    if any(W is not None and W < T for W in windows):
        # the window must matter here: without it the reference moves by far more than the bound
        full = hm.llama_forward(w, dict(c, layer_types=["full_attention"] * c["num_hidden_layers"]), ids).numpy()
        moved = float(np.abs(full - ref).max() / np.abs(ref).max())
        record(name + "-window-matters", moved > 10 * tol,
               f"the reference without its window moves by rel={moved:.2e} (must exceed {10 * tol:.0e})")
    if name in KV_CASES:
        kv_case(name, d, c, w, ids)


def error_case(name, d, want_patterns):
    """lorac logits on a broken model dir must exit 1 with a message matching all patterns."""
    out = os.path.join(d, "logits.npy")
    rc, _, err = run_lorac(["logits", "-m", d, "--ids", "1 2 3", "-o", out])
    msg = err.strip().splitlines()[-1] if err.strip() else ""
    missing = [p for p in want_patterns if not re.search(p, err)]
    ok = rc == 1 and not missing
    record(name, ok, f"exit {rc}, stderr: {msg!r}" + (f"; missing {missing}" if missing else ""))


def negative_cases():
    small = cfg(48, 100, 2, 4, 2, 97)

    # config says hidden_size 64, the weights have 48
    d = os.path.join(TMP, "bad-hidden-size")
    shutil.rmtree(d, ignore_errors=True)
    c, w = hm.make_random_model(d, small, seed=101)
    c["hidden_size"] = 64
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    names = "|".join(re.escape(n) for n in w)
    error_case("error-config-hidden-64-weights-48", d, [names, r"expected"])

    # one tensor with a wrong shape
    d = os.path.join(TMP, "bad-tensor-shape")
    shutil.rmtree(d, ignore_errors=True)
    c, w = hm.make_random_model(d, small, seed=102)
    bad = "model.layers.1.self_attn.k_proj.weight"
    w[bad] = torch.zeros(w[bad].shape[0] + 4, w[bad].shape[1])
    hm.save_safetensors(os.path.join(d, "model.safetensors"), w)
    error_case("error-wrong-shape-k_proj", d, [re.escape(bad), r"expected"])

    # a missing tensor
    d = os.path.join(TMP, "missing-tensor")
    shutil.rmtree(d, ignore_errors=True)
    c, w = hm.make_random_model(d, small, seed=103)
    gone = "model.layers.1.mlp.up_proj.weight"
    del w[gone]
    hm.save_safetensors(os.path.join(d, "model.safetensors"), w)
    error_case("error-missing-up_proj", d, [re.escape(gone)])

    # a Qwen3 model without a q_norm, and one whose k_norm is not head_dim long;
    # a Gemma 3 model without a post-feedforward norm, and one whose MLP input norm has a wrong shape
    for arch, seed, gone, bad, bad_size in [
            ("qwen3", 104, "model.layers.0.self_attn.q_norm.weight", "model.layers.1.self_attn.k_norm.weight", 10),
            ("gemma3", 105, "model.layers.1.post_feedforward_layernorm.weight",
             "model.layers.0.pre_feedforward_layernorm.weight", 47)]:
        d = os.path.join(TMP, f"{arch}-without-norms")
        shutil.rmtree(d, ignore_errors=True)
        c, w = hm.make_random_model(d, dict(small, head_dim=12), seed=seed, arch=arch)
        want = w[bad].shape[0]
        del w[gone]
        hm.save_safetensors(os.path.join(d, "model.safetensors"), w)
        error_case(f"error-{arch}-missing-{gone.split('.')[-2]}", d, [re.escape(f'missing tensor "{gone}"')])
        c, w = hm.make_random_model(d, dict(small, head_dim=12), seed=seed, arch=arch)
        w[bad] = torch.zeros(bad_size)
        hm.save_safetensors(os.path.join(d, "model.safetensors"), w)
        error_case(f"error-{arch}-{bad.split('.')[-2]}-shape", d,
                   [re.escape(bad), re.escape(f"has shape [{bad_size}], expected [{want}]")])


def phi3_negative_cases():
    """A Phi-3 model without a fused projection, and one whose gate_up_proj has the wrong rows."""
    shape = cfg(48, 100, 2, 4, 2, 97)
    d = os.path.join(TMP, "phi3-broken")
    shutil.rmtree(d, ignore_errors=True)
    c, w = hm.make_random_model(d, shape, seed=106, arch="phi3")
    gone = "model.layers.1.self_attn.qkv_proj.weight"
    del w[gone]
    hm.save_safetensors(os.path.join(d, "model.safetensors"), w)
    error_case("error-phi3-missing-qkv_proj", d, [re.escape(f'missing tensor "{gone}"')])
    c, w = hm.make_random_model(d, shape, seed=106, arch="phi3")
    bad = "model.layers.0.mlp.gate_up_proj.weight"
    w[bad] = torch.zeros(100, 48)
    hm.save_safetensors(os.path.join(d, "model.safetensors"), w)
    error_case("error-phi3-gate_up_proj-shape", d, [re.escape(bad), re.escape("has shape [100, 48], expected [200, 48]")])


def phi3_generate_cases():
    """`lorac generate` on a Phi-3 model with longrope: greedy decoding through the KV cache equals the reference
    recomputing the whole sequence at each step (transformers' forward, whose factors follow the sequence's
    length), for a prompt already past the 4 original positions and for one of 5 tokens that generation takes past
    8 (lorac decodes the cache again at the switch, as transformers' generate does); a context that cannot
    recompute refuses the switch (lorac_context_decode: tests/test_forward_batch.c is Llama-only, so `lorac logits`
    on the same ids one by one is not it: the refusal is checked through the C API's message in generate's absence)."""
    fx = os.environ.get("LORAC_FIXTURES", os.path.join(SRC, "..", "shared", "fixtures"))
    tok = os.path.join(fx, "tokenizers", "tinyllama-1.1b-chat-v1.0", "tokenizer.json")
    shape = cfg(32, 48, 2, 4, 2, 32000, partial_rotary_factor=0.5, max_position_embeddings=64, rope_scaling=dict(
        LONGROPE, short_factor=[1.0, 1.7], long_factor=[3.0, 8.0]), eos_token_id=0)
    for name, orig in (("phi3-generate-long", 4), ("phi3-generate-switch", 8)):
        d = os.path.join(TMP, name)
        shutil.rmtree(d, ignore_errors=True)
        c, w = hm.make_random_model(d, dict(shape, original_max_position_embeddings=orig), seed=107, arch="phi3",
                                    tokenizer_json=tok)
        rc, out, err = run_lorac(["tokenize", "-m", d, "-p", "Once upon a time"])
        prompt = [int(x) for x in out.split()] if rc == 0 else []
        rc, out, err = run_lorac(["generate", "-m", d, "-p", "Once upon a time", "-n", "6", "--temp", "0",
                                  "--ignore-eos", "-t", "2"])
        ids = list(prompt)
        for _ in range(6):
            ids.append(int(hm.llama_forward(w, c, ids)[-1].argmax()))
        # the switch must change the continuation: with the short factors throughout it differs
        short = list(prompt)
        for _ in range(6):
            short.append(int(hm.llama_forward(w, c, short, rope_len=1)[-1].argmax()))
        rc2, want, _ = run_lorac(["tokenize", "-m", d, "--decode", " ".join(map(str, ids)), "--skip-special"])
        crosses = len(prompt) <= orig < len(ids)
        record(name, rc == 0 and rc2 == 0 and out.rstrip("\n") == want.rstrip("\n") and
               (orig < len(prompt) or (crosses and short != ids)),
               f"exit {rc}: {out.strip()!r}, the reference's greedy continuation {want.strip()!r} ({len(prompt)} prompt "
               f"tokens, switch past {orig}; with the short factors throughout {short[len(prompt):]} vs "
               f"{ids[len(prompt):]}) {err.strip()[-300:]}")


def window_generate_cases():
    """`lorac generate` on windowed models, greedy, through the KV cache: 40 tokens after a 5-token prompt with a
    window of 4, so that a windowed layer keeps 12 rows (W + n_batch - 1 + W) and moves its last ones to the front
    again and again; the text equals the reference's greedy continuation recomputing the whole sequence each step,
    and differs from the reference's without the window (so the window was applied). Mistral (every layer) and
    Gemma 3 (layers 0 and 2 of 4, their own rotary base: windowed and full layers side by side in one cache)."""
    fx = os.environ.get("LORAC_FIXTURES", os.path.join(SRC, "..", "shared", "fixtures"))
    tok = os.path.join(fx, "tokenizers", "tinyllama-1.1b-chat-v1.0", "tokenizer.json")
    n_new = 40
    for name, shape, kw in (
            ("mistral-window-generate", cfg(32, 48, 2, 4, 2, 32000, sliding_window=4, eos_token_id=0),
             dict(arch="mistral")),
            ("gemma3-window-generate", cfg(32, 48, 4, 4, 2, 32000, head_dim=8, sliding_window=4,
                                           sliding_window_pattern=2, rope_local_base_freq=100.0, eos_token_id=0),
             dict(arch="gemma3"))):
        d = os.path.join(TMP, name)
        shutil.rmtree(d, ignore_errors=True)
        c, w = hm.make_random_model(d, shape, seed=109, tokenizer_json=tok, **kw)
        rc, out, err = run_lorac(["tokenize", "-m", d, "-p", "Once upon a time"])
        prompt = [int(x) for x in out.split()] if rc == 0 else []
        rc, out, err = run_lorac(["generate", "-m", d, "-p", "Once upon a time", "-n", str(n_new), "--temp", "0",
                                  "--ignore-eos", "-t", "2"])
        ids, unwindowed = list(prompt), list(prompt)
        full = dict(c, layer_types=["full_attention"] * c["num_hidden_layers"])
        for _ in range(n_new):
            ids.append(int(hm.llama_forward(w, c, ids)[-1].argmax()))
            unwindowed.append(int(hm.llama_forward(w, full, unwindowed)[-1].argmax()))
        rc2, want, _ = run_lorac(["tokenize", "-m", d, "--decode", " ".join(map(str, ids)), "--skip-special"])
        record(name, rc == 0 and rc2 == 0 and len(prompt) == 5 and out.rstrip("\n") == want.rstrip("\n") and
               unwindowed != ids,
               f"exit {rc}: {out.strip()!r}, the reference's greedy continuation {want.strip()!r} ({len(prompt)} "
               f"prompt tokens; without the window the reference continues {unwindowed[len(prompt):]} vs "
               f"{ids[len(prompt):]}) {err.strip()[-300:]}")


def main():
    want = set(sys.argv[1:])
    os.makedirs(TMP, exist_ok=True)
    print(f"lorac: {LORAC}\nmodels: {TMP}", flush=True)
    for seed, (name, shape, kw, T) in enumerate(CASES):
        if not want or name in want:
            parity_case(name, shape, kw, T, seed)
    if not want or "errors" in want:
        negative_cases()
        phi3_negative_cases()
        phi3_generate_cases()
        window_generate_cases()
    npass = sum(1 for _, ok in results if ok)
    nfail = len(results) - npass
    print(f"{npass} passed, {nfail} failed")
    return 1 if nfail else 0


if __name__ == "__main__":
    sys.exit(main())
