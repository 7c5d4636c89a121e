"""Per-channel affine kernel: ``y[n, c, :] = (x[n, c, :] - sub[c]) * mul[c] + add[c]``, computed in float64."""

import numpy as np
from numba import njit, prange

from fusion.kernels.config import PARALLEL


@njit(**PARALLEL)
def channel_affine_3d(x, mul, sub, add, y):
    """``x, y: (n, c, length)``; ``mul, sub, add: (c,)`` float64; each element is rounded once, into ``y``."""
    n_batch, channels, length = x.shape
    for task in prange(n_batch * channels):
        n, c = task // channels, task % channels
        for k in range(length):
            y[n, c, k] = (np.float64(x[n, c, k]) - sub[c]) * mul[c] + add[c]
