#!/usr/bin/env bash
# bench/bench_kv_rows.sh — what windowed layers' own KV rows save.
#
# Writes a random model with Gemma 3 4B's attention shape (34 layers, every
# 6th global and the others windowed at 1024 positions, 4 kv heads of 256;
# a 64-wide residual stream, so it is small) and starts `lorac serve
# --max-seqs 8 --kv-cache-dtype bf16` on it at several --ctx, printing the KV
# cache size from the start line against the size of a cache that keeps
# every position in every layer (2 × slots × ctx × layers × kv heads ×
# head_dim × 2 bytes, what lorac reserved before windowed layers had their
# own rows). Not a test.
#
# Usage: bench/bench_kv_rows.sh   (after `make build`)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/out/g3-attention-shape
FIX=${LORAC_FIXTURES:-$PWD/../shared/fixtures}
[ -x build/lorac ] || { echo "run 'make build' first" >&2; exit 1; }
if [ ! -f "$OUT/model.safetensors" ]; then
  mkdir -p "$OUT"
  /usr/bin/python3 - "$OUT" "$FIX" <<'PY'
import sys
sys.path.insert(0, "tests/reference")
import hf_model
c = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=34, num_attention_heads=8, num_key_value_heads=4,
         head_dim=256, vocab_size=32000, sliding_window=1024, sliding_window_pattern=6,
         max_position_embeddings=131072, query_pre_attn_scalar=256)
hf_model.make_random_model(sys.argv[1], c, arch="gemma3", tie=True, dtype="BF16",
                           tokenizer_json=sys.argv[2] + "/tokenizers/tinyllama-1.1b-chat-v1.0/tokenizer.json")
PY
fi
echo "| --ctx | KV cache, lorac (MB) | every position in every layer (MB) | saved |"
echo "|---:|---:|---:|---:|"
for ctx in 2048 8192 32768; do
  mb=$(timeout 20 build/lorac serve -m "$OUT" --port 0 --ctx $ctx --max-seqs 8 --kv-cache-dtype bf16 \
         --chat-template zephyr 2>&1 >/dev/null | grep -o 'KV cache [0-9.]* MB' | head -1 | cut -d' ' -f3) || true
  full=$(python3 -c "print(f'{2 * 8 * $ctx * 34 * 4 * 256 * 2 / 1e6:.1f}')")
  echo "| $ctx | $mb | $full | $(python3 -c "print(f'{$full / $mb:.1f}x')") |"
done
