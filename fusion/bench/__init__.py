"""``fusion bench``: fused vs unfused ConvTranspose + BatchNormalization across this library, onnxruntime and MNN.

``suite`` (the layers), ``peak`` (this CPU's measured float32 peak), ``pools`` (quiet thread pools), ``harness`` (one
interleaved run of every path), ``render`` (tables, ratios, plot). The MNN timing child is ``engines.mnn_timing``.
"""

from fusion.bench.harness import ALONE, ALONE_PATHS, MORE_ROUNDS, environment, run
from fusion.bench.peak import measure_peak
from fusion.bench.pools import QUIET_POOLS, pools_are_quiet, rerun_with_quiet_pools
from fusion.bench.render import markdown, plot, ratios, write
from fusion.bench.suite import SUITE, Shape

__all__ = ["ALONE", "ALONE_PATHS", "MORE_ROUNDS", "QUIET_POOLS", "SUITE", "Shape", "environment", "markdown",
           "measure_peak", "plot", "pools_are_quiet", "ratios", "rerun_with_quiet_pools", "run", "write"]
