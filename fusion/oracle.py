"""onnxruntime as the unfused oracle: run a model with graph optimizations off and read any tensor in it.

The oracle is what a converted model is judged against. Its graph optimizations are off because onnxruntime folds
BatchNormalization into Conv/ConvTranspose itself. ``sensitivity`` measures how far each tensor moves when every
weight and input is perturbed by a tiny relative amount: a tensor that moves a lot is ill-conditioned, and two
correct float32 evaluations of it may differ by that much.
"""

from __future__ import annotations

import threading

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from fusion.errors import FusionInputError, StepTimeout

SYMBOLIC_BATCH = 1
SYMBOLIC_SIDE = 64  # a multiple of 32: a network that downsamples five times still runs
FLOAT_TYPES = {onnx.TensorProto.FLOAT}
GEOMETRY_OPS = {"Resize", "Upsample", "Reshape", "Pad", "Slice", "Tile", "Expand", "ConstantOfShape", "Range", "Clip",
                "Gather", "Split", "Squeeze", "Unsqueeze", "TopK", "ReduceMean", "ReduceSum"}


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME:d0,d1,...`` (the ``--input-shape`` flag) as ``(name, dims)``."""
    name, _, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not name or not shape or any(d < 1 for d in shape):
        raise FusionInputError(f"--input-shape takes NAME:d0,d1,... with positive sizes, got {text!r}")
    return name, shape


def dynamic_inputs(inputs) -> list[str]:
    """``name[d0, d1, ...]`` for every input with a dimension that is not a fixed positive number."""
    described = []
    for value in inputs:
        dims = value.type.tensor_type.shape.dim
        if any(not (d.HasField("dim_value") and d.dim_value > 0) for d in dims):
            described.append(f"{value.name}[{', '.join(d.dim_param or str(d.dim_value or '?') for d in dims)}]")
    return described


def input_shapes(model: onnx.ModelProto, inputs, overrides: dict[str, tuple[int, ...]] | None = None
                 ) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for the graph inputs: ``overrides`` first, else a symbolic batch becomes 1 and other symbolic
    axes 64."""
    overrides = dict(overrides or {})
    names = {value.name for value in inputs}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise FusionInputError(f"--input-shape names {unknown}, which are not inputs of the model; its inputs: "
                               f"{sorted(names)}")
    shapes = {}
    for value in inputs:
        tensor = value.type.tensor_type
        if tensor.elem_type not in FLOAT_TYPES:
            raise FusionInputError(f"input {value.name} is {onnx.TensorProto.DataType.Name(tensor.elem_type)}; "
                                   "only float32 models are checked")
        if value.name in overrides:
            shape = overrides[value.name]
            if tensor.HasField("shape") and len(shape) != len(tensor.shape.dim):
                raise FusionInputError(f"--input-shape gives {value.name} {len(shape)} dimensions; the model declares "
                                       f"{len(tensor.shape.dim)}")
            shapes[value.name] = tuple(shape)
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else
                (SYMBOLIC_BATCH if axis == 0 else SYMBOLIC_SIDE) for axis, d in enumerate(tensor.shape.dim)]
        shapes[value.name] = tuple(dims)
    return shapes


def random_feeds(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def session(model: onnx.ModelProto, *, optimized: bool = False, threads: int = 1,
            spinning: bool = True) -> ort.InferenceSession:
    """A CPU session; ``optimized=False`` turns every graph optimization off (onnxruntime would fuse BN itself).
    ``spinning=False`` stops idle pool threads from spinning (for timing next to other engines)."""
    options = ort.SessionOptions()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.intra_op_num_threads = threads
    options.log_severity_level = 4  # errors reach the caller as exceptions, reported in one line
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def runnable(model: onnx.ModelProto) -> str | None:
    """None when onnxruntime can load the model, else its one-line reason."""
    try:
        session(model)
    except Exception as exc:  # onnxruntime raises its own exception types
        return first_line(exc)
    return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def float_tensors(model: onnx.ModelProto) -> list[str]:
    """Every node output of the main graph whose type onnxruntime infers as float32, in graph order."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type
                 for v in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    except Exception:  # shape inference gives up on some valid models; onnxruntime still runs them
        types = {}
    return [name for node in model.graph.node if node.op_type != "Constant" for name in node.output
            if name and types.get(name, onnx.TensorProto.FLOAT) in FLOAT_TYPES]


def activations(model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str], *,
                inputs_help: str = "", timeout: float | None = None) -> dict[str, np.ndarray]:
    """The values of tensors ``names`` (graph inputs or intermediates) for ``feeds``, unfused, in float32.

    A tensor that turns out not to be float is left out. ``inputs_help`` is added to the error when onnxruntime
    cannot run the model (which inputs are dynamic, and the flag that fixes them). ``timeout``: seconds before the
    run is stopped (onnxruntime's terminate flag) with ``StepTimeout``."""
    wanted = [n for n in dict.fromkeys(names) if n not in feeds]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for name in wanted:
        if name not in present:
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.RunOptions()
    timer = threading.Timer(timeout, lambda: setattr(options, "terminate", True)) if timeout else None
    if timer:
        timer.daemon = True
    try:
        loaded = session(exposed)
        if timer:
            timer.start()
        values = loaded.run(wanted, feeds, options) if wanted else []
    except Exception as exc:  # onnxruntime raises its own exception types
        if options.terminate:
            raise StepTimeout(f"the oracle (onnxruntime, optimizations off) took longer than {timeout:g} s to run "
                              "the model (--timeout)") from None
        shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
        raise FusionInputError(f"onnxruntime cannot run the model with inputs {shapes}: {first_line(exc)}"
                               + (f"; {inputs_help}" if inputs_help else "")) from None
    finally:
        if timer:
            timer.cancel()
    result = {name: value for name, value in zip(wanted, values)
              if isinstance(value, np.ndarray) and value.dtype == np.float32}
    result.update({n: feeds[n] for n in names if n in feeds})
    return result


def perturbed(model: onnx.ModelProto, feeds: dict[str, np.ndarray], relative: float, seed: int
              ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The model and feeds with every float32 weight and input value multiplied by ``1 + relative * r``,
    ``r`` uniform in [-1, 1], independently per element."""
    rng = np.random.default_rng(seed)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    # sizes, scales and bounds are not values a float32 engine rounds
    exempt = {name for node in model.graph.node if node.op_type in GEOMETRY_OPS for name in node.input[1:]}

    def shake(array: np.ndarray) -> np.ndarray:
        if array.dtype != np.float32 or array.size == 0:
            return array
        shaken = array.astype(np.float64) * (1 + relative * rng.uniform(-1, 1, array.shape))
        # a value near float32's largest (an engine's wrong tensor, fed to the stage after it) would round to
        # infinity, and an infinite spread would leave the stage unjudged: perturbed values stay finite
        largest = float(np.finfo(np.float32).max)
        return np.where(np.isfinite(array), np.clip(shaken, -largest, largest), array).astype(np.float32)

    for index, tensor in enumerate(copy.graph.initializer):
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32 and array.size > 1 and tensor.name not in exempt:  # a scalar: an epsilon
            copy.graph.initializer[index].CopyFrom(numpy_helper.from_array(shake(array), tensor.name))
    for node in copy.graph.node:
        if node.op_type != "Constant" or node.output[0] in exempt:
            continue
        for attribute in node.attribute:
            if attribute.name == "value":
                array = numpy_helper.to_array(attribute.t)
                if array.dtype == np.float32 and array.size > 1:
                    attribute.t.CopyFrom(numpy_helper.from_array(shake(array), attribute.t.name))
    return copy, {name: shake(value) for name, value in feeds.items()}


def sensitivity(model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str], reference: dict,
                *, relative: float, trials: int = 2, seed: int = 0, timeout: float | None = None) -> dict[str, float]:
    """Per tensor, the largest ``|perturbed - reference|`` over ``trials`` runs of ``perturbed`` models."""
    spread = {name: 0.0 for name in names if name in reference}
    for trial in range(trials):
        model_p, feeds_p = perturbed(model, feeds, relative, seed + 1000 + trial)
        values = activations(model_p, feeds_p, list(spread), timeout=timeout)
        for name in spread:
            moved = values.get(name)
            if moved is None or moved.shape != reference[name].shape:
                spread[name] = float("inf")
                continue
            with np.errstate(invalid="ignore", over="ignore"):
                difference = np.abs(moved.astype(np.float64) - reference[name].astype(np.float64))
            both_nan = np.isnan(moved) & np.isnan(reference[name])
            difference = np.where(both_nan, 0.0, np.nan_to_num(difference, nan=np.inf))
            spread[name] = max(spread[name], float(difference.max(initial=0.0)))
    return spread
