"""A reader's walk of one training run through the engine: which engine files it enters, and
how often.

Parses a ``walnet train`` command line (2 epochs of a 40-image phantom, batch size 8,
ResNet-18, CPU), then runs the command under a profiler and lists, in the order the run reaches them, the engine functions it calls from
walnet code in another file: each such function is a place a reader following the run is sent
to. A call that torch or contextlib makes on behalf of walnet code (a ``with`` of a walnet
context manager, a decorated function) counts for that walnet code; calls within one file, class
bodies and imports are not entries. The last lines count the entries per engine file.

    python tools/engine_walk.py [--keep DIR]
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import walnet
from walnet import cli
from walnet.data import phantom

PACKAGE = Path(walnet.__file__).parent
ENGINE = PACKAGE / "engine"


def walk(output: Path) -> list[tuple[str, str, str]]:
    """(caller file, engine file, function) of every entry, in the order the run makes them."""
    csv_path = phantom.generate(output / "phantom", n=40, seed=0, size=32)
    argv = ["train", "--csv", str(csv_path), "--output", str(output / "run"), "--epochs", "2", "-b", "8",
            "--size", "32", "--backbone", "resnet18", "--attention-channels", "8", "--rcm-warmup", "1",
            "--device", "cpu"]
    seen, entries = set(), []

    def profile(frame, event, arg):
        if event != "call" or frame.f_back is None:
            return
        callee = Path(frame.f_code.co_filename)
        if callee.parent != ENGINE or frame.f_code.co_name.startswith("<"):
            return  # not the engine; comprehensions and lambdas
        # the walnet code that made the call: through contextlib (a `with` of a context manager
        # of walnet's) or a decorator (torch.no_grad) to the walnet line that reads it
        back = frame.f_back
        while back is not None and not Path(back.f_code.co_filename).is_relative_to(PACKAGE):
            back = back.f_back
        if back is None or back.f_code.co_name == "<module>":
            return  # called from outside walnet (a torch hook, generated code); class bodies, imports
        caller = Path(back.f_code.co_filename)
        if caller == callee:
            return
        key = (callee, frame.f_code.co_firstlineno)
        if key not in seen:
            seen.add(key)
            entries.append((str(caller.relative_to(PACKAGE)), str(callee.relative_to(PACKAGE)), frame.f_code.co_name))

    args = cli.build_parser().parse_args(argv)  # reading the flags precedes the run
    sys.setprofile(profile)
    try:
        args.run(args)
    finally:
        sys.setprofile(None)
    return entries


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="folder for the phantom and the run (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        entries = walk(Path(args.keep or tmp))
    for caller, callee, name in entries:
        print(f"{caller:24s} -> {callee}: {name}")
    print()
    for name, count in collections.Counter(callee for _, callee, _ in entries).most_common():
        print(f"{count:3d} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
