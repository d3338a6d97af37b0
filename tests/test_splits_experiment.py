"""``walnet experiment`` never averages runs of different data or settings: a finished run it
would reuse must have the experiment's settings (args.json) and data (data.json), and a
metrics.json it cannot read as scores is one line naming the file. Seeds are checked before any
run. The runs here are finished run folders written by hand: nothing is trained."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from walnet import cli
from walnet.data import read_csv, split_indices
from walnet.data.splits import save_run_record
from walnet.engine import evaluation, trainer
from walnet.engine.experiment import run_experiment

from train_runs import phantom_data, rewritten_csv, run_config

SCORES = dict(accuracy=0.5, macro_f1=0.4, kappa=0.1, macro_precision=0.4, macro_recall=0.4, macro_specificity=0.7)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantom_data(tmp_path_factory)


@pytest.fixture
def no_work(monkeypatch):
    """Any training or scoring fails the test: every run here is reused or refused."""
    monkeypatch.setattr(trainer, "train", lambda config: pytest.fail(f"trained {config.output}"))
    monkeypatch.setattr(evaluation, "evaluate_run", lambda config: pytest.fail(f"scored {config.checkpoint}"))


def _template(data, tmp_path):
    return run_config(data, tmp_path / "exp", epochs=1)


def _finished(exp, template, data, metrics=SCORES, seed=0, **changes):
    """A finished run of the experiment in `exp` (model walnet_no_pgm, `seed`), trained on `data`
    with `template`'s settings and `changes`: args.json, split.csv, data.json, metrics.json."""
    run = exp / "runs" / "walnet_no_pgm" / f"seed{seed}"
    run.mkdir(parents=True)
    config = replace(template, output=run, model="walnet_no_pgm", seed=seed, **changes)
    (run / "args.json").write_text(json.dumps(config.to_dict()))
    records, classes = read_csv(data)
    save_run_record(run, records, split_indices([r.label for r in records], seed=seed), classes)
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def _experiment(template, tmp_path):
    return run_experiment(["walnet_no_pgm"], tmp_path / "exp", seeds=[0], train=template)


def test_a_finished_run_of_the_same_settings_and_data_is_reused(data, tmp_path, no_work):
    template = _template(data, tmp_path)
    # the data through another CSV file with the same rows: the same data
    _finished(tmp_path / "exp", template, rewritten_csv(data, tmp_path / "same.csv", lambda i, r: None))
    rows = _experiment(template, tmp_path)
    assert rows[0]["accuracy_mean"] == 0.5 and rows[0]["n_seeds"] == 1


def test_a_finished_run_of_other_data_is_an_error(data, tmp_path, no_work):
    template = _template(data, tmp_path)
    other = rewritten_csv(data, tmp_path / "other.csv", lambda i, r: r.update(label="hypoechoic") if i == 0 else None)
    run = _finished(tmp_path / "exp", template, other)
    with pytest.raises(ValueError, match=rf"\[walnet_no_pgm seed 0\] the finished run {run} is not a run of this "
                                         r"experiment: its data differs from the run's \(40 image\(s\), sha256"):
        _experiment(template, tmp_path)
    assert not (tmp_path / "exp" / "experiment.csv").exists()


def test_a_finished_run_of_other_settings_or_without_a_data_record_is_an_error(data, tmp_path, no_work):
    template = _template(data, tmp_path)
    run = _finished(tmp_path / "exp", template, data, lr=0.01, size=64)
    with pytest.raises(ValueError, match=f"the finished run {run} is not a run of this experiment: --size 48 "
                                         "differs from the run's 64; --lr 0.0001 differs from the run's 0.01; delete"):
        _experiment(template, tmp_path)
    (run / "args.json").write_text(json.dumps(replace(template, output=run, model="walnet_no_pgm").to_dict()))
    (run / "data.json").unlink()  # a run of a walnet that did not record its data
    with pytest.raises(ValueError, match=f"{run} is not a run of this experiment: it records no fingerprint of its "
                                         "data"):
        _experiment(template, tmp_path)
    (run / "args.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=f"{run / 'args.json'} cannot be read as the run's settings"):
        _experiment(template, tmp_path)


@pytest.mark.parametrize("text, message", [
    ("[0.5, 0.4]", "holds a JSON list, not the object of walnet evaluate"),
    (json.dumps({**SCORES, "accuracy": {"mean": 0.5}}), "metric 'accuracy' is dict, not a number"),
    (json.dumps({**SCORES, "sensitivity": {"soft": [1]}, "class_names": ["soft"]}),
     "metric 'sensitivity/soft' is list, not a number"),
    (json.dumps({**SCORES, "class_names": 3}), "'class_names' is not a list of class names"),
    ('{"accuracy": 0.5,', "is not valid JSON"),
])
def test_a_metrics_file_that_holds_no_scores_is_one_line_naming_it(data, tmp_path, no_work, capsys, text, message):
    template = _template(data, tmp_path)
    run = _finished(tmp_path / "exp", template, data)
    (run / "metrics.json").write_text(text)
    with pytest.raises(ValueError, match="delete it to score the run again") as failed:
        _experiment(template, tmp_path)
    assert str(failed.value).startswith(str(run / "metrics.json")) and message in str(failed.value)
    # the command line: one line
    argv = ["experiment", "--models", "walnet_no_pgm", "--seeds", "0", "--csv", str(data), "--output",
            str(tmp_path / "exp"), "--backbone", "resnet18", "--attention-channels", "8", "--size", "48", "-b", "8",
            "--rcm-warmup", "1", "--device", "cpu", "--epochs", "1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"walnet experiment: error: {run / 'metrics.json'}")


@pytest.mark.parametrize("seeds", ["0,4294967296", "0,-1", "0,1_0"])
def test_seeds_are_checked_before_any_run(data, tmp_path, no_work, capsys, seeds):
    argv = ["experiment", "--models", "walnet_no_pgm", "--seeds", seeds, "--csv", str(data), "--output",
            str(tmp_path / "exp"), "--backbone", "resnet18", "--device", "cpu"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("walnet experiment: error: --seeds")
    assert not (tmp_path / "exp").exists()
    with pytest.raises(ValueError, match="--seeds: 4294967296 is not a seed; seeds are integers from 0 to 4294967295"):
        run_experiment(["walnet_no_pgm"], tmp_path / "exp", seeds=[0, 2**32], train=_template(data, tmp_path))
