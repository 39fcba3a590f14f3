#!/usr/bin/env python3
"""bench/torch_matmul.py — PyTorch's GFLOP/s on the products a training step
runs, the peer of `bench/out/bench_matmul --training`: for each (N, K), the
forward x·wᵀ, dx = dout·w and dw = doutᵀ·x on T rows, 2 threads, f32, best
of 3 rounds of at least 0.4 s. Run it with Debian's OpenBLAS, as the
training benchmark does:
  LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp OPENBLAS_CORETYPE=SkylakeX \\
    /usr/bin/python3 bench/torch_matmul.py [1b|110m|15m]
(OPENBLAS_CORETYPE only on AVX-512 CPUs, as bench/openblas_env.sh sets it).
Not a test."""
import sys
import time

import torch

MODELS = {
    "1b": (512, [(2048, 2048), (5632, 2048), (2048, 5632), (256, 2048)]),
    "110m": (1024, [(768, 768), (2048, 768), (768, 2048), (32000, 768)]),
    "15m": (1024, [(288, 288), (768, 288), (288, 768), (32000, 288)]),
}


def gflops(f, flop):
    best = float("inf")
    for _ in range(3):
        f()
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < 0.4:
            f()
            n += 1
        best = min(best, (time.perf_counter() - t) / n)
    return flop / best / 1e9


def main():
    torch.set_num_threads(2)
    T, shapes = MODELS[sys.argv[1] if len(sys.argv) > 1 else "1b"]
    print("torch %s, T = %d, F32, 2 threads" % (torch.__version__, T))
    print("%-12s %9s %9s %9s" % ("N x K", "fwd GF/s", "dx GF/s", "dw GF/s"))
    for N, K in shapes:
        x, w, d = torch.randn(T, K), torch.randn(N, K), torch.randn(T, N)
        flop = 2.0 * T * N * K
        print("%5dx%-6d %9.1f %9.1f %9.1f" % (N, K, gflops(lambda: x @ w.t(), flop),
                                             gflops(lambda: d @ w, flop), gflops(lambda: d.t() @ x, flop)))


if __name__ == "__main__":
    main()
