"""Why a site is wrong: named hypotheses, each with a code, tested against what the engine computed or stored.

Each hypothesis predicts what one known defect would produce (a dropped bias, the MNN <= 2.9.1 per-group
misindexing, epsilon ignored, ...). The ones the engine's result matches within the bound are the explanation;
otherwise a per-channel analysis says which channels are wrong and how. Codes, not sentences, are what the sweep
groups failures by.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from fusion import known_wrong_folds
from fusion.affine import ChannelAffine, batch_norm_affine
from fusion.bounds import exact_site, fold_bounds, fold_flush_allowance, site_bound
from fusion.compare import Comparison, compare
from fusion.deadline import within
from fusion.diagnose import matching, per_channel, scale_sources
from fusion.engines.base import EngineParams
from fusion.fold import fold_affine, output_channel_view
from fusion.graph.model import Graph
from fusion.graph.nodes import node_label
from fusion.graph.sites import Site
from fusion.check.verdicts import ParamCheck


class Code(str, Enum):
    LEGACY_GROUP_FOLD = "legacy_group_fold"
    BIAS_MISSING = "bias_missing"
    CONV_BIAS_DROPPED = "conv_bias_dropped"
    TAIL_NOT_APPLIED = "tail_not_applied"
    WEIGHTS_UNSCALED = "weights_unscaled"
    BIAS_NOT_FOLDED = "bias_not_folded"
    EPSILON_IGNORED = "epsilon_ignored"
    BROADCAST_AS_CHANNEL = "broadcast_as_channel"  # a Mul/Add constant that is not per-channel folded as if it were
    WRONG_SHAPE = "wrong_shape"
    NONFINITE = "nonfinite"
    WRONG_WEIGHTS = "wrong_weights"
    WRONG_BIAS = "wrong_bias"
    WRONG_VALUES = "wrong_values"
    NOT_REPEATABLE = "not_repeatable"
    CONTEXT_ONLY = "context_only"  # right when the site is converted alone, wrong inside the whole model
    ENGINE_CRASH = "engine_crash"
    ENGINE_HANG = "engine_hang"
    ENGINE_ERROR = "engine_error"
    MISSING = "missing"
    WRONG_OUTSIDE_SITES = "wrong_outside_sites"


LEGACY = "scale applied per input channel instead of per output channel within each group (the MNN <= 2.9.1 " \
         "per-group misindexing of the ConvTranspose weight)"
BIAS_MISSING = "bias missing (output = reference - bias per channel)"
CONV_BIAS_DROPPED = "conv bias dropped before the fold (output = reference - scale*conv_bias per channel)"
TAIL_NOT_APPLIED = "BatchNormalization/Scale not applied (output = the bare convolution)"
WEIGHTS_UNSCALED = "weights not scaled by the BatchNormalization/Scale"
BIAS_NOT_FOLDED = "bias not folded (still the convolution's own bias)"
BIAS_ZERO = "bias missing in the fused op (all zero)"


def epsilon_ignored(site: Site) -> str:
    epsilon = site.batch_norm["epsilon"]
    why = " (the ONNX default: the node has no epsilon attribute)" if not site.batch_norm["epsilon_given"] else ""
    return f"BatchNormalization folded with epsilon=0 instead of {epsilon:g}{why}"


def failure_code(kind: str) -> Code:
    """The code of an ``EngineFailure`` kind."""
    return {"crash": Code.ENGINE_CRASH, "timeout": Code.ENGINE_HANG, "missing": Code.MISSING}.get(kind,
                                                                                                  Code.ENGINE_ERROR)


@dataclass
class SiteExpectation:
    """What the site must compute on ``x``, in float64, and the parameters a correct fold gives."""

    x: np.ndarray
    expected: np.ndarray
    conv: np.ndarray  # the convolution alone, with its own bias
    bound: np.ndarray
    w_folded: np.ndarray
    b_folded: np.ndarray
    w_bound: np.ndarray
    b_bound: np.ndarray
    relu: bool = False  # expected is taken after a Relu the engine fused

    def after_relu(self) -> "SiteExpectation":
        """The same reference taken after a Relu (1-Lipschitz: the bound still holds)."""
        return SiteExpectation(self.x, np.maximum(self.expected, 0.0), self.conv, self.bound, self.w_folded, self.b_folded,
                         self.w_bound, self.b_bound, relu=True)


def expectation(site: Site, x: np.ndarray, timeout: float | None = None) -> SiteExpectation:
    """The site's float64 reference on ``x``, its bound, and the fold; ``StepTimeout`` past ``timeout`` s."""
    return within(timeout, f"the float64 reference of site {site.label}", _expectation, site, x)


def _expectation(site: Site, x: np.ndarray) -> SiteExpectation:
    conv = site.convolve(x, site.w, site.b)
    expected, bound = exact_site(x, site.w, site.b, site.affine, transposed=site.transposed, convolution=conv,
                                 **site.attributes)
    if site.affine is None:
        w_f = site.w.astype(np.float64)
        b_f = np.zeros(site.c_out) if site.b is None else site.b.astype(np.float64)
    else:
        w_f, b_f = fold_affine(site.w.astype(np.float64), site.b, site.affine, group=site.group,
                               transposed=site.transposed)
    w_bound, b_bound = fold_bounds(site.w, site.b, site.affine, group=site.group, transposed=site.transposed)
    return SiteExpectation(x, expected, conv, bound, w_f, b_f, w_bound, b_bound)


def _epsilon_zero_fold(site: Site) -> tuple[np.ndarray, np.ndarray] | None:
    """The fold a converter that drops epsilon would produce, or None when epsilon is already 0."""
    if site.batch_norm is None or site.batch_norm["epsilon"] == 0:
        return None
    stats = {k: site.batch_norm[k] for k in ("scale", "bias", "mean", "var")}
    if np.any(np.asarray(stats["var"]) <= 0):
        return None
    affine = batch_norm_affine(**stats, epsilon=0.0)
    return fold_affine(site.w.astype(np.float64), site.b, affine, group=site.group, transposed=site.transposed)


def _legacy_weights(site: Site) -> np.ndarray | None:
    if not (site.transposed and site.affine is not None and site.group > 1):
        return None
    return known_wrong_folds.fold_mnn_legacy(site.w.astype(np.float64), site.b, site.affine, group=site.group)[0]


def explain_output(site: Site, ref: SiteExpectation, actual: np.ndarray, result: Comparison,
                   bound: np.ndarray | None = None) -> tuple[list[str], list[Code]]:
    """Sentences and codes for a wrong site output; ``bound``: the tolerance that was applied (default the
    reference's exact bound)."""
    bound = ref.bound if bound is None else bound
    if result.shape_actual != result.shape_expected:
        return ([f"shape differs: engine output {list(result.shape_actual)}, reference {list(result.shape_expected)}"],
                [Code.WRONG_SHAPE])
    lines, codes = [], []
    if result.nan_count or result.inf_count:
        lines.append(f"NaN/garbage output: {result.nan_count} NaN and {result.inf_count} Inf values")
        codes.append(Code.NONFINITE)
    hypotheses = {BIAS_MISSING: (Code.BIAS_MISSING, site.convolve(ref.x, ref.w_folded, None))}
    if site.affine is not None:
        hypotheses[TAIL_NOT_APPLIED] = (Code.TAIL_NOT_APPLIED, ref.conv)
        if site.b is not None:
            hypotheses[CONV_BIAS_DROPPED] = (Code.CONV_BIAS_DROPPED, site.convolve(
                ref.x, ref.w_folded, ref.b_folded - site.affine.mul * site.b))
    legacy_w = _legacy_weights(site)
    if legacy_w is not None:
        hypotheses[LEGACY] = (Code.LEGACY_GROUP_FOLD, site.convolve(ref.x, legacy_w, ref.b_folded))
    no_epsilon = _epsilon_zero_fold(site)
    if no_epsilon is not None:
        hypotheses[epsilon_ignored(site)] = (Code.EPSILON_IGNORED, site.convolve(ref.x, *no_epsilon))
    if ref.relu:
        hypotheses = {k: (c, np.maximum(v, 0.0)) for k, (c, v) in hypotheses.items() if k != TAIL_NOT_APPLIED}
    found = matching(actual, {k: v for k, (_, v) in hypotheses.items()}, bound)
    if found:
        return lines + found, codes + [hypotheses[k][0] for k in found]
    return lines + per_channel(actual, ref.expected, bound, what="output"), codes + [Code.WRONG_VALUES]


def _output_channel_of(site: Site) -> np.ndarray:
    """For every weight element, the output channel it feeds."""
    view, shape = output_channel_view(np.zeros(site.w.shape), site.group, site.transposed)
    return np.broadcast_to(np.arange(site.c_out).reshape(shape), view.shape).reshape(site.w.shape)


def judge_params(site: Site, ref: SiteExpectation, params: EngineParams
                 ) -> tuple[ParamCheck, list[str], list[str], list[Code]]:
    """Compare the engine's effective ``(w, b)`` with the reference fold; return the check, explanations, notes
    and codes. A weight that is a float32 subnormal before or after the fold may be flushed to zero: that is
    allowed, and said."""
    notes = list(params.notes)
    kept = [f"{op.kind} '{op.name}'" for op in params.kept]
    if kept:
        notes.append(f"not folded: the converter kept {', '.join(kept)} after the conv (judged as composed)")
    w_eff, b_eff = params.effective(group=site.group, transposed=site.transposed)
    w_read, b_read = params.read_error(group=site.group, transposed=site.transposed)
    w_bound = ref.w_bound + w_read
    b_bound = ref.b_bound + (b_read if b_eff is not None else 0)
    resolutions = [params.resolution] + [op.resolution for op in params.kept]
    if max(resolutions):
        notes.append(f"some parameters were read from a text dump: compared to within its print resolution "
                     f"{max(resolutions):.1e}")
    weight = compare(w_eff.astype(np.float32), ref.w_folded, bound=w_bound)
    bias = None if b_eff is None else compare(b_eff.astype(np.float32), ref.b_folded, bound=b_bound)
    if not weight.passed or (bias is not None and not bias.passed):
        w_flush, b_flush = fold_flush_allowance(site.w, ref.w_folded, ref.b_folded)
        if weight.shape_actual == weight.shape_expected:
            flushed_w = compare(w_eff.astype(np.float32), ref.w_folded, bound=w_bound + w_flush)
            flushed_b = None if b_eff is None else compare(b_eff.astype(np.float32), ref.b_folded,
                                                           bound=b_bound + b_flush)
            if flushed_w.passed and (flushed_b is None or flushed_b.passed):
                zeroed = int(((w_eff == 0) & (ref.w_folded != 0)).sum())
                zeroed_b = 0 if b_eff is None else int(((b_eff == 0) & (ref.b_folded != 0)).sum())
                how = (f"{zeroed} weights and {zeroed_b} bias values below 2**-126 stored as 0" if zeroed or zeroed_b
                       else "none stored as 0: subnormal values, which keep fewer bits")
                notes.append(f"fused parameters within the float32 fold's bound once subnormals may be flushed to "
                             f"zero ({how})")
                weight, bias = flushed_w, flushed_b
                w_bound, b_bound = w_bound + w_flush, b_bound + b_flush
    passed = weight.passed and (bias is None or bias.passed)
    explanations, codes = [], []
    nonfinite = int((~np.isfinite(w_eff)).sum()) + (0 if b_eff is None else int((~np.isfinite(b_eff)).sum()))
    if nonfinite:
        explanations.append(f"NaN/Inf in the fused parameters: {nonfinite} non-finite weight or bias values")
        codes.append(Code.NONFINITE)
    if not weight.passed and not nonfinite:
        if weight.shape_actual != weight.shape_expected:
            explanations.append(f"fused weight shape {list(weight.shape_actual)} differs from "
                                f"{list(weight.shape_expected)}")
            codes.append(Code.WRONG_SHAPE)
        else:
            hypotheses = {WEIGHTS_UNSCALED: (Code.WEIGHTS_UNSCALED, site.w.astype(np.float64))} \
                if site.affine is not None else {}
            legacy_w = _legacy_weights(site)
            if legacy_w is not None:
                hypotheses[LEGACY] = (Code.LEGACY_GROUP_FOLD, legacy_w)
            no_epsilon = _epsilon_zero_fold(site)
            if no_epsilon is not None:
                hypotheses[epsilon_ignored(site)] = (Code.EPSILON_IGNORED, no_epsilon[0])
            found = matching(w_eff, {k: v for k, (_, v) in hypotheses.items()}, w_bound)
            if found:
                explanations += found
                codes += [hypotheses[k][0] for k in found]
            else:
                source = scale_sources(w_eff, site.w, site.affine.mul, _output_channel_of(site)) \
                    if site.affine is not None else None
                explanations.append(f"fused weights wrong: {source}" if source else
                                    f"fused weights wrong ({weight.elements_failed} of {w_eff.size} elements; "
                                    f"{weight.summary()})")
                codes.append(Code.WRONG_WEIGHTS)
    if bias is not None and not bias.passed and not nonfinite and bias.shape_actual != bias.shape_expected:
        explanations.append(f"fused bias shape {list(bias.shape_actual)} differs from {list(bias.shape_expected)}")
        codes.append(Code.WRONG_BIAS)
    elif bias is not None and not bias.passed and not nonfinite:
        hypotheses = {BIAS_ZERO: (Code.BIAS_MISSING, np.zeros_like(ref.b_folded))}
        if site.b is not None and site.affine is not None:
            hypotheses[CONV_BIAS_DROPPED] = (Code.CONV_BIAS_DROPPED, ref.b_folded - site.affine.mul * site.b)
            hypotheses[BIAS_NOT_FOLDED] = (Code.BIAS_NOT_FOLDED, site.b.astype(np.float64))
        no_epsilon = _epsilon_zero_fold(site)
        if no_epsilon is not None:
            hypotheses[epsilon_ignored(site)] = (Code.EPSILON_IGNORED, no_epsilon[1])
        found = matching(b_eff, {k: v for k, (_, v) in hypotheses.items()}, b_bound)
        explanations += found or per_channel(b_eff, ref.b_folded, b_bound, what="fused bias")
        codes += [hypotheses[k][0] for k in found] or [Code.WRONG_BIAS]
    return ParamCheck(weight, bias, passed, kept), explanations, notes, codes


def broadcast_as_channel(graph: Graph, site: Site, name: str, x: np.ndarray, actual: np.ndarray) -> str | None:
    """Whether ``actual`` (the engine's value of tensor ``name``) is the site's conv of ``x`` followed by the chain of
    Mul/Add constants up to ``name`` applied per output channel, where ONNX broadcasts one of them along another axis
    (``[C]`` on NCHW runs along W): the fold a converter must not make. The sentence that says so, or None."""
    chain, current = [], site.output_name
    while current != name:
        consumer = graph.only_consumer(current)
        if consumer is None or consumer.op_type not in ("Mul", "Add", "Sub"):
            return None
        others = [i for i in consumer.input if i != current]
        constant = graph.constant(others[0]) if len(others) == 1 else None
        if constant is None or constant.size not in (1, site.c_out):
            return None
        chain.append((consumer, constant))
        current = consumer.output[0]
    misread = [(n, c) for n, c in chain if c.size == site.c_out and c.size > 1
               and not (c.ndim >= 3 and c.shape[-(site.rank + 1)] == site.c_out)]
    if not misread:
        return None
    affine = site.affine
    for consumer, constant in chain:
        vector = np.broadcast_to(constant.reshape(-1).astype(np.float64), (site.c_out,)).copy()
        ones, zeros = np.ones(site.c_out), np.zeros(site.c_out)
        step = {"Mul": ChannelAffine(vector, zeros, zeros), "Add": ChannelAffine(ones, zeros, vector),
                "Sub": ChannelAffine(ones, zeros, -vector)}[consumer.op_type]
        affine = step if affine is None else affine.then(step)
    conv = site.convolve(x, site.w, site.b)
    vector = (1, -1) + (1,) * site.rank
    predicted = conv * affine.mul.reshape(vector) + affine.shift.reshape(vector)
    bound = site_bound(x, site.w, site.b, affine, transposed=site.transposed, **site.attributes)
    if actual.shape != predicted.shape or not compare(actual, predicted, bound=bound).passed:
        return None
    node, constant = misread[0]
    axis = node_axis(constant, site.rank)
    return (f"{node.op_type} {node_label(node)!r} has a constant of shape {list(constant.shape)}, which ONNX "
            f"broadcasts along axis {axis} of the {site.rank + 2}-D conv output, not along its channels; the "
            f"converter folded it into {site.op} {node_label(site.conv)!r} as one value per output channel")


def node_axis(constant: np.ndarray, rank: int) -> int:
    """The output axis that a constant's longest axis broadcasts along (numpy alignment from the right)."""
    longest = int(np.argmax(constant.shape))
    return rank + 2 - constant.ndim + longest


def unrepeatable(first: np.ndarray, again: np.ndarray, run: int, results: tuple[bool, bool],
                 converted_again: bool, what: str = "output") -> str:
    """Says how run ``run`` of the engine on the same input differed from its first; ``results``: whether each of
    the two passed."""
    first64, again64 = first.astype(np.float64), again.astype(np.float64)
    differs = ~((first64 == again64) | (np.isnan(first64) & np.isnan(again64)))
    with np.errstate(invalid="ignore"):
        largest = float(np.nanmax(np.where(differs, np.abs(first64 - again64), 0.0)))
    channels = np.unique(np.nonzero(differs)[1]).tolist() if differs.ndim > 1 else []
    verdicts = ", ".join(f"run {n} {'passes' if r else 'fails'}" for n, r in zip((1, run), results))
    again_how = f"run {run}, of a conversion of its own," if converted_again else f"run {run}"
    return (f"the engine's {what} is not repeatable: {again_how} on the same input differs from run 1 in "
            f"{int(differs.sum())} of {differs.size} values (largest difference {largest:.3g}), in output channels "
            f"{channels[:8]}{' ...' if len(channels) > 8 else ''}; {verdicts}")
