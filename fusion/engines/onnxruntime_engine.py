"""onnxruntime as an engine to judge: its own graph optimizer folds BN into Conv/ConvTranspose.

``prepare`` saves the model as onnxruntime optimizes it (ORT_ENABLE_ALL) and reads the fused parameters from that
file; ``run`` evaluates the optimized model in a child process.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from fusion.engines.base import EngineFailure, EngineParams, TailOp
from fusion.engines.isolate import python_child, run_step


class OnnxRuntimeEngine:
    name = "onnxruntime"

    def __init__(self, *, timeout: float = 120.0):
        self.timeout = timeout

    def version(self) -> str:
        return f"onnxruntime {ort.__version__} (ORT_ENABLE_ALL)"

    def prepare(self, onnx_path: Path, workdir: Path) -> Path:
        optimized = Path(workdir) / (Path(onnx_path).stem + ".ort.onnx")
        code = ("import onnxruntime as ort, sys; o = ort.SessionOptions(); "
                "o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL; "
                "o.optimized_model_filepath = sys.argv[2]; "
                "ort.InferenceSession(sys.argv[1], o, providers=['CPUExecutionProvider'])")
        run_step([sys.executable, "-c", code, str(onnx_path), str(optimized)], engine=self.name, stage="optimizing",
                 timeout=self.timeout)
        return optimized

    def load(self, artifact: Path, workdir: Path) -> Path:
        return Path(artifact)

    def run(self, prepared: Path, feeds: dict, output: str) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="fusion-ort-") as scratch:
            feeds_path, out_path = os.path.join(scratch, "feeds.npz"), os.path.join(scratch, "out.npy")
            np.savez(feeds_path, **{k: np.asarray(v, np.float32) for k, v in feeds.items()})
            run_step(python_child("ort_child.py") + [str(prepared), feeds_path, out_path, output], engine=self.name,
                     stage="running", timeout=self.timeout)
            return np.load(out_path)

    def site_params(self, prepared: Path, site) -> EngineParams:
        model = onnx.load(prepared)
        constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        conv = next((n for n in model.graph.node if n.op_type == site.op and site.output_name in n.output), None)
        tail = []
        if conv is None:
            conv = next((n for n in model.graph.node if n.op_type == site.op and site.conv_output in n.output), None)
            if conv is None:
                raise EngineFailure(self.name, "reading fused parameters", "missing",
                                    f"no {site.op} writes {site.output_name!r} or {site.conv_output!r}")
            for node in model.graph.node:  # kept tail nodes, composed by the checker
                if node.op_type == "BatchNormalization" and node.input[0] == site.conv_output:
                    scale, bias, mean, var = (constants[n].astype(np.float64) for n in node.input[1:5])
                    epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
                    mul = scale / np.sqrt(var + epsilon)
                    tail.append(TailOp("BatchNormalization", node.name, mul, bias - mean * mul))
        w = constants.get(conv.input[1])
        b = constants.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if w is None:
            raise EngineFailure(self.name, "reading fused parameters", "missing", "the weight is not an initializer")
        channels = w.shape[1] * site.group if site.transposed else w.shape[0]
        return EngineParams(w=w, b=np.zeros(channels, w.dtype) if b is None else b, tail=tail, ops=[conv.name])
