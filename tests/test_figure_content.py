"""The figures by their content: 300 dpi PNGs of figsize x dpi pixels and vector PDFs
(``--figure-format``), the attention's colour map and labelled colour bar, true and predicted
classes in the titles (evaluate's panels, predict's overlays), the segmentation legend with the
ignored grey and per-row IoUs, and the ROC's macro average against scikit-learn."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from walnet.constants import IGNORE_INDEX
from walnet.data import phantom
from walnet.engine import figures, panels
from walnet.engine.checks import EVAL_FILES
from walnet.engine.config import EvalConfig, PredictConfig

from conftest import CLASSES, small_checkpoint
from test_figures import _tiny_run

sk_metrics = pytest.importorskip("sklearn.metrics")


def _scores(seed=0, n=40, k=3):
    rng = np.random.default_rng(seed)
    targets = np.arange(n) % k
    probs = rng.dirichlet(np.ones(k), size=n)
    probs[np.arange(n), targets] += rng.random(n) * 0.6  # informative, not perfect
    return targets, probs / probs.sum(axis=1, keepdims=True)


def _colour_bars(fig):
    return [ax for ax in fig.axes if ax.get_ylabel() == panels.ATTENTION_LABEL]


def test_png_is_300_dpi_figsize_pixels_and_pdf_is_vector(tmp_path):
    targets, probs = _scores()
    fig = figures.roc_figure(tmp_path / "roc.png", targets, probs, CLASSES, formats="both")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roc.pdf", "roc.png"]
    with Image.open(tmp_path / "roc.png") as img:
        assert img.info["dpi"] == pytest.approx((300, 300), abs=0.01)
        assert img.size == tuple(round(v * 300) for v in fig.get_size_inches())
    pdf = (tmp_path / "roc.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and b"/FontFile2" in pdf  # TrueType fonts embedded, not Type 3
    # pdf alone: no PNG
    figures.confusion_figure(tmp_path / "only" / "confusion.png", [[3, 1], [0, 4]], formats="pdf")
    assert [p.name for p in (tmp_path / "only").iterdir()] == ["confusion.pdf"]
    with pytest.raises(ValueError, match="png, pdf, both"):
        figures.figure_paths(tmp_path / "x.png", "svg")
    assert figures.figure_names(["roc", "attention"], "both") == ["roc.png", "roc.pdf", "attention.png",
                                                                  "attention.pdf"]


def test_attention_overlay_colour_bar_colour_map_and_title(tmp_path):
    attention = np.linspace(0, 1, 100).reshape(10, 10)
    mask = np.zeros((10, 10), np.uint8)
    mask[3:7, 3:7] = 1
    title = "a.png\n" + figures.class_title("hypoechoic", 0.874, "mixed-echoic")
    fig = panels.attention_overlay(tmp_path / "o.png", np.full((40, 40), 0.5), attention, mask, (2, 2, 7, 7),
                                   title=title)
    image_axes = [ax for ax in fig.axes if ax.get_title()]
    assert len(image_axes) == 1
    assert image_axes[0].get_title() == "a.png\ntrue mixed-echoic / predicted hypoechoic (p=0.87)"
    heat = [im for im in image_axes[0].get_images() if im.get_array().shape == (10, 10)]
    assert len(heat) == 1 and heat[0].get_cmap().name == "viridis"
    assert heat[0].get_clim() == (0, 1)
    bars = _colour_bars(fig)
    assert len(bars) == 1  # the colour bar's axes, labelled
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["predicted mask", "RCM box"]
    with Image.open(tmp_path / "o.png") as img:
        assert img.size == (panels.OVERLAY_WIDTH, round(fig.get_size_inches()[1] * 300))
    # no attention, no colour bar; no true class, none in the title
    fig = panels.attention_overlay(tmp_path / "p.png", np.zeros((8, 8)), title=figures.class_title("a", 0.5))
    assert _colour_bars(fig) == [] and "true" not in fig.axes[0].get_title()


def test_no_jet_anywhere():
    root = Path(panels.__file__).resolve().parents[1]
    users = [p for p in root.rglob("*.py") if re.search(r"""["']jet["']""", p.read_text())]
    assert users == []


def test_segmentation_legend_and_per_row_iou(tmp_path):
    rng = np.random.default_rng(1)
    truth = (rng.random((3, 12, 12)) < 0.4).astype(np.uint8)
    pred = (rng.random((3, 12, 12)) < 0.5).astype(np.uint8)
    pseudo = (rng.random((3, 12, 12)) < 0.5).astype(np.uint8)
    pseudo[1] = IGNORE_INDEX  # uninformative: no IoU
    fig = panels.segmentation_panel(tmp_path / "s.png", rng.random((3, 3, 48, 48)), pseudo, pred, truth,
                                    titles=["r0", "r1", "r2"])
    legend = fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["background", "plaque", "ignored (uninformative pseudo mask)"]
    grey = legend.legend_handles[2].get_facecolor()
    assert grey[:3] == pytest.approx((0.5, 0.5, 0.5))
    rows = fig.subfigs
    assert [sub._suptitle.get_text() for sub in rows] == ["r0", "r1", "r2"]
    for row, sub in enumerate(rows):
        headers = [ax.get_title() for ax in sub.axes]
        assert headers[0] == "image" and headers[3] == "true mask"
        want_pred = sk_metrics.jaccard_score(truth[row].ravel(), pred[row].ravel())
        assert headers[2] == f"predicted mask\nIoU vs true {want_pred:.2f}"
        if row == 1:
            assert headers[1] == "pseudo mask\nIoU vs true n/a"
        else:
            want = sk_metrics.jaccard_score(truth[row].ravel(), pseudo[row].ravel())
            assert headers[1] == f"pseudo mask\nIoU vs true {want:.2f}"


def _sklearn_macro_curve(targets, probs, at):
    """Mean TPR of scikit-learn's one-vs-rest curves at FPRs `at` (none of them a curve's FPR)."""
    tprs = []
    for c in range(probs.shape[1]):
        fpr, tpr, _ = sk_metrics.roc_curve(targets == c, probs[:, c], drop_intermediate=False)
        tprs.append(np.interp(at, fpr, tpr))
    return np.mean(tprs, axis=0)


@pytest.mark.parametrize("seed", range(5))
def test_macro_roc_matches_sklearn(seed, tmp_path):
    targets, probs = _scores(seed, n=30 + 7 * seed)
    if seed % 2:
        probs = np.round(probs, 1)  # many ties: vertical and diagonal steps
    # scikit-learn's ovr macro AUC (rounded scores no longer sum to 1, which it insists on)
    want = np.mean([sk_metrics.roc_auc_score(targets == c, probs[:, c]) for c in range(3)])
    if seed % 2 == 0:
        assert want == pytest.approx(sk_metrics.roc_auc_score(targets, probs, multi_class="ovr"), abs=1e-12)
    fpr, tpr, auc, used = figures.macro_roc(targets, probs)
    assert used == [0, 1, 2] and auc == pytest.approx(want, abs=1e-12)
    # between the grid's FPRs the curve is the mean of scikit-learn's curves
    grid = np.unique(fpr)
    mid = (grid[:-1] + grid[1:]) / 2
    np.testing.assert_allclose(np.interp(mid, fpr, tpr), _sklearn_macro_curve(targets, probs, mid), atol=1e-12)
    fig = figures.roc_figure(tmp_path / "roc.png", targets, probs, CLASSES)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[-1] == f"macro-average (AUC {want:.3f})"
    for c, name in enumerate(CLASSES):
        assert labels[c] == f"{name} (AUC {sk_metrics.roc_auc_score(targets == c, probs[:, c]):.3f})"


def test_macro_roc_leaves_out_an_absent_class(tmp_path):
    targets, probs = _scores(3, n=30)
    targets[targets == 2] = 0  # class 2 has no positive: no curve
    want = np.mean([sk_metrics.roc_auc_score(targets == c, probs[:, c]) for c in (0, 1)])
    assert figures.macro_roc(targets, probs)[2:] == (pytest.approx(want, abs=1e-12), [0, 1])
    fig = figures.roc_figure(tmp_path / "roc.png", targets, probs, CLASSES)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[2] == "mixed-echoic (AUC n/a)" and labels[-1] == f"macro-average (AUC {want:.3f}, 2 of 3 classes)"


def _capture(monkeypatch, module, name):
    made = []
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(module, name, wrapper)
    return made


def test_evaluate_figure_format_titles_and_files(tmp_path, monkeypatch):
    from walnet.engine.evaluation import evaluate_run

    with pytest.raises(ValueError, match="--figure-format must be one of png, pdf, both"):
        EvalConfig(checkpoint="c.pt", csv="x.csv", figure_format="svg")
    csv_path, _, ckpt = _tiny_run(tmp_path)
    seg, att = _capture(monkeypatch, panels, "segmentation_panel"), _capture(monkeypatch, panels, "attention_panel")
    out = tmp_path / "scores"
    result = evaluate_run(EvalConfig(checkpoint=ckpt, csv=csv_path, split="train", output=out, batch_size=4,
                                     device="cpu", figure_format="both", save_predictions=tmp_path / "p.csv"))
    names = [f"{n}.{e}" for n in ("roc", "confusion", "reliability", "segmentation", "attention")
             for e in ("png", "pdf")]
    assert result["figures"] == names == json.loads((out / "metrics.json").read_text())["figures"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["metrics.json"])
    assert set(names) <= set(EVAL_FILES)
    for name in names:
        if name.endswith(".pdf"):
            assert (out / name).read_bytes().startswith(b"%PDF")
        else:
            with Image.open(out / name) as img:
                assert img.info["dpi"] == pytest.approx((300, 300), abs=0.01)
    # each panel row names its image's true class (the CSV's label) and predicted class (the argmax)
    with open(tmp_path / "p.csv", newline="") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    row_titles = [sub._suptitle.get_text() for sub in seg[0].subfigs]
    tile_titles = [ax.get_title() for ax in att[0].axes if ax.get_title()]
    assert len(row_titles) == len(tile_titles) > 0
    for row_title, tile in zip(row_titles, tile_titles):
        name = row_title.split(":")[0]
        r = rows[name]
        assert f"true {r['label']} / predicted {r['predicted']} (p=" in row_title
        assert tile.startswith(name) and f"true {r['label']} /\npredicted {r['predicted']} (p=" in tile
    assert len(_colour_bars(att[0])) == 1


def test_predict_overlay_titles_show_the_true_class_where_the_csv_has_it(tmp_path, monkeypatch):
    from walnet.engine.predict import predict

    csv_path = phantom.generate(tmp_path / "ph", n=3, seed=2, size=48)
    ckpt, _ = small_checkpoint(tmp_path / "run" / "best.pt")
    made = _capture(monkeypatch, panels, "attention_overlay")
    with open(csv_path, newline="") as f:
        listed = list(csv.DictReader(f))
    predict(PredictConfig(checkpoint=ckpt, csv=csv_path, output=tmp_path / "p.csv", overlays_dir=tmp_path / "o",
                          device="cpu"))
    with open(tmp_path / "p.csv", newline="") as f:
        predicted = [r["predicted"] for r in csv.DictReader(f)]
    titles = [fig.axes[0].get_title() for fig in made]
    assert len(titles) == len(listed) == 3
    for title, row, pred in zip(titles, listed, predicted):
        assert title.startswith(Path(row["path"]).name + "\n")
        assert f"true {row['label']} / predicted {pred} (p=" in title
        assert len(_colour_bars(made[0])) == 1
    # images without labels: the predicted class alone
    made.clear()
    images = sorted((tmp_path / "ph" / "images").rglob("*.png"))
    predict(ckpt, images[:1], tmp_path / "q.csv", overlays_dir=tmp_path / "o2", device="cpu")
    assert len(made) == 1 and "true" not in made[0].axes[0].get_title()
    assert "predicted" in made[0].axes[0].get_title()


def test_figure_format_flag(capsys):
    from walnet import cli

    base = ["evaluate", "--checkpoint", "c", "--csv", "x"]
    assert cli.build_parser().parse_args(base).figure_format == "png"
    assert cli.build_parser().parse_args([*base, "--figure-format", "pdf"]).figure_format == "pdf"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([*base, "--figure-format", "svg"])
    assert "argument --figure-format: invalid choice: 'svg'" in capsys.readouterr().err
