"""Up-front checks of a training run's configuration: done before any model loads, each naming its field.

- `check_training_numbers`: the ranges of the numeric `TrainingArguments` fields that the Trainer itself accepts
  silently (a negative learning rate trains by gradient ascent; a batch size of 0 fails deep inside a loader).
- `check_run_numbers`: the same for the model and data arguments (`max_seq_length`, `max_*_samples`, ...).
- `check_metric_for_best_model`: `metric_for_best_model` names a metric that the evaluation will report.
- `weights_error`: a corrupt weights file as one line naming its path.

Every failure is a `DataError` (bad user input): `train.py` prints it as one `error:` line with exit status 2.
"""

from __future__ import annotations

import json
import os
from typing import Any

from mtl_st.data.task_data import get_task_data
from mtl_st.errors import DataError, suggest
from tasks_mtl import TASK_TYPES

# field -> (lowest, lowest allowed?, highest, highest allowed?, what it means); None: no bound on that side.
TRAINING_RANGES: dict[str, tuple] = {
    "learning_rate": (0.0, True, None, None, "a learning rate"),
    "head_learning_rate": (0.0, True, None, None, "a learning rate"),
    "per_device_train_batch_size": (1, True, None, None, "rows per device and step"),
    "per_device_eval_batch_size": (1, True, None, None, "rows per device and step"),
    "gradient_accumulation_steps": (1, True, None, None, "batches per optimizer step"),
    "num_train_epochs": (0.0, False, None, None, "epochs"),
    "weight_decay": (0.0, True, None, None, "a decay factor"),
    "warmup_steps": (0.0, True, None, None, "steps (or a fraction of them below 1)"),
    "max_grad_norm": (0.0, True, None, None, "a gradient norm (0 turns clipping off)"),
    "adam_epsilon": (0.0, False, None, None, "a small positive number"),
    "adam_beta1": (0.0, True, 1.0, False, "a decay rate"),
    "adam_beta2": (0.0, True, 1.0, False, "a decay rate"),
    "label_smoothing_factor": (0.0, True, 1.0, False, "a fraction"),
    "dataloader_num_workers": (0, True, None, None, "worker processes"),
}
RUN_RANGES: dict[str, tuple] = {
    "max_seq_length": (4, True, None, None, "tokens"),
    "classifier_dropout": (0.0, True, 1.0, False, "a dropout probability"),
    "max_train_samples": (1, True, None, None, "rows (leave it out for all rows)"),
    "max_eval_samples": (1, True, None, None, "rows (leave it out for all rows)"),
    "max_predict_samples": (1, True, None, None, "rows (leave it out for all rows)"),
}


def _check_range(name: str, value: Any, rule: tuple) -> None:
    if value is None:
        return
    low, low_ok, high, high_ok, meaning = rule
    interval = (("[" if low_ok else "(") + f"{low}, " + (f"{high}" + ("]" if high_ok else ")") if high is not None
                                                         else "inf)"))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{name} must be a number in {interval} ({meaning}), got {value!r}.")
    below = value < low or (value == low and not low_ok)
    above = high is not None and (value > high or (value == high and not high_ok))
    if below or above or value != value:
        raise DataError(f"{name} must be in {interval} ({meaning}), got {value!r}.")


def check_training_numbers(args: Any) -> None:
    """Range checks of the numeric training fields (`TRAINING_RANGES`; `max_steps` is -1 or at least 1)."""
    for name, rule in TRAINING_RANGES.items():
        _check_range(name, getattr(args, name, None), rule)
    max_steps = getattr(args, "max_steps", -1)
    if max_steps is not None and max_steps != -1 and max_steps < 1:
        raise DataError(f"max_steps must be -1 (use num_train_epochs) or at least 1, got {max_steps}.")
    for task, weight in (getattr(args, "task_loss_weights", None) or {}).items():
        if not weight >= 0:
            raise DataError(f"task_loss_weights.{task} must be at least 0, got {weight}.")


def check_run_numbers(model_args: Any, data_args: Any) -> None:
    """Range checks of the numeric model and data fields (`RUN_RANGES`)."""
    for name, rule in RUN_RANGES.items():
        for source in (model_args, data_args):
            if hasattr(source, name):
                _check_range(name, getattr(source, name), rule)


def metric_keys(specs: list, splits: dict, prefix: str = "eval") -> tuple[set[str], list[str]]:
    """The metric keys an evaluation will report, and the tasks whose keys are their own (`metric:` modules).

    Per task with a validation split: `<prefix>_<task>_<metric>` for the metrics its type reports for it (its data
    side's `metric_names`), and `loss` when its type scores one; and `<prefix>_loss` when any task is evaluated.
    """
    keys: set[str] = set()
    custom: list[str] = []
    for spec in specs:
        if "validation" not in splits.get(spec.name, {}):
            continue
        if TASK_TYPES[spec.type].eval_loss:
            keys.add(f"{prefix}_{spec.name}_loss")
        if getattr(spec, "metric", None):
            custom.append(spec.name)
        else:
            keys.update(f"{prefix}_{spec.name}_{name}" for name in get_task_data(spec.type).metric_names(spec))
    if keys or custom:
        keys.add(f"{prefix}_loss")
    return keys, custom


def lower_is_better(key: str, task_types: dict[str, str]) -> bool:
    """Whether a metric key (`eval_<task>_<metric>`, `eval_loss`, with any prefix) is better when smaller: every loss,
    and the metrics a task type lists in `lower_is_better` (a regression task's `mse`). `task_types`: name -> type."""
    if key == "loss" or key.endswith("_loss"):
        return True
    for name in sorted(task_types, key=len, reverse=True):
        for prefix in ("eval_", "test_", ""):
            if key.startswith(f"{prefix}{name}_"):
                return key[len(prefix) + len(name) + 1:] in TASK_TYPES[task_types[name]].lower_is_better
    return False


def check_metric_for_best_model(args: Any, specs: list, splits: dict) -> None:
    """`metric_for_best_model` (with the `eval_` prefix the Trainer adds) must be a key the evaluation reports, and
    `greater_is_better` must fit it.

    transformers treats every metric not ending in "loss" as higher-is-better, so `eval_<task>_mse` would keep the
    worst checkpoint: for a lower-is-better metric `greater_is_better` is set to False when it was left unset, and a
    `greater_is_better: true` given for one is refused.
    """
    metric = getattr(args, "metric_for_best_model", None)
    if not metric:
        return
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    keys, custom = metric_keys(specs, splits)
    if key in keys or any(key.startswith(f"eval_{name}_") for name in custom):
        smaller = lower_is_better(key, {spec.name: spec.type for spec in specs})
        if smaller and getattr(args, "_greater_is_better_given", False) and args.greater_is_better:
            raise DataError(f"metric_for_best_model {metric!r} is better when smaller, but greater_is_better is true; "
                            "leave greater_is_better out or set it to false.")
        if smaller:
            args.greater_is_better = False
        return
    if not keys and not custom:
        raise DataError(f"metric_for_best_model is {metric!r}, but no task has a validation split to evaluate.")
    raise DataError(f"metric_for_best_model {metric!r} is not a metric this run reports; it reports "
                    f"{sorted(keys)}." + suggest(key, sorted(keys)))


def parse_json_field(name: str, value: Any, kind: type) -> Any:
    """Command-line values arrive as strings: parse JSON (a bare word is a one-item list for list fields)."""
    if value is None or isinstance(value, kind):
        return value
    if isinstance(value, (list, tuple)) and kind is list:
        return list(value)
    try:
        parsed = json.loads(value)
    except (TypeError, json.JSONDecodeError):
        if kind is list and isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        raise ValueError(f"{name} must be a JSON {kind.__name__}, got {value!r}.") from None
    if not isinstance(parsed, kind):
        raise ValueError(f"{name} must be a JSON {kind.__name__}, got {value!r}.")
    return parsed


def weights_error(source: str, error: BaseException) -> DataError:
    """A `DataError` naming the weights file of `source` that failed to load with `error`."""
    names = []
    if os.path.isdir(source):
        names = sorted(n for n in os.listdir(source) if n.endswith((".safetensors", ".bin")))
    path = os.path.join(source, names[0]) if len(names) == 1 else source
    return DataError(f"{path}: corrupt or unreadable weights file ({error}); download or save it again.")


__all__ = ["check_training_numbers", "check_run_numbers", "check_metric_for_best_model", "metric_keys",
           "lower_is_better", "weights_error", "parse_json_field", "TRAINING_RANGES", "RUN_RANGES"]
