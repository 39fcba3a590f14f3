#!/usr/bin/env bash
# bench/bench_kv_cache.sh — `lorac generate` with its KV cache in f32, bf16
# and f16 (--kv-cache-dtype), turn about, on a long prompt, where the cache
# is a large part of what each decode step reads: at the 110M shape and
# 2000 positions the f32 cache is 12 layers x 2 x 768 x 2000 x 4 bytes =
# 147 MB against 219 MB of BF16 weights. Greedy, --ignore-eos, N tokens
# after a prompt of about P tokens (a TinyStories paragraph repeated), 2
# threads. Reports per dtype the median over rounds of prompt and decode
# tok/s and peak RSS (/usr/bin/time -v), and decode against f32's in the
# same round. The context is the prompt and the N tokens (-c), past the
# bench models' 2048 positions. Then the PyTorch peer
# (bench/torch_generate.py, OpenBLAS as bench_generate.sh runs it, the
# model's dtype for weights and cache, the same prompt ids; its best of 3
# after a warm-up) on the same prompt and N tokens, and lorac's medians
# against it. Not a test.
# Usage: bench/bench_kv_cache.sh [MODEL_DIR (bench/out/s110m-BF16)] [ROUNDS (5)]
#        (after bench/bench_generate.sh, which writes the models)
# Env:   LORAC (build/lorac), THREADS (2), N (128), P (1900), TORCH (1; 0 skips the peer)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-bench/out/s110m-BF16} rounds=${2:-5}
L=${LORAC:-build/lorac} OUT=$PWD/bench/out N=${N:-128} P=${P:-1900}
[ -f "$model/model.safetensors" ] || { echo "missing $model: run bench/bench_generate.sh first" >&2; exit 1; }
PARA="Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One day, she saw a big red ball under a tree and wanted to"
prompt=$OUT/kv-prompt.txt
: > "$prompt"
while [ "$("$L" tokenize -m "$model" -f "$prompt" | wc -w)" -lt "$P" ]; do printf '%s ' "$PARA" >> "$prompt"; done
n_prompt=$("$L" tokenize -m "$model" -f "$prompt" | wc -w)
rows=$OUT/kv-cache.tsv
: > "$rows"
for r in $(seq "$rounds"); do
  for dt in f32 bf16 f16; do
    e=$OUT/kv-cache-$dt.err
    /usr/bin/time -v "$L" generate -m "$model" -f "$prompt" --temp 0 --ignore-eos -n "$N" -t "${THREADS:-2}" \
      -c $((n_prompt + N)) --kv-cache-dtype "$dt" > /dev/null 2> "$e" || { echo "round $r: $dt failed (see $e)" >&2; exit 1; }
    printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$dt" "$(sed -n 's/^prompt: .* \([0-9.]*\) tok\/s.*/\1/p' "$e")" \
      "$(sed -n 's/^generate: .* \([0-9.]*\) tok\/s.*/\1/p' "$e")" \
      "$(sed -n 's/.*Maximum resident set size (kbytes): \([0-9]*\).*/\1/p' "$e")" >> "$rows"
  done
done
peer="-"
if [ "${TORCH:-1}" != 0 ]; then
  . bench/openblas_env.sh
  tdt=f32; grep -q '"torch_dtype": *"bfloat16"' "$model/config.json" && tdt=bf16
  ids=$("$L" tokenize -m "$model" -f "$prompt" | tr -s ' \n' ' ' | sed 's/ $//')
  e=$OUT/kv-cache-torch.err
  env "${OB_ENV[@]}" OMP_NUM_THREADS="${THREADS:-2}" OPENBLAS_NUM_THREADS="${THREADS:-2}" /usr/bin/time -v \
    /usr/bin/python3 bench/torch_generate.py -m "$model" --ids "$ids" -n "$N" -t "${THREADS:-2}" --dtype "$tdt" \
    > "$OUT/kv-cache-torch.txt" 2> "$e" || { echo "torch_generate.py failed (see $e)" >&2; exit 1; }
  peer="$tdt $(sed -n 's/^prompt: .* \([0-9.]*\) tok\/s.*/\1/p' "$OUT/kv-cache-torch.txt") \
$(sed -n 's/^generate: .* \([0-9.]*\) tok\/s.*/\1/p' "$OUT/kv-cache-torch.txt") \
$(sed -n 's/.*Maximum resident set size (kbytes): \([0-9]*\).*/\1/p' "$e")"
fi
/usr/bin/python3 - "$rows" "$model" "$n_prompt" "$N" "$peer" <<'PYEOF'
import statistics, sys
rows = [l.split('\t') for l in open(sys.argv[1]).read().split('\n') if l]
by = {}
for r, dt, prompt, decode, rss in rows:
    by.setdefault(dt, []).append((float(prompt), float(decode), int(rss) / 1024))
rounds = {}
for r, dt, prompt, decode, rss in rows:
    rounds.setdefault(r, {})[dt] = float(decode)
print('# bench_kv_cache: %s, %s prompt tokens then %s, %d rounds; medians' % (sys.argv[2], sys.argv[3], sys.argv[4],
                                                                          len(rounds)))
peer = sys.argv[5].split() if sys.argv[5] != '-' else None
print('| KV cache | prompt tok/s | decode tok/s | decode / f32 (per round, median) | peak RSS MB |'
      + (' prompt / PyTorch | decode / PyTorch |' if peer else ''))
print('|---|---:|---:|---:|---:|' + ('---:|---:|' if peer else ''))
for dt in ('f32', 'bf16', 'f16'):
    v = by[dt]
    ratio = statistics.median(q[dt] / q['f32'] for q in rounds.values())
    p, d = statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)
    print('| %s | %.1f | %.1f | %.3f | %.0f |' % (dt, p, d, ratio, statistics.median(x[2] for x in v))
          + (' %.2fx | %.2fx |' % (p / float(peer[1]), d / float(peer[2])) if peer else ''))
if peer:
    print('| PyTorch (OpenBLAS; weights and cache in %s; best of 3) | %.1f | %.1f | | %.0f | | |'
          % (peer[0], float(peer[1]), float(peer[2]), int(peer[3]) / 1024))
PYEOF
