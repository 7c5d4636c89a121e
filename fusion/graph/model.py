"""Load and validate an ONNX model; look up constants and consumers. The input file is only ever read.

Models as real exporters write them are read the way onnxruntime runs them: an initializer that is also listed among
the graph inputs (the IR < 4 convention of old exporters) is a constant with its stored value; a value reached through
``Constant`` or ``Identity`` nodes is a constant; a model the ONNX checker rejects on a technicality (a graph output
declared without a shape) is accepted when onnxruntime loads it, with a note.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from fusion.errors import FusionInputError
from fusion.oracle import runnable


def load(path: str | os.PathLike, notes: list[str] | None = None) -> onnx.ModelProto:
    """Read and check an ONNX model, raising ``FusionInputError`` with a one-line reason.

    ``notes``: where to say what was accepted that the ONNX checker rejects, and how constants were read."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FusionInputError(f"no such file: {path}")
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises its own DecodeError types
        raise FusionInputError(f"{path} is not an ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node:
        raise FusionInputError(f"{path} is not an ONNX model with a graph (no nodes found)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        refused = runnable(model)
        if refused is not None:
            raise FusionInputError(f"{path} fails the ONNX checker ({first}) and onnxruntime cannot load it "
                                   f"({refused})") from None
        if notes is not None:
            notes.append(f"the ONNX checker rejects the model ({first}); onnxruntime runs it, so it is judged")
    if notes is not None:
        listed = inputs_with_initializers(model)
        if listed:
            notes.append(f"{len(listed)} initializer(s) are also listed among the graph inputs (the convention of old "
                         "exporters): judged as constants with their stored values, as onnxruntime runs them when "
                         "they are not fed")
    return model


def inputs_with_initializers(model: onnx.ModelProto) -> list[str]:
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name in initializers]


class Graph:
    """Index of one ONNX graph: constants by tensor name, producer and consumers of each tensor."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        # an initializer also listed as a graph input could be fed at run time, but nobody feeds weights: like
        # onnxruntime, take its stored value
        self.constants: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:  # graph order is topological: an Identity's constant input is already known
            if node.op_type == "Constant" and node.output:
                value = _constant_value(node)
                if value is not None:
                    self.constants[node.output[0]] = value
            elif node.op_type == "Identity" and node.input and node.input[0] in self.constants:
                self.constants[node.output[0]] = self.constants[node.input[0]]
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}
        self.inputs = [i for i in graph.input if i.name not in self.constants
                       and i.name not in {t.name for t in graph.initializer}]

    def constant(self, name: str) -> np.ndarray | None:
        return self.constants.get(name)

    def only_consumer(self, tensor: str) -> onnx.NodeProto | None:
        """The single node reading ``tensor``, if exactly one does and the tensor is not a graph output."""
        consumers = self.consumers.get(tensor, [])
        if len(consumers) != 1 or tensor in self.outputs:
            return None
        return consumers[0]


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attribute in node.attribute:
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        if attribute.name == "value_float":
            return np.asarray(attribute.f, np.float32)
        if attribute.name == "value_floats":
            return np.asarray(list(attribute.floats), np.float32)
    return None
