"""The `hyperparameter_search:` block of a training YAML, checked before any training.

    hyperparameter_search:
      n_trials: 16                 # trials that finish (complete or pruned); a grid defaults to its size
      timeout: null                # seconds, per worker
      sampler: tpe                 # tpe | random | grid
      seed: 0
      objective: eval_ner_f1       # see mtl_st.search.objectives
      direction: maximize
      constraints: []
      pruner: none                 # none | median | successive_halving
      storage: null                # default: sqlite in output_dir; or a URL (postgresql://user@host:port/db)
      study_name: null             # default: output_dir's folder name
      space: {...}                 # see mtl_st.search.space
      grid: {...}
      n_startup_trials: null       # TPE's random start (default: a third of n_trials, at most 10)
      keep_trial_weights: false    # keep every trial's model weights (default: only metrics and configs stay)
      include_current: false       # run the config's own values of the searched fields first (a baseline trial)
      train_best: true             # train the best settings into output_dir/best/ and score them on the test split

On the command line, `--hyperparameter_search '{...}'` (JSON) replaces the block and
`--hyperparameter_search.<key> value` (a YAML value) sets one key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mtl_st.errors import DataError, suggest
from mtl_st.search.space import Distribution, grid_points, parse_grid, parse_space

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median", "successive_halving")
KEYS = ("n_trials", "timeout", "sampler", "seed", "objective", "direction", "constraints", "pruner", "storage",
        "study_name", "space", "grid", "n_startup_trials", "keep_trial_weights", "include_current",
        "train_best")
WHERE = "hyperparameter_search"


@dataclass
class SearchConfig:
    """The parsed block (the checks that need the run's fields, tasks and metrics are `runner.check_search`'s)."""

    n_trials: int
    timeout: float | None
    sampler: str
    seed: int
    objective: Any
    direction: Any
    constraints: list[str]
    pruner: str
    storage: str | None
    study_name: str | None
    space: dict[str, Distribution]
    grid: dict[str, list]
    n_startup_trials: int
    keep_trial_weights: bool
    include_current: bool = False
    train_best: bool = True
    raw: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, block: Any) -> SearchConfig:
        if not isinstance(block, dict):
            raise DataError(f"{WHERE} must be a mapping of search settings, got {type(block).__name__}.")
        for key in block:
            if key not in KEYS:
                raise DataError(f"{WHERE}: unknown key {key!r}." + suggest(str(key), KEYS) + f" Valid keys: {list(KEYS)}.")
        space, grid = parse_space(block.get("space")), parse_grid(block.get("grid"))
        sampler = block.get("sampler") or ("grid" if grid else "tpe")
        if sampler not in SAMPLERS:
            raise DataError(f"{WHERE}.sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}.")
        if sampler == "grid" and (not grid or space):
            raise DataError(f"{WHERE}: sampler grid runs the combinations of `grid` (field: [values]); "
                            + ("it has no grid." if not grid else "give its fields in `grid`, not `space`."))
        if sampler != "grid" and grid:
            raise DataError(f"{WHERE}.grid needs sampler: grid (the {sampler} sampler draws from `space`).")
        if sampler != "grid" and not space:
            raise DataError(f"{WHERE}.space is empty: name at least one field to search.")
        n_trials = block.get("n_trials", len(grid_points(grid)) if grid else 16)
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise DataError(f"{WHERE}.n_trials must be a whole number >= 1, got {n_trials!r}.")
        if grid and n_trials > len(grid_points(grid)):
            raise DataError(f"{WHERE}.n_trials is {n_trials}, but the grid has only {len(grid_points(grid))} "
                            "combinations (each runs once).")
        timeout = block.get("timeout")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not math.isfinite(timeout) or timeout <= 0):
            raise DataError(f"{WHERE}.timeout must be a number of seconds > 0, got {timeout!r}.")
        pruner = str(block.get("pruner") or "none")
        if pruner not in PRUNERS:
            raise DataError(f"{WHERE}.pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}."
                            + suggest(pruner, PRUNERS))
        seed = block.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise DataError(f"{WHERE}.seed must be a whole number, got {seed!r}.")
        startup = block.get("n_startup_trials")
        if startup is None:
            startup = max(1, min(10, n_trials // 3))
        elif isinstance(startup, bool) or not isinstance(startup, int) or startup < 0:
            raise DataError(f"{WHERE}.n_startup_trials must be a whole number >= 0, got {startup!r}.")
        constraints = block.get("constraints") or []
        if isinstance(constraints, str):
            constraints = [constraints]
        if not isinstance(constraints, list):
            raise DataError(f"{WHERE}.constraints must be a list like [\"eval_x >= 0.85\"], got {constraints!r}.")
        for key in ("storage", "study_name"):
            if block.get(key) is not None and not isinstance(block[key], str):
                raise DataError(f"{WHERE}.{key} must be a string, got {block[key]!r}.")
        return cls(n_trials=n_trials, timeout=float(timeout) if timeout is not None else None, sampler=sampler,
                   seed=seed, objective=block.get("objective"), direction=block.get("direction"),
                   constraints=[str(c) for c in constraints], pruner=pruner, storage=block.get("storage"),
                   study_name=block.get("study_name"), space=space, grid=grid, n_startup_trials=startup,
                   keep_trial_weights=bool(block.get("keep_trial_weights", False)),
                   include_current=bool(block.get("include_current", False)),
                   train_best=bool(block.get("train_best", True)), raw=dict(block))

    @property
    def fields(self) -> dict[str, list]:
        """Every searched field with the values that stand for it (the grid's lists, the space's edges)."""
        if self.grid:
            return dict(self.grid)
        return {name: distribution.edges() for name, distribution in self.space.items()}


def merge_overrides(block: Any, overrides: dict[str, Any]) -> dict:
    """The YAML block with `--hyperparameter_search.<key> value` overrides applied (one key each)."""
    merged = dict(block or {})
    for key, value in overrides.items():
        if key not in KEYS:
            raise DataError(f"--{WHERE}.{key}: unknown key." + suggest(key, KEYS) + f" Valid keys: {list(KEYS)}.")
        merged[key] = value
    return merged


__all__ = ["SearchConfig", "merge_overrides", "SAMPLERS", "PRUNERS", "KEYS"]
