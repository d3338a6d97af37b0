"""The ``walnet`` command line (``walnet <command> ...`` or ``python -m walnet <command> ...``).

Commands so far: ``phantom`` (write the embedded synthetic dataset), ``train``, ``evaluate``
(metrics and figures), ``predict`` and ``experiment`` (seeds x models -> the paper's tables).
"""
from __future__ import annotations

import argparse
import copy
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
    p.add_argument("--amp", action="store_true", help="mixed precision: float16 + gradient scaler on CUDA, "
                   "bfloat16 on CPU")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across torchrun processes (CUDA only)")
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
    p.add_argument("--no-figures", action="store_true",
                   help="skip roc.png, confusion.png and segmentation.png (metrics.json only)")
    p.set_defaults(run=_evaluate)


def _predict(args: argparse.Namespace) -> int:
    from walnet.engine.predict import predict

    r = predict(args.checkpoint, args.inputs, args.output, masks_dir=args.masks, batch_size=args.batch_size,
                device=args.device, workers=args.workers, overwrite=args.overwrite)
    counts = ", ".join(f"{c} {n}" for c, n in r["counts"].items())
    masks = f"; masks in {r['masks']}" if r["masks"] else ""
    print(f"predicted {r['images']} image(s) ({counts}): {r['output']}{masks}")
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="class probabilities of images or folders -> CSV (and optional mask PNGs)")
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a run")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders (scanned recursively)")
    p.add_argument("--output", required=True, help="CSV: path,predicted,prob_<class>... (never overwritten "
                   "without --overwrite)")
    p.add_argument("--masks", metavar="DIR", help="also write each image's predicted plaque mask (0/255 PNG, "
                   "original size) here; needs a model with a segmentation head")
    p.add_argument("-b", "--batch-size", type=int, default=16)
    p.add_argument("-j", "--workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing CSV / mask files")
    p.set_defaults(run=_predict)


#: Flags that ``walnet experiment`` sets itself per run instead of passing them through.
_EXPERIMENT_OWN_TRAIN = {"help", "data_dir", "csv", "output", "model", "seed", "resume",
                         "roi_method", "no_rcm", "no_pgm"}
_EXPERIMENT_OWN_EVAL = {"help", "checkpoint", "data_dir", "csv", "split", "output", "batch_size"}


def _passthrough(sub, command: str, own: set) -> list:
    # the train/evaluate parsers' own actions (private _actions, as argparse's parents= uses them),
    # so flags added to those commands later are passed through with their names and defaults
    return [a for a in sub.choices[command]._actions if a.dest not in own]


def _experiment(args: argparse.Namespace) -> int:
    from walnet.engine.experiment import TABLES, flags_from_namespace, run_experiment

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    if args.table:
        configs, name, title = TABLES[args.table].rows, args.table, TABLES[args.table].title
    else:
        configs, name, title = [m.strip() for m in args.models.split(",") if m.strip()], "experiment", None
    run_experiment(configs, args.output, seeds=seeds, csv_path=args.csv, data_dir=args.data_dir,
                   train_flags=flags_from_namespace(args, args.train_actions),
                   eval_flags=flags_from_namespace(args, args.eval_actions), name=name, title=title)
    return 0


def _add_experiment(sub) -> None:
    p = sub.add_parser("experiment", help="configs x seeds -> train, evaluate, mean (std) tables like the paper's "
                       "Tables 1-3 (<output>/<table>.md and .csv)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--table", choices=("table1", "table2", "table3"), help="the paper's Table 1 (methods), "
                       "2 (RCM/PGM ablation) or 3 (ROI methods)")
    which.add_argument("--models", help="comma-separated model names (as train --model), e.g. walnet,walnet_no_rcm")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (paper: five runs)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data-dir", help="ImageFolder root: <dir>/<class>/<image>")
    data.add_argument("--csv", help="CSV: path,label[,patient_id][,mask_path][,split][,y1,x1,y2,x2]")
    p.add_argument("--output", required=True, help="experiment folder: runs/<model>/seed<k>/, <table>.csv/.md; "
                   "finished runs are reused, interrupted ones resumed")
    train_actions = _passthrough(sub, "train", _EXPERIMENT_OWN_TRAIN)
    known = {a.dest for a in train_actions}
    eval_actions = _passthrough(sub, "evaluate", _EXPERIMENT_OWN_EVAL)
    for action in train_actions + [a for a in eval_actions if a.dest not in known]:
        p._add_action(copy.copy(action))  # a copy: _add_action re-points action.container
    p.set_defaults(run=_experiment, train_actions=train_actions, eval_actions=eval_actions)


def _demo(args: argparse.Namespace) -> int:
    from walnet.engine.demo import DemoConfig, run_demo, summary

    config = DemoConfig(n=args.n, size=args.size, epochs=args.epochs, backbone=args.backbone, seed=args.seed,
                        device=args.device)
    result = run_demo(args.output, config)
    print(summary(result))
    print(f"report: {args.output}/report.md")
    return 0


def _add_demo(sub) -> None:
    from walnet.engine.demo import DemoConfig  # dataclasses only: cheap to import

    d = DemoConfig()
    p = sub.add_parser("demo", help="phantom -> train WAL-Net -> evaluate -> report.md, in minutes on a CPU")
    p.add_argument("--output", default="demo-output", help="folder for the phantom, the run and report.md")
    p.add_argument("--n", type=int, default=d.n, help="phantom images")
    p.add_argument("--size", type=int, default=d.size, help="image side in pixels")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--backbone", default=d.backbone)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="cpu (default), cuda, auto")
    p.set_defaults(run=_demo)


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
    _add_demo(sub)
    _add_predict(sub)
    _add_experiment(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (FileExistsError, FileNotFoundError, ValueError, FloatingPointError) as exc:
        print(f"walnet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
