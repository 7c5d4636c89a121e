"""Build small ONNX models around one site: from a generated ``SiteSpec``, or cut out of a larger model.

Tensor and node names are kept when cutting, so the converter names its fused op as it would in the full
model (MNN names it after the conv's output tensor).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fusion import attrs
from fusion.graph.model import Graph
from fusion.graph.sites import Site, site_geometry

OPSET = 17


def _model(input_name: str, input_shape, nodes, constants: dict, output_name: str, output_shape,
           name: str, more_outputs: tuple[str, ...] = (), more_shape=None) -> onnx.ModelProto:
    """``more_outputs``: further graph outputs, each of shape ``more_shape``."""
    graph = helper.make_graph(
        nodes, name or "site", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, list(output_shape))]
        + [helper.make_tensor_value_info(extra, TensorProto.FLOAT, list(more_shape)) for extra in more_outputs],
        [numpy_helper.from_array(np.asarray(value, np.float32), key) for key, value in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fusion")
    model.ir_version = min(model.ir_version, 9)  # readable by older runtimes and converters
    return model


def cut_site(site: Site, model: onnx.ModelProto, input_shape) -> onnx.ModelProto:
    """A model holding only ``site`` (conv and tail nodes, their constants), fed by ``site.input_name``."""
    graph = Graph(model)
    nodes = [site.conv] + site.tail_nodes
    constants = {name: graph.constant(name) for node in nodes for name in node.input
                 if name and graph.constant(name) is not None}
    geometry = site_geometry(site, input_shape)
    output_shape = (geometry.batch, geometry.c_out) + geometry.output_shape
    return _model(site.input_name, input_shape, [_copy(n) for n in nodes], constants, site.output_name,
                  output_shape, f"site_{site.index}")


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    clone = onnx.NodeProto()
    clone.CopyFrom(node)
    return clone


@dataclass
class SiteSpec:
    """A generated single-site model: one Conv/ConvTranspose with an optional tail, random parameters.

    ``attributes`` uses ONNX names (strides, pads, dilations, output_padding, output_shape, auto_pad);
    ``tail`` is one of none, bn, mul_add (Mul then Add), mul, add. The context a converter must respect:
    ``constant_shape`` is how the Mul/Add constants are shaped (``CONSTANT_SHAPES``: only ``channel``,
    ``channel_short`` and ``scalar`` are per-channel under ONNX broadcasting); ``conv_output_use`` says whether the
    conv's output is read by the tail alone (``single``), is a graph output too (``graph_output``) or feeds a second
    node (``second_consumer``, a Relu whose output is a graph output); ``params_via`` is how the tail's parameters
    reach it (initializers, ``Constant`` nodes, or initializers through ``Identity`` nodes).
    """

    op: str
    input_shape: tuple[int, ...]
    c_out: int
    group: int
    kernel_shape: tuple[int, ...]
    attributes: dict = field(default_factory=dict)
    bias: bool = True
    tail: str = "bn"
    seed: int = 0
    name: str = ""
    bn_epsilon: float | None = 1e-5  # None: the BatchNormalization has no epsilon attribute (ONNX default 1e-5)
    constant_shape: str = "channel"
    conv_output_use: str = "single"
    params_via: str = "initializer"

    @property
    def plain_context(self) -> bool:
        """True when the site can be judged cut out: no tail, or per-channel constants held in initializers and the
        conv's output read by its tail alone."""
        return self.tail == "none" or (self.constant_shape in ("channel", "channel_short", "scalar")
                                       and self.conv_output_use == "single" and self.params_via == "initializer")

    @property
    def transposed(self) -> bool:
        return self.op == "ConvTranspose"

    @property
    def weight_shape(self) -> tuple[int, ...]:
        c_in = self.input_shape[1]
        if self.transposed:
            return (c_in, self.c_out // self.group) + tuple(self.kernel_shape)
        return (self.c_out, c_in // self.group) + tuple(self.kernel_shape)

    def geometry(self) -> attrs.ConvGeometry:
        return attrs.resolve(self.input_shape, self.weight_shape, transposed=self.transposed, group=self.group,
                             **self.attributes)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        data["kernel_shape"] = list(self.kernel_shape)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "SiteSpec":
        data = dict(data)
        data["input_shape"] = tuple(data["input_shape"])
        data["kernel_shape"] = tuple(data["kernel_shape"])
        return cls(**data)


CONSTANT_SHAPES = ("channel", "channel_short", "scalar", "last_axis", "leading", "width")
CONV_OUTPUT_USES = ("single", "graph_output", "second_consumer")
PARAMS_VIA = ("initializer", "constant", "identity")


def constant_shape(kind: str, channels: int, rank: int, output_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of a Mul/Add constant of ``kind`` on a ``(N, C, *S)`` tensor of spatial ``output_shape``:
    ``channel`` (1, C, 1...), ``channel_short`` (C, 1...) (per channel too), ``scalar`` (), ``last_axis`` (S[-1],)
    (broadcast along the last axis: ``[C]`` on NCHW runs along W), ``leading`` (C, 1, 1...) with rank + 1 ones
    (along the batch axis), ``width`` (1, 1, ..., S[-1])."""
    return {"channel": (1, channels) + (1,) * rank, "channel_short": (channels,) + (1,) * rank, "scalar": (),
            "last_axis": (output_shape[-1],), "leading": (channels,) + (1,) * (rank + 1),
            "width": (1,) * (rank + 1) + (output_shape[-1],)}[kind]


def _signed(rng, low, high, size):
    return rng.uniform(low, high, size) * rng.choice([-1.0, 1.0], size)


def build(spec: SiteSpec) -> onnx.ModelProto:
    """The ONNX model of ``spec``: input ``x``, conv node ``conv`` -> ``conv_out``, tail nodes, output ``y``."""
    geometry = spec.geometry()  # raises FusionInputError for a spec that does not fit
    rng = np.random.default_rng(spec.seed)
    rank = len(spec.input_shape) - 2
    w_shape = spec.weight_shape
    fan_in = int(np.prod(w_shape[1:])) if not spec.transposed else int(np.prod(w_shape[:1] + w_shape[2:])) // spec.group
    constants = {"w": rng.standard_normal(w_shape) / np.sqrt(max(fan_in, 1))}
    inputs = ["x", "w"]
    if spec.bias:
        constants["b"] = rng.standard_normal(spec.c_out) * 0.5
        inputs.append("b")
    conv_attributes = {"group": spec.group, "kernel_shape": list(spec.kernel_shape)}
    conv_attributes.update({k: v for k, v in spec.attributes.items() if v is not None})
    conv_output = "conv_out" if spec.tail != "none" else "y"
    nodes = [helper.make_node(spec.op, inputs, [conv_output], name="conv", **conv_attributes)]
    shaped = constant_shape(spec.constant_shape, spec.c_out, rank, geometry.output_shape)
    size = int(np.prod(shaped))
    if spec.tail == "bn":
        constants.update(bn_scale=_signed(rng, 0.5, 2.0, spec.c_out), bn_bias=rng.standard_normal(spec.c_out),
                         bn_mean=rng.standard_normal(spec.c_out) * 0.5, bn_var=rng.uniform(0.2, 2.0, spec.c_out))
        epsilon = {} if spec.bn_epsilon is None else {"epsilon": spec.bn_epsilon}
        nodes.append(helper.make_node("BatchNormalization", [conv_output, "bn_scale", "bn_bias", "bn_mean", "bn_var"],
                                      ["y"], name="bn", **epsilon))
    elif spec.tail in ("mul_add", "mul"):
        constants["mul_scale"] = _signed(rng, 0.5, 2.0, size).reshape(shaped)
        mul_output = "y" if spec.tail == "mul" else "mul_out"
        nodes.append(helper.make_node("Mul", [conv_output, "mul_scale"], [mul_output], name="mul"))
        if spec.tail == "mul_add":
            constants["add_bias"] = rng.standard_normal(size).reshape(shaped)
            nodes.append(helper.make_node("Add", [mul_output, "add_bias"], ["y"], name="add"))
    elif spec.tail == "add":
        constants["add_bias"] = rng.standard_normal(size).reshape(shaped)
        nodes.append(helper.make_node("Add", [conv_output, "add_bias"], ["y"], name="add"))
    elif spec.tail != "none":
        raise ValueError(f"unknown tail {spec.tail!r}")
    more_outputs = ()
    if spec.tail != "none" and spec.conv_output_use == "graph_output":
        more_outputs = (conv_output,)
    elif spec.tail != "none" and spec.conv_output_use == "second_consumer":
        nodes.append(helper.make_node("Relu", [conv_output], ["relu_out"], name="relu"))
        more_outputs = ("relu_out",)
    if spec.params_via != "initializer":
        nodes = _params_through_nodes(nodes, constants, spec.params_via)
    conv_shape = (geometry.batch, geometry.c_out) + geometry.output_shape
    # a constant broadcast along the batch axis makes the output larger than the conv's
    output_shape = np.broadcast_shapes(conv_shape, shaped) if spec.tail in ("mul", "mul_add", "add") else conv_shape
    return _model("x", spec.input_shape, nodes, constants, "y", output_shape, spec.name or "site", more_outputs,
                  conv_shape)


def _params_through_nodes(nodes: list, constants: dict, via: str) -> list:
    """The tail's parameters (everything but ``w`` and ``b``) moved into ``Constant`` nodes, or read through
    ``Identity`` nodes from their initializers, as exporters write them."""
    moved = [name for name in constants if name not in ("w", "b")]
    front = []
    for name in moved:
        if via == "constant":
            value = np.asarray(constants.pop(name), np.float32)
            front.append(helper.make_node("Constant", [], [f"{name}_const"], name=f"{name}_constant",
                                          value=numpy_helper.from_array(value, f"{name}_value")))
            renamed = f"{name}_const"
        else:
            front.append(helper.make_node("Identity", [name], [f"{name}_id"], name=f"{name}_identity"))
            renamed = f"{name}_id"
        for node in nodes:
            for index, value in enumerate(node.input):
                if value == name:
                    node.input[index] = renamed
    return front + nodes
