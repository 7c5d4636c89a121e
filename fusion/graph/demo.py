"""The built-in demo set: small single-site models that tour what a converter must fold right.

Generated on demand (nothing is committed): grouped ConvTranspose + BatchNormalization and + Mul/Add in 1-D,
2-D and 3-D, depthwise, C_in != C_out, with and without bias, a BatchNormalization that relies on the ONNX
default epsilon, group 1 controls and Conv + BatchNormalization.
"""

from __future__ import annotations

from fusion.graph.build import SiteSpec

P1 = {"strides": [2], "pads": [1, 1], "output_padding": [1]}
P2 = {"strides": [2, 2], "pads": [1, 1, 1, 1]}
P3 = {"strides": [2, 2, 2], "pads": [1, 1, 1, 1, 1, 1]}


def demo_specs() -> list[SiteSpec]:
    T, C = "ConvTranspose", "Conv"
    return [
        SiteSpec(T, (1, 16, 8, 8), 16, 4, (4, 4), P2, True, "bn", 1, "deconv2d_g4_bn"),
        SiteSpec(T, (1, 16, 8, 8), 16, 4, (4, 4), P2, True, "mul_add", 2, "deconv2d_g4_mul_add"),
        SiteSpec(T, (1, 16, 8, 8), 16, 1, (4, 4), P2, True, "bn", 3, "deconv2d_g1_bn"),
        SiteSpec(T, (1, 16, 8, 8), 16, 4, (4, 4), P2, True, "bn", 14, "deconv2d_g4_bn_default_epsilon",
                 bn_epsilon=None),
        SiteSpec(T, (1, 8, 16), 12, 2, (3,), P1, True, "bn", 4, "deconv1d_g2_bn"),
        SiteSpec(T, (1, 8, 4, 4, 4), 8, 4, (3, 3, 3), P3, True, "bn", 5, "deconv3d_g4_bn"),
        SiteSpec(T, (1, 8, 4, 4, 4), 8, 1, (3, 3, 3), P3, True, "bn", 6, "deconv3d_g1_bn"),
        SiteSpec(T, (1, 8, 4, 4, 4), 8, 2, (3, 3, 3), P3, False, "mul_add", 7, "deconv3d_g2_mul_add_nobias"),
        SiteSpec(T, (1, 8, 8, 8), 8, 8, (3, 3), P2, True, "bn", 8, "deconv2d_depthwise_bn"),
        SiteSpec(T, (1, 12, 8, 8), 8, 4, (3, 3), P2, False, "bn", 9, "deconv2d_g4_12to8_nobias_bn"),
        SiteSpec(T, (1, 8, 8, 8), 12, 4, (3, 3), P2, True, "none", 10, "deconv2d_g4_bare"),
        SiteSpec(C, (1, 8, 8, 8), 16, 2, (3, 3), {"pads": [1, 1, 1, 1]}, True, "bn", 11, "conv2d_g2_bn"),
        SiteSpec(C, (1, 8, 8, 8), 8, 8, (3, 3), {"pads": [1, 1, 1, 1]}, True, "bn", 12, "conv2d_depthwise_bn"),
        SiteSpec(C, (1, 8, 6, 6, 6), 8, 2, (3, 3, 3), {"pads": [1] * 6}, True, "bn", 13, "conv3d_g2_bn"),
    ]
