"""Self-checks of the PyTorch reference in hf_model.py (no lorac needed).

The parity test judges lorac against hf_model.llama_forward, so that function
is checked here against a second implementation written differently:
naive_forward below processes one token at a time with a KV cache in the
llama2.c manner -- q/k weights converted back to Meta's interleaved rotary
layout (the inverse of transformers' convert_llama_weights_to_hf permute),
rotary applied as complex multiplication on (even, odd) pairs, Llama-3
scaling as the loop in Meta's reference apply_scaling, attention and softmax
as explicit loops, query head h reading kv head h // (H / KV).

Also checked: the safetensors writer/reader (layout, padding, BF16 rounding
against an independent numpy round-to-nearest-even, F16 against numpy),
causality, HF's repeat_kv, that the float32 rotary angles HF uses differ from
our float64 ones by far less than the parity tolerance, and that the
features the parity cases exercise (rotary layout, GQA mapping, Llama-3
scaling, biases) each move the logits by far more than the tolerance.

Run: /usr/bin/python3 tests/reference/selfcheck.py   (exit 0 = all good)
"""

import cmath
import json
import math
import os
import struct
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_model as hm  # noqa: E402

FAILS = []
PASSES = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what)
    (PASSES if cond else FAILS).append(what)


def rel(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ---------------------------------------------------------------------------
# second implementation
# ---------------------------------------------------------------------------

def hf_to_meta(w, n_heads):
    """Inverse of convert_llama_weights_to_hf.permute: rotate-half rows -> interleaved."""
    w = np.asarray(w)
    if w.ndim == 1:
        return hf_to_meta(w[:, None], n_heads)[:, 0]
    dim1, dim2 = w.shape
    return w.reshape(n_heads, 2, dim1 // n_heads // 2, dim2).transpose(0, 2, 1, 3).reshape(dim1, dim2)


def meta_to_hf(w, n_heads):
    """convert_llama_weights_to_hf.permute, verbatim in numpy."""
    dim1, dim2 = w.shape
    return w.reshape(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(0, 2, 1, 3).reshape(dim1, dim2)


def meta_apply_scaling(freqs, rs):
    """Meta llama-models' apply_scaling (Llama 3.1), parameters from config."""
    scale_factor = rs["factor"]
    low_freq_factor = rs["low_freq_factor"]
    high_freq_factor = rs["high_freq_factor"]
    old_context_len = rs["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    new_freqs = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            new_freqs.append(freq)
        elif wavelen > low_freq_wavelen:
            new_freqs.append(freq / scale_factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            new_freqs.append((1 - smooth) * freq / scale_factor + smooth * freq)
    return new_freqs


def naive_forward(c, weights, ids, permute=True, gqa="div", use_scaling=True, use_bias=True, use_qk_norm=True,
                  rope_everywhere=False, use_multipliers=True):
    """Token-by-token llama2.c-style forward in float64; returns logits [T, V].

    The keyword arguments inject plausible bugs for the sensitivity checks:
    permute=False applies interleaved rotary to HF-layout weights, gqa="mod"
    maps query head h to kv head h % KV, use_scaling=False ignores
    rope_scaling, use_bias=False drops the biases, use_qk_norm=False drops
    Qwen3's per-head q/k norms (whose weights, HF-layout vectors of one
    head, are permuted to the interleaved layout like the rows of q and k),
    rope_everywhere=True rotates SmolLM3's NoPE layers too, use_multipliers=False
    drops Granite's four (its scores then scaled by 1/sqrt(head_dim)).
    """
    W = {k: v.to(torch.float64).numpy() for k, v in weights.items()}
    D = c["hidden_size"]
    H = c["num_attention_heads"]
    KV = c["num_key_value_heads"]
    hd = hm.head_dim_of(c)
    L = c["num_hidden_layers"]
    eps = c["rms_norm_eps"]
    theta = c["rope_theta"]
    freqs = [1.0 / theta ** ((2 * j) / hd) for j in range(hd // 2)]
    if c.get("rope_scaling") and use_scaling:
        freqs = meta_apply_scaling(freqs, c["rope_scaling"])

    def get(name, heads=None):
        if name not in W:
            return None
        if name.endswith(".bias") and not use_bias:
            return None
        a = W[name]
        if heads is not None and permute:
            a = hf_to_meta(a, heads)
        return a

    def rmsnorm(x, w):
        ss = 0.0
        for v in x:
            ss += v * v
        ss = ss / len(x) + eps
        return x * (1.0 / math.sqrt(ss)) * w

    def matvec(name, x, heads=None):
        y = get(name + ".weight", heads) @ x
        b = get(name + ".bias", heads)
        return y if b is None else y + b

    no_rope = [l for l in range(L) if hm.rope_layers(c)[l] == 0 and not rope_everywhere]
    kcache = np.zeros((L, len(ids), KV * hd))
    vcache = np.zeros((L, len(ids), KV * hd))
    out = []
    for pos, tok in enumerate(ids):
        granite = c.get("model_type") == "granite" and use_multipliers
        x = W["model.embed_tokens.weight"][tok] * (c["embedding_multiplier"] if granite else 1.0)
        for l in range(L):
            p = f"model.layers.{l}."
            xb = rmsnorm(x, W[p + "input_layernorm.weight"])
            q = matvec(p + "self_attn.q_proj", xb, H)
            k = matvec(p + "self_attn.k_proj", xb, KV)
            v = matvec(p + "self_attn.v_proj", xb)
            qn = get(p + "self_attn.q_norm.weight", 1)
            if qn is not None and use_qk_norm:
                kn = get(p + "self_attn.k_norm.weight", 1)
                q = np.concatenate([rmsnorm(q[h * hd:(h + 1) * hd], qn) for h in range(H)])
                k = np.concatenate([rmsnorm(k[h * hd:(h + 1) * hd], kn) for h in range(KV)])
            # rotary: pairs (i, i+1) of each head turn by pos * freq[(i % hd) / 2]
            for vec in (q, k) if l not in no_rope else ():
                for i in range(0, len(vec), 2):
                    z = complex(vec[i], vec[i + 1]) * cmath.exp(1j * pos * freqs[(i % hd) // 2])
                    vec[i], vec[i + 1] = z.real, z.imag
            kcache[l, pos] = k
            vcache[l, pos] = v
            att_out = np.zeros(H * hd)
            for h in range(H):
                kvh = h // (H // KV) if gqa == "div" else h % KV
                qh = q[h * hd:(h + 1) * hd]
                scores = []
                for t in range(pos + 1):
                    kt = kcache[l, t, kvh * hd:(kvh + 1) * hd]
                    s = 0.0
                    for d in range(hd):
                        s += qh[d] * kt[d]
                    scores.append(s * c["attention_multiplier"] if granite else s / math.sqrt(hd))
                m = max(scores)
                e = [math.exp(s - m) for s in scores]
                tot = sum(e)
                for t in range(pos + 1):
                    att_out[h * hd:(h + 1) * hd] += (e[t] / tot) * vcache[l, t, kvh * hd:(kvh + 1) * hd]
            x = x + matvec(p + "self_attn.o_proj", att_out) * (c["residual_multiplier"] if granite else 1.0)
            xb = rmsnorm(x, W[p + "post_attention_layernorm.weight"])
            g = matvec(p + "mlp.gate_proj", xb)
            u = matvec(p + "mlp.up_proj", xb)
            hb = np.array([gi / (1.0 + math.exp(-gi)) * ui for gi, ui in zip(g, u)])
            x = x + matvec(p + "mlp.down_proj", hb) * (c["residual_multiplier"] if granite else 1.0)
        x = rmsnorm(x, W["model.norm.weight"])
        cls = W.get("lm_head.weight", W["model.embed_tokens.weight"])
        out.append((cls @ x) / (c["logits_scaling"] if granite else 1.0))
    return np.stack(out)


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------

def check_safetensors(tmp):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(5, 7, generator=g) * 3
    base[0, 0] = 1.0 + 2 ** -8          # exactly halfway between two bf16 values: ties to even
    base[0, 1] = 1.0 + 3 * 2 ** -8      # halfway, rounds up to even
    ts = {"a.f32": base.clone(), "b.bf16": base.to(torch.bfloat16), "c.f16": base.to(torch.float16),
          "d.scalar": torch.tensor(2.5), "e.vec": torch.arange(3, dtype=torch.float32)}
    path = os.path.join(tmp, "t.safetensors")
    hm.save_safetensors(path, ts, metadata={"format": "pt"})
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    hdr = json.loads(raw[8:8 + n])
    htext = raw[8:8 + n]
    check(n % 8 == 0 and htext[:1] == b"{" and htext.rstrip(b" ").endswith(b"}"),
          "safetensors header is JSON padded with spaces to a multiple of 8")
    check(hdr["__metadata__"] == {"format": "pt"}, "safetensors __metadata__ written")
    spans = sorted(v["data_offsets"] for k, v in hdr.items() if k != "__metadata__")
    check(spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
          and 8 + n + spans[-1][1] == len(raw), "safetensors offsets contiguous from 0, no trailing bytes")
    check(hdr["b.bf16"]["dtype"] == "BF16" and hdr["c.f16"]["dtype"] == "F16" and hdr["d.scalar"]["shape"] == [],
          "safetensors dtypes and shapes recorded")
    # BF16 bytes against an independent round-to-nearest-even of the f32 bits
    u = base.numpy().astype("<f4").view("<u4").astype(np.uint64)
    rne = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
    b0, b1 = hdr["b.bf16"]["data_offsets"]
    check(raw[8 + n + b0:8 + n + b1] == rne.tobytes(), "BF16 bytes = round-to-nearest-even of the F32 bits")
    f0, f1 = hdr["c.f16"]["data_offsets"]
    check(raw[8 + n + f0:8 + n + f1] == base.numpy().astype("<f2").tobytes(), "F16 bytes = numpy float16")
    back = hm.load_safetensors(path)
    check(all(back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v) for k, v in ts.items()),
          "safetensors round trip is bit-exact for F32, BF16, F16, scalars")
    with open(path, "ab") as f:
        f.write(b"\0")
    try:
        hm.load_safetensors(path)
        check(False, "reader rejects trailing bytes")
    except ValueError:
        check(True, "reader rejects trailing bytes")


def check_permute_and_repeat_kv():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(24, 5, generator=g).numpy()
    check(np.array_equal(hf_to_meta(meta_to_hf(w, 3), 3), w), "hf_to_meta inverts HF's permute")
    # HF repeat_kv, verbatim, against repeat_interleave used in llama_forward
    x = torch.randn(1, 2, 4, 3, generator=g)     # (batch, kv heads, seq, hd)
    n_rep = 3
    b, kv, s, d = x.shape
    hf = x[:, :, None, :, :].expand(b, kv, n_rep, s, d).reshape(b, kv * n_rep, s, d)
    check(torch.equal(hf, x.repeat_interleave(n_rep, dim=1)), "repeat_interleave == HF repeat_kv")


def check_bias_layout():
    small = dict(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2, vocab_size=5)
    names = lambda **kw: {k for k in hm.tensor_shapes(hm.make_config(small, **kw)) if k.endswith(".bias")}
    qkv = {f"model.layers.0.self_attn.{m}_proj.bias" for m in "qkv"}
    check(names(arch="qwen2") == qkv, "Qwen2: q/k/v biases, no o_proj bias")
    check(names(arch="llama", bias=True) == qkv | {"model.layers.0.self_attn.o_proj.bias"},
          "Llama attention_bias: q/k/v/o biases (HF uses attention_bias for o_proj too)")
    check(names(arch="llama") == set() and names(arch="mistral") == set(), "Llama/Mistral default: no biases")
    check(names(arch="qwen3") == set() and names(arch="qwen3", bias=True) == names(arch="llama", bias=True),
          "Qwen3: biases only with attention_bias, then q/k/v/o as Llama")
    norms = {k for k in hm.tensor_shapes(hm.make_config(small, arch="qwen3")) if "_norm." in k}
    check(norms == {"model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.k_norm.weight"},
          "Qwen3: q_norm and k_norm per layer")
    eight = dict(small, num_hidden_layers=8)
    check(hm.rope_layers(hm.make_config(eight, arch="smollm3")) == [1, 1, 1, 0, 1, 1, 1, 0],
          "SmolLM3: every 4th layer NoPE by default (no_rope_layer_interval)")
    check(hm.rope_layers(hm.make_config(dict(small, no_rope_layers=[0]), arch="smollm3")) == [0],
          "SmolLM3: an explicit no_rope_layers wins")


def check_llama3_scaling():
    c = {"hidden_size": 256, "num_attention_heads": 2, "rope_theta": 500000.0, "rope_scaling": hm.LLAMA3_ROPE_SCALING}
    inv0 = hm.default_inv_freq(c)
    ours = hm.rope_inv_freq(c)
    meta = meta_apply_scaling(inv0.tolist(), c["rope_scaling"])
    r = rel(ours.numpy(), meta)
    n_med = sum(1 for a, b in zip(inv0.tolist(), ours.tolist()) if a != b and abs(a / b - 8) > 1e-9)
    check(r < 1e-15 and n_med > 0, f"llama3 inv_freq == Meta apply_scaling loop (rel {r:.1e}, {n_med} smoothed)")


CASES = [
    # name, cfg, kw
    ("gqa-bias-tied", dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=29), dict(bias=True, tie=True)),
    ("mha-headdim-bf16", dict(hidden_size=24, intermediate_size=30, num_hidden_layers=2, num_attention_heads=3,
                              num_key_value_heads=3, head_dim=10, vocab_size=31), dict(dtype="BF16")),
    ("qwen2-gqa", dict(hidden_size=24, intermediate_size=20, num_hidden_layers=1, num_attention_heads=6,
                       num_key_value_heads=2, vocab_size=17), dict(arch="qwen2", bias=True)),
    ("qwen3-gqa-headdim", dict(hidden_size=24, intermediate_size=20, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, head_dim=8, vocab_size=19), dict(arch="qwen3", tie=True)),
    ("smollm3-nope", dict(hidden_size=24, intermediate_size=20, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=19), dict(arch="smollm3", tie=True)),
    ("granite-gqa", dict(hidden_size=32, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=23), dict(arch="granite", tie=True)),
    ("llama3-scaling", dict(hidden_size=32, intermediate_size=36, num_hidden_layers=2, num_attention_heads=2,
                            num_key_value_heads=1, vocab_size=23, rope_theta=500000.0,
                            rope_scaling=dict(hm.LLAMA3_ROPE_SCALING, original_max_position_embeddings=64)), {}),
]


def check_forward(tmp):
    T = 9
    for name, cfg, kw in CASES:
        d = os.path.join(tmp, name)
        c, w = hm.make_random_model(d, cfg, seed=7, **kw)
        ids = torch.randint(0, c["vocab_size"], (T,), generator=torch.Generator().manual_seed(3)).tolist()
        ref = hm.llama_forward(w, c, ids).numpy()
        nav = naive_forward(c, w, ids)
        r = rel(nav, ref)
        check(r < 1e-12, f"{name}: llama_forward == loop/complex-rotary forward (rel {r:.1e})")
        # HF computes inv_freq and the angles in float32: far below the 1e-5 tolerance
        r32 = rel(hm.llama_forward(w, c, ids, hf_float32_rope=True).numpy(), ref)
        check(r32 < 1e-6, f"{name}: float32 rotary angles as HF moves logits by {r32:.1e} (< 1e-6)")
        # causality: changing later tokens leaves earlier logits unchanged
        ids2 = ids[:5] + [(i + 1) % c["vocab_size"] for i in ids[5:]]
        ref2 = hm.llama_forward(w, c, ids2).numpy()
        check(np.array_equal(ref2[:5], ref[:5]) and rel(ref2[5:], ref[5:]) > 1e-3, f"{name}: causal")
        # sensitivity: each plausible bug moves the logits far above the 1e-5 tolerance
        r = rel(naive_forward(c, w, ids, permute=False), ref)
        check(r > 1e-3, f"{name}: interleaved rotary on HF layout would differ by {r:.1e}")
        if c["num_key_value_heads"] not in (1, c["num_attention_heads"]):
            r = rel(naive_forward(c, w, ids, gqa="mod"), ref)
            check(r > 1e-3, f"{name}: kv head h % KV instead of h // rep would differ by {r:.1e}")
        if c.get("rope_scaling"):
            r = rel(naive_forward(c, w, ids, use_scaling=False), ref)
            check(r > 1e-3, f"{name}: ignoring rope_scaling would differ by {r:.1e}")
        if any(k.endswith(".bias") for k in w):
            r = rel(naive_forward(c, w, ids, use_bias=False), ref)
            check(r > 1e-3, f"{name}: dropping biases would differ by {r:.1e}")
        if c.get("model_type") == "granite":
            r = rel(naive_forward(c, w, ids, use_multipliers=False), ref)
            check(r > 1e-3, f"{name}: Llama's scaling instead of Granite's multipliers would differ by {r:.1e}")
        if 0 in hm.rope_layers(c):
            r = rel(naive_forward(c, w, ids, rope_everywhere=True), ref)
            check(r > 1e-3, f"{name}: rotary in the NoPE layers too would differ by {r:.1e}")
        if hm.has_qk_norm(c):
            r = rel(naive_forward(c, w, ids, use_qk_norm=False), ref)
            check(r > 1e-3, f"{name}: dropping the q/k norms would differ by {r:.1e}")


def main():
    with tempfile.TemporaryDirectory(dir=os.environ.get("LORAC_TEST_TMP")) as tmp:
        check_safetensors(tmp)
        check_permute_and_repeat_kv()
        check_bias_layout()
        check_llama3_scaling()
        check_forward(tmp)
    print(f"{len(PASSES)} passed, {len(FAILS)} failed")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
