"""col2im and im2col on 3 spatial axes, for convolutions computed as BLAS GEMMs.

ConvTranspose as GEMM: ``cols[n, oc, tap, i] = sum_ci w[ci, j, tap] * x[n, ci, i]`` (one GEMM per group), then
``col2im`` adds each ``cols[n, oc, tap, i]`` into ``y[n, oc, i*stride + tap*dilation - pad]``. Each parallel task
owns one output plane ``y[n, oc]``, so no two threads write the same element.
Conv as GEMM: ``im2col`` gathers ``cols[n, ci, tap, o] = x[n, ci, o*stride + tap*dilation - pad]`` (0 outside).
"""

import numpy as np
from numba import njit

from fusion.kernels.config import SERIAL, uintp
from fusion.kernels.conv import finish_plane, valid_range
from fusion.kernels.launch import tasks, triple


@njit(**SERIAL)
def _add_rows(taps, d_range, h_range, w_range, strides, offsets, out):
    """``out[i_d*sd + off_d, i_h*sh + off_h, i_w*sw + off_w] += taps[i_d, i_h, i_w]`` over the three ranges."""
    sd, sh, sw = strides
    off_d, off_h, off_w = offsets
    for i_d in range(d_range[0], d_range[1]):
        for i_h in range(h_range[0], h_range[1]):
            row_out = out[i_d * sd + off_d, i_h * sh + off_h]
            row_in = taps[i_d, i_h]
            for i_w in range(w_range[0], w_range[1]):
                row_out[uintp(i_w * sw + off_w)] += row_in[uintp(i_w)]


@njit(**SERIAL)
def _add_row_pairs(taps_a, taps_b, d_range, h_range, w_range_a, w_range_b, strides, offsets, out):
    """``_add_rows`` for two taps of stride 2 whose outputs interleave: ``taps_a`` lands on ``2*i_w + off_w`` and
    ``taps_b`` on ``2*i_w + off_w + 1``. Where both are in range, one loop makes an interleaved pair of stores,
    which LLVM vectorizes (a lone stride-2 store it does not); the few edge columns go one by one."""
    sd, sh, _ = strides
    off_d, off_h, off_w = offsets
    lo = max(w_range_a[0], w_range_b[0])
    hi = max(lo, min(w_range_a[1], w_range_b[1]))
    for i_d in range(d_range[0], d_range[1]):
        for i_h in range(h_range[0], h_range[1]):
            row_out = out[i_d * sd + off_d, i_h * sh + off_h]
            row_a, row_b = taps_a[i_d, i_h], taps_b[i_d, i_h]
            for i_w in range(lo, hi):
                row_out[uintp(2 * i_w + off_w)] += row_a[uintp(i_w)]
                row_out[uintp(2 * i_w + off_w + 1)] += row_b[uintp(i_w)]
            for i_w in range(w_range_a[0], min(w_range_a[1], lo)):
                row_out[2 * i_w + off_w] += row_a[i_w]
            for i_w in range(max(w_range_a[0], hi), w_range_a[1]):
                row_out[2 * i_w + off_w] += row_a[i_w]
            for i_w in range(w_range_b[0], min(w_range_b[1], lo)):
                row_out[2 * i_w + off_w + 1] += row_b[i_w]
            for i_w in range(max(w_range_b[0], hi), w_range_b[1]):
                row_out[2 * i_w + off_w + 1] += row_b[i_w]


@njit(**SERIAL)
def col2im_plane(cols, n, oc, strides, dilations, pads_begin, out):
    """Add ``cols[n, oc, tap, id, ih, iw]`` (taps flattened as kd, kh, kw) into the plane ``out = y[n, oc]``."""
    sd, sh, sw = strides
    dd, dh, dw = dilations
    pd, ph, pw = pads_begin
    out_d, out_h, out_w = out.shape
    kernel_d, kernel_h, kernel_w = cols.shape[2], cols.shape[3], cols.shape[4]
    in_d, in_h, in_w = cols.shape[5], cols.shape[6], cols.shape[7]
    for kd in range(kernel_d):
        off_d = kd * dd - pd
        d_lo, d_hi = valid_range(off_d, sd, in_d, out_d)
        for kh in range(kernel_h):
            off_h = kh * dh - ph
            h_lo, h_hi = valid_range(off_h, sh, in_h, out_h)
            d_range, h_range = (d_lo, d_hi), (h_lo, h_hi)
            kw = 0
            while kw < kernel_w:
                off_w = kw * dw - pw
                w_range = valid_range(off_w, sw, in_w, out_w)
                taps = cols[n, oc, kd, kh, kw]
                if sw == 2 and dw == 1 and kw + 1 < kernel_w:
                    # taps kw and kw + 1 land on neighbouring outputs: add them together where both are in range
                    _add_row_pairs(taps, cols[n, oc, kd, kh, kw + 1], d_range, h_range, w_range,
                                   valid_range(off_w + 1, sw, in_w, out_w), strides, (off_d, off_h, off_w), out)
                    kw += 2
                else:
                    _add_rows(taps, d_range, h_range, w_range, strides, (off_d, off_h, off_w), out)
                    kw += 1


@njit(**SERIAL)
def _col2im_task(cols, b, strides, dilations, pads_begin, apply_affine, mul, sub, add, y, task):
    """Plane ``task = n * c_out + oc`` of ``col2im_3d``."""
    c_out = y.shape[1]
    n, oc = task // c_out, task % c_out
    out = y[n, oc]
    out[...] = b[oc]
    col2im_plane(cols, n, oc, strides, dilations, pads_begin, out)
    if apply_affine:
        finish_plane(out, mul[oc], sub[oc], add[oc])


def col2im_3d(cols, b, strides, dilations, pads_begin, apply_affine, mul, sub, add, y):
    """``y[n, oc] = b[oc] + col2im(cols[n, oc])``, then, if ``apply_affine``, ``(y - sub[oc]) * mul[oc] + add[oc]``
    as each plane is finished. cols: (n, c_out, kd, kh, kw, d, h, w)."""
    _col2im_loop(y.shape[0] * y.shape[1], cols, b, np.array(strides + dilations + pads_begin + (apply_affine,),
                                                             np.int64), mul, sub, add, y)


@tasks
def _col2im_loop(first, last, cols, b, geometry, mul, sub, add, y):
    """``_col2im_task`` for planes ``first <= task < last``; ``geometry``: the strides, dilations, begin pads, then
    whether to apply the affine map."""
    for task in range(first, last):
        _col2im_task(cols, b, triple(geometry, 0), triple(geometry, 3), triple(geometry, 6), geometry[9] != 0, mul,
                     sub, add, y, task)


@njit(**SERIAL)
def col2im_3d_serial(cols, b, strides, dilations, pads_begin, apply_affine, mul, sub, add, y):
    """``col2im_3d`` on the calling thread alone, leaving Numba's thread pool untouched."""
    for task in range(y.shape[0] * y.shape[1]):
        _col2im_task(cols, b, strides, dilations, pads_begin, apply_affine, mul, sub, add, y, task)


@njit(**SERIAL)
def _gather_rows(plane, d_range, h_range, w_range, strides, offsets, target):
    """``target[o_d, o_h, o_w] = plane[o_d*sd + off_d, o_h*sh + off_h, o_w*sw + off_w]`` over the three ranges."""
    sd, sh, sw = strides
    off_d, off_h, off_w = offsets
    for o_d in range(d_range[0], d_range[1]):
        for o_h in range(h_range[0], h_range[1]):
            row_in = plane[o_d * sd + off_d, o_h * sh + off_h]
            row_out = target[o_d, o_h]
            for o_w in range(w_range[0], w_range[1]):
                row_out[uintp(o_w)] = row_in[uintp(o_w * sw + off_w)]


@njit(**SERIAL)
def _gather_row_pairs(plane, d_range, h_range, w_range_a, w_range_b, strides, offsets, target_a, target_b):
    """``_gather_rows`` for two taps of stride 2 that read neighbouring inputs: ``target_a`` from ``2*o_w + off_w``
    and ``target_b`` from ``2*o_w + off_w + 1``. Where both are in range, one loop reads the pair, which LLVM
    vectorizes (a lone stride-2 load it does not); the few edge columns go one by one."""
    sd, sh, _ = strides
    off_d, off_h, off_w = offsets
    lo = max(w_range_a[0], w_range_b[0])
    hi = max(lo, min(w_range_a[1], w_range_b[1]))
    for o_d in range(d_range[0], d_range[1]):
        for o_h in range(h_range[0], h_range[1]):
            row_in = plane[o_d * sd + off_d, o_h * sh + off_h]
            row_a, row_b = target_a[o_d, o_h], target_b[o_d, o_h]
            for o_w in range(lo, hi):
                row_a[uintp(o_w)] = row_in[uintp(2 * o_w + off_w)]
                row_b[uintp(o_w)] = row_in[uintp(2 * o_w + off_w + 1)]
            for o_w in range(w_range_a[0], min(w_range_a[1], lo)):
                row_a[o_w] = row_in[2 * o_w + off_w]
            for o_w in range(max(w_range_a[0], hi), w_range_a[1]):
                row_a[o_w] = row_in[2 * o_w + off_w]
            for o_w in range(w_range_b[0], min(w_range_b[1], lo)):
                row_b[o_w] = row_in[2 * o_w + off_w + 1]
            for o_w in range(max(w_range_b[0], hi), w_range_b[1]):
                row_b[o_w] = row_in[2 * o_w + off_w + 1]


def im2col_3d(x, strides, dilations, pads_begin, cols):
    """``cols[n, ci, kd, kh, kw, od, oh, ow] = x[n, ci, od*sd + kd*dd - pd, ...]`` (0 outside); caller allocates."""
    _im2col_loop(x.shape[0] * x.shape[1], x, np.array(strides + dilations + pads_begin, np.int64), cols)


@tasks
def _im2col_loop(first, last, x, geometry, cols):
    """``_im2col_task`` for planes ``first <= task < last``; ``geometry``: the strides, dilations, begin pads."""
    for task in range(first, last):
        _im2col_task(x, triple(geometry, 0), triple(geometry, 3), triple(geometry, 6), cols, task)


@njit(**SERIAL)
def _im2col_task(x, strides, dilations, pads_begin, cols, task):
    """Plane ``task = n*c_in + ci`` of ``im2col_3d``."""
    c_in = x.shape[1]
    sd, sh, sw = strides
    dd, dh, dw = dilations
    pd, ph, pw = pads_begin
    in_d, in_h, in_w = x.shape[2], x.shape[3], x.shape[4]
    out_d, out_h, out_w = cols.shape[5], cols.shape[6], cols.shape[7]
    kernel_w = cols.shape[4]
    n, ci = task // c_in, task % c_in
    plane = x[n, ci]
    cols[n, ci] = 0
    for kd in range(cols.shape[2]):
        off_d = kd * dd - pd
        d_range = valid_range(off_d, sd, out_d, in_d)
        for kh in range(cols.shape[3]):
            off_h = kh * dh - ph
            h_range = valid_range(off_h, sh, out_h, in_h)
            kw = 0
            while kw < kernel_w:
                off_w = kw * dw - pw
                w_range = valid_range(off_w, sw, out_w, in_w)
                if sw == 2 and dw == 1 and kw + 1 < kernel_w:
                    # taps kw and kw + 1 read neighbouring inputs: gather both in one loop
                    _gather_row_pairs(plane, d_range, h_range, w_range, valid_range(off_w + 1, sw, out_w, in_w),
                                      strides, (off_d, off_h, off_w), cols[n, ci, kd, kh, kw],
                                      cols[n, ci, kd, kh, kw + 1])
                    kw += 2
                else:
                    _gather_rows(plane, d_range, h_range, w_range, strides, (off_d, off_h, off_w),
                                 cols[n, ci, kd, kh, kw])
                    kw += 1
