"""What a search leaves in `output_dir`: `hp_search.json`, `trials.csv`, `best_config.yaml`, PNG plots, and a
progress line per trial.

`hp_search.json`: `{"trials": [{"number", "params", "values", "state", "duration_s", "metrics", ...}], "best":
{"trial", "params", "values"}}` (for several objectives `best` is the list of the Pareto front), plus the objective,
directions, constraints, how many trials were pruned and the wall time pruning saved, and once `best/` is trained its
test metrics. Every worker rewrites it from the study after each trial (atomically).
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import time
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from mtl_st.search.config import SearchConfig
from mtl_st.search.objectives import Objectives
from mtl_st.search.study import counted, original_number


def feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.user_attrs.get("violations", []))


def best_trials(study: optuna.Study, objectives: Objectives) -> list[FrozenTrial]:
    """The best complete trial that meets the constraints (a list of one), or for several objectives the Pareto front
    among them, ordered by the first objective. Only validation metrics went into the values."""
    candidates = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)]
    signs = [1.0 if d == "maximize" else -1.0 for d in objectives.directions]

    def key(trial: FrozenTrial) -> tuple:
        return tuple(sign * value for sign, value in zip(signs, trial.values))

    if not candidates:
        return []
    if not objectives.multi:
        return [max(candidates, key=lambda t: (key(t), -t.number))]

    def dominates(a: FrozenTrial, b: FrozenTrial) -> bool:
        ka, kb = key(a), key(b)
        return all(x >= y for x, y in zip(ka, kb)) and any(x > y for x, y in zip(ka, kb))

    front = [t for t in candidates if not any(dominates(other, t) for other in candidates if other is not t)]
    return sorted(front, key=lambda t: (key(t), -t.number), reverse=True)


def trial_entry(trial: FrozenTrial, retries: dict[int, int]) -> dict[str, Any]:
    duration = (trial.datetime_complete - trial.datetime_start).total_seconds() \
        if trial.datetime_complete and trial.datetime_start else None
    entry = {"number": trial.number, "params": trial.params, "values": trial.values, "state": trial.state.name,
             "duration_s": round(duration, 2) if duration is not None else None,
             "metrics": trial.user_attrs.get("metrics", {}), "folder": trial.user_attrs.get("folder"),
             "feasible": feasible(trial) if trial.state == TrialState.COMPLETE else None}
    if trial.intermediate_values:
        entry["intermediate_values"] = {str(step): value for step, value in sorted(trial.intermediate_values.items())}
    for key in ("fold_values", "fold_std", "violations"):
        if key in trial.user_attrs:
            entry[key] = trial.user_attrs[key]
    if original_number(trial) != trial.number:
        entry["retry_of"] = original_number(trial)
    if trial.number in retries:
        entry["note"] = f"interrupted (its process died); retried as trial {retries[trial.number]}"
    if trial.user_attrs.get("surplus"):
        entry["note"] = "not run: the budget of trials was already taken by other trials"
    elif trial.user_attrs.get("error"):
        entry["error"] = trial.user_attrs["error"]
    return entry


def summary(study: optuna.Study, config: SearchConfig, objectives: Objectives) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    retries = {original_number(t): t.number for t in trials if original_number(t) != t.number}
    entries = [trial_entry(t, retries) for t in trials]
    complete = [e["duration_s"] for e in entries if e["state"] == "COMPLETE" and e["duration_s"]]
    pruned = [e["duration_s"] for e in entries if e["state"] == "PRUNED" and e["duration_s"]]
    full = sum(complete) / len(complete) if complete else None
    best = best_trials(study, objectives)
    best_entries = [{"trial": t.number, "params": t.params, "values": t.values} for t in best]
    return {
        "objective": config.raw.get("objective"), "directions": list(objectives.directions),
        "constraints": [c.text for c in objectives.constraints], "sampler": config.sampler, "pruner": config.pruner,
        "n_trials": config.n_trials, "counted": counted(study),
        "pruned": len(pruned),
        # A pruned trial stopped early: it saved the rest of a full trial's time (the mean complete trial's).
        "wall_time_saved_s": round(sum(max(full - d, 0.0) for d in pruned), 1) if full and pruned else 0.0,
        "wall_time_trials_s": round(sum(e["duration_s"] or 0.0 for e in entries), 1),
        "trials": entries,
        "best": (best_entries if objectives.multi else (best_entries[0] if best_entries else None)),
    }


def write_reports(study: optuna.Study, config: SearchConfig, objectives: Objectives, output_dir: str,
                  best_results: dict | None = None, plots: bool = False) -> dict[str, Any]:
    """Write `hp_search.json` and `trials.csv` (and with `plots`, the PNGs); returns the report."""
    report = summary(study, config, objectives)
    if best_results is not None:
        report["best_folder"] = "best"
        report["best_test_metrics"] = {k: v for k, v in best_results.items() if k.startswith("test_")
                                       and isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second"))}
    atomic_write(os.path.join(output_dir, "hp_search.json"), json.dumps(report, indent=2, default=str) + "\n")
    names = sorted({name for entry in report["trials"] for name in entry["params"]})
    metrics = sorted({name for entry in report["trials"] for name in entry["metrics"]})
    rows = [["number", "state", "duration_s", *(f"value_{i}" for i in range(len(objectives.terms))), *names, *metrics]]
    for entry in report["trials"]:
        values = list(entry["values"] or []) + [None] * (len(objectives.terms) - len(entry["values"] or []))
        rows.append([entry["number"], entry["state"], entry["duration_s"], *values,
                     *(entry["params"].get(n) for n in names), *(entry["metrics"].get(m) for m in metrics)])
    with _atomic(os.path.join(output_dir, "trials.csv")) as handle:
        csv.writer(handle).writerows(rows)
    if plots:
        report["plots"] = write_plots(study, objectives, output_dir)
        atomic_write(os.path.join(output_dir, "hp_search.json"), json.dumps(report, indent=2, default=str) + "\n")
    return report


def write_plots(study: optuna.Study, objectives: Objectives, output_dir: str) -> list[str]:
    """Optimisation history, parameter importances and (several objectives) the Pareto front, as PNG; a plot that
    cannot be drawn (too few trials, matplotlib missing) is left out."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as plots
    except ImportError:
        return []
    import warnings

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    drawn = []
    names = [objectives.describe()] if not objectives.multi else [" + ".join(t) for t in objectives.terms]
    jobs = [("search_history.png", lambda: plots.plot_optimization_history(
        study, target=None if not objectives.multi else (lambda t: t.values[0]), target_name=names[0]))]
    if len(done) >= 3 and len(done[0].params) >= 2:
        jobs.append(("search_importances.png", lambda: plots.plot_param_importances(
            study, target=None if not objectives.multi else (lambda t: t.values[0]))))
    if objectives.multi and len(done) >= 2:
        jobs.append(("search_pareto.png", lambda: plots.plot_pareto_front(study, target_names=names)))
    for name, draw in jobs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                axes = draw()
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        figure.savefig(os.path.join(output_dir, name), dpi=100)
        plt.close(figure)
        drawn.append(name)
    return drawn


def write_best_config(base_config: dict, params: dict[str, Any], best_dir: str, path: str) -> None:
    """The run's YAML with the best values in place and no search block: `python train.py best_config.yaml` trains
    the same model again (into `best/`; pass `--output_dir` for another folder)."""
    config = {key: value for key, value in base_config.items() if key != "hyperparameter_search"}
    for name, value in params.items():
        base, _, task = name.partition(".")
        if task:
            config[base] = {**(config.get(base) or {}), task: value}
        else:
            config[base] = value
    config.update(output_dir=best_dir, do_train=True, do_eval=True, do_predict=True)
    atomic_write(path, "# The best settings of the search in this folder (see hp_search.json).\n"
                 + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def progress_line(study: optuna.Study, trial: FrozenTrial, config: SearchConfig, objectives: Objectives,
                  started: float) -> str:
    """`[search] trial 3 (3/16) complete in 41s: learning_rate=..., ... -> 0.6123 | best 0.6450 (trial 1) | ~8 min
    left`."""
    done = counted(study)
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    duration = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else 0.0
    value = ", ".join(f"{v:.4f}" for v in trial.values) if trial.values else trial.state.name.lower()
    best = best_trials(study, objectives)
    best_text = ("best " + ", ".join(f"{v:.4f}" for v in best[0].values) + f" (trial {best[0].number})"
                 if best and not objectives.multi else f"Pareto front: {len(best)} trial(s)" if best else "no best yet")
    elapsed = time.time() - started
    left = (config.n_trials - done) * elapsed / max(done, 1)
    if config.timeout:
        left = min(left, max(config.timeout - elapsed, 0.0))
    state = trial.state.name.lower() + ("" if trial.state != TrialState.PRUNED else f" at step {trial.last_step}")
    if trial.state == TrialState.FAIL:
        state += f" ({trial.user_attrs.get('error', 'see the log above')})"
    return (f"[search] trial {trial.number} ({done}/{config.n_trials}) {state} in {duration:.0f}s: {params} -> {value}"
            f" | {best_text} | ~{left / 60:.0f} min left")


def atomic_write(path: str, text: str) -> None:
    with _atomic(path) as handle:
        handle.write(text)


class _atomic:
    """A text file written to a temporary name and renamed into place (readers never see half a report)."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        descriptor, self.temporary = tempfile.mkstemp(prefix=".report-", dir=folder)
        self.handle = os.fdopen(descriptor, "w", encoding="utf-8", newline="")
        return self.handle

    def __exit__(self, kind, value, traceback):
        self.handle.close()
        if kind is None:
            os.replace(self.temporary, self.path)
        else:
            os.remove(self.temporary)
        return False


__all__ = ["best_trials", "write_reports", "write_plots", "write_best_config", "progress_line", "summary"]
