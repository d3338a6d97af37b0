"""The settings of the engine's runs as frozen dataclasses: :class:`TrainConfig`
(``walnet train``), :class:`EvalConfig` (``walnet evaluate``), :class:`PredictConfig`
(``walnet predict``), :class:`ExportConfig` (``walnet export``), :class:`DemoConfig`
(``walnet demo``) and :class:`CalibrateConfig` (``walnet calibrate``).

Each field carries its default and a one-line doc (``field.metadata["doc"]``); the command line
reads both from here, so a default is written once (how fields are declared, coerced and
serialised: :mod:`walnet.engine.config_fields`). Values are checked on construction
(:class:`ValueError` naming the option); paths are kept as strings, so :meth:`to_dict` is plain
JSON and :meth:`from_dict` reads it back into an equal config (a run's ``args.json`` and the
``"args"`` of its checkpoints are ``TrainConfig.to_dict()``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from walnet.engine.balance import parse_class_weights
from walnet.engine.config_fields import (ConfigBase, check_at_least, check_classes, check_data, check_given,
                                         check_seed, flag_of, option)
from walnet.engine.schedule import check_schedule
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
#: The files each figure is written as (``--figure-format``): PNG, vector PDF or both, at 300 dpi.
FIGURE_FORMATS = ("png", "pdf", "both")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(ConfigBase):
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
    # optimisation (output and resume: the run folder, listed under output)
    output: str = option(doc="run folder (args, split, metrics.csv, last.pt, best.pt)", group="output")
    epochs: int = option(100, "epochs to train (a resumed run continues up to this count)", group="optimisation")
    batch_size: int = option(8, "images per step (per process under torchrun)", group="optimisation")
    lr: float = option(1e-4, "Adam learning rate (paper: 1e-4)", group="optimisation")
    weight_decay: float = option(0.0, "Adam weight decay, an L2 penalty (paper: 0)", group="optimisation")
    sched: str = option("none", "learning-rate schedule (timm): none (constant --lr, the paper's), cosine, step or "
                        "plateau; stepped once per epoch", group="optimisation")
    warmup_epochs: int = option(0, "epochs of linear warm-up from --warmup-lr to --lr (needs a --sched)",
                                group="optimisation")
    warmup_lr: float = option(1e-6, "learning rate at the start of the warm-up", group="optimisation")
    min_lr: float = option(0.0, "lowest learning rate of the cosine and plateau schedules", group="optimisation")
    decay_epochs: int = option(30, "step: multiply the rate by --decay-rate every this many epochs",
                               group="optimisation")
    decay_rate: float = option(0.1, "step and plateau: the factor of each decay", group="optimisation")
    patience_epochs: int = option(10, "plateau: epochs without a better validation score before a decay",
                                  group="optimisation")
    patience: int | None = option(None, "early stopping: stop after this many epochs in which best.pt did not "
                                  "change (--eval-metric; default: never)", group="optimisation")
    seed: int = option(0, "seed of the split, the initial weights and every epoch's draws", group="optimisation")
    eval_metric: str = option("accuracy", "validation metric that chooses best.pt: accuracy, macro_f1, kappa or auc "
                              "(micro ROC-AUC); of equal scores the later epoch is kept", group="optimisation")
    class_weights: str = option("none", "weights of the classification loss per class: none, balanced (n / (K * "
                                "n_class) over the training split) or one positive number per class in class order, "
                                "comma-separated (e.g. 1,2.5,1)", group="optimisation")
    balanced_sampler: bool = option(False, "draw each epoch's training images with replacement, every class equally "
                                    "often (as many draws as training images; off: each image once)",
                                    group="optimisation")
    resume: str | None = option(None, "checkpoint (last.pt) to continue from", group="output")
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
    quiet: bool = option(False, "no progress bars (they show only when stderr is a terminal); the log lines stay",
                         group="output")
    tensorboard: bool = option(False, "also write every epoch's metrics.csv row as TensorBoard scalars into "
                               "<output>/tensorboard/ (needs: pip install 'walnet[tensorboard]')", group="output")

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
        check_data(self)
        check_given(self, "output")
        if self.pretrained_file is not None:
            if not self.pretrained_file:
                raise ValueError("--pretrained-file must not be empty")
            # the file's weights are pretrained ones: args.json and the model card then say so
            object.__setattr__(self, "pretrained", True)
        check_classes(self.classes)
        check_at_least(self, 1, "epochs", "batch_size", "size", "attention_channels")
        check_at_least(self, 0, "rcm_warmup")
        if self.workers is not None:
            check_at_least(self, 0, "workers")
        check_seed(self)
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
            check_at_least(self, 3, "folds")
            if not 0 <= self.fold < self.folds:
                raise ValueError(f"--fold must be from 0 to {self.folds - 1} (--folds {self.folds}), got {self.fold}")
        parse_class_weights(self.class_weights, self.classes)


def _check_scoring(config) -> None:
    """The checks of a config that runs a checkpoint over a split of its run's data (evaluate,
    calibrate)."""
    check_given(config, "checkpoint")
    check_data(config)
    if config.split not in SPLITS:
        raise ValueError(f"--split must be one of {SPLITS}, got {config.split!r}")
    check_at_least(config, 1, "batch_size")
    if config.workers is not None:
        check_at_least(config, 0, "workers")


@dataclass(frozen=True, kw_only=True)
class EvalConfig(ConfigBase):
    """``walnet evaluate``: which checkpoint to score on which split of which data."""

    checkpoint: str = option(doc="best.pt or last.pt of a run (its folder holds split.csv)", group="model")
    data_dir: str | None = option(None, "ImageFolder root: <dir>/<class>/<image>", group="data")
    csv: str | None = option(None, "CSV: path,label[,patient_id][,mask_path][,split][,y1,x1,y2,x2]", group="data")
    split: str = option("test", "the split to score", group="data")
    output: str | None = option(None, "folder for metrics.json (default: the checkpoint's folder)", group="output")
    batch_size: int = option(16, "images per batch", group="runtime")
    workers: int | None = option(None, "data loader processes (default: 0 on CPU, min(8, CPUs) on CUDA)",
                                 group="runtime")
    device: str = option("auto", "auto (CUDA if available), cpu, cuda, cuda:1, ...", group="runtime")
    skip_bad: bool = option(False, "skip unreadable images (counted) instead of failing", group="data")
    figures: bool = option(True, "write roc.png, confusion.png, reliability.png, segmentation.png and "
                           "attention.png (off: metrics.json only)", group="output")
    figure_format: str = option("png", "figure files at 300 dpi: png, pdf (vector) or both (the same base names)",
                                group="output")
    save_predictions: str | None = option(None, "also write a CSV of every scored image: path, frame, patient, "
                                          "label, predicted, prob_<class>...", group="output")
    dicom_region: bool = option(True, "crop DICOM images to their ultrasound region (off: whole images; also off "
                                "where the run was trained with --no-dicom-region)", group="data")
    quiet: bool = option(False, "no progress bars (they show only when stderr is a terminal); the log lines stay",
                         group="output")

    def _check(self) -> None:
        _check_scoring(self)
        if self.figure_format not in FIGURE_FORMATS:
            raise ValueError(f"--figure-format must be one of {', '.join(FIGURE_FORMATS)}, got {self.figure_format!r}")


@dataclass(frozen=True, kw_only=True)
class PredictConfig(ConfigBase):
    """``walnet predict``: which model (a checkpoint or an exported folder) classifies which
    images, and where the results go."""

    checkpoint: str | None = option(None, "best.pt or last.pt of a run", group="model")
    model: str | None = option(None, "instead of --checkpoint: a model folder written by walnet export "
                               "(config.json + model.safetensors)", group="model")
    inputs: tuple[str, ...] = option((), "image files and/or folders (scanned recursively); or --csv", group="data")
    csv: str | None = option(None, "instead of INPUT: a CSV path[,label][,...][,y1,x1,y2,x2 or xmin,ymin,xmax,ymax] "
                             "as training reads it; each image is cropped to its ROI box as in training "
                             "(labels are not needed; where given, overlays show them)", group="data")
    output: str = option(doc="CSV: path,predicted,prob_<class>... (never overwritten without --overwrite)",
                         group="output")
    masks_dir: str | None = option(None, "also write each image's predicted plaque mask (0/255 PNG, original "
                                   "size; 0 outside the ROI box) here; needs a model with a segmentation head",
                                   group="output")
    overlays_dir: str | None = option(None, "also write a PNG per image here: the fused attention as a heat map "
                                      "over the image (its ROI crop), the predicted mask's contour and the RCM "
                                      "box, titled with the predicted class (and the true one where --csv has "
                                      "labels); needs a WAL-Net with its PGM", group="output")
    amp: bool = option(False, "run the model under bfloat16 autocast (CUDA and CPU): faster on recent GPUs; "
                       "probabilities differ from float32 in the second or third decimal", group="runtime")
    batch_size: int = option(16, "images per batch", group="runtime")
    workers: int | None = option(None, "data loader processes (default: 0 on CPU, min(8, CPUs) on CUDA)",
                                 group="runtime")
    device: str = option("auto", "auto (CUDA if available), cpu, cuda, cuda:1, ...", group="runtime")
    overwrite: bool = option(False, "replace an existing CSV / mask / overlay files", group="output")
    dicom_region: bool = option(True, "crop DICOM images to their ultrasound region (off: whole images; also off "
                                "where the --checkpoint was trained with --no-dicom-region)", group="data")
    quiet: bool = option(False, "no progress bars (they show only when stderr is a terminal); the log lines stay",
                         group="output")

    def _check(self) -> None:
        if (self.checkpoint is None) == (self.model is None):
            raise ValueError("give exactly one of checkpoint (--checkpoint) and model (--model)")
        if bool(self.inputs) == (self.csv is not None):
            raise ValueError("give exactly one of inputs (image files and/or folders, INPUT) and csv (--csv)")
        check_given(self, "checkpoint" if self.checkpoint is not None else "model", "output",
                     "inputs" if self.csv is None else "csv")
        check_at_least(self, 1, "batch_size")
        if self.workers is not None:
            check_at_least(self, 0, "workers")


@dataclass(frozen=True, kw_only=True)
class ExportConfig(ConfigBase):
    """``walnet export``: which checkpoint becomes a self-contained model folder, where, and in
    which formats."""

    checkpoint: str = option(doc="best.pt or last.pt of a run (its metrics.json and split.csv go into the model card)",
                             group="model")
    output: str = option(doc="model folder: model.safetensors, config.json, README.md (+ model.pt2, model.onnx)",
                         group="output")
    formats: tuple[str, ...] = option(("safetensors",), "comma-separated formats: safetensors (always written), "
                                      "pt2 (torch.export), onnx (needs: pip install 'walnet[onnx]')", group="output")
    overwrite: bool = option(False, "replace an earlier export in the output folder", group="output")
    device: str = option("cpu", "cpu (default), cuda, cuda:1, auto: where the model is traced (a pt2 runs there)",
                         group="runtime")

    def _check(self) -> None:
        check_given(self, "checkpoint", "output", "formats")
        names = [f.strip().lower() for f in self.formats]
        unknown = [f for f in names if f not in EXPORT_FORMATS]
        if unknown:
            raise ValueError(f"--format: unknown format {unknown[0]!r}; choose from {', '.join(EXPORT_FORMATS)} "
                             "(comma-separated)")
        # canonical: safetensors first (the weights are always written), each format once
        object.__setattr__(self, "formats", tuple(f for f in EXPORT_FORMATS if f == "safetensors" or f in names))


@dataclass(frozen=True, kw_only=True)
class DemoConfig(ConfigBase):
    """``walnet demo``: the phantom's size and the training budget (defaults: about 3.5 minutes
    on 2 CPU cores)."""

    n: int = option(800, "phantom images", group="data")
    size: int = option(96, "image side in pixels", group="data")
    epochs: int = option(8, "epochs to train", group="optimisation")
    backbone: str = option("resnet18", "timm backbone of WAL-Net", group="model")
    attention_channels: int = option(64, "inner channels of the attention gates", group="model")
    batch_size: int = option(16, "images per step", group="optimisation")
    lr: float = option(1e-3, "Adam learning rate", group="optimisation")
    rcm_warmup: int = option(4, "epochs with the RCM off at the start", group="model")
    seed: int = option(0, "seed of the phantom and of the run", group="optimisation")
    device: str = option("cpu", "cpu (default), cuda, auto", group="runtime")

    def _check(self) -> None:
        check_at_least(self, 1, "n", "size", "epochs", "attention_channels", "batch_size")
        check_at_least(self, 0, "rcm_warmup")
        check_seed(self)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")


@dataclass(frozen=True, kw_only=True)
class CalibrateConfig(ConfigBase):
    """``walnet calibrate``: which checkpoint gets a temperature, fitted on which split of which data."""

    checkpoint: str = option(doc="best.pt or last.pt of a run (its folder holds split.csv); the fitted temperature "
                             "is written into it", group="model")
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
        _check_scoring(self)
        if self.split == "test":
            raise ValueError("--split test: a temperature fitted on the test split would bias the test scores it is "
                             "judged by; calibrate on the validation split (--split val)")
