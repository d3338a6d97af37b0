"""walnet: WAL-Net for carotid plaque classification, with fast and exact custom PyTorch ops.

The hot steps of the network (the PGM's pseudo masks, the RCM's crops, Felzenszwalb
superpixels) are registered torch.library operators with CPU and CUDA kernels; pure-PyTorch
reference versions in :mod:`walnet.ops.reference` are their specification and fallback.

Importing walnet loads the operators (:mod:`walnet.ops`, which needs torch only); the models
(:mod:`walnet.models`, which need timm and torchvision) load on first use of ``walnet.models``,
``walnet.WALNet`` and the other model names (PEP 562), so ``import walnet.ops`` stays light.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from walnet import ops
from walnet._version import __version__
from walnet.ops import built_backends

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time these load on first use
    from walnet import models
    from walnet.engine.predictor import Predictor
    from walnet.models import PseudoMaskGenerator, WALNet, create_model, walnet_loss

#: The names walnet takes from :mod:`walnet.models` when first asked for them.
_FROM_MODELS = ("PseudoMaskGenerator", "WALNet", "create_model", "walnet_loss")

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


def __getattr__(name: str):
    """``walnet.models`` and the model names, imported on first use (then held as attributes), and
    ``walnet.Predictor`` (the engine's inference API, :mod:`walnet.engine.predictor`)."""
    if name == "models" or name in _FROM_MODELS:
        models = importlib.import_module("walnet.models")
        value = models if name == "models" else getattr(models, name)
        globals()[name] = value
        return value
    if name == "Predictor":
        value = importlib.import_module("walnet.engine.predictor").Predictor
        globals()[name] = value
        return value
    raise AttributeError(f"module 'walnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
