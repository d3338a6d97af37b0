"""The schema of an exported folder's config.json: :func:`check`.

A model folder is data: its config.json says which model walnet builds and how it takes its
input, and nothing in it may make loading fetch from the network, read another file or exhaust
memory. So only the keys an export writes are read; booleans are JSON booleans; integers lie
within the bounds below, which :class:`walnet.models.spec.ModelSpec` keeps too (input size
:data:`SIZE_RANGE`, attention channels :data:`ATTENTION_CHANNELS_RANGE`, classes
:data:`CLASSES_RANGE`); a backbone is a name timm lists locally, the one the model starts from; pretrained
weights are never named (the folder holds every weight); class names are unique, printable and
never read as a spreadsheet formula, since they become the columns of ``walnet predict``'s CSV.
``temperature`` (optional, from ``walnet calibrate``), which the logits are divided by before the
softmax, is a positive finite number; ``input.resize`` (how an image is resized to the input
size; a folder without it: bilinear, as training resizes) one of
:data:`walnet.constants.RESIZE_METHODS`. The informational entries (versions, the source
checkpoint, the exported formats) are checked
for their shape only. Each violation is a ValueError naming the key; the file's path is added
by :func:`walnet.models.folder.check_config`.
"""
from __future__ import annotations

import math

from walnet import ops
from walnet.constants import FORMULA_PREFIXES, RESIZE_METHODS, formula_problem  # noqa: F401 - the rule's table
from walnet.models.backbone import check_backbone
from walnet.models.registry import BASELINES, DEFAULT_BACKBONE, WALNET_ARGS, model_names

#: The bounds of a model's numbers (inclusive): beyond them a model is a mistake or exhausts memory.
SIZE_RANGE = (16, 2048)
ATTENTION_CHANNELS_RANGE = (1, 4096)
RCM_WARMUP_RANGE = (0, 100_000)
CLASSES_RANGE = (2, 1000)
#: Characters of a free-text entry (a path, a description, a version).
MAX_TEXT = 4096
#: Characters of a class name.
MAX_CLASS_NAME = 64
#: The exported formats config.json may describe.
FORMATS = ("safetensors", "pt2", "onnx")

REQUIRED = ("format", "format_version", "model", "kwargs", "num_classes", "classes", "input")
OPTIONAL = ("backbone", "outputs", "walnet_version", "torch_version", "checkpoint", "formats", "files", "temperature")
INPUT_KEYS = ("size", "dicom_region", "resize", "shape", "channels", "dtype", "value_range", "mean", "std",
              "normalization")
#: Never read from a folder: its weights are all in model.safetensors.
PRETRAINED_ARGS = ("pretrained", "pretrained_file")


def check_int(name: str, value, bounds: tuple[int, int]) -> None:
    """A ValueError naming `name` unless `value` is an integer (not a bool) within `bounds`."""
    low, high = bounds
    if not _is_int(value) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")


def short(value) -> str:
    """`value` as a message shows it: its repr, at most 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(key: str, what: str, value) -> None:
    raise ValueError(f"{key!r} must be {what}, got {short(value)}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(key: str, value) -> None:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        _fail(key, f"a string of at most {MAX_TEXT} characters", value)


def _backbone(key: str, value) -> None:
    _text(key, value)
    try:
        check_backbone(value)
    except ValueError as exc:
        raise ValueError(f"{key!r}: {exc}") from None


def _known(key: str, value, keys) -> None:
    if not isinstance(value, dict):
        _fail(key, "a JSON object", value)
    unknown = [k for k in value if k not in keys]
    if unknown:
        raise ValueError(f"{key!r} holds the unknown key {short(unknown[0])} (known: {', '.join(keys)})")


def class_name_problem(name) -> str | None:
    """What makes `name` no class name of a model folder (None: nothing): not a string, empty or
    over :data:`MAX_CLASS_NAME` characters, unprintable, padded with spaces, or starting like a
    spreadsheet formula (:data:`FORMULA_PREFIXES`)."""
    if not isinstance(name, str):
        return "must be a string"
    if not 1 <= len(name) <= MAX_CLASS_NAME:
        return f"must have 1 to {MAX_CLASS_NAME} characters"
    if not name.isprintable():
        return "must be printable (no tab, line break or control character)"
    if name != name.strip():
        return "must not start or end with a space"
    return formula_problem(name)


def check(config: dict) -> None:
    """Raises a ValueError naming the key unless `config` (a config.json's object, its format
    and version checked) keeps to the schema of the module docstring."""
    for key in REQUIRED:
        if key not in config:
            raise ValueError(f"lacks {key!r}")
    unknown = [k for k in config if k not in REQUIRED + OPTIONAL]
    if unknown:
        raise ValueError(f"holds the unknown key {short(unknown[0])}")
    if not isinstance(config["model"], str) or config["model"] not in model_names():
        _fail("model", f"one of {model_names()}", config["model"])
    _check_kwargs(config["model"], config["kwargs"])
    check_int("'num_classes'", config["num_classes"], CLASSES_RANGE)
    _check_classes(config["classes"], config["num_classes"])
    _check_input(config["input"])
    if "backbone" in config:
        _backbone("backbone", config["backbone"])
        model, kwargs = config["model"], config["kwargs"]
        start = BASELINES[model] if model in BASELINES else kwargs.get("backbone", DEFAULT_BACKBONE)
        if config["backbone"] != start:
            raise ValueError(f"'backbone' is {short(config['backbone'])}, but the model it describes starts from "
                             f"{start!r}")
    temperature = config.get("temperature", 1.0)
    if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and math.isfinite(temperature)
            and temperature > 0):
        _fail("temperature", "a positive finite number (the softmax's temperature, walnet calibrate)", temperature)
    _check_about(config)


def _check_kwargs(model: str, kwargs) -> None:
    if not isinstance(kwargs, dict):
        _fail("kwargs", "a JSON object of the model's arguments", kwargs)
    for key in PRETRAINED_ARGS:
        if key in kwargs:
            raise ValueError(f"'kwargs' holds {key!r}: a model folder holds every weight and never names "
                             "pretrained weights to load")
    if model in BASELINES and kwargs:
        _fail("kwargs", f"empty for the baseline {model!r}", kwargs)
    _known("kwargs", kwargs, tuple(WALNET_ARGS.values()))
    if "backbone" in kwargs:
        _backbone("kwargs.backbone", kwargs["backbone"])
    if "roi_method" in kwargs and (not isinstance(kwargs["roi_method"], str)
                                   or kwargs["roi_method"] not in ops.ROI_METHODS):
        _fail("kwargs.roi_method", f"one of {list(ops.ROI_METHODS)}", kwargs["roi_method"])
    for key in ("use_rcm", "use_pgm"):
        if key in kwargs and not isinstance(kwargs[key], bool):
            _fail(f"kwargs.{key}", "true or false", kwargs[key])
    for key, bounds in (("rcm_warmup_epochs", RCM_WARMUP_RANGE), ("attention_channels", ATTENTION_CHANNELS_RANGE)):
        if key in kwargs:
            check_int(f"'kwargs.{key}'", kwargs[key], bounds)


def _check_classes(classes, count: int) -> None:
    if not isinstance(classes, list) or len(classes) != count:
        _fail("classes", f"a list of {count} class names", classes)
    seen = {}
    for i, name in enumerate(classes):
        problem = class_name_problem(name)
        if problem:
            raise ValueError(f"'classes'[{i}] {problem}, got {short(name)}")
        if name.casefold() in seen:
            raise ValueError(f"'classes' names {short(seen[name.casefold()])} and {short(name)}: class names must "
                             "differ, ignoring case")
        seen[name.casefold()] = name


def _numbers(key: str, value, positive: bool = False) -> None:
    ok = isinstance(value, list) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
        for v in value)
    if not ok:
        _fail(key, f"a list of 3 {'positive ' if positive else ''}numbers", value)


def _check_input(given) -> None:
    _known("input", given, INPUT_KEYS)
    if "size" not in given:
        raise ValueError("'input' lacks 'size' (the input side in pixels)")
    size = given["size"]
    check_int("'input.size'", size, SIZE_RANGE)
    if "dicom_region" in given and not isinstance(given["dicom_region"], bool):
        _fail("input.dicom_region", "true or false", given["dicom_region"])
    if "resize" in given and (not isinstance(given["resize"], str) or given["resize"] not in RESIZE_METHODS):
        _fail("input.resize", f"one of {list(RESIZE_METHODS)} (how images are resized to the input size)",
              given["resize"])
    for key, want in (("shape", ["N", 3, size, size]), ("channels", "RGB"), ("dtype", "float32"),
                      ("value_range", [0.0, 1.0])):
        if key in given and (given[key] != want or type(given[key]) is not type(want)):
            _fail(f"input.{key}", repr(want), given[key])
    if "shape" in given and any(isinstance(v, bool) for v in given["shape"]):
        _fail("input.shape", repr(["N", 3, size, size]), given["shape"])
    for key in ("mean", "std"):
        if key in given:
            _numbers(f"input.{key}", given[key], positive=key == "std")
    if "normalization" in given:
        _text("input.normalization", given["normalization"])


def _check_about(config: dict) -> None:
    """The informational entries: what the model outputs, the versions and checkpoint it came
    from, the formats and files of the export."""
    if "outputs" in config:
        _known("outputs", config["outputs"], ("logits", "seg_logits"))
        for key, value in config["outputs"].items():
            _text(f"outputs.{key}", value)
    for key in ("walnet_version", "torch_version"):
        if key in config:
            _text(key, config[key])
    if "checkpoint" in config:
        _known("checkpoint", config["checkpoint"], ("path", "epoch"))
        if "path" in config["checkpoint"]:
            _text("checkpoint.path", config["checkpoint"]["path"])
        if "epoch" in config["checkpoint"]:
            check_int("'checkpoint.epoch'", config["checkpoint"]["epoch"], (0, 10**9))
    if "formats" in config:
        _known("formats", config["formats"], FORMATS)
        for key, value in config["formats"].items():
            if not isinstance(value, dict):
                _fail(f"formats.{key}", "a JSON object", value)
    if "files" in config:
        files = config["files"]
        if not isinstance(files, list) or len(files) > 16:
            _fail("files", "a list of at most 16 file names", files)
        for i, name in enumerate(files):
            _text(f"files[{i}]", name)
