#!/usr/bin/env bash
# Builds every libFuzzer target (fuzz/fuzz_*.c) with clang, ASan and UBSan,
# then runs each for FUZZ_SECONDS (default 10) on a scratch copy of its seed
# corpus fuzz/corpus/<target>/ (libFuzzer writes new inputs into the corpus
# directory; the repository's seeds stay as committed), using the dictionary
# fuzz/<target>.dict when there is one. Crash inputs are kept in
# build-fuzz/artifacts/. Prints one line per target; exits 1 if any crashed.
#   FUZZ_SECONDS=60 scripts/run-fuzz.sh            all targets
#   scripts/run-fuzz.sh fuzz_safetensors           only these
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-10}"
build=build-fuzz
jobs="$(nproc)"

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz/fuzz_*.c; do
    [ -e "$f" ] || continue
    targets+=("$(basename "$f" .c)")
  done
fi
if [ ${#targets[@]} -eq 0 ]; then
  echo "run-fuzz: no fuzz/fuzz_*.c targets"
  exit 0
fi

# The library is compiled with -fsanitize=fuzzer-no-link so that libFuzzer
# sees coverage inside the parsers, not only in the small target files.
cmake_flags=(-DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo
             -DLORAC_FUZZ=ON -DLORAC_SANITIZE=address,undefined
             "-DCMAKE_C_FLAGS=-fsanitize=fuzzer-no-link")
[ "${CI:-}" = true ] && cmake_flags+=(-DLORAC_WERROR=ON)
cmake -S . -B "$build" "${cmake_flags[@]}" >/dev/null
cmake --build "$build" -j "$jobs" --target "${targets[@]}" >/dev/null

scratch="$(mktemp -d "${TMPDIR:-/tmp}/lorac-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$build/artifacts"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

failed=0
for t in "${targets[@]}"; do
  corpus="$scratch/$t"
  mkdir -p "$corpus"
  [ -d "fuzz/corpus/$t" ] && cp -R "fuzz/corpus/$t/." "$corpus/"
  seeds=$(find "$corpus" -type f | wc -l)
  args=(-max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=30
        -artifact_prefix="$build/artifacts/$t-" -print_final_stats=1)
  [ -f "fuzz/$t.dict" ] && args+=(-dict="fuzz/$t.dict")
  log="$scratch/$t.log"
  if "./$build/$t" "${args[@]}" "$corpus" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    found=$(( $(find "$corpus" -type f | wc -l) - seeds ))
    echo "$t: ok, ${runs:-?} runs in ${seconds}s, $seeds seeds, $found new corpus inputs"
  else
    failed=1
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    echo "$t: FAILED (crash input: ${artifact:-see log})"
    tail -n 60 "$log" | sed "s/^/  $t: /"
  fi
done
exit "$failed"
