"""Direct Conv kernel on 3 spatial axes, parallel over (batch, output channel), and its shared helpers.

Each parallel task owns one output plane ``y[n, oc]`` and writes nothing else, so no two threads ever add
into the same element. Layouts: ``w: (c_out, c_in/group, kd, kh, kw)``; ``x: (n, c_in, d, h, w)``,
``y: (n, c_out, od, oh, ow)``. It runs depthwise layers; Conv with more input channels per group runs on
``fusion.kernels.conv_polyphase`` (from 256, on im2col + GEMM), ConvTranspose on ``fusion.kernels.conv_transpose_phases``,
``fusion.kernels.tiles`` and ``fusion.kernels.col2im``.
"""

import numpy as np
from numba import njit

from fusion.kernels.config import SERIAL, uintp
from fusion.kernels.launch import tasks, triple


@njit(**SERIAL)
def valid_range(offset, stride, n_src, n_dst):
    """Half-open ``[lo, hi)`` of ``i`` in ``[0, n_src)`` with ``0 <= i*stride + offset < n_dst``."""
    lo = -(offset // stride)  # ceil(-offset / stride)
    hi = (n_dst - 1 - offset) // stride + 1
    if lo < 0:
        lo = 0
    if hi > n_src:
        hi = n_src
    if hi < lo:
        hi = lo
    return lo, hi


@njit(**SERIAL)
def conv_plane(x, w, n, oc, group, strides, dilations, pads_begin, out):
    """Accumulate into ``out = y[n, oc]`` every product ``x[n, ci, i] * w[oc, ci_g, t]`` it reads."""
    c_in = x.shape[1]
    c_out_g = w.shape[0] // group
    c_in_g = c_in // group
    g = oc // c_out_g
    sd, sh, sw = strides
    dd, dh, dw = dilations
    pd, ph, pw = pads_begin
    out_d, out_h, out_w = out.shape
    in_d, in_h, in_w = x.shape[2], x.shape[3], x.shape[4]
    for ci_g in range(c_in_g):
        plane = x[n, g * c_in_g + ci_g]
        for kd in range(w.shape[2]):
            off_d = kd * dd - pd
            d_lo, d_hi = valid_range(off_d, sd, out_d, in_d)
            for kh in range(w.shape[3]):
                off_h = kh * dh - ph
                h_lo, h_hi = valid_range(off_h, sh, out_h, in_h)
                for kw in range(w.shape[4]):
                    off_w = kw * dw - pw
                    w_lo, w_hi = valid_range(off_w, sw, out_w, in_w)
                    tap = w[oc, ci_g, kd, kh, kw]
                    for o_d in range(d_lo, d_hi):
                        i_d = o_d * sd + off_d
                        for o_h in range(h_lo, h_hi):
                            row_out = out[o_d, o_h]
                            row_in = plane[i_d, o_h * sh + off_h]
                            for o_w in range(w_lo, w_hi):
                                row_out[uintp(o_w)] += tap * row_in[uintp(o_w * sw + off_w)]


@njit(**SERIAL)
def finish_plane(out, mul, sub, add):
    """The per-channel affine epilogue on one finished output plane: ``out = (out - sub) * mul + add``."""
    flat = out.reshape(-1)
    for k in range(flat.shape[0]):
        flat[k] = (flat[k] - sub) * mul + add


def conv_3d(x, w, b, group, strides, dilations, pads_begin, y):
    """``y = Conv(x, w) + b``; ``y`` is allocated by the caller with the resolved output shape."""
    _conv_loop(y.shape[0] * y.shape[1], x, w, b, np.array((group,) + strides + dilations + pads_begin, np.int64), y)


@tasks
def _conv_loop(first, last, x, w, b, geometry, y):
    """Planes ``first <= n*c_out + oc < last`` of ``conv_3d``; ``geometry``: the group count, then the strides,
    dilations and begin pads."""
    c_out = y.shape[1]
    for task in range(first, last):
        n, oc = task // c_out, task % c_out
        out = y[n, oc]
        out[...] = b[oc]
        conv_plane(x, w, n, oc, geometry[0], triple(geometry, 1), triple(geometry, 4), triple(geometry, 7), out)
