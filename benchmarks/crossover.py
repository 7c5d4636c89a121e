"""Where ConvTranspose and Conv should switch kernels, as the input channels per group grow.

    python benchmarks/crossover.py [--repetitions 15] [--threads 1,2] [--ops ConvTranspose,Conv]

Times the float32 paths of ``fusion.ops`` on the same layers, interleaved. ConvTranspose: the phase kernel, the tiled
phase GEMM and GEMM + col2im (2-D: 256 -> 256 channels, k4 s2 p1, 32^2; 3-D: 64 -> 64 channels, k3 s2 p1, 12^3).
Conv: the direct kernel, the tiled GEMM on the polyphase split and im2col + GEMM (the same layers mirrored, and a
2-D 3x3 stride-1 layer). Prints medians, min and max, and each path's time over the fastest; the thresholds
``ops.CONV_TRANSPOSE_TILES_MIN_CHANNELS``, ``ops.CONV_TRANSPOSE_GEMM_MIN_CHANNELS``, ``ops.CONV_TILES_MIN_CHANNELS``,
``ops.CONV_GEMM_MIN_CHANNELS`` and ``ops.TILES_MIN_POSITIONS`` are chosen from these tables.
"""

import argparse
import os
import sys
import time

# fusion.bench.QUIET_POOLS, set before numpy and Numba load their pools: the paths alternate, and a pool that
# spins after its run steals the cores from the other
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from fusion import ops

LAYERS = {  # op: [(label, x shape, channels per group, kernel, strides, pads)]
    "ConvTranspose": [
        *[(f"2-D 256 ch, {c} per group", (1, 256, 32, 32), c, (4, 4), [2, 2], [1] * 4)
          for c in (4, 8, 16, 32, 64, 128, 256)],
        *[(f"3-D 64 ch, {c} per group", (1, 64, 12, 12, 12), c, (3, 3, 3), [2] * 3, [1] * 6)
          for c in (4, 8, 16, 32, 64)]],
    "Conv": [
        *[(f"2-D 256 ch k4 s2, {c} per group", (1, 256, 64, 64), c, (4, 4), [2, 2], [1] * 4)
          for c in (1, 2, 4, 8, 16, 64, 256)],
        *[(f"2-D {c} ch k3 s1, {c} per group", (1, c, 16, 16), c, (3, 3), [1, 1], [1] * 4) for c in (512, 1024)],
        *[(f"2-D 256 ch k3 s1, {c} per group", (1, 256, 32, 32), c, (3, 3), [1, 1], [1] * 4)
          for c in (1, 4, 16, 64, 256)],
        *[(f"3-D 64 ch k3 s2, {c} per group", (1, 64, 24, 24, 24), c, (3, 3, 3), [2] * 3, [1] * 6)
          for c in (1, 4, 8, 16, 64)]],
}
# Per op, each path's column name and the kernel that ``ops._forced_kernel`` makes run
PATHS = {
    "ConvTranspose": {"phases": "direct", "tiles": "tiles", "GEMM": "gemm"},
    "Conv": {"direct": "direct", "tiles": "tiles", "GEMM": "gemm"},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=15)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--ops", default="ConvTranspose,Conv")
    args = parser.parse_args()
    for op in args.ops.split(","):
        table(op, args.repetitions, [int(t) for t in args.threads.split(",")])
    return 0


def table(op: str, repetitions: int, thread_counts: list[int]) -> None:
    rng = np.random.default_rng(0)
    paths = PATHS[op]
    function = ops.conv_transpose if op == "ConvTranspose" else ops.conv
    print(f"\n{op}\n\n| layer | threads | " + " | ".join(f"{name} median ms (min-max)" for name in paths) + " | "
          + " | ".join(f"{name} / fastest" for name in paths) + " |")
    print("|---|---|" + "---|" * (2 * len(paths)))
    for threads in thread_counts:
        numba.set_num_threads(threads)
        with threadpool_limits(threads, user_api="blas"):
            for label, shape, per_group, kernel, strides, pads in LAYERS[op]:
                channels = shape[1]
                x = rng.standard_normal(shape).astype(np.float32)
                w = rng.standard_normal((channels, per_group) + kernel).astype(np.float32)
                attributes = dict(group=channels // per_group, strides=strides, pads=pads)
                samples = {name: [] for name in paths}
                for repetition in range(repetitions + 1):
                    for name in (list(paths) if repetition % 2 else list(paths)[::-1]):  # alternate the order
                        with ops._forced_kernel(op, paths[name]):
                            start = time.perf_counter()
                            function(x, w, **attributes)
                            elapsed = time.perf_counter() - start
                        if repetition:  # the first round compiles and warms up
                            samples[name].append(elapsed)
                cells = [f"{1e3 * np.median(s):.2f} ({1e3 * min(s):.2f}-{1e3 * max(s):.2f})" for s in samples.values()]
                fastest = min(np.median(s) for s in samples.values())
                ratios = [f"{np.median(s) / fastest:.2f}" for s in samples.values()]
                print(f"| {label} | {threads} | " + " | ".join(cells + ratios) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
