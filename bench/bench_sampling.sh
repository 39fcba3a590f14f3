#!/usr/bin/env bash
# bench/bench_sampling.sh — what sampling costs in `lorac generate`: the
# 15M-shaped model (vocabulary 32000) greedy (--temp 0) against the default
# sampler (temperature 0.8, top-k 40, top-p 0.95), 256 tokens, 2 threads,
# three alternating rounds. Not a test.
# Usage: bench/bench_sampling.sh   (after `make build` and bench/bench_generate.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
M=bench/out/s15m-F32
[ -d "$M" ] || { echo "missing $M: run bench/bench_generate.sh first" >&2; exit 1; }
rate() { build/lorac generate -m "$M" -p "Once upon a time" -n 256 --ignore-eos -t 2 "$@" 2>&1 >/dev/null |
  sed -n 's/^generate: .*, \([0-9.]*\) tok\/s.*/\1/p'; }
echo "| round | greedy tok/s | default sampling tok/s |"
echo "|---|---:|---:|"
for r in 1 2 3; do echo "| $r | $(rate --temp 0) | $(rate) |"; done
