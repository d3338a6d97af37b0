"""The settings of the engine's runs as frozen dataclasses: :class:`TrainConfig`
(``walnet train``), :class:`EvalConfig` (``walnet evaluate``), :class:`PredictConfig`
(``walnet predict``), :class:`ExportConfig` (``walnet export``), :class:`DemoConfig`
(``walnet demo``) and :class:`CalibrateConfig` (``walnet calibrate``).

Each field carries its default and a one-line doc (``field.metadata["doc"]``); the command line
reads both from here, so a default is written once. Values are checked on construction
(:class:`ValueError` naming the option); paths are kept as strings, so :meth:`to_dict` is plain
JSON and :meth:`from_dict` reads it back into an equal config (a run's ``args.json`` and the
``"args"`` of its checkpoints are ``TrainConfig.to_dict()``).
"""
from __future__ import annotations

import functools
import math
import os
import types
import typing
from dataclasses import MISSING, dataclass, field, fields

from walnet.constants import formula_problem
from walnet.engine.schedule import check_schedule
from walnet.engine.balance import parse_class_weights
from walnet.models.spec import ModelSpec

#: The splits a run's data is divided into (``split.csv``).
SPLITS = ("train", "val", "test")
#: The arithmetic of a training run (``--precision``).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: The validation metrics that can choose a run's ``best.pt`` (``--eval-metric``); ``auc`` is the
#: micro-averaged ROC-AUC.
EVAL_METRICS = ("accuracy", "macro_f1", "kappa", "auc")
#: The formats ``walnet export`` writes; safetensors (the weights) is always among them.
EXPORT_FORMATS = ("safetensors", "pt2", "onnx")


def option(default=MISSING, doc: str = "", group: str | None = None):
    """A config field with its default (none: required), its doc (the option's help) and the
    group its option is listed under in ``--help`` (none: with the command's other options)."""
    return field(default=default, metadata={"doc": doc, "group": group})


def flag_of(name: str) -> str:
    """The command-line option of a field (``batch_size`` -> ``--batch-size``), as messages name it."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Option:
    """A config field as a command line offers it: its `name`, `kind` (bool, int, float, str or
    ``tuple[str, ...]``, without ``| None``), `default` (``required`` when it has none), `doc`,
    `group` (None: with the command's other options) and `flag` (``--<name>``)."""

    name: str
    kind: type
    default: object
    required: bool
    doc: str
    group: str | None
    flag: str


def options(config: type) -> list[Option]:
    """The :class:`Option` of every field of `config`, in field order."""
    return [Option(f.name, field_kind(config, f.name), None if f.default is MISSING else f.default,
                   f.default is MISSING, f.metadata["doc"], f.metadata["group"], flag_of(f.name))
            for f in fields(config)]


@dataclass(frozen=True, kw_only=True)
class _Config:
    """Type checks, normalisation and (de)serialisation shared by the configs below."""

    def __post_init__(self) -> None:
        for f in fields(self):
            # frozen: the normalised value replaces the given one before anyone can see it
            object.__setattr__(self, f.name, _coerce(type(self), f.name, getattr(self, f.name)))
        self._check()

    def _check(self) -> None:
        """Checks between values that their types do not express (overridden per config)."""

    def to_dict(self) -> dict:
        """The fields as a JSON-compatible dict (tuples become lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: typing.Mapping, *, strict: bool = True):
        """The config of ``data`` (e.g. :meth:`to_dict`'s output); missing fields take their
        defaults. A key that is not a field is an error unless ``strict=False`` (reading a
        checkpoint whose args hold keys this version does not know). The negative switches that
        walnet 0.1.0 wrote (``"no_rcm": true``, ...) are read as their positive fields
        (``rcm`` false), so its args.json files and checkpoints read as they were written."""
        names = {f.name for f in fields(cls)}
        data = dict(data)
        for key in [k for k in data if k.startswith("no_") and k[3:] in names and isinstance(data[k], bool)]:
            data.setdefault(key[3:], not data.pop(key))
        unknown = sorted(k for k in data if k not in names)
        if unknown and strict:
            raise ValueError(f"{cls.__name__} has no option(s) {unknown}; known: {sorted(names)}")
        return cls(**{k: v for k, v in data.items() if k in names})


@functools.cache
def _type_hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


_WANTED = {bool: "True or False", int: "an integer", float: "a number", str: "a string or path"}


def field_kind(config: type, name: str):
    """The type of `config`'s field `name` without its ``| None``: bool, int, float, str or
    ``tuple[str, ...]``."""
    hint = _type_hints(config)[name]
    if isinstance(hint, types.UnionType):  # X | None: the fields' only unions
        return next(t for t in typing.get_args(hint) if t is not type(None))
    return hint


def _coerce(config: type, name: str, value):
    """`value` as the field's type: paths as str (so the config is plain JSON), an int as float
    where a float is asked for; anything else is a ValueError naming the field. The command line
    always passes the right types, so these errors name the Python field."""
    if value is None and isinstance(_type_hints(config)[name], types.UnionType):
        return None
    kind = field_kind(config, name)
    if typing.get_origin(kind) is tuple:  # tuple[str, ...]: one path (or name) or several
        items = (value,) if isinstance(value, (str, os.PathLike)) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, (str, os.PathLike)) for v in items):
            raise ValueError(f"{name} must be a sequence of strings, got {value!r}")
        return tuple(os.fspath(v) for v in items)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)  # bool is an int subclass
    if kind is str and isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if kind is float and is_number:
        return float(value)
    if (kind is int and is_number and isinstance(value, int)) or (kind is bool and isinstance(value, bool)):
        return value
    raise ValueError(f"{name} must be {_WANTED[kind]}, got {value!r}")


def _check_data(config) -> None:
    if (config.data_dir is None) == (config.csv is None):
        raise ValueError("give exactly one of data_dir (--data-dir) and csv (--csv)")


def _check_at_least(config, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            raise ValueError(f"{flag_of(name)} must be at least {minimum}, got {value}")


def _check_seed(config) -> None:
    # numpy's generators take seeds of 32 bits; a larger one would fail mid-run
    if not 0 <= config.seed < 2**32:
        raise ValueError(f"--seed must be between 0 and {2**32 - 1}, got {config.seed}")


def _check_given(config, *names: str) -> None:
    # a missing one is already a TypeError of the constructor; this catches "" and ()
    for name in names:
        if not getattr(config, name):
            raise ValueError(f"{name} must not be empty")


def _check_classes(classes) -> None:
    if classes is None:
        return
    names = [c.strip() for c in classes]
    if len(names) < 2 or not all(names):
        raise ValueError(f"--classes takes two or more comma-separated class names, got {','.join(classes)!r}")
    folded = [n.casefold() for n in names]
    if len(set(folded)) != len(folded):
        raise ValueError(f"--classes names a class twice: {','.join(classes)!r}")
    for name in names:
        problem = formula_problem(name)
        if problem:
            raise ValueError(f"--classes: the class name {name!r} {problem}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(_Config):
    """``walnet train``: what to train on what, for how long, where to write the run."""

    # data
    data_dir: str | None = option(None, "ImageFolder root: <dir>/<class>/<image>", group="data")
    csv: str | None = option(None, "CSV: path,label[,patient_id][,mask_path][,split][,y1,x1,y2,x2]", group="data")
    classes: tuple[str, ...] | None = option(None, "class names in label order, comma-separated (default: the paper's "
                                             "three classes, or the names found in the data)", group="data")
    size: int = option(224, "input side in pixels", group="data")
    augment: bool = option(False, "augment the training images: horizontal flip, small affine, gain / contrast "
                           "jitter, speckle noise (seeded per seed, epoch and image; off: the paper's setup)",
                           group="data")
    skip_bad: bool = option(False, "skip unreadable images (counted) instead of failing", group="data")
    dicom_region: bool = option(True, "crop DICOM images to their (largest) ultrasound region (off: whole images)",
                                group="data")
    folds: int | None = option(None, "K-fold cross-validation (K >= 3): K patient-grouped, class-stratified folds "
                               "drawn with --seed (train: with --fold; experiment: every fold)", group="data")
    fold: int | None = option(None, "the fold this run tests on (0 to K-1); fold + 1 (mod K) validates, the other "
                              "K-2 train", group="data")
    # model
    model: str = option("walnet", "walnet, walnet_no_rcm, walnet_no_pgm, walnet_<roi method>, or a baseline "
                        "(resnest, convnextv2, dpn, repvit, sequencer, rexnet, res2net)", group="model")
    backbone: str = option("resnest50d", "timm backbone of WAL-Net", group="model")
    pretrained: bool = option(False, "load pretrained backbone weights (downloads)", group="model")
    pretrained_file: str | None = option(None, "load the pretrained backbone weights from this local file instead "
                                         "(a state dict of the timm model, torch.save or safetensors; implies "
                                         "--pretrained, downloads nothing)", group="model")
    roi_method: str | None = option(None, "RCM method (default dilated_crop)", group="model")
    rcm: bool = option(True, "WAL-Net with its RCM (off: as --model walnet_no_rcm)", group="model")
    pgm: bool = option(True, "WAL-Net with its PGM and segmentation head (off: as --model walnet_no_pgm)",
                       group="model")
    rcm_warmup: int = option(20, "epochs with the RCM off at the start", group="model")
    attention_channels: int = option(2048, "inner channels of the attention gates", group="model")
    # training
    output: str = option(doc="run folder (args, split, metrics.csv, last.pt, best.pt)", group="training")
    epochs: int = option(100, "epochs to train (a resumed run continues up to this count)", group="training")
    batch_size: int = option(8, "images per step (per process under torchrun)", group="training")
    lr: float = option(1e-4, "Adam learning rate (paper: 1e-4)", group="training")
    weight_decay: float = option(0.0, "Adam weight decay, an L2 penalty (paper: 0)", group="training")
    sched: str = option("none", "learning-rate schedule (timm): none (constant --lr, the paper's), cosine, step or "
                        "plateau; stepped once per epoch", group="training")
    warmup_epochs: int = option(0, "epochs of linear warm-up from --warmup-lr to --lr (needs a --sched)",
                                group="training")
    warmup_lr: float = option(1e-6, "learning rate at the start of the warm-up", group="training")
    min_lr: float = option(0.0, "lowest learning rate of the cosine and plateau schedules", group="training")
    decay_epochs: int = option(30, "step: multiply the rate by --decay-rate every this many epochs", group="training")
    decay_rate: float = option(0.1, "step and plateau: the factor of each decay", group="training")
    patience_epochs: int = option(10, "plateau: epochs without a better validation score before a decay",
                                  group="training")
    patience: int | None = option(None, "early stopping: stop after this many epochs in which best.pt did not "
                                  "change (--eval-metric; default: never)", group="training")
    seed: int = option(0, "seed of the split, the initial weights and every epoch's draws", group="training")
    eval_metric: str = option("accuracy", "validation metric that chooses best.pt: accuracy, macro_f1, kappa or auc "
                              "(micro ROC-AUC); of equal scores the later epoch is kept", group="training")
    class_weights: str = option("none", "weights of the classification loss per class: none, balanced (n / (K * "
                                "n_class) over the training split) or one positive number per class in class order, "
                                "comma-separated (e.g. 1,2.5,1)", group="training")
    balanced_sampler: bool = option(False, "draw each epoch's training images with replacement, every class equally "
                                    "often (as many draws as training images; off: each image once)",
                                    group="training")
    resume: str | None = option(None, "checkpoint (last.pt) to continue from", group="training")
    # runtime
    device: str = option("auto", "auto (CUDA if available), cpu, cuda, cuda:1, ...", group="runtime")
    precision: str = option("auto", "auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 (bfloat16 autocast) or fp16 "
                            "(float16 autocast with a gradient scaler; the step then runs eagerly)", group="runtime")
    compile: bool = option(False, "torch.compile the step's forward, PGM and loss as one graph (fullgraph)",
                           group="runtime")
    cuda_graphs: bool = option(True, "on one CUDA process, replay the step as one captured CUDA graph (off: op by "
                               "op)", group="runtime")
    channels_last: bool = option(True, "keep the model channels-last on CUDA (off: NCHW)", group="runtime")
    tf32: bool = option(True, "TF32 float32 matmuls and convolutions on CUDA (off: full precision)", group="runtime")
    cudnn_benchmark: bool = option(True, "let cuDNN time convolution algorithms on CUDA and pick the fastest (it "
                                   "makes the choice, and the last bits, vary by run; off: its heuristics)",
                                   group="runtime")
    sync_bn: bool = option(False, "SyncBatchNorm across torchrun processes (CUDA only)", group="runtime")
    workers: int | None = option(None, "data loader processes (default: 0 on CPU, min(8, CPUs) on CUDA)",
                                 group="runtime")

    def model_spec(self, classes=None) -> ModelSpec:
        """The model this run trains (or trained), for the class names `classes` (default: the
        spec's); a ValueError naming ``--model`` or ``--roi-method`` where they name no model."""
        fields = dict(backbone=self.backbone, rcm_warmup=self.rcm_warmup, attention_channels=self.attention_channels,
                      size=self.size)
        if classes is not None:
            fields["classes"] = tuple(classes)
        if self.roi_method:
            fields["roi_method"] = self.roi_method
        if not self.rcm:
            fields["rcm"] = False
        if not self.pgm:
            fields["pgm"] = False
        try:
            return ModelSpec.from_name(self.model, **fields)
        except ValueError as exc:
            named = next((f for f in ("backbone", "size", "attention_channels", "rcm_warmup")
                          if str(exc).startswith(f + " ")), None)
            flag = flag_of(named) if named else "--roi-method" if "roi_method" in str(exc) else "--model"
            raise ValueError(f"{flag}: {exc}") from None

    def _check(self) -> None:
        _check_data(self)
        _check_given(self, "output")
        if self.pretrained_file is not None:
            if not self.pretrained_file:
                raise ValueError("--pretrained-file must not be empty")
            # the file's weights are pretrained ones: args.json and the model card then say so
            object.__setattr__(self, "pretrained", True)
        _check_classes(self.classes)
        _check_at_least(self, 1, "epochs", "batch_size", "size", "attention_channels")
        _check_at_least(self, 0, "rcm_warmup")
        if self.workers is not None:
            _check_at_least(self, 0, "workers")
        _check_seed(self)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        check_schedule(self)
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.eval_metric not in EVAL_METRICS:
            raise ValueError(f"--eval-metric must be one of {', '.join(EVAL_METRICS)}, got {self.eval_metric!r}")
        if (self.folds is None) != (self.fold is None):
            raise ValueError("--folds and --fold go together: give both (e.g. --folds 5 --fold 0) or neither")
        if self.folds is not None:
            _check_at_least(self, 3, "folds")
            if not 0 <= self.fold < self.folds:
                raise ValueError(f"--fold must be from 0 to {self.folds - 1} (--folds {self.folds}), got {self.fold}")
        parse_class_weights(self.class_weights, self.classes)


@dataclass(frozen=True, kw_only=True)
class EvalConfig(_Config):
    """``walnet evaluate``: which checkpoint to score on which split of which data."""

    checkpoint: str = option(doc="best.pt or last.pt of a run (its folder holds split.csv)")
    data_dir: str | None = option(None, "ImageFolder root: <dir>/<class>/<image>", group="data")
    csv: str | None = option(None, "CSV: path,label[,patient_id][,mask_path][,split][,y1,x1,y2,x2]", group="data")
    split: str = option("test", "the split to score", group="data")
    output: str | None = option(None, "folder for metrics.json (default: the checkpoint's folder)")
    batch_size: int = option(16, "images per batch", group="runtime")
    workers: int | None = option(None, "data loader processes (default: 0 on CPU, min(8, CPUs) on CUDA)",
                                 group="runtime")
    device: str = option("auto", "auto (CUDA if available), cpu, cuda, cuda:1, ...", group="runtime")
    skip_bad: bool = option(False, "skip unreadable images (counted) instead of failing", group="data")
    figures: bool = option(True, "write roc.png, confusion.png, reliability.png, segmentation.png and "
                           "attention.png (off: metrics.json only)")
    save_predictions: str | None = option(None, "also write a CSV of every scored image: path, frame, patient, "
                                          "label, predicted, prob_<class>...")
    dicom_region: bool = option(True, "crop DICOM images to their ultrasound region (off: whole images; also off "
                                "where the run was trained with --no-dicom-region)", group="data")

    def _check(self) -> None:
        _check_given(self, "checkpoint")
        _check_data(self)
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {SPLITS}, got {self.split!r}")
        _check_at_least(self, 1, "batch_size")
        if self.workers is not None:
            _check_at_least(self, 0, "workers")


@dataclass(frozen=True, kw_only=True)
class PredictConfig(_Config):
    """``walnet predict``: which model (a checkpoint or an exported folder) classifies which
    images, and where the results go."""

    checkpoint: str | None = option(None, "best.pt or last.pt of a run")
    model: str | None = option(None, "instead of --checkpoint: a model folder written by walnet export "
                               "(config.json + model.safetensors)")
    inputs: tuple[str, ...] = option((), "image files and/or folders (scanned recursively); or --csv", group="inputs")
    csv: str | None = option(None, "instead of INPUT: a CSV path[,label][,...][,y1,x1,y2,x2 or xmin,ymin,xmax,ymax] "
                             "as training reads it; each image is cropped to its ROI box as in training "
                             "(labels are not needed, and ignored)", group="inputs")
    output: str = option(doc="CSV: path,predicted,prob_<class>... (never overwritten without --overwrite)")
    masks_dir: str | None = option(None, "also write each image's predicted plaque mask (0/255 PNG, original "
                                   "size; 0 outside the ROI box) here; needs a model with a segmentation head")
    overlays_dir: str | None = option(None, "also write a PNG per image here: the fused attention as a heat map "
                                      "over the image (its ROI crop), the predicted mask's contour and the RCM "
                                      "box, titled with the predicted class; needs a WAL-Net with its PGM")
    amp: bool = option(False, "run the model under bfloat16 autocast (CUDA and CPU): faster on recent GPUs; "
                       "probabilities differ from float32 in the second or third decimal", group="runtime")
    batch_size: int = option(16, "images per batch", group="runtime")
    workers: int | None = option(None, "data loader processes (default: 0 on CPU, min(8, CPUs) on CUDA)",
                                 group="runtime")
    device: str = option("auto", "auto (CUDA if available), cpu, cuda, cuda:1, ...", group="runtime")
    overwrite: bool = option(False, "replace an existing CSV / mask / overlay files")
    dicom_region: bool = option(True, "crop DICOM images to their ultrasound region (off: whole images; also off "
                                "where the --checkpoint was trained with --no-dicom-region)", group="inputs")

    def _check(self) -> None:
        if (self.checkpoint is None) == (self.model is None):
            raise ValueError("give exactly one of checkpoint (--checkpoint) and model (--model)")
        if bool(self.inputs) == (self.csv is not None):
            raise ValueError("give exactly one of inputs (image files and/or folders, INPUT) and csv (--csv)")
        _check_given(self, "checkpoint" if self.checkpoint is not None else "model", "output",
                     "inputs" if self.csv is None else "csv")
        _check_at_least(self, 1, "batch_size")
        if self.workers is not None:
            _check_at_least(self, 0, "workers")


@dataclass(frozen=True, kw_only=True)
class ExportConfig(_Config):
    """``walnet export``: which checkpoint becomes a self-contained model folder, where, and in
    which formats."""

    checkpoint: str = option(doc="best.pt or last.pt of a run (its metrics.json and split.csv go into the model card)")
    output: str = option(doc="model folder: model.safetensors, config.json, README.md (+ model.pt2, model.onnx)")
    formats: tuple[str, ...] = option(("safetensors",), "comma-separated formats: safetensors (always written), "
                                      "pt2 (torch.export), onnx (needs: pip install 'walnet[onnx]')")
    overwrite: bool = option(False, "replace an earlier export in the output folder")
    device: str = option("cpu", "cpu (default), cuda, cuda:1, auto: where the model is traced (a pt2 runs there)")

    def _check(self) -> None:
        _check_given(self, "checkpoint", "output", "formats")
        names = [f.strip().lower() for f in self.formats]
        unknown = [f for f in names if f not in EXPORT_FORMATS]
        if unknown:
            raise ValueError(f"--format: unknown format {unknown[0]!r}; choose from {', '.join(EXPORT_FORMATS)} "
                             "(comma-separated)")
        # canonical: safetensors first (the weights are always written), each format once
        object.__setattr__(self, "formats", tuple(f for f in EXPORT_FORMATS if f == "safetensors" or f in names))


@dataclass(frozen=True, kw_only=True)
class DemoConfig(_Config):
    """``walnet demo``: the phantom's size and the training budget (defaults: about 3.5 minutes
    on 2 CPU cores)."""

    n: int = option(800, "phantom images")
    size: int = option(96, "image side in pixels")
    epochs: int = option(8, "epochs to train")
    backbone: str = option("resnet18", "timm backbone of WAL-Net")
    attention_channels: int = option(64, "inner channels of the attention gates")
    batch_size: int = option(16, "images per step")
    lr: float = option(1e-3, "Adam learning rate")
    rcm_warmup: int = option(4, "epochs with the RCM off at the start")
    seed: int = option(0, "seed of the phantom and of the run")
    device: str = option("cpu", "cpu (default), cuda, auto")

    def _check(self) -> None:
        _check_at_least(self, 1, "n", "size", "epochs", "attention_channels", "batch_size")
        _check_at_least(self, 0, "rcm_warmup")
        _check_seed(self)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")


@dataclass(frozen=True, kw_only=True)
class CalibrateConfig(_Config):
    """``walnet calibrate``: which checkpoint gets a temperature, fitted on which split of which data."""

    checkpoint: str = option(doc="best.pt or last.pt of a run (its folder holds split.csv); the fitted temperature "
                             "is written into it")
    data_dir: str | None = option(None, "ImageFolder root: <dir>/<class>/<image>", group="data")
    csv: str | None = option(None, "CSV: path,label[,patient_id][,mask_path][,split][,y1,x1,y2,x2]", group="data")
    split: str = option("val", "the split to fit the temperature on (not test: that would bias the test scores)",
                        group="data")
    batch_size: int = option(16, "images per batch", group="runtime")
    workers: int | None = option(None, "data loader processes (default: 0 on CPU, min(8, CPUs) on CUDA)",
                                 group="runtime")
    device: str = option("auto", "auto (CUDA if available), cpu, cuda, cuda:1, ...", group="runtime")
    skip_bad: bool = option(False, "skip unreadable images (counted) instead of failing", group="data")
    dicom_region: bool = option(True, "crop DICOM images to their ultrasound region (off: whole images; also off "
                                "where the run was trained with --no-dicom-region)", group="data")

    def _check(self) -> None:
        _check_given(self, "checkpoint")
        _check_data(self)
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {SPLITS}, got {self.split!r}")
        if self.split == "test":
            raise ValueError("--split test: a temperature fitted on the test split would bias the test scores it is "
                             "judged by; calibrate on the validation split (--split val)")
        _check_at_least(self, 1, "batch_size")
        if self.workers is not None:
            _check_at_least(self, 0, "workers")
