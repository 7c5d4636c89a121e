"""A whole-model engine with planted behaviour, for testing the whole-model judge: it "converts" by folding every
site with this package's fuse pass (plus the planted change) and runs the result, exposing every tensor.

``behaviour``:
- ``none``: a correct converter;
- ``flush_subnormals``: weights below float32's normal range are stored as zero (legitimate);
- ``winograd``: 3x3 stride-1 Convs run as Winograd F(6x6, 3x3) in float32 (legitimate);
- ``broadcast_as_channel``: a Mul/Add constant of C values after a conv is folded per channel even where ONNX
  broadcasts it along another axis (wrong: what MNN 3.6.1 does with a ``[C]`` Add);
- ``bias_in_context``: in a model with more than one conv, the last folded site loses its bias (wrong, and only in
  the whole model: a site cut out alone converts right).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from fusion import ops, winograd
from fusion.bounds import TINY
from fusion.engines.base import EngineFailure, EngineParams
from fusion.engines.onnx_rewriters import onnx_site_params
from fusion.fold import output_channels
from fusion.graph.fuse import fuse_model
from fusion.graph.model import Graph
from fusion.graph.nodes import CONV_OPS, attributes
from fusion.oracle import session

BEHAVIOURS = ("none", "flush_subnormals", "winograd", "broadcast_as_channel", "bias_in_context")


@dataclass
class PlantedConversion:
    path: Path
    model: onnx.ModelProto


class PlantedGraphEngine:
    name = "planted-graph"

    def __init__(self, behaviour: str = "none"):
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {BEHAVIOURS}")
        self.behaviour = behaviour

    def version(self) -> str:
        return f"planted whole-model engine ({self.behaviour})"

    def prepare(self, onnx_path: Path, workdir: Path) -> PlantedConversion:
        model = onnx.load(onnx_path)
        if self.behaviour == "broadcast_as_channel":
            _channel_constants(model)
        fused, _, sites = fuse_model(model)
        convs = [n for n in fused.graph.node if n.op_type in CONV_OPS]
        if self.behaviour == "flush_subnormals":
            for index, tensor in enumerate(fused.graph.initializer):
                array = numpy_helper.to_array(tensor)
                if array.dtype == np.float32 and array.ndim >= 3:
                    flushed = np.where(np.abs(array) < TINY, np.float32(0), array)
                    fused.graph.initializer[index].CopyFrom(numpy_helper.from_array(flushed, tensor.name))
        if self.behaviour == "bias_in_context" and len(convs) > 1 and sites:
            bias_name = f"{sites[-1].conv_output}.folded_b"
            for index, tensor in enumerate(fused.graph.initializer):
                if tensor.name == bias_name:
                    zero = np.zeros_like(numpy_helper.to_array(tensor))
                    fused.graph.initializer[index].CopyFrom(numpy_helper.from_array(zero, tensor.name))
        path = Path(workdir) / (Path(onnx_path).stem + ".planted.onnx")
        onnx.save(fused, path)
        return PlantedConversion(path, fused)

    def load(self, artifact: Path, workdir: Path) -> PlantedConversion:
        return PlantedConversion(Path(artifact), onnx.load(artifact))

    def tensor_names(self, prepared: PlantedConversion) -> set[str]:
        return {name for node in prepared.model.graph.node for name in node.output}

    def run(self, prepared: PlantedConversion, feeds: dict, output: str) -> np.ndarray:
        return self.run_many(prepared, feeds, [output])[output]

    def run_many(self, prepared: PlantedConversion, feeds: dict, outputs: list[str]) -> dict[str, np.ndarray]:
        model = onnx.ModelProto()
        model.CopyFrom(prepared.model)
        declared = {o.name for o in model.graph.output}
        model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in outputs if n not in declared)
        try:
            if self.behaviour == "winograd":
                from onnx.reference import ReferenceEvaluator

                values = ReferenceEvaluator(model, new_ops=list(_winograd_ops())).run(outputs, feeds)
            else:
                values = session(model).run(outputs, feeds)
        except Exception as error:  # either runtime raises its own types
            raise EngineFailure(self.name, "running", "error", str(error).splitlines()[0]) from None
        return {name: np.asarray(value, np.float32) for name, value in zip(outputs, values)}

    def site_params(self, prepared: PlantedConversion, site) -> EngineParams:
        return onnx_site_params(prepared.path, site, self.name)


def _channel_constants(model: onnx.ModelProto) -> None:
    """Reshape each Mul/Add constant of C values that follows a conv to ``(1, C, 1, ...)``: the wrong fold."""
    graph = Graph(model)
    for node in model.graph.node:
        if node.op_type not in ("Mul", "Add"):
            continue
        producer = graph.producer.get(node.input[0])
        if producer is None or producer.op_type not in CONV_OPS or len(node.input) != 2:
            continue
        weight = graph.constant(producer.input[1])
        channels = output_channels(weight.shape, group=attributes(producer).get("group", 1),
                                   transposed=producer.op_type == "ConvTranspose")
        constant = graph.constant(node.input[1])
        if constant is None or constant.size != channels:
            continue
        per_channel = constant.reshape((1, channels) + (1,) * (weight.ndim - 2))
        for index, tensor in enumerate(model.graph.initializer):
            if tensor.name == node.input[1]:
                model.graph.initializer[index].CopyFrom(numpy_helper.from_array(per_channel, tensor.name))


def winograd_conv_2d(x: np.ndarray, w: np.ndarray, b, pads) -> np.ndarray:
    """A 3x3 stride-1 Conv as Winograd F(6x6, 3x3) on the points 0, +-1, +-2, +-3, computed in float32 (the largest
    tile MNN uses, and its least accurate point set)."""
    t = winograd.transforms(6, 3, 1.0)
    m, alpha = t.m, t.alpha
    AT, G, BT = (m_.astype(np.float32) for m_ in (t.AT, t.G, t.BT))
    batch, c_in, height, width = x.shape
    out_h, out_w = height + pads[0] + pads[2] - 2, width + pads[1] + pads[3] - 2
    tiles_y, tiles_x = math.ceil(out_h / m), math.ceil(out_w / m)
    padded = np.zeros((batch, c_in, (tiles_y - 1) * m + alpha, (tiles_x - 1) * m + alpha), np.float32)
    rows, cols = min(height, padded.shape[2] - pads[0]), min(width, padded.shape[3] - pads[1])
    padded[:, :, pads[0]:pads[0] + rows, pads[1]:pads[1] + cols] = x[:, :, :rows, :cols]
    s = padded.strides
    tiles = np.lib.stride_tricks.as_strided(padded, (batch, c_in, tiles_y, tiles_x, alpha, alpha),
                                            (s[0], s[1], s[2] * m, s[3] * m, s[2], s[3]))
    data = np.einsum("ap,nctupq,bq->abnctu", BT, tiles, BT).astype(np.float32)
    filters = np.einsum("ak,oikl,bl->aboi", G, w.astype(np.float32), G).astype(np.float32)
    summed = np.einsum("aboi,abnitu->abnotu", filters, data).astype(np.float32)
    out = np.einsum("ia,abnotu,jb->notiuj", AT, summed, AT).astype(np.float32)
    out = out.reshape(batch, w.shape[0], tiles_y * m, tiles_x * m)[:, :, :out_h, :out_w]
    return out + (0 if b is None else b.astype(np.float32).reshape(1, -1, 1, 1))


def _winograd_ops():
    """Conv as Winograd where it applies, this package's kernels elsewhere (onnx's reference ConvTranspose is
    wrong for group > 1)."""
    from onnx.reference.op_run import OpRun

    class Conv(OpRun):  # the class name is the op it replaces
        op_domain = ""

        def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None, kernel_shape=None, pads=None,
                 strides=None):
            group = group or 1
            square = W.ndim == 4 and W.shape[2:] == (3, 3) and group == 1 and auto_pad in (None, "NOTSET")
            if square and all(s == 1 for s in strides or [1, 1]) and all(d == 1 for d in dilations or [1, 1]):
                return (winograd_conv_2d(X, W, B, pads or [0, 0, 0, 0]),)
            keywords = {k: v for k, v in dict(auto_pad=auto_pad, dilations=dilations, group=group, pads=pads,
                                               strides=strides).items() if v is not None}
            return (ops.conv(X, W, B, **keywords),)

    class ConvTranspose(OpRun):
        op_domain = ""

        def _run(self, X, W, B=None, **attributes):
            keywords = {k: v for k, v in attributes.items() if v is not None and k != "kernel_shape"}
            return (ops.conv_transpose(X, W, B, **keywords),)

    return Conv, ConvTranspose
