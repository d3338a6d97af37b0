"""``walnet train --class-weights`` and ``--balanced-sampler`` (walnet.engine.balance,
walnet.data.samplers): the weighted classification loss against ``F.cross_entropy(weight=)`` and
by hand, the eager and compiled steps with weights, "balanced" against scikit-learn on a run's
training split, the checks of the option, the sampler's balance, shares and seeding, a resumed run
that ends exactly as an uninterrupted one, refused resumes that change either, and DDP on gloo."""
from __future__ import annotations

import copy
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

import walnet
from walnet import cli
from walnet.data import read_csv
from walnet.data.augment import EpochSampler
from walnet.data.samplers import ClassBalancedSampler
from walnet.engine import trainer
from walnet.engine.config import TrainConfig
from walnet.engine.runtime import runtime_of
from walnet.engine.step import TrainStep
from walnet.engine.trainer import train
from walnet.models.walnet import WALNetOutput, walnet_loss

from train_runs import ENV, metrics_rows, phantom_data, rewritten_csv, run_config, split_column, train_args

CLASSES = ("hyperechoic", "hypoechoic", "mixed-echoic")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantom_data(tmp_path_factory)


# --- the weighted loss ----------------------------------------------------------------------

def _output(seed=0, n=6, classes=3, seg=True):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=gen) * 2
    seg_logits = torch.randn(n, 2, 4, 4, generator=gen) if seg else None
    target = torch.tensor([0, 0, 0, 0, 1, 2])[:n]
    return WALNetOutput(logits, seg_logits, ()), target


def test_weighted_loss_is_cross_entropy_with_weight():
    out, target = _output()
    weights = torch.tensor([0.5, 2.0, 3.0])
    mask = torch.randint(0, 2, (6, 4, 4), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    got = walnet_loss(out, target, mask, weights)
    # by hand: the weighted mean sum_i w[t_i] * nll_i / sum_i w[t_i]
    nll = -torch.log_softmax(out.logits.double(), dim=1)[torch.arange(6), target]
    w = weights.double()[target]
    assert math.isclose(float(got.cls), float((w * nll).sum() / w.sum()), rel_tol=1e-6)
    torch.testing.assert_close(got.cls, F.cross_entropy(out.logits, target, weight=weights))
    plain = walnet_loss(out, target, mask)
    assert not math.isclose(float(got.cls), float(plain.cls), rel_tol=1e-3)
    assert torch.equal(got.seg, plain.seg) and torch.equal(got.total, got.cls + got.seg)  # the PGM term unweighted
    # equal weights are no weights
    torch.testing.assert_close(walnet_loss(out, target, mask, torch.full((3,), 2.5)).cls, plain.cls)


SMALL = dict(backbone="resnet18", attention_channels=8, rcm_warmup_epochs=1)


def _setup():
    torch.manual_seed(0)
    model = walnet.WALNet(**SMALL).train()
    return model, walnet.PseudoMaskGenerator(), torch.optim.SGD(model.parameters(), lr=1e-2)


def _batches(n, batch=4, size=64):
    gen = torch.Generator().manual_seed(1)
    return [(torch.rand(batch, 3, size, size, generator=gen), torch.tensor([0, 0, 1, 2])) for _ in range(n)]


def test_eager_step_weighs_the_classification_loss():
    weights = torch.tensor([0.25, 1.5, 4.0])
    (x, t), = _batches(1)
    model, pgm, opt = _setup()
    reference = copy.deepcopy(model)
    stats = TrainStep(model, pgm, opt, class_weights=weights)(x, t, 1)
    with torch.no_grad():
        logits = reference(x, epoch=1).logits
    torch.testing.assert_close(stats[1], F.cross_entropy(logits, t, weight=weights))
    assert not math.isclose(float(stats[1]), float(F.cross_entropy(logits, t)), rel_tol=1e-3)


def test_compiled_step_with_class_weights_matches_eager():
    """One fullgraph compile (aot_eager) of the weighted step: its losses and weights equal the
    eager weighted step's to float rounding, and they are not the unweighted step's."""
    weights = torch.tensor([0.25, 1.5, 4.0])
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    batches = _batches(2)
    runs = {}
    for name, kw in {"compiled": dict(compile=True, compile_backend=counter, class_weights=weights),
                     "eager": dict(class_weights=weights), "plain": {}}.items():
        model, pgm, opt = _setup()
        step = TrainStep(model, pgm, opt, **kw)
        runs[name] = torch.stack([step(x, t, 1).clone() for x, t in batches])
    assert counter.frame_count == 1
    torch.testing.assert_close(runs["compiled"], runs["eager"], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(runs["eager"][:, 1], runs["plain"][:, 1], rtol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphed_step_with_class_weights_matches_eager():
    """The weights are one device tensor that the captured graph reads: warm-up steps, the
    capture and replays give the eager weighted step's losses (float32, deterministic cuDNN),
    and the last replay's is ``F.cross_entropy(weight=)`` of the model's logits (Adam at lr 1e-12
    moves no float32 weight measurably; lr 0 would divide by zero in capturable Adam)."""
    from walnet.engine.step import GRAPH_WARMUP_STEPS

    weights = torch.tensor([0.25, 1.5, 4.0], device="cuda")
    batches = [(x.cuda(), t.cuda()) for x, t in _batches(GRAPH_WARMUP_STEPS + 3)]
    got = []
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        for graphed in (True, False):
            torch.manual_seed(0)
            model = walnet.WALNet(**SMALL).cuda().train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-12, capturable=graphed)
            step = TrainStep(model, None, opt, cuda_graph=graphed, class_weights=weights)
            got.append(torch.stack([step(x, t, 1).clone() for x, t in batches]))
        torch.testing.assert_close(got[0], got[1], rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            logits = model(batches[-1][0], epoch=1).logits  # training mode: the batch's own statistics
    want = F.cross_entropy(logits, batches[-1][1], weight=weights)
    torch.testing.assert_close(got[0][-1, 1], want, rtol=1e-3, atol=1e-3)
    assert not torch.isclose(want, F.cross_entropy(logits, batches[-1][1]), rtol=1e-2)


# --- --class-weights in a run ---------------------------------------------------------------

def _scripted(monkeypatch, seen):
    """No training (fixed losses), a fixed validation score; records each step's class weights
    and each epoch's loader."""
    real = trainer.TrainStep

    def spy(*a, **kw):
        seen.setdefault("weights", []).append(kw["class_weights"])
        return real(*a, **kw)

    def epoch(net, pgm, loader, *a, **kw):
        seen.setdefault("samplers", []).append(loader.sampler)
        return {"loss": 1.0, "cls_loss": 0.6, "seg_loss": 0.4, "accuracy": 0.5}

    monkeypatch.setattr(trainer, "TrainStep", spy)
    monkeypatch.setattr(trainer, "train_one_epoch", epoch)
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **kw: dict(accuracy=0.5, macro_f1=0.5, kappa=0.0,
                                                                   auc_micro=0.5, loss=1.1))


def test_balanced_weights_are_sklearns_over_the_training_split(data, tmp_path, monkeypatch, caplog):
    seen = {}
    _scripted(monkeypatch, seen)
    run = tmp_path / "run"
    caplog.set_level("INFO", logger="walnet")
    train(run_config(data, run, epochs=1, class_weights="balanced", balanced_sampler=True, augment=True))
    split = split_column(run)
    labels = [r.label for r in read_csv(data)[0] if split[r.key] == "train"]
    want = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert len(set(labels)) == 3 and len(set(want.round(6))) > 1  # an imbalanced split: the weights differ
    (got,) = seen["weights"]
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32))
    assert caplog.text.count("classification loss weighted per class (--class-weights balanced): hyperechoic") == 1
    (sampler,) = seen["samplers"]  # --augment wraps the balanced sampler, which draws the training images
    assert isinstance(sampler, EpochSampler) and isinstance(sampler.sampler, ClassBalancedSampler)
    assert len(sampler) == len(labels)
    assert torch.load(run / "last.pt", weights_only=True)["args"]["class_weights"] == "balanced"


def test_given_weights_and_none_reach_the_step(data, tmp_path, monkeypatch):
    seen = {}
    _scripted(monkeypatch, seen)
    train(run_config(data, tmp_path / "given", epochs=1, class_weights="1,2.5,0.5"))
    train(run_config(data, tmp_path / "none", epochs=1))
    given, none = seen["weights"]
    assert torch.equal(given, torch.tensor([1.0, 2.5, 0.5])) and none is None
    assert [type(s) for s in seen["samplers"]] == [torch.utils.data.DistributedSampler] * 2  # the default sampler


@pytest.mark.parametrize("value, message", [
    ("1,2", "--class-weights gives 2 weight(s) for the 3 classes hyperechoic, hypoechoic, mixed-echoic; give one "
            "per class, in this order"),
    ("balanced", "--class-weights balanced: the training split holds no image of the class(es) mixed-echoic (of "
                 "hyperechoic, hypoechoic, mixed-echoic)"),
])
def test_weights_that_do_not_fit_the_data_fail_before_any_epoch(data, tmp_path, monkeypatch, value, message):
    # every mixed-echoic image in the validation split, with a few others (one patient per image)
    def split(i, row):
        row.update(split="val" if row["label"] == "mixed-echoic" or i % 5 == 0 else "train", patient_id=f"R{i}")

    csv_path = rewritten_csv(data, tmp_path / "split.csv", split)
    monkeypatch.setattr(trainer, "train_one_epoch", lambda *a, **kw: pytest.fail("an epoch ran"))
    run = tmp_path / "run"
    assert cli.main(train_args(csv_path, run, "--epochs", "1", "--class-weights", value)) == 2
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        train(run_config(csv_path, run, epochs=1, class_weights=value))
    assert not (run / "last.pt").exists() and not (run / "metrics.csv").exists()
    # the weights given for the named classes: checked with the config
    with pytest.raises(ValueError, match="--class-weights gives 2 weight"):
        run_config(csv_path, run, classes=CLASSES, class_weights="1,2")


@pytest.mark.parametrize("value", ["", "x", "1;2;3", "0,1,1", "-1,1,1", "nan,1,1", "1,inf,1", "2", "Balanced"])
def test_malformed_class_weights_are_refused_by_the_config(value):
    with pytest.raises(ValueError, match="^--class-weights"):
        TrainConfig(csv="x.csv", output="o", class_weights=value)


# --- the balanced sampler -------------------------------------------------------------------

#: An imbalanced set: 90, 9 and 1 items of classes 0, 1 and 2.
LABELS = [0] * 90 + [1] * 9 + [2]


def _class_counts(sampler, epochs):
    draws = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        draws += list(sampler)
    return np.bincount(np.asarray(LABELS)[draws], minlength=3), len(draws)


def test_draws_are_class_balanced_where_a_plain_sampler_is_not():
    """50 epochs of 100 draws: each class's count is binomial(5000, 1/3), whose standard
    deviation is 33; 5 of them bound it. A plain shuffle draws 4500 / 450 / 50."""
    bound = 5 * math.sqrt(5000 * (1 / 3) * (2 / 3))
    counts, n = _class_counts(ClassBalancedSampler(LABELS, seed=3), range(50))
    assert n == 5000 and np.abs(counts - n / 3).max() < bound, counts
    plain, n = _class_counts(torch.utils.data.DistributedSampler(LABELS, 1, 0, shuffle=True, seed=3), range(50))
    assert np.abs(plain - n / 3).max() > bound, plain
    # the lone image of class 2 is drawn about 33 times per epoch: with replacement
    sampler = ClassBalancedSampler(LABELS, seed=3)
    assert max(np.bincount(list(sampler))) > 10


@pytest.mark.parametrize("replicas", [1, 2, 3, 7])
def test_the_ranks_shares_make_up_the_global_sequence(replicas):
    samplers = [ClassBalancedSampler(LABELS, replicas, rank, seed=1) for rank in range(replicas)]
    for s in samplers:
        s.set_epoch(4)
    shares = [list(s) for s in samplers]
    assert all(len(share) == math.ceil(len(LABELS) / replicas) == len(s) for share, s in zip(shares, samplers))
    whole = samplers[0].global_draws().tolist()
    assert all(s.global_draws().tolist() == whole for s in samplers)  # every rank draws the same sequence
    interleaved = [shares[i % replicas][i // replicas] for i in range(len(whole))]
    assert interleaved == whole and len(whole) >= len(LABELS)


def test_draws_are_a_function_of_seed_and_epoch():
    def draws(seed, epoch):
        sampler = ClassBalancedSampler(LABELS, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert draws(0, 2) == draws(0, 2) and list(ClassBalancedSampler(LABELS, seed=0)) == draws(0, 0)
    assert draws(0, 1) != draws(0, 2) and draws(0, 1) != draws(1, 1)
    torch.manual_seed(123)  # the global random state plays no part
    a = draws(5, 5)
    torch.manual_seed(321)
    assert draws(5, 5) == a


def test_inside_epoch_sampler_and_the_training_loader():
    sampler = EpochSampler(ClassBalancedSampler(LABELS[:25], seed=0))
    sampler.set_epoch(3)
    inner = ClassBalancedSampler(LABELS[:25], seed=0)
    inner.set_epoch(3)
    assert list(sampler) == [(i, 3) for i in inner]
    # 25 draws in batches of 8: the last batch of one is dropped, as for the plain sampler
    config = run_config("x.csv", "o", batch_size=8)
    loader = trainer._train_loader(range(25), sampler, config, runtime_of(config, torch.device("cpu")), pin=False)
    assert loader.drop_last and len(loader) == 3


@pytest.mark.parametrize("kw, message", [(dict(labels=[]), "at least one"), (dict(labels=[0, -1]), "class label"),
                                         (dict(labels=[0], num_replicas=0), "num_replicas"),
                                         (dict(labels=[0], num_replicas=2, rank=2), "rank must be below")])
def test_sampler_arguments_are_checked(kw, message):
    with pytest.raises(ValueError, match=message):
        ClassBalancedSampler(**kw)


# --- resume and DDP -------------------------------------------------------------------------

BALANCED = dict(class_weights="balanced", balanced_sampler=True, augment=True)


def test_balanced_run_resumed_after_epoch_1_ends_as_an_uninterrupted_one(data, tmp_path, one_thread):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(run_config(data, whole, epochs=3, **BALANCED))
    train(run_config(data, cut, epochs=2, **BALANCED))
    train(run_config(data, cut, epochs=3, resume=str(cut / "last.pt"), **BALANCED))
    assert metrics_rows(cut, timings=False) == metrics_rows(whole, timings=False)
    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(cut / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["args"]["balanced_sampler"] is True
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_a_resume_that_changes_either_setting_is_refused(data, tmp_path, monkeypatch):
    from walnet.engine.checks import RESUME_MAY_CHANGE, setting_differences

    assert not {"class_weights", "balanced_sampler"} & RESUME_MAY_CHANGE
    _scripted(monkeypatch, {})
    run = tmp_path / "run"
    train(run_config(data, run, epochs=1, class_weights="balanced", balanced_sampler=True))
    last = str(run / "last.pt")
    for changed, message in [(dict(class_weights="none", balanced_sampler=True),
                              "--class-weights none differs from the run's balanced"),
                             (dict(class_weights="balanced"), "--no-balanced-sampler differs from the run's "
                                                              "--balanced-sampler")]:
        with pytest.raises(ValueError, match=f"--resume {last}: {message}; resume with the run's settings"):
            train(run_config(data, run, epochs=2, resume=last, **changed))
    assert [r["epoch"] for r in metrics_rows(run)] == ["0"]
    # a run of a walnet without these settings resumes with their defaults
    saved = run_config(data, run).to_dict()
    del saved["class_weights"], saved["balanced_sampler"]
    assert setting_differences(saved, run_config(data, run)) == []


def test_ddp_two_cpu_processes_with_balanced_sampler_and_weights(data, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "walnet",
           *train_args(data, run, "--epochs", "2", "--balanced-sampler", "--class-weights", "balanced")]
    done = subprocess.run(cmd, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("--class-weights balanced") == 1  # rank 0 alone logs
    assert [r["epoch"] for r in metrics_rows(run)] == ["0", "1"]
    assert all(math.isfinite(float(r["loss"])) for r in metrics_rows(run))
    assert torch.load(run / "last.pt", weights_only=True)["args"]["balanced_sampler"] is True
