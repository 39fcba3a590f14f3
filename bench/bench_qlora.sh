#!/usr/bin/env bash
# bench/bench_qlora.sh — QLoRA: LoRA training (r=8 on all seven projections,
# AdamW, 2 threads) on a BF16 base held as it is in the file, against the
# same base with its projections quantized to NF4 (--quantize nf4), and
# PyTorch's LoRA step (bench/torch_train.py: the base in f32, its fastest
# form on a CPU; bitsandbytes has no CPU kernels in Debian's packages, so
# PyTorch has no NF4 here) on the same model, in one run: tokens/s of the
# median step after the first and peak RSS. Then decode (GEN_N tokens,
# greedy) with both bases, and a bitsandbytes 4-bit checkpoint of the same
# model (bench/write_bnb_checkpoint.py: what transformers saves from
# load_in_4bit, bnb_4bit_quant_type="nf4", double quantization), read as it
# is, and the time each takes to load.
# Models: s1b (TinyLlama-1.1B's shape, BF16, 2.2 GB) by default; s7b
# (Llama-2-7B's shape: dim 4096, 32 layers, hidden 11008; 13.5 GB of BF16,
# written a slab at a time by bench/write_big_model.py) with MODELS="s7b".
# PyTorch would need 27 GB of RAM for the 7B base in f32: it runs there only
# with TORCH_7B=1. Not a test.
# Usage: bench/bench_qlora.sh   (after `make build`)
# Env:   MODELS ("s1b"), STEPS (4), BATCH (2), SEQ (256), GEN_N (128), LORAC_BIN (build/lorac)
# The 7B figures in the README: MODELS=s7b STEPS=3 BATCH=1 SEQ=128 GEN_N=32
set -euo pipefail
cd "$(dirname "$0")/.."
LORAC=${LORAC_BIN:-$PWD/build/lorac}
OUT=$PWD/bench/out
FIX=${LORAC_FIXTURES:-$PWD/../shared/fixtures}
mkdir -p "$OUT"
STEPS=${STEPS:-4} B=${BATCH:-2} T=${SEQ:-256}
. bench/openblas_env.sh
echo "# torch: OpenBLAS core $(ob_core)" >&2
. bench/train_lib.sh
write_tokens "$OUT/qlora-tokens.jsonl" "$T"
row() { /usr/bin/python3 -c "import sys; a = sys.argv; print('| %s | %s | %.1f | %.0f MB | %.2fx | %.2fx |' % (a[1], a[2], float(a[3]), float(a[4]) / 1024, float(a[4]) / float(a[5]), float(a[3]) / float(a[6])))" "$@"; }
echo "| model | base | train tokens/s | peak RSS | RSS vs lorac BF16 | speed vs lorac BF16 |"
echo "|---|---|---:|---:|---:|---:|"
for m in ${MODELS:-s1b}; do
  d=$OUT/$m-BF16
  if [ ! -f "$d/model.safetensors" ]; then
    case $m in
      s1b) /usr/bin/python3 tests/reference/hf_model.py "$d" --dim 2048 --hidden 5632 --layers 22 --heads 32 \
             --kv-heads 4 --vocab 32000 --dtype BF16 --std 0.02 --seed 1 >/dev/null ;;
      s7b) /usr/bin/python3 bench/write_big_model.py "$d" --dim 4096 --hidden 11008 --layers 32 --heads 32 >&2 ;;
      *) echo "unknown model $m" >&2; exit 1 ;;
    esac
    cp "$FIX/tokenizers/tinyllama-1.1b-chat-v1.0/tokenizer.json" "$d/tokenizer.json"
  fi
  # the same model as bitsandbytes would save it in 4 bits (double-quantized absmax)
  [ -f "$OUT/$m-bnb/model.safetensors" ] || /usr/bin/python3 bench/write_bnb_checkpoint.py "$d" "$OUT/$m-bnb"
  for q in bf16 nf4 bnb; do
    extra=""; [ $q = nf4 ] && extra="--quantize nf4"
    md=$d; [ $q = bnb ] && md=$OUT/$m-bnb
    rm -rf "$OUT/qlora-$m-$q"
    /usr/bin/time -v "$LORAC" train -m "$md" --data "$OUT/qlora-tokens.jsonl" --format tokens -o "$OUT/qlora-$m-$q" \
      --steps "$STEPS" --batch "$B" --seq "$T" --targets all-linear --r 8 -t 2 $extra 2> "$OUT/qlora-$m-$q.err" >/dev/null
    eval "rate_$q=$(steady_rate "$OUT/qlora-$m-$q/metrics.jsonl") rss_$q=$(rss "$OUT/qlora-$m-$q.err")"
  done
  row "$m" "lorac, BF16 as stored" "$rate_bf16" "$rss_bf16" "$rss_bf16" "$rate_bf16"
  row "$m" "lorac, --quantize nf4" "$rate_nf4" "$rss_nf4" "$rss_bf16" "$rate_bf16"
  row "$m" "lorac, bitsandbytes NF4 checkpoint" "$rate_bnb" "$rss_bnb" "$rss_bf16" "$rate_bf16"
  if [ "$m" != s7b ] || [ "${TORCH_7B:-0}" = 1 ]; then
    env "${OB_ENV[@]}" /usr/bin/time -v /usr/bin/python3 bench/torch_train.py "$d" --batch "$B" --seq "$T" \
      --steps "$STEPS" > "$OUT/qlora-torch-$m.json" 2> "$OUT/qlora-torch-$m.err"
    tt=$(/usr/bin/python3 -c "import json; print(json.load(open('$OUT/qlora-torch-$m.json'))['tokens_per_second'])")
    row "$m" "PyTorch, f32" "$tt" "$(rss "$OUT/qlora-torch-$m.err")" "$rss_bf16" "$rate_bf16"
  else
    echo "| $m | PyTorch, f32 | - | needs $(du -b "$d/model.safetensors" | awk '{printf "%.0f", $1 * 2 / 1e9}') GB | - | - |"
  fi
done
echo
echo "| model | base | decode tokens/s | peak RSS | load + 1 token (s) |"
echo "|---|---|---:|---:|---:|"
for m in ${MODELS:-s1b}; do
  d=$OUT/$m-BF16
  [ -f "$d/tokenizer.json" ] || continue
  for q in bf16 nf4 bnb; do
    extra=""; [ $q = nf4 ] && extra="--quantize nf4"
    md=$d; [ $q = bnb ] && md=$OUT/$m-bnb
    /usr/bin/time -v "$LORAC" generate -m "$md" -p "Once upon a time" -n "${GEN_N:-128}" --ignore-eos -t 2 $extra \
      2> "$OUT/qlora-gen-$m-$q.err" >/dev/null
    r=$(sed -n 's/^generate: [0-9]* tokens, \([0-9.]*\) tok\/s.*/\1/p' "$OUT/qlora-gen-$m-$q.err")
    # loading: the whole of `lorac logits` for one token, wall seconds
    /usr/bin/time -f %e "$LORAC" logits -m "$md" --ids 1 -o "$OUT/qlora-load.npy" -t 2 $extra 2> "$OUT/qlora-load-$m-$q.err"
    echo "| $m | $q | $r | $(( $(rss "$OUT/qlora-gen-$m-$q.err") / 1024 )) MB | $(tail -1 "$OUT/qlora-load-$m-$q.err") |"
  done
done
