"""Fuzz ``fusion check`` and ``fusion fuse`` with damaged and hostile models, one CLI process each, as a user would.

    python benchmarks/fuzz.py [--count 1000] [--seed 0] [--engine onnxruntime] [--out DIR] [--real]

Each case mutates a base model (the demo models, a two-site chain, with ``--real`` also the public models of
``../shared/real-models``) with ``tests/mutations.py``, writes it read-only, runs ``fusion check`` and ``fusion fuse``
on it in a child process, and records the exit code, whether stderr holds a Python traceback, the child's peak
resident memory (``wait4``) and its wall time. The input file's SHA-256 is compared before and after. Prints the
counts as markdown; exits 1 when any case gave a traceback, an exit code other than 0/1/2, a modified input, or ran
into the time limit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import mutations  # noqa: E402  (tests/mutations.py)


def base_models(real: bool) -> dict[str, bytes]:
    from chain import chain_model
    from fusion.graph.build import build
    from fusion.graph.demo import demo_specs

    bases = {spec.name: build(spec).SerializeToString() for spec in demo_specs()[::3]}
    bases["chain"] = chain_model(0).SerializeToString()
    if real:
        for path in sorted((ROOT.parent / "shared" / "real-models").glob("*.onnx")):
            bases[path.stem] = path.read_bytes()
    return bases


def run_child(command: list[str], limit: float) -> dict:
    """Run ``command``; exit code, traceback in stderr, peak RSS (MiB) and seconds. Killed after ``limit`` s."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    timer = threading.Timer(limit, lambda: os.killpg(child.pid, signal.SIGKILL))
    timer.start()
    stderr = child.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    timer.cancel()
    child.returncode = os.waitstatus_to_exitcode(status)
    return {"exit": child.returncode, "traceback": "Traceback (most recent call last)" in stderr,
            "peak_mib": usage.ru_maxrss / 1024, "seconds": time.perf_counter() - started,
            "stderr": stderr.strip().splitlines()[-1][:300] if stderr.strip() else ""}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000, help="mutated models (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", default="onnxruntime", help="the engine fusion check judges with")
    parser.add_argument("--out", help="keep the cases and results.jsonl here")
    parser.add_argument("--real", action="store_true", help="also mutate the public models of shared/real-models")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds before a child counts as hung")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="fusion-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    bases = base_models(args.real)
    names = sorted(bases)
    rng = np.random.default_rng(args.seed)
    results = []
    with open(out / "results.jsonl", "w") as log:
        for case in range(args.count):
            base = names[int(rng.integers(len(names)))]
            kind, data = mutations.mutate(bases[base], rng)
            path = out / f"case_{case:05d}.onnx"
            path.write_bytes(data)
            path.chmod(0o444)
            before = digest(path)
            fused = out / f"case_{case:05d}.fused.onnx"
            runs = {
                "check": run_child([sys.executable, "-m", "fusion", "check", str(path), "--engine", args.engine,
                                    "--runs", "1", "--json", str(out / f"case_{case:05d}.json")], args.limit),
                "fuse": run_child([sys.executable, "-m", "fusion", "fuse", str(path), str(fused)], args.limit),
            }
            modified = digest(path) != before
            for command, result in runs.items():
                record = {"case": case, "base": base, "mutation": kind, "command": command, "modified": modified,
                          **result}
                results.append(record)
                log.write(json.dumps(record) + "\n")
                log.flush()
            if not any(r["traceback"] or r["exit"] not in (0, 1, 2) for r in runs.values()) and not args.out:
                path.unlink()
    return report(results, out, args)


def report(results: list[dict], out: Path, args) -> int:
    print(f"fuzz: {args.count} models (seed {args.seed}, engine {args.engine}), {len(results)} runs; folder {out}\n")
    print("| command | runs | exit 0 | exit 1 | exit 2 | other exit | tracebacks | inputs modified | peak MiB "
          "(max) | slowest s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for command in ("check", "fuse"):
        rows = [r for r in results if r["command"] == command]
        exits = Counter(r["exit"] for r in rows)
        other = sum(n for code, n in exits.items() if code not in (0, 1, 2))
        print(f"| {command} | {len(rows)} | {exits[0]} | {exits[1]} | {exits[2]} | {other} | "
              f"{sum(r['traceback'] for r in rows)} | {sum(r['modified'] for r in rows)} | "
              f"{max(r['peak_mib'] for r in rows):.0f} | {max(r['seconds'] for r in rows):.1f} |")
    slowest = max(results, key=lambda r: r["seconds"])
    print(f"\nslowest: case {slowest['case']} ({slowest['mutation']} of {slowest['base']}, {slowest['command']}) "
          f"{slowest['seconds']:.1f} s, exit {slowest['exit']}: {slowest['stderr']}")
    by_kind = Counter((r["mutation"], r["exit"]) for r in results)
    print("\n| mutation | exit codes (runs) |\n|---|---|")
    for kind in sorted({r["mutation"] for r in results}):
        print(f"| {kind} | {', '.join(f'{code}: {n}' for (k, code), n in sorted(by_kind.items()) if k == kind)} |")
    bad = [r for r in results if r["traceback"] or r["exit"] not in (0, 1, 2) or r["modified"]]
    for record in bad[:30]:
        print(f"ESCAPE case {record['case']} {record['mutation']} of {record['base']} ({record['command']}): exit "
              f"{record['exit']}, {record['stderr']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
