"""How well the RCM's box finds the plaque (``box_recall``, ``box_precision`` of
:func:`walnet.engine.loops.evaluate`), checked against the model's boxes and the true masks
scored here with numpy, pixel by pixel."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import small_checkpoint
from walnet.data import PlaqueDataset, phantom, read_csv
from walnet.engine.loops import evaluate

SIZE = 48


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    labels = phantom.generate(tmp_path_factory.mktemp("ph") / "data", n=12, seed=3, size=SIZE)
    records, _ = read_csv(labels)
    return PlaqueDataset(records, size=SIZE)


def _by_hand(model, dataset) -> tuple[float, float]:
    """Mean recall and precision of the plaque by the model's RCM boxes, counted pixel by pixel."""
    recalls, precisions = [], []
    for k in range(len(dataset)):
        sample = dataset[k]
        with torch.no_grad():
            out = model(sample["image"][None])
        y1, x1, y2, x2 = model.rcm_boxes(out.seg_logits)[0].tolist()
        grid = out.seg_logits.shape[-2:]
        truth = F.interpolate(sample["mask"][None, None].float(), size=grid, mode="nearest")[0, 0].numpy() > 0
        if not truth.any():
            continue
        inside = sum(truth[y, x] for y in range(y1, y2 + 1) for x in range(x1, x2 + 1))
        recalls.append(inside / truth.sum())
        precisions.append(inside / ((y2 - y1 + 1) * (x2 - x1 + 1)))
    return float(np.mean(recalls)), float(np.mean(precisions))


def test_evaluate_reports_the_box_recall_and_precision(dataset, tmp_path):
    _, model = small_checkpoint(tmp_path / "best.pt", size=SIZE)
    result = evaluate(model, torch.utils.data.DataLoader(dataset, batch_size=5), "cpu")
    recall, precision = _by_hand(model, dataset)
    assert result["box_recall"] == pytest.approx(recall, abs=1e-12)
    assert result["box_precision"] == pytest.approx(precision, abs=1e-12)
    assert 0 < result["box_precision"] <= 1 and 0 < result["box_recall"] <= 1


def test_a_model_whose_rcm_crops_nothing_has_no_box_scores(dataset, tmp_path):
    _, model = small_checkpoint(tmp_path / "best.pt", model_name="walnet_no_pgm", size=SIZE)
    result = evaluate(model, torch.utils.data.DataLoader(dataset, batch_size=6), "cpu")
    assert "box_recall" not in result and "box_precision" not in result
