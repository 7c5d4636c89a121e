"""The bound is sound (a correct float32 evaluation never exceeds it) and not vacuous."""

import numpy as np
import pytest

import fusion
from fusion.affine import batch_norm_affine
from fusion.bounds import gamma, site_bound, unit_roundoff
from fusion.compare import compare, ulp_distance
from fusion.fold import fold_affine
from fusion.ops import channel_affine


def _random_site(rng):
    rank = int(rng.integers(1, 4))
    group = int(rng.integers(1, 5))
    c_in, c_out = group * int(rng.integers(1, 5)), group * int(rng.integers(1, 5))
    side = {1: 24, 2: 9, 3: 5}[rank]
    x = (rng.standard_normal((1, c_in) + (side,) * rank) * rng.uniform(0.1, 10)).astype(np.float32)
    w = rng.standard_normal((c_in, c_out // group) + (3,) * rank).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    affine = batch_norm_affine(rng.uniform(-2, 2, c_out), rng.standard_normal(c_out), rng.standard_normal(c_out) * 3,
                               rng.uniform(0.01, 4, c_out))
    return x, w, b, affine, dict(group=group, strides=[2] * rank, pads=[1] * (2 * rank))


def test_bound_is_sound_and_not_vacuous(rng):
    ratios = []
    for _ in range(150):
        x, w, b, affine, attributes = _random_site(rng)
        exact = channel_affine(fusion.conv_transpose(x.astype(np.float64), w.astype(np.float64), b, **attributes),
                               affine)
        bound = site_bound(x, w, b, affine, transposed=True, **attributes)
        w_f, b_f = fold_affine(w, b, affine, group=attributes["group"], transposed=True)
        fused = fusion.conv_transpose(x, w_f, b_f, **attributes)
        unfused = channel_affine(fusion.conv_transpose(x, w, b, **attributes), affine)
        for actual in (fused, unfused):
            result = compare(actual, exact, bound=bound)
            assert result.passed, result.summary()
        ratios.append(float(np.median(np.abs(fused - exact) / bound)))
    median = float(np.median(ratios))
    print(f"median observed/bound ratio over {len(ratios)} sites: {median:.3g}")
    # not vacuous: typical errors are a visible fraction of the bound (a bound inflated 1000x would fail this)
    assert median > 1e-3


def test_gamma_and_unit_roundoff():
    assert unit_roundoff(np.float32) == 2.0**-24 and unit_roundoff(np.float64) == 2.0**-53
    assert gamma(2, 0.25) == pytest.approx(1.0) and gamma(4, 0.25) == float("inf")


def test_compare_fields_and_mnn_spelling():
    expected = np.array([[1.0, -2.0], [0.5, 0.0]])
    actual = np.array([[1.0, -2.5], [0.5, np.nan]], np.float32)
    result = compare(actual, expected, bound=1e-6)
    assert not result.passed
    assert result.abs_max == 2.0 and result.nan_count == 1 and result.diff_max == float("inf")
    assert result.worst_index == (1, 1) and result.elements_failed == 2
    assert result.summary().startswith("absMaxV:2 - DiffMax inf")
    assert compare(np.ones(3), np.ones(4)).summary() == "shape [3] != expected [4]"
    assert compare(np.float32([1, 2]), np.array([1.0, 2.0])).passed
    assert compare(np.float32([1, 2]), np.array([1.0, 2.0 + 1e-9])).passed is False


def test_ulp_distance_counts_representable_steps():
    one = np.float32(1)
    assert ulp_distance(np.float32([np.nextafter(one, np.float32(2))]), np.array([1.0]))[0] == 1
    assert ulp_distance(np.float32([-0.0]), np.array([np.float32(1e-45)]))[0] == 1
    assert ulp_distance(np.float32([np.float32(-1e-45)]), np.array([np.float32(1e-45)]))[0] == 2
