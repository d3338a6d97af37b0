"""The ``walnet`` command line (``walnet <command> ...`` or ``python -m walnet <command> ...``).

Commands: ``phantom`` (write the embedded synthetic dataset), ``train``, ``evaluate`` (metrics and figures),
``predict``, ``export`` (a checkpoint as a model folder), ``calibrate`` (temperature scaling), ``experiment``
(seeds x models -> the paper's tables) and ``demo``.

With :mod:`walnet.cli_options` (how a config's fields become options), this is the one module that knows
argparse: the options of train, evaluate, predict, export, calibrate and demo are the fields of their configs
(:mod:`walnet.engine.config`, which holds the defaults, help texts and ``--help`` groups); each command builds
its config from the parsed options and hands it to the engine. ``train --config FILE`` takes the defaults of
its options from a JSON file of its config's fields (a run's ``args.json``).

Every error a user can cause (bad flags, data, paths, devices, a locked run folder) reaches the terminal as
one line, ``walnet <command>: error: ...``, with exit status 2; ``--debug`` (before or after the command)
shows the traceback instead. An exception of another kind is a bug in walnet and keeps its traceback.

The engine reports progress on the ``walnet`` logger and never prints; for the length of a command this module
shows its records: information as plain lines on stdout (the epoch lines, an experiment's table), warnings as
``walnet <command>: warning: ...`` on stderr, like the warnings walnet raises.
"""
from __future__ import annotations

import argparse
import csv
import functools
import importlib.metadata
import json
import platform
import re
import sys
import warnings

from walnet.cli_options import add_options as _add_options
from walnet.cli_options import build_config as _config
from walnet.cli_options import config_file_arg, float_arg, read_config_file, sections
from walnet.console import console_log, show_warning
from walnet.engine.config import CalibrateConfig, DemoConfig, EvalConfig, ExportConfig, PredictConfig, TrainConfig
from walnet.engine.config_fields import options
from walnet.engine.experiment import DEFAULT_SEEDS, TABLES


def _phantom(args: argparse.Namespace) -> int:
    from walnet.data import phantom

    csv_path = phantom.generate(args.output, n=args.n, seed=args.seed, size=args.size,
                                plaque_area=args.plaque_area, distractors=args.distractors)
    print(f"wrote {args.n} phantom images ({args.size}x{args.size}) and their masks to {args.output}; "
          f"labels: {csv_path}")
    return 0


def _share_range(text: str) -> tuple[float, float]:
    """``--plaque-area LOW,HIGH`` (or one share for both ends) as a pair of floats."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (1, 2) or not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW,HIGH (two shares of the image, e.g. 0.03,0.06)")
    values = tuple(float_arg(p) for p in parts)
    return (values[0], values[-1])


_share_range.__name__ = "plaque area"  # argparse's "invalid plaque area value" for text that is no number


def _train(args: argparse.Namespace, recorded: dict | None = None) -> int:
    from walnet.engine.trainer import train

    train(_config(TrainConfig, args, recorded=recorded))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from walnet.engine.evaluation import evaluate_run, summary

    print("\n".join(summary(evaluate_run(_config(EvalConfig, args)))))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from walnet.engine.predict import predict

    r = predict(_config(PredictConfig, args))
    counts = ", ".join(f"{c} {n}" for c, n in r["counts"].items())
    masks = f"; masks in {r['masks']}" if r["masks"] else ""
    overlays = f"; overlays in {r['overlays']}" if r["overlays"] else ""
    print(f"predicted {r['images']} image(s) ({counts}): {r['output']}{masks}{overlays}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from walnet.engine.export import export_model

    r = export_model(_config(ExportConfig, args))
    check = "; ONNX checked with onnxruntime" if r["onnx_checked"] else ""
    print(f"exported {r['model']} (epoch {r['epoch']}) to {r['output']}: {', '.join(r['files'])}{check}")
    if r["onnx_checked"] is False:
        print("note: onnxruntime is not installed, so the ONNX model was not run (pip install onnxruntime)")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from walnet.engine.calibration import calibrate_run, summary

    print(summary(calibrate_run(_config(CalibrateConfig, args))))
    return 0


#: Train fields ``walnet experiment`` does not offer: it sets them per run, or (the ROI method
#: and the ablations) the model name implies them.
_EXPERIMENT_SETS_TRAIN = {"output", "model", "seed", "resume", "roi_method", "rcm", "pgm", "fold"}
#: Evaluate fields it sets per run; the batch size is train's (-b), so scoring keeps its default.
_EXPERIMENT_SETS_EVAL = {"checkpoint", "split", "output", "batch_size", "save_predictions"}


def _experiment(args: argparse.Namespace) -> int:
    from walnet.engine.experiment import run_experiment
    from walnet.engine.launch import SLURM_FLAGS, launcher, slurm_options

    items = [s.strip() for s in args.seeds.split(",") if s.strip()]
    if not all(re.fullmatch(r"[+-]?[0-9]+", s) for s in items):  # int() would also take "1_0" as 10
        raise ValueError(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    seeds = [int(s) for s in items]  # their range is checked with the other settings, before any run
    if args.table:
        configs, name, title = TABLES[args.table].rows, args.table, TABLES[args.table].title
    else:
        configs, name, title = [m.strip() for m in args.models.split(",") if m.strip()], "experiment", None
    # templates: run_experiment sets each run's output, model, seed (and fold) and scores its best.pt
    train = _config(TrainConfig, args, skip=_EXPERIMENT_SETS_TRAIN - {"output"}, fold=None if args.folds is None else 0)
    evaluate = _config(EvalConfig, args, skip=_EXPERIMENT_SETS_EVAL, checkpoint="best.pt")
    slurm = slurm_options(args.slurm, args.output, **{name: getattr(args, name) for name in SLURM_FLAGS})
    launch = None if args.aggregate_only else launcher(args.devices, slurm)  # checked before any run
    run_experiment(configs, args.output, seeds=seeds, train=train, evaluate=evaluate, name=name, title=title,
                   launch=launch, aggregate_only=args.aggregate_only)
    return 0


def _add_experiment(sub) -> None:
    p = sub.add_parser("experiment", help="configs x seeds -> train, evaluate, mean (std) tables like the paper's "
                       "Tables 1-3 (<output>/<table>.md and .csv)")
    runs = p.add_argument_group("experiment")  # listed first, then the groups of the runs' options
    which = runs.add_mutually_exclusive_group(required=True)
    which.add_argument("--table", choices=tuple(TABLES), help="the paper's Table 1 (methods), "
                       "2 (RCM/PGM ablation) or 3 (ROI methods)")
    which.add_argument("--models", help="comma-separated model names (as train --model), e.g. walnet,walnet_no_rcm")
    seeds = ",".join(map(str, DEFAULT_SEEDS))
    runs.add_argument("--seeds", default=seeds, help=f"comma-separated seeds (paper: five runs) (default: {seeds})")
    sections(p)["output"].add_argument("--output", required=True, help="experiment folder: runs/<model>/seed<k>/, "
                                       "<table>.csv/.md; finished runs are reused, interrupted ones resumed")
    _add_options(p, TrainConfig, skip=_EXPERIMENT_SETS_TRAIN)
    # the options both commands have (data, device, workers, skip_bad) are added once, for both
    _add_options(p, EvalConfig, skip=_EXPERIMENT_SETS_EVAL | {o.name for o in options(TrainConfig)})
    launch = p.add_argument_group("launch", "where the runs run (default: one after another here)")
    launch.add_argument("--devices", metavar="DEV,DEV|all", help="one process per device, one run per device at a "
                        "time: cuda:0,cuda:1,... or all (every GPU here); cpu,cpu: two CPU processes")
    launch.add_argument("--slurm", action="store_true", help="the runs as a SLURM job array (submitit: pip install "
                        "'walnet[slurm]'); waits, then writes the tables")
    for flag, dest, kind, metavar, text in (
            ("--slurm-dir", "folder", str, "DIR", "submitit's files and the jobs' logs (default: <output>/slurm)"),
            ("--partition", "partition", str, "NAME", "SLURM partition (default: the cluster's)"),
            ("--time", "time_min", int, "MIN", "minutes per run's job (default: 1440); a job out of time is requeued"),
            ("--gpus-per-task", "gpus_per_task", int, "N", "GPUs per run (default: 1; 0: CPU)"),
            ("--cpus-per-task", "cpus_per_task", int, "N", "CPUs per run (default: 8)"),
            ("--mem-gb", "mem_gb", float_arg, "GB", "GB of memory per run (default: the partition's)")):
        launch.add_argument(flag, dest=dest, type=kind, metavar=metavar, help=text)
    launch.add_argument("--no-wait", dest="wait", action="store_const", const=False, help="submit and return; "
                        "then the same command with --aggregate-only writes the tables")
    launch.add_argument("--aggregate-only", action="store_true", help="run nothing: the tables of the finished "
                        "runs, naming the others")
    p.set_defaults(run=_experiment)


def _add_phantom(sub) -> None:
    p = sub.add_parser("phantom", help="write the synthetic carotid-plaque dataset (images, masks, labels.csv)")
    out = sections(p)["output"].add_mutually_exclusive_group(required=True)
    out.add_argument("--output", help="output folder (must be empty, new, or an earlier phantom)")
    out.add_argument("--out", dest="output", help=argparse.SUPPRESS)  # unlisted: commands written with --out work
    data = sections(p)["data"]
    data.add_argument("--n", type=int, default=1270, help="number of images (paper's class ratio 301/605/364) "
                      "(default: 1270)")
    data.add_argument("--seed", type=int, default=0, help="seed of the images and labels (default: 0)")
    data.add_argument("--size", type=int, default=224, help="image side in pixels (default: 224)")
    data.add_argument("--plaque-area", type=_share_range, default=None, metavar="LOW,HIGH",
                      help="a wider view than the plaque's ROI crop, in which the plaque covers a share of the "
                      "image drawn from LOW..HIGH (at most 0.3; e.g. 0.03,0.06) (default: the ROI crop, where "
                      "it covers about 0.2-0.37)")
    data.add_argument("--distractors", type=int, default=0, help="class-like echo structures (bright spots with "
                      "shadows, dark pockets, mixed patches) drawn outside the plaque in each image, independently "
                      "of its class, 0-8 (default: 0)")
    p.set_defaults(run=_phantom)


def _demo(args: argparse.Namespace) -> int:
    from walnet.engine.demo import run_demo, summary

    result = run_demo(args.output, _config(DemoConfig, args, skip=_DEMO_FIXED))
    print(summary(result))
    print(f"report: {args.output}/report.md")
    return 0


#: The demo's settings that its command line does not offer (its fixed training budget).
_DEMO_FIXED = {"attention_channels", "batch_size", "lr", "rcm_warmup"}


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="phantom -> train WAL-Net -> evaluate -> report.md, in minutes on a CPU")
    sections(p)["output"].add_argument("--output", default="demo-output", help="folder for the phantom, the run and "
                                       "report.md (default: demo-output)")
    _add_options(p, DemoConfig, skip=_DEMO_FIXED)
    p.set_defaults(run=_demo)


#: The packages ``walnet info`` reports besides torch: the dependencies that build the models and
#: those of the optional extras (``pip install 'walnet[onnx]'``, ``[dicom]``, ...); None where absent.
INFO_PACKAGES = ("timm", "torchvision")
INFO_OPTIONAL = ("onnx", "onnxscript", "onnxruntime", "pydicom", "pylibjpeg", "av", "submitit", "tensorboard")


def _version_of(distribution: str) -> str | None:
    """The installed version of `distribution` from its metadata (the package is not imported),
    None where it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _info(args: argparse.Namespace) -> int:
    from walnet.ops import build_info

    info = {**build_info(), "python": platform.python_version(),
            "packages": {name: _version_of(name) for name in INFO_PACKAGES},
            "optional": {name: _version_of(name) for name in INFO_OPTIONAL}}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    archs = ", ".join([f"sm_{a.replace('.', '')}" for a in info["cuda_archs"]]
                      + [f"compute_{a.replace('.', '')} (PTX)" for a in info["cuda_ptx"]]) or "none"
    lines = [
        f"walnet {info['walnet']}",
        f"torch {info['torch']} (CUDA {info['cuda'] or 'none'})",
        f"extension built for torch {info['built_for_torch'] or 'unknown'}, CUDA {info['built_for_cuda'] or 'none'}, "
        f"archs {archs}, OpenMP {'yes' if info['openmp'] else 'no' if info['openmp'] is not None else 'unknown'}",
        f"compiled kernels for: {', '.join(info['backends']) or 'nothing (every op runs its reference)'}",
        f"Python {info['python']}, " + ", ".join(f"{k} {v or 'not installed'}" for k, v in info["packages"].items()),
        "optional: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in info["optional"].items()),
    ]
    if info["load_error"]:
        lines.append(f"not used: {info['load_error']}")
    lines += [f"GPU {i}: {g['name']} (compute capability {g['capability']}), walnet's CUDA kernels "
              f"{'run' if g['kernels_run'] else 'do not run'} on it" for i, g in enumerate(info["gpus"])]
    print("\n".join(lines))
    return 0


#: The commands whose options are exactly their config's fields: (name, config, run, help).
_CONFIG_COMMANDS = (
    ("train", TrainConfig, _train, "train a model (WAL-Net by default) on an ImageFolder tree or a CSV file"),
    ("evaluate", EvalConfig, _evaluate, "score a checkpoint on a split: metrics.json (accuracy, F1, kappa, AUC, "
     "sensitivity / specificity, bootstrap intervals, per patient, IoU)"),
    ("predict", PredictConfig, _predict, "class probabilities of images, folders or a CSV with ROI boxes -> CSV "
     "(and optional mask and attention-overlay PNGs)"),
    ("export", ExportConfig, _export, "a checkpoint as a model folder: model.safetensors, config.json, model card "
     "README.md (+ model.pt2, model.onnx)"),
    ("calibrate", CalibrateConfig, _calibrate, "fit a checkpoint's temperature on the validation split (temperature "
     "scaling): evaluate, predict and export then use it"),
)


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line (``walnet train: error: ...``) and exit
    status 2, like the engine's errors; ``--help`` still shows the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_DEBUG_HELP = "show the traceback of an error instead of a one-line message"


#: The commands that take ``--config FILE``, and their configs.
_CONFIG_FILE_COMMANDS = {"train": TrainConfig}
_CONFIG_FILE_HELP = ("a JSON file of the settings (a run's args.json) whose values become the defaults: the options "
                     "given here override them; its output and resume are not read (give --output)")


def build_parser(recorded: dict | None = None) -> argparse.ArgumentParser:
    """The ``walnet`` parser; `recorded`: the values of train's ``--config`` file, its options'
    defaults."""
    from walnet._version import __version__

    parser = _Parser(prog="walnet", description="WAL-Net for carotid plaque classification.")
    parser.add_argument("--version", action="version", version=f"walnet {__version__}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    # per command too; SUPPRESS keeps a --debug given before the command
    per_command = _Parser(add_help=False)
    per_command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    sub.add_parser = functools.partial(sub.add_parser, parents=[per_command])
    p = sub.add_parser("info", help="versions, what the compiled ops were built for, and where they run")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(run=_info)
    _add_phantom(sub)
    for name, config, run, text in _CONFIG_COMMANDS:
        p = sub.add_parser(name, help=text)
        if name in _CONFIG_FILE_COMMANDS:
            p.add_argument("--config", metavar="FILE", help=_CONFIG_FILE_HELP)
            run = functools.partial(run, recorded=recorded)
        _add_options(p, config, recorded=recorded if name in _CONFIG_FILE_COMMANDS else None)
        p.set_defaults(run=run)
    _add_demo(sub)
    _add_experiment(sub)
    parser.commands = sub.choices  # each command's parser, for errors found after parsing
    return parser


#: What a user's input, files or machine can cause: shown as one line. Any other exception is
#: a bug in walnet and keeps its traceback. RuntimeError covers torch's errors (out of memory,
#: a device failure, a locked run folder).
_USER_ERRORS = (ValueError, OSError, FloatingPointError, RuntimeError, MemoryError, csv.Error)


def _one_line(exc: BaseException) -> str:
    """The message of `exc` on one line. walnet's own messages are written as one line; torch's
    may run over many, of which the first says what happened."""
    from walnet.engine.lock import RunLockedError

    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Original Traceback" in lines[1]:
        # raised in a data loader worker: the original message is the traceback's last line
        lines = [lines[-1].split(": ", 1)[-1]]
    if isinstance(exc, (RuntimeError, MemoryError)) and not isinstance(exc, RunLockedError):
        return f"{type(exc).__name__}: {lines[0] if lines else ''} (--debug shows the traceback)"
    text = " ".join(lines) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text += f": {exc.filename}"
    return text


def _parser_for(argv: list[str]) -> argparse.ArgumentParser:
    """The parser of `argv`: where its command takes ``--config FILE`` and is given one, with the
    file's values as defaults (a file that cannot be read is a usage error, one line)."""
    parser = build_parser()
    command = next((arg for arg in argv if not arg.startswith("-")), None)  # the options before it take no value
    path = config_file_arg(argv) if command in _CONFIG_FILE_COMMANDS else None
    if path is None:
        return parser
    try:
        recorded = read_config_file(path, _CONFIG_FILE_COMMANDS[command])
    except ValueError as exc:
        parser.commands[command].error(str(exc))
    return build_parser(recorded)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser_for(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the command's parser, which names the command
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        with warnings.catch_warnings(), console_log(args.command):
            warnings.showwarning = functools.partial(show_warning, args.command, warnings.showwarning)
            return args.run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"walnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as exc:
        if args.debug:
            raise
        print(f"walnet {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
