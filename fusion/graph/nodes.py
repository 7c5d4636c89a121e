"""Read ONNX Conv / ConvTranspose / BatchNormalization nodes into the package's keyword arguments."""

from __future__ import annotations

import onnx
from onnx import helper

from fusion.errors import FusionInputError

CONV_OPS = ("Conv", "ConvTranspose")
CONV_ATTRIBUTES = {
    "Conv": {"group", "strides", "pads", "dilations", "auto_pad", "kernel_shape"},
    "ConvTranspose": {"group", "strides", "pads", "dilations", "output_padding", "output_shape", "auto_pad",
                      "kernel_shape"},
}


def node_label(node: onnx.NodeProto) -> str:
    """How messages name a node: its name, or its op type and first output when it has no name."""
    return node.name or f"{node.op_type}->{node.output[0] if node.output else '?'}"


def attributes(node: onnx.NodeProto) -> dict:
    """The node's attributes as Python values, strings decoded."""
    values = {}
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        values[attribute.name] = value.decode() if isinstance(value, bytes) else value
    return values


def conv_keywords(node: onnx.NodeProto) -> dict:
    """Keyword arguments of ``fusion.conv`` / ``fusion.conv_transpose`` for a Conv or ConvTranspose node.

    Unknown attributes are refused, not ignored: an attribute this package does not model could change
    what the node computes.
    """
    if node.op_type not in CONV_OPS:
        raise FusionInputError(f"expected Conv or ConvTranspose, got {node.op_type}", node=node_label(node))
    values = attributes(node)
    unknown = set(values) - CONV_ATTRIBUTES[node.op_type]
    if unknown:
        raise FusionInputError(f"unsupported attribute(s) {sorted(unknown)} on {node.op_type}",
                               node=node_label(node))
    return values


def batch_norm_keywords(node: onnx.NodeProto) -> dict:
    """``epsilon`` of an inference BatchNormalization; training mode is refused (it has no fold)."""
    values = attributes(node)
    if values.get("training_mode", 0):
        raise FusionInputError("training_mode=1 BatchNormalization has no inference fold", node=node_label(node))
    unknown = set(values) - {"epsilon", "momentum", "training_mode", "spatial", "is_test", "consumed_inputs"}
    if unknown:
        raise FusionInputError(f"unsupported attribute(s) {sorted(unknown)} on BatchNormalization",
                               node=node_label(node))
    if values.get("spatial", 1) != 1:
        raise FusionInputError("spatial=0 BatchNormalization (per-element statistics) is not supported",
                               node=node_label(node))
    return {"epsilon": values.get("epsilon", 1e-5)}
