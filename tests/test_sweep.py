"""fusion sweep: planted defects are found, shrunk and grouped; correct configurations are never reported."""

import json

import pytest

from fusion import sweep
from fusion.check import LEGACY, BIAS_MISSING
from fusion.engines.planted import PlantedEngine
from fusion.graph.build import SiteSpec


def test_configurations_are_deterministic_valid_and_cover_the_space():
    specs = [sweep.random_spec(3, i) for i in range(300)]
    assert specs[17] == sweep.random_spec(3, 17)
    for spec in specs:
        spec.geometry()  # never raises: invalid draws are redrawn
    assert {len(s.kernel_shape) for s in specs} == {1, 2, 3}
    assert {s.tail for s in specs} == set(sweep.TAILS)
    assert {s.op for s in specs} == {"Conv", "ConvTranspose"}
    kinds = {("depthwise" if s.input_shape[1] == s.group == s.c_out else "grouped") for s in specs if s.group > 1}
    assert kinds == {"depthwise", "grouped"}
    assert any(s.input_shape[1] != s.c_out for s in specs) and any(not s.bias for s in specs)
    for name in ("output_padding", "output_shape", "auto_pad", "pads"):
        assert any(name in s.attributes for s in specs), name
    assert any(s.input_shape[0] > 1 for s in specs)


def test_sweep_against_a_correct_engine_reports_nothing(tmp_path):
    report = sweep.run(tmp_path, PlantedEngine("none"), budget=60, seed=1, workers=1)
    assert report["failed"] == 0 and report["groups"] == []


def test_planted_legacy_fold_is_found_shrunk_and_grouped(tmp_path):
    report = sweep.run(tmp_path, PlantedEngine("legacy_fold"), budget=80, seed=2, dims=(1, 2), tails=("bn", "none"),
                       workers=1, engine_name="mnn")
    assert report["failed"] > 0
    for group in report["groups"]:
        assert group["command"].startswith("fusion check --sites ") and group["command"].endswith(" --engine mnn")
        assert any(LEGACY in e for e in group["explanations"]), group["explanations"]
        assert group["op"] == "ConvTranspose" and group["tails"] == ["bn"]
        minimal = SiteSpec.from_dict(group["minimal"])
        # the defect needs a grouped ConvTranspose with C_in/group > 1: the shrinker keeps exactly that
        assert minimal.group == 2 and minimal.input_shape[1] // minimal.group == 2
        assert minimal.input_shape[0] == 1 and "C_in/group > 1" in group["attributes_that_matter"]
        assert minimal.tail == "bn"  # the shrinker tried tail none: the defect needs the BN
        assert (tmp_path / "repro" / f"group_{group['group']:02d}.onnx").exists()
    # every reported configuration is one the defect really touches (no false reports)
    for line in (tmp_path / "judged.jsonl").read_text().splitlines():
        outcome = json.loads(line)["outcome"]
        spec = outcome["spec"]
        touched = spec["op"] == "ConvTranspose" and spec["tail"] == "bn" and spec["group"] > 1 and \
            spec["input_shape"][1] // spec["group"] > 1
        if outcome["status"] == "fail":
            assert touched, spec
    assert "## Group 0" in (tmp_path / "report.md").read_text()


def test_planted_rank_bias_drop_and_crash_are_separate_groups(tmp_path):
    report = sweep.run(tmp_path, PlantedEngine("drop_bias_rank", rank=1), budget=50, seed=4, tails=("bn", "mul_add"),
                       workers=1)
    assert report["groups"]
    for group in report["groups"]:
        assert group["rank"] == 1 and any(BIAS_MISSING in e or "bias missing" in e for e in group["explanations"])
    crash = sweep.run(tmp_path / "crash", PlantedEngine("crash_3d"), budget=30, seed=5, dims=(2, 3), tails=("bn",),
                      workers=1, shrink_budget=10)
    assert crash["groups"] and all(g["rank"] == 3 for g in crash["groups"])
    assert all("planted crashed" in " ".join(g["explanations"]) for g in crash["groups"])


def test_resume_skips_what_was_judged(tmp_path, monkeypatch):
    engine = PlantedEngine("legacy_fold")
    first = sweep.run(tmp_path, engine, budget=30, seed=6, workers=1)
    calls = []
    original = sweep.judge
    monkeypatch.setattr(sweep, "judge", lambda spec, engine, index=-1: calls.append(index) or original(spec, engine,
                                                                                                       index))
    again = sweep.run(tmp_path, engine, budget=40, seed=6, workers=1)
    assert [c for c in calls if c >= 0] == list(range(30, 40))  # only the new configurations (shrinks are cached)
    assert again["judged"] == 40 and again["failed"] >= first["failed"]


def test_local_processes_and_dask_give_the_same_findings(tmp_path):
    distributed = pytest.importorskip("distributed")
    engine = PlantedEngine("legacy_fold")
    local = sweep.run(tmp_path / "local", engine, budget=40, seed=7, dims=(2,), workers=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = sweep.run(tmp_path / "dask", engine, budget=40, seed=7, dims=(2,), dask_client=client)
    strip = lambda r: [(g["signature"], g["count"], g["minimal"]) for g in r["groups"]]  # noqa: E731
    assert strip(local) == strip(remote) and local["failed"] == remote["failed"] > 0


def test_contexts_cover_every_broadcast_shape_second_reader_and_parameter_route():
    from fusion.graph.build import CONSTANT_SHAPES, CONV_OUTPUT_USES, PARAMS_VIA

    specs = [sweep.random_spec(5, i) for i in range(600)]
    assert {s.constant_shape for s in specs} == set(CONSTANT_SHAPES)
    assert {s.conv_output_use for s in specs} == set(CONV_OUTPUT_USES)
    assert {s.params_via for s in specs} == set(PARAMS_VIA)
    assert all(s.constant_shape == "channel" for s in specs if s.tail in ("none", "bn"))
    # the site is the one drawn without a context: the context comes from a generator of its own
    plain = sweep.random_spec(5, 7, contexts=False)
    assert sweep.random_spec(5, 7).op == plain.op and sweep.random_spec(5, 7).input_shape == plain.input_shape


def test_context_configurations_are_judged_whole_and_pass_on_a_correct_optimizer():
    """onnxruntime's basic optimizer folds only what is per-channel: a configuration whose constant broadcasts along
    another axis, whose conv output is read twice or whose parameters come through nodes must pass."""
    from fusion.engines.registry import make

    engine = make("onnxruntime-basic")
    judged = []
    for index in range(200):
        spec = sweep.random_spec(0, index)
        if sweep.whole_free(spec) or "auto_pad" in spec.attributes:
            continue
        outcome = sweep.judge(spec, engine, index)
        judged.append((spec.constant_shape, spec.conv_output_use, spec.params_via))
        assert outcome.status == "pass", (spec, outcome.explanations)
        if len(judged) == 8:
            break
    assert len(judged) == 8 and len({j[0] for j in judged}) >= 2


def test_a_reproducer_says_whether_onnxruntime_agrees_and_the_report_tables_the_folds(tmp_path):
    plain = SiteSpec(op="ConvTranspose", input_shape=(1, 4, 3, 3), c_out=4, group=2, kernel_shape=(2, 2),
                     attributes={"strides": [2, 2]}, tail="bn", seed=3)
    assert sweep.oracle_agrees(plain)[0]
    # onnxruntime 1.32 sizes a SAME_LOWER ConvTranspose differently from the ONNX formula: not a converter's fault
    same_lower = SiteSpec(op="ConvTranspose", input_shape=(1, 1, 3), c_out=1, group=1, kernel_shape=(1,),
                          attributes={"strides": [3], "auto_pad": "SAME_LOWER"}, bias=False, tail="none")
    agrees, why = sweep.oracle_agrees(same_lower)
    assert not agrees and "disagrees" in why
    report = sweep.run(tmp_path, PlantedEngine("legacy_fold"), budget=40, seed=2, dims=(2,), tails=("bn", "mul"),
                       workers=1)
    assert all(group["oracle_agrees"] for group in report["groups"])  # the planted defect is the engine's
    rows = report["table"]["folds"]
    grouped = {row: tails for row, tails in rows.items() if "ConvTranspose" in row and "group 1" not in row}
    assert any(tails.get("BN", {}).get("wrong") for tails in grouped.values())
    assert not any(tails.get("BN", {}).get("wrong") for row, tails in rows.items() if row.startswith("Conv "))
    assert "## Folds by kind" in (tmp_path / "report.md").read_text()


def test_the_fold_table_classifies_each_outcome():
    from fusion.sweep.table import classify

    spec = SiteSpec(op="Conv", input_shape=(1, 4, 5, 5), c_out=4, group=4, kernel_shape=(3, 3), tail="mul").to_dict()
    outcome = lambda status, notes=(): sweep.Outcome(0, spec, status, [], [], list(notes), 0.0)  # noqa: E731
    assert classify(outcome("pass"), None) == "folded"
    assert classify(outcome("pass", ["not folded: the converter kept mul 'm' after the conv"]), None) == "kept"
    assert classify(outcome("fail"), None) == "wrong"
    assert classify(outcome("fail"), lambda s: False) == "runtime"
    assert classify(outcome("fail"), lambda s: True) == "wrong"
    assert classify(outcome("fail"), None, tail_free=lambda o: True) == "other"  # fails whatever the tail
    assert classify(outcome("unjudged"), None) is None
