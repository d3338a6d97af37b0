"""A light import: ``import walnet.ops`` (and ``import walnet``) loads torch and walnet's operators
only, the models (timm, torchvision) on first use of ``walnet.WALNet`` and the other model names;
the package ships ``py.typed`` (PEP 561). Each import runs in a fresh interpreter."""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The model packages that walnet's operators must not load.
HEAVY = ("timm", "torchvision", "matplotlib", "scipy", "PIL", "safetensors")


def _loaded(code: str) -> dict:
    """The JSON that `code` prints last, run in a fresh interpreter from the source tree."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _third_party(statement: str) -> list[str]:
    """The top-level modules, other than the standard library's and walnet, that `statement` imports."""
    return _loaded("import sys, json\nbefore = set(sys.modules)\n" + statement + "\n"
                   "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before}"
                   " - set(sys.stdlib_module_names) - {'walnet'})))")


def _torch_and_its_requirements() -> set[str]:
    """torch's distribution and every distribution it requires, transitively (extras aside)."""
    found, todo = set(), ["torch"]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower().replace("_", "-") for r in requires
                 if "extra ==" not in r]
    return found


def test_walnet_ops_imports_nothing_but_torch():
    with_ops = _third_party("import walnet.ops")
    assert "torch" in with_ops and not set(HEAVY) & set(with_ops), with_ops
    # the packages it loads are those torch loads (numpy; tqdm, where installed, for torch.hub) and
    # those torch requires (sympy for torch.library, ...)
    distributions = importlib.metadata.packages_distributions()

    def packages(modules):
        return {d.lower().replace("_", "-") for m in modules for d in distributions.get(m, [])}

    allowed = packages(_third_party("import torch")) | _torch_and_its_requirements()
    assert packages(with_ops) <= allowed, packages(with_ops) - allowed


def test_walnet_ops_does_not_load_torchs_compiler():
    """torch._dynamo (a second of CPU) loads with torch.compile, not with walnet.ops; the functions
    walnet marks as constant for the compiler carry the very mark torch's decorator sets."""
    import torch

    from walnet.ops import _library

    felzenszwalb = importlib.import_module("walnet.ops.felzenszwalb")  # the package's name is the op
    assert _loaded("import sys, json, walnet.ops\nprint(json.dumps('torch._dynamo' in sys.modules))") is False

    def plain():
        return 0

    marks = vars(torch.compiler.assume_constant_result(plain))
    assert marks
    for fn in (_library.cuda_arch_error, felzenszwalb._weights):
        assert {k: vars(fn).get(k) for k in marks} == marks, fn.__name__


def test_import_walnet_loads_the_models_on_first_use():
    found = _loaded("import sys, json, walnet\n"
                    "light = [m for m in ('timm', 'torchvision', 'walnet.models') if m in sys.modules]\n"
                    "net = walnet.WALNet\n"
                    "import walnet.models\n"
                    "print(json.dumps({'light': light, 'same': net is walnet.models.WALNet,\n"
                    "                  'loaded': 'timm' in sys.modules, 'ops': walnet.ops.__name__}))")
    assert found == {"light": [], "same": True, "loaded": True, "ops": "walnet.ops"}


def test_every_public_name_is_listed_and_resolves():
    found = _loaded("import json, walnet\n"
                    "from walnet import *\n"
                    "names = {n: getattr(walnet, n).__name__ if hasattr(getattr(walnet, n), '__name__') else 'x'\n"
                    "         for n in walnet.__all__}\n"
                    "print(json.dumps({'all': walnet.__all__, 'dir': dir(walnet), 'names': names,\n"
                    "                  'star': [n for n in walnet.__all__ if n not in globals()]}))")
    expected = {"Predictor", "PseudoMaskGenerator", "WALNet", "create_model", "walnet_loss", "models", "ops",
                "built_backends", "__version__"}
    assert set(found["all"]) == expected and expected <= set(found["dir"]) and found["star"] == []
    assert found["names"]["WALNet"] == "WALNet" and found["names"]["models"] == "walnet.models"
    assert found["names"]["Predictor"] == "Predictor"
    import walnet

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        walnet.nope  # noqa: B018


def test_py_typed_is_package_data():
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert (ROOT / "walnet" / "py.typed").is_file()
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["walnet"]
