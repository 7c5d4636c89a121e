"""Thread pools that wait quietly: the benchmark entry points re-run themselves with them."""

from __future__ import annotations

import os
import subprocess
import sys


# Thread pools that spin-wait after their work steal the cores from whichever path runs next in an interleaved run
# (benchmarks/NOTES.md, "Spinning pools"). Both settings are read when
# the pools' runtimes load, before any benchmark code runs, so the benchmark entry points re-run themselves with them.
QUIET_POOLS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}


def pools_are_quiet() -> bool:
    return all(os.environ.get(name) == value for name, value in QUIET_POOLS.items())


def rerun_with_quiet_pools(argv: list[str]) -> int:
    """Run ``python *argv`` again with ``QUIET_POOLS`` in its environment; returns its exit code."""
    return subprocess.call([sys.executable, *argv], env={**os.environ, **QUIET_POOLS})
