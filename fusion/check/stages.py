"""A tensor of the converted model against the oracle's, within a tolerance from the oracle's own sensitivity.

The oracle is run again with every weight and input perturbed by a relative ``PERTURBATION`` (``fusion.oracle.
sensitivity``): a tensor may differ by ``SPREAD_FACTOR`` times what that moved it, and at least by ``FLOOR`` of its
largest value and by ``ABSOLUTE_FLOOR``. A tensor the perturbation moves by more than ``ILL_CONDITIONED`` of its
largest value is ill-conditioned: reported, not judged. How these were chosen: benchmarks/NOTES.md.
"""

from __future__ import annotations

import numpy as np

from fusion.check.verdicts import TensorCheck

PERTURBATION = 2.0 ** -16  # relative, per weight and input value: far above float32 rounding (2**-24)
SPREAD_FACTOR = 8.0
FLOOR = 2.0 ** -14  # of the tensor's largest value
ABSOLUTE_FLOOR = 2.0 ** -20  # for tensors near zero: a saturated sigmoid computed with an approximate exp
# elementwise ops a converter fuses into the op before them, so that the tensor between the two holds the result
ACTIVATIONS = {"Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu"}
ILL_CONDITIONED = 2.0 ** -4  # the perturbation moved the tensor by more than this fraction of its largest value


def tensor_check(name: str, node: str, oracle: np.ndarray, engine: np.ndarray, spread: float, *,
                 strict_shape: bool) -> tuple[TensorCheck, np.ndarray]:
    """Compare one tensor; returns the check and the engine's value in the oracle's shape (when it fits).

    ``strict_shape``: a graph output must have the oracle's shape; an intermediate tensor may be held with extra
    unit axes (an engine runs a 1-D op as 2-D)."""
    o64 = oracle.astype(np.float64)
    finite = np.isfinite(o64)
    abs_max = float(np.abs(o64[finite]).max(initial=0.0))
    if engine.shape != oracle.shape:
        fits = engine.size == oracle.size and tuple(d for d in engine.shape if d != 1) == \
            tuple(d for d in oracle.shape if d != 1)
        if strict_shape or not fits:
            return TensorCheck(name, node, abs_max, float("inf"), 0.0, spread, False,
                               shape=f"engine {list(engine.shape)}, oracle {list(oracle.shape)}"), engine
        engine = engine.reshape(oracle.shape)
    e64 = engine.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(e64 - o64)
    same = (np.isnan(e64) & np.isnan(o64)) | (e64 == o64)
    diff = np.where(same, 0.0, np.nan_to_num(diff, nan=np.inf))
    diff_max = float(diff.max(initial=0.0))
    tolerance = max(SPREAD_FACTOR * spread, FLOOR * abs_max, ABSOLUTE_FLOOR)
    ill = spread > ILL_CONDITIONED * abs_max and abs_max > 0
    worst = [int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape)] if diff.size else None
    return TensorCheck(name, node, abs_max, diff_max, tolerance, spread, ill or diff_max <= tolerance, ill,
                       worst_index=worst), engine
