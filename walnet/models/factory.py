"""``walnet.create_model(name)``: WAL-Net variants, ablations and the paper's Table 1 baselines
(the names and what they fix: :mod:`walnet.models.registry`)."""
from __future__ import annotations

from torch import nn

from walnet.models.backbone import create_timm
from walnet.models.normalize import normalize_inputs
from walnet.models.registry import BASELINES, model_names, variant_settings
from walnet.models.walnet import WALNet

__all__ = ["BASELINES", "create_model", "model_names"]


def create_model(name: str, num_classes: int = 3, pretrained: bool = False, pretrained_file: str | None = None,
                 **kwargs) -> nn.Module:
    """Builds a model by name.

    - ``"walnet"``: WAL-Net with the paper's defaults (kwargs go to :class:`WALNet`);
    - ``"walnet_no_rcm"``: the "no RCM" ablation; ``"walnet_no_pgm"``: no PGM (no decoder) and
      no RCM; ``"walnet_<roi method>"``: one ROI method;
    - a baseline: ``"resnest"`` (the paper's "no RCM, no PGM" baseline, a plain ResNeSt-50
      classifier), ``"convnextv2"``, ``"dpn"``, ``"repvit"``, ``"sequencer"``, ``"rexnet"``,
      ``"res2net"`` (timm models, see ``BASELINES``; kwargs go to ``timm.create_model``).

    Every model takes RGB images in [0, 1] and normalises them itself with its backbone's mean
    and std (buffers ``input_mean`` / ``input_std``; a baseline through a forward pre-hook,
    :func:`walnet.models.normalize.normalize_inputs`). `pretrained_file` loads the backbone's
    pretrained weights from a local file (implies `pretrained`; nothing is downloaded).
    A :class:`walnet.models.spec.ModelSpec` builds the same models from one value.

    `num_classes` is an integer >= 2 (a classifier tells classes apart; timm's 0, a headless
    model, is no walnet model); a WAL-Net's ``backbone`` names a model timm lists locally
    (:func:`walnet.models.backbone.check_backbone`). Either is otherwise a ValueError naming it.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if name in BASELINES:
        return normalize_inputs(create_timm(BASELINES[name], num_classes=num_classes, pretrained=pretrained,
                                            pretrained_file=pretrained_file, **kwargs))
    if name not in model_names():
        raise ValueError(f"unknown model {name!r}; choose one of {model_names()}")
    return WALNet(num_classes=num_classes, pretrained=pretrained, pretrained_file=pretrained_file,
                  **variant_settings(name, kwargs, as_args=True))
