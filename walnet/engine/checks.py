"""The checks of a run that need no data, made before any work: the device, the model and its
backbone, the data paths and the output folder. Each failure is a one-line :class:`ValueError`
(or :class:`FileNotFoundError`) naming the option and what to do, so that nothing is written
and no time is spent before a setting the run cannot use is found."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from walnet import ops
from walnet.data.sources import check_data_path
from walnet.engine.config import TrainConfig
from walnet.engine.lock import LOCK_NAME
from walnet.files import check_writable


def pick_device(name: str = "auto") -> torch.device:
    """"auto": CUDA when available, else CPU; otherwise the named device, which must exist here
    (a :class:`ValueError` naming ``--device`` otherwise, before any work)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: no CUDA device is available here (torch {torch.__version__}, "
                             f"CUDA {torch.version.cuda or 'none'}); use --device cpu or auto")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: there are {count} CUDA device(s) here (cuda:0 to cuda:{count - 1})")
    elif device.type != "cpu":  # walnet's operators have CPU and CUDA kernels only
        raise ValueError(f"--device {name}: walnet runs on cpu or cuda devices; use auto, cpu, cuda or cuda:<index>")
    return device


#: The files a run writes into its folder (none of them may be the run's input).
RUN_FILES = ("args.json", "split.csv", "metrics.csv", "last.pt", "best.pt", LOCK_NAME)

#: The files ``walnet evaluate`` writes into its folder.
EVAL_FILES = ("metrics.json", "roc.png", "confusion.png", "segmentation.png", "attention.png")


def check_output(output, flag: str = "--output", inputs=(), writes=RUN_FILES) -> None:
    """A :class:`ValueError` naming `flag` unless `output` can be (or is) a folder this process
    writes (:func:`~walnet.files.check_writable`) and none of the files it `writes`
    there is one of `inputs` (a user's files are never a write target)."""
    check_writable(output, flag, folder=True)
    path = Path(os.path.abspath(output))
    targets = {os.path.realpath(path / name) for name in writes}
    for given in inputs:
        if given is not None and os.path.realpath(given) in targets:
            raise ValueError(f"{flag} {output} would overwrite the input {given}; choose another folder")


def check_train_config(config: TrainConfig) -> torch.device:
    """The checks of a training run that need no data: device, model, backbone, ROI method, data
    paths, output folder (a one-line :class:`ValueError` each, before any work); returns the
    device."""
    from walnet.models import BASELINES, model_names

    device = pick_device(config.device)
    if config.model not in model_names():
        raise ValueError(f"--model {config.model!r} is unknown; choose one of {', '.join(model_names())}")
    if config.roi_method is not None and config.roi_method not in ops.ROI_METHODS:
        raise ValueError(f"--roi-method must be one of {', '.join(ops.ROI_METHODS)}, got {config.roi_method!r}")
    if config.model not in BASELINES:  # a WAL-Net variant: the name first, before its spec checks it
        import timm

        if not timm.is_model(config.backbone):
            raise ValueError(f"unknown backbone {config.backbone!r} for --backbone (timm has no such model; "
                             "e.g. resnet18, resnet50, resnest50d)")
    spec = config.model_spec()
    check_data_path(config.data_dir, config.csv)
    if config.pretrained_file is not None:
        check_pretrained_file(config.pretrained_file, spec.architecture)
    if config.resume is not None:
        if os.path.isdir(config.resume):
            raise ValueError(f"--resume {config.resume} is a folder; give the checkpoint in it (last.pt)")
        if not os.path.isfile(config.resume):
            raise FileNotFoundError(f"--resume {config.resume}: no such checkpoint file")
    check_output(config.output, inputs=(config.csv,))
    return device


def check_pretrained_file(path, architecture: str) -> None:
    """``--pretrained-file``: a file that holds weights of the timm model `architecture` (a
    spec's :attr:`~walnet.models.spec.ModelSpec.architecture`); a one-line :class:`ValueError`
    naming the option otherwise (missing file, unreadable, another architecture: the first
    difference), before any work."""
    from walnet.models.backbone import check_pretrained_file as check

    try:
        check(path, architecture)
    except (OSError, ValueError) as exc:
        text = str(exc).removeprefix(f"pretrained_file {path}").lstrip(" :")
        raise ValueError(f"--pretrained-file {path}: {text}") from None


def check_stages(model: torch.nn.Module, backbone: str) -> None:
    """WAL-Net's gates and decoder need four feature maps at growing strides (a CNN pyramid);
    a backbone whose "stages" share one stride (a ViT) builds, but fails at its first batch."""
    encoder = getattr(model, "encoder", None)
    if encoder is None or not hasattr(encoder, "feature_info"):
        return
    strides = list(encoder.feature_info.reduction())
    if len(strides) != 4 or any(b <= a for a, b in zip(strides, strides[1:])):
        raise ValueError(f"backbone {backbone!r} has no four feature stages at growing strides (its "
                         f"stages' strides: {', '.join(map(str, strides))}); WAL-Net needs a CNN backbone such "
                         "as resnet18 or resnest50d")
