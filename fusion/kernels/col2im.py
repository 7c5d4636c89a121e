"""col2im and im2col on 3 spatial axes, for convolutions computed as BLAS GEMMs.

ConvTranspose as GEMM: ``cols[n, oc, tap, i] = sum_ci w[ci, j, tap] * x[n, ci, i]`` (one GEMM per group), then
``col2im`` adds each ``cols[n, oc, tap, i]`` into ``y[n, oc, i*stride + tap*dilation - pad]``. Each parallel task
owns one output plane ``y[n, oc]``, so no two threads write the same element.
Conv as GEMM: ``im2col`` gathers ``cols[n, ci, tap, o] = x[n, ci, o*stride + tap*dilation - pad]`` (0 outside).
"""

from numba import njit, prange

from fusion.kernels.config import PARALLEL, SERIAL, uintp
from fusion.kernels.conv import finish_plane, valid_range


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
            for kw in range(kernel_w):
                off_w = kw * dw - pw
                w_lo, w_hi = valid_range(off_w, sw, in_w, out_w)
                taps = cols[n, oc, kd, kh, kw]
                for i_d in range(d_lo, d_hi):
                    for i_h in range(h_lo, h_hi):
                        row_out = out[i_d * sd + off_d, i_h * sh + off_h]
                        row_in = taps[i_d, i_h]
                        for i_w in range(w_lo, w_hi):
                            row_out[uintp(i_w * sw + off_w)] += row_in[uintp(i_w)]


@njit(**PARALLEL)
def col2im_3d(cols, b, strides, dilations, pads_begin, apply_affine, mul, sub, add, y):
    """``y[n, oc] = b[oc] + col2im(cols[n, oc])``, then, if ``apply_affine``, ``(y - sub[oc]) * mul[oc] + add[oc]``
    as each plane is finished. cols: (n, c_out, kd, kh, kw, d, h, w)."""
    n_batch, c_out = y.shape[0], y.shape[1]
    for task in prange(n_batch * c_out):
        n, oc = task // c_out, task % c_out
        out = y[n, oc]
        out[...] = b[oc]
        col2im_plane(cols, n, oc, strides, dilations, pads_begin, out)
        if apply_affine:
            finish_plane(out, mul[oc], sub[oc], add[oc])


@njit(**PARALLEL)
def im2col_3d(x, strides, dilations, pads_begin, cols):
    """``cols[n, ci, kd, kh, kw, od, oh, ow] = x[n, ci, od*sd + kd*dd - pd, ...]`` (0 outside); caller allocates."""
    n_batch, c_in = x.shape[0], x.shape[1]
    sd, sh, sw = strides
    dd, dh, dw = dilations
    pd, ph, pw = pads_begin
    in_d, in_h, in_w = x.shape[2], x.shape[3], x.shape[4]
    out_d, out_h, out_w = cols.shape[5], cols.shape[6], cols.shape[7]
    for task in prange(n_batch * c_in):
        n, ci = task // c_in, task % c_in
        plane = x[n, ci]
        for kd in range(cols.shape[2]):
            off_d = kd * dd - pd
            for kh in range(cols.shape[3]):
                off_h = kh * dh - ph
                for kw in range(cols.shape[4]):
                    off_w = kw * dw - pw
                    w_lo, w_hi = valid_range(off_w, sw, out_w, in_w)
                    target = cols[n, ci, kd, kh, kw]
                    target[...] = 0
                    d_lo, d_hi = valid_range(off_d, sd, out_d, in_d)
                    h_lo, h_hi = valid_range(off_h, sh, out_h, in_h)
                    for o_d in range(d_lo, d_hi):
                        for o_h in range(h_lo, h_hi):
                            row_in = plane[o_d * sd + off_d, o_h * sh + off_h]
                            row_out = target[o_d, o_h]
                            for o_w in range(w_lo, w_hi):
                                row_out[uintp(o_w)] = row_in[uintp(o_w * sw + off_w)]
