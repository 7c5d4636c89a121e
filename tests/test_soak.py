"""The CI share of the kernel soak (``benchmarks/soak.py`` runs 10,000): 1,000 random configurations, every one
within its bound in float32 and float64."""

import importlib.util
from pathlib import Path


def _soak_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("soak", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_thousand_random_configurations_are_within_the_bound():
    result = _soak_module().soak(1000, seed=20261202)
    assert result["failures"] == []
    kinds = result["kinds"]
    assert sum(kinds.values()) == 1000 and len(kinds) == 27  # 2 ops x 3 ranks x 3 group kinds, + BN epilogue
    assert 0 < result["worst_ratio"] <= 1
