"""``walnet export`` and the loading side: a checkpoint built in the test (no training) becomes a
model folder (safetensors, config.json, model card, pt2, ONNX); load_pretrained /
WALNet.from_pretrained, torch.export.load and onnxruntime give the eager model's outputs, and
``walnet predict --model`` the same CSV as ``--checkpoint``.

Tolerances: the safetensors folder and the pt2 program run the same kernels on the same weights,
so their outputs are compared with atol 1e-6 (they are equal in practice); onnxruntime computes
with its own kernels (and walnet's reference ops), compared with atol 1e-4 + rtol 1e-4."""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import walnet
from walnet import cli
from walnet.data import phantom, save_split
from walnet.engine import export
from walnet.engine.config import ExportConfig, PredictConfig
from walnet.engine.export import export_model
from walnet.models import load_pretrained
from walnet.models.pretrained import read_config

from conftest import CLASSES, small_checkpoint

SIZE = 64
HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in export.ONNX_PACKAGES)
#: A metrics.json as `walnet evaluate` writes it (numbers made up for the model card).
METRICS = {"accuracy": 0.8125, "macro_f1": 0.7777, "macro_precision": 0.79, "macro_recall": 0.76, "kappa": 0.6543,
           "auc_per_class": {"hyperechoic": 0.91, "hypoechoic": 0.88, "mixed-echoic": float("nan")},
           "auc_micro": 0.8999, "confusion": [[3, 1, 0], [0, 6, 1], [1, 0, 4]], "class_names": CLASSES,
           "seg_iou": 0.4242, "split": "test", "images": 16, "checkpoint": "best.pt", "epoch": 0}


def _eager(model, x):
    with torch.no_grad():
        out = model(x)
    return out.logits, out.seg_logits


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A WAL-Net checkpoint with metrics.json and split.csv beside it, exported in every format
    (ONNX where its packages are installed): (checkpoint, eager model, folder)."""
    root = tmp_path_factory.mktemp("export")
    ckpt, model = small_checkpoint(root / "run" / "best.pt", size=SIZE)
    (root / "run" / "metrics.json").write_text(json.dumps(METRICS))
    save_split(root / "run" / "split.csv", [str(root / f"{k}.png") for k in range(10)], ["train"] * 6 + ["val"] * 2
               + ["test"] * 2)
    formats = ("safetensors", "pt2") + (("onnx",) if HAS_ONNX else ())
    summary = export_model(ckpt, root / "model", formats=formats, device="cpu")
    assert summary["output"] == str(root / "model") and summary["model"] == "walnet" and summary["epoch"] == 0
    return ckpt, model, root / "model"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    phantom.generate(root / "ph", n=6, seed=0, size=SIZE)
    return root / "ph" / "images"


def _input(batch=2, seed=1):
    return torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# --- what is written -----------------------------------------------------------------------------


def test_folder_holds_the_files_and_config(exported):
    ckpt, _, folder = exported
    names = {"model.safetensors", "config.json", "README.md", "model.pt2"} | ({"model.onnx"} if HAS_ONNX else set())
    assert {p.name for p in folder.iterdir()} == names  # and no temporaries left behind
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "walnet-model" and config["format_version"] == 1
    assert config["model"] == "walnet" and config["backbone"] == "resnet18"
    assert config["kwargs"] == dict(backbone="resnet18", attention_channels=8, roi_method="dilated_crop",
                                    use_rcm=True, use_pgm=True, rcm_warmup_epochs=1)
    assert config["num_classes"] == 3 and config["classes"] == CLASSES
    inp = config["input"]
    assert inp["size"] == SIZE and inp["channels"] == "RGB" and inp["value_range"] == [0, 1]
    # the model normalises itself, with its backbone's (ImageNet's) statistics, which config.json records
    assert inp["mean"] == [0.485, 0.456, 0.406] and inp["std"] == [0.229, 0.224, 0.225]
    assert "inside the model" in inp["normalization"] and "do not normalise" in inp["normalization"]
    assert config["walnet_version"] == walnet.__version__ and config["torch_version"] == torch.__version__
    assert config["checkpoint"] == {"path": str(ckpt), "epoch": 0}
    assert set(config["files"]) == names
    pt2 = config["formats"]["pt2"]
    assert pt2["example_input_shape"] == [2, 3, SIZE, SIZE] and pt2["dynamic_batch"] is True
    # per level: a program may run on CUDA, where the one-pass RCM is a preview kernel
    assert pt2["walnet_ops"] == ["walnet::crop_resize", "walnet::mask_boxes"]
    if HAS_ONNX:
        assert config["formats"]["onnx"]["opset"] == export.ONNX_OPSET
    assert read_config(folder) == config


def _wilson(k, n):
    """scipy's 95% Wilson interval of k of n as the model card prints it."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return f"[{ci.low:.3f}, {ci.high:.3f}]"


def test_model_card_reports_the_runs_metrics(exported):
    ckpt, _, folder = exported
    card = (folder / "README.md").read_text()
    for text in ("# walnet: carotid plaque classifier", "0 `hyperechoic`, 1 `hypoechoic`, 2 `mixed-echoic`",
                 f"[N, 3, {SIZE}, {SIZE}]", "The model normalises the input itself",
                 "mean [0.485, 0.456, 0.406] and std [0.229, 0.224, 0.225]", "**not a medical device**",
                 "the CSV `labels.csv`", "train 6 images, val 2 images, test 2 images",
                 "**test** split (16 images)", "| accuracy | 0.812 |", "| macro F1 | 0.778 |",
                 "| Cohen's kappa | 0.654 |", "| ROC-AUC (micro) | 0.900 |", "| predicted-mask IoU | 0.424 |",
                 f"| hypoechoic | 7 | 0.857 | 0.857 {_wilson(6, 7)} | 0.889 {_wilson(8, 9)} | 0.880 |",
                 f"| mixed-echoic | 5 | 0.800 | 0.800 {_wilson(4, 5)} | 0.909 {_wilson(10, 11)} | n/a |",
                 "not a validated segmentation", "Domain shift", "WALNet.from_pretrained", "torch.export.load",
                 "onnxruntime" if HAS_ONNX else "load_pretrained"):
        assert text in card, text
    assert "No evaluation was found" not in card


def test_model_card_without_metrics_says_so(exported, tmp_path):
    ckpt, _, _ = exported
    shutil.copy(ckpt, tmp_path / "best.pt")  # a run folder without metrics.json or split.csv
    export_model(tmp_path / "best.pt", tmp_path / "model")
    card = (tmp_path / "model" / "README.md").read_text()
    assert "No evaluation was found: there is no metrics.json next to the checkpoint" in card
    assert f"walnet evaluate --checkpoint {tmp_path / 'best.pt'} --csv labels.csv" in card
    assert "no `split.csv` next to the checkpoint" in card
    assert {p.name for p in (tmp_path / "model").iterdir()} == {"model.safetensors", "config.json", "README.md"}


# --- loading -------------------------------------------------------------------------------------


def test_safetensors_round_trip(exported):
    _, model, folder = exported
    x = _input()
    want = _eager(model, x)
    for loaded in (load_pretrained(folder), walnet.WALNet.from_pretrained(folder, device="cpu")):
        assert isinstance(loaded, walnet.WALNet) and not loaded.training
        for a, b in zip(want, _eager(loaded, x)):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_loading_needs_no_pickle(exported, monkeypatch):
    _, model, folder = exported

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling while loading an exported model")

    for owner, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(owner, name, refuse)
    loaded = load_pretrained(folder)
    x = _input(1)
    torch.testing.assert_close(_eager(loaded, x)[0], _eager(model, x)[0], rtol=0, atol=1e-6)


def test_pt2_round_trip_keeps_walnets_ops(exported):
    _, model, folder = exported
    program = torch.export.load(folder / "model.pt2")
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {t for t in targets if t.startswith("walnet.")} == {"walnet.crop_resize.default",
                                                                 "walnet.mask_boxes.default"}
    module = program.module()
    for batch in (1, 3):  # the batch dimension is dynamic
        x = _input(batch)
        with torch.no_grad():
            got = module(x)
        assert len(got) == 2
        for a, b in zip(_eager(model, x), got):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


@pytest.mark.skipif(not HAS_ONNX, reason="needs the onnx extra (onnx, onnxscript)")
def test_onnx_matches_the_eager_model(exported):
    ort = pytest.importorskip("onnxruntime")
    _, model, folder = exported
    config = read_config(folder)
    assert config["formats"]["onnx"]["checked"]["atol"] == export.ONNX_ATOL  # checked during the export
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "seg_logits"]
    for batch in (1, 4):
        x = _input(batch, seed=7)
        got = session.run(None, {"image": x.numpy()})
        for a, b in zip(_eager(model, x), got):
            np.testing.assert_allclose(b, a.numpy(), rtol=1e-4, atol=1e-4)


def test_a_baseline_exports_and_loads(tmp_path):
    ckpt, model = small_checkpoint(tmp_path / "run" / "best.pt", "resnest", size=SIZE)
    export_model(ckpt, tmp_path / "model")
    config = read_config(tmp_path / "model")
    assert config["model"] == "resnest" and config["kwargs"] == {} and config["backbone"] == "resnest50d"
    loaded = load_pretrained(tmp_path / "model")
    x = _input(1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)
    card = (tmp_path / "model" / "README.md").read_text()
    assert "baseline `resnest`: the timm classifier `resnest50d`" in card and "from_pretrained" not in card
    with pytest.raises(ValueError, match="holds the baseline 'resnest', not a WAL-Net; load it with "
                                         "walnet.models.load_pretrained"):
        walnet.WALNet.from_pretrained(tmp_path / "model")


# --- the command line ----------------------------------------------------------------------------


def test_cli_export_then_predict_from_the_folder(exported, images, tmp_path, capsys):
    ckpt, _, _ = exported
    assert cli.main(["export", "--checkpoint", str(ckpt), "--output", str(tmp_path / "m")]) == 0
    assert f"exported walnet (epoch 0) to {tmp_path / 'm'}: model.safetensors, config.json, README.md" \
        in capsys.readouterr().out
    assert cli.main(["predict", "--model", str(tmp_path / "m"), str(images), "--output", str(tmp_path / "a.csv"),
                     "--masks", str(tmp_path / "masks"), "--device", "cpu"]) == 0
    assert cli.main(["predict", "--checkpoint", str(ckpt), str(images), "--output", str(tmp_path / "b.csv"),
                     "--device", "cpu"]) == 0
    a, b = (tmp_path / "a.csv").read_text().splitlines(), (tmp_path / "b.csv").read_text().splitlines()
    assert len(a) == 7 and [row.rsplit(",", 1)[0] for row in a] == b  # the same rows, plus the mask column
    assert len(list((tmp_path / "masks").rglob("*.png"))) == 6  # in the class folders, as the input tree


def test_cli_export_options_reach_the_config(monkeypatch):
    seen = []
    summary = dict(output="o", files=[], model="walnet", epoch=0, formats={}, onnx_checked=None)
    monkeypatch.setattr(export, "export_model", lambda config: seen.append(config) or summary)
    assert cli.main(["export", "--checkpoint", "c.pt", "--output", "o"]) == 0
    assert cli.main(["export", "--checkpoint", "c.pt", "--output", "o", "--format", "onnx, PT2", "--overwrite",
                     "--device", "auto"]) == 0
    assert seen == [ExportConfig(checkpoint="c.pt", output="o"),
                    ExportConfig(checkpoint="c.pt", output="o", formats=("safetensors", "pt2", "onnx"),
                                 overwrite=True, device="auto")]
    assert seen[0].formats == ("safetensors",) and seen[1].formats == ("safetensors", "pt2", "onnx")


# --- errors --------------------------------------------------------------------------------------


def test_an_existing_export_is_kept_without_overwrite(exported, tmp_path, capsys):
    ckpt, _, _ = exported
    out = tmp_path / "m"
    out.mkdir()
    (out / "model.pt2").write_text("an earlier export")
    (out / "notes.txt").write_text("the user's")
    argv = ["export", "--checkpoint", str(ckpt), "--output", str(out)]
    assert cli.main(argv) == 2
    assert (f"walnet export: error: --output {out} already holds model.pt2; pass --overwrite to replace the export "
            "there") in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["model.pt2", "notes.txt"]
    # --overwrite replaces the export, drops the earlier one's other formats, keeps other files
    assert cli.main(argv + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors", "notes.txt"]
    assert cli.main(argv) == 2
    assert "already holds model.safetensors, config.json, README.md" in capsys.readouterr().err


def test_export_usage_errors(exported, tmp_path, capsys, monkeypatch):
    ckpt, _, _ = exported
    out = tmp_path / "m"
    assert cli.main(["export", "--checkpoint", str(ckpt), "--output", str(out), "--format", "pt2,tflite"]) == 2
    assert ("walnet export: error: --format: unknown format 'tflite'; choose from safetensors, pt2, onnx "
            "(comma-separated)") in capsys.readouterr().err
    assert cli.main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--output", str(out)]) == 2
    assert f"checkpoint {tmp_path / 'nope.pt'} does not exist" in capsys.readouterr().err
    # the onnx extra missing: one line naming what to install, before anything is written
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    assert cli.main(["export", "--checkpoint", str(ckpt), "--output", str(out), "--format", "onnx"]) == 2
    assert ("walnet export: error: --format onnx needs onnx and onnxscript (not installed: onnxscript); "
            "pip install 'walnet[onnx]'\n") in capsys.readouterr().err
    assert not out.exists()


def _copy(folder: Path, to: Path) -> Path:
    to.mkdir()
    shutil.copy(folder / "config.json", to / "config.json")
    os.symlink(folder / "model.safetensors", to / "model.safetensors")
    return to


def test_loading_errors_name_the_file(exported, tmp_path):
    _, _, folder = exported
    with pytest.raises(FileNotFoundError, match=f"model folder {tmp_path / 'nope'} does not exist"):
        load_pretrained(tmp_path / "nope")
    no_config = _copy(folder, tmp_path / "no_config")
    (no_config / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=f"{no_config / 'config.json'} does not exist"):
        load_pretrained(no_config)
    no_weights = _copy(folder, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors does not exist"):
        walnet.WALNet.from_pretrained(no_weights)
    config = json.loads((folder / "config.json").read_text())
    for name, text, message in (
        ("corrupt", '{"format": "walnet-model", ', r"config.json is not valid JSON \(Expecting"),
        ("other", json.dumps({**config, "format": "other-model"}),
         r"config.json is not a walnet model config \(its \"format\" is 'other-model'"),
        ("newer", json.dumps({**config, "format_version": 2}), "config.json is format_version 2; walnet .* reads "
                                                                "version 1"),
        ("classes", json.dumps({**config, "classes": CLASSES[:2]}), "'classes' must be a list of 3 class names"),
        ("kwargs", json.dumps({**config, "kwargs": {**config["kwargs"], "colour": 1}}),
         r"config.json: 'kwargs' holds the unknown key 'colour' \(known: backbone, "),
        ("misfit", json.dumps({**config, "kwargs": {**config["kwargs"], "attention_channels": 16}}),
         r"model.safetensors does not fit the model its config.json describes \(WALNet\): 9 shape\(s\) differ, "
         r"e.g. gates.0.theta.weight \[8, 64, 1, 1\] in the file"),
    ):
        bad = _copy(folder, tmp_path / name)
        (bad / "config.json").write_text(text)
        with pytest.raises(ValueError, match=message):
            load_pretrained(bad)
    with pytest.raises(ValueError, match="is a file, not a model folder"):
        load_pretrained(folder / "config.json")


def test_a_folder_without_the_normalisation_buffers_is_refused(exported, tmp_path):
    """Weights without ``input_mean`` / ``input_std`` do not fit the model config.json
    describes: an error naming the file and the missing buffers, from both loaders."""
    _, _, folder = exported
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(folder / "config.json", old / "config.json")
    weights = safetensors.torch.load_file(folder / "model.safetensors")
    safetensors.torch.save_file({k: v for k, v in weights.items() if not k.startswith("input_")},
                                old / "model.safetensors")
    for load in (load_pretrained, walnet.WALNet.from_pretrained):
        with pytest.raises(ValueError, match=re.escape(f"{old / 'model.safetensors'} does not fit the model") +
                           r".*2 parameter\(s\) missing, e\.g\. input_mean"):
            load(old)


def test_predict_takes_exactly_one_model(exported, images, tmp_path, capsys):
    ckpt, _, folder = exported
    out = str(tmp_path / "p.csv")
    for argv, message in (
        (["--checkpoint", str(ckpt), "--model", str(folder)],
         "argument --model: not allowed with argument --checkpoint"),
        ([], "one of the arguments --checkpoint --model is required"),
    ):
        with pytest.raises(SystemExit) as exit_info:  # usage errors: argparse exits
            cli.main(["predict", *argv, str(images), "--output", out])
        assert exit_info.value.code == 2 and f"walnet predict: error: {message}" in capsys.readouterr().err
    for given in (dict(checkpoint=str(ckpt), model=str(folder)), {}):
        with pytest.raises(ValueError, match=r"give exactly one of checkpoint \(--checkpoint\) and model \(--model\)"):
            PredictConfig(inputs=[str(images)], output=out, **given)
    assert cli.main(["predict", "--model", str(tmp_path / "nope"), str(images), "--output", out]) == 2
    assert f"model folder {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
