"""Judge a corpus of public models with ``fusion check``, as a user would: one CLI process a model, timed.

    python benchmarks/corpus.py FOLDER [--list benchmarks/corpus.json] [--out DIR]

FOLDER holds the models named in the list (where each comes from is written there). Prints a markdown table: per
model its sites, each graph output's absMaxV / DiffMax, the verdict, the culprit, and the wall time of the check
(a warm Numba cache; the first run of a fresh install compiles the kernels). ``--out`` keeps each JSON report and
the text the CLI printed.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--list", default=str(Path(__file__).with_name("corpus.json")))
    parser.add_argument("--out")
    args = parser.parse_args()
    entries = json.loads(Path(args.list).read_text())["models"]
    out = Path(args.out or tempfile.mkdtemp(prefix="fusion-corpus-"))
    out.mkdir(parents=True, exist_ok=True)
    print("| model | sites | statuses | graph outputs: absMaxV / DiffMax | verdict | culprit | check time |")
    print("|---|---|---|---|---|---|---|")
    for entry in entries:
        model = Path(args.folder) / entry["file"]
        if not model.is_file():
            print(f"| {entry['file']} | - | - | - | missing from {args.folder} | - | - |")
            continue
        report = out / (model.stem + ".json")
        command = [sys.executable, "-m", "fusion.cli", "check", str(model), "--json", str(report)]
        for shape in entry.get("input_shape", []):
            command += ["--input-shape", shape]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        (out / (model.stem + ".txt")).write_text(result.stdout + result.stderr)
        if result.returncode == 2 or not report.is_file():
            print(f"| {entry['file']} | - | - | - | exit {result.returncode}: {result.stderr.strip()[:120]} | - | "
                  f"{seconds:.1f} s |")
            continue
        (judged,) = json.loads(report.read_text())["models"]
        statuses = Counter(site["status"] for site in judged["sites"])
        outputs = "; ".join(f"{o['name']}: {o['abs_max']:.4g} / {o['diff_max']:.3g}"
                            for o in (judged["whole_model"] or {}).get("outputs", []))
        culprit = judged["first_wrong"]
        where = "-" if culprit is None else f"{culprit['node']} (site {culprit['site']})"
        verdict = "PASS" if judged["passed"] else "FAIL"
        print(f"| {entry['file']} | {len(judged['sites'])} | {', '.join(f'{k} {v}' for k, v in statuses.items())} | "
              f"{outputs or '(no float output)'} | {verdict} | {where} | {seconds:.1f} s |")
    print(f"\nreports: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
