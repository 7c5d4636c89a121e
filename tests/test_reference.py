"""The golden definitions move a box of positions per (channel, tap); here they are checked, bit for bit, against
the ONNX spec read one position at a time (the loops below), on every geometry ``tests.strategies`` draws."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion import attrs, reference
from tests.strategies import arrays_for, conv_configs


def conv_transpose_position_by_position(x, w, b, **attributes):
    """Input position ``i`` and tap ``t`` feed output ``o = i*stride + t*dilation - pad_begin`` when it is inside."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    geo = attrs.resolve(x.shape, w.shape, transposed=True, **attributes)
    c_in_g, c_out_g = geo.c_in // geo.group, geo.c_out // geo.group
    y = np.zeros((geo.batch, geo.c_out) + geo.output_shape)
    for g in range(geo.group):
        for ci in range(g * c_in_g, (g + 1) * c_in_g):
            for j in range(c_out_g):
                for tap in itertools.product(*(range(k) for k in geo.kernel_shape)):
                    for i in itertools.product(*(range(s) for s in geo.input_shape)):
                        o = tuple(i_a * s + t * d - p for i_a, t, s, d, p in
                                  zip(i, tap, geo.strides, geo.dilations, geo.pads_begin))
                        if all(0 <= o_a < n for o_a, n in zip(o, geo.output_shape)):
                            y[(slice(None), g * c_out_g + j) + o] += x[(slice(None), ci) + i] * w[(ci, j) + tap]
    return y + (0 if b is None else b.astype(np.float64).reshape((1, -1) + (1,) * geo.rank))


def conv_position_by_position(x, w, b, **attributes):
    """Output position ``o`` reads input ``i = o*stride + t*dilation - pad_begin`` through tap ``t`` when inside."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    geo = attrs.resolve(x.shape, w.shape, transposed=False, **attributes)
    c_in_g, c_out_g = geo.c_in // geo.group, geo.c_out // geo.group
    y = np.zeros((geo.batch, geo.c_out) + geo.output_shape)
    for oc in range(geo.c_out):
        g = oc // c_out_g
        for ci in range(c_in_g):
            for tap in itertools.product(*(range(k) for k in geo.kernel_shape)):
                for o in itertools.product(*(range(s) for s in geo.output_shape)):
                    i = tuple(o_a * s + t * d - p for o_a, t, s, d, p in
                              zip(o, tap, geo.strides, geo.dilations, geo.pads_begin))
                    if all(0 <= i_a < n for i_a, n in zip(i, geo.input_shape)):
                        y[(slice(None), oc) + o] += x[(slice(None), g * c_in_g + ci) + i] * w[(oc, ci) + tap]
    return y + (0 if b is None else b.astype(np.float64).reshape((1, -1) + (1,) * geo.rank))


# (the golden definition, the spec read position by position), by ``transposed``
DEFINITIONS = {True: (reference.conv_transpose, conv_transpose_position_by_position),
               False: (reference.conv, conv_position_by_position)}


@settings(max_examples=150)
@given(transposed=st.booleans(), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_the_golden_definitions_are_the_spec_bit_for_bit(transposed, data, seed):
    config = data.draw(conv_configs(transposed=transposed))
    x, w, b = arrays_for(config, np.random.default_rng(seed))
    golden, by_position = DEFINITIONS[transposed]
    np.testing.assert_array_equal(golden(x, w, b, **config["attributes"]),
                                  by_position(x, w, b, **config["attributes"]))


@pytest.mark.parametrize("transposed, attributes", [
    (False, dict(strides=[3, 1], pads=[4, 0, 4, 2], dilations=[3, 1])),
    (True, dict(strides=[2, 1], pads=[5, 0, 5, 0], dilations=[3, 1])),
], ids=["Conv", "ConvTranspose"])
def test_a_tap_that_reaches_no_position_adds_nothing(transposed, attributes):
    """Pads wider than a dilated tap's reach: some taps join no position at all, and the rest must still be summed."""
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 2, 3, 4)), rng.standard_normal((2, 2, 3, 3))
    geo = attrs.resolve(x.shape, w.shape, transposed=transposed, **attributes)
    reached = [reference._tap_boxes(tap, geo, transposed=transposed) is not None for tap in np.ndindex(3, 3)]
    assert 0 < sum(reached) < len(reached)  # the case covers what its name says
    golden, by_position = DEFINITIONS[transposed]
    np.testing.assert_array_equal(golden(x, w, None, **attributes), by_position(x, w, None, **attributes))
