"""Known-wrong folds, kept to show the defects and to prove that checks catch them.

Each function reproduces a published mistake on the ConvTranspose layout ``(C_in, C_out/group, *k)``; for
``group == 1`` each equals the correct fold, which is why the mistakes shipped.
"""

from __future__ import annotations

import numpy as np

from fusion.affine import ChannelAffine
from fusion.fold import output_channels


def fold_mnn_legacy(w, b, affine: ChannelAffine, *, group: int) -> tuple[np.ndarray, np.ndarray]:
    """MNN <= 2.9.1 ``MergeBNToConvolution``/``MergeScaleToConvolution`` on a Deconvolution.

    It read the flat weight as ``(C_in/group, C_out, *k)`` (one group) and scaled axis 1 by ``mul[0:C_out]``:
    for ``group > 1`` most elements get the scale of another output channel. The bias was folded right.
    """
    w = np.asarray(w)
    c_out = output_channels(w.shape, group=group, transposed=True)
    spatial = w.shape[2:]
    flat = w.astype(np.float64).reshape((w.shape[0] // group, c_out) + spatial)
    w_wrong = (flat * affine.mul.reshape((1, c_out) + (1,) * len(spatial))).reshape(w.shape)
    b64 = np.zeros(c_out) if b is None else np.asarray(b, np.float64)
    return w_wrong.astype(w.dtype), ((b64 - affine.sub) * affine.mul + affine.add).astype(w.dtype)


def fold_pytorch_transpose(w, b, affine: ChannelAffine) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch ``fuse_conv_bn_weights(transpose=True)``: multiplies by ``mul.reshape([1, -1, 1, ...])``.

    With ``group > 1`` the ``(1, C_out, 1...)`` vector meets a weight whose axis 1 is ``C_out/group``: numpy
    broadcasting raises, or (``C_out/group == 1``) silently widens the weight to ``(C_in, C_out, *k)``.
    """
    w = np.asarray(w)
    vector = affine.mul.reshape((1, -1) + (1,) * (w.ndim - 2))
    w_wrong = w.astype(np.float64) * vector
    b64 = np.zeros(affine.channels) if b is None else np.asarray(b, np.float64)
    return w_wrong.astype(w.dtype), ((b64 - affine.sub) * affine.mul + affine.add).astype(w.dtype)
