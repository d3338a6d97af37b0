"""Loading a model folder written by ``walnet export``: :func:`load_pretrained`.

The folder holds ``config.json`` (the model's name and arguments, its classes and input) and
``model.safetensors`` (its weights), and may hold ``model.pt2`` and ``model.onnx``. Loading
reads JSON and safetensors only, so nothing in the folder can run code (no pickle).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from walnet.models._folder import CONFIG_FILE, FORMAT, FORMAT_VERSION, WEIGHTS_FILE, build, load_weights, read_config
from walnet.models.factory import create_model

__all__ = ["CONFIG_FILE", "FORMAT", "FORMAT_VERSION", "WEIGHTS_FILE", "load_pretrained", "read_config"]


def load_pretrained(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of an exported folder (``walnet export``), with its weights, in eval mode on
    `device`: any model :func:`~walnet.models.create_model` builds (WAL-Net variants and the
    baselines). Its class names, input size and preprocessing are in :func:`read_config`'s
    result (``classes``, ``input``); the model takes RGB images scaled to [0, 1] and normalises
    them itself (``input["mean"]``, ``input["std"]``: its buffers ``input_mean``, ``input_std``).

    A missing folder or file, a config.json of another format or version, or weights that do
    not fit the model the config describes is an error naming the file."""
    config = read_config(folder)
    model = build(folder, config, create_model)
    return load_weights(model, folder, device)
