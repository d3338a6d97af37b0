"""Every walnet op once on small inputs on one device, each output compared bit for bit with the
CPU kernel's: the program that benchmarks/device_check.sh runs under compute-sanitizer
(memcheck, racecheck, synccheck). Small on purpose: the sanitizer's tools slow kernels down by
orders of magnitude, so the whole test suite does not fit a device lease under them.

Run: python benchmarks/sanitize_ops.py [--device cuda]. Exit status 1 when an output differs.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from walnet import ops  # noqa: E402
from walnet.ops.felzenszwalb import SM90_SHARED_BYTES, _weights, warp_plan  # noqa: E402


def layout_limits(height: int, width: int) -> dict[str, int]:
    """The shared memory to plan with for each of the warp kernel's state layouts (the largest
    that gives it) on an image of height x width."""
    shared = warp_plan(height, width, SM90_SHARED_BYTES)
    assert shared[0] == "shared", shared
    split = warp_plan(height, width, shared[1] - 1)
    assert split[0] == "split", split
    assert warp_plan(height, width, split[1] - 1)[0] == "global"
    return {"shared": shared[1], "split": split[1], "global": split[1] - 1}


def _inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = 3
    a1, a2, a3 = (torch.rand(n, h, w, generator=g) for h, w in ((20, 24), (10, 12), (5, 6)))
    images = torch.rand(n, 3, 20, 24, generator=g, dtype=torch.float64)
    labels = ops.felzenszwalb(images, 64, 0.5, 10)
    levels = [torch.randn(n, c, s, s, generator=g) for c, s in ((8, 28), (16, 14), (32, 7), (64, 7))]
    seg_logits = torch.randn(n, 2, 28, 28, generator=g)
    seg_logits[0, 1] -= 100  # one sample without foreground
    boxes = torch.tensor([[0, 0, 27, 27], [3, 5, 20, 9], [10, 10, 10, 10]], dtype=torch.int32)
    bad_labels = labels.long().clone()
    bad_labels[0, 0, 0], bad_labels[1, 5, 7], bad_labels[2, 19, 23] = -1, 20 * 24, 2**40
    bad_boxes = torch.tensor([[-5, -5, 100, 100], [9, 3, 2, 1], [2**30, 4, 2**31 - 1, 5]], dtype=torch.int32)
    # per level (the levels above, channels_last mixed in): bad boxes, clamped by the kernels
    bad_level_boxes = torch.stack([bad_boxes, bad_boxes.flip(1), bad_boxes // 3, -bad_boxes], dim=1)
    mixed = [f.contiguous(memory_format=torch.channels_last) if i % 2 else f for i, f in enumerate(levels)]
    # sizes beyond the CUDA kernels' shared-memory tables: computed per element instead
    wide_prob = torch.rand(1, 2, 33000, generator=g)
    wide_level = torch.randn(1, 1, 2, 9000, generator=g)
    return dict(a1=a1, a2=a2, a3=a3, images=images, labels=labels, levels=levels, seg_logits=seg_logits,
                boxes=boxes, grad=torch.randn(n, 8, 17, 31, generator=g), bad_labels=bad_labels, bad_boxes=bad_boxes,
                mixed=mixed, level_grads=[torch.randn(f.shape, generator=g) for f in mixed],
                bad_level_boxes=bad_level_boxes, wide_prob=wide_prob, wide_level=wide_level,
                wide_box=torch.tensor([[[0, 4000, 1, 4100]]], dtype=torch.int32))


def _run_ops(x: dict) -> dict:
    """Every op's outputs for the inputs `x` (all on one device)."""
    out = {
        "fuse_attention": ops.fuse_attention(x["a1"], x["a2"], x["a3"]),
        "superpixel_mean": ops.superpixel_mean(x["a1"], x["labels"]),
        "pseudo_mask": ops.pseudo_mask(x["a1"], x["a2"], x["a3"], x["labels"]),
        "mask_boxes": ops.mask_boxes(x["seg_logits"].softmax(1)[:, 1], (14, 14)),
        "roi_crop": ops.roi_crop(x["levels"], x["seg_logits"]),
    }
    for images, name in ((x["images"], "rgb"), (x["images"][:, :1], "gray")):
        out[f"felzenszwalb {name} auto"] = ops.felzenszwalb(images, 64, 0.5, 10)
        # the same algorithm everywhere: the same rounds too
        for algorithm in ("block", "reservations"):
            out[f"felzenszwalb {name} {algorithm}"] = list(
                ops.felzenszwalb(images, 64, 0.5, 10, algorithm=algorithm, return_rounds=True))
        out[f"felzenszwalb {name} scale 0"] = ops.felzenszwalb(images, 0, 0.8, 20)
    for rules in (ops.RoundRules(window=32, compact=False, prefilter=False, chain=False), ops.RoundRules(chain=False)):
        out[f"felzenszwalb reservations {rules}"] = list(
            ops.felzenszwalb(x["images"], 1, 0.5, 20, algorithm="reservations", rules=rules, return_rounds=True))
    # the warp kernel's three state layouts, forced on small images by the shared memory it may plan with
    weights = _weights(0.5)
    for layout, limit in layout_limits(*x["images"].shape[-2:]).items():
        out[f"felzenszwalb reservations {layout} layout"] = list(torch.ops.walnet.felzenszwalb(
            x["images"], weights, 64 / 255, 10, "reservations", 64, True, True, True, limit))
    # what the value checks would refuse, straight to the kernels: a defined result, no stray access
    out["pseudo_mask bad labels"] = torch.ops.walnet.pseudo_mask(x["a1"], x["a2"], x["a3"], x["bad_labels"], 0.18)
    out["crop_resize bad boxes"] = torch.ops.walnet.crop_resize(x["levels"][0], x["bad_boxes"], 17, 31, True)
    out["crop_resize_backward bad boxes"] = torch.ops.walnet.crop_resize_backward(x["grad"], x["bad_boxes"], 28, 28,
                                                                                  False)
    for mode in ("nearest", "bilinear"):
        f = x["levels"][0].clone().requires_grad_()
        crop = ops.crop_resize(f, x["boxes"], (17, 31), mode)
        (grad,) = torch.autograd.grad(crop, f, x["grad"])
        out[f"crop_resize {mode}"], out[f"crop_resize {mode} backward"] = crop.detach(), grad
    # the one-pass RCM (preview kernels on CUDA): the ops themselves and roi_crop through them
    prob = x["seg_logits"].softmax(1)[:, 1]
    sizes = [f.shape[-1] for f in x["levels"]]
    level_boxes = torch.ops.walnet.roi_boxes(prob, sizes, sizes, 0.5, 1 / 7)
    out["roi_boxes"] = level_boxes
    out["crop_levels"] = list(torch.ops.walnet.crop_levels(x["mixed"], level_boxes))
    out["crop_levels_backward"] = list(torch.ops.walnet.crop_levels_backward(x["level_grads"], level_boxes))
    with ops.preview_kernels(True):
        out["roi_crop one-pass"] = ops.roi_crop(x["mixed"], x["seg_logits"], "bg_rm_crop")
    out["crop_levels bad boxes"] = list(torch.ops.walnet.crop_levels(x["mixed"], x["bad_level_boxes"]))
    out["crop_levels_backward bad boxes"] = list(
        torch.ops.walnet.crop_levels_backward(x["level_grads"], x["bad_level_boxes"]))
    out["roi_boxes wide map"] = torch.ops.walnet.roi_boxes(x["wide_prob"], [2, 5], [33000, 999], 0.9, 0.01)
    out["crop_levels wide level"] = torch.ops.walnet.crop_levels([x["wide_level"]], x["wide_box"])[0]
    out["crop_levels_backward wide level"] = torch.ops.walnet.crop_levels_backward([x["wide_level"]], x["wide_box"])[0]
    return out


def _to(value, device):
    if isinstance(value, list):
        return [t.to(device) for t in value]
    return value.to(device)


def _flatten(out: dict) -> dict:
    flat = {}
    for name, value in out.items():
        for i, t in enumerate(value if isinstance(value, list) else [value]):
            flat[f"{name}[{i}]" if isinstance(value, list) else name] = t
    return flat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type not in ops.built_backends():
        print(f"walnet has no {device.type} kernels in this build: {sorted(ops.built_backends())}")
        return 1
    x = _inputs()
    with ops.preview_kernels(True):  # the preview kernels too: this program is how they are checked
        want = _flatten(_run_ops(x))
        on_device = {k: _to(v, device) for k, v in x.items()}
        got = _flatten(_run_ops(on_device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    bad = [name for name in want if not torch.equal(got[name].cpu(), want[name])]
    for name in want:
        print(f"{'DIFFERS' if name in bad else 'ok':8s}{name} {tuple(want[name].shape)} {want[name].dtype}")
    print(f"{len(want) - len(bad)} of {len(want)} outputs on {device} equal the CPU kernels'")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
