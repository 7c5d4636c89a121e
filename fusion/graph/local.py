"""A model that computes every node from an engine's own values of the tensors it reads.

Every tensor named in ``given`` becomes a graph input of its own (``ENGINE_PREFIX + name``), and every node that
read it reads that input instead; the nodes in between tensors the engine does not expose are computed as in the
original. Run by the oracle with the engine's values fed, each output is what the unfused model computes from the
engine's inputs to that stage: a stage is judged on its own, whatever happened upstream.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

ENGINE_PREFIX = "fusion.engine/"


def computed_from(model: onnx.ModelProto, given: dict[str, tuple[int, ...]], outputs: list[str]) -> onnx.ModelProto:
    """``model`` with each tensor of ``given`` (name -> shape) read from a new float32 input; ``outputs`` its
    graph outputs."""
    local = onnx.ModelProto()
    local.CopyFrom(model)
    graph = local.graph
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in given:
                node.input[index] = ENGINE_PREFIX + name
    for name, shape in given.items():
        graph.input.append(helper.make_tensor_value_info(ENGINE_PREFIX + name, TensorProto.FLOAT, list(shape)))
    del graph.output[:]
    for name in outputs:
        graph.output.append(onnx.ValueInfoProto(name=name))
    # shapes inferred for the original inputs may not hold for the engine's tensors: let onnxruntime infer again
    del graph.value_info[:]
    return local
