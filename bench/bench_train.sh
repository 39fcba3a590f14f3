#!/usr/bin/env bash
# bench/bench_train.sh — LoRA training tokens/s and peak RSS: lorac train vs
# PyTorch doing the same step (r=8 on all seven projections, f32, batch 4 x
# 256, 2 threads, AdamW), on the random 15M- and 110M-shaped models that
# bench_generate.sh writes and a TinyLlama-1.1B-shaped one written here
# (F32, 4.4 GB; batch 2 x 256 and 5 steps there, as a step takes tens of
# seconds) and a Qwen2.5-0.5B-shaped one (qwen2: q/k/v biases, tied
# embeddings, a 151,936-token vocabulary; F32, 2 GB; batch 2 x 256, 5
# steps), the large-vocabulary case of Qwen, Llama 3 and SmolLM2 models;
# then LoRA against --full on the 15M shape. MODELS=gpt2 (not in the
# default) trains the GPT-2-124M-shaped model bench_generate.sh MODELS=gpt2
# writes (LoRA on its four Conv1D projections).
# Both sides report the median step after the first (warm-up): 8 steps
# (5 at 1.1B), as torch's steps vary by up to 2x while its allocator grows.
# Each side runs RUNS times, alternating lorac and torch, and the table
# gives each side's median run (and every run): on a VM whose speed drifts
# by 10-30% between runs, one run of each is mostly that drift.
# Not a test. Torch runs with Debian's OpenBLAS, its kernels for this CPU
# (bench/openblas_env.sh).
# Usage: bench/bench_train.sh   (after `make build` and bench/bench_generate.sh)
# Env:   MODELS ("s15m s110m s1b s05b"), STEPS (8), RUNS (3), LORAC_BIN (build/lorac)
set -euo pipefail
cd "$(dirname "$0")/.."
LORAC=${LORAC_BIN:-$PWD/build/lorac}
OUT=$PWD/bench/out
STEPS=${STEPS:-8}
B=4; T=256
. bench/openblas_env.sh
echo "# torch: OpenBLAS core $(ob_core)" >&2
. bench/train_lib.sh
write_tokens "$OUT/train-tokens.jsonl" $T
RUNS=${RUNS:-3}
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
echo "| model | lorac tokens/s | torch tokens/s | ratio | lorac peak RSS | torch peak RSS | RSS ratio | runs: lorac / torch tokens/s |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
for m in ${MODELS:-s15m s110m s1b s05b}; do
  d=$OUT/$m-F32
  mb=$B ms=$STEPS
  if [ "$m" = s1b ]; then
    mb=2; ms=5
    [ -f "$d/model.safetensors" ] || /usr/bin/python3 tests/reference/hf_model.py "$d" --dim 2048 --hidden 5632 \
      --layers 22 --heads 32 --kv-heads 4 --vocab 32000 --dtype F32 --std 0.02 --seed 1 >/dev/null
  fi
  if [ "$m" = s05b ]; then
    mb=2; ms=5
    [ -f "$d/model.safetensors" ] || /usr/bin/python3 tests/reference/hf_model.py "$d" --arch qwen2 --bias --tie \
      --dim 896 --hidden 4864 --layers 24 --heads 14 --kv-heads 2 --vocab 151936 --dtype F32 --std 0.02 --seed 1 >/dev/null
  fi
  [ -d "$d" ] || { echo "missing $d: run bench/bench_generate.sh first" >&2; exit 1; }
  lts=() tts=() lrs=() trs=()
  for run in $(seq "$RUNS"); do
    rm -rf "$OUT/train-$m"
    /usr/bin/time -v "$LORAC" train -m "$d" --data "$OUT/train-tokens.jsonl" --format tokens -o "$OUT/train-$m" \
      --steps "$ms" --batch $mb --seq $T --targets all-linear --r 8 -t 2 2> "$OUT/train-$m.err" >/dev/null
    # steady-state rate over the steps after the first, as the torch peer
    # measures (the first step also pays for first-touching the activations)
    lts+=("$(steady_rate "$OUT/train-$m/metrics.jsonl")") lrs+=("$(rss "$OUT/train-$m.err")")
    env "${OB_ENV[@]}" /usr/bin/time -v /usr/bin/python3 bench/torch_train.py "$d" \
      --batch $mb --seq $T --steps "$ms" > "$OUT/torch-train-$m.json" 2> "$OUT/torch-train-$m.err"
    tts+=("$(/usr/bin/python3 -c "import json; print('%.1f' % json.load(open('$OUT/torch-train-$m.json'))['tokens_per_second'])")")
    trs+=("$(rss "$OUT/torch-train-$m.err")")
  done
  lt=$(median "${lts[@]}") tt=$(median "${tts[@]}") lr=$(median "${lrs[@]}") tr=$(median "${trs[@]}")
  /usr/bin/python3 -c "print('| $m | %.1f | %.1f | %.2fx | %.0f MB | %.0f MB | %.2fx | ${lts[*]} / ${tts[*]} |' % ($lt, $tt, $lt / $tt, $lr / 1024, $tr / 1024, $lr / $tr))"
done
echo
echo "| 15M shape | trainable parameters | step time | peak RSS | checkpoint |"
echo "|---|---:|---:|---:|---:|"
for mode in lora full; do
  extra=""; [ $mode = full ] && extra="--full"
  /usr/bin/time -v "$LORAC" train -m "$OUT/s15m-F32" --data "$OUT/train-tokens.jsonl" --format tokens -o "$OUT/train-$mode" \
    --steps "$STEPS" --batch $B --seq $T --targets all-linear --r 8 --save-every "$STEPS" $extra -t 2 2> "$OUT/train-$mode.err" >/dev/null
  n=$(grep -o 'trainable [0-9]* parameters\|full fine-tuning: [0-9]* parameters' "$OUT/train-$mode.err" | grep -o '[0-9]*' | head -1)
  tps=$(steady_rate "$OUT/train-$mode/metrics.jsonl")
  ck=$(du -sb "$OUT/train-$mode/checkpoint-$STEPS" | cut -f1)
  /usr/bin/python3 -c "print('| $mode | $n | %.2f s | %.0f MB | %.1f MB |' % ($B * $T / $tps, $(rss "$OUT/train-$mode.err") / 1024, $ck / 1e6))"
done
