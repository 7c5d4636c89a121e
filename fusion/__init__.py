"""fusion: golden reference kernels for Conv/ConvTranspose + BatchNorm/Scale fusion.

Public API (numpy in, numpy out, ONNX attribute names):

- ops: ``conv_transpose``, ``conv``, ``batch_norm``, ``scale`` (Numba kernels; ``fusion.reference`` holds
  the float64 golden definitions of the same four).
"""

from fusion.errors import FusionInputError, UnsafeFoldError
from fusion.ops import batch_norm, conv, conv_transpose, conv_transpose_channel_affine, scale

__version__ = "0.1.0"

__all__ = [
    "FusionInputError", "UnsafeFoldError", "__version__",
    "batch_norm", "conv", "conv_transpose", "conv_transpose_channel_affine", "scale",
]
