"""Cold start: a fresh process imports fusion and makes its first ConvTranspose and Conv calls.

    python benchmarks/cold_start.py

Runs the same child with a new, empty NUMBA_CACHE_DIR (the first-ever calls compile the kernels and fill the cache),
then three more times with the cache warm. The child imports fusion, runs a decoder-like ConvTranspose (the tiled
phase GEMM) and a Conv (the polyphase tiled GEMM), then the two other ConvTranspose paths and a BatchNorm. Reports
seconds from process start to the Conv's result, and to the last.
"""

import os
import subprocess
import sys
import tempfile

CHILD = """
import time
start = time.perf_counter()
import numpy as np
import fusion
x = np.ones((1, 64, 8, 8), np.float32)
fusion.conv_transpose(x, np.ones((64, 32, 3, 3), np.float32), strides=[2, 2])           # tiled phase GEMM path
fusion.conv(x, np.ones((64, 32, 3, 3), np.float32), group=2, strides=[2, 2])            # polyphase tiled GEMM path
print(time.perf_counter() - start)
fusion.conv_transpose(np.ones((1, 256, 8, 8), np.float32), np.ones((256, 2, 3, 3), np.float32),
                      strides=[2, 2])                                                   # GEMM + col2im path
fusion.conv_transpose(x, np.ones((64, 1, 3, 3), np.float32), group=64, strides=[2, 2])  # phase kernel path
fusion.batch_norm(x, np.ones(64), np.zeros(64), np.zeros(64), np.ones(64))
print(time.perf_counter() - start)
"""


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="fusion-numba-cache-") as cache:
        # passive pools, so that the GEMM + col2im path runs (and compiles) at any thread count (fusion.ops)
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, OMP_WAIT_POLICY="PASSIVE")
        runs = []
        for _ in range(4):
            out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
            runs.append([float(line) for line in out.stdout.split()[-2:]])
    for index, what in enumerate(("import + first ConvTranspose and Conv", "import + every path")):
        warm = sorted(run[index] for run in runs[1:])
        print(f"{what}: first-ever (compiles, fills the cache) {runs[0][index]:.2f} s; warm cache median "
              f"{warm[1]:.2f} s (min {warm[0]:.2f}, max {warm[2]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
