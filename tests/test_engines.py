"""Every engine behind one protocol: the ONNX-to-ONNX optimizers judged on the whole model they write, the registry
and its errors."""

import subprocess
import sys

import pytest

from chain import chain_model
from fusion.check import check
from fusion.cli import main
from fusion.engines.registry import ENGINES, EngineEntry, installed, make
from fusion.errors import FusionInputError
from test_whole import broadcast_add_model


@pytest.mark.parametrize("name", ["onnxruntime", "onnxruntime-basic", "onnxscript", "onnxslim", "openvino"])
def test_each_optimizer_folds_the_chain_right_and_leaves_a_broadcast_add_alone(name):
    engine = make(name)
    report = check(None, engine, model=chain_model(), name="chain")
    assert report.passed, [(s.label, s.explanations) for s in report.sites]
    assert [s.status for s in report.sites] == ["pass", "pass"]
    assert all(s.params is not None and s.params.passed for s in report.sites)
    broadcast = check(None, engine, model=broadcast_add_model(), name="broadcast")
    # a right result with the conv merged into what follows: the parameters that cannot be read are a note
    assert broadcast.passed, [(s.status, s.explanations) for s in broadcast.sites]
    assert broadcast.whole_model.outputs[0].diff_max <= 1e-6


def test_the_registry_names_what_is_missing_and_what_is_unknown(monkeypatch, capsys):
    with pytest.raises(FusionInputError, match="unknown engine 'tvm'"):
        make("tvm")
    monkeypatch.setitem(ENGINES, "absent", EngineEntry("absent", "no-such-distribution-xyz", "1.0", "nothing"))
    assert installed(ENGINES["absent"]) is None
    with pytest.raises(FusionInputError, match="pip install no-such-distribution-xyz==1.0"):
        make("absent")
    assert main(["check", "--engine", "absent"]) == 2
    assert "pip install no-such-distribution-xyz==1.0" in capsys.readouterr().err
    assert main(["check", "--engine", "onnxscript", "--converter", "/bin/true"]) == 2
    assert "--converter is MNN's" in capsys.readouterr().err


def test_fusion_engines_lists_every_engine_with_its_version():
    result = subprocess.run([sys.executable, "-m", "fusion.cli", "engines"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == list(ENGINES)
    for line, entry in zip(lines, ENGINES.values()):
        assert f"{entry.distribution} {installed(entry)}" in line or "not installed: pip install" in line


def _subnormal_channel_model():
    """A Conv whose first output channel has zero weights and a subnormal bias: its exact output is subnormal, and an
    engine that flushes denormals writes 0 there (TwinLiteNet's first layer, under OpenVINO's CPU plugin)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w = (rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    w[1], b[1] = 0, 9.2e-40
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["output"], name="relu")]
    graph = helper.make_graph(nodes, "subnormal", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                 [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_a_flushed_subnormal_output_is_legitimate_on_every_engine():
    from fusion.check.tolerance import FLUSHED

    for name in ("openvino", "onnxruntime", "mnn"):
        if installed(ENGINES[name]) is None:
            continue
        report = check(None, make(name), model=_subnormal_channel_model(), name="subnormal")
        assert report.passed, (name, [(s.status, s.explanations) for s in report.sites])
        assert report.sites[0].held in ("exact", FLUSHED)
