"""This CPU's float32 peak, measured: independent fused multiply-add chains on every thread."""

from __future__ import annotations

import time

import numpy as np
import numba


@numba.njit(fastmath=True, cache=True)
def _fma_chains(rounds, b, c):  # pragma: no cover - jitted
    # 64 accumulators with a literal trip count: LLVM keeps them in 8 AVX2 registers, 8 independent FMA chains,
    # enough to cover the FMA latency on both pipes
    acc = np.ones(64, np.float32)
    for _ in range(rounds):
        for i in range(64):
            acc[i] = acc[i] * b + c
    return acc.sum()


@numba.njit(parallel=True, cache=True)
def _fma_threads(threads, rounds, b, c):  # pragma: no cover - jitted
    total = np.zeros(threads, np.float32)
    for t in numba.prange(threads):
        total[t] = _fma_chains(rounds, b, c)
    return total


def measure_peak(threads: int) -> float:
    """float32 FLOP/s of ``threads`` threads each running 8 independent 8-wide FMA chains (best of 3)."""
    b, c = np.float32(0.999999), np.float32(1e-6)
    numba.set_num_threads(threads)
    _fma_threads(threads, 10, b, c)
    rounds = 3_000_000
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        _fma_threads(threads, rounds, b, c)
        best = min(best, time.perf_counter() - start)
    return 2.0 * 64 * rounds * threads / best
