"""pnnx + ncnn as an engine to judge: the ``pnnx`` converter binary of the pnnx wheel turns the ONNX model into an
ncnn model with float32 weights (``fp16=0``; pnnx folds BatchNorm and following Mul/Add into the convolution in
its own passes), and ncnn's runtime (``ncnn.Net``, fp16 and bf16 off) runs it in a child process.

The pnnx wheel declares ``torch`` for its Python wrapper; its binary converts ONNX without it, so the wheel is
installed with ``--no-deps`` and the binary is called directly.

ncnn renames every blob (``in0``, ``out0``, numbers between): graph inputs and outputs are mapped by position, the
tensors between are not exposed. A site's fused parameters are read from the ``.bin`` (``fusion.engines.ncnn_file``)
of the ncnn convolution layer with the site's structure whose weights look most like the site's own (per output
channel, the absolute cosine; a fold scales each channel, so the right layer scores near 1 and another one near 0).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from fusion.engines.base import EngineFailure, EngineParams, KeptOp
from fusion.engines.isolate import python_child, run_step, tensors_from_child
from fusion.engines.ncnn_file import NcnnModel, read_model, onnx_weight

CHILD = "ncnn_child.py"
NORMAL = float(np.finfo(np.float32).tiny)
SIMILAR_ENOUGH = 0.5  # mean per-channel |cosine| below which no layer is taken to hold the site's weights


@dataclass(frozen=True)
class Converted:
    """An ncnn model pnnx wrote, and how the ONNX graph's inputs and outputs map onto its blobs."""

    param: Path
    weights: Path
    inputs: dict  # ONNX name -> ncnn blob
    outputs: dict  # ONNX name -> (ncnn blob, ONNX shape or None)


def pnnx_binary() -> Path:
    spec = importlib.util.find_spec("pnnx")
    if spec is None or spec.origin is None:
        raise EngineFailure("pnnx", "converting", "error", "the pnnx package is not installed")
    return Path(spec.origin).parent / "pnnx"


class PnnxNcnnEngine:
    name = "pnnx"
    hidden_tensors = ("ncnn renames every tensor between the graph's inputs and outputs: the site is judged by its "
                      "fused parameters and through the graph outputs")

    def __init__(self, *, timeout: float = 120.0):
        self.timeout = timeout
        self._models: dict[Path, NcnnModel] = {}

    def version(self) -> str:
        return (f"pnnx {importlib.metadata.version('pnnx')} (fp16=0) + ncnn {importlib.metadata.version('ncnn')} "
                "(fp16/bf16 off, 1 thread)")

    def prepare(self, onnx_path: Path, workdir: Path) -> Converted:
        workdir = Path(workdir).resolve()
        stem = Path(onnx_path).stem
        # pnnx writes a simplified copy beside the model it reads: it reads a copy, so the user's folder stays as it is
        source = workdir / f"{stem}.input.onnx"
        shutil.copyfile(onnx_path, source)
        out = {key: workdir / f"{stem}.{suffix}" for key, suffix in (
            ("ncnnparam", "ncnn.param"), ("ncnnbin", "ncnn.bin"), ("pnnxparam", "pnnx.param"),
            ("pnnxbin", "pnnx.bin"), ("pnnxpy", "pnnx.py"), ("ncnnpy", "ncnn.py"), ("pnnxonnx", "pnnx.onnx"))}
        run_step([str(pnnx_binary()), str(source), "fp16=0"] + [f"{k}={v}" for k, v in out.items()],
                 engine=self.name, stage="converting", timeout=self.timeout, cwd=workdir)
        if not out["ncnnparam"].is_file() or not out["ncnnbin"].is_file():
            raise EngineFailure(self.name, "converting", "error", "pnnx wrote no ncnn model")
        return Converted(out["ncnnparam"], out["ncnnbin"], *_blob_names(Path(onnx_path), out["ncnnparam"]))

    def load(self, artifact: Path, workdir: Path) -> Converted:
        raise EngineFailure(self.name, "reading the converted model", "error",
                            "an ncnn model keeps no ONNX tensor names to judge it by; give the ONNX model and let "
                            "fusion convert it with pnnx (fusion check MODEL.onnx --engine pnnx)")

    def tensor_names(self, prepared: Converted) -> set[str]:
        return set(prepared.inputs) | set(prepared.outputs)

    def run(self, prepared: Converted, feeds: dict, output: str) -> np.ndarray:
        return self.run_many(prepared, feeds, [output])[output]

    def run_many(self, prepared: Converted, feeds: dict, outputs: list[str]) -> dict[str, np.ndarray]:
        unknown = [o for o in outputs if o not in prepared.outputs and o not in feeds]
        if unknown:
            raise EngineFailure(self.name, "running", "missing", f"ncnn has no blob for {unknown[0]!r}")
        wanted = [o for o in outputs if o not in feeds]
        blob_feeds = {prepared.inputs[name]: value for name, value in feeds.items() if name in prepared.inputs}

        def command(feeds_path, out_path, names_path):
            return python_child(CHILD) + ["run", str(prepared.param), str(prepared.weights), feeds_path, out_path,
                                          names_path]

        blobs = [prepared.outputs[o][0] for o in wanted]
        values = tensors_from_child(command, blob_feeds, blobs, engine=self.name, timeout=self.timeout)
        result = {o: np.asarray(feeds[o], np.float32) for o in outputs if o in feeds}
        for name in wanted:
            blob, shape = prepared.outputs[name]
            value = values[blob]
            # ncnn drops axes of size 1 beyond its 4 (c, d, h, w): the same values in ONNX's shape
            result[name] = value.reshape(shape) if shape is not None and value.size == np.prod(shape) else value
        return result

    # -- fused parameters -------------------------------------------------------------------------------------
    def _model(self, prepared: Converted) -> NcnnModel:
        if prepared.param not in self._models:
            try:
                self._models[prepared.param] = read_model(prepared.param, prepared.weights)
            except (OSError, ValueError) as exc:
                raise EngineFailure(self.name, "reading fused parameters", "missing", str(exc)) from None
        return self._models[prepared.param]

    def site_params(self, prepared: Converted, site) -> EngineParams:
        model = self._model(prepared)
        candidates = [layer for layer in model.layers[:model.readable] if holds(layer, site)]
        if not candidates:
            stopped = f" (the .bin was read up to {model.stopped_by})" if model.stopped_by else ""
            raise EngineFailure(self.name, "reading fused parameters", "missing",
                                f"no ncnn layer with the structure of {site.label} ({site.c_out} outputs, group "
                                f"{site.group}, {site.w.size} weights){stopped}")
        scored = [(similarity(site.w, onnx_weight(layer, site.w.shape, site.group), site.group, site.transposed),
                   layer) for layer in candidates]
        score, layer = max(scored, key=lambda pair: pair[0])
        if score < SIMILAR_ENOUGH:
            raise EngineFailure(self.name, "reading fused parameters", "missing",
                                f"no ncnn layer holds weights like those of {site.label} (best: {layer.name!r}, "
                                f"mean per-channel |cosine| {score:.2f})")
        kept, notes = _kept_after(model, layer, site)
        weight = onnx_weight(layer, site.w.shape, site.group)
        bias = layer.arrays.get("bias", np.zeros(site.c_out, np.float32))
        resolution = 0.0
        if layer.float16:
            resolution = float(np.abs(weight).max(initial=0.0)) * 2.0 ** -11
            notes.append(f"ncnn layer {layer.name!r} stores its weights in float16: read to within {resolution:.2g}")
        return EngineParams(w=weight, b=bias, kept=kept, ops=[f"{layer.type} {layer.name}"] +
                            [op.name for op in kept], notes=notes, resolution=resolution)


def holds(layer, site) -> bool:
    """Whether ``layer`` has the structure of the site's conv: its family (Convolution or Deconvolution), rank,
    output channels, group and weight count; a Conv whose kernel is all ones may have become an InnerProduct
    (pnnx does so on a 1x1 input)."""
    if layer.type == "InnerProduct":
        return (not site.transposed and site.group == 1 and all(k == 1 for k in site.w.shape[2:])
                and layer.int(0) == site.c_out and layer.int(2) == site.w.size and "weight" in layer.arrays)
    match = layer.conv
    if match is None or "weight" not in layer.arrays:
        return False
    family, depthwise, suffix = match.groups()
    return (family == ("Deconvolution" if site.transposed else "Convolution")
            and (suffix or "") == {1: "1D", 2: "", 3: "3D"}.get(site.rank)
            and layer.int(0) == site.c_out and layer.int(6) == site.w.size
            and (layer.int(7, 1) if depthwise else 1) == site.group)


def similarity(expected: np.ndarray, found: np.ndarray, group: int, transposed: bool) -> float:
    """Mean over output channels of ``|cos|`` between two weights of one layout: 1 when one is the other scaled per
    output channel (a fold), near 0 for unrelated weights. Channels whose weights are zero or subnormal in either
    (dead channels, flushed by the fold) say nothing and are left out."""
    a, b = (per_output_channel(np.asarray(w, np.float64), group, transposed) for w in (expected, found))
    norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    alive = (norm_a > NORMAL) & (norm_b > NORMAL)
    if not alive.any():
        return 0.0
    cosine = np.abs(np.sum(a[alive] * b[alive], axis=1)) / (norm_a[alive] * norm_b[alive])
    return float(np.mean(cosine))


def per_output_channel(w: np.ndarray, group: int, transposed: bool) -> np.ndarray:
    """``(C_out, n)``: each output channel's weights in a row."""
    if not transposed:
        return w.reshape(w.shape[0], -1)
    c_in, c_out_g = w.shape[:2]
    view = w.reshape((group, c_in // group, c_out_g, -1))
    return np.moveaxis(view, 2, 1).reshape(group * c_out_g, -1)


def _kept_after(model: NcnnModel, layer, site) -> tuple[list[KeptOp], list[str]]:
    """The per-channel ops ncnn keeps after the conv layer, composed by the checker: BatchNorm, Scale, and BinaryOp
    add/sub/mul/div with a scalar or a constant (MemoryData) shaped per channel. A constant BinaryOp of another
    shape after it cannot be read as a per-channel op: its parameters are not judged (its values are, through the
    outputs)."""
    kept, notes, blob = [], [], layer.tops[0]
    if layer.int(9):
        return kept, notes  # an activation is fused into the layer: what follows it does not compose with the conv
    while True:
        readers = model.consumers(blob)
        if len(readers) != 1 or len(readers[0].tops) != 1:
            return kept, notes
        op = _channel_op(model, readers[0], blob, site)
        if op is None:
            return kept, notes
        kept.append(op)
        blob = readers[0].tops[0]


BINARY_ADD, BINARY_SUB, BINARY_MUL, BINARY_DIV = 0, 1, 2, 3


def _channel_op(model: NcnnModel, reader, blob: str, site) -> KeptOp | None:
    """``reader`` as ``y = x * mul + add`` per channel, or None when it is not such an op."""
    channels = site.c_out
    if reader.type == "BatchNorm" and reader.arrays:
        eps = float(reader.params.get(1, 0.0))
        mul = reader.arrays["slope"].astype(np.float64) / np.sqrt(reader.arrays["variance"].astype(np.float64) + eps)
        return KeptOp("BatchNorm", reader.name, mul, reader.arrays["bias"] - reader.arrays["mean"] * mul)
    if reader.type == "Scale" and reader.arrays.get("scale", np.zeros(0)).size == channels:
        scale = reader.arrays["scale"].astype(np.float64)
        return KeptOp("Scale", reader.name, scale, reader.arrays.get("bias", np.zeros_like(scale)).astype(np.float64))
    if reader.type != "BinaryOp":
        return None
    kind = reader.int(0)
    if reader.int(1):  # with a scalar operand
        value = np.full(channels, float(reader.params.get(2, 0.0)))
    else:
        others = [b for b in reader.bottoms if b != blob]
        producer = model.producer(others[0]) if len(others) == 1 else None
        if producer is None or producer.type != "MemoryData" or "data" not in producer.arrays:
            return None  # two activations (a residual Add, say): not part of the site
        if site.tail != "none" and not _per_channel(producer, site.rank, channels):
            raise EngineFailure("pnnx", "reading fused parameters", "missing",
                                f"ncnn keeps the site's tail as BinaryOp {reader.name!r} with a constant that is not "
                                "shaped per channel")
        if kind in (BINARY_SUB, BINARY_DIV) and reader.bottoms[0] != blob:
            return None  # constant minus / over the conv output: not an affine map of it
        data = producer.arrays["data"].astype(np.float64)
        value = np.full(channels, data[0]) if data.size == 1 else data
    if value.size != channels:
        return None
    ones, zeros = np.ones(channels), np.zeros(channels)
    if kind == BINARY_ADD:
        return KeptOp("BinaryOp add", reader.name, ones, value)
    if kind == BINARY_SUB:
        return KeptOp("BinaryOp sub", reader.name, ones, -value)
    if kind == BINARY_MUL:
        return KeptOp("BinaryOp mul", reader.name, value, zeros)
    if kind == BINARY_DIV:
        return KeptOp("BinaryOp div", reader.name, 1.0 / value, zeros)
    return None


def _per_channel(memory, rank: int, channels: int) -> bool:
    """Whether a MemoryData constant broadcasts per channel on ncnn's blob of a rank-``rank`` conv output (ncnn
    has no batch axis: 1-D ``(h=C, w)``, 2-D ``(c=C, h, w)``, 3-D ``(c=C, d, h, w)``)."""
    w, h, d, c = (memory.int(k) for k in (0, 1, 11, 2))
    if memory.arrays["data"].size == 1:
        return True
    if rank == 1:
        return (w, h, c, d) == (1, channels, 0, 0)
    return c == channels and w == 1 and h == 1 and d in ((0,) if rank == 2 else (0, 1))


def _blob_names(onnx_path: Path, param: Path) -> tuple[dict, dict]:
    """ONNX graph inputs -> ``in0, in1, ...`` and graph outputs -> ``out0, ...`` (pnnx numbers them in the graph's
    order), with each output's ONNX shape when it is static."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    stored = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in stored]
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shapes only help to restore ncnn's dropped axes
        inferred = model
    shapes = {}
    for value in inferred.graph.output:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value for d in dims] if dims and all(d.HasField("dim_value") for d in dims) \
            else None
    text = param.read_text(encoding="utf-8", errors="replace")
    blobs = set(text.split())
    mapping_in = {name: f"in{i}" for i, name in enumerate(inputs)}
    mapping_out = {o.name: (f"out{i}", shapes.get(o.name)) for i, o in enumerate(model.graph.output)
                   if f"out{i}" in blobs}
    missing = [name for name, blob in mapping_in.items() if blob not in blobs]
    if missing:
        raise EngineFailure("pnnx", "converting", "missing", f"the ncnn model has no input blob for {missing[0]!r}")
    return mapping_in, mapping_out
