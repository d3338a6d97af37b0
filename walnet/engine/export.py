"""``walnet export``: a trained checkpoint as a self-contained model folder.

The folder (``output``) receives:

- ``model.safetensors``: the model's state dict as safetensors (no pickle: nothing in it can run
  code);
- ``config.json``: a format tag and version, the model's name and the arguments
  :func:`walnet.models.create_model` rebuilds it from, its classes in label order, its input
  (size, RGB, values in [0, 1], the mean and std the model normalises with itself, and whether
  DICOM images are cropped to their ultrasound region, as the run trained), the
  walnet and torch versions, the source checkpoint and epoch, what each extra format holds and,
  for a checkpoint calibrated by ``walnet calibrate``, its ``temperature``;
- ``README.md``: a model card (model, classes, input, intended use, training data, the run's test
  metrics from ``metrics.json`` next to the checkpoint, limits, how to load it);
- with ``pt2``: ``model.pt2``, ``torch.export`` of the model in eval mode, saved with
  ``torch.export.save``. walnet's own operators stay in the program as they are (the RCM's
  ``walnet::mask_boxes`` and ``walnet::crop_resize`` per level: a program may run on any device,
  so it holds no preview kernel unless preview kernels are enabled; the PGM does not run in
  evaluation), so loading it needs ``import walnet`` to register them. The batch dimension is
  dynamic where torch.export allows it, else fixed (config.json says which);
- with ``onnx``: ``model.onnx`` (opset :data:`ONNX_OPSET`), traced through the pure-PyTorch
  reference versions of walnet's ops (ONNX has no walnet operators; the references are the ops'
  specification and decompose into standard ONNX operators). With onnxruntime installed its
  output is checked against the eager model (:data:`ONNX_RTOL`, :data:`ONNX_ATOL`).

The pt2 and ONNX programs take ``image`` [N,3,size,size] and return a tuple of tensors:
``(logits, seg_logits)`` for a WAL-Net with its PGM, ``(logits,)`` otherwise: the logits before
the temperature (divide them by config.json's ``temperature``, where given, before the softmax).

Nothing is written until every file is made and checked: the files are written to a temporary
folder inside the output folder and moved into place (renamed, so each appears whole) together
at the end. An earlier export in the folder is only replaced with ``overwrite``; the reading side
is :func:`walnet.models.load_pretrained`. The folder is locked while an export writes it
(:func:`walnet.engine.lock.run_lock`): a second export into it fails at once. A file that cannot
be written (a full disk) is an error naming it.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import nn

from walnet.engine.checks import check_output, pick_device
from walnet.engine.config import ExportConfig
from walnet.engine.inputs import Inputs
from walnet.engine.loading import load_model
from walnet.engine.lock import run_lock
from walnet.files import WriteError, first_line, staged
from walnet.engine.model_card import model_card
from walnet.models import WALNet
from walnet.models.folder import CONFIG_FILE, FORMAT, WEIGHTS_FILE, check_config, folder_config, output_names

#: The ONNX opset the export asks for (torch's default for its dynamo-based exporter).
ONNX_OPSET = 20
#: The ONNX model passes its check when every output is within
#: ``ONNX_ATOL + ONNX_RTOL * |eager|`` of the eager model's (numpy.allclose) on a random batch.
ONNX_RTOL = 1e-4
ONNX_ATOL = 1e-4
#: The saved pt2 program runs the model's own kernels, so it must match the eager model closely.
PT2_RTOL = 1e-5
PT2_ATOL = 1e-5
#: What ``--format onnx`` needs installed, and the command that installs it.
ONNX_PACKAGES = ("onnx", "onnxscript")
ONNX_INSTALL = "pip install 'walnet[onnx]'"

CARD_FILE = "README.md"
PT2_FILE = "model.pt2"
ONNX_FILE = "model.onnx"
ONNX_DATA_FILE = "model.onnx.data"  # ONNX keeps weights over 2 GB in a file beside the model
#: Every file an export may write: an existing one is only replaced with ``overwrite``.
EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE, PT2_FILE, ONNX_FILE, ONNX_DATA_FILE)
_STAGING = "walnet-export"  # the temporary folder's name in the output folder (see walnet.files.staged)


class ExportError(RuntimeError):
    """A format that could not be exported, or whose exported model does not reproduce the
    eager model's outputs; nothing is written then."""


class MissingDependencyError(ImportError, ValueError):
    """A format asked for whose optional packages are not installed (a ValueError too, so the
    command line reports it as one line)."""


def require_onnx() -> None:
    """Raises :class:`MissingDependencyError` unless the packages ``torch.onnx.export`` needs
    (:data:`ONNX_PACKAGES`) are installed, naming what to ``pip install``."""
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependencyError(f"--format onnx needs {' and '.join(ONNX_PACKAGES)} (not installed: "
                                     f"{', '.join(missing)}); {ONNX_INSTALL}")


def export_model(config: ExportConfig | str | Path, output: str | Path | None = None, **options) -> dict:
    """Writes the model of a ``walnet train`` checkpoint to a model folder (see the module
    docstring for its files).

    ``config``: an :class:`~walnet.engine.config.ExportConfig`, or the checkpoint with the output
    folder next to it and the config's other fields as keywords
    (``export_model("runs/a/best.pt", "exported", formats=("pt2",))``).

    Every check comes first (formats and their packages, the output folder, the checkpoint);
    an existing export file in the folder is an error naming it unless ``overwrite``, which
    replaces the export and removes files of formats not written this time. Returns a summary:
    ``output``, ``files`` (written), ``model``, ``epoch``, ``formats`` (config.json's entries)
    and ``onnx_checked`` (True / False without onnxruntime / None without ONNX).
    """
    if not isinstance(config, ExportConfig):
        config = ExportConfig(checkpoint=config, output=output, **options)
    elif output is not None or options:
        raise ValueError("pass either an ExportConfig or the checkpoint, output and options, not both")
    return _export(config)


def _reads(config: ExportConfig) -> Inputs:
    """What export reads: the checkpoint, and its run's metrics.json and split.csv (the model
    card's scores and split)."""
    ckpt = Path(config.checkpoint)
    reads = Inputs()
    reads.add_file(ckpt, f"the checkpoint {ckpt}")
    for name in ("metrics.json", "split.csv"):
        reads.add_file(ckpt.parent / name, f"the run's {name} {ckpt.parent / name}")
    return reads


def _check_target(config: ExportConfig) -> None:
    """The output folder can be written, holds no file that is the checkpoint, and holds no
    earlier export unless ``overwrite``."""
    out = Path(config.output)
    check_output(out, "--output", reads=_reads(config), writes=EXPORT_FILES, command="export")
    folders = [name for name in EXPORT_FILES if (out / name).is_dir()]
    if folders:
        raise ValueError(f"--output {out}: {out / folders[0]} is a folder where the export writes a file")
    existing = [name for name in EXPORT_FILES if (out / name).exists() or (out / name).is_symlink()]
    if existing and not config.overwrite:
        raise FileExistsError(f"--output {out} already holds {', '.join(existing)}; pass --overwrite to replace "
                              "the export there")


# ---------------------------------------------------------------------------------------------
# what the model is


class _Outputs(nn.Module):
    """The model's forward as a tuple of tensors: exported programs return tensors only (no
    ``None`` for a missing segmentation head; the attention maps only feed the PGM in training)."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model = model
        self.with_seg = "seg_logits" in names

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(image)
        if isinstance(out, torch.Tensor):  # a timm baseline: the logits
            return (out,)
        return (out.logits, out.seg_logits) if self.with_seg else (out.logits,)


def _example(batch: int, size: int, device) -> torch.Tensor:
    # a fixed seed: the checks compare the same input on every run
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).to(device)


def _compare(what: str, names: list[str], want, got, rtol: float, atol: float) -> float:
    """The largest absolute difference between `want` and `got` (tuples of arrays or tensors,
    named `names`); an :class:`ExportError` where one is not within ``atol + rtol * |want|``."""
    worst = 0.0
    for name, a, b in zip(names, want, got, strict=True):
        a = a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        b = b.detach().float().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
        if a.shape != b.shape:
            raise ExportError(f"{what} gives {name} of shape {list(b.shape)}, the eager model {list(a.shape)}; "
                              "nothing was written")
        diff = float(np.abs(a - b).max()) if a.size else 0.0
        if not np.allclose(b, a, rtol=rtol, atol=atol):
            raise ExportError(f"{what} differs from the eager model: {name} by up to {diff:.3g} (tolerance atol "
                              f"{atol:g} + rtol {rtol:g}); nothing was written")
        worst = max(worst, diff)
    return worst


def _dynamic_batch() -> tuple[dict, ...]:
    return ({0: torch.export.Dim("batch", min=1)},)


# ---------------------------------------------------------------------------------------------
# the formats


def _write_safetensors(model: nn.Module, path: Path) -> dict:
    # clones: safetensors refuses tensors that share memory (tied weights), and the file holds
    # each tensor on its own anyway
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    path.write_bytes(safetensors.torch.save(tensors, metadata={"format": "pt", "walnet_format": FORMAT}))
    return {"file": WEIGHTS_FILE, "tensors": len(tensors)}


def _export_pt2(model: nn.Module, names: list[str], size: int, device: torch.device, path: Path) -> dict:
    """torch.export of the eval model (walnet's ops kept), saved to `path` and loaded back to
    check it against the eager model."""
    wrapper = _Outputs(model, names).eval()
    example, static_reason = _example(2, size, device), None
    try:
        program = torch.export.export(wrapper, (example,), dynamic_shapes=_dynamic_batch())
    except Exception as exc:  # noqa: BLE001 - whatever keeps the batch from being dynamic: try a fixed one
        static_reason = first_line(exc)
        example = _example(1, size, device)
        try:
            program = torch.export.export(wrapper, (example,))
        except Exception as exc2:  # noqa: BLE001 - torch.export's errors have no common base
            raise ExportError(f"torch.export cannot export the model ({first_line(exc2)}); nothing was "
                              "written") from exc2
    torch.export.save(program, path)
    check = _example(3 if static_reason is None else 1, size, device)
    with torch.no_grad():
        want, got = wrapper(check), torch.export.load(path).module()(check)
    worst = _compare(f"the saved {PT2_FILE}", names, want, got, PT2_RTOL, PT2_ATOL)
    ops = sorted({str(n.target).removesuffix(".default") for n in program.graph.nodes
                  if n.op == "call_function" and str(n.target).startswith("walnet.")})
    entry = {"file": PT2_FILE, "example_input_shape": list(example.shape), "dynamic_batch": static_reason is None,
             "device": device.type, "outputs": names, "walnet_ops": [o.replace(".", "::", 1) for o in ops],
             "checked": {"batch": check.shape[0], "rtol": PT2_RTOL, "atol": PT2_ATOL, "max_abs_diff": worst}}
    if static_reason is not None:
        entry["why_static"] = static_reason
    return entry


def _export_onnx(model: nn.Module, names: list[str], size: int, path: Path) -> dict:
    """``torch.onnx.export`` (dynamo) of a CPU copy of the model running walnet's reference ops;
    with onnxruntime, checked against the eager model (its own backend) on a random batch."""
    cpu = copy.deepcopy(model).cpu().eval()  # the caller's model keeps its device and backend
    backend = getattr(cpu, "backend", None)
    if isinstance(cpu, WALNet):
        cpu.backend = "reference"  # ONNX knows no walnet:: operators; the references are plain torch
    wrapper = _Outputs(cpu, names).eval()
    example, static_reason = _example(2, size, "cpu"), None
    kw = dict(input_names=["image"], output_names=names, opset_version=ONNX_OPSET, dynamo=True, verbose=False)
    try:
        program = torch.onnx.export(wrapper, (example,), dynamic_shapes=_dynamic_batch(), **kw)
    except Exception as exc:  # noqa: BLE001 - whatever keeps the batch from being dynamic: try a fixed one
        static_reason = first_line(exc)
        example = _example(1, size, "cpu")
        try:
            program = torch.onnx.export(wrapper, (example,), **kw)
        except Exception as exc2:  # noqa: BLE001 - the exporter's errors have no common base
            raise ExportError(f"torch.onnx.export cannot export the model ({first_line(exc2)}); nothing was "
                              "written") from exc2
    program.save(str(path))  # weights inside the file unless they exceed protobuf's 2 GB
    entry = {"file": ONNX_FILE, "opset": ONNX_OPSET, "input": "image", "outputs": names,
             "example_input_shape": list(example.shape), "dynamic_batch": static_reason is None,
             "walnet_ops": "reference (pure PyTorch, decomposed into standard ONNX operators)"}
    if (path.parent / ONNX_DATA_FILE).exists():
        entry["external_data"] = ONNX_DATA_FILE
    if static_reason is not None:
        entry["why_static"] = static_reason
    try:
        import onnxruntime
    except ImportError:
        entry["checked"] = None  # not run: onnxruntime is not installed
        return entry
    if backend is not None:
        cpu.backend = backend  # compared with the model as it runs in walnet
    check = _example(3 if static_reason is None else 1, size, "cpu")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = wrapper(check)
    got = session.run(names, {"image": check.numpy()})
    worst = _compare(f"the ONNX model (onnxruntime {onnxruntime.__version__})", names, want, got, ONNX_RTOL,
                     ONNX_ATOL)
    entry["checked"] = {"onnxruntime": onnxruntime.__version__, "batch": check.shape[0], "rtol": ONNX_RTOL,
                        "atol": ONNX_ATOL, "max_abs_diff": worst}
    return entry


# ---------------------------------------------------------------------------------------------
# the run


def _export(config: ExportConfig) -> dict:
    out = Path(config.output)
    if "onnx" in config.formats:
        require_onnx()
    # the folder's checks come before the lock makes it; those of its files again under the lock,
    # so an export that finished meanwhile is not replaced without --overwrite
    check_output(out, "--output", reads=_reads(config), writes=EXPORT_FILES, command="export")
    with run_lock(out, "walnet export"):
        return _export_locked(config)


@contextlib.contextmanager
def _writing(name: str, out: Path, kept: bool):
    """Turns a failed write of the export's file `name` (disk full, no permission) into a
    :class:`WriteError` naming ``out/name``, in one line; `kept`: an earlier export is there."""
    try:
        yield
    except (WriteError, ExportError):
        raise
    except (OSError, RuntimeError) as exc:
        # torch's file writer reports a failed write (a full disk) as a RuntimeError
        if not isinstance(exc, OSError) and "write" not in str(exc).lower():
            raise
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
        state = "the earlier export there is unchanged" if kept else "nothing was written"
        raise WriteError(f"cannot write {out / name}: {reason}; {state}") from exc


def _export_locked(config: ExportConfig) -> dict:
    out, ckpt = Path(config.output), Path(config.checkpoint)
    _check_target(config)
    kept = any((out / name).exists() for name in EXPORT_FILES)
    device = pick_device(config.device)
    trained = load_model(ckpt, device, kind="checkpoint")
    model, spec, run = trained.model, trained.spec, trained.train_config
    names = output_names(model)
    info = folder_config(model, spec, ckpt, trained.checkpoint["epoch"], dicom_region=run.dicom_region,
                         temperature=trained.checkpoint.get("temperature"))
    try:  # what the folder's readers would refuse is not written (class names unsafe in a CSV, ...)
        check_config(info, f"checkpoint {ckpt} cannot be exported: its {CONFIG_FILE}")
    except ValueError as exc:
        raise ValueError(f"{exc}; nothing was written") from None
    with staged(out, _STAGING) as stage:
        staging = stage.path
        with _writing(WEIGHTS_FILE, out, kept):
            info["formats"]["safetensors"] = _write_safetensors(model, staging / WEIGHTS_FILE)
        if "pt2" in config.formats:
            with _writing(PT2_FILE, out, kept):
                info["formats"]["pt2"] = _export_pt2(model, names, spec.size, device, staging / PT2_FILE)
        if "onnx" in config.formats:
            with _writing(ONNX_FILE, out, kept):
                info["formats"]["onnx"] = _export_onnx(model, names, spec.size, staging / ONNX_FILE)
        files = sorted(p.name for p in staging.iterdir()) + [CONFIG_FILE, CARD_FILE]
        info["files"] = files
        with _writing(CONFIG_FILE, out, kept):
            (staging / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        card = model_card(info, spec, run, ckpt)
        with _writing(CARD_FILE, out, kept):
            (staging / CARD_FILE).write_text(card, encoding="utf-8")
        stage.commit(files)
        for name in EXPORT_FILES:  # an earlier export's files of formats not written this time
            if name not in files and (out / name).exists():
                (out / name).unlink()
    onnx = info["formats"].get("onnx")
    return {"output": str(out), "files": files, "model": run.model, "epoch": int(trained.checkpoint["epoch"]),
            "formats": info["formats"], "onnx_checked": None if onnx is None else onnx["checked"] is not None}
