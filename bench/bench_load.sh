#!/usr/bin/env bash
# bench/bench_load.sh — what loading a model whose tensors are off their cache
# lines costs: `lorac logits` (load + a 3-token forward) on the random bench
# models as written (HuggingFace-style 8-byte header padding, so the tensors
# start 8-56 bytes past a cache line and lorac copies them aligned), against
# the same bytes rewritten with the header padded so the data starts on a
# 64-byte boundary (used in place from the mapping). Wall time and peak RSS,
# best of REPS alternating runs each. Not a test.
# Usage: bench/bench_load.sh   (after `make build` and bench/bench_generate.sh;
#        bench/bench_train.sh writes the 1.1B model)
# Env:   MODELS ("s110m-F32 s110m-BF16 s1b-F32"), REPS (3)
set -euo pipefail
cd "$(dirname "$0")/.."
LORAC=${LORAC_BIN:-$PWD/build/lorac}
OUT=$PWD/bench/out
REPS=${REPS:-3}
PY=/usr/bin/python3

# DIR -> DIR-aligned64: config.json and the weights, header padded with spaces
# to put the data at a multiple of 64
align_copy() {
  local src=$1 dst=$1-aligned64
  [ -f "$dst/model.safetensors" ] && return
  mkdir -p "$dst"
  cp "$src/config.json" "$dst/"
  $PY - "$src/model.safetensors" "$dst/model.safetensors" <<'EOF'
import shutil, struct, sys
src, dst = sys.argv[1:3]
with open(src, "rb") as f, open(dst, "wb") as g:
    n = struct.unpack("<Q", f.read(8))[0]
    header = f.read(n).rstrip(b" ")
    header += b" " * ((-(8 + len(header))) % 64)
    g.write(struct.pack("<Q", len(header)) + header)
    shutil.copyfileobj(f, g, 1 << 24)
EOF
}

# "wall_s rss_mb" of one run
run_once() {
  /usr/bin/time -f "%e %M" "$LORAC" logits -m "$1" --ids "1 2 3" -o "$OUT/load-logits.npy" -t 2 2>&1 >/dev/null |
    tail -1 | awk '{printf "%s %.0f\n", $1, $2 / 1024}'
}

echo "| model | file | wall s (best of $REPS) | peak RSS MB | data offset mod 64 |"
echo "|---|---|---:|---:|---:|"
for m in ${MODELS:-s110m-F32 s110m-BF16 s1b-F32}; do
  d=$OUT/$m
  [ -f "$d/model.safetensors" ] || { echo "missing $d (run bench_generate.sh / bench_train.sh)" >&2; continue; }
  align_copy "$d"
  best_a=1e9 best_b=1e9 rss_a=0 rss_b=0
  for r in $(seq "$REPS"); do
    read -r w s < <(run_once "$d")
    best_a=$($PY -c "print(min($best_a, $w))"); rss_a=$s
    read -r w s < <(run_once "$d-aligned64")
    best_b=$($PY -c "print(min($best_b, $w))"); rss_b=$s
  done
  off() { $PY -c "import struct,sys; print((8 + struct.unpack('<Q', open(sys.argv[1], 'rb').read(8))[0]) % 64)" "$1/model.safetensors"; }
  echo "| $m | as written (copied aligned) | $best_a | $rss_a | $(off "$d") |"
  echo "| $m | header padded to 64 (in place) | $best_b | $rss_b | $(off "$d-aligned64") |"
done
