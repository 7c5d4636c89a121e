"""Register-tiled GEMMs on an input laid out flat: ConvTranspose per output phase, and Conv, on 3 spatial axes.

ConvTranspose's decomposition is ``fusion.kernels.conv_transpose_phases``' (read its docstring): output phase ``r`` is
``y_r[oc, m] = sum over (ci, tap of r) w[ci, j, tap] * xp[ci, m_flat + shift(tap)]`` on the zero-padded input
``xp`` (``pad_input``), with ``m_flat`` in the padded row pitches. Conv is the same sum with one phase on the
polyphase split of its input (``fusion.kernels.conv_polyphase``). Read as a GEMM with ``k = (ci, tap)``: ``A[j, k]`` is the
weight, read in place in blocks of up to ``MR`` output channels; ``B[k, m] = xp[ci, m + shift]`` is a row of the
laid-out input at an offset, never copied; ``C`` is a task's accumulator. ``fusion.kernels.microkernel.tile``
computes (block) x ``NR`` of ``C`` in registers. Against ``phases``, each loaded input vector feeds up to ``MR``
output channels instead of two; against GEMM + col2im (or im2col + GEMM) there is no ``cols`` buffer.

With 256-bit vectors or narrower, on layers of several output phases with many (input channel, tap) pairs and
positions a phase, the roles turn (``_channel_tile_loop``, chosen by ``_channels_as_vectors``): a tile holds ``MR``
positions x ``NR`` output channels, broadcasts the input and loads the weights as vectors, from a copy packed per call
(``pack_weights``: per (group, phase), row ``k`` holds the ``c_out/group`` weights of pair ``k``, 64-byte aligned).
A phase's weights are then read in order, where in place each cache line of them holds every phase's taps; and the
vector loads are aligned, where the input's rows sit at every offset (a 32-byte load across two cache lines cost the
tile about a fifth of its speed on the Zen 3). Where it wins and where not: benchmarks/NOTES.md, "Tiled kernel,
channels in vectors".

A task owns the outputs of one (batch, group, depth phase, depth, band of rows or piece of a long row), for the
``strides[1] * strides[2]`` phases of the depth phase, which it stores output row after output row
(``fusion.kernels.shared.store_phases``): every output channel of the group, or one part of them when there are too
few tasks for the threads. No two tasks write the same element.
"""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np
from numba import njit

from fusion.kernels.config import SERIAL, uintp
from fusion.kernels.launch import tasks
from fusion.kernels.microkernel import MR, VECTOR_BYTES, tile, tile_positions, tile_width
from fusion.kernels.shared import block_extent, most_counts, read_only_table, store_phases

# k per pass over a band of C. A pass reads, per k, one element of each of a block's MR weight rows, a cache line
# each: on the AVX2 Zen 3 64 k's (and a B panel of 64 x NR) stayed in its 32 KiB L1 and beat 128 by 4-10%; with
# 512-bit vectors, fewer passes over C won (benchmarks/NOTES.md, "Tiled kernel").
KC = 256 if VECTOR_BYTES == 64 else 64
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
def _flat_tiles(rows, pitch_w, last_row, nr):
    """Tiles of ``nr`` positions that cover ``rows`` rows of the flat band, the last one to ``last_row`` positions."""
    return ((rows - 1) * pitch_w + last_row + nr - 1) // nr


def tiled_gemms(b, channel_length, pitch_h, pitch_w, w, w_strides, group, c_in_g, scale, shift, strides, phase_origin,
                phase_counts, phase_start, tap_index, tap_shift, y):
    """``y[n, g*c_out/group + j, strides*m + phase_origin[r]] = C[j, m_flat] * scale + shift`` for every output phase
    ``r``, where ``C = A B`` over the (``ci``, tap ``t`` of phase ``r``) pairs ``k``:
    ``A[j, k] = w[g*w_strides[0] + ci*w_strides[1] + j*w_strides[2] + tap_index[t]]``, the flat weights read in
    place, and ``B[k, m_flat] = b[(n*c_in + g*c_in/group + ci) * channel_length + tap_shift[t] + m_flat]``, the input
    laid out flat, channel after channel (``fusion.kernels.shared.pad_input``,
    ``fusion.kernels.conv_polyphase.split_input``), with row pitches ``pitch_h, pitch_w``. ``y: (n, c_out, od, oh,
    ow)``. On ``numba.get_num_threads()`` threads."""
    # the tables as bytes: the plan is cached by value (the phase plans that own these tables are cached too)
    count, sizes, b_offsets, a_offsets = _plan_tasks(
        channel_length, pitch_h, pitch_w, tuple(w_strides), group, c_in_g, tuple(strides), phase_counts.tobytes(),
        phase_start.tobytes(), tap_index.tobytes(), tap_shift.tobytes(), y.shape[0], y.shape[1], y.itemsize,
        numba.get_num_threads())
    if sizes[_PACKED_PITCH]:  # output channels in vectors
        packed = pack_weights(w, sizes, a_offsets, phase_start, y.shape[1] // group, y.dtype)
        _channel_tile_loop(count, sizes, b, packed, scale, shift, phase_origin, phase_counts, phase_start, b_offsets,
                           y)
    else:
        _tile_loop(count, sizes, b, w, scale, shift, phase_origin, phase_counts, phase_start, b_offsets, a_offsets, y)


# Where ``_channel_tile_loop`` won on the Zen 3 (benchmarks/NOTES.md, "Tiled kernel, channels in vectors"): several
# output phases (one phase reads its weights in place in order already), at least this many (input channel, tap)
# pairs a phase on average and this many positions a phase (the packing pays for itself).
VECTOR_CHANNELS_MIN_PAIRS = 128
VECTOR_CHANNELS_MIN_POSITIONS = 1024


def _channels_as_vectors(c_out_g: int, c_in_g: int, phase_counts, phase_start, itemsize: int) -> bool:
    """Whether ``tiled_gemms`` holds output channels in vectors (``_channel_tile_loop``): with 256-bit vectors or
    narrower (512-bit ones were not measured), two vectors of output channels a group or more (fewer are padded to
    whole vectors), and where it won (``VECTOR_CHANNELS_MIN_PAIRS``, ``VECTOR_CHANNELS_MIN_POSITIONS``)."""
    phases = len(phase_counts)
    return (VECTOR_BYTES <= 32 and c_out_g >= 2 * tile_positions(itemsize) and phases > 1
            and c_in_g * int(phase_start[-1] - phase_start[0]) >= VECTOR_CHANNELS_MIN_PAIRS * phases
            and int(np.prod(phase_counts, axis=1).max()) >= VECTOR_CHANNELS_MIN_POSITIONS)


def pack_weights(w, sizes, a_offsets, phase_start, c_out_g: int, dtype) -> np.ndarray:
    """The weights as ``_channel_tile_loop`` reads them: ``packed[g, r, k, j] = A[j, k]`` of phase ``r`` of group
    ``g`` (``A`` as in ``tiled_gemms``, its columns ``a_offsets[r]``), ``j`` padded with zeros to ``sizes[_PACKED_PITCH]``
    and every row 64-byte aligned; flat."""
    phases, pairs = a_offsets.shape
    length = sizes[_GROUP] * phases * pairs * sizes[_PACKED_PITCH]
    raw = np.empty(length + 64 // np.dtype(dtype).itemsize, dtype)
    skip = (-raw.ctypes.data % 64) // raw.itemsize
    packed = raw[skip:skip + length]
    _pack_loop(sizes[_GROUP] * phases, sizes, w, a_offsets, phase_start, packed, np.array([c_out_g], np.int64))
    return packed


# The layout of ``_plan_tasks``' sizes: the tiled GEMM's geometry, then how its tasks are cut.
(_CHANNEL_LENGTH, _PITCH_H, _PITCH_W, _W_STRIDE_G, _W_STRIDE_CI, _W_STRIDE_J, _GROUP, _C_IN_G, _STRIDE_D, _STRIDE_H,
 _STRIDE_W, _DEPTH_PHASES, _MOST_D, _BANDS, _BAND_ROWS, _PIECES, _PIECE_WIDTH, _PARTS, _PACKED_PITCH) = range(19)


@lru_cache(maxsize=256)
def _plan_tasks(channel_length, pitch_h, pitch_w, w_strides, group, c_in_g, strides, phase_counts, phase_start,
                tap_index, tap_shift, n_batch, c_out, itemsize, threads):
    """``(tasks, sizes, b_offsets, a_offsets)`` of ``tiled_gemms``, read-only: row ``k = ci*taps + t`` of phase
    ``r``'s ``B`` is ``b_offsets[r, k]`` into ``b`` (channel ``ci`` shifted by tap ``t``), its ``A`` column
    ``a_offsets[r, k]`` into ``w``; ``sizes`` as its named indices say, ``sizes[_PACKED_PITCH]`` 0 unless output
    channels go in vectors (``_channels_as_vectors``; a block of output channels is then ``NR`` of them, else ``MR``).
    The tables arrive as bytes (int64). Plain Python, cached: compiling it cost a first call 1.6 s
    (benchmarks/NOTES.md, "Parallel loops without prange")."""
    phase_counts = np.frombuffer(phase_counts, np.int64).reshape(-1, 3)
    phase_start, tap_index, tap_shift = (np.frombuffer(table, np.int64) for table in (phase_start, tap_index,
                                                                                     tap_shift))
    c_out_g = c_out // group
    nr = tile_positions(itemsize)
    phases = phase_counts.shape[0]
    channels_as_vectors = _channels_as_vectors(c_out_g, c_in_g, phase_counts, phase_start, itemsize)
    channel_block = nr if channels_as_vectors else MR
    blocks = (c_out_g + channel_block - 1) // channel_block
    taps = np.diff(phase_start)
    width = max(1, c_in_g * int(taps.max(initial=0)))
    b_offsets, a_offsets = np.zeros((phases, width), np.int64), np.zeros((phases, width), np.int64)
    channels = np.arange(c_in_g, dtype=np.int64)[:, None]
    for r in range(phases):
        phase_taps = slice(phase_start[r], phase_start[r + 1])
        b_offsets[r, :c_in_g * taps[r]] = (channels * channel_length + tap_shift[phase_taps]).ravel()
        a_offsets[r, :c_in_g * taps[r]] = (channels * w_strides[1] + tap_index[phase_taps]).ravel()

    depth_phases = phases // (strides[1] * strides[2])
    most_d, most_h, most_w = most_counts(phase_counts)
    # as many bands as rows of about BAND positions make, rounded to the nearest: no band of a few leftover rows that
    # reads every weight again for them
    bands = max(1, min(most_h, (2 * most_h * pitch_w + BAND) // (2 * BAND)))
    band_rows = (most_h + bands - 1) // bands
    # Rows of 2 * BAND outputs or more (a long 1-D signal) are cut into pieces of about BAND: a task's sums stay in L2,
    # and the threads share the row.
    pieces = max(1, most_w // BAND)
    piece_width = (((most_w + pieces - 1) // pieces + nr - 1) // nr) * nr
    count = n_batch * group * depth_phases * most_d * bands * pieces
    # Too few tasks to keep every thread busy to the end (a layer of one group and few rows): each task's blocks of
    # output channels are split into parts, which re-read the task's input panels.
    parts = 1
    while count * parts < TASKS_PER_THREAD * threads and parts < blocks:
        parts += 1
    sizes = read_only_table([channel_length, pitch_h, pitch_w, *w_strides, group, c_in_g, *strides, depth_phases,
                             most_d, bands, band_rows, pieces, piece_width, parts,
                             blocks * nr if channels_as_vectors else 0])
    b_offsets.flags.writeable = a_offsets.flags.writeable = False
    return count * parts, sizes, b_offsets, a_offsets


@njit(inline="always", **SERIAL)
def _task(task, sizes, phase_counts):
    """Task ``task`` of ``tiled_gemms``: (part of the output channels, batch, group, first phase of its depth phase,
    those phases' counts, the block it covers as (first, size) in (depth, rows, columns) of their outputs, the most
    rows and the most columns a phase has in it: 0 when the task has nothing to compute)."""
    sh, sw = sizes[_STRIDE_H], sizes[_STRIDE_W]
    band_rows, piece_width = sizes[_BAND_ROWS], sizes[_PIECE_WIDTH]
    part = task % sizes[_PARTS]
    rest = task // sizes[_PARTS]
    piece = rest % sizes[_PIECES]
    rest //= sizes[_PIECES]
    band = rest % sizes[_BANDS]
    rest //= sizes[_BANDS]
    md = rest % sizes[_MOST_D]
    rest //= sizes[_MOST_D]
    plane_first = (rest % sizes[_DEPTH_PHASES]) * sh * sw
    rest //= sizes[_DEPTH_PHASES]
    g, n = rest % sizes[_GROUP], rest // sizes[_GROUP]
    counts = phase_counts[plane_first:plane_first + sh * sw]
    block_first, block_size = (md, band * band_rows, piece * piece_width), (1, band_rows, piece_width)
    rows, widest = 0, 0
    for p in range(sh * sw):
        _, phase_rows, columns = block_extent(counts, p, block_first, block_size)
        rows, widest = max(rows, phase_rows), max(widest, columns)
    if md >= counts[0, 0]:
        rows = 0
    return part, n, g, plane_first, counts, block_first, block_size, rows, widest


@tasks
def _tile_loop(first, last, sizes, b, w, scale, shift, phase_origin, phase_counts, phase_start, b_offsets, a_offsets,
               y):
    """Tasks ``first <= task < last`` of ``tiled_gemms``, each one part of the output channels of one (batch, group,
    depth phase, depth, band of rows, piece of a row). The sums' buffer is allocated once for the share, at the
    largest size a task asks."""
    channel_length, pitch_h, pitch_w = sizes[_CHANNEL_LENGTH], sizes[_PITCH_H], sizes[_PITCH_W]
    group, c_in_g = sizes[_GROUP], sizes[_C_IN_G]
    sd, sh, sw = sizes[_STRIDE_D], sizes[_STRIDE_H], sizes[_STRIDE_W]
    parts = sizes[_PARTS]
    c_out_g = y.shape[1] // group
    c_in = group * c_in_g
    nr = tile_width(y.itemsize)
    blocks = (c_out_g + MR - 1) // MR
    plane_phases = sh * sw  # the phases of one depth phase: a task's, stored together row by row
    scratch = np.empty(0, y.dtype)
    for task in range(first, last):
        part, n, g, plane_first, counts, block_first, block_size, rows, widest = _task(task, sizes, phase_counts)
        if rows == 0 or widest == 0:
            continue
        # Tiles along each output row where a row's outputs round up to whole tiles within the padded pitch
        # (then no tile computes the padding columns between rows); else along the flat band.
        row_tiles = (widest + nr - 1) // nr
        along_rows = row_tiles * nr <= pitch_w
        span = _flat_tiles(rows, pitch_w, row_tiles * nr, nr) * nr  # as far as tiles along rows write
        block_lo, block_hi = part * blocks // parts, (part + 1) * blocks // parts
        channel_lo = _block(block_lo, blocks, c_out_g)[0]
        last_first, last_rows = _block(block_hi - 1, blocks, c_out_g)
        channels = last_first + last_rows - channel_lo
        if scratch.shape[0] < channels * plane_phases * span:
            scratch = np.empty(channels * plane_phases * span, y.dtype)
        c = scratch[:channels * plane_phases * span]
        acc = c.reshape((channels, plane_phases, span))  # acc[j]: C-contiguous, for store_phases' loops
        start = block_first[0] * pitch_h + block_first[1] * pitch_w + block_first[2]
        b_base = (n * c_in + g * c_in_g) * channel_length + start
        for p in range(plane_phases):
            r = plane_first + p
            _, phase_rows, columns = block_extent(counts, p, block_first, block_size)
            if phase_rows == 0 or columns == 0:
                continue
            position_tiles = phase_rows * row_tiles if along_rows else _flat_tiles(phase_rows, pitch_w, columns, nr)
            k_count = c_in_g * (phase_start[r + 1] - phase_start[r])
            for k_first in range(0, max(1, k_count), KC):
                for q in range(position_tiles):
                    at = (q // row_tiles) * pitch_w + (q % row_tiles) * nr if along_rows else q * nr
                    for block in range(block_lo, block_hi):
                        first_channel, block_channels = _block(block, blocks, c_out_g)
                        tile(block_channels, c, ((first_channel - channel_lo) * plane_phases + p) * span + at,
                             plane_phases * span, w, g * sizes[_W_STRIDE_G] + first_channel * sizes[_W_STRIDE_J],
                             a_offsets[r], sizes[_W_STRIDE_J], b, b_base + at, b_offsets[r], k_first,
                             min(KC, k_count - k_first), k_first > 0)
        for j in range(channels):
            oc = g * c_out_g + channel_lo + j
            store_phases(acc[j], counts, block_first, block_size, phase_origin[plane_first], (sd, sh, sw), 0, pitch_w,
                         scale[oc], shift[oc], y[n, oc])


@tasks
def _pack_loop(first, last, sizes, w, a_offsets, phase_start, packed, c_out_g):
    """Tasks ``first <= g*phases + r < last`` of ``pack_weights``: group ``g``, phase ``r``."""
    phases, pairs = a_offsets.shape
    pitch, channels = sizes[_PACKED_PITCH], c_out_g[0]
    stride_j = sizes[_W_STRIDE_J]
    for task in range(first, last):
        g, r = task // phases, task % phases
        w_base = g * sizes[_W_STRIDE_G]
        out = packed[task * pairs * pitch:(task + 1) * pairs * pitch]
        out[:] = 0
        for k in range(sizes[_C_IN_G] * (phase_start[r + 1] - phase_start[r])):
            column = w_base + a_offsets[r, k]
            row = k * pitch
            for j in range(channels):
                out[uintp(row + j)] = w[uintp(column + j * stride_j)]


@tasks
def _channel_tile_loop(first, last, sizes, b, packed, scale, shift, phase_origin, phase_counts, phase_start, b_offsets,
                       y):
    """Tasks ``first <= task < last`` of ``tiled_gemms`` with output channels in vectors: the tasks of ``_tile_loop``,
    each computing tiles of ``MR`` flat positions x ``NR`` channels, ``C[position, channel]``, into sums laid out
    ``(block of NR channels, phase, position, channel)``; then stored row after row (``_store_rows``)."""
    channel_length, pitch_h, pitch_w = sizes[_CHANNEL_LENGTH], sizes[_PITCH_H], sizes[_PITCH_W]
    group, c_in_g = sizes[_GROUP], sizes[_C_IN_G]
    sd, sh, sw = sizes[_STRIDE_D], sizes[_STRIDE_H], sizes[_STRIDE_W]
    parts = sizes[_PARTS]
    pitch = sizes[_PACKED_PITCH]
    phases, pairs = b_offsets.shape
    c_out_g = y.shape[1] // group
    c_in = group * c_in_g
    nr = tile_width(y.itemsize)
    blocks = pitch // nr
    plane_phases = sh * sw
    w_rows = np.arange(pairs) * pitch  # row k of a phase's packed weights
    scratch = np.empty(0, y.dtype)
    for task in range(first, last):
        part, n, g, plane_first, counts, block_first, block_size, rows, widest = _task(task, sizes, phase_counts)
        if rows == 0 or widest == 0:
            continue
        span = _flat_tiles(rows, pitch_w, widest, MR) * MR
        block_lo, block_hi = part * blocks // parts, (part + 1) * blocks // parts
        size = (block_hi - block_lo) * plane_phases * span * nr
        if scratch.shape[0] < size:
            scratch = np.empty(size, y.dtype)
        c = scratch[:size]
        acc = c.reshape((block_hi - block_lo, plane_phases, span, nr))
        a_base = (n * c_in + g * c_in_g) * channel_length + block_first[0] * pitch_h + block_first[1] * pitch_w + \
            block_first[2]
        for p in range(plane_phases):
            r = plane_first + p
            _, phase_rows, columns = block_extent(counts, p, block_first, block_size)
            if phase_rows == 0 or columns == 0:
                continue
            position_tiles = _flat_tiles(phase_rows, pitch_w, columns, MR)
            k_count = c_in_g * (phase_start[r + 1] - phase_start[r])
            w_base = (g * phases + r) * pairs * pitch
            for k_first in range(0, max(1, k_count), KC):
                for block in range(block_lo, block_hi):
                    for q in range(position_tiles):
                        tile(MR, c, (((block - block_lo) * plane_phases + p) * span + q * MR) * nr, nr, b,
                             a_base + q * MR, b_offsets[r], 1, packed, w_base + block * nr, w_rows, k_first,
                             min(KC, k_count - k_first), k_first > 0)
        for block in range(block_lo, block_hi):
            channels = min(nr, c_out_g - block * nr)
            oc = g * c_out_g + block * nr
            _store_rows(acc[block - block_lo], channels, rows, counts, block_first, block_size,
                        phase_origin[plane_first], (sd, sh, sw), pitch_w, scale[oc:oc + channels],
                        shift[oc:oc + channels], y[n, oc:oc + channels])


@njit(**SERIAL)
def _store_rows(acc, channels, rows, counts, first, size, origin, strides, pitch_w, scale, shift, out):
    """``store_phases`` for the ``channels`` of one block of ``acc: (phase, position, channel)``, one input row at a
    time for all of them: a row's sums (a few KiB) stay in L1 while every channel reads its own from them."""
    for i_h in range(rows):
        row = acc[:, i_h * pitch_w:, :]
        for j in range(channels):
            store_phases(row[:, :, j], counts, (first[0], first[1] + i_h, first[2]), (1, 1, size[2]), origin,
                         strides, 0, pitch_w, scale[j], shift[j], out[j])
