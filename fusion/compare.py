"""Compare an engine's result with the reference: MNN-style absMaxV / DiffMax, relative and ULP errors, and a
pass/fail against a per-element bound."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Comparison:
    """What ``compare`` found. ``passed`` is true when shapes match, non-finite values agree and every element
    is within its bound (exactly equal when no bound was given)."""

    passed: bool
    shape_actual: tuple[int, ...]
    shape_expected: tuple[int, ...]
    abs_max: float  # max |expected|, MNN's "absMaxV"
    diff_max: float  # max |actual - expected|, MNN's "DiffMax"
    rel_max: float  # max |actual - expected| / |expected| over elements where expected != 0
    ulp_max: float  # max distance in units in the last place of actual's dtype
    worst_index: tuple[int, ...] | None  # the element furthest outside (or closest to) its bound
    worst_actual: float | None
    worst_expected: float | None
    worst_bound: float | None
    bound_ratio_max: float | None  # max |actual - expected| / bound
    nan_count: int  # NaNs in actual where expected is finite
    inf_count: int  # Infs in actual where expected is finite
    elements_failed: int

    def summary(self) -> str:
        if self.shape_actual != self.shape_expected:
            return f"shape {list(self.shape_actual)} != expected {list(self.shape_expected)}"
        text = f"absMaxV:{self.abs_max:.6g} - DiffMax {self.diff_max:.6g}"
        if self.bound_ratio_max is not None:
            text += f" ({self.bound_ratio_max:.3g} x bound)"
        if self.nan_count or self.inf_count:
            text += f", {self.nan_count} NaN and {self.inf_count} Inf"
        if not self.passed and self.worst_index is not None:
            text += (f"; worst at {list(self.worst_index)}: {self.worst_actual:.6g} vs {self.worst_expected:.6g}"
                     + (f" (bound {self.worst_bound:.3g})" if self.worst_bound is not None else ""))
        return text

    def to_dict(self) -> dict:
        return asdict(self)


def _ordered_ints(values: np.ndarray) -> np.ndarray:
    """Map floats to integers that are consecutive for consecutive floats (sign-magnitude -> two's complement)."""
    bits = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}[values.dtype]
    ints = values.view(bits).astype(np.int64)
    return np.where(ints < 0, np.iinfo(bits).min - ints, ints)


def ulp_distance(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Distance in ULPs of ``actual``'s float dtype between ``actual`` and ``expected`` rounded to that dtype."""
    dtype = actual.dtype if actual.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    a = _ordered_ints(np.ascontiguousarray(actual, dtype))
    with np.errstate(over="ignore"):  # an expected value beyond the dtype's range rounds to infinity, as it should
        e = _ordered_ints(np.ascontiguousarray(expected, dtype))
    return np.abs(a - e).astype(np.float64)


def compare(actual, expected, *, bound=None) -> Comparison:
    """Compare ``actual`` with ``expected`` (usually the float64 reference) element by element.

    ``bound`` is a per-element (or scalar) allowance on ``|actual - expected|``, e.g. from
    ``fusion.bounds.site_bound``; ``None`` demands exact equality.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        return Comparison(False, actual.shape, expected.shape, float(np.nanmax(np.abs(expected), initial=0)),
                          float("inf"), float("inf"), float("inf"), None, None, None, None, None, 0, 0,
                          int(max(actual.size, expected.size)))
    a64 = actual.astype(np.float64)
    e64 = expected.astype(np.float64)
    finite = np.isfinite(e64)
    nan_count = int(np.count_nonzero(np.isnan(a64) & finite))
    inf_count = int(np.count_nonzero(np.isinf(a64) & finite))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a64 - e64)
        # non-finite expected values must be matched exactly (same NaN-ness, same infinity)
        same_nonfinite = (~finite) & ((np.isnan(a64) & np.isnan(e64)) | (a64 == e64))
        diff = np.where(same_nonfinite, 0.0, diff)
        diff = np.where(np.isnan(diff), np.inf, diff)
        allowance = np.zeros_like(diff) if bound is None else np.broadcast_to(np.asarray(bound, np.float64),
                                                                              diff.shape)
        failed = diff > allowance
        nonzero = e64 != 0
        rel = np.where(nonzero & finite, diff / np.where(nonzero, np.abs(e64), 1.0), 0.0)
        if bound is None:
            score = diff
            ratio_max = None
        else:
            score = np.where(allowance > 0, diff / np.where(allowance > 0, allowance, 1.0),
                             np.where(diff > 0, np.inf, 0.0))
            ratio_max = float(score.max()) if score.size else 0.0
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(score)), score.shape)) if score.size else None
    ulps = ulp_distance(np.where(np.isfinite(a64), actual, 0).astype(actual.dtype) if actual.dtype.kind == "f"
                        else a64, np.where(finite, e64, 0)) if actual.size else np.zeros(0)
    return Comparison(
        passed=not bool(failed.any()),
        shape_actual=actual.shape,
        shape_expected=expected.shape,
        abs_max=float(np.abs(e64[finite]).max(initial=0.0)),
        diff_max=float(diff.max(initial=0.0)),
        rel_max=float(rel.max(initial=0.0)),
        ulp_max=float(ulps.max(initial=0.0)),
        worst_index=worst,
        worst_actual=None if worst is None else float(a64[worst]),
        worst_expected=None if worst is None else float(e64[worst]),
        worst_bound=None if (worst is None or bound is None) else float(allowance[worst]),
        bound_ratio_max=ratio_max,
        nan_count=nan_count,
        inf_count=inf_count,
        elements_failed=int(np.count_nonzero(failed)),
    )
