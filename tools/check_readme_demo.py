"""Checks that the demo output quoted in README.md is what ``walnet demo`` prints.

README.md holds the demo's summary line between ``<!-- demo-output -->`` and
``<!-- /demo-output -->``. This script runs ``python -m walnet demo`` into a fresh temporary
folder (or reads the saved output of a run with ``--log FILE``), takes the line the demo prints
its results on, and compares the two, ignoring the elapsed seconds at the end of the line.

The demo is deterministic at a given thread count, but its numbers change with the number of
threads (the backbone's floating-point reductions are split by thread), so the demo runs with
``OMP_NUM_THREADS`` set to the README's thread count, THREADS (``--threads`` to change it).

    python tools/check_readme_demo.py              # what `make demo-check` runs (minutes)
    python tools/check_readme_demo.py --log demo.log

Exit status: 0 when they agree; 1 when they differ (the two lines and every differing number
are printed); 2 when the README has no demo block or the demo printed no summary line.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN, END = "<!-- demo-output -->", "<!-- /demo-output -->"
#: The torch thread count the README's demo line was printed at (the README says so too).
THREADS = 2

# The line the demo prints its test metrics on: "WAL-Net phantom test accuracy 0.744 (chance ...".
SUMMARY = re.compile(r"^WAL-Net\b.*\baccuracy\b")
# The elapsed time ending the summary, "(211 s)": it varies from run to run.
ELAPSED = re.compile(r"\s*\(\d+(?:\.\d+)? s\)\s*$")
# "<name> <value>" pairs of the summary; a value is a decimal number or "–" (not measured).
METRIC = re.compile(r"([A-Za-z][A-Za-z0-9-]*(?: [A-Za-z][A-Za-z0-9-]*)*) (\d+\.\d+|–)")


class CheckError(Exception):
    """The README block or the demo's summary line is missing."""


def readme_block(text: str) -> str:
    """The demo line quoted in the README: the non-empty, non-fence line between the markers."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise CheckError(f"README.md must hold exactly one {BEGIN} ... {END} block")
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    lines = [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("```")]
    if len(lines) != 1 or not SUMMARY.match(lines[0]):
        raise CheckError(f"the README's demo block must hold the demo's one summary line, got {lines!r}")
    return lines[0]


def demo_summary(output: str) -> str:
    """The summary line of the demo's printed output (the last one, if it printed several)."""
    lines = [ln.strip() for ln in output.splitlines() if SUMMARY.match(ln.strip())]
    if not lines:
        tail = "\n".join(output.strip().splitlines()[-10:])
        raise CheckError(f"the demo printed no summary line (a line starting 'WAL-Net ... accuracy'); "
                         f"its output ended with:\n{tail}")
    return lines[-1]


def without_elapsed(line: str) -> str:
    return ELAPSED.sub("", line.strip())


def metrics(line: str) -> dict[str, str]:
    """The named numbers of a summary line, e.g. {"accuracy": "0.744", "chance": "0.475", ...},
    as printed (strings, so that a comparison is exact to the printed digit)."""
    found = {}
    for name, value in METRIC.findall(without_elapsed(line)):
        found[name.split(" test ")[-1]] = value  # "WAL-Net phantom test accuracy" -> "accuracy"
    return found


def compare(readme_line: str, demo_line: str) -> list[str]:
    """Differences between the README's line and the demo's (elapsed seconds ignored); empty when
    they agree."""
    if without_elapsed(readme_line) == without_elapsed(demo_line):
        return []
    quoted, printed = metrics(readme_line), metrics(demo_line)
    problems = [f"{name}: README {quoted.get(name, 'absent')}, demo {printed.get(name, 'absent')}"
                for name in dict.fromkeys([*quoted, *printed]) if quoted.get(name) != printed.get(name)]
    return problems or ["the wording differs (the numbers agree)"]


def run_demo(threads: int) -> str:
    """Runs ``python -m walnet demo`` at `threads` torch threads into a fresh temporary folder,
    echoing its output to stderr as it goes; returns its stdout. Raises CheckError if it fails."""
    with tempfile.TemporaryDirectory(prefix="walnet-demo-check-") as tmp:
        cmd = [sys.executable, "-m", "walnet", "demo", "--output", str(Path(tmp) / "demo")]
        # unbuffered: the demo's epoch lines show as they come, not all at the end
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        print(f"running (OMP_NUM_THREADS={threads}):", " ".join(cmd), file=sys.stderr, flush=True)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            print(line, end="", file=sys.stderr, flush=True)
        if proc.wait() != 0:
            raise CheckError(f"the demo failed with exit status {proc.returncode}")
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, help="compare with this saved output of `walnet demo` instead of running it")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--threads", type=int, default=THREADS,
                        help=f"torch threads of the demo run (default {THREADS}, the README's)")
    args = parser.parse_args(argv)
    try:
        quoted = readme_block(args.readme.read_text(encoding="utf-8"))
        printed = demo_summary(args.log.read_text(encoding="utf-8") if args.log else run_demo(args.threads))
    except CheckError as exc:
        print(f"demo check: {exc}", file=sys.stderr)
        return 2
    problems = compare(quoted, printed)
    if not problems:
        print(f"demo check: {args.readme.name} agrees with the demo:\n  {printed}")
        return 0
    print(f"demo check: {args.readme.name} quotes a demo result that the demo does not print.\n"
          f"  README: {quoted}\n  demo:   {printed}\n  " + "\n  ".join(problems) + "\n"
          f"Replace the line between {BEGIN} and {END} in {args.readme.name} with the demo's line "
          "(and regenerate docs/demo-segmentation.png from the run's segmentation.png). The numbers "
          "also depend on the thread count, the torch version and the CPU: compare at the README's "
          "thread count on the machine it names.",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
