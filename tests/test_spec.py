"""walnet.models.spec.ModelSpec (what a model is, built and read back from an exported folder's
config) and walnet.engine.loading.load_model (one loader for checkpoints and exported folders)."""
from __future__ import annotations

import pytest
import torch

from walnet import ops
from walnet.engine.config import TrainConfig
from walnet.engine.loading import load_model
from walnet.models import BASELINES, ModelSpec, create_model, model_names

from conftest import CLASSES, small_checkpoint

SMALL = dict(backbone="resnet18", attention_channels=8, rcm_warmup=1, classes=("a", "b"), size=48)


@pytest.mark.parametrize("name", model_names())
def test_every_model_name_has_a_spec(name):
    spec = ModelSpec.from_name(name, **SMALL)
    assert spec.is_walnet == (name not in BASELINES)
    assert spec.has_pgm == (spec.is_walnet and name != "walnet_no_pgm")
    assert spec.has_rcm == (spec.has_pgm and name != "walnet_no_rcm")
    if name.startswith("walnet_") and name.removeprefix("walnet_") in ops.ROI_METHODS:
        assert spec.roi_method == name.removeprefix("walnet_")
    assert spec.architecture == ("resnet18" if spec.is_walnet else BASELINES[name])
    assert ModelSpec.from_config(spec.to_config()) == spec
    assert spec.to_config()["num_classes"] == 2 and spec.to_config()["input"] == {"size": 48}


def test_a_spec_builds_what_create_model_builds():
    for name in ("walnet", "walnet_no_rcm", "walnet_no_pgm", "walnet_crop"):
        spec = ModelSpec.from_name(name, **SMALL)
        torch.manual_seed(0)
        built = spec.build()
        torch.manual_seed(0)
        made = create_model(name, num_classes=2, backbone="resnet18", attention_channels=8, rcm_warmup_epochs=1)
        assert built.use_pgm == spec.has_pgm and built.use_rcm == spec.has_rcm and built.roi_method == spec.roi_method
        assert built.rcm_warmup_epochs == 1
        assert all(torch.equal(built.state_dict()[k], v) for k, v in made.state_dict().items())
        assert built.state_dict().keys() == made.state_dict().keys()


def test_bad_specs_name_what_is_wrong():
    with pytest.raises(ValueError, match="unknown model 'walnet_tiny'"):
        ModelSpec.from_name("walnet_tiny")
    with pytest.raises(ValueError, match="contradicts"):
        ModelSpec.from_name("walnet_no_rcm", rcm=True)
    assert ModelSpec.from_name("walnet_no_rcm", rcm=False).rcm is False  # repeating is fine
    with pytest.raises(ValueError, match="roi_method must be one of"):
        ModelSpec(roi_method="tight")
    with pytest.raises(ValueError, match="two or more classes"):
        ModelSpec(classes=("only",))
    with pytest.raises(ValueError, match="not WAL-Net's"):
        ModelSpec.from_config({**ModelSpec().to_config(), "kwargs": {"width": 3}})


def test_describe():
    assert ModelSpec(**SMALL).describe() == "walnet (backbone resnet18, 8 attention channels)"
    assert ModelSpec(**SMALL, pgm=False).describe() == "walnet without its PGM (backbone resnet18, 8 attention channels)"
    assert ModelSpec(**SMALL, rcm=False).describe() == "walnet without its RCM (backbone resnet18, 8 attention channels)"
    assert ModelSpec.from_name("dpn").describe() == "dpn"


def test_a_train_config_gives_its_spec():
    config = TrainConfig(csv="x.csv", output="o", model="walnet_no_pgm", backbone="resnet18", attention_channels=8,
                         rcm_warmup=3, size=64)
    assert config.model_spec(("x", "y")) == ModelSpec(backbone="resnet18", pgm=False, rcm_warmup=3,
                                                     attention_channels=8, classes=("x", "y"), size=64)
    with pytest.raises(ValueError, match="--roi-method: .*contradicts"):
        TrainConfig(csv="x.csv", output="o", model="walnet_crop", roi_method="rwm").model_spec()


def test_load_model_reads_a_checkpoint_and_its_export_alike(tmp_path):
    from walnet.engine.config import ExportConfig
    from walnet.engine.export import export_model

    ckpt, model = small_checkpoint(tmp_path / "run" / "best.pt")
    from_ckpt = load_model(ckpt)
    assert from_ckpt.classes == tuple(CLASSES) and from_ckpt.train_config is not None
    assert from_ckpt.checkpoint["epoch"] >= 0 and from_ckpt.source == ckpt and from_ckpt.dicom_region
    export_model(ExportConfig(checkpoint=str(ckpt), output=str(tmp_path / "folder")))
    from_folder = load_model(tmp_path / "folder")
    assert from_folder.spec == from_ckpt.spec and from_folder.train_config is None
    x = torch.rand(2, 3, from_ckpt.size, from_ckpt.size)
    with torch.no_grad():
        assert torch.equal(from_ckpt.model(x).logits, from_folder.model(x).logits)
    with pytest.raises(ValueError, match="is a file, not a model folder"):
        load_model(ckpt, kind="folder")
    with pytest.raises(ValueError, match="is a folder, not a checkpoint file"):
        load_model(tmp_path / "folder", kind="checkpoint")
    with pytest.raises(ValueError, match="kind must be one of"):
        load_model(ckpt, kind="pt")
