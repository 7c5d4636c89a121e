"""Fused vs unfused ConvTranspose + BatchNormalization, timed across this library, onnxruntime and MNN.

One interleaved run: for every repetition, every path of every engine runs once, in turn, so that machine noise
hits all of them alike. Reported per path: median, min and max seconds, GFLOP/s, the fraction of this CPU's
float32 peak, and ratios against peers measured in the same run.

The float32 peak is *measured*, not looked up: a Numba loop of independent 8-wide fused multiply-adds (enough
chains to fill both FMA pipes of a core) runs on each thread; peak = its FLOP/s, the better of a measurement before
and one after the run (both recorded): on a shared VM a core busy elsewhere at one of them halves it.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numba
import onnx
import onnxruntime
from threadpoolctl import threadpool_limits

from fusion import fold, ops
from fusion.engines.base import EngineFailure
from fusion.engines.isolate import python_child
from fusion.engines.mnn import MnnEngine
from fusion.oracle import session
from fusion.files import write_atomic
from fusion.graph.build import SiteSpec, build
from fusion.graph.fuse import fuse_model
from fusion.graph.sites import find_sites


# Thread pools that spin-wait after their work steal the cores from whichever path runs next in an interleaved run
# (benchmarks/NOTES.md, "Spinning pools"). Both settings are read when
# the pools' runtimes load, before any benchmark code runs, so the benchmark entry points re-run themselves with them.
QUIET_POOLS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
# At most this many times the requested rounds, for a shape whose rounds are fast (``run``).
MORE_ROUNDS = 10
# fusion's paths timed a second time among themselves only (``_alone``), under this engine name.
ALONE = "fusion alone"
ALONE_PATHS = ("conv_transpose only", "folded", "epilogue")


def pools_are_quiet() -> bool:
    return all(os.environ.get(name) == value for name, value in QUIET_POOLS.items())


def rerun_with_quiet_pools(argv: list[str]) -> int:
    """Run ``python *argv`` again with ``QUIET_POOLS`` in its environment; returns its exit code."""
    return subprocess.call([sys.executable, *argv], env={**os.environ, **QUIET_POOLS})


@dataclass(frozen=True)
class Shape:
    name: str
    c_in: int
    c_out: int
    group: int
    kernel: int
    stride: int
    pad: int
    spatial: tuple[int, ...]
    output_padding: int = 0

    @property
    def rank(self) -> int:
        return len(self.spatial)

    def spec(self, scale: float = 1.0) -> SiteSpec:
        spatial = tuple(max(2, int(round(s * scale))) for s in self.spatial)
        attributes = {"strides": [self.stride] * self.rank, "pads": [self.pad] * (2 * self.rank)}
        if self.output_padding:
            attributes["output_padding"] = [self.output_padding] * self.rank
        return SiteSpec("ConvTranspose", (1, self.c_in) + spatial, self.c_out, self.group, (self.kernel,) * self.rank,
                        attributes, True, "bn", 1, self.name)

    def mirrored(self, spec: SiteSpec) -> SiteSpec:
        """The Conv that is this ConvTranspose's adjoint: C_out -> C_in on the transposed conv's output grid."""
        geometry = spec.geometry()
        attributes = {"strides": [self.stride] * self.rank, "pads": [self.pad] * (2 * self.rank)}
        return SiteSpec("Conv", (1, self.c_out) + geometry.output_shape, self.c_in, self.group,
                        (self.kernel,) * self.rank, attributes, True, "none", 2, self.name + " (Conv mirrored)")

    def flops(self, spec: SiteSpec) -> float:
        """2 * N * C_in * (C_out/group) * taps * input positions: one multiply and one add per product."""
        return 2.0 * spec.input_shape[0] * self.c_in * (self.c_out // self.group) * self.kernel ** self.rank * \
            float(np.prod(spec.input_shape[2:]))


SUITE = (
    Shape("decoder 256->128 k4 s2 p1 32^2", 256, 128, 1, 4, 2, 1, (32, 32)),
    Shape("decoder g4 256->128 k4 s2 p1 32^2", 256, 128, 4, 4, 2, 1, (32, 32)),
    Shape("depthwise 128 k4 s2 p1 64^2", 128, 128, 128, 4, 2, 1, (64, 64)),
    Shape("small g4 16->16 k3 s2 p1 op1 56^2", 16, 16, 4, 3, 2, 1, (56, 56), 1),
    Shape("3d g4 32->32 k3 s2 p1 16^3", 32, 32, 4, 3, 2, 1, (16, 16, 16)),
)


@numba.njit(fastmath=True, cache=True)
def _fma_chains(rounds, b, c):  # pragma: no cover - jitted
    # 64 accumulators with a literal trip count: LLVM keeps them in 8 AVX2 registers, 8 independent FMA chains,
    # enough to cover the FMA latency on both pipes
    acc = np.ones(64, np.float32)
    for _ in range(rounds):
        for i in range(64):
            acc[i] = acc[i] * b + c
    return acc.sum()


@numba.njit(parallel=True, cache=True)
def _fma_threads(threads, rounds, b, c):  # pragma: no cover - jitted
    total = np.zeros(threads, np.float32)
    for t in numba.prange(threads):
        total[t] = _fma_chains(rounds, b, c)
    return total


def measure_peak(threads: int) -> float:
    """float32 FLOP/s of ``threads`` threads each running 8 independent 8-wide FMA chains (best of 3)."""
    b, c = np.float32(0.999999), np.float32(1e-6)
    numba.set_num_threads(threads)
    _fma_threads(threads, 10, b, c)
    rounds = 3_000_000
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        _fma_threads(threads, rounds, b, c)
        best = min(best, time.perf_counter() - start)
    return 2.0 * 64 * rounds * threads / best


class MnnTimer:
    """The persistent MNN child (``children/mnn_bench.py``). If MNN crashes, the child is restarted and the models
    loaded so far are loaded again, so that one crashing model costs one path, not the rest of the run."""

    def __init__(self):
        self.loads: list[str] = []
        self.process = None
        self._start()

    def _start(self):
        self.process = subprocess.Popen(python_child("mnn_bench.py"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True, bufsize=1)
        for line in self.loads:
            self._send(line)

    def _send(self, line: str) -> str:
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
            answer = self.process.stdout.readline().strip()
        except BrokenPipeError:
            answer = ""
        if answer:
            return answer
        code = self.process.wait()
        signal_name = signal.Signals(-code).name if code < 0 else f"exit {code}"
        return f"error MNN crashed ({signal_name})"

    def ask(self, line: str) -> str:
        if self.process.poll() is not None:
            self._start()
        answer = self._send(line)
        if line.startswith("load") and answer == "ok":
            self.loads.append(line)
        elif answer.startswith("error MNN crashed") and line.startswith("time"):
            key = line.split()[1]
            self.loads = [l for l in self.loads if l.split()[1] != key]  # never load the crashing model again
        return answer

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            self.process.wait(timeout=30)


@dataclass
class PathResult:
    shape: str
    engine: str
    path: str
    threads: int
    times: list[float] = field(default_factory=list)
    error: str | None = None
    flops: float = 0.0

    @property
    def median(self) -> float:
        return float(np.median(self.times)) if self.times else float("nan")

    def summary(self, peak: float) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "times"}
        if self.times:
            data.update(median=self.median, min=float(np.min(self.times)), max=float(np.max(self.times)),
                        gflops=self.flops / self.median / 1e9, peak_fraction=self.flops / self.median / peak,
                        repetitions=len(self.times))
        return data


def run(*, quick: bool = False, threads_list=(1, 2), repetitions: int | None = None, engines=("fusion", "onnxruntime",
        "mnn"), progress=None, min_seconds: float | None = None) -> dict:
    """Run the suite; returns a JSON-ready dict with environment, peaks and one row per (shape, engine, path).

    Each shape gets ``repetitions`` rounds, or more where a round is fast: as many as take ``min_seconds`` (default
    2, quick 0), up to ``MORE_ROUNDS`` times as many. A sub-millisecond layer's time depends on what ran just before
    it; more rounds make its median as steady as a large layer's."""
    repetitions = repetitions or (5 if quick else 15)
    min_seconds = (0.0 if quick else 2.0) if min_seconds is None else min_seconds
    scale = 0.5 if quick else 1.0
    # onnxruntime's sessions are made not to spin below; OpenMP and OpenBLAS only listen to QUIET_POOLS
    order = np.random.default_rng(0)
    results: list[PathResult] = []
    peaks = {t: measure_peak(t) for t in threads_list}
    mnn = MnnTimer() if "mnn" in engines else None
    with tempfile.TemporaryDirectory(prefix="fusion-bench-") as scratch:
        scratch = Path(scratch)
        try:
            for threads in threads_list:
                numba.set_num_threads(threads)
                limits = threadpool_limits(threads, user_api="blas")  # numpy's BLAS does our GEMMs
                for shape in SUITE:
                    spec = shape.spec(scale)
                    flops = shape.flops(spec)
                    model = build(spec)
                    paths = _paths(shape, spec, model, threads, engines, mnn, scratch)
                    rows = {name: PathResult(shape.name, name[0], name[1], threads, flops=flops) for name in paths}
                    for name, call in paths.items():  # warm-up (compiles, allocates) and catch failures
                        try:
                            call()
                        except Exception as exc:  # one engine failing a shape is a result, not a crash
                            rows[name].error = str(exc).splitlines()[0][:200]
                    names = list(paths)
                    start = time.perf_counter()
                    for name in names:  # one untimed round, to size the timed ones
                        if rows[name].error is None:
                            paths[name]()
                    round_seconds = time.perf_counter() - start
                    rounds = int(np.clip(np.ceil(min_seconds / max(round_seconds, 1e-9)), repetitions,
                                         MORE_ROUNDS * repetitions))
                    _interleave({name: paths[name] for name in names if rows[name].error is None}, rows, rounds,
                                order)
                    results += rows.values()
                    results += _alone(shape, threads, flops, paths, rows, rounds, order)
                    if progress:
                        progress(shape.name, threads)
                limits.restore_original_limits()
        finally:
            if mnn:
                mnn.close()
    # measured again after the run: another tenant can hold a core at either moment (benchmarks/NOTES.md)
    measured = {t: (before, measure_peak(t)) for t, before in peaks.items()}
    peaks = {t: max(both) for t, both in measured.items()}
    return {"environment": environment(), "repetitions": repetitions, "min_seconds": min_seconds, "quick": quick,
            "peak_flops": {str(t): p for t, p in peaks.items()},
            "peak_flops_before_after": {str(t): list(both) for t, both in measured.items()},
            "results": [r.summary(peaks[r.threads]) for r in results]}


def _alone(shape: Shape, threads: int, flops: float, paths: dict, rows: dict, rounds: int, order) -> list:
    """fusion's ConvTranspose paths again, interleaved among themselves only (engine ``ALONE``): what fusing costs
    fusion. Interleaved with the other engines, a path's time also depends on whose data the one before it left in
    the caches, which makes its times two-mode (benchmarks/NOTES.md, "Benchmark peak")."""
    own = [name for name in paths if name[0] == "fusion" and name[1] in ALONE_PATHS and rows[name].error is None]
    alone = {name: PathResult(shape.name, ALONE, name[1], threads, flops=flops) for name in own}
    _interleave({name: paths[name] for name in own}, alone, rounds if len(own) > 1 else 0, order)
    return list(alone.values())


def _interleave(calls: dict, results: dict, rounds: int, order) -> None:
    """``rounds`` rounds of every timed call once, each round in a new order (no path always runs right after the
    same neighbour); each call's seconds are appended to ``results[name].times``."""
    names = list(calls)
    for _ in range(rounds):
        for index in order.permutation(len(names)):
            results[names[index]].times.append(calls[names[index]]())


def _timed(function):
    def call():
        start = time.perf_counter()
        function()
        return time.perf_counter() - start
    return call


def _paths(shape: Shape, spec: SiteSpec, model: onnx.ModelProto, threads: int, engines, mnn, scratch: Path) -> dict:
    (site,) = find_sites(model)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(spec.input_shape).astype(np.float32)
    attributes, affine = site.attributes, site.affine
    w, b = site.w, site.b
    w_f, b_f = fold.fold_affine(w, b, affine, group=site.group, transposed=True)
    paths = {}
    if "fusion" in engines:
        paths[("fusion", "conv_transpose only")] = _timed(lambda: ops.conv_transpose(x, w, b, **attributes))
        paths[("fusion", "unfused")] = _timed(
            lambda: ops.channel_affine(ops.conv_transpose(x, w, b, **attributes), affine))
        paths[("fusion", "folded")] = _timed(lambda: ops.conv_transpose(x, w_f, b_f, **attributes))
        paths[("fusion", "epilogue")] = _timed(
            lambda: ops.conv_transpose_channel_affine(x, w, b, affine, **attributes))
    fused, _, _ = fuse_model(model)
    if "onnxruntime" in engines:
        for label, graph, optimized in (("unfused", model, False), ("folded", fused, False),
                                        ("own fusion", model, True)):
            s = session(graph, optimized=optimized, threads=threads, spinning=False)
            paths[("onnxruntime", label)] = _timed(lambda s=s: s.run(None, {"x": x}))
    # the mirrored Conv: same multiply-adds, gathered instead of scattered
    mirror = shape.mirrored(spec)
    conv_model = build(mirror)
    (conv_site,) = find_sites(conv_model)
    x_conv = rng.standard_normal(mirror.input_shape).astype(np.float32)
    if "fusion" in engines:
        paths[("fusion", "Conv mirrored")] = _timed(
            lambda: ops.conv(x_conv, conv_site.w, conv_site.b, **conv_site.attributes))
    if "onnxruntime" in engines:
        s_conv = session(conv_model, optimized=False, threads=threads, spinning=False)
        paths[("onnxruntime", "Conv mirrored")] = _timed(lambda: s_conv.run(None, {"x": x_conv}))
    if "mnn" in engines:
        # MNN's unfused path: BN spelled as Mul + Add, which MNN 3.6.1 keeps as separate ops (its --forTraining
        # conversion, which keeps BatchNorm, crashes at run time)
        stem = f"{abs(hash((shape.name, threads)))}"
        converter = MnnEngine(timeout=600)
        for label, graph in (("unfused", _bn_as_mul_add(model, affine)), ("folded", fused), ("own fusion", model),
                             ("Conv mirrored", conv_model)):
            onnx_path, mnn_path = scratch / f"{stem}-{label}.onnx", scratch / f"{stem}-{label.replace(' ', '_')}.mnn"
            onnx.save(graph, onnx_path)
            try:
                converter.convert(onnx_path, mnn_path)
                failure = None
            except EngineFailure as error:
                failure = error.explain()
            key = f"{stem}-{label.replace(' ', '_')}"
            dims = mirror.input_shape if label == "Conv mirrored" else spec.input_shape
            if failure is None:
                answer = mnn.ask(f"load {key} {mnn_path} x y {','.join(map(str, dims))} {threads} 0")
                failure = None if answer == "ok" else answer
            paths[("mnn", label)] = _mnn_call(mnn, key, failure)
    return paths


def _bn_as_mul_add(model: onnx.ModelProto, affine) -> onnx.ModelProto:
    """The same site with its BatchNormalization written as ``Mul(a) -> Add(beta - a*mean)``."""
    from onnx import helper, numpy_helper

    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    bn = next(n for n in rewritten.graph.node if n.op_type == "BatchNormalization")
    rank = len(rewritten.graph.input[0].type.tensor_type.shape.dim) - 2
    shape = (1, affine.channels) + (1,) * rank
    rewritten.graph.initializer.extend([
        numpy_helper.from_array(affine.mul.reshape(shape).astype(np.float32), "bn_as_mul"),
        numpy_helper.from_array(affine.shift.reshape(shape).astype(np.float32), "bn_as_add")])
    nodes = [n for n in rewritten.graph.node if n is not bn]
    nodes += [helper.make_node("Mul", [bn.input[0], "bn_as_mul"], ["bn_mul"], name="bn_mul"),
              helper.make_node("Add", ["bn_mul", "bn_as_add"], [bn.output[0]], name="bn_add")]
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(nodes)
    return rewritten


def _mnn_call(mnn: MnnTimer, key: str, failure: str | None):
    def call():
        if failure:
            raise RuntimeError(failure)
        answer = mnn.ask(f"time {key}")
        if answer.startswith("error"):
            raise RuntimeError(answer)
        return float(answer)
    return call


def environment() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as handle:
            info = handle.read()
        name = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "")
        family = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("cpu family")), "")
        flags = next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), [])
        simd = [f for f in ("avx512f", "avx2", "fma") if f in flags]
        cpu = f"{name} (family {family}; {', '.join(simd)})"
    except OSError:
        cpu = platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "numba_threading_layer": _threading_layer(),
            "onnxruntime": onnxruntime.__version__, "mnn": importlib.metadata.version("mnn"),
            "fusion": importlib.metadata.version("fusion"),
            "thread_pools": {name: os.environ.get(name, "unset") for name in QUIET_POOLS}}


def _threading_layer() -> str:
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        return "not initialised"


def ratios(document: dict) -> list[dict]:
    """Per shape and thread count: fused/unfused per engine, and fusion's times against each peer's best."""
    rows = []
    by_key = {}
    for r in document["results"]:
        by_key.setdefault((r["shape"], r["threads"]), {})[(r["engine"], r["path"])] = r
    for (shape, threads), paths in by_key.items():
        row = {"shape": shape, "threads": threads}
        for engine in ("fusion", "onnxruntime", "mnn"):
            unfused, folded = paths.get((engine, "unfused")), paths.get((engine, "folded"))
            if unfused and folded and "median" in unfused and "median" in folded:
                row[f"{engine} folded/unfused"] = folded["median"] / unfused["median"]
        ours = paths.get(("fusion", "conv_transpose only"), {}).get("median")
        # a peer's bare ConvTranspose: the fused model it runs, or its own fold of the original (whichever is faster)
        peers = [paths[(e, p)]["median"] for e in ("onnxruntime", "mnn") for p in ("folded", "own fusion")
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
             f"{env['onnxruntime']}, MNN {env['mnn']}, numpy {env['numpy']}, Python {env['python']}. "
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


def plot(document: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threads_list = sorted({r["threads"] for r in document["results"]})
    figure, axes = plt.subplots(len(threads_list), 1, figsize=(13, 4.5 * len(threads_list)), squeeze=False)
    for axis, threads in zip(axes[:, 0], threads_list):
        rows = [r for r in document["results"] if r["threads"] == threads and r["engine"] != ALONE]
        shapes = list(dict.fromkeys(r["shape"] for r in rows))
        series = list(dict.fromkeys((r["engine"], r["path"]) for r in rows))
        width = 0.8 / len(series)
        for i, (engine, path_name) in enumerate(series):
            values = [next((r.get("median", np.nan) * 1e3 for r in rows if r["shape"] == s and r["engine"] == engine
                            and r["path"] == path_name), np.nan) for s in shapes]
            axis.bar(np.arange(len(shapes)) + i * width, values, width, label=f"{engine}: {path_name}")
        axis.set_xticks(np.arange(len(shapes)) + 0.4 - width / 2, shapes, fontsize=8)
        axis.set_yscale("log")
        axis.set_ylabel("median ms (log)")
        axis.set_title(f"ConvTranspose + BatchNormalization, {threads} thread(s)")
        axis.legend(fontsize=7, ncol=4)
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
