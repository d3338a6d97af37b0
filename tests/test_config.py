"""The run configs (:mod:`walnet.engine.config`): the command line builds exactly them, they
check their values, survive JSON, read old checkpoints' args, and the engine never imports the
command line."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest

from walnet import cli
from walnet.engine import demo, evaluation, export, predict, trainer
from walnet.engine.config import DemoConfig, EvalConfig, ExportConfig, PredictConfig, TrainConfig
from walnet.engine.config_fields import flag_of
from walnet.engine.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "walnet" / "engine"


def _built(monkeypatch, module, name, argv, result=None):
    """The config that ``walnet <argv>`` hands to ``module.name`` (replaced by a recorder)."""
    seen = []
    monkeypatch.setattr(module, name, lambda *a, **kw: seen.append((a, kw)) or result)
    assert cli.main(argv) == 0
    assert len(seen) == 1 and not seen[0][1]
    return seen[0][0]


def test_cli_defaults_are_the_config_defaults(monkeypatch):
    (config,) = _built(monkeypatch, trainer, "train", ["train", "--csv", "x", "--output", "y"])
    assert config == TrainConfig(csv="x", output="y")
    scores = dict(split="test", images=1, accuracy=1.0, macro_f1=1.0, kappa=1.0, auc_micro=1.0)
    (config,) = _built(monkeypatch, evaluation, "evaluate_run", ["evaluate", "--checkpoint", "c", "--data-dir", "d"],
                       scores)
    assert config == EvalConfig(checkpoint="c", data_dir="d")
    summary = dict(images=1, counts={}, output="o.csv", masks=None, overlays=None)
    (config,) = _built(monkeypatch, predict, "predict", ["predict", "--checkpoint", "c", "a.png", "b", "--output",
                                                         "o.csv"], summary)
    assert config == PredictConfig(checkpoint="c", inputs=("a.png", "b"), output="o.csv")
    (config,) = _built(monkeypatch, predict, "predict", ["predict", "--model", "m", "a.png", "--output", "o.csv"],
                       summary)
    assert config == PredictConfig(model="m", inputs=("a.png",), output="o.csv")
    exported = dict(output="o", files=[], model="walnet", epoch=0, formats={}, onnx_checked=None)
    (config,) = _built(monkeypatch, export, "export_model", ["export", "--checkpoint", "c", "--output", "o"], exported)
    assert config == ExportConfig(checkpoint="c", output="o") and config.formats == ("safetensors",)
    monkeypatch.setattr(demo, "summary", lambda result: "")
    output, config = _built(monkeypatch, demo, "run_demo", ["demo"])
    assert (output, config) == ("demo-output", DemoConfig())


def test_cli_passes_every_option_on(monkeypatch):
    argv = ["train", "--data-dir", "d", "--output", "o", "--model", "walnet_no_rcm", "--backbone", "resnet18",
            "--pretrained", "--epochs", "3", "--eval-metric", "macro_f1", "-b", "2", "--lr", "0.5", "--seed", "7",
            "--size", "64", "--precision", "bf16", "--compile", "--no-cuda-graphs", "--no-channels-last", "--no-tf32",
            "--no-cudnn-benchmark", "--sync-bn", "-j", "2", "--resume", "o/last.pt", "--roi-method", "crop",
            "--no-rcm", "--no-pgm", "--rcm-warmup", "0", "--attention-channels", "16", "--device", "cpu",
            "--skip-bad", "--classes", "calcified, soft ,mixed"]
    (config,) = _built(monkeypatch, trainer, "train", argv)
    assert config == TrainConfig(data_dir="d", output="o", model="walnet_no_rcm", backbone="resnet18", pretrained=True,
                                 epochs=3, eval_metric="macro_f1", batch_size=2, lr=0.5, seed=7, size=64, precision="bf16",
                                 compile=True, cuda_graphs=False, channels_last=False, tf32=False,
                                 cudnn_benchmark=False, sync_bn=True, workers=2, resume="o/last.pt", roi_method="crop",
                                 rcm=False, pgm=False, rcm_warmup=0, attention_channels=16, device="cpu",
                                 skip_bad=True, classes=("calcified", "soft", "mixed"))
    # every field is one option of its command, and no option is left out of the config
    for config_type, argv in ((TrainConfig, ["train", "--csv", "x", "--output", "y"]),
                              (EvalConfig, ["evaluate", "--checkpoint", "c", "--csv", "x"]),
                              (PredictConfig, ["predict", "--checkpoint", "c", "i", "--output", "o"]),
                              (ExportConfig, ["export", "--checkpoint", "c", "--output", "o"])):
        parsed = set(vars(cli.build_parser().parse_args(argv))) - {"command", "run", "debug"}
        assert parsed == {f.name for f in fields(config_type)}, config_type.__name__


@pytest.mark.parametrize("config", [
    TrainConfig(csv=Path("data/labels.csv"), output=Path("runs/a"), lr=1, precision="fp16", resume="runs/a/last.pt"),
    EvalConfig(checkpoint="r/best.pt", data_dir="d", split="val", figures=False),
    PredictConfig(checkpoint="r/best.pt", inputs=[Path("x.png"), "folder"], output="p.csv", masks_dir="m"),
    PredictConfig(model=Path("exported"), inputs=["x.png"], output="p.csv"),
    ExportConfig(checkpoint="r/best.pt", output=Path("exported"), formats=("onnx", "pt2"), overwrite=True),
    DemoConfig(n=30, lr=0.01),
], ids=lambda c: type(c).__name__)
def test_json_round_trip(config):
    text = json.dumps(config.to_dict())
    again = type(config).from_dict(json.loads(text))
    assert again == config and again.to_dict() == config.to_dict()
    assert list(config.to_dict()) == [f.name for f in fields(config)]


def test_classes_survive_json_and_default_to_none():
    config = TrainConfig(csv="x", output="o", classes=["calcified", "soft", "mixed"])
    assert config.classes == ("calcified", "soft", "mixed")
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    saved = TrainConfig(csv="x", output="o").to_dict()
    assert saved["classes"] is None
    del saved["classes"]  # the args of a checkpoint written before the option existed
    assert TrainConfig.from_dict(saved).classes is None


def test_paths_and_numbers_are_normalised():
    config = TrainConfig(csv=Path("a.csv"), output=Path("out"), lr=1)
    assert config.csv == "a.csv" and config.output == "out" and type(config.lr) is float
    assert PredictConfig(checkpoint="c", inputs=Path("one.png"), output="o").inputs == ("one.png",)
    with pytest.raises(FrozenInstanceError):
        config.epochs = 3


def test_from_dict_is_strict_unless_told_otherwise():
    saved = TrainConfig(csv="x", output="y").to_dict()
    with pytest.raises(ValueError, match=r"TrainConfig has no option\(s\) \['command'\]"):
        TrainConfig.from_dict({**saved, "command": "train"})
    with pytest.raises(TypeError):  # the constructor itself takes no unknown keyword either
        TrainConfig(csv="x", output="y", command="train")
    assert TrainConfig.from_dict({**saved, "command": "train"}, strict=False) == TrainConfig(csv="x", output="y")
    # a key missing from an older checkpoint takes its default
    del saved["skip_bad"]
    assert TrainConfig.from_dict(saved).skip_bad is False


def test_old_style_checkpoint_args_are_read(tmp_path):
    """Checkpoints whose "args" is a parsed command line (with "command") load into a TrainConfig."""
    torch = pytest.importorskip("torch")
    from walnet.engine.checkpoint import save_checkpoint
    from walnet.models import create_model

    model = create_model("walnet", num_classes=3, backbone="resnet18", attention_channels=8, rcm_warmup_epochs=1)
    config = TrainConfig(csv="ph/labels.csv", output=str(tmp_path), backbone="resnet18", attention_channels=8,
                         rcm_warmup=1, size=48, epochs=2)
    args = {"command": "train", **config.to_dict()}
    ckpt = save_checkpoint(tmp_path / "last.pt", {"model": model.state_dict(), "args": args,
                                                   "classes": ["a", "b", "c"], "epoch": 1})
    got = load_model(ckpt)
    loaded, classes, trained, state = got.model, got.classes, got.train_config, got.checkpoint
    assert trained == config and classes == ("a", "b", "c") and state["epoch"] == 1
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


@pytest.mark.parametrize("values, message", [
    (dict(output="o"), r"exactly one of data_dir \(--data-dir\) and csv \(--csv\)"),
    (dict(csv="x", data_dir="d", output="o"), "exactly one of data_dir"),
    (dict(csv="x", output=""), "output must not be empty"),
    (dict(csv="x", output="o", epochs=0), "--epochs must be at least 1, got 0"),
    (dict(csv="x", output="o", batch_size=-2), "--batch-size must be at least 1"),
    (dict(csv="x", output="o", size=0), "--size must be at least 1"),
    (dict(csv="x", output="o", attention_channels=0), "--attention-channels must be at least 1"),
    (dict(csv="x", output="o", workers=-1), "--workers must be at least 0"),
    (dict(csv="x", output="o", rcm_warmup=-1), "--rcm-warmup must be at least 0"),
    (dict(csv="x", output="o", lr=0.0), "--lr must be a positive number"),
    (dict(csv="x", output="o", lr=float("nan")), "--lr must be a positive number"),
    (dict(csv="x", output="o", epochs="3"), "epochs must be an integer, got '3'"),
    (dict(csv="x", output="o", epochs=2.0), "epochs must be an integer"),
    (dict(csv="x", output="o", seed=True), "seed must be an integer"),
    (dict(csv="x", output="o", compile=1), "compile must be True or False"),
    (dict(csv="x", output="o", precision="half"), "--precision must be one of auto, fp32, bf16, fp16, got 'half'"),
    (dict(csv="x", output="o", eval_metric="f1"), "--eval-metric must be one of accuracy, macro_f1, kappa, auc, got 'f1'"),
    (dict(csv=3, output="o"), "csv must be a string or path"),
    (dict(csv="x", output="o", seed=-1), "--seed must be between 0 and 4294967295, got -1"),
    (dict(csv="x", output="o", seed=2**32), "--seed must be between 0 and 4294967295"),
    (dict(csv="x", output="o", classes=("a",)), "--classes takes two or more comma-separated class names"),
    (dict(csv="x", output="o", classes=("a", "")), "--classes takes two or more"),
    (dict(csv="x", output="o", classes="a,b"), "--classes takes two or more"),  # one name (with a comma)
    (dict(csv="x", output="o", classes=("soft", "Soft ")), "--classes names a class twice"),
    (dict(csv="x", output="o", classes=("a", 2)), "classes must be a sequence of strings"),
])
def test_train_config_rejects_bad_values(values, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**values)


@pytest.mark.parametrize("config_type, values, message", [
    (EvalConfig, dict(checkpoint="c"), "exactly one of data_dir"),
    (EvalConfig, dict(checkpoint="", csv="x"), "checkpoint must not be empty"),
    (EvalConfig, dict(checkpoint="c", csv="x", split="dev"), r"--split must be one of \('train', 'val', 'test'\)"),
    (EvalConfig, dict(checkpoint="c", csv="x", batch_size=0), "--batch-size must be at least 1"),
    (PredictConfig, dict(checkpoint="c", inputs=[], output="o"), r"give exactly one of inputs .* and csv \(--csv\)"),
    (PredictConfig, dict(checkpoint="c", csv="", output="o"), "csv must not be empty"),
    (PredictConfig, dict(checkpoint="c", inputs=["i"], csv="x", output="o"), r"exactly one of inputs .* and csv"),
    (PredictConfig, dict(checkpoint="c", inputs=[1], output="o"), "inputs must be a sequence of strings"),
    (PredictConfig, dict(checkpoint="c", inputs=["i"], output="o", workers=-1), "--workers must be at least 0"),
    (PredictConfig, dict(inputs=["i"], output="o"), r"exactly one of checkpoint \(--checkpoint\) and model"),
    (PredictConfig, dict(checkpoint="c", model="m", inputs=["i"], output="o"), "exactly one of checkpoint"),
    (PredictConfig, dict(model="", inputs=["i"], output="o"), "model must not be empty"),
    (ExportConfig, dict(checkpoint="c", output="o", formats=("pt2", "tflite")),
     "--format: unknown format 'tflite'; choose from safetensors, pt2, onnx"),
    (ExportConfig, dict(checkpoint="c", output="o", formats=()), "formats must not be empty"),
    (ExportConfig, dict(checkpoint="c", output=""), "output must not be empty"),
    (DemoConfig, dict(n="800"), "n must be an integer"),
    (DemoConfig, dict(n=0), "--n must be at least 1, got 0"),
    (DemoConfig, dict(epochs=-3), "--epochs must be at least 1, got -3"),
    (DemoConfig, dict(size=0), "--size must be at least 1"),
    (DemoConfig, dict(seed=-1), "--seed must be between 0 and 4294967295, got -1"),
    (DemoConfig, dict(lr=float("inf")), "--lr must be a positive number"),
])
def test_eval_predict_export_demo_configs_reject_bad_values(config_type, values, message):
    with pytest.raises(ValueError, match=message):
        config_type(**values)


def test_a_bad_value_on_the_command_line_is_a_usage_error(capsys):
    assert cli.main(["train", "--csv", "x", "--output", "y", "--epochs", "0"]) == 2
    assert "walnet train: error: --epochs must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # argparse checks the choices
        cli.main(["train", "--csv", "x", "--output", "y", "--eval-metric", "sensitivity"])
    assert exited.value.code == 2
    assert "argument --eval-metric: invalid choice: 'sensitivity'" in capsys.readouterr().err


def test_every_field_has_a_doc():
    for config_type in (TrainConfig, EvalConfig, PredictConfig, ExportConfig, DemoConfig):
        assert config_type.__doc__
        for f in fields(config_type):
            assert f.metadata.get("doc"), f"{config_type.__name__}.{f.name}"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    return names


def test_no_engine_module_imports_the_command_line():
    modules = sorted(ENGINE.glob("*.py"))
    assert len(modules) >= 10
    for path in modules:
        imported = _imports(path)  # module level and inside functions alike
        assert not {n for n in imported if n == "walnet.cli" or n.startswith("walnet.cli.")}, path.name
        assert "argparse" not in imported, path.name
    # and importing every engine module works with the command line made unimportable
    code = ("import sys; sys.modules['walnet.cli'] = None\n"
            "import importlib, pkgutil, walnet.engine\n"
            "for m in pkgutil.iter_modules(walnet.engine.__path__):\n"
            "    importlib.import_module('walnet.engine.' + m.name)\n"
            "print(sorted(n for n in sys.modules if n.startswith('walnet.engine.')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert {f"walnet.engine.{p.stem}" for p in modules if p.stem != "__init__"} <= set(ast.literal_eval(done.stdout))


def test_the_negative_switches_of_010_files_read_as_their_positive_fields():
    """args.json and checkpoints of walnet 0.1.0 hold "no_rcm": true etc.: read back, they mean
    what they meant (rcm off), and the CLI's --no-... flags set the positive fields."""
    old = {**TrainConfig(csv="x", output="o").to_dict(), "no_rcm": True, "no_cuda_graphs": True,
           "no_dicom_region": False}
    for name in ("rcm", "cuda_graphs", "dicom_region"):
        old.pop(name)
    config = TrainConfig.from_dict(old)
    assert not config.rcm and not config.cuda_graphs and config.dicom_region and config.pgm
    assert EvalConfig.from_dict({"checkpoint": "c", "csv": "x", "no_figures": True}).figures is False
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="no option"):
        TrainConfig.from_dict({**config.to_dict(), "no_such": True})
    parsed = cli.build_parser().parse_args(["evaluate", "--checkpoint", "c", "--csv", "x", "--no-figures"])
    assert parsed.figures is False
    assert cli.build_parser().parse_args(["evaluate", "--checkpoint", "c", "--csv", "x"]).figures is True


def test_train_help_lists_its_options_by_group(capsys):
    """``walnet train --help`` lists the options under data, model, training, runtime and output, each
    option under the group its field names."""
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    headings = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings == ["options", "data", "model", "training", "runtime", "output"]
    sections = dict(zip(headings, text.split("\n\n")[1:]))
    for f in fields(TrainConfig):
        section = sections[f.metadata["group"]]
        flag = cli._FLAGS.get(f.name, (flag_of(f.name),))[0]
        assert any(line.lstrip().startswith(flag + " ") or line.lstrip().startswith(flag + ",")
                   for line in section.splitlines()), f.name
    assert "--no-cuda-graphs" in sections["runtime"] and "--no-rcm" in sections["model"]
