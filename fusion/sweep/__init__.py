"""``fusion sweep``: a differential campaign that finds converter bugs before users do.

Configurations are drawn deterministically from ``(seed, index)``, built as one-site ONNX models and judged by
``fusion.check`` (outputs and fused parameters). Failures are grouped by what went wrong (their explanations,
numbers stripped) and by op, rank and tail; one failure of each group is shrunk greedily to a minimal configuration
that still fails the same way, and written as a reproducer ``.onnx`` with the command that re-checks it.
Every judged configuration is appended to ``judged.jsonl``, so a re-run with the same seed and folder resumes.
"""

from __future__ import annotations

import fcntl
import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np

from fusion.errors import FusionInputError
from fusion.files import write_atomic
from fusion.graph.build import CONSTANT_SHAPES, CONV_OUTPUT_USES, PARAMS_VIA, SiteSpec, build, constant_shape
from fusion.fold import output_channels
from fusion.graph import space
from fusion.graph.sites import TAILS
from fusion.sweep.table import fold_table, markdown as table_markdown


def random_spec(seed: int, index: int, *, dims=(1, 2, 3), tails=TAILS, contexts: bool = True) -> SiteSpec:
    """Configuration ``index`` of campaign ``seed`` (``fusion.graph.space`` with ``space.SWEEP``, plus a tail, a bias
    or not, and BN's epsilon): the same arguments always give the same configuration. ``contexts``: also draw the
    context around the site (``with_context``)."""
    spec = _random_site(seed, index, dims, tails)
    return with_context(spec, np.random.default_rng([seed, index, 1])) if contexts else spec


def with_context(spec: SiteSpec, rng) -> SiteSpec:
    """``spec`` with a drawn context: Mul/Add constants of every broadcast shape (``build.CONSTANT_SHAPES``), the
    conv's output also a graph output or read by a second node, the tail's parameters through ``Constant`` or
    ``Identity`` nodes. A separate generator: the site itself is the one drawn without a context."""
    if spec.tail == "none":
        return spec
    shape = "channel"
    if spec.tail in ("mul", "mul_add", "add"):
        shape = str(rng.choice(CONSTANT_SHAPES, p=[0.5, 0.1, 0.1, 0.12, 0.06, 0.12]))
        if shape == "leading" and spec.input_shape[0] > 1:
            shape = "channel"  # (C, 1, 1, 1) against a batch of N > 1 broadcasts only when N == C
    use = str(rng.choice(CONV_OUTPUT_USES, p=[0.8, 0.1, 0.1]))
    via = str(rng.choice(PARAMS_VIA, p=[0.7, 0.15, 0.15]))
    return replace(spec, constant_shape=shape, conv_output_use=use, params_via=via)


def _random_site(seed: int, index: int, dims, tails) -> SiteSpec:
    rng = np.random.default_rng([seed, index])
    while True:
        transposed = rng.random() < 0.8
        try:
            config = space.draw(space.NumpyChoose(rng), space.SWEEP, transposed=transposed,
                                rank=int(rng.choice(dims)))
        except FusionInputError:
            continue
        attributes = dict(config["attributes"])
        group = attributes.pop("group")
        w_shape = config["w_shape"]
        return SiteSpec("ConvTranspose" if transposed else "Conv", config["x_shape"],
                        output_channels(w_shape, group=group, transposed=transposed), group, w_shape[2:], attributes,
                        bool(rng.random() < 0.7), str(rng.choice(tails)), int(rng.integers(0, 2**31)),
                        f"sweep_{seed}_{index}",
                        bn_epsilon=float(rng.choice([1e-5, 1e-3])) if rng.random() < 0.85 else None)


def signature(codes: list[str], failures: list[dict]) -> tuple[str, ...]:
    """What "fails the same way" means for grouping and shrinking: the explanation codes of a verdict
    (``fusion.check.Code``), and for each engine failure its kind and stage (a crash while converting is not one while
    running). Numbers, channels and names that differ from case to case are not in it."""
    return tuple(sorted(set(codes) | {f"{f['kind']} while {f['stage']}" for f in failures}))


INTERNAL_ERROR = "fusion_internal_error"


@dataclass
class Outcome:
    index: int
    spec: dict
    status: str
    signature: list[str]
    explanations: list[str]
    notes: list[str]
    seconds: float


def judge(spec: SiteSpec, engine, index: int = -1) -> Outcome:
    """Judge one configuration with ``fusion.check``'s machinery."""
    from fusion.check import check_sites

    started = time.perf_counter()
    try:
        # one engine run per configuration: a campaign spends the repeat run of ``fusion check`` on more
        # configurations instead
        if not whole_free(spec):
            return _judge_whole(spec, engine, index, started)
        report = check_sites(None, engine, model=build(spec), name=spec.name, runs=1)
    except FusionInputError as error:  # the oracle itself cannot run it (onnxruntime's own limits): no verdict
        return _unjudged(spec, index, error, started)
    except Exception as error:  # one configuration must never end a campaign: record it, and it is ours to fix
        explanations = [f"fusion could not judge this configuration: {type(error).__name__}: {error}"]
        return Outcome(index, spec.to_dict(), "fail", [INTERNAL_ERROR], explanations, [],
                       time.perf_counter() - started)
    site = report.sites[0]
    return Outcome(index, spec.to_dict(), site.status, list(signature(site.codes, site.failures)), site.explanations,
                   site.notes, time.perf_counter() - started)


def _unjudged(spec: SiteSpec, index: int, error: FusionInputError, started: float) -> Outcome:
    return Outcome(index, spec.to_dict(), "unjudged", [], [str(error)], [], time.perf_counter() - started)


def whole_free(spec: SiteSpec) -> bool:
    """True when the configuration is judged cut out (``fusion check --sites``); else its context needs the whole
    model converted (``fusion check``)."""
    return spec.plain_context


def _judge_whole(spec: SiteSpec, engine, index: int, started: float) -> Outcome:
    """A configuration whose context matters (a broadcast constant, a second reader of the conv's output, parameters
    through nodes) is judged as ``fusion check`` judges a user's model: converted whole."""
    from fusion.check import check

    try:
        report = check(None, engine, model=build(spec), name=spec.name, runs=1, explain=False)
    except FusionInputError as error:
        return _unjudged(spec, index, error, started)
    codes = [code for site in report.sites for code in site.codes] + [f["code"] for f in report.failures
                                                                      if "code" in f]
    failures = [f for site in report.sites for f in site.failures] + [f for f in report.failures if "kind" in f]
    explanations = list(report.explanations) + (report.first_wrong.explanations if report.first_wrong else []) + \
        [e for site in report.sites for e in site.explanations]
    wrong = [o for o in (report.whole_model.outputs if report.whole_model else []) if not o.passed]
    if not report.passed and not codes and not failures:  # a graph output wrong with no site to blame
        codes = ["wrong_output_shape" if any(o.shape for o in wrong) else "wrong_output"]
        explanations += [f"output {o.name}: {o.summary()}" for o in wrong]
    notes = list(report.notes) + [n for site in report.sites for n in site.notes]
    return Outcome(index, spec.to_dict(), "pass" if report.passed else "fail", list(signature(codes, failures)),
                   explanations, notes, time.perf_counter() - started)


def _simpler(spec: SiteSpec):
    """Candidate simplifications of ``spec``, most drastic first."""
    rank = len(spec.kernel_shape)
    c_in_g, c_out_g = spec.input_shape[1] // spec.group, spec.c_out // spec.group
    attributes = spec.attributes

    def with_attributes(**changes):
        updated = {k: v for k, v in {**attributes, **changes}.items() if v is not None}
        return replace(spec, attributes=updated)

    if spec.tail != "none":  # whether the tail matters is for the shrinker to find out
        yield replace(spec, tail="none")
    for name, plain in (("constant_shape", "channel"), ("conv_output_use", "single"), ("params_via", "initializer")):
        if getattr(spec, name) != plain:
            yield replace(spec, **{name: plain})
    yield replace(spec, input_shape=(1,) + spec.input_shape[1:])
    for group in sorted({g for g in (1, 2) if g < spec.group}):
        yield replace(spec, group=group, input_shape=(spec.input_shape[0], c_in_g * group) + spec.input_shape[2:],
                      c_out=c_out_g * group)
    if c_in_g > 1:
        yield replace(spec, input_shape=(spec.input_shape[0], spec.group) + spec.input_shape[2:])
        yield replace(spec, input_shape=(spec.input_shape[0], 2 * spec.group) + spec.input_shape[2:])
    if c_out_g > 1:
        yield replace(spec, c_out=spec.group)
    for axis in range(rank):
        for smaller in (1, 2, spec.input_shape[2 + axis] // 2):
            if 0 < smaller < spec.input_shape[2 + axis]:
                shape = list(spec.input_shape)
                shape[2 + axis] = smaller
                yield replace(spec, input_shape=tuple(shape))
        if spec.kernel_shape[axis] > 1:
            kernel = list(spec.kernel_shape)
            kernel[axis] = 1
            yield replace(spec, kernel_shape=tuple(kernel))
    for name in ("output_shape", "output_padding", "auto_pad", "pads"):
        if name in attributes:
            yield with_attributes(**{name: None})
    for name in ("strides", "dilations"):
        if any(v != 1 for v in attributes.get(name, [])):
            yield with_attributes(**{name: [1] * rank})
    if spec.bias:
        yield replace(spec, bias=False)


def shrink(spec: SiteSpec, wanted: tuple[str, ...], engine, *, budget: int = 40) -> tuple[SiteSpec, int]:
    """Greedily simplify ``spec`` while it still fails with signature ``wanted``; returns it and the judgements spent.
    When onnxruntime (optimizations off) computes ``spec`` right, every simplification kept must keep it so: a
    reproducer that onnxruntime itself rejects or gets wrong proves nothing about the engine."""
    spent = 0
    improved = True
    keep_oracle = oracle_agrees(spec)[0]
    while improved and spent < budget:
        improved = False
        for candidate in _simpler(spec):
            if candidate == spec:
                continue
            try:
                candidate.geometry()
            except FusionInputError:
                continue
            if spent >= budget:
                break
            if keep_oracle and not oracle_agrees(candidate)[0]:
                continue
            spent += 1
            outcome = judge(candidate, engine)
            if outcome.status == "fail" and tuple(outcome.signature) == wanted:
                spec, improved = candidate, True
                break
    return spec, spent


def essentials(spec: SiteSpec) -> list[str]:
    """The attributes of a (minimal) configuration that are not at their defaults: the ones that matter."""
    c_in_g, c_out_g = spec.input_shape[1] // spec.group, spec.c_out // spec.group
    found = [f"{spec.op} {len(spec.kernel_shape)}-D", f"tail {spec.tail}"]
    if spec.group > 1:
        found.append("depthwise" if c_in_g == 1 and c_out_g == 1 else f"group {spec.group}")
    if c_in_g > 1 and spec.group > 1:
        found.append("C_in/group > 1")
    if c_out_g > 1:
        found.append("C_out/group > 1")
    for name, value in spec.attributes.items():
        if name in ("strides", "dilations") and all(v == 1 for v in value):
            continue
        if name in ("pads", "output_padding") and not any(value):
            continue
        found.append(f"{name}={value}")
    if spec.tail == "bn" and spec.bn_epsilon is None:
        found.append("BN epsilon attribute absent")
    if spec.constant_shape != "channel" and spec.tail in ("mul", "mul_add", "add"):
        shape = constant_shape(spec.constant_shape, spec.c_out, len(spec.kernel_shape), spec.geometry().output_shape)
        found.append(f"Mul/Add constants shaped {spec.constant_shape} {list(shape)}")
    if spec.conv_output_use != "single" and spec.tail != "none":
        found.append(f"conv output: {spec.conv_output_use.replace('_', ' ')}")
    if spec.params_via != "initializer" and spec.tail != "none":
        found.append(f"tail parameters through {spec.params_via} nodes")
    found.append("bias" if spec.bias else "no bias")
    return found


def _group_key(outcome: Outcome) -> str:
    spec = outcome.spec
    return json.dumps([outcome.signature, spec["op"], len(spec["kernel_shape"])])


def run(out: str | Path, engine, *, budget: int = 200, seed: int = 0, dims=(1, 2, 3), tails=TAILS, workers: int = 2,
        dask_address: str | None = None, dask_client=None, shrink_budget: int = 40,
        progress: Callable[[int, int], None] | None = None, engine_name: str | None = None) -> dict:
    """Run (or resume) a campaign of ``budget`` configurations; writes ``out`` and returns the report.
    ``engine_name``: the ``--engine`` that re-checks a reproducer (``fusion.engines.registry``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out):
        return _run_locked(out, engine, budget, seed, dims, tails, workers, dask_address, dask_client, shrink_budget,
                           progress, engine_name)


@contextmanager
def _exclusive(out: Path):
    """One campaign a folder at a time: a second ``fusion sweep --out`` on the same folder is refused."""
    with open(out / ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FusionInputError(f"another fusion sweep is writing {out}; give this one another --out") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _journal(journal: Path, seed: int, version: str) -> dict[int, Outcome]:
    """The configurations already judged; a line cut short by a kill is skipped (that one is judged again) and
    ended, so that the next record starts on a line of its own."""
    done: dict[int, Outcome] = {}
    if not journal.exists():
        return done
    text = journal.read_text(errors="replace")
    if text and not text.endswith("\n"):
        with open(journal, "a", encoding="utf-8") as log:
            log.write("\n")  # end the line a kill cut short, so the next record starts on a line of its own
    for line in text.splitlines():
        try:
            record = json.loads(line)
            outcome = Outcome(**record["outcome"])
        except (ValueError, KeyError, TypeError):
            continue
        if record.get("seed") == seed and record.get("engine") == version:
            done[record["index"]] = outcome
    return done


def _run_locked(out: Path, engine, budget, seed, dims, tails, workers, dask_address, dask_client, shrink_budget,
                progress, engine_name) -> dict:
    journal = out / "judged.jsonl"
    done = _journal(journal, seed, engine.version())
    todo = [i for i in range(budget) if i not in done]
    # an engine that converts one site alone (the planted test engines) is given sites without a context
    contexts = getattr(engine, "converts_whole_models", True)
    specs = {i: random_spec(seed, i, dims=dims, tails=tails, contexts=contexts) for i in todo}
    with open(journal, "a", encoding="utf-8") as log:
        def record(outcome: Outcome):
            done[outcome.index] = outcome
            log.write(json.dumps({"seed": seed, "engine": engine.version(), "index": outcome.index,
                                  "outcome": asdict(outcome)}) + "\n")
            log.flush()
            if progress:
                progress(len(done), budget)

        for outcome in _judge_all(specs, engine, workers, dask_address, dask_client):
            record(outcome)
    return _report(out, engine, seed, budget, [done[i] for i in range(budget) if i in done], shrink_budget,
                   engine_name)


def _judge_all(specs: dict, engine, workers: int, dask_address, dask_client):
    if dask_address or dask_client:
        from distributed import Client, as_completed as dask_completed

        client = dask_client or Client(dask_address)
        try:
            futures = [client.submit(judge, spec, engine, index, pure=False) for index, spec in specs.items()]
            for future in dask_completed(futures):
                yield future.result()
        finally:
            if dask_client is None:
                client.close()
        return
    if workers <= 1:
        for index, spec in specs.items():
            yield judge(spec, engine, index)
        return
    # spawn, not fork: a forked child would inherit an initialised OpenMP runtime, which is not fork-safe
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(judge, spec, engine, index) for index, spec in specs.items()]
        for future in as_completed(futures):
            yield future.result()


def oracle_agrees(spec: SiteSpec, seed: int = 0) -> tuple[bool, str]:
    """Whether onnxruntime with every graph optimization off (the oracle; the runtime of the ONNX rewriters too)
    computes the unfused configuration within the site's bound of the float64 reference. ``(False, why)`` means a
    failure on it is the runtime's own, not the converter's fold."""
    from fusion.check.explain import expectation
    from fusion.check.tolerance import judge_output
    from fusion.graph.sites import find_sites
    from fusion.oracle import activations, random_feeds

    model = build(spec)
    site = find_sites(model)[0]
    feeds = random_feeds({site.input_name: tuple(spec.input_shape)}, seed)
    try:
        value = activations(model, feeds, [site.output_name])[site.output_name]
    except FusionInputError as error:
        return False, f"onnxruntime cannot run it: {error}"
    judgement = judge_output(site, expectation(site, feeds[site.input_name]), value)
    if judgement.passed:
        return True, "onnxruntime (optimizations off) agrees with the float64 reference"
    return False, ("onnxruntime (optimizations off) disagrees with the float64 reference: "
                   f"{judgement.comparison.summary()}")


def _report(out: Path, engine, seed: int, budget: int, outcomes: list[Outcome], shrink_budget: int,
            engine_name: str | None = None) -> dict:
    groups: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        if outcome.status == "fail":
            groups.setdefault(_group_key(outcome), []).append(outcome)
    repro = out / "repro"
    repro.mkdir(exist_ok=True)
    shrunk_cache = out / "shrunk.json"
    cache = json.loads(shrunk_cache.read_text()) if shrunk_cache.exists() else {}
    entries, shrunk_tails = [], {}
    for number, (key, members) in enumerate(sorted(groups.items(), key=lambda item: -len(item[1]))):
        first = members[0]
        cache_key = f"{seed}:{engine.version()}:{key}"
        if cache_key not in cache:
            minimal, spent = shrink(SiteSpec.from_dict(first.spec), tuple(first.signature), engine,
                                    budget=shrink_budget)
            cache[cache_key] = {"spec": minimal.to_dict(), "spent": spent}
            write_atomic(shrunk_cache, json.dumps(cache, indent=1))
        minimal = SiteSpec.from_dict(cache[cache_key]["spec"])
        minimal = replace(minimal, name=f"group_{number:02d}")
        shrunk_tails[key] = minimal.tail
        path = repro / f"group_{number:02d}.onnx"
        write_atomic(path, build(minimal).SerializeToString())
        agrees, agreement = oracle_agrees(minimal)
        entries.append({
            "oracle_agrees": agrees, "oracle": agreement,
            "group": number, "count": len(members), "signature": first.signature,
            "explanations": first.explanations, "notes": first.notes,
            "op": first.spec["op"], "rank": len(first.spec["kernel_shape"]),
            "tails": sorted({m.spec["tail"] for m in members}),
            "attributes_that_matter": essentials(minimal), "minimal": minimal.to_dict(),
            "shrink_judgements": cache[cache_key]["spent"], "reproducer": str(path),
            "command": f"fusion check {'--sites ' if whole_free(minimal) else ''}{path}"
                       + (f" --engine {engine_name}" if engine_name else ""),
            "indices": [m.index for m in members][:50],
        })
    runtime_agrees = None
    if getattr(engine, "runs_on_onnxruntime", False):
        runtime_agrees = lambda spec: oracle_agrees(spec)[0]  # noqa: E731
    tail_free_groups = {key for key, tail in shrunk_tails.items() if tail == "none"}
    report = {"engine": engine.version(), "seed": seed, "budget": budget, "judged": len(outcomes),
              "runs_on_onnxruntime": runtime_agrees is not None,
              "passed": sum(o.status == "pass" for o in outcomes), "failed": sum(o.status == "fail" for o in outcomes),
              "unjudged": sum(o.status == "unjudged" for o in outcomes),
              "judge_seconds": sum(o.seconds for o in outcomes), "groups": entries,
              "table": fold_table(outcomes, runtime_agrees, lambda o: _group_key(o) in tail_free_groups)}
    write_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_atomic(out / "report.md", markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = [f"# fusion sweep against {report['engine']}", "",
             f"Seed {report['seed']}: {report['judged']} configurations judged, {report['passed']} passed, "
             f"{report['failed']} failed, in {len(report['groups'])} groups; {report.get('unjudged', 0)} not judged "
             "(onnxruntime, the oracle, cannot run them).",
             f"Groups where onnxruntime with optimizations off already disagrees with the float64 reference on the "
             f"unfused reproducer: {sum(not g.get('oracle_agrees', True) for g in report['groups'])}.", ""]
    if "table" in report:
        lines += ["## Folds by kind", "", "Per-channel tails a converter may fold (`ok`: folded right; `kept`: left as "
                  "an op of its own, right; `WRONG`; `runtime`: onnxruntime's own failure, which also runs this "
                  "engine's model):", "", *table_markdown(report["table"]), ""]
    for group in report["groups"]:
        lines += [f"## Group {group['group']}: {group['count']} configuration(s): {group['op']} "
                  f"{group['rank']}-D (tails seen: {', '.join(group['tails'])})", "",
                  "What went wrong:", *[f"- {e}" for e in group["explanations"]], "",
                  f"Attributes that matter (minimal configuration after {group['shrink_judgements']} shrink "
                  f"judgements): {', '.join(group['attributes_that_matter'])}", "",
                  f"Reproducer: `{group['reproducer']}`; re-check with `{group['command']}`", "",
                  f"On the reproducer unfused: {group.get('oracle', 'not checked')}" + (
                      "" if group.get("oracle_agrees", True) else
                      " — the failure is onnxruntime's own (it runs this engine's model), not the converter's fold"
                      if report.get("runs_on_onnxruntime") else
                      " — onnxruntime is wrong there too: a defect both runtimes share, not a fold"), ""]
    return "\n".join(lines)
