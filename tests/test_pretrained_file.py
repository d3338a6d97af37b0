"""``walnet train --pretrained-file``: the backbone starts from a local weights file (torch.save
or safetensors), a trained model is rebuilt without it, and a file that does not fit is one line
before any epoch."""
from __future__ import annotations

import pytest
import torch

from walnet.engine import trainer
from walnet.engine.config import TrainConfig
from walnet.engine.loading import load_model
from walnet.engine.trainer import train

from train_runs import phantom_data, run_config, train_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantom_data(tmp_path_factory)


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """A resnet18 state dict saved with torch.save (what timm's plain model holds, classifier
    included), and the same as safetensors: pretrained weights that need no download."""
    import safetensors.torch
    import timm

    torch.manual_seed(123)
    weights = timm.create_model("resnet18").state_dict()
    folder = tmp_path_factory.mktemp("weights")
    torch.save(weights, folder / "resnet18.pth")
    safetensors.torch.save_file(weights, folder / "resnet18.safetensors")
    return folder / "resnet18.pth", folder / "resnet18.safetensors", weights


def _assert_encoder_holds(model, weights):
    encoder = model.encoder.state_dict()
    assert set(encoder) == {k for k in weights if not k.startswith("fc.")}
    for name, tensor in encoder.items():
        assert torch.equal(tensor, weights[name]), name


def test_pretrained_file_sets_the_encoders_initial_weights(data, tmp_path, resnet18_file, monkeypatch):
    pth, safetensors_file, weights = resnet18_file
    for path in (pth, safetensors_file):  # both formats timm reads
        config = run_config(data, tmp_path / "unused", pretrained_file=path)
        model = trainer._create_model(config, config.model_spec())
        _assert_encoder_holds(model, weights)
    # a run starts from them: the model its first step trains, as _create_model built it
    built = []

    def spy(config, spec):
        model = real(config, spec)
        built.append({k: v.clone() for k, v in model.encoder.state_dict().items()})
        return model

    real = trainer._create_model
    monkeypatch.setattr(trainer, "_create_model", spy)
    run = tmp_path / "run"
    train(run_config(data, run, epochs=1, pretrained_file=pth))
    assert len(built) == 1
    for name, tensor in built[0].items():
        assert torch.equal(tensor, weights[name]), name
    args = TrainConfig.from_dict(__import__("json").loads((run / "args.json").read_text()))
    assert args.pretrained_file == str(pth) and args.pretrained  # the file implies --pretrained


def test_a_trained_model_is_rebuilt_without_the_pretrained_file(data, tmp_path, resnet18_file, monkeypatch):
    """evaluate / predict / export rebuild the model from its checkpoint, which holds every
    weight: the file is not read again (it may be gone)."""
    import shutil

    from walnet.models import backbone

    copy = tmp_path / "weights.pth"
    shutil.copy(resnet18_file[0], copy)
    run = tmp_path / "run"
    train(run_config(data, run, epochs=1, pretrained_file=copy))
    copy.unlink()
    calls = []
    real = backbone.create_timm
    monkeypatch.setattr(backbone, "create_timm", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    model = load_model(run / "best.pt").model
    assert calls and all(kw.get("pretrained_file") is None and not kw.get("pretrained") for kw in calls)
    saved = torch.load(run / "best.pt", weights_only=True)["model"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_a_pretrained_file_that_does_not_fit_is_one_line_before_any_epoch(data, tmp_path, resnet18_file, capsys):
    import timm

    from walnet import cli

    torch.manual_seed(0)
    other = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34").state_dict(), other)
    not_weights = tmp_path / "notes.pth"
    not_weights.write_text("not a state dict")
    missing = tmp_path / "nope.pth"
    for path, message in (
        (other, rf"--pretrained-file {other}: does not hold weights of the backbone resnet18: "
                r"\d+ unexpected weight\(s\), e.g. layer1.2.conv1.weight$"),
        (missing, rf"--pretrained-file {missing}: does not exist$"),
        (tmp_path, rf"--pretrained-file {tmp_path}: is a folder, not a weights file$"),
        (not_weights, rf"--pretrained-file {not_weights}: cannot be read as a state dict"),
    ):
        run = tmp_path / f"run-{path.name}"
        with pytest.raises(ValueError, match=message):
            train(run_config(data, run, epochs=1, pretrained_file=path))
        assert not (run / "metrics.csv").exists() and not (run / "last.pt").exists()
    # the command line: one line naming the option, exit status 2
    assert cli.main(train_args(data, tmp_path / "cli", "--epochs", "1", "--pretrained-file", str(other))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"walnet train: error: --pretrained-file {other}: does not hold")
    with pytest.raises(ValueError, match="--pretrained-file must not be empty"):
        run_config(data, tmp_path / "x", pretrained_file="")
