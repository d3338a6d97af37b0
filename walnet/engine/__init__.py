"""Training / evaluation machinery: the training step, loops, metrics, checkpoints, figures, and
the runs behind the ``walnet`` commands (trainer, predict, export, experiment, demo)."""
from walnet.engine.checkpoint import CheckpointError, load_checkpoint, load_training_state, save_checkpoint
from walnet.engine.loops import EvalOutputs, evaluate, train_one_epoch
from walnet.engine.metrics import (bootstrap_ci, classification_metrics, confusion_matrix, mask_iou_dice,
                                   patient_metrics, roc_auc, roc_curve)
from walnet.engine.step import TrainStep
from walnet.files import WriteError

__all__ = [
    "CheckpointError",
    "EvalOutputs",
    "TrainStep",
    "WriteError",
    "bootstrap_ci",
    "classification_metrics",
    "confusion_matrix",
    "evaluate",
    "load_checkpoint",
    "load_training_state",
    "mask_iou_dice",
    "patient_metrics",
    "roc_auc",
    "roc_curve",
    "save_checkpoint",
    "train_one_epoch",
]
