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
from onnx import external_data_helper, numpy_helper

from fusion.errors import FusionInputError
from fusion.oracle import first_line, runnable


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
    except Exception as exc:  # protobuf raises its own DecodeError types, and worse on damaged bytes
        raise FusionInputError(f"{path} is not an ONNX model ({type(exc).__name__}: {first_line(exc)})") from None
    if not model.graph.node:
        raise FusionInputError(f"{path} is not an ONNX model with a graph (no nodes found)")
    if not model.graph.output:
        raise FusionInputError(f"{path} declares no graph outputs: there is nothing to judge")
    if any(uses_external_data(t) for t in stored_tensors(model)):
        try:  # onnx refuses locations outside the model's folder and reads no more than the file holds
            external_data_helper.load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
        except Exception as exc:
            raise FusionInputError(f"{path}: its external data cannot be read ({first_line(exc)})") from None
    _decode_constants(model, path)
    try:
        onnx.checker.check_model(model)
        checked = None
    except Exception as exc:  # ValidationError, and UnicodeDecodeError on a damaged string field
        checked = first_line(exc)
    refused = runnable(model)
    if refused is not None:
        reason = f"fails the ONNX checker ({checked}) and onnxruntime" if checked else "passes the ONNX checker " \
            "but onnxruntime"
        raise FusionInputError(f"{path} {reason} cannot load it ({refused})") from None
    nested = [n for node in model.graph.node for sub in subgraphs(node) for n in all_nodes(sub)
              if n.op_type in ("Conv", "ConvTranspose")]
    if nested and notes is not None:
        notes.append(f"{len(nested)} Conv/ConvTranspose node(s) inside If/Loop/Scan bodies are not judged as sites "
                     "(only the graph outputs they feed are compared)")
    if checked and notes is not None:
        notes.append(f"the ONNX checker rejects the model ({checked}); onnxruntime runs it, so it is judged")
    if notes is not None:
        listed = inputs_with_initializers(model)
        if listed:
            notes.append(f"{len(listed)} initializer(s) are also listed among the graph inputs (the convention of old "
                         "exporters): judged as constants with their stored values, as onnxruntime runs them when "
                         "they are not fed")
    return model


def subgraphs(node: onnx.NodeProto):
    """The bodies of an If, Loop or Scan node."""
    for attribute in node.attribute:
        yield from [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs


def all_nodes(graph: onnx.GraphProto):
    """The nodes of ``graph`` and of every subgraph inside it (a body may read the outer graph's tensors)."""
    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from all_nodes(sub)


def stored_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t


def uses_external_data(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _decode_constants(model: onnx.ModelProto, path: str) -> None:
    """Every initializer and Constant value must decode to an array of its declared shape."""
    for node in model.graph.node:
        if node.op_type == "Constant":
            try:
                _constant_value(node)
            except Exception as exc:  # numpy_helper raises ValueError, TypeError or its own
                raise FusionInputError(f"{path}: the value of Constant node {node.name or node.output[0]!r} cannot "
                                       f"be read ({first_line(exc)})") from None
    for tensor in model.graph.initializer:
        try:
            numpy_helper.to_array(tensor)
        except Exception as exc:
            raise FusionInputError(f"{path}: initializer {tensor.name!r} (dims {list(tensor.dims)}) cannot be read "
                                   f"({first_line(exc)})") from None


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
