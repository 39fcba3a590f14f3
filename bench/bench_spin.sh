#!/usr/bin/env bash
# bench/bench_spin.sh — what the OpenMP wait policy costs, idle and beside a
# busy core. lorac sets GOMP_SPINCOUNT=10000 / KMP_BLOCKTIME=1 at start-up
# unless the user set them (tools/lorac.c); LORAC_NO_REEXEC=1 keeps the
# runtime's default (libgomp spins about 300k times before sleeping), and
# OMP_WAIT_POLICY=passive sleeps at once. For each policy: a small LoRA
# training run (dim 64, 150 steps) with the machine idle, with a busy loop
# on one core and on both, and 15M-shape decode tokens/s (idle; the model is the one
# bench_generate.sh writes, skipped when absent). Not a test.
# Usage: bench/bench_spin.sh   (after `make build`)
set -euo pipefail
cd "$(dirname "$0")/.."
LORAC=${LORAC_BIN:-$PWD/build/lorac}
OUT=$PWD/bench/out/spin
mkdir -p "$OUT"
if [ ! -f "$OUT/m/model.safetensors" ]; then
  /usr/bin/python3 tests/reference/hf_model.py "$OUT/m" --dim 64 --hidden 128 --layers 2 --heads 4 --vocab 512 >/dev/null
  /usr/bin/python3 -c "
import json, random
random.seed(0)
with open('$OUT/t.jsonl', 'w') as f:
    for i in range(64): f.write(json.dumps({'input_ids': [random.randrange(500) for _ in range(65)]}) + '\n')"
fi
train_s() {  # wall seconds of the training run under env "$@"
  local t0 t1
  t0=$(date +%s.%N)
  env "$@" "$LORAC" train -m "$OUT/m" --data "$OUT/t.jsonl" --format tokens -o "$OUT/o" --steps 150 --batch 4 \
    --seq 64 -t 2 >/dev/null 2>&1
  t1=$(date +%s.%N)
  awk "BEGIN { print $t1 - $t0 }"
}
decode() {
  [ -f bench/out/s15m-F32/model.safetensors ] || { echo "-"; return; }
  env "$@" "$LORAC" generate -m bench/out/s15m-F32 -p "Once upon a time there was" --temp 0 --ignore-eos -n 128 -t 2 \
    2>&1 >/dev/null | grep -o "generate: [0-9]* tokens, [0-9.]*" | awk '{print $4}'
}
echo "| OpenMP wait policy | training, idle | one core busy | both cores busy | 15M decode tok/s, idle |"
echo "|---|---:|---:|---:|---:|"
for p in "lorac's (spin 10000)|X=1" "runtime default|LORAC_NO_REEXEC=1" "passive|OMP_WAIT_POLICY=passive"; do
  name=${p%%|*}; e=${p#*|}
  idle=$(train_s "$e"); dec=$(decode "$e")
  ( while :; do :; done ) & b1=$!
  one=$(train_s "$e")
  ( while :; do :; done ) & b2=$!
  two=$(train_s "$e")
  kill $b1 $b2; wait $b1 $b2 2>/dev/null || true
  printf '| %s | %.2f s | %.2f s | %.2f s | %s |\n' "$name" "$idle" "$one" "$two" "$dec"
done
