"""Judge sites cut out of the model, each converted alone (``fusion check --sites``), and the pieces both modes share.

A site is judged two ways: (a) its output on the activation it receives, against the float64 reference within the
tolerance ladder (``fusion.check.tolerance``); (b) the engine's fused weights and bias (plus any tail op it kept)
against ``fusion.fold`` within the fold's bound. Cut-site mode serves converters that cannot convert the whole
model, and explains a culprit found in the whole model; the verdict on a model is the whole-model judge's.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from fusion.check.explain import (Code, SiteExpectation, explain_output, failure_code, judge_params, expectation,
                                  unrepeatable)
from fusion.check.tolerance import EXACT, judge_output
from fusion.check.verdicts import ModelReport, SiteVerdict
from fusion.engines.base import Engine, EngineFailure
from fusion.errors import FusionInputError
from fusion.graph import build
from fusion.graph.memory import DEFAULT_LIMIT, estimate, refuse_beyond
from fusion.graph.model import Graph, load
from fusion.graph.sites import Site, find_sites
from fusion.oracle import activations, dynamic_inputs, input_shapes, random_feeds

RELU_FUSED = "the converter fused the following Relu too; the output is judged after it"


def blank_verdict(site: Site, status: str = "fail") -> SiteVerdict:
    return SiteVerdict(site.index, site.label, site.describe(), site.op, site.tail, site.group, site.rank,
                       dict(site.attributes), status)


def add_failure(verdict: SiteVerdict, failure: EngineFailure, prefix: str = "") -> None:
    verdict.failures.append(failure.to_dict())
    verdict.explanations.append(prefix + failure.explain())
    verdict.codes.append(failure_code(failure.kind).value)


def judge_output_into(verdict: SiteVerdict, site: Site, ref: SiteExpectation, actual: np.ndarray) -> bool:
    """Judge ``actual`` on the ladder, record it in ``verdict`` (explained when wrong); True when it passed."""
    judgement = judge_output(site, ref, actual)
    verdict.output, verdict.held = judgement.comparison, judgement.held
    if judgement.held not in (None, EXACT):
        verdict.notes.append(f"output within the error of {judgement.held} (beyond the direct-summation bound: "
                             f"{judgement.comparison.summary()})")
    if not judgement.passed:
        lines, codes = explain_output(site, ref, actual, judgement.comparison, judgement.bound)
        verdict.explanations += lines
        verdict.codes += [c.value for c in codes]
    return judgement.passed


def judge_params_into(verdict: SiteVerdict, site: Site, ref: SiteExpectation, engine: Engine, prepared) -> None:
    """Read the site's fused parameters from the converted model and judge them into ``verdict``."""
    try:
        params = engine.site_params(prepared, site)
    except EngineFailure as failure:
        if failure.kind == "missing" and (verdict.output is None or verdict.output.passed):
            # the converter restructured the op beyond what can be mapped back, and computes it right (or, in a whole
            # model, merged it with what follows, which is judged there)
            verdict.notes.append(f"fused parameters not judged: {failure.detail}")
        elif failure.explain() not in verdict.explanations:
            add_failure(verdict, failure)
        return
    verdict.params, explanations, notes, codes = judge_params(site, ref, params)
    verdict.explanations += [e for e in dict.fromkeys(f"parameters: {e}" for e in explanations)
                             if e not in verdict.explanations]
    verdict.notes += notes
    verdict.codes += [c.value for c in codes if c.value not in verdict.codes]


def judge_site(site: Site, x: np.ndarray, engine: Engine, prepare: Callable[[int], object],
               runs: int = 2, timeout: float | None = None) -> SiteVerdict:
    """Judge one site on activation ``x``; ``prepare(run)`` returns the engine's converted model for run ``run``
    (1, 2, ...): a conversion of its own each, unless the model was given converted.

    The site is converted and run ``runs`` times on the same input: an output that changes from run to run is
    reported as such, and judged by its worst run, rather than passing or failing by chance."""
    verdict = blank_verdict(site)
    ref = expectation(site, x, timeout)
    try:
        prepared = prepare(1)
    except EngineFailure as failure:
        add_failure(verdict, failure)
        return verdict
    try:
        output = site.output_name
        try:
            actual = engine.run(prepared, {site.input_name: x}, output)
        except EngineFailure as failure:
            if failure.kind != "missing" or site.relu_output is None:
                raise
            # the engine fused the following Relu as well, so the site's own output tensor is gone
            output = site.relu_output
            actual = engine.run(prepared, {site.input_name: x}, output)
            ref = ref.after_relu()
            verdict.notes.append(RELU_FUSED)
        first = judge_output(site, ref, actual)
        for run in range(2, runs + 1):
            try:
                prepared_again = prepare(run)
                again = engine.run(prepared_again, {site.input_name: x}, output)
            except EngineFailure as failure:
                add_failure(verdict, failure, f"the engine is not repeatable: run {run} failed where run 1 did not: ")
                break
            if np.array_equal(again, actual, equal_nan=True):
                continue
            second = judge_output(site, ref, again)
            finding = unrepeatable(actual, again, run, (first.passed, second.passed), prepared_again is not prepared)
            if first.passed and second.passed:
                verdict.notes.append(finding)  # within the tolerance either way
            else:
                verdict.explanations.append(finding)
                verdict.codes.append(Code.NOT_REPEATABLE.value)
            if first.passed and not second.passed:  # the failing run is the one explained
                actual, prepared = again, prepared_again
            break
        judge_output_into(verdict, site, ref, actual)
    except EngineFailure as failure:
        add_failure(verdict, failure)
    judge_params_into(verdict, site, ref, engine, prepared)
    if not verdict.failures and verdict.output is not None and verdict.output.passed \
            and Code.NOT_REPEATABLE.value not in verdict.codes and (verdict.params is None or verdict.params.passed):
        verdict.status = "pass"
    return verdict


def check_sites(model_path, engine: Engine, *, converted=None, seed: int = 0, workdir=None,
                progress: Callable[[int, int], None] | None = None, model: onnx.ModelProto | None = None,
                name: str | None = None, runs: int = 2, shapes: dict | None = None, timeout: float | None = 120.0,
                max_memory: int | None = DEFAULT_LIMIT) -> ModelReport:
    """Judge every site of the ONNX model at ``model_path`` (or ``model``), each cut out and converted alone.

    ``converted``: the user's own converted model, cut at the same tensors instead of converting each site;
    ``runs``: conversions and runs of each site on the same input (``judge_site``); ``shapes``: sizes for the
    graph inputs' dynamic dimensions; ``timeout``, ``max_memory``: as for ``check``. Raises ``FusionInputError``
    for bad input.
    """
    if runs < 1:
        raise FusionInputError(f"runs must be at least 1, got {runs}")
    started = time.perf_counter()
    notes: list[str] = []
    model = model if model is not None else load(model_path, notes)
    sites = find_sites(model, notes)
    graph = Graph(model)
    concrete = input_shapes(model, graph.inputs, shapes)
    refuse_beyond(estimate(model, concrete), max_memory, f"checking {name or model_path}")
    feeds = random_feeds(concrete, seed)
    values = activations(model, feeds, [site.input_name for site in sites], inputs_help=shape_help(graph.inputs),
                         timeout=timeout)
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

            verdicts.append(judge_site(site, x, engine, prepare, runs, timeout))
            if progress:
                progress(number + 1, len(sites))
    return ModelReport(name or str(model_path), engine.version(), verdicts, time.perf_counter() - started, seed,
                       mode="sites", notes=notes, input_shapes=concrete)


def shape_help(inputs) -> str:
    """What to tell a user whose model onnxruntime cannot run with the sizes chosen for its dynamic inputs."""
    dynamic = dynamic_inputs(inputs)
    if not dynamic:
        return ""
    return (f"dynamic input(s) {', '.join(dynamic)}: give their sizes with --input-shape NAME:d0,d1,... "
            "(repeatable)")
