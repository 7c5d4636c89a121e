"""Every engine ``fusion check --engine NAME`` can judge: how to make it, the package it needs, the version verified.

A missing engine is bad input (exit 2) with the ``pip install`` line that brings it.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

from fusion.errors import FusionInputError


@dataclass(frozen=True)
class EngineEntry:
    name: str
    distribution: str  # the PyPI package the engine needs
    verified: str  # the version its behaviour was checked against
    what: str
    also: tuple[str, str] | None = None  # a second package it needs, and its verified version
    install: str | None = None  # the command that brings it, when it is not `pip install distribution==verified`

    def install_line(self) -> str:
        return self.install or f"pip install {self.distribution}=={self.verified}"


ENGINES = {entry.name: entry for entry in (
    EngineEntry("mnn", "mnn", "3.6.1", "MNN's converter (the wheel's _tools) and its CPU runtime"),
    EngineEntry("onnxruntime", "onnxruntime", "1.32.0", "onnxruntime's graph optimizer at ORT_ENABLE_ALL (its default)"),
    EngineEntry("onnxruntime-extended", "onnxruntime", "1.32.0", "onnxruntime's graph optimizer at ORT_ENABLE_EXTENDED"),
    EngineEntry("onnxruntime-basic", "onnxruntime", "1.32.0", "onnxruntime's graph optimizer at ORT_ENABLE_BASIC"),
    EngineEntry("onnxscript", "onnxscript", "0.7.2", "onnxscript.optimizer.optimize, what torch.onnx.export runs"),
    EngineEntry("onnxslim", "onnxslim", "0.1.98", "onnxslim.slim"),
    EngineEntry("openvino", "openvino", "2026.4.1", "OpenVINO's MOC transformations (what ovc applies), CPU in float32"),
    EngineEntry("pnnx", "pnnx", "20261020", "the pnnx converter (fp16=0) run by ncnn 1.0.20261020 (fp16 off)",
                also=("ncnn", "1.0.20261020"), install="pip install --no-deps pnnx==20261020 && "
                                                       "pip install ncnn==1.0.20261020"),
)}


def installed(entry: EngineEntry) -> str | None:
    """The installed version of the engine's package, or None."""
    try:
        version = importlib.metadata.version(entry.distribution)
        if entry.also is not None:
            importlib.metadata.version(entry.also[0])
        return version
    except importlib.metadata.PackageNotFoundError:
        return None


def make(name: str, *, timeout: float = 120.0, threads: int = 1, converter: str | None = None):
    """The engine called ``name``; raises ``FusionInputError`` for an unknown or missing one."""
    entry = ENGINES.get(name)
    if entry is None:
        raise FusionInputError(f"unknown engine {name!r}; `fusion engines` lists them: {', '.join(ENGINES)}")
    if installed(entry) is None:
        packages = entry.distribution + (f" and {entry.also[0]} packages" if entry.also else " package")
        raise FusionInputError(f"engine {name} needs the {packages}: {entry.install_line()}")
    if name == "mnn":
        from fusion.engines.mnn import MnnEngine

        return MnnEngine(converter, timeout=timeout, threads=threads)
    if converter is not None:
        raise FusionInputError("--converter is MNN's (an MNNConvert binary); it does not apply to " + name)
    if name == "pnnx":
        from fusion.engines.pnnx_ncnn import PnnxNcnnEngine

        return PnnxNcnnEngine(timeout=timeout)
    if name == "openvino":
        from fusion.engines.openvino import OpenVinoEngine

        return OpenVinoEngine(timeout=timeout)
    from fusion.engines.onnx_rewriters import OnnxRewriteEngine

    return OnnxRewriteEngine("onnxruntime-all" if name == "onnxruntime" else name, timeout=timeout)
