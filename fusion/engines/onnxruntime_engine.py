"""onnxruntime as an engine to judge: its own graph optimizer folds BN into Conv/ConvTranspose.

``prepare`` saves the model as onnxruntime optimizes it (ORT_ENABLE_ALL) and reads the fused parameters from that
file; ``run`` evaluates the optimized model in a child process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from fusion.engines.base import EngineFailure, EngineParams, KeptOp
from fusion.engines.isolate import python_child, run_step, tensors_from_child
from fusion.errors import FusionInputError
from fusion.graph.sites import find_sites


class OnnxRuntimeEngine:
    name = "onnxruntime"

    def __init__(self, *, timeout: float = 120.0):
        self.timeout = timeout

    def version(self) -> str:
        return f"onnxruntime {ort.__version__} (ORT_ENABLE_ALL)"

    def prepare(self, onnx_path: Path, workdir: Path) -> Path:
        optimized = Path(workdir) / (Path(onnx_path).stem + ".ort.onnx")
        run_step(python_child("ort_child.py") + ["optimize", str(onnx_path), str(optimized)], engine=self.name,
                 stage="optimizing", timeout=self.timeout)
        return optimized

    def load(self, artifact: Path, workdir: Path) -> Path:
        return Path(artifact)

    def tensor_names(self, prepared: Path) -> set[str]:
        model = onnx.load(prepared)
        return {name for node in model.graph.node for name in node.output} | {i.name for i in model.graph.input}

    def run(self, prepared: Path, feeds: dict, output: str) -> np.ndarray:
        return self.run_many(prepared, feeds, [output])[output]

    def run_many(self, prepared: Path, feeds: dict, outputs: list[str]) -> dict[str, np.ndarray]:
        def command(feeds_path, out_path, names_path):
            return python_child("ort_child.py") + ["run", str(prepared), feeds_path, out_path, names_path]

        return tensors_from_child(command, feeds, outputs, engine=self.name, timeout=self.timeout)

    def site_params(self, prepared: Path, site) -> EngineParams:
        return onnx_site_params(prepared, site, self.name)


def onnx_site_params(path: Path, site, engine: str) -> EngineParams:
    """The conv writing the site's output (fused) or its conv output (not fused) in an ONNX model an engine wrote,
    read with the same site finder as the original, so that whatever tail it kept (BN, Mul, Add) is composed by the
    checker."""
    try:
        candidates = find_sites(onnx.load(path))
    except FusionInputError as error:
        raise EngineFailure(engine, "reading fused parameters", "missing", str(error)) from None
    for candidate in candidates:
        if candidate.op != site.op or candidate.output_name != site.output_name:
            continue
        b = np.zeros(candidate.c_out, candidate.w.dtype) if candidate.b is None else candidate.b
        kept = [] if candidate.affine is None else [
            KeptOp(candidate.tail, " + ".join(n.name for n in candidate.tail_nodes), candidate.affine.mul,
                   candidate.affine.shift)]
        return EngineParams(w=candidate.w, b=b, kept=kept, ops=[candidate.label])
    raise EngineFailure(engine, "reading fused parameters", "missing",
                        f"no {site.op} (with or without a kept tail) writes {site.output_name!r} in the converted "
                        "model")
