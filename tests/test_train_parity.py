"""LoRA training parity with PyTorch: from the same initial adapter and the
same token batches, lorac's per-step losses and every A and B after 3 AdamW
steps (with weight decay, clipping, a warmup+linear schedule, gradient
accumulation, rsLoRA) agree with a float64 PyTorch reference built on
tests/reference/hf_model.py's forward, to <= 1e-4 relative. `--full` runs
are checked the same way on every weight's update.

The reference folds each adapter into its projection, W + s * B @ A, with A
and B as autograd leaves: the same function as the unmerged forward.
"""
import json
import math
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
import hf_model  # noqa: E402

LORAC = os.environ["LORAC_BIN"]
TMP = os.environ.get("LORAC_TEST_TMP", "/tmp")
MODULES = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
# Phi-3's fused modules: PEFT's LoRA on each is one A and one B over all its rows
BLOCKS = dict(MODULES, qkv_proj="self_attn", gate_up_proj="mlp")
results = []


def dims(c, m):
    D, I = c["hidden_size"], c["intermediate_size"]
    H, KV = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    hd = c.get("head_dim") or D // H
    return {"q_proj": (D, H * hd), "k_proj": (D, KV * hd), "v_proj": (D, KV * hd), "o_proj": (H * hd, D),
            "gate_proj": (D, I), "up_proj": (D, I), "down_proj": (I, D), "qkv_proj": (D, (H + 2 * KV) * hd),
            "gate_up_proj": (D, 2 * I)}[m]


def key(layer, m, ab):
    return f"base_model.model.model.layers.{layer}.{BLOCKS[m]}.{m}.lora_{ab}.weight"


def hf_lambda(kind, warmup, total):
    def lam(s):
        if s < warmup:
            return s / max(1, warmup)
        if kind == "constant":
            return 1.0
        prog = (s - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, (total - s) / max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * prog)))
    return lam


def run_case(name, shape, arch, tie, bias, targets, r, alpha, rslora, steps, batch, accum, seq, lr, wd, clip, sched, warmup, seed,
             extra_args=(), base_fn=None, dtype="F32", model_fn=None):
    """extra_args: more `lorac train` flags; base_fn: the frozen weights as the
    run should see them, from the weights as stored (tests/test_qlora.py's
    NF4 round trip); model_fn(dir, c, w): rewrites the model directory just
    written (tests/test_bnb.py's bitsandbytes checkpoint) and returns the
    frozen weights as the run should see them."""
    d = os.path.join(TMP, f"train-parity-{name}")
    os.makedirs(d, exist_ok=True)
    c, w = hf_model.make_random_model(os.path.join(d, "model"), shape, dtype=dtype, arch=arch, tie=tie, bias=bias,
                                      seed=seed)
    if model_fn:
        frozen = model_fn(os.path.join(d, "model"), c, w)
    g = torch.Generator().manual_seed(seed + 1)
    # initial adapter with B != 0 so every A gets a gradient at step 1
    init = {}
    for layer in range(c["num_hidden_layers"]):
        for m in targets:
            fin, fout = dims(c, m)
            init[key(layer, m, "A")] = (torch.randn(r, fin, generator=g) / math.sqrt(fin)).float()
            init[key(layer, m, "B")] = (torch.randn(fout, r, generator=g) * 0.05).float()
    ad = os.path.join(d, "init")
    os.makedirs(ad, exist_ok=True)
    hf_model.save_safetensors(os.path.join(ad, "adapter_model.safetensors"), init)
    with open(os.path.join(ad, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": targets, "use_rslora": rslora,
                   "bias": "none", "task_type": "CAUSAL_LM", "lora_dropout": 0.0}, f)
    # token rows of different lengths (<= seq), some labels masked
    V = c["vocab_size"]
    n_rows = steps * batch * accum
    rows = []
    with open(os.path.join(d, "data.jsonl"), "w") as f:
        for i in range(n_rows):
            n = 5 + int(torch.randint(0, seq - 4, (1,), generator=g))
            ids = torch.randint(0, V, (n,), generator=g).tolist()
            labels = list(ids)
            for t in range(min(3, n)):
                if (i + t) % 2 == 0:
                    labels[t] = -100
            rows.append((ids, labels))
            f.write(json.dumps({"input_ids": ids, "labels": labels}) + "\n")
    out = os.path.join(d, "out")
    args = [LORAC, "train", "-m", os.path.join(d, "model"), "--data", os.path.join(d, "data.jsonl"), "--format", "tokens",
            "-o", out, "--no-shuffle", "--init-adapter", ad, "--steps", str(steps), "--batch", str(batch),
            "--grad-accum", str(accum), "--seq", str(seq), "--lr", str(lr), "--weight-decay", str(wd), "--clip", str(clip),
            "--schedule", sched, "--warmup", str(warmup), "-t", "2"] + list(extra_args)
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        results.append((name, False, "lorac train failed: " + p.stderr[-500:]))
        return
    got_losses = [json.loads(line)["loss"] for line in open(os.path.join(out, "metrics.jsonl"))]
    got = hf_model.load_safetensors(os.path.join(out, "adapter_model.safetensors"))

    # reference
    scale = alpha / math.sqrt(r) if rslora else alpha / r
    params = {k: v.to(torch.float64).clone().requires_grad_(True) for k, v in init.items()}
    opt = torch.optim.AdamW(list(params.values()), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    sch = torch.optim.lr_scheduler.LambdaLR(opt, hf_lambda(sched, warmup, steps))
    if not model_fn:
        frozen = base_fn(c, w) if base_fn else w
    base = {k: v.to(torch.float64) for k, v in frozen.items()}
    ref_losses = []
    for s in range(steps):
        opt.zero_grad()
        step_loss = 0.0
        for a in range(accum):
            ww = dict(base)
            for layer in range(c["num_hidden_layers"]):
                for m in targets:
                    wn = f"model.layers.{layer}.{BLOCKS[m]}.{m}.weight"
                    ww[wn] = base[wn] + scale * params[key(layer, m, "B")] @ params[key(layer, m, "A")]
            total, count = 0.0, 0
            first = (s * accum + a) * batch
            longest = max(len(r[0]) for r in rows[first:first + batch])  # picks Phi-3's longrope factors
            for b in range(batch):
                ids, labels = rows[first + b]
                logits = hf_model.llama_forward(ww, c, ids, rope_len=longest)
                for t in range(len(ids) - 1):
                    if labels[t + 1] != -100:
                        total = total + torch.logsumexp(logits[t], 0) - logits[t, labels[t + 1]]
                        count += 1
            loss = total / count
            (loss / accum).backward()
            step_loss += loss.item() / accum
        ref_losses.append(step_loss)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(list(params.values()), clip)
        opt.step()
        sch.step()

    worst_loss = max(abs(a - b) / abs(b) for a, b in zip(got_losses, ref_losses))
    worst_w, worst_name = 0.0, ""
    for k, ref in params.items():
        ref = ref.detach()
        diff = (got[k].to(torch.float64) - ref).abs().max().item() / ref.abs().max().item()
        if diff > worst_w:
            worst_w, worst_name = diff, k
    ok = len(got_losses) == steps and worst_loss <= 1e-4 and worst_w <= 1e-4
    results.append((name, ok, f"losses {['%.5f' % x for x in got_losses]} vs {['%.5f' % x for x in ref_losses]}: "
                              f"max rel {worst_loss:.2e}; A/B max rel {worst_w:.2e} ({worst_name})"))


def run_full_case(name, shape, tie, bias, steps, batch, seq, lr, wd, clip, seed, arch="llama"):
    """`train --full`: every weight trained from f32 master copies. The final
    model's updates W_final - W_init must match float64 torch AdamW on all
    weights (embeddings, norms, biases, projections, head)."""
    d = os.path.join(TMP, f"train-parity-{name}")
    os.makedirs(d, exist_ok=True)
    c, w = hf_model.make_random_model(os.path.join(d, "model"), shape, tie=tie, bias=bias, seed=seed, arch=arch)
    g = torch.Generator().manual_seed(seed + 1)
    V = c["vocab_size"]
    rows = []
    with open(os.path.join(d, "data.jsonl"), "w") as f:
        for i in range(steps * batch):
            n = 5 + int(torch.randint(0, seq - 4, (1,), generator=g))
            ids = torch.randint(0, V, (n,), generator=g).tolist()
            rows.append(ids)
            f.write(json.dumps({"input_ids": ids, "labels": ids}) + "\n")
    out = os.path.join(d, "out")
    args = [LORAC, "train", "--full", "-m", os.path.join(d, "model"), "--data", os.path.join(d, "data.jsonl"),
            "--format", "tokens", "-o", out, "--no-shuffle", "--steps", str(steps), "--batch", str(batch),
            "--seq", str(seq), "--lr", str(lr), "--weight-decay", str(wd), "--clip", str(clip),
            "--schedule", "constant", "--eps", "1e-3", "-t", "2"]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        results.append((name, False, "lorac train --full failed: " + p.stderr[-500:]))
        return
    got_losses = [json.loads(line)["loss"] for line in open(os.path.join(out, "metrics.jsonl"))]
    got = hf_model.load_safetensors(os.path.join(out, "model.safetensors"))

    params = {k: v.to(torch.float64).clone().requires_grad_(True) for k, v in w.items()}
    # eps 1e-3: with thousands of weights some gradients are near any small
    # eps, and there Adam's first update g / (|g| + eps) turns the last bits
    # of an f32 gradient into a visibly different step (seen: g = 4e-7 with
    # eps 1e-6). A larger eps keeps every element well-conditioned; the
    # optimizer code is the one the LoRA cases check at eps 1e-8.
    opt = torch.optim.AdamW(list(params.values()), lr=lr, betas=(0.9, 0.999), eps=1e-3, weight_decay=wd)
    ref_losses = []
    for s in range(steps):
        opt.zero_grad()
        total, count = 0.0, 0
        # Phi-3's longrope factors follow the batch's longest row, as transformers' padded batch
        longest = max(len(r) for r in rows[s * batch:(s + 1) * batch])
        for b in range(batch):
            ids = rows[s * batch + b]
            logits = hf_model.llama_forward(params, c, ids, rope_len=longest)
            for t in range(len(ids) - 1):
                total = total + torch.logsumexp(logits[t], 0) - logits[t, ids[t + 1]]
                count += 1
        loss = total / count
        loss.backward()
        ref_losses.append(loss.item())
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(list(params.values()), clip)
        opt.step()

    worst_loss = max(abs(a - b) / abs(b) for a, b in zip(got_losses, ref_losses))
    worst_w, worst_name = 0.0, ""
    for k, ref in params.items():
        if k not in got:
            results.append((name, False, f"{k} missing from the trained model"))
            return
        upd_ref = ref.detach() - w[k].to(torch.float64)
        upd_got = got[k].to(torch.float64) - w[k].to(torch.float64)
        diff = (upd_got - upd_ref).abs().max().item() / max(upd_ref.abs().max().item(), 1e-30)
        if diff > worst_w:
            worst_w, worst_name = diff, k
    # updates are differences of f32 weights, so 1e-7 of |W| is their floor
    ok = len(got_losses) == steps and worst_loss <= 1e-4 and worst_w <= 5e-4
    results.append((name, ok, f"losses {['%.5f' % x for x in got_losses]} vs {['%.5f' % x for x in ref_losses]}: "
                              f"max rel {worst_loss:.2e}; weight updates max rel {worst_w:.2e} ({worst_name})"))


def main():
    torch.set_num_threads(2)
    gqa = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               vocab_size=61)
    run_case("gqa-bias-all-linear", gqa, "llama", False, True, list(MODULES), 4, 8, False, 3, 2, 1, 12, 1e-2, 0.01, 1.0,
             "linear", 1, 1)
    run_case("tied-qv-rslora-accum", gqa, "llama", True, False, ["q_proj", "v_proj"], 4, 16, True, 3, 2, 2, 12, 5e-3, 0.0,
             0.5, "cosine", 0, 2)
    # a vocabulary of 2100: the classifier's loss runs in 3 blocks of columns (online softmax)
    wide = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                vocab_size=2100)
    run_case("vocab-blocks", wide, "llama", False, False, ["q_proj", "v_proj", "down_proj"], 4, 8, False, 3, 2, 1, 12,
             1e-2, 0.0, 1.0, "constant", 0, 6)
    qwen = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=1, num_attention_heads=3, num_key_value_heads=1,
                vocab_size=53)
    run_case("qwen2-mlp", qwen, "qwen2", False, False, ["gate_proj", "up_proj", "down_proj", "o_proj"], 2, 4, False, 3, 2,
             1, 10, 2e-2, 0.1, 0.0, "constant", 0, 3)
    # Qwen3: the per-head q/k norms between q_proj/k_proj and rotary; head_dim 12 != 32 / 4
    qwen3 = dict(gqa, head_dim=12)
    run_case("qwen3-qk-rslora", qwen3, "qwen3", True, False, ["q_proj", "k_proj", "v_proj", "o_proj"], 4, 8, True, 3, 2,
             1, 12, 1e-2, 0.01, 1.0, "linear", 1, 7)
    # SmolLM3: no rotary in layer 1 of 2 (no_rope_layer_interval 2), in the forward and the backward
    smollm3 = dict(gqa, no_rope_layer_interval=2)
    run_case("smollm3-nope", smollm3, "smollm3", True, False, ["q_proj", "k_proj", "down_proj"], 4, 8, False, 3, 2, 1, 12,
             1e-2, 0.0, 1.0, "constant", 0, 9)
    # Granite: the four multipliers in the forward and the backward
    granite = dict(gqa, attention_multiplier=0.3, embedding_multiplier=4.0, residual_multiplier=0.5, logits_scaling=2.5)
    run_case("granite-multipliers", granite, "granite", True, True, ["q_proj", "v_proj", "o_proj", "down_proj"], 4, 8,
             False, 3, 2, 1, 12, 1e-2, 0.0, 1.0, "constant", 0, 11)
    # sliding windows: Mistral's of 4 on every layer over rows of 5-12 tokens
    mistral_window = dict(gqa, sliding_window=4)
    run_case("mistral-window", mistral_window, "mistral", False, False, ["q_proj", "k_proj", "v_proj", "o_proj"], 4, 8,
             False, 3, 2, 1, 12, 1e-2, 0.0, 1.0, "constant", 0, 13)
    # Gemma 3: (1 + w) norms, sandwich norms, GeGLU, q/k norms, the scaled embedding, windows of 4 on layer 0
    # with their own rotary base, query_pre_attn_scalar 12 != head_dim 8
    gemma3 = dict(gqa, head_dim=8, sliding_window=4, sliding_window_pattern=2, query_pre_attn_scalar=12,
                  rope_local_base_freq=100.0)
    run_case("gemma3-all-linear", gemma3, "gemma3", True, False, list(MODULES), 4, 8, False, 3, 2, 1, 12, 1e-2, 0.01,
             1.0, "constant", 0, 15)
    # Gemma 2: soft-capped attention scores and logits (caps 1 and 2, which bend them), every other layer windowed
    gemma2 = dict(gqa, head_dim=8, sliding_window=4, query_pre_attn_scalar=12, attn_logit_softcapping=1.0,
                  final_logit_softcapping=2.0)
    run_case("gemma2-softcaps", gemma2, "gemma2", True, False, ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"], 4, 8,
             False, 3, 2, 1, 12, 1e-2, 0.0, 1.0, "constant", 0, 17)
    run_full_case("full-gqa-bias", gqa, False, True, 3, 2, 12, 1e-2, 0.01, 1.0, 4)
    run_full_case("full-qwen3-bias", qwen3, False, True, 2, 2, 10, 1e-2, 0.0, 1.0, 8, arch="qwen3")
    run_full_case("full-smollm3", smollm3, True, False, 2, 2, 10, 1e-2, 0.0, 1.0, 10, arch="smollm3")
    run_full_case("full-granite", granite, True, False, 2, 2, 10, 1e-2, 0.0, 1.0, 12, arch="granite")
    run_full_case("full-tied", gqa, True, False, 2, 2, 10, 5e-3, 0.0, 0.0, 5)
    # Phi-3: fused qkv_proj and gate_up_proj trained as one weight each, rotary on half of each head, longrope with
    # its long factors (rows of up to 12 tokens past original_max_position_embeddings 8) and attention factor, and a
    # window of 6 on every layer
    phi3 = dict(gqa, partial_rotary_factor=0.5, original_max_position_embeddings=8, max_position_embeddings=64,
                sliding_window=6, rope_scaling={"type": "longrope", "short_factor": [1.0, 1.5],
                                                "long_factor": [2.0, 5.0]})
    run_full_case("full-phi3-longrope", phi3, False, False, 2, 2, 12, 1e-2, 0.0, 1.0, 19, arch="phi3")
    # Phi-3 LoRA: PEFT's one A and B on each fused module (qkv_proj, gate_up_proj), gradient accumulation
    run_case("phi3-fused-modules", phi3, "phi3", False, False, ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], 4, 8,
             False, 3, 2, 2, 12, 1e-2, 0.01, 1.0, "linear", 1, 21)
    # Qwen2 with use_sliding_window: a window of 3 on layer 1 only (max_window_layers 1)
    qwen_window = dict(qwen, num_hidden_layers=2, use_sliding_window=True, sliding_window=3, max_window_layers=1)
    run_full_case("full-gemma3", gemma3, True, False, 2, 2, 10, 1e-2, 0.0, 1.0, 16, arch="gemma3")
    run_full_case("full-gemma2", gemma2, True, False, 2, 2, 10, 1e-2, 0.0, 1.0, 18, arch="gemma2")
    run_full_case("full-qwen2-window", qwen_window, False, False, 2, 2, 10, 1e-2, 0.0, 1.0, 14, arch="qwen2")
    passed = sum(1 for _, ok, _ in results if ok)
    for name, ok, msg in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {msg}")
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if passed == len(results) else 1)


if __name__ == "__main__":
    main()
