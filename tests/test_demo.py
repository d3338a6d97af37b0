"""``walnet demo`` end to end at a tiny size (the real demo's budget is measured by ``make demo``)."""
from __future__ import annotations

import json
import logging

from walnet.engine.demo import DemoConfig, run_demo, summary

TINY = DemoConfig(n=30, size=48, epochs=2, attention_channels=8, batch_size=8, rcm_warmup=1)


def test_demo_writes_report_and_figures_and_reruns_without_retraining(tmp_path, caplog):
    result = run_demo(tmp_path, TINY)
    run = tmp_path / "run"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["accuracy"] == result["accuracy"] and saved["split"] == "test"
    counts = [sum(row) for row in result["confusion"]]
    assert result["chance"] == max(counts) / sum(counts)
    for name in result["figures"]:
        assert (run / name).stat().st_size > 1000
    report = (tmp_path / "report.md").read_text()
    assert f"| accuracy | {result['accuracy']:.3f} |" in report
    assert "pseudo-mask IoU" in report and "segmentation.png" in report
    line = summary(result)
    assert f"accuracy {result['accuracy']:.3f}" in line and f"pseudo-mask IoU {result['pseudo_iou']:.3f}" in line

    checkpoint = (run / "last.pt").stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="walnet")
    again = run_demo(tmp_path, TINY)
    assert "continuing the demo run" in caplog.text
    assert (run / "last.pt").stat().st_mtime_ns == checkpoint  # all epochs were done: nothing retrained
    assert again["accuracy"] == result["accuracy"]
