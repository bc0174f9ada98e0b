"""A search, end to end: check the block, open the study, run trials as normal runs, then train the best settings.

Each trial is `train.run` on the search's prepared data with the trial's values applied, in `output_dir/trial-<n>/`,
with `do_predict` off: selection reads validation metrics only. Everything a run does still holds per trial
(layer-wise and head rates, frozen tasks, the preservation anchor, the run-settings fingerprint, the output-folder
lock, resuming from the last checkpoint). With `cross_validation_folds: K` a trial's objective is the mean over its K
folds (their spread is kept). Evaluations during training feed the pruner. When the budget is reached and no trial
is running anywhere, the best settings train once more into `output_dir/best/`, this time scored on the test split.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState
from transformers import TrainerCallback

from mtl_st.errors import DataError, TrainingDiverged
from mtl_st.search.config import SearchConfig, merge_overrides
from mtl_st.search.objectives import Objectives, parse_objectives
from mtl_st.search.report import best_trials, progress_line, write_best_config, write_reports
from mtl_st.search.space import Distribution, apply_params, check_fields, field_kinds
from mtl_st.search.study import (
    SurplusTrial,
    check_budget,
    counted,
    open_study,
    original_number,
    stop_at_budget,
    this_worker,
    worker_alive,
)
from mtl_st.training.checks import metric_keys
from mtl_st.training.cross_validation import cross_validate
from mtl_st.training.runguard import OutputDirLock, read_settings, settings_diff, write_settings

SET_CONSTRAINT = hasattr(optuna.trial.Trial, "set_constraint")  # Optuna >= 5

logger = logging.getLogger(__name__)

SEARCH_SETTINGS = "_search_settings.json"
BEST_LOCK = "_best.lock"
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth")

# `train.run` for one set of arguments: (model_args, data_args, training_args, splits, callbacks) -> metrics.
TrainRun = Callable[..., dict[str, float]]


class PruningCallback(TrainerCallback):
    """Reports each evaluation's objective to the trial and stops the run when the pruner says so.

    `MultiTaskTrainer.evaluate` evaluates one task at a time, so `on_evaluate` fires once per task with that task's
    metrics: they are gathered per step, and the objective is reported once every term of it has been seen."""

    def __init__(self, trial: optuna.Trial, objectives: Objectives):
        self.trial = trial
        self.objectives = objectives
        self.step: int | None = None
        self.seen: dict[str, float] = {}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.global_step != self.step:
            self.step, self.seen = state.global_step, {}
        if not metrics or self.seen.get("_reported"):
            return control
        self.seen.update(metrics)
        if not all(key in self.seen for key in self.objectives.terms[0]):
            return control
        self.seen["_reported"] = True
        self.trial.report(self.objectives.values(self.seen)[0], step=state.global_step)
        if self.trial.should_prune():
            self.trial.set_user_attr("metrics", eval_metrics(self.seen))
            raise optuna.TrialPruned(f"pruned at step {state.global_step}")
        return control


def eval_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The validation metrics of a run's results (no timings, no train_/test_ keys)."""
    timing = ("_runtime", "_samples_per_second", "_steps_per_second", "_model_preparation_time")
    return {k: float(v) for k, v in results.items() if k.startswith("eval_") and not k.endswith(timing)
            and isinstance(v, (int, float))}


def check_search(config: SearchConfig, argument_classes: tuple, model_args: Any, data_args: Any, training_args: Any,
                 specs: list, splits: dict) -> tuple[SearchConfig, Objectives]:
    """Everything about the block that can be checked before training, each refusal naming its field."""
    kinds = field_kinds(argument_classes)
    where = "hyperparameter_search.grid" if config.grid else "hyperparameter_search.space"
    config = _numbers_from_yaml_strings(config, kinds)
    check_fields(config.fields, kinds, [spec.name for spec in specs], where)
    for name, values in config.fields.items():
        for value in values:
            try:
                apply_params({name: value}, model_args, data_args, training_args)
            except (DataError, ValueError, TypeError) as error:
                raise DataError(f"{where}.{name}: the value {value!r} is refused: {error}") from None
    folds = data_args.cross_validation_folds
    evaluated = splits if not folds else {name: {"validation"} if "train" in task_splits else task_splits
                                          for name, task_splits in splits.items()}
    keys, custom = metric_keys(specs, evaluated)
    objectives = parse_objectives(config.objective, config.direction, config.constraints, keys, custom,
                                  {spec.name: spec.type for spec in specs})
    if config.pruner != "none":
        if objectives.multi:
            raise DataError("hyperparameter_search.pruner: Optuna cannot prune a search with several objectives; "
                            "set pruner: none.")
        if not folds and str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy)) == "no":
            raise DataError("hyperparameter_search.pruner needs evaluations during training to decide on: set "
                            "eval_strategy (steps or epoch) and eval_steps, or pruner: none.")
    return config, objectives


def _numbers_from_yaml_strings(config: SearchConfig, kinds: dict[str, str]) -> SearchConfig:
    """PyYAML reads `3e-5` (no dot) as a string: numeric fields' choices and grid values are read as numbers."""
    def number(name: str, value: Any) -> Any:
        if isinstance(value, str) and (kinds.get(name) == "number" or "." in name):
            try:
                as_float = float(value)
            except ValueError:
                return value
            return int(as_float) if as_float.is_integer() and "e" not in value.lower() and "." not in value else as_float
        return value

    grid = {name: [number(name, v) for v in values] for name, values in config.grid.items()}
    space = {name: dataclasses.replace(d, choices=tuple(number(name, v) for v in d.choices)) if d.kind == "categorical"
             else d for name, d in config.space.items()}
    return dataclasses.replace(config, grid=grid, space=space)


def check_search_settings(output_dir: str, config: SearchConfig, base_settings: dict) -> None:
    """A second search into the same `output_dir` must be the same search (workers join it); else refuse, naming
    the fields that differ."""
    settings = json.loads(json.dumps({"search": config.raw, "base": base_settings}, sort_keys=True, default=str))
    saved = read_settings(output_dir, name=SEARCH_SETTINGS)
    if saved is None:
        write_settings(output_dir, settings, name=SEARCH_SETTINGS)
        return
    differences = settings_diff(saved.get("base", {}), settings["base"])
    if saved.get("search") != settings["search"]:
        differences.append(f"hyperparameter_search: {json.dumps(saved.get('search'))} -> "
                           f"{json.dumps(settings['search'])}")
    if differences:
        raise DataError(f"{output_dir} holds another search ({SEARCH_SETTINGS}): {'; '.join(differences)}. Give a "
                        "new `output_dir`, or pass `--overwrite_output_dir true` to start this search there afresh.")


def clear_search(output_dir: str) -> None:
    """`--overwrite_output_dir`: delete a previous search's study, trials, best run and reports in `output_dir`."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if name.startswith(("trial-", "best", "hp_search", "trials.csv", "search_")) or name == SEARCH_SETTINGS:
            path = os.path.join(output_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    logger.warning(f"--overwrite_output_dir: deleted the previous search in {output_dir}.")


def run_search(block: Any, overrides: dict[str, Any], argument_classes: tuple, model_args: Any, data_args: Any,
               training_args: Any, specs: list, splits: dict, train_run: TrainRun, base_config: dict,
               base_settings: dict) -> dict[str, Any]:
    """Run (or join, or resume) the search; returns the report (`hp_search.json`'s content)."""
    config = SearchConfig.from_dict(merge_overrides(block, overrides))
    config, objectives = check_search(config, argument_classes, model_args, data_args, training_args, specs, splits)
    output_dir = training_args.output_dir
    if getattr(training_args, "overwrite_output_dir", False):
        clear_search(output_dir)
    check_search_settings(output_dir, config, base_settings)
    training_args = dataclasses.replace(training_args, overwrite_output_dir=False)  # never per trial

    def constraints_func(trial) -> list[float]:
        return trial.user_attrs.get("violations", [math.inf] * len(objectives.constraints))

    # Optuna 5 reads each trial's own constraint values (`Trial.set_constraint`, set by the objective) and deprecates
    # the sampler's `constraints_func`; Optuna 4 has only the latter.
    old_constraints = objectives.constraints and not SET_CONSTRAINT
    current = current_values(config, model_args, data_args, training_args) if config.include_current else None
    study = open_study(config, output_dir, objectives.directions, constraints_func if old_constraints else None,
                       current)
    started = time.time()
    objective = make_objective(study, config, objectives, model_args, data_args, training_args, splits, train_run)
    if counted(study) < config.n_trials:
        study.optimize(objective, n_trials=None, timeout=config.timeout, gc_after_trial=True,
                       catch=(SurplusTrial, TrainingDiverged),
                       callbacks=[stop_at_budget(config.n_trials), progress_callback(config, objectives, started,
                                                                                  output_dir)])
    report = write_reports(study, config, objectives, output_dir)
    running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if worker_alive(t.user_attrs.get("worker"))]
    if running:
        print(f"[search] trials {[t.number for t in running]} still run in other workers: the last one to finish "
              f"trains {os.path.join(output_dir, 'best')}.")
        return report
    best = best_trials(study, objectives)
    if best and not config.train_best:
        return write_reports(study, config, objectives, output_dir, plots=True)
    if not best:
        print("[search] no trial completed" + (" within the constraints" if objectives.constraints else "")
              + f": no best settings to train; see {os.path.join(output_dir, 'hp_search.json')}.")
        return report
    chosen = best[0]
    best_dir = os.path.join(output_dir, "best")
    try:  # one worker trains best/; another that finishes at the same moment leaves it to that one
        claim = OutputDirLock(output_dir, name=BEST_LOCK).acquire()
    except DataError:
        print(f"[search] another worker trains {best_dir}.")
        return report
    try:
        m, d, t = apply_params(chosen.params, model_args, data_args, training_args)
        t = dataclasses.replace(t, output_dir=best_dir, do_train=True, do_eval=True, do_predict=True)
        print(f"[search] training the best settings (trial {chosen.number}: {format_params(chosen.params)}) into "
              f"{best_dir}, scored once on the test split")
        best_results = train_run(m, d, t, splits, [])
        write_best_config(base_config, chosen.params, best_dir, os.path.join(output_dir, "best_config.yaml"))
        return write_reports(study, config, objectives, output_dir, best_results=best_results, plots=True)
    finally:
        claim.release()


def make_objective(study: optuna.Study, config: SearchConfig, objectives: Objectives, model_args: Any,
                   data_args: Any, training_args: Any, splits: dict, train_run: TrainRun):
    """The Optuna objective: one trial is one run (or K fold runs) with the trial's values."""
    folds = data_args.cross_validation_folds

    def objective(trial: optuna.Trial):
        try:
            return run_trial(trial)
        except (TrainingDiverged, SurplusTrial) as error:  # the trial fails, the search goes on
            trial.set_user_attr("error", str(error))
            raise

    def run_trial(trial: optuna.Trial):
        check_budget(study, trial, config.n_trials)
        params = suggest(trial, config)
        folder = os.path.join(training_args.output_dir, f"trial-{original_number(trial)}")
        trial.set_user_attr("worker", this_worker())
        trial.set_user_attr("folder", os.path.basename(folder))
        m, d, t = apply_params(params, model_args, data_args, training_args)
        t = dataclasses.replace(t, output_dir=folder, do_train=True, do_eval=True, do_predict=False,
                                push_to_hub=False)
        try:
            if folds:
                results = cross_validated(trial, objectives, train_run, m, d, t, splits, int(folds))
            else:
                results = eval_metrics(train_run(m, d, t, splits, [PruningCallback(trial, objectives)]))
        finally:
            if not config.keep_trial_weights:
                drop_weights(folder)
        trial.set_user_attr("metrics", results)
        violations = objectives.violations(results)
        trial.set_user_attr("violations", violations)
        if SET_CONSTRAINT:
            for constraint, violation in zip(objectives.constraints, violations):
                trial.set_constraint(constraint.text, violation)
        values = objectives.values(results)
        if not all(math.isfinite(v) for v in values):
            raise TrainingDiverged(f"trial {trial.number}: the objective is not finite ({values}).")
        return values if objectives.multi else values[0]

    return objective


def cross_validated(trial: optuna.Trial, objectives: Objectives, train_run: TrainRun, model_args: Any,
                    data_args: Any, training_args: Any, splits: dict, folds: int) -> dict[str, float]:
    """K fold runs; after each, the running mean of the objective is reported (and may prune). Returns the folds'
    mean metrics; `fold_values` and `fold_std` (the spread of the objective) go into the trial's attributes."""

    def after_fold(fold: int, per_fold: list[dict]) -> None:
        values = [objectives.values(eval_metrics(results))[0] for results in per_fold]
        trial.set_user_attr("fold_values", values)
        if not objectives.multi:
            trial.report(sum(values) / len(values), step=fold)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {fold + 1} of {folds}")

    summary = cross_validate(lambda fold_args, fold_splits: train_run(model_args, data_args, fold_args, fold_splits,
                                                                      []),
                             training_args, splits, folds, show=False, after_fold=after_fold)
    values = trial.user_attrs.get("fold_values", [])
    if len(values) > 1:
        mean = sum(values) / len(values)
        trial.set_user_attr("fold_std", math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)))
    return {key: entry["mean"] for key, entry in summary["metrics"].items()}


def current_values(config: SearchConfig, model_args: Any, data_args: Any, training_args: Any) -> dict[str, Any] | None:
    """The config's own values of the searched fields (a task's weight defaults to 1), or None (with a warning) when
    one lies outside its distribution."""
    values = {}
    for name, distribution in config.space.items():
        base, _, task = name.partition(".")
        owner = next(args for args in (model_args, data_args, training_args) if hasattr(args, base))
        value = (getattr(owner, base) or {}).get(task, 1.0) if task else getattr(owner, base)
        value = getattr(value, "value", value)
        inside = value in distribution.choices if distribution.kind == "categorical" else (
            isinstance(value, (int, float)) and distribution.low <= value <= distribution.high)
        if not inside:
            logger.warning(f"include_current: {name}={value!r} is outside its distribution; no baseline trial.")
            return None
        values[name] = value
    return values


def suggest(trial: optuna.Trial, config: SearchConfig) -> dict[str, Any]:
    if config.grid:
        return {name: trial.suggest_categorical(name, values) for name, values in config.grid.items()}
    return {name: distribution.suggest(trial) for name, distribution in config.space.items()}


def drop_weights(folder: str) -> None:
    """A finished trial keeps its metrics, configs and logs, not its weights or checkpoints (best/ is trained anew)."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.startswith("checkpoint-") and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif name.endswith(WEIGHT_FILES) and os.path.isfile(path):
            os.remove(path)
        elif name.startswith("fold-") and os.path.isdir(path):
            drop_weights(path)


def format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def progress_callback(config: SearchConfig, objectives: Objectives, started: float, output_dir: str):
    """After each trial: rewrite the reports from the study (a kill leaves them current) and print a progress line."""

    def callback(study: optuna.Study, trial) -> None:
        write_reports(study, config, objectives, output_dir)
        if not trial.user_attrs.get("surplus"):
            print(progress_line(study, trial, config, objectives, started), flush=True)

    return callback


__all__ = ["run_search", "check_search", "make_objective", "PruningCallback", "eval_metrics", "Distribution"]
