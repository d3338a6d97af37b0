"""Training / evaluation machinery: loops, metrics and checkpoints."""
from walnet.engine.checkpoint import load_checkpoint, save_checkpoint
from walnet.engine.loops import evaluate, train_one_epoch
from walnet.engine.metrics import classification_metrics, confusion_matrix, mask_iou_dice, roc_auc

__all__ = [
    "classification_metrics",
    "confusion_matrix",
    "evaluate",
    "load_checkpoint",
    "mask_iou_dice",
    "roc_auc",
    "save_checkpoint",
    "train_one_epoch",
]
