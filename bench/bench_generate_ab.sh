#!/usr/bin/env bash
# bench/bench_generate_ab.sh — two lorac binaries, A and B, timed turn about
# on one model's `lorac generate` (bench_generate.sh's prompt and settings:
# greedy, 128 tokens, --ignore-eos, 2 threads). For a decode change on a VM
# whose speed drifts by 10-30% between runs: each pair of runs is back to
# back, and the summary gives the median over pairs of B's decode tok/s
# over A's (and of the prompt's). The script compares the two generated
# texts after every pair and stops where they differ, unless SAME_TEXT=0
# (a change that moves the rounding). Not a test.
# Usage: bench/bench_generate_ab.sh BIN_A BIN_B [MODEL_DIR (bench/out/s110m-BF16)] [PAIRS (8)]
#        (after bench/bench_generate.sh, which writes the models)
# Env:   SAME_TEXT (1), THREADS (2), N (128), PROMPT_FILE (a file to read the
#        prompt from instead, e.g. bench/out/kv-prompt.txt of bench_kv_cache.sh),
#        ARGS (more flags for both, e.g. "--kv-cache-dtype bf16")
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bench/bench_generate_ab.sh BIN_A BIN_B [MODEL_DIR] [PAIRS]" >&2; exit 2; }
A=$1 B=$2 model=${3:-bench/out/s110m-BF16} pairs=${4:-8}
OUT=$PWD/bench/out
[ -f "$model/model.safetensors" ] || { echo "missing $model: run bench/bench_generate.sh first" >&2; exit 1; }
PROMPT="Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One day, she saw a big red ball under a tree and wanted to"
prompt_args=(-p "$PROMPT")
[ -n "${PROMPT_FILE:-}" ] && prompt_args=(-f "$PROMPT_FILE")
rows=$OUT/ab-generate.tsv
: > "$rows"
for p in $(seq "$pairs"); do
  for side in A B; do
    bin=$A; [ $side = B ] && bin=$B
    e=$OUT/ab-generate-$side.err
    "$bin" generate -m "$model" "${prompt_args[@]}" ${ARGS:-} --temp 0 --ignore-eos -n "${N:-128}" -t "${THREADS:-2}" \
      > "$OUT/ab-generate-$side.txt" 2> "$e" || { echo "pair $p: $side's lorac generate failed (see $e)" >&2; exit 1; }
    printf '%s\t%s\t%s\t%s\n' "$p" "$side" "$(sed -n 's/^prompt: .* \([0-9.]*\) tok\/s.*/\1/p' "$e")" \
      "$(sed -n 's/^generate: .* \([0-9.]*\) tok\/s.*/\1/p' "$e")" >> "$rows"
  done
  [ "${SAME_TEXT:-1}" = 0 ] || cmp -s "$OUT/ab-generate-A.txt" "$OUT/ab-generate-B.txt" ||
    { echo "pair $p: the generated texts differ" >&2; exit 1; }
done
/usr/bin/python3 - "$rows" "$model" <<'EOF'
import statistics, sys
rows = [l.split('\t') for l in open(sys.argv[1]).read().split('\n') if l]
by = {}
for p, side, prompt, decode in rows:
    by.setdefault(p, {})[side] = [float(prompt), float(decode)]
pairs = [by[p] for p in sorted(by, key=int)]
print('# bench_generate_ab: %s, %d pairs, A then B' % (sys.argv[2], len(pairs)))
print('| pair | A decode tok/s | B decode tok/s | B/A decode | B/A prompt |')
print('|---|---:|---:|---:|---:|')
ratios = []
for i, q in enumerate(pairs):
    a, b = q['A'], q['B']
    r = [b[1] / a[1], b[0] / a[0]]
    ratios.append(r)
    print('| %d | %.1f | %.1f | %.3f | %.3f |' % (i + 1, a[1], b[1], *r))
med = [statistics.median(r[k] for r in ratios) for k in range(2)]
print('| median | %.1f | %.1f | %.3f | %.3f |' % (statistics.median(q['A'][1] for q in pairs),
      statistics.median(q['B'][1] for q in pairs), *med))
EOF
