"""Inputs of the RCM op tests (mask_boxes, crop_resize, roi_crop): foreground maps, feature maps,
boxes at the edge cases, segmentation logits, and F.interpolate as the definition of crop_resize."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from walnet import ops

#: The four encoder levels of a 224^2 input, (C, H, W) with small C to keep the tests fast.
LEVELS = [(3, 56, 56), (4, 28, 28), (5, 14, 14), (6, 7, 7)]
#: The four levels with the channel counts of the brief's roi_crop case.
ROI_LEVELS = [(8, 56, 56), (16, 28, 28), (32, 14, 14), (64, 7, 7)]


def gen(seed):
    """A seeded CPU generator: every input is the same on every device and run."""
    return torch.Generator().manual_seed(seed)


def blob(h, w, cy, cx, ry, rx):
    """[h, w] float64 map: 1 inside the ellipse centred at (cy, cx) with radii (ry, rx), else 0."""
    y = torch.arange(h, dtype=torch.float64)[:, None]
    x = torch.arange(w, dtype=torch.float64)[None, :]
    return ((((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) <= 1).double()


def fg_probs(h, w, seed=0):
    """A batch of foreground-probability maps [N, h, w] (float64) covering the mask_boxes edge
    cases at mask resolution: empty, full, single pixels (centre and the four corners), blobs
    touching each edge, random blobs, scattered noise, and a pixel exactly at 0.5."""
    g = gen(seed)
    low = lambda: 0.4 * torch.rand(h, w, generator=g, dtype=torch.float64)  # noqa: E731  < 0.5 everywhere
    maps = [low(), 0.6 + 0.4 * torch.rand(h, w, generator=g, dtype=torch.float64)]  # empty, full
    for y, x in [(h // 2, w // 3), (0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]:
        m = low()
        m[y, x] = 0.95
        maps.append(m)
    for cy, cx in [(0, w / 2), (h - 1, w / 2), (h / 2, 0), (h / 2, w - 1), (h / 3, 2 * w / 3), (2 * h / 3, w / 4)]:
        inside = blob(h, w, cy, cx, max(h / 4, 0.5), max(w / 5, 0.5))
        maps.append(torch.where(inside > 0, 0.55 + 0.45 * torch.rand(h, w, generator=g, dtype=torch.float64), low()))
    maps.append(torch.rand(h, w, generator=g, dtype=torch.float64))  # scattered
    m = low()
    m[h // 3, (2 * w) // 3] = 0.5  # exactly at the default threshold: foreground
    maps.append(m)
    return torch.stack(maps)


#: The thresholds every box test tries: 0.5 + 1e-9 is 0.5 in every dtype but float64, so the
#: pixel at exactly 0.5 counts as foreground except in float64 maps (the comparison is `p >= t`).
THRESHOLDS = (0.5, 0.3, 0.9, 0.5 + 1e-9)


def box_cases(prob64: torch.Tensor, dtypes, dilations):
    """(prob, threshold, dilation) for `prob64` in each of `dtypes`, :data:`THRESHOLDS` and
    `dilations`: the grid the mask_boxes and roi_boxes tests compare over."""
    for dtype in dtypes:
        for threshold in THRESHOLDS:
            for dilation in dilations:
                yield prob64.to(dtype), threshold, dilation


def feature_maps(n, c, h, w, *, dtype=torch.float32, device="cpu", seed=0):
    """Random features whose values are all distinct enough that a wrong source index shows."""
    f = torch.randn(n, c, h, w, generator=gen(seed), dtype=torch.float64)
    return f.to(dtype=dtype, device=device)


def clamp_box(box, h, w):
    """(y1, x1, y2, x2) clamped into an h x w map and ordered (y1 <= y2, x1 <= x2)."""
    y1, x1, y2, x2 = box
    y1, y2 = sorted((min(max(y1, 0), h - 1), min(max(y2, 0), h - 1)))
    x1, x2 = sorted((min(max(x1, 0), w - 1), min(max(x2, 0), w - 1)))
    return y1, x1, y2, x2


def edge_case_boxes(h, w, n_random=6, *, seed=0, device="cpu"):
    """int32 [N, 4] boxes (y1, x1, y2, x2) inside an h x w map: the full map (identity), 1x1
    boxes at the corners and the centre, boxes touching each edge, 1-pixel strips, the top-left
    quarter (an exact 2x upsampling back to an even size), then random boxes."""
    fixed = [
        (0, 0, h - 1, w - 1),
        (0, 0, 0, 0),
        (0, w - 1, 0, w - 1),
        (h - 1, 0, h - 1, 0),
        (h - 1, w - 1, h - 1, w - 1),
        (h // 2, w // 2, h // 2, w // 2),
        (0, w // 4, h // 2, (3 * w) // 4),  # top
        (h // 2, w // 4, h - 1, (3 * w) // 4),  # bottom
        (h // 4, 0, (3 * h) // 4, w // 2),  # left
        (h // 4, w // 2, (3 * h) // 4, w - 1),  # right
        (h // 3, 0, h // 3, w - 1),  # full-width row
        (0, w // 3, h - 1, w // 3),  # full-height column
        (0, 0, h // 2 - 1, w // 2 - 1),  # top-left quarter
        (1, 1, h - 2, w - 2),
    ]
    g = gen(seed)
    for _ in range(n_random):
        ys = torch.randint(0, h, (2,), generator=g).tolist()
        xs = torch.randint(0, w, (2,), generator=g).tolist()
        fixed.append((min(ys), min(xs), max(ys), max(xs)))
    boxes = [clamp_box(b, h, w) for b in fixed]
    return torch.tensor(boxes, dtype=torch.int32, device=device)


def interpolate_crops(features, boxes, size, mode):
    """The definition of crop_resize: F.interpolate of every sample's slice, one at a time."""
    outs = []
    for f, (y1, x1, y2, x2) in zip(features, boxes.tolist()):
        crop = f[None, :, y1 : y2 + 1, x1 : x2 + 1]
        if mode == "bilinear":
            outs.append(F.interpolate(crop, size=size, mode="bilinear", align_corners=False))
        else:
            outs.append(F.interpolate(crop, size=size, mode="nearest"))
    return torch.cat(outs)


def segmentation_logits(n, h=56, w=56, *, device="cpu", seed=0):
    """[N, 2, h, w] logits: sample 0 has no foreground at all (class 1 strongly negative), the
    others blobs (centre, a corner, a small one that vanishes at coarse levels, a wide one, ...).
    |p - 0.5| is kept well away from 0 so no pixel sits on the threshold."""
    g = gen(seed)
    blobs = [
        None,
        (h / 2, w / 2, h / 5, w / 4),
        (0, w - 1, h / 3, w / 3),
        (h / 3 + 0.3, w / 5 + 0.6, 0.6, 0.6),  # ~1 pixel at 56^2
        (2 * h / 3, w / 2, h / 8, w / 2.2),
        (h / 4, w / 3, h / 6, w / 7),
    ]
    logits = torch.zeros(n, 2, h, w, dtype=torch.float64)
    for i in range(n):
        spec = blobs[i] if i < len(blobs) else blobs[1 + i % (len(blobs) - 1)]
        mag = 1 + torch.rand(h, w, generator=g, dtype=torch.float64)
        if spec is None:
            diff = -10 * mag
        else:
            inside = blob(h, w, *spec) > 0
            diff = torch.where(inside, mag, -mag)
        base = torch.randn(h, w, generator=g, dtype=torch.float64)
        logits[i, 0] = base
        logits[i, 1] = base + diff
    return logits.float().to(device)


def level_features(n, levels=ROI_LEVELS, *, dtype=torch.float32, device="cpu", seed=0):
    """One feature map [n, C, H, W] per (C, H, W) level, each from its own seed."""
    return [feature_maps(n, c, h, w, dtype=dtype, device=device, seed=seed + i) for i, (c, h, w) in enumerate(levels)]


def grad_inputs(device, dtype=torch.float64):
    """A small [4, 1, 5, 7] feature map that requires grad, and four boxes (the full map, an inner
    box, a 1x1 corner, one in the top-right corner): few enough elements for gradcheck."""
    h, w = 5, 7
    boxes = torch.tensor(
        [[0, 0, h - 1, w - 1], [1, 2, 3, 3], [h - 1, w - 1, h - 1, w - 1], [0, 4, 2, w - 1]],
        dtype=torch.int32,
        device=device,
    )
    features = feature_maps(len(boxes), 1, h, w, dtype=dtype, device=device, seed=4).requires_grad_()
    return features, boxes


def crop_resize_grad(features, boxes, size, mode, grad, backend):
    """The gradient of crop_resize w.r.t. the features for the output gradient `grad`; backend
    "loop" differentiates interpolate_crops (the definition) instead of the op."""
    f = features.detach().clone().requires_grad_()
    if backend == "loop":
        out = interpolate_crops(f, boxes, size, mode)
    else:
        out = ops.crop_resize(f, boxes, size, mode, backend=backend)
    (g,) = torch.autograd.grad(out, f, grad)
    return g

