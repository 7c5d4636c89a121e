"""The fold, judged by behaviour: the fused layer computes what the unfused one does, within the bound."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import fusion
from fusion import known_wrong_folds
from fusion.affine import batch_norm_affine, scale_affine
from fusion.bounds import site_bound
from fusion.compare import compare
from fusion.fold import fold_affine, fold_affine_before, fold_batch_norm, fold_scale
from fusion.testing import assert_matches_reference
from strategies import arrays_for, conv_configs


def _convolve(transposed):
    return fusion.conv_transpose if transposed else fusion.conv


def _channels(config):
    g = config["attributes"]["group"]
    return config["w_shape"][1] * g if config["transposed"] else config["w_shape"][0]


def _bn_params(rng, channels, default=False):
    if default:
        return dict(scale=np.ones(channels), bias=np.zeros(channels), mean=np.zeros(channels), var=np.ones(channels))
    return dict(scale=rng.uniform(-2, 2, channels), bias=rng.standard_normal(channels),
                mean=rng.standard_normal(channels), var=rng.uniform(0.05, 3, channels))


@pytest.mark.parametrize("transposed", [True, False], ids=["ConvTranspose", "Conv"])
@given(data=st.data())
def test_folded_layer_computes_the_unfused_layer(transposed, data):
    config = data.draw(conv_configs(transposed=transposed))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x, w, b = arrays_for(config, rng)
    attributes = config["attributes"]
    channels = _channels(config)
    tail = data.draw(st.sampled_from(["bn", "bn-default", "scale", "scale-no-bias"]))
    if tail.startswith("bn"):
        params = _bn_params(rng, channels, default=tail == "bn-default")
        w_f, b_f = fold_batch_norm(w, b, **params, epsilon=1e-5, group=attributes["group"], transposed=transposed)
        unfused = fusion.batch_norm(_convolve(transposed)(x, w, b, **attributes), **params)
        affine = batch_norm_affine(**params)
        tail_keywords = {"batch_norm": params}
    else:
        params = dict(scale=rng.uniform(-2, 2, channels),
                      bias=None if tail == "scale-no-bias" else rng.standard_normal(channels))
        w_f, b_f = fold_scale(w, b, **params, group=attributes["group"], transposed=transposed)
        unfused = fusion.scale(_convolve(transposed)(x, w, b, **attributes), **params)
        affine = scale_affine(**params)
        tail_keywords = {"scale": params}
    assert w_f.dtype == w.dtype == b_f.dtype and w_f.shape == w.shape and b_f.shape == (channels,)
    fused = _convolve(transposed)(x, w_f, b_f, **attributes)
    op = "conv_transpose" if transposed else "conv"
    # both float32 evaluations, fused and unfused, are within the bound of the float64 unfused reference
    assert_matches_reference(fused, op=op, x=x, w=w, b=b, **tail_keywords, **attributes)
    assert_matches_reference(unfused, op=op, x=x, w=w, b=b, **tail_keywords, **attributes)
    bound = site_bound(x, w, b, affine, transposed=transposed, **attributes)
    assert compare(fused, unfused, bound=2 * bound).passed


@given(data=st.data())
def test_legacy_mnn_fold_is_caught_exactly_where_its_index_map_differs(data):
    config = data.draw(conv_configs(transposed=True))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x, w, b = arrays_for(config, rng)
    attributes = config["attributes"]
    group, c_in = attributes["group"], config["w_shape"][0]
    params = _bn_params(rng, _channels(config))
    affine = batch_norm_affine(**params)
    w_correct, b_correct = fold_affine(w, b, affine, group=group, transposed=True)
    w_legacy, b_legacy = known_wrong_folds.fold_mnn_legacy(w, b, affine, group=group)
    np.testing.assert_array_equal(b_legacy, b_correct)
    expected = fusion.batch_norm(fusion.conv_transpose(x.astype(np.float64), w.astype(np.float64), b, **attributes),
                                 **params)
    bound = site_bound(x, w, b, affine, transposed=True, **attributes)
    legacy_result = compare(fusion.conv_transpose(x, w_legacy, b_legacy, **attributes), expected, bound=bound)
    correct_result = compare(fusion.conv_transpose(x, w_correct, b_correct, **attributes), expected, bound=bound)
    assert correct_result.passed, correct_result.summary()
    # The legacy map reads the flat weight as (C_in/group, C_out, *k): it picks the right channel whenever
    # C_in/group == 1, so only grouped layers with C_in/group > 1 get wrong weights (random scales all differ).
    wrong_map = group > 1 and c_in // group > 1
    weight_error = np.abs(w_legacy.astype(np.float64) - w_correct)
    assert (weight_error.max() > 0) == wrong_map
    # An output check sees the defect exactly where a misscaled tap reaches an output (some geometries crop
    # every such tap away; the fused-parameter check still sees those).
    reaches = fusion.conv_transpose(np.abs(x.astype(np.float64)), weight_error, **attributes).max() > 0
    assert legacy_result.passed == (not reaches), legacy_result.summary()


def _pytorch_fold_never_passes(config, rng, fold) -> None:
    """``fold`` (PyTorch's transpose fold, or a planted one) on a grouped layer: numpy's broadcasting refuses it, or
    it returns a weight no layer of this shape can use, or the layer computes the wrong result: never a pass."""
    attributes = config["attributes"]
    x, w, b = arrays_for(config, rng)
    params = _bn_params(rng, _channels(config))
    affine = batch_norm_affine(**params)
    try:
        w_wrong, b_wrong = fold(w, b, affine)
    except ValueError as error:  # (1, C_out, 1...) against C_out/group columns: loud, never silent
        assert "could not be broadcast" in str(error), error
        return
    if w_wrong.shape != w.shape:  # C_out/group == 1: widened to (C_in, C_out, *k)
        return
    expected = fusion.batch_norm(fusion.conv_transpose(x.astype(np.float64), w.astype(np.float64), b, **attributes),
                                 **params)
    actual = fusion.conv_transpose(x, w_wrong, b_wrong, **attributes)
    assert not compare(actual, expected, bound=site_bound(x, w, b, affine, transposed=True, **attributes)).passed


@given(data=st.data())
def test_pytorch_transpose_reshape_never_passes_on_grouped_layers(data):
    config = data.draw(conv_configs(transposed=True))
    assume(config["attributes"]["group"] > 1)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    _pytorch_fold_never_passes(config, rng, known_wrong_folds.fold_pytorch_transpose)


@pytest.mark.parametrize("planted", ["raises_otherwise", "correct_fold"])
def test_the_pytorch_fold_test_fails_on_a_fold_that_is_not_the_known_defect(planted):
    """The test above has teeth: a fold that fails for another reason, or that is right, makes it fail (its former
    version returned on any ValueError before comparing)."""
    config = {"x_shape": (1, 4, 3, 3), "w_shape": (4, 2, 2, 2), "transposed": True, "bias": True,
              "attributes": {"group": 2, "strides": [2, 2], "pads": [0, 0, 0, 0]}}

    def raises_otherwise(w, b, affine):
        raise ValueError("planted: not a broadcasting error")

    def correct_fold(w, b, affine):
        return fold_affine(w, b, affine, group=2, transposed=True)

    fold = {"raises_otherwise": raises_otherwise, "correct_fold": correct_fold}[planted]
    with pytest.raises(AssertionError):
        _pytorch_fold_never_passes(config, np.random.default_rng(0), fold)


def test_fold_runs_along_output_channels_per_group():
    """A hand-checked case: group 2, C_in 4, C_out 2: w[ci, 0] feeds channel 0 for ci < 2, channel 1 after."""
    w = np.ones((4, 1, 1))
    w_f, b_f = fold_scale(w, None, scale=[2.0, 3.0], bias=[0.5, -1.0], group=2, transposed=True)
    np.testing.assert_array_equal(w_f[:, 0, 0], [2, 2, 3, 3])
    np.testing.assert_array_equal(b_f, [0.5, -1.0])
    w_c, _ = fold_scale(np.ones((2, 2, 1)), None, scale=[2.0, 3.0], group=2, transposed=False)
    np.testing.assert_array_equal(w_c[:, :, 0], [[2, 2], [3, 3]])


def test_fold_keeps_dtype_and_computes_in_float64():
    w = np.full((1, 1, 1), 1 + 2**-23, np.float32)  # 1 + one float32 ulp
    scale = 1 - 2**-24
    w_f, b_f = fold_scale(w, np.float32([1.0]), scale=[scale], bias=[2**-30], group=1, transposed=True)
    assert w_f.dtype == np.float32 and b_f.dtype == np.float32
    assert w_f[0, 0, 0] == np.float32(np.float64(1 + 2**-23) * scale)
    assert b_f[0] == np.float32(scale + 2**-30)


@pytest.mark.parametrize("call, message", [
    (lambda: fold_batch_norm(np.ones((4, 2, 3)), None, np.ones(3), np.ones(3), np.ones(3), np.ones(3), group=2,
                             transposed=True), "3-channel affine map does not match the 4 output channels"),
    (lambda: fold_batch_norm(np.ones((4, 2, 3)), None, np.ones(4), np.ones(4), np.ones(4), np.ones(3), group=2,
                             transposed=True), "var has 3 values"),
    (lambda: fold_batch_norm(np.ones((4, 2, 3)), None, np.ones(4), np.ones(4), np.ones(4), np.full(4, -1e-5),
                             group=2, transposed=True), "var + epsilon must be > 0"),
    (lambda: fold_batch_norm(np.ones((4, 2, 3)), None, np.ones(4), np.ones(4), np.full(4, np.nan), np.ones(4),
                             group=2, transposed=True), "mean has 4 non-finite"),
    (lambda: fold_scale(np.ones((4, 2, 3)), None, np.array([1, 1, 1, np.inf]), group=2, transposed=True),
     "scale has 1 non-finite"),
    (lambda: fold_scale(np.full((4, 2, 3), np.nan), None, np.ones(4), group=2, transposed=True), "weight has non-finite"),
    (lambda: fold_scale(np.ones((4, 2)), None, np.ones(2), transposed=False), "weight has rank 2"),
    (lambda: fold_scale(np.ones((4, 2, 3)), None, np.ones(6), group=3, transposed=True), "group 3 does not divide"),
    (lambda: fold_scale(np.ones((4, 2, 3)), np.ones(3), np.ones(4), transposed=False), "bias has shape (3,)"),
])
def test_fold_bad_input(call, message):
    with pytest.raises(ValueError) as raised:
        call()
    assert message in str(raised.value)


@pytest.mark.parametrize("transposed", [True, False], ids=["ConvTranspose", "Conv"])
def test_fold_before_scale_only_is_exact_even_with_padding(transposed, rng):
    x = rng.standard_normal((2, 4, 6, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3) if transposed else (6, 2, 3, 3)).astype(np.float32)
    attributes = dict(group=2, strides=[2, 1], pads=[1, 0, 2, 1])
    scale = rng.uniform(0.5, 2, 4)
    w_f, b_f = fold_affine_before(w, None, scale_affine(scale), transposed=transposed, **attributes)
    before = _convolve(transposed)(fusion.scale(x.astype(np.float64), scale), w.astype(np.float64), **attributes)
    after = _convolve(transposed)(x.astype(np.float64), w_f.astype(np.float64), b_f, **attributes)
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


def test_fold_before_unpadded_conv_folds_the_shift(rng):
    x = rng.standard_normal((1, 4, 7, 7))
    w = rng.standard_normal((6, 2, 3, 3))
    params = _bn_params(rng, 4)
    w_f, b_f = fold_affine_before(w, np.ones(6), batch_norm_affine(**params), group=2, transposed=False,
                                  strides=[2, 2], pads=[0, 0, 0, 0])
    expected = fusion.conv(fusion.batch_norm(x, **params), w, np.ones(6), group=2, strides=[2, 2])
    np.testing.assert_allclose(fusion.conv(x, w_f, b_f, group=2, strides=[2, 2]), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("transposed, attributes, message", [
    (False, dict(pads=[1, 1, 1, 1]), "before a padded Conv"),
    (False, dict(auto_pad="SAME_UPPER"), "before a padded Conv"),
    (True, dict(), "before a ConvTranspose"),
    (True, dict(strides=[2, 2]), "before a ConvTranspose"),
])
def test_fold_before_refuses_a_shift_it_cannot_fold_exactly(transposed, attributes, message, rng):
    w = rng.standard_normal((4, 3, 3, 3) if transposed else (6, 2, 3, 3))
    params = _bn_params(rng, 4)
    with pytest.raises(fusion.UnsafeFoldError, match=message):
        fold_affine_before(w, None, batch_norm_affine(**params), group=2, transposed=transposed, **attributes)


def test_fold_before_refusal_is_right_the_shift_really_is_not_uniform(rng):
    """Show why: with padding, conv(x + t) - conv(x) varies across the output."""
    x = rng.standard_normal((1, 1, 5, 5))
    w = np.ones((1, 1, 3, 3))
    delta = fusion.conv(x + 1.0, w, pads=[1, 1, 1, 1]) - fusion.conv(x, w, pads=[1, 1, 1, 1])
    assert delta[0, 0, 0, 0] == pytest.approx(4.0) and delta[0, 0, 2, 2] == pytest.approx(9.0)


def test_assert_matches_reference_reports_absmax_diffmax_worst_and_bound(rng):
    x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    params = _bn_params(rng, 4)
    w_f, b_f = fold_batch_norm(w, None, **params, group=2, transposed=True)
    good = fusion.conv_transpose(x, w_f, b_f, group=2, strides=[2, 2])
    assert_matches_reference(good, op="conv_transpose", x=x, w=w, group=2, strides=[2, 2], batch_norm=params)
    with pytest.raises(AssertionError, match=r"absMaxV:[0-9.e+-]+ - DiffMax [0-9.e+-]+ .*worst at \[.*bound"):
        assert_matches_reference(good + np.float32(1e-3), op="conv_transpose", x=x, w=w, group=2, strides=[2, 2],
                                 batch_norm=params)
