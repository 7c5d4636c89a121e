"""The ONNX-to-ONNX optimizers as engines to judge: onnxruntime's graph optimizer (at each level), onnxscript's
optimizer (what ``torch.onnx.export`` runs) and onnxslim. Each folds BN, and some Mul/Add, into Conv/ConvTranspose.

``prepare`` saves the model as the tool rewrites it (in a child process, ``children/rewrite_child.py``); the
rewritten model is run by onnxruntime with its own optimizations off (``children/ort_child.py``), any tensor of it
exposed; fused parameters are read from the rewritten file with the same site finder as the original.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import onnx

from fusion.engines.base import EngineFailure, EngineParams, KeptOp
from fusion.engines.isolate import python_child, run_step, tensors_from_child
from fusion.errors import FusionInputError
from fusion.graph.sites import find_sites

TOOLS = {  # tool -> (distribution, what runs)
    "onnxruntime-basic": ("onnxruntime", "onnxruntime's optimizer at ORT_ENABLE_BASIC"),
    "onnxruntime-extended": ("onnxruntime", "onnxruntime's optimizer at ORT_ENABLE_EXTENDED"),
    "onnxruntime-all": ("onnxruntime", "onnxruntime's optimizer at ORT_ENABLE_ALL (its default)"),
    "onnxscript": ("onnxscript", "onnxscript.optimizer.optimize (what torch.onnx.export runs)"),
    "onnxslim": ("onnxslim", "onnxslim.slim"),
}


class OnnxRewriteEngine:
    """One ONNX-to-ONNX optimizer (``tool``, a key of ``TOOLS``), judged on the model it writes."""

    runs_on_onnxruntime = True  # its model is run by onnxruntime: a failure onnxruntime makes unfused is not its own

    def __init__(self, tool: str = "onnxruntime-all", *, timeout: float = 120.0):
        if tool not in TOOLS:
            raise ValueError(f"tool must be one of {sorted(TOOLS)}")
        self.tool, self.timeout = tool, timeout
        self.name = tool

    def version(self) -> str:
        distribution, what = TOOLS[self.tool]
        return f"{distribution} {importlib.metadata.version(distribution)} ({what})"

    def prepare(self, onnx_path: Path, workdir: Path) -> Path:
        rewritten = Path(workdir) / (Path(onnx_path).stem + f".{self.tool}.onnx")
        run_step(python_child("rewrite_child.py") + [self.tool, str(onnx_path), str(rewritten)], engine=self.name,
                 stage="converting", timeout=self.timeout)
        if not rewritten.is_file():
            raise EngineFailure(self.name, "converting", "error", "the tool wrote no model")
        return rewritten

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
