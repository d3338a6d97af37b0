"""The model names walnet builds, read in one place: the WAL-Net variants (``walnet``,
``walnet_no_rcm``, ``walnet_no_pgm``, ``walnet_<roi method>``) with the settings each fixes, and the
paper's Table 1 baselines with their timm models. Nothing outside this module and
:mod:`walnet.models.spec` decides anything from a model's name."""
from __future__ import annotations

from collections.abc import Mapping

from walnet import ops

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

#: WAL-Net's encoder unless one is named: the paper's ResNeSt-50.
DEFAULT_BACKBONE = "resnest50d"

#: What each WAL-Net variant's name fixes, as ModelSpec fields.
VARIANTS = {"walnet": {}, "walnet_no_rcm": {"rcm": False}, "walnet_no_pgm": {"pgm": False},
            **{f"walnet_{m}": {"roi_method": m} for m in ops.ROI_METHODS}}

#: The :class:`walnet.WALNet` argument of each WAL-Net ModelSpec field.
WALNET_ARGS = {"backbone": "backbone", "roi_method": "roi_method", "rcm": "use_rcm", "pgm": "use_pgm",
               "rcm_warmup": "rcm_warmup_epochs", "attention_channels": "attention_channels"}


def model_names() -> list[str]:
    """Every name :func:`walnet.models.create_model` and ``ModelSpec.from_name`` accept."""
    return list(VARIANTS) + list(BASELINES)


def variant_settings(name: str, given: Mapping, as_args: bool = False) -> dict:
    """`given` WAL-Net settings with those the variant `name` fixes (ModelSpec fields; with
    ``as_args``, :class:`walnet.WALNet` arguments). A setting the name fixes may be repeated, not
    contradicted (``walnet_no_rcm`` with rcm True): a ValueError. A baseline or unknown name is a
    ValueError too."""
    if name not in VARIANTS:
        what = "a baseline, not a WAL-Net" if name in BASELINES else "unknown"
        raise ValueError(f"model {name!r} is {what}; the WAL-Net variants are {list(VARIANTS)}")
    fixed = {(WALNET_ARGS[k] if as_args else k): v for k, v in VARIANTS[name].items()}
    clash = {k: given[k] for k in fixed if k in given and given[k] != fixed[k]}
    if clash:
        raise ValueError(f"model {name!r} sets {fixed}, which contradicts {clash}")
    return {**given, **fixed}
