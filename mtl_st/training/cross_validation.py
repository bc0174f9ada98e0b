"""K-fold cross-validation of a whole run (`cross_validation_folds: K`), for small data.

Each task's train split is shuffled with the run's seed and cut into K folds; run k trains on the other folds and
evaluates on fold k (as its validation split), in `output_dir/fold-<k>`. Test splits are not used; eval-only tasks
keep their own validation split. `output_dir/cv_results.json` gives every `eval_*` metric's per-fold values, mean and
standard deviation (`ddof=1`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import datasets
import numpy as np

from mtl_st.errors import DataError

logger = logging.getLogger(__name__)

TIMING_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second", "_model_preparation_time")


def fold_split(task_splits: datasets.DatasetDict, fold: int, folds: int, seed: int) -> datasets.DatasetDict:
    """Fold `fold` of `folds` of a task's train split as validation, the rest as train (no test split)."""
    if "train" not in task_splits:
        return datasets.DatasetDict({k: v for k, v in task_splits.items() if k == "validation"})
    train = task_splits["train"]
    if len(train) < folds:
        raise DataError(f"cross_validation_folds is {folds}, but a train split has only {len(train)} rows.")
    parts = np.array_split(np.random.default_rng(seed).permutation(len(train)), folds)
    held_out = np.sort(parts[fold])
    kept = np.sort(np.concatenate([part for k, part in enumerate(parts) if k != fold]))
    return datasets.DatasetDict({"train": train.select(kept), "validation": train.select(held_out)})


def summarize_folds(per_fold: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """`{metric: {"per_fold", "mean", "std"}}` over the folds' `eval_*` metrics (timings left out)."""
    keys = sorted({key for results in per_fold for key in results
                   if key.startswith("eval_") and not key.endswith(TIMING_SUFFIXES)})
    summary = {}
    for key in keys:
        values = [results[key] for results in per_fold if key in results]
        summary[key] = {"per_fold": [results.get(key) for results in per_fold], "mean": float(np.mean(values)),
                        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
    return summary


def cross_validate(run: Callable[..., dict[str, float]], training_args: Any, splits: dict, folds: int,
                   show: bool = True, after_fold: Callable[[int, list[dict]], None] | None = None) -> dict[str, Any]:
    """K runs of `run(fold_args, fold_splits)`, one per fold; writes `output_dir/cv_results.json`.

    `after_fold(k, results_so_far)` is called after each fold (a search reports the running mean there, to prune).
    Returns the summary (`{"folds", "seed", "metrics": {key: {per_fold, mean, std}}}`).
    """
    per_fold: list[dict[str, float]] = []
    for fold in range(folds):
        fold_splits = {name: fold_split(task_splits, fold, folds, training_args.seed)
                       for name, task_splits in splits.items()}
        fold_args = dataclasses.replace(training_args, output_dir=os.path.join(training_args.output_dir, f"fold-{fold}"),
                                        do_eval=True, do_predict=False)
        logger.warning(f"Cross-validation: fold {fold + 1} of {folds} in {fold_args.output_dir}")
        per_fold.append(run(fold_args, fold_splits))
        if after_fold is not None:
            after_fold(fold, per_fold)
    summary = {"folds": folds, "seed": training_args.seed, "metrics": summarize_folds(per_fold)}
    if training_args.process_index == 0:
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, "cv_results.json"), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
        if show:
            print(f"\nCross-validation over {folds} folds (mean ± std):")
            for key, entry in summary["metrics"].items():
                print(f"  {key:<36} {entry['mean']:.4f} ± {entry['std']:.4f}")
    return summary


__all__ = ["cross_validate", "fold_split", "summarize_folds"]
