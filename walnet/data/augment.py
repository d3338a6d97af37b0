"""Opt-in training augmentation (``walnet train --augment``, docs/design.md §7): a random
horizontal flip, a small affine, gain and contrast jitter and multiplicative speckle noise,
applied to a :class:`~walnet.data.PlaqueDataset` item's image and mask together.

Geometric transforms move the image and its mask alike (the mask resampled nearest, so it stays
{0, 1, IGNORE_INDEX}); intensity transforms touch the image only. Pixels that the affine brings in
from outside the image are 0 in the image and :data:`~walnet.constants.IGNORE_INDEX` (unknown) in
the mask, so padding is never scored as background. Only a horizontal flip: an ultrasound image's
vertical axis is depth (the transducer at the top, attenuation and acoustic shadows growing
downwards), so a vertically flipped image is not one a scanner produces, while left and right are
just the probe's orientation.

Every draw comes from a ``torch.Generator`` seeded from (seed, epoch, index)
(:func:`sample_seed`), never from the global random state: a sample gets the same augmentation in
a given epoch whatever the loader's worker count, and whether or not the run was resumed. The
epoch reaches the dataset with the index: :class:`EpochSampler` yields ``(index, epoch)`` keys,
which the sampler hands to every worker with each batch, so persistent workers (whose dataset copy
never sees a later ``set_epoch``) augment each epoch anew.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from walnet.constants import IGNORE_INDEX

#: Chance of a horizontal (left-right) flip; depth, the vertical axis, is never flipped.
FLIP_PROBABILITY = 0.5
#: The affine's rotation is uniform in [-ROTATION_DEGREES, ROTATION_DEGREES].
ROTATION_DEGREES = 10.0
#: The affine's shift along each axis is uniform in +-TRANSLATE_FRACTION of the image side.
TRANSLATE_FRACTION = 0.05
#: The affine's zoom factor is uniform in this range.
SCALE_RANGE = (0.9, 1.1)
#: Gain (brightness factor, the scanner's overall gain) is uniform in this range.
GAIN_RANGE = (0.9, 1.1)
#: Contrast factor (about the image's mean grey level) is uniform in this range.
CONTRAST_RANGE = (0.9, 1.1)
#: Speckle: image * (1 + SPECKLE_SIGMA * n), n standard normal per pixel (ultrasound's
#: multiplicative noise model; small, as the images already carry speckle).
SPECKLE_SIGMA = 0.05
#: The image's value where the affine leaves no image (black, as outside a scan sector).
IMAGE_FILL = 0.0


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation in one epoch: 64 bits of numpy's SeedSequence of
    (seed, epoch, index), so neighbouring seeds, epochs and indices give unrelated streams."""
    for name, value in (("seed", seed), ("epoch", epoch), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"augmentation {name} must be a non-negative integer, got {value!r}")
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1, dtype=np.uint64)[0])


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), dtype=torch.float64, generator=generator))


class Augmentation:
    """The augmentation of a run seeded with `seed`: ``augmentation(image, mask, epoch, index)``
    returns the augmented ``(image, mask)`` of one :class:`~walnet.data.PlaqueDataset` item.

    ``image`` is a float [3,H,W] tensor in [0, 1] (its dtype is kept, and so is the range),
    ``mask`` a uint8 [H,W] tensor in {0, 1, IGNORE_INDEX}; both are returned as plain tensors.
    The result is a function of (seed, epoch, index) and the inputs only. The ranges are the
    module's constants.
    """

    def __init__(self, seed: int = 0):
        sample_seed(seed, 0, 0)  # checks the seed now rather than in a loader worker
        self.seed = int(seed)

    def __repr__(self) -> str:
        return f"Augmentation(seed={self.seed})"

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, epoch: int, index: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if image.ndim != 3 or not image.is_floating_point():
            raise ValueError(f"augmentation: image must be a float [C,H,W] tensor, got {image.dtype} "
                             f"{tuple(image.shape)}")
        if mask.shape != image.shape[1:] or mask.dtype != torch.uint8:
            raise ValueError(f"augmentation: mask must be a uint8 [H,W] tensor of the image's size "
                             f"{tuple(image.shape[1:])}, got {mask.dtype} {tuple(mask.shape)}")
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        # Every parameter is drawn, in this order, whether or not it is used, so each one is the
        # same function of (seed, epoch, index) whatever the others turned out to be.
        gain = _uniform(g, *GAIN_RANGE)
        contrast = _uniform(g, *CONTRAST_RANGE)
        flip = _uniform(g, 0.0, 1.0) < FLIP_PROBABILITY
        angle = _uniform(g, -ROTATION_DEGREES, ROTATION_DEGREES)
        height, width = image.shape[1:]
        shift = [_uniform(g, -TRANSLATE_FRACTION, TRANSLATE_FRACTION) * width,
                 _uniform(g, -TRANSLATE_FRACTION, TRANSLATE_FRACTION) * height]
        scale = _uniform(g, *SCALE_RANGE)
        noise = torch.randn((1, height, width), dtype=image.dtype, generator=g)  # one value per pixel: grey stays grey

        img, msk = tv_tensors.Image(image), tv_tensors.Mask(mask)
        # Intensity before geometry: the affine's fill (0) must stay 0, which a contrast change
        # about the mean would not keep.
        img = F.adjust_contrast(F.adjust_brightness(img, gain), contrast)
        if flip:
            img, msk = F.horizontal_flip(img), F.horizontal_flip(msk)
        affine = dict(angle=angle, translate=shift, scale=scale, shear=[0.0, 0.0])
        img = F.affine(img, **affine, interpolation=InterpolationMode.BILINEAR, fill=IMAGE_FILL)
        msk = F.affine(msk, **affine, interpolation=InterpolationMode.NEAREST, fill=IGNORE_INDEX)
        # Speckle after the affine, so the interpolation does not smooth it; it is multiplicative,
        # so the fill stays 0.
        image = img.as_subclass(torch.Tensor) * (1 + SPECKLE_SIGMA * noise)
        return image.clamp_(0.0, 1.0), msk.as_subclass(torch.Tensor).contiguous()


class EpochSampler(torch.utils.data.Sampler):
    """A sampler that yields ``(index, epoch)`` for each index of `sampler`, where ``epoch`` is
    the last :meth:`set_epoch`'s (0 before one). :class:`~walnet.data.PlaqueDataset` reads such
    keys, so an augmented dataset knows the epoch in every loader worker, persistent ones
    included: the keys travel from the main process with each batch."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch of the keys to come, and of the wrapped sampler's order where it has one."""
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.epoch
        return ((int(index), epoch) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)
