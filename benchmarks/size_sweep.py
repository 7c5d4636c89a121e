"""The decoder family across sizes: fusion's ConvTranspose against the fastest peer at each size, plotted.

    python benchmarks/size_sweep.py [--threads 1,2] [--repetitions 7] [--out benchmarks/results/sizes]

Two sweeps of the suite's decoder layer (ConvTranspose k4 s2 p1 + BatchNormalization, group 1): the input's side
from 8 to 128 at 128 -> 128 channels, and the channel count from 16 to 512 (C -> C) at 16^2. Each shape is timed
in one interleaved run with every engine ``fusion bench`` knows (PyTorch when installed), by the same harness;
the ratio plotted is fusion's ConvTranspose over the fastest peer's fused ConvTranspose (below 1: fusion is faster).
Writes sizes.json, sizes.md and sizes.png.
"""

import argparse
import json
import sys
from pathlib import Path

from fusion import bench
from fusion.bench.render import ratios
from fusion.files import write_atomic

SIDES = (8, 16, 32, 64, 128)
CHANNELS = (16, 32, 64, 128, 256, 512)
RATIO = "fusion conv_transpose / fastest peer"


def suite() -> list:
    shapes = [bench.Shape("decoder 128->128 k4 s2 p1", 128, 128, 1, 4, 2, 1, (side, side)) for side in SIDES]
    shapes += [bench.Shape(f"decoder {c}->{c} k4 s2 p1", c, c, 1, 4, 2, 1, (16, 16)) for c in CHANNELS if c != 128]
    return shapes


def plot(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    rows = ratios(document)
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for axis, (title, key, values, label) in zip(axes, (
            ("input side, 128 -> 128 channels", "side", SIDES, "side of the square input"),
            ("channels C -> C, 16^2 input", "channels", CHANNELS, "channels"))):
        for threads, marker in ((1, "o"), (2, "s")):
            points = []
            for row in rows:
                if row["threads"] != threads or RATIO not in row:
                    continue
                words = row["shape"].split()
                c = int(words[1].split("->")[0])
                side = int(words[-1].split("^")[0])
                if key == "side" and c == 128:
                    points.append((side, row[RATIO]))
                elif key == "channels" and side == 16:
                    points.append((c, row[RATIO]))
            points.sort()
            if points:
                axis.plot([p[0] for p in points], [p[1] for p in points], marker=marker,
                          label=f"{threads} thread(s)")
        axis.axhline(1.0, color="gray", linewidth=0.8)
        axis.axhline(0.9, color="gray", linewidth=0.8, linestyle="--")
        axis.set_xscale("log", base=2)
        axis.set_xticks(values, [str(v) for v in values])
        axis.set_xlabel(label)
        axis.set_ylabel("fusion / fastest of onnxruntime, MNN, PyTorch")
        axis.set_title(title)
        axis.legend(fontsize=8)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=110)
    plt.close(figure)
    write_atomic(path, png.getvalue())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/results/sizes")
    args = parser.parse_args()
    if not bench.pools_are_quiet():
        return bench.rerun_with_quiet_pools(sys.argv)
    document = bench.run(threads_list=tuple(int(t) for t in args.threads.split(",")), repetitions=args.repetitions,
                         suite=suite(), min_seconds=1.0,
                         progress=lambda shape, t: print(f"done: {shape}, {t} thread(s)", file=sys.stderr))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "sizes.json", json.dumps(document, indent=2) + "\n")
    write_atomic(out / "sizes.md", bench.markdown(document))
    plot(document, out / "sizes.png")
    for row in ratios(document):
        if RATIO in row:
            print(f"{row['shape']:32s} {row['threads']} thread(s): {row[RATIO]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
