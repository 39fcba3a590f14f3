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
