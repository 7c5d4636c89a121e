"""The tiled kernel's micro-kernel alone: float32 GFLOP/s of each tile shape, all data in cache, one thread.

    python benchmarks/microkernel.py [--repetitions 7]

Each shape (rows x vectors of the CPU's width: 8 floats with AVX, 16 with AVX-512) computes a 256-deep multiply-add
for 36-40 output rows and 1072 positions, its input rows at offsets that are not multiples of a vector (as in
``fusion.kernels.tiles``). Prints the best and median of the repetitions next to the measured float32 peak;
``microkernel.MR`` and ``VECTORS_PER_ROW`` are chosen from this table.
"""

import argparse
import sys
import time

import numba
import numpy as np
from numba import njit

from fusion.bench import measure_peak
from fusion.kernels.microkernel import VECTOR_BYTES, tile_intrinsic

SHAPES = [(6, 2), (5, 2), (4, 3), (4, 2), (3, 2), (2, 2), (8, 1)]
DEPTH = 256
POSITIONS = 1072
ROW_STRIDE = 1201  # input rows one float past a multiple of a vector apart


def driver(tile, rows: int, width: int):
    @njit
    def run(c, a, a_offsets, b, b_offsets, channels, repetitions):
        for _ in range(repetitions):
            for p in range(0, POSITIONS, width):
                for first in range(0, channels, rows):
                    tile(c, first * POSITIONS + p, POSITIONS, a, first * DEPTH, a_offsets, DEPTH, b, p, b_offsets, 0,
                         DEPTH, False)
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=7)
    args = parser.parse_args()
    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    b = rng.standard_normal(DEPTH * ROW_STRIDE + POSITIONS).astype(np.float32)
    b_offsets = np.arange(DEPTH, dtype=np.int64) * ROW_STRIDE
    a_offsets = np.arange(DEPTH, dtype=np.int64)  # a: (channels, DEPTH), as the weights are read in place
    print(f"float32 peak, one thread: {measure_peak(1) / 1e9:.1f} GFLOP/s")
    print("| rows x vectors | GFLOP/s best | GFLOP/s median |")
    print("|---|---|---|")
    for rows, vectors in SHAPES:
        width = vectors * VECTOR_BYTES // 4
        channels = rows * (36 // rows + (1 if 36 % rows else 0))
        a = rng.standard_normal(channels * DEPTH).astype(np.float32)
        c = np.zeros(channels * POSITIONS + width, np.float32)
        run = driver(tile_intrinsic(rows, vectors), rows, width)
        run(c, a, a_offsets, b, b_offsets, channels, 1)  # compiles
        repetitions = 100
        times = []
        for _ in range(args.repetitions):
            start = time.perf_counter()
            run(c, a, a_offsets, b, b_offsets, channels, repetitions)
            times.append(time.perf_counter() - start)
        computed = -(-POSITIONS // width) * width  # whole tiles
        flops = 2.0 * DEPTH * channels * computed * repetitions
        print(f"| {rows} x {vectors} | {flops / min(times) / 1e9:.1f} | {flops / np.median(times) / 1e9:.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
