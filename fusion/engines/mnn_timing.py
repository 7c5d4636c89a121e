"""Timing MNN in one persistent child process (``children/mnn_bench.py``), restarted when MNN crashes."""

from __future__ import annotations

import signal
import subprocess

from fusion.engines.isolate import python_child


class MnnTimer:
    """The persistent MNN child (``children/mnn_bench.py``). If MNN crashes, the child is restarted and the models
    loaded so far are loaded again, so that one crashing model costs one path, not the rest of the run."""

    def __init__(self):
        self.loads: list[str] = []
        self.process = None
        self._start()

    def _start(self):
        self.process = subprocess.Popen(python_child("mnn_bench.py"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True, bufsize=1)
        for line in self.loads:
            self._send(line)

    def _send(self, line: str) -> str:
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
            answer = self.process.stdout.readline().strip()
        except BrokenPipeError:
            answer = ""
        if answer:
            return answer
        code = self.process.wait()
        signal_name = signal.Signals(-code).name if code < 0 else f"exit {code}"
        return f"error MNN crashed ({signal_name})"

    def ask(self, line: str) -> str:
        if self.process.poll() is not None:
            self._start()
        answer = self._send(line)
        if line.startswith("load") and answer == "ok":
            self.loads.append(line)
        elif answer.startswith("error MNN crashed") and line.startswith("time"):
            key = line.split()[1]
            self.loads = [l for l in self.loads if l.split()[1] != key]  # never load the crashing model again
        return answer

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            self.process.wait(timeout=30)
