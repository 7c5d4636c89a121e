"""Hypothesis strategies for Conv / ConvTranspose configurations: ``fusion.graph.space`` drawn by hypothesis, with
limits small enough for the float64 reference loops."""

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from fusion import attrs
from fusion.errors import FusionInputError
from fusion.fold import output_channels
from fusion.graph import space


class HypothesisChoose:
    """``space.Choose`` on hypothesis draws (weights ignored: hypothesis shrinks towards the first option)."""

    def __init__(self, draw):
        self.draw = draw

    def integer(self, low, high):
        return self.draw(st.integers(low, high))

    def one_of(self, options, weights=None):
        return self.draw(st.sampled_from(list(options)))


@st.composite
def conv_configs(draw, *, transposed, ranks=(1, 2, 3), ort_compatible=False):
    """A dict with x_shape, w_shape, bias (bool) and ONNX attributes (``space.draw`` with ``space.TESTS``)."""
    rank = draw(st.sampled_from(ranks))
    try:
        config = space.draw(HypothesisChoose(draw), space.TESTS, transposed=transposed, rank=rank,
                            output_padding_below_stride=ort_compatible)
    except FusionInputError:
        assume(False)
    if ort_compatible:
        geometry = attrs.resolve(config["x_shape"], config["w_shape"], transposed=transposed, **config["attributes"])
        # onnxruntime clamps a negative total padding (an output_shape or SAME output larger than the full
        # extent) to zero and returns a smaller output than the spec's; the reference follows the spec
        assume(min(geometry.pads) >= 0)
        # onnxruntime's Conv refuses dilations with SAME auto_pad
        attributes = config["attributes"]
        assume(transposed or attributes.get("auto_pad") not in ("SAME_UPPER", "SAME_LOWER") or
               max(attributes["dilations"]) == 1)
    return dict(config, bias=draw(st.booleans()))


def arrays_for(config, rng, dtype=np.float32):
    x = rng.standard_normal(config["x_shape"]).astype(dtype)
    w = rng.standard_normal(config["w_shape"]).astype(dtype)
    channels = output_channels(config["w_shape"], group=config["attributes"]["group"], transposed=config["transposed"])
    b = rng.standard_normal(channels).astype(dtype) if config["bias"] else None
    return x, w, b
