r"""Winograd / Cook-Toom fast convolution F(m, r): its transforms, and the forward-error bound of an engine that uses it.

A 1-D F(m, r) computes ``m`` outputs of a correlation with an ``r``-tap filter from a tile of ``alpha = m + r - 1``
inputs as ``y = A^T [(G g) * (B^T d)]``; 2-D nests it: ``Y = A^T [(G g G^T) * (B^T D B)] A``. The transforms come
from ``alpha - 1`` finite interpolation points and the point at infinity. MNN's generator uses the points
``0, +-s, -+2s, +-3s, ...`` with ``s = interp`` (0.5 or 1).

Error (Higham's model applied to each transform, as in Barabasz et al., "Error analysis and improving the accuracy
of Winograd convolution", 2020): every element of the computed result is the exact one with each product in the
chain perturbed by at most ``gamma_n(u)``, so

.. math::

    |\hat Y - Y| \le \gamma_n(u)\; |A^T| \Big[\sum_c (|G|\,|g_c|\,|G^T|) \odot (|B^T|\,|D_c|\,|B|)\Big] |A|

with ``n`` the longest chain of roundings: the three transforms in both dimensions, the channel sum and the output
stage. A direct-summation bound does not cover this: the transforms amplify magnitudes, more so for larger tiles.
The bound's magnitude term does not depend on how the point scaling is split between ``G`` and ``B``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fusion.bounds import EXTRA_ROUNDINGS, gamma, unit_roundoff


@dataclass(frozen=True)
class Transforms:
    """``AT (m, alpha)``, ``G (alpha, r)``, ``BT (alpha, alpha)`` of F(m, r)."""

    m: int
    r: int
    interp: float
    AT: np.ndarray
    G: np.ndarray
    BT: np.ndarray

    @property
    def alpha(self) -> int:
        return self.m + self.r - 1

    @property
    def name(self) -> str:
        finite = ", ".join(f"{p:g}" for p in points(self.alpha, self.interp))
        return f"Winograd F({self.m}x{self.m}, {self.r}x{self.r}) on points {finite} and infinity"


def points(alpha: int, interp: float) -> np.ndarray:
    """The ``alpha - 1`` finite points MNN uses: 0, s, -s, 2s, -2s, ..."""
    values = [0.0]
    sign = 1
    for i in range(alpha - 2):
        values.append(sign * (1 + i // 2) * interp)
        sign = -sign
    return np.asarray(values)


def transforms(m: int, r: int, interp: float) -> Transforms:
    """Cook-Toom transforms for F(m, r) on ``points(m + r - 1, interp)`` plus infinity."""
    alpha = m + r - 1
    a = points(alpha, interp)

    def evaluation(terms: int) -> np.ndarray:
        """A polynomial of ``terms`` coefficients at each finite point; at infinity, its leading coefficient."""
        rows = np.zeros((alpha, terms))
        rows[:-1] = a[:, None] ** np.arange(terms)
        rows[-1, -1] = 1.0
        return rows

    # the correlation is the transpose of polynomial multiplication s = V^-1 [(V_r g) * (V_m h)]
    return Transforms(m, r, interp, evaluation(m).T, evaluation(r), np.linalg.inv(evaluation(alpha)).T)


def correlate_1d(t: Transforms, d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``A^T [(G g) * (B^T d)]``: ``m`` outputs of the correlation of ``alpha`` inputs ``d`` with ``g``."""
    return t.AT @ ((t.G @ g) * (t.BT @ d))


def candidates(r: int) -> list[Transforms]:
    """The tile sizes and point sets an engine may pick for an ``r``-tap kernel, smallest error first."""
    return [transforms(m, r, interp) for m in (2, 4, 6) if m + r - 1 <= 8 for interp in (1.0, 0.5)
            if not (m == 2 and interp == 0.5)]  # F(2, 3) is the same on either point set


def applies(transposed: bool, kernel: tuple[int, ...], strides, dilations) -> bool:
    """Whether an engine may run this convolution as 2-D Winograd: a 2-D Conv, square kernel of 2 to 7 taps,
    stride 1 and dilation 1."""
    return (not transposed and len(kernel) == 2 and kernel[0] == kernel[1] and 2 <= kernel[0] <= 7
            and all(s == 1 for s in strides) and all(d == 1 for d in dilations))


def magnitude(t: Transforms, x_abs: np.ndarray, w_abs: np.ndarray, group: int, pads: tuple[int, ...],
              output_size: tuple[int, int]) -> np.ndarray:
    """``|A^T| [sum_c (|G| |w| |G^T|) * (|B^T| |x| |B|)] |A|`` at every output element, tiles starting at output 0.

    ``x_abs: (N, C_in, H, W)``, ``w_abs: (C_out, C_in/group, r, r)`` (Conv layout), ``pads``: ONNX
    ``(top, left, bottom, right)`` (only the leading two are used: the tiles cover the output); returns ``(N, C_out, *output_size)``.
    """
    m, alpha = t.m, t.alpha
    batch, c_in = x_abs.shape[:2]
    c_out = w_abs.shape[0]
    tiles_y, tiles_x = math.ceil(output_size[0] / m), math.ceil(output_size[1] / m)
    height, width = (tiles_y - 1) * m + alpha, (tiles_x - 1) * m + alpha
    padded = np.zeros((batch, c_in, height, width))
    rows = min(x_abs.shape[2], height - pads[0])
    cols = min(x_abs.shape[3], width - pads[1])
    padded[:, :, pads[0]:pads[0] + rows, pads[1]:pads[1] + cols] = x_abs[:, :, :rows, :cols]
    s = padded.strides
    tiles = np.lib.stride_tricks.as_strided(padded, (batch, c_in, tiles_y, tiles_x, alpha, alpha),
                                            (s[0], s[1], s[2] * m, s[3] * m, s[2], s[3]), writeable=False)
    BT, G, AT = np.abs(t.BT), np.abs(t.G), np.abs(t.AT)
    data = np.einsum("ap,nctupq,bq->abnctu", BT, tiles, BT, optimize=True)  # (alpha, alpha, N, C, ty, tx)
    filters = np.einsum("ak,oikl,bl->aboi", G, w_abs, G, optimize=True)  # (alpha, alpha, C_out, C_in/group)
    per_group_in, per_group_out = c_in // group, c_out // group
    summed = np.empty((alpha, alpha, batch, c_out, tiles_y, tiles_x))
    for g in range(group):
        o, i = slice(g * per_group_out, (g + 1) * per_group_out), slice(g * per_group_in, (g + 1) * per_group_in)
        summed[:, :, :, o] = np.einsum("aboi,abnitu->abnotu", filters[:, :, o], data[:, :, :, i], optimize=True)
    out = np.einsum("ia,abnotu,jb->notiuj", AT, summed, AT, optimize=True)
    out = out.reshape(batch, c_out, tiles_y * m, tiles_x * m)
    return out[:, :, :output_size[0], :output_size[1]]


def bound(t: Transforms, magnitude_term: np.ndarray, constant_term: np.ndarray, channels_per_group: int,
          tail_roundings: int = EXTRA_ROUNDINGS, dtype=np.float32) -> np.ndarray:
    """Per-element bound on ``|engine - exact|`` of a Winograd evaluation in ``dtype`` (plus the float64 reference's
    own error). ``constant_term``: ``|mul| (|b| + |sub|) + |add|`` per output channel, added after the transform;
    ``tail_roundings``: those of the bias and tail (``fusion.bounds.tail_terms``)."""
    roundings = 2 * (2 * t.alpha + t.r) + channels_per_group + tail_roundings + 6  # +6: inexact transform entries
    total = magnitude_term + constant_term.reshape((1, -1) + (1,) * (magnitude_term.ndim - 2))
    return (gamma(roundings, unit_roundoff(dtype)) + 2 * gamma(roundings, unit_roundoff(np.float64))) * total
