"""Temperature scaling (Guo et al., 2017) and the run behind ``walnet calibrate``.

A classifier trained with cross-entropy is often over- or under-confident. One number, the
temperature T > 0, fixes much of it without changing any prediction: the probabilities become
``softmax(logits / T)``, each sample's argmax stays the same, and T is fitted to minimise the
mean negative log-likelihood (NLL) of held-out labels. :func:`fit_temperature` fits it;
:func:`calibrate_run` fits it on a run's validation split and stores it in the checkpoint
(``"temperature"``), where :attr:`walnet.engine.loading.TrainedModel.temperature` finds it for
``walnet evaluate``, ``predict`` and ``export`` (:func:`walnet.engine.step.probabilities`
applies it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from walnet.engine.calibration_metrics import calibration_bins, expected_calibration_error
from walnet.engine.checkpoint import save_checkpoint
from walnet.engine.checks import pick_device
from walnet.engine.config import CalibrateConfig
from walnet.engine.evaluation import split_loader
from walnet.engine.lock import run_lock
from walnet.engine.loops import EvalOutputs, evaluate

#: The temperatures :func:`fit_temperature` searches (inclusive): far outside them a model's
#: logits carry no usable confidence, and a fit there is a symptom, not a calibration.
TEMPERATURE_RANGE = (0.05, 20.0)
#: How closely the search pins log T (a relative precision of T of about this much).
_LOG_T_TOLERANCE = 1e-7


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and the mean NLL of the samples it was fitted on, before (T = 1,
    the plain softmax) and after (T = ``temperature``)."""

    temperature: float
    nll_before: float
    nll_after: float


def _checked(logits, targets) -> tuple[np.ndarray, np.ndarray]:
    """`logits` as float64 [N, K] and `targets` as int64 [N]; a ValueError for anything else."""
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be an [N, K] array of K >= 2 classes, got shape {list(logits.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("no samples to fit a temperature on")
    if targets.shape != (logits.shape[0],) or not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets must be {logits.shape[0]} integer class indices, got {targets.dtype} of shape "
                         f"{list(targets.shape)}")
    if targets.min() < 0 or targets.max() >= logits.shape[1]:
        raise ValueError(f"targets must lie in 0..{logits.shape[1] - 1}, got {targets.min()}..{targets.max()}")
    if not np.isfinite(logits).all():
        raise ValueError("logits hold NaN or inf: no temperature fits them")
    return logits, targets.astype(np.int64)


def nll(logits, targets, temperature: float = 1.0) -> float:
    """The mean negative log-likelihood of `targets` (int [N]) under ``softmax(logits / temperature)``
    (`logits` [N, K]), in float64."""
    logits, targets = _checked(logits, targets)
    return _nll(logits, targets, temperature)


def _nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    log_p = log_softmax(logits / temperature, axis=1)
    return float(-log_p[np.arange(len(targets)), targets].mean())


def fit_temperature(logits, targets) -> TemperatureFit:
    """The temperature T in :data:`TEMPERATURE_RANGE` minimising the mean NLL of `targets`
    (int [N]) under ``softmax(logits / T)`` (`logits` [N, K]), in float64.

    The NLL is convex in 1 / T (a log-sum-exp of a linear function of it minus a linear one),
    hence unimodal in log T, which bounded Brent's method (deterministic) searches to
    :data:`_LOG_T_TOLERANCE`. Logits equal within every sample carry no confidence to scale:
    T = 1. No samples, logits that are not finite or not [N, K >= 2], or targets that are no
    class indices are a ValueError."""
    logits, targets = _checked(logits, targets)
    before = _nll(logits, targets, 1.0)
    if not np.ptp(logits, axis=1).any():  # the NLL is log K for every T
        return TemperatureFit(1.0, before, before)
    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    found = minimize_scalar(lambda log_t: _nll(logits, targets, math.exp(log_t)), bounds=(low, high),
                            method="bounded", options={"xatol": _LOG_T_TOLERANCE})
    temperature = math.exp(float(found.x))
    return TemperatureFit(temperature, before, _nll(logits, targets, temperature))


def calibrate_run(config: CalibrateConfig) -> dict:
    """``walnet calibrate``: fits the temperature of the checkpoint ``config.checkpoint`` on the
    split ``config.split`` of its run (the run's own ``split.csv``, as ``walnet evaluate`` reads
    it) and writes it into the checkpoint as ``"temperature"`` (rewritten atomically, its other
    keys unchanged; a temperature fitted before is replaced). The run folder is locked meanwhile
    (:func:`walnet.engine.lock.run_lock`), so a training run cannot rewrite the checkpoint under it.

    Returns ``temperature``, the one it replaced (``previous``, None), ``nll_before`` (T = 1) and
    ``nll_after`` on the split, the expected calibration errors ``ece_before`` and ``ece_after``
    (:func:`~walnet.engine.calibration_metrics.expected_calibration_error`), ``split``, ``images``
    and ``checkpoint``."""
    ckpt = Path(config.checkpoint)
    device = pick_device(config.device)
    with run_lock(ckpt.parent, "walnet calibrate"):
        trained, classes, dataset, loader = split_loader(config, device, "calibrate")
        outputs = EvalOutputs()
        evaluate(trained.model, loader, device, class_names=classes, outputs=outputs, source=f"checkpoint {ckpt}")
        fit = fit_temperature(outputs.logits, outputs.targets)
        state = dict(trained.checkpoint)
        previous = state.get("temperature")
        state["temperature"] = fit.temperature
        save_checkpoint(ckpt, state)
    ece = [_ece(outputs.logits, outputs.targets, t) for t in (1.0, fit.temperature)]
    return {"temperature": fit.temperature, "previous": previous, "nll_before": fit.nll_before,
            "nll_after": fit.nll_after, "ece_before": ece[0], "ece_after": ece[1], "split": config.split,
            "images": len(dataset), "checkpoint": str(ckpt)}


def _ece(logits, targets, temperature: float) -> float:
    """The expected calibration error of softmax(`logits` / `temperature`) against `targets`."""
    logits = np.asarray(logits, dtype=np.float64) / temperature
    probs = np.exp(log_softmax(logits, axis=1))
    return expected_calibration_error(calibration_bins(targets, probs))


def summary(result: dict) -> str:
    """The line ``walnet calibrate`` prints of :func:`calibrate_run`'s `result`."""
    replaced = "" if result["previous"] is None else f", replacing {result['previous']:.4g}"
    return (f"temperature {result['temperature']:.4g}{replaced}: {result['split']} NLL {result['nll_before']:.4f} -> "
            f"{result['nll_after']:.4f}, ECE {result['ece_before']:.4f} -> {result['ece_after']:.4f} "
            f"({result['images']} images); written to {result['checkpoint']}")
