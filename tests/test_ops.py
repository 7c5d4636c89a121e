"""The Numba kernels agree with the float64 reference and with onnxruntime; impulses land on the right tap."""

import os
import subprocess
import sys
import warnings

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fusion
from fusion import ops, reference
from fusion.bounds import site_bound
from fusion.compare import compare
from onnx_models import run_ort, single_node_model
from strategies import arrays_for, conv_configs


def _function(module, transposed):
    return module.conv_transpose if transposed else module.conv


@pytest.mark.parametrize("transposed", [True, False], ids=["ConvTranspose", "Conv"])
@given(data=st.data())
def test_kernels_match_reference_in_both_precisions(transposed, data):
    config = data.draw(conv_configs(transposed=transposed))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x, w, b = arrays_for(config, rng, np.float64)
    attributes = config["attributes"]
    expected = _function(reference, transposed)(x, w, b, **attributes)
    for dtype in (np.float64, np.float32):
        xd, wd = x.astype(dtype), w.astype(dtype)
        bd = None if b is None else b.astype(dtype)
        actual = _function(fusion, transposed)(xd, wd, bd, **attributes)
        assert actual.dtype == dtype
        exact = _function(reference, transposed)(xd, wd, bd, **attributes)
        bound = site_bound(xd, wd, bd, transposed=transposed, dtype=dtype, **attributes)
        result = compare(actual, exact, bound=bound)
        assert result.passed, result.summary()
    np.testing.assert_allclose(_function(fusion, transposed)(x, w, b, **attributes), expected, rtol=1e-12,
                               atol=1e-12 * max(1.0, float(np.abs(expected).max())))


@pytest.mark.parametrize("transposed", [True, False], ids=["ConvTranspose", "Conv"])
@given(data=st.data())
def test_kernels_match_onnxruntime(transposed, data):
    config = data.draw(conv_configs(transposed=transposed, ort_compatible=True))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x, w, b = arrays_for(config, rng)
    initializers = {"w": w} if b is None else {"w": w, "b": b}
    model = single_node_model("ConvTranspose" if transposed else "Conv", x.shape, initializers,
                              config["attributes"])
    engine = run_ort(model, x)
    ours = _function(fusion, transposed)(x, w, b, **config["attributes"])
    exact = _function(reference, transposed)(x, w, b, **config["attributes"])
    bound = site_bound(x, w, b, transposed=True if transposed else False, **config["attributes"])
    assert ours.shape == engine.shape
    assert compare(ours, exact, bound=bound).passed
    assert compare(engine, exact, bound=bound).passed, compare(engine, exact, bound=bound).summary()


@given(data=st.data())
def test_batch_norm_and_scale_match_reference_and_onnxruntime(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    rank = data.draw(st.integers(0, 3))
    channels = data.draw(st.integers(1, 5))
    x = rng.standard_normal((data.draw(st.integers(1, 2)), channels) + (3,) * rank).astype(np.float32)
    scale, bias, mean = (rng.standard_normal(channels).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.01, 3, channels).astype(np.float32)
    epsilon = data.draw(st.sampled_from([1e-5, 1e-3, 0.0]))
    ours = fusion.batch_norm(x, scale, bias, mean, var, epsilon)
    expected = reference.batch_norm(x, scale, bias, mean, var, epsilon)
    # one rounding of a float64 result into float32: within half an ulp
    assert compare(ours, expected).ulp_max <= 1
    model = single_node_model("BatchNormalization", x.shape, {"s": scale, "b": bias, "m": mean, "v": var},
                              {"epsilon": epsilon})
    assert np.allclose(run_ort(model, x), expected, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(expected).max())))
    np.testing.assert_array_equal(fusion.scale(x, scale, bias), reference.scale(x, scale, bias).astype(np.float32))
    np.testing.assert_array_equal(fusion.scale(x, scale), reference.scale(x, scale).astype(np.float32))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_conv_transpose_impulse_pins_each_output_to_its_tap(rank):
    """One-hot input and power-of-two weights: each output value names the tap (and group) that fed it."""
    group, c_in_g, c_out_g = 2, 1, 2
    kernel, strides, dilations, pads = (3,) * rank, (2,) * rank, (2,) * rank, (1,) * rank + (0,) * rank
    w = np.zeros((group * c_in_g, c_out_g) + kernel)
    codes = {}
    for index in np.ndindex(w.shape):
        codes[index] = len(codes)
        w[index] = 2.0 ** -codes[index]  # distinct powers of two: any sum of them is exact and decodable
    spatial = (4,) * rank
    for ci in range(group * c_in_g):
        for position in [(0,) * rank, (3,) * rank, (1,) + (2,) * (rank - 1)]:
            x = np.zeros((1, group * c_in_g) + spatial)
            x[(0, ci) + position] = 1.0
            y = fusion.conv_transpose(x, w, group=group, strides=strides, dilations=dilations, pads=pads)
            expected = np.zeros_like(y)
            g = ci // c_in_g
            for j in range(c_out_g):
                for tap in np.ndindex(kernel):
                    out = tuple(p * s + t * d - b for p, s, t, d, b in zip(position, strides, tap, dilations, pads))
                    if all(0 <= o < n for o, n in zip(out, y.shape[2:])):
                        expected[(0, g * c_out_g + j) + out] += w[(ci, j) + tap]
            np.testing.assert_array_equal(y, expected)
            np.testing.assert_array_equal(reference.conv_transpose(x, w, group=group, strides=strides,
                                                                   dilations=dilations, pads=pads), expected)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_conv_impulse_pins_each_output_to_its_tap(rank):
    group, c_in_g, c_out_g = 2, 2, 1
    kernel, strides, dilations, pads = (2,) * rank, (1,) * rank, (2,) * rank, (1,) * rank + (1,) * rank
    w = np.zeros((group * c_out_g, c_in_g) + kernel)
    for code, index in enumerate(np.ndindex(w.shape)):
        w[index] = 2.0 ** -code
    x = np.zeros((1, group * c_in_g) + (4,) * rank)
    ci, position = 3, (2,) * rank
    x[(0, ci) + position] = 1.0
    y = fusion.conv(x, w, group=group, strides=strides, dilations=dilations, pads=pads)
    expected = np.zeros_like(y)
    g, ci_g = divmod(ci, c_in_g)
    for oc in range(g * c_out_g, (g + 1) * c_out_g):
        for out in np.ndindex(y.shape[2:]):
            for tap in np.ndindex(kernel):
                if tuple(o * s + t * d - p for o, s, t, d, p in zip(out, strides, tap, dilations, pads)) == position:
                    expected[(0, oc) + out] += w[(oc, ci_g) + tap]
    np.testing.assert_array_equal(y, expected)
    assert np.count_nonzero(y) > 0


def test_output_dtype_follows_input_and_weights_are_cast():
    x = np.ones((1, 2, 3), np.float32)
    w = np.ones((2, 1, 2), np.float64)
    assert fusion.conv_transpose(x, w, group=2).dtype == np.float32
    assert fusion.conv(x.astype(np.float64), w.astype(np.float32), group=2).dtype == np.float64


def test_unaligned_and_strided_inputs_give_the_same_result():
    """The kernels take C-contiguous arrays: the ops copy strided inputs first (never the caller's array); an
    unaligned one is read as it is."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((1, 4, 5, 6)).astype(np.float32), rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    expected = fusion.conv_transpose(x, w, strides=[2, 2])
    for as_given in (_unaligned, lambda a: np.repeat(a, 2, axis=-1)[..., ::2]):
        np.testing.assert_array_equal(fusion.conv_transpose(as_given(x), as_given(w), strides=[2, 2]), expected)
        np.testing.assert_array_equal(fusion.batch_norm(as_given(x), np.ones(4), np.zeros(4), np.zeros(4),
                                                        np.ones(4)), fusion.batch_norm(x, np.ones(4), np.zeros(4),
                                                                                       np.zeros(4), np.ones(4)))


@pytest.mark.parametrize("kernel", ["direct", "tiles"])
def test_infinities_in_the_data_raise_no_numpy_warning(kernel):
    """inf - inf in a kernel sets the invalid-operation flag, which NumPy reports as a RuntimeWarning after any loop
    of its own (a gufunc's too): the kernels run outside NumPy's machinery, and the NaN is the caller's to judge."""
    x = np.full((1, 8, 4, 4), np.inf, np.float32)
    # +1 from even input channels, -1 from odd ones: every output sums inf and -inf
    w = np.broadcast_to(np.where(np.arange(8) % 2 == 0, 1.0, -1.0).astype(np.float32)[:, None, None, None],
                        (8, 2, 3, 3)).copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ops._forced_kernel("ConvTranspose", kernel):
            y = fusion.conv_transpose(x, w, strides=[2, 2])
        with ops._forced_kernel("Conv", kernel):
            fusion.conv(x, w.transpose(1, 0, 2, 3).copy())
        fusion.scale(x, np.zeros(8))  # inf * 0
    assert np.isnan(y).any()

def _unaligned(array: np.ndarray) -> np.ndarray:
    """A copy of ``array`` whose data starts one byte past an aligned address."""
    buffer = np.empty(array.nbytes + 1, np.uint8)
    unaligned = buffer[1:].view(array.dtype).reshape(array.shape)
    unaligned[...] = array
    return unaligned


@pytest.mark.parametrize("transposed", [True, False], ids=["ConvTranspose", "Conv"])
@given(data=st.data())
def test_every_kernel_path_matches_the_reference(transposed, data):
    """Force each implementation on the same configuration; every one must be within the bound of the reference.

    ConvTranspose: GEMM + col2im (batched with a parallel col2im, and chunked on one thread), the tiled phase GEMM
    and the phase kernel; Conv: im2col + GEMM, the tiled GEMM on the polyphase split, and the direct kernel."""
    import fusion.ops as ops_module

    config = data.draw(conv_configs(transposed=transposed))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x, w, b = arrays_for(config, rng)
    attributes = config["attributes"]
    exact = _function(reference, transposed)(x, w, b, **attributes)
    bound = site_bound(x, w, b, transposed=transposed, **attributes)
    op = "ConvTranspose" if transposed else "Conv"
    saved = (ops_module.COLS_CHUNK_BYTES, ops_module.NUMBA_POOL_SPINS, numba.get_num_threads())
    # every layer through each kernel; ConvTranspose's GEMM on all threads and on one, where it runs in chunks of
    # output channels (one channel a chunk here)
    threads = numba.config.NUMBA_NUM_THREADS  # all of them: more than one on any machine CI runs on
    last = ("gemm", 1, True) if transposed else ("tiles", 1, False)
    paths = [("gemm", threads, False), ("tiles", threads, False), ("direct", threads, False), last]
    try:
        for kernel, count, pool_spins in paths:
            numba.set_num_threads(count)
            ops_module.COLS_CHUNK_BYTES = 1 if count == 1 else saved[0]
            ops_module.NUMBA_POOL_SPINS = pool_spins
            with ops_module._forced_kernel(op, kernel):
                result = compare(_function(fusion, transposed)(x, w, b, **attributes), exact, bound=bound)
                assert result.passed, (kernel, count, pool_spins, result.summary())
                if transposed:
                    affine = fusion.scale_affine(rng.uniform(-2, 2, exact.shape[1]),
                                                 rng.standard_normal(exact.shape[1]))
                    fused = fusion.conv_transpose_channel_affine(x, w, b, affine, **attributes)
                    expected = reference.channel_affine(exact, affine, node="test")
                    assert compare(fused, expected, bound=site_bound(x, w, b, affine, transposed=True,
                                                                     **attributes)).passed
    finally:
        ops_module.COLS_CHUNK_BYTES, ops_module.NUMBA_POOL_SPINS = saved[0], saved[1]
        numba.set_num_threads(saved[2])


# Settings that depend on the vector width, by name: "most" positions (the most for which BLAS runs) and "too many"
# (one more), ``ops.TILES_MIN_POSITIONS``; "one thread's" channels (ConvTranspose's fewest for BLAS on one thread)
# and one fewer, ``ops.CONV_TRANSPOSE_GEMM_MIN_CHANNELS_ONE_THREAD``
def _setting(value) -> int:
    import fusion.ops as ops_module
    return {"most": ops_module.TILES_MIN_POSITIONS - 1, "too many": ops_module.TILES_MIN_POSITIONS,
            "one thread's": ops_module.CONV_TRANSPOSE_GEMM_MIN_CHANNELS_ONE_THREAD,
            "one fewer": ops_module.CONV_TRANSPOSE_GEMM_MIN_CHANNELS_ONE_THREAD - 1}.get(value, value)


@pytest.mark.parametrize("channels_per_group, positions, threads, pools_spin, kernel", [
    (4, 3, 2, False, "phases"), (8, 3, 2, False, "tiles"), ("one fewer", 3, 1, True, "tiles"),
    ("one thread's", 3, 1, True, "GEMM"), (255, 3, 2, False, "tiles"), (256, 3, 2, False, "GEMM"),
    (256, 3, 2, True, "tiles"), (256, "most", 1, False, "GEMM"), (256, "too many", 1, False, "tiles")])
def test_conv_transpose_kernel_choice(monkeypatch, channels_per_group, positions, threads, pools_spin, kernel):
    """The kernel follows the input channels per group (on one thread from fewer of them) and, for BLAS, the
    positions, except that with several threads and spin-waiting pools ConvTranspose stays off BLAS."""
    import fusion.ops as ops_module

    channels_per_group, positions = _setting(channels_per_group), _setting(positions)
    chosen = []
    monkeypatch.setattr(ops_module, "_conv_transpose_gemm", lambda *args: chosen.append("GEMM"))
    monkeypatch.setattr(ops_module, "_conv_transpose_phases",
                        lambda *args, tiled: chosen.append("tiles" if tiled else "phases"))
    monkeypatch.setattr(ops_module, "NUMBA_POOL_SPINS", pools_spin)
    monkeypatch.setattr(numba, "get_num_threads", lambda: threads)
    fusion.conv_transpose(np.ones((1, channels_per_group, positions)), np.ones((channels_per_group, 1, 2)))
    assert chosen == [kernel]


@pytest.mark.parametrize("channels_per_group, positions, threads, pools_spin, kernel", [
    (1, 2, 2, False, "direct"), (2, 2, 2, False, "tiles"), (255, 2, 1, True, "tiles"), (256, 2, 1, True, "GEMM"),
    (256, 2, 2, False, "GEMM"), (256, 2, 2, True, "tiles"), (256, "most", 1, False, "GEMM"),
    (256, "too many", 1, False, "tiles")])
def test_conv_kernel_choice(monkeypatch, channels_per_group, positions, threads, pools_spin, kernel):
    """Conv's kernel follows the input channels per group and, for BLAS, the output positions, and stays off BLAS as
    ConvTranspose does."""
    import fusion.ops as ops_module

    positions = _setting(positions)
    chosen = []
    for name, function in (("direct", "_conv_direct"), ("tiles", "_conv_tiles"), ("GEMM", "_conv_gemm")):
        monkeypatch.setattr(ops_module, function, lambda *args, name=name: chosen.append(name))
    monkeypatch.setattr(ops_module, "NUMBA_POOL_SPINS", pools_spin)
    monkeypatch.setattr(numba, "get_num_threads", lambda: threads)
    fusion.conv(np.ones((1, 2 * channels_per_group, positions + 1)), np.ones((2, channels_per_group, 2)), group=2)
    assert chosen == [kernel]


@pytest.mark.parametrize("op", ["ConvTranspose", "Conv"])
def test_blas_runs_on_no_more_threads_than_numba(monkeypatch, op):
    """After ``numba.set_num_threads(1)`` the GEMM paths' BLAS calls run on one thread too, and BLAS's own setting
    is back afterwards."""
    from threadpoolctl import threadpool_info

    import fusion.ops as ops_module

    def blas_threads():
        return [library["num_threads"] for library in threadpool_info() if library["user_api"] == "blas"]

    if numba.config.NUMBA_NUM_THREADS < 2 or max(blas_threads(), default=1) < 2:
        pytest.skip("one thread only")
    before = blas_threads()
    seen = []
    real = np.matmul
    monkeypatch.setattr(ops_module.np, "matmul", lambda *a, **k: seen.append(blas_threads()) or real(*a, **k))
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with ops_module._forced_kernel(op, "gemm"):
            if op == "Conv":
                fusion.conv(np.ones((1, 4, 6, 6)), np.ones((3, 4, 2, 2)))
            else:
                fusion.conv_transpose(np.ones((1, 4, 6, 6)), np.ones((4, 3, 2, 2)))
    finally:
        numba.set_num_threads(threads)
    assert seen and all(counts == [1] * len(counts) for counts in seen), seen
    assert blas_threads() == before


def _lifted_plan(plan_function, geo):
    """``plan_function`` (``conv_transpose_phases.plan`` or ``conv_polyphase.split_plan``) of ``geo`` lifted to 3 spatial axes."""
    import fusion.ops as ops_module

    return ops_module._lifted_plan(plan_function, geo, *ops_module._lifted_geometry(geo))


def _tiles_along_rows(widest: int, pitch_w: int, itemsize: int) -> bool:
    """Whether the tiled kernel tiles along rows: a row's outputs, in whole tiles, fit in the row pitch."""
    from fusion.kernels.microkernel import tile_width

    width = tile_width(itemsize)
    return -(-widest // width) * width <= pitch_w


@pytest.mark.parametrize("shape, kernel, c_out_g, attributes", [
    ((2, 48, 64, 96), (3, 4), 7, dict(group=2, strides=[2, 3], dilations=[2, 1], pads=[1, 0, 2, 1])),
    ((1, 48, 2, 9, 10), (3, 2, 3), 7, dict(group=2, strides=[2, 1, 2], dilations=[1, 2, 1], pads=[5, 1, 0, 0, 0, 1])),
    ((1, 9, 1600), (5,), 6, dict(group=3, strides=[3], dilations=[2], pads=[3, 2])),
], ids=["2-D: row tiles, k-passes, uneven blocks, bands", "3-D: flat tiles, a tap that reads only padding",
        "1-D: every residue of stride 3, a row cut into pieces"])
@pytest.mark.parametrize("threads_hint", [1, 64], ids=["whole tasks", "tasks split into parts"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_polyphase_conv_edges(monkeypatch, shape, kernel, c_out_g, attributes, threads_hint, dtype):
    """Conv on the tiled GEMM over the polyphase split: strides with dilations (taps of one axis in different
    phases), asymmetric pads, a tap dropped because it reads only padding, tiles along rows and along the flat band,
    several bands, a row cut into pieces, more pairs than one k-pass, a batch of 2; and with a thread count that
    splits each task's output channels into parts (``TASKS_PER_THREAD``)."""
    import fusion.ops as ops_module
    from fusion import attrs
    from fusion.kernels.conv_polyphase import split_plan
    from fusion.kernels.tiles import BAND, KC

    rng = np.random.default_rng(len(shape) * 11 + threads_hint)
    group = attributes["group"]
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((group * c_out_g, shape[1] // group) + kernel).astype(dtype)
    b = rng.standard_normal(group * c_out_g).astype(dtype)
    # the case covers what its id says
    geo = attrs.resolve(x.shape, w.shape, transposed=False, **attributes)
    split = _lifted_plan(split_plan, geo)
    pitch_w = split.phase_shape[2]
    row_tiles = _tiles_along_rows(geo.output_shape[-1], pitch_w, x.itemsize)
    dropped = split.tap_index.size < int(np.prod(kernel))
    bands = split.phase_counts[0, 1] > 2 * max(1, BAND // pitch_w)
    pairs = (shape[1] // group) * split.tap_index.size
    pieces = geo.output_shape[-1] >= 2 * BAND
    # (whatever the tile width, 4 to 32)
    covered = {4: (True, False, True, True, False), 5: (False, True, False, True, False),
               3: (False, False, False, False, True)}
    assert (row_tiles, dropped, bands, pairs > KC, pieces) == covered[len(shape)]
    monkeypatch.setattr(numba, "get_num_threads", lambda: threads_hint)
    with ops_module._forced_kernel("Conv", "tiles"):
        result = compare(fusion.conv(x, w, b, **attributes), reference.conv(x, w, b, **attributes),
                         bound=site_bound(x, w, b, transposed=False, dtype=dtype, **attributes))
    assert result.passed, result.summary()


@pytest.mark.parametrize("group, c_out_g, length", [(8, 1, 9000), (2, 6, 9000), (2, 6, 50)],
                         ids=["depthwise: padded per task", "large group: padded once", "small group: per task"])
def test_phase_kernel_input_padding_modes(group, c_out_g, length):
    """The phase kernel pads a group's input per task or once for all (``PAD_PER_TASK_BYTES``); both must agree
    with the reference, with asymmetric pads and a bias, on batch 2; the long cases add phases of more than one
    ``BLOCK``."""
    from fusion.kernels.conv_transpose_phases import BLOCK, PAD_PER_TASK_BYTES

    c_in = 8
    rng = np.random.default_rng(group * 100 + length)
    x = rng.standard_normal((2, c_in, length))
    w = rng.standard_normal((c_in, c_out_g, 4))
    b = rng.standard_normal(group * c_out_g)
    attributes = dict(group=group, strides=[3], pads=[2, 1], dilations=[2])
    # the case covers its mode (a task of at most two output channels pads its group itself, whatever the size)
    padded_group_bytes = (c_in // group) * (length + 4) * x.itemsize
    padded_per_task = c_out_g <= 2 or padded_group_bytes <= PAD_PER_TASK_BYTES
    assert padded_per_task == (group == 8 or length < 1000)
    assert (length > BLOCK) == (length > 1000)  # each of the 3 output phases is about as long as the input
    exact = reference.conv_transpose(x, w, b, **attributes)
    bound = site_bound(x, w, b, transposed=True, **attributes)
    result = compare(fusion.conv_transpose(x, w, b, **attributes), exact, bound=bound)
    assert result.passed, result.summary()


@pytest.mark.parametrize("shape, kernel, attributes, blocks", [
    ((1, 2, 20, 40, 40), (3, 3, 3), dict(group=2, strides=[2, 2, 2], pads=[1] * 6), (5, 1, 1)),
    ((2, 2, 100, 100), (3, 4), dict(group=2, strides=[2, 2], pads=[1, 1, 1, 1]), (1, 2, 1)),
    ((1, 2, 20000), (4,), dict(group=2, strides=[2], pads=[2, 1]), (1, 1, 2)),
], ids=["3-D: blocks of whole depths", "2-D: blocks of whole rows", "1-D: a row cut into pieces"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_phase_kernel_blocks(shape, kernel, attributes, blocks, dtype):
    """The phase kernel sums a block of every row phase, then stores its rows in order: blocks of several depths,
    of several rows and pieces of one row; row phases with one row fewer than the other (odd output heights),
    tasks of two output channels and of one (3 per group), passes of ``BLOCK`` within a block, a batch of 2."""
    from fusion import attrs
    from fusion.kernels.conv_transpose_phases import BLOCK, _block_size, plan
    from fusion.kernels.shared import most_counts

    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((shape[1], 3) + kernel).astype(dtype)
    b = rng.standard_normal(3 * attributes["group"]).astype(dtype)
    geo = attrs.resolve(x.shape, w.shape, transposed=True, **attributes)
    phase_plan = _lifted_plan(plan, geo)
    sh, sw = ((1, 1) + tuple(attributes["strides"]))[-2:]
    _, ph, pw = phase_plan.padded_shape
    most = most_counts(phase_plan.phase_counts)
    size = _block_size(most, sh * sw, ph * pw, pw)
    # the case covers what its id says
    assert tuple(-(-m // s) for m, s in zip(most, size)) == blocks
    assert geo.output_shape[-1 if len(shape) == 3 else -2] % 2 == 1  # a phase is a row (or column) shorter
    assert max(size[0] * ph * pw, size[1] * pw, size[2]) > BLOCK or len(shape) == 5  # passes within a block
    exact = reference.conv_transpose(x, w, b, **attributes)
    result = compare(fusion.conv_transpose(x, w, b, **attributes), exact,
                     bound=site_bound(x, w, b, transposed=True, dtype=dtype, **attributes))
    assert result.passed, result.summary()


@pytest.mark.parametrize("shape, c_out_g, attributes", [
    ((2, 44, 40, 31), 7, dict(strides=[1, 2], pads=[1, 0, 2, 1], output_padding=[0, 1])),
    ((1, 80, 5, 6, 6), 7, dict(strides=[2, 1, 3], pads=[1, 0, 2, 0, 1, 1], dilations=[1, 2, 1])),
    ((1, 9, 700), 6, dict(group=3, strides=[1], pads=[3, 2])),
    ((1, 12, 45, 64), 7, dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    ((1, 16, 8, 4), 13, dict(strides=[2, 2], pads=[1, 1, 1, 0])),
], ids=["2-D: row tiles, k-passes, uneven blocks, bands", "3-D: flat tiles, uneven blocks",
        "1-D stride 1, a row cut into pieces", "2-D: two row phases of unequal rows, bands",
        "2-D: flat tiles over rows narrower than a tile, phases of unequal rows and columns"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiled_kernel_edges(shape, c_out_g, attributes, dtype):
    """The tiled kernel's edges: output channels that split into blocks of unequal size, more (input channel, tap)
    pairs than one k-pass (``KC``), tiles along rows and along the flat band, three bands of rows or more, a row cut
    into pieces, two row phases in one task with a row more in one of them, flat tiles that end at the last row's
    last output (phases of 5 and 4 columns on a pitch of 7), a batch of 2; with the bias and with a BN epilogue."""
    import fusion.ops as ops_module
    from fusion import attrs
    from fusion.kernels.microkernel import MR
    from fusion.kernels.conv_transpose_phases import plan
    from fusion.kernels.tiles import BAND, KC

    rng = np.random.default_rng(len(shape) * 7 + c_out_g)
    group = attributes.get("group", 1)
    x = rng.standard_normal(shape).astype(dtype)
    kernel = {4: (3, 4), 5: (3, 2, 3), 3: (5,)}[len(shape)]
    w = rng.standard_normal((shape[1], c_out_g) + kernel).astype(dtype)
    b = rng.standard_normal(group * c_out_g).astype(dtype)
    # the case covers what its id says (two row phases in one task: strides 2 along both axes of the plane)
    geo = attrs.resolve(x.shape, w.shape, transposed=True, **attributes)
    phase_plan = _lifted_plan(plan, geo)
    pitch_w = phase_plan.padded_shape[2]
    row_tiles = _tiles_along_rows(int(phase_plan.phase_counts[:, 2].max()), pitch_w, x.itemsize)
    pairs = (shape[1] // group) * int(np.diff(phase_plan.phase_start).max())
    bands = int(phase_plan.phase_counts[:, 1].max()) > 2 * max(1, BAND // pitch_w)  # a whole band between two
    uneven_blocks = c_out_g % -(-c_out_g // MR) != 0
    pieces = int(phase_plan.phase_counts[:, 2].max()) >= 2 * BAND
    row_phases = tuple(attributes["strides"][-2:]) == (2, 2) and geo.output_shape[-2] % 2 == 1
    # (whatever the tile width, 4 to 32; a single row is the same along rows or flat)
    covered = {(2, 44): (True, True, True, True, False, False), (1, 80): (False, True, False, True, False, False),
               (1, 9): (row_tiles, False, False, False, True, False), (1, 12): (True, False, True, True, False, True),
               (1, 16): (False, False, False, True, False, True)}
    assert (row_tiles, pairs > KC, bands, uneven_blocks, pieces, row_phases) == covered[shape[:2]]
    if shape[:2] == (1, 16):
        assert sorted(set(phase_plan.phase_counts[:, 2].tolist())) == [4, 5] and pitch_w == 7
    with ops_module._forced_kernel("ConvTranspose", "tiles"):
        exact = reference.conv_transpose(x, w, b, **attributes)
        result = compare(fusion.conv_transpose(x, w, b, **attributes), exact,
                         bound=site_bound(x, w, b, transposed=True, dtype=dtype, **attributes))
        assert result.passed, result.summary()
        affine = fusion.batch_norm_affine(rng.uniform(0.5, 2, exact.shape[1]), rng.standard_normal(exact.shape[1]),
                                          rng.standard_normal(exact.shape[1]), rng.uniform(0.5, 2, exact.shape[1]))
        fused = fusion.conv_transpose_channel_affine(x, w, b, affine, **attributes)
        expected = reference.channel_affine(exact, affine, node="test")
        result = compare(fused, expected, bound=site_bound(x, w, b, affine, transposed=True, dtype=dtype,
                                                           **attributes))
        assert result.passed, result.summary()


@pytest.mark.parametrize("shape, w_shape, attributes, covers", [
    ((2, 48, 40, 31), (48, 37, 3, 4), dict(group=2, strides=[1, 2], pads=[1, 0, 2, 1]),
     {"k-passes", "bands", "padded channels"}),
    ((1, 48, 10, 12, 12), (48, 33, 3, 2, 3), dict(strides=[2, 1, 3], pads=[1, 0, 2, 0, 1, 1]),
     {"padded channels", "depth phases", "k-passes"}),
    ((1, 64, 1100), (64, 41, 5), dict(strides=[2], pads=[3, 2]), {"pieces", "padded channels", "k-passes"}),
    ((1, 64, 3, 400), (64, 48, 4, 4), dict(strides=[2, 2], pads=[1, 1, 1, 1]), {"parts", "k-passes"}),
], ids=["2-D grouped: k-passes, bands, a batch of 2", "3-D: depth phases", "1-D: a row cut into pieces",
        "few tasks: channel blocks split into parts"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiles_with_channels_in_vectors(monkeypatch, shape, w_shape, attributes, covers, dtype):
    """The tiled ConvTranspose kernel that holds output channels in vectors (``tiles._channel_tile_loop``, on hosts
    whose vectors are 256-bit or narrower; an AVX-512 host runs it in the forced-width test): a group's channels
    padded to whole vectors, more (input channel, tap) pairs than one k-pass, several bands, a row cut into pieces,
    depth phases, channel blocks split into parts; against the reference, with the bias and a BN epilogue."""
    import fusion.ops as ops_module
    from fusion.kernels import tiles
    from fusion.kernels.microkernel import tile_positions

    group = attributes.get("group", 1)
    c_out_g = w_shape[1]
    rng = np.random.default_rng(sum(shape) + c_out_g)
    x, w = rng.standard_normal(shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(group * c_out_g).astype(dtype)
    seen = []
    real = tiles._channel_tile_loop
    monkeypatch.setattr(tiles, "_channel_tile_loop", lambda count, sizes, *rest: seen.append((sizes, rest[-2])) or
                        real(count, sizes, *rest))
    with ops_module._forced_kernel("ConvTranspose", "tiles"):
        got = fusion.conv_transpose(x, w, b, **attributes)
        if not seen and tiles.VECTOR_BYTES > 32:
            pytest.skip("512-bit tiles hold positions in vectors: the forced-width test runs this kernel")
        exact = reference.conv_transpose(x, w, b, **attributes)
        result = compare(got, exact, bound=site_bound(x, w, b, transposed=True, dtype=dtype, **attributes))
        assert result.passed, result.summary()
        affine = fusion.batch_norm_affine(rng.uniform(0.5, 2, exact.shape[1]), rng.standard_normal(exact.shape[1]),
                                          rng.standard_normal(exact.shape[1]), rng.uniform(0.5, 2, exact.shape[1]))
        fused = fusion.conv_transpose_channel_affine(x, w, b, affine, **attributes)
        result = compare(fused, reference.channel_affine(exact, affine, node="test"),
                         bound=site_bound(x, w, b, affine, transposed=True, dtype=dtype, **attributes))
        assert result.passed, result.summary()
    # the kernel ran, and the case covers what its id says (and maybe more: parts follow the thread count)
    sizes, b_offsets = seen[0]
    found = {"k-passes": b_offsets.shape[1] > tiles.KC, "bands": sizes[tiles._BANDS] > 1,
             "pieces": sizes[tiles._PIECES] > 1, "parts": sizes[tiles._PARTS] > 1,
             "depth phases": sizes[tiles._DEPTH_PHASES] > 1,
             "padded channels": c_out_g % tile_positions(np.dtype(dtype).itemsize) != 0}
    assert covers <= {name for name, there in found.items() if there}


def test_a_small_layer_runs_on_one_thread_when_the_pools_sleep(monkeypatch):
    import numba

    from fusion import ops

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one thread only")
    seen = []
    real = ops._conv_transpose_any
    monkeypatch.setattr(ops, "_conv_transpose_any", lambda *a: seen.append(numba.get_num_threads()) or real(*a))
    x = np.ones((1, 16, 8, 8), np.float32)
    small, large = np.ones((16, 16, 4, 4), np.float32), np.ones((16, 256, 4, 4), np.float32)
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        monkeypatch.setattr(ops, "NUMBA_POOL_SPINS", False)
        y = ops.conv_transpose(x, small, strides=[2, 2], pads=[1, 1, 1, 1])  # 0.26 M multiply-adds
        ops.conv_transpose(np.ones((1, 16, 16, 16), np.float32), large, strides=[2, 2], pads=[1, 1, 1, 1])  # 16.8 M
        monkeypatch.setattr(ops, "NUMBA_POOL_SPINS", True)
        ops.conv_transpose(x, small, strides=[2, 2], pads=[1, 1, 1, 1])
        assert numba.get_num_threads() == 2  # restored
    finally:
        numba.set_num_threads(before)
    assert seen == [1, 2, 2]
    np.testing.assert_allclose(y, fusion.reference.conv_transpose(x, small, strides=[2, 2], pads=[1, 1, 1, 1]),
                               rtol=1e-5, atol=1e-4)


_FORCED_WIDTH_CHILD = """
import numpy as np
import fusion
from fusion import ops, reference
from fusion.bounds import site_bound
from fusion.compare import compare
from fusion.kernels import microkernel, tiles

assert microkernel.VECTOR_BYTES == {width}
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    # 1, 2, 3, 7 (blocks of 4 + 3) and 11 (6 + 5) output channels a group: tiles of every row count, 1 to 6
    for c_out_g in (1, 2, 3, 7, 11):
        x = rng.standard_normal((1, 16, 7, 9)).astype(dtype)
        attributes = dict(group=2, strides=[2, 3], pads=[1, 0, 1, 2])
        w = rng.standard_normal((16, c_out_g, 3, 4)).astype(dtype)
        b = rng.standard_normal(2 * c_out_g).astype(dtype)
        with ops._forced_kernel("ConvTranspose", "tiles"):
            got = fusion.conv_transpose(x, w, b, **attributes)
        result = compare(got, reference.conv_transpose(x, w, b, **attributes),
                         bound=site_bound(x, w, b, transposed=True, dtype=dtype, **attributes))
        assert result.passed, ("ConvTranspose", dtype, c_out_g, result.summary())
        w = rng.standard_normal((2 * c_out_g, 8, 3, 2)).astype(dtype)
        attributes = dict(group=2, strides=[2, 1], dilations=[1, 2], pads=[1, 1, 0, 1])
        with ops._forced_kernel("Conv", "tiles"):
            got = fusion.conv(x, w, b, **attributes)
        result = compare(got, reference.conv(x, w, b, **attributes),
                         bound=site_bound(x, w, b, transposed=False, dtype=dtype, **attributes))
        assert result.passed, ("Conv", dtype, c_out_g, result.summary())
    # a layer that 256-bit tiles compute with channels in vectors: several phases, 256 pairs and 1056 positions a phase
    x = rng.standard_normal((1, 64, 32, 33)).astype(dtype)
    w = rng.standard_normal((64, 35, 4, 4)).astype(dtype)
    b = rng.standard_normal(35).astype(dtype)
    attributes = dict(strides=[2, 2], pads=[1, 1, 1, 1])
    with ops._forced_kernel("ConvTranspose", "tiles"):
        got = fusion.conv_transpose(x, w, b, **attributes)
    result = compare(got, reference.conv_transpose(x, w, b, **attributes),
                     bound=site_bound(x, w, b, transposed=True, dtype=dtype, **attributes))
    assert result.passed, ("ConvTranspose, channels in vectors", dtype, result.summary())
fmas = [line for line in next(iter(tiles._tile_loop.inspect_asm().values())).splitlines() if "vfmadd" in line]
print(sorted({{name for line in fmas for name in ("xmm", "ymm", "zmm") if name in line}}))
"""


def test_the_tiled_kernels_are_right_at_the_other_vector_width(tmp_path):
    """``FUSION_VECTOR_BYTES`` forces the tile's vector width, so that both widths' tilings (``NR``, ``KC``, the
    spare rows a tile reads past) are tested on any CPU: the host's own width runs in every other test, this one runs
    the other of AVX-512's and AVX's (16 bytes, SSE, the same code with 4 lanes, is left out to keep CI short). The
    FMAs are in the forced registers where the CPU has them (LLVM splits wider ones)."""
    from fusion.kernels.microkernel import HOST_VECTOR_BYTES

    width = 32 if HOST_VECTOR_BYTES == 64 else 64
    env = dict(os.environ, FUSION_VECTOR_BYTES=str(width), NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", _FORCED_WIDTH_CHILD.format(width=width)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    registers = out.stdout.splitlines()[-1]
    # 32 bytes forced on an AVX-512 host are ymm; 64 forced on an AVX host are split into ymm
    assert registers == "['ymm']", registers


@pytest.mark.parametrize("width, cache, message", [("32", "", "needs a NUMBA_CACHE_DIR of its own"),
                                                   ("24", "cache", "expected 16, 32 or 64")])
def test_a_forced_vector_width_is_refused_without_a_cache_of_its_own_or_when_unknown(tmp_path, width, cache, message):
    env = dict(os.environ, FUSION_VECTOR_BYTES=width, NUMBA_CACHE_DIR=cache and str(tmp_path))
    out = subprocess.run([sys.executable, "-c", "import fusion"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]
