"""Damaged and hostile ONNX models for the fuzz harness: protobuf-level mutations and byte-level damage.

``mutate(model_bytes, rng)`` returns ``(kind, data)``: one mutation drawn from ``MUTATIONS`` (attributes, shapes,
initializers, graph wiring, domains and opsets, non-finite values) or from ``BYTE_DAMAGE`` (flips, truncations,
garbage), applied to a serialized model. Every mutation keeps the file small: a hostile *declared* size is the point,
never a large file.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HUGE = 200_000


def _pick(rng, items):
    return items[int(rng.integers(len(items)))]


def _conv_nodes(model):
    return [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")] or list(model.graph.node)


# -- attributes -------------------------------------------------------------------------------------------------
def attribute_value(model, rng):
    node = _pick(rng, _conv_nodes(model))
    if not node.attribute:
        node.attribute.append(helper.make_attribute("group", int(rng.integers(-3, 9))))
        return
    attribute = _pick(rng, list(node.attribute))
    value = _pick(rng, [0, -1, -(2 ** 31), 2 ** 31, 2 ** 62, 3, 7, HUGE])
    if attribute.type == onnx.AttributeProto.INTS:
        ints = list(attribute.ints) or [1]
        ints[int(rng.integers(len(ints)))] = value
        del attribute.ints[:]
        attribute.ints.extend(ints)
    elif attribute.type == onnx.AttributeProto.INT:
        attribute.i = value
    elif attribute.type == onnx.AttributeProto.FLOAT:
        attribute.f = float(_pick(rng, [np.nan, np.inf, -np.inf, -1.0, 0.0, 1e38]))
    elif attribute.type == onnx.AttributeProto.STRING:
        attribute.s = _pick(rng, [b"", b"SAME_UPPER", b"\xff\xfe", b"VALID", b"bogus"])


def attribute_length(model, rng):
    node = _pick(rng, _conv_nodes(model))
    ints = [a for a in node.attribute if a.type == onnx.AttributeProto.INTS]
    if not ints:
        node.attribute.append(helper.make_attribute("strides", [2] * int(rng.integers(0, 6))))
        return
    attribute = _pick(rng, ints)
    length = int(rng.integers(0, 9))
    del attribute.ints[:]
    attribute.ints.extend(int(v) for v in rng.integers(-2, 4, length))


def attribute_type(model, rng):
    node = _pick(rng, _conv_nodes(model))
    name = _pick(rng, ["group", "strides", "pads", "dilations", "auto_pad", "output_padding", "epsilon",
                       "output_shape", "kernel_shape"])
    for index, attribute in enumerate(node.attribute):
        if attribute.name == name:
            del node.attribute[index]
            break
    node.attribute.append(_pick(rng, [helper.make_attribute(name, 1.5), helper.make_attribute(name, "x"),
                                      helper.make_attribute(name, [1.0, 2.0]), helper.make_attribute(name, [b"a"]),
                                      helper.make_attribute(name, 4)]))


def attribute_removed_or_unknown(model, rng):
    node = _pick(rng, list(model.graph.node))
    if node.attribute and rng.random() < 0.5:
        del node.attribute[int(rng.integers(len(node.attribute)))]
    else:
        node.attribute.append(helper.make_attribute("no_such_attribute", 1))


# -- shapes ---------------------------------------------------------------------------------------------------------
def input_shape(model, rng):
    value = _pick(rng, list(model.graph.input))
    dims = value.type.tensor_type.shape.dim
    choice = int(rng.integers(6))
    if choice == 0 and dims:  # the escape of the issue: a huge declared input
        for d in list(dims)[2:]:
            d.dim_value = HUGE
    elif choice == 1 and dims:
        _pick(rng, list(dims)).dim_value = int(_pick(rng, [0, HUGE, 2 ** 40]))
    elif choice == 2 and dims:
        _pick(rng, list(dims)).dim_param = _pick(rng, ["N", "", "height"])
    elif choice == 3:
        dims.add().dim_value = int(rng.integers(1, 4))
    elif choice == 4 and dims:
        del dims[int(rng.integers(len(dims)))]
    else:
        value.type.tensor_type.elem_type = int(_pick(rng, [TensorProto.INT64, TensorProto.DOUBLE,
                                                           TensorProto.FLOAT16, TensorProto.STRING, 0, 99]))


def output_shape(model, rng):
    value = _pick(rng, list(model.graph.output))
    dims = value.type.tensor_type.shape.dim
    if dims:
        _pick(rng, list(dims)).dim_value = int(_pick(rng, [1, 3, HUGE]))
    value.type.tensor_type.elem_type = int(_pick(rng, [TensorProto.FLOAT, TensorProto.INT32]))


# -- initializers --------------------------------------------------------------------------------------------------
def _initializer(model, rng):
    return _pick(rng, list(model.graph.initializer)) if model.graph.initializer else None


def initializer_dims(model, rng):
    tensor = _initializer(model, rng)
    if tensor is None:
        return
    dims = list(tensor.dims) or [1]
    dims[int(rng.integers(len(dims)))] = int(_pick(rng, [0, 1, HUGE, 2 ** 33]))
    del tensor.dims[:]
    tensor.dims.extend(dims)


def initializer_data(model, rng):
    tensor = _initializer(model, rng)
    if tensor is None:
        return
    choice = int(rng.integers(5))
    if choice == 0 and tensor.raw_data:
        tensor.raw_data = tensor.raw_data[: int(rng.integers(len(tensor.raw_data)))]
    elif choice == 1:
        tensor.data_type = int(_pick(rng, [TensorProto.INT64, TensorProto.DOUBLE, TensorProto.STRING,
                                           TensorProto.BFLOAT16, 0, 77]))
    elif choice == 2:  # external data: a missing file, or a path outside the model's folder
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", _pick(rng, ["missing.bin", "../../../../etc/passwd", "/dev/zero"])
    elif choice == 3:
        del model.graph.initializer[list(model.graph.initializer).index(tensor)]
    else:
        model.graph.initializer.append(tensor)  # the same name twice


def non_finite(model, rng):
    """NaN or Inf in a weight, bias or BN statistic."""
    tensor = _initializer(model, rng)
    if tensor is None:
        return
    array = numpy_helper.to_array(tensor).astype(np.float32).copy()
    if array.size == 0:
        return
    flat = array.reshape(-1)
    flat[rng.integers(flat.size, size=int(rng.integers(1, 3)))] = _pick(rng, [np.nan, np.inf, -np.inf])
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def negative_variance(model, rng):
    variances = [t for t in model.graph.initializer if "var" in t.name]
    if not variances:
        return non_finite(model, rng)
    tensor = _pick(rng, variances)
    array = -np.abs(numpy_helper.to_array(tensor)) - 1
    tensor.CopyFrom(numpy_helper.from_array(array.astype(np.float32), tensor.name))


# -- wiring --------------------------------------------------------------------------------------------------------
def cycle(model, rng):
    nodes = list(model.graph.node)
    if len(nodes) < 2:
        nodes[0].input[0] = nodes[0].output[0]
        return
    first, last = sorted(rng.choice(len(nodes), 2, replace=False))
    nodes[first].input[0] = nodes[last].output[0]


def duplicate_output(model, rng):
    nodes = list(model.graph.node)
    target, source = _pick(rng, nodes), _pick(rng, nodes)
    target.output[0] = source.output[0] if target is not source else model.graph.input[0].name
    if rng.random() < 0.5:
        model.graph.output.append(model.graph.output[0])


def dangling_input(model, rng):
    node = _pick(rng, list(model.graph.node))
    node.input[int(rng.integers(len(node.input)))] = _pick(rng, ["nowhere", "", model.graph.output[0].name])


def graph_output(model, rng):
    choice = int(rng.integers(3))
    if choice == 0:
        model.graph.output[0].name = "nowhere"
    elif choice == 1:
        del model.graph.output[:]
    else:
        model.graph.output.append(helper.make_tensor_value_info(model.graph.input[0].name, TensorProto.FLOAT, None))


def nodes_removed_or_reversed(model, rng):
    nodes = list(model.graph.node)
    if rng.random() < 0.5:
        del model.graph.node[int(rng.integers(len(nodes)))]
    else:
        del model.graph.node[:]
        model.graph.node.extend(reversed(nodes))


def unknown_domain(model, rng):
    node = _pick(rng, list(model.graph.node))
    if rng.random() < 0.5:
        node.domain = _pick(rng, ["com.evil", "ai.onnx.ml", "com.microsoft"])
    else:
        node.op_type = _pick(rng, ["NoSuchOp", "ConvTranspose2", "conv", ""])


def opset(model, rng):
    choice = int(rng.integers(4))
    if choice == 0:
        model.opset_import[0].version = int(_pick(rng, [1, 6, 7, 9, 10]))
    elif choice == 1:
        del model.opset_import[:]
    elif choice == 2:
        model.opset_import[0].version = int(_pick(rng, [99, 2 ** 40]))
    else:
        model.ir_version = int(_pick(rng, [0, 1, 3, 100]))


def nested_graph(model, rng):
    """A node with a subgraph attribute (an If around the model), which no converter site can be."""
    inner = helper.make_graph(list(model.graph.node), "inner", [], list(model.graph.output))
    condition = numpy_helper.from_array(np.array(True), "condition")
    wrapper = helper.make_node("If", ["condition"], [o.name for o in model.graph.output], then_branch=inner,
                               else_branch=inner)
    del model.graph.node[:]
    model.graph.node.append(wrapper)
    model.graph.initializer.append(condition)


MUTATIONS = {f.__name__: f for f in (attribute_value, attribute_length, attribute_type, attribute_removed_or_unknown,
                                      input_shape, output_shape, initializer_dims, initializer_data, non_finite,
                                      negative_variance, cycle, duplicate_output, dangling_input, graph_output,
                                      nodes_removed_or_reversed, unknown_domain, opset, nested_graph)}


# -- bytes ---------------------------------------------------------------------------------------------------------
def flip_bytes(data: bytes, rng) -> bytes:
    buffer = bytearray(data)
    for position in rng.integers(len(buffer), size=int(rng.integers(1, 9))):
        buffer[position] ^= 1 << int(rng.integers(8))
    return bytes(buffer)


def truncate(data: bytes, rng) -> bytes:
    return data[: int(rng.integers(len(data)))]


def garbage(data: bytes, rng) -> bytes:
    choice = int(rng.integers(3))
    if choice == 0:
        return rng.bytes(int(rng.integers(1, 4096)))
    if choice == 1:
        return b""
    return data + rng.bytes(int(rng.integers(1, 64)))


BYTE_DAMAGE = {f.__name__: f for f in (flip_bytes, truncate, garbage)}


def mutate(data: bytes, rng) -> tuple[str, bytes]:
    """One mutation of the serialized model ``data``: its name and the damaged bytes (some mutations give a model
    that is still valid: the harness expects a verdict or a one-line error, never a traceback)."""
    names = list(MUTATIONS) + list(BYTE_DAMAGE)
    weights = np.array([1.0] * len(MUTATIONS) + [2.0] * len(BYTE_DAMAGE))
    name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    if name in BYTE_DAMAGE:
        return name, BYTE_DAMAGE[name](data, rng)
    model = onnx.load_from_string(data)
    MUTATIONS[name](model, rng)
    return name, model.SerializeToString()
