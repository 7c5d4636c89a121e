"""Golden definitions: ONNX ConvTranspose, Conv, BatchNormalization and Scale as plain float64 loops.

Slow on purpose. Each function walks the definition in the ONNX spec index by index (vectorised only over
the batch axis), so that it can be read against the spec and trusted as the oracle for the fast kernels.
Inputs of any float dtype are computed in float64 and returned in float64.
"""

from __future__ import annotations

import itertools

import numpy as np

from fusion import attrs
from fusion.affine import ChannelAffine, batch_norm_affine, scale_affine
from fusion.errors import FusionInputError


def _as_float64(array, name: str, node: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind != "f":
        raise FusionInputError(f"{name} must be a float array, got dtype {array.dtype}", node=node)
    return array.astype(np.float64)


def _bias(b, channels: int, node: str) -> np.ndarray:
    if b is None:
        return np.zeros(channels)
    b = _as_float64(b, "b", node)
    if b.shape != (channels,):
        raise FusionInputError(f"bias has shape {b.shape}, expected ({channels},)", node=node)
    return b


def conv_transpose(x, w, b=None, *, group=1, strides=None, pads=None, dilations=None, output_padding=None,
                   output_shape=None, auto_pad="NOTSET", kernel_shape=None) -> np.ndarray:
    """ONNX ConvTranspose in float64.

    ``x: (N, C_in, *S)``, ``w: (C_in, C_out/group, *k)``, ``b: (C_out,)``. Input position ``i`` and tap
    ``t`` feed output position ``o = i*stride + t*dilation - pad_begin`` (dropped when outside the output),
    and input channel ``ci`` of group ``g`` feeds output channel ``oc = g*(C_out/group) + j`` with weight
    ``w[ci, j, t]``.
    """
    x = _as_float64(x, "x", "conv_transpose")
    w = _as_float64(w, "w", "conv_transpose")
    geo = attrs.resolve(x.shape, w.shape, transposed=True, group=group, strides=strides, pads=pads,
                        dilations=dilations, output_padding=output_padding, output_shape=output_shape,
                        auto_pad=auto_pad, kernel_shape=kernel_shape)
    c_in_g, c_out_g = geo.c_in // geo.group, geo.c_out // geo.group
    y = np.zeros((geo.batch, geo.c_out) + geo.output_shape)
    for g in range(geo.group):
        for ci in range(g * c_in_g, (g + 1) * c_in_g):
            for j in range(c_out_g):
                oc = g * c_out_g + j
                for tap in itertools.product(*(range(k) for k in geo.kernel_shape)):
                    for i in itertools.product(*(range(s) for s in geo.input_shape)):
                        o = tuple(i_a * s + t * d - p for i_a, t, s, d, p in
                                  zip(i, tap, geo.strides, geo.dilations, geo.pads_begin))
                        if all(0 <= o_a < n for o_a, n in zip(o, geo.output_shape)):
                            y[(slice(None), oc) + o] += x[(slice(None), ci) + i] * w[(ci, j) + tap]
    y += _bias(b, geo.c_out, "conv_transpose").reshape((1, -1) + (1,) * geo.rank)
    return y


def conv(x, w, b=None, *, group=1, strides=None, pads=None, dilations=None, auto_pad="NOTSET",
         kernel_shape=None) -> np.ndarray:
    """ONNX Conv in float64.

    ``x: (N, C_in, *S)``, ``w: (C_out, C_in/group, *k)``, ``b: (C_out,)``. Output position ``o`` reads input
    position ``i = o*stride + t*dilation - pad_begin`` through tap ``t`` (zero outside the input); output
    channel ``oc`` of group ``g = oc // (C_out/group)`` reads input channels ``g*(C_in/group) + ci``.
    """
    x = _as_float64(x, "x", "conv")
    w = _as_float64(w, "w", "conv")
    geo = attrs.resolve(x.shape, w.shape, transposed=False, group=group, strides=strides, pads=pads,
                        dilations=dilations, auto_pad=auto_pad, kernel_shape=kernel_shape)
    c_in_g, c_out_g = geo.c_in // geo.group, geo.c_out // geo.group
    y = np.zeros((geo.batch, geo.c_out) + geo.output_shape)
    for oc in range(geo.c_out):
        g = oc // c_out_g
        for ci in range(c_in_g):
            for tap in itertools.product(*(range(k) for k in geo.kernel_shape)):
                for o in itertools.product(*(range(s) for s in geo.output_shape)):
                    i = tuple(o_a * s + t * d - p for o_a, t, s, d, p in
                              zip(o, tap, geo.strides, geo.dilations, geo.pads_begin))
                    if all(0 <= i_a < n for i_a, n in zip(i, geo.input_shape)):
                        y[(slice(None), oc) + o] += x[(slice(None), g * c_in_g + ci) + i] * w[(oc, ci) + tap]
    y += _bias(b, geo.c_out, "conv").reshape((1, -1) + (1,) * geo.rank)
    return y


def channel_affine(x, affine: ChannelAffine, *, node: str) -> np.ndarray:
    """``y[:, c] = (x[:, c] - sub[c]) * mul[c] + add[c]`` in float64, for x of shape ``(N, C, *S)``."""
    x = _as_float64(x, "x", node)
    if x.ndim < 2 or x.shape[1] != affine.channels:
        raise FusionInputError(f"input shape {x.shape} does not have {affine.channels} channels on axis 1",
                               node=node)
    y = np.empty_like(x)
    for c in range(affine.channels):
        y[:, c] = (x[:, c] - affine.sub[c]) * affine.mul[c] + affine.add[c]
    return y


def batch_norm(x, scale, bias, mean, var, epsilon=1e-5) -> np.ndarray:
    """Inference BatchNormalization: ``y = scale * (x - mean) / sqrt(var + epsilon) + bias`` per channel."""
    channels = np.asarray(x).shape[1] if np.ndim(x) >= 2 else None
    return channel_affine(x, batch_norm_affine(scale, bias, mean, var, epsilon, channels=channels,
                                               node="batch_norm"), node="batch_norm")


def scale(x, scale, bias=None) -> np.ndarray:
    """Per-channel Scale: ``y = scale[c] * x + bias[c]`` (bias 0 when None)."""
    channels = np.asarray(x).shape[1] if np.ndim(x) >= 2 else None
    return channel_affine(x, scale_affine(scale, bias, channels=channels, node="scale"), node="scale")
