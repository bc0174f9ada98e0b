"""The search space: which run fields a search varies, how Optuna draws them, and how a trial's values become a run.

A space maps a field to a distribution:

    learning_rate: {type: float, low: 1.0e-5, high: 3.0e-4, log: true}
    num_train_epochs: {type: int, low: 1, high: 3}          # optional `step`
    task_sampling: {type: categorical, choices: [proportional, round_robin]}
    task_loss_weights.ner: {type: float, low: 0.25, high: 4.0, log: true}   # one task's entry of a per-task field

A grid maps a field to its list of values; `sampler: grid` runs every combination exactly once. Any field of the
run (model, data and training arguments) may be searched, except those that say where and whether to run.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import typing
from dataclasses import dataclass
from typing import Any

from mtl_st.errors import DataError, suggest

DISTRIBUTION_TYPES = ("float", "int", "categorical")
# Fields a trial may not change: where it writes, what it runs, the search itself.
NOT_SEARCHABLE = {"output_dir", "do_train", "do_eval", "do_predict", "hyperparameter_search", "tasks", "show_examples",
                  "overwrite_output_dir", "push_to_hub", "hub_model_id", "resume_from_checkpoint",
                  "cross_validation_folds", "logging_dir", "run_name"}
PER_TASK_FIELDS = ("task_loss_weights",)  # dict fields searched one task's entry at a time: `task_loss_weights.ner`


@dataclass(frozen=True)
class Distribution:
    """One field's distribution: `float` / `int` in [low, high] (optionally `log` or a `step`), or `categorical`."""

    field: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial: Any) -> Any:
        """Draw this field's value for an Optuna trial."""
        if self.kind == "float":
            return trial.suggest_float(self.field, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.field, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(self.field, list(self.choices))

    def edges(self) -> list[Any]:
        """The values whose acceptance by the run's own checks stands for the whole distribution."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


def parse_space(space: Any, where: str = "hyperparameter_search.space") -> dict[str, Distribution]:
    """The `space:` mapping as `Distribution`s; `DataError` naming the field for a malformed entry."""
    if space in (None, {}):
        return {}
    if not isinstance(space, dict):
        raise DataError(f"{where} must map fields to distributions, got {type(space).__name__}.")
    parsed = {}
    for name, spec in space.items():
        at = f"{where}.{name}"
        if not isinstance(spec, dict) or "type" not in spec:
            raise DataError(f"{at} must be a mapping with a `type` ({', '.join(DISTRIBUTION_TYPES)}), got {spec!r}.")
        kind = spec["type"]
        if kind not in DISTRIBUTION_TYPES:
            raise DataError(f"{at}: unknown type {kind!r}; valid types are {', '.join(DISTRIBUTION_TYPES)}."
                            + suggest(str(kind), DISTRIBUTION_TYPES))
        allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log", "step"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise DataError(f"{at}: unknown keys {unknown} for a {kind} distribution; allowed: {sorted(allowed)}.")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise DataError(f"{at}: a categorical needs a non-empty list of `choices`, got {choices!r}.")
            parsed[name] = Distribution(name, kind, choices=tuple(choices))
            continue
        low, high, log, step = spec.get("low"), spec.get("high"), bool(spec.get("log", False)), spec.get("step")
        for bound, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(f"{at}: `{bound}` must be a number, got {value!r}.")
            if kind == "int" and float(value) != int(value):
                raise DataError(f"{at}: an int distribution needs whole-number bounds, got {bound} {value!r}.")
        if not low < high:
            raise DataError(f"{at}: empty range, low {low!r} is not below high {high!r}.")
        if log and low <= 0:
            raise DataError(f"{at}: `log: true` needs bounds above 0, got low {low!r}.")
        if step is not None and (log or isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
            raise DataError(f"{at}: `step` must be a positive number and cannot go with `log`, got {step!r}.")
        parsed[name] = Distribution(name, kind, float(low), float(high), log, float(step) if step else None)
    return parsed


def parse_grid(grid: Any, where: str = "hyperparameter_search.grid") -> dict[str, list]:
    """The `grid:` mapping (field -> list of values); `DataError` naming the field for an empty or bad list."""
    if grid in (None, {}):
        return {}
    if not isinstance(grid, dict):
        raise DataError(f"{where} must map fields to lists of values, got {type(grid).__name__}.")
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise DataError(f"{where}.{name} must be a non-empty list of values, got {values!r}.")
        if len({repr(value) for value in values}) != len(values):
            raise DataError(f"{where}.{name} lists a value twice: {values!r}.")
    return {name: list(values) for name, values in grid.items()}


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of a grid, in a fixed order (the first field varies slowest)."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[name] for name in names))]


def field_kinds(argument_classes: tuple) -> dict[str, str]:
    """`{field: "number" | "bool" | "text" | "other"}` for every settable field of the run's argument dataclasses."""
    kinds = {}
    for cls in argument_classes:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if field.init:
                kinds[field.name] = _kind(hints.get(field.name, field.type))
    return kinds


def _kind(annotation: Any) -> str:
    members = set(typing.get_args(annotation)) if typing.get_args(annotation) else {annotation}
    members.discard(type(None))
    if bool in members:
        return "bool"
    if members & {int, float}:
        return "number"
    if members and all(m is str or (isinstance(m, type) and issubclass(m, enum.Enum)) for m in members):
        return "text"
    return "other"


def check_fields(values_by_field: dict[str, list], kinds: dict[str, str], task_names: list[str],
                 where: str) -> None:
    """Each searched field exists, may be searched, and takes values of its type; a per-task entry names a task."""
    for name, values in values_by_field.items():
        at = f"{where}.{name}"
        base, _, task = name.partition(".")
        if task:
            if base not in PER_TASK_FIELDS:
                raise DataError(f"{at}: only a per-task field ({', '.join(PER_TASK_FIELDS)}) takes a `.<task>` entry.")
            if task not in task_names:
                raise DataError(f"{at}: no task is called {task!r}; the tasks are {task_names}."
                                + suggest(task, task_names))
            kind = "number"
        elif name not in kinds:
            raise DataError(f"{at}: unknown field {name!r}." + suggest(name, sorted(kinds)))
        elif name in NOT_SEARCHABLE or name in PER_TASK_FIELDS:
            hint = f" (search one task's entry, e.g. {name}.<task>)" if name in PER_TASK_FIELDS else ""
            raise DataError(f"{at}: {name!r} cannot be searched{hint}.")
        else:
            kind = kinds[name]
        for value in values:
            if kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise DataError(f"{at}: {name!r} is a number; {value!r} is not (a categorical of numbers works).")
            if kind == "bool" and not isinstance(value, bool):
                raise DataError(f"{at}: {name!r} is true or false; {value!r} is not.")
            if kind == "text" and not isinstance(value, str):
                raise DataError(f"{at}: {name!r} takes a string, not {value!r}: give it a categorical of strings.")


def apply_params(params: dict[str, Any], model_args: Any, data_args: Any, training_args: Any) -> tuple:
    """The run's three argument dataclasses with a trial's values in place (each re-checked by its own
    `__post_init__`); `task_loss_weights.ner: 2.0` sets one task's weight and keeps the others'."""
    by_class: list[dict[str, Any]] = [{}, {}, {}]
    targets = (model_args, data_args, training_args)
    for name, value in params.items():
        base, _, task = name.partition(".")
        owner = next(i for i, target in enumerate(targets) if base in {f.name for f in dataclasses.fields(target)})
        if task:
            current = dict(by_class[owner].get(base) or getattr(targets[owner], base) or {})
            current[task] = value
            value = current
        by_class[owner][base] = value
    return tuple(dataclasses.replace(target, **changes) if changes else target
                 for target, changes in zip(targets, by_class))


__all__ = ["Distribution", "parse_space", "parse_grid", "grid_points", "field_kinds", "check_fields", "apply_params",
           "NOT_SEARCHABLE", "PER_TASK_FIELDS"]
