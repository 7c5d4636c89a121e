"""fusion: golden reference kernels for Conv/ConvTranspose + BatchNorm/Scale fusion.

- ops (Numba): ``conv_transpose``, ``conv``, ``batch_norm``, ``scale``, ``conv_transpose_channel_affine``;
  ``fusion.reference`` holds the float64 golden definitions of the first four.
- folds: ``fold_batch_norm``, ``fold_scale``, ``fold_affine``, ``fold_affine_before``.
- judging: ``compare``, ``site_bound``, ``fusion.testing.assert_matches_reference``, ``check_model``.
"""

from fusion.affine import ChannelAffine, batch_norm_affine, scale_affine
from fusion.bounds import fold_bounds, site_bound
from fusion.compare import Comparison, compare
from fusion.errors import FusionInputError, UnsafeFoldError
from fusion.fold import fold_affine, fold_affine_before, fold_batch_norm, fold_scale
from fusion.ops import batch_norm, channel_affine, conv, conv_transpose, conv_transpose_channel_affine, scale

__version__ = "0.1.0"


def check_model(model_path, *, mnn=None, converter=None, seed=0, timeout=120.0, runs=2, input_shapes=None,
                sites=False):
    """``fusion check`` as a function: judge an ONNX model as MNN converts it whole (or your ``mnn`` file), stage by
    stage; ``sites=True`` converts each site alone. Returns a ``ModelReport``."""
    from fusion.check import check, check_sites
    from fusion.engines.mnn import MnnEngine

    judge = check_sites if sites else check
    return judge(model_path, MnnEngine(converter, timeout=timeout), converted=mnn, seed=seed, runs=runs,
                 shapes=input_shapes)


__all__ = [
    "ChannelAffine", "Comparison", "FusionInputError", "UnsafeFoldError", "__version__",
    "batch_norm", "batch_norm_affine", "channel_affine", "check_model", "compare", "conv", "conv_transpose",
    "conv_transpose_channel_affine", "fold_affine", "fold_affine_before", "fold_batch_norm", "fold_bounds",
    "fold_scale", "scale", "scale_affine", "site_bound",
]
