r"""Forward-error bounds for a convolution site evaluated in floating point.

A site computes, per output element, ``y = (sum_k x_k w_k + b - sub) * mul + add`` (no tail: ``mul = 1``,
``sub = add = 0``). An engine may evaluate it fused, ``sum_k x_k w'_k + b'`` with ``w' = fl(w * mul)``, or
unfused, conv first then the per-channel affine map, in any summation order (blocked, GEMM, FMA).

Derivation (Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 3): with unit roundoff ``u`` and
``gamma_n = n u / (1 - n u)``, a dot product of ``n`` terms computed in any order satisfies
``|fl(s) - s| <= gamma_n * sum |x_k w_k|``. The site adds at most ``K + 1`` terms (``K`` products and the bias),
the rounding of the folded weights adds one factor ``(1 + delta)`` per product, and the unfused tail adds at most
seven more roundings (``mul`` from ``scale / sqrt(var + eps)``: three; the subtraction, multiplication and
addition: three; the output: one). Each rounding multiplies a term by some ``(1 + delta)``, and a product of
``m`` such factors lies within ``gamma_m``, so with ``M = sum |x_k| |w_k| |mul| + |mul| (|b| + |sub|) + |add|``,

.. math::

    |\hat y - y| \le \gamma_{K + 8}(u)\, M

covers both evaluation orders. The float64 reference itself errs by at most ``gamma_{K+8}(2^{-53}) M``, and
``M`` is computed in float64 with a relative error below the same amount; the returned bound adds both.
Engines that use Winograd or FFT convolution are *not* covered: their error is larger than any summation order's.
"""

from __future__ import annotations

import numpy as np

from fusion import attrs, ops
from fusion.affine import ChannelAffine
from fusion.fold import output_channel_view, output_channels

EXTRA_ROUNDINGS = 8


def unit_roundoff(dtype) -> float:
    """``u = eps / 2``: 2**-24 for float32, 2**-53 for float64."""
    return float(np.finfo(dtype).eps) / 2


def gamma(n: int, u: float) -> float:
    """``n u / (1 - n u)``; infinite once ``n u >= 1`` (no bound is possible)."""
    nu = n * u
    return nu / (1 - nu) if nu < 1 else float("inf")


def _magnitudes(x, w, transposed: bool, *, group, strides, pads, dilations, output_padding, output_shape, auto_pad,
                kernel_shape):
    """``(|x|, |w|, the op's keyword arguments, its resolved geometry)``, in float64."""
    x64 = np.abs(np.asarray(x, np.float64))
    w64 = np.abs(np.asarray(w, np.float64))
    geometry = dict(group=group, strides=strides, pads=pads, dilations=dilations, auto_pad=auto_pad,
                    kernel_shape=kernel_shape)
    if transposed:
        geometry.update(output_padding=output_padding, output_shape=output_shape)
    return x64, w64, geometry, attrs.resolve(x64.shape, w64.shape, transposed=transposed, **geometry)


def site_bound(x, w, b=None, affine: ChannelAffine | None = None, *, transposed: bool, dtype=np.float32,
               group=1, strides=None, pads=None, dilations=None, output_padding=None, output_shape=None,
               auto_pad="NOTSET", kernel_shape=None) -> np.ndarray:
    """Per-element bound on ``|engine - exact|`` for ``affine(conv(x, w) + b)`` evaluated in ``dtype``.

    ``x: (N, C_in, *S)``; ``w`` in the ONNX layout of the op (ConvTranspose ``(C_in, C_out/group, *k)``,
    Conv ``(C_out, C_in/group, *k)``); ``affine`` is the BN/Scale tail (``None``: no tail). Returns an array of
    the output's shape.
    """
    x64, w64, geometry, geo = _magnitudes(x, w, transposed, group=group, strides=strides, pads=pads,
                                          dilations=dilations, output_padding=output_padding,
                                          output_shape=output_shape, auto_pad=auto_pad, kernel_shape=kernel_shape)
    mul, constant_of, roundings = tail_terms(affine, geo.c_out)
    view, vector_shape = output_channel_view(w64, geo.group, transposed)
    w_scaled = (view * mul.reshape(vector_shape)).reshape(w64.shape)
    b_abs = np.zeros(geo.c_out) if b is None else np.abs(np.asarray(b, np.float64))
    magnitude = ops.fast_kernels_in_float64(x64, w_scaled, constant_of(b_abs), transposed=transposed, **geometry)
    n = geo.reduction_length + roundings
    u64 = unit_roundoff(np.float64)
    return (gamma(n, unit_roundoff(dtype)) + 2 * gamma(n, u64)) * magnitude


def exact_site(x, w, b=None, affine: ChannelAffine | None = None, *, transposed: bool, dtype=np.float32,
               convolution: np.ndarray | None = None, **attributes) -> tuple[np.ndarray, np.ndarray]:
    """``(expected, bound)`` for ``affine(conv(x, w) + b)``: the result computed in float64 (no ``affine``: the
    convolution alone), and ``site_bound`` for an evaluation of it in ``dtype``. ``convolution``: ``conv(x, w) + b``
    in float64, when the caller has computed it already."""
    expected = ops.fast_kernels_in_float64(x, w, b, transposed=transposed, **attributes) if convolution is None else \
        convolution
    if affine is not None:
        expected = ops.channel_affine(expected, affine)
    return expected, site_bound(x, w, b, affine, transposed=transposed, dtype=dtype, **attributes)


def fold_bounds(w, b=None, affine: ChannelAffine | None = None, *, group: int = 1, transposed: bool,
                dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Per-element bounds on an engine's folded ``(w', b')`` computed in ``dtype`` from ``w``, ``b`` and the tail.

    The engine computes ``mul`` (up to three roundings), the product ``w * mul`` (one) and
    ``b' = (b - sub) * mul + add`` (three more), so ``|dw'| <= gamma_8 |w| |mul|`` and
    ``|db'| <= gamma_8 (|mul| (|b| + |sub|) + |add|)``; eight covers both with room for a final cast.
    """
    w64 = np.abs(np.asarray(w, np.float64))
    channels = output_channels(w64.shape, group=group, transposed=transposed, node="fold_bounds")
    mul, constant_of, roundings = tail_terms(affine, channels)
    view, vector_shape = output_channel_view(w64, group, transposed)
    factor = gamma(roundings, unit_roundoff(dtype)) + 2 * gamma(roundings, unit_roundoff(np.float64))
    w_bound = factor * (view * mul.reshape(vector_shape)).reshape(w64.shape)
    b_abs = np.zeros(channels) if b is None else np.abs(np.asarray(b, np.float64))
    return w_bound, factor * constant_of(b_abs)


def tail_terms(affine: ChannelAffine | None, channels: int):
    """``(|mul|, constant_of, roundings)`` of a tail for the bounds: ``constant_of(|b|)`` is the magnitude of the
    constant part ``|mul| (|b| + |sub|) + |add|`` (plus the extent of a composed chain), ``roundings`` the extra
    roundings of evaluating it unfused (``EXTRA_ROUNDINGS`` a step)."""
    if affine is None:
        return np.ones(channels), (lambda b_abs: b_abs), EXTRA_ROUNDINGS
    mul = np.abs(affine.mul)
    return mul, (lambda b_abs: mul * b_abs + affine.magnitude), EXTRA_ROUNDINGS * affine.steps


TINY = float(np.finfo(np.float32).tiny)  # 2**-126, the smallest normal float32
UNDERFLOW = float(np.finfo(np.float32).smallest_subnormal)  # 2**-149: the absolute error of gradual underflow


def flush_allowance(x, w, b=None, affine: ChannelAffine | None = None, *, transposed: bool, group=1, strides=None,
                    pads=None, dilations=None, output_padding=None, output_shape=None, auto_pad="NOTSET",
                    kernel_shape=None) -> np.ndarray:
    r"""Per-element bound on what flushing float32 subnormals to zero changes in ``affine(conv(x, w) + b)``.

    An engine that flushes (FTZ/DAZ, or a converter that zeroes tiny weights) may replace any weight whose value,
    before or after the fold, is below ``TINY`` by 0, any input value below ``TINY`` by 0, and any product, partial
    sum or output below ``TINY`` by 0. With ``w'`` the folded weights and ``K`` the reduction length:

    .. math::

        |\Delta y| \le \sum_k |x_k|\,|w'_k|\,[|w_k| < T \lor |w'_k| < T] + T \sum_k |w'_k|\,[|x_k| < T] + (K + 2)\,T
    """
    x64, w64, geometry, geo = _magnitudes(x, w, transposed, group=group, strides=strides, pads=pads,
                                          dilations=dilations, output_padding=output_padding,
                                          output_shape=output_shape, auto_pad=auto_pad, kernel_shape=kernel_shape)
    mul = np.ones(geo.c_out) if affine is None else np.abs(affine.mul)
    view, vector_shape = output_channel_view(w64, geo.group, transposed)
    folded = (view * mul.reshape(vector_shape)).reshape(w64.shape)
    flushable = np.where((w64 < TINY) | (folded < TINY), folded, 0.0)
    total = np.full((geo.batch, geo.c_out) + geo.output_shape, (geo.reduction_length + 2) * TINY)
    if flushable.any():
        total += ops.fast_kernels_in_float64(x64, flushable, None, transposed=transposed, **geometry)
    tiny_inputs = np.where(x64 < TINY, TINY, 0.0)
    if tiny_inputs.any():
        total += ops.fast_kernels_in_float64(tiny_inputs, folded, None, transposed=transposed, **geometry)
    return total


def has_subnormals(*arrays) -> bool:
    """Whether any value is a nonzero float32 subnormal, or would be after a fold (below ``TINY``)."""
    return any(np.any((np.abs(np.asarray(a, np.float64)) < TINY) & (np.asarray(a) != 0)) for a in arrays
               if a is not None)


def fold_flush_allowance(w, w_folded, b_folded) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on what subnormals change in a fold computed in float32: a weight below ``TINY`` before or after the
    fold may be flushed to zero (allowance ``|w'|``), and gradual underflow adds ``2**-149`` per rounding (eight)."""
    w_abs, folded = np.abs(np.asarray(w, np.float64)), np.abs(np.asarray(w_folded, np.float64))
    w_allow = np.where((w_abs < TINY) | (folded < TINY), folded, 0.0) + EXTRA_ROUNDINGS * UNDERFLOW
    b_abs = np.abs(np.asarray(b_folded, np.float64))
    return w_allow, np.where(b_abs < TINY, b_abs, 0.0) + EXTRA_ROUNDINGS * UNDERFLOW
