"""What a run shows while it runs and leaves to look at: the progress bars of train (per epoch and
for the run), evaluate and predict (on a terminal only, silenced by ``--quiet``); metrics.csv's
``val_loss`` and ``epoch_s``; ``curves.png`` redrawn after every epoch; ``--tensorboard``'s event
file, read back with TensorBoard's own reader."""
from __future__ import annotations

import contextlib
import csv
import functools
import io
import logging
import math
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from walnet import cli
from walnet.data import PlaqueDataset, load_split, read_csv
from walnet.engine import curves, progress, run_files, trainer
from walnet.engine.config import EvalConfig, PredictConfig
from walnet.engine.evaluation import evaluate_run
from walnet.engine.loading import load_model
from walnet.engine.predict import predict
from walnet.engine.step import forward
from walnet.engine.trainer import train

from train_runs import metrics_rows, older_metrics_csv, phantom_data, run_config, train_args

#: The scalar each metrics.csv column is written as (the epoch is the step).
SCALARS = {"loss": "train/loss", "cls_loss": "train/cls_loss", "seg_loss": "train/seg_loss",
           "train_accuracy": "train/accuracy", "val_loss": "val/loss", "val_accuracy": "val/accuracy",
           "val_macro_f1": "val/macro_f1", "val_kappa": "val/kappa", "val_auc": "val/auc", "epoch_s": "time/epoch_s",
           "lr": "lr"}
#: A bar's "[elapsed<left, rate]": the time left and the rate.
TIME_LEFT = r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+(s/{unit}|{unit}/s)\]"


def _forced(monkeypatch):
    """Bars shown as on a terminal, wherever they are enabled, redrawn at every step (tqdm's
    default redraws at most every 0.1 s, so a fast last step might never be drawn)."""
    monkeypatch.setattr(progress, "_disable", lambda enabled: not enabled)
    monkeypatch.setattr(progress, "tqdm", functools.partial(progress.tqdm, mininterval=0, miniters=1))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantom_data(tmp_path_factory)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A real two-epoch run with bars forced on and --tensorboard: its folder, its stderr, the
    run bar's settings, and curves.png as it was after each epoch (rows in metrics.csv, image)."""
    run = tmp_path_factory.mktemp("progress") / "run"
    patch, err, bars, pictures = pytest.MonkeyPatch(), io.StringIO(), [], []
    real_bar, real_redraw = trainer.bar, trainer.redraw

    def spy_bar(iterable, desc, total=None, enabled=True, **kw):
        bars.append(dict(desc=desc, total=total, enabled=enabled, **kw))
        return real_bar(iterable, desc, total, enabled, **kw)

    def spy_redraw(folder, rows):
        assert real_redraw(folder, rows)
        with Image.open(folder / curves.CURVES_FILE) as image:
            image.load()  # the whole file decodes
            pictures.append((len(metrics_rows(folder)), image.format, image.size, image.info.get("dpi")))

    _forced(patch)
    patch.setattr(trainer, "bar", spy_bar)
    patch.setattr(trainer, "redraw", spy_redraw)
    try:
        with contextlib.redirect_stderr(err):
            train(run_config(data, run, epochs=2, tensorboard=True))
    finally:
        patch.undo()
    return run, err.getvalue(), bars, pictures


def test_train_shows_a_bar_per_epoch_and_one_for_the_run(trained):
    run, err, bars, _ = trained
    assert bars == [dict(desc="epochs", total=2, enabled=True, unit="epoch", initial=0, leave=True)]
    assert re.search(r"epochs: 100%.*\| 2/2 " + TIME_LEFT.format(unit="epoch"), err), err
    for epoch in (0, 1):  # 24 training images in batches of 8
        assert re.search(rf"epoch {epoch}: 100%.*\| 3/3 " + TIME_LEFT.format(unit="batch"), err), err


def test_val_loss_is_the_cross_entropy_of_the_validation_logits(trained, data):
    run = trained[0]
    rows = metrics_rows(run)
    assert list(rows[0]) == list(run_files.METRIC_FIELDS) and [r["epoch"] for r in rows] == ["0", "1"]
    model = load_model(run / "last.pt").model.eval()  # the weights epoch 1 was validated with
    split = load_split(run / "split.csv")
    records = [r for r in read_csv(data)[0] if split[r.key] == "val"]
    batch = torch.utils.data.default_collate(list(PlaqueDataset(records, size=48)))
    with torch.no_grad():
        logits = forward(model, batch["image"], None).logits.float()
    want = F.cross_entropy(logits, torch.as_tensor(batch["label"])).item()
    assert float(rows[-1]["val_loss"]) == pytest.approx(want, rel=1e-5)
    assert all(0 < float(r["epoch_s"]) < math.inf for r in rows)


def test_curves_png_is_drawn_after_every_epoch(trained):
    pictures = trained[3]
    assert [p[:2] for p in pictures] == [(1, "PNG"), (2, "PNG")]
    for _, _, size, dpi in pictures:
        assert dpi is not None
        assert size == pytest.approx((curves.FIGSIZE[0] * dpi[0], curves.FIGSIZE[1] * dpi[1]), abs=1)


def test_tensorboard_event_file_holds_metrics_csv(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = trained[0]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == sorted(SCALARS.values())
    rows = metrics_rows(run)
    for column, tag in SCALARS.items():
        scalars = events.Scalars(tag)
        assert [e.step for e in scalars] == [int(r["epoch"]) for r in rows], column
        # TensorBoard keeps float32; an undefined score (NaN) stays NaN
        np.testing.assert_array_equal([e.value for e in scalars], np.float32([float(r[column]) for r in rows]),
                                      err_msg=column)


def test_tensorboard_without_its_package_is_one_line_before_any_work(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard: ModuleNotFoundError
    run = tmp_path / "run"
    assert cli.main(train_args(data, run, "--epochs", "1", "--tensorboard")) == 2
    err = capsys.readouterr().err
    assert err.startswith("walnet train: error: --tensorboard needs the tensorboard package") and err.count("\n") == 1
    assert "pip install 'walnet[tensorboard]'" in err and not run.exists()


def test_quiet_silences_the_bars_not_the_log(data, tmp_path, monkeypatch, quick, capsys, caplog):
    """quick: epochs without training (no epoch bars): the run's bar alone."""
    caplog.set_level(logging.INFO, logger="walnet")
    _forced(monkeypatch)
    train(run_config(data, tmp_path / "shown", epochs=1))
    assert "epochs: 100%" in capsys.readouterr().err
    train(run_config(data, tmp_path / "quiet", epochs=1, quiet=True))
    assert capsys.readouterr().err == "" and "epoch 0:" in caplog.text
    # resumed with --quiet off: allowed (it changes what the run shows); the bar counts from the epochs done
    train(run_config(data, tmp_path / "quiet", epochs=3, resume=str(tmp_path / "quiet" / "last.pt")))
    assert re.search(r"epochs: 100%.*\| 3/3 ", capsys.readouterr().err)


def test_no_bars_where_stderr_is_no_terminal(data, tmp_path, quick, capsys):
    train(run_config(data, tmp_path / "run", epochs=1))
    assert capsys.readouterr().err == ""
    assert (tmp_path / "run" / "curves.png").is_file()


def test_evaluate_and_predict_show_a_bar_over_their_batches(trained, data, tmp_path, monkeypatch, capsys):
    run = trained[0]
    _forced(monkeypatch)
    evaluate_run(EvalConfig(checkpoint=str(run / "best.pt"), csv=data, split="val", output=tmp_path / "ev",
                            batch_size=3, device="cpu", figures=False))
    batches = -(-sum(1 for s in load_split(run / "split.csv").values() if s == "val") // 3)
    assert re.search(rf"evaluate: 100%.*\| {batches}/{batches} " + TIME_LEFT.format(unit="batch"),
                     capsys.readouterr().err)
    images = data.parent / "images"
    found = sorted(images.rglob("*.png"))
    predict(PredictConfig(checkpoint=str(run / "best.pt"), inputs=(str(images),), output=str(tmp_path / "p.csv"),
                          batch_size=16, device="cpu"))
    batches = -(-len(found) // 16)
    assert re.search(rf"predict: 100%.*\| {batches}/{batches} " + TIME_LEFT.format(unit="batch"),
                     capsys.readouterr().err)
    evaluate_run(EvalConfig(checkpoint=str(run / "best.pt"), csv=data, split="val", output=tmp_path / "ev2",
                            device="cpu", figures=False, quiet=True))
    predict(PredictConfig(checkpoint=str(run / "best.pt"), inputs=(str(images),), output=str(tmp_path / "q.csv"),
                          device="cpu", quiet=True))
    assert capsys.readouterr().err == ""


def test_a_failure_to_draw_is_a_warning_and_the_run_goes_on(data, tmp_path, monkeypatch, quick, caplog):
    def broken(path, rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(curves, "draw_curves", broken)
    train(run_config(data, tmp_path / "run", epochs=2))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "curves.png was not drawn (OSError: [Errno 28] No space left on device)" in warnings[0]
    assert [r["epoch"] for r in metrics_rows(tmp_path / "run")] == ["0", "1"]
    assert (tmp_path / "run" / "last.pt").is_file() and not (tmp_path / "run" / "curves.png").exists()


def test_an_older_metrics_csv_reads_with_the_new_columns_empty(tmp_path):
    """A metrics.csv without val_loss and epoch_s: resuming keeps its rows, the new columns empty,
    and the curves are drawn with gaps where it has no values."""
    path = tmp_path / "metrics.csv"
    old = ["epoch", "loss", "cls_loss", "seg_loss", "train_accuracy", "val_accuracy", "val_macro_f1", "val_kappa",
           "val_auc", "lr"]
    log = older_metrics_csv(path, old)
    log.append({**{k: 0.25 for k in old}, "epoch": 2, "val_loss": 0.75, "epoch_s": 1.5})
    rows = log.rows()
    with open(path, newline="") as f:
        assert tuple(csv.DictReader(f).fieldnames) == run_files.METRIC_FIELDS
    assert [(r["epoch"], r["val_loss"], r["epoch_s"], r["lr"]) for r in rows] == [
        ("0", "", "", "0.5"), ("1", "", "", "0.5"), ("2", "0.75", "1.5", "0.25")]
    with Image.open(curves.draw_curves(tmp_path / "curves.png", rows)) as image:
        assert image.format == "PNG"
