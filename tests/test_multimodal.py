"""Gemma 3's multimodal checkpoints (Gemma3ForConditionalGeneration, the 4B-27B
models): lorac runs their text model, reads and writes their adapters and
leaves their vision tower alone.

Random tiny models are written by tests/reference/hf_model.py
(make_multimodal_gemma3) under $LORAC_TEST_TMP/multimodal/: the text
model's fields in "text_config", leaving out every one equal to
Gemma3TextConfig's default (as the released configs do), eos ids at the
top level, the text tensors under the released files' names
(language_model.model.*, language_model.lm_head.weight) or transformers
>= 4.52's (model.language_model.*, lm_head.weight), and a few vision-tower
and projector tensors. Then:

  * logits parity with the reference's reading of the checkpoint (text
    config over the defaults, tensors renamed), both layouts, F32 (1e-5)
    and BF16 (1e-2); `inspect` reports the text model;
  * PEFT adapters under both namings of the text model's modules
    (base_model.model.model.language_model.layers.N... and, from
    transformers < 4.52, base_model.model.language_model.model.layers.N...),
    one selecting by a list (so that PEFT also put zero-B LoRAs on the vision
    tower's q_proj/v_proj, which lorac must skip), one by a regex: logits with
    the adapters unmerged and a merge against the reference (peft_ref.py),
    every tensor the merge does not adapt (the vision tower) copied bit for
    bit; a vision LoRA whose B is not zero, and adapters of a text model on a
    multimodal one (and back), are refused;
  * `lorac train` on the multimodal model: the adapter's keys and its
    target_modules (a regex that keeps PEFT off the vision tower) select
    exactly its modules in the reference's PEFT selection, and it equals,
    bit for bit, the adapter trained on the same text model saved as a
    Gemma3ForCausalLM (whose training tests/test_train_parity.py checks
    against PyTorch); `--full` writes every tensor of the checkpoint, the
    vision tower's unchanged.

Run alone: LORAC_BIN=build/lorac /usr/bin/python3 tests/test_multimodal.py
"""

import json
import os
import random
import shutil
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))
import cli_harness as ch  # noqa: E402
import hf_model as hm  # noqa: E402
import peft_ref as pr  # noqa: E402

TMP = ch.scratch("multimodal")

# 8 heads and 4 kv heads are Gemma3TextConfig's defaults: the configs leave them out
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, vocab_size=97, head_dim=16, sliding_window=4, sliding_window_pattern=2,
             query_pre_attn_scalar=24, rope_local_base_freq=100.0)
EOS = (1, 5)

results = ch.Results("test_multimodal")
record = results.record
lorac = ch.run


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def logits(model, ids, out, adapters=()):
    args = ["logits", "-m", model, "--ids", " ".join(map(str, ids)), "-o", out]
    for a in adapters:
        args += ["--adapter", a]
    rc, _, err = lorac(args)
    return (np.load(out).astype(np.float64), "") if rc == 0 else (None, f"exit {rc}: {err.strip()[-800:]}")


def parity_cases(ids):
    models = {}
    for name, layout, dtype, tie, tol in [("released-f32", "released", "F32", False, 1e-5),
                                          ("modules-bf16", "modules", "BF16", True, 1e-2)]:
        d = os.path.join(TMP, name)
        shutil.rmtree(d, ignore_errors=True)
        c, w, raw = hm.make_multimodal_gemma3(d, SHAPE, dtype=dtype, tie=tie, layout=layout, eos=EOS, seed=3)
        models[name] = (d, c, w, raw)
        with open(os.path.join(d, "config.json")) as f:
            tc = json.load(f)["text_config"]
        if "num_attention_heads" in tc or "num_key_value_heads" in tc:
            record("parity-" + name, False, "the config gives the head counts: the defaults go untested")
            continue
        got, err = logits(d, ids, os.path.join(d, "logits.npy"))
        if got is None:
            record("parity-" + name, False, err)
            continue
        ref = hm.llama_forward(w, c, ids).numpy()
        r = rel(got, ref)
        record("parity-" + name, r <= tol, f"rel {r:.2e} (tol {tol:.0e})")
        rc, out, err = lorac(["inspect", d, "--json"])
        j = json.loads(out) if rc == 0 else {}
        tm = j.get("text_model", {})
        prefix = hm.MULTIMODAL_LAYOUTS[layout][0][:-1]
        n_text = len(w)
        ok = (rc == 0 and j.get("architecture") == "Gemma3ForConditionalGeneration" and
              j.get("num_attention_heads") == 8 and j.get("num_key_value_heads") == 4 and
              tm.get("tensor_prefix") == prefix and tm.get("n_tensors") == n_text and
              j.get("n_other_tensors") == len(raw) - n_text)
        record("inspect-" + name, ok, f"{tm}, {j.get('n_other_tensors')} other tensors" if rc == 0 else err[-500:])
    return models


def write_adapter(dir, c, cfg, prefix, seed, vision=None):
    """A PEFT adapter of the text model with its modules under `prefix`;
    vision: (B scale) to add LoRAs on the vision tower's q_proj and v_proj
    as PEFT does for a list target_modules (B zero as a text-only run leaves
    it, unless the scale is not 0)."""
    shutil.rmtree(dir, ignore_errors=True)
    settings = pr.module_settings(cfg, c, prefix=prefix)  # PEFT's selection over the module names
    ab = pr.random_lora(c, {"model" + n[len(prefix):]: s[0] for n, s in settings.items()}, seed=seed)
    tensors = {}
    for name, (A, B) in ab.items():
        key = "base_model.model." + prefix + name[len("model"):]
        tensors[key + ".lora_A.weight"], tensors[key + ".lora_B.weight"] = A, B
    if vision is not None:
        g = torch.Generator().manual_seed(seed + 1)
        for proj in ("q_proj", "v_proj"):
            key = f"base_model.model.model.vision_tower.vision_model.encoder.layers.0.self_attn.{proj}"
            r = cfg["r"]
            tensors[key + ".lora_A.weight"] = torch.randn(r, 16, generator=g)
            tensors[key + ".lora_B.weight"] = vision * torch.randn(16, r, generator=g)
    pr.write_adapter(dir, cfg, tensors)
    # the vision tower's tensors first in the file: skipping them must not skip what follows
    first = sorted(k for k in tensors if "vision_tower" in k)
    hm.save_safetensors(os.path.join(dir, "adapter_model.safetensors"), tensors, metadata={"format": "pt"},
                        order=first + sorted(k for k in tensors if k not in first))


def adapter_cases(models, ids):
    d, c, w, raw = models["released-f32"]
    # a list (PEFT also adapted the vision tower, leaving its B zero), modules named as transformers >= 4.52 does
    cfg_a = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"]}
    # a regex, modules named as transformers < 4.52 did
    cfg_b = {"r": 6, "lora_alpha": 12, "target_modules": r".*language_model.*\.layers\.[02]\.(self_attn|mlp)\.(q_proj|up_proj)"}
    a, b = os.path.join(TMP, "adapter-a"), os.path.join(TMP, "adapter-b")
    write_adapter(a, c, cfg_a, "model.language_model", 21, vision=0.0)
    write_adapter(b, c, cfg_b, "language_model.model", 22)
    specs = [(a, 0.7), (b, 0.3)]
    ref_w = pr.apply_adapters(w, c, specs)
    n_b = len(pr.load_adapter(b, c))
    if n_b != 4:
        record("adapters-setup", False, f"the regex selects {n_b} modules, expected 4")
    ref = hm.llama_forward(ref_w, c, ids).numpy()
    got, err = logits(d, ids, os.path.join(TMP, "unmerged.npy"), [f"{a}:0.7", f"{b}:0.3"])
    record("adapters-unmerged", got is not None and rel(got, ref) <= 1e-5,
           err or f"rel {rel(got, ref):.2e} against the float64 reference (tol 1e-05)")

    out = os.path.join(TMP, "merged")
    shutil.rmtree(out, ignore_errors=True)
    rc, _, err = lorac(["merge", "-m", d, "--adapter", f"{a}:0.7", "--adapter", f"{b}:0.3", "-o", out])
    if rc != 0:
        record("merge", False, f"exit {rc}: {err.strip()[-800:]}")
        return
    merged = hm.load_safetensors(os.path.join(out, "model.safetensors"))
    _, text_merged = hm.text_model(json.load(open(os.path.join(d, "config.json"))), merged)
    bad, worst, n_adapted = [], 0.0, 0
    if set(merged) != set(raw):
        bad.append(f"tensor names differ: {sorted(set(merged) ^ set(raw))[:4]}")
    for k, t in raw.items():
        if not k.startswith("language_model."):
            if not torch.equal(merged.get(k, torch.empty(0)), t):
                bad.append(f"{k} not copied bit for bit")
    for k, t in w.items():
        r = ref_w[k]
        if torch.equal(r, t.to(torch.float64)):
            if not torch.equal(text_merged[k], t):
                bad.append(f"{k} is not adapted but changed")
        else:
            n_adapted += 1
            worst = max(worst, ((text_merged[k].double() - r).abs().max() / r.abs().max()).item())
    record("merge-weights", not bad and worst <= 1e-6 and n_adapted == 4 * 4 + 2,  # b adds up_proj on layers 0, 2
           "; ".join(bad[:3]) or f"{n_adapted} adapted tensors, largest rel diff {worst:.2e} (tol 1e-06); "
           f"{len(raw) - len(w)} vision/projector tensors copied bit for bit")
    m, err = logits(out, ids, os.path.join(TMP, "merged.npy"))
    record("merge-logits", m is not None and rel(m, ref) <= 1e-5 and rel(m, got) <= 1e-5,
           err or f"merged vs reference rel {rel(m, ref):.2e}, vs unmerged {rel(m, got):.2e} (tol 1e-05)")

    # refusals
    v = os.path.join(TMP, "adapter-vision-trained")
    write_adapter(v, c, cfg_a, "model.language_model", 23, vision=0.5)
    rc, _, err = lorac(["logits", "-m", d, "--ids", "3 4", "-o", os.path.join(TMP, "x.npy"), "--adapter", v])
    record("refuse-vision-lora", rc == 1 and "outside the language model" in err and "vision_tower" in err,
           f"exit {rc}: {err.strip()[-300:]}")
    t = os.path.join(TMP, "adapter-text-names")
    write_adapter(t, c, cfg_a, "model", 24)
    rc, _, err = lorac(["logits", "-m", d, "--ids", "3 4", "-o", os.path.join(TMP, "x.npy"), "--adapter", t])
    record("refuse-text-adapter-on-multimodal", rc == 1 and "text model" in err and "Gemma3ForConditionalGeneration" in err,
           f"exit {rc}: {err.strip()[-300:]}")
    text_dir = write_text_twin(c, w)
    rc, _, err = lorac(["logits", "-m", text_dir, "--ids", "3 4", "-o", os.path.join(TMP, "x.npy"), "--adapter", a])
    record("refuse-multimodal-adapter-on-text", rc == 1 and "multimodal" in err, f"exit {rc}: {err.strip()[-300:]}")


def write_text_twin(c, w):
    """The multimodal model's text model as a Gemma3ForCausalLM directory."""
    d = os.path.join(TMP, "text-twin")
    if not os.path.isdir(d):
        hm.write_model_dir(d, c, w)
    return d


def training_cases(models):
    d, c, w, raw = models["released-f32"]
    twin = write_text_twin(c, w)
    data = os.path.join(TMP, "tokens.jsonl")
    rng = random.Random(5)
    with open(data, "w") as f:
        for _ in range(16):
            f.write(json.dumps({"input_ids": [rng.randrange(6, 97) for _ in range(12)]}) + "\n")
    common = ["--data", data, "--format", "tokens", "--steps", "3", "--seq", "12", "--batch", "2", "--seed", "1",
              "--lr", "1e-2"]
    outs = {}
    for name, model in (("multimodal", d), ("text", twin)):
        out = os.path.join(TMP, "train-" + name)
        shutil.rmtree(out, ignore_errors=True)
        rc, _, err = lorac(["train", "-m", model, "-o", out, "--targets", "all-linear", "--layers", "0,2,3"] + common)
        if rc != 0:
            record("train-" + name, False, f"exit {rc}: {err.strip()[-800:]}")
            return
        outs[name] = out
    got = hm.load_safetensors(os.path.join(outs["multimodal"], "adapter_model.safetensors"))
    want = hm.load_safetensors(os.path.join(outs["text"], "adapter_model.safetensors"))
    with open(os.path.join(outs["multimodal"], "adapter_config.json")) as f:
        cfg = json.load(f)
    keys_ok = all(k.startswith("base_model.model.model.language_model.layers.") for k in got)
    renamed = {k.replace("model.language_model.", "model.", 1): v for k, v in got.items()}
    same = set(renamed) == set(want) and all(torch.equal(renamed[k], want[k]) for k in want)
    # PEFT's selection (re.fullmatch of target_modules) over the multimodal model's module names, the
    # vision tower's included: exactly the modules in the file
    names = pr.projection_names(c, "model.language_model") + [
        f"model.vision_tower.vision_model.encoder.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
    chosen = {n for n in names if pr.selected(cfg, n)}
    in_file = {pr._module_of_key(k)[0] for k in got}
    record("train-adapter", keys_ok and same and chosen == in_file and len(in_file) == 3 * 7,
           f"keys under model.language_model: {keys_ok}; equal to the text model's adapter: {same}; "
           f"target_modules {cfg['target_modules']!r} selects {len(chosen)} modules, the file has {len(in_file)}")
    try:
        pr.load_adapter(outs["multimodal"], c)
        record("train-adapter-reference-reads", True, "peft_ref.load_adapter reads it")
    except ValueError as e:
        record("train-adapter-reference-reads", False, str(e))

    full = {}
    for name, model in (("multimodal", d), ("text", twin)):
        out = os.path.join(TMP, "full-" + name)
        shutil.rmtree(out, ignore_errors=True)
        rc, _, err = lorac(["train", "-m", model, "-o", out, "--full"] + common)
        if rc != 0:
            record("full-" + name, False, f"exit {rc}: {err.strip()[-800:]}")
            return
        full[name] = hm.load_safetensors(os.path.join(out, "model.safetensors"))
    mm, txt = full["multimodal"], full["text"]
    _, mm_text = hm.text_model(json.load(open(os.path.join(d, "config.json"))), mm)
    other_same = all(torch.equal(mm.get(k, torch.empty(0)), t) for k, t in raw.items() if not k.startswith("language_model."))
    text_same = set(mm_text) == set(txt) and all(torch.equal(mm_text[k], txt[k]) for k in txt)
    changed = sum(not torch.equal(mm[k].to(raw[k].dtype), raw[k]) for k in raw if k.startswith("language_model."))
    record("full-keeps-vision", set(mm) == set(raw) and other_same and text_same and changed == len(w),
           f"same names: {set(mm) == set(raw)}; vision/projector bit for bit: {other_same}; text tensors equal to "
           f"the text model's --full: {text_same}; {changed} of {len(w)} text tensors trained")


def main():
    shutil.rmtree(TMP, ignore_errors=True)
    os.makedirs(TMP)
    print(f"lorac: {ch.LORAC}\nfiles: {TMP}", flush=True)
    ids = torch.randint(6, 97, (15,), generator=torch.Generator().manual_seed(2)).tolist()
    models = parity_cases(ids)
    adapter_cases(models, ids)
    training_cases(models)
    if not results.items:
        record("checks-ran", False, "no check ran")
    results.finish()


if __name__ == "__main__":
    main()
