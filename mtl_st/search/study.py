"""The Optuna study of a search: where it lives, how it samples and prunes, how many trials count, and what happens
to a trial whose process died.

- Storage: by default a SQLite file in `output_dir` (`hp_search.db`: transactional, so a kill -9 loses nothing that was
  written, and no server is needed); or any storage URL Optuna's RDB storage takes, e.g. `postgresql://...`, through
  which several processes or machines join one study (Optuna's distributed mode).
- Budget: `n_trials` counts the trials that finish (complete or pruned). A trial that would go past it is not run
  (it is recorded as failed with `surplus` set), so two workers never overshoot the budget.
- Interrupted trials: a trial left running by a process that is gone (same machine: its PID no longer runs; other
  machines: no heartbeat for `GRACE_PERIOD_S`) is marked failed and queued again with the same parameters; the retry
  trains in the original trial's folder, so it resumes from that trial's last checkpoint. It counts once.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import warnings
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from mtl_st.search.config import SearchConfig

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 15
GRACE_PERIOD_S = 60
DB_FILE = "hp_search.db"
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


class SurplusTrial(Exception):
    """A trial asked for after the budget was reached (by another worker); it is not run."""


def storage_url(config: SearchConfig, output_dir: str) -> str:
    return config.storage or f"sqlite:///{os.path.abspath(os.path.join(output_dir, DB_FILE))}"


def study_name(config: SearchConfig, output_dir: str) -> str:
    return config.study_name or os.path.basename(os.path.normpath(os.path.abspath(output_dir)))


def process_start(pid: int) -> str | None:
    """The kernel's start time of process `pid` (to tell a live process from a reused PID), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid())}


def worker_alive(worker: dict[str, Any] | None) -> bool:
    """Whether the worker that ran a trial still runs: certain on this machine; assumed for other machines (their
    trials go stale by heartbeat instead)."""
    if not worker or worker.get("host") != socket.gethostname():
        return True
    pid = int(worker.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return worker.get("start") is None or process_start(pid) == worker.get("start")


def make_sampler(config: SearchConfig, seed: int, constraints_func) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if config.sampler == "grid":
            # Every combination is queued as a trial when the study is made (`open_study`), and a queued trial runs
            # once however many workers pop from the queue; Optuna's GridSampler would draw again and can repeat a
            # point under several workers. The sampler is then never asked.
            return optuna.samplers.RandomSampler(seed=seed)
        if config.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.n_startup_trials, multivariate=True,
                                          constraints_func=constraints_func if constraints_func else None)


def make_pruner(config: SearchConfig) -> optuna.pruners.BasePruner:
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=min(3, config.n_trials - 1), n_warmup_steps=0)
    if config.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def open_study(config: SearchConfig, output_dir: str, directions: tuple[str, ...], constraints_func,
               current: dict[str, Any] | None = None) -> optuna.Study:
    """Create or join the study; recover trials of dead workers; register this worker (its sampler seed is
    `seed + its rank among the study's workers`, so two workers never draw the same random trials). A new study
    first runs the grid's points (grid), or `current` (the config's own values, with `include_current`)."""
    os.makedirs(output_dir, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the progress lines say what happened to each trial
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    storage_url(config, output_dir), heartbeat_interval=HEARTBEAT_INTERVAL_S,
                    grace_period=GRACE_PERIOD_S,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback())
            study = optuna.create_study(storage=storage, study_name=study_name(config, output_dir),
                                        directions=list(directions), load_if_exists=True)
            break
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, optuna.exceptions.DuplicatedStudyError):
            # Two workers creating the schema (or the study) of an empty database at once: the loser retries and
            # finds what the winner made.
            if attempt == 4:
                raise
            time.sleep(0.5 + random.random())
    workers = list(study.user_attrs.get("workers", []))
    study.set_user_attr("workers", workers + [this_worker()])
    study.sampler = make_sampler(config, config.seed + len(workers), constraints_func)
    study.pruner = make_pruner(config)
    recover_interrupted(study)
    if not study.user_attrs.get("enqueued"):
        from mtl_st.search.space import grid_points

        points = grid_points(config.grid)[: config.n_trials] if config.grid else [current] if current else []
        for point in points:
            study.enqueue_trial(point, skip_if_exists=True, user_attrs={"enqueued": True})
        study.set_user_attr("enqueued", True)
    return study


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Fail the running trials of dead workers on this machine and queue each again (same parameters, same folder).
    Returns the numbers of the trials recovered."""
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker_alive(trial.user_attrs.get("worker")):
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError, optuna.exceptions.OptunaError):  # another worker recovered it first
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.RetryHeartbeatStaleTrialCallback()(study, study.get_trials(deepcopy=True)[trial.number])
        recovered.append(trial.number)
        logger.warning(f"Trial {trial.number} was interrupted (its process is gone); it is queued again and will "
                       "resume from its last checkpoint.")
    return recovered


def original_number(trial: FrozenTrial | optuna.Trial) -> int:
    """The trial a retry stands for (itself when it is not a retry): its folder and its place in the report."""
    if isinstance(trial, optuna.Trial):  # a live trial: its stored record holds the retry mark
        trial = trial.study.get_trials(deepcopy=False)[trial.number]
    return int(trial.system_attrs.get("failed_trial", trial.number))


def counted(study: optuna.Study) -> int:
    """Trials that count towards `n_trials`: complete or pruned, and run (not surplus)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=COUNTED) if not t.user_attrs.get("surplus"))


def check_budget(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> None:
    """Raise `SurplusTrial` when the trials before this one (finished, running live, or queued) already fill the
    budget: this trial would be one too many."""
    before = 0
    for other in study.get_trials(deepcopy=False):
        if other.number >= trial.number or other.user_attrs.get("surplus"):
            continue
        if other.state in COUNTED or other.state == TrialState.WAITING or (
                other.state == TrialState.RUNNING and worker_alive(other.user_attrs.get("worker"))):
            before += 1
    if before >= n_trials:
        trial.set_user_attr("surplus", True)
        study.stop()
        raise SurplusTrial(f"trial {trial.number}: the budget of {n_trials} trials is already taken")


def stop_at_budget(n_trials: int):
    """An `optimize` callback that stops this worker once `n_trials` trials count."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if counted(study) >= n_trials:
            study.stop()

    return callback


__all__ = ["open_study", "recover_interrupted", "check_budget", "stop_at_budget", "counted", "original_number",
           "SurplusTrial", "this_worker", "worker_alive", "storage_url", "study_name", "DB_FILE"]
