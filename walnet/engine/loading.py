"""One way to load a trained model: :func:`load_model` takes a training checkpoint (``best.pt``,
``last.pt``) or a folder written by ``walnet export`` and returns a :class:`TrainedModel`: the
model with its weights in eval mode, its :class:`~walnet.models.spec.ModelSpec` (classes, input
size, whether it has a PGM and an RCM) and, for a checkpoint, the run's settings.

A checkpoint is read with ``torch.load(weights_only=True)`` and its model rebuilt from the run's
train config (``"args"``); a folder is read as JSON and safetensors. Either way nothing in the
file can run code, and every way it can fail is one line naming the file.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from walnet.constants import TRAIN_RESIZE
from walnet.engine.checkpoint import TRAINED_KEYS, CheckpointError, load_checkpoint, load_weights
from walnet.engine.config import TrainConfig
from walnet.files import first_line
from walnet.models.folder import CONFIG_FILE
from walnet.models.pretrained import load_folder
from walnet.models.spec import ModelSpec


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A loaded model: ``model`` (eval mode) and its ``spec``; ``source``, the file or folder it
    came from; for a checkpoint, the run's ``train_config`` and the whole ``checkpoint`` (its
    epoch, ...), both None for an exported folder; for a folder, its checked ``config``
    (config.json), None for a checkpoint."""

    model: nn.Module
    spec: ModelSpec
    source: Path
    train_config: TrainConfig | None = None
    checkpoint: dict | None = None
    config: dict | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def size(self) -> int:
        return self.spec.size

    @property
    def dicom_region(self) -> bool:
        """Whether DICOM inputs are cropped to their ultrasound region, as the model was trained:
        the run's setting, for a folder its config.json's ``input.dicom_region`` (a folder
        without it: the default, cropped)."""
        if self.train_config is not None:
            return self.train_config.dicom_region
        return self.config is None or self.config["input"].get("dicom_region", True)

    @property
    def resize(self) -> str:
        """How images are resized to the input size (:data:`walnet.constants.RESIZE_METHODS`): a
        folder's config.json ``input.resize``; training's method for a checkpoint and for a folder
        exported before the key was recorded."""
        return TRAIN_RESIZE if self.config is None else self.config["input"].get("resize", TRAIN_RESIZE)

    @property
    def temperature(self) -> float:
        """What the model's logits are divided by before the softmax (``walnet calibrate``): the
        checkpoint's ``"temperature"``, for a folder its config.json's; 1.0 (the plain softmax)
        where the model was not calibrated."""
        found = self.checkpoint if self.checkpoint is not None else self.config or {}
        return float(found.get("temperature", 1.0))


#: What :func:`load_model` may be asked to read.
KINDS = ("auto", "checkpoint", "folder")


def load_model(source: str | Path, device: str | torch.device = "cpu", kind: str = "auto") -> TrainedModel:
    """The model of a checkpoint file or of an exported folder, on `device`. `kind`: "checkpoint"
    or "folder" insist on one ("auto": a folder holding config.json, else a checkpoint). A
    missing source is a FileNotFoundError; anything else that makes it unusable a one-line
    :class:`~walnet.engine.checkpoint.CheckpointError` (a checkpoint) or ValueError (a folder)
    naming the file."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    source = Path(source)
    if kind == "folder" or (kind == "auto" and source.is_dir() and (source / CONFIG_FILE).exists()):
        model, spec, config = load_folder(source, device)
        return TrainedModel(model, spec, source, config=config)
    return _load_checkpoint(source, device)


def _load_checkpoint(path: Path, device) -> TrainedModel:
    state = load_checkpoint(path, map_location="cpu", keys=TRAINED_KEYS)
    try:
        # not strict: checkpoints of other walnet versions may hold keys that are no options here
        trained = TrainConfig.from_dict(state["args"], strict=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: its train config (\"args\") is not valid: {exc}") from None
    try:
        spec = trained.model_spec(state["classes"])
        # pretrained=False: the checkpoint holds every weight, so neither a download nor the
        # run's --pretrained-file (which may be gone) is needed
        model = spec.build()
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its train config names a model walnet cannot build "
                              f"(--model {trained.model}, --backbone {trained.backbone}): {first_line(exc)}") from None
    load_weights(model, state["model"], path, spec.describe())
    return TrainedModel(model.to(device).eval(), spec, path, trained, state)
