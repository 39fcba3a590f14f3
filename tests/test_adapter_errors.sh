#!/usr/bin/env bash
# Adapters lorac must refuse, or that do not fit the model: each gives
# "lorac: error: <what>" naming the setting, tensor or shape, and exit 1,
# never a crash or a hang, from `lorac logits --adapter`, `lorac inspect`
# and `lorac merge`. The adapters are written by tests/reference/peft_ref.py
# onto a random tiny Llama (hidden 48, 3 layers, GQA), each breaking one
# rule of src/lora/peft.c.
set -uo pipefail
: "${LORAC_BIN:?}"
SRC="${LORAC_SRC:-$(cd "$(dirname "$0")/.." && pwd)}"
tmp="${LORAC_TEST_TMP:-/tmp}/adapter-errors.$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0

# ---- write the model and one directory per case -----------------------------
/usr/bin/python3 - "$tmp" "$SRC/tests/reference" <<'PYEOF' || { echo "writing the cases failed"; echo "0 passed, 1 failed"; exit 1; }
import json, math, os, struct, sys
sys.path.insert(0, sys.argv[2])
import torch
import hf_model as hm
import peft_ref as pr

tmp = sys.argv[1]
shape = dict(hidden_size=48, intermediate_size=100, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=97)
c, w = hm.make_random_model(os.path.join(tmp, "model"), shape, seed=1)
# the same model but hidden 64: adapters made for another base
c64, _ = hm.make_random_model(os.path.join(tmp, "model64"), dict(shape, hidden_size=64), seed=2)
QV = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}


def tensors(cc, modules, r=8, **kw):
    return pr.lora_tensors(pr.random_lora(cc, {m: r for m in modules}), **kw)


def qv(cc=c, layers=range(3), r=8):
    return tensors(cc, [f"model.layers.{i}.self_attn.{p}" for i in layers for p in ("q_proj", "v_proj")], r=r)


def case(name, cfg=QV, t=None):
    pr.write_adapter(os.path.join(tmp, name), cfg, qv() if t is None else t)


def raw_safetensors(path, entries):
    """entries: list of (name, dtype string, shape, bytes)."""
    header, blobs, off = {}, [], 0
    for name, dt, shp, b in entries:
        header[name] = {"dtype": dt, "shape": shp, "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


case("ok")
# refused settings
case("dora", dict(QV, use_dora=True))
t = qv(); t["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = torch.ones(48)
case("dora-tensor", dict(QV), t)
t = qv(); t["base_model.model.model.embed_tokens.lora_embedding_A"] = torch.ones(8, 97)
t["base_model.model.model.embed_tokens.lora_embedding_B"] = torch.ones(48, 8)
case("embedding-tensors", dict(QV, target_modules=["q_proj", "v_proj", "embed_tokens"]), t)
case("embedding-target", dict(QV, target_modules=["q_proj", "v_proj", "embed_tokens"]))
t = qv(); t.update(pr.lora_tensors({"lm_head": (torch.ones(8, 48), torch.ones(97, 8))}))
case("lm-head-tensors", dict(QV), t)
case("lm-head-target", dict(QV, target_modules=["q_proj", "v_proj", "lm_head"]))
case("modules-to-save", dict(QV, modules_to_save=["lm_head"]))
case("bias-all", dict(QV, bias="all"))
case("peft-type", dict(QV, peft_type="IA3"))
case("lora-bias", dict(QV, lora_bias=True))
t = qv(); t["base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias"] = torch.ones(48)
case("lora-bias-tensor", dict(QV), t)
case("pissa", dict(QV, init_lora_weights="pissa_niter_4"))
case("qalora", dict(QV, use_qalora=True))
case("layer-replication", dict(QV, layer_replication=[[0, 2], [1, 3]]))
case("target-parameters", dict(QV, target_parameters=["experts.gate_up_proj"]))
# targets the model lacks, modules that are no projection
t = qv(); t.update(tensors(c, ["model.layers.0.self_attn.q_proj"]))
t = {k.replace("q_proj", "query_key_value") if "layers.0." in k else k: v for k, v in t.items()}
case("unknown-projection-tensor", dict(QV, target_modules=["q_proj", "v_proj", "query_key_value"]), t)
# Phi-3's fused module on a Llama model
t = qv(); t.update(tensors(c, ["model.layers.0.self_attn.q_proj"]))
t = {k.replace("q_proj", "qkv_proj") if "layers.0." in k else k: v for k, v in t.items()}
case("fused-qkv-on-llama", dict(QV, target_modules=["q_proj", "v_proj", "qkv_proj"]), t)
case("target-matches-nothing", dict(QV, target_modules=["c_attn", "query_key_value"]))
case("target-regex-mlp-block", dict(QV, target_modules=r".*\.mlp"))
case("bad-regex", dict(QV, target_modules="model\\.layers\\.(0"))
case("runaway-regex", dict(QV, target_modules=r"(.*)*\d\d\d\d"))
case("layers-with-regex", dict(QV, target_modules=r".*q_proj", layers_to_transform=[0]))
case("layers-pattern-alone", dict(QV, layers_pattern="layers"))
case("rank-pattern-zero", dict(QV, rank_pattern={"q_proj": 0}))
case("r-zero", dict(QV, r=0))
case("not-json", dict(QV))
open(os.path.join(tmp, "not-json", "adapter_config.json"), "w").write("{\"r\": 8, ")
# shapes that do not fit
t = qv(); k = "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"; t[k] = torch.ones(8, 52)
case("shape-mismatch", dict(QV), t)
case("other-hidden-size", dict(QV), qv(cc=c64))
case("rank-differs", dict(QV), qv(r=4))
t = qv(); t.update(tensors(c, ["model.layers.2.self_attn.q_proj"])); t = {k.replace("layers.2.", "layers.5."): v for k, v in t.items()}
case("layer-beyond-model", dict(QV), t)
case("layers-to-transform-beyond", dict(QV, layers_to_transform=[0, 7]))
# files that do not hold what the config says
t = qv(); del t["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"]
case("missing-lora-b", dict(QV), t)
t = qv(); del t["base_model.model.model.layers.2.self_attn.v_proj.lora_A.weight"]
case("missing-lora-a", dict(QV), t)
t = qv(); t["base_model.model.model.norm.weight"] = torch.ones(48)
case("extra-tensor", dict(QV), t)
t = qv(); t.update(tensors(c, ["model.layers.0.self_attn.k_proj"]))
case("unselected-module", dict(QV), t)
t = qv(); t = {k: v for k, v in t.items() if "layers.1.self_attn.v_proj" not in k}
case("missing-module", dict(QV), t)
t = qv(); k = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
t[k.replace("base_model.model.", "")] = t[k].clone()
case("duplicate-tensor", dict(QV), t)
t = qv(); t = {k.replace(".lora_A.weight", ".lora_A.other.weight"): v for k, v in t.items()}
case("other-adapter-name", dict(QV), t)
t = qv(); t["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"][2, 3] = float("nan")
case("nan-weight", dict(QV), t)
case("no-tensors", dict(QV), {})
# dtype lorac does not read, truncated file, pickle-only adapter
case("f64-dtype")
ents = [(k, "F64", list(v.shape), v.double().numpy().tobytes()) for k, v in sorted(qv().items())]
raw_safetensors(os.path.join(tmp, "f64-dtype", "adapter_model.safetensors"), ents)
case("truncated")
p = os.path.join(tmp, "truncated", "adapter_model.safetensors")
data = open(p, "rb").read(); open(p, "wb").write(data[: len(data) - 100])
case("pickle-only")
os.rename(os.path.join(tmp, "pickle-only", "adapter_model.safetensors"), os.path.join(tmp, "pickle-only", "adapter_model.bin"))
os.makedirs(os.path.join(tmp, "no-config"))
PYEOF

M="$tmp/model"
# expect CASE SUBSTRING...: lorac logits --adapter CASE exits 1 with every substring in "lorac: error: ..."
expect() {
  local name=$1; shift
  local out rc missing=""
  out=$(timeout 60 "$LORAC_BIN" logits -m "$M" --adapter "$tmp/$name" --ids "1 2 3" -o "$tmp/o.npy" 2>&1 >/dev/null); rc=$?
  for s in "$@" "lorac: error: "; do [[ "$out" == *"$s"* ]] || missing="$missing '$s'"; done
  if [ "$rc" -eq 1 ] && [ -z "$missing" ]; then pass=$((pass + 1))
  else fail=$((fail + 1)); echo "FAIL: $name: exit $rc, stderr: $out (missing:$missing)"; fi
}

"$LORAC_BIN" logits -m "$M" --adapter "$tmp/ok" --ids "1 2 3" -o "$tmp/o.npy" && pass=$((pass + 1)) \
  || { fail=$((fail + 1)); echo "FAIL: the well-formed adapter does not load"; }

expect dora "DoRA" "use_dora"
expect dora-tensor "lora_magnitude_vector" "DoRA is not supported"
expect embedding-tensors "lora_embedding_A" "embedding adapters are not supported"
expect embedding-target "embedding adapters are not supported" "model.embed_tokens"
expect lm-head-tensors "lm_head.lora_A.weight" "output-head adapters are not supported"
expect lm-head-target "output head are not supported" "lm_head"
expect modules-to-save "modules_to_save" "not supported"
expect bias-all "bias training" "\"all\"" "only \"none\""
expect peft-type "peft_type IA3 is not supported"
expect lora-bias "LoRA biases" "not supported"
expect lora-bias-tensor "q_proj.lora_B.bias" "LoRA bias"
expect pissa "pissa_niter_4" "changes the base weights"
expect qalora "QA-LoRA" "not supported"
expect layer-replication "layer_replication is not supported"
expect target-parameters "target_parameters" "not supported"
expect unknown-projection-tensor "model.layers.0.self_attn.query_key_value.lora_A.weight" "not a projection of a Llama model"
expect fused-qkv-on-llama "model.layers.0.self_attn.qkv_proj.lora_A.weight" "adapts Phi-3's fused qkv_proj, but LlamaForCausalLM has separate projections"
expect target-matches-nothing "selects no module of this model" "c_attn"
expect target-regex-mlp-block "model.layers.0.mlp" "not one of the projections"
expect bad-regex "is not a valid regex" "model\\.layers\\.(0"
expect runaway-regex "failed on" "match limit exceeded"
expect layers-with-regex "layers_to_transform cannot be used when target_modules is a string"
expect layers-pattern-alone "layers_pattern is given without layers_to_transform"
expect rank-pattern-zero "rank_pattern[\"q_proj\"] must be an integer in 1..65536"
expect r-zero "\"r\" must be an integer in 1..65536"
expect not-json "adapter_config.json: not a JSON object"
expect shape-mismatch "layers.1.self_attn.v_proj.lora_A.weight" "shape [8, 52]" "expected [8, 48]"
expect other-hidden-size "lora_A.weight\" has shape [8, 64], expected [8, 48]"
expect rank-differs "shape [4, 48], expected [8, 48]" "rank 4" "r = 8"
expect layer-beyond-model "layers.5.self_attn.q_proj" "layer 5 but the model has 3 layers"
expect layers-to-transform-beyond "layers_to_transform names layer 7 but the model has 3 layers"
expect missing-lora-b "layers.1.self_attn.q_proj.lora_A.weight\" has no matching lora_B"
expect missing-lora-a "layers.2.self_attn.v_proj.lora_B.weight\" has no matching lora_A"
expect extra-tensor "model.norm.weight\" is not a LoRA weight"
expect unselected-module "layers.0.self_attn.k_proj" "does not select"
expect missing-module "missing tensor" "layers.1.self_attn.v_proj.lora_A.weight"
expect duplicate-tensor "are both lora_A of the same module"
expect other-adapter-name "lora_A.other.weight" "expected .lora_A.weight or .lora_A.default.weight"
expect nan-weight "layers.1.self_attn.q_proj.lora_A.weight" "non-finite"
expect no-tensors "no LoRA tensors"
expect f64-dtype "dtype F64" "F32, F16 or BF16"
expect truncated "adapter_model.safetensors"
expect pickle-only "adapter_model.bin" "PyTorch pickle adapters are not supported"
expect no-config "no-config/adapter_config.json"

# inspect and merge say the same (inspect needs no model)
for name in dora embedding-tensors layer-beyond-model missing-lora-b nan-weight truncated; do
  out=$(timeout 60 "$LORAC_BIN" inspect "$tmp/$name" 2>&1 >/dev/null); rc=$?
  if [ "$rc" -eq 1 ] && [[ "$out" == *"lorac: error: "* ]]; then pass=$((pass + 1))
  else fail=$((fail + 1)); echo "FAIL: inspect $name: exit $rc, stderr: $out"; fi
done
for name in other-hidden-size rank-differs unselected-module; do
  out=$(timeout 60 "$LORAC_BIN" inspect "$tmp/$name" -m "$M" 2>&1 >/dev/null); rc=$?
  if [ "$rc" -eq 1 ] && [[ "$out" == *"lorac: error: "* ]]; then pass=$((pass + 1))
  else fail=$((fail + 1)); echo "FAIL: inspect -m $name: exit $rc, stderr: $out"; fi
done
out=$("$LORAC_BIN" merge -m "$M" --adapter "$tmp/other-hidden-size" -o "$tmp/merged" 2>&1 >/dev/null); rc=$?
if [ "$rc" -eq 1 ] && [[ "$out" == *"expected [8, 48]"* ]]; then pass=$((pass + 1))
else fail=$((fail + 1)); echo "FAIL: merge other-hidden-size: exit $rc, stderr: $out"; fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
