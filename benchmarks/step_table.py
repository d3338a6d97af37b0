"""Prints the training-step table of the model issue: one step (forward + PGM + backward + Adam)
of WAL-Net vs the same backbone + decoder without PGM/RCM vs the authors' step (skimage per
image, Python loops for the pseudo mask and the RCM). Run: python benchmarks/step_table.py
[--batch 8] [--size 224] [--device cpu|cuda] [--steps 3]. One process, one machine."""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import walnet  # noqa: E402
from benchmarks.common import authors_rcm, machine, paper_pseudo_mask  # noqa: E402
from walnet import ops  # noqa: E402


def authors_pgm(images: torch.Tensor, attention) -> torch.Tensor:
    """The authors' PGM: images to the host, skimage per image, Python loops (paper path)."""
    from skimage.segmentation import felzenszwalb

    a1, a2, a3 = (a.detach()[:, 0] for a in attention)
    small = F.interpolate(images, size=a1.shape[-2:], mode="nearest").permute(0, 2, 3, 1).cpu().numpy()
    labels = np.stack([felzenszwalb(img, scale=64, sigma=0.5, min_size=10) for img in small])
    return paper_pseudo_mask(a1, a2, a3, torch.from_numpy(labels).to(images.device)).long()


def make_step(model, variant: str, images, target):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    pgm = walnet.PseudoMaskGenerator()
    fixed_mask = torch.zeros(images.shape[0], *[s // 4 for s in images.shape[-2:]], dtype=torch.long,
                             device=images.device)

    def step():
        if variant == "authors":
            f1, f2, f3, c4 = model.encoder(images)
            gated = [g(f, c4) for g, f in zip(model.gates, (f1, f2, f3))]
            seg = model.decoder(f1, c4)
            levels = authors_rcm([y for y, _ in gated] + [c4], seg)
            pooled = [y.sum(dim=(2, 3)) for y in levels[:3]] + [levels[3].mean(dim=(2, 3))]
            logits = torch.stack([h(p) for h, p in zip(model.heads, pooled)]).mean(0)
            mask = authors_pgm(images, [a for _, a in gated])
            loss = F.cross_entropy(logits, target) + F.cross_entropy(seg, mask, ignore_index=255)
        elif variant == "walnet":
            out = model(images, epoch=100)
            loss = walnet.walnet_loss(out, target, pgm(images, out.attention)).total
        else:  # backbone + decoder, no PGM, no RCM
            out = model(images)
            loss = F.cross_entropy(out.logits, target) + F.cross_entropy(out.seg_logits, fixed_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if images.is_cuda:
            torch.cuda.synchronize()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size, device=args.device)
    target = torch.randint(0, 3, (args.batch,), device=args.device)
    print(f"training step, batch {args.batch} x {args.size}² on {args.device}: {machine(args.device)}")
    print(f"torch {torch.__version__}, walnet backends {sorted(ops.built_backends())}\n")
    print("| variant | step (s) | / backbone+decoder |")
    print("|---|---:|---:|")
    times = {}
    for variant in ("backbone+decoder", "walnet", "authors"):
        torch.manual_seed(0)
        model = walnet.WALNet(use_rcm=variant != "backbone+decoder").to(args.device).train()
        step = make_step(model, variant, images, target)
        step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        times[variant] = (time.perf_counter() - t0) / args.steps
        print(f"| {variant} | {times[variant]:.3f} | {times[variant] / times['backbone+decoder']:.3f}× |", flush=True)


if __name__ == "__main__":
    main()
