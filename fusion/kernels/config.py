"""Numba flags in one place.

``cache=True`` keeps compiled code on disk between processes. No ``fastmath``: reassociation would still be
inside the error bound, but the kernels must stay reproducible run to run so that a sweep can compare them.

Numba wraps negative indices, and that per-element check keeps LLVM from vectorizing an inner loop. The kernels
compute indices that are never negative (``valid_range`` clips them), so inner loops index with ``uintp(i)``
(benchmarks/NOTES.md, "Indexing").
"""

from numpy import uintp  # noqa: F401  (re-exported for the kernels)

SERIAL = {"cache": True, "nogil": True}
