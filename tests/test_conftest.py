"""The test fixtures keep their promises."""

import os
import subprocess
import sys
from pathlib import Path

SEED = "import sys; sys.path.insert(0, {folder!r}); from conftest import seed_for; print(seed_for('tests/x.py::t'))"
SALTED = "print(abs(hash('tests/x.py::t')) % (2**32))"  # the seeding the fixture had before


def _in_process(code: str, hash_seed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_rng_fixture_is_reproducible_across_processes():
    code = SEED.format(folder=str(Path(__file__).parent))
    assert _in_process(code, "1") == _in_process(code, "2")
    # the check has teeth: the salted hash the fixture used to seed from differs between the same two processes
    assert _in_process(SALTED, "1") != _in_process(SALTED, "2")
