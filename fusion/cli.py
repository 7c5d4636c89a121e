"""The ``fusion`` command line: argument parsing and printing only.

Exit codes: 0 every site passed, 1 a site failed or the engine failed, 2 bad input (or a model too large or too
slow to judge within --max-memory and --timeout), 3 an internal error of fusion (a bug: please report it).
"""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console
from rich.progress import Progress

import fusion
from fusion.errors import FusionInputError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusion", description="Golden reference checks for conv + BN/Scale fusion.")
    parser.add_argument("--version", action="version", version=f"fusion {fusion.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="judge a converted model against the unfused reference, stage by stage",
                                description="Convert MODEL whole with MNN (or take your --mnn file), run it on the same "
                                "inputs as the unfused model (onnxruntime, optimizations off), compare every graph "
                                "output and every tensor inside it, judge each Conv/ConvTranspose (+ BatchNormalization "
                                "or Mul/Add) site on its own input, and name the first wrong stage. Without MODEL, runs "
                                "the built-in demo set.")
    check.add_argument("model", nargs="?", help="ONNX model (default: the built-in demo set)")
    check.add_argument("--engine", default="mnn", help="the converter to judge (`fusion engines` lists them; default mnn)")
    check.add_argument("--mnn", help="your own converted .mnn of MODEL, judged instead of converting it (engine mnn)")
    check.add_argument("--sites", action="store_true",
                       help="cut each site out and convert it alone instead (for a converter that cannot convert the "
                            "whole model)")
    check.add_argument("--input-shape", action="append", default=[], metavar="NAME:d0,d1,...",
                       help="sizes of an input with dynamic dimensions (repeatable; default: batch 1, other dynamic "
                            "axes 64)")
    check.add_argument("--converter", help="path of an MNNConvert binary to use instead of the installed wheel's")
    check.add_argument("--json", dest="json_path", help="write a machine-readable report here (atomically)")
    check.add_argument("--seed", type=int, default=0, help="seed of the random model inputs (default 0)")
    check.add_argument("--timeout", type=float, default=120.0,
                       help="seconds before a step (an engine's, an oracle run, a site's reference) counts as hung")
    check.add_argument("--max-memory", default="8G", help="refuse a model whose check would need more (default 8G)")
    check.add_argument("--threads", type=int, default=1, help="MNN CPU threads")
    check.add_argument("--runs", type=int, default=2,
                       help="conversions and runs on the same input; an output that changes is a finding (default 2)")
    fuse = commands.add_parser("fuse", help="fold every foldable site of a model and verify it",
                               description="Fold each Conv/ConvTranspose + BatchNormalization or per-channel Mul/Add "
                               "with fusion.fold, verify the folded model with onnxruntime against the reference "
                               "within the bound, and write OUT atomically. IN is never modified.")
    fuse.add_argument("input", metavar="IN")
    fuse.add_argument("output", metavar="OUT")
    fuse.add_argument("--seed", type=int, default=0, help="seed of the random verification inputs")
    fuse.add_argument("--json", dest="json_path", help="write the fold report here")
    fuse.add_argument("--timeout", type=float, default=120.0,
                      help="seconds before an onnxruntime run or a site's reference counts as hung")
    fuse.add_argument("--max-memory", default="8G", help="refuse a model whose verification would need more")
    sweep = commands.add_parser("sweep", help="generate many small models and judge them: find converter bugs",
                                description="A differential campaign: random one-site models across the configuration "
                                "space, judged like fusion check; failures are grouped, shrunk to minimal reproducers "
                                "and written to --out. Re-running with the same --seed and --out resumes.")
    sweep.add_argument("--budget", type=int, default=200, help="configurations to judge (default 200)")
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--dims", default="1,2,3", help="spatial ranks to draw from (default 1,2,3)")
    sweep.add_argument("--tails", default="none,bn,mul_add,mul,add", help="tails to draw from")
    sweep.add_argument("--engine", default="mnn", help="the engine to judge (`fusion engines` lists them; default mnn)")
    sweep.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    sweep.add_argument("--dask", help="address of an existing Dask scheduler to run the campaign on")
    sweep.add_argument("--out", default="sweep-out", help="report folder (default sweep-out)")
    sweep.add_argument("--timeout", type=float, default=120.0, help="seconds before an engine step counts as hung")
    commands.add_parser("engines", help="list the engines fusion check can judge, installed or not",
                        description="Every engine `fusion check --engine NAME` judges, with its installed version, or "
                        "the pip install line that brings it.")
    bench = commands.add_parser("bench", help="time fused vs unfused ConvTranspose + BN across engines",
                                description="Time this library's kernels, onnxruntime and MNN, unfused and fused, on "
                                "the benchmark suite in one interleaved run, and print the table.")
    bench.add_argument("--quick", action="store_true", help="half-size inputs and 5 repetitions")
    bench.add_argument("--threads", default="1,2", help="thread counts to run, comma separated (default 1,2)")
    bench.add_argument("--repetitions", type=int, help="timed runs per path (default 15, quick 5)")
    bench.add_argument("--out", help="also write bench.json, bench.md and bench.png into this folder")
    return parser


def _check(args, console: Console) -> int:
    from fusion.check import check, check_sites
    from fusion.engines.registry import make
    from fusion.files import write_atomic
    from fusion.graph.build import build
    from fusion.graph.demo import demo_specs
    from fusion.graph.memory import parse_size
    from fusion.oracle import parse_input_shape
    from fusion.report import print_reports, to_json

    if args.mnn and not args.model:
        raise FusionInputError("--mnn needs the ONNX MODEL it was converted from")
    shapes = dict(parse_input_shape(text) for text in args.input_shape)
    if shapes and not args.model:
        raise FusionInputError("--input-shape needs a MODEL")
    if args.mnn and args.engine != "mnn":
        raise FusionInputError(f"--mnn is a converted MNN model; --engine {args.engine} converts MODEL itself")
    limit = parse_size(args.max_memory)
    engine = make(args.engine, timeout=args.timeout, threads=args.threads, converter=args.converter)
    judge = check_sites if args.sites else check
    reports = []
    with Progress(console=console, transient=True) as progress:
        if args.model:
            progress.add_task(f"checking {args.model}", total=None)
            reports.append(judge(args.model, engine, converted=args.mnn, seed=args.seed, runs=args.runs,
                                 shapes=shapes or None, timeout=args.timeout, max_memory=limit))
        else:
            specs = demo_specs()
            task = progress.add_task("checking the demo models", total=len(specs))
            for spec in specs:
                reports.append(judge(None, engine, model=build(spec), name=spec.name, seed=args.seed, runs=args.runs,
                                     timeout=args.timeout, max_memory=limit))
                progress.advance(task)
    print_reports(reports, console)
    if args.json_path:
        write_atomic(args.json_path, to_json(reports, version=fusion.__version__))
    return 0 if all(r.passed for r in reports) else 1


def _fuse(args, console: Console) -> int:
    import json
    import os

    from rich.table import Table

    from fusion.files import write_atomic
    from fusion.graph.fuse import fuse_model, verify
    from fusion.graph.memory import parse_size
    from fusion.graph.model import load

    if os.path.exists(args.output) and os.path.samefile(args.input, args.output):
        raise FusionInputError("OUT must differ from IN: the input model is never modified")
    limit = parse_size(args.max_memory)
    original = load(args.input)
    fused, report, sites = fuse_model(original)
    verify(original, fused, sites, seed=args.seed, report=report, timeout=args.timeout, max_memory=limit)
    grid = Table(title=f"fusion fuse {args.input}", expand=True)
    for column in ("site", "what", "result"):
        grid.add_column(column, overflow="fold")
    for entry in report.folded:
        state = "[green]folded[/green]" if entry["passed"] else "[red]folded, verification FAILED[/red]"
        grid.add_row(entry["site"], entry["what"], f"{state}: {entry['comparison']}")
    for entry in report.skipped:
        grid.add_row(entry["site"], entry["what"], f"[yellow]skipped[/yellow]: {entry['reason']}")
    console.print(grid)
    console.print(f"{len(report.folded)} folded, {len(report.skipped)} skipped; model outputs differ from the "
                  f"original by at most {report.output_diff_max:.3g} on random inputs")
    if args.json_path:
        write_atomic(args.json_path, json.dumps(report.to_dict(), indent=2) + "\n")
    if not report.verified:
        console.print("[red]verification failed: OUT not written[/red]")
        return 1
    write_atomic(args.output, fused.SerializeToString())
    return 0


def _sweep(args, console: Console) -> int:
    from fusion import sweep
    from fusion.graph.sites import TAILS

    dims = tuple(int(d) for d in args.dims.split(","))
    tails = tuple(args.tails.split(","))
    if not set(dims) <= {1, 2, 3} or not set(tails) <= set(TAILS):
        raise FusionInputError(f"--dims takes 1,2,3 and --tails takes {','.join(TAILS)}")
    from fusion.engines.registry import make

    engine = make(args.engine, timeout=args.timeout)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"judging against {engine.version()}", total=args.budget)
        report = sweep.run(args.out, engine, budget=args.budget, seed=args.seed, dims=dims, tails=tails,
                           workers=args.workers, dask_address=args.dask, engine_name=args.engine,
                           progress=lambda done, total: progress.update(task, completed=done))
    console.print(f"{report['judged']} judged: {report['passed']} passed, {report['failed']} failed in "
                  f"{len(report['groups'])} group(s); report: {args.out}/report.md")
    for group in report["groups"]:
        console.print(f"- group {group['group']} ({group['count']}): {'; '.join(group['explanations'])[:200]}\n"
                      f"  matters: {', '.join(group['attributes_that_matter'])}\n  re-check: {group['command']}")
    return 0 if report["failed"] == 0 else 1


def _engines(console: Console) -> int:
    from fusion.engines.registry import ENGINES, installed

    for entry in ENGINES.values():
        version = installed(entry)
        state = f"{entry.distribution} {version}" if version else \
            f"not installed: {entry.install_line()}"
        console.print(f"{entry.name}: {entry.what}; {state} (verified with {entry.verified})", soft_wrap=True,
                      markup=False, highlight=False)
    return 0


def _bench(args, console: Console) -> int:
    from rich.markdown import Markdown

    from fusion import bench

    threads = tuple(int(t) for t in args.threads.split(","))
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("timing", total=len(bench.SUITE) * len(threads))
        document = bench.run(quick=args.quick, threads_list=threads, repetitions=args.repetitions,
                             progress=lambda shape, t: progress.advance(task))
    console.print(Markdown(bench.markdown(document)))
    if args.out:
        for kind, path in bench.write(document, args.out).items():
            console.print(f"{kind}: {path}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=False)
    try:
        if args.command == "check":
            return _check(args, console)
        if args.command == "fuse":
            return _fuse(args, console)
        if args.command == "bench":
            from fusion import bench

            if not bench.pools_are_quiet():
                return bench.rerun_with_quiet_pools(["-c", "import sys; from fusion.cli import main; "
                                                     "sys.exit(main(sys.argv[1:]))", *(argv or sys.argv[1:])])
            return _bench(args, console)
        if args.command == "sweep":
            return _sweep(args, console)
        if args.command == "engines":
            return _engines(console)
    except FusionInputError as error:
        print(f"fusion: error: {error}", file=sys.stderr)
        return 2
    except MemoryError:
        print("fusion: error: out of memory; a smaller --input-shape or a lower --max-memory refuses such a model "
              "before it allocates", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # a bug of fusion's: one line and a report file, never a traceback in the user's face
        return _internal_error(error, argv)
    return 2


def _internal_error(error: Exception, argv) -> int:
    import tempfile
    import traceback

    handle, path = tempfile.mkstemp(prefix="fusion-internal-error-", suffix=".txt")
    with os.fdopen(handle, "w") as stream:
        stream.write(f"fusion {fusion.__version__}, arguments {argv or sys.argv[1:]}\n")
        traceback.print_exception(error, file=stream)
    print(f"fusion: internal error (a bug in fusion, please report it with {path}): {type(error).__name__}: "
          f"{str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
