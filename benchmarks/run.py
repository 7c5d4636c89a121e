"""Full fused-vs-unfused benchmark: this library's kernels, onnxruntime and MNN, 1 and 2 threads.

    python benchmarks/run.py [--quick] [--out benchmarks/results] [--default-environment]

Runs itself again with thread pools that sleep when idle (``fusion.bench.QUIET_POOLS``) unless
``--default-environment``: several runtimes share the process, and in a default environment each one's spinning
workers take the cores from whichever engine runs next (benchmarks/NOTES.md, "Default environment").

Writes bench.json (every repetition's statistics and the environment), bench.md (the tables) and bench.png.
The suite itself lives in ``fusion.bench`` so that ``fusion bench`` runs the same code.
"""

import argparse
import sys

from fusion import bench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repetitions", type=int)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--default-environment", action="store_true",
                        help="time in this process's environment as it is, spinning pools and all")
    args = parser.parse_args()
    if not args.default_environment and not bench.pools_are_quiet():
        return bench.rerun_with_quiet_pools(sys.argv)
    document = bench.run(quick=args.quick, threads_list=tuple(int(t) for t in args.threads.split(",")),
                         repetitions=args.repetitions, progress=lambda shape, t: print(f"done: {shape}, {t} thread(s)",
                                                                                       file=sys.stderr))
    print(bench.markdown(document))
    for kind, path in bench.write(document, args.out).items():
        print(f"{kind}: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
