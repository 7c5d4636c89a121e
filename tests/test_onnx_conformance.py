"""Every ONNX node test (and pytorch data folder) for Conv, ConvTranspose and inference BatchNormalization
passes through both the Numba ops and the float64 reference."""

import glob
import os
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import fusion
from fusion import reference
from fusion.graph.nodes import batch_norm_keywords, conv_keywords

OPS = {"Conv", "ConvTranspose", "BatchNormalization"}


def _node_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases
        cases = collect_testcases(None)
    for case in cases:
        nodes = case.model.graph.node
        if len(nodes) == 1 and nodes[0].op_type in OPS and "training" not in case.name:
            for inputs, outputs in case.data_sets:
                yield pytest.param(nodes[0], inputs, outputs[0], id=case.name)


def _data_folder_cases():
    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
    pattern = ("ConvTranspose", "Conv", "BatchNorm", "operator_conv")
    for folder in sorted(glob.glob(os.path.join(root, "pytorch-*", "test_*"))):
        if not any(p in os.path.basename(folder) for p in pattern):
            continue
        model = onnx.load(os.path.join(folder, "model.onnx"))
        nodes = [n for n in model.graph.node if n.op_type in OPS]
        if len(nodes) != 1 or len(model.graph.node) != 1:
            continue
        initial = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for data in sorted(glob.glob(os.path.join(folder, "test_data_set_*"))):
            fed = [numpy_helper.to_array(onnx.load_tensor(p)) for p in sorted(glob.glob(os.path.join(data, "input_*.pb")))]
            expected = numpy_helper.to_array(onnx.load_tensor(os.path.join(data, "output_0.pb")))
            names = [i.name for i in model.graph.input if i.name not in initial]
            values = dict(initial, **dict(zip(names, fed)))
            yield pytest.param(nodes[0], [values[n] for n in nodes[0].input if n], expected,
                               id=os.path.basename(folder))


def _call(module, node, inputs):
    if node.op_type == "BatchNormalization":
        return module.batch_norm(*inputs, **batch_norm_keywords(node))
    function = module.conv_transpose if node.op_type == "ConvTranspose" else module.conv
    return function(*inputs, **conv_keywords(node))


CASES = list(_node_cases()) + list(_data_folder_cases())


def _cases_by_name() -> set[str]:
    """The same cases found another way, by their names: what the structural filters above must all keep."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases
        cases = collect_testcases(None)
    names = {c.name for c in cases if c.name.startswith(("test_conv", "test_basic_conv", "test_batchnorm"))
             and not c.name.startswith("test_convinteger") and "training" not in c.name}
    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
    names |= {os.path.basename(f) for f in glob.glob(os.path.join(root, "pytorch-*", "test_*"))
              if any(p in os.path.basename(f) for p in ("ConvTranspose", "Conv", "BatchNorm", "operator_conv"))}
    return names


def test_cases_were_found():
    names = {c.id for c in CASES}
    assert names == _cases_by_name()  # every case of the installed onnx, none lost to a filter (54 in onnx 1.23)
    for expected in ("test_convtranspose_group_2", "test_convtranspose_3d", "test_convtranspose_output_shape",
                     "test_convtranspose_autopad_same", "test_conv_with_autopad_same", "test_batchnorm_epsilon",
                     "test_ConvTranspose2d", "test_Conv3d_groups", "test_BatchNorm3d_eval"):
        assert expected in names


@pytest.mark.parametrize("module", [fusion, reference], ids=["numba", "reference"])
@pytest.mark.parametrize("node, inputs, expected", CASES)
def test_onnx_case(module, node, inputs, expected):
    actual = _call(module, node, inputs)
    assert actual.shape == expected.shape
    # ONNX's expected outputs were computed in float32 (or float64 for float64 inputs): compare with a
    # tolerance of a few float32 ulps of the output magnitude.
    tolerance = 1e-5 * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=tolerance)
