"""A model folder is data: config.json is checked against its schema (walnet.models.schema), so
a folder names no hub backbone, no file to read and no size that exhausts memory, its class names
are safe in predict's CSV, and every refusal is one ValueError starting with the config.json path,
from load_pretrained, load_model and WALNet.from_pretrained alike, with the network blocked.
Backbones are names timm lists locally wherever a model is built; the export records and
predict reuses the run's --no-dicom-region."""
from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest
import torch
from PIL import Image

from walnet import cli
from walnet.engine.checkpoint import save_checkpoint
from walnet.engine.config import TrainConfig
from walnet.engine.export import export_model
from walnet.engine.loading import load_model
from walnet.models import WALNet, create_model, load_pretrained
from walnet.models.backbone import check_pretrained_file

from conftest import small_checkpoint

SIZE = 48
LOADERS = {"load_pretrained": load_pretrained, "load_model": lambda f: load_model(f).model,
           "from_pretrained": WALNet.from_pretrained}
HUB_NAMES = ("hf-hub:timm/resnet18.a1_in1k", "hf_hub:timm/resnet18.a1_in1k", "local-dir:/tmp/resnet18",
             "/etc/passwd", "timm/resnet18", "../resnet18")


def block_network(monkeypatch) -> None:
    """Any connection or name lookup fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access: {args[1:] or args}")

    for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "create_connection"),
                        (socket, "getaddrinfo")):
        monkeypatch.setattr(owner, name, refuse)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    block_network(monkeypatch)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small WAL-Net's checkpoint and its exported folder."""
    root = tmp_path_factory.mktemp("schema")
    ckpt, _ = small_checkpoint(root / "run" / "best.pt", size=SIZE)
    export_model(ckpt, root / "model")
    return ckpt, root / "model"


def variant(folder: Path, to: Path, config: dict | None = None, text: str | None = None) -> Path:
    """A folder at `to` with the weights of `folder` and `config` (or the raw `text`) as its config.json."""
    to.mkdir()
    os.symlink(folder / "model.safetensors", to / "model.safetensors")
    (to / "config.json").write_text(json.dumps(config) if text is None else text, encoding="utf-8")
    return to


def assert_refused(folder: Path, message: str, loaders=LOADERS) -> None:
    """Every loader refuses `folder` with one line starting with its config.json and matching `message`."""
    for name, load in loaders.items():
        with pytest.raises(ValueError) as info:
            load(folder)
        text = str(info.value)
        assert text.startswith(f"{folder / 'config.json'}"), (name, text)
        assert "\n" not in text and re.search(message, text), (name, text)


def _config(exported) -> dict:
    return json.loads((exported[1] / "config.json").read_text())


def test_a_hub_backbone_in_config_json_is_refused_offline(exported, tmp_path, capsys):
    config = _config(exported)
    for i, name in enumerate(HUB_NAMES):
        bad = variant(exported[1], tmp_path / f"kw{i}", {**config, "kwargs": {**config["kwargs"], "backbone": name}})
        assert_refused(bad, r": 'kwargs\.backbone': backbone .* is not a timm model name: walnet builds models timm "
                            "lists locally")
        top = variant(exported[1], tmp_path / f"top{i}", {**config, "backbone": name})
        assert_refused(top, r": 'backbone': backbone .* is not a timm model name")
    out, image = tmp_path / "p.csv", tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.new("RGB", (40, 32), (90, 90, 90)).save(image)
    assert cli.main(["predict", "--model", str(bad), str(image), "--output", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"walnet predict: error: {bad / 'config.json'}: 'kwargs.backbone'")
    assert not out.exists()


@pytest.mark.parametrize("backbone", [*HUB_NAMES, None, 123, "", "nonexistent", "resnet18.bogus"])
def test_walnet_and_create_model_refuse_what_timm_does_not_list(backbone):
    builds = [lambda: WALNet(backbone=backbone, attention_channels=8),
              lambda: create_model("walnet", backbone=backbone, attention_channels=8)]
    if isinstance(backbone, str) and backbone:  # the command line's --backbone: refused before training
        builds.append(lambda: TrainConfig(csv="x.csv", output="o", backbone=backbone).model_spec())
    for build in builds:
        with pytest.raises(ValueError, match=r"^(--backbone: )?backbone"):
            build()


def test_a_backbone_without_four_growing_stages_is_refused_at_construction():
    # a ViT gives four blocks of one stride: the decoder and the RCM need growing strides
    with pytest.raises(ValueError, match=r"backbone 'vit_tiny_patch16_224' has no four feature stages at growing "
                                         r"strides \(its stages' strides: 16, 16, 16, 16\)"):
        WALNet(backbone="vit_tiny_patch16_224", attention_channels=8)
    assert WALNet(backbone="resnet18.a1_in1k", attention_channels=8).encoder is not None  # a tag: no download


def test_create_model_needs_two_or_more_classes():
    for name, num_classes in (("dpn", 0), ("dpn", 1), ("walnet", 1), ("resnest", True), ("walnet", "3")):
        message = f"^num_classes must be an integer >= 2, got {re.escape(repr(num_classes))}"
        with pytest.raises(ValueError, match=message):
            create_model(name, num_classes=num_classes, backbone="resnet18") if name == "walnet" else \
                create_model(name, num_classes=num_classes)
    with pytest.raises(ValueError, match="use_pgm must be True or False, got 'no'"):
        WALNet(backbone="resnet18", use_pgm="no")


def test_from_pretrained_reads_the_folder_like_load_pretrained(exported, tmp_path):
    config = _config(exported)
    baseline = variant(exported[1], tmp_path / "baseline", {**config, "model": "dpn", "kwargs": {},
                                                            "backbone": "dpn68b"})
    assert_refused(baseline, r"holds the baseline 'dpn', not a WAL-Net; load it with walnet.models.load_pretrained",
                   {"from_pretrained": WALNet.from_pretrained})
    for key, value in (("pretrained_file", "/etc/passwd"), ("pretrained", True)):
        bad = variant(exported[1], tmp_path / key, {**config, "kwargs": {**config["kwargs"], key: value}})
        assert_refused(bad, f"'kwargs' holds '{key}': a model folder holds every weight and never names pretrained")


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


#: (id, a change of the exported config, what the error says); each refused by every loader.
BAD_CONFIGS = [
    ("use_pgm-string", {"kwargs": {"use_pgm": "no"}}, r"'kwargs\.use_pgm' must be true or false, got 'no'"),
    ("use_rcm-int", {"kwargs": {"use_rcm": 1}}, r"'kwargs\.use_rcm' must be true or false, got 1"),
    ("size-1", {"input": {"size": 1}}, r"'input\.size' must be an integer in 16\.\.2048, got 1$"),
    ("size-60000", {"input": {"size": 60000}}, r"'input\.size' must be an integer in 16\.\.2048, got 60000"),
    ("size-2**31", {"input": {"size": 2**31}}, r"'input\.size' must be an integer in 16\.\.2048, got 2147483648"),
    ("size-float", {"input": {"size": 48.0}}, r"'input\.size' must be an integer"),
    ("size-bool", {"input": {"size": True}}, r"'input\.size' must be an integer"),
    ("channels-0", {"kwargs": {"attention_channels": 0}}, r"'kwargs\.attention_channels' must be an integer in 1\.\."),
    ("channels-huge", {"kwargs": {"attention_channels": 10**6}}, r"'kwargs\.attention_channels' must be an integer"),
    ("warmup-negative", {"kwargs": {"rcm_warmup_epochs": -1}}, r"'kwargs\.rcm_warmup_epochs' must be an integer"),
    ("roi-method", {"kwargs": {"roi_method": "tight"}}, r"'kwargs\.roi_method' must be one of"),
    ("kwargs-unknown", {"kwargs": {"hook": "os.system"}}, r"'kwargs' holds the unknown key 'hook'"),
    ("top-unknown", {"post_load": "x"}, r": holds the unknown key 'post_load'"),
    ("input-unknown", {"input": {"url": "http://x"}}, r"'input' holds the unknown key 'url'"),
    ("dicom-region-string", {"input": {"dicom_region": "no"}}, r"'input\.dicom_region' must be true or false"),
    ("mean-string", {"input": {"mean": "imagenet"}}, r"'input\.mean' must be a list of 3 numbers"),
    ("std-zero", {"input": {"std": [0, 1, 1]}}, r"'input\.std' must be a list of 3 positive numbers"),
    ("shape", {"input": {"shape": ["N", 3, 4096, 4096]}}, r"'input\.shape' must be \['N', 3, 48, 48\]"),
    ("model-unknown", {"model": "walnet_tiny"}, r"'model' must be one of \['walnet'"),
    ("model-int", {"model": 3}, r"'model' must be one of"),
    ("num-classes-1", {"num_classes": 1, "classes": ["a"]}, r"'num_classes' must be an integer in 2\.\.1000, got 1"),
    ("num-classes-bool", {"num_classes": True}, r"'num_classes' must be an integer in 2\.\.1000, got True"),
    ("classes-count", {"classes": ["a", "b"]}, r"'classes' must be a list of 3 class names"),
    ("classes-formula", {"classes": ["=cmd|' /C calc'!A0", "b", "c"]},
     r"'classes'\[0\] must not start with =, \+, - or @ \(a spreadsheet would read it as a formula\)"),
    ("classes-plus", {"classes": ["a", "+1", "c"]}, r"'classes'\[1\] must not start with ="),
    ("classes-minus", {"classes": ["a", "b", "-2+3"]}, r"'classes'\[2\] must not start with ="),
    ("classes-at", {"classes": ["@SUM(A1)", "b", "c"]}, r"'classes'\[0\] must not start with ="),
    ("classes-tab", {"classes": ["\t=1", "b", "c"]}, r"'classes'\[0\] must be printable"),
    ("classes-cr", {"classes": ["a\r", "b", "c"]}, r"'classes'\[0\] must be printable"),
    ("classes-space", {"classes": [" =1", "b", "c"]}, r"'classes'\[0\] must not start or end with a space"),
    ("classes-long", {"classes": ["x" * 65, "b", "c"]}, r"'classes'\[0\] must have 1 to 64 characters"),
    ("classes-empty", {"classes": ["", "b", "c"]}, r"'classes'\[0\] must have 1 to 64 characters"),
    ("classes-int", {"classes": [1, "b", "c"]}, r"'classes'\[0\] must be a string"),
    ("classes-twice", {"classes": ["Mixed", "b", "mixed"]}, r"'classes' names 'Mixed' and 'mixed': class names must "
                                                            "differ, ignoring case"),
    ("backbone-mismatch", {"backbone": "resnet34"}, r": 'backbone' is 'resnet34', but the model it describes"),
    ("format-version-bool", {"format_version": True}, r" is format_version True; walnet .* reads version 1"),
    ("checkpoint-epoch", {"checkpoint": {"path": "x", "epoch": -1}}, r"'checkpoint\.epoch' must be an integer"),
    ("formats-unknown", {"formats": {"tflite": {}}}, r"'formats' holds the unknown key 'tflite'"),
]


def _changed(config: dict, change: dict) -> dict:
    out = dict(config)
    for key, value in change.items():
        out[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) \
            and key != "formats" else value
    return out


@pytest.mark.parametrize("change,message", [pytest.param(c, m, id=i) for i, c, m in BAD_CONFIGS])
def test_config_json_breaking_the_schema_is_one_line_naming_it(exported, tmp_path, change, message):
    assert_refused(variant(exported[1], tmp_path / "bad", _changed(_config(exported), change)), message)


def _text_cases(config: dict) -> list:
    good = json.dumps(config)
    body = good[1:]
    return [
        ("deep", good.replace('"classes": [', f'"classes": [{_nested(100_000)}, ', 1), r" nests deeper than 6 levels"),
        ("deeper-than-6", good.replace('"classes": [', f'"classes": [{_nested(8)}, ', 1), r" nests deeper than 6"),
        ("huge", good.replace('"channels": "RGB"', '"channels": "' + "x" * (1 << 21) + '"', 1),
         r" is larger than 1048576 bytes: not a walnet model config"),
        ("duplicate-key", '{"model": "dpn", ' + body, r" is not a walnet model config: key 'model' given twice"),
        ("nan", good.replace('"mean": [0.485', '"mean": [NaN', 1), r"not a walnet model config: NaN is no JSON number"),
        ("inf", good.replace('"mean": [0.485', '"mean": [1e999', 1), r"not a walnet model config: number 1e999 is out"),
        ("long-int", good.replace('"size": 48', '"size": ' + "9" * 5000, 1), r" is not a walnet model config: "),
        ("latin-1", good.replace('"hypoechoic"', '"hypo\xe9choic"').encode("latin-1"),
         r" is not a walnet model config: not UTF-8 text"),
    ]


def test_config_json_text_that_is_no_config_is_one_line_naming_it(exported, tmp_path):
    for name, text, message in _text_cases(_config(exported)):
        to = variant(exported[1], tmp_path / name, text="")
        (to / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        assert_refused(to, message)


def test_export_refuses_classes_its_readers_would_refuse(exported, tmp_path):
    ckpt, _ = exported
    state = torch.load(ckpt, weights_only=True)
    save_checkpoint(tmp_path / "formula.pt", {**state, "classes": ["=1+1", "b", "c"]})
    with pytest.raises(ValueError, match=r"^checkpoint .*formula\.pt cannot be exported: its config\.json: "
                                         r"'classes'\[0\] must not start with =.*; nothing was written$"):
        export_model(tmp_path / "formula.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_records_and_predict_reuses_dicom_region(tmp_path):
    """A run trained with --no-dicom-region: its folder says so, and predict --model reads a
    DICOM image whole, as --checkpoint does."""
    ckpt, _ = small_checkpoint(tmp_path / "run" / "best.pt", size=SIZE, dicom_region=False)
    export_model(ckpt, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["input"]["dicom_region"] is False
    assert load_model(tmp_path / "model").dicom_region is False and load_model(ckpt).dicom_region is False
    del config["input"]["dicom_region"]  # a folder exported before the key: cropped, the default
    assert load_model(variant(tmp_path / "model", tmp_path / "old", config)).dicom_region is True
    pytest.importorskip("pydicom", reason="the DICOM part needs the dicom extra")
    from test_dicom import _gray16, write_dicom

    (tmp_path / "in").mkdir()
    write_dicom(tmp_path / "in" / "one.dcm", _gray16(), bits_stored=12, region=(2, 2, 20, 25))
    rows = {}
    for flag, source in (("--checkpoint", ckpt), ("--model", tmp_path / "model")):
        out = tmp_path / f"{flag.strip('-')}.csv"
        assert cli.main(["predict", flag, str(source), str(tmp_path / "in"), "--output", str(out), "--device",
                         "cpu"]) == 0
        rows[flag] = out.read_text()
    assert rows["--model"] == rows["--checkpoint"]


def test_a_pretrained_file_that_is_no_state_dict_is_one_line(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    for path in (passwd, Path("/etc/passwd")):
        if path.is_file():
            with pytest.raises(ValueError, match=f"^pretrained_file {re.escape(str(path))} cannot be read as a state "
                                                 r"dict \([^\n]*\)$"):
                check_pretrained_file(path, "resnet18")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_a_fifo_in_a_model_folder_is_named_as_one_not_as_missing(exported, tmp_path, name):
    """A FIFO is never opened (reading it would wait for a writer) and is no missing file: the
    error names it and says what it is."""
    folder = tmp_path / "model"
    folder.mkdir()
    for part in ("config.json", "model.safetensors"):
        if part == name:
            os.mkfifo(folder / part)
        else:
            os.symlink(exported[1] / part, folder / part)
    for loader, load in LOADERS.items():
        with pytest.raises(ValueError) as info:
            load(folder)
        text = str(info.value)
        assert text == (f"{folder / name} is a FIFO (named pipe), not a regular file; a model folder holds its "
                        f"{name} as a file"), (loader, text)
