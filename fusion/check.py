"""Judge an engine's fused result at every site of an ONNX model, two ways, and explain each failure.

(a) Output: feed the site the activation the unfused ONNX model produces there (onnxruntime, optimizations off),
run the engine's converted site, and compare with the float64 reference within the computed error bound.
(b) Parameters: read the engine's fused weights and bias (plus any tail op it kept), and compare with
``fusion.fold`` applied to the ONNX parameters within the folding error bound.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from fusion import legacy
from fusion.affine import batch_norm_affine
from fusion.bounds import exact_site, fold_bounds
from fusion.compare import Comparison, compare
from fusion.diagnose import matching, per_channel, scale_sources
from fusion.engines.base import Engine, EngineFailure, EngineParams
from fusion.engines.onnxruntime import activations, input_shapes, random_feeds
from fusion.errors import FusionInputError
from fusion.fold import fold_affine, output_channel_view
from fusion.graph import build
from fusion.graph.model import Graph, load
from fusion.graph.sites import Site, find_sites

LEGACY = "scale applied per input channel instead of per output channel within each group (the MNN <= 2.9.1 " \
         "per-group misindexing of the ConvTranspose weight)"
BIAS_MISSING = "bias missing (output = reference - bias per channel)"
CONV_BIAS_DROPPED = "conv bias dropped before the fold (output = reference - scale*conv_bias per channel)"
TAIL_NOT_APPLIED = "BatchNormalization/Scale not applied (output = the bare convolution)"
WEIGHTS_UNSCALED = "weights not scaled by the BatchNormalization/Scale"
BIAS_NOT_FOLDED = "bias not folded (still the convolution's own bias)"


def epsilon_ignored(site: Site) -> str:
    epsilon = site.batch_norm["epsilon"]
    why = " (the ONNX default: the node has no epsilon attribute)" if not site.batch_norm["epsilon_given"] else ""
    return f"BatchNormalization folded with epsilon=0 instead of {epsilon:g}{why}"


def _epsilon_zero_fold(site: Site) -> tuple[np.ndarray, np.ndarray] | None:
    """The fold a converter that drops epsilon would produce, or None when epsilon is already 0."""
    if site.batch_norm is None or site.batch_norm["epsilon"] == 0:
        return None
    stats = {k: site.batch_norm[k] for k in ("scale", "bias", "mean", "var")}
    if np.any(np.asarray(stats["var"]) <= 0):
        return None
    affine = batch_norm_affine(**stats, epsilon=0.0)
    return fold_affine(site.w.astype(np.float64), site.b, affine, group=site.group, transposed=site.transposed)


@dataclass
class ParamCheck:
    """The engine's fused parameters against ``fusion.fold``: weights and bias (bias ``None``: not judged)."""

    weight: Comparison | None
    bias: Comparison | None
    passed: bool
    kept_tail: list[str] = field(default_factory=list)


@dataclass
class SiteVerdict:
    index: int
    label: str
    description: str
    op: str
    tail: str
    group: int
    rank: int
    attributes: dict
    status: str  # "pass" or "fail"
    explanations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    output: Comparison | None = None
    params: ParamCheck | None = None
    failures: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["attributes"] = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.attributes.items()}
        return data


@dataclass
class ModelReport:
    model: str
    engine: str
    sites: list[SiteVerdict]
    seconds: float
    seed: int

    @property
    def passed(self) -> bool:
        return all(site.passed for site in self.sites)

    def to_dict(self) -> dict:
        return {"model": self.model, "engine": self.engine, "seed": self.seed, "seconds": round(self.seconds, 3),
                "passed": self.passed, "sites": [site.to_dict() for site in self.sites]}


@dataclass
class Reference:
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


def reference(site: Site, x: np.ndarray) -> Reference:
    conv = site.convolve(x, site.w, site.b)
    expected, bound = exact_site(x, site.w, site.b, site.affine, transposed=site.transposed, convolution=conv,
                                 **site.attributes)
    channels = conv.shape[1]
    if site.affine is None:
        w_f, b_f = site.w.astype(np.float64), (np.zeros(channels) if site.b is None else site.b.astype(np.float64))
    else:
        w_f, b_f = fold_affine(site.w.astype(np.float64), site.b, site.affine, group=site.group,
                               transposed=site.transposed)
    w_bound, b_bound = fold_bounds(site.w, site.b, site.affine, group=site.group, transposed=site.transposed)
    return Reference(x, expected, conv, bound, w_f, b_f, w_bound, b_bound)


def _legacy_weights(site: Site) -> np.ndarray | None:
    if not (site.transposed and site.affine is not None and site.group > 1):
        return None
    return legacy.fold_mnn_legacy(site.w.astype(np.float64), site.b, site.affine, group=site.group)[0]


def explain_output(site: Site, ref: Reference, actual: np.ndarray, result: Comparison) -> list[str]:
    if result.shape_actual != result.shape_expected:
        return [f"shape differs: engine output {list(result.shape_actual)}, reference {list(result.shape_expected)}"]
    lines = []
    if result.nan_count or result.inf_count:
        lines.append(f"NaN/garbage output: {result.nan_count} NaN and {result.inf_count} Inf values")
    hypotheses = {BIAS_MISSING: site.convolve(ref.x, ref.w_folded, None)}
    if site.affine is not None:
        hypotheses[TAIL_NOT_APPLIED] = ref.conv
        if site.b is not None:
            hypotheses[CONV_BIAS_DROPPED] = site.convolve(ref.x, ref.w_folded, ref.b_folded - site.affine.mul * site.b)
    legacy_w = _legacy_weights(site)
    if legacy_w is not None:
        hypotheses[LEGACY] = site.convolve(ref.x, legacy_w, ref.b_folded)
    no_epsilon = _epsilon_zero_fold(site)
    if no_epsilon is not None:
        hypotheses[epsilon_ignored(site)] = site.convolve(ref.x, *no_epsilon)
    if ref.relu:
        hypotheses = {k: np.maximum(v, 0.0) for k, v in hypotheses.items() if k != TAIL_NOT_APPLIED}
    found = matching(actual, hypotheses, ref.bound)
    return lines + (found or per_channel(actual, ref.expected, ref.bound, what="output"))


def _output_channel_of(site: Site) -> np.ndarray:
    """For every weight element, the output channel it feeds."""
    view, shape = output_channel_view(np.zeros(site.w.shape), site.group, site.transposed)
    return np.broadcast_to(np.arange(site.c_out).reshape(shape), view.shape).reshape(site.w.shape)


def judge_params(site: Site, ref: Reference, params: EngineParams) -> tuple[ParamCheck, list[str], list[str]]:
    """Compare the engine's effective ``(w, b)`` with the reference fold; return the check, explanations, notes."""
    notes = list(params.notes)
    kept = [f"{op.kind} '{op.name}'" for op in params.tail]
    if kept:
        notes.append(f"not folded: the converter kept {', '.join(kept)} after the conv (judged as composed)")
    w_eff, b_eff = params.effective(group=site.group, transposed=site.transposed)
    w_read, b_read = params.read_error(group=site.group, transposed=site.transposed)
    w_bound = ref.w_bound + w_read
    b_bound = ref.b_bound + (b_read if b_eff is not None else 0)
    resolutions = [params.resolution] + [op.resolution for op in params.tail]
    if max(resolutions):
        notes.append(f"some parameters were read from a text dump: compared to within its print resolution "
                     f"{max(resolutions):.1e}")
    weight = compare(w_eff.astype(np.float32), ref.w_folded, bound=w_bound)
    bias = None if b_eff is None else compare(b_eff.astype(np.float32), ref.b_folded, bound=b_bound)
    passed = weight.passed and (bias is None or bias.passed)
    explanations = []
    nonfinite = int((~np.isfinite(w_eff)).sum()) + (0 if b_eff is None else int((~np.isfinite(b_eff)).sum()))
    if nonfinite:
        explanations.append(f"NaN/Inf in the fused parameters: {nonfinite} non-finite weight or bias values")
    if not weight.passed and not nonfinite:
        if weight.shape_actual != weight.shape_expected:
            explanations.append(f"fused weight shape {list(weight.shape_actual)} differs from {list(weight.shape_expected)}")
        else:
            hypotheses = {WEIGHTS_UNSCALED: site.w.astype(np.float64)} if site.affine is not None else {}
            legacy_w = _legacy_weights(site)
            if legacy_w is not None:
                hypotheses[LEGACY] = legacy_w
            no_epsilon = _epsilon_zero_fold(site)
            if no_epsilon is not None:
                hypotheses[epsilon_ignored(site)] = no_epsilon[0]
            found = matching(w_eff, hypotheses, w_bound)
            if not found and site.affine is not None:
                source = scale_sources(w_eff, site.w, site.affine.mul, _output_channel_of(site))
                found = [f"fused weights wrong: {source}"] if source else []
            explanations += found or [f"fused weights wrong ({weight.elements_failed} of {w_eff.size} elements; "
                                      f"{weight.summary()})"]
    if bias is not None and not bias.passed and not nonfinite:
        zeros = np.zeros_like(ref.b_folded)
        hypotheses = {"bias missing in the fused op (all zero)": zeros}
        if site.b is not None and site.affine is not None:
            hypotheses[CONV_BIAS_DROPPED] = ref.b_folded - site.affine.mul * site.b
            hypotheses[BIAS_NOT_FOLDED] = site.b.astype(np.float64)
        no_epsilon = _epsilon_zero_fold(site)
        if no_epsilon is not None:
            hypotheses[epsilon_ignored(site)] = no_epsilon[1]
        found = matching(b_eff, hypotheses, b_bound)
        explanations += found or per_channel(b_eff, ref.b_folded, b_bound, what="fused bias")
    return ParamCheck(weight, bias, passed, kept), explanations, notes


def unrepeatable(first: np.ndarray, again: np.ndarray, run: int, results: tuple[Comparison, Comparison],
                 converted_again: bool) -> str:
    """Says how run ``run`` of the engine on the same input differed from its first; ``results``: both judged."""
    first64, again64 = first.astype(np.float64), again.astype(np.float64)
    differs = ~((first64 == again64) | (np.isnan(first64) & np.isnan(again64)))
    with np.errstate(invalid="ignore"):
        largest = float(np.nanmax(np.where(differs, np.abs(first64 - again64), 0.0)))
    channels = np.unique(np.nonzero(differs)[1]).tolist() if differs.ndim > 1 else []
    verdicts = ", ".join(f"run {n} {'passes' if r.passed else 'fails'}" for n, r in zip((1, run), results))
    again_how = f"run {run}, of a conversion of its own," if converted_again else f"run {run}"
    return (f"the engine's output is not repeatable: {again_how} on the same input differs from run 1 in "
            f"{int(differs.sum())} of {differs.size} values (largest difference {largest:.3g}), in output channels "
            f"{channels[:8]}{' ...' if len(channels) > 8 else ''}; {verdicts}")


def judge_site(site: Site, x: np.ndarray, engine: Engine, prepare: Callable[[int], object],
               runs: int = 2) -> SiteVerdict:
    """Judge one site on activation ``x``; ``prepare(run)`` returns the engine's converted model for run ``run``
    (1, 2, ...): a conversion of its own each, unless the model was given converted.

    The site is converted and run ``runs`` times on the same input: an output that changes from run to run (MNN
    3.6.1 now and then converts the 3-D Mul+Add demo site into a model that is wrong in one output channel)
    is reported as such, and judged by its worst run, rather than passing or failing by chance."""
    verdict = SiteVerdict(site.index, site.label, site.describe(), site.op, site.tail, site.group, site.rank,
                          dict(site.attributes), "fail")
    ref = reference(site, x)
    try:
        prepared = prepare(1)
    except EngineFailure as failure:
        verdict.failures.append(failure.to_dict())
        verdict.explanations.append(failure.explain())
        return verdict
    try:
        output = site.output_name
        try:
            actual = engine.run(prepared, {site.input_name: x}, output)
        except EngineFailure as failure:
            if failure.kind != "missing" or site.relu_output is None:
                raise
            # the engine fused the following Relu as well, so the site's own output tensor is gone: judge after
            # the Relu (it is 1-Lipschitz, so the bound still holds)
            output = site.relu_output
            actual = engine.run(prepared, {site.input_name: x}, output)
            ref = replace(ref, expected=np.maximum(ref.expected, 0.0), relu=True)
            verdict.notes.append("the converter fused the following Relu too; the output is judged after it")
        verdict.output = compare(actual, ref.expected, bound=ref.bound)
        for run in range(2, runs + 1):
            try:
                prepared_again = prepare(run)
                again = engine.run(prepared_again, {site.input_name: x}, output)
            except EngineFailure as failure:
                verdict.failures.append(failure.to_dict())
                verdict.explanations.append(f"the engine is not repeatable: run {run} failed where run 1 did not: "
                                            f"{failure.explain()}")
                break
            if np.array_equal(again, actual, equal_nan=True):
                continue
            result = compare(again, ref.expected, bound=ref.bound)
            finding = unrepeatable(actual, again, run, (verdict.output, result), prepared_again is not prepared)
            if verdict.output.passed and result.passed:
                verdict.notes.append(finding)  # within the bound either way
            else:
                verdict.explanations.append(finding)
            if verdict.output.passed and not result.passed:  # the failing run is the one explained
                verdict.output, actual, prepared = result, again, prepared_again
            break
        if not verdict.output.passed:
            verdict.explanations += explain_output(site, ref, actual, verdict.output)
    except EngineFailure as failure:
        verdict.failures.append(failure.to_dict())
        verdict.explanations.append(failure.explain())
    try:
        params = engine.site_params(prepared, site)
        verdict.params, explanations, notes = judge_params(site, ref, params)
        verdict.explanations += [f"parameters: {e}" for e in explanations]
        verdict.notes += notes
    except EngineFailure as failure:
        if failure.kind == "missing" and verdict.output is not None and verdict.output.passed:
            # the converter restructured the op beyond what can be mapped back, and computes it right
            verdict.notes.append(f"fused parameters not judged: {failure.detail}")
        else:
            verdict.failures.append(failure.to_dict())
            if failure.explain() not in verdict.explanations:
                verdict.explanations.append(failure.explain())
    if not verdict.failures and verdict.output.passed and (verdict.params is None or verdict.params.passed):
        verdict.status = "pass"
    return verdict


def check(model_path, engine: Engine, *, converted=None, seed: int = 0, workdir=None,
          progress: Callable[[int, int], None] | None = None, model: onnx.ModelProto | None = None,
          name: str | None = None, runs: int = 2) -> ModelReport:
    """Judge every site of the ONNX model at ``model_path`` (or ``model``) against ``engine``.

    ``converted``: the user's own converted model to judge instead of converting each site; ``runs``: conversions
    and runs of each site on the same input (``judge_site``). Raises ``FusionInputError`` for bad input (unreadable
    model, dynamic weights, unreadable converted file, ``runs`` < 1).
    """
    if runs < 1:
        raise FusionInputError(f"runs must be at least 1, got {runs}")
    started = time.perf_counter()
    model = model if model is not None else load(model_path)
    sites = find_sites(model)
    graph = Graph(model)
    feeds = random_feeds(input_shapes(model, graph.inputs), seed)
    values = activations(model, feeds, [site.input_name for site in sites])
    with tempfile.TemporaryDirectory(prefix="fusion-check-") as scratch:
        workdir = Path(workdir or scratch)
        whole = None
        if converted is not None:
            try:
                whole = engine.load(Path(converted), workdir)
            except EngineFailure as failure:
                raise FusionInputError(f"cannot read converted model {converted}: {failure.explain()}") from None
        verdicts = []
        for number, site in enumerate(sites):
            x = values[site.input_name]

            def prepare(run, site=site, x=x):
                if whole is not None:
                    return whole
                folder = workdir if run == 1 else workdir / f"run_{run}"
                folder.mkdir(exist_ok=True)
                path = folder / f"site_{site.index}.onnx"
                onnx.save(build.cut_site(site, model, x.shape), path)
                return engine.prepare(path, folder)

            verdicts.append(judge_site(site, x, engine, prepare, runs))
            if progress:
                progress(number + 1, len(sites))
    return ModelReport(name or str(model_path), engine.version(), verdicts, time.perf_counter() - started, seed)
