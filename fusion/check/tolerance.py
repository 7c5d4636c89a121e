"""Which error model a site's output is within: exact evaluation, or a named legitimate engine behaviour.

The ladder, tightest first, each a derived bound (``fusion.bounds``, ``fusion.winograd``):

1. ``exact``: any summation order, fused or unfused, fold computed in float32 (``site_bound``);
2. ``subnormals flushed to zero``: the same plus what flushing weights, inputs, products and outputs below 2**-126
   can change (``flush_allowance``), tried only where the site has such values;
3. ``Winograd F(m, r)``: a 2-D stride-1 Conv evaluated by a Cook-Toom fast algorithm on one of the tile sizes and
   point sets an engine uses (``fusion.winograd``), plus flushing.

An output within none of them is wrong, and is judged and explained against the exact bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion import winograd
from fusion.bounds import flush_allowance, has_subnormals, tail_terms
from fusion.compare import Comparison, compare
from fusion.fold import output_channel_view
from fusion.graph.sites import Site, site_geometry
from fusion.check.explain import SiteExpectation

EXACT = "exact"
FLUSHED = "subnormals flushed to zero"


@dataclass
class Judgement:
    comparison: Comparison  # against the bound that held, else against the exact bound
    held: str | None  # EXACT, FLUSHED, a Winograd transform's name, or None: wrong
    bound: np.ndarray  # the bound of ``comparison``

    @property
    def passed(self) -> bool:
        return self.held is not None


def _winograd_bounds(site: Site, x: np.ndarray):
    """``(name, bound)`` for every fast algorithm an engine may use on this site, smallest first."""
    geometry = site_geometry(site, x.shape)
    kernel = site.w.shape[2:]
    if not winograd.applies(site.transposed, kernel, geometry.strides, geometry.dilations):
        return
    mul, constant_of, roundings = tail_terms(site.affine, site.c_out)
    view, shape = output_channel_view(np.abs(site.w.astype(np.float64)), site.group, False)
    w_abs = (view * mul.reshape(shape)).reshape(site.w.shape)
    constant = constant_of(np.zeros(site.c_out) if site.b is None else np.abs(site.b.astype(np.float64)))
    pads = geometry.pads_begin + geometry.pads_end
    x_abs = np.abs(x.astype(np.float64))
    for transform in winograd.candidates(kernel[0]):
        term = winograd.magnitude(transform, x_abs, w_abs, site.group, pads, geometry.output_shape)
        yield transform.name, winograd.bound(transform, term, constant, site.c_in // site.group, roundings)


def judge_output(site: Site, ref: SiteExpectation, actual: np.ndarray) -> Judgement:
    """Climb the ladder until one error model holds for every element of ``actual``."""
    exact = compare(actual, ref.expected, bound=ref.bound)
    if exact.passed or exact.shape_actual != exact.shape_expected or exact.nan_count or exact.inf_count:
        return Judgement(exact, EXACT if exact.passed else None, ref.bound)
    flush = 0.0
    # a subnormal anywhere: an input, a weight or bias before or after the fold, or the exact output itself (a
    # channel whose weights are zero and whose bias is subnormal: TwinLiteNet's, which OpenVINO's CPU flushes)
    if has_subnormals(ref.x, site.w, site.b, ref.w_folded, ref.b_folded, ref.expected, actual):
        flush = flush_allowance(ref.x, site.w, site.b, site.affine, transposed=site.transposed, **site.attributes)
        flushed = compare(actual, ref.expected, bound=ref.bound + flush)
        if flushed.passed:
            return Judgement(flushed, FLUSHED, ref.bound + flush)
    for name, bound in _winograd_bounds(site, ref.x):
        fast = compare(actual, ref.expected, bound=bound)
        if fast.passed:
            return Judgement(fast, name, bound)
        if np.ndim(flush):
            fast = compare(actual, ref.expected, bound=bound + flush)
            if fast.passed:
                return Judgement(fast, f"{name}, {FLUSHED}", bound + flush)
    return Judgement(exact, None, ref.bound)
