"""What a search optimises: one metric, a weighted sum of metrics, or several metrics at once (a Pareto front), and
the constraints a trial must meet to count.

    objective: eval_ner_f1                                          # one metric
    objective: {eval_ner_f1: 1.0, eval_sentiment_accuracy: 1.0}     # a weighted sum
    objective: [eval_ner_f1, eval_similarity_spearman]              # several: the Pareto front
    direction: maximize                                             # or one per objective
    constraints: ["eval_similarity_spearman >= 0.85"]

Only validation metrics (`eval_*`) may be named: the test split is used once, for the best settings. A lower-is-better
metric (any loss, a regression task's `mse`) is minimised by default; an explicit `maximize` for it is refused, and in
a maximised weighted sum it needs a negative weight.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mtl_st.errors import DataError, suggest
from mtl_st.training.checks import lower_is_better

DIRECTIONS = ("maximize", "minimize")
CONSTRAINT = re.compile(r"^\s*(eval_[A-Za-z0-9_\-]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Constraint:
    """`metric op bound`; `violation(metrics)` is <= 0 when met (Optuna's convention for `constraints_func`)."""

    metric: str
    op: str
    bound: float
    text: str

    def violation(self, metrics: dict[str, float]) -> float:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return math.inf
        gap = self.bound - value if self.op in (">=", ">") else value - self.bound
        return gap if self.op in (">=", "<=") else (gap if gap != 0 else 1e-12)


@dataclass(frozen=True)
class Objectives:
    """The objective terms (one `{metric: weight}` mapping per objective), their directions and the constraints."""

    terms: tuple[dict[str, float], ...]
    directions: tuple[str, ...]
    constraints: tuple[Constraint, ...]

    @property
    def metrics(self) -> set[str]:
        return {key for term in self.terms for key in term} | {c.metric for c in self.constraints}

    @property
    def multi(self) -> bool:
        return len(self.terms) > 1

    def values(self, metrics: dict[str, float]) -> list[float]:
        """Each objective's value from a run's metrics (a weighted sum per objective)."""
        return [sum(weight * float(metrics[key]) for key, weight in term.items()) for term in self.terms]

    def violations(self, metrics: dict[str, float]) -> list[float]:
        return [constraint.violation(metrics) for constraint in self.constraints]

    def feasible(self, metrics: dict[str, float]) -> bool:
        return all(v <= 0 for v in self.violations(metrics))

    def describe(self) -> str:
        return "; ".join(f"{direction} " + " + ".join(f"{w:g}*{k}" if w != 1 else k for k, w in term.items())
                         for term, direction in zip(self.terms, self.directions))


def parse_objectives(objective, direction, constraints, metric_keys: set[str], custom_tasks: list[str],
                     task_types: dict[str, str], where: str = "hyperparameter_search") -> Objectives:
    """Check the block's `objective`, `direction` and `constraints` against the metrics the run reports."""
    if objective is None:
        raise DataError(f"{where}.objective is missing: name a validation metric, e.g. eval_{next(iter(task_types))}"
                        f"_... (the run reports {sorted(metric_keys)}).")
    if isinstance(objective, str):
        terms = [{objective: 1.0}]
    elif isinstance(objective, dict) and objective:
        terms = [{str(k): _weight(v, f"{where}.objective.{k}") for k, v in objective.items()}]
    elif isinstance(objective, list) and objective:
        terms = [{str(k): 1.0} if isinstance(k, str) else None for k in objective]
        if None in terms:
            raise DataError(f"{where}.objective: a list names several metrics (one objective each), got {objective!r}.")
    else:
        raise DataError(f"{where}.objective must be a metric, a {{metric: weight}} mapping or a list of metrics, got "
                        f"{objective!r}.")
    for term in terms:
        for key in term:
            _check_metric(key, metric_keys, custom_tasks, f"{where}.objective")

    if direction is None:
        directions = ["minimize" if all(lower_is_better(k, task_types) for k in t) else "maximize" for t in terms]
    else:
        directions = [direction] * len(terms) if isinstance(direction, str) else list(direction)
        if len(directions) != len(terms) or any(d not in DIRECTIONS for d in directions):
            raise DataError(f"{where}.direction must be maximize or minimize, or a list of them (one per objective); "
                            f"got {direction!r} for {len(terms)} objective(s).")
    for term, chosen in zip(terms, directions):
        for key, weight in term.items():
            smaller = lower_is_better(key, task_types)
            if len(term) == 1 and smaller and chosen == "maximize":
                raise DataError(f"{where}.direction: {key} is better when smaller, so it needs minimize (or leave "
                                "direction out).")
            if len(term) > 1 and (smaller == (weight > 0)) == (chosen == "maximize"):
                sign = "positive" if smaller == (chosen == "minimize") else "negative"
                raise DataError(f"{where}.objective.{key}: a {'lower' if smaller else 'higher'}-is-better metric in "
                                f"a {chosen}d sum needs a {sign} weight (got {weight:g}).")

    parsed = []
    for text in constraints or []:
        match = CONSTRAINT.match(str(text))
        if not match:
            raise DataError(f"{where}.constraints: {text!r} is not `eval_<metric> >= number` (or <=, >, <).")
        metric, op, bound = match.groups()
        _check_metric(metric, metric_keys, custom_tasks, f"{where}.constraints")
        try:
            parsed.append(Constraint(metric, op, float(bound), str(text).strip()))
        except ValueError:
            raise DataError(f"{where}.constraints: {bound!r} in {text!r} is not a number.") from None
    return Objectives(tuple(terms), tuple(directions), tuple(parsed))


def _weight(value, at: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value == 0:
        raise DataError(f"{at}: a weight must be a non-zero number, got {value!r}.")
    return float(value)


def _check_metric(key: str, metric_keys: set[str], custom_tasks: list[str], at: str) -> None:
    if key.startswith("test_"):
        raise DataError(f"{at}: {key} is a test metric; a search selects on validation metrics (eval_*) only, and "
                        "the test split is scored once, for the best settings.")
    if key in metric_keys or any(key.startswith(f"eval_{name}_") for name in custom_tasks):
        return
    raise DataError(f"{at}: {key!r} is not a metric this run reports; it reports {sorted(metric_keys)}."
                    + suggest(key, sorted(metric_keys)))


__all__ = ["Objectives", "Constraint", "parse_objectives", "DIRECTIONS"]
