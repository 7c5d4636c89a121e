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


def check_model(model_path, *, mnn=None, converter=None, seed=0, timeout=120.0, runs=2):
    """``fusion check`` as a function: judge every site of an ONNX model against MNN; returns a ``ModelReport``."""
    from fusion.check import check as run_check
    from fusion.engines.mnn import MNNEngine

    return run_check(model_path, MNNEngine(converter, timeout=timeout), converted=mnn, seed=seed, runs=runs)


__all__ = [
    "ChannelAffine", "Comparison", "FusionInputError", "UnsafeFoldError", "__version__",
    "batch_norm", "batch_norm_affine", "channel_affine", "check_model", "compare", "conv", "conv_transpose",
    "conv_transpose_channel_affine", "fold_affine", "fold_affine_before", "fold_batch_norm", "fold_bounds",
    "fold_scale", "scale", "scale_affine", "site_bound",
]
