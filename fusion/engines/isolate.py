"""Run an engine step in a child process, so that a crash or a hang becomes a finding, not a dead tool."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from fusion.engines.base import EngineFailure

CHILD_SCRIPTS = Path(__file__).parent / "children"


def python_child(script: str) -> list[str]:
    """The command prefix that runs ``children/<script>`` with this interpreter, without importing fusion."""
    return [sys.executable, str(CHILD_SCRIPTS / script)]


def run_step(argv: list[str], *, engine: str, stage: str, timeout: float, cwd: Path | None = None) -> str:
    """Run ``argv``; return its combined output, or raise ``EngineFailure`` (crash, timeout, error)."""
    try:
        process = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   env=dict(os.environ, PYTHONNOUSERSITE="1"))
    except OSError as exc:
        raise EngineFailure(engine, stage, "error", f"cannot start {argv[0]}: {exc}") from None
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise EngineFailure(engine, stage, "timeout", f"no answer after {timeout:g} s") from None
    text = output.decode(errors="replace")
    if process.returncode < 0:
        name = signal.Signals(-process.returncode).name
        raise EngineFailure(engine, stage, "crash", last_words(text), signal=name)
    if process.returncode != 0:
        raise EngineFailure(engine, stage, "error", last_words(text) or f"exit code {process.returncode}")
    return text


def tensors_from_child(command, feeds: dict, outputs: list[str], *, engine: str, timeout: float) -> dict:
    """Run a child that reads ``FEEDS.npz`` and ``OUTPUTS.json`` (tensor names) and writes ``OUT.npz`` as ``t0, t1,
    ...``; ``command(feeds_path, out_path, names_path)`` is its argv. Returns ``{name: array}``; raises
    ``EngineFailure``."""
    with tempfile.TemporaryDirectory(prefix=f"fusion-{engine.lower()}-") as scratch:
        feeds_path, out_path = os.path.join(scratch, "feeds.npz"), os.path.join(scratch, "out.npz")
        names_path = os.path.join(scratch, "outputs.json")
        np.savez(feeds_path, **{k: np.asarray(v, np.float32) for k, v in feeds.items()})
        with open(names_path, "w", encoding="utf-8") as handle:
            json.dump(list(outputs), handle)
        run_step(command(feeds_path, out_path, names_path), engine=engine, stage="running", timeout=timeout)
        with np.load(out_path) as saved:
            return {name: saved[f"t{i}"] for i, name in enumerate(outputs)}


def last_words(text: str, lines: int = 3) -> str:
    """The last few meaningful lines a child printed, joined on one line."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()
            and not line.startswith("The device supports")]
    return " | ".join(kept[-lines:])
