"""Public ops: validate, resolve ONNX attributes once, allocate, call a Numba kernel.

numpy in, numpy out. Supported dtypes are float32 and float64; the output has the dtype of ``x`` and the
weights and bias are cast to it (as an engine evaluating the model in that precision would).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

from fusion import attrs
from fusion.affine import ChannelAffine, batch_norm_affine, scale_affine
from fusion.errors import FusionInputError
from fusion.kernels.affine import channel_affine_3d
from fusion.kernels.col2im import col2im_3d, col2im_3d_serial, im2col_3d
from fusion.kernels.conv import conv_3d
from fusion.kernels.conv_transpose_phases import conv_transpose_phases, plan
from fusion.kernels.conv_polyphase import split_input, split_plan
from fusion.kernels.microkernel import VECTOR_BYTES
from fusion.kernels.shared import pad_input
from fusion.kernels.tiles import tiled_gemms

DTYPES = (np.float32, np.float64)
# Which kernel runs is decided by the input channels per group and the positions per output phase; each switch point
# is measured (python benchmarks/crossover.py; the figures: benchmarks/NOTES.md, "Kernel switch points").
# ConvTranspose: the phase kernel below CONV_TRANSPOSE_TILES_MIN_CHANNELS, then the register-tiled phase GEMM, and
# BLAS's GEMM + col2im from CONV_TRANSPOSE_GEMM_MIN_CHANNELS on layers of fewer than TILES_MIN_POSITIONS positions
# (the tiled kernels read all their weights once per band of positions, BLAS blocks them).
CONV_TRANSPOSE_TILES_MIN_CHANNELS = 8
CONV_TRANSPOSE_GEMM_MIN_CHANNELS = 256
# On one thread with 256-bit tiles (AVX2), BLAS won from 128 channels per group at every size measured; on two, the
# tiles won at 128 as often as they lost.
CONV_TRANSPOSE_GEMM_MIN_CHANNELS_ONE_THREAD = 256 if VECTOR_BYTES == 64 else 128
# Conv: the direct kernel for depthwise layers, the tiled GEMM on the polyphase split of the input from
# CONV_TILES_MIN_CHANNELS, im2col + BLAS's GEMM from CONV_GEMM_MIN_CHANNELS on layers of few positions.
CONV_TILES_MIN_CHANNELS = 2
CONV_GEMM_MIN_CHANNELS = 256
# With 512-bit tiles, the tiles beat BLAS from 1024 positions; with 256-bit ones (AVX2) BLAS won at every size measured
# from 256 channels per group, up to 64^2 positions (beyond, its cols buffer grows past what was measured).
TILES_MIN_POSITIONS = 1024 if VECTOR_BYTES == 64 else 64 * 64 + 1
# ConvTranspose GEMM on one thread runs in chunks of output channels whose cols (about this many bytes) col2im adds up
# while they are still in cache; not on more threads, where alternating BLAS's and Numba's pools once per chunk lets
# the spin-waiting one take the cores (benchmarks/NOTES.md, "GEMM chunks").
COLS_CHUNK_BYTES = 2 << 20
# Numba's OpenMP workers spin-wait after a parallel region unless OMP_WAIT_POLICY=PASSIVE (read once, when the OpenMP
# runtime loads), and OpenBLAS's workers likewise after a GEMM: in a model, each pool takes the cores from the other's
# next layer. So with more than one thread and spinning pools, ConvTranspose and Conv stay on Numba's pool: the tiled
# kernels also where BLAS would take over (benchmarks/NOTES.md, "Spinning pools").
NUMBA_POOL_SPINS = os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE"


@functools.cache
def _blas_controller() -> ThreadpoolController:
    """numpy's BLAS, found once (loaded with numpy)."""
    return ThreadpoolController()


@contextlib.contextmanager
def _blas_on_numba_threads():
    """BLAS's GEMMs on no more threads than the Numba kernels run on: after ``numba.set_num_threads(1)`` every kernel
    path uses one core (OpenBLAS would otherwise take every core for its part). BLAS's setting is process-wide (Numba's
    is per calling thread): a GEMM another thread runs meanwhile gets the same limit, which changes its speed only."""
    threads = numba.get_num_threads()
    controller = _blas_controller()
    if all(library.num_threads <= threads for library in controller.select(user_api="blas").lib_controllers):
        yield
        return
    with controller.limit(limits=threads, user_api="blas"):
        yield


_KERNEL_THRESHOLDS = {  # the settings of (tiles from, GEMM from, tiles from positions) that make each kernel run
    "ConvTranspose": (("CONV_TRANSPOSE_TILES_MIN_CHANNELS",),
                      ("CONV_TRANSPOSE_GEMM_MIN_CHANNELS", "CONV_TRANSPOSE_GEMM_MIN_CHANNELS_ONE_THREAD"),
                      ("TILES_MIN_POSITIONS",)),
    "Conv": (("CONV_TILES_MIN_CHANNELS",), ("CONV_GEMM_MIN_CHANNELS",), ("TILES_MIN_POSITIONS",)),
}
_NEVER = 10**9
_FORCING = {"direct": (_NEVER, _NEVER, _NEVER), "tiles": (1, _NEVER, _NEVER), "gemm": (1, 1, _NEVER)}


@contextlib.contextmanager
def _forced_kernel(op: str, kernel: str):
    """Within the block, every ``op`` call (``"ConvTranspose"`` or ``"Conv"``) runs on ``kernel``: ``direct`` (the
    phase kernel of ConvTranspose, the direct kernel of Conv), ``tiles`` or ``gemm``. For tests and benchmarks."""
    forced = {name: value for names, value in zip(_KERNEL_THRESHOLDS[op], _FORCING[kernel]) for name in names}
    module = sys.modules[__name__]
    saved = {name: getattr(module, name) for name in forced}
    for name, value in forced.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def _input(x, node: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype not in DTYPES:
        raise FusionInputError(f"x has dtype {x.dtype}; supported are float32 and float64", node=node)
    return x if x.flags.c_contiguous else x.copy(order="C")  # (ascontiguousarray would make 0-d arrays 1-d)


def _like(array, dtype, name: str, node: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind not in "fiu":
        raise FusionInputError(f"{name} must be numeric, got dtype {array.dtype}", node=node)
    return np.ascontiguousarray(array, dtype=dtype)


def _bias(b, channels: int, dtype, node: str) -> np.ndarray:
    if b is None:
        return np.zeros(channels, dtype)
    b = _like(b, dtype, "b", node)
    if b.shape != (channels,):
        raise FusionInputError(f"bias has shape {b.shape}, expected ({channels},)", node=node)
    return b


def _operands(x, w, b, *, transposed: bool, **attributes):
    """Validated ``x, w, b`` (w and b in the dtype of x) and the resolved geometry."""
    node = "conv_transpose" if transposed else "conv"
    x = _input(x, node)
    w = _like(w, x.dtype, "w", node)
    geo = attrs.resolve(x.shape, w.shape, transposed=transposed, **attributes)
    return x, w, _bias(b, geo.c_out, x.dtype, node), geo


def _lift(array: np.ndarray) -> np.ndarray:
    """View ``(a, b, *S)`` with 1-3 spatial axes as ``(a, b, d, h, w)`` by prepending unit axes."""
    spatial = array.shape[2:]
    return array.reshape(array.shape[:2] + (1,) * (3 - len(spatial)) + spatial)


def _lift_ints(values: tuple[int, ...], fill: int) -> tuple[int, int, int]:
    return (fill,) * (3 - len(values)) + tuple(values)


def _lifted_geometry(geo: attrs.ConvGeometry) -> tuple[tuple[int, int, int], ...]:
    """``(strides, dilations, pads_begin)`` lifted to 3 spatial axes, in the kernels' argument order."""
    return _lift_ints(geo.strides, 1), _lift_ints(geo.dilations, 1), _lift_ints(geo.pads_begin, 0)


def _lifted_plan(plan_function, geo: attrs.ConvGeometry, strides, dilations, pads_begin):
    """``plan_function`` (``conv_transpose_phases.plan`` or ``conv_polyphase.split_plan``, cached per geometry) of ``geo`` on 3 spatial
    axes, given its lifted ``strides, dilations, pads_begin``."""
    return plan_function(_lift_ints(geo.input_shape, 1), _lift_ints(geo.kernel_shape, 1), strides, dilations,
                         pads_begin, _lift_ints(geo.output_shape, 1))


def _conv_direct(x, w, b, geo: attrs.ConvGeometry) -> np.ndarray:
    y = np.empty((geo.batch, geo.c_out) + geo.output_shape, dtype=x.dtype)
    conv_3d(_lift(x), _lift(w), b, geo.group, *_lifted_geometry(geo), _lift(y))
    return y


def _epilogue(affine: ChannelAffine | None, channels: int) -> tuple:
    """Kernel arguments ``(apply_affine, mul, sub, add)``; placeholders when there is no affine map."""
    if affine is None:
        unused = np.zeros(channels)
        return False, unused, unused, unused
    return True, affine.mul, affine.sub, affine.add


def _conv_transpose_gemm(x, w, b, geo: attrs.ConvGeometry, affine: ChannelAffine | None = None) -> np.ndarray:
    """ConvTranspose as GEMMs, ``cols = w_g^T x_g`` per (batch, group), then col2im (``fusion.kernels.col2im``)."""
    group, c_in_g, c_out_g = geo.group, geo.c_in // geo.group, geo.c_out // geo.group
    taps, positions = math.prod(geo.kernel_shape), math.prod(geo.input_shape)
    # w: (c_in, c_out/group, *k) -> per group (c_out/group * taps, c_in/group). A transposed view: BLAS reads it
    # as op(A) = A^T at no cost, while copying it contiguous costs a sixth of the decoder's time (benchmarks/NOTES.md).
    w_t = w.reshape(group, c_in_g, c_out_g * taps).transpose(0, 2, 1)
    x_g = x.reshape(geo.batch, group, c_in_g, positions)
    y = np.empty((geo.batch, geo.c_out) + geo.output_shape, dtype=x.dtype)
    geometry = _lifted_geometry(geo)
    apply_affine, mul, sub, add = _epilogue(affine, geo.c_out)
    cols_shape = _lift_ints(geo.kernel_shape, 1) + _lift_ints(geo.input_shape, 1)
    if numba.get_num_threads() > 1:  # one batched GEMM (on BLAS's threads), then one col2im
        cols = np.matmul(w_t[None], x_g).reshape((geo.batch, geo.c_out) + cols_shape)
        col2im_3d(cols, b, *geometry, apply_affine, mul, sub, add, _lift(y))
        return y
    chunk = max(1, min(c_out_g, COLS_CHUNK_BYTES // (taps * positions * x.itemsize)))
    cols = np.empty((chunk * taps, positions), x.dtype)
    for n in range(geo.batch):
        for g in range(group):
            for j in range(0, c_out_g, chunk):
                channels = min(chunk, c_out_g - j)
                part = cols[:channels * taps]
                np.matmul(w_t[g, j * taps:(j + channels) * taps], x_g[n, g], out=part)
                oc = slice(g * c_out_g + j, g * c_out_g + j + channels)
                col2im_3d_serial(part.reshape((1, channels) + cols_shape), b[oc], *geometry, apply_affine, mul[oc],
                                 sub[oc], add[oc], _lift(y[n:n + 1, oc]))
    return y


def _conv_transpose_phases(x, w, b, geo: attrs.ConvGeometry, affine: ChannelAffine | None, tiled: bool) -> np.ndarray:
    """ConvTranspose as a gather over output phases: ``fusion.kernels.tiles`` if ``tiled``, else
    ``fusion.kernels.conv_transpose_phases``."""
    strides, dilations, pads_begin = _lifted_geometry(geo)
    phase_plan = _lifted_plan(plan, geo, strides, dilations, pads_begin)
    if affine is None:
        scale, shift = np.ones(geo.c_out, x.dtype), b
    else:  # (conv + b - sub) * mul + add, the per-channel constants combined in float64 and rounded once each
        scale = affine.mul.astype(x.dtype)
        shift = ((b.astype(np.float64) - affine.sub) * affine.mul + affine.add).astype(x.dtype)
    y = np.empty((geo.batch, geo.c_out) + geo.output_shape, dtype=x.dtype)
    padded_shape = phase_plan.padded_shape
    if tiled:
        c_in_g, c_out_g, taps = geo.c_in // geo.group, w.shape[1], math.prod(geo.kernel_shape)
        xp = pad_input(_lift(x), padded_shape, phase_plan.padded_offset)
        # w: (c_in, c_out/group, taps), read in place: (group, input channel, output channel) strides
        w_strides = (c_in_g * c_out_g * taps, c_out_g * taps, taps)
        tiled_gemms(xp.reshape(-1), xp.shape[1], padded_shape[1] * padded_shape[2], padded_shape[2], w.reshape(-1),
                    w_strides, geo.group, c_in_g, scale, shift, strides, phase_plan.phase_origin,
                    phase_plan.phase_counts, phase_plan.phase_start, phase_plan.tap_index, phase_plan.tap_shift,
                    _lift(y))
    else:
        conv_transpose_phases(_lift(x), w.reshape(w.shape[0], w.shape[1], -1), scale, shift, geo.group, strides,
                              padded_shape, phase_plan.padded_offset, phase_plan.phase_origin, phase_plan.phase_counts,
                              phase_plan.phase_start, phase_plan.tap_index, phase_plan.tap_shift, _lift(y))
    return y


def _pools_apart() -> bool:
    """Whether a BLAS call can run between Numba kernels without either thread pool taking the other's cores."""
    return numba.get_num_threads() == 1 or not NUMBA_POOL_SPINS


def _blas_wins(channels_per_group: int, gemm_min_channels: int, positions: int) -> bool:
    """Whether BLAS's GEMM runs: many input channels per group on few positions (``TILES_MIN_POSITIONS``), and a
    BLAS call cannot take the cores from Numba's pool (``_pools_apart``)."""
    return channels_per_group >= gemm_min_channels and positions < TILES_MIN_POSITIONS and _pools_apart()


# With passive pools (OMP_WAIT_POLICY=PASSIVE, as `fusion bench` runs) a layer below this many multiply-adds runs on
# one thread: waking the sleeping second one costs more than it brings. Spinning pools (the default) wake at once, and
# two threads win there (benchmarks/NOTES.md, "Small layers").
SERIAL_BELOW_MACS = 6_000_000


@contextlib.contextmanager
def _threads_for(geo: attrs.ConvGeometry):
    """One thread for a layer of fewer than ``SERIAL_BELOW_MACS`` multiply-adds when the pools sleep between
    regions, else the caller's threads. ``numba.set_num_threads`` is per calling thread: other threads' calls are not
    affected."""
    threads = numba.get_num_threads()
    if NUMBA_POOL_SPINS:
        yield
        return
    positions = math.prod(geo.input_shape if geo.transposed else geo.output_shape)
    macs = geo.batch * geo.c_out * (geo.c_in // geo.group) * math.prod(geo.kernel_shape) * positions
    if threads == 1 or macs >= SERIAL_BELOW_MACS:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


def _conv_transpose(x, w, b, geo: attrs.ConvGeometry, affine: ChannelAffine | None) -> np.ndarray:
    with _threads_for(geo):
        return _conv_transpose_any(x, w, b, geo, affine)


def _conv_transpose_any(x, w, b, geo: attrs.ConvGeometry, affine: ChannelAffine | None) -> np.ndarray:
    channels_per_group = geo.c_in // geo.group
    gemm_min_channels = (CONV_TRANSPOSE_GEMM_MIN_CHANNELS_ONE_THREAD if numba.get_num_threads() == 1
                         else CONV_TRANSPOSE_GEMM_MIN_CHANNELS)
    # each output phase has about as many positions as the input
    if _blas_wins(channels_per_group, gemm_min_channels, math.prod(geo.input_shape)):
        with _blas_on_numba_threads():
            return _conv_transpose_gemm(x, w, b, geo, affine)
    return _conv_transpose_phases(x, w, b, geo, affine, tiled=channels_per_group >= CONV_TRANSPOSE_TILES_MIN_CHANNELS)


def _conv_gemm(x, w, b, geo: attrs.ConvGeometry) -> np.ndarray:
    """Conv as im2col, then one GEMM per (batch, group) plus the bias."""
    group, c_in_g, c_out_g = geo.group, geo.c_in // geo.group, geo.c_out // geo.group
    taps, positions = math.prod(geo.kernel_shape), math.prod(geo.output_shape)
    cols = np.empty((geo.batch, geo.c_in) + _lift_ints(geo.kernel_shape, 1) + _lift_ints(geo.output_shape, 1),
                    dtype=x.dtype)
    im2col_3d(_lift(x), *_lifted_geometry(geo), cols)
    # w: (c_out, c_in/group, *k) -> per group (c_out/group, c_in/group * taps)
    y = np.matmul(w.reshape(group, c_out_g, c_in_g * taps)[None],
                  cols.reshape(geo.batch, group, c_in_g * taps, positions))
    y = y.reshape((geo.batch, geo.c_out) + geo.output_shape)
    y += b.reshape((1, -1) + (1,) * geo.rank)
    return y


def _conv_tiles(x, w, b, geo: attrs.ConvGeometry) -> np.ndarray:
    """Conv as one register-tiled GEMM over the polyphase split of the input (``fusion.kernels.conv_polyphase``)."""
    strides, dilations, pads_begin = _lifted_geometry(geo)
    split = _lifted_plan(split_plan, geo, strides, dilations, pads_begin)
    group, c_in_g, taps = geo.group, geo.c_in // geo.group, math.prod(geo.kernel_shape)
    phase_shape = split.phase_shape
    xs = split_input(_lift(x), strides, pads_begin, phase_shape)
    y = np.empty((geo.batch, geo.c_out) + geo.output_shape, dtype=x.dtype)
    # w: (c_out, c_in/group, taps), read in place: (group, input channel, output channel) strides
    w_strides = (geo.c_out // group * c_in_g * taps, taps, c_in_g * taps)
    tiled_gemms(xs.reshape(-1), xs.shape[1], phase_shape[1] * phase_shape[2], phase_shape[2], w.reshape(-1),
                w_strides, group, c_in_g, np.ones(geo.c_out, x.dtype), b, (1, 1, 1), split.phase_origin,
                split.phase_counts, split.phase_start, split.tap_index, split.tap_shift, _lift(y))
    return y


def conv_transpose(x, w, b=None, *, group=1, strides=None, pads=None, dilations=None, output_padding=None,
                   output_shape=None, auto_pad="NOTSET", kernel_shape=None) -> np.ndarray:
    """ONNX ConvTranspose (opset 11+), 1-D to 3-D.

    Parameters
    ----------
    x : (N, C_in, *S) float32 or float64
    w : (C_in, C_out/group, *k)
        ConvTranspose layout: input channel ``ci`` of group ``g`` feeds output channel
        ``g*(C_out/group) + j`` through ``w[ci, j]``.
    b : (C_out,), optional
    group, strides, pads, dilations, output_padding, output_shape, auto_pad, kernel_shape
        As in the ONNX spec.

    Returns
    -------
    y : (N, C_out, *O) in the dtype of ``x``
    """
    x, w, b, geo = _operands(x, w, b, transposed=True, group=group, strides=strides, pads=pads,
                             dilations=dilations, output_padding=output_padding, output_shape=output_shape,
                             auto_pad=auto_pad, kernel_shape=kernel_shape)
    return _conv_transpose(x, w, b, geo, None)


def conv(x, w, b=None, *, group=1, strides=None, pads=None, dilations=None, auto_pad="NOTSET",
         kernel_shape=None) -> np.ndarray:
    """ONNX Conv, 1-D to 3-D.

    Parameters
    ----------
    x : (N, C_in, *S) float32 or float64
    w : (C_out, C_in/group, *k)
        Conv layout: output channel ``oc`` of group ``g = oc // (C_out/group)`` reads input channels
        ``g*(C_in/group) ...`` through ``w[oc]``.
    b : (C_out,), optional

    Returns
    -------
    y : (N, C_out, *O) in the dtype of ``x``
    """
    x, w, b, geo = _operands(x, w, b, transposed=False, group=group, strides=strides, pads=pads,
                             dilations=dilations, auto_pad=auto_pad, kernel_shape=kernel_shape)
    channels_per_group = geo.c_in // geo.group
    with _threads_for(geo):
        if _blas_wins(channels_per_group, CONV_GEMM_MIN_CHANNELS, math.prod(geo.output_shape)):
            with _blas_on_numba_threads():
                return _conv_gemm(x, w, b, geo)
        if channels_per_group >= CONV_TILES_MIN_CHANNELS:
            return _conv_tiles(x, w, b, geo)
        return _conv_direct(x, w, b, geo)


def fast_kernels_in_float64(x, w, b=None, *, transposed: bool, **attributes) -> np.ndarray:
    """``conv_transpose`` (``transposed``) or ``conv`` of ``x, w, b``: this package's fast kernels run in float64,
    whatever the inputs' dtype, the exact side of every comparison. They are trusted there because every kernel is
    tested against the plain loops of ``fusion.reference`` (too slow for whole models), within the float64 bound."""
    function = conv_transpose if transposed else conv
    return function(np.asarray(x, np.float64), np.asarray(w, np.float64),
                    None if b is None else np.asarray(b, np.float64), **attributes)


def channel_affine(x, affine: ChannelAffine, *, node: str = "channel_affine") -> np.ndarray:
    """``y[:, c] = (x[:, c] - sub[c]) * mul[c] + add[c]`` for ``x: (N, C, *S)``, each element rounded once."""
    x = _input(x, node)
    if x.ndim < 2 or x.shape[1] != affine.channels:
        raise FusionInputError(f"input shape {x.shape} does not have {affine.channels} channels on axis 1",
                               node=node)
    y = np.empty_like(x)
    flat = (x.shape[0], x.shape[1], -1)
    channel_affine_3d(x.reshape(flat), affine.mul, affine.sub, affine.add, y.reshape(flat))
    return y


def batch_norm(x, scale, bias, mean, var, epsilon=1e-5) -> np.ndarray:
    """Inference BatchNormalization: ``y = scale * (x - mean) / sqrt(var + epsilon) + bias`` per channel.

    ``x: (N, C, *S)``; ``scale, bias, mean, var: (C,)``. Rejects ``var + epsilon <= 0`` and non-finite stats.
    """
    channels = np.shape(x)[1] if np.ndim(x) >= 2 else None
    return channel_affine(x, batch_norm_affine(scale, bias, mean, var, epsilon, channels=channels),
                          node="batch_norm")


def scale(x, scale, bias=None) -> np.ndarray:
    """Per-channel Scale (MNN/Caffe): ``y = scale[c] * x + bias[c]``, bias 0 when None. ``x: (N, C, *S)``."""
    channels = np.shape(x)[1] if np.ndim(x) >= 2 else None
    return channel_affine(x, scale_affine(scale, bias, channels=channels), node="scale")


def conv_transpose_channel_affine(x, w, b, affine: ChannelAffine, *, group=1, strides=None, pads=None,
                                  dilations=None, output_padding=None, output_shape=None, auto_pad="NOTSET",
                                  kernel_shape=None) -> np.ndarray:
    """Epilogue-fused ``affine(conv_transpose(x, w, b))``: the affine map is applied as each output plane is
    finished, so BN or Scale costs no extra pass over memory and the weights stay unfolded."""
    x, w, b, geo = _operands(x, w, b, transposed=True, group=group, strides=strides, pads=pads,
                             dilations=dilations, output_padding=output_padding, output_shape=output_shape,
                             auto_pad=auto_pad, kernel_shape=kernel_shape)
    if affine.channels != geo.c_out:
        raise FusionInputError(f"affine map has {affine.channels} channels, the ConvTranspose has {geo.c_out}",
                               node="conv_transpose")
    return _conv_transpose(x, w, b, geo, affine)
