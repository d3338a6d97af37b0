"""Temperature scaling: :func:`fit_temperature` on toy models whose best temperature is known,
and ``walnet calibrate`` end to end: the temperature written into the checkpoint and used by
evaluate, predict (from the checkpoint and from an exported folder) and export."""
from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from walnet import cli
from walnet.data import PlaqueDataset, Record, phantom, read_csv, save_split, split_indices
from walnet.engine.calibration import TEMPERATURE_RANGE, calibrate_run, fit_temperature, nll
from walnet.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from walnet.engine.config import CalibrateConfig, EvalConfig
from walnet.engine.evaluation import evaluate_run
from walnet.engine.export import export_model
from walnet.engine.loading import load_model
from walnet.engine.loops import EvalOutputs, evaluate
from walnet.engine.predict import predict
from walnet.models.folder import check_config, read_config

from conftest import CLASSES, small_checkpoint

# --- fit_temperature ---------------------------------------------------------------------------


def _toy(n: int, scale: float, seed: int = 0):
    """Labels drawn from known class distributions p (3 classes) and logits ``scale * log p``: a
    model `scale` times over-confident (scale 1: calibrated), whose best temperature is `scale`
    (softmax(scale * log p / scale) = p, and the NLL's expectation is least at the true p). Also
    the standard error of a fitted T over `n` samples, from the Fisher information of 1 / T (the
    NLL's second derivative in 1 / T is the mean variance of the logits under the softmax)."""
    rng = np.random.default_rng(seed)
    log_p = torch.log_softmax(torch.from_numpy(rng.normal(0, 1.5, (n, 3))), dim=1).numpy()
    p = np.exp(log_p)
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1).clip(max=2)
    variance = (p * log_p**2).sum(axis=1) - (p * log_p).sum(axis=1) ** 2  # of log p under p
    se = scale**2 / math.sqrt(n * scale**2 * variance.mean())  # dT = T^2 d(1/T)
    return scale * log_p, labels, se


def _torch_nll(logits, labels, t: float) -> float:
    """The oracle: torch's cross-entropy of logits / t in float64."""
    return float(F.cross_entropy(torch.as_tensor(logits, dtype=torch.float64) / t, torch.as_tensor(labels)))


@pytest.mark.parametrize("scale", [4.0, 1.0, 0.5])
def test_the_fitted_temperature_is_the_true_one(scale):
    logits, labels, se = _toy(50_000, scale)
    fit = fit_temperature(logits, labels)
    # 50,000 samples pin T to a few hundredths (se 0.028 for T = 4, 0.007 for T = 1); 5 standard
    # errors is a miss of one time in a million for an unbiased fit
    assert se < 0.04 and abs(fit.temperature - scale) < 5 * se, (fit, se)
    assert fit.nll_before == pytest.approx(_torch_nll(logits, labels, 1.0), rel=1e-12)
    assert fit.nll_after == pytest.approx(_torch_nll(logits, labels, fit.temperature), rel=1e-12)
    # a true minimum: 5% either way is not lower, and a grid of torch's NLL finds the same place
    for t in (fit.temperature * 1.05, fit.temperature / 1.05):
        assert _torch_nll(logits, labels, t) > fit.nll_after
    grid = np.exp(np.linspace(math.log(scale / 1.1), math.log(scale * 1.1), 191))  # steps of 0.1%
    best = grid[np.argmin([_torch_nll(logits, labels, t) for t in grid])]
    assert fit.temperature == pytest.approx(best, rel=2e-3)


def test_calibration_lowers_held_out_nll_of_an_overconfident_model():
    val, val_labels, _ = _toy(20_000, 4.0, seed=1)
    test, test_labels, _ = _toy(20_000, 4.0, seed=2)
    fit = fit_temperature(val, val_labels)
    assert fit.nll_after < fit.nll_before - 0.3  # 4x over-confident: a large loss
    # on images it was not fitted on too, and no prediction changes
    assert nll(test, test_labels, fit.temperature) < nll(test, test_labels) - 0.3
    assert (torch.softmax(torch.from_numpy(test) / fit.temperature, 1).argmax(1).numpy() == test.argmax(1)).all()


def test_degenerate_input_is_a_clear_error():
    good = np.zeros((4, 3))
    for logits, labels, match in [(np.zeros((0, 3)), np.zeros(0, int), "no samples"),
                                  (np.full((2, 3), np.nan), [0, 1], "NaN or inf"),
                                  (np.array([[0.0, np.inf, 1.0]]), [0], "NaN or inf"),
                                  (np.zeros(3), [0], r"\[N, K\]"), (good, [0, 1, 2, 3], "0..2"),
                                  (good, [0, 1], "4 integer class indices"), (good, [0.0] * 4, "integer")]:
        with pytest.raises(ValueError, match=match):
            fit_temperature(logits, labels)
    # logits equal within each sample: no confidence to scale
    assert fit_temperature(np.ones((5, 3)), [0, 1, 2, 0, 1]).temperature == 1.0
    # uninformative logits push T to the search's bound, not past it
    rng = np.random.default_rng(0)
    fit = fit_temperature(rng.normal(size=(2000, 3)), rng.integers(0, 3, 2000))
    assert TEMPERATURE_RANGE[0] <= fit.temperature <= TEMPERATURE_RANGE[1] and fit.nll_after <= fit.nll_before


# --- walnet calibrate ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A phantom, a small checkpoint with its run's split.csv, and a calibrated copy of it:
    (root, labels.csv, uncalibrated checkpoint, its model, calibrated checkpoint, calibrate's result)."""
    root = tmp_path_factory.mktemp("calibrate")
    csv_path = phantom.generate(root / "ph", n=20, seed=0, size=48)
    ckpt, model = small_checkpoint(root / "run" / "best.pt")
    records = read_csv(csv_path)[0]
    save_split(root / "run" / "split.csv", [r.key for r in records],
               split_indices([r.label for r in records], [r.patient for r in records]))
    calibrated = _copy_run(root / "run", root / "calibrated")
    result = calibrate_run(CalibrateConfig(checkpoint=calibrated, csv=csv_path, device="cpu", batch_size=4))
    return root, csv_path, ckpt, model, calibrated, result


def _copy_run(run_dir, target):
    shutil.copytree(run_dir, target)
    return target / "best.pt"


def _logits(model, paths):
    batch = torch.stack([PlaqueDataset([Record(p, 0)], size=48)[0]["image"] for p in paths])
    with torch.no_grad():
        return model(batch).logits.double()


def test_calibrate_writes_the_temperature_and_nothing_else(run):
    root, csv_path, ckpt, model, calibrated, result = run
    before, after = load_checkpoint(ckpt), load_checkpoint(calibrated)
    assert set(after) == set(before) | {"temperature"} and after["temperature"] == result["temperature"]
    assert result["previous"] is None and result["split"] == "val" and result["images"] > 0
    for key in before:
        if key == "model":
            assert all(torch.equal(before[key][k], after[key][k]) for k in before[key])
        else:
            assert after[key] == before[key]
    # its NLL on the val split, recomputed here from the model's logits, is what it reports and no higher
    records, _ = read_csv(csv_path)
    splits = split_indices([r.label for r in records], [r.patient for r in records])
    val = [r for r, s in zip(records, splits) if s == "val"]
    logits, labels = _logits(model, [r.path for r in val]), torch.tensor([r.label for r in val])
    t = after["temperature"]
    assert len(val) == result["images"]
    assert result["nll_before"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert result["nll_after"] == pytest.approx(float(F.cross_entropy(logits / t, labels)), rel=1e-5)
    assert result["nll_after"] <= result["nll_before"]
    # and its ECE: top-label confidence in 15 equal bins (b/15, (b+1)/15], weighted |accuracy - confidence|
    def ece(probs):
        conf, correct = probs.max(1).values.numpy(), (probs.argmax(1) == labels).numpy()
        bins = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)
        return sum(abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).sum()
                   for b in set(bins.tolist())) / len(conf)

    assert result["ece_before"] == pytest.approx(ece(torch.softmax(logits, 1)), abs=1e-6)
    assert result["ece_after"] == pytest.approx(ece(torch.softmax(logits / t, 1)), abs=1e-6)
    assert load_model(calibrated).temperature == t and load_model(ckpt).temperature == 1.0


def test_predict_divides_the_logits_by_the_temperature(run, tmp_path):
    root, _, _, model, calibrated, result = run
    images = sorted((root / "ph" / "images").rglob("*.png"))[:6]
    predict(calibrated, images, tmp_path / "p.csv", device="cpu")
    with open(tmp_path / "p.csv", newline="") as f:
        got = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in csv.DictReader(f)])
    want = torch.softmax(_logits(model, images) / result["temperature"], dim=1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert result["temperature"] != pytest.approx(1.0, abs=0.05)  # the test tells calibrated from not
    assert not np.allclose(got, torch.softmax(_logits(model, images), dim=1).numpy(), atol=1e-3)
    # an exported folder carries the temperature: the same probabilities from it
    export_model(calibrated, tmp_path / "model")
    config = read_config(tmp_path / "model")
    assert config["temperature"] == result["temperature"]
    predict(None, images, tmp_path / "f.csv", model=tmp_path / "model", device="cpu")
    with open(tmp_path / "f.csv", newline="") as f:
        from_folder = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in csv.DictReader(f)])
    np.testing.assert_allclose(from_folder, got, atol=1e-6)
    card = (tmp_path / "model" / "README.md").read_text()
    assert f"Temperature: {result['temperature']:.4g}" in card and "divide them by the temperature" in card


def test_evaluate_uses_and_records_the_temperature(run, tmp_path):
    root, csv_path, ckpt, model, calibrated, result = run
    plain = evaluate_run(EvalConfig(checkpoint=ckpt, csv=csv_path, split="val", output=tmp_path / "a", device="cpu",
                                    figures=False))
    scaled = evaluate_run(EvalConfig(checkpoint=calibrated, csv=csv_path, split="val", output=tmp_path / "b",
                                     device="cpu", figures=False))
    assert plain["temperature"] == 1.0 and scaled["temperature"] == result["temperature"]
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["temperature"] == result["temperature"]
    # the argmax and what follows from it stay
    for key in ("accuracy", "macro_f1", "kappa", "confusion"):
        assert scaled[key] == plain[key], key
    # the loop's probabilities are softmax(logits / T) of its own logits
    records = [r for r in read_csv(csv_path)[0]][:5]
    loader = torch.utils.data.DataLoader(PlaqueDataset(records, size=48), batch_size=2)
    outputs = EvalOutputs()
    evaluate(model, loader, "cpu", outputs=outputs, temperature=2.5)
    np.testing.assert_allclose(outputs.logits, _logits(model, [r.path for r in records]).numpy(), atol=1e-5)
    want = torch.softmax(torch.from_numpy(outputs.logits).double() / 2.5, dim=1).numpy()
    np.testing.assert_allclose(outputs.probs, want, atol=1e-6)


def test_the_calibrate_command(run, tmp_path, capsys):
    root, csv_path, *_ = run
    ckpt = _copy_run(root / "run", tmp_path / "run")
    argv = ["calibrate", "--checkpoint", str(ckpt), "--csv", str(csv_path), "--device", "cpu", "-b", "4"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    t = load_checkpoint(ckpt)["temperature"]
    assert len(out) == 1 and out[0].startswith(f"temperature {t:.4g}: val NLL ") and str(ckpt) in out[0]
    assert not (tmp_path / "run" / "walnet.lock").exists()
    # again: the same temperature (the logits are the same), replacing the first
    assert cli.main(argv) == 0
    assert f", replacing {t:.4g}" in capsys.readouterr().out and load_checkpoint(ckpt)["temperature"] == t


def test_calibrating_on_the_test_split_is_refused(run, tmp_path, capsys):
    root, csv_path, ckpt, *_ = run
    with pytest.raises(ValueError, match="--split test: a temperature fitted on the test split would bias"):
        CalibrateConfig(checkpoint=ckpt, csv=csv_path, split="test")
    before = ckpt.stat().st_mtime_ns
    assert cli.main(["calibrate", "--checkpoint", str(ckpt), "--csv", str(csv_path), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("walnet calibrate: error: --split test:") and len(err.splitlines()) == 1
    assert ckpt.stat().st_mtime_ns == before


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "x", True])
def test_a_bad_temperature_is_refused_naming_the_key(run, tmp_path, bad):
    root, _, ckpt, *_ = run
    state = load_checkpoint(ckpt)
    save_checkpoint(tmp_path / "bad.pt", {**state, "temperature": bad})
    with pytest.raises(CheckpointError, match="'temperature' is not a positive finite number"):
        load_checkpoint(tmp_path / "bad.pt")
    folder = tmp_path / "model"
    export_model(ckpt, folder)
    config = read_config(folder)
    with pytest.raises(ValueError, match="'temperature' must be a positive finite number"):
        check_config({**config, "temperature": bad}, "config.json")
    text = json.dumps({**config, "temperature": bad})  # NaN and inf as JSON writes them: NaN, Infinity
    (folder / "config.json").write_text(text)
    with pytest.raises(ValueError, match="'temperature' must be|is no JSON number"):
        load_model(folder)


def test_the_command_line_builds_the_config(monkeypatch, capsys):
    from dataclasses import fields

    from walnet.engine import calibration

    seen = []
    monkeypatch.setattr(calibration, "calibrate_run", lambda config: seen.append(config) or {
        "temperature": 1.5, "previous": None, "nll_before": 1.0, "nll_after": 0.9, "ece_before": 0.2,
        "ece_after": 0.05, "split": "val", "images": 3, "checkpoint": "c"})
    assert cli.main(["calibrate", "--checkpoint", "c", "--csv", "x"]) == 0
    assert seen.pop() == CalibrateConfig(checkpoint="c", csv="x", split="val", batch_size=16)
    argv = ["calibrate", "--checkpoint", "c", "--data-dir", "d", "--split", "train", "-b", "3", "-j", "1", "--device",
            "cpu", "--skip-bad", "--no-dicom-region"]
    assert cli.main(argv) == 0
    assert seen.pop() == CalibrateConfig(checkpoint="c", data_dir="d", split="train", batch_size=3, workers=1,
                                         device="cpu", skip_bad=True, dicom_region=False)
    parsed = set(vars(cli.build_parser().parse_args(argv[:5]))) - {"command", "run", "debug"}
    assert parsed == {f.name for f in fields(CalibrateConfig)}
    line = "temperature 1.5: val NLL 1.0000 -> 0.9000, ECE 0.2000 -> 0.0500 (3 images); written to c"
    assert capsys.readouterr().out.splitlines()[0] == line
    config = CalibrateConfig(checkpoint="r/best.pt", csv="d.csv", batch_size=2)
    assert CalibrateConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_a_run_folder_another_run_writes_is_not_calibrated(run, tmp_path, capsys):
    root, csv_path, *_ = run
    ckpt = _copy_run(root / "run", tmp_path / "run")
    # a lock of a run on another host: taken as live (its process cannot be checked from here)
    lock = {"pid": 1, "host": "elsewhere", "command": "walnet train"}
    (tmp_path / "run" / "walnet.lock").write_text(json.dumps(lock))
    before = ckpt.read_bytes()
    assert cli.main(["calibrate", "--checkpoint", str(ckpt), "--csv", str(csv_path), "--device", "cpu"]) == 2
    assert "is locked by pid 1 on host elsewhere" in capsys.readouterr().err
    assert ckpt.read_bytes() == before
