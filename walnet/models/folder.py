"""The exported model folder (``walnet export``) as one format, written and read here.

``config.json`` holds a format tag and version, the model's :class:`~walnet.models.spec.ModelSpec`
(:meth:`~walnet.models.spec.ModelSpec.to_config`: name, arguments, classes, input size), how the
model takes its input (RGB in [0, 1], the mean and std it normalises with itself) and what it
returns; ``model.safetensors`` holds its weights. :func:`folder_config` makes the config,
:func:`read_config` checks one, :func:`load_weights` puts the weights into a model
(:func:`walnet.models.pretrained.load_folder` builds it). Nothing here unpickles: the config is
JSON and the weights are safetensors. The export's other files (the model card, the pt2 and ONNX
programs) are written by :mod:`walnet.engine.export`. This module builds no model, so the model
classes can use it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import nn

from walnet._version import __version__
from walnet.files import first_line, weights_mismatch

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
        hint = (" (a training checkpoint is read with --checkpoint / walnet.engine.loading.load_model)"
                if folder.suffix == ".pt" else "")
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


def load_weights(model: nn.Module, folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Loads ``<folder>/model.safetensors`` into `model` strictly; returns it in eval mode on
    `device`. A missing or unreadable file, or weights that do not fit the model (missing or
    unexpected parameters, other shapes), is an error naming the file."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the model folder {folder} has no weights")
    try:
        weights = safetensors.torch.load_file(path, device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read as safetensors weights: {first_line(exc)}") from None
    problems = weights_mismatch(model.state_dict(), weights)
    if problems:
        raise ValueError(f"{path} does not fit the model its {CONFIG_FILE} describes "
                         f"({type(model).__name__}): {'; '.join(problems)}")
    model.load_state_dict(weights)
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------
# writing


def input_stats(model: nn.Module) -> tuple[list[float], list[float]]:
    """The mean and std the model normalises its input with (its buffers ``input_mean`` and
    ``input_std``), each as the
    shortest decimals that read back as the buffer's float32 values (0.485, not 0.48500001...)."""
    def decimals(buffer: torch.Tensor) -> list[float]:
        return [float(str(np.float32(v))) for v in buffer.detach().float().cpu().flatten().tolist()]

    return decimals(model.input_mean), decimals(model.input_std)


def output_names(model: nn.Module) -> list[str]:
    """The outputs of the model's exported programs: the logits, and where it has a segmentation
    head, the segmentation logits."""
    return ["logits", "seg_logits"] if getattr(model, "decoder", None) is not None else ["logits"]


def folder_config(model: nn.Module, spec, checkpoint: str | Path, epoch: int) -> dict:
    """config.json of the folder exported from `model` (its :class:`~walnet.models.spec.ModelSpec`
    `spec`), the epoch `epoch` of the checkpoint `checkpoint`; the exporter adds ``formats`` and
    ``files``."""
    mean, std = input_stats(model)
    size, classes = spec.size, len(spec.classes)
    config = spec.to_config()
    outputs = {"logits": f"[N, {classes}] class logits in the order of \"classes\" (softmax: probabilities)"}
    if "seg_logits" in output_names(model):
        outputs["seg_logits"] = ("[N, 2, size/4, size/4] plaque segmentation logits (channel 1: plaque), learned "
                                 "from the PGM's pseudo masks")
    config["input"].update({
        "shape": ["N", 3, size, size],
        "channels": "RGB",
        "dtype": "float32",
        "value_range": [0.0, 1.0],
        "mean": mean,
        "std": std,
        "normalization": "inside the model: it takes RGB images scaled to [0, 1] (8-bit values / 255) and "
                         "resized to size x size, as walnet reads them, and computes (image - mean) / std "
                         "itself before its backbone; do not normalise the input",
    })
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **config, "backbone": spec.architecture,
            "outputs": outputs, "walnet_version": __version__, "torch_version": torch.__version__,
            "checkpoint": {"path": str(checkpoint), "epoch": int(epoch)}, "formats": {}}
