"""Explain a mismatch in words a deployment engineer acts on.

Two steps: first, named hypotheses (e.g. "bias missing") each predict what a specific defect would produce;
the ones the engine's result matches within the bound are the explanation. Otherwise a per-channel analysis
says which output channels are wrong and whether by an offset or a factor.
"""

from __future__ import annotations

import numpy as np

from fusion.compare import compare


def matching(actual: np.ndarray, hypotheses: dict[str, np.ndarray], bound) -> list[str]:
    """Names of the hypotheses whose prediction ``actual`` matches within ``bound``."""
    return [name for name, predicted in hypotheses.items()
            if predicted is not None and predicted.shape == actual.shape and compare(actual, predicted, bound=bound).passed]


def _channels(indices) -> str:
    indices = [int(i) for i in indices]
    shown = ", ".join(str(i) for i in indices[:8])
    return f"[{shown}{', ...' if len(indices) > 8 else ''}] ({len(indices)} of them)" if len(indices) > 8 else f"[{shown}]"


def per_channel(actual: np.ndarray, expected: np.ndarray, bound, *, what: str) -> list[str]:
    """Which channels (axis 1 of ``(N, C, *S)``, or axis 0 of a per-channel table) differ, and how."""
    actual64, expected64 = actual.astype(np.float64), expected.astype(np.float64)
    allowance = np.broadcast_to(np.asarray(bound, np.float64), expected64.shape)
    axis = 1 if actual.ndim > 2 else 0
    moved = lambda a: np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)  # noqa: E731
    diff, tolerance, reference = moved(actual64 - expected64), moved(allowance), moved(expected64)
    wrong = np.flatnonzero((np.abs(diff) > tolerance).any(axis=1))
    if wrong.size == 0:
        return []
    lines = [f"{what} wrong in channel(s) {_channels(wrong)} of {diff.shape[0]}"]
    offsets = [c for c in wrong if np.ptp(diff[c]) <= 2 * tolerance[c].max()]
    if offsets:
        lines.append(f"channel(s) {_channels(offsets)} are off by a constant per channel (a bias error), e.g. "
                     f"channel {offsets[0]} by {float(np.median(diff[offsets[0]])):.6g}")
    ratios = []
    for c in wrong:
        mask = np.abs(reference[c]) > 10 * tolerance[c]
        if mask.sum() >= 2:
            ratio = (diff[c][mask] + reference[c][mask]) / reference[c][mask]
            if np.ptp(ratio) <= 1e-4 * max(1.0, abs(float(np.median(ratio)))):
                ratios.append((int(c), float(np.median(ratio))))
    if ratios:
        lines.append(f"channel(s) {_channels([c for c, _ in ratios])} are scaled by a wrong factor per channel, "
                     f"e.g. channel {ratios[0][0]} by {ratios[0][1]:.6g}x")
    return lines


def scale_sources(w_actual: np.ndarray, w_plain: np.ndarray, mul: np.ndarray, channel_of: np.ndarray) -> str | None:
    """If each wrong weight element is the unscaled weight times another channel's scale, say which channel.

    ``channel_of`` gives, for each weight element, the output channel the correct fold scales it by.
    Returns e.g. ``"elements of output channel 5 carry the scale of channel 1"`` for the first such element.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = w_actual.astype(np.float64) / w_plain.astype(np.float64)
    candidates = np.flatnonzero((np.abs(w_plain) > 0).reshape(-1))
    for flat in candidates:
        correct = int(channel_of.reshape(-1)[flat])
        f = factor.reshape(-1)[flat]
        if abs(f - mul[correct]) <= 1e-5 * abs(mul[correct]):
            continue
        close = np.flatnonzero(np.abs(mul - f) <= 1e-5 * np.abs(mul))
        if close.size:
            return f"weights feeding output channel {correct} carry the scale of channel {int(close[0])}"
        return None
    return None
