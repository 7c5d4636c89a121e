"""The per-channel affine map that both BatchNormalization and Scale are: ``y[c] = (x[c] - sub[c]) * mul[c] + add[c]``.

BatchNormalization (inference): ``mul = scale / sqrt(var + epsilon)``, ``sub = mean``, ``add = bias``.
Scale (MNN/Caffe): ``mul = scale``, ``sub = 0``, ``add = bias`` (0 when absent).
All three vectors are float64, so that folds and references never round before they must.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.errors import FusionInputError


@dataclass(frozen=True)
class ChannelAffine:
    """``y[:, c] = (x[:, c] - sub[c]) * mul[c] + add[c]``, each vector float64 of length C.

    A chain of such ops composed into one (``then``) keeps ``extent``, the magnitude of the constants it went
    through, and ``steps``, how many ops it was: an engine that folds the chain step by step rounds partial results
    of that size, so error bounds need them."""

    mul: np.ndarray
    sub: np.ndarray
    add: np.ndarray
    extent: np.ndarray | None = None
    steps: int = 1

    @property
    def channels(self) -> int:
        return self.mul.shape[0]

    @property
    def shift(self) -> np.ndarray:
        """``add - sub * mul``: the constant part when the map is written ``mul * x + shift``."""
        return self.add - self.sub * self.mul

    @property
    def magnitude(self) -> np.ndarray:
        """``|mul| |sub| + |add|`` plus the extent of the ops composed into it."""
        own = np.abs(self.mul) * np.abs(self.sub) + np.abs(self.add)
        return own if self.extent is None else own + self.extent

    def then(self, after: "ChannelAffine") -> "ChannelAffine":
        """This map followed by ``after``, as one map ``mul * x + shift``."""
        mul = self.mul * after.mul
        extent = np.abs(after.mul) * self.magnitude + after.magnitude
        return ChannelAffine(mul, np.zeros_like(mul), self.shift * after.mul + after.shift, extent,
                             self.steps + after.steps)


def channel_vector(value, name: str, channels: int | None, *, node: str) -> np.ndarray:
    """A finite 1-D float64 vector of length ``channels`` (any length when ``channels`` is None)."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FusionInputError(f"{name} is not numeric: {exc}", node=node) from None
    if array.ndim != 1:
        raise FusionInputError(f"{name} must be 1-D (one value per channel), got shape {array.shape}", node=node)
    if channels is not None and array.shape[0] != channels:
        raise FusionInputError(f"{name} has {array.shape[0]} values but there are {channels} channels", node=node)
    bad = ~np.isfinite(array)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise FusionInputError(f"{name} has {int(bad.sum())} non-finite value(s), first at channel {first} "
                               f"({array[first]})", node=node)
    return array


def batch_norm_affine(scale, bias, mean, var, epsilon: float = 1e-5, *, channels: int | None = None,
                      node: str = "batch_norm") -> ChannelAffine:
    """Inference BatchNormalization as a ``ChannelAffine``; rejects non-finite stats and ``var + epsilon <= 0``."""
    scale = channel_vector(scale, "scale", channels, node=node)
    channels = scale.shape[0]
    bias = channel_vector(bias, "bias", channels, node=node)
    mean = channel_vector(mean, "mean", channels, node=node)
    var = channel_vector(var, "var", channels, node=node)
    epsilon = float(epsilon)
    if not np.isfinite(epsilon):
        raise FusionInputError(f"epsilon must be finite, got {epsilon}", node=node)
    denominator = var + epsilon
    if (denominator <= 0).any():
        first = int(np.flatnonzero(denominator <= 0)[0])
        raise FusionInputError(f"var + epsilon must be > 0; channel {first} has var={var[first]} and "
                               f"epsilon={epsilon}", node=node)
    return ChannelAffine(mul=scale / np.sqrt(denominator), sub=mean, add=bias)


def scale_affine(scale, bias=None, *, channels: int | None = None, node: str = "scale") -> ChannelAffine:
    """Per-channel Scale ``y = scale[c] * x + bias[c]`` as a ``ChannelAffine`` (bias 0 when None)."""
    scale = channel_vector(scale, "scale", channels, node=node)
    channels = scale.shape[0]
    bias = np.zeros(channels) if bias is None else channel_vector(bias, "bias", channels, node=node)
    return ChannelAffine(mul=scale, sub=np.zeros(channels), add=bias)
