#!/usr/bin/env bash
# bench/bench_serve.sh — multi-adapter serving throughput and latency.
#
# Builds bench/out/bench_serve (bench_serve.c against build/liblorac.a), writes
# a random 110M-shaped model (dim 768, 12 layers, vocab 32000, F32 unless
# DTYPE=BF16) and runs, in one process: N requests (default 32) over N
# distinct adapters (ranks 8 and 16; all seven projections, then q_proj+v_proj) in one continuous
# batch, the same requests on a merged model, and the same requests served
# one adapter at a time. Prints aggregate tokens/s, time to first token and
# per-token latency p50/p99, and the two ratios the issue sets goals for.
# Then bench_adapter_decode: single-sequence decode with an unmerged adapter
# (r 8/16/64) against the merged model, and the time of an adapter switch.
# Not a test: timings depend on the machine and what else runs on it.
#
# Usage: bench/bench_serve.sh   (after `make build`)
# Env:   N (32), P (prompt tokens, 32), G (generated tokens, 64), THREADS (2), DTYPE (F32)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/bench/out
PY=/usr/bin/python3
FIX=${LORAC_FIXTURES:-$ROOT/../shared/fixtures}
DTYPE=${DTYPE:-F32}
mkdir -p "$OUT"
[ -f build/liblorac.a ] || { echo "run 'make build' first" >&2; exit 1; }
make -s -C bench lib-benches
MODEL=$OUT/s110m-$DTYPE
if [ ! -f "$MODEL/model.safetensors" ] || [ ! -f "$MODEL/tokenizer.json" ]; then
  echo "# writing $MODEL" >&2
  $PY tests/reference/hf_model.py "$MODEL" --dim 768 --hidden 2048 --layers 12 --heads 12 --kv-heads 12 \
    --vocab 32000 --dtype "$DTYPE" --std 0.02 --seed 1 \
    --tokenizer "$FIX/tokenizers/tinyllama-1.1b-chat-v1.0/tokenizer.json" >/dev/null
fi
echo "# $(date -u +%FT%TZ), $(nproc) CPUs:$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), load $(cut -d' ' -f1-3 /proc/loadavg)"
for targets in all qv; do
  "$OUT/bench_serve" "$MODEL" "$OUT/serve-$DTYPE" -n "${N:-32}" -p "${P:-32}" -g "${G:-64}" -t "${THREADS:-2}" -T $targets
done
# what an unmerged adapter costs in single-sequence decode, and a switch
"$OUT/bench_adapter_decode" "$MODEL" "$OUT/unmerged-$DTYPE" -g "${G:-64}" -t "${THREADS:-2}"
