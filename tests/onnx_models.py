"""Build single-node ONNX models and run them in onnxruntime with its graph optimizations off."""

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def single_node_model(op_type, x_shape, initializers, attributes, opset=17):
    inputs = ["x"] + list(initializers)
    node = helper.make_node(op_type, inputs, ["y"], name="node", **attributes)
    graph = helper.make_graph(
        [node], "single", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_ort(model, x):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.asarray(x, np.float32)})[0]
