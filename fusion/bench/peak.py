"""This CPU's float32 peak, measured: independent fused multiply-add chains on every thread, in the widest vectors
the CPU has (zmm where AVX-512 is present, else ymm)."""

from __future__ import annotations

import time

import llvmlite.binding as llvm
import numba
import numpy as np


def _fma_kernel(accumulators: int):
    """A jitted ``kernel(threads, rounds, b, c)``: every thread runs ``accumulators`` float32 FMA chains. The count
    is a literal for LLVM, which keeps them in registers: 64 fill 8 ymm, 128 fill 8 zmm, 8 independent vector
    chains either way, enough to cover the FMA latency on both pipes (4 zmm chains would measure latency)."""

    # not cached: Numba's cache would key both closures by their shared source and could hand one the other's code
    @numba.njit(fastmath=True)
    def chains(rounds, b, c):  # pragma: no cover - jitted
        acc = np.ones(accumulators, np.float32)
        for _ in range(rounds):
            for i in range(accumulators):
                acc[i] = acc[i] * b + c
        return acc.sum()

    @numba.njit(parallel=True)
    def threads_of(threads, rounds, b, c):  # pragma: no cover - jitted
        total = np.zeros(threads, np.float32)
        for t in numba.prange(threads):
            total[t] = chains(rounds, b, c)
        return total

    threads_of.chains = chains
    return threads_of


KERNELS = {256: (_fma_kernel(64), 64), 512: (_fma_kernel(128), 128)}  # compiled at first use


def vector_bits() -> int:
    """The widest float32 vectors LLVM will use on this CPU: 512 with AVX-512F, else 256."""
    return 512 if "+avx512f" in llvm.get_host_cpu_features().flatten() else 256


def measure_peak(threads: int, bits: int | None = None) -> float:
    """float32 FLOP/s of ``threads`` threads each running 8 independent FMA chains ``bits`` wide (default: the
    widest this CPU has; best of 3)."""
    bits = bits or vector_bits()
    kernel, per_round = KERNELS[512 if bits == 512 else 256]
    b, c = np.float32(0.999999), np.float32(1e-6)
    numba.set_num_threads(threads)
    kernel(threads, 10, b, c)
    rounds = 3_000_000
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        kernel(threads, rounds, b, c)
        best = min(best, time.perf_counter() - start)
    return 2.0 * per_round * rounds * threads / best
