"""Reading an exported model folder (``walnet export``): ``config.json`` and
``model.safetensors``, checked, with errors that name the file.

Shared by :func:`walnet.models.load_pretrained` and :meth:`walnet.WALNet.from_pretrained`; of
:mod:`walnet.models` it imports only :mod:`~walnet.models.normalize` (which imports no model), so
that both can use it (the model classes are passed in). Nothing here unpickles: the config is
JSON and the weights are safetensors.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import nn

from walnet.files import first_line, weights_mismatch
from walnet.models.normalize import fill_missing_stats

#: The ``"format"`` tag of an exported model's config.json, and the one version this walnet reads.
FORMAT = "walnet-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        hint = " (a training checkpoint is read with --checkpoint / load_trained)" if folder.suffix == ".pt" else ""
        raise ValueError(f"{folder} is a file, not a model folder written by `walnet export`{hint}")
    return folder


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_config(folder: str | Path) -> dict:
    """The checked contents of ``<folder>/config.json``.

    A missing folder or file is a FileNotFoundError; a file that is not JSON, not a walnet model
    config (``"format": "walnet-model"``), of another ``format_version``, or lacking what
    rebuilding the model needs (model, kwargs, num_classes, classes, input size) is a ValueError;
    each names the file."""
    path = _folder(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {folder} is not a model folder written by `walnet export`")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a walnet model config: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path} is not a walnet model config (its \"format\" is {found!r}, expected {FORMAT!r})")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        from walnet._version import __version__

        raise ValueError(f"{path} is format_version {version!r}; walnet {__version__} reads version "
                         f"{FORMAT_VERSION} (export the model again with this walnet, or use the walnet that wrote it)")
    checks = {
        "model": ("a model name", lambda v: isinstance(v, str) and v),
        "kwargs": ("a dict of the model's arguments", lambda v: isinstance(v, dict)),
        "num_classes": ("an integer >= 2", lambda v: _is_int(v) and v >= 2),
        "classes": (f"a list of {config.get('num_classes')} class names",
                    lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v)
                    and len(v) == config.get("num_classes")),
        "input": ("a dict with the input \"size\" (an integer >= 1)",
                  lambda v: isinstance(v, dict) and _is_int(v.get("size")) and v["size"] >= 1),
    }
    for key, (what, ok) in checks.items():
        if key not in config:
            raise ValueError(f"{path} lacks {key!r} ({what})")
        if not ok(config[key]):
            raise ValueError(f"{path}: {key!r} must be {what}, got {config[key]!r}")
    return config


def build(folder: str | Path, config: dict, make: Callable[..., nn.Module]) -> nn.Module:
    """``make(model, num_classes=..., pretrained=False, **kwargs)`` of `config` (never
    pretrained: nothing is downloaded); arguments the model does not take are a ValueError
    naming config.json."""
    try:
        return make(config["model"], num_classes=config["num_classes"], pretrained=False, **config["kwargs"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise ValueError(f"{Path(folder) / CONFIG_FILE} describes a model walnet cannot build "
                         f"({config['model']!r} with {config['kwargs']}): {first_line(exc)}") from None


def load_weights(model: nn.Module, folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Loads ``<folder>/model.safetensors`` into `model` strictly; returns it in eval mode on
    `device`. A missing or unreadable file, or weights that do not fit the model (missing or
    unexpected parameters, other shapes), is an error naming the file. Weights without the input
    normalisation's buffers (exported before the models normalised their input) get the
    identity, as their config.json's mean [0, 0, 0] and std [1, 1, 1] say."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the model folder {folder} has no weights")
    try:
        weights = safetensors.torch.load_file(path, device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read as safetensors weights: {first_line(exc)}") from None
    weights = fill_missing_stats(model, weights)
    problems = weights_mismatch(model.state_dict(), weights)
    if problems:
        raise ValueError(f"{path} does not fit the model its {CONFIG_FILE} describes "
                         f"({type(model).__name__}): {'; '.join(problems)}")
    model.load_state_dict(weights)
    return model.to(device).eval()
