#!/usr/bin/env bash
# `lorac demo` (the README's first command) runs end to end: it builds a base
# model, trains two adapters, and its merged model answers like the unmerged
# base + adapter (the demo exits non-zero otherwise).
set -uo pipefail
: "${LORAC_BIN:?}"
if [ -n "${LORAC_SANITIZED:-}" ]; then
  echo "demo: covered by the optimised build (about 1 minute there, far longer under sanitizers)"
  echo "0 passed, 0 failed"; exit 0
fi
tmp="${LORAC_TEST_TMP:-/tmp}/demo.$$"
trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
if "$LORAC_BIN" demo --out "$tmp" -t 2 > "$tmp.out" 2>&1; then pass=$((pass + 1)); else fail=$((fail + 1)); cat "$tmp.out"; fi
grep -q "its answers equal the unmerged" "$tmp.out" && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "merge check missing"; }
# the reverse adapter must actually have learnt its task on held-out words
r=$(sed -n 's/^     correct *[0-9]*\/6 *\([0-9]*\)\/6.*/\1/p' "$tmp.out")
[ "${r:-0}" -ge 4 ] && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "reverse adapter: ${r:-?}/6 held-out words right"; cat "$tmp.out"; }
rm -f "$tmp.out"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
