"""Per-step losses of a CUDA-graphed WAL-Net step next to two eager runs of the same steps, for
float32 and bf16 autocast, with the real PGM and with a fixed mask in its place. Tells a graph
that computes something else (graphed != eager while the eager runs agree) from run-to-run
variation that the PGM's thresholds amplify (the eager runs differ as well).
Run on a GPU: python benchmarks/graph_vs_eager.py [--steps 14]."""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import walnet  # noqa: E402
from benchmarks.train_throughput import FixedMask  # noqa: E402
from walnet.engine.step import GRAPH_WARMUP_STEPS, TrainStep  # noqa: E402


def losses(graphed: bool, amp, pgm_type, batches) -> torch.Tensor:
    torch.manual_seed(0)
    model = walnet.WALNet(backbone="resnet18", attention_channels=8, rcm_warmup_epochs=1).cuda().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    step = TrainStep(model, pgm_type(), opt, amp_dtype=amp, cuda_graph=graphed)
    half = len(batches) // 2
    return torch.stack([step(x, t, int(i >= half)).clone() for i, (x, t) in enumerate(batches)]).cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2 * (GRAPH_WARMUP_STEPS + 4))
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.rand(2, 3, 64, 64, generator=gen).cuda(), torch.randint(0, 3, (2,), generator=gen).cuda())
               for _ in range(args.steps)]
    torch.set_printoptions(precision=5, linewidth=160, sci_mode=False)
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        for amp in (None, torch.bfloat16):
            for pgm_type in (walnet.PseudoMaskGenerator, FixedMask):
                graphed, eager1, eager2 = (losses(g, amp, pgm_type, batches) for g in (True, False, False))
                print(f"\n{amp or 'fp32'}, {pgm_type.__name__}: per step |graphed - eager| and |eager - eager| "
                      "of (total, cls, seg, correct); first graphed step", GRAPH_WARMUP_STEPS)
                print(torch.cat([(graphed - eager1).abs(), (eager1 - eager2).abs()], dim=1))


if __name__ == "__main__":
    main()
