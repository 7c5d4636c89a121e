"""fusion's own speed in a default process against one whose thread pools sleep when idle.

    python benchmarks/default_environment.py [--pairs 3] [--rounds 25]

Runs the same child in alternating pairs of processes, one with the environment as it is, one with
``fusion.bench.QUIET_POOLS`` (what ``benchmarks/run.py`` sets for its interleaved run of several runtimes). Each child
times ``fusion.conv_transpose`` on the suite's layers and a Conv, rounds of one call each in turn, at 1 and 2 threads,
and prints each layer's median in ms. Reports, per layer and thread count, the median over the processes of each
kind, and their ratio (default / quiet).
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from fusion.bench import QUIET_POOLS

CHILD = """
import json, sys, time
import numba, numpy as np
import fusion
from fusion.bench import SUITE
rng = np.random.default_rng(0)
layers = {}
for shape in SUITE:
    spec = shape.spec()
    x = rng.standard_normal(spec.input_shape, np.float32)
    w = rng.standard_normal((shape.c_in, shape.c_out // shape.group) + (shape.kernel,) * shape.rank, np.float32)
    layers[spec.name] = (lambda x=x, w=w, shape=shape, a=dict(spec.attributes): fusion.conv_transpose(
        x, w, group=shape.group, **a))
x = rng.standard_normal((1, 128, 64, 64), np.float32)
w = rng.standard_normal((256, 128, 4, 4), np.float32)
layers["Conv 128->256 k4 s2 p1 64^2"] = lambda: fusion.conv(x, w, strides=[2, 2], pads=[1] * 4)
out = {}
for threads in (1, 2):
    numba.set_num_threads(threads)
    times = {name: [] for name in layers}
    for call in layers.values():
        call()
    for _ in range(int(sys.argv[1])):
        for name, call in layers.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    out[threads] = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
print(json.dumps(out))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=25)
    args = parser.parse_args()
    default = {name: value for name, value in os.environ.items() if name not in QUIET_POOLS}
    kinds = {"default": default, "quiet": {**default, **QUIET_POOLS}}
    runs = {kind: [] for kind in kinds}
    for pair in range(args.pairs):
        order = list(kinds) if pair % 2 == 0 else list(kinds)[::-1]  # each kind first in every other pair
        for kind in order:
            child = subprocess.run([sys.executable, "-c", CHILD, str(args.rounds)], env=kinds[kind],
                                   capture_output=True, text=True, check=True)
            runs[kind].append(json.loads(child.stdout))
    print("| layer | threads | default environment ms | quiet pools ms | default / quiet |")
    print("|---|---|---|---|---|")
    for threads in ("1", "2"):
        for name in runs["default"][0][threads]:
            medians = {kind: float(np.median([run[threads][name] for run in runs[kind]])) for kind in kinds}
            print(f"| {name} | {threads} | {medians['default']:.3f} | {medians['quiet']:.3f} | "
                  f"{medians['default'] / medians['quiet']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
