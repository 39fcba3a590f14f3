#!/usr/bin/env bash
# Portability check on 64-bit ARM: cross-builds lorac for aarch64 with
# Debian's cross compiler (warnings are errors), then runs under qemu-user
#   - the C tests: file formats, tokenizers (HuggingFace's reference ids),
#     malformed files, datasets and chat templates (jinja2's renderings),
#     sampling (vLLM's rules), the OpenAI protocol, and the kernels, the
#     forward pass and the training step on the portable C path (against
#     double references and finite differences), adapters;
#   - `convert` of the stories260K checkpoint, whose files must be byte for
#     byte the native build's, and its greedy continuation, which must be
#     the one recorded upstream.
# qemu-user 7.2 hangs any libgomp program that starts a second thread, so
# everything runs with OMP_THREAD_LIMIT=1 (the tests' 2-3 thread cases get
# one). Left out: test_engine, which runs the lorac program, and
# test_checkpoint, whose fork()ed children hang in qemu-user. Not part
# of `make test`: it adds Debian's arm64 architecture and packages, and
# takes about ten minutes (test_matmul alone four under emulation).
#   scripts/cross-check.sh            (as root, or with sudo)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${CROSS_BUILD:-build-aarch64}

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "cross-check: adding Debian's arm64 architecture" >&2
  $SUDO dpkg --add-architecture arm64
  $SUDO apt-get update -qq
fi
missing=()
for p in gcc-aarch64-linux-gnu qemu-user libcjson-dev:arm64 libpcre2-dev:arm64 libmicrohttpd-dev:arm64; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "cross-check: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

make -s build >/dev/null   # the native lorac, to compare convert's files with
cmake -S . -B "$build" -DCMAKE_TOOLCHAIN_FILE=scripts/aarch64-linux-gnu.cmake -DCMAKE_BUILD_TYPE=Release \
  -DLORAC_WERROR=ON >/dev/null
cmake --build "$build" -j "$(nproc)"

export LORAC_FIXTURES=${LORAC_FIXTURES:-$root/../shared/fixtures} OMP_NUM_THREADS=1 OMP_THREAD_LIMIT=1 LORAC_NO_REEXEC=1
fail=0
c_tests=$(cd tests && ls test_*.c | sed 's/\.c$//' | grep -vxE 'test_engine|test_checkpoint' | paste -sd'|')
(cd "$build" && ctest --output-on-failure -j "$(nproc)" --timeout 1800 -R "^($c_tests)\$") || fail=1

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
arm() { qemu-aarch64 -L /usr/aarch64-linux-gnu "$build/lorac" "$@"; }
fx="$LORAC_FIXTURES/llama2c"
arm convert --from llama2c "$fx/stories260K.bin" --tokenizer "$fx/tok512.bin" -o "$tmp/arm" 2>/dev/null
build/lorac convert --from llama2c "$fx/stories260K.bin" --tokenizer "$fx/tok512.bin" -o "$tmp/native" 2>/dev/null
for f in config.json model.safetensors tokenizer.json; do
  if cmp -s "$tmp/arm/$f" "$tmp/native/$f"; then echo "ok: convert's $f is the native build's"
  else echo "FAIL: convert's $f differs from the native build's"; fail=1; fi
done
awk '/stories260K.bin -z stories260K\/tok512.bin -t 0.0/ {grab=1; next} grab && /^```/ {exit} grab {print}' \
  "$fx/stories260K.md" > "$tmp/expected.txt"
arm generate -m "$tmp/arm" -p "" --temp 0 -n 256 -t 1 > "$tmp/got.txt" 2>"$tmp/stats.txt"
if diff <(sed -e 's/[[:space:]]*$//' "$tmp/expected.txt") <(sed -e 's/[[:space:]]*$//' "$tmp/got.txt") >/dev/null; then
  echo "ok: stories260K's greedy continuation on aarch64 ($(grep -o 'portable kernels' "$tmp/stats.txt"))"
else
  echo "FAIL: stories260K's greedy continuation on aarch64 differs from stories260K.md"; fail=1
fi
[ "$fail" -eq 0 ] && echo "cross-check: aarch64 passed" || echo "cross-check: aarch64 FAILED"
exit "$fail"
