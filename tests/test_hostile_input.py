"""Hostile and broken input: a one-line error or a verdict, never a traceback, never out of memory, nothing lost.

The short fuzz run is here; ``benchmarks/fuzz.py`` runs the long one, each case in a CLI process of its own."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fusion import sweep
from fusion.cli import main
from fusion.engines.planted import PlantedEngine
from fusion.graph.build import build
from fusion.graph.demo import demo_specs
from fusion.graph.memory import estimate, parse_size
from chain import chain_model
import mutations

ROOT = Path(__file__).resolve().parents[1]


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _run(argv, capsys):
    """``fusion ARGV`` in this process: exit code and stderr; any exception escaping ``main`` fails the test."""
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def bases():
    specs = demo_specs()
    return [build(specs[0]).SerializeToString(), build(specs[6]).SerializeToString(),
            build(specs[11]).SerializeToString(), chain_model(0).SerializeToString()]


def test_fuzz_short_run(bases, tmp_path, capsys):
    """Mutated models through check and fuse: exit 0, 1 or 2 with one line, the input untouched, never exit 3."""
    rng = np.random.default_rng(2026)
    seen = {}
    for case in range(60):
        kind, data = mutations.mutate(bases[case % len(bases)], rng)
        path = tmp_path / f"case_{case}.onnx"
        path.write_bytes(data)
        path.chmod(0o444)
        before = _digest(path)
        for argv in (["check", str(path), "--engine", "onnxruntime-basic", "--runs", "1"],
                     ["fuse", str(path), str(tmp_path / f"case_{case}.fused.onnx")]):
            code, err = _run(argv, capsys)
            assert code in (0, 1, 2), (kind, argv, err)
            if code == 2:
                assert err.startswith("fusion: error: ") and err.count("\n") == 1, (kind, err)
            seen.setdefault(kind, set()).add(code)
        assert _digest(path) == before
    assert len(seen) >= 15 and any(2 in codes for codes in seen.values())


def test_flipped_bytes_of_a_real_model_give_one_line(tmp_path, capsys):
    """The escape the issue found: a few flipped bytes once gave a UnicodeDecodeError from the ONNX checker."""
    data = (ROOT.parent / "shared" / "real-models" / "twinlitenet.onnx").read_bytes()
    rng = np.random.default_rng(3)
    for case in range(6):
        path = tmp_path / f"flipped_{case}.onnx"
        path.write_bytes(mutations.flip_bytes(data, rng))
        code, err = _run(["fuse", str(path), str(tmp_path / "out.onnx")], capsys)
        assert code in (0, 1, 2) and "Traceback" not in err


def test_a_damaged_string_field_is_bad_input(tmp_path, capsys):
    model = build(demo_specs()[0])
    model.graph.node[0].name = "conv"
    data = model.SerializeToString().replace(b"conv", b"\xff\xfe\xfd\xfc", 1)
    path = tmp_path / "damaged.onnx"
    path.write_bytes(data)
    code, err = _run(["check", str(path), "--engine", "onnxruntime"], capsys)
    assert code == 2 and err.startswith("fusion: error: ") and "Traceback" not in err


def _with_input_dims(dims):
    model = build(demo_specs()[0])
    shape = model.graph.input[0].type.tensor_type.shape
    for d, size in zip(shape.dim, dims):
        d.dim_value = size
    return model


def test_a_huge_declared_input_is_refused_before_allocating(tmp_path, capsys):
    path = tmp_path / "huge.onnx"
    onnx.save(_with_input_dims([1, 16, 200_000, 200_000]), path)
    for argv in (["check", str(path), "--engine", "onnxruntime"], ["fuse", str(path), str(tmp_path / "o.onnx")]):
        code, err = _run(argv, capsys)
        assert code == 2, err
        assert "TiB" in err and "beyond the limit of 8 GiB (--max-memory" in err and "conv_out" in err
    code, err = _run(["check", str(path), "--engine", "onnxruntime", "--max-memory", "1T"], capsys)
    assert code == 2 and "beyond the limit of 1 TiB" in err


def test_max_memory_refuses_a_model_that_fits_the_default(tmp_path, capsys):
    path = tmp_path / "small.onnx"
    onnx.save(build(demo_specs()[0]), path)
    code, err = _run(["check", str(path), "--engine", "onnxruntime", "--max-memory", "10K"], capsys)
    assert code == 2 and "beyond the limit of 10 KiB" in err
    code, err = _run(["check", str(path), "--engine", "onnxruntime", "--max-memory", "lots"], capsys)
    assert code == 2 and "--max-memory takes a size" in err
    assert parse_size("8G") == 8 * 2 ** 30 and parse_size("512MiB") == 512 * 2 ** 20 and parse_size("100") == 100


def test_the_estimate_grows_with_the_activations():
    small, large = estimate(_with_input_dims([1, 16, 8, 8]), {"x": (1, 16, 8, 8)}), \
        estimate(_with_input_dims([1, 16, 64, 64]), {"x": (1, 16, 64, 64)})
    assert large.activations == 64 * small.activations and large.unsized == small.unsized == 0
    assert small.activations == 2 * 4 * 16 * 16 * 16  # conv_out and y: 1 x 16 x 16 x 16 float32 each


def test_the_oracle_has_a_time_limit(tmp_path, capsys):
    """A model that takes onnxruntime long to run is stopped at --timeout with a one-line error."""
    rng = np.random.default_rng(0)
    x = "x"
    nodes, initializers = [], []
    for layer in range(12):  # 12 wide 3x3 convolutions on 1 x 64 x 192 x 192: seconds of onnxruntime time
        initializers.append(numpy_helper.from_array(rng.standard_normal((64, 64, 3, 3)).astype(np.float32) * .05,
                                                    f"w{layer}"))
        nodes.append(helper.make_node("Conv", [x, f"w{layer}"], [f"c{layer}"], pads=[1, 1, 1, 1]))
        x = f"c{layer}"
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                            [1, 64, 192, 192])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 64, 192, 192])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = tmp_path / "slow.onnx"
    onnx.save(model, path)
    started = time.perf_counter()
    code, err = _run(["check", str(path), "--engine", "onnxruntime", "--timeout", "0.05"], capsys)
    assert code == 2 and "the oracle (onnxruntime, optimizations off) took longer than 0.05 s" in err, err
    assert time.perf_counter() - started < 30


def test_the_reference_has_a_time_limit():
    from fusion.deadline import within
    from fusion.errors import StepTimeout

    with pytest.raises(StepTimeout, match="the float64 reference of site s took longer than 0.01 s"):
        within(0.01, "the float64 reference of site s", time.sleep, 2)
    assert within(5, "quick", lambda a: a + 1, 1) == 2


def _bn_model(var=None, weight=None, tail_op=None):
    """x -> Conv + BN -> (tail_op) -> y, with chosen BN variance, weight values or a non-finite-making tail."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32) if weight is None else weight
    stats = [rng.uniform(.5, 2, 8), rng.standard_normal(8), rng.standard_normal(8),
             rng.uniform(.2, 2, 8) if var is None else var]
    initializers = [numpy_helper.from_array(w, "w")] + [
        numpy_helper.from_array(np.asarray(v, np.float32), n) for v, n in zip(stats, ["s", "b", "m", "v"])]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn" if tail_op else "y"])]
    if tail_op:
        nodes.append(helper.make_node(tail_op, ["bn"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


@pytest.mark.parametrize("model, message", [
    (lambda: _bn_model(weight=np.full((8, 4, 3, 3), np.nan, np.float32)), "weight or bias has non-finite values"),
    (lambda: _bn_model(var=[1, 1, np.inf, 1, 1, 1, 1, 1]), "var has 1 non-finite value(s), first at channel 2"),
    (lambda: _bn_model(var=-np.ones(8)), "var + epsilon must be > 0"),
])
@pytest.mark.parametrize("command", ["check", "fuse"])
def test_non_finite_parameters_are_named(model, message, command, tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(model(), path)
    argv = ["check", str(path), "--engine", "onnxruntime"] if command == "check" else \
        ["fuse", str(path), str(tmp_path / "o.onnx")]
    code, err = _run(argv, capsys)
    assert code == 2 and message in err, err


def test_non_finite_outputs_of_the_model_itself_are_said_or_refused(tmp_path, capsys):
    from fusion.check import check
    from fusion.engines.registry import make
    from fusion.errors import FusionInputError

    path = tmp_path / "log.onnx"
    onnx.save(_bn_model(tail_op="Log"), path)  # log of negative values: NaN in about half the output
    report = check(path, make("onnxruntime"), runs=1)
    assert report.passed and any("are NaN or Inf in the unfused model itself" in n for n in report.notes)
    always = _bn_model(tail_op="Log")
    always.graph.node.insert(2, helper.make_node("Neg", ["bn"], ["neg"]))
    always.graph.node.insert(3, helper.make_node("Abs", ["neg"], ["abs"]))
    always.graph.node.insert(4, helper.make_node("Neg", ["abs"], ["neg2"]))
    always.graph.node.insert(5, helper.make_node("Sqrt", ["neg2"], ["bn_nan"]))
    always.graph.node[-1].input[0] = "bn_nan"
    onnx.save(always, path)  # sqrt(-|x|): NaN nearly everywhere; 0 where x is 0 exactly (never, on random data)
    with pytest.raises(FusionInputError, match="every graph output of the unfused model is NaN or Inf"):
        check(path, make("onnxruntime"), runs=1)


def test_an_internal_error_is_one_line_and_a_report_file(monkeypatch, capsys, tmp_path):
    import fusion.cli

    def broken(args, console):
        raise KeyError("surprise")

    monkeypatch.setattr(fusion.cli, "_fuse", broken)
    code, err = _run(["fuse", "a.onnx", "b.onnx"], capsys)
    assert code == 3 and err.startswith("fusion: internal error (a bug in fusion, please report it with ")
    report = err.split("with ", 1)[1].split(")", 1)[0]
    assert "KeyError: 'surprise'" in Path(report).read_text()
    os.unlink(report)


WRITER = """
import sys
from fusion.files import write_atomic
path, size = sys.argv[1], int(sys.argv[2])
for round in range(1000):
    write_atomic(path, bytes([round % 251]) * size)
"""


def test_killed_while_writing_leaves_the_old_file_or_the_new_one(tmp_path):
    """SIGKILL at random moments of a loop of 64 MiB atomic writes: the target is always one whole version."""
    target = tmp_path / "report.json"
    size = 64 * 2 ** 20
    rng = np.random.default_rng(0)
    kills = 0
    for attempt in range(6):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(size)])
        time.sleep(float(rng.uniform(0.3, 1.5)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        kills += child.returncode == -signal.SIGKILL
        if target.exists():
            data = target.read_bytes()
            assert len(data) == size and data.count(data[:1]) == size  # one whole version, never a mix or a half
    assert kills == 6
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "report.json"]
    assert all(name.startswith(".report.json.") for name in leftovers)  # temporaries only, never the target


def test_two_checks_at_once_in_the_same_folder(tmp_path):
    """Two ``fusion check`` processes on the same model, the same --json, in the same folder: both judge, the
    report is whole, the model untouched."""
    model = tmp_path / "model.onnx"
    onnx.save(chain_model(0), model)
    before = _digest(model)
    command = [sys.executable, "-m", "fusion", "check", "model.onnx", "--engine", "onnxruntime", "--runs", "1",
               "--json", "report.json"]
    children = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for _ in range(2)]
    outcomes = [child.communicate(timeout=300) for child in children]
    assert [c.returncode for c in children] == [0, 0], outcomes
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["models"][0]["passed"]
    assert _digest(model) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "report.json"]


SWEEPER = """
import sys
from fusion import sweep
from fusion.engines.planted import PlantedEngine
sweep.run(sys.argv[1], PlantedEngine("legacy_fold"), budget=400, seed=4, dims=(1, 2), workers=1, shrink_budget=5)
"""


def test_a_sweep_killed_and_resumed_loses_no_judged_configuration(tmp_path):
    out = tmp_path / "campaign"
    child = subprocess.Popen([sys.executable, "-c", SWEEPER, str(out)])
    journal = out / "judged.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not journal.exists() or journal.read_text().count("\n") < 20):
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    with open(journal, "a") as log:
        log.write('{"seed": 4, "engine": "cut sh')  # what a kill in the middle of a write leaves
    judged = [json.loads(line) for line in journal.read_text().splitlines()[:-1]]
    assert len(judged) >= 20
    report = sweep.run(out, PlantedEngine("legacy_fold"), budget=40, seed=4, dims=(1, 2), workers=1,
                       shrink_budget=5)
    assert report["judged"] == 40
    records = [json.loads(line) for line in journal.read_text().splitlines() if line.startswith('{"seed": 4, "en')
               and line.endswith("}")]
    indices = [r["index"] for r in records]
    kept = {r["index"] for r in judged}
    assert sorted(set(indices)) == list(range(max(40, max(kept) + 1)))
    assert all(indices.count(i) == 1 for i in kept)  # judged once, before the kill, never again


def test_a_second_sweep_on_the_same_folder_is_refused(tmp_path, capsys):
    import fcntl

    out = tmp_path / "campaign"
    out.mkdir()
    with open(out / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(sweep.FusionInputError, match="another fusion sweep is writing"):
            sweep.run(out, PlantedEngine("none"), budget=2, workers=1)
        code, err = _run(["sweep", "--engine", "onnxruntime", "--budget", "2", "--out", str(out)], capsys)
        assert code == 2 and "another fusion sweep is writing" in err


def test_a_non_finite_input_to_the_pytest_helper_is_refused():
    from fusion.errors import FusionInputError
    from fusion.testing import assert_matches_reference

    x = np.ones((1, 4, 5, 5), np.float32)
    x[0, 1, 2, 2] = np.nan
    w = np.ones((4, 2, 3, 3), np.float32)
    with pytest.raises(FusionInputError, match="conv_transpose: x has 1 non-finite value"):
        assert_matches_reference(np.full((1, 2, 7, 7), np.nan, np.float32), op="conv_transpose", x=x, w=w)


def test_fuse_keeps_the_initializers_a_subgraph_reads(tmp_path, capsys):
    """An If whose branches read the outer graph's weights: the fuse pass once dropped them as unused."""
    model = build(demo_specs()[0])
    mutations.nested_graph(model, np.random.default_rng(0))
    path, out = tmp_path / "if.onnx", tmp_path / "fused.onnx"
    onnx.save(model, path)
    code, err = _run(["fuse", str(path), str(out)], capsys)
    assert code == 0, err
    fused = onnx.load(out)
    onnx.checker.check_model(fused)
    assert {t.name for t in fused.graph.initializer} == {t.name for t in model.graph.initializer}
