"""Generates tests/data/optim/adamw_golden.json, the reference numbers that
tests/test_optim.c compares lorac's optimizer with:

  adamw      torch.optim.AdamW (foreach=False, amsgrad=False) over several
             steps with per-step learning rates: params and both moments
             after every step, all float32 (stored as the exact double value
             of each float32, so the C side reads them back bit for bit)
  clip       torch.nn.utils.clip_grad_norm_: total norm and the clipped grads
  schedules  HuggingFace transformers' get_{constant,linear,cosine}_schedule_
             with_warmup lr_lambda formulas (copied below: transformers is not
             a dependency), lr = base_lr * lambda(step) as LambdaLR computes it

Run once with Debian's python3 (which has python3-torch) and commit the output:
    /usr/bin/python3 tests/reference/gen_adamw_golden.py > tests/data/optim/adamw_golden.json
"""
import json
import math
import sys

import torch


def f32_list(t):
    # float(np.float32) is exact in a double; repr round-trips the double
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def adamw_case(name, sizes, steps, lrs, betas, eps, wd, seed, grad_scale_range):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(n, generator=g, dtype=torch.float32)) for n in sizes]
    init = [f32_list(p) for p in params]
    opt = torch.optim.AdamW(params, lr=lrs[0], betas=betas, eps=eps, weight_decay=wd, amsgrad=False, foreach=False)
    out_steps = []
    for s in range(steps):
        grads = []
        for i, p in enumerate(params):
            gr = torch.randn(sizes[i], generator=g, dtype=torch.float32)
            mag = torch.empty(sizes[i], dtype=torch.float32).uniform_(*grad_scale_range, generator=g)
            gr = (gr * torch.pow(10.0, mag)).to(torch.float32)
            if i == 0 and s == 1:
                gr[0] = 0.0  # a zero gradient: v stays small, denom near eps
            p.grad = gr
            grads.append(f32_list(gr))
        for grp in opt.param_groups:
            grp["lr"] = lrs[s]
        opt.step()
        st = [opt.state[p] for p in params]
        out_steps.append({
            "lr": lrs[s],
            "grads": grads,
            "params": [f32_list(p) for p in params],
            "exp_avg": [f32_list(x["exp_avg"]) for x in st],
            "exp_avg_sq": [f32_list(x["exp_avg_sq"]) for x in st],
        })
    return {"name": name, "beta1": betas[0], "beta2": betas[1], "eps": eps, "weight_decay": wd,
            "sizes": sizes, "init": init, "steps": out_steps}


def clip_case(name, sizes, max_norm, seed, scale):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(n)) for n in sizes]
    grads = []
    for p, n in zip(params, sizes):
        p.grad = torch.randn(n, generator=g, dtype=torch.float32) * scale
        grads.append(f32_list(p.grad))
    total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return {"name": name, "max_norm": max_norm, "grads": grads, "total_norm": float(total),
            "clipped": [f32_list(p.grad) for p in params]}


# transformers/optimization.py, num_cycles = 0.5
def hf_lambda(kind, warmup, total):
    def constant(s):
        if s < warmup:
            return float(s) / float(max(1.0, warmup))
        return 1.0

    def linear(s):
        if s < warmup:
            return float(s) / float(max(1, warmup))
        return max(0.0, float(total - s) / float(max(1, total - warmup)))

    def cosine(s, num_cycles=0.5):
        if s < warmup:
            return float(s) / float(max(1, warmup))
        progress = float(s - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))

    return {"constant": constant, "linear": linear, "cosine": cosine}[kind]


def main():
    adamw = [
        adamw_case("defaults_wd", [5, 8, 3], 5, [1e-3, 2e-3, 3e-3, 2.5e-3, 1e-4], (0.9, 0.999), 1e-8, 0.01, 1, (-2.0, 0.5)),
        adamw_case("low_betas_big_lr", [7, 4], 4, [0.05, 0.05, 0.02, 0.01], (0.8, 0.95), 1e-6, 0.1, 2, (-4.0, 1.0)),
        adamw_case("no_decay_tiny_grads", [6], 6, [1e-2] * 6, (0.9, 0.999), 1e-8, 0.0, 3, (-9.0, -6.0)),
        # 37 and 100 values: torch's vectorised kernel paths (16 floats at a time) and their tails
        adamw_case("vector_paths", [37, 100], 3, [2e-3, 1e-3, 5e-4], (0.9, 0.99), 1e-8, 0.05, 7, (-3.0, 0.0)),
    ]
    clip = [
        clip_case("clipped", [10, 6], 1.0, 4, 1.0),
        clip_case("not_clipped", [4, 4], 100.0, 5, 1.0),
        clip_case("large", [1000], 0.5, 6, 1000.0),
    ]
    schedules = []
    base_lr = 3e-4
    for kind in ["constant", "linear", "cosine"]:
        for warmup, total in [(0, 10), (3, 10), (1, 1), (5, 5), (4, 103)]:
            lam = hf_lambda(kind, warmup, total)
            steps = sorted(set(list(range(0, min(total, 12) + 2)) + [total // 2, total - 1, total, total + 3]))
            schedules.append({"kind": kind, "base_lr": base_lr, "warmup": warmup, "total": total,
                              "steps": steps, "lr": [base_lr * lam(s) for s in steps]})
    json.dump({"generator": "tests/reference/gen_adamw_golden.py", "torch": torch.__version__,
               "adamw": adamw, "clip": clip, "schedules": schedules}, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
