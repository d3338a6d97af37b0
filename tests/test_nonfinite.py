"""A model whose outputs are not finite (NaN or inf weights) gives no predictions and no scores:
predict and evaluate stop with one line naming the checkpoint instead of writing a confident
class beside NaN probabilities."""
from __future__ import annotations

import pytest
import torch

from walnet import cli
from walnet.data import phantom, read_csv, save_split, split_indices
from walnet.engine.checkpoint import load_checkpoint, save_checkpoint

from conftest import small_checkpoint


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    root = tmp_path_factory.mktemp("nonfinite")
    csv_path = phantom.generate(root / "ph", n=6, seed=0, size=48)
    ckpt, _ = small_checkpoint(root / "run" / "best.pt")
    records = read_csv(csv_path)[0]  # the run's split, which evaluate scores
    save_split(root / "run" / "split.csv", [r.key for r in records],
               split_indices([r.label for r in records], [r.patient for r in records]))
    state = load_checkpoint(ckpt, map_location="cpu")
    weights = state["model"]
    name = next(k for k in weights if k.startswith("heads.") and k.endswith("weight"))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_checkpoint(ckpt, state)
    return root, ckpt


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_nan_weights_stop_predict_and_evaluate_with_one_line(poisoned, command, tmp_path, capsys):
    root, ckpt = poisoned
    if command == "predict":
        argv = ["predict", "--checkpoint", str(ckpt), str(root / "ph"), "--output", str(tmp_path / "p.csv"),
                "--device", "cpu"]
    else:
        argv = ["evaluate", "--checkpoint", str(ckpt), "--csv", str(root / "ph" / "labels.csv"), "--device", "cpu",
                "--split", "train", "--output", str(tmp_path / "scores"), "--no-figures"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"walnet {command}: error: checkpoint {ckpt}: the model's outputs are not finite: its weights "
                   "hold NaN or inf; no result was written\n")
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "scores" / "metrics.json").exists()
