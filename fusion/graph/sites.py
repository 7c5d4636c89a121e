"""Find fusion sites: a Conv or ConvTranspose, and the BatchNormalization or per-channel Mul/Add that follows it.

A tail joins a site only when it is the sole consumer of the tensor before it and that tensor is not a graph
output, which is when a converter may fold it. Every Conv/ConvTranspose is a site, with or without a tail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from fusion import attrs, ops
from fusion.affine import ChannelAffine, batch_norm_affine
from fusion.errors import FusionInputError
from fusion.fold import output_channels
from fusion.graph.model import Graph
from fusion.graph.nodes import CONV_OPS, batch_norm_keywords, conv_keywords, node_label

TAILS = ("none", "bn", "mul_add", "mul", "add")


@dataclass
class Site:
    """One Conv/ConvTranspose with its optional tail, and everything needed to judge it.

    ``w`` is in the ONNX layout of ``op`` (ConvTranspose ``(C_in, C_out/group, *k)``, Conv
    ``(C_out, C_in/group, *k)``); ``affine`` is the tail as a per-channel map (``None`` when there is none).
    """

    index: int
    op: str
    conv: onnx.NodeProto
    tail_nodes: list[onnx.NodeProto]
    tail: str
    w: np.ndarray
    b: np.ndarray | None
    affine: ChannelAffine | None
    attributes: dict
    input_name: str
    conv_output: str
    output_name: str
    relu_output: str | None = None  # output of a Relu that alone reads the site's output (engines fuse it too)
    batch_norm: dict | None = None  # scale, bias, mean, var, epsilon and whether epsilon was given, for a BN tail

    @property
    def transposed(self) -> bool:
        return self.op == "ConvTranspose"

    @property
    def rank(self) -> int:
        return self.w.ndim - 2

    @property
    def group(self) -> int:
        return int(self.attributes.get("group", 1))

    @property
    def c_out(self) -> int:
        return output_channels(self.w.shape, group=self.group, transposed=self.transposed)

    @property
    def c_in(self) -> int:
        return self.w.shape[0] if self.transposed else self.w.shape[1] * self.group

    def convolve(self, x, w, b) -> np.ndarray:
        """This site's Conv/ConvTranspose of ``x`` with weights ``w`` and bias ``b`` (None: no bias), in float64."""
        return ops.fast_kernels_in_float64(x, w, b, transposed=self.transposed, **self.attributes)

    @property
    def label(self) -> str:
        return " + ".join(node_label(n) for n in [self.conv] + self.tail_nodes)

    def describe(self) -> str:
        """``ConvTranspose2d g4 8->12 k3 s2 + BatchNormalization``: the site's shape at a glance."""
        parts = [f"{self.op}{self.rank}d", f"g{self.group}", f"{self.c_in}->{self.c_out}",
                 "k" + "x".join(str(k) for k in self.w.shape[2:])]
        strides = self.attributes.get("strides")
        if strides and any(s != 1 for s in strides):
            parts.append("s" + "x".join(str(s) for s in strides))
        if self.b is None:
            parts.append("no-bias")
        names = {"none": "", "bn": "BatchNormalization", "mul_add": "Mul + Add", "mul": "Mul", "add": "Add"}
        tail = " + ".join(names[kind] for kind in self.tail.split("+") if names[kind])
        return " ".join(parts) + (f" + {tail}" if tail else "")


def _channel_constant(graph: Graph, node: onnx.NodeProto, data_name: str, channels: int, rank: int):
    """The per-channel vector of a Mul/Add's constant operand, or None if it is not per-channel."""
    others = [name for name in node.input if name != data_name]
    if len(others) != 1 or list(node.input).count(data_name) != 1:
        return None
    value = graph.constant(others[0])
    if value is None or value.dtype.kind != "f" or value.ndim > rank + 2:
        return None
    shape = (1,) * (rank + 2 - value.ndim) + value.shape
    if shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1).astype(np.float64), (channels,)).copy()


def _chain(graph: Graph, conv_output: str, channels: int, rank: int):
    """Follow the conv output through every per-channel affine node in a row (BN, Mul, Add: PaddleOCR exports an
    Add, then a BatchNormalization), composed: ``(kind, nodes, affine, output_name)``; kind ``add+bn`` for two."""
    kinds, nodes, affine, output = [], [], None, conv_output
    while True:
        kind, more, step, after = _tail(graph, output, channels, rank)
        if kind == "none":
            break
        kinds.append(kind)
        nodes += more
        affine = step if affine is None else affine.then(step)
        output = after
    return ("+".join(kinds) or "none"), nodes, affine, output


def _tail(graph: Graph, conv_output: str, channels: int, rank: int):
    """Follow the conv output through BN, or Mul and/or Add: ``(kind, nodes, affine, output_name)``."""
    node = graph.only_consumer(conv_output)
    if node is None:
        return "none", [], None, conv_output
    if node.op_type == "BatchNormalization" and len(node.input) == 5 and node.input[0] == conv_output:
        params = [graph.constant(name) for name in node.input[1:]]
        if any(p is None for p in params):
            return "none", [], None, conv_output
        keywords = batch_norm_keywords(node)
        affine = batch_norm_affine(*params, keywords["epsilon"], channels=channels, node=node_label(node))
        return "bn", [node], affine, node.output[0]
    if node.op_type == "Mul":
        scale = _channel_constant(graph, node, conv_output, channels, rank)
        if scale is None:
            return "none", [], None, conv_output
        after = graph.only_consumer(node.output[0])
        shift = None if after is None or after.op_type != "Add" else \
            _channel_constant(graph, after, node.output[0], channels, rank)
        if shift is not None:
            return "mul_add", [node, after], ChannelAffine(scale, np.zeros(channels), shift), after.output[0]
        return "mul", [node], ChannelAffine(scale, np.zeros(channels), np.zeros(channels)), node.output[0]
    if node.op_type == "Add":
        shift = _channel_constant(graph, node, conv_output, channels, rank)
        if shift is not None:
            return "add", [node], ChannelAffine(np.ones(channels), np.zeros(channels), shift), node.output[0]
    return "none", [], None, conv_output


def find_sites(model: onnx.ModelProto, skipped: list[str] | None = None) -> list[Site]:
    """Every Conv/ConvTranspose in the main graph, each with the tail it may be fused with.

    Raises ``FusionInputError`` naming the node for weights that are not constants, unsupported attributes,
    bad BN statistics or shapes that do not fit. ``skipped``: when given, a conv whose weight or bias is computed at
    run time is left out with a note appended here instead of raising.
    """
    graph = Graph(model)
    sites = []
    for node in model.graph.node:
        if node.op_type not in CONV_OPS:
            continue
        label = node_label(node)
        keywords = conv_keywords(node)
        w = graph.constant(node.input[1]) if len(node.input) > 1 else None
        b = None
        if len(node.input) > 2 and node.input[2]:
            b = graph.constant(node.input[2])
        dynamic = ("weight", node.input[1] if len(node.input) > 1 else "(missing)") if w is None else \
            ("bias", node.input[2]) if b is None and len(node.input) > 2 and node.input[2] else None
        if dynamic is not None:
            cause = f"{dynamic[0]} {dynamic[1]} is not a constant: it is computed at run time, so it cannot be folded"
            if skipped is None:
                raise FusionInputError(cause, node=label)
            skipped.append(f"{label}: not a fusion site ({cause}); it is judged as part of the whole model only")
            continue
        if w.dtype.kind != "f" or not 3 <= w.ndim <= 5:
            raise FusionInputError(f"weight must be a float tensor of rank 3 to 5, got {w.dtype} {w.shape}", node=label)
        if not np.isfinite(w).all() or (b is not None and not np.isfinite(b).all()):
            raise FusionInputError("weight or bias has non-finite values", node=label)
        transposed = node.op_type == "ConvTranspose"
        group = int(keywords.get("group", 1))
        if group < 1 or w.shape[0] % group:
            raise FusionInputError(f"group {group} does not divide the weight's {w.shape[0]} channels on axis 0",
                                   node=label)
        channels = output_channels(w.shape, group=group, transposed=transposed, node=label)
        if b is not None and b.shape != (channels,):
            raise FusionInputError(f"bias has shape {b.shape}, expected ({channels},)", node=label)
        kind, tail_nodes, affine, output = _chain(graph, node.output[0], channels, w.ndim - 2)
        after = graph.only_consumer(output)
        relu = after.output[0] if after is not None and after.op_type == "Relu" else None
        batch_norm = None
        if kind == "bn":
            bn = tail_nodes[0]
            batch_norm = dict(zip(("scale", "bias", "mean", "var"), (graph.constant(n) for n in bn.input[1:])))
            batch_norm.update(batch_norm_keywords(bn), epsilon_given=any(a.name == "epsilon" for a in bn.attribute))
        sites.append(Site(index=len(sites), op=node.op_type, conv=node, tail_nodes=tail_nodes, tail=kind, w=w, b=b,
                          affine=affine, attributes=keywords, input_name=node.input[0], conv_output=node.output[0],
                          output_name=output, relu_output=relu, batch_norm=batch_norm))
    return sites


def site_geometry(site: Site, input_shape) -> attrs.ConvGeometry:
    """Resolve the site's attributes for a concrete input shape (errors name the conv node)."""
    return attrs.resolve(input_shape, site.w.shape, transposed=site.transposed, node=node_label(site.conv),
                         **site.attributes)
