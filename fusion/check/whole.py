"""Judge the model the user converts: the whole converted model first, then every site inside it, then the culprit.

1. The whole model is converted once, as its users convert it (or the user's own converted file is taken), and run
   on the same inputs as the unfused oracle (onnxruntime, graph optimizations off). Every tensor the converted model
   still names is read in the same run, asked for when the model is loaded, never marked as an output at conversion.
2. Each watched tensor is compared with the oracle's within a tolerance taken from the oracle's own sensitivity
   (``fusion.check.stages``), twice: in context (the oracle run on the model's inputs), and on its stage's own inputs
   (the oracle recomputing it from the engine's values of the tensors it reads, ``fusion.graph.local``).
3. Each site is judged locally: its output in the converted model against the float64 reference computed on the
   converted model's *own* input to that site, on the tolerance ladder (exact, subnormals flushed, fast
   convolution), and its fused parameters against the fold. A site computes right or wrong whatever happened
   upstream; a site whose input is already wrong is ``downstream``.
4. The culprit is the first wrong thing in graph order: a site that computes wrongly, or a wrong tensor whose
   inputs are right. It is explained: named hypotheses, and the site cut out and converted alone on the oracle's
   input (right alone and wrong inside the model means the defect shows only in context).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from fusion.check.explain import Code, broadcast_as_channel, expectation, unrepeatable
from fusion.check.sites import (RELU_FUSED, blank_verdict, judge_output_into, judge_params_into,
                                judge_site, shape_help)
from fusion.check.stages import ACTIVATIONS, PERTURBATION, tensor_check
from fusion.check.verdicts import FirstWrong, ModelReport, SiteVerdict, TensorCheck, WholeModel
from fusion.diagnose import per_channel
from fusion.engines.base import Engine, EngineFailure
from fusion.errors import FusionInputError
from fusion.graph import build
from fusion.graph.local import ENGINE_PREFIX, computed_from
from fusion.graph.memory import DEFAULT_LIMIT, estimate, refuse_beyond
from fusion.graph.model import Graph, load
from fusion.graph.nodes import node_label
from fusion.graph.sites import Site, find_sites
from fusion.oracle import activations, float_tensors, input_shapes, random_feeds, sensitivity

@dataclass
class Run:
    """One conversion and run of the whole model: the engine's values, and the checks against the oracle."""

    prepared: object
    values: dict[str, np.ndarray]
    checks: dict[str, TensorCheck]

    def worst_output_ratio(self, outputs: list[str]) -> float:
        ratios = [self.checks[o].diff_max / max(self.checks[o].tolerance, 1e-300) for o in outputs if o in self.checks]
        return max(ratios, default=0.0)


class WholeModelJudge:
    """One check of one model against one engine; ``report`` is filled in by ``judge``."""

    def __init__(self, model: onnx.ModelProto, engine: Engine, report: ModelReport, feeds: dict, workdir: Path,
                 timeout: float | None = None):
        self.model, self.engine, self.report, self.feeds, self.workdir = model, engine, report, feeds, workdir
        self.timeout = timeout  # of each oracle run and each site's reference
        self.graph = Graph(model)
        self.sites = find_sites(model, [])
        self.outputs = [o.name for o in model.graph.output]
        self.order = {name: index for index, node in enumerate(model.graph.node) for name in node.output}
        self._regions: dict[str, tuple[frozenset, frozenset]] = {}
        self.renamed_names: set[str] = set()  # tensors whose converted-model value is another one (``renamed``)
        self.local: dict[str, np.ndarray] = {}  # the oracle's values computed from the engine's stage inputs

    # -- the oracle -------------------------------------------------------------------------------------------
    def run_oracle(self, help_text: str, seed: int) -> None:
        names = float_tensors(self.model) + self.outputs
        self.oracle = activations(self.model, self.feeds, names, inputs_help=help_text, timeout=self.timeout)
        self.spread = sensitivity(self.model, self.feeds, list(self.oracle), self.oracle, relative=PERTURBATION,
                                  seed=seed, timeout=self.timeout)
        self._non_finite_outputs()

    def _non_finite_outputs(self) -> None:
        """NaN or Inf in the oracle's graph outputs: said in a note (those elements are judged only on matching
        NaN-ness and sign), refused when no output holds a finite value to judge."""
        counts = {o: int(np.count_nonzero(~np.isfinite(self.oracle[o]))) for o in self.outputs if o in self.oracle}
        bad = {o: n for o, n in counts.items() if n}
        if bad and all(n == self.oracle[o].size for o, n in counts.items()):
            raise FusionInputError("every graph output of the unfused model is NaN or Inf on random inputs "
                                   f"({', '.join(bad)}): there is no finite value to judge a converted model by")
        for name, count in bad.items():
            self.report.notes.append(f"graph output {name!r}: {count} of {self.oracle[name].size} values are NaN or "
                                     "Inf in the unfused model itself; there the converted model must give the same "
                                     "non-finite value, the rest is judged within tolerance")

    # -- the engine -------------------------------------------------------------------------------------------
    def convert_and_run(self, prepare: Callable[[int], object], runs: int, converted_again: bool) -> Run | None:
        """Convert (``prepare(run)``) and run ``runs`` times; the worse run is kept; None when the engine failed."""
        try:
            prepared = prepare(1)
            available = self.engine.tensor_names(prepared)
        except EngineFailure as failure:
            self._model_failure(failure, "the whole model did not convert")
            return None
        self.watched = [n for n in self.oracle if n in available and n not in self.feeds]
        try:
            first = self._run(prepared)
        except EngineFailure as failure:
            self._model_failure(failure, "the converted model did not run")
            return None
        missing = [o for o in self.outputs if o not in available and o in self.oracle]
        if missing:
            self.report.explanations.append(f"the converted model has no graph output {missing}")
        for run in range(2, runs + 1):
            try:
                again = self._run(prepare(run))
            except EngineFailure as failure:
                self._model_failure(failure, f"the engine is not repeatable: run {run} failed where run 1 did not")
                return first
            differing = [n for n in self.watched if not np.array_equal(first.values[n], again.values[n],
                                                                       equal_nan=True)]
            if not differing:
                continue
            passes = [all(r.checks[o].passed for o in self.outputs if o in r.checks) for r in (first, again)]
            name = differing[0]
            finding = unrepeatable(first.values[name], again.values[name], run, tuple(passes), converted_again,
                                   what=f"tensor {name!r}")
            finding += f" ({len(differing)} of {len(self.watched)} watched tensors differ)"
            if all(passes):
                self.report.notes.append(finding)
            else:
                self.report.explanations.append(finding)
                self.report.failures.append({"code": Code.NOT_REPEATABLE.value, "explanation": finding})
            if again.worst_output_ratio(self.outputs) > first.worst_output_ratio(self.outputs):
                first = again  # judged by its worse run
            break
        return first

    def _run(self, prepared) -> Run:
        values = self.engine.run_many(prepared, self.feeds, self.watched)
        checks, shaped = {}, {}
        for name in self.watched:
            node = self.graph.producer.get(name)
            checks[name], shaped[name] = tensor_check(name, node_label(node) if node is not None else name,
                                                      self.oracle[name], values[name], self.spread.get(name, 0.0),
                                                      strict_shape=name in self.outputs)
        return Run(prepared, shaped, checks)

    def _model_failure(self, failure: EngineFailure, what: str) -> None:
        self.report.failures.append(failure.to_dict())
        self.report.explanations.append(f"{what}: {failure.explain()}")

    # -- where a tensor comes from ----------------------------------------------------------------------------
    def region(self, name: str, exposed: set[str]) -> tuple[frozenset, frozenset]:
        """``(inputs, nodes)``: the exposed tensors a tensor is computed from, through tensors the converted model
        no longer names, and the ONNX nodes in between (what the engine computes as one unit)."""
        if name in self._regions:
            return self._regions[name]
        inputs, nodes, stack, seen = set(), set(), [name], set()
        while stack:
            current = stack.pop()
            node = self.graph.producer.get(current)
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            nodes.add(node_label(node))
            for source in node.input:
                if not source or source in self.feeds or self.graph.constant(source) is not None:
                    continue
                if source in exposed:
                    inputs.add(source)
                else:
                    stack.append(source)
        self._regions[name] = (frozenset(inputs), frozenset(nodes))
        return self._regions[name]

    # -- the judgement ----------------------------------------------------------------------------------------
    def stage_checks(self, run: Run, seed: int) -> dict[str, TensorCheck]:
        """Every watched tensor against what the oracle computes from the engine's own inputs to its stage, within
        that stage's own sensitivity (its inputs and weights perturbed)."""
        given = {n: run.values[n].shape for n in self.watched if run.checks[n].shape is None}
        local_model = computed_from(self.model, given, self.watched)
        feeds = dict(self.feeds)
        feeds.update({ENGINE_PREFIX + n: run.values[n] for n in given})
        try:
            local = activations(local_model, feeds, self.watched, timeout=self.timeout)
            spread = sensitivity(local_model, feeds, list(local), local, relative=PERTURBATION, seed=seed + 7,
                                 timeout=self.timeout)
            self.local = local
        except FusionInputError as error:
            self.report.notes.append(f"stage-by-stage check not possible, tensors judged in context only: {error}")
            return {}
        checks = {}
        for name in self.watched:
            if name in local and name in given:
                checks[name] = tensor_check(name, run.checks[name].node, local[name], run.values[name],
                                            spread.get(name, 0.0), strict_shape=True)[0]
        return checks

    def judge(self, run: Run, seed: int) -> None:
        report, values, checks = self.report, run.values, run.checks
        self.values = values
        exposed = set(values) | set(self.feeds)
        report.tensors = [checks[n] for n in self.watched]
        self.context = checks
        self.stages = self.stage_checks(run, seed)
        report.stages = [self.stages[n] for n in self.watched if n in self.stages]
        local: dict[str, SiteVerdict] = {}  # by the tensor the site's output is read from
        for site in self.sites:
            verdict = self.judge_site(site, values)
            report.sites.append(verdict)
            read_from = site.output_name if site.output_name in values else site.relu_output
            if verdict.status != "not_exposed":
                local[read_from] = verdict
        report.first_wrong = self.culprit(values, exposed, local)
        if report.first_wrong is not None:
            self.mark_downstream(report.first_wrong, checks)
        outputs = [checks[o] for o in self.outputs if o in checks]
        outputs += [TensorCheck(o, o, 0.0, float("inf"), 0.0, 0.0, False, shape="missing from the converted model")
                    for o in self.outputs if o not in checks and o in self.oracle and o not in self.feeds]
        passed_through = [o for o in self.outputs if o in self.feeds]
        if passed_through:
            report.notes.append(f"graph output(s) {passed_through} are graph inputs passed through: not compared")
        other = [o for o in self.outputs if o not in self.oracle]
        if other:
            report.notes.append(f"graph output(s) {other} are not float32: not compared (the float tensors that "
                                "compute them are)")
        within = all(o.passed for o in outputs)
        right_stages = report.first_wrong is None and all(o.shape is None for o in outputs)
        if not within and right_stages:
            report.notes.append("graph outputs differ from the oracle beyond its perturbation tolerance, yet every "
                                "stage computes right on its own inputs: the difference is float32 error accumulated "
                                "through the model (fast convolution, flushed subnormals), not a wrong fold")
        report.whole_model = WholeModel(within or right_stages, outputs)

    def judge_site(self, site: Site, values: dict) -> SiteVerdict:
        """The site on the engine's own input (the tolerance ladder), or, when the converted model no longer names
        its input, its stage check; and its fused parameters."""
        verdict = blank_verdict(site, "pass")
        read_from = site.output_name if site.output_name in values else \
            site.relu_output if site.relu_output in values else None
        x = self.feeds.get(site.input_name, values.get(site.input_name))
        if read_from is None:
            verdict.status = "not_exposed"
            hidden = getattr(self.engine, "hidden_tensors", None)
            verdict.notes.append(hidden or f"the converted model has no tensor {site.output_name!r}: the converter "
                                 "merged the site with what follows; it is judged through the tensors after it")
        if x is None:  # the converter merged the site with what comes before it
            ref = expectation(site, self.oracle[site.input_name], self.timeout)
            if read_from is not None:
                verdict.notes.append(f"the converted model has no tensor {site.input_name!r} (the site's input): "
                                     "judged as one stage with what computes it")
                stage = self.stages.get(read_from)
                if stage is not None and not stage.passed:
                    verdict.status = "fail"
                    verdict.explanations.append(f"wrong on its stage's inputs: {stage.summary()}")
                    verdict.codes.append(Code.WRONG_VALUES.value)
        else:
            ref = expectation(site, np.asarray(x, np.float32), self.timeout)
            unfused = self.oracle.get(site.output_name)
            if read_from is not None and unfused is not None and unfused.shape != ref.expected.shape:
                # onnxruntime itself sizes this site otherwise than the ONNX definition (a SAME_* ConvTranspose whose
                # kernel is smaller than its stride, say): the engine is judged against it, as the whole model is
                stage = self.stages.get(read_from) or self.context.get(read_from)
                by_definition = blank_verdict(site, "pass")
                if stage is not None and stage.passed:
                    follows = "onnxruntime"
                elif judge_output_into(by_definition, site, ref, values[read_from]):
                    follows = "the ONNX definition"
                else:
                    follows = None
                    verdict.status = "fail"
                    verdict.explanations.append("wrong against both onnxruntime and the ONNX definition: "
                                                + (stage.summary() if stage is not None else "") + "; "
                                                + "; ".join(by_definition.explanations))
                    verdict.codes.append(Code.WRONG_SHAPE.value)
                verdict.notes.append(f"onnxruntime (unfused) gives this site the shape {list(unfused.shape)} where "
                                     f"the ONNX definition gives {list(ref.expected.shape)}"
                                     + (f"; the converted model follows {follows}" if follows else ""))
            elif read_from is not None:
                if read_from != site.output_name:
                    ref = ref.after_relu()
                    verdict.notes.append(RELU_FUSED)
                if not judge_output_into(verdict, site, ref, values[read_from]):
                    verdict.status = "fail"
        judge_params_into(verdict, site, ref, self.engine, self.prepared)
        if verdict.params is not None and not verdict.params.passed and read_from is None:
            # the output is not there to confirm it, and what follows is judged on its own: most often the converter
            # folded more than this site into the op (a chain the site does not cover)
            verdict.notes += [f"not confirmed by an output: {e}" for e in verdict.explanations]
            verdict.explanations, verdict.codes = [], []
        elif (verdict.params is not None and not verdict.params.passed) or verdict.failures:
            verdict.status = "fail"
        return verdict

    def ancestors(self, name: str) -> set[str]:
        """Every tensor ``name`` is computed from."""
        seen, stack = set(), [name]
        while stack:
            node = self.graph.producer.get(stack.pop())
            if node is None:
                continue
            for source in node.input:
                if source and source not in seen:
                    seen.add(source)
                    stack.append(source)
        return seen

    def mark_downstream(self, culprit: FirstWrong, checks: dict[str, TensorCheck]) -> None:
        """A site that computes right on an input that is wrong because of the culprit is downstream of it."""
        for site, verdict in zip(self.sites, self.report.sites):
            if verdict.status not in ("pass", "not_exposed") or site.index == culprit.site:
                continue
            source = site.input_name
            if source not in checks or checks[source].passed:
                continue
            if source == culprit.tensor or culprit.tensor in self.ancestors(source):
                verdict.status = "downstream"
                verdict.notes.append(f"its input is already wrong: downstream of the culprit {culprit.tensor!r}")

    def culprit(self, values: dict, exposed: set[str], local: dict[str, SiteVerdict]) -> FirstWrong | None:
        """The first wrong thing in graph order: a site that computes wrongly on its own input, or a tensor that is
        wrong on its stage's inputs."""
        for node in self.model.graph.node:
            for name in node.output:
                if name in local:
                    verdict = local[name]
                    if verdict.status == "fail":
                        return FirstWrong(name, node_label(self.sites[verdict.index].conv), verdict.index,
                                          list(verdict.explanations))
                    if self.sites[verdict.index].input_name in exposed:
                        continue  # judged on the ladder, sharper than the stage check
                shaped = self.context.get(name)
                if shaped is not None and shaped.shape is not None:
                    inputs, nodes = self.region(name, exposed)
                    if all(self.context[i].passed for i in inputs if i in self.context):
                        # a wrong shape from right inputs: no stage check is possible, and none is needed
                        return self.explain_tensor(name, node, nodes, values, shaped)
                stage = self.stages.get(name)
                if stage is None or stage.passed or self.renamed(name, exposed):
                    continue
                inputs, nodes = self.region(name, exposed)
                if inputs & self.renamed_names and self.context[name].passed:
                    continue  # recomputed from a value the converter named differently; right in context
                return self.explain_tensor(name, node, nodes, values, stage)
        for site, verdict in zip(self.sites, self.report.sites):  # failing parameters with no exposed output
            if verdict.status == "fail":
                return FirstWrong(site.output_name, node_label(site.conv), site.index, list(verdict.explanations))
        return None


    def renamed(self, name: str, exposed: set[str]) -> bool:
        """Whether the converted model's tensor ``name`` is not the value its readers used: every exposed tensor
        computed from it is right in context yet wrong when recomputed from it (an engine that gave the name to a
        partial result, e.g. a Gemm's product before its bias). Said in a note; not a culprit."""
        consumer = self.graph.only_consumer(name)
        if consumer is not None and consumer.op_type in ACTIVATIONS and consumer.output[0] in self.stages:
            after = consumer.output[0]
            value, fused = self.values[name], self.values[after]
            if value.shape == fused.shape and float(np.abs(value.astype(np.float64) - fused).max(initial=0.0)) <= \
                    self.stages[after].tolerance:
                self.report.notes.append(f"the converted model's tensor {name!r} holds the output of the "
                                         f"{consumer.op_type} after it (the converter fused the two); judged there")
                self.renamed_names.add(name)
                return True
        readers = [t for t in self.watched if t != name and name in self.region(t, exposed)[0]]
        if not readers or not all(t in self.stages and not self.stages[t].passed and self.context[t].passed
                                  for t in readers):
            return False
        self.report.notes.append(f"the converted model's tensor {name!r} differs from what the model computes there "
                                 f"({self.stages[name].summary()}), but the tensors computed from it are right: the "
                                 "converter gave that name to another value (not judged)")
        self.renamed_names.add(name)
        return True

    def site_input(self, site: Site, values: dict) -> np.ndarray:
        """The site's input as the engine has it, else as the oracle computes it."""
        for source in (self.feeds, values, self.oracle):
            if site.input_name in source:
                return np.asarray(source[site.input_name], np.float32)
        raise KeyError(site.input_name)

    def explain_tensor(self, name: str, node: onnx.NodeProto, nodes: frozenset, values: dict,
                       check: TensorCheck) -> FirstWrong:
        """A wrong tensor with right inputs (``check``: its stage check, or its context check when its shape is
        wrong): inside a fused site, or outside every fusion site."""
        inside = [s for s in self.sites if node_label(s.conv) in nodes]
        lines = [f"{node.op_type} node {node_label(node)!r} writes {name!r}, wrong on its own inputs: "
                 f"{check.summary()}"]
        local = self.local.get(name) if check.shape is None else None
        channels = per_channel(values[name], local, check.tolerance, what="tensor") if local is not None else []
        if not inside:
            lines.append("this lies outside the fusion sites" + (
                f": the converter computes {len(nodes)} ONNX nodes there as one unit ({', '.join(sorted(nodes)[:4])}"
                f"{' ...' if len(nodes) > 4 else ''})" if len(nodes) > 1 else ""))
            return FirstWrong(name, node_label(node), None, lines + channels)
        site = inside[0]
        verdict = self.report.sites[site.index]
        found = broadcast_as_channel(self.graph, site, name, self.site_input(site, values), values[name])
        if found:
            lines.append(found)
            verdict.codes.append(Code.BROADCAST_AS_CHANNEL.value)
        else:
            lines.append(f"the converter merged site {site.index} ({site.label}) with the nodes up to {name!r} "
                         "into one computation, and that is wrong")
            lines += channels
            verdict.codes.append(Code.WRONG_VALUES.value if check.shape is None else Code.WRONG_SHAPE.value)
        verdict.status = "fail"
        verdict.explanations += lines
        return FirstWrong(name, node_label(node), site.index, lines)


def check(model_path, engine: Engine, *, converted=None, seed: int = 0, workdir=None,
          model: onnx.ModelProto | None = None, name: str | None = None, runs: int = 2, shapes: dict | None = None,
          explain: bool = True, progress: Callable[[int, int], None] | None = None, timeout: float | None = 120.0,
          max_memory: int | None = DEFAULT_LIMIT) -> ModelReport:
    """Judge the ONNX model at ``model_path`` (or ``model``) as ``engine`` converts it whole (or as the user's own
    ``converted`` file has it): graph outputs, every site inside it, and the culprit.

    ``runs``: conversions and runs of the whole model on the same input (a converted file: runs of it);
    ``timeout``: seconds for each oracle run and each site's reference (the engine's steps have the engine's own);
    ``max_memory``: bytes a check may need (``fusion.graph.memory``), refused with ``TooLarge`` beyond;
    ``shapes``: sizes for dynamic input dimensions; ``explain``: convert the culprit site alone as well.
    Raises ``FusionInputError`` for bad input.
    """
    if runs < 1:
        raise FusionInputError(f"runs must be at least 1, got {runs}")
    started = time.perf_counter()
    notes: list[str] = []
    model = model if model is not None else load(model_path, notes)
    skipped: list[str] = []
    find_sites(model, skipped)  # bad attributes fail here, before anything runs
    graph = Graph(model)
    concrete = input_shapes(model, graph.inputs, shapes)
    refuse_beyond(estimate(model, concrete), max_memory, f"checking {name or model_path}")
    feeds = random_feeds(concrete, seed)
    report = ModelReport(name or str(model_path), engine.version(), [], 0.0, seed, notes=notes + skipped,
                         input_shapes=concrete)
    with tempfile.TemporaryDirectory(prefix="fusion-check-") as scratch:
        workdir = Path(workdir or scratch)
        judge = WholeModelJudge(model, engine, report, feeds, workdir, timeout)
        judge.run_oracle(shape_help(graph.inputs), seed)
        source = Path(model_path) if model_path is not None else workdir / "model.onnx"
        if model_path is None:
            onnx.save(model, source)
        if converted is not None:
            try:
                given = engine.load(Path(converted), workdir)
            except EngineFailure as failure:
                raise FusionInputError(f"cannot read converted model {converted}: {failure.explain()}") from None

        def prepare(run: int):
            if converted is not None:
                return given
            folder = workdir / f"run_{run}"
            folder.mkdir(exist_ok=True)
            return engine.prepare(source, folder)

        run = judge.convert_and_run(prepare, runs, converted is None)
        if run is None:
            for site in judge.sites:
                verdict = blank_verdict(site, "not_exposed")
                verdict.notes.append("not judged: the whole model did not convert or run; `fusion check --sites` "
                                     "judges each site converted alone")
                report.sites.append(verdict)
        else:
            judge.prepared = run.prepared
            judge.judge(run, seed)
            if explain and converted is None:
                explain_alone(judge, report, workdir)
    report.seconds = time.perf_counter() - started
    return report


def explain_alone(judge: WholeModelJudge, report: ModelReport, workdir: Path) -> None:
    """Convert the culprit site alone and run it on the oracle's input: does the defect need the whole model?"""
    culprit = report.first_wrong
    if culprit is None or culprit.site is None or report.sites[culprit.site].status == "not_exposed" or \
            Code.BROADCAST_AS_CHANNEL.value in report.sites[culprit.site].codes:
        return  # the defect lies in what the converter merged into the site, which the site alone does not hold
    site = judge.sites[culprit.site]
    x = np.asarray(judge.feeds[site.input_name] if site.input_name in judge.feeds else judge.oracle[site.input_name],
                   np.float32)
    folder = workdir / "alone"
    folder.mkdir(exist_ok=True)

    def prepare(run: int):
        path = folder / f"site_{site.index}.onnx"
        onnx.save(build.cut_site(site, judge.model, x.shape), path)
        return judge.engine.prepare(path, folder)

    alone = judge_site(site, x, judge.engine, prepare, runs=1, timeout=judge.timeout)
    verdict = report.sites[site.index]
    if alone.status == "pass":
        line = ("converted alone, the site computes right on the oracle's input: the defect shows only inside the "
                "whole model")
        verdict.codes.append(Code.CONTEXT_ONLY.value)
    elif set(alone.codes) <= set(verdict.codes) and alone.codes:
        line = "converted alone, the site is wrong the same way"
    else:
        line = "converted alone, the site is wrong too: " + (alone.explanations[0] if alone.explanations else
                                                             "its output or parameters differ")
    culprit.explanations.append(line)
    verdict.explanations.append(line)
