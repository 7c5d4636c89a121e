"""The fuse pass: fold every foldable site of an ONNX model with ``fusion.fold`` and verify the result.

Each folded site gets new initializers (``<conv output>.folded_w`` / ``.folded_b``), so weights shared with other
nodes stay untouched; the conv then writes the tail's output tensor directly and the tail nodes are removed.
Verification: on random inputs, every folded conv, evaluated by onnxruntime on the activation the original
model produces at its input, must match the float64 reference of the original (unfused) site within the bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from fusion.bounds import exact_site
from fusion.compare import Comparison, compare
from fusion.deadline import within
from fusion.oracle import activations, input_shapes, random_feeds
from fusion.fold import fold_affine
from fusion.graph import build
from fusion.graph.memory import DEFAULT_LIMIT, estimate, refuse_beyond
from fusion.graph.model import Graph, all_nodes
from fusion.graph.nodes import node_label
from fusion.graph.sites import Site, find_sites


@dataclass
class FuseReport:
    folded: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    verified: bool = True
    output_diff_max: float = 0.0

    def to_dict(self) -> dict:
        return {"folded": self.folded, "skipped": self.skipped, "verified": self.verified,
                "output_diff_max": self.output_diff_max}


def _skip_reason(graph: Graph, site: Site) -> str:
    consumers = graph.consumers.get(site.conv_output, [])
    if site.conv_output in graph.outputs:
        return "its output is a graph output"
    if len(consumers) > 1:
        return f"its output is read by {len(consumers)} nodes"
    if not consumers:
        return "its output is not read"
    after = consumers[0]
    if after.op_type in ("BatchNormalization", "Mul", "Add"):
        return (f"the following {after.op_type} ({node_label(after)}) is not a per-channel affine map with constant "
                "parameters")
    return f"no BatchNormalization or Mul/Add follows (next: {after.op_type})"


def fuse_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, FuseReport, list[Site]]:
    """A new model with every site's tail folded into its conv; the input model is not modified."""
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    graph = Graph(model)
    sites = find_sites(model)
    report = FuseReport()
    removed: set[str] = set()
    folded_sites = []
    new_initializers = []
    for site in sites:
        if site.affine is None:
            report.skipped.append({"site": site.label, "what": site.describe(), "reason": _skip_reason(graph, site)})
            continue
        w_f, b_f = fold_affine(site.w, site.b, site.affine, group=site.group, transposed=site.transposed,
                               node=node_label(site.conv))
        w_name, b_name = f"{site.conv_output}.folded_w", f"{site.conv_output}.folded_b"
        new_initializers += [numpy_helper.from_array(w_f.astype(site.w.dtype), w_name),
                             numpy_helper.from_array(b_f.astype(site.w.dtype), b_name)]
        conv = next(n for n in fused.graph.node if n.name == site.conv.name and list(n.output) == list(site.conv.output))
        del conv.input[:]
        conv.input.extend([site.input_name, w_name, b_name])
        conv.output[0] = site.output_name
        removed.update(id_of(n) for n in site.tail_nodes)
        folded_sites.append(site)
        report.folded.append({"site": site.label, "what": site.describe(), "into": node_label(site.conv)})
    kept = [n for n in fused.graph.node if id_of(n) not in removed]
    del fused.graph.node[:]
    fused.graph.node.extend(kept)
    fused.graph.initializer.extend(new_initializers)
    _drop_unused_initializers(fused)
    try:
        onnx.checker.check_model(model)
    except Exception:  # ValidationError, or worse on a damaged string field
        return fused, report, folded_sites  # a technicality the input had already (load() said so)
    onnx.checker.check_model(fused)
    return fused, report, folded_sites


def id_of(node: onnx.NodeProto) -> tuple:
    return (node.op_type, node.name, tuple(node.input), tuple(node.output))


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in all_nodes(model.graph) for name in node.input} | {o.name for o in model.graph.output}
    dropped = {t.name for t in model.graph.initializer if t.name not in used}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    # an old exporter lists initializers among the graph inputs too: those go with them
    inputs = [i for i in model.graph.input if i.name not in dropped]
    del model.graph.input[:]
    model.graph.input.extend(inputs)


def verify(original: onnx.ModelProto, fused: onnx.ModelProto, sites: list[Site], *, seed: int = 0,
           report: FuseReport, timeout: float | None = None, max_memory: int | None = DEFAULT_LIMIT
           ) -> list[Comparison]:
    """Judge every folded site of ``fused`` (run by onnxruntime) against the original's reference, in bound.

    ``timeout``: seconds for each onnxruntime run and each site's reference; ``max_memory``: bytes the
    verification may need (``fusion.graph.memory``), refused with ``TooLarge`` beyond."""
    graph = Graph(original)
    shapes = input_shapes(original, graph.inputs)
    refuse_beyond(estimate(original, shapes), max_memory, "verifying the fused model")
    feeds = random_feeds(shapes, seed)
    values = activations(original, feeds, [s.input_name for s in sites], timeout=timeout)
    fused_sites = {s.conv_output if s.affine is None else s.output_name: s for s in find_sites(fused)}
    results = []
    for site, entry in zip(sites, report.folded):
        x = values[site.input_name]
        exact, bound = within(timeout, f"the float64 reference of site {site.label}", exact_site, x, site.w, site.b,
                              site.affine, transposed=site.transposed, **site.attributes)
        folded = fused_sites[site.output_name]
        cut = build.cut_site(folded, fused, x.shape)
        actual = activations(cut, {site.input_name: x}, [cut.graph.output[0].name], timeout=timeout)[
            cut.graph.output[0].name]
        result = compare(actual, exact, bound=bound)
        entry.update(passed=result.passed, comparison=result.summary())
        report.verified &= result.passed
        results.append(result)
    outputs = [o.name for o in original.graph.output]
    before = activations(original, feeds, outputs, timeout=timeout)
    after = activations(fused, feeds, outputs, timeout=timeout)
    with np.errstate(invalid="ignore"):
        report.output_diff_max = float(max((np.abs(before[n] - after[n]).max(initial=0.0) for n in before
                                            if n in after and before[n].shape == after[n].shape), default=0.0))
    return results
