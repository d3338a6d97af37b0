"""A training run's optimizer and learning-rate schedule: Adam (``--lr``, ``--weight-decay``) and
a :mod:`timm.scheduler` schedule (``--sched`` none, cosine, step or plateau, with timm's
``--warmup-epochs``, ``--warmup-lr``, ``--min-lr``, ``--decay-epochs``, ``--decay-rate`` and
``--patience-epochs``), stepped once per epoch after validation, as timm's training script does.

The learning rate lives in one tensor on the parameters' device, the optimizer's ``"lr"``: the
same object for the whole run, overwritten in place (``fill_``) after each scheduler step. A
CUDA graph that captured the optimizer's step reads the current rate from it, with no host sync
and no new capture. timm's schedulers (and the ``ReduceLROnPlateau`` behind its plateau
schedule) read and write Python floats in the optimizer's param groups, so while one of them
runs the groups hold floats, and the tensor takes their value afterwards (:meth:`Schedule._pin`).

On CUDA, Adam is built with ``capturable=True`` (it reads the rate and its step count on the
device, in a graph or not; a float32 tensor there). On the CPU, Adam's single-tensor update
reads a tensor rate as a number: there the tensor is float64, so a run updates its weights bit
for bit as Adam with the same float rate does.
"""
from __future__ import annotations

import math
import warnings

import torch

from walnet.engine.config_fields import flag_of

#: The learning-rate schedules of ``--sched``: none (constant ``--lr``, the paper's) or timm's
#: cosine, step and plateau.
SCHEDULES = ("none", "cosine", "step", "plateau")


def check_schedule(config) -> None:
    """The optimizer and schedule settings of a :class:`~walnet.engine.config.TrainConfig`: a
    one-line ValueError naming the option where one is out of range."""
    for name in ("weight_decay", "warmup_lr", "min_lr"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{flag_of(name)} must be a finite number >= 0, got {value}")
    if config.sched not in SCHEDULES:
        raise ValueError(f"--sched must be one of {', '.join(SCHEDULES)}, got {config.sched!r}")
    if not (math.isfinite(config.decay_rate) and 0 < config.decay_rate < 1):
        raise ValueError(f"--decay-rate must be a number between 0 and 1 (exclusive), got {config.decay_rate}")
    for name, low in (("warmup_epochs", 0), ("decay_epochs", 1), ("patience_epochs", 0)):
        if getattr(config, name) < low:
            raise ValueError(f"{flag_of(name)} must be at least {low}, got {getattr(config, name)}")
    if config.patience is not None and config.patience < 1:
        raise ValueError(f"--patience must be at least 1, got {config.patience}")
    if config.sched == "none" and config.warmup_epochs > 0:
        raise ValueError("--warmup-epochs needs a schedule: --sched cosine, step or plateau (none keeps --lr)")
    if config.min_lr > config.lr:
        raise ValueError(f"--min-lr {config.min_lr} is above --lr {config.lr}")


def resume_problem(saved: dict, config) -> str | None:
    """Why `config` cannot continue the run whose settings are `saved` (its ``to_dict()``) for
    its schedule, or None: a cosine schedule is spread over the run's ``--epochs``, so another
    count would change the rates of the epochs already trained."""
    if saved.get("sched") == "cosine" and saved.get("epochs") != config.epochs:
        return (f"--epochs {config.epochs} differs from the run's {saved.get('epochs')}: its cosine schedule "
                "(--sched cosine) is spread over its --epochs; resume with --epochs "
                f"{saved.get('epochs')}, or train a new run into another --output")
    return None


def _timm_scheduler(config, optimizer):
    """timm's scheduler of `config` over `optimizer` (None for ``--sched none``), stepped on
    epochs; the plateau schedule watches the validation metric, higher is better."""
    from timm.scheduler import create_scheduler_v2

    if config.sched == "none":
        return None
    with warnings.catch_warnings():  # timm marks its plateau schedule deprecated; it is offered as it is
        warnings.simplefilter("ignore", FutureWarning)
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=config.sched, num_epochs=config.epochs, decay_epochs=config.decay_epochs,
            decay_rate=config.decay_rate, min_lr=config.min_lr, warmup_lr=config.warmup_lr,
            warmup_epochs=config.warmup_epochs, patience_epochs=config.patience_epochs, plateau_mode="max",
            step_on_epochs=True)
    return scheduler


class Schedule:
    """The optimizer of a run (``self.optimizer``, Adam over `params`) and its learning-rate
    schedule. `device`: the parameters' device, where the rate tensor lives; `capturable`:
    Adam's ``capturable`` (needed by a CUDA-graphed step; on CUDA devices only).

    ``lr`` is the rate the next epoch trains with (a float); :meth:`step` moves the schedule on
    after an epoch; :meth:`state_dict` and :meth:`load_state_dict` carry it across a resume
    (after the optimizer's own state, whose load replaces the rate: :meth:`load_state_dict`
    puts the tensor back)."""

    def __init__(self, config, params, device: torch.device, capturable: bool = False):
        dtype = torch.float64 if device.type == "cpu" else torch.float32
        self.tensor = torch.tensor(config.lr, dtype=dtype, device=device)
        self.optimizer = torch.optim.Adam(params, lr=self.tensor, weight_decay=config.weight_decay,
                                          capturable=capturable)
        self.lr, self.capturable = config.lr, capturable
        self._with_floats()
        for group in self.optimizer.param_groups:
            group["initial_lr"] = config.lr  # timm's base rate, a float, whatever "lr" holds
        self.scheduler = _timm_scheduler(config, self.optimizer)
        self._pin()

    def _with_floats(self) -> None:
        """The param groups' rate as a float, for timm (and torch's ReduceLROnPlateau) to read."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def _pin(self) -> None:
        """The rate the param groups hold now (a float timm wrote, or a tensor an optimizer state
        loaded) into the run's tensor, which the groups then hold again."""
        value = self.optimizer.param_groups[0]["lr"]
        self.lr = float(value)
        self.tensor.fill_(self.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = self.tensor

    def step(self, epoch: int, metric: float) -> None:
        """After epoch `epoch`: the rate of epoch ``epoch + 1``; `metric` is the epoch's
        validation score (the plateau schedule's signal; the other schedules ignore it)."""
        if self.scheduler is None:
            return
        self._with_floats()
        self.scheduler.step(epoch + 1, metric)
        self._pin()

    def state_dict(self) -> dict:
        """The schedule's state for ``last.pt``: the next epoch's rate as the float the schedule
        computed (the tensor may hold it rounded to float32), timm's state, and for the plateau
        schedule that of the ReduceLROnPlateau inside it (its bad-epoch and cooldown counts,
        which timm's own state leaves out)."""
        state = {"lr": self.lr}
        if self.scheduler is not None:
            state["timm"] = self.scheduler.state_dict()
            inner = getattr(self.scheduler, "lr_scheduler", None)
            if inner is not None:
                state["plateau"] = inner.state_dict()
        return state

    def load_state_dict(self, state: dict | None) -> None:
        """Continues the schedule of `state` (:meth:`state_dict` of the run resumed; None: a
        checkpoint without one, whose rate is the one its optimizer state loaded)."""
        state = state or {}
        if self.scheduler is not None and "timm" in state:
            self.scheduler.load_state_dict(state["timm"])
            if "plateau" in state:
                self.scheduler.lr_scheduler.load_state_dict(state["plateau"])
        if "lr" in state:
            for group in self.optimizer.param_groups:
                group["lr"] = float(state["lr"])
        self._pin()
        self._own_settings()

    def _own_settings(self) -> None:
        """Adam's ``capturable`` is this run's, not that of the checkpoint resumed (which the
        optimizer's load took over; a run may resume on another device), with the step counts
        where it reads them: on the parameters' device when capturable."""
        for group in self.optimizer.param_groups:
            group["capturable"] = self.capturable
            for param in group["params"]:
                state = self.optimizer.state.get(param, {})
                if self.capturable and isinstance(state.get("step"), torch.Tensor):
                    state["step"] = state["step"].to(device=param.device, dtype=torch.float32)
