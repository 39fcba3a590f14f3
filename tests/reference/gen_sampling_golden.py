"""Generates tests/data/sampling/golden.json, the distributions that
tests/test_sampler.c compares lorac_sampler_distribution with.

Each case is a row of logits, the prompt's and the output's token ids so
far, and sampling parameters; the expected answer is the distribution a
draw is made from, computed here with torch as vLLM's sampler computes it
(vllm/v1/sample: apply_penalties, then temperature, min-p, top-k and top-p):

  logit_bias          added to the logits first (vLLM applies it with the
                      logits processors, before the penalties)
  repetition_penalty  tokens in the prompt or the output: logit / r when
                      the logit is > 0, else logit * r (HF's
                      RepetitionPenaltyLogitsProcessor, vLLM's
                      apply_repetition_penalties)
  frequency_penalty   logit -= f * (times the token is in the output)
  presence_penalty    logit -= p * (the token is in the output)
  temperature         logits / t; 0 = greedy: the argmax, probability 1
  min_p               probs below min_p * max(probs) removed
  top_k               the k largest logits kept
  top_p               sorted ascending, tokens whose cumulative probability
                      is <= 1 - top_p removed (the largest always kept)

Cases are drawn at random (fixed seeds) and redrawn when a token sits
within 1e-4 of a cut (min-p's threshold relative to it, the k-th logit;
1e-5 of top-p's mass, where small tokens step by about that),
where float rounding could decide either way, or when the two largest
penalised logits nearly tie (the greedy answer). The C test compares the
kept ids as a set and each one's probability, so the order among close
probabilities does not matter.
Logits are float32 values written as exact doubles.

Run once with Debian's python3 (which has python3-torch) and commit the output:
    /usr/bin/python3 tests/reference/gen_sampling_golden.py > tests/data/sampling/golden.json
"""
import json
import sys

import torch


def reference(logits, prompt, output, p):
    x = torch.tensor(logits, dtype=torch.float32)
    V = x.numel()
    for tok, b in p["logit_bias"]:
        x[tok] += b
    prompt_mask = torch.zeros(V, dtype=torch.bool)
    if prompt:
        prompt_mask[torch.tensor(prompt)] = True
    counts = torch.bincount(torch.tensor(output, dtype=torch.long), minlength=V) if output else torch.zeros(V, dtype=torch.long)
    output_mask = counts > 0
    r = torch.full((V,), p["repetition_penalty"], dtype=torch.float32)
    r = torch.where(prompt_mask | output_mask, r, torch.ones_like(r))
    x = torch.where(x > 0, x / r, x * r)
    x = x - p["frequency_penalty"] * counts.to(torch.float32)
    x = x - p["presence_penalty"] * output_mask.to(torch.float32)
    penalised = x.clone()
    if p["temperature"] == 0.0 or p["top_k"] == 1:
        return [int(torch.argmax(x))], [1.0], penalised, None
    x = x / p["temperature"]
    margins = []
    if p["min_p"] > 0:
        probs = torch.softmax(x.double(), -1)
        thr = probs.max() * p["min_p"]
        margins.append(((probs - thr).abs() / thr).min().item())
        x = x.masked_fill(probs < thr, float("-inf"))
    if p["top_k"] > 0 and p["top_k"] < V:
        s = torch.sort(x, descending=True).values
        kth = s[p["top_k"] - 1]
        if torch.isfinite(s[p["top_k"]]) and torch.isfinite(kth):
            margins.append((kth - s[p["top_k"]]).abs().item())
        x = x.masked_fill(x < kth, float("-inf"))
    if p["top_p"] < 1:
        s, idx = torch.sort(x.double(), descending=False)
        ps = torch.softmax(s, -1)
        cum = torch.cumsum(ps, -1)
        fin = torch.isfinite(s)
        margins.append((cum[fin] - (1 - p["top_p"])).abs().min().item() * 10)  # masses: 1e-5 is margin enough
        drop = cum <= 1 - p["top_p"]
        drop[-1] = False
        x[idx[drop]] = float("-inf")
    probs = torch.softmax(x.double(), -1)
    keep = [i for i in range(V) if probs[i] > 0]
    keep.sort(key=lambda i: (-probs[i].item(), i))
    return keep, [probs[i].item() for i in keep], penalised, margins


def f32(v):
    return [float(torch.tensor(a, dtype=torch.float32)) for a in v]


CASES = [
    # name, vocab, prompt length, output length, params
    ("repetition_greedy", 64, 12, 6, dict(temperature=0.0, repetition_penalty=1.3)),
    ("repetition_below_one", 64, 12, 6, dict(temperature=1.0, repetition_penalty=0.7)),
    ("repetition_full", 200, 30, 20, dict(temperature=0.9, repetition_penalty=1.2)),
    ("frequency_presence", 200, 10, 40, dict(temperature=1.0, frequency_penalty=0.4, presence_penalty=0.6)),
    ("negative_penalties", 100, 5, 30, dict(temperature=0.7, frequency_penalty=-0.3, presence_penalty=-1.0)),
    ("all_penalties_greedy", 300, 40, 40,
     dict(temperature=0.0, repetition_penalty=1.5, frequency_penalty=1.0, presence_penalty=0.5)),
    ("min_p", 500, 0, 0, dict(temperature=1.0, min_p=0.05)),
    ("min_p_hot", 500, 0, 0, dict(temperature=1.8, min_p=0.2)),
    ("min_p_top_k", 500, 0, 0, dict(temperature=1.0, min_p=0.02, top_k=20)),
    ("min_p_top_p", 500, 0, 0, dict(temperature=1.0, min_p=0.02, top_p=0.8)),
    ("top_k", 400, 0, 0, dict(temperature=1.0, top_k=25)),
    ("top_p", 400, 0, 0, dict(temperature=1.2, top_p=0.9)),
    ("top_k_top_p", 400, 0, 0, dict(temperature=0.8, top_k=40, top_p=0.95)),
    ("everything", 1000, 50, 30,
     dict(temperature=0.9, top_k=50, top_p=0.9, min_p=0.01, repetition_penalty=1.1, frequency_penalty=0.2,
          presence_penalty=0.3)),
    ("logit_bias_greedy", 64, 8, 8, dict(temperature=0.0, repetition_penalty=1.2, logit_bias=[[5, 9.5], [6, -3.0]])),
    ("logit_bias_sampled", 300, 8, 8,
     dict(temperature=0.8, top_k=30, presence_penalty=0.5, logit_bias=[[7, 4.0], [8, -100.0], [7, 1.5], [299, 2.0]])),
    ("penalties_top_p", 8192, 60, 60,
     dict(temperature=1.0, top_p=0.95, repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.5)),
]

DEFAULTS = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0,
                frequency_penalty=0.0, logit_bias=[])


def make_case(name, V, n_prompt, n_output, params, seed):
    p = dict(DEFAULTS, **params)
    for attempt in range(1000):
        g = torch.Generator().manual_seed(seed * 1000 + attempt)
        logits = f32((torch.randn(V, generator=g) * 3).tolist())
        # repeated ids on purpose: a token used several times in the output
        prompt = torch.randint(0, V, (n_prompt,), generator=g).tolist()
        output = torch.randint(0, max(V // 8, 1), (n_output,), generator=g).tolist()
        ids, probs, penalised, margins = reference(logits, prompt, output, p)
        s = torch.sort(penalised, descending=True).values
        if (s[0] - s[1]).item() < 1e-4:
            continue  # a near-tie for the argmax
        if len(ids) == 1 and ids[0] == int(torch.argmax(torch.tensor(logits))):
            continue  # greedy: only a case the penalties change tests them
        if margins is not None and margins and min(margins) < 1e-4:
            continue
        return {"name": name, "vocab": V, "logits": logits, "prompt": prompt, "output": output, "params": p,
                "ids": ids, "probs": probs}
    raise SystemExit(f"{name}: no case without a near cut in 1000 draws")


def main():
    cases = [make_case(name, V, np_, no, params, seed) for seed, (name, V, np_, no, params) in enumerate(CASES)]
    json.dump({"generator": "tests/reference/gen_sampling_golden.py", "torch": torch.__version__, "cases": cases},
              sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
