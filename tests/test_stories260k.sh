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

# serve follows the same rule: without --ctx a slot holds the model's 512
# positions, and a request for more is refused (400); --ctx 700 goes past
# them with the same warning, and the request is served in full.
serve_ctx() { # NAME ARGS...: starts the server, posts a 600-token request, prints the HTTP status and tokens (or error)
  local name=$1; shift
  "$LORAC_BIN" serve -m "$tmp/model" -t 1 --port 0 "$@" > "$tmp/$name.out" 2> "$tmp/$name.err" &
  local spid=$! port=""
  for _ in $(seq 100); do
    port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/$name.out")
    [ -n "$port" ] && break
    sleep 0.1
  done
  /usr/bin/python3 - "$port" <<'PYEOF' || true
import json, sys, urllib.error, urllib.request
body = json.dumps({"model": "model", "prompt": "Once", "max_tokens": 600, "temperature": 0, "ignore_eos": True}).encode()
req = urllib.request.Request("http://127.0.0.1:%s/v1/completions" % sys.argv[1], body, {"Content-Type": "application/json"})
try:
    r = json.load(urllib.request.urlopen(req, timeout=120))
    print(200, r["usage"]["completion_tokens"])
except urllib.error.HTTPError as e:
    print(e.code, json.load(e)["error"]["message"])
except Exception as e:
    print("no answer:", e)
PYEOF
  kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null || true
}
got=$(serve_ctx serve512)
case "$got" in "400 this model's maximum context length is 512 tokens"*) ctx_refused=1 ;; *) ctx_refused=0 ;; esac
[ "$ctx_refused" = 1 ] && grep -q "8 slots x 512 positions" "$tmp/serve512.err" &&
  ! grep -q "warning" "$tmp/serve512.err" && pass=$((pass + 1)) || {
  fail=$((fail + 1)); echo "serve without --ctx: $got, want a 400 naming 512 tokens, and 512 positions:"; cat "$tmp/serve512.err"; }
got=$(serve_ctx serve700 --ctx 700)
[ "$got" = "200 600" ] && grep -q "slots x 700 positions" "$tmp/serve700.err" &&
  grep -q "warning: a context of 700 is past the model's max_position_embeddings (512)" "$tmp/serve700.err" &&
  pass=$((pass + 1)) || {
  fail=$((fail + 1)); echo "serve --ctx 700: $got, want 200 600, 700 positions and a warning:"; cat "$tmp/serve700.err"; }
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
