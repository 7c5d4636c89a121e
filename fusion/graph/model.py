"""Load and validate an ONNX model; look up constants and consumers. The input file is only ever read."""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from fusion.errors import FusionInputError


def load(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and check an ONNX model, raising ``FusionInputError`` with a one-line reason."""
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
        raise FusionInputError(f"{path} fails the ONNX checker: {first}") from None
    return model


class Graph:
    """Index of one ONNX graph: constants by tensor name, producer and consumers of each tensor."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.constants: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                for attribute in node.attribute:
                    if attribute.name == "value":
                        self.constants[node.output[0]] = numpy_helper.to_array(attribute.t)
        graph_inputs = {i.name for i in graph.input}
        # an initializer that is also a graph input can be overridden at run time: it is not a constant
        for name in list(self.constants):
            if name in graph_inputs:
                del self.constants[name]
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
