"""walnet operators: compiled CPU/CUDA kernels with pure-PyTorch references (reference.py).

Every op takes ``backend`` (one of :data:`BACKENDS`; see docs/design.md §2)."""
from walnet.constants import IGNORE_INDEX
from walnet.ops import reference
from walnet.ops._checks import BACKENDS, set_value_checks, value_checks
from walnet.ops._library import build_info, built_backends
from walnet.ops._preview import PREVIEW, preview_kernels, set_preview_kernels
from walnet.ops.felzenszwalb import ALGORITHMS, RoundRules, felzenszwalb, segment_counts
from walnet.ops.pgm import fuse_attention, pseudo_mask, superpixel_mean
from walnet.ops.rcm import MAX_LEVELS, ROI_METHODS, crop_levels, crop_resize, mask_boxes, roi_boxes, roi_crop

__all__ = [
    "ALGORITHMS",
    "BACKENDS",
    "IGNORE_INDEX",
    "MAX_LEVELS",
    "PREVIEW",
    "ROI_METHODS",
    "RoundRules",
    "build_info",
    "built_backends",
    "crop_levels",
    "crop_resize",
    "felzenszwalb",
    "fuse_attention",
    "mask_boxes",
    "preview_kernels",
    "pseudo_mask",
    "reference",
    "roi_boxes",
    "roi_crop",
    "segment_counts",
    "set_preview_kernels",
    "set_value_checks",
    "superpixel_mean",
    "value_checks",
]
