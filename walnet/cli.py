"""The ``walnet`` command line (``walnet <command> ...`` or ``python -m walnet <command> ...``).

Commands so far: ``phantom`` (write the embedded synthetic dataset), ``train`` and ``evaluate``.
Prediction, experiments and figures are still to come (see the project's issues).
"""
from __future__ import annotations

import argparse
import sys


def _phantom(args: argparse.Namespace) -> int:
    from walnet.data import phantom

    csv_path = phantom.generate(args.out, n=args.n, seed=args.seed, size=args.size)
    print(f"wrote {args.n} phantom images ({args.size}x{args.size}) and their masks; labels: {csv_path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from walnet.engine.trainer import train

    train(args)
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (WAL-Net by default) on an ImageFolder tree or a CSV file")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data-dir", help="ImageFolder root: <dir>/<class>/<image>")
    data.add_argument("--csv", help="CSV: path,label[,patient_id][,mask_path][,split][,y1,x1,y2,x2]")
    p.add_argument("--output", required=True, help="run folder (args, split, metrics.csv, last.pt, best.pt)")
    p.add_argument("--model", default="walnet", help="walnet, walnet_no_rcm, walnet_no_pgm, walnet_<roi method>, "
                   "or a baseline (resnest, convnextv2, dpn, repvit, sequencer, rexnet, res2net)")
    p.add_argument("--backbone", default="resnest50d", help="timm backbone of WAL-Net")
    p.add_argument("--pretrained", action="store_true", help="load pretrained backbone weights (downloads)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("-b", "--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224, help="input side in pixels")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("-j", "--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--resume", help="checkpoint (last.pt) to continue from")
    p.add_argument("--roi-method", help="RCM method (default dilated_crop)")
    p.add_argument("--no-rcm", action="store_true")
    p.add_argument("--no-pgm", action="store_true")
    p.add_argument("--rcm-warmup", type=int, default=20, help="epochs with the RCM off at the start")
    p.add_argument("--attention-channels", type=int, default=2048, help="inner channels of the attention gates")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted) instead of failing")
    p.set_defaults(run=_train)


def _evaluate(args: argparse.Namespace) -> int:
    from walnet.engine.trainer import evaluate_run

    r = evaluate_run(args)
    extra = "".join(f", {k} {r[k]:.3f}" for k in ("seg_iou", "pseudo_iou") if k in r)
    print(f"{r['split']} ({r['images']} images): accuracy {r['accuracy']:.3f}, macro F1 {r['macro_f1']:.3f}, "
          f"kappa {r['kappa']:.3f}, micro AUC {r['auc_micro']:.3f}{extra}")
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint on a split: metrics.json (accuracy, F1, kappa, AUC, IoU)")
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a run (its folder holds split.csv)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data-dir")
    data.add_argument("--csv")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--output", help="folder for metrics.json (default: the checkpoint's folder)")
    p.add_argument("-b", "--batch-size", type=int, default=16)
    p.add_argument("-j", "--workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-bad", action="store_true")
    p.set_defaults(run=_evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="walnet", description="WAL-Net for carotid plaque classification.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("phantom", help="write the synthetic carotid-plaque dataset (images, masks, labels.csv)")
    p.add_argument("--out", required=True, help="output folder (must be empty, new, or an earlier phantom)")
    p.add_argument("--n", type=int, default=1270, help="number of images (paper's class ratio 301/605/364)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224, help="image side in pixels")
    p.set_defaults(run=_phantom)
    _add_train(sub)
    _add_evaluate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"walnet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
