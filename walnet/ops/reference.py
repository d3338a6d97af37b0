"""Pure-PyTorch reference of every walnet op: the specification.

Readable and vectorised over the batch (no Python loop over samples). The compiled kernels are
tested against these functions, and the public wrappers fall back to them where no kernel is
built for a device. Inputs are assumed validated (see the wrappers in walnet.ops).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from walnet.constants import IGNORE_INDEX, RCM_DILATION, RCM_THRESHOLD

__all__ = [
    "IGNORE_INDEX",
    "ROI_METHODS",
    "crop_levels",
    "crop_resize",
    "felzenszwalb",
    "fuse_attention",
    "gaussian_weights",
    "mask_boxes",
    "pseudo_mask",
    "roi_boxes",
    "roi_crop",
    "superpixel_mean",
]



def opmath_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if the maps are float64, else float32 (half precision is computed in float32)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float64 if dtype == torch.float64 else torch.float32


def _minmax_normalise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(x - min) / (max - min)`` of [N,H,W] maps, and whether each sample is
    informative: all values finite and ``max - min`` finite and > 0."""
    flat = x.flatten(1)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    span = hi - lo
    ok = torch.isfinite(flat).all(dim=1) & (span > 0) & torch.isfinite(span)
    return (x - lo[:, None, None]) / span[:, None, None], ok


def _fuse(a1: torch.Tensor, a2: torch.Tensor, a3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1: B and a per-sample flag telling whether B is informative (else B is set to 0)."""
    dtype = opmath_dtype(a1, a2, a3)
    size = tuple(a1.shape[-2:])
    ok = torch.ones(a1.shape[0], dtype=torch.bool, device=a1.device)
    product = None
    for a in (a1, a2, a3):
        a = a.to(dtype)
        if tuple(a.shape[-2:]) != size:
            a = F.interpolate(a[:, None], size=size, mode="nearest")[:, 0]
        normalised, good = _minmax_normalise(a)
        ok &= good
        product = normalised if product is None else product * normalised
    fused, good = _minmax_normalise(product)
    ok &= good
    return torch.where(ok[:, None, None], fused, torch.zeros_like(fused)), ok


def fuse_attention(a1: torch.Tensor, a2: torch.Tensor, a3: torch.Tensor) -> torch.Tensor:
    """Fused attention map B (docs/design.md §4; paper Eq. 1).

    a1 [N,H,W] sets the size; a2, a3 [N,h,w] (h <= H, w <= W) are nearest-upsampled to it. Each
    map is min-max normalised per sample, the three are multiplied, and the product is min-max
    normalised again. A sample in which any of these maps is constant or non-finite carries no
    information: its B is all zeros. Output dtype: float64 for float64 maps, else float32.
    """
    return _fuse(a1, a2, a3)[0]


def _segment_mean64(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-label mean of [N,H,W] values, accumulated in float64."""
    n, h, w = values.shape
    offsets = torch.arange(n, device=values.device)[:, None] * (h * w)
    index = (labels.reshape(n, -1).long() + offsets).reshape(-1)
    flat = values.reshape(-1).double()
    sums = torch.zeros(n * h * w, dtype=torch.float64, device=values.device).index_add_(0, index, flat)
    counts = torch.zeros_like(sums).index_add_(0, index, torch.ones_like(flat))
    return (sums[index] / counts[index]).reshape(n, h, w)


def superpixel_mean(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each pixel gets the mean of `values` over its segment (paper Eq. 2).

    values [N,H,W] float, labels [N,H,W] integer in [0, H*W), segments numbered per sample.
    The output has the dtype of `values`.
    """
    return _segment_mean64(values, labels).to(values.dtype)


def pseudo_mask(
    a1: torch.Tensor, a2: torch.Tensor, a3: torch.Tensor, labels: torch.Tensor, threshold: float = 0.18
) -> torch.Tensor:
    """PGM pseudo mask (docs/design.md §4): uint8 [N,H,W] in {0, 1, 255}.

    1 where the superpixel mean of the fused map B is >= threshold, else 0; every pixel of a
    sample whose B carries no information is IGNORE_INDEX (255).
    """
    fused, ok = _fuse(a1, a2, a3)
    mask = (_segment_mean64(fused, labels) >= threshold).to(torch.uint8)
    return torch.where(ok[:, None, None], mask, torch.full_like(mask, IGNORE_INDEX))


# --- RCM (docs/design.md §5): boxes from the predicted mask, crop-resize of the features ------

#: ROI methods of the paper's Table 3.
ROI_METHODS = ("rwm", "bg_rm", "bg_rm_crop", "crop", "dilated_crop")


def crop_dilation(method: str, dilation: float = RCM_DILATION) -> float | None:
    """How ROI method `method` grows its box: `dilation` for "dilated_crop", 0 (the tight box)
    for "crop" and "bg_rm_crop", None for the methods that crop nothing ("rwm", "bg_rm")."""
    if method == "dilated_crop":
        return dilation
    return 0.0 if method in ("crop", "bg_rm_crop") else None


def _ratio(in_size: torch.Tensor, out_size: int, dtype: torch.dtype) -> torch.Tensor:
    """``in_size / out_size`` in `dtype`, correctly rounded on every device. PyTorch's CUDA
    kernels divide a tensor by a Python number as a multiplication by its reciprocal, which can
    round differently from the kernels' (and the CPU's) division; dividing by a tensor does not."""
    numerator = in_size.to(dtype)
    return numerator / torch.full_like(numerator, out_size)


def nearest_source(dst: torch.Tensor, in_size: torch.Tensor, out_size: int) -> torch.Tensor:
    """Source index of PyTorch's legacy nearest resize, per element: ``dst`` [*] output indices,
    ``in_size`` broadcastable input lengths (>= 1). floor(dst * float32(in / out)), clamped."""
    in_size = torch.as_tensor(in_size, device=dst.device)
    scale = _ratio(in_size, out_size, torch.float32)
    src = torch.floor(dst.to(torch.float32) * scale).long()
    src = torch.minimum(src, in_size - 1)
    src = torch.where(in_size == out_size, dst, src)
    return torch.where(in_size * 2 == out_size, dst // 2, src)


def _resize_nearest(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5


def mask_boxes(
    fg_prob: torch.Tensor, size: tuple[int, int], threshold: float = RCM_THRESHOLD, dilation: float = RCM_DILATION
) -> torch.Tensor:
    """Dilated bounding box of the foreground, at a feature level's size: int32 [N,4] as
    (y1, x1, y2, x2), inclusive.

    ``fg_prob >= threshold`` is nearest-resized to ``size`` = (H, W); its tight box is dilated by
    ``r = W * dilation`` (the authors' W/7) with truncation and clamping:
    ``y1' = max(int(y1 - r), 0)``, ``y2' = min(int(y2 + r), H - 1)``, same for x with W - 1.
    A sample without foreground gets the full map (0, 0, H-1, W-1).
    """
    H, W = int(size[0]), int(size[1])
    mask = _resize_nearest(fg_prob >= threshold, (H, W))
    rows, cols = mask.any(dim=2), mask.any(dim=1)
    ys = torch.arange(H, device=mask.device)
    xs = torch.arange(W, device=mask.device)
    y1 = torch.where(rows, ys, H).amin(dim=1)
    y2 = torch.where(rows, ys, -1).amax(dim=1)
    x1 = torch.where(cols, xs, W).amin(dim=1)
    x2 = torch.where(cols, xs, -1).amax(dim=1)
    r = W * float(dilation)
    # int() truncates toward zero, as the authors' Python does. Clamping first gives the same
    # result (int() of a value in (-1, 0) is 0) and keeps a huge dilation inside int64.
    y1 = torch.clamp(y1.double() - r, 0, H - 1).trunc().long()
    x1 = torch.clamp(x1.double() - r, 0, W - 1).trunc().long()
    y2 = torch.clamp(y2.double() + r, 0, H - 1).trunc().long()
    x2 = torch.clamp(x2.double() + r, 0, W - 1).trunc().long()
    boxes = torch.stack([y1, x1, y2, x2], dim=1)
    full = torch.tensor([0, 0, H - 1, W - 1], device=mask.device)
    return torch.where(rows.any(dim=1)[:, None], boxes, full).to(torch.int32)


def _bilinear_source(dst: torch.Tensor, in_size: torch.Tensor, out_size: int, dtype: torch.dtype):
    """Neighbours and weights of F.interpolate(mode="bilinear", align_corners=False) along one
    axis: i0, i1 [N, out] and their weights l0, l1."""
    scale = _ratio(in_size, out_size, dtype)
    real = torch.clamp(scale * (dst.to(dtype) + 0.5) - 0.5, min=0)
    i0 = torch.minimum(real.long(), in_size - 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    l1 = real - i0.to(dtype)
    return i0, i1, 1 - l1, l1


def crop_resize(
    features: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int] | None = None, mode: str = "nearest"
) -> torch.Tensor:
    """Crops ``features[n, :, y1:y2+1, x1:x2+1]`` for every sample and resizes it to ``size``
    (default: the input size), as ``F.interpolate(crop, size, mode=mode)`` would (bilinear with
    align_corners=False). Differentiable with respect to the features; boxes get no gradient.
    """
    n, _, H, W = features.shape
    oh, ow = (H, W) if size is None else (int(size[0]), int(size[1]))
    boxes = boxes.long()
    y1, x1 = boxes[:, 0:1], boxes[:, 1:2]
    ch, cw = boxes[:, 2:3] - y1 + 1, boxes[:, 3:4] - x1 + 1
    oy = torch.arange(oh, device=features.device).expand(n, oh)
    ox = torch.arange(ow, device=features.device).expand(n, ow)
    batch = torch.arange(n, device=features.device)[:, None, None]
    if mode == "nearest":
        rows = y1 + nearest_source(oy, ch, oh)
        cols = x1 + nearest_source(ox, cw, ow)
        # advanced indexing puts the [N, oh, ow] index dims first: -> [N, oh, ow, C]
        out = features[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        return out.contiguous(memory_format=_memory_format(features))
    if mode != "bilinear":
        raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    y0i, y1i, wy0, wy1 = _bilinear_source(oy, ch, oh, dtype)
    x0i, x1i, wx0, wx1 = _bilinear_source(ox, cw, ow, dtype)
    f = features.to(dtype)

    def tap(ry, rx):
        return f[batch, :, (y1 + ry)[:, :, None], (x1 + rx)[:, None, :]].permute(0, 3, 1, 2)

    wy0, wy1 = wy0[:, None, :, None], wy1[:, None, :, None]
    wx0, wx1 = wx0[:, None, None, :], wx1[:, None, None, :]
    out = wy0 * (wx0 * tap(y0i, x0i) + wx1 * tap(y0i, x1i)) + wy1 * (wx0 * tap(y1i, x0i) + wx1 * tap(y1i, x1i))
    return out.to(features.dtype).contiguous(memory_format=_memory_format(features))


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last for channels_last [N,C,H,W] tensors (the crop keeps the layout), else contiguous."""
    return torch._prims_common.suggest_memory_format(t)


def roi_boxes(
    fg_prob: torch.Tensor, sizes: list[tuple[int, int]], threshold: float = RCM_THRESHOLD,
    dilation: float = RCM_DILATION
) -> torch.Tensor:
    """Every level's :func:`mask_boxes`: int32 [N, L, 4] whose ``[:, l]`` is
    ``mask_boxes(fg_prob, sizes[l], threshold, dilation)``."""
    return torch.stack([mask_boxes(fg_prob, size, threshold, dilation) for size in sizes], dim=1)


def crop_levels(features: list[torch.Tensor], boxes: torch.Tensor) -> list[torch.Tensor]:
    """Every level's nearest crop back to its own size: ``crop_resize(features[l], boxes[:, l])``
    for int32 boxes [N, L, 4]."""
    return [crop_resize(f, boxes[:, level]) for level, f in enumerate(features)]


def rwm_level(features: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
    """ROI method "rwm" at one level: ``features * p``, p [N,h,w] nearest-resized to the level."""
    p = F.interpolate(prob[:, None], size=tuple(features.shape[-2:]), mode="nearest")
    return features * p.to(features.dtype)


def bg_rm_level(features: torch.Tensor, prob: torch.Tensor, threshold: float) -> torch.Tensor:
    """ROI method "bg_rm" at one level: ``features * m``, m = ``p >= threshold`` nearest-resized to
    the level; a sample without foreground there passes unchanged."""
    m = _resize_nearest(prob >= threshold, tuple(features.shape[-2:]))[:, None]
    has_fg = m.flatten(1).any(dim=1)[:, None, None, None]
    return torch.where(has_fg, features * m.to(features.dtype), features)


def roi_crop(
    features: torch.Tensor | list[torch.Tensor],
    seg_logits: torch.Tensor,
    method: str = "dilated_crop",
    threshold: float = RCM_THRESHOLD,
    dilation: float = RCM_DILATION,
) -> torch.Tensor | list[torch.Tensor]:
    """The RCM: the ROI methods of the paper's Table 3 applied to one feature map or a list.

    ``p = softmax(seg_logits)[:, 1]`` and ``m = p >= threshold``, both nearest-resized to each
    level. ``rwm``: features * p (gradient reaches the decoder); ``bg_rm``: features * m;
    ``bg_rm_crop``: bg_rm, then a tight crop; ``crop``: tight crop; ``dilated_crop``: crop
    dilated by ``W * dilation``. Crops are nearest-resized back to the level's size. A sample
    with no foreground at a level (after the resize) passes unchanged through every method but
    ``rwm``.
    """
    single = isinstance(features, torch.Tensor)
    levels = [features] if single else list(features)
    prob = torch.softmax(seg_logits.float(), dim=1)[:, 1]
    out = []
    for f in levels:
        if method == "rwm":
            out.append(rwm_level(f, prob))
            continue
        if method in ("bg_rm", "bg_rm_crop"):
            f = bg_rm_level(f, prob, threshold)
            if method == "bg_rm":
                out.append(f)
                continue
        out.append(crop_resize(f, mask_boxes(prob, tuple(f.shape[-2:]), threshold, crop_dilation(method, dilation))))
    return out[0] if single else out


# --- Felzenszwalb (docs/design.md §6) ----------------------------------------------------------


def gaussian_weights(sigma: float) -> list[float]:
    """scipy.ndimage's Gaussian kernel (truncate=4), centre first: [w0, w1, ..., wr].

    Computed with numpy exactly as scipy does (``exp(-0.5/sigma^2 * x^2)`` normalised by its numpy
    sum), so the weights are scipy's bits on every machine. Empty for sigma <= 1e-15 (scipy
    then skips the axis).
    """
    if sigma <= 1e-15:
        return []
    import numpy as np

    radius = int(4.0 * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (float(sigma) * float(sigma)) * x**2)
    phi = phi / phi.sum()
    return phi[radius:].tolist()


def felzenszwalb(images: torch.Tensor, scale: float = 1.0, sigma: float = 0.8, min_size: int = 20) -> torch.Tensor:
    """Felzenszwalb-Huttenlocher superpixels as scikit-image computes them, one image at a time
    (slow: plain Python, for tests on small images). images [N,C,H,W] float, used as float64;
    returns int32 [N,H,W] labels numbered by first appearance in raster order.

    Steps: scipy Gaussian smoothing (reflect, rows then columns); 8-connected edges (right,
    down, down-right, up-right, raster order) weighted by the Euclidean colour distance; edges
    sorted stably by weight; Kruskal merging while ``w < min(float32(cint + k/size))`` of both
    sides (k = scale/255; nothing merges for scale 0); then merging any edge whose sides are
    smaller than min_size. Defaults are skimage's.
    """
    import numpy as np

    w = gaussian_weights(sigma)
    k = float(scale) / 255.0
    out = []
    for img in images.detach().double().cpu().numpy():
        c, h, wd = img.shape
        sm = img.copy()
        for axis in (1, 2):
            if not w:
                break
            n = sm.shape[axis]
            src = np.moveaxis(sm, axis, -1)
            res = np.empty_like(src)
            r = len(w) - 1
            for i in range(n):
                acc = src[..., i] * w[0]
                for j in range(r, 0, -1):
                    lo, hi = _reflect(i - j, n), _reflect(i + j, n)
                    acc = acc + (src[..., lo] + src[..., hi]) * w[j]
                res[..., i] = acc
            sm = np.moveaxis(res, -1, axis)
        pix = np.arange(h * wd).reshape(h, wd)
        pairs = [
            (pix[:, :-1], pix[:, 1:]),
            (pix[:-1, :], pix[1:, :]),
            (pix[:-1, :-1], pix[1:, 1:]),
            (pix[:-1, 1:], pix[1:, :-1]),
        ]
        p = np.concatenate([a.ravel() for a, _ in pairs])
        q = np.concatenate([b.ravel() for _, b in pairs])
        flat = sm.reshape(c, -1)
        d = flat[:, q] - flat[:, p]
        sq = d[0] * d[0]
        for ch in range(1, c):
            sq = sq + d[ch] * d[ch]
        cost = np.sqrt(sq)
        order = np.argsort(cost, kind="stable")
        parent = list(range(h * wd))
        size = [1] * (h * wd)
        cint = [0.0] * (h * wd)

        def find(x):
            while parent[x] < x:
                x = parent[x]
            return x

        for e in order:
            a, b = find(int(p[e])), find(int(q[e]))
            if a == b:
                continue
            ta = float(np.float32(cint[a] + k / size[a]))
            tb = float(np.float32(cint[b] + k / size[b]))
            if cost[e] < min(ta, tb):
                lo, hi = min(a, b), max(a, b)
                parent[hi] = lo
                size[lo] = size[a] + size[b]
                cint[lo] = float(cost[e])
        for e in order:
            a, b = find(int(p[e])), find(int(q[e]))
            if a != b and (size[a] < min_size or size[b] < min_size):
                lo, hi = min(a, b), max(a, b)
                parent[hi] = lo
                size[lo] = size[a] + size[b]
        roots = np.array([find(i) for i in range(h * wd)])
        out.append(np.unique(roots, return_inverse=True)[1].reshape(h, wd).astype(np.int32))
    return torch.from_numpy(np.stack(out)) if out else torch.empty(0, *images.shape[2:], dtype=torch.int32)


def _reflect(i: int, n: int) -> int:
    """scipy.ndimage mode='reflect' index: (d c b a | a b c d | d c b a)."""
    m = i % (2 * n)
    return m if m < n else 2 * n - 1 - m
