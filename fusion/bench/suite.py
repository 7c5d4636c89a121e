"""The benchmark suite: the layers timed, each a ConvTranspose + BatchNormalization shape."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fusion.graph.build import SiteSpec


@dataclass(frozen=True)
class Shape:
    name: str
    c_in: int
    c_out: int
    group: int
    kernel: int
    stride: int
    pad: int
    spatial: tuple[int, ...]
    output_padding: int = 0

    @property
    def rank(self) -> int:
        return len(self.spatial)

    def label(self, spec: SiteSpec) -> str:
        """The name with the input size actually timed: ``... 32^2``, or ``16^2`` in a quick (half-size) run."""
        spatial = spec.input_shape[2:]
        size = f"{spatial[0]}^{len(spatial)}" if len(set(spatial)) == 1 else "x".join(map(str, spatial))
        return f"{self.name} {size}"

    def spec(self, scale: float = 1.0) -> SiteSpec:
        spatial = tuple(max(2, int(round(s * scale))) for s in self.spatial)
        attributes = {"strides": [self.stride] * self.rank, "pads": [self.pad] * (2 * self.rank)}
        if self.output_padding:
            attributes["output_padding"] = [self.output_padding] * self.rank
        spec = SiteSpec("ConvTranspose", (1, self.c_in) + spatial, self.c_out, self.group, (self.kernel,) * self.rank,
                        attributes, True, "bn", 1, self.name)
        return replace(spec, name=self.label(spec))

    def mirrored(self, spec: SiteSpec) -> SiteSpec:
        """The Conv that is this ConvTranspose's adjoint: C_out -> C_in on the transposed conv's output grid."""
        geometry = spec.geometry()
        attributes = {"strides": [self.stride] * self.rank, "pads": [self.pad] * (2 * self.rank)}
        return SiteSpec("Conv", (1, self.c_out) + geometry.output_shape, self.c_in, self.group,
                        (self.kernel,) * self.rank, attributes, True, "none", 2, self.name + " (Conv mirrored)")

    def flops(self, spec: SiteSpec) -> float:
        """2 * N * C_in * (C_out/group) * taps * input positions: one multiply and one add per product."""
        return 2.0 * spec.input_shape[0] * self.c_in * (self.c_out // self.group) * self.kernel ** self.rank * \
            float(np.prod(spec.input_shape[2:]))


SUITE = (
    Shape("decoder 256->128 k4 s2 p1", 256, 128, 1, 4, 2, 1, (32, 32)),
    Shape("decoder g4 256->128 k4 s2 p1", 256, 128, 4, 4, 2, 1, (32, 32)),
    Shape("depthwise 128 k4 s2 p1", 128, 128, 128, 4, 2, 1, (64, 64)),
    Shape("small g4 16->16 k3 s2 p1 op1", 16, 16, 4, 3, 2, 1, (56, 56), 1),
    Shape("3d g4 32->32 k3 s2 p1", 32, 32, 4, 3, 2, 1, (16, 16, 16)),
)
