"""The ``fusion`` command line: argument parsing and printing only.

Exit codes: 0 every site passed, 1 a site failed or the engine failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.progress import Progress

import fusion
from fusion.errors import FusionInputError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusion", description="Golden reference checks for conv + BN/Scale fusion.")
    parser.add_argument("--version", action="version", version=f"fusion {fusion.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="judge a converter's fused result against the reference, site by site",
                                description="Judge every Conv/ConvTranspose (+ BatchNormalization or Mul/Add) site of "
                                "MODEL as converted by MNN. Without MODEL, runs the built-in demo set.")
    check.add_argument("model", nargs="?", help="ONNX model (default: the built-in demo set)")
    check.add_argument("--mnn", help="your own converted .mnn of MODEL, judged instead of converting each site")
    check.add_argument("--converter", help="path of an MNNConvert binary to use instead of the installed wheel's")
    check.add_argument("--json", dest="json_path", help="write a machine-readable report here (atomically)")
    check.add_argument("--seed", type=int, default=0, help="seed of the random model inputs (default 0)")
    check.add_argument("--timeout", type=float, default=120.0, help="seconds before an engine step counts as hung")
    check.add_argument("--threads", type=int, default=1, help="MNN CPU threads")
    return parser


def _check(args, console: Console) -> int:
    from fusion.check import check
    from fusion.engines.mnn import MNNEngine
    from fusion.files import write_atomic
    from fusion.graph.build import build
    from fusion.graph.demo import demo_specs
    from fusion.report import print_reports, to_json

    if args.mnn and not args.model:
        raise FusionInputError("--mnn needs the ONNX MODEL it was converted from")
    engine = MNNEngine(args.converter, timeout=args.timeout, threads=args.threads)
    reports = []
    with Progress(console=console, transient=True) as progress:
        if args.model:
            task = progress.add_task("checking sites", total=None)
            reports.append(check(args.model, engine, converted=args.mnn, seed=args.seed,
                                 progress=lambda done, total: progress.update(task, completed=done, total=total)))
        else:
            specs = demo_specs()
            task = progress.add_task("checking the demo models", total=len(specs))
            for spec in specs:
                reports.append(check(None, engine, model=build(spec), name=spec.name, seed=args.seed))
                progress.advance(task)
    print_reports(reports, console)
    if args.json_path:
        write_atomic(args.json_path, to_json(reports, version=fusion.__version__))
    return 0 if all(r.passed for r in reports) else 1


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=False)
    try:
        if args.command == "check":
            return _check(args, console)
    except FusionInputError as error:
        print(f"fusion: error: {error}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
