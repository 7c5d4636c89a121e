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


# -- the served children --------------------------------------------------------------------------------------

TOY_CHILD = '''
import os, sys, time
from one_line import main_or_serve

def step(argv):
    if argv[0] == "crash":
        os.abort()
    if argv[0] == "hang":
        time.sleep(60)
    if argv[0] == "fail":
        raise ValueError("asked to fail")
    print("noise the engine prints")
    with open(argv[1], "a") as handle:
        handle.write(str(os.getpid()) + "\\n")

sys.exit(main_or_serve(step))
'''


@pytest.fixture()
def toy_server(tmp_path, monkeypatch):
    import shutil

    from fusion.engines import isolate

    folder = tmp_path / "children"
    folder.mkdir()
    shutil.copy(isolate.CHILD_SCRIPTS / "one_line.py", folder / "one_line.py")
    (folder / "toy_child.py").write_text(TOY_CHILD)
    monkeypatch.setattr(isolate, "CHILD_SCRIPTS", folder)
    monkeypatch.setattr(isolate, "SERVED", isolate.SERVED | {"toy_child.py"})
    monkeypatch.setattr(isolate, "_servers", {})
    yield isolate, tmp_path / "pids.txt"
    for server in isolate._servers.values():
        server.close()


def test_a_served_child_is_reused_and_a_crash_a_hang_or_an_error_is_a_finding(toy_server):
    from fusion.engines.base import EngineFailure

    isolate, pids = toy_server

    def step(*args, timeout=20.0):
        return isolate.run_step(isolate.python_child("toy_child.py") + list(args), engine="toy", stage="testing",
                                timeout=timeout)

    step("ok", str(pids))
    step("ok", str(pids))
    assert len(set(pids.read_text().split())) == 1  # one process served both
    with pytest.raises(EngineFailure) as failed:
        step("fail")
    assert failed.value.kind == "error" and "asked to fail" in failed.value.detail
    step("ok", str(pids))
    assert len(set(pids.read_text().split())) == 1  # an error leaves the server serving
    with pytest.raises(EngineFailure) as crashed:
        step("crash")
    assert crashed.value.kind == "crash" and crashed.value.signal == "SIGABRT"
    step("ok", str(pids))
    assert len(set(pids.read_text().split())) == 2  # a new server after the crash
    with pytest.raises(EngineFailure) as hung:
        step("hang", timeout=1.0)
    assert hung.value.kind == "timeout"
    step("ok", str(pids))
    assert len(set(pids.read_text().split())) == 3
    # one-shot mode is unchanged: the same script run with arguments does one step and exits
    done = subprocess.run(isolate.python_child("toy_child.py") + ["fail"], capture_output=True, text=True,
                          cwd=isolate.CHILD_SCRIPTS)
    assert done.returncode == 5 and "ValueError: asked to fail" in done.stderr


# -- pnnx + ncnn ------------------------------------------------------------------------------------------------

needs_pnnx = pytest.mark.skipif(installed(ENGINES["pnnx"]) is None, reason="pnnx and ncnn are not installed")


@needs_pnnx
def test_pnnx_folds_the_chain_right_judged_by_its_outputs_and_its_parameters():
    report = check(None, make("pnnx"), model=chain_model(), name="chain")
    assert report.passed, [(s.label, s.explanations) for s in report.sites]
    # ncnn renames every inner tensor: the sites are judged by their parameters, the model by its outputs
    assert all(s.params is not None and s.params.passed for s in report.sites)
    assert all(any("ncnn renames" in n for n in s.notes) for s in report.sites if s.status == "not_exposed")
    broadcast = check(None, make("pnnx"), model=broadcast_add_model(), name="broadcast")
    assert broadcast.passed, [(s.status, s.explanations) for s in broadcast.sites]


@needs_pnnx
def test_a_wrong_ncnn_weight_fails_the_site_that_holds_it(tmp_path, monkeypatch):
    """The reader finds the layer of a site by its structure and weights; a fold along the wrong axis in the .bin
    fails the parameters and the output (a false pass here would hide MNN's grouped-ConvTranspose defect)."""
    import numpy as np

    from fusion.graph.build import SiteSpec, build

    spec = SiteSpec(op="ConvTranspose", input_shape=(1, 8, 5, 5), c_out=12, group=2, kernel_shape=(3, 3),
                    attributes={"strides": [2, 2]}, tail="bn", seed=3)
    engine = make("pnnx")
    real_prepare = engine.prepare

    def prepare_then_damage(onnx_path, workdir):
        converted = real_prepare(onnx_path, workdir)
        data = bytearray(converted.weights.read_bytes())
        weights = np.frombuffer(bytes(data[4:4 + 4 * 8 * 6 * 9]), np.float32).reshape(2, 6, 4, 9)
        # scaled along the input channels of each group, not the output channels
        damaged = (weights * np.linspace(0.5, 1.5, 4).reshape(1, 1, 4, 1)).astype(np.float32)
        data[4:4 + damaged.nbytes] = damaged.tobytes()
        converted.weights.write_bytes(bytes(data))
        return converted

    monkeypatch.setattr(engine, "prepare", prepare_then_damage)
    report = check(None, engine, model=build(spec), name="damaged")
    assert not report.passed
    site = report.sites[0]
    assert site.status == "fail" and site.params is not None and not site.params.passed
    assert "wrong_output" in " ".join(site.codes) or site.output is not None and not site.output.passed


def test_the_ncnn_reader_reads_float16_weights_and_stops_at_a_layer_it_cannot_place(tmp_path):
    import numpy as np

    from fusion.engines.ncnn_file import FLOAT16_TAG, read_model

    param = tmp_path / "m.param"
    param.write_text("7767517\n4 4\nInput in0 0 1 in0\n"
                     "Convolution conv 1 1 in0 c 0=2 1=1 11=1 5=1 6=6 -23310=2,1.5,2.0 6=6\n"
                     "Reshape r 1 1 c d 6=\"1, 2\" \nLSTM lstm 1 1 d out0 0=4\n")
    weight = np.arange(6, dtype=np.float16)
    data = FLOAT16_TAG.to_bytes(4, "little") + weight.tobytes() + np.array([7, 8], "<f4").tobytes() + b"\0" * 16
    (tmp_path / "m.bin").write_bytes(data)
    model = read_model(param, tmp_path / "m.bin")
    conv = model.layers[1]
    assert conv.float16 and conv.arrays["weight"].tolist() == list(range(6))
    assert conv.arrays["bias"].tolist() == [7, 8] and conv.params[10] == [1.5, 2.0]
    assert model.layers[2].params[6] == "1, 2"
    assert model.readable == 3 and model.stopped_by.startswith("LSTM")
    with pytest.raises(ValueError, match="line 3"):
        param.write_text("7767517\n1 1\nInput\n")
        read_model(param, tmp_path / "m.bin")


# -- false alarms the campaigns found (each was a FAIL on a model the engine computes right) ------------------------

CAMPAIGN_PASSES = {
    # OpenVINO keeps a scalar Add as a one-value bias after the ConvTranspose: it broadcasts to every channel
    "scalar_add_bias": {"op": "ConvTranspose", "input_shape": [1, 1, 1, 1], "c_out": 2, "group": 1,
                        "kernel_shape": [1, 1], "attributes": {}, "bias": False, "tail": "add", "seed": 496131702,
                        "constant_shape": "scalar"},
    # OpenVINO gives the conv's and the Mul's names to other values of its fused chain; the outputs are right
    "renamed_chain": {"op": "Conv", "input_shape": [1, 2, 1], "c_out": 2, "group": 2, "kernel_shape": [1],
                      "attributes": {}, "bias": False, "tail": "mul_add", "seed": 606788250, "bn_epsilon": None,
                      "params_via": "constant"},
    # onnxruntime and OpenVINO size a SAME_* ConvTranspose whose kernel is below its stride as if unpadded (the
    # ONNX definition and onnx.reference give input * stride): the rewriters' models are judged against onnxruntime
    "same_lower_small_kernel": {"op": "ConvTranspose", "input_shape": [1, 1, 2], "c_out": 1, "group": 1,
                                "kernel_shape": [1], "attributes": {"strides": [3], "auto_pad": "SAME_LOWER"},
                                "bias": False, "tail": "bn", "seed": 7},
    "renamed_chain_identity": {"op": "Conv", "input_shape": [1, 2, 1, 1], "c_out": 2, "group": 2,
                               "kernel_shape": [1, 1], "attributes": {"pads": [1, 2, 1, 0]}, "bias": False,
                               "tail": "mul_add", "seed": 1642410022, "bn_epsilon": 0.001, "params_via": "identity"},
}


@pytest.mark.parametrize("case", sorted(CAMPAIGN_PASSES))
@pytest.mark.parametrize("name", ["openvino", "onnxruntime", "onnxslim", "onnxscript"])
def test_models_the_engines_compute_right_pass(name, case):
    from fusion.graph.build import SiteSpec, build

    report = check(None, make(name), model=build(SiteSpec(**CAMPAIGN_PASSES[case])), name=case)
    assert report.passed, (report.explanations, report.first_wrong, [(s.status, s.explanations) for s in report.sites])
    if case == "same_lower_small_kernel":
        assert any("the converted model follows onnxruntime" in n for n in report.sites[0].notes)
