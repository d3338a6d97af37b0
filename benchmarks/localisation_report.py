"""The report of the localisation ablation (benchmarks/localisation_ablation.sh; docs/benchmarks.md,
"Does the plaque's location matter?").

For each plaque-size setting under OUT (``OUT/<setting>/phantom``, ``OUT/<setting>/t2`` and, where
it ran, the control ``OUT/<setting>/oracle``: the plain classifier on ROI crops around the true
plaque) it scores every run's best checkpoint on its test split once more to keep the per-image
predictions (``OUT/<setting>/scores/<variant>_seed<k>/``; reused when present), and prints
Markdown:

* the main table the experiment wrote (mean (std) over seeds);
* paired differences between the variants, accuracy and macro F1 on the same test images, with
  95 % two-level bootstrap intervals over seeds x test images (walnet.engine.paired);
* the RCM box's recall and precision of the true plaque, the pseudo and predicted masks' IoU;

and draws accuracy against the plaque's share of the image per variant (``--figure``).

    python benchmarks/localisation_report.py OUT [--figure FILE] [--resamples N]
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from walnet.constants import PLAQUE_CLASSES
from walnet.engine.paired import paired_difference
from walnet.engine.predictions import read_predictions

#: The paper's Table 2 rows, then the control: (name, row label).
VARIANTS = (("walnet_no_pgm", "w/o RCM & PGM"), ("walnet_no_rcm", "w/o RCM"), ("walnet", "WAL-Net"),
            ("oracle", "w/o RCM & PGM, true ROI"))
#: Where each variant's runs are: (experiment folder, config, the CSV it trained on).
RUNS = {"walnet_no_pgm": ("t2", "walnet_no_pgm", "labels.csv"), "walnet_no_rcm": ("t2", "walnet_no_rcm", "labels.csv"),
        "walnet": ("t2", "walnet", "labels.csv"), "oracle": ("oracle", "walnet_no_pgm", "labels_box.csv")}
#: The compared pairs (A, B): A - B.
PAIRS = (("walnet_no_rcm", "walnet_no_pgm"), ("walnet", "walnet_no_rcm"), ("walnet", "walnet_no_pgm"),
         ("oracle", "walnet_no_pgm"), ("oracle", "walnet"))
#: The settings in order of plaque size, as benchmarks/localisation_ablation.sh names them.
SETTINGS = ("large", "medium", "small")
LOCALISATION = (("box_recall", "box recall"), ("box_precision", "box precision"), ("pseudo_iou", "pseudo-mask IoU"),
                ("seg_iou", "predicted-mask IoU"))
LABEL = dict(VARIANTS)


def _run_dir(setting: Path, variant: str, seed: str) -> Path:
    folder, config, _ = RUNS[variant]
    return setting / folder / "runs" / config / seed


def _seeds(setting: Path) -> list[str]:
    """The seeds every variant has finished (the control's runs are optional: it is left out
    where it has none)."""
    found = [{p.name for p in _run_dir(setting, v, "x").parent.glob("seed*") if (p / "metrics.json").is_file()}
             for v, _ in VARIANTS[:3]]
    return sorted(set.intersection(*found))


def _variants(setting: Path, seeds: list[str]) -> list[str]:
    return [v for v, _ in VARIANTS if all((_run_dir(setting, v, s) / "metrics.json").is_file() for s in seeds)]


def _predictions(setting: Path, variant: str, seed: str) -> Path:
    """The test predictions of one run, scored once (walnet evaluate --save-predictions)."""
    out = setting / "scores" / f"{variant}_{seed}"
    path = out / "predictions.csv"
    if not path.is_file():
        from walnet.engine.config import EvalConfig
        from walnet.engine.evaluation import evaluate_run

        evaluate_run(EvalConfig(checkpoint=str(_run_dir(setting, variant, seed) / "best.pt"),
                                csv=str(setting / "phantom" / RUNS[variant][2]), split="test", output=str(out),
                                figures=False, save_predictions=str(path), quiet=True, device="cpu", batch_size=32))
    return path


def _paired_rows(setting: Path, seeds: list[str], variants: list[str], resamples: int) -> list[str]:
    preds: dict[str, tuple[list, np.ndarray, np.ndarray, list]] = {}
    for variant in variants:
        keys, targets, groups, picked = [], [], [], []
        for seed in seeds:
            k, y, p = read_predictions(_predictions(setting, variant, seed), PLAQUE_CLASSES)
            keys += [f"{seed}/{key}" for key in k]
            targets.append(y)
            picked.append(p.argmax(1))
            groups += [seed] * len(k)
        preds[variant] = (keys, np.concatenate(targets), np.concatenate(picked), groups)
    rows = ["| A − B | accuracy A − B (95 % CI) | macro F1 A − B (95 % CI) |", "|---|---:|---:|"]
    for a, b in (pair for pair in PAIRS if set(pair) <= set(variants)):
        if preds[a][0] != preds[b][0] or not np.array_equal(preds[a][1], preds[b][1]):
            raise ValueError(f"{setting}: {a} and {b} were not tested on the same images; no paired comparison")
        out = paired_difference(preds[a][1], preds[a][2], preds[b][2], preds[a][3], resamples=resamples)
        cells = [f"{out[m]['difference']:+.3f} [{out[m]['ci'][0]:+.3f}, {out[m]['ci'][1]:+.3f}]"
                 for m in ("accuracy", "macro_f1")]
        rows.append(f"| {LABEL[a]} − {LABEL[b]} | {cells[0]} | {cells[1]} |")
    images = out["images"] // out["groups"]
    rows.append(f"\n({out['groups']} seeds × about {images} test images, {resamples} resamples.)")
    return rows


def _runs(setting: Path, variant: str, seeds: list[str]) -> list[dict]:
    return [json.loads((_run_dir(setting, variant, s) / "metrics.json").read_text()) for s in seeds]


def _mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ({np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f})"


def _localisation_rows(setting: Path, seeds: list[str], variants: list[str]) -> list[str]:
    rows = ["| Method | accuracy | macro F1 | " + " | ".join(label for _, label in LOCALISATION)
            + " | best.pt's epoch per seed |", "|---|" + "---:|" * (len(LOCALISATION) + 3)]
    for variant in variants:
        runs = _runs(setting, variant, seeds)
        label = LABEL[variant]
        cells = [_mean_std([r[key] for r in runs]) if all(key in r for r in runs) else "–"
                 for key in ("accuracy", "macro_f1", *(k for k, _ in LOCALISATION))]
        cells.append(", ".join(str(r["epoch"]) for r in runs))
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def _phantom(setting: Path) -> tuple[float, float]:
    """The plaque's mean share of the image and the commonest class's share of the images."""
    with open(setting / "phantom" / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = [r["label"] for r in rows]
    majority = max(labels.count(c) for c in set(labels)) / len(labels)
    return float(np.mean([float(r["plaque_share"]) for r in rows])), majority


def _figure(points: dict, majority: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from walnet.engine.figures import save_figure

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for (variant, label), marker in zip(VARIANTS, "osD^"):
        xs = [x for x in sorted(points) if variant in points[x]]
        acc = [[r["accuracy"] for r in points[x][variant]] for x in xs]
        ax.errorbar([x * 100 for x in xs], [np.mean(a) for a in acc], yerr=[np.std(a, ddof=1) for a in acc],
                    marker=marker, capsize=3, label=label, linestyle="--" if variant == "oracle" else "-")
    ax.set_xscale("log")
    ax.set_xticks([x * 100 for x in sorted(points)], [f"{x * 100:.1f}" for x in sorted(points)])
    ax.minorticks_off()
    ax.axhline(majority, color="grey", linewidth=1, linestyle=":", label="majority class")
    ax.set_xlabel("plaque's share of the image (%), mean of the setting")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder localisation_ablation.sh wrote")
    parser.add_argument("--figure", type=Path, help="write accuracy against plaque size here (PNG)")
    parser.add_argument("--resamples", type=int, default=10_000)
    args = parser.parse_args(argv)
    points = {}
    for name in SETTINGS:
        setting = args.out / name
        table = setting / "t2" / "table2.md"
        if not table.is_file():
            continue
        seeds = _seeds(setting)
        variants = _variants(setting, seeds)
        share, majority = _phantom(setting)
        print(f"### Plaques of {share * 100:.1f} % of the image on average ({name})\n")
        print(table.read_text().split("\n\n")[1].strip() + "\n")  # the main table, not the per-class one
        print("\n".join(_localisation_rows(setting, seeds, variants)) + "\n")
        print("\n".join(_paired_rows(setting, seeds, variants, args.resamples)) + "\n")
        points[share] = {variant: _runs(setting, variant, seeds) for variant in variants}
    if args.figure and points:
        _figure(points, majority, args.figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
