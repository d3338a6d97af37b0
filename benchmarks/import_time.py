"""Import time of walnet: ``import torch`` (what every import of walnet pays), ``import walnet.ops``
(torch and walnet's operators) and ``import walnet`` followed by ``walnet.WALNet`` (which loads the
models: timm, torchvision). Each is timed in a fresh interpreter around the statement (the
interpreter's own start left out), ``--repeat`` times: the best wall time (time.perf_counter) and
the best CPU time of the process (time.process_time), which other work on the machine changes less.

Run: python benchmarks/import_time.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: What is timed: (label, statements).
CASES = (
    ("import torch", "import torch"),
    ("import walnet.ops", "import walnet.ops"),
    ("import walnet; walnet.WALNet", "import walnet; walnet.WALNet"),
)


def seconds(statement: str) -> tuple[float, float]:
    """The wall and CPU seconds `statement` takes in a fresh interpreter that imports walnet from
    this tree."""
    code = (f"import time\nt, c = time.perf_counter(), time.process_time()\n{statement}\n"
            "print(time.perf_counter() - t, time.process_time() - c)")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True)
    wall, cpu = done.stdout.split()[-2:]
    return float(wall), float(cpu)


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="fresh interpreters per case (the best is shown)")
    args = parser.parse_args(argv)
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; best of {args.repeat}")
    print("| import | wall s | CPU s |\n|---|---:|---:|")
    for label, statement in CASES:
        times = [seconds(statement) for _ in range(args.repeat)]
        print(f"| `{label}` | {min(t[0] for t in times):.2f} | {min(t[1] for t in times):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
