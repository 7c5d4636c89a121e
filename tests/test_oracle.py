"""The oracle's perturbation: the stage tolerances of ``fusion check`` come from it."""

import warnings

import numpy as np
from onnx import numpy_helper

from fusion.oracle import perturbed
from onnx_models import single_node_model


def test_perturbation_makes_no_infinity_and_keeps_the_ones_there():
    """float32's largest values, moved by the perturbation, stay finite (an infinite spread would leave a stage
    unjudged); infinities and NaNs stay what they are; every other value moves by at most the relative size."""
    largest = np.finfo(np.float32).max
    weight = np.full((2, 1, 1, 1), largest, np.float32)
    model = single_node_model("Conv", (1, 1, 4, 4), {"w": weight}, {})
    x = np.array([largest, -largest, np.inf, -np.inf, np.nan, 1.0, -3.0, 0.0] * 2, np.float32).reshape(1, 1, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow in a cast is a RuntimeWarning
        shaken_model, feeds = perturbed(model, {"x": x}, 2.0 ** -4, seed=1)
    moved = feeds["x"]
    finite = np.isfinite(x)
    assert np.isfinite(moved[finite]).all()
    assert np.array_equal(moved[~finite], x[~finite], equal_nan=True)
    assert (np.abs(moved[finite].astype(np.float64) - x[finite]) <= 2.0 ** -4 * np.abs(x[finite])).all()
    assert not np.array_equal(moved[finite], x[finite])  # it did move them
    shaken_weight = numpy_helper.to_array(shaken_model.graph.initializer[0])
    assert np.isfinite(shaken_weight).all() and (shaken_weight <= largest).all()
