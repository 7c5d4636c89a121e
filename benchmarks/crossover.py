"""Where ConvTranspose should switch from the phase kernel to the tiled phase GEMM, and from that to GEMM + col2im.

    python benchmarks/crossover.py [--repetitions 15] [--threads 1,2]

Times the three float32 ConvTranspose paths of ``fusion.ops`` on the same layers, interleaved, while the input
channels per group grow (2-D: 256 -> 256 channels, k4 s2 p1, 32^2; 3-D: 64 -> 64 channels, k3 s2 p1, 12^3). Prints
medians, min and max, and each path's time over the fastest; ``ops.CONV_TRANSPOSE_TILES_MIN_CHANNELS`` and
``ops.CONV_TRANSPOSE_GEMM_MIN_CHANNELS`` are chosen from this table.
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

LAYERS = [  # (label, x shape, channels per group, kernel, strides, pads)
    *[(f"2-D 256 ch, {c} per group", (1, 256, 32, 32), c, (4, 4), [2, 2], [1] * 4)
      for c in (4, 8, 16, 32, 64, 128, 256)],
    *[(f"3-D 64 ch, {c} per group", (1, 64, 12, 12, 12), c, (3, 3, 3), [2] * 3, [1] * 6) for c in (4, 8, 16, 32, 64)],
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=15)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    # (CONV_TRANSPOSE_TILES_MIN_CHANNELS, CONV_TRANSPOSE_GEMM_MIN_CHANNELS) that force each path
    paths = {"phases": (10**9, 10**9), "tiles": (1, 10**9), "GEMM": (1, 1)}
    print("| layer | threads | " + " | ".join(f"{name} median ms (min-max)" for name in paths) + " | "
          + " | ".join(f"{name} / fastest" for name in paths) + " |")
    print("|---|---|" + "---|" * (2 * len(paths)))
    for threads in (int(t) for t in args.threads.split(",")):
        numba.set_num_threads(threads)
        with threadpool_limits(threads, user_api="blas"):
            for label, shape, per_group, kernel, strides, pads in LAYERS:
                channels = shape[1]
                x = rng.standard_normal(shape).astype(np.float32)
                w = rng.standard_normal((channels, per_group) + kernel).astype(np.float32)
                attributes = dict(group=channels // per_group, strides=strides, pads=pads)
                samples = {name: [] for name in paths}
                for repetition in range(args.repetitions + 1):
                    for name in (list(paths) if repetition % 2 else list(paths)[::-1]):  # alternate the order
                        ops.CONV_TRANSPOSE_TILES_MIN_CHANNELS, ops.CONV_TRANSPOSE_GEMM_MIN_CHANNELS = paths[name]
                        start = time.perf_counter()
                        ops.conv_transpose(x, w, **attributes)
                        if repetition:  # the first round compiles and warms up
                            samples[name].append(time.perf_counter() - start)
                cells = [f"{1e3 * np.median(s):.2f} ({1e3 * min(s):.2f}-{1e3 * max(s):.2f})" for s in samples.values()]
                fastest = min(np.median(s) for s in samples.values())
                ratios = [f"{np.median(s) / fastest:.2f}" for s in samples.values()]
                print(f"| {label} | {threads} | " + " | ".join(cells + ratios) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
