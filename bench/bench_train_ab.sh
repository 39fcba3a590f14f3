#!/usr/bin/env bash
# bench/bench_train_ab.sh — two lorac binaries, A and B, timed turn about on
# one model's LoRA training step (`lorac train --profile`, bench_train.sh's
# settings: r=8 on all seven projections, f32, 2 threads; batch 4 x 256 and
# 8 steps, 2 x 256 and 5 steps at 1.1B and 0.5B). For a change whose
# effect shows only in a whole step (weights read from memory rather than
# from the cache that bench_kernel_ab's repeated products keep them in), on
# a VM whose speed drifts by 10-30% between runs: each pair of runs is
# back to back, and the summary gives the median over pairs of B's step
# time over A's, of B's product rates over A's and of B's time in the
# adapters' own products (the `lora` phase) over A's. The loss's products
# are the same code in most comparisons, so their ratio shows how much
# of the rest is drift. The script compares the two adapters after every
# pair and stops where they differ, unless SAME_BITS=0 (a change that
# moves the rounding, e.g. a new summation order). Not a test.
# Usage: bench/bench_train_ab.sh BIN_A BIN_B [MODEL (s1b)] [PAIRS (8)]
#        (after bench/bench_train.sh, which writes the models and data)
# Env:   SAME_BITS (1)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bench/bench_train_ab.sh BIN_A BIN_B [MODEL] [PAIRS]" >&2; exit 2; }
A=$1 B=$2 m=${3:-s1b} pairs=${4:-8}
OUT=$PWD/bench/out
[ -f "$OUT/$m-F32/model.safetensors" ] && [ -f "$OUT/train-tokens.jsonl" ] ||
  { echo "missing $OUT/$m-F32 or $OUT/train-tokens.jsonl: run bench/bench_train.sh first" >&2; exit 1; }
b=4 s=8
case $m in s1b|s05b) b=2 s=5 ;; esac
rows=$OUT/ab-$m.tsv
: > "$rows"
for p in $(seq "$pairs"); do
  for side in A B; do
    bin=$A; [ $side = B ] && bin=$B
    rm -rf "$OUT/ab-$m-$side"
    e=$OUT/ab-$m-$side.err
    "$bin" train -m "$OUT/$m-F32" --data "$OUT/train-tokens.jsonl" --format tokens -o "$OUT/ab-$m-$side" --steps $s \
      --batch $b --seq 256 --targets all-linear --r 8 -t 2 --profile 2> "$e" >/dev/null ||
      { echo "pair $p: $side's lorac train failed (see $e)" >&2; exit 1; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$side" "$(sed -n 's/^profile: .*, \([0-9.]*\) ms a step.*/\1/p' "$e")" \
      "$(awk '/^  base forward/ {print $NF}' "$e")" "$(awk '/^  base dx/ {print $NF}' "$e")" \
      "$(awk '/^  loss/ {print $NF}' "$e")" "$(awk '/^  lora/ {print $2}' "$e")" >> "$rows"
  done
  [ "${SAME_BITS:-1}" = 0 ] || cmp -s "$OUT/ab-$m-A/adapter_model.safetensors" "$OUT/ab-$m-B/adapter_model.safetensors" ||
    { echo "pair $p: the adapters differ" >&2; exit 1; }
done
/usr/bin/python3 - "$rows" "$m" <<'EOF'
import statistics, sys
rows = [l.split('\t') for l in open(sys.argv[1]).read().split('\n') if l]
by = {}
for p, side, ms, fwd, dx, loss, lora in rows:
    by.setdefault(p, {})[side] = [float(ms), float(fwd), float(dx), float(loss), float(lora)]
pairs = [by[p] for p in sorted(by, key=int)]
print('# bench_train_ab: %s, %d pairs, A then B' % (sys.argv[2], len(pairs)))
print('| pair | A ms/step | B ms/step | B/A step | B/A forward GFLOP/s | B/A dx GFLOP/s | B/A loss GFLOP/s | B/A adapters ms |')
print('|---|---:|---:|---:|---:|---:|---:|---:|')
ratios = []
for i, q in enumerate(pairs):
    a, b = q['A'], q['B']
    r = [b[0] / a[0], b[1] / a[1], b[2] / a[2], b[3] / a[3], b[4] / a[4]]
    ratios.append(r)
    print('| %d | %.1f | %.1f | %.3f | %.3f | %.3f | %.3f | %.3f |' % (i + 1, a[0], b[0], *r))
med = [statistics.median(r[k] for r in ratios) for k in range(5)]
print('| median | %.1f | %.1f | %.3f | %.3f | %.3f | %.3f | %.3f |' % (statistics.median(q['A'][0] for q in pairs),
      statistics.median(q['B'][0] for q in pairs), *med))
EOF
