# bench/openblas_env.sh — sourced by the bench scripts that run PyTorch.
# Sets OB_CORETYPE, the OpenBLAS kernel set torch should use on this CPU:
# SkylakeX where the CPU has AVX-512 (OpenBLAS 0.3.21 takes the newer Intel
# parts for Prescott and runs its slowest kernels), else empty, i.e.
# OpenBLAS's own detection (right on AVX2 CPUs: AMD Zen, Haswell and later;
# SkylakeX there dies with an illegal instruction). OB_ENV holds the
# variables for `env`.
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then OB_CORETYPE=SkylakeX; else OB_CORETYPE=""; fi
OB_ENV=(LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp)
[ -n "$OB_CORETYPE" ] && OB_ENV+=(OPENBLAS_CORETYPE="$OB_CORETYPE")
# the core OpenBLAS runs with these settings, as it reports it
ob_core() {
  env "${OB_ENV[@]}" OPENBLAS_VERBOSE=2 /usr/bin/python3 -c "import torch; torch.mm(torch.ones(64, 64), torch.ones(64, 64))" 2>&1 |
    sed -n 's/^Core: //p' | head -1
}
