"""Where an experiment's runs run (``walnet experiment --devices`` / ``--slurm``).

:func:`~walnet.engine.experiment.run_experiment` lists the runs and writes the tables; a launcher
of this module runs the runs between the two, each with
:func:`~walnet.engine.experiment.execute_run` (reuse, resume or train, then score, under the
run folder's lock), so every launcher gives the same tables:

- :func:`run_local` (``--devices cuda:0,cuda:1`` or ``all``; ``cpu,cpu`` on a CPU): one process
  per run, at most one per device at a time, each run trained and scored on its device. A run
  that fails is reported with its tag and the others go on; the experiment then fails, naming
  the failed runs, and the same command runs them again (finished runs are reused).
- :func:`run_slurm` (``--slurm``): the runs as one SLURM job array through submitit. A job that
  is preempted or reaches its time limit is requeued by submitit and resumes from ``last.pt``;
  an array submitted again reuses the finished runs and resumes the interrupted ones. With
  ``--no-wait`` it only submits; ``--aggregate-only`` later writes the tables.

A process that runs runs shows their log lines prefixed with the run's tag. Its CPU threads are
``OMP_NUM_THREADS`` where set, else the CPUs shared out among the local processes.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import sys
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable, Sequence

from walnet.engine.experiment import RunSpec, execute_run
from walnet.files import first_line

_log = logging.getLogger(__name__)

#: How to install what ``--slurm`` needs.
SLURM_INSTALL = "pip install 'walnet[slurm]'"


class RunsFailedError(RuntimeError):
    """Runs of an experiment failed (the others finished); the message names each and why."""


def parse_devices(text: str) -> list[str]:
    """``--devices``: ``all`` (every CUDA device here) or comma-separated devices, each one a
    process (``cuda:0,cuda:1``; ``cpu,cpu`` for two CPU processes). A ValueError naming
    ``--devices`` where one is no device here, before any run."""
    import torch

    from walnet.engine.checks import pick_device

    if text.strip() == "all":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError("--devices all: no CUDA device is available here; name the devices, e.g. "
                             "--devices cpu,cpu")
        return [f"cuda:{i}" for i in range(count)]
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not devices or "auto" in devices:
        raise ValueError(f"--devices takes all or comma-separated devices (cuda:0,cuda:1 or cpu,cpu), got {text!r}")
    for device in devices:
        try:
            pick_device(device)
        except ValueError as exc:
            raise ValueError(str(exc).replace("--device ", "--devices ", 1)) from None
    return devices


class _Tagged(logging.Handler):
    """The ``walnet`` logger's records in a process that runs runs: each line prefixed with the
    run's tag (INFO on stdout, warnings on stderr), as the lines of parallel runs interleave."""

    def __init__(self, tag: str):
        super().__init__(logging.INFO)
        self.tag = tag

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            text = text if text.startswith(self.tag) else f"{self.tag} {text}"
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            print(text, file=stream, flush=True)
        except Exception:  # noqa: BLE001 - logging's contract: a failed emit never raises
            self.handleError(record)


@contextlib.contextmanager
def _run_here(spec: RunSpec, threads: int | None):
    """The settings of a process that runs `spec`: its CPU threads and its tagged log."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    logger, handler = logging.getLogger("walnet"), _Tagged(spec.tag)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _threads(processes: int) -> int | None:
    """CPU threads per process: None (torch's default: ``OMP_NUM_THREADS``) where that is set,
    else the CPUs of this machine shared out among `processes`."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, len(os.sched_getaffinity(0)) // processes)


def _pin(device: str) -> str:
    """The device a local process runs a run of `device` on. A CUDA device is made the process's
    only visible one (``CUDA_VISIBLE_DEVICES``, read when CUDA starts in the process, after
    this), so the run uses ``cuda:0`` there and nothing of it (a CUDA graph's stream, a
    kernel's launch) lands on another GPU."""
    if not device.startswith("cuda"):
        return device
    index = int(device.partition(":")[2] or 0)
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[index] if visible else str(index)
    return "cuda:0"


def _local_worker(spec: RunSpec, device: str, loaders: int | None, threads: int | None, conn) -> None:
    """A local process's run, on `device`: sends None when it is done, else the error in one line."""
    try:
        spec = spec.on(_pin(device), loaders)
        with _run_here(spec, threads):
            execute_run(spec)
    except BaseException as exc:  # noqa: BLE001 - whatever stopped the run is reported to the parent
        conn.send(f"{type(exc).__name__}: {first_line(exc)}")
        sys.exit(1)
    conn.send(None)


def _raise_failures(failed: list[tuple[RunSpec, str]], total: int) -> None:
    if failed:
        named = "; ".join(f"{spec.tag} {error}" for spec, error in failed)
        raise RunsFailedError(f"{len(failed)} of {total} runs failed: {named}; the others are done: run the same "
                              "command again to run the failed ones (finished runs are reused)")


def run_local(runs: Sequence[RunSpec], devices: Sequence[str], threads: int | None = None) -> bool:
    """Runs `runs` in processes of their own (spawned), one per device of `devices` at a time, each
    run on its device (CUDA runs with ``min(8, CPUs / devices)`` loader processes unless set);
    True when every run is done, else a :class:`RunsFailedError` naming those that failed (each
    also logged as it fails). `threads`: CPU threads per process (default: :func:`_threads`)."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked process
    threads = threads if threads is not None else _threads(len(devices))
    loaders = min(8, max(1, len(os.sched_getaffinity(0)) // len(devices)))
    pending, free, running, failed = deque(runs), list(devices), {}, []
    try:
        while pending or running:
            while pending and free:
                spec, device = pending.popleft(), free.pop(0)
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_local_worker, daemon=False, args=(
                    spec, device, loaders if device.startswith("cuda") else None, threads, send))
                process.start()
                send.close()
                running[process.sentinel] = (spec, device, process, receive)
                _log.info(f"{spec.tag} runs on {device} (process {process.pid})")
            for sentinel in wait(list(running)):
                spec, device, process, receive = running.pop(sentinel)
                process.join()
                try:
                    error = receive.recv() if receive.poll() else False
                except EOFError:
                    error = False
                if error is False or (error is None and process.exitcode != 0):  # killed before its report
                    error = f"its process ended with exit code {process.exitcode}"
                if error is not None:
                    failed.append((spec, error))
                    _log.warning(f"{spec.tag} failed: {error}")
                free.append(device)
    finally:
        for _, _, process, _ in running.values():  # interrupted: the runs stop (their locks are released)
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
    _raise_failures(failed, len(runs))
    return True


@dataclass(frozen=True)
class SlurmOptions:
    """The job array of ``--slurm``: each run a job of ``gpus_per_task`` GPUs, ``cpus_per_task``
    CPUs, ``mem_gb`` GB (None: the partition's default) and ``time_min`` minutes on ``partition``
    (None: the default one); submitit's files and the jobs' logs in ``folder``. ``wait``: wait
    for the jobs (else only submit). ``cluster``: submitit's executor ("local" runs the jobs as
    local processes, for tests)."""

    folder: Path
    partition: str | None = None
    time_min: int = 1440
    gpus_per_task: int = 1
    cpus_per_task: int = 8
    mem_gb: float | None = None
    wait: bool = True
    cluster: str = "slurm"

    def __post_init__(self) -> None:
        for name, least in (("time_min", 1), ("gpus_per_task", 0), ("cpus_per_task", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"{SLURM_FLAGS[name]} must be at least {least}, got {getattr(self, name)}")
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise ValueError(f"--mem-gb must be positive, got {self.mem_gb}")


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ValueError(f"--slurm needs submitit: {SLURM_INSTALL}") from None
    return submitit


class RunJob:
    """A run as a submitit job: runs its :class:`RunSpec` with :func:`execute_run`. Its
    ``checkpoint`` has submitit requeue the job when it is preempted or out of time; the
    requeued job resumes the run from its ``last.pt``."""

    def __call__(self, spec: RunSpec) -> None:
        with _run_here(spec, None):  # threads: OMP_NUM_THREADS or the CPUs SLURM gives the job
            execute_run(spec)

    def checkpoint(self, spec: RunSpec):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, spec)


def _job_error(exc: BaseException) -> str:
    """The last line of a failed job's traceback (submitit's error holds all of it, then a line
    of dashes and where the job's logs are)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    rules = [i for i, line in enumerate(lines) if set(line) == {"-"}]
    lines = lines[:rules[-1]] if rules else lines
    return lines[-1] if lines else type(exc).__name__


def run_slurm(runs: Sequence[RunSpec], options: SlurmOptions) -> bool:
    """Submits `runs` as one job array (submitit's ``map_array``); with ``options.wait`` waits for
    every job: True when all are done, else a :class:`RunsFailedError` naming the failed runs
    (and their logs). Without waiting: False, after logging the array's id."""
    submitit = _submitit()
    folder = Path(options.folder)
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=options.cluster)
    executor.update_parameters(name="walnet", timeout_min=options.time_min, nodes=1, tasks_per_node=1,
                               gpus_per_node=options.gpus_per_task, cpus_per_task=options.cpus_per_task,
                               mem_gb=options.mem_gb, slurm_partition=options.partition)
    jobs = executor.map_array(RunJob(), list(runs))
    array = jobs[0].job_id.split("_")[0] if jobs else "-"
    _log.info(f"submitted {len(jobs)} runs as job array {array} (submitit files and logs in {folder})")
    if not options.wait:
        _log.info("not waiting for them: when they are done, the same command with --aggregate-only writes the "
                  "tables (finished runs are reused if it is run without)")
        return False
    failed = []
    for spec, job in zip(runs, jobs):
        try:
            job.result()
        except Exception as exc:  # noqa: BLE001 - submitit's errors of a failed or cancelled job
            failed.append((spec, f"{_job_error(exc)} (job {job.job_id}, log {job.paths.stderr})"))
            _log.warning(f"{spec.tag} failed: {failed[-1][1]}")
    _raise_failures(failed, len(runs))
    return True


#: The flags of :class:`SlurmOptions`' fields.
SLURM_FLAGS = {"folder": "--slurm-dir", "partition": "--partition", "time_min": "--time",
               "gpus_per_task": "--gpus-per-task", "cpus_per_task": "--cpus-per-task", "mem_gb": "--mem-gb",
               "wait": "--no-wait"}


def slurm_options(slurm: bool, output, **given) -> SlurmOptions | None:
    """The :class:`SlurmOptions` of ``--slurm`` (None without it) from the `given` fields (None:
    the default; ``folder``: ``<output>/slurm``); a field given without ``--slurm`` is a
    ValueError naming its flag."""
    given = {name: value for name, value in given.items() if value is not None}
    if not slurm:
        if given:
            raise ValueError(f"{SLURM_FLAGS[next(iter(given))]} is an option of --slurm")
        return None
    return SlurmOptions(**{"folder": Path(output) / "slurm", **given})


def launcher(devices: str | None = None, slurm: SlurmOptions | None = None,
             ) -> Callable[[Sequence[RunSpec]], bool] | None:
    """The launcher of ``--devices`` (:func:`run_local`) or ``--slurm`` (:func:`run_slurm`), checked
    before any run (the devices exist, submitit is installed); None for neither (the runs one
    after another here)."""
    if devices is not None and slurm is not None:
        raise ValueError("--devices and --slurm exclude each other: a SLURM job takes the GPUs it asks for "
                         "(--gpus-per-task)")
    if devices is not None:
        return functools.partial(run_local, devices=parse_devices(devices))
    if slurm is not None:
        _submitit()
        return functools.partial(run_slurm, options=slurm)
    return None
