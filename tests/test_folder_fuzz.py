"""Fuzzing an exported folder's config.json (hypothesis): one to three mutations of a valid
config (a value replaced by a string for a boolean, a huge or negative integer, a hub backbone, a
path, a formula or duplicate class name...; a key removed or an unknown one added; a value
nested thousands of levels deep). Whatever the file, load_pretrained, load_model and
WALNet.from_pretrained return a working model or raise one line of ValueError naming
config.json, and no socket is ever opened. ``WALNET_FUZZ_EXAMPLES=<n>`` runs more random
examples than the fixed (derandomized) 20 of ``make test``.
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walnet.engine.export import export_model
from walnet.engine.loading import load_model
from walnet.models import WALNet, load_pretrained

from conftest import small_checkpoint
from test_folder_schema import block_network

_EXAMPLES = int(os.environ.get("WALNET_FUZZ_EXAMPLES", "20"))
FUZZ = settings(max_examples=_EXAMPLES, deadline=None, derandomize="WALNET_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SIZE = 48
NEST = "\x00nest\x00"  # a placeholder value, replaced in the file's text by deeply nested brackets

#: Values a careless or hostile editor of config.json writes.
HOSTILE = st.one_of(
    st.sampled_from([
        "no", "yes", "true", "1", "", "hf-hub:timm/resnet18.a1_in1k", "hf_hub:timm/resnet18", "local-dir:/etc",
        "/etc/passwd", "../model.safetensors", "resnet18", "resnet34", "resnest50d", "dpn", "walnet_no_pgm",
        "walnet_crop", "=cmd|' /C calc'!A0", "-1", "@x", 2**31, 2**63, 60000, 4097, 2048, 16, 15, 2, 1, 0, -1, True,
        False, None, 3.5, ["a", "A", "b"], ["=1", "b", "c"], ["x", "y", "z"], ["x", "y"], ["a\tb", "c", "d"],
        {"size": 2**31}, {"pretrained_file": "/etc/passwd"}, {"pretrained": True}, {"backbone": "hf-hub:x/y"}, NEST,
    ]),
    st.integers(-2**40, 2**40), st.text(max_size=12), st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=4)), max_size=4),
)
UNKNOWN_KEYS = st.sampled_from(["pretrained_file", "pretrained", "hook", "url", "extra", "size", "backbone"])
#: Where config.json is read to build or run the model: hostile values are aimed there often.
TARGETS = st.sampled_from([("kwargs", "backbone"), ("kwargs", "pretrained_file"), ("kwargs", "pretrained"),
                           ("kwargs", "use_pgm"), ("kwargs", "use_rcm"), ("kwargs", "attention_channels"),
                           ("kwargs", "rcm_warmup_epochs"), ("input", "size"), ("input", "dicom_region"),
                           ("classes", 0), ("classes",), ("num_classes",), ("model",), ("backbone",)])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """An exported folder of a small WAL-Net and its config.json."""
    root = tmp_path_factory.mktemp("fuzz")
    ckpt, _ = small_checkpoint(root / "run" / "best.pt", size=SIZE)
    export_model(ckpt, root / "model")
    return root / "model", json.loads((root / "model" / "config.json").read_text())


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, prefix + (i,))


def _parent(config, path):
    for key in path[:-1]:
        config = config[key]
    return config


def _aim(config: dict, path: tuple, value) -> None:
    """Sets `config` at `path` to `value`; where the way there is missing, the path's first key."""
    target = config
    for key in path[:-1]:
        inner = target.get(key) if isinstance(target, dict) else None
        if not isinstance(inner, (dict, list)):
            config[path[0]] = value
            return
        target = inner
    if isinstance(target, list) and path[-1] >= len(target):
        config[path[0]] = value
    else:
        target[path[-1]] = value


def _safe_in_csv(name) -> bool:
    return (isinstance(name, str) and 1 <= len(name) <= 64 and name.isprintable() and name == name.strip()
            and not name.startswith(("=", "+", "-", "@")))


@st.composite
def mutated(draw, config: dict):
    """`config` with one to three mutations; returned as the text of config.json."""
    config = copy.deepcopy(config)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(config) if p]
        path = draw(st.sampled_from(paths))
        parent = _parent(config, path)
        action = draw(st.sampled_from(["aim", "aim", "replace", "replace", "delete", "add"]))
        if action == "aim":
            _aim(config, draw(TARGETS), draw(HOSTILE))
        elif action == "replace":
            parent[path[-1]] = draw(HOSTILE)
        elif action == "delete":
            del parent[path[-1]]
        else:
            target = parent[path[-1]] if isinstance(parent[path[-1]], dict) else config
            target[draw(UNKNOWN_KEYS)] = draw(HOSTILE)
    text = json.dumps(config)
    depth = draw(st.sampled_from([7, 60, 5000, 100_000]))
    return text.replace(json.dumps(NEST), "[" * depth + "]" * depth)


def _check(load, folder: Path) -> None:
    """`load(folder)` gives a working model or one line of ValueError naming config.json."""
    try:
        model = load(folder)
    except ValueError as exc:
        assert "config.json" in str(exc) and "\n" not in str(exc), str(exc)
        return
    config = json.loads((folder / "config.json").read_text())
    with torch.no_grad():
        out = model(torch.rand(1, 3, SIZE, SIZE))
    logits = out if isinstance(out, torch.Tensor) else out.logits
    assert logits.shape == (1, len(config["classes"])) and torch.isfinite(logits).all()
    # what predict takes from the folder: an input size it can allocate, class names safe in its
    # CSV, switches that are booleans
    trained = load_model(folder)
    assert 16 <= trained.size <= 2048 and isinstance(trained.dicom_region, bool)
    assert all(_safe_in_csv(c) for c in trained.classes)
    assert len({c.casefold() for c in trained.classes}) == len(trained.classes)
    if isinstance(model, WALNet):
        assert isinstance(model.use_pgm, bool) and isinstance(model.use_rcm, bool)


@FUZZ
@given(data=st.data())
def test_any_config_json_loads_or_is_one_line_naming_it(base, data, monkeypatch):
    block_network(monkeypatch)
    folder, config = base
    text = data.draw(mutated(config), label="config.json")
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "model"
        bad.mkdir()
        os.symlink(folder / "model.safetensors", bad / "model.safetensors")
        (bad / "config.json").write_text(text, encoding="utf-8")
        for load in (load_pretrained, lambda f: load_model(f).model, WALNet.from_pretrained):
            _check(load, bad)
