"""Run an engine step in a child process, so that a crash or a hang becomes a finding, not a dead tool.

A Python child script (``python_child``) of ``SERVED`` is run by a server: one process of that script per parent
process, kept between steps (``one_line.main_or_serve``), so that a step does not pay for starting Python and
importing the engine (about 1-2 s for onnxscript or OpenVINO). A crash, a hang or an error that leaves the server in
doubt ends it; the next step starts a new one. It is also restarted every ``REUSE`` steps to bound what an engine
leaks.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from fusion.engines.base import EngineFailure

CHILD_SCRIPTS = Path(__file__).parent / "children"


def python_child(script: str) -> list[str]:
    """The command prefix that runs ``children/<script>`` with this interpreter, without importing fusion."""
    return [sys.executable, str(CHILD_SCRIPTS / script)]


SERVED = frozenset({"ort_child.py", "rewrite_child.py", "openvino_child.py", "ncnn_child.py"})
REUSE = 200


class ChildServer:
    """One ``SCRIPT serve`` process; ``call(args)`` is one step of it."""

    def __init__(self, script: str):
        self.script, self.calls = script, 0
        self.log = tempfile.TemporaryFile()  # the engine's own prints: the last lines explain a crash
        read_end, write_end = os.pipe()
        self.process = subprocess.Popen(python_child(script) + ["serve"], stdin=subprocess.PIPE, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(write_end,),
                                        env=dict(os.environ, PYTHONNOUSERSITE="1", FUSION_REPLY_FD=str(write_end)))
        os.close(write_end)
        os.set_inheritable(read_end, False)
        self.replies = os.fdopen(read_end, "rb")
        self.pending = b""

    def close(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        self.replies.close()
        self.log.close()

    def _last_words(self) -> str:
        self.log.seek(0)
        return last_words(self.log.read()[-4000:].decode(errors="replace"))

    def call(self, args: list[str], *, engine: str, stage: str, timeout: float) -> None:
        """One step; raises ``EngineFailure`` (the server is then closed unless the step merely failed)."""
        self.calls += 1
        self.log.seek(0)
        self.log.truncate()
        try:
            self.process.stdin.write((json.dumps(args) + "\n").encode())
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: said below, from its exit status
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            ready = select.select([self.replies], [], [], max(left, 0.0))[0] if left > 0 else []
            if not ready:
                self.close()
                raise EngineFailure(engine, stage, "timeout", f"no answer after {timeout:g} s")
            chunk = os.read(self.replies.fileno(), 65536)
            if not chunk:  # the process ended without answering
                code = self.process.wait()
                words = self._last_words()
                self.close()
                if code < 0:
                    raise EngineFailure(engine, stage, "crash", words, signal=signal.Signals(-code).name)
                raise EngineFailure(engine, stage, "error", words or f"exit code {code}")
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        answer = json.loads(line)
        if not answer["ok"]:
            raise EngineFailure(engine, stage, "error", answer["error"])


_servers: dict[str, ChildServer] = {}
_servers_lock = threading.Lock()


def _served_script(argv: list[str]) -> str | None:
    if len(argv) >= 2 and argv[0] == sys.executable and Path(argv[1]).parent == CHILD_SCRIPTS and \
            Path(argv[1]).name in SERVED:
        return Path(argv[1]).name
    return None


def _serve(script: str, args: list[str], *, engine: str, stage: str, timeout: float) -> str:
    with _servers_lock:  # one step at a time per script: a server answers in order
        server = _servers.get(script)
        if server is None or server.process.poll() is not None or server.calls >= REUSE:
            if server is not None:
                server.close()
            server = _servers[script] = ChildServer(script)
        try:
            server.call(args, engine=engine, stage=stage, timeout=timeout)
        except EngineFailure as failure:
            if failure.kind != "error" or server.process.poll() is not None:
                _servers.pop(script, None)
            raise
    return ""


def run_step(argv: list[str], *, engine: str, stage: str, timeout: float, cwd: Path | None = None) -> str:
    """Run ``argv``; return its combined output, or raise ``EngineFailure`` (crash, timeout, error). A served Python
    child returns no output (its answer is its success)."""
    script = _served_script(argv)
    if script is not None and cwd is None:
        return _serve(script, argv[2:], engine=engine, stage=stage, timeout=timeout)
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
