"""PyTorch peer for bench_train.sh: the same LoRA training step as
`lorac train --format tokens --targets all-linear --r 8` (frozen f32 base,
r=8 adapters on all seven projections, AdamW, 2 threads) on a HuggingFace
model directory written by tests/reference/hf_model.py (or on GPT-2's four
Conv1D projections, for a GPT-2 directory from tests/reference/gpt2_ref.py). Prints tokens/s
of the median step after the first (warm-up)."""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import gpt2_ref  # noqa: E402
import hf_model  # noqa: E402


class LoRALinear(torch.nn.Module):
    def __init__(self, w, b, r, alpha):
        super().__init__()
        self.w = torch.nn.Parameter(w, requires_grad=False)
        self.b = None if b is None else torch.nn.Parameter(b, requires_grad=False)
        self.A = torch.nn.Parameter(torch.empty(r, w.shape[1]).uniform_(-1 / math.sqrt(w.shape[1]), 1 / math.sqrt(w.shape[1])))
        self.B = torch.nn.Parameter(torch.zeros(w.shape[0], r))
        self.s = alpha / r

    def forward(self, x):
        return F.linear(x, self.w, self.b) + self.s * F.linear(F.linear(x, self.A), self.B)


class Model(torch.nn.Module):
    def __init__(self, c, w, r, alpha):
        super().__init__()
        self.c = c
        self.emb = torch.nn.Parameter(w["model.embed_tokens.weight"].float(), requires_grad=False)
        self.head = torch.nn.Parameter(w.get("lm_head.weight", w["model.embed_tokens.weight"]).float(), requires_grad=False)
        self.norm = torch.nn.Parameter(w["model.norm.weight"].float(), requires_grad=False)
        self.layers = torch.nn.ModuleList()
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            L = torch.nn.Module()
            L.n1 = torch.nn.Parameter(w[p + "input_layernorm.weight"].float(), requires_grad=False)
            L.n2 = torch.nn.Parameter(w[p + "post_attention_layernorm.weight"].float(), requires_grad=False)
            for m, blk in [("q_proj", "self_attn"), ("k_proj", "self_attn"), ("v_proj", "self_attn"), ("o_proj", "self_attn"),
                           ("gate_proj", "mlp"), ("up_proj", "mlp"), ("down_proj", "mlp")]:
                setattr(L, m, LoRALinear(w[p + f"{blk}.{m}.weight"].float(), w.get(p + f"{blk}.{m}.bias"), r, alpha))
            self.layers.append(L)

    def forward(self, ids):
        c = self.c
        B, T = ids.shape
        H, KV = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
        hd = c["hidden_size"] // H
        eps = c.get("rms_norm_eps", 1e-5)
        inv = 1.0 / (c.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(T).float(), inv)
        cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
        mask = torch.full((T, T), float("-inf")).triu(1)

        def rms(x, wt):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * wt

        def rot(x):
            a, b = x.chunk(2, -1)
            return torch.cat([-b, a], -1)

        x = self.emb[ids]
        for L in self.layers:
            h = rms(x, L.n1)
            q = L.q_proj(h).view(B, T, H, hd).transpose(1, 2)
            k = L.k_proj(h).view(B, T, KV, hd).transpose(1, 2)
            v = L.v_proj(h).view(B, T, KV, hd).transpose(1, 2)
            q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
            k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, -1)
            x = x + L.o_proj((att @ v).transpose(1, 2).reshape(B, T, H * hd))
            h = rms(x, L.n2)
            x = x + L.down_proj(F.silu(L.gate_proj(h)) * L.up_proj(h))
        return rms(x, self.norm) @ self.head.T


class GPT2(torch.nn.Module):
    """GPT-2 (tests/reference/gpt2_ref.py's semantics) with LoRA on its four
    Conv1D projections (all-linear), their weights transposed to (out, in)."""

    def __init__(self, c, w, r, alpha):
        super().__init__()
        self.c = c

        def frozen(name):
            return torch.nn.Parameter(w[name].float(), requires_grad=False)

        p = "transformer."
        self.wte, self.wpe = frozen(p + "wte.weight"), frozen(p + "wpe.weight")
        self.lnf_w, self.lnf_b = frozen(p + "ln_f.weight"), frozen(p + "ln_f.bias")
        self.layers = torch.nn.ModuleList()
        for i in range(c["n_layer"]):
            q = f"{p}h.{i}."
            L = torch.nn.Module()
            L.ln1_w, L.ln1_b, L.ln2_w, L.ln2_b = (frozen(q + n) for n in ("ln_1.weight", "ln_1.bias", "ln_2.weight",
                                                                         "ln_2.bias"))
            for attr, m in [("c_attn", "attn.c_attn"), ("c_proj", "attn.c_proj"), ("c_fc", "mlp.c_fc"),
                            ("m_proj", "mlp.c_proj")]:
                setattr(L, attr, LoRALinear(w[q + m + ".weight"].float().t().contiguous(), w[q + m + ".bias"].float(),
                                            r, alpha))
            self.layers.append(L)

    def forward(self, ids):
        c = self.c
        B, T = ids.shape
        D, H = c["n_embd"], c["n_head"]
        hd, eps = D // H, c.get("layer_norm_epsilon", 1e-5)
        mask = torch.full((T, T), float("-inf")).triu(1)
        x = self.wte[ids] + self.wpe[:T]
        for L in self.layers:
            h = F.layer_norm(x, (D,), L.ln1_w, L.ln1_b, eps)
            q, k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in L.c_attn(h).split(D, -1))
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, -1)
            x = x + L.c_proj((att @ v).transpose(1, 2).reshape(B, T, D))
            h = F.layer_norm(x, (D,), L.ln2_w, L.ln2_b, eps)
            x = x + L.m_proj(F.gelu(L.c_fc(h), approximate="tanh"))
        return F.layer_norm(x, (D,), self.lnf_w, self.lnf_b, eps) @ self.wte.T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(2)
    with open(os.path.join(a.model, "config.json")) as f:
        gpt2 = json.load(f).get("model_type") == "gpt2"
    c, w = (gpt2_ref if gpt2 else hf_model).load_model(a.model)
    torch.manual_seed(0)
    m = (GPT2 if gpt2 else Model)(c, w, 8, 16)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    ids = torch.randint(0, c["vocab_size"], (a.batch, a.seq + 1))
    times = []
    for s in range(a.steps):
        t0 = time.time()
        logits = m(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.time() - t0)
    # the median step after the first: torch's first steps after warm-up
    # still grow its allocator (1.5-2x slower), the rest vary by 20%
    steady = sorted(times[1:] if len(times) > 1 else times)
    median = steady[len(steady) // 2] if len(steady) % 2 else (steady[len(steady) // 2 - 1] + steady[len(steady) // 2]) / 2
    print(" ".join("%.3f" % t for t in times), file=sys.stderr)
    print(json.dumps({"tokens_per_second": a.batch * a.seq / median,
                      "trainable": sum(p.numel() for p in params)}))


if __name__ == "__main__":
    main()
