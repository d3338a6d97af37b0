"""What the tests share: the devices and dtypes the op tests run on, the check that the kernel
under test was built, a call spy, an unwritable folder and a small trained-shaped checkpoint. The
inputs of each op family live in pgm_inputs.py and rcm_inputs.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from walnet import ops

HAS_CUDA = torch.cuda.is_available()

#: Devices every kernel test runs on; CUDA cases are skipped without a GPU.
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")),
]

FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def require_kernel(device: str) -> None:
    """Kernel-vs-reference tests are meaningless (and must not pass vacuously) without a kernel."""
    if device not in ops.built_backends():
        pytest.fail(f"walnet was built without {device} kernels: {ops.built_backends()}")


def spy_on(monkeypatch, owner, name: str) -> list:
    """Replaces ``owner.<name>`` (for the test) by a wrapper that records every call's positional
    arguments in the returned list and then calls the original."""
    calls = []
    real = getattr(owner, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: a read-only one, or for root (whom modes
    do not stop) a sysfs folder."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no folder root cannot write here")
    return Path("/sys/kernel")


#: The class names of :func:`small_checkpoint`'s models.
CLASSES = ["hyperechoic", "hypoechoic", "mixed-echoic"]


def small_checkpoint(path: Path, model_name: str = "walnet", size: int = 48, **train) -> tuple[Path, torch.nn.Module]:
    """A checkpoint shaped like `walnet train`'s (model, args, classes, epoch) of an untrained
    model, small enough for CPU tests: a WAL-Net variant with a ResNet-18 encoder and 8 attention
    channels (its heads randomised so the classes' probabilities differ), or the baseline
    `model_name` at full size; `train`: further TrainConfig fields of its run. Returns the path
    and the model in eval mode."""
    from walnet.engine.checkpoint import save_checkpoint
    from walnet.engine.config import TrainConfig
    from walnet.models import create_model

    torch.manual_seed(0)
    if model_name.startswith("walnet"):
        kw = dict(backbone="resnet18", attention_channels=8, rcm_warmup_epochs=1)
        if model_name == "walnet_no_pgm":
            kw["use_pgm"] = False
        model = create_model("walnet", num_classes=3, **kw)
        with torch.no_grad():
            for head in model.heads:
                head.weight.normal_(0, 0.5)
    else:
        model = create_model(model_name, num_classes=3)
    args = TrainConfig(csv="labels.csv", output=path.parent, model=model_name, backbone="resnet18", size=size,
                       attention_channels=8, rcm_warmup=1, epochs=1, batch_size=8, **train)
    save_checkpoint(path, {"model": model.state_dict(), "args": args.to_dict(), "classes": CLASSES, "epoch": 0})
    return path, model.eval()


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if predict gets as far as loading the model."""
    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr("walnet.engine.predict.load_model", load_model)


#: The validation scores of every epoch of a :func:`quick` run.
QUICK_SCORES = dict(accuracy=0.5, macro_f1=0.5, kappa=0.0, auc_micro=0.5, loss=1.1)


@pytest.fixture
def quick(monkeypatch):
    """Epochs that only go through the motions: no training step, fixed validation scores
    (:data:`QUICK_SCORES`)."""
    monkeypatch.setattr("walnet.engine.trainer.train_one_epoch",
                        lambda *a, **kw: {"loss": 1.0, "cls_loss": 0.6, "seg_loss": 0.4, "accuracy": 0.5})
    monkeypatch.setattr("walnet.engine.trainer.evaluate", lambda *a, **kw: dict(QUICK_SCORES))


@pytest.fixture
def one_thread():
    """One CPU thread: cheap on a shared machine, and the compared runs do the same arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
