#!/usr/bin/env bash
# Every failure a user can cause ends with "lorac: error: <what>" and exit 1
# (2 for usage), never a crash. Each case: expected exit code, a substring
# the message must contain, and the command.
set -uo pipefail
: "${LORAC_BIN:?}" "${LORAC_FIXTURES:?LORAC_FIXTURES must point at the shared fixtures}"
tmp="${LORAC_TEST_TMP:-/tmp}/cli-errors.$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
fx="$LORAC_FIXTURES/llama2c"
pass=0; fail=0

expect() { # expect CODE SUBSTRING -- ARGS...
  local code=$1 substr=$2; shift 3
  local out rc
  out=$("$LORAC_BIN" "$@" 2>&1 >/dev/null); rc=$?
  if [ "$rc" -eq "$code" ] && [[ "$out" == *"$substr"* ]] && { [ "$code" -ne 1 ] || [[ "$out" == *"lorac: error: "* ]]; }; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1)); echo "FAIL: lorac $* -> exit $rc (want $code), stderr: $out (want '$substr')"
  fi
}

"$LORAC_BIN" convert --from llama2c "$fx/stories260K.bin" --tokenizer "$fx/tok512.bin" -o "$tmp/m" 2>/dev/null || {
  echo "convert failed"; echo "0 passed, 1 failed"; exit 1; }

# usage errors: exit 2
expect 2 "unknown command" -- frobnicate
expect 2 "-m MODEL is required" -- generate -p hi
expect 2 "unknown option" -- generate -m "$tmp/m" -p hi --bogus
expect 2 "expects an integer" -- generate -m "$tmp/m" -p hi -n ten
expect 2 "expects a number" -- generate -m "$tmp/m" -p hi --top-p 1.5
expect 2 "needs a value" -- generate -m
expect 2 "give -p TEXT or -f FILE" -- generate -m "$tmp/m"
expect 2 "give one of -p TEXT or -f FILE, not both" -- generate -m "$tmp/m" -p hi -f x
expect 2 "required" -- logits -m "$tmp/m"
expect 2 "-m MODEL and --data FILE are required" -- eval -m "$tmp/m"
expect 2 "unknown --format 'csv'" -- eval -m "$tmp/m" --data x.jsonl --format csv
expect 2 "--seed goes with --eval-split" -- eval -m "$tmp/m" --data x.jsonl --seed 3
expect 1 "x.jsonl" -- eval -m "$tmp/m" --data "$tmp/x.jsonl"
expect 2 "bad token id" -- logits -m "$tmp/m" --ids "1 x 3" -o "$tmp/o.npy"
expect 2 "only llama2c" -- convert --from gguf x -o "$tmp/x"

# input errors: exit 1 naming the file and the problem
expect 1 "no_such_dir" -- generate -m "$tmp/no_such_dir" -p hi
mkdir -p "$tmp/empty"
expect 1 "config.json" -- generate -m "$tmp/empty" -p hi
cp -r "$tmp/m" "$tmp/badarch"
sed -i 's/LlamaForCausalLM/BertModel/' "$tmp/badarch/config.json"
expect 1 "BertModel" -- logits -m "$tmp/badarch" --ids "1 2" -o "$tmp/o.npy"
cp -r "$tmp/m" "$tmp/trunc"
head -c 5000 "$tmp/m/model.safetensors" > "$tmp/trunc/model.safetensors"
expect 1 "model.safetensors" -- logits -m "$tmp/trunc" --ids "1 2" -o "$tmp/o.npy"
cp -r "$tmp/m" "$tmp/wide"
sed -i 's/"hidden_size":[[:space:]]*64/"hidden_size": 128/' "$tmp/wide/config.json"
expect 1 "expected" -- logits -m "$tmp/wide" --ids "1 2" -o "$tmp/o.npy"
expect 1 "outside the vocabulary" -- logits -m "$tmp/m" --ids "1 600" -o "$tmp/o.npy"
cp -r "$tmp/m" "$tmp/badtok"
echo '{"model": {"type": "BPE", "vocab": 5}}' > "$tmp/badtok/tokenizer.json"
expect 1 "tokenizer.json" -- generate -m "$tmp/badtok" -p hi
cp -r "$tmp/m" "$tmp/notok"
rm "$tmp/notok/tokenizer.json"
expect 1 "tokenizer.json" -- generate -m "$tmp/notok" -p hi
echo '{"text": "Once upon a time"}' > "$tmp/text.jsonl"
expect 1 "no tokenizer.json" -- train -m "$tmp/notok" --data "$tmp/text.jsonl" --format text -o "$tmp/tr-notok" --steps 1
expect 1 "no tokenizer.json" -- train -m "$tmp/notok" --data "$tmp/text.jsonl" -o "$tmp/tr-notok" --steps 1
head -c 1000 "$fx/stories260K.bin" > "$tmp/short.bin"
expect 1 "short.bin" -- convert --from llama2c "$tmp/short.bin" --tokenizer "$fx/tok512.bin" -o "$tmp/c1"
head -c 100 "$fx/tok512.bin" > "$tmp/tok-short.bin"
expect 1 "tok-short.bin" -- convert --from llama2c "$fx/stories260K.bin" --tokenizer "$tmp/tok-short.bin" -o "$tmp/c2"
expect 1 "nothing_here" -- inspect "$tmp/nothing_here"
expect 1 "BertModel" -- inspect "$tmp/badarch"
printf 'abc' > "$tmp/bad.safetensors"
expect 1 "bad.safetensors" -- inspect "$tmp/bad.safetensors"
expect 1 "tokenizer.json" -- tokenize -m "$tmp/badtok" -p hi
printf '\xff\xfe' > "$tmp/badutf8.txt"
expect 1 "UTF-8" -- tokenize -m "$tmp/m" -f "$tmp/badutf8.txt"
expect 1 "" -- tokenize -m "$tmp/m" --decode "1 99999"

# and the happy paths of the same commands work
"$LORAC_BIN" logits -m "$tmp/m" --ids "1 2 3" -o "$tmp/ok.npy" && [ -s "$tmp/ok.npy" ] && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL: logits"; }
ids=$("$LORAC_BIN" tokenize -m "$tmp/m" -p "Once upon a time" --no-special) && [ -n "$ids" ] && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL: tokenize"; }
txt=$("$LORAC_BIN" tokenize -m "$tmp/m" --decode "$ids") && [ "$txt" = "Once upon a time" ] && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL: decode gave '$txt'"; }
"$LORAC_BIN" inspect "$tmp/m" --json | /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["architecture"]=="LlamaForCausalLM" and d["n_params"]>0' && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL: inspect --json"; }
for c in generate logits tokenize inspect convert demo train merge; do
  "$LORAC_BIN" $c --help >/dev/null && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL: $c --help"; }
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
