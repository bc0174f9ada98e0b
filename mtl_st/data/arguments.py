"""One task of a training configuration: a `tasks:` entry of the YAML, checked on construction.

`TaskDataArguments.from_dict` names an unknown key (with a suggestion) and every check names the task and field, as a
`DataError`. Reading the task's data is `mtl_st.data.splits`; its type's data side is `mtl_st.data.task_data`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from mtl_st.data.readers import TAG_SCHEMES
from mtl_st.data.task_data import get_task_data
from mtl_st.errors import DataError, suggest
from tasks_mtl import READS_RANKING, TASK_TYPES, get_task_type, is_bio_tag

SPLITS = ("train", "validation", "test")
FORMATS = ("conll", "jsonl", "json", "csv", "tsv", "beir")
# Fields of a task entry that go to the model's config (each type's spec lists those it takes in `extra_fields`).
MODEL_FIELDS = ("threshold", "scale", "symmetric", "mini_batch_size", "matryoshka_dims", "prompts")


@dataclass
class TaskDataArguments:
    """One entry of the training configuration's `tasks:` list.

    Args:
        name: the task's name (also the name of its head and the prefix of its metrics).
        type: one of `tasks_mtl.TASK_TYPES` (its spec there; its data side in `mtl_st.data.task_data`).
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
        negative_columns: retrieval: the columns holding hard negatives (default: every column named `negative*`).
        scale, symmetric, mini_batch_size, matryoshka_dims, prompts: the task type's model fields (see its spec in
            `tasks_mtl.py`: retrieval takes all five, sentence_similarity `scale` and `matryoshka_dims`); they go to
            the model's config.
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
    negative_columns: list[str] | None = None
    scale: float | None = None
    symmetric: bool | None = None
    mini_batch_size: int | None = None
    matryoshka_dims: list[int] | None = None
    prompts: dict | None = None
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
        if "." in self.name or self.name != self.name.strip():
            raise DataError(f"task {self.name!r}: a task name cannot hold a '.' or surrounding spaces (it names the "
                            "task's head, its metrics and its entries such as task_loss_weights.<task>).")
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
        for field_name in MODEL_FIELDS:
            if getattr(self, field_name) is not None and field_name not in get_task_type(self.type).extra_fields:
                types = [name for name, spec in TASK_TYPES.items() if field_name in spec.extra_fields]
                raise DataError(f"{where}: `{field_name}` applies to {' and '.join(types)} tasks only.")
        try:  # the spec checks its own fields (threshold, scale, ...)
            dummy = {"labels": ["O"] if data.reads_conll else ["x"]} if data.has_label_names else {}
            get_task_type(self.type).validate({**self.model_task(None), **dummy})
        except ValueError as error:
            raise DataError(str(error).replace(f"Task {self.name!r}", where)) from None
        ranks = get_task_type(self.type).reads == READS_RANKING
        if self.negative_columns is not None and (not ranks or not isinstance(self.negative_columns, list) or not all(
                isinstance(c, str) for c in self.negative_columns)):
            raise DataError(f"{where}: `negative_columns` is a list of column names, for retrieval tasks only.")
        if self.format == "beir" and not ranks:
            raise DataError(f"{where}: `format: beir` is for retrieval tasks only.")
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
        for field_name in MODEL_FIELDS:
            if getattr(self, field_name) is not None:
                entry[field_name] = getattr(self, field_name)
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




__all__ = ["TaskDataArguments", "SPLITS", "FORMATS", "MODEL_FIELDS"]
