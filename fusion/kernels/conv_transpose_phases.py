"""ConvTranspose as a gather over output phases, on 3 spatial axes.

Along an axis with stride ``s``, dilation ``d`` and begin pad ``p``, output ``o = s*m + r`` (phase ``r``) receives
``x[i] * w[k]`` exactly when ``i*s + k*d - p = o``, i.e. for the taps ``k`` with ``(r + p - k*d) % s == 0``, each at
``i = m + c`` with ``c = (r + p - k*d) // s``. So every output phase is a small correlation of ``x`` with a fixed
subset of taps, each tap a shifted copy of the input: ``y_r[m] = sum_(ci, k in phase r) w[ci, j, k] * x[ci, m + c_k]``.

The input is zero-padded so that every shift of every tap stays inside the padded array; a phase's accumulator
then uses the padded array's row pitches, and each (input channel, tap) pair becomes one long contiguous
multiply-add over a flattened block of the accumulator (the entries that fall in the padding columns are computed
and discarded). Those long loops vectorize; there is no scatter and no ``cols`` buffer. Each parallel task owns the
output planes ``y[n, oc]`` of two neighbouring output channels of one group (they read the same input, so each
input vector loaded feeds both), so no two threads write the same element. A task sums a block of all the phases
of a depth phase, then writes the block's output rows in order (``store_phases``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numba import njit

from fusion.kernels.config import SERIAL, uintp
from fusion.kernels.launch import tasks, triple
from fusion.kernels.shared import (block_extent, most_counts, pad_channels, pad_input, read_only_table,
                                   store_phases)

# Accumulator entries multiplied-and-added per pass over the (input channel, tap) pairs: 32 KiB of float32, an L1's
# worth (benchmarks/NOTES.md, "Phase kernel").
BLOCK = 8192
# Accumulator entries of a task's block, over all the phases of a depth phase (``_block_size``): summed, then stored
# row after row. 128 KiB of float32, in L2.
STORE_BLOCK = 32768
# (input channel, tap) pairs added per pass over a block: one load and one store of the accumulator per four
# products instead of per product.
PAIRS_PER_PASS = 4
# A task pads its group's input itself when no other task reads it, or when it is this small (a copy that stays in
# L2 costs less than a second parallel loop); otherwise one parallel loop pads the whole input first.
PAD_PER_TASK_BYTES = 64 * 1024


@dataclass(frozen=True)
class PhasePlan:
    """Index tables for ``conv_transpose_phases``; built once per geometry by ``plan``.

    ``padded_shape``: the zero-padded input's spatial shape, the input placed at ``padded_offset``.
    Phase ``r`` (row-major over the ``strides`` of the 3 axes) owns the outputs ``strides*m + phase_origin[r]`` for
    ``0 <= m < phase_counts[r]``; its taps are ``tap_index[phase_start[r]:phase_start[r+1]]`` (flat ``kd, kh, kw``)
    reading the padded input at flat offset ``m_flat + tap_shift`` where ``m_flat`` uses the padded row pitches.
    """

    padded_shape: tuple[int, int, int]
    padded_offset: tuple[int, int, int]
    phase_origin: np.ndarray  # (phases, 3) int64
    phase_counts: np.ndarray  # (phases, 3) int64
    phase_start: np.ndarray  # (phases + 1,) int64
    tap_index: np.ndarray  # (taps,) int64
    tap_shift: np.ndarray  # (taps,) int64


def _axis_phases(kernel, stride, dilation, pad, in_size, out_size):
    """Per phase of one axis: (origin r, count of outputs, [(tap k, input offset c)])."""
    phases = []
    for r in range(stride):
        count = max(0, -(-(out_size - r) // stride))
        taps = [(k, (r + pad - k * dilation) // stride) for k in range(kernel)
                if (r + pad - k * dilation) % stride == 0]
        # a tap whose shifted window misses the input entirely contributes nothing: drop it
        taps = [(k, c) for k, c in taps if count > 0 and c < in_size and c + count > 0]
        phases.append((r, count, taps))
    return phases


@lru_cache(maxsize=256)
def plan(input_shape, kernel_shape, strides, dilations, pads_begin, output_shape) -> PhasePlan:
    """Phase tables for a ConvTranspose lifted to 3 spatial axes (all arguments are 3-tuples of ints).

    Cached per geometry: building the tables took 30 microseconds, 15% of a small layer's whole call. The cached
    tables are read-only."""
    axes = [_axis_phases(*args) for args in zip(kernel_shape, strides, dilations, pads_begin, input_shape,
                                                 output_shape)]
    padded_shape, padded_offset = [], []
    for phases, in_size in zip(axes, input_shape):
        offsets = [c for _, _, taps in phases for _, c in taps] or [0]
        longest = max(count for _, count, _ in phases)
        before = max(0, -min(offsets))
        padded_shape.append(before + max(in_size, longest + max(offsets)))
        padded_offset.append(before)
    pitch_h, pitch_w = padded_shape[1] * padded_shape[2], padded_shape[2]
    origin, counts, start, index, shift = [], [], [0], [], []
    for rd, count_d, taps_d in axes[0]:
        for rh, count_h, taps_h in axes[1]:
            for rw, count_w, taps_w in axes[2]:
                origin.append((rd, rh, rw))
                counts.append((count_d, count_h, count_w))
                for kd, cd in taps_d:
                    for kh, ch in taps_h:
                        for kw, cw in taps_w:
                            index.append((kd * kernel_shape[1] + kh) * kernel_shape[2] + kw)
                            shift.append((cd + padded_offset[0]) * pitch_h + (ch + padded_offset[1]) * pitch_w
                                         + cw + padded_offset[2])
                start.append(len(index))

    return PhasePlan(tuple(padded_shape), tuple(padded_offset), read_only_table(origin, 3),
                     read_only_table(counts, 3), read_only_table(start), read_only_table(index),
                     read_only_table(shift))


@njit(inline="always", **SERIAL)
def _pair(q, first_channel, taps_per_channel, tap_index, tap_shift, start):
    """Pair ``q`` of a phase: input channel ``first_channel + q // taps``, the phase's tap ``q % taps``; returns
    (input channel, flat tap, where the pair reads the channel's padded input: ``start`` + the tap's shift). A
    shift to index with rather than a view per pass."""
    c, t = divmod(q, taps_per_channel)
    return first_channel + c, tap_index[t], uintp(tap_shift[t] + start)


@njit(inline="always", **SERIAL)
def _four_pairs(q, first_channel, taps_per_channel, tap_index, tap_shift, start):
    """Pairs ``q .. q+3``: (their input channels, their flat taps, where they read)."""
    c0, k0, s0 = _pair(q, first_channel, taps_per_channel, tap_index, tap_shift, start)
    c1, k1, s1 = _pair(q + 1, first_channel, taps_per_channel, tap_index, tap_shift, start)
    c2, k2, s2 = _pair(q + 2, first_channel, taps_per_channel, tap_index, tap_shift, start)
    c3, k3, s3 = _pair(q + 3, first_channel, taps_per_channel, tap_index, tap_shift, start)
    return (c0, c1, c2, c3), (k0, k1, k2, k3), (s0, s1, s2, s3)


@njit(inline="always", **SERIAL)
def _weights(w, j, channels, taps):
    """``w[channels[i], j, taps[i]]`` for the four pairs of a pass."""
    return (w[channels[0], j, taps[0]], w[channels[1], j, taps[1]], w[channels[2], j, taps[2]],
            w[channels[3], j, taps[3]])


@njit(**SERIAL)
def _add_pairs(acc, count, start, xp_n, w, j, first_channel, taps_per_channel, pairs, tap_index, tap_shift):
    """``acc[:count] = sum over the phase's pairs of w[ci, j, tap] * xp_n[ci, start+shift : start+shift+count]``,
    four pairs a pass (``tap_index``/``tap_shift`` are the phase's slices of the plan's tables). The first pass
    assigns, so ``acc`` needs no zeroing (a phase without pairs is zeroed)."""
    if pairs == 0:
        acc[:count] = 0
    q = 0
    while q < pairs:
        if q + PAIRS_PER_PASS <= pairs:
            channels, taps, (s0, s1, s2, s3) = _four_pairs(q, first_channel, taps_per_channel, tap_index, tap_shift,
                                                           start)
            c0, c1, c2, c3 = channels
            a0, a1, a2, a3 = _weights(w, j, channels, taps)
            if q == 0:
                for k in range(count):
                    u = uintp(k)
                    acc[u] = a0 * xp_n[c0, s0 + u] + a1 * xp_n[c1, s1 + u] + a2 * xp_n[c2, s2 + u] + \
                        a3 * xp_n[c3, s3 + u]
            else:
                for k in range(count):
                    u = uintp(k)
                    acc[u] += a0 * xp_n[c0, s0 + u] + a1 * xp_n[c1, s1 + u] + a2 * xp_n[c2, s2 + u] + \
                        a3 * xp_n[c3, s3 + u]
            q += PAIRS_PER_PASS
        else:
            c0, k0, s0 = _pair(q, first_channel, taps_per_channel, tap_index, tap_shift, start)
            a0 = w[c0, j, k0]
            if q == 0:
                for k in range(count):
                    acc[uintp(k)] = a0 * xp_n[c0, s0 + uintp(k)]
            else:
                for k in range(count):
                    acc[uintp(k)] += a0 * xp_n[c0, s0 + uintp(k)]
            q += 1


@njit(**SERIAL)
def _add_pairs_two(acc_a, acc_b, count, start, xp_n, w, j, first_channel, taps_per_channel, pairs, tap_index,
                   tap_shift):
    """``_add_pairs`` for output channels ``j`` (into ``acc_a``) and ``j + 1`` (into ``acc_b``) in one loop, so that
    every input vector loaded feeds both. Two separate functions: one loop that branched on the channel count was
    slower (benchmarks/NOTES.md, "Phase kernel")."""
    if pairs == 0:
        acc_a[:count] = 0
        acc_b[:count] = 0
    q = 0
    while q < pairs:
        if q + PAIRS_PER_PASS <= pairs:
            channels, taps, (s0, s1, s2, s3) = _four_pairs(q, first_channel, taps_per_channel, tap_index, tap_shift,
                                                           start)
            c0, c1, c2, c3 = channels
            (a0, a1, a2, a3), (b0, b1, b2, b3) = _weights(w, j, channels, taps), _weights(w, j + 1, channels, taps)
            if q == 0:
                for k in range(count):
                    u = uintp(k)
                    v0, v1, v2, v3 = xp_n[c0, s0 + u], xp_n[c1, s1 + u], xp_n[c2, s2 + u], xp_n[c3, s3 + u]
                    acc_a[u] = a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3
                    acc_b[u] = b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3
            else:
                for k in range(count):
                    u = uintp(k)
                    v0, v1, v2, v3 = xp_n[c0, s0 + u], xp_n[c1, s1 + u], xp_n[c2, s2 + u], xp_n[c3, s3 + u]
                    acc_a[u] += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3
                    acc_b[u] += b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3
            q += PAIRS_PER_PASS
        else:
            c0, k0, s0 = _pair(q, first_channel, taps_per_channel, tap_index, tap_shift, start)
            a0, b0 = w[c0, j, k0], w[c0, j + 1, k0]
            if q == 0:
                for k in range(count):
                    v0 = xp_n[c0, s0 + uintp(k)]
                    acc_a[uintp(k)], acc_b[uintp(k)] = a0 * v0, b0 * v0
            else:
                for k in range(count):
                    v0 = xp_n[c0, s0 + uintp(k)]
                    acc_a[uintp(k)] += a0 * v0
                    acc_b[uintp(k)] += b0 * v0
            q += 1


def _even_split(length: int, most: int) -> int:
    """The size of each of the fewest even parts of ``length`` that are at most ``most`` long (at least 1)."""
    parts = max(1, -(-length // max(1, most)))
    return max(1, -(-length // parts))


def _block_size(most, plane_phases: int, pitch_h: int, pitch_w: int) -> tuple[int, int, int]:
    """(depths, rows, columns) of a block, for phases of at most ``most = most_counts(...)``: as many whole depths as
    keep the sums of ``plane_phases`` phases within ``STORE_BLOCK`` entries, else as many whole rows, else a piece of
    one row; the parts as even as can be (no last part of a row or two). Plain Python, planned before the loop."""
    most_d, most_h, most_w = most
    if plane_phases * pitch_h <= STORE_BLOCK:
        return _even_split(most_d, STORE_BLOCK // (plane_phases * pitch_h)), most_h, most_w
    if plane_phases * pitch_w <= STORE_BLOCK:
        return 1, _even_split(most_h, STORE_BLOCK // (plane_phases * pitch_w)), most_w
    return 1, 1, _even_split(most_w, STORE_BLOCK // plane_phases)


@njit(**SERIAL)
def _block_sums(acc, counts, first, size, plane_first, pitch_h, pitch_w, xp, w, j, two, first_channel, c_in_g,
                phase_start, tap_index, tap_shift):
    """``acc[e, p, m_flat]``: the sums of output channel ``j + e`` (``e`` < 2 if ``two`` else 1) in phase
    ``plane_first + p`` over the block ``block_extent(counts, p, first, size)``, flat in the padded pitches from the
    block's first position; in passes of ``BLOCK`` entries."""
    start = first[0] * pitch_h + first[1] * pitch_w + first[2]
    for p in range(acc.shape[1]):
        depths, rows, columns = block_extent(counts, p, first, size)
        if rows == 0 or columns == 0:
            continue
        count = (depths - 1) * pitch_h + (rows - 1) * pitch_w + columns
        r = plane_first + p
        taps = phase_start[r + 1] - phase_start[r]
        phase_index = tap_index[phase_start[r]:phase_start[r + 1]]
        phase_shift = tap_shift[phase_start[r]:phase_start[r + 1]]
        for lo in range(0, count, BLOCK):
            length = min(BLOCK, count - lo)
            if two:
                _add_pairs_two(acc[0, p, lo:], acc[1, p, lo:], length, start + lo, xp, w, j, first_channel, taps,
                               c_in_g * taps, phase_index, phase_shift)
            else:
                _add_pairs(acc[0, p, lo:], length, start + lo, xp, w, j, first_channel, taps, c_in_g * taps,
                           phase_index, phase_shift)


def conv_transpose_phases(x, w, scale, shift, group, strides, padded_shape, padded_offset, phase_origin, phase_counts,
                          phase_start, tap_index, tap_shift, y):
    """``y[:, oc] = ConvTranspose(x, w)[:, oc] * scale[oc] + shift[oc]``: the bias alone is ``scale = 1, shift = b``;
    a BN/Scale epilogue ``(conv + b - sub) * mul + add`` is ``scale = mul, shift = (b - sub) * mul + add``.

    ``x: (n, c_in, d, h, w)``; ``w: (c_in, c_out/group, taps)``; ``y: (n, c_out, od, oh, ow)`` allocated by the
    caller; the tables and the padded geometry come from ``plan``.

    Where a group's input feeds a single task (depthwise), the task pads it into a buffer of its own, which stays
    in cache. Where several tasks read a large group, padding per task would repeat the copy, so a first parallel
    loop pads the input once for all (``fusion.kernels.shared.pad_input``).

    A task sums all the phases of a depth phase over a block (``_block_size``), then stores the block's output rows
    in order (``store_phases``)."""
    n_batch, c_in, c_out_g = x.shape[0], x.shape[1], w.shape[1]
    c_in_g = c_in // group
    pitch_h = padded_shape[1] * padded_shape[2]
    padded_length = padded_shape[0] * pitch_h
    blocks_per_group = (c_out_g + 1) // 2
    pad_per_task = blocks_per_group == 1 or c_in_g * padded_length * x.itemsize <= PAD_PER_TASK_BYTES
    padded = np.empty((1, 1), x.dtype) if pad_per_task else pad_input(x, padded_shape, padded_offset)
    most = most_counts(phase_counts)
    size = _block_size(most, strides[1] * strides[2], pitch_h, padded_shape[2])
    geometry = np.array((group, pad_per_task) + strides + padded_shape + padded_offset + most + size, np.int64)
    _phase_loop(n_batch * group * blocks_per_group, x, w, scale, shift, geometry, phase_origin, phase_counts,
                phase_start, tap_index, tap_shift, padded, y)


@tasks
def _phase_loop(first, last, x, w, scale, shift, geometry, phase_origin, phase_counts, phase_start, tap_index,
                tap_shift, padded, y):
    """Tasks ``first <= task < last`` of ``conv_transpose_phases``, each the output channels ``2*block`` and
    ``2*block + 1`` of one (batch, group). ``geometry``: the group count, whether a task pads its input, then the
    strides, the padded shape, its offset, ``most_counts`` and ``_block_size``, 3 each. The sums and the padded
    group are allocated once for the share; a group is padded again only when the share's task moves to another."""
    group, pad_per_task = geometry[0], geometry[1]
    strides, padded_shape, padded_offset = triple(geometry, 2), triple(geometry, 5), triple(geometry, 8)
    most, size = triple(geometry, 11), triple(geometry, 14)
    c_in, c_out_g = x.shape[1], w.shape[1]
    c_in_g = c_in // group
    pitch_w = padded_shape[2]
    pitch_h = padded_shape[1] * pitch_w
    blocks_per_group = (c_out_g + 1) // 2
    plane_phases = strides[1] * strides[2]
    acc = np.empty((2, plane_phases, (size[0] - 1) * pitch_h + (size[1] - 1) * pitch_w + size[2]), y.dtype)
    own = np.empty((c_in_g if pad_per_task else 0, padded_shape[0] * pitch_h), x.dtype)
    padded_group = -1  # the (batch, group) in own
    for task in range(first, last):
        n = task // (group * blocks_per_group)
        rest = task % (group * blocks_per_group)
        g, block = rest // blocks_per_group, rest % blocks_per_group
        j = 2 * block
        two = j + 1 < c_out_g
        oc = g * c_out_g + j
        if pad_per_task:
            if n * group + g != padded_group:
                pad_channels(x[n, g * c_in_g:(g + 1) * c_in_g], padded_shape, padded_offset, own)
                padded_group = n * group + g
            xp, w_task, first_channel = own, w[g * c_in_g:(g + 1) * c_in_g], 0
        else:
            xp, w_task, first_channel = padded[n * c_in:(n + 1) * c_in], w, g * c_in_g
        for plane_first in range(0, phase_origin.shape[0], plane_phases):
            counts = phase_counts[plane_first:plane_first + plane_phases]
            for d0 in range(0, counts[0, 0], size[0]):
                for h0 in range(0, most[1], size[1]):
                    for w0 in range(0, most[2], size[2]):
                        block_first = (d0, h0, w0)
                        _block_sums(acc, counts, block_first, size, plane_first, pitch_h, pitch_w, xp, w_task, j,
                                    two, first_channel, c_in_g, phase_start, tap_index, tap_shift)
                        for e in range(2 if two else 1):
                            store_phases(acc[e], counts, block_first, size, phase_origin[plane_first], strides,
                                         pitch_h, pitch_w, scale[oc + e], shift[oc + e], y[n, oc + e])
