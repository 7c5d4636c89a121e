"""Campaign throughput: configurations judged per minute against the installed MNN on this machine.

    python benchmarks/sweep_throughput.py [--budget 120] [--workers 1,2]

Each configuration is converted twice (as shipped, and with external weights to read them exactly), dumped and run,
every step in its own child process, exactly as ``fusion sweep`` does; shrinking is switched off so that only
judging is timed. Reports wall time and configurations per minute per worker count.
"""

import argparse
import sys
import tempfile
import time

from fusion import sweep
from fusion.engines.mnn import MnnEngine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=120)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    engine = MnnEngine()
    print(f"| workers | configurations | wall s | configurations / minute |  ({engine.version()})")
    print("|---|---|---|---|")
    for workers in (int(w) for w in args.workers.split(",")):
        with tempfile.TemporaryDirectory(prefix="fusion-sweep-bench-") as out:
            start = time.perf_counter()
            report = sweep.run(out, engine, budget=args.budget, seed=args.seed, workers=workers, shrink_budget=0)
            wall = time.perf_counter() - start
        print(f"| {workers} | {report['judged']} | {wall:.1f} | {60 * report['judged'] / wall:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
