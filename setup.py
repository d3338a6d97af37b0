"""Build script for walnet's C++/CUDA operators (torch.utils.cpp_extension + ninja).

C++ kernels are always built. CUDA kernels are built when torch is a CUDA build and a CUDA
toolkit is found; WALNET_CUDA=0/1 forces either way. The quirks of toolkits installed behind
an nvcc wrapper script (docs/design.md §8) are handled here, so a user sets no environment variable.
"""
import glob
import importlib.util
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


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


def _extension():
    with_cuda, cuda_home = _want_cuda()
    if with_cuda:
        os.environ.setdefault("CUDA_HOME", cuda_home)  # read by cpp_extension at import
        # Without a visible GPU torch would compile for every arch it knows; one is enough to link.
        import torch

        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = ["csrc/walnet.cpp"] + sorted(glob.glob("csrc/*/*_cpu.cpp"))
    # -ffp-contract=off / -fmad=false: no fused multiply-add, so both backends round alike.
    cxx = ["-O3", "-ffp-contract=off", "-fopenmp"]
    kwargs = dict(
        name="walnet._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=[("WALNET_PYTHON_MODULE", None), ("Py_LIMITED_API", "0x030A0000")],
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )
    if not with_cuda:
        return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)
    sources += sorted(glob.glob("csrc/*/*_cuda.cu"))
    nvcc = ["-O3", "-fmad=false", "--expt-relaxed-constexpr"]
    kwargs["include_dirs"] += _extra_cuda_includes()
    kwargs["define_macros"].append(("WALNET_WITH_CUDA", None))
    return CUDAExtension(sources=sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)


def main():
    ext = _extension()  # first: it sets CUDA_HOME, which cpp_extension reads at import
    from torch.utils.cpp_extension import BuildExtension

    setup(
        ext_modules=[ext],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
        options={"bdist_wheel": {"py_limited_api": "cp310"}},
    )


if __name__ == "__main__":
    main()
