# coding=utf-8
"""Data loading, tokenisation, collation and batch sampling for multi-task training.

This module turns the `tasks:` entries of a training configuration into tokenized `datasets.Dataset`
objects and feeds them to the trainer in task-homogeneous batches.

Pipeline, per task:

1. `TaskDataArguments` (one YAML `tasks:` entry, validated on construction);
2. `load_task_splits` reads the files (`read_conll`, JSON / JSON lines, CSV / TSV) or a `datasets` dataset
   and returns a `DatasetDict` with the splits `train`, `validation`, `test` and normalised columns:
   `text` + `label` for sequence classification, `tokens` + `tags` for token classification. A missing
   validation or test split is carved from train with a fixed seed;
3. `infer_labels` gives the label set (from the whole train split unless the task lists its labels) and
   `check_labels` makes sure the other splits use no label outside of it;
4. `tokenize_task` tokenizes and aligns the labels to sub-tokens (first sub-token of a word carries the label).

The tokenized datasets of all tasks are then put side by side in a `MultiTaskDataset`, batched by a
`MultiTaskBatchSampler` and padded by a `MultiTaskCollator`.

Sampling policies (`MultiTaskBatchSampler`). Every batch holds examples of a single task. An epoch has as many
batches as it takes to see every example of every task once (`sum(ceil(size / batch_size))`):

- `proportional`: each task's examples are shuffled and cut into batches, and the batches of all tasks are
  shuffled together. Every example is seen exactly once per epoch, and the task mix follows the number of
  batches of each task.
- `temperature`: at every step a task is drawn with probability proportional to `size ** (1 / temperature)`
  (temperature 1 is proportional, larger temperatures flatten the mix towards uniform). Within a task,
  batches come from a shuffled permutation that is reshuffled and restarted when it runs out, so small tasks
  are cycled and large tasks sub-sampled.
- `round_robin`: the tasks take turns, one batch each, cycling (with a reshuffle) through tasks that run out.

The sequence of batches depends only on `seed` and the epoch (`set_epoch`), never on the process, so every
rank of a distributed run sees the same sequence of tasks. The trainer prepares its data loaders with
accelerate's `split_batches=True`: each global batch is sliced across the ranks, so in any step every rank
trains the same task. Use `full_batches=True` there: accelerate then never meets a short batch (which it
would pad with indices of the first batches, possibly of another task, or skip).
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import difflib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value, load_dataset, load_from_disk


logger = logging.getLogger(__name__)

TASK_TYPES = ("sequence_classification", "token_classification")
SPLITS = ("train", "validation", "test")
FORMATS = ("conll", "jsonl", "json", "csv", "tsv")
TAG_SCHEMES = ("bio", "iob1")
SAMPLING_POLICIES = ("proportional", "temperature", "round_robin")

_EXTENSION_TO_FORMAT = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".conll": "conll"}
_DEFAULT_COLUMNS = {
    "sequence_classification": ("text", "label"),
    "token_classification": ("tokens", "tags"),
}
_SEQUENCE_FEATURES = Features({"text": Value("string"), "label": Value("string")})
_TOKEN_FEATURES = Features({"tokens": List(Value("string")), "tags": List(Value("string"))})


class DataError(ValueError):
    """Bad training data or data config; the message names the task, file, line, column or label at fault."""


def _suggest(word: str, candidates: Sequence[str]) -> str:
    """Returns ` Did you mean 'x'?` (or an empty string) for a misspelt `word`."""
    matches = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"


# ----------------------------------------------------------------------------------------------------------------
# Task arguments
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TaskDataArguments:
    """One entry of the training configuration's `tasks:` list.

    Args:
        name: the task's name (also the name of its head and the prefix of its metrics).
        type: one of `TASK_TYPES`.
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
        text_column: the column with the text (sequence tasks, default `text`) or the list of words (token
            tasks, default `tokens`). Not used for CoNLL files.
        label_column: the column with the label (default `label`) or the list of tags (default `tags`).
        labels: the label set, in the order of the head's outputs. Inferred from the whole train split when
            `None`. When given, integer labels in the data (JSON numbers, `datasets` integer columns) are
            read as indices into this list; without it they become strings ("0", "1", ...).
        tag_scheme: `bio` or `iob1` (token tasks); `iob1` tags are converted to BIO on load.
        label_all_tokens: token tasks: label every sub-token of a word (with the `I-` version of a `B-`
            label) instead of only the first one.
        validation_split_fraction: fraction of train carved out as validation when the task has no
            validation split (0 leaves the task without one).
        test_split_fraction: the same for the test split.
    """

    name: str
    type: str
    data_files: dict[str, str] | None = None
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    format: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    labels: list[str] | None = None
    tag_scheme: str = "bio"
    label_all_tokens: bool = False
    validation_split_fraction: float = 0.1
    test_split_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise DataError(f"Every task needs a non-empty string `name`, got {self.name!r}.")
        where = f"task {self.name!r}"
        if self.type not in TASK_TYPES:
            raise DataError(
                f"{where}: unknown `type` {self.type!r}; valid types are {list(TASK_TYPES)}."
                + _suggest(str(self.type), TASK_TYPES)
            )
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
                        + _suggest(str(split), SPLITS)
                    )
                if not isinstance(path, (str, os.PathLike)):
                    raise DataError(f"{where}: `data_files.{split}` must be a path, got {path!r}.")
            self.data_files = {split: os.fspath(path) for split, path in self.data_files.items()}
        if self.format is not None and self.format not in FORMATS:
            raise DataError(
                f"{where}: unknown `format` {self.format!r}; valid formats are {list(FORMATS)}."
                + _suggest(str(self.format), FORMATS)
            )
        if self.type == "sequence_classification" and self.format == "conll":
            raise DataError(f"{where}: `format: conll` is for token_classification tasks only.")
        if self.type == "token_classification" and self.format in ("csv", "tsv"):
            raise DataError(
                f"{where}: token_classification data cannot be read from {self.format}; use conll, json or jsonl."
            )
        if self.tag_scheme not in TAG_SCHEMES:
            raise DataError(
                f"{where}: unknown `tag_scheme` {self.tag_scheme!r}; valid schemes are {list(TAG_SCHEMES)}."
            )
        if self.tag_scheme != "bio" and self.type != "token_classification":
            raise DataError(f"{where}: `tag_scheme` only applies to token_classification tasks.")
        if self.labels is not None:
            if isinstance(self.labels, str) or not isinstance(self.labels, (list, tuple)) or not self.labels:
                raise DataError(f"{where}: `labels` must be a non-empty list, got {self.labels!r}.")
            self.labels = [str(label) for label in self.labels]
            duplicates = sorted({label for label in self.labels if self.labels.count(label) > 1})
            if duplicates:
                raise DataError(f"{where}: `labels` lists {duplicates} more than once.")
            if self.type == "token_classification":
                for label in self.labels:
                    if not _is_bio_tag(label):
                        raise DataError(
                            f"{where}: label {label!r} in `labels` is not a BIO tag (O, B-TYPE or I-TYPE)."
                        )
        for field_name in ("validation_split_fraction", "test_split_fraction"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise DataError(f"{where}: `{field_name}` must be a number in [0, 1), got {value!r}.")
            setattr(self, field_name, float(value))
        if self.validation_split_fraction + self.test_split_fraction >= 1.0:
            raise DataError(
                f"{where}: `validation_split_fraction` + `test_split_fraction` must be below 1, got "
                f"{self.validation_split_fraction} + {self.test_split_fraction}."
            )

    @property
    def text_column_name(self) -> str:
        """The text (or word list) column, with its default filled in."""
        return self.text_column or _DEFAULT_COLUMNS[self.type][0]

    @property
    def label_column_name(self) -> str:
        """The label (or tag list) column, with its default filled in."""
        return self.label_column or _DEFAULT_COLUMNS[self.type][1]

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
                    f"task {name!r}: unknown key {key!r}." + _suggest(str(key), known) + f" Valid keys: {known}."
                )
        for required in ("name", "type"):
            if required not in d:
                raise DataError(f"task {name!r}: missing required key {required!r}.")
        return cls(**d)


# ----------------------------------------------------------------------------------------------------------------
# Readers
# ----------------------------------------------------------------------------------------------------------------


def _is_bio_tag(tag: str) -> bool:
    """`O`, or `B-TYPE` / `I-TYPE` with a non-empty type."""
    return tag == "O" or (len(tag) > 2 and tag[:2] in ("B-", "I-"))


def convert_iob1_to_bio(tags: Sequence[str]) -> list[str]:
    """Converts one sentence's IOB1 tags to BIO (IOB2).

    An `I-X` becomes `B-X` when it starts the sentence or follows `O` or a tag of another type; `B-X` (used by
    IOB1 only between two adjacent entities of the same type) and `O` stay as they are.
    """
    bio = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-"):
            previous = tags[i - 1] if i > 0 else "O"
            if previous == "O" or previous[2:] != tag[2:]:
                tag = "B-" + tag[2:]
        bio.append(tag)
    return bio


def _check_file(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"Data file not found: {path!r}.")
    return path


def read_conll(path: str | os.PathLike, tag_scheme: str = "bio") -> list[dict[str, list[str]]]:
    """Reads a CoNLL-style column file into `[{"tokens": [...], "tags": [...]}, ...]`.

    One token per line, the word in the first column and the tag in the last; columns are separated by tabs when
    the line has a tab (WNUT-17) and by whitespace otherwise (CoNLL-2003: `word POS chunk NER`). Any
    whitespace-only line (also a lone TAB) ends a sentence; `-DOCSTART-` lines are skipped. The file is UTF-8.
    With `tag_scheme="iob1"` each sentence's tags are converted to BIO. Sentences without tokens are not emitted.

    Raises:
        DataError: missing file, a line without a tag, or a tag that is not `O`, `B-X` or `I-X` (the message
            gives `path:line_number`).
    """
    if tag_scheme not in TAG_SCHEMES:
        raise DataError(f"Unknown tag_scheme {tag_scheme!r}; valid schemes are {list(TAG_SCHEMES)}.")
    path = _check_file(path)
    sentences: list[dict[str, list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []

    def end_sentence() -> None:
        nonlocal tokens, tags
        if tokens:
            sentences.append({"tokens": tokens, "tags": convert_iob1_to_bio(tags) if tag_scheme == "iob1" else tags})
        tokens, tags = [], []

    with open(path, encoding="utf-8") as f:
        for line_number, raw_line in enumerate(f, start=1):
            line = raw_line.rstrip("\r\n")
            if not line.strip():
                end_sentence()
                continue
            columns = [c.strip() for c in line.split("\t")] if "\t" in line else line.split()
            if columns[0] == "-DOCSTART-":
                end_sentence()
                continue
            if len(columns) < 2 or not columns[0] or not columns[-1]:
                raise DataError(f"{path}:{line_number}: expected a word and a tag in separate columns, got {line!r}.")
            tag = columns[-1]
            if not _is_bio_tag(tag):
                raise DataError(f"{path}:{line_number}: tag {tag!r} is not O, B-TYPE or I-TYPE (line {line!r}).")
            tokens.append(columns[0])
            tags.append(tag)
    end_sentence()
    return sentences


def _read_json_rows(path: str, fmt: str) -> list[tuple[str, dict[str, Any]]]:
    """Reads JSON lines, or a JSON array of objects, as `(location, row)` pairs (`path:line` or `path[item]`)."""
    path = _check_file(path)
    with open(path, encoding="utf-8-sig") as f:
        content = f.read()
    if fmt == "json" and content.lstrip().startswith("["):
        try:
            data = json.loads(content)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}.") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON array of objects or JSON lines, got a {type(data).__name__}.")
        rows = [(f"{path}[{i}]", row) for i, row in enumerate(data)]
    else:
        rows = []
        for line_number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{line_number}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{line_number}: invalid JSON line ({e.msg}); expected one JSON object per line "
                    "or a JSON array of objects."
                ) from None
    for where, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}: {row!r}.")
    return rows


def _read_csv_rows(path: str, fmt: str) -> list[tuple[str, dict[str, Any]]]:
    """Reads a CSV/TSV file with a header row as `(path:line, row)` pairs."""
    path = _check_file(path)
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")
        if reader.fieldnames is None:
            raise DataError(f"{path}: empty {fmt} file (a header row is required).")
        n_columns = len(reader.fieldnames)
        for row in reader:
            if None in row:
                raise DataError(f"{path}:{reader.line_num}: more fields than the {n_columns} header columns.")
            if any(value is None for value in row.values()):
                raise DataError(f"{path}:{reader.line_num}: fewer fields than the {n_columns} header columns.")
            rows.append((f"{path}:{reader.line_num}", row))
    return rows


def _infer_format(task: TaskDataArguments, path: str) -> str:
    if task.format is not None:
        return task.format
    extension = os.path.splitext(path)[1].lower()
    fmt = _EXTENSION_TO_FORMAT.get(extension)
    if fmt is None and task.type == "token_classification":
        fmt = "conll"
    if fmt is None or (fmt == "conll" and task.type == "sequence_classification"):
        raise DataError(
            f"task {task.name!r}: cannot infer the format of {path!r} for a {task.type} task; "
            f"set `format` to one of {[f for f in FORMATS if f != 'conll']}."
        )
    if task.type == "token_classification" and fmt in ("csv", "tsv"):
        raise DataError(
            f"task {task.name!r}: {path!r}: token_classification data cannot be read from {fmt}; "
            "use conll, json or jsonl."
        )
    return fmt


def _label_to_str(value: Any, labels: list[str] | None, where: str) -> str:
    """A label value as a string; integers index into `labels` when a label list is given."""
    if value is None:
        raise DataError(f"{where}: missing label (null).")
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)) and labels is not None:
        if not 0 <= value < len(labels):
            raise DataError(f"{where}: integer label {value} is out of range for the {len(labels)} `labels` {labels}.")
        return labels[value]
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return str(value)
    raise DataError(f"{where}: a label must be a string or a number, got {type(value).__name__} {value!r}.")


def _normalise_row(task: TaskDataArguments, row: dict[str, Any], where: str) -> tuple[Any, Any]:
    """Checks one raw row and returns its (text, label) or (tokens, tags) in normalised form."""
    text_column, label_column = task.text_column_name, task.label_column_name
    for column, field_name in ((text_column, "text_column"), (label_column, "label_column")):
        if column not in row:
            raise DataError(
                f"task {task.name!r}: column {column!r} not found in {where}; columns present: "
                f"{sorted(row)}. Set `{field_name}` to the right column."
                + _suggest(column, [str(c) for c in row])
            )
    text, label = row[text_column], row[label_column]
    if task.type == "sequence_classification":
        if not isinstance(text, str):
            raise DataError(f"task {task.name!r}: {where}: column {text_column!r} must hold a string, got {text!r}.")
        return text, _label_to_str(label, task.labels, f"task {task.name!r}: {where}: column {label_column!r}")
    if not isinstance(text, (list, tuple)) or not all(isinstance(token, str) for token in text):
        raise DataError(
            f"task {task.name!r}: {where}: column {text_column!r} must hold a list of strings, got {text!r}."
        )
    if not isinstance(label, (list, tuple)):
        raise DataError(
            f"task {task.name!r}: {where}: column {label_column!r} must hold a list of tags, got {label!r}."
        )
    if len(text) != len(label):
        raise DataError(
            f"task {task.name!r}: {where}: {len(text)} tokens in {text_column!r} "
            f"but {len(label)} tags in {label_column!r}."
        )
    tags = []
    for tag in label:
        if isinstance(tag, (int, np.integer)) and not isinstance(tag, bool) and task.labels is None:
            raise DataError(
                f"task {task.name!r}: {where}: integer tag {tag} in column {label_column!r}; "
                "give the tag names in the task's `labels` to map ids to tags."
            )
        tag = _label_to_str(tag, task.labels, f"task {task.name!r}: {where}: column {label_column!r}")
        if not _is_bio_tag(tag):
            raise DataError(f"task {task.name!r}: {where}: tag {tag!r} is not O, B-TYPE or I-TYPE.")
        tags.append(tag)
    return list(text), tags


def _rows_to_dataset(task: TaskDataArguments, texts: list[Any], labels: list[Any]) -> Dataset:
    if task.type == "sequence_classification":
        return Dataset.from_dict({"text": texts, "label": labels}, features=_SEQUENCE_FEATURES)
    if task.tag_scheme == "iob1":
        labels = [convert_iob1_to_bio(tags) for tags in labels]
    return Dataset.from_dict({"tokens": texts, "tags": labels}, features=_TOKEN_FEATURES)


def read_task_file(task: TaskDataArguments, path: str | os.PathLike) -> Dataset:
    """Reads one data file of `task` into a `Dataset` with normalised columns (`text`/`label` or `tokens`/`tags`)."""
    path = os.fspath(path)
    fmt = _infer_format(task, path)
    if fmt == "conll":
        sentences = read_conll(path, tag_scheme=task.tag_scheme)
        return Dataset.from_dict(
            {"tokens": [s["tokens"] for s in sentences], "tags": [s["tags"] for s in sentences]},
            features=_TOKEN_FEATURES,
        )
    rows = _read_json_rows(path, fmt) if fmt in ("json", "jsonl") else _read_csv_rows(path, fmt)
    texts, labels = [], []
    for where, row in rows:
        text, label = _normalise_row(task, row, where)
        texts.append(text)
        labels.append(label)
    return _rows_to_dataset(task, texts, labels)


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
    text_column, label_column = task.text_column_name, task.label_column_name
    for column, field_name in ((text_column, "text_column"), (label_column, "label_column")):
        if column not in dataset.column_names:
            raise DataError(
                f"task {task.name!r}: column {column!r} not found in {source}; columns present: "
                f"{dataset.column_names}. Set `{field_name}` to the right column."
                + _suggest(column, dataset.column_names)
            )
    names = _class_label_names(dataset.features[label_column])
    # ClassLabel ids are mapped with the dataset's own names; `task.labels` then only fixes the label order.
    row_task = dataclasses.replace(task, labels=names) if names is not None else task
    texts, labels = [], []
    for i, (text, label) in enumerate(zip(dataset[text_column], dataset[label_column])):
        text, label = _normalise_row(row_task, {text_column: text, label_column: label}, f"{source}, row {i}")
        texts.append(text)
        labels.append(label)
    return _rows_to_dataset(task, texts, labels)


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


def _carve_size(n: int, fraction: float) -> int:
    return 0 if fraction == 0 else max(1, round(n * fraction))


def load_task_splits(task: TaskDataArguments, seed: int = 42) -> DatasetDict:
    """Loads `task` as a `DatasetDict` with splits `train`, `validation`, `test` and normalised columns.

    Sequence tasks get `text` (str) and `label` (str); token tasks `tokens` (list of str) and `tags` (list of
    BIO tags). A train split is required. A missing validation or test split is carved out of train: a random
    (given `seed`) `validation_split_fraction` / `test_split_fraction` of the train rows, at least one row each,
    kept in file order; the rows left form the new train split. A fraction of 0 leaves that split out.

    Raises:
        DataError: no train split, or no rows in it, or too few rows to carve from.
    """
    splits = load_task_dataset(task)
    if "train" not in splits:
        raise DataError(f"task {task.name!r}: no train split; every task needs training data (`data_files.train`).")
    train = splits["train"]
    if len(train) == 0:
        raise DataError(f"task {task.name!r}: the train split has no rows.")
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


def _sort_key(labels: Sequence[str]):
    if all(label.lstrip("-").isdigit() for label in labels):
        return lambda label: (int(label), label)
    return lambda label: label


def infer_labels(task: TaskDataArguments, train_split: Dataset) -> list[str]:
    """The label set of `task`: `task.labels` when given, else every label of the WHOLE `train_split`.

    Call it before any `max_train_samples` truncation. Order: sequence tasks sort the label names (numerically
    when they are all integers); token tasks put `O` first, then every entity type seen, sorted, as `B-TYPE`,
    `I-TYPE` (both, even if only one of them occurs).
    """
    if task.labels is not None:
        return list(task.labels)
    if task.type == "sequence_classification":
        seen = set(train_split["label"])
        return sorted(seen, key=_sort_key(list(seen)))
    types = set()
    for tags in train_split["tags"]:
        types.update(tag[2:] for tag in tags if tag != "O")
    return ["O"] + [f"{prefix}-{entity_type}" for entity_type in sorted(types) for prefix in ("B", "I")]


def check_labels(task: TaskDataArguments, splits: DatasetDict, labels: Sequence[str]) -> None:
    """Raises a `DataError` naming the label, split and task when a split uses a label outside `labels`.

    Validation and test are always checked; train too when the task lists its labels (inferred labels cover
    train by construction).
    """
    label_set = set(labels)
    column = "label" if task.type == "sequence_classification" else "tags"
    for split in SPLITS:
        if split not in splits or (split == "train" and task.labels is None):
            continue
        for i, value in enumerate(splits[split][column]):
            for label in [value] if isinstance(value, str) else value:
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


def _b_to_i_ids(label2id: dict[str, int]) -> dict[int, int]:
    """Maps each label id to the id of its `I-` version (itself when it is not a `B-` label or has no `I-`)."""
    mapping = {}
    for label, label_id in label2id.items():
        inside = "I-" + label[2:] if label.startswith("B-") else label
        mapping[label_id] = label2id.get(inside, label_id)
    return mapping


def _label_id(label: str, label2id: dict[str, int], task: TaskDataArguments) -> int:
    try:
        return label2id[label]
    except KeyError:
        raise DataError(f"task {task.name!r}: label {label!r} is not in label2id {sorted(label2id)}.") from None


def tokenize_task(
    dataset: Dataset, task: TaskDataArguments, tokenizer: Any, label2id: dict[str, int], max_length: int
) -> Dataset:
    """Tokenizes one normalised split of `task`, truncating to `max_length` and without padding.

    Returns a dataset with `input_ids`, `attention_mask`, `token_type_ids` (when the tokenizer makes them) and
    `labels`: the label id for sequence tasks; for token tasks one id per sub-token, aligned with `word_ids()`:
    the first sub-token of a word gets the word's label, later sub-tokens -100 (or, with
    `task.label_all_tokens`, the word's label with `B-` turned into `I-`), special tokens -100. Every other
    column is removed.

    Token tasks need a fast tokenizer (for `word_ids()`). Byte-level BPE tokenizers (RoBERTa, GPT-2, BART,
    Longformer) only accept pre-split words when loaded with `add_prefix_space=True`, e.g.
    `AutoTokenizer.from_pretrained(name, add_prefix_space=True)`; loading them that way is the caller's job.
    """
    if task.type == "sequence_classification":
        return _tokenize_sequences(dataset, task, tokenizer, label2id, max_length)
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(
            f"task {task.name!r}: token_classification needs a fast tokenizer (with word_ids()); "
            f"{type(tokenizer).__name__} is not fast. Load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
        )
    return _tokenize_words(dataset, task, tokenizer, label2id, max_length)


def _tokenize_sequences(
    dataset: Dataset, task: TaskDataArguments, tokenizer: Any, label2id: dict[str, int], max_length: int
) -> Dataset:
    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        encoding = tokenizer(batch["text"], truncation=True, max_length=max_length)
        encoding["labels"] = [_label_id(label, label2id, task) for label in batch["label"]]
        return dict(encoding)

    return dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, desc=f"Tokenizing {task.name}")


def _tokenize_words(
    dataset: Dataset, task: TaskDataArguments, tokenizer: Any, label2id: dict[str, int], max_length: int
) -> Dataset:
    b_to_i = _b_to_i_ids(label2id)

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        encoding = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
        all_labels = []
        for i, tags in enumerate(batch["tags"]):
            word_label_ids = [_label_id(tag, label2id, task) for tag in tags]
            label_ids = []
            previous_word = None
            for word_id in encoding.word_ids(i):
                if word_id is None:
                    label_ids.append(-100)
                elif word_id != previous_word:
                    label_ids.append(word_label_ids[word_id])
                elif task.label_all_tokens:
                    label_ids.append(b_to_i[word_label_ids[word_id]])
                else:
                    label_ids.append(-100)
                previous_word = word_id
            all_labels.append(label_ids)
        encoding["labels"] = all_labels
        return dict(encoding)

    return dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, desc=f"Tokenizing {task.name}")


# ----------------------------------------------------------------------------------------------------------------
# Multi-task dataset, collator and batch sampler
# ----------------------------------------------------------------------------------------------------------------


def _offsets(task_sizes: dict[str, int]) -> dict[str, int]:
    offsets, total = {}, 0
    for name, size in task_sizes.items():
        offsets[name] = total
        total += size
    return offsets


class MultiTaskDataset(torch.utils.data.Dataset):
    """The tokenized datasets of several tasks, concatenated in the given task order.

    Global index = `offsets[task] + local index`. Items are the task's row dict plus `"task": name`.
    """

    def __init__(self, datasets: dict[str, Dataset]):
        if not datasets:
            raise ValueError("MultiTaskDataset needs at least one task.")
        self.datasets = dict(datasets)
        self.task_names: list[str] = list(self.datasets)
        self.task_sizes: dict[str, int] = {name: len(ds) for name, ds in self.datasets.items()}
        self.offsets: dict[str, int] = _offsets(self.task_sizes)
        self._starts = [self.offsets[name] for name in self.task_names]
        self._length = sum(self.task_sizes.values())

    def __len__(self) -> int:
        return self._length

    def _locate(self, index: int) -> tuple[str, int]:
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for a MultiTaskDataset of {self._length} rows.")
        position = bisect.bisect_right(self._starts, index) - 1
        # bisect_right lands on the last task starting at or before `index`: never an empty task, whose
        # start is shared with the next one.
        name = self.task_names[position]
        return name, index - self.offsets[name]

    def task_of(self, global_idx: int) -> str:
        """The name of the task that owns `global_idx`."""
        return self._locate(int(global_idx))[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, local_index = self._locate(int(index))
        return {**self.datasets[name][local_index], "task": name}


class MultiTaskCollator:
    """Pads a batch of single-task features into tensors.

    `input_ids`, `attention_mask` and `token_type_ids` are padded by `tokenizer.pad`; token labels are padded
    with -100 to the padded sequence length (on the tokenizer's padding side); sequence labels become a
    `LongTensor`. The returned dict holds those tensors plus `"task": <name>`. Features without `labels`
    (prediction) are fine; features of different tasks in one batch raise a `ValueError`.
    """

    def __init__(self, tokenizer: Any, task_types: dict[str, str], pad_to_multiple_of: int | None = None):
        for name, task_type in task_types.items():
            if task_type not in TASK_TYPES:
                raise ValueError(f"task {name!r}: unknown type {task_type!r}; valid types are {list(TASK_TYPES)}.")
        self.tokenizer = tokenizer
        self.task_types = dict(task_types)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("Cannot collate an empty batch.")
        tasks = [feature.get("task") for feature in features]
        if None in tasks:
            raise ValueError("Every feature needs a 'task' key (as MultiTaskDataset items have).")
        if len(set(tasks)) > 1:
            raise ValueError(f"A batch must hold one task only, got features of tasks {sorted(set(tasks))}.")
        task = tasks[0]
        if task not in self.task_types:
            raise ValueError(f"Unknown task {task!r}; the collator knows {list(self.task_types)}.")
        with_labels = ["labels" in feature for feature in features]
        if any(with_labels) and not all(with_labels):
            raise ValueError(f"task {task!r}: some features of the batch have 'labels' and some do not.")
        inputs = [{k: v for k, v in feature.items() if k not in ("task", "labels")} for feature in features]
        padded = self.tokenizer.pad(
            inputs, padding=True, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"
        )
        batch = dict(padded)
        if all(with_labels):
            labels = [feature["labels"] for feature in features]
            if self.task_types[task] == "token_classification":
                batch["labels"] = self._pad_labels(labels, batch["input_ids"].shape[1])
            else:
                batch["labels"] = torch.tensor([int(label) for label in labels], dtype=torch.long)
        batch["task"] = task
        return batch

    def _pad_labels(self, labels: list[Sequence[int]], length: int) -> torch.Tensor:
        padded = torch.full((len(labels), length), -100, dtype=torch.long)
        for row, label_ids in enumerate(labels):
            label_ids = torch.as_tensor(list(label_ids), dtype=torch.long)[:length]
            if self.tokenizer.padding_side == "left":
                padded[row, length - len(label_ids) :] = label_ids
            else:
                padded[row, : len(label_ids)] = label_ids
        return padded


class MultiTaskBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields task-homogeneous batches of global indices (tasks concatenated in `task_sizes` order).

    See the module docstring for the policies. An epoch has `sum(ceil(size / batch_size))` batches under every
    policy. The batches depend only on `seed + epoch` (a `torch.Generator`), so iterating twice in one epoch
    gives the same batches (resuming from a checkpoint replays them) and `set_epoch` reshuffles.

    Args:
        task_sizes: task name -> number of examples (all > 0), in the order of the `MultiTaskDataset`.
        batch_size: examples per batch.
        policy: `proportional`, `temperature` or `round_robin`.
        temperature: for `temperature`: P(task) ∝ size ** (1 / temperature).
        seed: base seed; the generator of epoch `e` is seeded with `seed + e`.
        full_batches: fill a task's short last batch with other examples of the same task, so that every batch
            has exactly `batch_size` indices (needed with accelerate's `split_batches=True`).
        shuffle: shuffle the examples of each task (and, for `proportional`, the order of the batches). With
            `shuffle=False` and `proportional`, batches come in order, task after task (for evaluation); the
            other policies still draw the task sequence at random but keep each task's examples in order.
    """

    def __init__(
        self,
        task_sizes: dict[str, int],
        batch_size: int,
        policy: str = "proportional",
        temperature: float = 2.0,
        seed: int = 42,
        full_batches: bool = False,
        shuffle: bool = True,
    ):
        if policy not in SAMPLING_POLICIES:
            raise ValueError(f"Unknown sampling policy {policy!r}; valid policies are {list(SAMPLING_POLICIES)}.")
        if not task_sizes:
            raise ValueError("MultiTaskBatchSampler needs at least one task.")
        for name, size in task_sizes.items():
            if not isinstance(size, (int, np.integer)) or size <= 0:
                raise ValueError(f"task {name!r} has {size!r} examples; every task needs at least one.")
        if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if policy == "temperature" and not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        self.task_sizes = {name: int(size) for name, size in task_sizes.items()}
        self.task_names = list(self.task_sizes)
        self.offsets = _offsets(self.task_sizes)
        self.batch_size = int(batch_size)
        self.policy = policy
        self.temperature = float(temperature)
        self.seed = seed
        self.full_batches = full_batches
        self.shuffle = shuffle
        self.epoch = 0
        self.batches_per_task = {name: math.ceil(size / self.batch_size) for name, size in self.task_sizes.items()}

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch: the batches of epoch `e` are drawn with seed `seed + e`."""
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self.batches_per_task.values())

    def task_probabilities(self) -> dict[str, float]:
        """The probability of drawing each task at a step under the `temperature` policy."""
        weights = {name: size ** (1.0 / self.temperature) for name, size in self.task_sizes.items()}
        total = sum(weights.values())
        return {name: weight / total for name, weight in weights.items()}

    def _task_batches(self, name: str, generator: torch.Generator) -> list[list[int]]:
        """One pass over a task's examples, cut into batches of global indices."""
        size, offset = self.task_sizes[name], self.offsets[name]
        order = torch.randperm(size, generator=generator) if self.shuffle else torch.arange(size)
        indices = (order + offset).tolist()
        if self.full_batches:
            # Repeat the pass as needed: a short tail is filled with this task's first examples of the pass.
            needed = self.batches_per_task[name] * self.batch_size
            indices = (indices * math.ceil(needed / size))[:needed]
        return [indices[start : start + self.batch_size] for start in range(0, len(indices), self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.policy == "proportional":
            yield from self._proportional(generator)
        else:
            yield from self._cycling(generator)

    def _proportional(self, generator: torch.Generator) -> Iterator[list[int]]:
        batches = [batch for name in self.task_names for batch in self._task_batches(name, generator)]
        order = torch.randperm(len(batches), generator=generator).tolist() if self.shuffle else range(len(batches))
        for position in order:
            yield batches[position]

    def _task_sequence(self, generator: torch.Generator) -> list[int]:
        """The task (as a position in `task_names`) of every step of the epoch."""
        steps = len(self)
        if self.policy == "round_robin":
            return [step % len(self.task_names) for step in range(steps)]
        probabilities = torch.tensor(list(self.task_probabilities().values()), dtype=torch.float64)
        return torch.multinomial(probabilities, steps, replacement=True, generator=generator).tolist()

    def _cycling(self, generator: torch.Generator) -> Iterator[list[int]]:
        sequence = self._task_sequence(generator)
        pending: dict[str, list[list[int]]] = {name: [] for name in self.task_names}
        for position in sequence:
            name = self.task_names[position]
            if not pending[name]:
                pending[name] = self._task_batches(name, generator)
            yield pending[name].pop(0)
