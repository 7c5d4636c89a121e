"""onnxruntime as the unfused oracle: run a model with graph optimizations off and read intermediate tensors."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from fusion.errors import FusionInputError

SYMBOLIC_BATCH = 1
SYMBOLIC_SIDE = 16


def input_shapes(model: onnx.ModelProto, inputs) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for the graph inputs: a symbolic batch becomes 1, other symbolic axes 16."""
    shapes = {}
    for value in inputs:
        tensor = value.type.tensor_type
        if tensor.elem_type != onnx.TensorProto.FLOAT:
            raise FusionInputError(f"input {value.name} is {onnx.TensorProto.DataType.Name(tensor.elem_type)}; "
                                   "only float32 models are checked")
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
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def activations(model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """The values of tensors ``names`` (graph inputs or intermediates) for ``feeds``, unfused, in float32."""
    wanted = [n for n in dict.fromkeys(names) if n not in feeds]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for name in wanted:
        if name not in present:
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    try:
        values = session(exposed).run(wanted, feeds) if wanted else []
    except Exception as exc:  # onnxruntime raises its own exception types
        raise FusionInputError(f"onnxruntime cannot run the model: {str(exc).splitlines()[0]}") from None
    result = dict(zip(wanted, values))
    result.update({n: feeds[n] for n in names if n in feeds})
    return result
