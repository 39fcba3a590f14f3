#!/usr/bin/env bash
# bench/bench_adapters.sh — adapter tooling on big models: the time of
#   * lorac merge -m MODEL --adapter A -o MERGED (a random r=16 adapter on all
#     seven projections, merged into a BF16 model, the model written whole;
#     lorac's figure includes its probe-logits check), and
#   * lorac extract --base MODEL --tuned MERGED --r 16 (all seven
#     projections, 2 power iterations) with the share of ||dW||^2 it kept
#     (below 100% only by the BF16 rounding of the merged weights),
# against PyTorch doing the same jobs (bench/torch_adapters.py: W + s*B@A;
# torch.svd_lowrank with the same oversampling and iterations, f32, Debian's
# OpenBLAS with its kernels for this CPU, bench/openblas_env.sh), on the
# 110M shape (dim 768, 12 layers, hidden 2048) and the TinyLlama-1.1B
# shape (dim 2048, 22 layers, 32 heads, 4 KV heads, hidden 5632, vocab
# 32000), random BF16 weights.
# Peak RSS from /usr/bin/time -v. Not a test.
# Usage: bench/bench_adapters.sh   (after `make build`)
# Env:   MODELS ("s110m s1b"), R (16), THREADS (2), TORCH (1; 0 skips the torch columns)
set -euo pipefail
cd "$(dirname "$0")/.."
LORAC=${LORAC_BIN:-$PWD/build/lorac}
OUT=$PWD/bench/out
PY=/usr/bin/python3
R=${R:-16}
THREADS=${THREADS:-2}
TORCH=${TORCH:-1}
. bench/openblas_env.sh
TORCH_ENV=(env "${OB_ENV[@]}" OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS)
mkdir -p "$OUT"
[ -x "$LORAC" ] || { echo "error: $LORAC not found; run 'make build' first" >&2; exit 1; }
echo "# bench_adapters $(date -u +%FT%TZ) on $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2

shape() {
  case $1 in
    s110m) echo "--dim 768 --hidden 2048 --layers 12 --heads 12 --vocab 32000" ;;
    s1b) echo "--dim 2048 --hidden 5632 --layers 22 --heads 32 --kv-heads 4 --vocab 32000" ;;
    *) echo "unknown model $1" >&2; exit 1 ;;
  esac
}
now() { date +%s.%N; }
rss_mb() { sed -n 's/.*Maximum resident set size (kbytes): \([0-9]*\).*/\1/p' "$1" | awk '{printf "%.0f", $1 / 1024}'; }
# a random PEFT adapter, r=$R, lora_alpha=2R, on all seven projections
write_adapter() {
  $PY - "$1" "$2" "$R" <<'EOF'
import json, os, sys
sys.path.insert(0, "tests/reference")
import hf_model as hm, peft_ref as pr
model, out, r = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = json.load(open(os.path.join(model, "config.json")))
cfg = {"r": r, "lora_alpha": 2 * r, "target_modules": list(pr.PROJ_BLOCK)}
ab = pr.random_lora(c, {n: r for n in pr.projection_names(c)}, seed=7)
pr.write_adapter(out, cfg, pr.lora_tensors(ab))
EOF
}

rows=()
for m in ${MODELS:-s110m s1b}; do
  d=$OUT/$m-BF16
  if [ ! -f "$d/model.safetensors" ]; then
    echo "# writing $d" >&2
    # shellcheck disable=SC2046
    $PY tests/reference/hf_model.py "$d" $(shape "$m") --dtype BF16 --std 0.02 --seed 1 >/dev/null
  fi
  ad=$OUT/adapter-$m-r$R
  [ -f "$ad/adapter_model.safetensors" ] || write_adapter "$d" "$ad"
  merged=$OUT/merged-$m-r$R
  rm -rf "$merged"
  echo "# $m: lorac merge" >&2
  t0=$(now)
  /usr/bin/time -v "$LORAC" merge -m "$d" --adapter "$ad" -o "$merged" 2> "$OUT/merge-$m.err" >/dev/null
  lm=$(echo "$(now) - $t0" | bc)
  echo "# $m: lorac extract" >&2
  /usr/bin/time -v "$LORAC" extract --base "$d" --tuned "$merged" --r "$R" -o "$OUT/extract-$m-r$R" --json \
    > "$OUT/extract-$m.json" 2> "$OUT/extract-$m.err"
  le=$($PY -c "import json; print('%.1f' % json.load(open('$OUT/extract-$m.json'))['seconds'])")
  energy=$($PY -c "import json; t = json.load(open('$OUT/extract-$m.json'))['total']; print('%.5f%% (min %.5f%%)' % (100 * t['energy_of_total'], 100 * t['energy_min']))")
  tm=-; te=-; tmr=-; ter=-
  if [ "$TORCH" = 1 ]; then
    echo "# $m: torch merge and extract" >&2
    "${TORCH_ENV[@]}" /usr/bin/time -v $PY bench/torch_adapters.py merge "$d" "$ad" "$OUT/torch-merged-$m" \
      > "$OUT/torch-merge-$m.json" 2> "$OUT/torch-merge-$m.err"
    "${TORCH_ENV[@]}" /usr/bin/time -v $PY bench/torch_adapters.py extract "$d" "$merged" "$R" "$OUT/torch-extract-$m" \
      > "$OUT/torch-extract-$m.json" 2> "$OUT/torch-extract-$m.err"
    tm=$($PY -c "import json; print('%.1f' % json.load(open('$OUT/torch-merge-$m.json'))['seconds'])")
    te=$($PY -c "import json; print('%.1f' % json.load(open('$OUT/torch-extract-$m.json'))['seconds'])")
    tmr=$(rss_mb "$OUT/torch-merge-$m.err"); ter=$(rss_mb "$OUT/torch-extract-$m.err")
  fi
  rows+=("$($PY -c "
lm, tm, le, te = $lm, '$tm', $le, '$te'
ratio = lambda a, b: '%.2fx' % (float(b) / a) if b != '-' else '-'
print('| %s | %.1f s | %s s | %s | %.1f s | %s s | %s | %s | %s / %s MB | %s / %s MB |' % (
    '$m', lm, tm, ratio(lm, tm), le, te, ratio(le, te), '$energy',
    '$(rss_mb "$OUT/merge-$m.err")', '$(rss_mb "$OUT/extract-$m.err")', '$tmr', '$ter'))")")
done
echo "| model (BF16) | lorac merge | torch merge | torch/lorac | lorac extract r=$R | torch extract | torch/lorac | energy kept | lorac peak RSS merge / extract | torch peak RSS merge / extract |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
