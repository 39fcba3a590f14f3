#!/usr/bin/env bash
# bench/bench_train_profile.sh — where a LoRA training step's time goes, by
# phase: `lorac train --profile` on bench_train.sh's models and settings
# (r=8 on all seven projections, f32, 2 threads; batch 4 x 256, 8 steps;
# 2 x 256 and 5 steps at 1.1B and 0.5B), the steps after the first. Prints
# one table: each phase's milliseconds a step and share of the step per
# model, and, for the phases made of the weights' products (the base
# model's forward and dx, the loss), their GFLOP/s. The loss's rate counts
# its products' flops over the whole phase, softmax included. Each model
# runs RUNS times and the table shows the run with the median step time (a
# run on this VM can be 20% slower than the next). Not a test.
# Usage: bench/bench_train_profile.sh   (after `make build` and bench/bench_train.sh)
# Env:   MODELS ("s15m s110m s1b s05b"), RUNS (3), LORAC_BIN (build/lorac)
set -euo pipefail
cd "$(dirname "$0")/.."
LORAC=${LORAC_BIN:-$PWD/build/lorac}
OUT=$PWD/bench/out
[ -f "$OUT/train-tokens.jsonl" ] || { echo "missing $OUT/train-tokens.jsonl: run bench/bench_train.sh first" >&2; exit 1; }
files=()
for m in ${MODELS:-s15m s110m s1b s05b}; do
  d=$OUT/$m-F32
  [ -f "$d/model.safetensors" ] || { echo "missing $d: run bench/bench_train.sh first" >&2; exit 1; }
  b=4 s=8
  case $m in s1b|s05b) b=2 s=5 ;; esac
  runs=()
  for r in $(seq "${RUNS:-3}"); do
    rm -rf "$OUT/profile-$m"
    "$LORAC" train -m "$d" --data "$OUT/train-tokens.jsonl" --format tokens -o "$OUT/profile-$m" --steps $s --batch $b \
      --seq 256 --targets all-linear --r 8 -t 2 --profile 2> "$OUT/profile-$m.$r.err" >/dev/null
    runs+=("$(sed -n 's/^profile: .*, \([0-9.]*\) ms a step.*/\1/p' "$OUT/profile-$m.$r.err") $OUT/profile-$m.$r.err")
  done
  median=$(printf '%s\n' "${runs[@]}" | sort -g | awk '{f[NR] = $2} END {print f[int((NR + 1) / 2)]}')
  files+=("$m=$median")
done
/usr/bin/python3 - "${files[@]}" <<'EOF'
import re, sys
models, tables, heads = [], {}, {}
for arg in sys.argv[1:]:
    name, path = arg.split('=', 1)
    lines = open(path).read().splitlines()
    i = next(k for k, l in enumerate(lines) if l.startswith('profile:'))
    heads[name] = lines[i]
    rows = {}
    for l in lines[i + 2:]:
        m = re.match(r'  (\S.*?)\s{2,}([-\d.]+)\s+([-\d.]+)%(?:\s+([\d.]+))?$', l)
        if not m: break
        rows[m.group(1)] = (float(m.group(2)), float(m.group(3)), m.group(4))
    models.append(name)
    tables[name] = rows
for n in models: print('# %s: %s (the median run)' % (n, heads[n]))
print('| phase | ' + ' | '.join('%s ms/step (share) GFLOP/s' % n for n in models) + ' |')
print('|---|' + '---:|' * len(models))
for phase in tables[models[0]]:
    cells = []
    for n in models:
        ms, share, gf = tables[n].get(phase, (0.0, 0.0, None))
        cells.append('%.1f (%.1f%%)%s' % (ms, share, ' %s' % gf if gf else ''))
    print('| %s | %s |' % (phase, ' | '.join(cells)))
EOF
