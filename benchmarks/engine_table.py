"""The fold table across engines, from the reports of one campaign per engine (``fusion sweep --out DIR``).

    python benchmarks/engine_table.py DIR [DIR ...] [--out TABLE.md]

Per engine: its campaign's summary, and for each (op, rank, group kind) x tail (BN, Mul, Add, Mul+Add) how many
configurations it folded right (``ok``), left unfused and right (``kept``), got wrong (``WRONG``), or failed where
onnxruntime with optimizations off fails too (``runtime``, for engines whose model onnxruntime runs); then the
contexts (constants that are not per-channel, a conv output read twice, parameters through nodes). The table is
``fusion.sweep.table``'s, computed when the campaign wrote its report.
"""

import argparse
import json
import sys
from pathlib import Path

from fusion.files import write_atomic
from fusion.sweep.table import markdown


def engine_section(report: dict) -> list[str]:
    wrong_groups = [g for g in report["groups"] if g.get("oracle_agrees", True)]
    return [f"## {report['engine']}", "",
            f"Seed {report['seed']}: {report['judged']} configurations judged: {report['passed']} passed, "
            f"{report['failed']} failed in {len(report['groups'])} groups ({len(wrong_groups)} with onnxruntime "
            f"agreeing with the reference on the reproducer), {report.get('unjudged', 0)} not judged.", "",
            *markdown(report["table"]), ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--out")
    args = parser.parse_args()
    lines = ["# Folds by engine", "",
             "`ok`: folded and right; `kept`: left as an op of its own, right; `WRONG`; `runtime`: fails the same "
             "way in onnxruntime with optimizations off, which runs that engine's model. Counted over the "
             "configurations whose tail may be folded (per-channel constants in initializers, the conv output read "
             "by the tail alone); the contexts below them count every configuration with that context, folded or "
             "not (`right`).", ""]
    for folder in args.folders:
        path = Path(folder) / "report.json"
        if not path.is_file():
            print(f"{path}: no campaign report", file=sys.stderr)
            return 2
        report = json.loads(path.read_text())
        if "table" not in report:
            print(f"{path}: written before the fold table existed; re-run the campaign to rewrite it",
                  file=sys.stderr)
            return 2
        lines += engine_section(report)
    text = "\n".join(lines) + "\n"
    if args.out:
        write_atomic(Path(args.out), text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
