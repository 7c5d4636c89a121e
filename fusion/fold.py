r"""Folding a per-channel affine map (BatchNormalization or Scale) into a Conv or ConvTranspose.

After the convolution, ``y[oc] = (conv(x, w)[oc] + b[oc] - sub[oc]) * mul[oc] + add[oc]`` equals
``conv(x, w')[oc] + b'[oc]`` with

.. math::

    w'[\ldots] = w[\ldots] \cdot mul[oc], \qquad b'[oc] = (b[oc] - sub[oc]) \cdot mul[oc] + add[oc]

where the weight element that feeds output channel ``oc`` depends on the layout:

- Conv ``w: (C_out, C_in/group, *k)``: ``oc`` is axis 0.
- ConvTranspose ``w: (C_in, C_out/group, *k)``: ``w[ci, j]`` with ``ci`` in group ``g`` feeds
  ``oc = g*(C_out/group) + j``. Regroup as ``(group, C_in/group, C_out/group, *k)`` and scale axis 2.

Math runs in float64; results are cast to the dtype of ``w``.
"""

from __future__ import annotations

import numpy as np

from fusion.affine import ChannelAffine, batch_norm_affine, scale_affine
from fusion.errors import FusionInputError, UnsafeFoldError


def _weight(w, node: str) -> np.ndarray:
    w = np.asarray(w)
    if w.dtype.kind != "f":
        raise FusionInputError(f"weight must be a float array, got dtype {w.dtype}", node=node)
    if not 3 <= w.ndim <= 5:
        raise FusionInputError(f"weight has rank {w.ndim}; expected 3, 4 or 5 (1-D to 3-D convolution)", node=node)
    if not np.isfinite(w).all():
        raise FusionInputError("weight has non-finite values", node=node)
    return w


def output_channels(w_shape, *, group: int, transposed: bool, node: str = "fold") -> int:
    """C_out of a weight: ``w.shape[1] * group`` for ConvTranspose, ``w.shape[0]`` for Conv; checks ``group``."""
    group = int(group)
    if group < 1:
        raise FusionInputError(f"group must be >= 1, got {group}", node=node)
    if transposed:
        if w_shape[0] % group:
            raise FusionInputError(f"group {group} does not divide the {w_shape[0]} input channels (weight axis 0)",
                                   node=node)
        return w_shape[1] * group
    if w_shape[0] % group:
        raise FusionInputError(f"group {group} does not divide the {w_shape[0]} output channels (weight axis 0)",
                               node=node)
    return w_shape[0]


def output_channel_view(w64: np.ndarray, group: int, transposed: bool) -> tuple[np.ndarray, tuple[int, ...]]:
    """A view of ``w`` with output channels on their own axis, and the shape a ``(C_out,)`` vector broadcasts as.

    Conv: ``w`` itself, vector shape ``(C_out, 1, ...)``. ConvTranspose:
    ``(group, C_in/group, C_out/group, *k)``, vector shape ``(group, 1, C_out/group, 1, ...)``.
    """
    spatial = w64.ndim - 2
    if transposed:
        c_in, c_out_g = w64.shape[:2]
        view = w64.reshape((group, c_in // group, c_out_g) + w64.shape[2:])
        return view, (group, 1, c_out_g) + (1,) * spatial
    return w64, (w64.shape[0], 1) + (1,) * spatial


def fold_affine(w, b, affine: ChannelAffine, *, group: int = 1, transposed: bool,
                node: str = "fold") -> tuple[np.ndarray, np.ndarray]:
    """Fold ``affine`` applied after the convolution into ``(w', b')``; see the module docstring.

    ``b=None`` means a zero bias. Returns new arrays in the dtype of ``w``.
    """
    w = _weight(w, node)
    c_out = output_channels(w.shape, group=group, transposed=transposed, node=node)
    if affine.channels != c_out:
        raise FusionInputError(f"the {affine.channels}-channel affine map does not match the {c_out} output "
                               f"channels of weight {w.shape} (group {group}, "
                               f"{'ConvTranspose' if transposed else 'Conv'} layout)", node=node)
    b64 = np.zeros(c_out) if b is None else np.asarray(b, np.float64)
    if b64.shape != (c_out,):
        raise FusionInputError(f"bias has shape {b64.shape}, expected ({c_out},)", node=node)
    if not np.isfinite(b64).all():
        raise FusionInputError("bias has non-finite values", node=node)
    view, vector_shape = output_channel_view(w.astype(np.float64), int(group), transposed)
    w_folded = (view * affine.mul.reshape(vector_shape)).reshape(w.shape)
    b_folded = (b64 - affine.sub) * affine.mul + affine.add
    return w_folded.astype(w.dtype), b_folded.astype(w.dtype)


def fold_batch_norm(w, b, scale, bias, mean, var, epsilon=1e-5, *, group=1, transposed,
                    node="fold_batch_norm") -> tuple[np.ndarray, np.ndarray]:
    """Fold an inference BatchNormalization that follows a Conv (``transposed=False``) or ConvTranspose.

    ``a = scale / sqrt(var + epsilon)``; ``w'`` is ``w`` scaled by ``a[oc]`` along the output channel that
    each element feeds; ``b' = a * (b - mean) + bias``.
    """
    affine = batch_norm_affine(scale, bias, mean, var, epsilon, node=node)
    return fold_affine(w, b, affine, group=group, transposed=transposed, node=node)


def fold_scale(w, b, scale, bias=None, *, group=1, transposed, node="fold_scale") -> tuple[np.ndarray, np.ndarray]:
    """Fold a per-channel Scale ``y = scale * x + bias`` that follows a Conv or ConvTranspose.

    ``w'`` is ``w`` scaled by ``scale[oc]`` along the output channel each element feeds; ``b' = scale*b + bias``.
    """
    affine = scale_affine(scale, bias, node=node)
    return fold_affine(w, b, affine, group=group, transposed=transposed, node=node)


def fold_affine_before(w, b, affine: ChannelAffine, *, group: int = 1, transposed: bool, pads=None,
                       strides=None, output_padding=None, auto_pad: str = "NOTSET",
                       node: str = "fold_before") -> tuple[np.ndarray, np.ndarray]:
    """Fold ``affine`` applied to the convolution's *input* into ``(w', b')``, where that is exact.

    The scale part always folds: it multiplies the weight along the input-channel axis (Conv axis 1 within
    each group, ConvTranspose axis 0). The shift ``t = add - sub*mul`` becomes a bias
    ``b'[oc] = b[oc] + sum over taps of w * t`` only if every output element sees every tap: true for a Conv
    without padding, never guaranteed for a ConvTranspose (border outputs and, for stride > 1, the outputs
    between strides receive fewer taps) unless its kernel is 1 and strides are 1. Elsewhere a nonzero shift
    raises ``UnsafeFoldError`` instead of folding wrongly.
    """
    w = _weight(w, node)
    c_out = output_channels(w.shape, group=group, transposed=transposed, node=node)
    c_in = w.shape[0] if transposed else w.shape[1] * int(group)
    if affine.channels != c_in:
        raise FusionInputError(f"the {affine.channels}-channel affine map does not match the {c_in} input "
                               f"channels of weight {w.shape}", node=node)
    shift = affine.shift
    spatial = w.ndim - 2
    if np.any(shift != 0):
        padded = auto_pad not in ("NOTSET", "VALID") or (auto_pad == "NOTSET" and pads is not None and any(pads))
        if transposed:
            unit = all(k == 1 for k in w.shape[2:]) and (strides is None or all(s == 1 for s in strides)) \
                and not padded and not (output_padding is not None and any(output_padding))
            if not unit:
                raise UnsafeFoldError(
                    "cannot fold a shift (BatchNorm/Scale bias) that comes before a ConvTranspose: outputs at the "
                    "borders and between strides receive fewer taps, so the shift is not a uniform bias", node=node)
        elif padded:
            raise UnsafeFoldError(
                "cannot fold a shift (BatchNorm/Scale bias) that comes before a padded Conv: padded taps see "
                "zeros, not the shift, so the result would be wrong at the borders", node=node)
    w64 = w.astype(np.float64)
    b64 = np.zeros(c_out) if b is None else np.asarray(b, np.float64)
    if b64.shape != (c_out,):
        raise FusionInputError(f"bias has shape {b64.shape}, expected ({c_out},)", node=node)
    if transposed:
        # w: (c_in, c_out/group, *k): input channel on axis 0
        w_folded = w64 * affine.mul.reshape((-1, 1) + (1,) * spatial)
        per_input = w64.sum(axis=tuple(range(2, w.ndim)))  # (c_in, c_out/group)
        c_in_g, c_out_g = c_in // group, c_out // group
        extra = np.einsum("gij,gi->gj", per_input.reshape(group, c_in_g, c_out_g),
                          shift.reshape(group, c_in_g)).reshape(c_out)
    else:
        # w: (c_out, c_in/group, *k): input channel g*(c_in/group) + axis 1
        c_in_g, c_out_g = c_in // group, c_out // group
        mul = affine.mul.reshape(group, c_in_g)
        view = w64.reshape((group, c_out_g, c_in_g) + w.shape[2:])
        w_folded = (view * mul.reshape((group, 1, c_in_g) + (1,) * spatial)).reshape(w.shape)
        per_input = view.sum(axis=tuple(range(3, 3 + spatial)))  # (group, c_out/group, c_in/group)
        extra = np.einsum("goi,gi->go", per_input, shift.reshape(group, c_in_g)).reshape(c_out)
    return w_folded.astype(w.dtype), (b64 + extra).astype(w.dtype)
