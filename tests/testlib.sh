# Sourced by the shell tests that count checks: `. "$(dirname "$0")/testlib.sh" NAME`
# gives L (the lorac binary), PY (Debian's python3), a scratch directory
# $tmp (removed at exit), the counters with ok / bad, and tl_finish, which
# prints "N passed, M failed" and fails when any check did.
: "${LORAC_BIN:?}" "${LORAC_FIXTURES:?LORAC_FIXTURES must point at the shared fixtures}"
L=$LORAC_BIN
PY=/usr/bin/python3
tmp="${LORAC_TEST_TMP:-/tmp}/$1.$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
tl_finish() { echo "$pass passed, $fail failed"; [ "$fail" -eq 0 ]; }
# tl_serve NAME ARGS...: starts `lorac serve ARGS... --port 0` in the
# background (stdout in NAME.out, stderr in NAME.err) and sets spid and
# port, which stays empty when the server did not say where it listens
# within 10 s.
tl_serve() {
  local name=$1; shift
  "$L" serve "$@" --port 0 > "$name.out" 2> "$name.err" &
  spid=$!
  port=""
  for _ in $(seq 100); do
    port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$name.out")
    [ -n "$port" ] && break
    sleep 0.1
  done
}
