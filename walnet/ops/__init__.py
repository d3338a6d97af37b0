"""walnet operators: compiled CPU/CUDA kernels with pure-PyTorch references (reference.py)."""
from walnet.ops import reference
from walnet.ops._checks import set_value_checks, value_checks
from walnet.ops._library import built_backends
from walnet.ops.felzenszwalb import felzenszwalb, segment_counts
from walnet.ops.pgm import fuse_attention, pseudo_mask, superpixel_mean
from walnet.ops.rcm import ROI_METHODS, crop_resize, mask_boxes, roi_crop
from walnet.ops.reference import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "ROI_METHODS",
    "built_backends",
    "crop_resize",
    "felzenszwalb",
    "fuse_attention",
    "mask_boxes",
    "pseudo_mask",
    "reference",
    "roi_crop",
    "segment_counts",
    "set_value_checks",
    "superpixel_mean",
    "value_checks",
]
