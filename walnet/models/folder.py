"""The exported model folder (``walnet export``) as one format, written and read here.

``config.json`` holds a format tag and version, the model's :class:`~walnet.models.spec.ModelSpec`
(:meth:`~walnet.models.spec.ModelSpec.to_config`: name, arguments, classes, input size), how the
model takes its input (RGB in [0, 1], the mean and std it normalises with itself, whether DICOM
images are cropped to their ultrasound region, how images are resized), what it returns and, for
a model calibrated by
``walnet calibrate``, the temperature its logits are divided by; ``model.safetensors`` holds
its weights. :func:`folder_config` makes the config, :func:`read_config` reads one and
:func:`check_config` checks it against the schema (:mod:`walnet.models.schema`; a folder is
data: it names no hub model, no file to read and no size that exhausts memory),
:func:`load_weights` puts the weights into a model (:func:`walnet.models.pretrained.load_folder`
builds it). Nothing here unpickles: the config is JSON and the weights are safetensors. The
export's other files (the model card, the pt2 and ONNX programs) are written by
:mod:`walnet.engine.export`. This module builds no model, so the model classes can use it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import nn

from walnet._version import __version__
from walnet.constants import TRAIN_RESIZE
from walnet.files import first_line, refuse_special, weights_mismatch
from walnet.models import schema

#: The ``"format"`` tag of an exported model's config.json, and the one version this walnet reads.
FORMAT = "walnet-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: An export writes a few KB of config.json nesting four levels; far more is no model config.
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 6


def _folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        hint = (" (a training checkpoint is read with --checkpoint / walnet.engine.loading.load_model)"
                if folder.suffix == ".pt" else "")
        raise ValueError(f"{folder} is a file, not a model folder written by `walnet export`{hint}")
    return folder


def _check_special(path: Path) -> None:
    """A ValueError naming `path` where it is a FIFO, socket or device: it exists, so "missing"
    would mislead, and it is never opened (reading a FIFO would wait for a writer)."""
    refuse_special(path, str(path), f"a regular file; a model folder holds its {path.name} as a file")


def read_config(folder: str | Path) -> dict:
    """The checked contents of ``<folder>/config.json`` (:func:`check_config`).

    A missing folder or file is a FileNotFoundError. A file that is not UTF-8 JSON, is over
    :data:`MAX_CONFIG_BYTES` or nests deeper than :data:`MAX_DEPTH`, repeats a key, holds NaN or
    an infinity, is no walnet model config (``"format": "walnet-model"``) of this
    ``format_version``, or breaks the schema is a one-line ValueError starting with the file's
    path. Reading it never builds a model, fetches or opens another file."""
    path = _folder(folder) / CONFIG_FILE
    _check_special(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {folder} is not a model folder written by `walnet export`")
    config = _parse(path)
    check_config(config, str(path))
    return config


def _unique_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"key {repeated[0]!r} given twice")
    return dict(pairs)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _refuse_constant(name: str):
    raise ValueError(f"{name} is no JSON number")


def _depth(value) -> int:
    """How deeply `value` nests lists and dicts (a scalar: 0), without recursion."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level + 1)
            todo.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _parse(path: Path):
    """The JSON value of `path`, read within :data:`MAX_CONFIG_BYTES` and :data:`MAX_DEPTH`."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {exc.strerror or first_line(exc)}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes: not a walnet model config")
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys, parse_float=_finite,
                           parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a walnet model config: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise ValueError(f"{path} nests deeper than {MAX_DEPTH} levels: not a walnet model config") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not a walnet model config: {first_line(exc)}") from None
    if _depth(value) > MAX_DEPTH:
        raise ValueError(f"{path} nests deeper than {MAX_DEPTH} levels: not a walnet model config")
    return value


def check_config(config, where: str) -> None:
    """Raises a one-line ValueError starting with `where` (the file's path) unless `config` is a
    walnet model config of this format version that keeps to the schema (:mod:`walnet.models.schema`:
    known keys only, JSON booleans, integers in their bounds, a model name and backbone walnet
    builds, class names that are safe in a CSV). :func:`read_config` checks what it reads, the
    exporter what it writes."""
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{where} is not a walnet model config (its \"format\" is {schema.short(found)}, "
                         f"expected {FORMAT!r})")
    version = config.get("format_version")
    if not (isinstance(version, int) and not isinstance(version, bool) and version == FORMAT_VERSION):
        raise ValueError(f"{where} is format_version {schema.short(version)}; walnet {__version__} reads version "
                         f"{FORMAT_VERSION} (export the model again with this walnet, or use the walnet that wrote it)")
    try:
        schema.check(config)
    except ValueError as exc:
        raise ValueError(f"{where}: {first_line(exc, 300)}") from None


def load_weights(model: nn.Module, folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Loads ``<folder>/model.safetensors`` into `model` strictly; returns it in eval mode on
    `device`. A missing or unreadable file, or weights that do not fit the model (missing or
    unexpected parameters, other shapes), is an error naming the file."""
    path = Path(folder) / WEIGHTS_FILE
    _check_special(path)
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


def folder_config(model: nn.Module, spec, checkpoint: str | Path, epoch: int, dicom_region: bool = True,
                  temperature: float | None = None) -> dict:
    """config.json of the folder exported from `model` (its :class:`~walnet.models.spec.ModelSpec`
    `spec`), the epoch `epoch` of the checkpoint `checkpoint`, trained on DICOM images cropped to
    their ultrasound region or not (`dicom_region`, ``input.dicom_region``: predicting reads them
    alike), calibrated with `temperature` (``walnet calibrate``; written where not None); the
    exporter adds ``formats`` and ``files``."""
    mean, std = input_stats(model)
    size, classes = spec.size, len(spec.classes)
    config = spec.to_config()
    config["input"]["dicom_region"] = bool(dicom_region)
    config["input"]["resize"] = TRAIN_RESIZE  # how training resized its images: walnet.Predictor reads it
    softmax = "softmax" if temperature is None else "softmax of logits / \"temperature\""
    outputs = {"logits": f"[N, {classes}] class logits in the order of \"classes\" ({softmax}: probabilities)"}
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
            "checkpoint": {"path": str(checkpoint), "epoch": int(epoch)}, "formats": {},
            **({} if temperature is None else {"temperature": float(temperature)})}
