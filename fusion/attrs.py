"""ONNX Conv / ConvTranspose attribute resolution: defaults, auto_pad, output_shape -> pads, output size.

Everything that turns the optional ONNX attributes into concrete per-axis integers lives here, once, so
the reference, the kernels and the graph bridges agree on one geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from fusion.errors import FusionInputError

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
MAX_SPATIAL_RANK = 3


@dataclass(frozen=True)
class ConvGeometry:
    """The resolved geometry of one Conv or ConvTranspose; every spatial field has one entry per axis.

    Weight layouts: Conv ``(c_out, c_in/group, *kernel_shape)``; ConvTranspose
    ``(c_in, c_out/group, *kernel_shape)``.
    """

    transposed: bool
    group: int
    batch: int
    c_in: int
    c_out: int
    input_shape: tuple[int, ...]
    kernel_shape: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    output_padding: tuple[int, ...]
    output_shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.input_shape)

    @property
    def pads(self) -> tuple[int, ...]:
        """ONNX layout ``[x1_begin, x2_begin, ..., x1_end, x2_end, ...]``."""
        return self.pads_begin + self.pads_end

    @property
    def reduction_length(self) -> int:
        """Upper bound on the products summed into one output element (excluding the bias)."""
        taps = 1
        for k in self.kernel_shape:
            taps *= k
        return (self.c_in // self.group) * taps

    def attributes(self) -> dict:
        """Explicit ONNX attributes that reproduce this geometry without auto_pad or output_shape."""
        attrs = {
            "group": self.group,
            "kernel_shape": list(self.kernel_shape),
            "strides": list(self.strides),
            "dilations": list(self.dilations),
            "pads": list(self.pads),
        }
        if self.transposed:
            attrs["output_padding"] = list(self.output_padding)
        return attrs


def _ints(value, rank: int, default: int, name: str, where: str) -> tuple[int, ...]:
    if value is None:
        return (default,) * rank
    values = tuple(int(v) for v in value)
    if len(values) != rank:
        raise FusionInputError(f"{name} has {len(values)} entries, expected {rank} (one per spatial axis)",
                               node=where)
    return values


def resolve(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    *,
    transposed: bool,
    group: int = 1,
    strides=None,
    pads=None,
    dilations=None,
    output_padding=None,
    output_shape=None,
    auto_pad: str = "NOTSET",
    kernel_shape=None,
    node: str | None = None,
) -> ConvGeometry:
    """Validate shapes and attributes of an ONNX Conv (``transposed=False``) or ConvTranspose.

    Raises ``FusionInputError`` (a ``ValueError``) naming ``node`` and the cause. Valid geometries are cached:
    resolving one took 30 microseconds, 12% of a small layer's whole call.
    """
    arguments = (_key(x_shape), _key(w_shape), bool(transposed), group, _key(strides), _key(pads), _key(dilations),
                 _key(output_padding), _key(output_shape), auto_pad, _key(kernel_shape), node)
    try:
        return _resolve_cached(*arguments)
    except TypeError:  # an unhashable value: let the uncached path validate it and name it
        return _resolve(*arguments)


def _key(value):
    """A sequence as a tuple, so that it can be a cache key (None and strings as they are)."""
    return value if value is None or isinstance(value, (str, bytes)) else tuple(value)


@lru_cache(maxsize=1024)
def _resolve_cached(*arguments) -> ConvGeometry:
    return _resolve(*arguments)


def _resolve(x_shape, w_shape, transposed, group, strides, pads, dilations, output_padding, output_shape, auto_pad,
             kernel_shape, node) -> ConvGeometry:
    where = node or ("conv_transpose" if transposed else "conv")
    x_shape = tuple(int(d) for d in x_shape)
    w_shape = tuple(int(d) for d in w_shape)
    if not 3 <= len(x_shape) <= 2 + MAX_SPATIAL_RANK:
        raise FusionInputError(f"input has rank {len(x_shape)}; expected 3, 4 or 5 (N, C, 1 to 3 spatial axes)",
                               node=where)
    if len(w_shape) != len(x_shape):
        raise FusionInputError(f"weight has rank {len(w_shape)} but input has rank {len(x_shape)}", node=where)
    if any(d <= 0 for d in x_shape) or any(d <= 0 for d in w_shape):
        raise FusionInputError(f"empty dimension in input {x_shape} or weight {w_shape}", node=where)
    rank = len(x_shape) - 2
    batch, c_in = x_shape[0], x_shape[1]
    group = int(group)
    if group < 1:
        raise FusionInputError(f"group must be >= 1, got {group}", node=where)
    if c_in % group:
        raise FusionInputError(f"group {group} does not divide the {c_in} input channels", node=where)
    if transposed:
        # w: (c_in, c_out/group, *k)  ConvTranspose layout
        if w_shape[0] != c_in:
            raise FusionInputError(f"ConvTranspose weight {w_shape} must have shape (C_in={c_in}, C_out/group, *k)",
                                   node=where)
        c_out = w_shape[1] * group
    else:
        # w: (c_out, c_in/group, *k)  Conv layout
        if w_shape[1] * group != c_in:
            raise FusionInputError(
                f"Conv weight {w_shape} must have shape (C_out, C_in/group={c_in // group}, *k) for "
                f"input channels {c_in} and group {group}", node=where)
        c_out = w_shape[0]
        if c_out % group:
            raise FusionInputError(f"group {group} does not divide the {c_out} output channels", node=where)
    kernel = w_shape[2:]
    if kernel_shape is not None and tuple(int(k) for k in kernel_shape) != kernel:
        raise FusionInputError(f"kernel_shape {list(kernel_shape)} does not match weight spatial shape {list(kernel)}",
                               node=where)
    strides = _ints(strides, rank, 1, "strides", where)
    dilations = _ints(dilations, rank, 1, "dilations", where)
    if any(s < 1 for s in strides):
        raise FusionInputError(f"strides must be >= 1, got {list(strides)}", node=where)
    if any(d < 1 for d in dilations):
        raise FusionInputError(f"dilations must be >= 1, got {list(dilations)}", node=where)
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad not in AUTO_PADS:
        raise FusionInputError(f"auto_pad {auto_pad!r} is not one of {', '.join(AUTO_PADS)}", node=where)
    if pads is not None and auto_pad != "NOTSET":
        raise FusionInputError(f"pads cannot be given together with auto_pad={auto_pad}", node=where)
    explicit = _ints(pads, 2 * rank, 0, "pads", where)
    if any(p < 0 for p in explicit):
        raise FusionInputError(f"pads must be >= 0, got {list(explicit)}", node=where)
    spatial = x_shape[2:]
    extent = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations))

    if transposed:
        out_pad = _ints(output_padding, rank, 0, "output_padding", where)
        for axis, (op, s, d) in enumerate(zip(out_pad, strides, dilations)):
            if op < 0 or op >= max(s, d):
                raise FusionInputError(
                    f"output_padding[{axis}]={op} must be >= 0 and less than stride {s} or dilation {d}", node=where)
        full = tuple(s * (i - 1) + op + e for s, i, op, e in zip(strides, spatial, out_pad, extent))
        if output_shape is not None:
            target = tuple(int(o) for o in output_shape)
            if len(target) == rank + 2:  # tolerate the (N, C, *S) spelling some exporters write
                target = target[2:]
            if len(target) != rank or any(o < 1 for o in target):
                raise FusionInputError(f"output_shape {list(output_shape)} must give {rank} positive sizes", node=where)
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            target = tuple(i * s for i, s in zip(spatial, strides))
        else:
            target = None
        if target is not None:
            total = tuple(f - o for f, o in zip(full, target))
            if auto_pad == "SAME_UPPER":
                begin = tuple(t // 2 for t in total)
            else:  # the spec's "Else": NOTSET, SAME_LOWER and VALID put the extra pad at the beginning
                begin = tuple(t - t // 2 for t in total)
            end = tuple(t - b for t, b in zip(total, begin))
        elif auto_pad == "VALID":
            begin = end = (0,) * rank
        else:
            begin, end = explicit[:rank], explicit[rank:]
        out = tuple(f - b - e for f, b, e in zip(full, begin, end))
    else:
        out_pad = (0,) * rank
        if output_padding is not None or output_shape is not None:
            raise FusionInputError("output_padding and output_shape belong to ConvTranspose, not Conv", node=where)
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = tuple(-(-i // s) for i, s in zip(spatial, strides))
            total = tuple(max(0, (o - 1) * s + e - i) for o, s, e, i in zip(out, strides, extent, spatial))
            if auto_pad == "SAME_UPPER":
                begin = tuple(t // 2 for t in total)
            else:
                begin = tuple(t - t // 2 for t in total)
            end = tuple(t - b for t, b in zip(total, begin))
        else:
            begin, end = ((0,) * rank,) * 2 if auto_pad == "VALID" else (explicit[:rank], explicit[rank:])
            out = tuple((i + b + e - ext) // s + 1 if i + b + e >= ext else 0
                        for i, b, e, ext, s in zip(spatial, begin, end, extent, strides))
    if any(o < 1 for o in out):
        raise FusionInputError(
            f"output would be empty: spatial output {list(out)} from input {list(spatial)}, kernel {list(kernel)}, "
            f"strides {list(strides)}, dilations {list(dilations)}, pads {list(begin + end)}", node=where)
    return ConvGeometry(
        transposed=transposed, group=group, batch=batch, c_in=c_in, c_out=c_out, input_shape=spatial,
        kernel_shape=kernel, strides=strides, dilations=dilations, pads_begin=tuple(begin),
        pads_end=tuple(end), output_padding=out_pad, output_shape=tuple(out))
