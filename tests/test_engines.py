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
