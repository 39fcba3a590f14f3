"""Plumbing shared by the Python tests that drive the lorac program
(tests/test_extract.py, tests/test_combine.py, tests/test_qlora.py,
tests/test_bnb.py): where the binary, the fixtures and the scratch
directory are, running a command, PASS/FAIL lines and the exit status,
random PEFT adapters written from a config, and `lorac logits` read back.
"""

import os
import shutil
import subprocess
import sys

import peft_ref as pr

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.environ.get("LORAC_SRC", os.path.dirname(TESTS))
LORAC = os.environ.get("LORAC_BIN") or os.path.join(SRC, "build", "lorac")
FIXTURES = os.environ.get("LORAC_FIXTURES") or os.path.join(os.path.dirname(SRC), "shared", "fixtures")
# a tiny Llama with grouped-query attention and no square MLP matrices
TINY_SHAPE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=89)


def scratch(name):
    """$LORAC_TEST_TMP/name (build/test-tmp/name by default), created."""
    root = os.environ.get("LORAC_TEST_TMP") or os.path.join(SRC, "build", "test-tmp")
    path = os.path.join(root, name)
    os.makedirs(path, exist_ok=True)
    return path


def run(args, timeout=600):
    """(exit status, stdout, stderr) of `lorac ARGS`."""
    p = subprocess.run([LORAC] + list(args), capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


class Results:
    """Prints a PASS/FAIL line per check; finish() prints the count and exits 1 on any failure."""

    def __init__(self, name):
        self.name, self.items = name, []

    def record(self, name, ok, msg):
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {msg}", flush=True)
        self.items.append((name, ok))

    def finish(self):
        failed = [n for n, ok in self.items if not ok]
        print(f"{self.name}: {len(self.items) - len(failed)} passed, {len(failed)} failed")
        sys.exit(1 if failed else 0)


def logits(model, ids, *extra, env=None, scratch_name="logits"):
    """(float64 tensor [T, vocab], stderr) of `lorac logits -m MODEL --ids IDS
    EXTRA...`; (None, stderr) when it fails."""
    import numpy as np
    import torch
    out = os.path.join(scratch(scratch_name), "logits.npy")
    p = subprocess.run([LORAC, "logits", "-m", model, "--ids", " ".join(map(str, ids)), "-o", out] + list(extra),
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return None, p.stderr
    return torch.from_numpy(np.load(out)).to(torch.float64), p.stderr


def rel(a, b):
    """max |a - b| / max |b|"""
    return (a - b).abs().max().item() / b.abs().max().item()


def check_quantized_logits(results, name, model, ids, ref_q, ref_plain, extra=(), env=None, want_stderr=None,
                           scratch_name="logits", tol=1e-5):
    """Records whether `lorac logits` of a quantized base (model and flags
    extra) is within tol of ref_q, the reference on the quantized weights,
    while ref_plain (the unquantized model) is more than 10 tol away from
    it, and stderr holds want_stderr."""
    got, err = logits(model, ids, *extra, env=env, scratch_name=scratch_name)
    if got is None:
        results.record(name, False, "lorac logits failed: " + err[-300:])
        return
    e, moved = rel(got, ref_q), rel(ref_plain, ref_q)
    ok = e <= tol and moved > 10 * tol and (want_stderr is None or want_stderr in err)
    results.record(name, ok, f"max rel err {e:.2e} against the quantized reference (tol {tol}); the unquantized model "
                             f"is {moved:.2e} away" +
                   (f"; stderr {'names' if want_stderr in err else 'lacks'} '{want_stderr}'" if want_stderr else ""))


def write_random_adapter(dir, c, cfg, seed):
    """A PEFT adapter directory for config dict c with random A and B, for the adapter config cfg."""
    shutil.rmtree(dir, ignore_errors=True)
    settings = pr.module_settings(cfg, c)
    ab = pr.random_lora(c, {n: s[0] for n, s in settings.items()}, seed=seed)
    pr.write_adapter(dir, cfg, pr.lora_tensors(ab))
