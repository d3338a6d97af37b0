"""timm models by name, with pretrained weights from a local file: :func:`check_backbone`,
:func:`create_encoder`, :func:`create_timm` and :func:`check_pretrained_file`.

A backbone is a model timm lists locally (``timm.list_models()``, optionally with a pretrained tag:
``resnet18.a1_in1k``): never an ``hf-hub:`` / ``local-dir:`` name or a path, which timm would
fetch or read even with ``pretrained=False``. Building a model without pretrained weights
therefore never touches the network or the file system.

``pretrained_file`` loads a backbone's weights from a file on disk (a state dict saved with
``torch.save`` or as safetensors, as timm's ``load_state_dict`` reads them) through timm's
``pretrained_cfg_overlay=dict(file=...)``; nothing is downloaded. timm loads such a file
non-strictly wherever it adapts the model (a ``features_only`` encoder, another number of
classes: it then drops the classifier and only logs the keys it did not find), so a file of
another architecture would leave the model silently at its random initialisation.
:func:`check_pretrained_file` therefore compares the file with the architecture first: every
parameter and buffer but the classifier must be in it, with its shape, and nothing else.
"""
from __future__ import annotations

import re
from pathlib import Path

import timm
import torch
from torch import nn

from walnet.files import first_line, special_kind, weights_mismatch


#: A timm model name, optionally with a pretrained tag; no scheme (``hf-hub:``) and no path.
_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_-]+)?")
#: The feature stages WAL-Net's encoder returns (timm's ``out_indices``).
STAGES = (1, 2, 3, 4)


def check_backbone(backbone) -> str:
    """`backbone` if it is a model timm lists locally (a pretrained tag included), else a one-line
    ValueError naming ``backbone``: a non-string, an empty name, a hub or local-dir name, a path,
    an unknown model or tag."""
    if not isinstance(backbone, str) or not backbone:
        raise ValueError(f"backbone must be the name of a timm model (a non-empty string), got {backbone!r}")
    if not _NAME.fullmatch(backbone):
        raise ValueError(f"backbone {backbone[:100]!r} is not a timm model name: walnet builds models timm lists "
                         "locally (timm.list_models()), never a hub model (hf-hub:), a local-dir: name or a path")
    architecture, _, tag = backbone.partition(".")
    if not timm.is_model(architecture):
        raise ValueError(f"backbone {backbone!r} is not a timm model (timm.list_models() lists them)")
    if tag and backbone not in timm.list_pretrained(f"{architecture}.*"):
        raise ValueError(f"backbone {backbone!r}: timm has no pretrained tag {tag!r} for {architecture}")
    return backbone


def create_encoder(backbone: str, *, pretrained: bool = False, pretrained_file: str | Path | None = None) -> nn.Module:
    """The timm model `backbone` (checked by :func:`check_backbone`) as a ``features_only``
    encoder of four stages (:data:`STAGES`) whose strides grow; a backbone that cannot give them
    is a one-line ValueError naming it, raised here rather than in the first training step."""
    check_backbone(backbone)
    try:
        encoder = create_timm(backbone, features_only=True, out_indices=STAGES, pretrained=pretrained,
                              pretrained_file=pretrained_file)
    except (RuntimeError, TypeError, IndexError, KeyError, AssertionError, NotImplementedError) as exc:
        raise ValueError(f"backbone {backbone!r} cannot be built as an encoder of four feature stages: "
                         f"{first_line(exc)}") from None
    reductions = encoder.feature_info.reduction()
    if len(reductions) != len(STAGES) or any(b <= a for a, b in zip(reductions, reductions[1:])):
        raise ValueError(f"backbone {backbone!r} has no four feature stages at growing strides (its stages' "
                         f"strides: {', '.join(map(str, reductions))}); WAL-Net needs a CNN backbone such as "
                         "resnet18 or resnest50d")
    return encoder


def _classifier_prefixes(cfg: dict) -> tuple[str, ...]:
    names = cfg.get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def check_pretrained_file(path: str | Path, architecture: str) -> None:
    """Raises a one-line error naming `path` unless it holds weights of the timm model
    `architecture`: a FileNotFoundError when it is no file, a ValueError when it cannot be read
    as a state dict or does not fit (missing or unexpected keys, other shapes; the classifier,
    which a walnet model replaces, is not compared). The architecture is built on the meta
    device: no memory, no download."""
    path = Path(path)
    if not path.is_file():
        special = special_kind(path)
        what = ("is a folder, not a weights file" if path.is_dir() else f"is {special}, not a regular file" if special
                else "does not exist")
        raise FileNotFoundError(f"pretrained_file {path} {what}")
    try:
        weights = timm.models.load_state_dict(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on a file that is no state dict
        raise ValueError(f"pretrained_file {path} cannot be read as a state dict ({first_line(exc)})") from None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"pretrained_file {path} holds no state dict (parameter name -> tensor)")
    with torch.device("meta"):
        model = timm.create_model(architecture, pretrained=False)
    skip = tuple(p + "." for p in _classifier_prefixes(model.pretrained_cfg))
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    weights = {k: v for k, v in weights.items() if not k.startswith(skip)}
    problems = weights_mismatch(own, weights, noun="weight")
    if problems:
        raise ValueError(f"pretrained_file {path} does not hold weights of the backbone {architecture}: "
                         f"{'; '.join(problems)}")


def create_timm(architecture: str, *, pretrained: bool = False, pretrained_file: str | Path | None = None,
                **kwargs) -> nn.Module:
    """``timm.create_model(architecture, pretrained=..., **kwargs)``; with `pretrained_file`,
    pretrained from that file (checked by :func:`check_pretrained_file` first, then loaded by
    timm through ``pretrained_cfg_overlay=dict(file=...)``), never from the network."""
    if pretrained_file is None:
        return timm.create_model(architecture, pretrained=pretrained, **kwargs)
    check_pretrained_file(pretrained_file, architecture)
    try:
        return timm.create_model(architecture, pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(pretrained_file)), **kwargs)
    except RuntimeError as exc:
        if "state_dict" not in str(exc):  # not torch's "Error(s) in loading state_dict": not the file's fault
            raise
        raise ValueError(f"pretrained_file {pretrained_file} cannot be loaded into the backbone {architecture}: "
                         f"{first_line(exc)}") from None
