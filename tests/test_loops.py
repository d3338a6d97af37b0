"""Training and evaluation loops on a tiny phantom (CPU)."""
from __future__ import annotations

import math

import pytest
import torch

import walnet
from walnet.data import PAPER_CLASSES, PlaqueDataset, phantom, read_csv
from walnet.engine import EvalOutputs, evaluate, train_one_epoch


@pytest.fixture(scope="module")
def loader(tmp_path_factory):
    csv_path = phantom.generate(tmp_path_factory.mktemp("ph") / "data", n=24, seed=1, size=64)
    records, classes = read_csv(csv_path, classes=PAPER_CLASSES)
    return torch.utils.data.DataLoader(PlaqueDataset(records, size=64), batch_size=8, shuffle=False)


def test_walnet_epoch_and_evaluation(loader):
    torch.manual_seed(0)
    model = walnet.WALNet(backbone="resnet18", attention_channels=8, rcm_warmup_epochs=1)
    pgm = walnet.PseudoMaskGenerator()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = train_one_epoch(model, pgm, loader, opt, epoch=0, device="cpu")
    for epoch in range(1, 4):
        last = train_one_epoch(model, pgm, loader, opt, epoch=epoch, device="cpu")
    for stats in (first, last):
        assert set(stats) == {"loss", "cls_loss", "seg_loss", "accuracy"}
        assert all(math.isfinite(v) for v in stats.values())
        assert stats["loss"] == pytest.approx(stats["cls_loss"] + stats["seg_loss"], rel=1e-5)
    assert last["loss"] < first["loss"]
    result = evaluate(model, loader, "cpu", pgm=pgm, class_names=PAPER_CLASSES)
    assert 0 <= result["accuracy"] <= 1 and len(result["confusion"]) == 3
    assert sum(map(sum, result["confusion"])) == 24
    for key in ("seg_iou", "seg_dice", "pseudo_iou", "pseudo_dice"):
        assert 0.0 <= result[key] <= 1.0


def test_baseline_classifier_runs_through_the_loops(loader):
    torch.manual_seed(0)
    model = walnet.create_model("resnest", num_classes=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    stats = train_one_epoch(model, None, loader, opt, epoch=0, device="cpu")
    assert stats["seg_loss"] == 0 and math.isfinite(stats["loss"])
    result = evaluate(model, loader, "cpu")
    assert "seg_iou" not in result and 0 <= result["accuracy"] <= 1


def test_outputs_keep_each_sample_s_dataset_index(loader):
    """``EvalOutputs.order`` ties each score to its dataset record, in any loader order."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 3))
    dataset = loader.dataset
    shuffled = torch.utils.data.DataLoader(dataset, batch_size=5, shuffle=True,
                                           generator=torch.Generator().manual_seed(1))
    outputs = EvalOutputs()
    evaluate(model, shuffled, "cpu", outputs=outputs)
    assert sorted(outputs.order.tolist()) == list(range(len(dataset)))
    assert outputs.order.tolist() != list(range(len(dataset)))  # shuffled indeed
    assert outputs.targets.tolist() == [dataset.records[i].label for i in outputs.order]
    # batches without an "index": no order
    plain = [{k: v for k, v in batch.items() if k != "index"} for batch in loader]
    outputs = EvalOutputs()
    evaluate(model, plain, "cpu", outputs=outputs)
    assert outputs.order is None and len(outputs.targets) == len(dataset)
