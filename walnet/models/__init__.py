"""WAL-Net, its parts, the baselines of the paper, and loading exported models (:func:`load_pretrained`)."""
from walnet.models.attention import GridAttentionGate
from walnet.models.decoder import ASPP, DeepLabV3PlusDecoder
from walnet.models.factory import BASELINES, create_model, model_names
from walnet.models.spec import ModelSpec
from walnet.models.pretrained import load_pretrained
from walnet.models.walnet import LossParts, PseudoMaskGenerator, WALNet, WALNetOutput, walnet_loss

__all__ = [
    "ASPP",
    "BASELINES",
    "DeepLabV3PlusDecoder",
    "GridAttentionGate",
    "LossParts",
    "ModelSpec",
    "PseudoMaskGenerator",
    "WALNet",
    "WALNetOutput",
    "create_model",
    "load_pretrained",
    "model_names",
    "walnet_loss",
]
