"""Helpers more than one kernel uses: read-only plan tables, zero-padding input channels (a few, or the whole input in
parallel), and storing a block of ConvTranspose output phases row after row (both ConvTranspose kernels,
``conv_transpose_phases`` and ``tiles``, store through it)."""

from __future__ import annotations

import numpy as np
from numba import njit

from fusion.kernels.config import SERIAL, uintp
from fusion.kernels.launch import tasks, triple
from fusion.kernels.microkernel import tile_positions


def read_only_table(rows, width=None) -> np.ndarray:
    """``rows`` as an int64 array (``width`` columns if given) that cannot be written: a cached plan's table."""
    array = np.array(rows, np.int64).reshape(-1, width) if width else np.array(rows, np.int64)
    array.flags.writeable = False
    return array


@njit(**SERIAL)
def pad_channels(x_channels, padded_shape, padded_offset, out):
    """``out[c]`` = ``x_channels[c]: (d, h, w)`` placed at ``padded_offset`` in zeros of ``padded_shape``, flattened."""
    pd, ph, pw = padded_shape
    od, oh, ow = padded_offset
    in_d, in_h, in_w = x_channels.shape[1], x_channels.shape[2], x_channels.shape[3]
    out[...] = 0
    for c in range(x_channels.shape[0]):
        for i_d in range(in_d):
            for i_h in range(in_h):
                row = out[c, ((i_d + od) * ph + i_h + oh) * pw + ow:]
                source = x_channels[c, i_d, i_h]
                for i_w in range(in_w):
                    row[uintp(i_w)] = source[uintp(i_w)]


def spared_buffer(channels: int, length: int, dtype) -> np.ndarray:
    """An uninitialized ``(channels + spare, length)`` buffer whose spare rows are zero: a tile reads up to ``NR - 1``
    positions past the last output it keeps."""
    spare = 1 + tile_positions(np.dtype(dtype).itemsize) // length
    buffer = np.empty((channels + spare, length), dtype)
    buffer[channels:] = 0
    return buffer


def pad_input(x, padded_shape, padded_offset):
    """Every channel of ``x: (n, c_in, d, h, w)`` zero-padded (``pad_channels``), in parallel, flat, one
    after another, in a ``spared_buffer``."""
    n_batch, c_in = x.shape[0], x.shape[1]
    xp = spared_buffer(n_batch * c_in, padded_shape[0] * padded_shape[1] * padded_shape[2], x.dtype)
    _pad_loop(n_batch * c_in, x, np.array(padded_shape + padded_offset, np.int64), xp)
    return xp


@tasks
def _pad_loop(first, last, x, geometry, xp):
    """Channels ``first <= n*c_in + c < last`` of ``pad_input``; ``geometry``: the padded shape, then the offset."""
    c_in = x.shape[1]
    for channel in range(first, last):
        n, c = channel // c_in, channel % c_in
        pad_channels(x[n, c:c + 1], triple(geometry, 0), triple(geometry, 3), xp[channel:channel + 1])


@njit(inline="always", **SERIAL)
def block_extent(counts, p, first, size):
    """(depths, rows, columns) of phase ``p`` (``counts[p]`` its whole extent) inside the block that starts at
    ``first = (d0, h0, w0)`` and spans at most ``size``."""
    return (max(0, min(first[0] + size[0], counts[p, 0]) - first[0]),
            max(0, min(first[1] + size[1], counts[p, 1]) - first[1]),
            max(0, min(first[2] + size[2], counts[p, 2]) - first[2]))


@njit(**SERIAL)
def store_phases(acc, counts, first, size, origin, strides, pitch_h, pitch_w, scale, shift, out):
    """``out[s_d*m_d + o_d, s_h*m_h + o_h + rh, s_w*m_w + rw] = acc[rh*s_w + rw, m_flat] * scale + shift`` for the
    phases (``rh``, ``rw``) of one depth phase held in ``acc`` (``acc.shape[0] // s_w`` row phases of ``s_w`` phases
    each; ``counts[rh*s_w + rw]`` their extents, ``origin = (o_d, o_h, 0)`` the first one's) within the block of
    ``block_extent(counts, p, first, size)``: ``m = first + (i_d, i_h, i_w)``, ``m_flat = i_d*pitch_h + i_h*pitch_w +
    i_w``.

    Output row after output row: storing one row phase's rows, then the next one's, writes every other row and
    defeats the prefetchers on an output not in cache. One call per block, not per row: a call per output row cost
    more than the row's stores. Indices rather than a view per row (benchmarks/NOTES.md, "Phase kernel")."""
    sd, sh, sw = strides
    row_phases = acc.shape[0] // sw
    two, step, base = uintp(2), uintp(sw), uintp(sw * first[2])
    # a phase's columns depend on its phase along the row only, its rows on its row phase only
    depths, rows, columns = block_extent(counts, 0, first, size)
    both = block_extent(counts, 1, first, size)[2] if sw == 2 else 0
    for rh in range(1, row_phases):
        rows = max(rows, block_extent(counts, rh * sw, first, size)[1])
    for i_d in range(depths):
        o_d = sd * (first[0] + i_d) + origin[0]
        for i_h in range(rows):
            h = first[1] + i_h
            at = uintp(i_d * pitch_h + i_h * pitch_w)
            for rh in range(row_phases):
                p = rh * sw
                if h >= counts[p, 1]:
                    continue
                o_h = sh * h + origin[1] + rh
                if sw == 2:
                    # both phases in one loop: a pair of interleaved stores, which LLVM vectorizes (a lone stride-2
                    # store it does not)
                    for m in range(both):
                        u = uintp(m)
                        out[o_d, o_h, base + two * u] = acc[p, at + u] * scale + shift
                        out[o_d, o_h, base + two * u + uintp(1)] = acc[p + 1, at + u] * scale + shift
                    for m in range(both, columns):
                        u = uintp(m)
                        out[o_d, o_h, base + two * u] = acc[p, at + u] * scale + shift
                elif sw == 1:
                    for m in range(columns):
                        u = uintp(m)
                        out[o_d, o_h, base + u] = acc[p, at + u] * scale + shift
                else:
                    for rw in range(sw):
                        for m in range(block_extent(counts, rw, first, size)[2]):
                            u = uintp(m)
                            out[o_d, o_h, base + step * u + uintp(rw)] = acc[p + rw, at + u] * scale + shift


def most_counts(phase_counts) -> tuple[int, int, int]:
    """The most depths, rows and columns of any phase (``phase_counts: (phases, 3)``). Plain Python: only the kernels'
    planning, outside compiled code, asks."""
    most_d, most_h, most_w = (int(most) for most in np.asarray(phase_counts).max(axis=0))
    return most_d, most_h, most_w
