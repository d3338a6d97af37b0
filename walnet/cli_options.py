"""How a config's fields become the options of a ``walnet`` command (argparse), and back.

Each field of a config (:mod:`walnet.engine.config`) is one option: ``--<field-name>`` (or the
flags of :data:`FLAGS`), typed by the field, listed in ``--help`` under the field's group in the
order of :data:`GROUPS`, its help the field's doc followed by its default. :func:`build_config`
turns the parsed options back into the config. ``walnet train --config FILE`` reads a JSON file
of the config's fields (a run's ``args.json``, :func:`read_config_file`) whose values become the
options' defaults, so the options given on the command line override them.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import fields

from walnet.engine.config import EVAL_METRICS, FIGURE_FORMATS, SPLITS
from walnet.engine.config_fields import coerce_value, options
from walnet.engine.schedule import SCHEDULES

#: The ``--help`` groups, in the order they are listed: what a command reads, the model, how it is
#: trained, where and how fast it runs, what it writes. A group no field names is not listed.
GROUPS = ("data", "model", "optimisation", "runtime", "output")


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list (``--classes a,b,c``), each item stripped."""
    return tuple(item.strip() for item in text.split(","))


def float_arg(text: str) -> float:
    """A float option's value; one a float cannot hold (1e400 reads as inf) is refused as written."""
    value = float(text)  # no number: argparse's "invalid float value" (see __name__ below)
    mantissa = text.lower().split("e")[0]
    if (math.isinf(value) and "inf" not in mantissa) or (value == 0 and re.search(r"[1-9]", mantissa)):
        raise argparse.ArgumentTypeError(f"{text} is out of the range of a float (it would read as {value})")
    return value


float_arg.__name__ = "float"  # argparse names the type in its error for text that is no number
#: Flags other than the ``--<field-name>`` of :func:`~walnet.engine.config_fields.options`; the
#: first is the name help and messages use, the others are aliases (``--pretrained-path``: timm's).
FLAGS = {"batch_size": ("-b", "--batch-size"), "workers": ("-j", "--workers"), "masks_dir": ("--masks",),
         "overlays_dir": ("--overlays",), "formats": ("--format",),
         "pretrained_file": ("--pretrained-file", "--pretrained-path")}
#: argparse settings that the fields' types do not imply.
_EXTRA = {"split": {"choices": SPLITS}, "eval_metric": {"choices": EVAL_METRICS}, "masks_dir": {"metavar": "DIR"},
          "overlays_dir": {"metavar": "DIR"}, "pretrained_file": {"metavar": "FILE"},
          "figure_format": {"choices": FIGURE_FORMATS},
          "inputs": {"metavar": "INPUT"}, "classes": {"type": _names, "metavar": "A,B,C"},
          "formats": {"type": _names, "metavar": "FORMAT[,FORMAT]"}, "sched": {"choices": SCHEDULES},
          "class_weights": {"metavar": "{none,balanced,W1,W2,...}"}}
#: The tuple fields given as positional arguments; other tuple fields are comma-separated options.
_POSITIONAL = {"inputs"}
#: Pairs of fields of which exactly one is given: a required group of mutually exclusive options
#: where a config has both.
_ONE_OF = (("data_dir", "csv"), ("checkpoint", "model"))
#: Fields a ``--config`` file does not set: they name this invocation's run folder and the
#: checkpoint it continues, not a setting of the run (a recorded run's folder already holds it).
NOT_RECORDED = frozenset({"output", "resume"})


def default_text(default) -> str:
    """How ``--help`` shows a default: ``""`` (nothing) for None, False and empty values, ``on``
    for a switch that is on, a tuple comma-separated, anything else as Python writes it."""
    if default is None or default is False or default in ((), [], ""):
        return ""
    if default is True:
        return "on"
    if isinstance(default, (tuple, list)):
        return ",".join(map(str, default))
    return str(default)


def _help(doc: str, default) -> str:
    """The option's help: its doc, then its default unless the doc already names it; ``%`` escaped
    for argparse."""
    shown = default_text(default)
    text = doc if not shown or "(default" in doc else f"{doc} (default: {shown})"
    return text.replace("%", "%%")


def _add_option(parser, option, recorded: dict) -> None:
    """Adds a config field's `option`: its flags (``--<name>`` or :data:`FLAGS`), type, default
    (the `recorded` value where there is one) and help. A field without a default (or recorded
    value) is a required option; a tuple of paths takes the positional arguments (one or more;
    any number where the field has a default, as predict's inputs, which --csv replaces: the
    config says which is missing)."""
    name = option.name
    default = recorded.get(name, option.default)
    kw = dict(_EXTRA.get(name, {}), help=_help(option.doc, default))
    if name in _POSITIONAL:
        if option.required:
            parser.add_argument(name, nargs="+", **kw)
        else:
            parser.add_argument(name, nargs="*", default=default, **kw)
        return
    if option.kind is bool:
        # a switch that is on by default (or in the --config file) is turned off with --no-<name>
        kw["action"] = argparse.BooleanOptionalAction if default is True else "store_true"
    elif option.kind in (int, float):
        kw["type"] = float_arg if option.kind is float else int
    if option.required and name not in recorded:
        kw["required"] = True
    else:
        kw["default"] = default
    action = parser.add_argument(*FLAGS.get(name, (option.flag,)), dest=name, **kw)
    # Python 3.10's BooleanOptionalAction appends its own "(default: ...)": the help has one
    action.help = action.help.replace(" (default: %(default)s)", "")


def sections(parser) -> dict:
    """`parser`'s argument group of each of :data:`GROUPS`, made (in that order) on first use."""
    if not hasattr(parser, "walnet_sections"):
        parser.walnet_sections = {name: parser.add_argument_group(name) for name in GROUPS}
    return parser.walnet_sections


def add_options(parser, config: type, skip=(), recorded: dict | None = None) -> None:
    """One option per field of `config` but those in `skip`, in field order, each listed in
    ``--help`` under its field's group (:data:`GROUPS`); each pair of :data:`_ONE_OF`
    (``data_dir`` / ``csv``, ``checkpoint`` / ``model``) that `config` has as a group of which
    exactly one is given (at most one where `recorded`, the values of a ``--config`` file, gives
    one). The other fields' `recorded` values are their options' defaults."""
    recorded = recorded or {}
    offered = {o.name: o for o in options(config) if o.name not in skip}
    groups = sections(parser)

    def section(option):
        if option.group is None:
            return parser
        if option.group not in groups:
            groups[option.group] = parser.add_argument_group(option.group)
        return groups[option.group]

    exclusive = {}
    for pair in _ONE_OF:
        if set(pair) <= set(offered):
            required = all(recorded.get(name) is None for name in pair)
            group = section(offered[pair[0]]).add_mutually_exclusive_group(required=required)
            exclusive.update(dict.fromkeys(pair, group))
    own = {name: value for name, value in recorded.items() if name not in exclusive}
    for name, option in offered.items():
        _add_option(exclusive.get(name) or section(option), option, own)


def build_config(config: type, args: argparse.Namespace, skip=(), recorded: dict | None = None, **values):
    """`config` built from `values` and the parsed options named after its other fields (but
    those in `skip`, which keep their defaults). Of each :data:`_ONE_OF` pair that the command
    line leaves unset, the `recorded` (``--config``) values are taken."""
    given = {name: value for name, value in vars(args).items() if name not in skip}
    for pair in _ONE_OF:
        if recorded and all(given.get(name) is None for name in pair):
            given.update({name: recorded[name] for name in pair if name in recorded})
    # the namespace also holds the command's own entries (command, run, debug, config): not fields
    return config.from_dict({**given, **values}, strict=False)


def config_file_arg(argv: list[str]) -> str | None:
    """The FILE of ``--config FILE`` (or ``--config=FILE``, or an unambiguous prefix of at least
    ``--con``) in `argv`, None where it has none: read before parsing, since the file's values
    are the parser's defaults."""
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if len(name) >= 5 and "--config".startswith(name):
            return value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    return None


def read_config_file(path: str, config: type) -> dict:
    """The settings of the JSON file `path` for `config` (a run's ``args.json`` for
    :class:`~walnet.engine.config.TrainConfig`), each checked against its field's type, without
    :data:`NOT_RECORDED`; a ValueError naming the file (and the key) where it cannot be read, is
    no JSON object or holds a key that is no field of `config`."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise ValueError(f"--config {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--config {path} is not a JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path} holds a JSON {type(data).__name__}, not an object of settings")
    data = config.upgrade_keys(data)
    names = {f.name for f in fields(config)}
    unknown = [key for key in data if key not in names]
    if unknown:
        raise ValueError(f"--config {path}: {unknown[0]!r} is no setting of {config.__name__} "
                         f"(known: {', '.join(sorted(names))})")
    try:
        return {key: coerce_value(config, key, value) for key, value in data.items() if key not in NOT_RECORDED}
    except ValueError as exc:
        raise ValueError(f"--config {path}: {exc}") from None
