#!/usr/bin/env bash
# bench/bench_generate.sh — lorac generate vs PyTorch, prompt and decode tokens/s.
#
# In one run on this machine, for random TinyStories-15M-shaped (dim 288,
# 6 layers, 6 heads, hidden 768, vocab 32000) and 110M-shaped (dim 768,
# 12 layers, 12 heads, hidden 2048, vocab 32000) models in F32 and BF16:
#   * lorac generate -m DIR -p PROMPT --temp 0 --ignore-eos -n 128 -t 2 (its stderr
#     "prompt: ... tok/s" and "generate: ... tok/s" lines, best of REPS runs), and
#   * bench/torch_generate.py on the same model and prompt ids (KV cache,
#     greedy, 2 threads; f32, or bf16 weights+activations for BF16 rows),
#     with Debian's OpenBLAS (libopenblas0-openmp, installed if missing) and
#     its kernels for this CPU (bench/openblas_env.sh), as python3-torch
#     otherwise uses the netlib reference BLAS;
# and the decode rate against the memory-bandwidth bound
# (read bandwidth / bytes of weights read per token).
# MODELS="gpt2" (not in the default) adds a random GPT-2-124M-shaped model
# (dim 768, 12 layers, 12 heads, 1024 positions, vocab 50257, tied head)
# with GPT-2's tokenizer, against torch_generate.py's GPT-2 decoder.
# Not a test: timings depend on the machine and on what else runs on it.
#
# Usage: bench/bench_generate.sh            (after `make build`)
# Env:   LORAC_BIN (default build/lorac), N (128), THREADS (2),
#        TORCH_NETLIB=0 to skip the torch-with-reference-BLAS rows,
#        MODELS="s15m s110m", DTYPES="F32 BF16", REPS (3: lorac runs per row,
#        the best rates kept; torch_generate.py keeps its best of 3 after a
#        warm-up).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=/usr/bin/python3
LORAC=${LORAC_BIN:-$ROOT/build/lorac}
OUT=$ROOT/bench/out
N=${N:-128}
THREADS=${THREADS:-2}
MODELS=${MODELS:-"s15m s110m"}
DTYPES=${DTYPES:-"F32 BF16"}
TORCH_NETLIB=${TORCH_NETLIB:-1}
REPS=${REPS:-3}
FIX=${LORAC_FIXTURES:-$ROOT/../shared/fixtures}
TOKJSON=$FIX/tokenizers/tinyllama-1.1b-chat-v1.0/tokenizer.json
LIBDIR=/usr/lib/x86_64-linux-gnu
OBDIR=$LIBDIR/openblas-openmp
PROMPT="Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One day, she saw a big red ball under a tree and wanted to"
mkdir -p "$OUT"
RES=$OUT/results.tsv
: >"$RES"

log() { printf '%s\n' "$*" >&2; }
# the largest of its numeric arguments
maxf() { $PY -c "import sys; print(max(sys.argv[1:], key=float))" "$@"; }

# ---- environment --------------------------------------------------------------
log "# bench_generate $(date -u +%FT%TZ) on $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
log "# load average: $(cut -d' ' -f1-3 /proc/loadavg) (timings are only meaningful on an otherwise idle machine)"
[ -x "$LORAC" ] || { log "error: $LORAC not found; run 'make build' first (or set LORAC_BIN)"; exit 1; }
[ -f "$TOKJSON" ] || { log "error: $TOKJSON not found (set LORAC_FIXTURES)"; exit 1; }

if [ ! -e "$OBDIR/libblas.so.3" ]; then
  log "# installing libopenblas0-openmp"
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq libopenblas0-openmp || { apt-get update -qq && apt-get install -y -qq libopenblas0-openmp; }) >&2
  else
    sudo apt-get install -y -qq libopenblas0-openmp >&2
  fi
fi
# torch with the netlib reference BLAS, and with OpenBLAS's kernels for this CPU
. bench/openblas_env.sh
NETLIB_ENV=(env LD_LIBRARY_PATH=$LIBDIR/blas:$LIBDIR/lapack OMP_NUM_THREADS=$THREADS)
OPENBLAS_ENV=(env "${OB_ENV[@]}" OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS)

log "## BLAS used by torch (1024x1024 f32 matmul, $THREADS threads)"
log "- netlib reference BLAS:       $("${NETLIB_ENV[@]}" $PY bench/torch_generate.py --blas-check -t "$THREADS" | tr '\n' ' ')"
OB_CORE=$(ob_core)
log "- OpenBLAS, core $OB_CORE:      $("${OPENBLAS_ENV[@]}" $PY bench/torch_generate.py --blas-check -t "$THREADS" | tr '\n' ' ')"

# ---- memory bandwidth ----------------------------------------------------------
BW_SRC=""
if [ -f bench/membw.c ]; then
  if { [ -f bench/Makefile ] && make -s -C bench out/membw >&2; } ||
     gcc -O2 -march=native -fopenmp -D_GNU_SOURCE bench/membw.c -o "$OUT/membw" >&2; then
    # three runs, the highest rates kept: the bound is what the machine can
    # deliver, and one run on a busy moment measured 16 GB/s against 26-29
    BW="" COPYBW=""
    for rep in 1 2 3; do
      MEMBW_OUT=$("$OUT/membw")
      log "## bench/membw ($rep)"; log "$MEMBW_OUT"
      # rows: threads  read GB/s  copy GB/s
      r=$(awk -v t="$THREADS" '$1 == t && NF >= 3 {print $2}' <<<"$MEMBW_OUT")
      c=$(awk -v t="$THREADS" '$1 == t && NF >= 3 {print $3}' <<<"$MEMBW_OUT")
      [ -n "$r" ] && BW=$(maxf $BW $r)
      [ -n "$c" ] && COPYBW=$(maxf $COPYBW $c)
    done
    [ -n "$BW" ] && BW_SRC="bench/membw read bandwidth, best of 3, $THREADS threads (copy: $COPYBW GB/s)"
  fi
fi
if [ -z "$BW_SRC" ]; then
  BW=$(OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $PY - <<'EOF'
import numpy as np, time
a = np.ones(1 << 27)          # 1 GiB of float64
a.sum(); best = 1e9
for _ in range(3):
    t = time.perf_counter(); a.sum(); best = min(best, time.perf_counter() - t)
print(f"{a.nbytes / best / 1e9:.1f}")
EOF
)
  BW_SRC="numpy sum over 1 GiB, 1 thread (rough stand-in: bench/membw.c not available)"
fi
log "# bandwidth for the bound: $BW GB/s ($BW_SRC)"

# ---- models ----------------------------------------------------------------------
shape_args() {
  case $1 in
    s15m) echo "--dim 288 --hidden 768 --layers 6 --heads 6 --kv-heads 6 --vocab 32000" ;;
    s110m) echo "--dim 768 --hidden 2048 --layers 12 --heads 12 --kv-heads 12 --vocab 32000" ;;
  esac
}
for m in $MODELS; do
  for dt in $DTYPES; do
    d=$OUT/$m-$dt
    if [ ! -f "$d/model.safetensors" ] || [ ! -f "$d/tokenizer.json" ]; then
      log "# writing $d"
      if [ "$m" = gpt2 ]; then
        $PY tests/reference/gpt2_ref.py "$d" --dtype "$dt" --seed 1 --tokenizer "$FIX/tokenizers/gpt2/tokenizer.json" >/dev/null
      else
        # shellcheck disable=SC2046
        $PY tests/reference/hf_model.py "$d" $(shape_args "$m") --dtype "$dt" --std 0.02 --seed 1 \
          --tokenizer "$TOKJSON" >/dev/null
      fi
    fi
  done
done

# ---- runs ------------------------------------------------------------------------
rate() { grep -oP "$1:.*?\K[0-9.]+(?= tok/s)" | tail -1; }
for m in $MODELS; do
  for dt in $DTYPES; do
    d=$OUT/$m-$dt
    tdt=$(tr 'A-Z' 'a-z' <<<"$dt")
    ids=$("$LORAC" tokenize -m "$d" -p "$PROMPT" 2>/dev/null | tr -s ' \n' ' ' | sed 's/ $//') || ids=""
    if [ -z "$ids" ]; then
      log "# warning: lorac tokenize failed; torch gets 40 fixed ids instead of the prompt's"
      ids="1 $(seq -s ' ' 300 338)"
    fi
    log "## $m $dt: prompt of $(wc -w <<<"$ids") tokens"
    # REPS runs, the best prompt and decode rates kept, as torch_generate.py
    # does with its --reps (after a warm-up); a single cold run right after
    # the previous row's torch processes measured up to 40% below the next
    lp="" lg=""
    for rep in $(seq "$REPS"); do
      "$LORAC" generate -m "$d" -p "$PROMPT" --temp 0 --ignore-eos -n "$N" -t "$THREADS" >"$OUT/lorac-$m-$dt.txt" 2>"$OUT/lorac-$m-$dt.err" || {
        log "# lorac generate failed:"; tail -5 "$OUT/lorac-$m-$dt.err" >&2; break; }
      p=$(rate prompt <"$OUT/lorac-$m-$dt.err" || true)
      g=$(rate generate <"$OUT/lorac-$m-$dt.err" || true)
      [ -n "$p" ] && lp=$(maxf $lp $p)
      [ -n "$g" ] && lg=$(maxf $lg $g)
    done
    log "lorac: prompt ${lp:-?} tok/s, generate ${lg:-?} tok/s"
    "${OPENBLAS_ENV[@]}" $PY bench/torch_generate.py -m "$d" --ids "$ids" -n "$N" -t "$THREADS" --dtype "$tdt" \
      --check >"$OUT/torch-$m-$dt.txt" 2>&1 || { log "# torch failed:"; tail -5 "$OUT/torch-$m-$dt.txt" >&2; }
    tp=$(rate prompt <"$OUT/torch-$m-$dt.txt" || true)
    tg=$(rate generate <"$OUT/torch-$m-$dt.txt" || true)
    log "torch (OpenBLAS): prompt ${tp:-?} tok/s, generate ${tg:-?} tok/s; $(grep '^check' "$OUT/torch-$m-$dt.txt" || true)"
    np_=""; ng=""
    if [ "$TORCH_NETLIB" = 1 ] && [ "$dt" = F32 ]; then
      "${NETLIB_ENV[@]}" $PY bench/torch_generate.py -m "$d" --ids "$ids" -n "$N" -t "$THREADS" --dtype "$tdt" \
        --reps 1 >"$OUT/torch-netlib-$m-$dt.txt" 2>&1 || true
      np_=$(rate prompt <"$OUT/torch-netlib-$m-$dt.txt" || true)
      ng=$(rate generate <"$OUT/torch-netlib-$m-$dt.txt" || true)
      log "torch (netlib BLAS): prompt ${np_:-?} tok/s, generate ${ng:-?} tok/s"
    fi
    # same greedy continuation? decode torch's new ids with lorac and compare texts
    same="?"
    tids=$(sed -n 's/^ids: //p' "$OUT/torch-$m-$dt.txt")
    if [ -n "$tids" ] && [ -s "$OUT/lorac-$m-$dt.txt" ]; then
      ttext=$("$LORAC" tokenize -m "$d" --decode "$tids" 2>/dev/null || true)
      if [ -n "$ttext" ]; then
        same=$($PY - "$OUT/lorac-$m-$dt.txt" "$ttext" "$PROMPT" <<'EOF'
import sys
lorac = open(sys.argv[1], encoding="utf-8", errors="replace").read()
torch_text, prompt = sys.argv[2], sys.argv[3]
gen = lorac[len(prompt):] if lorac.startswith(prompt) else lorac
a, b = gen.strip(), torch_text.strip()
n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
print("yes" if n >= min(len(a), len(b)) and n > 0 else f"first {n} chars")
EOF
)
      fi
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$m" "$dt" "${lp:-}" "${tp:-}" "${lg:-}" "${tg:-}" "$np_" "$ng" "$same" >>"$RES"
  done
done

# ---- table -------------------------------------------------------------------------
$PY - "$RES" "$OUT" "$BW" "$BW_SRC" "$THREADS" "$N" "$REPS" "$OB_CORE" <<'EOF'
import json, os, struct, sys
res, out, bw, bw_src, threads, n, reps, ob_core = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7], sys.argv[8]
names = {"s15m": "TinyStories-15M shape", "s110m": "TinyStories-110M shape", "gpt2": "GPT-2 124M shape"}

def bytes_per_token(d):
    """Weight bytes one decode step reads: every tensor once, except the
    embedding table of which only one row is read (unless it is also the head)
    and GPT-2's position table (one row)."""
    c = json.load(open(os.path.join(d, "config.json")))
    tied = c.get("tie_word_embeddings", c.get("model_type") == "gpt2")
    with open(os.path.join(d, "model.safetensors"), "rb") as f:
        h = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    h.pop("__metadata__", None)
    tot = 0
    for k, v in h.items():
        nb = v["data_offsets"][1] - v["data_offsets"][0]
        if (k in ("model.embed_tokens.weight", "transformer.wte.weight") and not tied) or k == "transformer.wpe.weight":
            nb //= v["shape"][0]
        tot += nb
    return tot

def f(x):
    return float(x) if x else None

def s(x, fmt="{:.1f}"):
    return fmt.format(x) if x is not None else "n/a"

print()
print(f"lorac generate --temp 0 -t {threads} -n {n} --ignore-eos vs PyTorch {__import__('torch').__version__} "
      f"(KV cache, greedy, {threads} threads, OpenBLAS 0.3.21 with its {ob_core} kernels; "
      f"bf16 rows: bf16 weights and activations); lorac's best of {reps} runs, torch's of 3 after a warm-up.")
print(f"Bandwidth bound = {bw:.1f} GB/s ({bw_src}) / weight bytes per token.")
print()
print("| model | dtype | lorac prompt tok/s | torch prompt tok/s | lorac decode tok/s | torch decode tok/s "
      "| decode ratio | weights/token | bound tok/s | lorac % of bound | torch % of bound | same text |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
netlib = []
for line in open(res):
    m, dt, lp, tp, lg, tg, np_, ng, same = (line.rstrip("\n").split("\t") + [""] * 9)[:9]
    lp, tp, lg, tg, np_, ng = map(f, (lp, tp, lg, tg, np_, ng))
    bpt = bytes_per_token(os.path.join(out, f"{m}-{dt}"))
    bound = bw * 1e9 / bpt
    ratio = lg / tg if lg and tg else None
    print(f"| {names.get(m, m)} | {dt} | {s(lp)} | {s(tp)} | {s(lg)} | {s(tg)} | {s(ratio, '{:.2f}x')} "
          f"| {bpt / 1e6:.0f} MB | {bound:.1f} | {s(lg and 100 * lg / bound, '{:.0f}%')} "
          f"| {s(tg and 100 * tg / bound, '{:.0f}%')} | {same} |")
    if np_ or ng:
        netlib.append((m, dt, np_, ng))
print()
print("Over 100% of the bound: the weights (or part of them) stay in the CPU caches between tokens. "
      "The bound ignores KV-cache reads (a few % at these lengths). 'same text': lorac's greedy "
      "continuation against torch's, decoded by `lorac tokenize --decode`; bf16 rows differ in "
      "activation rounding (torch keeps activations in bf16), so an early divergence there is expected.")
if netlib:
    print()
    print("PyTorch with Debian's default netlib reference BLAS instead (what python3-torch uses without OpenBLAS):")
    print()
    print("| model | dtype | torch prompt tok/s | torch decode tok/s |")
    print("|---|---|---:|---:|")
    for m, dt, np_, ng in netlib:
        print(f"| {names.get(m, m)} | {dt} | {s(np_)} | {s(ng)} |")
EOF
