"""A two-site decoder chain: ConvTranspose g4 + BN -> Relu -> ConvTranspose g2 + BN (names as a user's model)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Constants:
    """The initializers of a model being built, drawn from one generator in the order they are asked for."""

    def __init__(self, rng):
        self.rng, self.arrays = rng, {}

    def __call__(self, name, array):
        self.arrays[name] = np.asarray(array, np.float32)
        return name

    def bn(self, prefix, channels, signed=True):
        rng = self.rng
        scale = rng.uniform(0.5, 2, channels) * (rng.choice([-1, 1], channels) if signed else 1)
        return [self(f"{prefix}_scale", scale), self(f"{prefix}_bias", rng.standard_normal(channels)),
                self(f"{prefix}_mean", rng.standard_normal(channels) * 0.5),
                self(f"{prefix}_var", rng.uniform(0.2, 2, channels))]

    def model(self, nodes, name, input_shape, output_shape):
        graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
                                  [helper.make_tensor_value_info("output", TensorProto.FLOAT, output_shape)],
                                  [numpy_helper.from_array(v, k) for k, v in self.arrays.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 9
        onnx.checker.check_model(model)
        return model


def chain_model(seed=0, epsilon=1e-5):
    """``epsilon=None`` leaves the attribute out (ONNX default 1e-5)."""
    rng = np.random.default_rng(seed)
    constant = _Constants(rng)
    bn = constant.bn

    given = {} if epsilon is None else {"epsilon": epsilon}
    nodes = [
        helper.make_node("ConvTranspose", ["input", constant("up1.w", rng.standard_normal((8, 8, 4, 4)) * 0.3),
                                           constant("up1.b", rng.standard_normal(16))], ["up1"], name="up1",
                         group=2, strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["up1"] + bn("bn1", 16), ["bn1"], name="bn1", **given),
        helper.make_node("Relu", ["bn1"], ["relu1"], name="relu1"),
        helper.make_node("ConvTranspose", ["relu1", constant("up2.w", rng.standard_normal((16, 2, 3, 3)) * 0.3)],
                         ["up2"], name="up2", group=4, strides=[1, 1], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["up2"] + bn("bn2", 8), ["output"], name="bn2", **given),
    ]
    return constant.model(nodes, "decoder", [1, 8, 6, 6], [1, 8, 12, 12])


def conv_chain_model(seed=0, subnormal=True):
    """Conv 3x3 + BN -> Relu -> Conv 3x3 + BN -> Relu -> Conv 1x1: Winograd-eligible layers, and (``subnormal``) some
    weights below float32's normal range, as trained models have (TwinLiteNet)."""
    rng = np.random.default_rng(seed)
    constant = _Constants(rng)

    def weights(name, shape):
        w = rng.standard_normal(shape) * 0.2
        if subnormal:
            w[0] *= 1e-40  # one output channel of subnormal weights
            w.reshape(-1)[5::7] *= 1e-39
        return constant(name, w)

    def bn(prefix, channels):
        return constant.bn(prefix, channels, signed=False)

    nodes = [
        helper.make_node("Conv", ["input", weights("c1.w", (16, 8, 3, 3)), constant("c1.b", rng.standard_normal(16))],
                         ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1"] + bn("bn1", 16), ["bn1"], name="bn1"),
        helper.make_node("Relu", ["bn1"], ["relu1"], name="relu1"),
        helper.make_node("Conv", ["relu1", weights("c2.w", (16, 16, 3, 3))], ["c2"], name="c2", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2"] + bn("bn2", 16), ["bn2"], name="bn2"),
        helper.make_node("Relu", ["bn2"], ["relu2"], name="relu2"),
        helper.make_node("Conv", ["relu2", weights("c3.w", (4, 16, 1, 1))], ["output"], name="c3"),
    ]
    return constant.model(nodes, "encoder", [1, 8, 20, 20], [1, 4, 20, 20])
