# coding=utf-8
"""Training data of a multi-task run: each task's arguments, splits and labels.

Per task:

1. `TaskDataArguments` (one YAML `tasks:` entry, validated on construction);
2. `load_task_splits` reads the files (`readers_mtl`: CoNLL, JSON / JSON lines, CSV / TSV) or a `datasets`
   dataset and returns a `DatasetDict` with the splits `train`, `validation`, `test` in the task type's normalised
   columns (`task_data_mtl`). A missing validation or test split is carved from train with a fixed seed;
3. `infer_labels` gives the label set (from the whole train split unless the task lists its labels) and
   `check_labels` makes sure the other splits use no label outside of it;
4. `tokenize_task` tokenizes as the task type does.

The tokenized datasets of all tasks are then put side by side in a `MultiTaskDataset`, batched by a
`MultiTaskBatchSampler` and padded by a `MultiTaskCollator` (`sampling_mtl`). This module re-exports those names.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, load_dataset, load_from_disk

from readers_mtl import (
    TAG_SCHEMES,
    DataError,
    convert_iob1_to_bio,
    is_bio_tag,
    read_conll,
    read_csv_rows,
    read_json_rows,
    suggest,
)
from sampling_mtl import SAMPLING_POLICIES, MultiTaskBatchSampler, MultiTaskCollator, MultiTaskDataset
from task_data_mtl import TASK_DATA, get_task_data
from tasks_mtl import TASK_TYPES as _MODEL_TASK_TYPES

logger = logging.getLogger(__name__)

TASK_TYPES = tuple(_MODEL_TASK_TYPES)
if set(TASK_TYPES) != set(TASK_DATA):  # each task type has a model side and a data side
    raise ImportError(f"Task types without both sides: {sorted(set(TASK_TYPES) ^ set(TASK_DATA))}.")
EVAL_ONLY_TYPES = ("sentence_similarity",)  # types that may have no train split (they have no head to train)
SPLITS = ("train", "validation", "test")
FORMATS = ("conll", "jsonl", "json", "csv", "tsv")

_EXTENSION_TO_FORMAT = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".conll": "conll"}


# ----------------------------------------------------------------------------------------------------------------
# Task arguments
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TaskDataArguments:
    """One entry of the training configuration's `tasks:` list.

    Args:
        name: the task's name (also the name of its head and the prefix of its metrics).
        type: one of `TASK_TYPES` (see `tasks_mtl.py` and `task_data_mtl.py`).
        data_files: split name (`train`, `validation`, `test`) -> path of a file. A single string means
            `{"train": path}`. Relative paths are relative to the current working directory.
        dataset_name: a `datasets` dataset, loaded with `datasets.load_dataset(dataset_name,
            dataset_config_name)`, or a directory written by `Dataset(Dict).save_to_disk` (loaded with
            `datasets.load_from_disk`). When `data_files` is given as well it is passed on to `load_dataset`
            (e.g. `dataset_name: csv` with `data_files`).
        dataset_config_name: the dataset's configuration name.
        format: `conll`, `jsonl`, `json`, `csv` or `tsv`. When `None`, inferred per file from its extension:
            `.jsonl`, `.json`, `.csv`, `.tsv`, `.conll`; any other extension (`eng.train`, `.txt`,
            `.annotated`) is read as CoNLL for token tasks and is an error for sequence tasks.
        text_column: the column with the text (default `text`; `sentence1` for sentence_similarity) or the list of
            words (token tasks, default `tokens`). Not used for CoNLL files.
        text_pair_column: the second text of pair_classification (default `text_pair`) and sentence_similarity
            (default `sentence2`) rows.
        label_column: the column with the label (default `label`; `labels` for multi-label, `score` for
            similarity) or the list of tags (default `tags`).
        column_names: the column names of a CSV/TSV file without a header row, in file order (e.g. the STS
            Benchmark's `[sentence1, sentence2, score]`); the first row is then data.
        metric: an `evaluate` module (local path, or Hub id where the network is reachable) that replaces the
            task's built-in metrics.
        threshold: multi_label_classification: the probability from which a label is predicted (default 0.5).
        labels: the label set, in the order of the head's outputs. Inferred from the whole train split when
            `None`. When given, integer labels in the data (JSON numbers, `datasets` integer columns) are
            read as indices into this list, unless every label is an integer (`[1, 2, 3]`): then they are the
            labels' names; without `labels` they become strings ("0", "1", ...).
        tag_scheme: `bio` or `iob1` (token tasks); `iob1` tags are converted to BIO on load.
        label_all_tokens: token tasks: label every sub-token of a word (with the `I-` version of a `B-`
            label) instead of only the first one.
        validation_split_fraction: fraction of train carved out as validation when the task has no
            validation split (0 leaves the task without one).
        test_split_fraction: the same for the test split.
        stride: token tasks: rows longer than `max_seq_length` are cut into overlapping windows that share this
            many tokens (default 32, at most half a window), for training, evaluation and prediction; each word is
            scored in the window where it has the most context. A task field, like `label_all_tokens`, because only
            token tasks use it (sequence tasks truncate, with a warning counting the rows cut).
        on_empty_split: what an empty validation or test split (a file with no rows) does: `error` (default) stops
            the run naming the file; `carve` carves that split from train as if it were missing.
    """

    name: str
    type: str
    data_files: dict[str, str] | None = None
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    format: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    column_names: list[str] | None = None
    metric: str | None = None
    threshold: float | None = None
    labels: list[str] | None = None
    tag_scheme: str = "bio"
    label_all_tokens: bool = False
    validation_split_fraction: float = 0.1
    test_split_fraction: float = 0.1
    on_empty_split: str = "error"
    stride: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise DataError(f"Every task needs a non-empty string `name`, got {self.name!r}.")
        where = f"task {self.name!r}"
        if self.type not in TASK_TYPES:
            raise DataError(
                f"{where}: unknown `type` {self.type!r}; valid types are {list(TASK_TYPES)}."
                + suggest(str(self.type), TASK_TYPES)
            )
        data = get_task_data(self.type)
        if self.data_files is None and self.dataset_name is None:
            raise DataError(f"{where}: give `data_files` (split -> path) or `dataset_name`.")
        if isinstance(self.data_files, str):
            self.data_files = {"train": self.data_files}
        if self.data_files is not None:
            if not isinstance(self.data_files, dict) or not self.data_files:
                raise DataError(f"{where}: `data_files` must map split names to paths, got {self.data_files!r}.")
            for split, path in self.data_files.items():
                if split not in SPLITS:
                    raise DataError(
                        f"{where}: unknown split {split!r} in `data_files`; valid splits are {list(SPLITS)}."
                        + suggest(str(split), SPLITS)
                    )
                if not isinstance(path, (str, os.PathLike)):
                    raise DataError(f"{where}: `data_files.{split}` must be a path, got {path!r}.")
            self.data_files = {split: os.fspath(path) for split, path in self.data_files.items()}
        if self.format is not None and self.format not in FORMATS:
            raise DataError(
                f"{where}: unknown `format` {self.format!r}; valid formats are {list(FORMATS)}."
                + suggest(str(self.format), FORMATS)
            )
        if not data.reads_conll and self.format == "conll":
            raise DataError(f"{where}: `format: conll` is for token_classification tasks only.")
        if data.reads_conll and self.format in ("csv", "tsv"):
            raise DataError(
                f"{where}: token_classification data cannot be read from {self.format}; use conll, json or jsonl."
            )
        if self.column_names is not None and (
            not isinstance(self.column_names, (list, tuple)) or not all(isinstance(c, str) for c in self.column_names)
        ):
            raise DataError(f"{where}: `column_names` must be a list of column names, got {self.column_names!r}.")
        if self.text_pair_column is not None and "text_pair" not in data.roles:
            raise DataError(f"{where}: `text_pair_column` applies to pair_classification and sentence_similarity.")
        if self.threshold is not None and self.type != "multi_label_classification":
            raise DataError(f"{where}: `threshold` applies to multi_label_classification tasks only.")
        if self.threshold is not None and (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, (int, float))
            or not 0 < self.threshold < 1
        ):
            raise DataError(f"{where}: `threshold` must be a number in (0, 1), got {self.threshold!r}.")
        if self.labels is not None and not data.has_label_names:
            raise DataError(f"{where}: a {self.type} task takes no `labels` (its labels are numbers).")
        if self.tag_scheme not in TAG_SCHEMES:
            raise DataError(
                f"{where}: unknown `tag_scheme` {self.tag_scheme!r}; valid schemes are {list(TAG_SCHEMES)}."
            )
        if self.tag_scheme != "bio" and not data.reads_conll:
            raise DataError(f"{where}: `tag_scheme` only applies to token_classification tasks.")
        if self.labels is not None:
            if isinstance(self.labels, str) or not isinstance(self.labels, (list, tuple)) or not self.labels:
                raise DataError(f"{where}: `labels` must be a non-empty list, got {self.labels!r}.")
            self.labels = [str(label) for label in self.labels]
            duplicates = sorted({label for label in self.labels if self.labels.count(label) > 1})
            if duplicates:
                raise DataError(f"{where}: `labels` lists {duplicates} more than once.")
            if data.reads_conll:
                for label in self.labels:
                    if not is_bio_tag(label):
                        raise DataError(
                            f"{where}: label {label!r} in `labels` is not a BIO tag (O, B-TYPE or I-TYPE)."
                        )
        for field_name in ("validation_split_fraction", "test_split_fraction"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise DataError(f"{where}: `{field_name}` must be a number in [0, 1), got {value!r}.")
            setattr(self, field_name, float(value))
        if self.stride is not None and not data.reads_conll:
            raise DataError(f"{where}: `stride` applies to token_classification tasks only.")
        if self.stride is not None and (isinstance(self.stride, bool) or not isinstance(self.stride, int)
                                        or self.stride < 0):
            raise DataError(f"{where}: `stride` must be a whole number of tokens >= 0, got {self.stride!r}.")
        if self.on_empty_split not in ("error", "carve"):
            raise DataError(f"{where}: `on_empty_split` must be 'error' or 'carve', got {self.on_empty_split!r}.")
        if self.validation_split_fraction + self.test_split_fraction >= 1.0:
            raise DataError(
                f"{where}: `validation_split_fraction` + `test_split_fraction` must be below 1, got "
                f"{self.validation_split_fraction} + {self.test_split_fraction}."
            )

    def column_for(self, role: str, default: str) -> str:
        """The source column of a normalised column (`text`, `text_pair`, `label`), or its type's default."""
        given = {"text": self.text_column, "text_pair": self.text_pair_column, "label": self.label_column}[role]
        return given or default

    @property
    def data(self):
        """This task's type, data side (`task_data_mtl.TaskData`)."""
        return get_task_data(self.type)

    def model_task(self, labels: list[str] | None) -> dict:
        """The task's entry in the model config (`MultiTaskConfig.tasks`)."""
        entry = {"name": self.name, "type": self.type}
        if labels is not None:
            entry["labels"] = list(labels)
        if self.threshold is not None:
            entry["threshold"] = float(self.threshold)
        return entry

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskDataArguments":
        """Builds the arguments from one `tasks:` entry; unknown keys raise a `DataError` with suggestions."""
        if not isinstance(d, dict):
            raise DataError(f"Each entry of `tasks` must be a mapping, got {type(d).__name__}: {d!r}.")
        name = d.get("name", "<unnamed>")
        known = [f.name for f in fields(cls)]
        for key in d:
            if key not in known:
                raise DataError(
                    f"task {name!r}: unknown key {key!r}." + suggest(str(key), known) + f" Valid keys: {known}."
                )
        for required in ("name", "type"):
            if required not in d:
                raise DataError(f"task {name!r}: missing required key {required!r}.")
        return cls(**d)


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------


def _infer_format(task: TaskDataArguments, path: str) -> str:
    if task.format is not None:
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


def read_task_file(task: TaskDataArguments, path: str | os.PathLike) -> Dataset:
    """Reads one data file of `task` into a `Dataset` with the task type's normalised columns."""
    path = os.fspath(path)
    fmt = _infer_format(task, path)
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
        return DatasetDict({split: read_task_file(task, path) for split, path in task.data_files.items()})
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
        if task.type in EVAL_ONLY_TYPES and any(split in splits for split in ("validation", "test")):
            return DatasetDict({split: splits[split] for split in SPLITS if split in splits})  # an eval-only monitor
        raise DataError(
            f"task {task.name!r}: no train split; every task needs training data (`data_files.train`)"
            + (", except sentence_similarity tasks, which may be evaluated only." if task.type not in EVAL_ONLY_TYPES
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
    dataset: Dataset, task: TaskDataArguments, tokenizer: Any, label2id: dict[str, int], max_length: int
) -> Dataset:
    """Tokenizes one normalised split of `task` as its type does, truncating to `max_length`, without padding.

    Returns `input_ids`, `attention_mask`, `token_type_ids` (when the tokenizer makes them) and `labels` (see
    `task_data_mtl` for each type's label ids); sentence_similarity adds the second sentence's `pair_*` columns.
    Token tasks need a fast tokenizer (for `word_ids()`). Byte-level BPE tokenizers (RoBERTa, GPT-2, BART,
    Longformer) only accept pre-split words when loaded with `add_prefix_space=True`; that is the caller's job.
    """
    return task.data.tokenize(dataset, task, tokenizer, label2id, max_length)


__all__ = [
    "TaskDataArguments", "DataError", "TASK_TYPES", "SPLITS", "FORMATS", "TAG_SCHEMES", "SAMPLING_POLICIES",
    "load_task_dataset", "load_task_splits", "read_task_file", "read_conll", "convert_iob1_to_bio",
    "infer_labels", "check_labels", "take_first", "tokenize_task", "MultiTaskDataset", "MultiTaskCollator",
    "MultiTaskBatchSampler",
]
