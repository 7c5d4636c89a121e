"""Numba kernels. Rules: ``@njit`` only, no defaults, no ``None``, tuples of ints, the caller allocates.

Every convolution kernel works on 3 spatial axes; ``fusion.ops`` lifts 1-D and 2-D problems by adding unit
axes, so one kernel serves every rank.
"""
