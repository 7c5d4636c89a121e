"""The whole-model judge: legitimate engine behaviour passes with the behaviour named, wrong conversions fail with the
culprit named, and the models people have are read (planted engines; the real MNN wheel where marked)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from chain import chain_model, conv_chain_model
from fusion.check import Code, check
from fusion.check.tolerance import EXACT, FLUSHED
from fusion.check.verdicts import STATUSES
from fusion.cli import main
from fusion.engines.planted_graph import PlantedGraphEngine, winograd_conv_2d
from fusion.errors import FusionInputError

REAL = Path(__file__).parent.parent.parent / "shared" / "real-models"


def broadcast_add_model(seed=3):
    """ConvTranspose -> Add of a ``[C]`` constant with W == C: ONNX broadcasts it along W, not along channels."""
    rng = np.random.default_rng(seed)
    channels = 8
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["up"], name="up", strides=[2, 2], pads=[1, 1, 1, 1],
                              output_padding=[1, 1]),
             helper.make_node("Add", ["up", "c"], ["y"], name="add_w")]
    constants = {"w": rng.standard_normal((4, channels, 3, 3)) * 0.3, "b": rng.standard_normal(channels),
                 "c": rng.standard_normal(channels)}
    graph = helper.make_graph(nodes, "broadcast", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 8, 8])],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _statuses(report):
    return [site.status for site in report.sites]


def test_a_correct_converter_passes_every_stage():
    for model in (chain_model(), conv_chain_model(), broadcast_add_model()):
        report = check(None, PlantedGraphEngine("none"), model=model)
        assert report.passed, [s.explanations for s in report.sites]
        assert report.whole_model.passed and report.first_wrong is None
        assert set(_statuses(report)) == {"pass"}
        assert all(stage.passed for stage in report.stages)


def test_flushed_subnormal_weights_pass_and_are_named():
    model = conv_chain_model(subnormal=True)
    report = check(None, PlantedGraphEngine("flush_subnormals"), model=model)
    assert report.passed, [s.explanations for s in report.sites]
    last = report.sites[-1]  # its first output channel has only subnormal weights and no bias: flushed to 0
    assert last.held == FLUSHED
    assert any("subnormals may be flushed to zero" in n for s in report.sites for n in s.notes)


def test_winograd_passes_where_the_direct_summation_bound_does_not():
    model = conv_chain_model(subnormal=False)
    report = check(None, PlantedGraphEngine("winograd"), model=model)
    assert report.passed, [s.explanations for s in report.sites]
    held = [site.held for site in report.sites]
    assert held[0].startswith("Winograd F(6x6, 3x3)") and held[1].startswith("Winograd F(6x6, 3x3)"), held
    assert held[2] == EXACT  # the 1x1 conv is not a Winograd layer
    assert all(site.output.bound_ratio_max <= 1 for site in report.sites)


def test_winograd_in_float32_exceeds_the_direct_bound_and_stays_in_its_own():
    """The planted Winograd is a real fast algorithm: beyond what any summation order can give, within the
    Winograd bound, on random layers."""
    from fusion import ops, winograd
    from fusion.bounds import site_bound

    rng = np.random.default_rng(7)
    beyond = 0
    for trial in range(6):
        c_in, c_out, side = rng.integers(2, 24), rng.integers(1, 24), rng.integers(3, 20)
        x = rng.standard_normal((1, c_in, side, side)).astype(np.float32)
        w = (rng.standard_normal((c_out, c_in, 3, 3)) * 0.3).astype(np.float32)
        y = winograd_conv_2d(x, w, None, [1, 1, 1, 1])
        exact = ops.conv(x.astype(np.float64), w.astype(np.float64), None, pads=[1, 1, 1, 1])
        error = np.abs(y - exact)
        beyond += bool((error > site_bound(x, w, None, None, transposed=False, pads=[1, 1, 1, 1])).any())
        t = winograd.transforms(6, 3, 1.0)
        term = winograd.magnitude(t, np.abs(x.astype(np.float64)), np.abs(w.astype(np.float64)), 1, (1, 1, 1, 1),
                                  exact.shape[2:])
        assert (error <= winograd.bound(t, term, np.zeros(c_out), int(c_in))).all()
    assert beyond >= 4


def test_a_broadcast_constant_folded_per_channel_fails_with_the_cause():
    report = check(None, PlantedGraphEngine("broadcast_as_channel"), model=broadcast_add_model())
    assert not report.passed and not report.whole_model.passed
    culprit = report.first_wrong
    assert (culprit.tensor, culprit.node, culprit.site) == ("y", "add_w", 0)
    assert any("has a constant of shape [8], which ONNX broadcasts along axis 3 of the 4-D conv output, not along "
               "its channels" in e for e in culprit.explanations), culprit.explanations
    assert report.sites[0].status == "fail" and Code.BROADCAST_AS_CHANNEL.value in report.sites[0].codes


def test_a_fold_wrong_only_inside_the_whole_model_names_the_culprit():
    report = check(None, PlantedGraphEngine("bias_in_context"), model=chain_model())
    assert not report.passed
    assert _statuses(report) == ["pass", "fail"]
    culprit = report.first_wrong
    assert culprit.site == 1 and culprit.node == "up2"
    assert "parameters: bias missing in the fused op (all zero)" in culprit.explanations
    assert culprit.explanations[-1].startswith("converted alone, the site computes right")
    assert Code.CONTEXT_ONLY.value in report.sites[1].codes
    # a site after the culprit that computes right on its wrong input is downstream, not blamed
    later = check(None, PlantedGraphEngine("bias_in_context"), model=conv_chain_model())
    assert _statuses(later) == ["pass", "fail", "downstream"] and later.first_wrong.site == 1


def test_the_json_report_has_the_whole_model_first_wrong_and_statuses(tmp_path):
    from fusion.report import to_json

    report = check(None, PlantedGraphEngine("broadcast_as_channel"), model=broadcast_add_model(), name="broadcast")
    document = json.loads(to_json([report], version="test"))
    (judged,) = document["models"]
    assert judged["whole_model"]["passed"] is False
    (output,) = judged["whole_model"]["outputs"]
    assert {"name", "abs_max", "diff_max", "passed"} <= set(output) and output["name"] == "y"
    assert judged["first_wrong"] == {"tensor": "y", "node": "add_w", "site": 0,
                                     "explanations": judged["first_wrong"]["explanations"]}
    assert all(site["status"] in STATUSES for site in judged["sites"])
    right = json.loads(to_json([check(None, PlantedGraphEngine("none"), model=chain_model())], version="test"))
    assert right["models"][0]["first_wrong"] is None


def _old_exporter_model(path):
    """Every initializer also listed among the graph inputs (IR 3, as PyTorch <= 1.3 wrote them), weights through
    Identity and Constant nodes, no node names, and a graph output without a type (the onnx checker rejects it)."""
    model = chain_model()
    weight = next(t for t in model.graph.initializer if t.name == "up1.w")
    model.graph.initializer.remove(weight)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["up1.w.const"], value=weight))
    model.graph.node.insert(1, helper.make_node("Identity", ["up1.w.const"], ["up1.w"]))
    for init in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    for node in model.graph.node:
        node.name = ""
    model.graph.output[0].ClearField("type")
    onnx.save(model, path)


def test_the_models_people_have_are_judged(tmp_path):
    path = tmp_path / "old.onnx"
    _old_exporter_model(path)
    before = path.read_bytes()
    report = check(path, PlantedGraphEngine("none"))
    assert report.passed, [s.explanations for s in report.sites]
    assert [s.label for s in report.sites] == ["ConvTranspose->up1 + BatchNormalization->bn1",
                                               "ConvTranspose->up2 + BatchNormalization->output"]
    notes = " ".join(report.notes)
    assert "the ONNX checker rejects the model" in notes and "onnxruntime runs it" in notes
    assert "initializer(s) are also listed among the graph inputs" in notes
    assert path.read_bytes() == before


def _dynamic_model():
    """A model whose dynamic input must be 1 x 3 x 32 x 32: it flattens into a Gemm of fixed size."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "g"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "dynamic", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                               ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
                               numpy_helper.from_array(rng.standard_normal((4 * 32 * 32, 10)).astype(np.float32),
                                                       "g")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_dynamic_inputs_take_input_shape_and_the_error_names_them(tmp_path, capsys):
    path = tmp_path / "dynamic.onnx"
    onnx.save(_dynamic_model(), path)
    with pytest.raises(FusionInputError) as error:
        check(path, PlantedGraphEngine("none"))
    message = str(error.value)
    assert "onnxruntime cannot run the model with inputs x[1, 3, 64, 64]" in message
    assert "dynamic input(s) x[N, 3, H, W]: give their sizes with --input-shape NAME:d0,d1,..." in message
    report = check(path, PlantedGraphEngine("none"), shapes={"x": (1, 3, 32, 32)})
    assert report.passed and report.input_shapes == {"x": (1, 3, 32, 32)}
    for bad, said in (("x:1,3,a", "--input-shape takes NAME:d0,d1,..."), ("z:1,3,32,32", "not inputs of the model"),
                      ("x:1,3,32", "gives x 3 dimensions")):
        assert main(["check", str(path), "--input-shape", bad]) == 2
        assert said in capsys.readouterr().err


def test_the_report_keeps_names_whole_on_narrow_terminals_and_in_logs(tmp_path):
    model = chain_model()
    for node in model.graph.node:
        node.name = f"decoder/stage_{node.name}/a_long_node_name_that_does_not_fit_in_forty_columns"
    path = tmp_path / "named.onnx"
    onnx.save(model, path)
    env = dict(os.environ, COLUMNS="40")
    result = subprocess.run([sys.executable, "-m", "fusion.cli", "check", str(path)], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode in (0, 1), result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    for node in model.graph.node:
        if node.op_type == "ConvTranspose":
            assert any(node.name in line for line in lines), result.stdout
    assert len(lines) == len(set(lines)), result.stdout
    assert lines[0].startswith(("PASS", "FAIL"))


@pytest.mark.mnn
def test_mnn_folds_a_broadcast_add_per_channel(tmp_path):
    """MNN 3.6.1 folds an Add of a [C] constant into the ConvTranspose bias though ONNX broadcasts it along W."""
    from fusion.engines.mnn import MnnEngine

    path = tmp_path / "broadcast.onnx"
    onnx.save(broadcast_add_model(), path)
    report = check(path, MnnEngine())
    assert not report.passed
    assert (report.first_wrong.tensor, report.first_wrong.node) == ("y", "add_w")
    assert any("broadcasts along axis 3 of the 4-D conv output, not along its channels; the converter folded it "
               "into ConvTranspose 'up' as one value per output channel" in e for e in report.first_wrong.explanations)
    assert report.whole_model.outputs[0].diff_max > 0.1 * report.whole_model.outputs[0].abs_max


@pytest.mark.mnn
@pytest.mark.skipif(not (REAL / "twinlitenet.onnx").is_file(), reason="needs ../shared/real-models")
def test_twinlitenet_as_mnn_converts_it_passes_with_the_legitimate_differences_named():
    from fusion.engines.mnn import MnnEngine

    report = check(REAL / "twinlitenet.onnx", MnnEngine())
    assert report.passed, [(s.label, s.explanations) for s in report.sites if s.status != "pass"]
    assert len(report.sites) == 58 and report.whole_model.passed
    held = {site.held for site in report.sites}
    assert FLUSHED in held and any(h and h.startswith("Winograd") for h in held), held


@pytest.mark.mnn
@pytest.mark.skipif(not (REAL / "ppocrv3_det.onnx").is_file(), reason="needs ../shared/real-models")
def test_the_fully_dynamic_ocr_model_is_judged_with_input_shape():
    from fusion.engines.mnn import MnnEngine

    report = check(REAL / "ppocrv3_det.onnx", MnnEngine(), shapes={"x": (1, 3, 96, 128)})
    assert report.passed, [(s.label, s.explanations) for s in report.sites if s.status != "pass"]
    assert report.input_shapes == {"x": (1, 3, 96, 128)} and len(report.sites) == 74
    # the Constant-fed ConvTranspose -> Add -> BatchNormalization chain is one site, folded whole
    assert any(site.tail == "add+bn" and site.status == "pass" for site in report.sites)
