"""Hypothesis strategies for Conv / ConvTranspose configurations (small enough for the float64 reference)."""

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from fusion import attrs
from fusion.errors import FusionInputError


@st.composite
def conv_configs(draw, *, transposed, ranks=(1, 2, 3), ort_compatible=False):
    """A dict with x_shape, w_shape, bias (bool) and ONNX attributes; covers depthwise, C_out/group > 1,
    C_in != C_out, strides, dilations, asymmetric pads, output_padding, output_shape and every auto_pad."""
    rank = draw(st.sampled_from(ranks))
    group = draw(st.integers(1, 3))
    c_in_g = draw(st.integers(1, 5))  # Conv: 4 and up take the GEMM path; every path is also forced in test_ops
    c_out_g = draw(st.integers(1, 3))
    batch = draw(st.integers(1, 2))
    max_side = {1: 6, 2: 5, 3: 3}[rank]
    spatial = tuple(draw(st.integers(1, max_side)) for _ in range(rank))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    strides = [draw(st.integers(1, 3)) for _ in range(rank)]
    dilations = [draw(st.integers(1, 2)) for _ in range(rank)]
    attributes = {"group": group, "strides": strides, "dilations": dilations}
    mode = draw(st.sampled_from(["pads", "auto_pad", "output_shape"] if transposed else ["pads", "auto_pad"]))
    if mode == "pads":
        attributes["pads"] = [draw(st.integers(0, 2)) for _ in range(2 * rank)]
    elif mode == "auto_pad":
        attributes["auto_pad"] = draw(st.sampled_from(["SAME_UPPER", "SAME_LOWER", "VALID"]))
    if transposed:
        limit = [s if ort_compatible else max(s, d) for s, d in zip(strides, dilations)]
        attributes["output_padding"] = [draw(st.integers(0, lim - 1)) for lim in limit]
        if mode == "output_shape":
            full = [s * (i - 1) + op + (k - 1) * d + 1 for s, i, op, k, d in
                    zip(strides, spatial, attributes["output_padding"], kernel, dilations)]
            attributes["output_shape"] = [max(1, f - draw(st.integers(-1, 3))) for f in full]
        w_shape = (c_in_g * group, c_out_g) + kernel
    else:
        w_shape = (c_out_g * group, c_in_g) + kernel
    x_shape = (batch, c_in_g * group) + spatial
    try:
        geometry = attrs.resolve(x_shape, w_shape, transposed=transposed, **attributes)
    except FusionInputError:
        assume(False)
    if ort_compatible:
        # onnxruntime clamps a negative total padding (an output_shape or SAME output larger than the full
        # extent) to zero and returns a smaller output than the spec's; the reference follows the spec
        assume(min(geometry.pads) >= 0)
        # onnxruntime's Conv refuses dilations with SAME auto_pad
        assume(transposed or attributes.get("auto_pad") not in ("SAME_UPPER", "SAME_LOWER") or max(dilations) == 1)
    return {"x_shape": x_shape, "w_shape": w_shape, "bias": draw(st.booleans()), "attributes": attributes,
            "transposed": transposed}


def arrays_for(config, rng, dtype=np.float32):
    x = rng.standard_normal(config["x_shape"]).astype(dtype)
    w = rng.standard_normal(config["w_shape"]).astype(dtype)
    channels = config["w_shape"][1] * config["attributes"]["group"] if config["transposed"] else config["w_shape"][0]
    b = rng.standard_normal(channels).astype(dtype) if config["bias"] else None
    return x, w, b
