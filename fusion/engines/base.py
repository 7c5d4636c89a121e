"""The engine protocol, the parameters an engine holds for one site, and how an engine failure is described."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fusion.fold import output_channel_view


class EngineFailure(Exception):
    """The engine crashed, hung or reported an error at one stage (convert, read, run).

    ``kind`` is ``crash`` (killed by a signal), ``timeout``, ``error`` (non-zero exit or an error it printed) or
    ``missing`` (it produced nothing usable, e.g. the site's tensor is not in the converted model).
    """

    def __init__(self, engine: str, stage: str, kind: str, detail: str, signal: str | None = None):
        self.engine, self.stage, self.kind, self.detail, self.signal = engine, stage, kind, detail, signal
        super().__init__(self.explain())

    def explain(self) -> str:
        if self.kind == "crash":
            return f"{self.engine} crashed ({self.signal}) while {self.stage}"
        if self.kind == "timeout":
            return f"{self.engine} hung while {self.stage} ({self.detail})"
        if self.kind == "missing":
            return f"{self.engine}: {self.detail}"
        return f"{self.engine} failed while {self.stage}: {self.detail}"

    def to_dict(self) -> dict:
        return {"engine": self.engine, "stage": self.stage, "kind": self.kind, "detail": self.detail,
                "signal": self.signal, "explanation": self.explain()}


@dataclass
class KeptOp:
    """A per-channel affine op the engine kept after the convolution instead of folding it (Scale, BatchNorm,
    BinaryOp: whatever the engine calls it, ``kind``):
    ``y = x * mul + add`` (each ``(C,)`` float64), read to within ``resolution``."""

    kind: str
    name: str
    mul: np.ndarray
    add: np.ndarray
    resolution: float = 0.0


@dataclass
class EngineParams:
    """What the engine holds for one site, in the ONNX layout of the site's op.

    ``w``/``b`` are the conv op's weights and bias (``b`` is ``None`` when the engine keeps the bias elsewhere);
    ``kept`` lists the affine ops the engine left after the conv, in order. ``ops`` names the engine ops read.
    ``resolution`` is the absolute precision of the values as read (0: exact float32; a text dump that prints
    six decimals: 5e-7).
    """

    w: np.ndarray | None
    b: np.ndarray | None
    kept: list[KeptOp] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    resolution: float = 0.0

    def effective(self, *, group: int, transposed: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """``(w, b)`` of the one convolution equal to the conv op followed by the kept ops, in float64.

        Kept ops compose as ``mul = m1*m2*...``, ``add = (a1*m2 + a2)*m3 + ...``, then fold like a BN.
        """
        w = np.asarray(self.w, np.float64)
        if not self.kept:
            return w, None if self.b is None else np.asarray(self.b, np.float64)
        channels = self.kept[0].mul.shape[0]
        mul, add = np.ones(channels), np.zeros(channels)
        for op in self.kept:
            mul, add = mul * op.mul, add * op.mul + op.add
        # the engine's values are judged, not validated: NaN or Inf must flow through to the comparison
        view, shape = output_channel_view(w, group, transposed)
        w_f = (view * mul.reshape(shape)).reshape(w.shape)
        return w_f, None if self.b is None else np.asarray(self.b, np.float64) * mul + add

    def read_error(self, *, group: int, transposed: bool) -> tuple[np.ndarray, np.ndarray]:
        """Bounds on how far ``effective()`` can be from the engine's true values because of read resolution.

        Each value is known to within its ``resolution``; composing with magnitudes raised by that amount
        (``|m| + r``) and subtracting the nominal composition bounds the propagated error.
        """
        w = np.abs(np.asarray(self.w, np.float64))
        b = np.zeros(0) if self.b is None else np.abs(np.asarray(self.b, np.float64))
        channels = self.kept[0].mul.shape[0] if self.kept else (b.shape[0] if b.size else 0)
        nominal_mul, high_mul = np.ones(channels), np.ones(channels)
        nominal_add, high_add = np.zeros(channels), np.zeros(channels)
        for op in self.kept:
            m = np.abs(op.mul)
            nominal_mul, high_mul = nominal_mul * m, high_mul * (m + op.resolution)
            nominal_add = nominal_add * m + np.abs(op.add)
            high_add = high_add * (m + op.resolution) + np.abs(op.add) + op.resolution
        r = self.resolution
        if not self.kept:
            return np.full(w.shape, r), np.full(b.shape, r)
        view, shape = output_channel_view(w + r, group, transposed)
        w_high = (view * high_mul.reshape(shape)).reshape(w.shape)
        view, _ = output_channel_view(w, group, transposed)
        w_nominal = (view * nominal_mul.reshape(shape)).reshape(w.shape)
        b_error = np.zeros(0) if not b.size else (b + r) * high_mul + high_add - (b * nominal_mul + nominal_add)
        return w_high - w_nominal, b_error


class Engine(Protocol):
    """A converter plus runtime judged by ``fusion check``."""

    name: str
    # optional: ``hidden_tensors``, a sentence saying why the converted model names no tensor between the graph's
    # inputs and outputs (an engine that renames them all); absent when it keeps ONNX names

    def version(self) -> str: ...

    def prepare(self, onnx_path: Path, workdir: Path) -> Any:
        """Convert the whole model at ``onnx_path`` as its users do; raises ``EngineFailure``."""

    def load(self, artifact: Path, workdir: Path) -> Any:
        """Use an already converted model (the user's own file); raises ``EngineFailure``."""

    def tensor_names(self, prepared: Any) -> set[str]:
        """The ONNX tensor names the converted model still has, each readable by ``run_many``."""

    def run_many(self, prepared: Any, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Run once, in an isolated child process, asking for ``outputs`` at load or run time (never at conversion,
        which would change what gets fused); raises ``EngineFailure``."""

    def run(self, prepared: Any, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
        """``run_many`` for one tensor."""

    def site_params(self, prepared: Any, site) -> EngineParams:
        """The parameters the converted model holds for ``site``; raises ``EngineFailure`` when absent."""
