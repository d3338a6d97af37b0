"""Packaging and installs (docs/design.md §8): the metadata that build tools need, dependencies that
are exactly what walnet imports, the sdist's contents, the GPU archs and compiler flags setup.py
chooses, where compiled CUDA code runs, and `walnet info`. (Building the sdist and a wheel from it
and importing the installed wheel is `make package-check`, tools/check_package.py.)"""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from walnet import cli, ops
from walnet.ops import _dispatch, _library

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def setup_py():
    """setup.py as a module (its build runs only under `python setup.py`)."""
    spec = importlib.util.spec_from_file_location("walnet_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _floor(requirements: list[str], name: str) -> tuple[int, ...]:
    (req,) = [r for r in requirements if re.match(rf"{name}\b", r, re.I)]
    return tuple(int(x) for x in re.search(r">=\s*([\d.]+)", req).group(1).split("."))


# --- metadata ------------------------------------------------------------------------------------


def test_setuptools_floor_fits_the_metadata(pyproject):
    """An SPDX license string and license-files (PEP 639) need setuptools 77; older setuptools
    reject the metadata, so the build requirement must not admit them."""
    project = pyproject["project"]
    if isinstance(project.get("license"), str) or "license-files" in project:
        assert _floor(pyproject["build-system"]["requires"], "setuptools") >= (77,)


def test_license_file_is_shipped(pyproject):
    files = pyproject["project"]["license-files"]
    assert files and all((ROOT / f).is_file() for f in files)
    assert "MIT License" in (ROOT / "LICENSE").read_text()


def test_torch_floor_supports_limited_api_extensions(pyproject):
    """torch's cpp_extension builds py_limited_api (abi3) extensions from 2.6 on; the build and
    run requirements state the same floor."""
    build = _floor(pyproject["build-system"]["requires"], "torch")
    run = _floor(pyproject["project"]["dependencies"], "torch")
    assert build == run and build >= (2, 6)


def test_one_version_string(pyproject):
    import walnet

    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "walnet._version.__version__"}
    assert walnet.__version__ == re.search(r'__version__ = "(.+)"', (ROOT / "walnet/_version.py").read_text()).group(1)
    texts = [(ROOT / p).read_text() for p in ("pyproject.toml", "setup.py", "walnet/__init__.py")]
    assert not any(re.search(r"version\s*=\s*[\"']\d", t) for t in texts)


def _third_party_imports(module_level_only: bool = False) -> set[str]:
    """Top-level modules walnet imports that are neither walnet's nor the standard library's
    (with `module_level_only`, those imported at the top of a module, i.e. on import)."""
    found = set()
    for path in (ROOT / "walnet").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in (tree.body if module_level_only else ast.walk(tree)):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module.split(".")[0])
    return {m for m in found if m != "walnet" and m not in sys.stdlib_module_names and m != "__future__"}


def _names(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in requirements}


def test_dependencies_are_what_walnet_imports(pyproject):
    """Every package walnet imports at run time is declared, and nothing else is (test-only
    packages belong to the `test` extra). A package of another extra (`onnx`) is imported only
    inside the function that needs it, never on import, and is not a dependency."""
    distributions = importlib.metadata.packages_distributions()
    extras = pyproject["project"]["optional-dependencies"]
    optional = set().union(*(_names(reqs) for name, reqs in extras.items() if name != "test"))
    imported = {distributions[m][0].lower() for m in _third_party_imports() if m in distributions}
    unknown = {m for m in _third_party_imports() if m not in distributions}
    assert unknown <= optional, f"imported but installed by no distribution: {unknown}"
    declared = _names(pyproject["project"]["dependencies"])
    assert imported - optional == declared
    assert not optional & declared
    on_import = {distributions[m][0].lower() for m in _third_party_imports(module_level_only=True)
                 if m in distributions}
    assert not on_import & optional, "an optional package is imported at the top of a module"
    test_extra = _names(extras["test"])
    assert {"scikit-image", "scikit-learn", "pytest"} <= test_extra
    assert not test_extra & declared


def test_onnx_extra_is_what_the_onnx_export_needs(pyproject):
    """`pip install 'walnet[onnx]'` installs what `walnet export --format onnx` asks for (and
    onnxruntime, which checks the exported model)."""
    from walnet.engine import export

    extra = _names(pyproject["project"]["optional-dependencies"]["onnx"])
    assert set(export.ONNX_PACKAGES) | {"onnxruntime"} == extra
    assert "walnet[onnx]" in export.ONNX_INSTALL


def test_dicom_extra_is_what_the_dicom_reader_names(pyproject):
    """`pip install 'walnet[dicom]'` installs pydicom and its decoders of compressed transfer
    syntaxes, and the make-test environment pins each, so the DICOM tests run there."""
    from walnet.data import dicom

    extra = _names(pyproject["project"]["optional-dependencies"]["dicom"])
    assert extra == {"pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg"}
    assert "walnet[dicom]" in dicom.DICOM_INSTALL
    lines = (ROOT / "requirements-dev.txt").read_text().splitlines()
    pinned = _names([line for line in lines if line.strip() and not line.startswith("#")])
    assert extra <= pinned


def test_sdist_manifest_holds_every_source():
    """setup.py compiles the .cpp/.cu files it globs; the headers they include must be in the
    sdist too (MANIFEST.in), or a wheel cannot be built from it."""
    manifest = (ROOT / "MANIFEST.in").read_text().split("\n")
    assert "graft csrc" in manifest
    assert any(line.startswith("include") and "LICENSE" in line for line in manifest)
    headers = list((ROOT / "csrc").rglob("*.h")) + list((ROOT / "csrc").rglob("*.cuh"))
    assert headers


# --- setup.py's choices --------------------------------------------------------------------------


def test_default_arch_list_is_torchs_with_ptx_for_the_newest(setup_py):
    archs = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
    assert setup_py.default_arch_list(archs) == "7.5;8.0;8.6;9.0;10.0;12.0+PTX"
    assert setup_py.default_arch_list(["sm_90a", "sm_80"]) == "8.0;9.0+PTX"
    assert setup_py.default_arch_list([]) is None
    if torch.version.cuda is not None:
        assert setup_py.default_arch_list(torch.cuda.get_arch_list()).endswith("+PTX")


def test_compiled_archs_from_gencode_flags(setup_py):
    flags = ["-gencode=arch=compute_75,code=sm_75", "-gencode=arch=compute_120,code=compute_120",
             "-gencode=arch=compute_120,code=sm_120", "-gencode=arch=compute_90,code=sm_90"]
    assert setup_py.compiled_archs(flags) == (["7.5", "9.0", "12.0"], ["12.0"])


def test_cxx_flags_follow_the_compiler(setup_py):
    every = setup_py.cxx_flags("unix", lambda flag: True)
    assert every == (["-O3", "-ffp-contract=off", "-fopenmp"], ["-fopenmp"])
    # Apple clang without libomp: no OpenMP (the CPU kernels run single-threaded), still built
    no_openmp = setup_py.cxx_flags("unix", lambda flag: flag != "-fopenmp")
    assert no_openmp == (["-O3", "-ffp-contract=off"], [])
    msvc = setup_py.cxx_flags("msvc", lambda flag: True)
    assert "/openmp" in msvc[0] and not any(f.startswith("-") for f in msvc[0])


# --- where compiled CUDA code runs ---------------------------------------------------------------


@pytest.mark.parametrize("capability, sass, ptx, runs", [
    ((9, 0), ["9.0"], [], True),
    ((8, 6), ["8.0"], [], True),       # sm_80 machine code runs on later 8.x
    ((8, 0), ["8.6"], [], False),
    ((8, 0), ["9.0"], [], False),      # an sm_90-only build on an A100
    ((8, 9), ["9.0"], [], False),      # ... on an L4
    ((12, 0), ["9.0"], [], False),     # ... on Blackwell
    ((12, 0), ["9.0"], ["9.0"], True),  # PTX is compiled by the driver for later GPUs
    ((7, 5), ["8.0"], ["8.0"], False),
])
def test_runs_on(capability, sass, ptx, runs):
    assert _library.runs_on(capability, sass, ptx) is runs


def test_a_gpu_arch_that_was_not_compiled(monkeypatch):
    """On a GPU whose arch the build lacks, backend="kernel" is an error naming the archs and the
    fix; "auto" warns and runs the reference (Felzenszwalb: the CPU kernel)."""
    message = "walnet's CUDA kernels were compiled for sm_90, which cannot run on A100 (compute capability 8.0)"
    monkeypatch.setattr(_library, "has_kernel", lambda op, dev: True)
    monkeypatch.setattr(_library, "cuda_arch_error", lambda index: message)
    cuda = torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match="cannot run on A100"):
        _dispatch.kernel_device("pseudo_mask", cuda, "kernel")
    with pytest.warns(RuntimeWarning, match="cannot run on A100.*runs the reference"):
        assert _dispatch.kernel_device("pseudo_mask", cuda, "auto") is None
    with pytest.warns(RuntimeWarning, match="runs the CPU kernel"):
        assert _dispatch.kernel_device("felzenszwalb", cuda, "auto", host_fallback=True) == torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _dispatch.kernel_device("pseudo_mask", torch.device("cpu"), "auto") == torch.device("cpu")


# --- walnet info ---------------------------------------------------------------------------------


def test_walnet_info(capsys):
    import walnet

    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"walnet {walnet.__version__}\ntorch {torch.__version__}")
    assert f"extension built for torch {_library.BUILD_INFO['torch']}" in out
    assert "compiled kernels for: " + ", ".join(sorted(ops.built_backends())) in out
    assert cli.main(["info", "--json"]) == 0
    info = __import__("json").loads(capsys.readouterr().out)
    assert {k: info[k] for k in ops.build_info()} == ops.build_info() and info["load_error"] is None
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"walnet {walnet.__version__}\n"


def test_make_installs_the_walnet_command():
    """`make` installs walnet into .venv in editable mode, so the README's `walnet ...` commands
    exist there (and import this source tree)."""
    venv = ROOT / ".venv"
    if not venv.is_dir() or Path(sys.prefix).resolve() != venv.resolve():
        pytest.skip("runs in the Makefile's .venv")
    script = venv / "bin" / "walnet"
    assert script.is_file(), "make build did not install the walnet command"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("walnet "), out.stderr
