"""Numba kernels. Rules: ``@njit`` for serial code, no defaults, no ``None``, tuples of ints, the caller allocates.
A parallel loop is a body over task indices (``fusion.kernels.launch.tasks``) behind a plain Python function that
plans it, with the same name and arguments a caller sees; no ``prange``.

Every convolution kernel works on 3 spatial axes; ``fusion.ops`` lifts 1-D and 2-D problems by adding unit
axes, so one kernel serves every rank.
"""
