"""Register-tiled GEMMs on an input laid out flat: ConvTranspose per output phase, and Conv, on 3 spatial axes.

ConvTranspose's decomposition is ``fusion.kernels.conv_transpose_phases``' (read its docstring): output phase ``r`` is
``y_r[oc, m] = sum over (ci, tap of r) w[ci, j, tap] * xp[ci, m_flat + shift(tap)]`` on the zero-padded input
``xp`` (``pad_input``), with ``m_flat`` in the padded row pitches. Conv is the same sum with one phase on the
polyphase split of its input (``fusion.kernels.conv_polyphase``). Read as a GEMM with ``k = (ci, tap)``: ``A[j, k]`` is the
weight, read in place in blocks of up to ``MR`` output channels; ``B[k, m] = xp[ci, m + shift]`` is a row of the
laid-out input at an offset, never copied; ``C`` is a task's accumulator. ``fusion.kernels.microkernel.tile``
computes (block) x ``NR`` of ``C`` in registers. Against ``phases``, each loaded input vector feeds up to ``MR``
output channels instead of two; against GEMM + col2im (or im2col + GEMM) there is no ``cols`` buffer.

A task owns the outputs of one (batch, group, depth phase, depth, band of rows or piece of a long row), for the
``strides[1] * strides[2]`` phases of the depth phase, which it stores output row after output row
(``fusion.kernels.shared.store_phases``): every output channel of the group, or one part of them when there are too
few tasks for the threads. No two tasks write the same element.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from fusion.kernels.config import PARALLEL, SERIAL
from fusion.kernels.microkernel import MR, VECTOR_BYTES, tile, tile_width
from fusion.kernels.shared import block_extent, most_counts, pad_channels, store_phases

# k per pass over a band of C. With 256-bit vectors a B panel of KC x NR (float32: 8 KiB) stays in L1 while every
# block of output channels reads it; with 512-bit vectors, fewer passes over C won (benchmarks/NOTES.md, "Tiled
# kernel").
KC = 256 if VECTOR_BYTES == 64 else 128
# Flat positions (in the padded pitches) a task covers per phase, about: its C, (phases of a depth phase) x (output
# channels of the group) x BAND, stays in L2.
BAND = 256
# Parallel tasks wanted per thread: with fewer, the last task of the busiest thread leaves the others idle.
TASKS_PER_THREAD = 4


@njit(inline="always", **SERIAL)
def _block(block, blocks, channels):
    """(first channel, channels) of block ``block`` when ``channels`` are split into ``blocks`` blocks as even as
    can be: 8 channels as 4 + 4 rather than 6 + 2, whose 2-row tile has too few sums in flight to keep the FMA units
    busy."""
    base, extra = divmod(channels, blocks)
    return block * base + min(block, extra), base + (1 if block < extra else 0)


@njit(inline="always", **SERIAL)
def _flat_tiles(rows, pitch_w, row_tiles, nr):
    """Tiles of ``nr`` positions that cover ``rows`` rows of the flat band, the last row to its ``row_tiles`` tiles."""
    return ((rows - 1) * pitch_w + row_tiles * nr + nr - 1) // nr


@njit(**SERIAL)
def spared_buffer(channels, length, like):
    """An uninitialized ``(channels + spare, length)`` buffer of ``like``'s dtype whose spare rows are zero: a tile
    reads up to ``NR - 1`` positions past the last output it keeps."""
    spare = 1 + tile_width(like.itemsize) // length
    buffer = np.empty((channels + spare, length), like.dtype)
    buffer[channels:] = 0
    return buffer


@njit(**PARALLEL)
def pad_input(x, padded_shape, padded_offset):
    """Every channel of ``x: (n, c_in, d, h, w)`` zero-padded (``fusion.kernels.shared.pad_channels``), flat, one
    after another, in a ``spared_buffer``."""
    n_batch, c_in = x.shape[0], x.shape[1]
    xp = spared_buffer(n_batch * c_in, padded_shape[0] * padded_shape[1] * padded_shape[2], x)
    for channel in prange(n_batch * c_in):
        n, c = channel // c_in, channel % c_in
        pad_channels(x[n, c:c + 1], padded_shape, padded_offset, xp[channel:channel + 1])
    return xp


@njit(**PARALLEL)
def tiled_gemms(b, channel_length, pitch_h, pitch_w, w, w_strides, group, c_in_g, scale, shift, strides, phase_origin,
                phase_counts, phase_start, tap_index, tap_shift, threads, y):
    """``y[n, g*c_out/group + j, strides*m + phase_origin[r]] = C[j, m_flat] * scale + shift`` for every output phase
    ``r``, where ``C = A B`` over the (``ci``, tap ``t`` of phase ``r``) pairs ``k``:
    ``A[j, k] = w[g*w_strides[0] + ci*w_strides[1] + j*w_strides[2] + tap_index[t]]``, the flat weights read in
    place, and ``B[k, m_flat] = b[(n*c_in + g*c_in/group + ci) * channel_length + tap_shift[t] + m_flat]``, the input
    laid out flat, channel after channel (``pad_input``, ``fusion.kernels.conv_polyphase.split_input``), with row pitches
    ``pitch_h, pitch_w``. ``y: (n, c_out, od, oh, ow)``; ``threads``: Numba's thread count (read by the caller:
    reading it in compiled code keeps Numba from caching it). Called from Python, not from another kernel, so that it
    is compiled once rather than once into each caller."""
    n_batch, c_out_g = y.shape[0], y.shape[1] // group
    c_in = group * c_in_g
    nr = tile_width(y.itemsize)
    phases = phase_origin.shape[0]
    blocks = (c_out_g + MR - 1) // MR
    most_taps = 0
    for r in range(phases):
        most_taps = max(most_taps, phase_start[r + 1] - phase_start[r])
    # row k of phase r: B's is channel ci shifted by the tap, A's the tap of channel ci
    b_offsets = np.empty((phases, max(1, c_in_g * most_taps)), np.int64)
    a_offsets = np.empty((phases, max(1, c_in_g * most_taps)), np.int64)
    for r in range(phases):
        taps = phase_start[r + 1] - phase_start[r]
        for ci in range(c_in_g):
            for t in range(taps):
                b_offsets[r, ci * taps + t] = ci * channel_length + tap_shift[phase_start[r] + t]
                a_offsets[r, ci * taps + t] = ci * w_strides[1] + tap_index[phase_start[r] + t]

    sh, sw = strides[1], strides[2]
    plane_phases = sh * sw  # the phases of one depth phase: a task's, stored together row by row
    depth_phases = phases // plane_phases
    most_d, most_h, most_w = most_counts(phase_counts)
    # as many bands as rows of about BAND positions make, rounded to the nearest: no band of a few leftover rows that
    # reads every weight again for them
    bands = max(1, min(most_h, (2 * most_h * pitch_w + BAND) // (2 * BAND)))
    band_rows = (most_h + bands - 1) // bands
    # Rows of 2 * BAND outputs or more (a long 1-D signal) are cut into pieces of about BAND: a task's sums stay in L2,
    # and the threads share the row.
    pieces = max(1, most_w // BAND)
    piece_width = (((most_w + pieces - 1) // pieces + nr - 1) // nr) * nr
    tasks = n_batch * group * depth_phases * most_d * bands * pieces
    # Too few tasks to keep every thread busy to the end (a layer of one group and few rows): each task's blocks of
    # output channels are split into parts, which re-read the task's input panels.
    parts = 1
    while tasks * parts < TASKS_PER_THREAD * threads and parts < blocks:
        parts += 1
    for task in prange(tasks * parts):
        part = task % parts
        rest = task // parts
        piece = rest % pieces
        rest //= pieces
        band = rest % bands
        rest //= bands
        md = rest % most_d
        rest //= most_d
        plane_first = (rest % depth_phases) * plane_phases
        rest //= depth_phases
        g, n = rest % group, rest // group
        counts = phase_counts[plane_first:plane_first + plane_phases]
        h0, w0 = band * band_rows, piece * piece_width
        block_first, block_size = (md, h0, w0), (1, band_rows, piece_width)
        rows, widest = 0, 0
        for p in range(plane_phases):
            _, phase_rows, columns = block_extent(counts, p, block_first, block_size)
            rows, widest = max(rows, phase_rows), max(widest, columns)
        if md >= counts[0, 0] or rows == 0 or widest == 0:
            continue
        # Tiles along each output row where a row's outputs round up to whole tiles within the padded pitch
        # (then no tile computes the padding columns between rows); else along the flat band.
        row_tiles = (widest + nr - 1) // nr
        along_rows = row_tiles * nr <= pitch_w
        span = _flat_tiles(rows, pitch_w, row_tiles, nr) * nr
        block_lo, block_hi = part * blocks // parts, (part + 1) * blocks // parts
        channel_lo = _block(block_lo, blocks, c_out_g)[0]
        last_first, last_rows = _block(block_hi - 1, blocks, c_out_g)
        channels = last_first + last_rows - channel_lo
        acc = np.empty((channels, plane_phases, span), y.dtype)  # acc[j]: C-contiguous, for store_phases' loops
        c = acc.reshape(-1)
        start = md * pitch_h + h0 * pitch_w + w0
        b_base = (n * c_in + g * c_in_g) * channel_length + start
        for p in range(plane_phases):
            r = plane_first + p
            _, phase_rows, columns = block_extent(counts, p, block_first, block_size)
            if phase_rows == 0 or columns == 0:
                continue
            position_tiles = phase_rows * row_tiles if along_rows else _flat_tiles(phase_rows, pitch_w, row_tiles, nr)
            k_count = c_in_g * (phase_start[r + 1] - phase_start[r])
            for k_first in range(0, max(1, k_count), KC):
                for q in range(position_tiles):
                    at = (q // row_tiles) * pitch_w + (q % row_tiles) * nr if along_rows else q * nr
                    for block in range(block_lo, block_hi):
                        first_channel, block_channels = _block(block, blocks, c_out_g)
                        tile(block_channels, c, ((first_channel - channel_lo) * plane_phases + p) * span + at,
                             plane_phases * span, w, g * w_strides[0] + first_channel * w_strides[2], a_offsets[r],
                             w_strides[2], b, b_base + at, b_offsets[r], k_first, min(KC, k_count - k_first),
                             k_first > 0)
        for j in range(channels):
            oc = g * c_out_g + channel_lo + j
            store_phases(acc[j], counts, block_first, block_size, phase_origin[plane_first], strides, 0, pitch_w,
                         scale[oc], shift[oc], y[n, oc])
