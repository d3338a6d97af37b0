"""The checks of a run that need no data, made before any work: the device, the model and its
backbone, the data paths, the output folder and, for a resumed run, the checkpoint it continues
(in its own folder, with its settings). Each failure is a one-line :class:`ValueError` (or
:class:`FileNotFoundError`) naming the option and what to do, so that nothing is written and
no time is spent before a setting the run cannot use is found."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from walnet import ops
from walnet.data.sources import check_data_path
from walnet.data.splits import DATA_FILE, SPLIT_FILE
from walnet.engine.checkpoint import RESUME_KEYS, CheckpointError, load_checkpoint
from walnet.engine.config import TrainConfig
from walnet.engine.config_fields import flag_of, options
from walnet.engine.inputs import Inputs
from walnet.engine.lock import LOCK_NAME
from walnet.engine.schedule import resume_problem
from walnet.files import check_writable, refuse_special


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
RUN_FILES = ("args.json", SPLIT_FILE, DATA_FILE, "metrics.csv", "curves.png", "last.pt", "best.pt", LOCK_NAME)
#: The settings that change what a run shows, never what it computes (progress bars, TensorBoard).
DISPLAY_SETTINGS = frozenset({"quiet", "tensorboard"})

#: The settings a resumed run may change: how far it trains, where it runs and how fast (the
#: runtime group but the arithmetic, ``precision``), what it shows; every other one defines what
#: the run is. The data is compared by its fingerprint (``data.json``), not by the spelling of its path.
RESUME_MAY_CHANGE = frozenset({"epochs", "resume", "output", "data_dir", "csv"} | DISPLAY_SETTINGS
                              | {o.name for o in options(TrainConfig) if o.group == "runtime"} - {"precision"})
#: Settings that name files: equal when they name the same file.
_PATH_SETTINGS = ("data_dir", "csv", "pretrained_file")

#: The figures ``walnet evaluate`` draws, by base name (each a .png and/or .pdf, ``--figure-format``).
EVAL_FIGURES = ("roc", "confusion", "reliability", "segmentation", "attention")
#: The files ``walnet evaluate`` may write into its folder.
EVAL_FILES = ("metrics.json", *(f"{name}.{ext}" for name in EVAL_FIGURES for ext in ("png", "pdf")))


def check_output(output, flag: str = "--output", reads: Inputs | None = None, writes=RUN_FILES,
                 command: str = "train") -> None:
    """A :class:`ValueError` naming `flag` where `output`, or a file it `writes` there, is
    one of the files or folders the command `reads` (:meth:`Inputs.check_folder`: compared as
    files, links and other spellings counted), or unless `output` can be (or is) a folder this
    process writes (:func:`~walnet.files.check_writable`)."""
    if reads is not None:  # first: an input given as --output is named as the input it is
        reads.check_folder(output, writes, flag, command)
    check_writable(output, flag, folder=True)


def data_reads(reads: Inputs, data_dir=None, csv_path=None) -> Inputs:
    """Adds a command's data to `reads`: the ``--csv`` file and the images and masks it lists,
    or the ``--data-dir`` folder and every file in it; returns `reads`."""
    if csv_path is not None:
        reads.add_csv(csv_path, f"the --csv file {csv_path}")
    if data_dir is not None and os.path.isdir(data_dir):
        reads.add_tree(data_dir, f"the --data-dir folder {data_dir}")
    return reads


def train_reads(config: TrainConfig) -> Inputs:
    """What a training run reads: its data (:func:`data_reads`) and ``--pretrained-file``. The
    ``--resume`` checkpoint is its own folder's (:func:`check_resume_folder`), which the run
    continues and replaces by design; it is kept apart from the run's other files in
    :func:`check_train_config`."""
    reads = data_reads(Inputs(), config.data_dir, config.csv)
    if config.pretrained_file is not None:
        reads.add_file(config.pretrained_file, f"the --pretrained-file {config.pretrained_file}")
    return reads


def check_run_folder(output) -> None:
    """The files a run keeps in `output` (:data:`RUN_FILES`) are its own: none is a symbolic link
    (a write or an append would reach through it, out of the folder), and a metrics.csv is a
    walnet run's: one without a last.pt is that of a run that stopped before its first checkpoint
    (its args.json beside it; the new run replaces its rows), else another program's file, which
    a run never takes over. A one-line error naming the file otherwise, before any work."""
    output = Path(output)
    for name in RUN_FILES:
        if (output / name).is_symlink():
            raise ValueError(f"{output / name} is a symbolic link; a run writes its files in {output} itself, never "
                             "through a link: remove the link or choose another --output")
    run_files = [output / name for name in ("last.pt", "args.json")]
    if (output / "metrics.csv").exists() and not any(p.exists() for p in run_files):
        raise FileExistsError(f"{output} holds a metrics.csv of no walnet run ({output / 'metrics.csv'}, no "
                              "args.json); "
                              "choose another --output or delete it")


def check_train_config(config: TrainConfig) -> torch.device:
    """The checks of a training run that need no data: device, model, backbone, ROI method, data
    paths, output folder (a one-line :class:`ValueError` each, before any work); returns the
    device."""
    from walnet.models import BASELINES, model_names

    device = pick_device(config.device)
    if config.tensorboard:
        from walnet.engine.tensorboard_log import check_tensorboard

        check_tensorboard()
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
        # never opened: reading a FIFO waits for a writer
        refuse_special(config.resume, f"--resume {config.resume}", "a checkpoint file")
        if not os.path.isfile(config.resume):
            raise FileNotFoundError(f"--resume {config.resume}: no such checkpoint file")
        check_resume_folder(config.resume, config.output)
    reads = train_reads(config)
    writes = RUN_FILES
    if config.resume is not None:
        # the checkpoint resumed is replaced as the run goes on; no other file of the run may be it
        resumed = os.path.realpath(config.resume)
        writes = tuple(n for n in RUN_FILES if os.path.realpath(Path(config.output) / n) != resumed)
        reads.add_file(config.resume, f"the --resume checkpoint {config.resume}")
    check_output(config.output, reads=reads, writes=writes)
    check_run_folder(config.output)
    return device


def check_resume_folder(resume, output) -> None:
    """A run continues in its own folder: ``--resume`` names the ``last.pt`` or ``best.pt`` of
    ``--output`` (resolved paths compared). Another run's checkpoint would replace this folder's
    ``last.pt`` with that run's continuation and mix the two runs' ``metrics.csv``."""
    own = {os.path.realpath(Path(output) / name) for name in ("last.pt", "best.pt")}
    if os.path.realpath(resume) not in own:
        raise ValueError(f"--resume {resume} is not a checkpoint of --output {output}: a run continues in its own "
                         f"folder; give --output {Path(resume).parent} to continue that run, or --resume "
                         f"{Path(output) / 'last.pt'}")


def _shown(name: str, value) -> str:
    if isinstance(value, bool):
        return flag_of(name) if value else f"--no-{flag_of(name)[2:]}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "(not set)" if value is None else str(value)


def _same(name: str, a, b) -> bool:
    if name in _PATH_SETTINGS and a is not None and b is not None:
        return os.path.realpath(a) == os.path.realpath(b)
    return a == b


def setting_differences(saved: Mapping, config: TrainConfig, ignored=RESUME_MAY_CHANGE) -> list[str]:
    """The settings of `config` that differ from `saved` (a run's ``TrainConfig.to_dict()``, as in
    its args.json and checkpoints), but those in `ignored`, in words: "--lr 0.01 differs from the
    run's 0.0001". Paths are equal when they name the same file. `saved` is read as
    :meth:`TrainConfig.from_dict` reads older runs' settings (a ValueError where it cannot be)."""
    old, new = TrainConfig.from_dict(saved, strict=False).to_dict(), config.to_dict()
    out = []
    for name, value in new.items():
        if name in ignored or _same(name, value, old[name]):
            continue
        if isinstance(value, bool):
            out.append(f"{_shown(name, value)} differs from the run's {_shown(name, old[name])}")
        else:
            out.append(f"{flag_of(name)} {_shown(name, value)} differs from the run's {_shown(name, old[name])}")
    return out


def check_resume(config: TrainConfig) -> dict:
    """The checkpoint ``--resume`` names (:func:`~walnet.engine.checkpoint.load_checkpoint`),
    whose run `config` continues: every setting but those of :data:`RESUME_MAY_CHANGE` must be
    the run's, else a one-line ValueError listing the differences (a changed setting would be
    recorded in args.json, but the run so far was trained without it). The data is compared by
    the run's ``data.json`` (the trainer does that), or by its path for a run without one."""
    state = load_checkpoint(config.resume, keys=("model", "epoch", "args"))
    if not all(key in state for key in RESUME_KEYS):  # best.pt: the weights and what inference needs
        raise ValueError(f"--resume {config.resume}: this checkpoint holds no training state (best.pt never does: "
                         f"no optimizer or schedule); resume from {Path(config.output) / 'last.pt'}")
    # a run without data.json (an older walnet's) has no fingerprint to compare its data by
    fingerprinted = (Path(config.output) / DATA_FILE).is_file()
    ignored = RESUME_MAY_CHANGE if fingerprinted else RESUME_MAY_CHANGE - {"data_dir", "csv"}
    try:
        differences = setting_differences(state["args"], config, ignored)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {config.resume}: its train config (\"args\") is not valid: {exc}") from None
    if differences:
        raise ValueError(f"--resume {config.resume}: {'; '.join(differences)}; resume with the run's settings (its "
                         "args.json), or train a new run into another --output")
    problem = resume_problem(state["args"], config)
    if problem:
        raise ValueError(f"--resume {config.resume}: {problem}")
    return state


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
