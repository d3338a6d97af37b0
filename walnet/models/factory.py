"""``walnet.create_model(name)``: WAL-Net variants, ablations and the paper's Table 1 baselines."""
from __future__ import annotations

from torch import nn

from walnet import ops
from walnet.models.backbone import create_timm
from walnet.models.normalize import normalize_inputs
from walnet.models.walnet import WALNet

#: The seven baselines of the paper's Table 1, as timm models of comparable size (~12-37M params).
BASELINES = {
    "convnextv2": "convnextv2_tiny",
    "dpn": "dpn68b",
    "repvit": "repvit_m1_5",
    "sequencer": "sequencer2d_s",
    "rexnet": "rexnet_200",
    "res2net": "res2net50_26w_4s",
    "resnest": "resnest50d",
}


def model_names() -> list[str]:
    """Every name :func:`create_model` accepts."""
    return ["walnet", "walnet_no_rcm", "walnet_no_pgm"] + [f"walnet_{m}" for m in ops.ROI_METHODS] + list(BASELINES)


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
    """
    # What each WAL-Net variant fixes; kwargs may repeat a setting but not contradict it.
    variants = {"walnet": {}, "walnet_no_rcm": {"use_rcm": False}, "walnet_no_pgm": {"use_pgm": False}}
    variants.update({f"walnet_{m}": {"roi_method": m} for m in ops.ROI_METHODS})
    if name in variants:
        fixed = variants[name]
        clash = {k: kwargs[k] for k in fixed if k in kwargs and kwargs[k] != fixed[k]}
        if clash:
            raise ValueError(f"model {name!r} sets {fixed}, which contradicts {clash}")
        return WALNet(num_classes=num_classes, pretrained=pretrained, pretrained_file=pretrained_file,
                      **{**kwargs, **fixed})
    if name in BASELINES:
        return normalize_inputs(create_timm(BASELINES[name], num_classes=num_classes, pretrained=pretrained,
                                            pretrained_file=pretrained_file, **kwargs))
    raise ValueError(f"unknown model {name!r}; choose one of {model_names()}")
