"""Conv as the register-tiled GEMM of ``fusion.kernels.tiles``, on the polyphase split of its input.

Along an axis with stride ``s``, dilation ``d`` and begin pad ``p``, output ``o`` reads input ``s*o + k*d - p``
through tap ``k``. Write ``k*d = s*q + r`` (``0 <= r < s``) and split the zero-padded input into the ``s`` phases
``x_r[i] = x[s*i + r - p]``: then tap ``k`` reads ``x_r[o + q]``, a stride-1 shift of one phase. So a strided Conv
is one stride-1 GEMM ``y[oc, m] = sum over (ci, tap) w[oc, ci, tap] * x_(r(tap))[ci, m_flat + shift(tap)]`` whose
``B`` rows are the phases at offsets, as a ConvTranspose output phase is in ``tiles``. The split costs one pass over
the input; it also pads, so the GEMM needs no bounds checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numba import njit

from fusion.kernels.config import SERIAL, uintp
from fusion.kernels.conv import valid_range
from fusion.kernels.launch import tasks, triple
from fusion.kernels.shared import read_only_table, spared_buffer


@dataclass(frozen=True)
class SplitPlan:
    """Tables for Conv on ``fusion.kernels.tiles.tiled_gemms``; built once per geometry by ``split_plan``.

    Each input channel becomes ``prod(strides)`` phases (row-major over the 3 axes' residues ``r``), each of
    ``phase_shape``, one after another. The GEMM has one output phase (origin 0, ``phase_counts[0]`` = the output
    shape); tap ``tap_index[t]`` (flat ``kd, kh, kw``) reads its channel's phases at flat offset ``tap_shift[t]``.
    """

    phase_shape: tuple[int, int, int]
    phase_origin: np.ndarray  # (1, 3) int64
    phase_counts: np.ndarray  # (1, 3) int64
    phase_start: np.ndarray  # (2,) int64
    tap_index: np.ndarray  # (taps,) int64
    tap_shift: np.ndarray  # (taps,) int64


@lru_cache(maxsize=256)
def split_plan(input_shape, kernel_shape, strides, dilations, pads_begin, output_shape) -> SplitPlan:
    """Tables for a Conv lifted to 3 spatial axes (all arguments are 3-tuples of ints). The tables are read-only."""
    reach = [(k - 1) * d // s for k, d, s in zip(kernel_shape, dilations, strides)]
    phase_shape = tuple(o + q for o, q in zip(output_shape, reach))
    phase_length = phase_shape[0] * phase_shape[1] * phase_shape[2]
    index, shift = [], []
    for kd in range(kernel_shape[0]):
        for kh in range(kernel_shape[1]):
            for kw in range(kernel_shape[2]):
                taps = (kd, kh, kw)
                # a tap whose window reads only padding along some axis contributes nothing: drop it
                if any(k * d - p >= i or (o - 1) * s + k * d - p < 0
                       for k, d, p, s, i, o in zip(taps, dilations, pads_begin, strides, input_shape, output_shape)):
                    continue
                (qd, rd), (qh, rh), (qw, rw) = (divmod(k * d, s) for k, d, s in zip(taps, dilations, strides))
                phase = (rd * strides[1] + rh) * strides[2] + rw
                index.append((kd * kernel_shape[1] + kh) * kernel_shape[2] + kw)
                shift.append(phase * phase_length + (qd * phase_shape[1] + qh) * phase_shape[2] + qw)

    return SplitPlan(phase_shape, read_only_table([0, 0, 0], 3), read_only_table(list(output_shape), 3),
                     read_only_table([0, len(index)]), read_only_table(index), read_only_table(shift))


@njit(**SERIAL)
def _split_channel(x_channel, strides, pads_begin, phase_shape, out):
    """``out[phase(r), i] = x_channel[strides*i + r - pads_begin]`` (0 outside ``x_channel: (d, h, w)``), each phase
    ``phase_shape``, flattened one after another."""
    sd, sh, sw = strides
    pd, ph, pw = pads_begin
    length_d, length_h, length_w = phase_shape
    in_d, in_h, in_w = x_channel.shape
    phase = 0
    for rd in range(sd):
        for rh in range(sh):
            for rw in range(sw):
                lo, hi = valid_range(rw - pw, sw, length_w, in_w)
                for i_d in range(length_d):
                    u_d = sd * i_d + rd - pd
                    for i_h in range(length_h):
                        u_h = sh * i_h + rh - ph
                        row = out[((phase * length_d + i_d) * length_h + i_h) * length_w:]
                        if u_d < 0 or u_d >= in_d or u_h < 0 or u_h >= in_h:
                            row[:length_w] = 0
                            continue
                        source = x_channel[u_d, u_h]
                        for i_w in range(lo):
                            row[uintp(i_w)] = 0
                        for i_w in range(lo, hi):
                            row[uintp(i_w)] = source[uintp(sw * i_w + rw - pw)]
                        for i_w in range(hi, length_w):
                            row[uintp(i_w)] = 0
                phase += 1


def split_input(x, strides, pads_begin, phase_shape):
    """Every channel of ``x: (n, c_in, d, h, w)`` split into its phases (``_split_channel``), flat, one channel after
    another, in a ``fusion.kernels.shared.spared_buffer``: the ``b`` of ``fusion.kernels.tiles.tiled_gemms``."""
    n_batch, c_in = x.shape[0], x.shape[1]
    channel_length = math.prod(strides) * math.prod(phase_shape)
    xs = spared_buffer(n_batch * c_in, channel_length, x.dtype)
    _split_loop(n_batch * c_in, x, np.array(strides + pads_begin + phase_shape, np.int64), xs)
    return xs


@tasks
def _split_loop(first, last, x, geometry, xs):
    """Channels ``first <= n*c_in + c < last`` of ``split_input``; ``geometry``: the strides, the begin pads, the
    phase shape."""
    c_in = x.shape[1]
    for channel in range(first, last):
        _split_channel(x[channel // c_in, channel % c_in], triple(geometry, 0), triple(geometry, 3),
                       triple(geometry, 6), xs[channel])
