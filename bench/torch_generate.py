"""PyTorch peer for bench/bench_generate.sh: greedy generation with a KV cache.
(LLaMA-family models, and GPT-2 ones: TorchGPT2.)

An efficient plain-PyTorch LLaMA decoder (the semantics of
tests/reference/hf_model.py, written for speed): torch.inference_mode,
fused q/k/v and gate/up weights, a preallocated KV cache, rotary tables
computed once, the prompt as one batch (logits for its last position only),
then one token at a time, greedy. Weights and activations in float32, or in
bfloat16 with --dtype bf16 (as HF runs a bf16 model).

Prints, like `lorac generate` does on stderr:
    prompt: 32 tokens, 1234.5 tok/s
    generate: 128 tokens, 56.7 tok/s
    ids: <generated ids>

Usage:
    /usr/bin/python3 bench/torch_generate.py -m DIR --ids "1 2 3" [-n 128] [-t 2] [--dtype f32|bf16]
    /usr/bin/python3 bench/torch_generate.py --blas-check      # time a 1024x1024 f32 matmul
Run it with LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp and
OPENBLAS_CORETYPE as bench/openblas_env.sh sets it to give torch OpenBLAS (bench_generate.sh does).
"""

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import gpt2_ref as g2  # noqa: E402
import hf_model as hm  # noqa: E402


def loaded_blas():
    """The BLAS/LAPACK shared objects mapped into this process."""
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            p = line.split()[-1]
            if ("blas" in p or "lapack" in p) and ".so" in p:
                libs.add(os.path.realpath(p))
    return sorted(libs)


def blas_check(threads):
    torch.set_num_threads(threads)
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    a @ b
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    gflops = 2 * 1024 ** 3 / best / 1e9
    print(f"matmul 1024x1024 f32, {threads} threads: {best * 1e3:.2f} ms, {gflops:.1f} GFLOP/s")
    print("blas libraries mapped: " + " ".join(loaded_blas()))
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '')} "
          f"LD_LIBRARY_PATH={os.environ.get('LD_LIBRARY_PATH', '')}")


DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


class TorchLlama:
    def __init__(self, model_dir, dtype, max_seq):
        c, w = hm.load_model(model_dir)
        self.c = c
        self.model_dir = model_dir
        dt = self.dt = DTYPES[dtype]
        self.D = c["hidden_size"]
        self.H = c["num_attention_heads"]
        self.KV = c.get("num_key_value_heads", self.H)
        self.hd = hm.head_dim_of(c)
        self.L = c["num_hidden_layers"]
        self.eps = float(c["rms_norm_eps"])

        def get(n):
            return w[n].to(dt).contiguous()

        self.embed = get("model.embed_tokens.weight")
        self.norm = get("model.norm.weight")
        self.head = get("lm_head.weight") if "lm_head.weight" in w else self.embed
        self.layers = []
        for i in range(self.L):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            qkv_b = None
            if a + "q_proj.bias" in w:
                qkv_b = torch.cat([get(a + m + "_proj.bias") for m in "qkv"]).contiguous()
            self.layers.append(dict(
                ln1=get(p + "input_layernorm.weight"),
                wqkv=torch.cat([get(a + m + "_proj.weight") for m in "qkv"]).contiguous(),
                bqkv=qkv_b,
                wo=get(a + "o_proj.weight"),
                bo=get(a + "o_proj.bias") if a + "o_proj.bias" in w else None,
                ln2=get(p + "post_attention_layernorm.weight"),
                w13=torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")]).contiguous(),
                w2=get(p + "mlp.down_proj.weight"),
            ))
        cos, sin = hm.rotary_cos_sin(c, torch.arange(max_seq))
        self.cos = cos.to(dt)
        self.sin = sin.to(dt)
        self.alloc_cache(max_seq)

    def alloc_cache(self, max_seq):
        """The preallocated KV cache: (layers, kv heads, max_seq, head_dim) each."""
        self.kcache = torch.zeros(self.L, self.KV, max_seq, self.hd, dtype=self.dt)
        self.vcache = torch.zeros(self.L, self.KV, max_seq, self.hd, dtype=self.dt)
        self.max_seq = max_seq

    def lin(self, x, w, b=None):
        """x @ w.T + b. One f32 row goes through torch.mv (BLAS sgemv): OpenBLAS
        0.3.21's sgemm with M=1 runs at a third of sgemv's speed. bf16 stays on
        F.linear (oneDNN), which beats torch.mv there."""
        if x.shape[0] == 1 and x.dtype == torch.float32:
            y = torch.mv(w, x[0])
            if b is not None:
                y = y + b
            return y[None]
        return F.linear(x, w, b)

    def rmsnorm(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def forward(self, ids, pos0):
        """ids: int64 [T] at positions pos0..pos0+T-1; returns logits [V] of the last one."""
        T = ids.shape[0]
        H, KV, hd = self.H, self.KV, self.hd
        rep = H // KV
        S = pos0 + T
        cos = self.cos[pos0:S][None]          # (1, T, hd)
        sin = self.sin[pos0:S][None]
        mask = None
        if T > 1:
            mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=pos0).logical_not()
        x = self.embed[ids]                   # (T, D)
        half = hd // 2
        for l, ly in enumerate(self.layers):
            h = self.rmsnorm(x, ly["ln1"])
            qkv = self.lin(h, ly["wqkv"], ly["bqkv"])
            q, k, v = qkv.split([H * hd, KV * hd, KV * hd], dim=-1)
            q = q.view(T, H, hd).transpose(0, 1)  # (H, T, hd)
            k = k.view(T, KV, hd).transpose(0, 1)
            v = v.view(T, KV, hd).transpose(0, 1)
            q = q * cos + torch.cat([-q[..., half:], q[..., :half]], dim=-1) * sin
            k = k * cos + torch.cat([-k[..., half:], k[..., :half]], dim=-1) * sin
            self.kcache[l, :, pos0:S] = k
            self.vcache[l, :, pos0:S] = v
            K = self.kcache[l, :, :S]             # (KV, S, hd)
            V = self.vcache[l, :, :S]
            qg = q.reshape(KV, rep * T, hd)       # query heads of one kv group together
            att = torch.bmm(qg, K.transpose(1, 2)) * (1.0 / math.sqrt(hd))  # (KV, rep*T, S)
            if mask is not None:
                att = att.view(KV, rep, T, S).masked_fill(mask, float("-inf")).view(KV, rep * T, S)
            att = torch.softmax(att.float(), dim=-1).to(self.dt)
            o = torch.bmm(att, V).view(H, T, hd).transpose(0, 1).reshape(T, H * hd)
            x = x + self.lin(o, ly["wo"], ly["bo"])
            h = self.rmsnorm(x, ly["ln2"])
            gu = self.lin(h, ly["w13"])
            g, u = gu.chunk(2, dim=-1)
            x = x + self.lin(F.silu(g) * u, ly["w2"])
        x = self.rmsnorm(x[-1:], self.norm)
        return self.lin(x, self.head)[0]

    def generate(self, prompt, n):
        """Greedy: returns (new ids, prompt seconds, decode seconds for n tokens)."""
        ids = torch.tensor(prompt, dtype=torch.int64)
        t0 = time.perf_counter()
        tok = int(torch.argmax(self.forward(ids, 0)))
        t1 = time.perf_counter()
        out = [tok]
        pos = len(prompt)
        for _ in range(n):
            tok = int(torch.argmax(self.forward(torch.tensor([tok]), pos)))
            out.append(tok)
            pos += 1
        t2 = time.perf_counter()
        return out, t1 - t0, t2 - t1


class TorchGPT2(TorchLlama):
    """GPT-2 (tests/reference/gpt2_ref.py's semantics, for speed as
    TorchLlama): learned positions, LayerNorms, fused c_attn with its bias
    (the Conv1D weights transposed once to (out, in) for F.linear / mv),
    a GELU MLP, the tied head."""

    def __init__(self, model_dir, dtype, max_seq):
        c, w = g2.load_model(model_dir)
        self.c = c
        self.model_dir = model_dir
        dt = self.dt = DTYPES[dtype]
        self.D, self.H, self.L = c["n_embd"], c["n_head"], c["n_layer"]
        self.KV, self.hd = self.H, self.D // self.H
        self.eps = float(c.get("layer_norm_epsilon", 1e-5))

        def get(n, t=False):
            x = w[n].to(dt)
            return (x.t() if t else x).contiguous()

        p = "transformer."
        self.embed = get(p + "wte.weight")
        self.pos = get(p + "wpe.weight")
        self.norm = (get(p + "ln_f.weight"), get(p + "ln_f.bias"))
        self.head = get("lm_head.weight") if "lm_head.weight" in w else self.embed
        self.layers = []
        for i in range(self.L):
            q = f"{p}h.{i}."
            self.layers.append(dict(
                ln1=(get(q + "ln_1.weight"), get(q + "ln_1.bias")), ln2=(get(q + "ln_2.weight"), get(q + "ln_2.bias")),
                wqkv=get(q + "attn.c_attn.weight", True), bqkv=get(q + "attn.c_attn.bias"),
                wo=get(q + "attn.c_proj.weight", True), bo=get(q + "attn.c_proj.bias"),
                wfc=get(q + "mlp.c_fc.weight", True), bfc=get(q + "mlp.c_fc.bias"),
                w2=get(q + "mlp.c_proj.weight", True), b2=get(q + "mlp.c_proj.bias")))
        self.alloc_cache(max_seq)

    def forward(self, ids, pos0):
        T = ids.shape[0]
        H, hd, D = self.H, self.hd, self.D
        S = pos0 + T
        mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=pos0).logical_not() if T > 1 else None
        x = self.embed[ids] + self.pos[pos0:S]
        for l, ly in enumerate(self.layers):
            h = F.layer_norm(x, (D,), *ly["ln1"], self.eps)
            q, k, v = self.lin(h, ly["wqkv"], ly["bqkv"]).split([D, D, D], dim=-1)
            q = q.view(T, H, hd).transpose(0, 1)
            self.kcache[l, :, pos0:S] = k.view(T, H, hd).transpose(0, 1)
            self.vcache[l, :, pos0:S] = v.view(T, H, hd).transpose(0, 1)
            att = torch.bmm(q, self.kcache[l, :, :S].transpose(1, 2)) * (1.0 / math.sqrt(hd))
            if mask is not None:
                att = att.masked_fill(mask, float("-inf"))
            att = torch.softmax(att.float(), dim=-1).to(self.dt)
            o = torch.bmm(att, self.vcache[l, :, :S]).transpose(0, 1).reshape(T, D)
            x = x + self.lin(o, ly["wo"], ly["bo"])
            h = F.layer_norm(x, (D,), *ly["ln2"], self.eps)
            x = x + self.lin(F.gelu(self.lin(h, ly["wfc"], ly["bfc"]), approximate="tanh"), ly["w2"], ly["b2"])
        x = F.layer_norm(x[-1:], (D,), *self.norm, self.eps)
        return self.lin(x, self.head)[0]


def is_gpt2(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f).get("model_type") == "gpt2"


def check(m, prompt, dtype):
    """The KV-cache decoder against the float64 reference, on this model."""
    seq = list(prompt)
    got = [m.forward(torch.tensor(seq), 0)]
    for _ in range(3):
        seq.append(int(torch.argmax(got[-1])))
        got.append(m.forward(torch.tensor(seq[-1:]), len(seq) - 1))
    if isinstance(m, TorchGPT2):
        c, w = g2.load_model(m_dir_of(m))
        ref = g2.forward(w, c, seq)[len(prompt) - 1:]
    else:
        c, w = hm.load_model(m_dir_of(m))
        ref = hm.llama_forward(w, c, seq)[len(prompt) - 1:]
    got = torch.stack([g.double() for g in got])
    r = float((got - ref).abs().max() / ref.abs().max())
    tol = 1e-4 if dtype == "f32" else 5e-2
    print(f"check: torch decoder vs float64 reference, rel max diff {r:.2e} (tol {tol:.0e})")
    if not r <= tol:
        sys.exit("check failed")


def m_dir_of(m):
    return m.model_dir


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model")
    ap.add_argument("--ids", help="prompt token ids, space-separated")
    ap.add_argument("-n", type=int, default=128, help="tokens to generate after the prompt")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--reps", type=int, default=3, help="timed runs; the best is reported")
    ap.add_argument("--blas-check", action="store_true")
    ap.add_argument("--check", action="store_true",
                    help="first compare prompt + 3 decode steps with hf_model.llama_forward")
    a = ap.parse_args()
    if a.blas_check:
        blas_check(a.threads)
        return 0
    torch.set_num_threads(a.threads)
    prompt = [int(x) for x in a.ids.split()]
    with torch.inference_mode():
        m = (TorchGPT2 if is_gpt2(a.model) else TorchLlama)(a.model, a.dtype, len(prompt) + a.n + 1)
        if a.check:
            check(m, prompt, a.dtype)
        m.generate(prompt, 4)  # warm-up
        best_p = best_g = float("inf")
        for _ in range(a.reps):
            out, tp, tg = m.generate(prompt, a.n)
            best_p, best_g = min(best_p, tp), min(best_g, tg)
    print(f"prompt: {len(prompt)} tokens, {len(prompt) / best_p:.1f} tok/s")
    print(f"generate: {a.n} tokens, {a.n / best_g:.1f} tok/s")
    print("ids: " + " ".join(map(str, out)))
    print("blas: " + " ".join(loaded_blas()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
