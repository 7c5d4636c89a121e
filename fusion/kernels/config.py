"""Numba flags in one place.

``cache=True`` keeps compiled code on disk between processes. No ``fastmath``: reassociation would still be
inside the error bound, but the kernels must stay reproducible run to run so that a sweep can compare them.
"""

SERIAL = {"cache": True, "nogil": True}
PARALLEL = {"cache": True, "nogil": True, "parallel": True}
