"""Golden definitions: ONNX ConvTranspose, Conv, BatchNormalization and Scale as plain float64 loops.

Plain on purpose, so that each can be read against the ONNX spec and trusted as the oracle for the fast kernels:
ConvTranspose and Conv walk (channel, tap) pairs one at a time and, for each, move a whole box of positions at once
(the batch and every position the tap reaches). One tap joins one input position to one output position, so each
output element receives its terms in (channel, tap) order, one multiply and one add each: the same float64 sum, term
by term, as a loop over single positions (``tests/test_reference.py`` holds that loop and compares them bit for
bit), at numpy speed. Inputs of any float dtype are computed in float64 and returned in float64.
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


def _tap_boxes(tap, geo, *, transposed):
    """``(input box, output box)``: the positions tap ``tap`` joins, as tuples of slices (None when it joins none).

    Along each axis, with ``off = t*dilation - pad_begin``: ConvTranspose's input ``i`` feeds output
    ``o = i*stride + off``, Conv's output ``o`` reads input ``i = o*stride + off``; both ends in range."""
    dense, strided = [], []
    for t, s, d, p, n_in, n_out in zip(tap, geo.strides, geo.dilations, geo.pads_begin, geo.input_shape,
                                          geo.output_shape):
        off = t * d - p
        # the strided side (output for ConvTranspose, input for Conv) runs from off + first*s by s
        n_dense, n_strided = (n_in, n_out) if transposed else (n_out, n_in)
        first = max(0, -(off // s))  # the smallest index whose strided partner is >= 0
        last = min(n_dense - 1, (n_strided - 1 - off) // s)
        if last < first:
            return None
        dense.append(slice(first, last + 1))
        strided.append(slice(off + first * s, off + last * s + 1, s))
    return (tuple(dense), tuple(strided)) if transposed else (tuple(strided), tuple(dense))


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
                    boxes = _tap_boxes(tap, geo, transposed=True)
                    if boxes is not None:
                        i, o = boxes
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
                boxes = _tap_boxes(tap, geo, transposed=False)
                if boxes is not None:
                    i, o = boxes
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
