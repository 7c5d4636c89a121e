"""ConvTranspose as one register-tiled GEMM per output phase, on 3 spatial axes.

The decomposition is ``fusion.kernels.phases``' (read its docstring): output phase ``r`` is
``y_r[oc, m] = sum over (ci, tap of r) w[ci, j, tap] * xp[ci, m_flat + shift(tap)]`` on the zero-padded input
``xp``, with ``m_flat`` in the padded row pitches. Read as a GEMM with ``k = (ci, tap)``: ``A[j, k]`` is the
weight, packed in blocks of up to ``MR`` output channels; ``B[k, m] = xp[ci, m + shift]`` is a row of the padded
input at an offset, never copied; ``C`` is a task's accumulator. ``fusion.kernels.microkernel.tile`` computes
(block) x ``NR`` of ``C`` in registers. Against ``phases``, each loaded input vector feeds up to ``MR`` output
channels instead of two; against GEMM + col2im there is no ``cols`` buffer and no scatter.

A task owns the outputs of one (batch, group, row phase, depth, band of rows): every output channel of the group,
for the ``strides[2]`` phases that interleave along a row. No two tasks write the same element.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from fusion.kernels.config import PARALLEL, SERIAL
from fusion.kernels.microkernel import MR, VECTOR_BYTES, VECTORS_PER_ROW, tile
from fusion.kernels.phases import pad_channels, store_phases

# k per pass over a band of C: a B panel of KC x NR (8 KiB) stays in L1 while every block of output channels reads
# it (measured against 64, 96, 192, 256 and 512 on the 256->128 k4 decoder and its group-4 twin: 128 best).
KC = 128
# Flat positions (in the padded pitches) a task covers per phase, about: its C, (phases along a row) x (output
# channels of the group) x BAND, stays in L2.
BAND = 256


@njit(inline="always", **SERIAL)
def _block(block, blocks, channels):
    """(first channel, channels) of block ``block`` when ``channels`` are split into ``blocks`` blocks as even as
    can be: 8 channels as 4 + 4 rather than 6 + 2, whose 2-row tile has too few sums in flight to keep the FMA units
    busy."""
    base, extra = divmod(channels, blocks)
    return block * base + min(block, extra), base + (1 if block < extra else 0)


@njit(**SERIAL)
def _pack_weights(w_group, phase_taps, blocks, out):
    """``out[block, k*MR + i] = w_group[ci, first + i, phase_taps[t]]`` with ``k = ci*taps + t`` for the block's
    channels ``first + i`` (``_block``); 0 in the unused rows. ``w_group: (c_in/group, c_out/group, taps)``."""
    taps = phase_taps.shape[0]
    c_in_g, c_out_g = w_group.shape[0], w_group.shape[1]
    for block in range(blocks):
        first, rows = _block(block, blocks, c_out_g)
        for ci in range(c_in_g):
            for t in range(taps):
                k = ci * taps + t
                for i in range(MR):
                    out[block, k * MR + i] = w_group[ci, first + i, phase_taps[t]] if i < rows else 0


@njit(**PARALLEL)
def conv_transpose_tiles(x, w, scale, shift, group, strides, padded_shape, padded_offset, phase_origin, phase_counts,
                         phase_start, tap_index, tap_shift, y):
    """``y[:, oc] = ConvTranspose(x, w)[:, oc] * scale[oc] + shift[oc]`` (the epilogue as in
    ``fusion.kernels.phases.conv_transpose_phases``, which takes the same arguments and tables from ``plan``).

    ``x: (n, c_in, d, h, w)``; ``w: (c_in, c_out/group, taps)``; ``y: (n, c_out, od, oh, ow)``."""
    n_batch, c_in = x.shape[0], x.shape[1]
    c_out_g = w.shape[1]
    c_in_g = c_in // group
    nr = VECTORS_PER_ROW * (VECTOR_BYTES // x.itemsize)
    pitch_w = padded_shape[2]
    pitch_h = padded_shape[1] * pitch_w
    length = padded_shape[0] * pitch_h
    phases = phase_origin.shape[0]
    blocks = (c_out_g + MR - 1) // MR

    # The padded input, flat, with spare zero rows after it: a tile reads up to NR - 1 positions past the last
    # output it keeps.
    spare = 1 + nr // length
    xp = np.empty((n_batch * c_in + spare, length), x.dtype)
    xp[n_batch * c_in:] = 0
    for channel in prange(n_batch * c_in):
        n, c = channel // c_in, channel % c_in
        pad_channels(x[n, c:c + 1], padded_shape, padded_offset, xp[channel:channel + 1])
    b = xp.reshape(-1)

    most_taps = 0
    for r in range(phases):
        most_taps = max(most_taps, phase_start[r + 1] - phase_start[r])
    k_most = c_in_g * most_taps
    offsets = np.empty((phases, max(1, k_most)), np.int64)  # B's row k of phase r: xp[ci] shifted by the tap
    for r in range(phases):
        taps = phase_start[r + 1] - phase_start[r]
        for ci in range(c_in_g):
            for t in range(taps):
                offsets[r, ci * taps + t] = ci * length + tap_shift[phase_start[r] + t]
    a = np.empty((group, phases, blocks, max(1, k_most) * MR), w.dtype)
    for gr in prange(group * phases):
        g, r = gr // phases, gr % phases
        _pack_weights(w[g * c_in_g:(g + 1) * c_in_g], tap_index[phase_start[r]:phase_start[r + 1]], blocks, a[g, r])
    a_flat = a.reshape(-1)

    sw = strides[2]
    row_phases = phases // sw
    most_d, most_h = 0, 0
    for r in range(phases):
        most_d, most_h = max(most_d, phase_counts[r, 0]), max(most_h, phase_counts[r, 1])
    band_rows = max(1, BAND // pitch_w)
    bands = (most_h + band_rows - 1) // band_rows
    for task in prange(n_batch * group * row_phases * most_d * bands):
        band = task % bands
        rest = task // bands
        md = rest % most_d
        rest //= most_d
        first = (rest % row_phases) * sw
        rest //= row_phases
        g, n = rest % group, rest // group
        counts = phase_counts[first:first + sw]
        h0 = band * band_rows
        if md >= counts[0, 0] or h0 >= counts[0, 1]:
            continue
        h1 = min(counts[0, 1], h0 + band_rows)
        widest = 0
        for rw in range(sw):
            widest = max(widest, counts[rw, 2])
        if widest == 0:
            continue
        # Tiles along each output row where a row's outputs round up to whole tiles within the padded pitch
        # (then no tile computes the padding columns between rows); else along the flat band.
        row_tiles = (widest + nr - 1) // nr
        along_rows = row_tiles * nr <= pitch_w
        span = (h1 - 1 - h0) * pitch_w + row_tiles * nr
        flat_tiles = (span + nr - 1) // nr
        span = flat_tiles * nr
        position_tiles = (h1 - h0) * row_tiles if along_rows else flat_tiles
        acc = np.empty((sw, c_out_g, span), y.dtype)
        c = acc.reshape(-1)
        start = md * pitch_h + h0 * pitch_w
        b_base = (n * c_in + g * c_in_g) * length + start
        for rw in range(sw):
            r = first + rw
            if counts[rw, 2] == 0:
                continue
            k_count = c_in_g * (phase_start[r + 1] - phase_start[r])
            a_base = ((g * phases + r) * blocks) * a.shape[3]
            for q in range(position_tiles):
                p = (q // row_tiles) * pitch_w + (q % row_tiles) * nr if along_rows else q * nr
                for k_first in range(0, max(1, k_count), KC):
                    for block in range(blocks):
                        first_channel, rows = _block(block, blocks, c_out_g)
                        tile(rows, c, (rw * c_out_g + first_channel) * span + p, span, a_flat,
                             a_base + block * a.shape[3], b, b_base + p, offsets[r], k_first,
                             min(KC, k_count - k_first), k_first > 0)
        band_counts = counts.copy()
        band_counts[:, 0] = 1
        band_counts[:, 1] = h1 - h0
        origin = phase_origin[first].copy()
        origin[0] += strides[0] * md
        origin[1] += strides[1] * h0
        for j in range(c_out_g):
            oc = g * c_out_g + j
            store_phases(acc[:, j], origin, band_counts, strides, 0, pitch_w, scale[oc], shift[oc], y[n, oc])
