#!/usr/bin/env bash
# bench/bench_eval_ab.sh — two lorac binaries, A and B, timed turn about on
# `lorac eval` of one data file (2 threads; the loss on the responses, or on
# every token with ARGS=--train-on-inputs): the median over pairs of B's
# tokens/s over A's, and each side's loss line, which must agree to its
# printed digits (the script stops where they differ). Not a test.
# Usage: bench/bench_eval_ab.sh BIN_A BIN_B [MODEL_DIR (bench/out/s15m-BF16)] [DATA] [PAIRS (6)]
#        DATA defaults to the first 150 examples of the fixtures' Alpaca
#        sample, written to bench/out/eval-alpaca150.json.
# Env:   LORAC_FIXTURES (../shared/fixtures), THREADS (2), ARGS (more eval flags for both)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bench/bench_eval_ab.sh BIN_A BIN_B [MODEL_DIR] [DATA] [PAIRS]" >&2; exit 2; }
A=$1 B=$2 model=${3:-bench/out/s15m-BF16} data=${4:-} pairs=${5:-6}
OUT=$PWD/bench/out
[ -f "$model/model.safetensors" ] || { echo "missing $model: run bench/bench_generate.sh first" >&2; exit 1; }
if [ -z "$data" ]; then
  data=$OUT/eval-alpaca150.json
  /usr/bin/python3 -c "import json, sys; json.dump(json.load(open(sys.argv[1]))[:150], open(sys.argv[2], 'w'))" \
    "${LORAC_FIXTURES:-../shared/fixtures}/datasets/alpaca/alpaca_data_1k.json" "$data"
fi
rows=$OUT/ab-eval.tsv
: > "$rows"
for p in $(seq "$pairs"); do
  for side in A B; do
    bin=$A; [ $side = B ] && bin=$B
    "$bin" eval -m "$model" --data "$data" ${ARGS:-} -t "${THREADS:-2}" > "$OUT/ab-eval-$side.txt" \
      2> "$OUT/ab-eval-$side.err" || { echo "pair $p: $side's lorac eval failed (see $OUT/ab-eval-$side.err)" >&2; exit 1; }
    printf '%s\t%s\t%s\n' "$p" "$side" "$(sed -n 's/.*(\([0-9.]*\) tokens\/s.*/\1/p' "$OUT/ab-eval-$side.err")" >> "$rows"
  done
  cmp -s "$OUT/ab-eval-A.txt" "$OUT/ab-eval-B.txt" ||
    { echo "pair $p: the losses differ: $(cat "$OUT/ab-eval-A.txt") / $(cat "$OUT/ab-eval-B.txt")" >&2; exit 1; }
done
echo "# bench_eval_ab: $model ${ARGS:-}, $(cat "$OUT/ab-eval-A.txt")"
/usr/bin/python3 - "$rows" <<'PYEOF'
import statistics, sys
rate = {}
for line in open(sys.argv[1]).read().split('\n'):
    if line:
        p, side, r = line.split('\t')
        rate.setdefault(p, {})[side] = float(r)
print('| pair | A tokens/s | B tokens/s | B/A |')
print('|---|---:|---:|---:|')
for p, v in rate.items():
    print('| %s | %.1f | %.1f | %.3f |' % (p, v['A'], v['B'], v['B'] / v['A']))
print('| median | %.1f | %.1f | %.3f |' % (statistics.median(v['A'] for v in rate.values()),
                                         statistics.median(v['B'] for v in rate.values()),
                                         statistics.median(v['B'] / v['A'] for v in rate.values())))
PYEOF
