#!/usr/bin/env bash
# The real TinyStories stories260K checkpoint, converted with `lorac convert`
# and run greedily with `lorac generate`, must produce exactly the
# continuation recorded upstream in llama2c/stories260K.md (llama2.c's
# `./run stories260K.bin -z tok512.bin -t 0.0`: empty prompt, 256 steps).
set -euo pipefail
: "${LORAC_BIN:?}" "${LORAC_FIXTURES:?LORAC_FIXTURES must point at the shared fixtures}"
tmp="${LORAC_TEST_TMP:-/tmp}/stories260k.$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
fx="$LORAC_FIXTURES/llama2c"

"$LORAC_BIN" convert --from llama2c "$fx/stories260K.bin" --tokenizer "$fx/tok512.bin" -o "$tmp/model" 2>/dev/null
for f in config.json model.safetensors tokenizer.json; do
  [ -s "$tmp/model/$f" ] || { echo "convert wrote no $f"; echo "0 passed, 1 failed"; exit 1; }
done

# Expected text: the code block that follows the `-t 0.0` command line.
awk '/stories260K.bin -z stories260K\/tok512.bin -t 0.0/ {grab=1; next} grab && /^```/ {exit} grab {print}' \
  "$fx/stories260K.md" > "$tmp/expected.txt"
[ -s "$tmp/expected.txt" ] || { echo "could not extract the expected text"; exit 1; }

# run.c: 256 steps, each printing the token it samples after the BOS prompt.
"$LORAC_BIN" generate -m "$tmp/model" -p "" --temp 0 -n 256 -t 2 > "$tmp/got.txt" 2>"$tmp/stderr.txt"

pass=0; fail=0
if diff <(sed -e 's/[[:space:]]*$//' "$tmp/expected.txt") <(sed -e 's/[[:space:]]*$//' "$tmp/got.txt") > "$tmp/diff.txt"; then
  pass=$((pass + 1))
else
  fail=$((fail + 1)); echo "greedy continuation differs from stories260K.md:"; cat "$tmp/diff.txt"
fi
grep -q "prompt: .* tok/s" "$tmp/stderr.txt" && grep -q "generate: .* tok/s" "$tmp/stderr.txt" && pass=$((pass + 1)) || {
  fail=$((fail + 1)); echo "statistics missing from stderr"; cat "$tmp/stderr.txt"; }
# nothing but the text goes to stdout
if grep -q "tok/s" "$tmp/got.txt"; then fail=$((fail + 1)); echo "statistics leaked to stdout"; else pass=$((pass + 1)); fi

# The context is the model's max_position_embeddings (512 here) unless -c
# says more: without -c generation stops when it is full (the BOS prompt
# and 511 tokens fed back, 512 generated: the last is never fed); -c 700
# goes past it, with a warning.
"$LORAC_BIN" generate -m "$tmp/model" -p "" --temp 0 --ignore-eos -n 600 -t 2 > /dev/null 2>"$tmp/ctx.txt"
grep -q "^generate: 512 tokens, .*(stop: context" "$tmp/ctx.txt" && pass=$((pass + 1)) || {
  fail=$((fail + 1)); echo "without -c, generation did not stop at the model's 512 positions:"; cat "$tmp/ctx.txt"; }
"$LORAC_BIN" generate -m "$tmp/model" -p "" --temp 0 --ignore-eos -n 600 -c 700 -t 2 > /dev/null 2>"$tmp/ctx.txt"
grep -q "^generate: 600 tokens, .*(stop: length" "$tmp/ctx.txt" &&
  grep -q "warning: a context of 700 is past the model's max_position_embeddings (512)" "$tmp/ctx.txt" &&
  pass=$((pass + 1)) || { fail=$((fail + 1)); echo "-c 700 did not give 600 tokens with a warning:"; cat "$tmp/ctx.txt"; }
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
