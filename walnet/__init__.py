"""walnet: WAL-Net for carotid plaque classification, with fast and exact custom PyTorch ops.

The hot steps of the network (the PGM's pseudo masks, the RCM's crops, Felzenszwalb
superpixels) are registered torch.library operators with CPU and CUDA kernels; pure-PyTorch
reference versions in :mod:`walnet.ops.reference` are their specification and fallback.
"""
from walnet import models, ops
from walnet._version import __version__
from walnet.models import PseudoMaskGenerator, WALNet, create_model, walnet_loss
from walnet.ops import built_backends

__all__ = [
    "Predictor",
    "PseudoMaskGenerator",
    "WALNet",
    "__version__",
    "built_backends",
    "create_model",
    "models",
    "ops",
    "walnet_loss",
]


def __getattr__(name):  # PEP 562: walnet.Predictor loads the engine only when it is used
    if name == "Predictor":
        from walnet.engine.predictor import Predictor
        return Predictor
    raise AttributeError(f"module 'walnet' has no attribute {name!r}")
