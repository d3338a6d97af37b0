"""ROC curve, the evaluation figures (valid PNGs, written atomically), the arrays `evaluate`
collects for them, and `evaluate_run` writing them."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from walnet.data import PlaqueDataset, phantom, read_csv, save_split, split_indices
from walnet.engine import figures, panels
from walnet.engine.checkpoint import save_checkpoint
from walnet.engine.config import EvalConfig, TrainConfig
from walnet.engine.loops import EvalOutputs, evaluate
from walnet.engine.metrics import roc_auc, roc_curve
from walnet.models import PseudoMaskGenerator, create_model

CLASSES = ["hyperechoic", "hypoechoic", "mixed-echoic"]


def _png(path, min_side=150, max_side=4000):
    assert path.is_file()
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()  # decodes the whole file: a truncated PNG fails here
        w, h = img.size
    assert min_side <= w <= max_side and min_side <= h <= max_side, (w, h)
    return w, h


@pytest.mark.parametrize("seed", range(20))
def test_roc_curve_matches_sklearn_and_roc_auc(seed):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    scores = rng.integers(0, 6, n) / 5 if seed % 2 else rng.random(n)  # odd seeds: many ties
    positive = rng.random(n) < 0.4
    positive[:2] = [True, False]
    fpr, tpr = roc_curve(scores, positive)
    want_fpr, want_tpr, _ = sk.roc_curve(positive, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, want_fpr)
    np.testing.assert_allclose(tpr, want_tpr)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(scores, positive), abs=1e-12)


def test_roc_curve_edge_cases():
    fpr, tpr = roc_curve([0.5, 0.5, 0.5], [True, False, True])  # one threshold: straight diagonal
    np.testing.assert_array_equal(fpr, [0, 1])
    np.testing.assert_array_equal(tpr, [0, 1])
    fpr, tpr = roc_curve([0.1, 0.9], [True, True])  # no negatives: FPR undefined, like sklearn
    assert np.isnan(fpr).all() and tpr[-1] == 1
    with pytest.raises(ValueError, match="positive"):
        roc_curve([0.1, 0.2], [True])


def test_roc_and_confusion_figures(tmp_path):
    rng = np.random.default_rng(0)
    targets = np.array([0, 1, 2] * 10)
    probs = rng.dirichlet(np.ones(3), size=30)
    probs[np.arange(30), targets] += 0.5
    probs /= probs.sum(axis=1, keepdims=True)
    figures.roc_figure(tmp_path / "roc.png", targets, probs, CLASSES)
    # a class absent from the targets has no curve, but the figure is still drawn
    figures.roc_figure(tmp_path / "roc2.png", torch.tensor([0, 1, 0, 1]), torch.rand(4, 3), CLASSES)
    figures.confusion_figure(tmp_path / "confusion.png", [[5, 1, 0], [2, 7, 1], [0, 0, 0]], CLASSES)
    for name in ("roc.png", "roc2.png", "confusion.png"):
        _png(tmp_path / name)
    with pytest.raises(ValueError, match="square"):
        figures.confusion_figure(tmp_path / "bad.png", [[1, 2, 3]], CLASSES)
    with pytest.raises(ValueError, match=r"\[N,K\]"):
        figures.roc_figure(tmp_path / "bad.png", targets, probs[:5], CLASSES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "roc.png", "roc2.png"]


def test_segmentation_panel_with_and_without_masks(tmp_path):
    m, size = 3, 48
    images = torch.rand(m, 3, size, size)
    pseudo = torch.randint(0, 2, (m, 12, 12), dtype=torch.uint8)
    pseudo[0] = 255  # an uninformative sample: drawn grey
    pred = np.random.default_rng(0).integers(0, 2, (m, 12, 12)).astype(np.uint8)
    truth = np.zeros((m, 12, 12), np.uint8)
    truth[:, 4:8, 4:8] = 1
    panels.segmentation_panel(tmp_path / "full.png", images, pseudo, pred, truth, titles=["a.png", "b.png", "c.png"])
    full = _png(tmp_path / "full.png")
    # no masks at all: the image column alone; HWC 0..255 images are accepted too
    panels.segmentation_panel(tmp_path / "alone.png", (images.permute(0, 2, 3, 1) * 255).numpy(),
                              titles=["a.png", "b.png", "c.png"])
    alone = _png(tmp_path / "alone.png", min_side=100)
    assert alone[0] < full[0] and alone[1] == full[1]
    with Image.open(tmp_path / "full.png") as img:
        rgb = np.asarray(img.convert("RGB"))
    assert (np.abs(rgb.astype(int) - 128) <= 2).all(axis=-1).sum() > 100  # the grey of the 255 sample
    with pytest.raises(ValueError, match="masks for"):
        panels.segmentation_panel(tmp_path / "bad.png", images, pred=pred[:2])


def test_a_failed_figure_leaves_no_file(tmp_path, monkeypatch):
    (tmp_path / "roc.png").write_bytes(b"old")

    def broken(self, f, **kw):
        f.write(b"\x89PNG half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(figures.Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        figures.roc_figure(tmp_path / "roc.png", [0, 1], [[0.6, 0.4], [0.3, 0.7]])
    assert [p.name for p in tmp_path.iterdir()] == ["roc.png"]
    assert (tmp_path / "roc.png").read_bytes() == b"old"


def _tiny_run(tmp_path, n=12):
    csv_path = phantom.generate(tmp_path / "ph", n=n, seed=0, size=48)
    torch.manual_seed(0)
    model = create_model("walnet", num_classes=3, backbone="resnet18", attention_channels=8, rcm_warmup_epochs=1)
    args = TrainConfig(csv=csv_path, output=tmp_path / "run", backbone="resnet18", size=48, attention_channels=8,
                       rcm_warmup=1)
    ckpt = save_checkpoint(tmp_path / "run" / "best.pt",
                           {"model": model.state_dict(), "args": args.to_dict(), "classes": CLASSES, "epoch": 0})
    records = read_csv(csv_path)[0]  # the run's split, which evaluate scores
    save_split(tmp_path / "run" / "split.csv", [r.key for r in records],
               split_indices([r.label for r in records], [r.patient for r in records]))
    return csv_path, model, ckpt


def test_evaluate_collects_the_figure_arrays(tmp_path):
    csv_path, model, _ = _tiny_run(tmp_path, n=8)
    records, classes = read_csv(csv_path)
    records[1] = records[1].__class__(records[1].path, records[1].label)  # one sample without a mask
    loader = torch.utils.data.DataLoader(PlaqueDataset(records, size=48), batch_size=3)
    plain = evaluate(model, loader, "cpu", pgm=PseudoMaskGenerator(), class_names=classes)
    outputs = EvalOutputs(panel=4)
    result = evaluate(model, loader, "cpu", pgm=PseudoMaskGenerator(), class_names=classes, outputs=outputs)
    assert result == plain
    np.testing.assert_array_equal(outputs.targets, [r.label for r in records])
    assert outputs.probs.shape == (8, 3)
    np.testing.assert_allclose(outputs.probs.sum(axis=1), 1, atol=1e-5)
    # the first samples with a true mask, at most ceil(4 / 3) = 2 of each class
    expected, per_class = [], {}
    for i, r in enumerate(records):
        if r.mask_path is not None and per_class.get(r.label, 0) < 2 and len(expected) < 4:
            per_class[r.label] = per_class.get(r.label, 0) + 1
            expected.append(i)
    assert len(set(r.label for r in records)) == 3 and outputs.indices == expected
    assert outputs.images.shape == (4, 3, 48, 48)
    for masks in (outputs.pseudo, outputs.pred, outputs.truth):
        assert masks.shape == (4, 12, 12) and masks.dtype == np.uint8
    assert set(np.unique(outputs.pred)) <= {0, 1} and set(np.unique(outputs.pseudo)) <= {0, 1, 255}
    # the attention panel's arrays: the fused map on the same grid, the RCM's boxes inside it
    assert outputs.attention.shape == (4, 12, 12) and outputs.attention.dtype == np.float32
    assert 0 <= outputs.attention.min() and outputs.attention.max() <= 1
    assert outputs.boxes.shape == (4, 4) and (outputs.boxes >= 0).all() and (outputs.boxes <= 11).all()
    # without a PGM there are no pseudo masks; without the argument nothing is collected
    no_pgm = EvalOutputs(panel=2)
    evaluate(model, loader, "cpu", outputs=no_pgm)
    assert no_pgm.pseudo is None and no_pgm.images.shape[0] == 2


@pytest.mark.parametrize("figures", [True, False])
def test_evaluate_run_writes_figures(tmp_path, figures):
    from walnet.engine.evaluation import evaluate_run

    csv_path, _, ckpt = _tiny_run(tmp_path)
    out = tmp_path / "scores"
    config = EvalConfig(checkpoint=ckpt, csv=csv_path, split="train", output=out, batch_size=4, device="cpu",
                        figures=figures)
    result = evaluate_run(config)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == result and saved["images"] > 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    if not figures:
        assert pngs == [] and "figures" not in saved
    else:
        assert saved["figures"] == ["roc.png", "confusion.png", "reliability.png", "segmentation.png", "attention.png"]
        assert pngs == sorted(saved["figures"])
        for name in pngs:
            _png(out / name)


def _png_array(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=float) / 255


def test_attention_overlay_heat_map_contour_and_box(tmp_path):
    image = np.full((40, 60, 3), 0.5)
    attention = np.zeros((10, 15))
    attention[:5, :7] = 1.0  # hot in the top-left quarter only
    mask = np.zeros((10, 15), np.uint8)
    mask[2:6, 3:9] = 1
    fig = panels.attention_overlay(tmp_path / "drawn.png", image, attention, mask, (1, 2, 7, 10),
                                   title="hypoechoic (80.0%)")
    b = _png_array(tmp_path / "drawn.png")
    assert b.shape == (round(fig.get_size_inches()[1] * figures.DPI), panels.OVERLAY_WIDTH, 3)
    # the image's area, as the figure placed it (display pixels, origin bottom left)
    box = fig.axes[0].get_window_extent()
    top, bottom = b.shape[0] - int(box.y1), b.shape[0] - int(box.y0)
    left, right = int(box.x0), int(box.x1)
    mid_y, mid_x = (top + bottom) // 2, (left + right) // 2
    hot = b[top + 15:mid_y - 60, left + 15:mid_x - 60]
    cold = b[mid_y + 60:bottom - 15, mid_x + 60:right - 15]
    # viridis over grey: yellow where the attention is, purple where it is not
    assert ((hot[..., 0] + hot[..., 1]) / 2 - hot[..., 2]).mean() > 0.2
    assert (cold[..., 2] - cold[..., 1]).mean() > 0.1 and (cold[..., 0] - cold[..., 1]).mean() > 0.05
    with pytest.raises(ValueError, match="attention: 1 for 2 images"):
        panels.attention_panel(tmp_path / "p.png", np.zeros((2, 3, 8, 8)), np.zeros((1, 2, 2)))
    panels.attention_panel(tmp_path / "p.png", np.zeros((4, 3, 8, 8)), np.zeros((4, 2, 2)),
                            np.zeros((4, 2, 2)), np.zeros((4, 4), int), titles=list("abcd"))
    _png(tmp_path / "p.png")
