"""The benchmark machinery runs (speed itself is measured in benchmarks/, never asserted in a test)."""

import json

import pytest

from fusion import bench
from fusion.cli import main


@pytest.mark.mnn
def test_quick_bench_writes_json_markdown_and_plot(tmp_path, monkeypatch, capsys):
    small = (bench.Shape("tiny g2", 8, 8, 2, 3, 2, 1, (6, 6)), bench.Shape("tiny 3d g2", 4, 4, 2, 3, 2, 1, (3, 3, 3)))
    monkeypatch.setattr(bench.harness, "SUITE", small)  # what the command runs
    for name, value in bench.QUIET_POOLS.items():  # as if re-run by the entry point: stay in this process
        monkeypatch.setenv(name, value)
    assert main(["bench", "--quick", "--threads", "1", "--repetitions", "2", "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "bench.json").read_text())
    rows = {(r["shape"], r["engine"], r["path"]): r for r in document["results"]}
    for engine, path in (("fusion", "unfused"), ("fusion", "folded"), ("fusion", "epilogue"),
                         ("onnxruntime", "unfused"), ("onnxruntime", "folded"), ("mnn", "folded")):
        row = rows[("tiny g2 3^2", engine, path)]  # quick: half of 6^2, and the label says so
        assert row["repetitions"] == 2 and row["min"] <= row["median"] <= row["max"] and row["gflops"] > 0
    before, after = document["peak_flops_before_after"]["1"]
    assert float(document["peak_flops"]["1"]) == max(before, after) > 1e9
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert "| tiny g2 3^2 | 1 | fusion | folded |" in (tmp_path / "bench.md").read_text()
    assert "fusion folded / conv_transpose only" in capsys.readouterr().out


def test_bench_reruns_itself_with_quiet_thread_pools(monkeypatch):
    """Spinning OpenMP/OpenBLAS pools would slow whichever path runs next: the command re-runs itself with them quiet,
    passing its arguments on."""
    for name in bench.QUIET_POOLS:
        monkeypatch.delenv(name, raising=False)
    calls = []
    monkeypatch.setattr(bench, "rerun_with_quiet_pools", lambda argv: calls.append(argv) or 7)
    assert main(["bench", "--quick", "--threads", "1"]) == 7
    assert calls and calls[0][-3:] == ["--quick", "--threads", "1"]


@pytest.mark.parametrize("min_seconds, rounds", [(0.0, 2), (100.0, 2 * bench.MORE_ROUNDS)])
def test_fast_shapes_get_more_rounds(monkeypatch, min_seconds, rounds):
    """A shape whose rounds take less than ``min_seconds`` gets more of them, at most ``MORE_ROUNDS`` times as many."""
    document = bench.run(quick=True, threads_list=(1,), repetitions=2, engines=("fusion",), min_seconds=min_seconds,
                         suite=(bench.Shape("tiny g2", 8, 8, 2, 3, 2, 1, (6, 6)),))
    assert {row["repetitions"] for row in document["results"]} == {rounds}
    # fusion's own paths are timed a second time among themselves, and their ratios come from both timings
    assert {row["path"] for row in document["results"] if row["engine"] == bench.ALONE} == set(bench.ALONE_PATHS)
    (row,) = bench.ratios(document)
    assert {"fusion folded / conv_transpose only", "fusion alone epilogue / conv_transpose only"} <= set(row)


def test_the_peak_is_measured_in_the_widest_vectors_the_cpu_has():
    import numpy as np

    from fusion.bench import peak

    bits = peak.vector_bits()
    assert bits in (256, 512)
    b, c = np.float32(0.5), np.float32(0.0)
    wide, narrow = peak.KERNELS[512][0].chains, peak.KERNELS[256][0].chains
    assert wide(1, b, c) == 64.0 and narrow(1, b, c) == 32.0
    fmas = [line for line in next(iter(wide.inspect_asm().values())).splitlines() if "vfmadd" in line]
    assert fmas and all(("zmm" in line) == (bits == 512) for line in fmas)
