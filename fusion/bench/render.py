"""The benchmark's document as tables, ratios and a plot; written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from fusion.bench.harness import ALONE, MORE_ROUNDS
from fusion.files import write_atomic


def ratios(document: dict) -> list[dict]:
    """Per shape and thread count: fused/unfused per engine, and fusion's times against each peer's best."""
    rows = []
    by_key = {}
    for r in document["results"]:
        by_key.setdefault((r["shape"], r["threads"]), {})[(r["engine"], r["path"])] = r
    for (shape, threads), paths in by_key.items():
        row = {"shape": shape, "threads": threads}
        for engine in ("fusion", "onnxruntime", "mnn", "pytorch"):
            unfused, folded = paths.get((engine, "unfused")), paths.get((engine, "folded"))
            if unfused and folded and "median" in unfused and "median" in folded:
                row[f"{engine} folded/unfused"] = folded["median"] / unfused["median"]
        ours = paths.get(("fusion", "conv_transpose only"), {}).get("median")
        # a peer's bare ConvTranspose: the fused model it runs, or its own fold of the original (whichever is faster)
        peers = [paths[(e, p)]["median"] for e in ("onnxruntime", "mnn", "pytorch") for p in ("folded", "own fusion")
                 if (e, p) in paths and "median" in paths[(e, p)]]
        if ours and peers:
            row["fusion conv_transpose / fastest peer"] = ours / min(peers)
        conv = paths.get(("fusion", "Conv mirrored"), {}).get("median")
        conv_peer = paths.get(("onnxruntime", "Conv mirrored"), {}).get("median")
        if conv and conv_peer:
            row["fusion Conv / onnxruntime Conv (mirrored)"] = conv / conv_peer
        for engine in ("fusion", ALONE):
            alone = paths.get((engine, "conv_transpose only"), {}).get("median")
            for path in ("folded", "epilogue"):
                median = paths.get((engine, path), {}).get("median")
                if alone and median:
                    row[f"{engine} {path} / conv_transpose only"] = median / alone
        rows.append(row)
    return rows


def _more_rounds(document: dict) -> str:
    seconds = document.get("min_seconds", 0.0)
    if not seconds:
        return ""
    return f" (more on fast shapes: {seconds:g} s of rounds per shape, at most {MORE_ROUNDS}x as many)"


def markdown(document: dict) -> str:
    env = document["environment"]
    lines = [f"Environment: {env['cpu']}, {env['cores']} cores; numba {env['numba']}, onnxruntime "
             f"{env['onnxruntime']}, MNN {env['mnn']}, PyTorch {env.get('pytorch', 'not installed')}, numpy "
             f"{env['numpy']}, Python {env['python']}; numba threading layer {env.get('numba_threading_layer')}. "
             f"{document['repetitions']} interleaved repetitions per path"
             f"{_more_rounds(document)}"
             f"{' (quick: half-size inputs)' if document['quick'] else ''}. Measured float32 peak: " +
             ", ".join(f"{float(v) / 1e9:.1f} GFLOP/s at {k} thread(s)" for k, v in document["peak_flops"].items()) +
             " (the better of before and after the run)",
             "", "| shape | threads | engine | path | median ms | min ms | max ms | GFLOP/s | % peak |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in document["results"]:
        if "median" in r:
            lines.append(f"| {r['shape']} | {r['threads']} | {r['engine']} | {r['path']} | {r['median'] * 1e3:.2f} | "
                         f"{r['min'] * 1e3:.2f} | {r['max'] * 1e3:.2f} | {r['gflops']:.1f} | "
                         f"{100 * r['peak_fraction']:.1f} |")
        else:
            lines.append(f"| {r['shape']} | {r['threads']} | {r['engine']} | {r['path']} | cannot run: "
                         f"{r['error']} | | | | |")
    lines += ["", "| shape | threads | ratio | value |", "|---|---|---|---|"]
    for row in ratios(document):
        for key, value in row.items():
            if key not in ("shape", "threads"):
                lines.append(f"| {row['shape']} | {row['threads']} | {key} | {value:.3f} |")
    return "\n".join(lines) + "\n"


ENGINE_COLORS = {"fusion": "#1f77b4", "onnxruntime": "#ff7f0e", "mnn": "#2ca02c", "pytorch": "#d62728"}
PATH_HATCHES = ("", "//", "..", "xx", "\\\\", "++", "oo", "--", "**")


def plot(document: dict, path) -> None:
    """Bars per shape: one color per engine, one hatch per path (the same path has the same hatch for every
    engine), and a legend for each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    threads_list = sorted({r["threads"] for r in document["results"]})
    figure, axes = plt.subplots(len(threads_list), 1, figsize=(13, 4.8 * len(threads_list)), squeeze=False)
    rows_all = [r for r in document["results"] if r["engine"] != ALONE]
    engines = list(dict.fromkeys(r["engine"] for r in rows_all))
    colors = {e: ENGINE_COLORS.get(e, f"C{4 + i}") for i, e in enumerate(engines)}
    path_names = list(dict.fromkeys(r["path"] for r in rows_all))
    hatches = {p: PATH_HATCHES[i % len(PATH_HATCHES)] for i, p in enumerate(path_names)}
    for axis, threads in zip(axes[:, 0], threads_list):
        rows = [r for r in rows_all if r["threads"] == threads]
        shapes = list(dict.fromkeys(r["shape"] for r in rows))
        series = sorted(dict.fromkeys((r["engine"], r["path"]) for r in rows),
                        key=lambda pair: (engines.index(pair[0]), path_names.index(pair[1])))
        width = 0.8 / len(series)
        for i, (engine, path_name) in enumerate(series):
            values = [next((r.get("median", np.nan) * 1e3 for r in rows if r["shape"] == s and r["engine"] == engine
                            and r["path"] == path_name), np.nan) for s in shapes]
            axis.bar(np.arange(len(shapes)) + i * width, values, width, color=colors[engine],
                     hatch=hatches[path_name], edgecolor="white", linewidth=0.4)
        axis.set_xticks(np.arange(len(shapes)) + 0.4 - width / 2, shapes, fontsize=8)
        axis.set_yscale("log")
        tallest = max((r["median"] * 1e3 for r in rows if "median" in r), default=1.0)
        axis.set_ylim(top=tallest * 8)  # room above the bars for the two legends
        axis.set_ylabel("median ms (log)")
        axis.set_title(f"ConvTranspose + BatchNormalization, {threads} thread(s)")
        by_engine = axis.legend(handles=[Patch(color=colors[e], label=e) for e in engines], fontsize=8,
                                loc="upper left", title="engine", title_fontsize=8)
        axis.add_artist(by_engine)
        axis.legend(handles=[Patch(facecolor="lightgray", hatch=hatches[p], edgecolor="black", label=p)
                             for p in path_names], fontsize=7, ncol=3, loc="upper right", title="path",
                    title_fontsize=8)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=110)
    plt.close(figure)
    write_atomic(path, png.getvalue())


def write(document: dict, folder) -> dict:
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "bench.json", json.dumps(document, indent=2) + "\n")
    write_atomic(folder / "bench.md", markdown(document))
    plot(document, folder / "bench.png")
    return {"json": str(folder / "bench.json"), "markdown": str(folder / "bench.md"), "plot": str(folder / "bench.png")}
