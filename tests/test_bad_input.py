"""Bad input gets a ValueError that names the cause."""

import numpy as np
import pytest

import fusion
from fusion import reference

X = np.ones((1, 4, 5, 5), np.float32)
WT = np.ones((4, 3, 3, 3), np.float32)  # ConvTranspose (C_in, C_out/group, k, k)
WC = np.ones((6, 2, 3, 3), np.float32)  # Conv (C_out, C_in/group, k, k)


@pytest.mark.parametrize("module", [fusion, reference], ids=["numba", "reference"])
@pytest.mark.parametrize("call, message", [
    (lambda m: m.conv_transpose(X, WT, group=3), "group 3 does not divide the 4 input channels"),
    (lambda m: m.conv_transpose(X, np.ones((3, 3, 3, 3), np.float32)), "must have shape (C_in=4"),
    (lambda m: m.conv(X, WC, group=1), "must have shape (C_out, C_in/group=4"),
    (lambda m: m.conv(X, np.ones((5, 2, 3, 3), np.float32), group=2), "group 2 does not divide the 5 output"),
    (lambda m: m.conv_transpose(np.float32(1.0), WT), "rank 0"),
    (lambda m: m.conv_transpose(np.ones(4, np.float32), WT), "rank 1"),
    (lambda m: m.conv_transpose(np.ones((1, 4, 2, 2, 2, 2), np.float32), np.ones((4, 1, 1, 1, 1, 1))), "rank 6"),
    (lambda m: m.conv_transpose(X, WT, strides=[-1, 1]), "strides must be >= 1"),
    (lambda m: m.conv(X, WC, group=2, dilations=[0, 1]), "dilations must be >= 1"),
    (lambda m: m.conv(X, WC, group=2, pads=[-1, 0, 0, 0]), "pads must be >= 0"),
    (lambda m: m.conv(X, WC, group=2, pads=[0, 0, 0]), "pads has 3 entries, expected 4"),
    (lambda m: m.conv(X, np.ones((6, 2, 9, 9), np.float32), group=2), "output would be empty"),
    (lambda m: m.conv_transpose(X, WT, strides=[2, 2], output_padding=[2, 0]), "output_padding[0]=2"),
    (lambda m: m.conv_transpose(X, WT, auto_pad="SAME"), "auto_pad 'SAME' is not one of"),
    (lambda m: m.conv_transpose(X, WT, pads=[1, 1, 1, 1], auto_pad="VALID"), "cannot be given together"),
    (lambda m: m.conv_transpose(X, WT, kernel_shape=[2, 2]), "kernel_shape [2, 2] does not match"),
    (lambda m: m.conv_transpose(X, WT, b=np.ones(4, np.float32)), "bias has shape (4,), expected (3,)"),
    (lambda m: m.batch_norm(X, np.ones(3), np.ones(4), np.ones(4), np.ones(4)), "scale has 3 values but there are 4"),
    (lambda m: m.batch_norm(X, np.ones(4), np.ones(4), np.ones(4), np.ones(3)), "var has 3 values"),
    (lambda m: m.batch_norm(X, np.ones(4), np.ones(4), np.ones(4), -np.ones(4)), "var + epsilon must be > 0"),
    (lambda m: m.batch_norm(X, np.ones(4), np.ones(4), np.ones(4), np.zeros(4), 0.0), "var + epsilon must be > 0"),
    (lambda m: m.batch_norm(X, np.ones(4), np.ones(4), np.array([0, np.nan, 0, 0]), np.ones(4)),
     "mean has 1 non-finite value(s), first at channel 1"),
    (lambda m: m.batch_norm(X, np.ones(4), np.array([np.inf, 0, 0, 0]), np.ones(4), np.ones(4)), "bias has 1 non-finite"),
    (lambda m: m.scale(X, np.ones(4), np.ones(5)), "bias has 5 values but there are 4"),
    (lambda m: m.scale(X, np.ones((4, 1))), "scale must be 1-D"),
])
def test_bad_input_is_named(module, call, message):
    with pytest.raises(ValueError) as raised:
        call(module)
    assert message in str(raised.value)


def test_integer_input_is_refused():
    with pytest.raises(ValueError, match="dtype int64"):
        fusion.conv_transpose(np.ones((1, 4, 5, 5), np.int64), WT)
