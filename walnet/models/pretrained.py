"""Loading a model folder written by ``walnet export``: :func:`load_pretrained`.

The folder holds ``config.json`` (the model's name and arguments, its classes and input) and
``model.safetensors`` (its weights), and may hold ``model.pt2`` and ``model.onnx``. Loading
reads JSON and safetensors only, so nothing in the folder can run code (no pickle).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from walnet.files import first_line
from walnet.models.folder import CONFIG_FILE, FORMAT, FORMAT_VERSION, WEIGHTS_FILE, load_weights, read_config
from walnet.models.spec import ModelSpec

__all__ = ["CONFIG_FILE", "FORMAT", "FORMAT_VERSION", "WEIGHTS_FILE", "load_folder", "load_pretrained", "read_config",
           "read_spec"]


def read_spec(folder: str | Path, config: dict) -> ModelSpec:
    """The :class:`ModelSpec` of a checked `config` (of `folder`); one no spec can hold is a
    ValueError naming config.json."""
    try:
        return ModelSpec.from_config(config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{Path(folder) / CONFIG_FILE} describes a model walnet cannot build "
                         f"({config['model']!r} with {config['kwargs']}): {first_line(exc)}") from None


def load_folder(folder: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelSpec, dict]:
    """The model of an exported folder with its weights, in eval mode on `device`; its spec and
    its checked config.json. Built never pretrained: nothing is downloaded."""
    config = read_config(folder)
    spec = read_spec(folder, config)
    try:
        model = spec.build()
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise ValueError(f"{Path(folder) / CONFIG_FILE} describes a model walnet cannot build "
                         f"({spec.describe()}): {first_line(exc)}") from None
    return load_weights(model, folder, device), spec, config


def load_pretrained(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of an exported folder (``walnet export``), with its weights, in eval mode on
    `device`: any model :func:`~walnet.models.create_model` builds (WAL-Net variants and the
    baselines). Its class names, input size and preprocessing are in :func:`read_config`'s
    result (``classes``, ``input``); the model takes RGB images scaled to [0, 1] and normalises
    them itself (``input["mean"]``, ``input["std"]``: its buffers ``input_mean``, ``input_std``).

    A missing folder or file, a config.json of another format or version, or weights that do
    not fit the model the config describes is an error naming the file."""
    return load_folder(folder, device)[0]
