"""Build script for walnet's C++/CUDA operators (torch.utils.cpp_extension + ninja); the package
metadata is in pyproject.toml. See docs/design.md §8.

C++ kernels are always built. CUDA kernels are built when torch is a CUDA build and a CUDA
toolkit is found; WALNET_CUDA=0/1 forces either way. The CUDA archs are TORCH_CUDA_ARCH_LIST
where set, else those of the visible GPUs, else those of the installed torch (PTX for the
newest). Compiler flags are chosen by asking the compiler (OpenMP and fp-contract flags only
where it takes them). The build writes walnet/_build.json next to the extension: the torch,
CUDA and archs it was compiled for, which walnet checks at import. WALNET_NO_EXTENSION=1 installs
the Python package alone (the Makefile's editable install of an in-place build).
"""
import glob
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO = "_build.json"


def _has_cuda_headers(home):
    return bool(home) and os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")) and os.path.isfile(
        os.path.join(home, "bin", "nvcc")
    )


def _locate_cuda_home():
    """CUDA_HOME if set, else the toolkit that owns nvcc, else /usr/local/cuda.

    torch guesses dirname(dirname(which nvcc)), which is wrong when nvcc is a wrapper script in
    /usr/local/bin; look for a directory that really holds the toolkit headers instead.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    return next((c for c in candidates if _has_cuda_headers(c)), None)


def _want_cuda():
    import torch

    forced = os.environ.get("WALNET_CUDA")
    home = _locate_cuda_home()
    available = torch.version.cuda is not None and home is not None
    if forced == "0":
        return False, home
    if forced == "1" and not available:
        sys.exit("WALNET_CUDA=1 but torch is not a CUDA build or no CUDA toolkit was found (set CUDA_HOME)")
    return available, home


def default_arch_list(torch_archs):
    """TORCH_CUDA_ARCH_LIST for the installed torch's archs (``['sm_75', ..., 'sm_120']``): the
    same archs, PTX for the newest so that later GPUs can JIT it."""
    versions = sorted({(int(m.group(1)[:-1]), int(m.group(1)[-1])) for a in torch_archs
                       if (m := re.fullmatch(r"sm_(\d+)a?", a))})
    if not versions:
        return None
    return ";".join(f"{major}.{minor}" for major, minor in versions) + "+PTX"


def compiled_archs(gencode_flags):
    """(SASS archs, PTX archs) as "X.Y" strings from nvcc's ``-gencode=arch=compute_XY,code=...``."""
    sass, ptx = [], []
    for flag in gencode_flags:
        m = re.search(r"code=(sm|compute)_(\d+)", flag)
        if m:
            version = f"{m.group(2)[:-1]}.{m.group(2)[-1]}"
            (sass if m.group(1) == "sm" else ptx).append(version)
    return sorted(set(sass), key=lambda v: tuple(map(int, v.split(".")))), sorted(set(ptx))


def cxx_flags(compiler_type, accepts):
    """(compile flags, link flags) for the C++ compiler: optimisation, no contraction of a*b+c
    into FMA (so the CPU rounds as the reference), OpenMP. `accepts(flag)` asks the compiler;
    a flag it rejects is left out (without OpenMP the CPU kernels run single-threaded)."""
    if compiler_type == "msvc":
        compile_args, link_args = ["/O2", "/fp:precise"], []
        if accepts("/openmp"):
            compile_args.append("/openmp")
        return compile_args, link_args
    compile_args, link_args = ["-O3"], []
    if accepts("-ffp-contract=off"):
        compile_args.append("-ffp-contract=off")
    if accepts("-fopenmp"):
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    return compile_args, link_args


def _extra_cuda_includes():
    """Headers that ATen's CUDA headers include but a trimmed toolkit may lack (cusparse.h):
    the pip 'nvidia' packages ship them."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    dirs = []
    for base in spec.submodule_search_locations:
        dirs += sorted(os.path.dirname(h) for h in glob.glob(os.path.join(base, "*", "include", "cusparse.h")))
    return dirs


def _version():
    with open(os.path.join(ROOT, "walnet", "_version.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def _extension():
    with_cuda, cuda_home = _want_cuda()
    if with_cuda:
        os.environ.setdefault("CUDA_HOME", cuda_home)  # read by cpp_extension at import
        import torch

        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            arch_list = default_arch_list(torch.cuda.get_arch_list())
            if arch_list:
                os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = ["csrc/walnet.cpp"] + sorted(glob.glob("csrc/*/*_cpu.cpp"))
    kwargs = dict(
        name="walnet._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=[("WALNET_PYTHON_MODULE", None), ("Py_LIMITED_API", "0x030A0000")],
        py_limited_api=True,
    )
    if not with_cuda:
        return CppExtension(sources=sources, extra_compile_args={"cxx": []}, **kwargs)
    sources += sorted(glob.glob("csrc/*/*_cuda.cu"))
    # -fmad=false: no fused multiply-add on the device either, so both backends round alike.
    nvcc = ["-O3", "-fmad=false", "--expt-relaxed-constexpr"]
    kwargs["include_dirs"] += _extra_cuda_includes()
    kwargs["define_macros"].append(("WALNET_WITH_CUDA", None))
    return CUDAExtension(sources=sources, extra_compile_args={"cxx": [], "nvcc": nvcc}, **kwargs)


def _build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    class WalnetBuildExt(BuildExtension.with_options(use_ninja=True)):
        """Chooses the C++ flags with the compiler at hand and records what was built."""

        def _accepts(self, flag):
            with tempfile.TemporaryDirectory() as tmp:
                src = os.path.join(tmp, "probe.cpp")
                with open(src, "w") as f:
                    f.write("int main() { return 0; }\n")
                try:
                    self.compiler.compile([src], output_dir=tmp, extra_postargs=[flag])
                except Exception:  # noqa: BLE001  any compiler error means: not accepted
                    return False
            return True

        def build_extensions(self):
            compile_args, link_args = cxx_flags(self.compiler.compiler_type, self._accepts)
            self.openmp = any("openmp" in a for a in compile_args)
            for ext in self.extensions:
                ext.extra_compile_args["cxx"] = compile_args + ext.extra_compile_args["cxx"]
                ext.extra_link_args = link_args + list(ext.extra_link_args or [])
            super().build_extensions()

        def build_extension(self, ext):
            super().build_extension(ext)
            self._write_build_info(ext)

        def copy_extensions_to_source(self):
            # an in-place build copies the extension into the source tree; its record goes along
            super().copy_extensions_to_source()
            package_dir = self.get_finalized_command("build_py").get_package_dir("walnet")
            built = os.path.join(self.build_lib, "walnet", BUILD_INFO)
            if os.path.exists(built):
                self.copy_file(built, os.path.join(package_dir, BUILD_INFO), level=self.verbose)

        def _write_build_info(self, ext):
            import torch
            from torch.utils.cpp_extension import _get_cuda_arch_flags

            with_cuda = any(source.endswith(".cu") for source in ext.sources)
            sass, ptx = compiled_archs(_get_cuda_arch_flags()) if with_cuda else ([], [])
            info = {
                "walnet": _version(),
                "torch": torch.__version__,
                "cuda": torch.version.cuda if with_cuda else None,
                "cuda_archs": sass,
                "cuda_ptx": ptx,
                "openmp": self.openmp,
                "compiler": self.compiler.compiler_type,
            }
            path = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), BUILD_INFO)
            with open(path, "w") as f:
                json.dump(info, f, indent=2)
                f.write("\n")

    return WalnetBuildExt


def main():
    if os.environ.get("WALNET_NO_EXTENSION", "0") not in ("", "0"):
        setup(version=_version())
        return
    ext = _extension()  # first: it sets CUDA_HOME, which cpp_extension reads at import
    setup(
        version=_version(),
        ext_modules=[ext],
        cmdclass={"build_ext": _build_ext_class()},
        options={"bdist_wheel": {"py_limited_api": "cp310"}},
    )


if __name__ == "__main__":
    main()
