"""Per-channel affine kernel: ``y[n, c, :] = (x[n, c, :] - sub[c]) * mul[c] + add[c]``, computed in float64."""

import numpy as np

from fusion.kernels.launch import tasks


def channel_affine_3d(x, mul, sub, add, y):
    """``x, y: (n, c, length)``; ``mul, sub, add: (c,)`` float64; each element is rounded once, into ``y``."""
    _affine_loop(x.shape[0] * x.shape[1], x, mul, sub, add, y)


@tasks
def _affine_loop(first, last, x, mul, sub, add, y):
    """Channels ``first <= n*channels + c < last`` of ``channel_affine_3d``."""
    channels, length = x.shape[1], x.shape[2]
    for task in range(first, last):
        n, c = task // channels, task % channels
        for k in range(length):
            y[n, c, k] = (np.float64(x[n, c, k]) - sub[c]) * mul[c] + add[c]
