"""Which compiled Felzenszwalb algorithms the tests run on a device (a helper module, not a test
module): the reservation algorithms, and the keyword arguments that select each kernel."""
from __future__ import annotations

from walnet.ops._preview import preview_kernels_enabled


def gpu_algorithms(device: str) -> list[str]:
    """The reservation algorithms that run on `device`: both on the CPU; on CUDA "block" and,
    where preview kernels are on (WALNET_PREVIEW_KERNELS=1), the warp kernel's "reservations"."""
    if device == "cpu" or preview_kernels_enabled():
        return ["reservations", "block"]
    return ["block"]


def kernel_variants(device: str) -> list[dict]:
    """Keyword arguments of ops.felzenszwalb that run each compiled algorithm on `device`: all
    three on the CPU; elsewhere the device's own ("auto") and :func:`gpu_algorithms`."""
    if device == "cpu":
        return [{"algorithm": "sequential"}] + [{"algorithm": a} for a in gpu_algorithms(device)]
    return [{}] + [{"algorithm": a} for a in gpu_algorithms(device)]


def variant_name(kwargs: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in kwargs.items()) or "auto"
