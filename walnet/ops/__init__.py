"""walnet operators: compiled CPU/CUDA kernels with pure-PyTorch references (reference.py)."""
from walnet.ops import reference
from walnet.ops._checks import set_value_checks
from walnet.ops._library import built_backends
from walnet.ops.pgm import fuse_attention, pseudo_mask, superpixel_mean
from walnet.ops.reference import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "built_backends",
    "fuse_attention",
    "pseudo_mask",
    "reference",
    "set_value_checks",
    "superpixel_mean",
]
