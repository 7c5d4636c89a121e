"""Soak the Numba kernels against the float64 golden loops: many random configurations, every one within the bound.

    python benchmarks/soak.py [--count 10000] [--seed 0]

Configuration ``i`` is drawn from ``fusion.graph.space`` (the tests' limits: every attribute, ranks 1-3, grouped
and depthwise) with generator ``(seed, i)``: Conv or ConvTranspose, with or without bias, half of the ConvTransposes
with a BatchNormalization epilogue (``conv_transpose_channel_affine``). Each is computed by the kernels in float32
and float64 and by ``fusion.reference`` in float64; the float32 result must lie within ``site_bound`` of the exact
one, the float64 result within the float64 bound. Prints the counts; exits 1 on any configuration out of bound.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import numpy as np

import fusion
from fusion import reference
from fusion.affine import batch_norm_affine
from fusion.bounds import site_bound
from fusion.compare import compare
from fusion.errors import FusionInputError
from fusion.fold import output_channels
from fusion.graph import space


def configuration(seed: int, index: int):
    """``(rng, transposed, config)`` for configuration ``index``; invalid draws are redrawn."""
    rng = np.random.default_rng((seed, index))
    while True:
        transposed = bool(rng.integers(2))
        try:
            config = space.draw(space.NumpyChoose(rng), space.TESTS, transposed=transposed,
                                rank=int(rng.integers(1, 4)))
        except FusionInputError:
            continue
        return rng, transposed, config


def soak_one(seed: int, index: int) -> tuple[str, bool, str]:
    """Judge configuration ``index``: its kind, whether every path was within its bound, and a summary."""
    rng, transposed, config = configuration(seed, index)
    attributes = config["attributes"]
    x = rng.standard_normal(config["x_shape"])
    w = rng.standard_normal(config["w_shape"])
    channels = output_channels(config["w_shape"], group=attributes["group"], transposed=transposed)
    b = rng.standard_normal(channels) if rng.integers(2) else None
    affine = None
    if transposed and rng.integers(2):
        affine = batch_norm_affine(rng.uniform(0.5, 2, channels), rng.standard_normal(channels),
                                   rng.standard_normal(channels), rng.uniform(0.2, 2, channels), 1e-5)
    golden = reference.conv_transpose if transposed else reference.conv
    kernel = fusion.conv_transpose if transposed else fusion.conv
    kind = ("ConvTranspose" if transposed else "Conv") + f"{len(config['w_shape']) - 2}d" + \
        (" depthwise" if attributes["group"] == x.shape[1] > 1 else " grouped" if attributes["group"] > 1 else "") + \
        (" +BN epilogue" if affine else "")
    worst = []
    for dtype in (np.float32, np.float64):
        xd, wd, bd = x.astype(dtype), w.astype(dtype), None if b is None else b.astype(dtype)
        exact = golden(xd, wd, bd, **attributes)
        if affine is None:
            actual = kernel(xd, wd, bd, **attributes)
        else:
            exact = reference.channel_affine(exact, affine, node="soak")
            actual = fusion.conv_transpose_channel_affine(xd, wd, bd, affine, **attributes)
        bound = site_bound(xd, wd, bd, affine, transposed=transposed, dtype=dtype, **attributes)
        result = compare(actual, exact, bound=bound)
        if not result.passed:
            return kind, False, f"{np.dtype(dtype).name}: {result.summary()}; {config}"
        worst.append(result.bound_ratio_max or 0.0)
    return kind, True, f"{max(worst):.3g} x bound"


def soak(count: int, seed: int = 0) -> dict:
    """Run ``count`` configurations; counts per kind, failures, the largest bound ratio and the time."""
    started = time.perf_counter()
    kinds, failures, ratio = Counter(), [], 0.0
    for index in range(count):
        kind, passed, summary = soak_one(seed, index)
        kinds[kind] += 1
        if passed:
            ratio = max(ratio, float(summary.split()[0]))
        else:
            failures.append(f"configuration {index} ({kind}): {summary}")
    return {"count": count, "seed": seed, "kinds": dict(kinds), "failures": failures, "worst_ratio": ratio,
            "seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = soak(args.count, args.seed)
    print(f"soak: {result['count']} configurations (seed {result['seed']}) in {result['seconds']:.0f} s; "
          f"{len(result['failures'])} out of bound; largest error {result['worst_ratio']:.3g} x the bound\n")
    print("| kind | configurations |\n|---|---|")
    for kind, n in sorted(result["kinds"].items()):
        print(f"| {kind} | {n} |")
    for line in result["failures"][:20]:
        print("OUT OF BOUND", line)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
