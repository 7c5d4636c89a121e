"""pytest helpers for people who use fusion as the golden reference in their own tests.

    from fusion.testing import assert_matches_reference

    def test_my_fused_deconv():
        y = my_engine(x)  # whatever computes ConvTranspose + BatchNorm in float32
        assert_matches_reference(y, op="conv_transpose", x=x, w=w, b=b, group=4, strides=[2, 2],
                                 pads=[1, 1, 1, 1], batch_norm=dict(scale=g, bias=beta, mean=m, var=v))
"""

from __future__ import annotations

import numpy as np

from fusion import attrs
from fusion.affine import batch_norm_affine, scale_affine
from fusion.bounds import exact_site
from fusion.compare import Comparison, compare
from fusion.errors import FusionInputError


def reference_site(op: str, x, w, b=None, *, batch_norm: dict | None = None, scale: dict | None = None,
                   dtype=np.float32, **attributes) -> tuple[np.ndarray, np.ndarray]:
    """``(expected, bound)`` for ``op`` (``"conv"`` or ``"conv_transpose"``) followed by an optional BN or
    Scale tail: the float64 result, and the per-element error allowed to an evaluation in ``dtype``."""
    if op not in ("conv", "conv_transpose"):
        raise ValueError(f"op must be 'conv' or 'conv_transpose', got {op!r}")
    if batch_norm is not None and scale is not None:
        raise ValueError("give batch_norm or scale, not both")
    transposed = op == "conv_transpose"
    for name, value in (("x", x), ("w", w), ("b", b)):
        if value is not None and np.asarray(value).dtype.kind == "f" and not np.isfinite(value).all():
            # NaN in, NaN out would "match" anything that also gives NaN: no verdict can be had from it
            raise FusionInputError(f"{name} has {int(np.count_nonzero(~np.isfinite(value)))} non-finite value(s): "
                                   "the reference of a non-finite input proves nothing", node=op)
    channels = attrs.resolve(np.shape(x), np.shape(w), transposed=transposed, **attributes).c_out
    affine = None
    if batch_norm is not None:
        affine = batch_norm_affine(**batch_norm, channels=channels)
    elif scale is not None:
        affine = scale_affine(**scale, channels=channels)
    return exact_site(x, w, b, affine, transposed=transposed, dtype=dtype, **attributes)


def assert_matches_reference(actual, *, op: str, x, w, b=None, batch_norm: dict | None = None,
                             scale: dict | None = None, **attributes) -> Comparison:
    """Assert that ``actual`` is ``op(x, w, b)`` (then the BN/Scale tail) within the computed error bound for
    ``actual``'s dtype. Fails with absMaxV, DiffMax, the worst element and its bound."""
    actual = np.asarray(actual)
    dtype = actual.dtype if actual.dtype in (np.float32, np.float64) else np.float32
    expected, bound = reference_site(op, x, w, b, batch_norm=batch_norm, scale=scale, dtype=dtype, **attributes)
    result = compare(actual, expected, bound=bound)
    if not result.passed:
        raise AssertionError(f"{op} result differs from the fusion reference: {result.summary()}; "
                             f"{result.elements_failed} element(s) outside the bound")
    return result
