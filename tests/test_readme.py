"""README.md: its demo block parses and the demo check catches a stale one (no demo runs here:
`make demo-check` runs the demo); its links and design-doc sections exist."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools import check_readme_demo as check

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
NAMES = ("accuracy", "chance", "macro F1", "kappa", "pseudo-mask IoU", "predicted-mask IoU")


def test_readme_demo_block_holds_the_summary_numbers():
    line = check.readme_block(README)
    numbers = check.metrics(line)
    assert list(numbers) == list(NAMES)
    for name, value in numbers.items():
        assert re.fullmatch(r"[01]\.\d{3}", value), f"{name} = {value!r} is not a printed score"
    assert float(numbers["accuracy"]) > float(numbers["chance"])
    # the README states the thread count the checker runs the demo at
    assert f"at {check.THREADS} threads" in " ".join(README.split())


def test_check_accepts_the_same_line_with_another_elapsed_time(tmp_path):
    line = check.readme_block(README)
    log = tmp_path / "demo.log"
    log.write_text(f"epoch 0: loss 1.0\n{check.ELAPSED.sub(' (1 s)', line)}\nreport: x/report.md\n")
    assert check.main(["--log", str(log)]) == 0


def _doctored(line: str, name: str) -> str:
    value = check.metrics(line)[name]
    other = f"{(int(value[-1]) + 1) % 10}"
    doctored = line.replace(f"{name} {value}", f"{name} {value[:-1]}{other}")
    assert doctored != line
    return doctored


@pytest.mark.parametrize("name", ["accuracy", "kappa", "predicted-mask IoU"])
def test_check_flags_a_doctored_summary(tmp_path, capsys, name):
    line = check.readme_block(README)
    doctored = _doctored(line, name)
    problems = check.compare(line, doctored)
    assert len(problems) == 1 and problems[0].startswith(f"{name}: README ")
    log = tmp_path / "demo.log"
    log.write_text(doctored + "\n")
    assert check.main(["--log", str(log)]) == 1
    assert f"{name}: README " in capsys.readouterr().err


def test_check_flags_a_missing_block_or_summary(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README.replace(check.BEGIN, "<!-- -->"))
    log = tmp_path / "demo.log"
    log.write_text(check.readme_block(README) + "\n")
    assert check.main(["--log", str(log), "--readme", str(readme)]) == 2
    log.write_text("epoch 0: loss 1.0\nTraceback (most recent call last):\n")
    assert check.main(["--log", str(log)]) == 2


def test_relative_links_and_design_sections_exist():
    docs = {p: p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
    design = docs[ROOT / "docs" / "design.md"]
    sections = set(re.findall(r"^## (§\d+) ", design, flags=re.M))
    assert sections == {f"§{i}" for i in range(1, 10)}
    for path, text in docs.items():
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"
        for cited in re.findall(r"design\.md\)?`? (§\d+)", text):
            assert cited in sections, f"{path.name} cites docs/design.md {cited}, which does not exist"
