"""fusion check against the real MNN wheel (run in child processes)."""

import hashlib
import json
import os
import stat
import subprocess
import sys

import numpy as np
import onnx
import pytest

from fusion import known_wrong_folds
from fusion.check import BIAS_MISSING, LEGACY, check
from fusion.cli import main
from fusion.engines.mnn import MnnEngine
from fusion.graph.build import build
from fusion.graph.demo import demo_specs
from fusion.graph.sites import find_sites
from chain import chain_model

pytestmark = pytest.mark.mnn

MNN_VERSION = "3.6.1"
# What MNN 3.6.1 does with each demo model converted whole, as observed: the verdict and a phrase of what is said.
OBSERVED = {
    "deconv2d_g4_bn": ("pass", None),
    "deconv2d_g4_mul_add": ("pass", "not folded: the converter kept BinaryOp MUL"),
    "deconv2d_g1_bn": ("pass", None),
    "deconv2d_g4_bn_default_epsilon": ("fail", "BatchNormalization folded with epsilon=0 instead of 1e-05 (the ONNX "
                                               "default: the node has no epsilon attribute)"),
    "deconv1d_g2_bn": ("pass", "not folded: the converter kept Scale"),
    "deconv3d_g4_bn": ("fail", "the whole model did not convert: MNN crashed (SIG"),
    "deconv3d_g1_bn": ("fail", "the converted model is empty"),
    "deconv3d_g2_mul_add_nobias": ("pass", "decomposed the 3-D op into 3 per-depth 2-D ops"),
    "deconv2d_depthwise_bn": ("pass", "not folded: the converter kept Scale"),
    "deconv2d_g4_12to8_nobias_bn": ("pass", None),
    "deconv2d_g4_bare": ("pass", None),
    "conv2d_g2_bn": ("pass", None),
    "conv2d_depthwise_bn": ("pass", None),
    "conv3d_g2_bn": ("fail", "the converted model is empty"),
}
# Models MNN 3.6.1 now and then converts into a wrong model, output channel 4 wrong (seen three times on 2026-12-01,
# each time in a fresh clone and on the first conversion; 13 conversions in a row in the development environment
# were right; each conversion gives a different file): judged "fail, not repeatable" when one of the two is hit. On
# 2026-12-08, in four runs of .ci/run in fresh clones, both conversions were hit alike: MNN's ConvTranspose wrong in
# channels 4 and 5 on its own inputs (DiffMax 0.09 of 2.04, its weights read back right; the site converted alone
# right), while checks of the same model in a development environment were right 20 times in a row: then the verdict
# is a plain fail that names those channels.
UNREPEATABLE = {"deconv3d_g2_mul_add_nobias"}
UNREPEATABLE_CHANNELS = {"output wrong in channel(s) [4] of 8", "output wrong in channel(s) [5] of 8",
                         "output wrong in channel(s) [4, 5] of 8"}


def _words(report):
    return report.explanations + report.notes + [w for s in report.sites for w in s.explanations + s.notes]


@pytest.fixture(scope="module")
def engine():
    return MnnEngine(timeout=120)


def _digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_demo_verdicts_match_what_mnn_does(engine):
    if engine.version() != f"MNN {MNN_VERSION}":
        pytest.skip(f"verdicts were observed on MNN {MNN_VERSION}; installed: {engine.version()}")
    specs = demo_specs()
    assert {s.name for s in specs} == set(OBSERVED)
    for spec in specs:
        report = check(None, engine, model=build(spec), name=spec.name)
        (site,) = report.sites
        status, phrase = OBSERVED[spec.name]
        words = _words(report)
        if spec.name in UNREPEATABLE and not report.passed:
            assert (any("is not repeatable" in e for e in report.explanations)
                    or UNREPEATABLE_CHANNELS & set(words)), (spec.name, words)
            continue
        assert ("pass" if report.passed else "fail") == status, (spec.name, words)
        if phrase:
            assert any(phrase in w for w in words), (spec.name, words)
        if status == "pass":
            assert site.status == "pass" and site.output.passed and site.params.passed and not site.explanations
            assert report.whole_model.passed and report.first_wrong is None


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chain")
    path = folder / "decoder.onnx"
    onnx.save(chain_model(), path)
    return path


def test_whole_model_conversion_passes_and_relu_fusion_is_handled(engine, chain, tmp_path):
    converted = tmp_path / "decoder.mnn"
    engine.convert(chain, converted)
    report = check(chain, engine, converted=converted)
    assert [s.status for s in report.sites] == ["pass", "pass"], [s.explanations for s in report.sites]
    assert any("fused the following Relu" in n for n in report.sites[0].notes)


def test_default_epsilon_dropped_by_mnn_is_found_and_explained(engine, tmp_path):
    if engine.version() != f"MNN {MNN_VERSION}":
        pytest.skip(f"observed on MNN {MNN_VERSION}")
    path = tmp_path / "default_epsilon.onnx"
    onnx.save(chain_model(epsilon=None), path)
    converted = tmp_path / "default_epsilon.mnn"
    engine.convert(path, converted)
    report = check(path, engine, converted=converted)
    phrase = "BatchNormalization folded with epsilon=0 instead of 1e-05"
    for site in report.sites:
        assert site.status == "fail"
        assert any(e.startswith(phrase) for e in site.explanations)
        assert any(e.startswith(f"parameters: {phrase}") for e in site.explanations)


def test_legacy_per_group_fold_is_caught_at_the_right_site(engine, chain, tmp_path):
    sites = find_sites(onnx.load(chain))
    first = sites[0]
    w_legacy, _ = known_wrong_folds.fold_mnn_legacy(first.w, first.b, first.affine, group=first.group)
    broken = tmp_path / "legacy.mnn"
    engine.rewrite(chain, broken, {first.conv_output: (w_legacy, None)}, tmp_path)
    before = _digest(broken)
    report = check(chain, engine, converted=broken)
    bad, good = report.sites
    # the second site computes right on the wrong input the first gives it
    assert bad.status == "fail" and good.status == "downstream", (bad.explanations, good.explanations)
    assert report.first_wrong.site == 0 and report.first_wrong.node == "up1"
    assert not report.whole_model.passed
    assert LEGACY in bad.explanations  # the output, judged after the fused Relu, also fails
    assert f"parameters: {LEGACY}" in bad.explanations
    assert not bad.output.passed and not bad.params.passed
    assert _digest(broken) == before


def test_zeroed_bias_is_explained_as_bias_missing(engine, chain, tmp_path):
    second = find_sites(onnx.load(chain))[1]
    broken = tmp_path / "nobias.mnn"
    engine.rewrite(chain, broken, {second.conv_output: (None, np.zeros(8, np.float32))}, tmp_path)
    report = check(chain, engine, converted=broken)
    assert report.sites[0].status == "pass"
    site = report.sites[1]
    assert site.status == "fail"
    assert BIAS_MISSING in site.explanations
    assert "parameters: bias missing in the fused op (all zero)" in site.explanations


def test_a_crashing_converter_is_a_finding_not_a_dead_tool(tmp_path, capsys):
    converter = tmp_path / "MNNConvert"
    converter.write_text("#!/bin/sh\nkill -ABRT $$\n")
    converter.chmod(converter.stat().st_mode | stat.S_IEXEC)
    model = tmp_path / "m.onnx"
    onnx.save(build(demo_specs()[0]), model)
    report_path = tmp_path / "report.json"
    assert main(["check", str(model), "--converter", str(converter), "--json", str(report_path)]) == 1
    (judged,) = json.loads(report_path.read_text())["models"]
    assert judged["failures"][0]["signal"] == "SIGABRT"
    assert "the whole model did not convert: MNN crashed (SIGABRT) while converting" in judged["explanations"]
    assert [site["status"] for site in judged["sites"]] == ["not_exposed"]
    assert main(["check", str(model), "--converter", str(converter), "--sites", "--json", str(report_path)]) == 1
    (site,) = json.loads(report_path.read_text())["models"][0]["sites"]
    assert site["status"] == "fail" and site["failures"][0]["signal"] == "SIGABRT"


def test_a_hanging_converter_times_out_as_a_finding(tmp_path):
    converter = tmp_path / "MNNConvert"
    converter.write_text("#!/bin/sh\nsleep 30\n")
    converter.chmod(converter.stat().st_mode | stat.S_IEXEC)
    model = tmp_path / "m.onnx"
    onnx.save(build(demo_specs()[0]), model)
    report = check(model, MnnEngine(str(converter), timeout=1.0))
    assert report.failures[0]["kind"] == "timeout" and not report.passed
    assert "MNN hung while converting" in report.explanations[0]


def _dynamic_weight_model(path):
    model = chain_model()
    weight = next(t for t in model.graph.initializer if t.name == "up2.w")
    model.graph.initializer.remove(weight)
    model.graph.input.append(onnx.helper.make_tensor_value_info("up2.w", onnx.TensorProto.FLOAT, [16, 2, 3, 3]))
    onnx.save(model, path)


def test_a_conv_with_a_weight_computed_at_run_time_is_skipped_and_the_rest_judged(tmp_path, engine):
    path = tmp_path / "dynamic.onnx"
    _dynamic_weight_model(path)
    report = check(path, engine)  # the weight is an input the user feeds: it gets random values like any input
    assert len(report.sites) == 1 and report.sites[0].label == "up1 + bn1"
    assert any(n.startswith("up2: not a fusion site (weight up2.w is not a constant") for n in report.notes)


@pytest.mark.parametrize("case, reason", [
    ("not_onnx", "is not an ONNX model"),
    ("missing", "no such file"),
    ("truncated_mnn", "cannot read converted model"),
])
def test_bad_input_exits_2_with_one_line_and_leaves_files_alone(case, reason, tmp_path, chain, engine, capsys):
    args = ["check"]
    files = []
    if case == "not_onnx":
        path = tmp_path / "model.onnx"
        path.write_bytes(os.urandom(2048))
        args.append(str(path))
        files.append(path)
    elif case == "missing":
        args.append(str(tmp_path / "absent.onnx"))
    else:
        converted = tmp_path / "decoder.mnn"
        engine.convert(chain, converted)
        converted.write_bytes(converted.read_bytes()[: converted.stat().st_size // 3])
        args += [str(chain), "--mnn", str(converted)]
        files += [converted, chain]
    before = {p: _digest(p) for p in files}
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("fusion: error:") and reason in error and "\n" not in error
    assert {p: _digest(p) for p in files} == before


NO_NETWORK = """
import socket, sys
def refuse(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.sendto", "socket.bind"):
        open(__import__("os").environ["FUSION_NET_LOG"], "a").write(f"{event} {args}\\n")
        raise OSError("network access during a check")
sys.addaudithook(refuse)
"""


def test_check_makes_no_network_access(tmp_path):
    """Every Python process of a check (the tool and its MNN children) runs with an audit hook that logs and refuses
    any socket connect, bind, send or name lookup; the log must stay empty."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(NO_NETWORK)
    log = tmp_path / "network.log"
    env = dict(os.environ, PYTHONPATH=f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", FUSION_NET_LOG=str(log))
    model = tmp_path / "m.onnx"
    onnx.save(build(demo_specs()[1]), model)
    result = subprocess.run([sys.executable, "-m", "fusion.cli", "check", str(model)], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not log.exists(), log.read_text()
    # and the hook really is active in the children: a child that tries to connect is logged
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 9))"],
                           env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and log.exists()


def test_mnn_tools_telemetry_module_is_never_imported(tmp_path):
    code = ("import sys, onnx; from fusion.check import check; from fusion.engines.mnn import MnnEngine; "
            "from fusion.graph.build import build; from fusion.graph.demo import demo_specs; "
            f"onnx.save(build(demo_specs()[0]), r'{tmp_path / 'm.onnx'}'); "
            f"check(r'{tmp_path / 'm.onnx'}', MnnEngine()); "
            "print(sorted(m for m in sys.modules if m.startswith('MNN')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"  # MNN itself runs only in child processes


def test_unmappable_parameters_with_a_right_output_are_a_note(tmp_path):
    """MNN 3.6.1 rewrites some grouped Convs as per-slice ConvolutionDepthwise ops plus a sum: right output, no op
    to read back. That is not a failure of the converter."""
    from fusion.graph.build import SiteSpec

    spec = SiteSpec("Conv", (1, 8, 1, 1), 4, 4, (1, 1), {}, False, "none", 3, "grouped_conv_as_depthwise_sum")
    path = tmp_path / "m.onnx"
    onnx.save(build(spec), path)
    (site,) = check(path, MnnEngine()).sites
    assert site.status == "pass", site.explanations
    assert any(n.startswith("fused parameters not judged: no conv op named after") for n in site.notes)
