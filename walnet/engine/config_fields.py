"""How walnet's configs are declared, typed, checked and serialised: :func:`option` declares a
field with its default, doc and ``--help`` group; :class:`ConfigBase` coerces every value to its
field's type on construction (a :class:`ValueError` naming the field otherwise), runs the
config's own checks and round-trips through plain JSON (:meth:`ConfigBase.to_dict`,
:meth:`ConfigBase.from_dict`); :func:`options` lists the fields as the command line offers them.
The ``check_*`` functions are the checks several configs share. The configs themselves are in
:mod:`walnet.engine.config`.
"""
from __future__ import annotations

import functools
import os
import types
import typing
from dataclasses import MISSING, dataclass, field, fields

from walnet.constants import formula_problem


def option(default=MISSING, doc: str = "", group: str | None = None):
    """A config field with its default (none: required), its doc (the option's help) and the
    group its option is listed under in ``--help`` (none: with the command's other options)."""
    return field(default=default, metadata={"doc": doc, "group": group})


def flag_of(name: str) -> str:
    """The command-line option of a field (``batch_size`` -> ``--batch-size``), as messages name it."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Option:
    """A config field as a command line offers it: its `name`, `kind` (bool, int, float, str or
    ``tuple[str, ...]``, without ``| None``), `default` (``required`` when it has none), `doc`,
    `group` (None: with the command's other options) and `flag` (``--<name>``)."""

    name: str
    kind: type
    default: object
    required: bool
    doc: str
    group: str | None
    flag: str


def options(config: type) -> list[Option]:
    """The :class:`Option` of every field of `config`, in field order."""
    return [Option(f.name, field_kind(config, f.name), None if f.default is MISSING else f.default,
                   f.default is MISSING, f.metadata["doc"], f.metadata["group"], flag_of(f.name))
            for f in fields(config)]


@dataclass(frozen=True, kw_only=True)
class ConfigBase:
    """Type checks, normalisation and (de)serialisation shared by the configs below."""

    def __post_init__(self) -> None:
        for f in fields(self):
            # frozen: the normalised value replaces the given one before anyone can see it
            object.__setattr__(self, f.name, coerce_value(type(self), f.name, getattr(self, f.name)))
        self._check()

    def _check(self) -> None:
        """Checks between values that their types do not express (overridden per config)."""

    def to_dict(self) -> dict:
        """The fields as a JSON-compatible dict (tuples become lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: typing.Mapping, *, strict: bool = True):
        """The config of ``data`` (e.g. :meth:`to_dict`'s output); missing fields take their
        defaults. A key that is not a field is an error unless ``strict=False`` (reading a
        checkpoint whose args hold keys this version does not know). The negative switches that
        walnet 0.1.0 wrote (``"no_rcm": true``, ...) are read as their positive fields
        (``rcm`` false), so its args.json files and checkpoints read as they were written."""
        names = {f.name for f in fields(cls)}
        data = cls.upgrade_keys(data)
        unknown = sorted(k for k in data if k not in names)
        if unknown and strict:
            raise ValueError(f"{cls.__name__} has no option(s) {unknown}; known: {sorted(names)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def upgrade_keys(cls, data: typing.Mapping) -> dict:
        """A copy of `data` with the negative switches of walnet 0.1.0 (``"no_rcm": true``) read
        as their positive fields (``"rcm": false``)."""
        names = {f.name for f in fields(cls)}
        data = dict(data)
        for key in [k for k in data if k.startswith("no_") and k[3:] in names and isinstance(data[k], bool)]:
            data.setdefault(key[3:], not data.pop(key))
        return data


@functools.cache
def _type_hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


_WANTED = {bool: "True or False", int: "an integer", float: "a number", str: "a string or path"}


def field_kind(config: type, name: str):
    """The type of `config`'s field `name` without its ``| None``: bool, int, float, str or
    ``tuple[str, ...]``."""
    hint = _type_hints(config)[name]
    if isinstance(hint, types.UnionType):  # X | None: the fields' only unions
        return next(t for t in typing.get_args(hint) if t is not type(None))
    return hint


def coerce_value(config: type, name: str, value):
    """`value` as the field's type: paths as str (so the config is plain JSON), an int as float
    where a float is asked for; anything else is a ValueError naming the field. The command line
    always passes the right types, so these errors name the Python field."""
    if value is None and isinstance(_type_hints(config)[name], types.UnionType):
        return None
    kind = field_kind(config, name)
    if typing.get_origin(kind) is tuple:  # tuple[str, ...]: one path (or name) or several
        items = (value,) if isinstance(value, (str, os.PathLike)) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, (str, os.PathLike)) for v in items):
            raise ValueError(f"{name} must be a sequence of strings, got {value!r}")
        return tuple(os.fspath(v) for v in items)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)  # bool is an int subclass
    if kind is str and isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if kind is float and is_number:
        return float(value)
    if (kind is int and is_number and isinstance(value, int)) or (kind is bool and isinstance(value, bool)):
        return value
    raise ValueError(f"{name} must be {_WANTED[kind]}, got {value!r}")


def check_data(config) -> None:
    if (config.data_dir is None) == (config.csv is None):
        raise ValueError("give exactly one of data_dir (--data-dir) and csv (--csv)")


def check_at_least(config, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            raise ValueError(f"{flag_of(name)} must be at least {minimum}, got {value}")


def check_seed(config) -> None:
    # numpy's generators take seeds of 32 bits; a larger one would fail mid-run
    if not 0 <= config.seed < 2**32:
        raise ValueError(f"--seed must be between 0 and {2**32 - 1}, got {config.seed}")


def check_given(config, *names: str) -> None:
    # a missing one is already a TypeError of the constructor; this catches "" and ()
    for name in names:
        if not getattr(config, name):
            raise ValueError(f"{name} must not be empty")


def check_classes(classes) -> None:
    if classes is None:
        return
    names = [c.strip() for c in classes]
    if len(names) < 2 or not all(names):
        raise ValueError(f"--classes takes two or more comma-separated class names, got {','.join(classes)!r}")
    folded = [n.casefold() for n in names]
    if len(set(folded)) != len(folded):
        raise ValueError(f"--classes names a class twice: {','.join(classes)!r}")
    for name in names:
        problem = formula_problem(name)
        if problem:
            raise ValueError(f"--classes: the class name {name!r} {problem}")
