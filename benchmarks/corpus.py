"""Judge a corpus of public models with ``fusion check``, as a user would: one CLI process a model, timed.

    python benchmarks/corpus.py FOLDER [--list benchmarks/corpus.json] [--out DIR]

FOLDER holds the models named in the list (where each comes from is written there). Prints a markdown table: per
model its sites, each graph output's absMaxV / DiffMax, the verdict, the culprit, and the wall time of the check
(a warm Numba cache; the first run of a fresh install compiles the kernels). ``--out`` keeps each JSON report and
the text the CLI printed.

``--plant``: also converts each model with MNN and plants a defect in the middle site of those whose parameters can
be read, in the converted file itself (through MNN's JSON dump): its fused bias zeroed, or the weights of one
output channel scaled by 1.01. Each file is judged with ``--mnn``: the check must fail, naming that site.
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
    parser.add_argument("--plant", action="store_true")
    parser.add_argument("--engine", default="mnn", help="the engine to judge (`fusion engines`); --plant needs mnn")
    args = parser.parse_args()
    if args.plant and args.engine != "mnn":
        parser.error("--plant rewrites MNN's converted file: it needs --engine mnn")
    entries = json.loads(Path(args.list).read_text())["models"]
    out = Path(args.out or tempfile.mkdtemp(prefix="fusion-corpus-"))
    out.mkdir(parents=True, exist_ok=True)
    planted = " bias zeroed: verdict, culprit | one channel's weights x1.01: verdict, culprit |" if args.plant else ""
    print("| model | sites | statuses | graph outputs: absMaxV / DiffMax | verdict | culprit | check time |" + planted)
    print("|---|---|---|---|---|---|---|" + ("---|---|" if args.plant else ""))
    for entry in entries:
        model = Path(args.folder) / entry["file"]
        if not model.is_file():
            print(f"| {entry['file']} | - | - | - | missing from {args.folder} | - | - |")
            continue
        report = out / (model.stem + ".json")
        command = [sys.executable, "-m", "fusion.cli", "check", str(model), "--json", str(report), "--engine",
                   args.engine]
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
        row = (f"| {entry['file']} | {len(judged['sites'])} | {', '.join(f'{k} {v}' for k, v in statuses.items())} | "
               f"{outputs or '(no float output)'} | {verdict} | {where} | {seconds:.1f} s |")
        print(row + (f" {plant(model, entry, out, 'bias')} | {plant(model, entry, out, 'weight')} |" if args.plant
                     else ""))
    print(f"\nreports: {out}", file=sys.stderr)
    return 0


def plant(model: Path, entry: dict, out: Path, kind: str) -> str:
    """Plant ``kind`` (``bias``: zeroed; ``weight``: output channel 0 scaled by 1.01) in the middle readable site of
    MNN's conversion; judge that file and say whether the check failed and named the site."""
    import numpy as np

    from fusion.engines.base import EngineFailure
    from fusion.engines.mnn import MnnEngine
    from fusion.fold import output_channel_view
    from fusion.graph.model import load
    from fusion.graph.sites import find_sites

    engine = MnnEngine()
    folder = out / f"{model.stem}-planted-{kind}"
    folder.mkdir(exist_ok=True)
    prepared = engine.prepare(model, folder)
    readable = []
    for site in find_sites(load(model), []):
        try:
            params = engine.site_params(prepared, site)
        except EngineFailure:
            continue
        if params.b is not None and (kind == "weight" or np.abs(params.b).max() > 0):
            readable.append((site, params))
    if not readable:
        return "no site whose parameters can be read"
    site, params = readable[len(readable) // 2]
    if kind == "bias":
        edit = (None, np.zeros(site.c_out, np.float32))
    else:
        w = params.w.astype(np.float64)
        view, _ = output_channel_view(w, site.group, site.transposed)
        (view[0, :, 0] if site.transposed else view[0])[...] *= 1.01
        edit = (w.astype(np.float32), None)
    broken = folder / "broken.mnn"
    engine.rewrite(model, broken, {site.conv_output: edit}, folder)
    report = folder / "broken.json"
    command = [sys.executable, "-m", "fusion.cli", "check", str(model), "--mnn", str(broken), "--json", str(report)]
    for shape in entry.get("input_shape", []):
        command += ["--input-shape", shape]
    subprocess.run(command, capture_output=True, text=True)
    (judged,) = json.loads(report.read_text())["models"]
    culprit = judged["first_wrong"]
    named = culprit is not None and culprit["site"] == site.index
    return (f"{'FAIL' if not judged['passed'] else 'PASS (missed)'}, "
            f"{f'site {site.index} named' if named else f'culprit {culprit} instead of site {site.index}'}")


if __name__ == "__main__":
    sys.exit(main())
