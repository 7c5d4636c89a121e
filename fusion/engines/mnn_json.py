"""Read (and rewrite) a site's parameters in MNN's JSON dump of a converted model.

The dump gives the structure (ops, their names, attributes and wiring); its numbers are printed with six decimals,
so the exact float32 values come from the ``.mnn`` file itself (``mnn_file.read_exact``) whenever it can be read.

Facts this relies on (MNN 3.x converter): the op that computes an ONNX conv is named after the conv's *output
tensor*; a grouped conv is split into ``<name>__group__<g>`` ops (each ``group: 1``, its slice of the weight in
ONNX layout) joined by a Concat named ``<name>``; a 3-D ConvTranspose may be decomposed into per-depth-tap 2-D
ops ``<name>__<d>[__group__<g>]`` followed by Col2Im; a tail it did not fold stays as a Scale, BatchNorm or
BinaryOp with a Const operand.
"""

from __future__ import annotations

import re

import numpy as np

from fusion.engines.base import EngineFailure, EngineParams, KeptOp

# MNN's JSON dump prints floats with six fixed decimals: a value read back is within half of 1e-6 (plus the
# float32 rounding of the parsed text). Weights stored externally (--saveExternalData) are read exactly.
TEXT_RESOLUTION = 0.5e-6 * (1 + 2**-20)

CONV_TYPES = {"Convolution", "ConvolutionDepthwise", "Deconvolution", "DeconvolutionDepthwise", "Convolution3D",
              "ConvTranspose3D"}
SHAPE_ONLY = {"ConvertTensor", "Squeeze", "Unsqueeze", "Reshape"}


def _op_weight_shape(op: dict, transposed: bool) -> tuple[int, ...]:
    common = op["main"]["common"]
    kernel = tuple(common.get("kernels") or (common.get("kernelY", 1), common.get("kernelX", 1)))
    group = max(int(common.get("group", 1)), 1)
    out_count = int(common.get("outputCount", 0))
    size = len(op["main"].get("weight") or [])
    taps = int(np.prod(kernel))
    in_count = int(common.get("inputCount", 0)) or (size * group // max(out_count * taps, 1))
    if transposed:
        return (in_count, out_count // group) + kernel
    return (out_count, in_count // group) + kernel


class MnnGraph:
    """An index over MNN's JSON dump: ops, tensor names, producers and consumers."""

    def __init__(self, doc: dict, external: str | None = None, exact: list[dict] | None = None):
        self.doc = doc
        self.external = external  # the model's ``.weight`` file, when weights are stored outside it
        self.ops: list[dict] = list(doc.get("oplists") or [])
        # the float vectors of each op as stored in the .mnn file, keyed by the op's position
        self.exact = {id(op): arrays for op, arrays in zip(self.ops, exact)} if exact is not None else {}
        self.tensors: list[str] = list(doc.get("tensorName") or [])
        self.index = {name: i for i, name in enumerate(self.tensors)}
        self.producer: dict[int, dict] = {}
        self.consumers: dict[int, list[dict]] = {}
        for op in self.ops:
            for i in op.get("outputIndexes") or []:
                self.producer[i] = op
            for i in op.get("inputIndexes") or []:
                self.consumers.setdefault(i, []).append(op)

    @property
    def is_empty(self) -> bool:
        """True when the model computes nothing: no op besides its inputs and constants."""
        return all(op.get("type") in ("Input", "Const") for op in self.ops)

    def conv_ops(self, *names: str) -> tuple[str, list[tuple[int, int, dict]]]:
        """The first of ``names`` under which conv-type ops exist, and ``(depth, group, op)`` for each of them.

        ``names``: the conv's output tensor, then the outputs of tail nodes the converter may have merged into it
        (MNN folds a per-channel Add into the bias and names the op after the Add).
        """
        for name in names:
            pattern = re.compile(re.escape(name) + r"(?:__(\d+))?(?:__group__(\d+))?$")
            found = []
            for op in self.ops:
                match = pattern.match(op.get("name", ""))
                if match and op.get("type") in CONV_TYPES:
                    found.append((int(match.group(1) or -1), int(match.group(2) or -1), op))
            if found:
                return name, sorted(found, key=lambda item: (item[0], item[1]))
        return "", []

    def _weight_input(self, op: dict) -> np.ndarray | None:  # exact only when the Const is stored externally
        """The whole ONNX-layout weight when the converter kept it as a Const input (sliced per group) instead of
        inside the op, as MNN does for a ConvTranspose with ``output_shape``."""
        inputs = op.get("inputIndexes") or []
        if len(inputs) < 2:
            return None
        source = self.producer.get(inputs[1])
        if source is not None and source.get("type") == "Slice":
            source = self.producer.get((source.get("inputIndexes") or [-1])[0])
        if source is None or source.get("type") != "Const":
            return None
        main = source["main"]
        external = self._external(main)
        values = external[0] if external else self._floats(source, "float32s", np.float32)
        dims = [int(d) for d in main.get("dims") or []]
        return values.reshape(dims) if values.size and values.size == int(np.prod(dims)) else None

    def const_vector(self, tensor: int, channels: int) -> np.ndarray | None:
        op = self.producer.get(tensor)
        if op is None or op.get("type") != "Const":
            return None
        values = self._floats(op, "float32s")
        if values.size == 1:
            return np.full(channels, values[0])
        return values if values.size == channels else None

    def _tail_op(self, op: dict, current: int, channels: int) -> KeptOp | None:
        main, kind, name = op.get("main") or {}, op.get("type"), op.get("name", "")
        if kind == "Scale":
            external = self._external(main)
            if external is not None:
                mul, add, resolution = external[0], external[1], 0.0
            else:
                mul, add = self._floats(op, "scaleData"), self._floats(op, "biasData")
                resolution = self._resolution(op)
            if add.size == 0:
                add = np.zeros(mul.size)
            return KeptOp("Scale", name, mul.astype(np.float64), add.astype(np.float64), resolution) \
                if mul.size == channels == add.size else None
        if kind == "BatchNorm":
            slope, mean = self._floats(op, "slopeData"), self._floats(op, "meanData")
            var, bias = self._floats(op, "varData"), self._floats(op, "biasData")
            mul = slope / np.sqrt(var + float(main.get("epsilon", 0.001)))
            return KeptOp("BatchNorm", name, mul, bias - mean * mul, self._resolution(op) * 8)
        if kind == "BinaryOp" and main.get("opType") in ("MUL", "ADD", "SUB"):
            inputs = op.get("inputIndexes") or []
            others = [i for i in inputs if i != current]
            vector = self.const_vector(others[0], channels) if len(others) == 1 else None
            if vector is None or (main["opType"] == "SUB" and inputs[0] != current):
                return None
            ones, zeros = np.ones(channels), np.zeros(channels)
            mul, add = {"MUL": (vector, zeros), "ADD": (ones, vector), "SUB": (ones, -vector)}[main["opType"]]
            return KeptOp(f"BinaryOp {main['opType']}", name, mul, add, self._resolution(self.producer[others[0]]))
        return None

    def tail_after(self, start: int, output_name: str, channels: int) -> list[KeptOp]:
        """Affine ops between tensor ``start`` and the site's output tensor that the converter did not fold."""
        tail, current = [], start
        while self.tensors[current] != output_name:
            consumers = self.consumers.get(current, [])
            if len(consumers) != 1:
                break
            op = consumers[0]
            if op.get("type") not in SHAPE_ONLY:
                found = self._tail_op(op, current, channels)
                if found is None:
                    break
                tail.append(found)
            current = (op.get("outputIndexes") or [current])[0]
        return tail

    def site_params(self, site, engine: str = "MNN") -> EngineParams:
        """Reassemble the site's conv parameters into the ONNX layout of ``site.op`` and list kept tail ops."""
        names = [site.conv_output] + [out for node in site.tail_nodes for out in node.output]
        found_as, entries = self.conv_ops(*names)
        if not entries:
            detail = ("the converted model is empty: the converter dropped every op yet reported success"
                      if self.is_empty else f"no conv op named after {' or '.join(repr(n) for n in names)} "
                      "(or their __group__ parts) in the converted model")
            raise EngineFailure(engine, "reading fused parameters", "missing", detail)
        w, b, resolution, notes = self._assemble(entries, site, engine)
        if b is not None and b.size != site.c_out:
            raise EngineFailure(engine, "reading fused parameters", "missing",
                                f"the fused bias has {b.size} values for {site.c_out} output channels")
        if any(op["main"]["common"].get("relu") or op["main"]["common"].get("relu6") for _, _, op in entries):
            notes.append(f"{engine} also fused a following ReLU/ReLU6 into the conv op")
        kept = self.tail_after(self._output_of(found_as, entries), site.output_name, site.c_out)
        return EngineParams(w=w, b=b, kept=kept, ops=[op["name"] for _, _, op in entries] + [t.name for t in kept],
                            notes=notes, resolution=resolution)

    def _assemble(self, entries, site, engine: str):
        """``(w, b, resolution, notes)``: the ops' weights joined back into one ONNX-layout weight.

        Per-group ops are concatenated on axis 0 (input channels of a ConvTranspose, output channels of a Conv);
        per-depth-tap ops are stacked on the depth axis (their bias lives outside them: ``b`` is None); a weight
        kept as a Const input is taken whole.
        """
        notes = []
        if any((op["main"].get("quanParameter") or {}) for _, _, op in entries):
            notes.append("weights are quantized in the converted model; they are compared as stored")
        first = entries[0][2]
        whole = None if first["main"].get("weight") or first["main"].get("external") else self._weight_input(first)
        resolution = 0.0
        by_depth: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for depth, _, op in entries:
            weight, bias, exact = self._op_arrays(op)
            resolution = max(resolution, 0.0 if exact else TEXT_RESOLUTION)
            if whole is not None:
                by_depth.setdefault(depth, []).append((None, bias))
                continue
            shape = _op_weight_shape(op, site.transposed)
            if weight.size == 0:
                raise EngineFailure(engine, "reading fused parameters", "missing",
                                    f"op {op['name']} holds no weights: the converter lost them")
            if weight.size != int(np.prod(shape)):
                raise EngineFailure(engine, "reading fused parameters", "missing",
                                    f"op {op['name']} holds {weight.size} weights, its attributes say {shape}")
            by_depth.setdefault(depth, []).append((weight.reshape(shape), bias))
        biases = [np.concatenate([b for _, b in parts]) for _, parts in sorted(by_depth.items())]
        if whole is not None:
            w = whole
            notes.append(f"{engine} kept the weight as a separate constant input to the conv op")
        else:
            joined = [np.concatenate([w for w, _ in parts], axis=0) for _, parts in sorted(by_depth.items())]
            w = joined[0] if len(joined) == 1 else np.stack(joined, axis=2)
        b = biases[0] if len(biases) == 1 else None
        if len(biases) > 1:
            notes.append(f"{engine} decomposed the 3-D op into {len(biases)} per-depth 2-D ops; the bias is applied "
                         "outside them and is judged through the output only")
        if w.size != site.w.size:
            raise EngineFailure(engine, "reading fused parameters", "missing",
                                f"fused weight has {w.size} elements, the ONNX weight {site.w.size}")
        b = None if b is not None and b.size == 0 else b
        return w.reshape(site.w.shape), b, resolution, notes  # 1-D convs run as 2-D with a unit axis

    def _output_of(self, name: str, entries) -> int:
        """The tensor the site's conv result leaves by: the tensor ``name``, else the output of the op (a Concat of
        the groups, or the single conv op) named ``name``."""
        if name in self.index:
            return self.index[name]
        named = next((op for op in self.ops if op.get("name") == name and op.get("type") != "Const"), None)
        source = named if named is not None else entries[-1][2]
        return (source.get("outputIndexes") or [0])[0]

    def _external(self, main: dict) -> list[np.ndarray] | None:
        """The float32 arrays an op keeps in the external weight file: ``external = [offset, bytes, bytes...]``."""
        external = main.get("external")
        if not external or not self.external:
            return None
        offset, sizes = int(external[0]), [int(v) for v in external[1:]]
        with open(self.external, "rb") as handle:
            handle.seek(offset)
            raw = handle.read(sum(sizes))
        arrays, start = [], 0
        for size in sizes:
            arrays.append(np.frombuffer(raw[start:start + size], np.float32).copy())
            start += size
        return arrays

    def _op_arrays(self, op: dict) -> tuple[np.ndarray, np.ndarray, bool]:
        """``(weight, bias, exact)`` of a conv op: from the external weight file when it has one, else as stored."""
        external = self._external(op["main"])
        if external is not None and len(external) >= 2:
            return external[0], external[1], True
        return (self._floats(op, "weight", np.float32), self._floats(op, "bias", np.float32),
                self._resolution(op) == 0.0)

    def _floats(self, op: dict, key: str, dtype=np.float64) -> np.ndarray:
        """The op's float vector ``key``: exact from the .mnn file when it was read, else the dump's text."""
        exact = self.exact.get(id(op))
        if exact is not None:
            return exact.get(key, np.zeros(0, np.float32)).astype(dtype)
        return np.asarray(op["main"].get(key) or [], dtype)

    def _resolution(self, op: dict) -> float:
        """How precisely the op's values are known: 0 when read from the .mnn file, else the dump's resolution."""
        return 0.0 if id(op) in self.exact else TEXT_RESOLUTION

    def set_site_params(self, site, w: np.ndarray | None = None, b: np.ndarray | None = None) -> None:
        """Write ``w`` (ONNX layout of ``site.op``) and/or ``b`` into the site's ops, split as the converter split
        them. Used to reproduce defects (e.g. the legacy per-group fold) in a real converted model."""
        _, entries = self.conv_ops(site.conv_output, *[out for node in site.tail_nodes for out in node.output])
        if not entries or any(depth >= 0 for depth, _, _ in entries):
            raise ValueError(f"cannot rewrite site {site.conv_output!r}: no plain or per-group conv ops")
        parts = len(entries)
        w_parts = np.split(np.asarray(w, np.float32), parts, axis=0) if w is not None else [None] * parts
        b_parts = np.split(np.asarray(b, np.float32), parts) if b is not None else [None] * parts
        for (_, _, op), w_part, b_part in zip(entries, w_parts, b_parts):
            if w_part is not None:
                op["main"]["weight"] = [float(v) for v in w_part.reshape(-1)]
            if b_part is not None:
                op["main"]["bias"] = [float(v) for v in b_part]
