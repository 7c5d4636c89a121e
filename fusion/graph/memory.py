"""What judging a model will need in memory, estimated from its shapes before anything is allocated.

ONNX shape inference runs on the model with its inputs fixed to the sizes to be fed; every tensor whose shape it
finds counts ``prod(dims) * itemsize``; a tensor it cannot size counts as the largest one it could. With ``A`` the
sum over the node outputs (all of them are read at once: the oracle watches every tensor), ``W`` the weights,
``X`` the inputs and ``S`` the largest site output, a check holds about

    need = 4 A + 3 W + X + 6 S

(the oracle's values and onnxruntime's buffers while it exposes all of them, one perturbed run beside them, the
engine's values; the weights in the model, its perturbed copy and the engine's; the float64 reference, convolution
and bound of a site, twice the float32 size each). The interpreter and the libraries come on top.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from fusion.errors import TooLarge

DEFAULT_LIMIT = 8 * 2 ** 30  # leaves a 2-core, 24 GiB machine room for the engine's child and the libraries
UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


@dataclass
class MemoryEstimate:
    bytes: int
    activations: int
    weights: int
    inputs: int
    largest: str  # the largest tensor, with its shape
    unsized: int  # tensors shape inference could not size (counted as the largest)

    def describe(self) -> str:
        return (f"about {human(self.bytes)} (activations {human(self.activations)}, weights {human(self.weights)}, "
                f"inputs {human(self.inputs)}; largest tensor {self.largest}"
                + (f"; {self.unsized} tensor(s) of unknown size counted as the largest" if self.unsized else "") + ")")


def human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.3g} {unit}"
        count /= 1024
    return f"{count:.3g} PiB"


def parse_size(text: str) -> int:
    """``8G``, ``512M``, ``1.5G`` or a byte count (the ``--max-memory`` flag)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1:] if text[-1:] in UNITS and text[-1:] else ""
    try:
        value = float(text[: len(text) - len(unit)])
    except ValueError:
        value = -1.0
    if not value > 0:
        raise TooLarge(f"--max-memory takes a size such as 8G or 512M, got {text!r}")
    return int(value * UNITS[unit])


def _itemsize(elem_type: int) -> int:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except Exception:  # an undefined or string element type: count it as float32
        return 4


def _size(value: onnx.ValueInfoProto) -> int | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    if any(d < 0 for d in dims):
        return None
    return int(np.prod(dims, dtype=object)) * _itemsize(tensor.elem_type)


def estimate(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> MemoryEstimate:
    """The memory a check of ``model`` fed inputs of ``shapes`` will need (see the module docstring)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[value.name]:
                dims.add().dim_value = int(d)
    del fixed.graph.value_info[:]
    for value in fixed.graph.output:  # declared for other input sizes, perhaps: inferred afresh
        value.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True).graph
    except Exception:  # inference gives up on some models onnxruntime runs: size what the graph declares
        inferred = fixed.graph
    known = {v.name: _size(v) for v in list(inferred.value_info) + list(inferred.output)}
    inputs = sum(int(np.prod(s, dtype=object)) * 4 for s in shapes.values())
    outputs = [name for node in model.graph.node for name in node.output if name]
    sized = {name: known.get(name) for name in outputs}
    largest_size = max([s for s in sized.values() if s is not None] + [max(inputs, 1)])
    unsized = sum(1 for s in sized.values() if s is None)
    activations = sum(s if s is not None else largest_size for s in sized.values())
    weights = sum(int(np.prod(t.dims, dtype=object)) * _itemsize(t.data_type) for t in model.graph.initializer)
    largest = max(sized, key=lambda n: sized[n] or 0, default="")
    total = 4 * activations + 3 * weights + inputs + 6 * largest_size
    return MemoryEstimate(int(total), int(activations), int(weights), int(inputs),
                          _describe(largest, inferred, shapes), unsized)


def _describe(largest: str, inferred: onnx.GraphProto, shapes: dict[str, tuple[int, ...]]) -> str:
    value = next((v for v in list(inferred.value_info) + list(inferred.output) if v.name == largest), None)
    if value is not None and _size(value):
        return f"{largest} {[d.dim_value for d in value.type.tensor_type.shape.dim]}"
    if shapes:  # nothing inside could be sized: the largest input
        name = max(shapes, key=lambda n: np.prod(shapes[n], dtype=object))
        return f"input {name} {list(shapes[name])}"
    return "unknown"


def refuse_beyond(needed: MemoryEstimate, limit: int | None, what: str) -> None:
    """Raise ``TooLarge`` when ``needed`` exceeds ``limit`` bytes (None: no limit)."""
    if limit is not None and needed.bytes > limit:
        raise TooLarge(f"{what} would need {needed.describe()}, beyond the limit of {human(limit)} "
                       "(--max-memory; smaller --input-shape sizes need less)")
