"""Reading a task's data: its files (or `datasets` dataset) into splits, labels, checks and tokenisation.

Per task (a `TaskDataArguments`, `mtl_st.data.arguments`):

1. `load_task_splits` reads the files (`mtl_st.data.readers`: CoNLL, JSON / JSON lines, CSV / TSV) or a `datasets`
   dataset and returns a `DatasetDict` with the splits `train`, `validation`, `test` in the task type's normalised
   columns (`mtl_st.data.task_data`). A missing validation or test split is carved from train with a fixed seed;
2. `infer_labels` gives the label set (from the whole train split unless the task lists its labels) and
   `check_labels` makes sure the other splits use no label outside of it;
3. `tokenize_task` tokenizes as the task type does.

The tokenized datasets of all tasks are then put side by side in a `MultiTaskDataset`, batched by a
`MultiTaskBatchSampler` and padded by a `MultiTaskCollator` (`mtl_st.data.sampling`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, load_dataset, load_from_disk

from mtl_st.data.arguments import FORMATS, SPLITS, TaskDataArguments
from mtl_st.data.readers import convert_iob1_to_bio, read_conll, read_csv_rows, read_json_rows
from mtl_st.errors import DataError, suggest
from tasks_mtl import get_task_type

logger = logging.getLogger(__name__)

_EXTENSION_TO_FORMAT = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".conll": "conll"}


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------


def _infer_format(task: TaskDataArguments, path: str) -> str:
    """The task's `format`, else the file's extension. A retrieval task's folder holding `corpus.jsonl` is a BEIR
    folder whatever `format` says, and `format: beir` names only such folders, so one task may train on a JSONL
    file and evaluate on a BEIR folder."""
    if hasattr(task.data, "read_beir") and os.path.isfile(os.path.join(path, "corpus.jsonl")):
        return "beir"
    if task.format is not None and not (task.format == "beir" and os.path.isfile(path)):
        return task.format
    fmt = _EXTENSION_TO_FORMAT.get(os.path.splitext(path)[1].lower())
    if fmt is None and task.data.reads_conll:
        fmt = "conll"
    if fmt is None or (fmt == "conll" and not task.data.reads_conll):
        raise DataError(
            f"task {task.name!r}: cannot infer the format of {path!r} for a {task.type} task; "
            f"set `format` to one of {[f for f in FORMATS if f != 'conll']}."
        )
    if task.data.reads_conll and fmt in ("csv", "tsv"):
        raise DataError(
            f"task {task.name!r}: {path!r}: token_classification data cannot be read from {fmt}; "
            "use conll, json or jsonl."
        )
    return fmt


def _to_bio(task: TaskDataArguments, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if task.tag_scheme == "iob1":
        for row in rows:
            row["tags"] = convert_iob1_to_bio(row["tags"])
    return rows


def read_task_file(task: TaskDataArguments, path: str | os.PathLike, split: str = "train") -> Dataset:
    """Reads one data file (a BEIR folder: that split of it) of `task` into a `Dataset` with the task type's
    normalised columns."""
    path = os.fspath(path)
    fmt = _infer_format(task, path)
    if fmt == "beir":
        return task.data.read_beir(task, path, split)
    if fmt == "conll":
        return task.data.rows_to_dataset(task, read_conll(path, tag_scheme=task.tag_scheme))
    if fmt in ("json", "jsonl"):
        raw_rows = read_json_rows(path, fmt)
    else:
        raw_rows = read_csv_rows(path, fmt, task.column_names)
    rows = [task.data.normalise_row(task, row, where) for where, row in raw_rows]
    return task.data.rows_to_dataset(task, _to_bio(task, rows))


def _is_saved_dataset_dir(path: str) -> bool:
    return os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, "dataset_dict.json")) or os.path.isfile(os.path.join(path, "state.json"))
    )


def _class_label_names(feature: Any) -> list[str] | None:
    """The names of a `ClassLabel` feature, or of the `ClassLabel` inside a list feature."""
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    inner = getattr(feature, "feature", None)
    if isinstance(inner, ClassLabel):
        return list(inner.names)
    return None


def _normalise_loaded_split(task: TaskDataArguments, dataset: Dataset, source: str) -> Dataset:
    """Maps one split of a `datasets` dataset to the normalised columns; `ClassLabel` ids become names."""
    data = task.data
    for role, default in data.roles.items():
        column = task.column_for(role, default)
        if column not in dataset.column_names:
            raise DataError(
                f"task {task.name!r}: column {column!r} not found in {source}; columns present: "
                f"{dataset.column_names}. Set `{role}_column` to the right column."
                + suggest(column, dataset.column_names)
            )
    label_column = task.column_for("label", data.roles["label"])
    names = _class_label_names(dataset.features[label_column]) if label_column in dataset.column_names else None
    # ClassLabel ids are mapped with the dataset's own names; `task.labels` then only fixes the label order.
    row_task = dataclasses.replace(task, labels=names) if names is not None else task
    if names is not None and all(name.lstrip("-").isdigit() for name in names):
        dataset = _class_label_names_as_strings(dataset, label_column, names)  # ids, not names, once read
    rows = [data.normalise_row(row_task, row, f"{source}, row {i}") for i, row in enumerate(dataset)]
    return data.rows_to_dataset(task, _to_bio(task, rows))


def _class_label_names_as_strings(dataset: Dataset, column: str, names: list[str]) -> Dataset:
    """`ClassLabel` ids of `column` replaced by their names (for integer names, which would read as names)."""
    def to_names(value: Any) -> Any:
        return [to_names(item) for item in value] if isinstance(value, list) else names[value]

    return Dataset.from_dict({**dataset.to_dict(), column: [to_names(value) for value in dataset[column]]})


def load_task_dataset(task: TaskDataArguments) -> DatasetDict:
    """Reads every split of `task` as it is stored (no carving), with normalised columns."""
    if task.dataset_name is None:
        return DatasetDict({split: read_task_file(task, path, split) for split, path in task.data_files.items()})
    if _is_saved_dataset_dir(task.dataset_name):
        loaded = load_from_disk(task.dataset_name)
    else:
        try:
            loaded = load_dataset(task.dataset_name, task.dataset_config_name, data_files=task.data_files)
        except Exception as e:  # noqa: BLE001 - re-raised with the task's name
            raise DataError(
                f"task {task.name!r}: could not load dataset {task.dataset_name!r}"
                f"{f' (config {task.dataset_config_name!r})' if task.dataset_config_name else ''}: {e}"
            ) from e
    if isinstance(loaded, Dataset):
        loaded = DatasetDict({"train": loaded})
    ignored = [split for split in loaded if split not in SPLITS]
    if ignored:
        logger.warning("Task %r: ignoring split(s) %s of dataset %r.", task.name, ignored, task.dataset_name)
    return DatasetDict(
        {
            split: _normalise_loaded_split(task, loaded[split], f"split {split!r} of dataset {task.dataset_name!r}")
            for split in SPLITS
            if split in loaded
        }
    )


# ----------------------------------------------------------------------------------------------------------------
# Splits and labels
# ----------------------------------------------------------------------------------------------------------------


def _carve_size(n: int, fraction: float) -> int:
    return 0 if fraction == 0 else max(1, round(n * fraction))


def load_task_splits(task: TaskDataArguments, seed: int = 42) -> DatasetDict:
    """Loads `task` as a `DatasetDict` with splits `train`, `validation`, `test` and normalised columns.

    Columns are the task type's normalised ones (`task_data_mtl`). A train split is required, except for a
    `sentence_similarity` task with a validation or test split: an eval-only monitor of the embeddings. A missing
    validation or test split is carved out of train: a random
    (given `seed`) `validation_split_fraction` / `test_split_fraction` of the train rows, at least one row each,
    kept in file order; the rows left form the new train split. A fraction of 0 leaves that split out.

    Raises:
        DataError: no train split, or no rows in it, or too few rows to carve from.
    """
    splits = load_task_dataset(task)
    if "train" not in splits:
        eval_only = not get_task_type(task.type).has_head  # scored on the embeddings: nothing of its own to train
        if eval_only and any(split in splits for split in ("validation", "test")):
            return DatasetDict({split: splits[split] for split in SPLITS if split in splits})  # an eval-only monitor
        raise DataError(
            f"task {task.name!r}: no train split; every task needs training data (`data_files.train`)"
            + (", except tasks without a head (sentence_similarity), which may be evaluated only." if not eval_only
               else ", or a validation or test split to be evaluated only.")
        )
    train = splits["train"]
    if len(train) == 0:
        raise DataError(f"task {task.name!r}: the train split has no rows.")
    _drop_empty_eval_splits(task, splits)
    to_carve = {
        split: _carve_size(len(train), fraction)
        for split, fraction in (("validation", task.validation_split_fraction), ("test", task.test_split_fraction))
        if split not in splits and fraction > 0
    }
    if to_carve:
        n = len(train)
        if sum(to_carve.values()) >= n:
            raise DataError(
                f"task {task.name!r}: cannot carve {to_carve} rows out of a train split of {n} rows; "
                "add validation/test files or more training data."
            )
        permutation = np.random.default_rng(seed).permutation(n)
        start = 0
        carved: dict[str, np.ndarray] = {}
        for split, size in to_carve.items():
            carved[split] = np.sort(permutation[start : start + size])
            start += size
        for split, indices in carved.items():
            splits[split] = train.select(indices)
        splits["train"] = train.select(np.sort(permutation[start:]))
        logger.info(
            "Task %r: carved %s from its %d train rows (seed %d); %d train rows remain.",
            task.name,
            ", ".join(f"{len(indices)} {split} rows" for split, indices in carved.items()),
            n,
            seed,
            len(splits["train"]),
        )
    return DatasetDict({split: splits[split] for split in SPLITS if split in splits})


def _drop_empty_eval_splits(task: TaskDataArguments, splits: DatasetDict) -> None:
    """An empty validation/test split would silently drop the task from evaluation: refuse it, or (with
    `on_empty_split: carve`) remove it so that it is carved from train like a missing split."""
    for split in ("validation", "test"):
        if split in splits and len(splits[split]) == 0:
            source = (task.data_files or {}).get(split) or f"split {split!r} of dataset {task.dataset_name!r}"
            fraction = getattr(task, f"{split}_split_fraction")
            if task.on_empty_split == "carve" and fraction > 0:
                logger.warning("Task %r: the %s split (%s) has no rows; carving one from train.", task.name, split,
                               source)
                del splits[split]
                continue
            raise DataError(
                f"task {task.name!r}: the {split} split ({source}) has no rows, so the task would not be evaluated. "
                f"Add rows, remove it from `data_files`, or set `on_empty_split: carve` (with "
                f"`{split}_split_fraction` > 0) to carve it from train."
            )


def infer_labels(task: TaskDataArguments, train_split: Dataset) -> list[str] | None:
    """The label set of `task`: `task.labels` when given, else every label of the WHOLE `train_split` (`None` for
    types whose labels are numbers). Call it before any `max_train_samples` truncation. Order: names sorted
    (numerically when they are all integers); token tasks put `O` first, then `B-TYPE`, `I-TYPE` per type seen."""
    if not task.data.has_label_names:
        return None
    if task.labels is not None:
        return list(task.labels)
    return task.data.infer_labels(task, train_split)


def check_labels(task: TaskDataArguments, splits: DatasetDict, labels: Sequence[str] | None) -> None:
    """Raises a `DataError` naming the label, split and task when a split uses a label outside `labels`.

    Validation and test are always checked; train too when the task lists its labels (inferred labels cover
    train by construction).
    """
    if labels is None:
        return
    label_set = set(labels)
    for split in SPLITS:
        if split not in splits or (split == "train" and task.labels is None):
            continue
        for i, row_labels in enumerate(task.data.split_labels(splits[split])):
            for label in row_labels:
                if label not in label_set:
                    source = "the task's `labels`" if task.labels is not None else "the train split"
                    raise DataError(
                        f"task {task.name!r}: label {label!r} in row {i} of the {split} split is not in the "
                        f"label set from {source}: {list(labels)}."
                    )


def take_first(dataset: Dataset, n: int | None) -> Dataset:
    """The first `n` rows of `dataset` (all of them when `n` is None or not smaller than its length)."""
    if n is None or n >= len(dataset):
        return dataset
    if n < 0:
        raise ValueError(f"The number of rows to keep must be >= 0, got {n}.")
    return dataset.select(range(n))


# ----------------------------------------------------------------------------------------------------------------
# Tokenisation
# ----------------------------------------------------------------------------------------------------------------


def tokenize_task(
    dataset: Dataset, task: TaskDataArguments, tokenizer: Any, label2id: dict[str, int], max_length: int,
    split: str = "train",
) -> Dataset:
    """Tokenizes one normalised split of `task` as its type does, truncating to `max_length`, without padding.

    Returns `input_ids`, `attention_mask`, `token_type_ids` (when the tokenizer makes them) and `labels` (see
    `task_data_mtl` for each type's label ids); sentence_similarity adds the second sentence's `pair_*` columns.
    Token tasks need a fast tokenizer (for `word_ids()`). Byte-level BPE tokenizers (RoBERTa, GPT-2, BART,
    Longformer) only accept pre-split words when loaded with `add_prefix_space=True`; that is the caller's job.
    """
    return task.data.tokenize(dataset, task, tokenizer, label2id, max_length, split=split)


__all__ = ["load_task_dataset", "load_task_splits", "read_task_file", "infer_labels", "check_labels", "take_first",
           "tokenize_task"]
