"""The ``walnet`` command line (``walnet <command> ...`` or ``python -m walnet <command> ...``).

Commands so far: ``phantom`` (write the embedded synthetic dataset). Training, evaluation,
prediction and experiments are still to come (see the project's issues).
"""
from __future__ import annotations

import argparse
import sys


def _phantom(args: argparse.Namespace) -> int:
    from walnet.data import phantom

    csv_path = phantom.generate(args.out, n=args.n, seed=args.seed, size=args.size)
    print(f"wrote {args.n} phantom images ({args.size}x{args.size}) and their masks; labels: {csv_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="walnet", description="WAL-Net for carotid plaque classification.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("phantom", help="write the synthetic carotid-plaque dataset (images, masks, labels.csv)")
    p.add_argument("--out", required=True, help="output folder (must be empty, new, or an earlier phantom)")
    p.add_argument("--n", type=int, default=1270, help="number of images (paper's class ratio 301/605/364)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224, help="image side in pixels")
    p.set_defaults(run=_phantom)
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
