"""OpenVINO as an engine to judge: the offline transformations that ``ovc`` applies (``BatchNormDecomposition``, then
the Multiply-into-(Group)Convolution(BackpropData) fusions), the transformed model compiled for CPU in float32.

Every step runs in a child process (``children/openvino_child.py``). Intermediate tensors are added as outputs of
the transformed model before it is compiled, never before the transformations. Fused parameters are read from the
transformed model's constants: the conv's weight (OpenVINO's layout turned back into ONNX's) and the bias of the
Add after it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from fusion.engines.base import EngineFailure, EngineParams
from fusion.engines.isolate import python_child, run_step, tensors_from_child

CHILD = "openvino_child.py"


class OpenVinoEngine:
    name = "openvino"

    def __init__(self, *, timeout: float = 120.0):
        self.timeout = timeout

    def version(self) -> str:
        return (f"OpenVINO {importlib.metadata.version('openvino')} (MOC transformations, CPU, "
                "INFERENCE_PRECISION_HINT f32)")

    def prepare(self, onnx_path: Path, workdir: Path) -> Path:
        xml = Path(workdir) / (Path(onnx_path).stem + ".openvino.xml")
        run_step(python_child(CHILD) + ["convert", str(onnx_path), str(xml)], engine=self.name, stage="converting",
                 timeout=self.timeout)
        return xml

    def load(self, artifact: Path, workdir: Path) -> Path:
        return Path(artifact)

    def tensor_names(self, prepared: Path) -> set[str]:
        with tempfile.TemporaryDirectory(prefix="fusion-openvino-") as scratch:
            names_path = os.path.join(scratch, "names.json")
            run_step(python_child(CHILD) + ["names", str(prepared), names_path], engine=self.name,
                     stage="reading the converted model", timeout=self.timeout)
            with open(names_path, encoding="utf-8") as handle:
                return set(json.load(handle))

    def run(self, prepared: Path, feeds: dict, output: str) -> np.ndarray:
        return self.run_many(prepared, feeds, [output])[output]

    def run_many(self, prepared: Path, feeds: dict, outputs: list[str]) -> dict[str, np.ndarray]:
        def command(feeds_path, out_path, names_path):
            return python_child(CHILD) + ["run", str(prepared), feeds_path, out_path, names_path]

        return tensors_from_child(command, feeds, outputs, engine=self.name, timeout=self.timeout)

    def site_params(self, prepared: Path, site) -> EngineParams:
        with tempfile.TemporaryDirectory(prefix="fusion-openvino-") as scratch:
            out = os.path.join(scratch, "params.npz")
            try:
                run_step(python_child(CHILD) + ["params", str(prepared), out, site.output_name], engine=self.name,
                         stage="reading fused parameters", timeout=self.timeout)
            except EngineFailure as failure:
                raise EngineFailure(self.name, "reading fused parameters", "missing", failure.detail) from None
            with np.load(out) as saved:
                weight, kind = saved["weight"], str(saved["type"])
                bias = saved["bias"] if "bias" in saved.files else None
        if bias is not None and bias.size == 1 and site.c_out > 1:
            bias = np.full(site.c_out, bias[0], bias.dtype)  # one value broadcast to every channel (a scalar Add)
        elif bias is not None and bias.size != site.c_out:
            raise EngineFailure(self.name, "reading fused parameters", "missing",
                                f"the Add after the {kind} holds {bias.size} values, not one a channel: not a bias")
        return EngineParams(w=onnx_layout(weight, kind, site), b=bias, ops=[kind])


def onnx_layout(weight: np.ndarray, kind: str, site) -> np.ndarray:
    """OpenVINO's weight layout in ONNX's: ``GroupConvolution`` ``(G, C_out/G, C_in/G, *k)`` and
    ``GroupConvolutionBackpropData`` ``(G, C_in/G, C_out/G, *k)`` merge their first two axes; the others are ONNX's."""
    if kind.startswith("Group"):
        weight = weight.reshape((weight.shape[0] * weight.shape[1],) + weight.shape[2:])
    if weight.size != site.w.size:
        raise EngineFailure("openvino", "reading fused parameters", "missing",
                            f"the {kind} weight has {weight.size} values, the ONNX weight {site.w.size}")
    return weight.reshape(site.w.shape)
