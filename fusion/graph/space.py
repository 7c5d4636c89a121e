"""The configuration space of one Conv or ConvTranspose: one generator, drawn from by the sweep (NumPy) and by the
tests (hypothesis), each with limits of its own.

A draw covers plain, grouped and depthwise layers, C_out/group > 1, C_in != C_out, strides, dilations, asymmetric
pads, every auto_pad, output_padding and output_shape. ``Choose`` is what the randomness must offer; a draw that does
not resolve to a valid geometry is rejected (``FusionInputError`` from ``attrs.resolve``), and the caller draws again
or, under hypothesis, rejects the example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from fusion import attrs


class Choose(Protocol):
    def integer(self, low: int, high: int) -> int:
        """Uniform in ``[low, high]``, both included."""

    def one_of(self, options: Sequence, weights: Sequence[float] | None = None):
        """One of ``options``; ``weights`` (summing to 1) may be ignored by a shrinking test generator."""


@dataclass(frozen=True)
class Limits:
    """How large a draw may be, and how often the rarer attributes appear."""

    groups: int  # group is at most this
    channels_per_group: tuple[int, int]  # input channels per group at most, output channels per group at most
    sides: dict  # rank -> (smallest, largest) spatial size
    kernel: int
    stride: int
    dilation: int
    pad: int
    batch: int
    kinds: tuple[float, float, float]  # weights of plain, grouped, depthwise
    output_padding: float  # how often a ConvTranspose gets a nonzero output_padding draw
    output_shape_offsets: tuple[int, int]  # output_shape = the full extent minus this much (negative: larger)


SWEEP = Limits(groups=8, channels_per_group=(5, 4), sides={1: (3, 12), 2: (2, 8), 3: (2, 5)}, kernel=4, stride=3,
               dilation=2, pad=2, batch=2, kinds=(0.3, 0.45, 0.25), output_padding=0.3, output_shape_offsets=(0, 2))
TESTS = Limits(groups=3, channels_per_group=(5, 3), sides={1: (1, 6), 2: (1, 5), 3: (1, 3)}, kernel=3, stride=3,
               dilation=2, pad=2, batch=2, kinds=(1 / 3, 1 / 3, 1 / 3), output_padding=1.0,
               output_shape_offsets=(-1, 3))


def draw(choose: Choose, limits: Limits, *, transposed: bool, rank: int, output_padding_below_stride: bool = False
         ) -> dict:
    """``{"x_shape", "w_shape", "attributes", "transposed"}``: ONNX attributes (with ``group``) and the weight in
    the op's layout (ConvTranspose ``(C_in, C_out/group, *k)``, Conv ``(C_out, C_in/group, *k)``).

    ``output_padding_below_stride``: keep ``output_padding < stride`` (onnxruntime refuses more; the spec allows up
    to ``max(stride, dilation) - 1``). Raises ``FusionInputError`` for a draw whose geometry does not resolve."""
    kind = choose.one_of(["plain", "grouped", "depthwise"], limits.kinds)
    group = 1 if kind == "plain" else choose.integer(2, limits.groups)
    c_in_g = 1 if kind == "depthwise" else choose.integer(1, limits.channels_per_group[0])
    c_out_g = 1 if kind == "depthwise" else choose.integer(1, limits.channels_per_group[1])
    spatial = tuple(choose.integer(*limits.sides[rank]) for _ in range(rank))
    kernel = tuple(choose.integer(1, limits.kernel) for _ in range(rank))
    strides = [choose.integer(1, limits.stride) for _ in range(rank)]
    dilations = [choose.integer(1, limits.dilation) for _ in range(rank)]
    attributes = {"group": group, "strides": strides, "dilations": dilations}
    modes = ["pads", "auto_pad", "output_shape"] if transposed else ["pads", "auto_pad"]
    mode = choose.one_of(modes, [0.6, 0.25, 0.15] if transposed else [0.75, 0.25])
    if mode == "pads":
        attributes["pads"] = [choose.integer(0, limits.pad) for _ in range(2 * rank)]
    elif mode == "auto_pad":
        attributes["auto_pad"] = choose.one_of(["SAME_UPPER", "SAME_LOWER", "VALID"])
    if transposed:
        padding = [0] * rank
        if choose.one_of([True, False], [limits.output_padding, 1 - limits.output_padding]):
            highest = [s if output_padding_below_stride else max(s, d) for s, d in zip(strides, dilations)]
            padding = [choose.integer(0, h - 1) for h in highest]
        attributes["output_padding"] = padding
        if mode == "output_shape":
            full = [s * (i - 1) + p + (k - 1) * d + 1 for s, i, p, k, d in zip(strides, spatial, padding, kernel,
                                                                               dilations)]
            attributes["output_shape"] = [max(1, f - choose.integer(*limits.output_shape_offsets)) for f in full]
        w_shape = (c_in_g * group, c_out_g) + kernel
    else:
        w_shape = (c_out_g * group, c_in_g) + kernel
    x_shape = (choose.integer(1, limits.batch), c_in_g * group) + spatial
    attrs.resolve(x_shape, w_shape, transposed=transposed, **attributes)  # raises for a draw that does not fit
    return {"x_shape": x_shape, "w_shape": w_shape, "attributes": attributes, "transposed": transposed}


class NumpyChoose:
    """``Choose`` on a NumPy generator."""

    def __init__(self, rng):
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))

    def one_of(self, options, weights=None):
        return options[int(self.rng.choice(len(options), p=weights))]
