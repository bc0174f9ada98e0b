"""A run's data, from its `tasks:` list to tokenized splits: what `train.py`, the search and the benchmarks share.

`prepare_data` reads, splits and checks every task (labels from the whole train split); `tokenize_splits` cuts each
split to its row limit and tokenizes it as the task type does.
"""

from __future__ import annotations

import logging
from typing import Any

import datasets

from mtl_st.data.arguments import TaskDataArguments
from mtl_st.data.splits import check_labels, infer_labels, load_task_splits, take_first, tokenize_task

logger = logging.getLogger(__name__)


def prepare_data(tasks: list[dict], seed: int, is_main: bool = True):
    """Read, check and split every task of a `tasks:` list. Returns (task specs, label lists, raw splits per task)."""
    specs = [TaskDataArguments.from_dict(task) for task in tasks]
    labels, splits = {}, {}
    for spec in specs:
        task_splits = load_task_splits(spec, seed=seed)
        # The whole train split, before truncation (an eval-only task has none: its type has no label names).
        labels[spec.name] = infer_labels(spec, task_splits["train"]) if "train" in task_splits else spec.labels
        check_labels(spec, task_splits, labels[spec.name])
        splits[spec.name] = task_splits
        if is_main:
            sizes = ", ".join(f"{name} {len(ds):,}" for name, ds in task_splits.items())
            label_text = f"{len(labels[spec.name])} labels" if labels[spec.name] is not None else "numeric labels"
            logger.info(f"Task {spec.name!r} ({spec.type}): {sizes}; {label_text}")
    return specs, labels, splits


def tokenize_splits(specs: list[TaskDataArguments], labels: dict, splits: dict, tokenizer: Any, max_length: int,
                    limits: dict[str, int | None] | None = None) -> dict[str, dict[str, datasets.Dataset]]:
    """`{split: {task: tokenized dataset}}` for `train`, `validation` and `test`; `limits[split]` keeps the first N
    rows of each task's split (`None`: all)."""
    limits = {"train": None, "validation": None, "test": None, **(limits or {})}
    tokenized: dict[str, dict[str, datasets.Dataset]] = {split: {} for split in limits}
    for spec in specs:
        label2id = {label: i for i, label in enumerate(labels[spec.name] or [])}
        for split, limit in limits.items():
            if split in splits[spec.name]:
                rows = take_first(splits[spec.name][split], limit)
                tokenized[split][spec.name] = tokenize_task(rows, spec, tokenizer, label2id, max_length, split)
    return tokenized


def model_tasks(specs: list[TaskDataArguments], labels: dict) -> list[dict]:
    """The model config's task entries for the specs and their label lists."""
    return [spec.model_task(labels[spec.name]) for spec in specs]


__all__ = ["prepare_data", "tokenize_splits", "model_tasks"]
