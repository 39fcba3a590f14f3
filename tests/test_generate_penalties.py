"""`lorac generate`'s sampling options: the repetition, frequency and
presence penalties, greedy, against a reference decoding loop in torch;
--stop strings against plain greedy output cut at the earliest match;
greedy decoding from a BF16 and an F16 KV cache (--kv-cache-dtype) against
the same loop with its keys and values rounded as such a cache stores them.

The real stories260K model (converted from the fixtures with `lorac
convert`) decodes a prompt greedily under each set of penalties; the
reference runs the same model through tests/reference/hf_model.py's float64
forward pass, applies the penalties as HF's RepetitionPenaltyLogitsProcessor
and vLLM's apply_penalties do (repetition over the prompt and the output,
frequency and presence over the output; in that order), takes the argmax,
and decodes the ids with `lorac tokenize --decode`. The texts must be equal,
and differ from plain greedy decoding (so each penalty changed something).
The sampled path (temperature, min-p) is checked distribution by
distribution in tests/test_sampler.c; here it must run and be reproducible.

Run alone: LORAC_BIN=build/lorac LORAC_FIXTURES=../shared/fixtures /usr/bin/python3 tests/test_generate_penalties.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
import cli_harness as ch  # noqa: E402
import hf_model as hm  # noqa: E402

N = 48
PROMPT = "Once upon a time, there was a little"


def penalised_argmax(logits, prompt_ids, output_ids, rep, freq, pres):
    x = logits.clone()
    seen = set(prompt_ids) | set(output_ids)
    for t in seen:
        if rep != 1.0:
            x[t] = x[t] / rep if x[t] > 0 else x[t] * rep
    for t in set(output_ids):
        x[t] -= freq * output_ids.count(t)
        x[t] -= pres
    return int(torch.argmax(x))


def reference_text(model_dir, c, w, prompt_ids, rep, freq, pres, kv_dtype=None):
    ids, out = list(prompt_ids), []
    for _ in range(N):
        logits = hm.llama_forward(w, c, torch.tensor(ids), kv_dtype=kv_dtype)[-1]
        t = penalised_argmax(logits, prompt_ids, out, rep, freq, pres)
        out.append(t)
        ids.append(t)
    st, text, err = ch.run(["tokenize", "-m", model_dir, "--decode", " ".join(map(str, out))])
    assert st == 0, err
    return text.rstrip("\n"), out


def main():
    r = ch.Results("test_generate_penalties")
    tmp = ch.scratch(f"penalties.{os.getpid()}")
    model = os.path.join(tmp, "model")
    fx = os.path.join(ch.FIXTURES, "llama2c")
    st, _, err = ch.run(["convert", "--from", "llama2c", os.path.join(fx, "stories260K.bin"), "--tokenizer",
                         os.path.join(fx, "tok512.bin"), "-o", model])
    if st != 0:
        r.record("convert", False, err)
        r.finish()
    c, w = hm.load_model(model)
    st, out, err = ch.run(["tokenize", "-m", model, "-p", PROMPT])
    prompt_ids = [int(t) for t in out.split()]

    def lorac(*flags):
        st, out, err = ch.run(["generate", "-m", model, "-p", PROMPT, "--temp", "0", "-n", str(N), "--ignore-eos",
                               "-t", "2", *flags])
        assert st == 0, err
        assert out.startswith(PROMPT), out
        return out[len(PROMPT):].rstrip("\n")

    plain = lorac()
    cases = [("repetition 1.3", ["--repeat-penalty", "1.3"], 1.3, 0.0, 0.0),
             ("repetition 0.8 (favours repeats)", ["--repeat-penalty", "0.8"], 0.8, 0.0, 0.0),
             ("frequency 0.5", ["--frequency-penalty", "0.5"], 1.0, 0.5, 0.0),
             ("presence 1.0", ["--presence-penalty", "1.0"], 1.0, 0.0, 1.0),
             ("all three", ["--repetition-penalty", "1.2", "--frequency-penalty", "0.3", "--presence-penalty", "0.4"],
              1.2, 0.3, 0.4)]
    for name, flags, rep, freq, pres in cases:
        want, ids = reference_text(model, c, w, prompt_ids, rep, freq, pres)
        # a SentencePiece decode of the ids alone drops the first token's space; the prompt's text keeps it
        got = lorac(*flags)
        ok = got.lstrip(" ") == want.lstrip(" ") and got != plain
        r.record(name, ok, f"lorac {got!r}\n    torch {want!r}" + ("" if got != plain else " (same as no penalty)"))

    # a BF16 or F16 KV cache: the keys and values of each position, rounded once as they are stored, are what
    # every later token reads; the reference recomputes them each step and rounds them the same way
    for kv_name, kv_t in (("bf16", torch.bfloat16), ("f16", torch.float16)):
        want, _ = reference_text(model, c, w, prompt_ids, 1.0, 0.0, 0.0, kv_dtype=kv_t)
        got = lorac("--kv-cache-dtype", kv_name)
        r.record(f"greedy from a {kv_name} KV cache", got.lstrip(" ") == want.lstrip(" "),
                 f"lorac {got!r}\n    torch {want!r}")
    st, _, err = ch.run(["generate", "-m", model, "-p", "x", "--kv-cache-dtype", "q8_0"])
    r.record("refused --kv-cache-dtype q8_0", st == 2 and "--kv-cache-dtype expects f32, bf16 or f16" in err,
             f"exit {st}: {err.strip()}")

    # sampling with the penalties and min-p: runs, reproducible by seed, differs by seed
    def sampled(seed):
        st, out, err = ch.run(["generate", "-m", model, "-p", PROMPT, "-n", "32", "--temp", "1.0", "--min-p", "0.05",
                               "--top-k", "0", "--top-p", "1", "--repeat-penalty", "1.1", "--presence-penalty",
                               "0.5", "--seed", str(seed), "--ignore-eos"])
        assert st == 0, err
        return out
    a, b, d = sampled(1), sampled(1), sampled(2)
    r.record("sampled with min-p and penalties", a == b and a != d, f"seed 1 twice equal: {a == b}, seed 2 differs: {a != d}")

    # --stop: the output ends before the earliest match (within or across tokens), stderr says why
    def stopped(*stops):
        args = ["generate", "-m", model, "-p", PROMPT, "--temp", "0", "-n", str(N), "--ignore-eos", "-t", "2"]
        for x in stops:
            args += ["--stop", x]
        st, out, err = ch.run(args)
        assert st == 0, err
        return out[len(PROMPT):].rstrip("\n"), err
    for stops in (["Lily"], ["zzz", "ed to p"], [plain[5:9], plain[2:4]], ["no such text"]):
        got, err = stopped(*stops)
        cut = min([plain.find(x) for x in stops if x in plain], default=-1)
        want = plain[:cut] if cut >= 0 else plain
        r.record(f"--stop {stops}", got == want and ("stop: stop string" in err) == (cut >= 0),
                 f"{got!r} vs {want!r}")

    # out-of-range flags are usage errors naming the flag
    for flags in (["--min-p", "1.5"], ["--repeat-penalty", "0"], ["--presence-penalty", "3"],
                  ["--frequency-penalty", "-2.5"], ["--min-p", "x"], ["--stop", ""], ["--logit-bias", "5x"]):
        st, _, err = ch.run(["generate", "-m", model, "-p", "x", *flags])
        r.record(f"refused {' '.join(flags)}", st == 2 and flags[0] in err, f"exit {st}: {err.strip()}")
    r.finish()


if __name__ == "__main__":
    main()
