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
import importlib.util
import os
import platform
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
from fusion.bench.peak import measure_peak
from fusion.bench.pools import QUIET_POOLS
from fusion.bench.suite import SUITE, Shape
from fusion.engines.base import EngineFailure
from fusion.engines.mnn import MnnEngine
from fusion.engines.mnn_timing import MnnTimer
from fusion.graph.build import SiteSpec, build
from fusion.graph.fuse import fuse_model
from fusion.graph.sites import find_sites
from fusion.oracle import session


# At most this many times the requested rounds, for a shape whose rounds are fast (``run``).
MORE_ROUNDS = 10


# fusion's paths timed a second time among themselves only (``_alone``), under this engine name.
ALONE = "fusion alone"


ALONE_PATHS = ("conv_transpose only", "folded", "epilogue")


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


def default_engines() -> tuple[str, ...]:
    """fusion, onnxruntime, MNN, and PyTorch when it is installed (an optional peer: ``pip install torch``)."""
    return ("fusion", "onnxruntime", "mnn") + (("pytorch",) if importlib.util.find_spec("torch") else ())


def run(*, quick: bool = False, threads_list=(1, 2), repetitions: int | None = None, engines=None, progress=None,
        min_seconds: float | None = None, suite=None) -> dict:
    """Run the suite (``suite``: other shapes instead of ``SUITE``) on ``engines`` (default: ``default_engines()``);
    returns a JSON-ready dict with environment, peaks and one row per (shape, engine, path).

    Each shape gets ``repetitions`` rounds, or more where a round is fast: as many as take ``min_seconds`` (default
    2, quick 0), up to ``MORE_ROUNDS`` times as many. A sub-millisecond layer's time depends on what ran just before
    it; more rounds make its median as steady as a large layer's."""
    engines = tuple(engines or default_engines())
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
                for shape in suite or SUITE:
                    spec = shape.spec(scale)
                    flops = shape.flops(spec)
                    model = build(spec)
                    paths = _paths(shape, spec, model, threads, engines, mnn, scratch)
                    rows = {name: PathResult(spec.name, name[0], name[1], threads, flops=flops) for name in paths}
                    for name, call in paths.items():  # warm-up (compiles, allocates) and catch failures
                        try:
                            call()
                        except Exception as exc:  # one engine failing a shape is a result, not a crash
                            rows[name].error = str(exc).splitlines()[0][:200]
                    working = {name: call for name, call in paths.items() if rows[name].error is None}
                    _interleave(working, rows, _rounds(working, repetitions, min_seconds), order)
                    results += rows.values()
                    results += _alone(spec.name, threads, flops, working, repetitions, min_seconds, order)
                    if progress:
                        progress(spec.name, threads)
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


def _alone(label: str, threads: int, flops: float, paths: dict, repetitions: int, min_seconds: float, order) -> list:
    """fusion's ConvTranspose paths again, interleaved among themselves only (engine ``ALONE``): what fusing costs
    fusion. Interleaved with the other engines, a path's time also depends on whose data the one before it left in
    the caches, which makes its times two-mode (benchmarks/NOTES.md, "Benchmark peak"). As many rounds as take
    ``min_seconds`` here too: the ratios between these paths are a few percent."""
    own = {name: paths[name] for name in paths if name[0] == "fusion" and name[1] in ALONE_PATHS}
    alone = {name: PathResult(label, ALONE, name[1], threads, flops=flops) for name in own}
    if len(own) > 1:
        _interleave(own, alone, _rounds(own, repetitions, min_seconds), order)
    return list(alone.values())


def _rounds(calls: dict, repetitions: int, min_seconds: float) -> int:
    """Rounds of every call once that take ``min_seconds``, from ``repetitions`` to ``MORE_ROUNDS`` times as many,
    sized by one untimed round."""
    start = time.perf_counter()
    for call in calls.values():
        call()
    round_seconds = time.perf_counter() - start
    return int(np.clip(np.ceil(min_seconds / max(round_seconds, 1e-9)), repetitions, MORE_ROUNDS * repetitions))


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
    if "pytorch" in engines:
        paths.update(_pytorch_paths(spec, site, x, w_f, b_f, threads))
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


def _pytorch_paths(spec: SiteSpec, site, x: np.ndarray, w_f: np.ndarray, b_f: np.ndarray, threads: int) -> dict:
    """PyTorch's CPU ConvTranspose (``torch.nn.functional.conv_transposeNd``) unfused (then ``batch_norm`` in
    inference) and folded, under ``inference_mode``, on ``threads`` intra-op threads."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    geometry = spec.geometry()
    convolve = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[site.rank]
    begin, end = geometry.pads[:site.rank], geometry.pads[site.rank:]
    if list(begin) != list(end):
        return {}  # PyTorch takes symmetric padding only; the suite's layers have it
    keywords = dict(stride=tuple(geometry.strides), padding=tuple(begin), output_padding=tuple(geometry.output_padding),
                    groups=site.group, dilation=tuple(geometry.dilations))
    tx, tw, tb, twf, tbf = (torch.from_numpy(np.array(a, np.float32)) for a in (x, site.w, site.b, w_f, b_f))
    bn = site.batch_norm
    stats = [torch.from_numpy(np.array(bn[k], np.float32)) for k in ("mean", "var", "scale", "bias")]

    def unfused():
        with torch.inference_mode():
            F.batch_norm(convolve(tx, tw, tb, **keywords), stats[0], stats[1], stats[2], stats[3], False, 0.0,
                         bn["epsilon"])

    def folded():
        with torch.inference_mode():
            convolve(tx, twf, tbf, **keywords)

    return {("pytorch", "unfused"): _timed(unfused), ("pytorch", "folded"): _timed(folded)}


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
            "pytorch": _version_or_absent("torch"),
            "fusion": importlib.metadata.version("fusion"),
            "thread_pools": {name: os.environ.get(name, "unset") for name in QUIET_POOLS}}


def _version_or_absent(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _threading_layer() -> str:
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        return "not initialised"
