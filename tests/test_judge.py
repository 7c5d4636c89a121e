"""Judging through the engine protocol with engines that need no MNN: planted ones and onnxruntime's optimizer."""

import numpy as np
import pytest

import fusion
from fusion.check import check, check_sites
from fusion.cli import main
from fusion.graph.build import build
from fusion.graph.demo import demo_specs
from fusion.graph.sites import find_sites


def test_non_finite_engine_parameters_are_a_finding_not_an_error():
    """An engine may hand back NaN/Inf parameters (MNN 3.6.1 does, for some sweep configurations)."""
    from fusion.check import judge_params, expectation
    from fusion.engines.base import EngineParams, KeptOp

    spec = demo_specs()[0]
    (site,) = find_sites(build(spec))
    x = np.random.default_rng(0).standard_normal(spec.input_shape).astype(np.float32)
    ref = expectation(site, x)
    channels = ref.b_folded.shape[0]
    bias = np.full(channels, np.nan, np.float32)
    params = EngineParams(w=site.w, b=bias, kept=[KeptOp("Scale", "s", np.ones(channels), np.zeros(channels))])
    check_result, explanations, notes, codes = judge_params(site, ref, params)
    assert not check_result.passed
    assert explanations[0].startswith("NaN/Inf in the fused parameters")


def test_onnxruntime_is_judged_through_the_same_adapter_protocol():
    """The second engine: onnxruntime's own optimizer (ORT_ENABLE_ALL) folds BN; Mul/Add it keeps are composed."""
    from fusion.engines.onnx_rewriters import OnnxRewriteEngine

    engine = OnnxRewriteEngine("onnxruntime-all")
    for spec in demo_specs():
        (site,) = check(None, engine, model=build(spec), name=spec.name).sites
        assert site.status == "pass", (spec.name, site.explanations)
        assert site.output.passed


def test_an_unrepeatable_output_is_a_finding(capsys):
    """An engine whose output changes from one conversion and run to the next on the same input (MNN 3.6.1 now and
    then converts the 3-D Mul+Add demo site into a model wrong in a channel or two) fails with that said, judged by
    its worst run; a second run is what finds it; a difference within the bound is a note; a site that repeats
    itself passes. Whole-model mode says it of the model, cut-site mode of the site."""
    from fusion.engines.base import EngineFailure
    from fusion.engines.planted import PlantedEngine

    specs = {spec.name: spec for spec in demo_specs()}
    model = build(specs["deconv3d_g2_mul_add_nobias"])
    whole = check(None, PlantedEngine("unrepeatable_3d"), model=model, name="3-D")
    assert not whole.passed
    assert whole.explanations[0].startswith("the engine's tensor 'y' is not repeatable: run 2, of a conversion of its "
                                            "own, on the same input differs from run 1 in ")
    assert "in output channels [1]; run 1 passes, run 2 fails" in whole.explanations[0]
    assert whole.sites[0].status == "fail"  # judged by the worse run
    (site,) = check_sites(None, PlantedEngine("unrepeatable_3d"), model=model, name="3-D").sites
    assert site.status == "fail" and not site.output.passed
    assert site.explanations[0].startswith("the engine's output is not repeatable: run 2, of a conversion of its "
                                           "own, on the same input differs from run 1 in ")
    assert "in output channels [1]; run 1 passes, run 2 fails" in site.explanations[0]
    assert check(None, PlantedEngine("unrepeatable_3d"), model=model, name="3-D", runs=1).passed
    (once,) = check_sites(None, PlantedEngine("unrepeatable_3d"), model=model, name="3-D", runs=1).sites
    assert once.status == "pass"
    flat = check(None, PlantedEngine("unrepeatable_3d"), model=build(specs["deconv2d_g4_bn"]), name="2-D")
    assert flat.passed and not flat.notes

    class LastBitEngine(PlantedEngine):
        def run(self, prepared, feeds, output):
            y = super().run(prepared, feeds, output)
            return np.nextafter(y, np.float32(np.inf)) if prepared.conversion > 1 else y

    class SecondCrashEngine(PlantedEngine):
        def prepare(self, onnx_path, workdir):
            prepared = super().prepare(onnx_path, workdir)
            if prepared.conversion > 1:
                raise EngineFailure("planted", "converting", "crash", "aborted", "SIGABRT")
            return prepared

    (crashed,) = check_sites(None, SecondCrashEngine("none"), model=model, name="3-D").sites
    assert crashed.status == "fail" and crashed.output.passed
    assert crashed.explanations[0].startswith("the engine is not repeatable: run 2 failed where run 1 did not: ")
    crashed_whole = check(None, SecondCrashEngine("none"), model=model, name="3-D")
    assert not crashed_whole.passed
    assert crashed_whole.explanations[0].startswith("the engine is not repeatable: run 2 failed where run 1 did not")
    (close,) = check_sites(None, LastBitEngine("none"), model=model, name="3-D").sites
    assert close.status == "pass"
    assert close.notes[-1].endswith("run 1 passes, run 2 passes")
    close_whole = check(None, LastBitEngine("none"), model=model, name="3-D")
    assert close_whole.passed and "run 1 passes, run 2 passes" in close_whole.notes[-1]
    with pytest.raises(fusion.FusionInputError, match="runs must be at least 1"):
        check(None, PlantedEngine("none"), model=model, runs=0)
    assert main(["check", "--runs", "0"]) == 2
    assert "runs must be at least 1" in capsys.readouterr().err
