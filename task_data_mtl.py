"""Task types, data side: columns, row checks, label inference, tokenisation, padding and metrics.

One class per task type, registered by the type's name in `TASK_DATA` (the model side of the same types is in
`tasks_mtl.py`). Every type reads its rows into normalised columns:

| type | normalised columns | label ids after tokenisation |
| --- | --- | --- |
| `sequence_classification` | `text`, `label` (str) | `[batch]` int |
| `token_classification` | `tokens`, `tags` (BIO str) | `[batch, seq]` int, -100 where not scored |
| `pair_classification` | `text`, `text_pair`, `label` (str) | `[batch]` int |
| `multi_label_classification` | `text`, `label` (list of str) | `[batch, num_labels]` multi-hot float |
| `regression` | `text`, `label` (float) | `[batch]` float |
| `sentence_similarity` | `text`, `text_pair`, `label` (float) | `[batch]` float |

Metrics are fractions, computed offline (scikit-learn, seqeval, scipy). A task may name `metric:` (an `evaluate`
module: a local path, or a Hub id where the network is reachable) to replace its built-in metrics; see
`TaskMetrics`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, ClassVar

import numpy as np
import torch
from datasets import Dataset, Features, List, Value
from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

# Windows of long token-task rows: the same helpers as the pipeline's (DEFAULT_STRIDE re-exported).
from postprocess_mtl import DEFAULT_STRIDE, default_stride, home_windows, token_windows  # noqa: F401
from readers_mtl import DataError, is_bio_tag, suggest

IGNORE_INDEX = -100

logger = logging.getLogger("data_mtl")


class TaskData:
    """Base class of a task type's data side. `roles` maps each normalised column to its default source column."""

    type_name: ClassVar[str]
    roles: ClassVar[dict[str, str]] = {"text": "text", "label": "label"}
    features: ClassVar[Features]
    reads_conll: ClassVar[bool] = False
    has_label_names: ClassVar[bool] = True  # the label column holds names from a label set

    # ------------------------------------------------------------------ reading
    def normalise_row(self, task, row: dict[str, Any], where: str) -> dict[str, Any]:
        """Check one raw row and return it in the normalised columns; `DataError` naming `where` and the column."""
        values = {}
        for role, default in self.roles.items():
            column = task.column_for(role, default)
            if column not in row:
                raise DataError(
                    f"task {task.name!r}: column {column!r} not found in {where}; columns present: {sorted(row)}. "
                    f"Set `{role}_column` to the right column." + suggest(column, [str(c) for c in row])
                )
            values[role] = row[column]
        for role in values:
            if role != "label":
                values[role] = self._text(task, values[role], where, task.column_for(role, self.roles[role]))
        values["label"] = self.normalise_label(task, values["label"], f"task {task.name!r}: {where}: column "
                                               f"{task.column_for('label', self.roles['label'])!r}")
        return values

    def _text(self, task, value: Any, where: str, column: str) -> str:
        if not isinstance(value, str):
            raise DataError(f"task {task.name!r}: {where}: column {column!r} must hold a string, got {value!r}.")
        return value

    def normalise_label(self, task, value: Any, where: str) -> Any:
        return label_to_str(value, task.labels, where)

    def rows_to_dataset(self, task, rows: list[dict[str, Any]]) -> Dataset:
        columns = {name: [row[name] for row in rows] for name in self.features}
        return Dataset.from_dict(columns, features=self.features)

    # ------------------------------------------------------------------ labels
    def infer_labels(self, task, train: Dataset) -> list[str] | None:
        """The label set from the whole train split (sorted; numerically when every label is an integer)."""
        seen = set(train["label"])
        return sorted(seen, key=_sort_key(list(seen)))

    def split_labels(self, split: Dataset) -> list[list[str]]:
        """Every row's label names, for `check_labels`."""
        return [[value] for value in split["label"]]

    # ------------------------------------------------------------------ tokenisation and padding
    def tokenize(self, dataset: Dataset, task, tokenizer: Any, label2id: dict[str, int], max_length: int) -> Dataset:
        """Tokenize one normalised split, unpadded: `input_ids`, `attention_mask` (+ `token_type_ids`), `labels`."""

        def tokenize(batch: dict[str, list]) -> dict[str, list]:
            encoding = dict(self.encode_texts(batch, tokenizer, max_length))
            encoding["labels"] = [self.label_ids(task, label, label2id) for label in batch["label"]]
            return encoding

        tokenized = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names,
                                desc=f"Tokenizing {task.name}")
        warn_truncated(self, dataset, tokenized, task, tokenizer, max_length)
        return tokenized

    def encode_texts(self, batch: dict[str, list], tokenizer: Any, max_length: int) -> dict:
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    def label_ids(self, task, label: Any, label2id: dict[str, int]) -> Any:
        return label_id(label, label2id, task)

    def collate(self, features: list[dict[str, Any]], tokenizer: Any, pad_to_multiple_of: int | None) -> dict:
        """Pad one single-task batch (features without `task`) into tensors."""
        return dict(DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)(features))

    # ------------------------------------------------------------------ metrics
    def metrics(self, task: dict, predictions: np.ndarray, label_ids: np.ndarray) -> dict[str, float]:
        """The built-in metrics of this type (fractions)."""
        raise NotImplementedError

    def decode(self, task: dict, predictions: np.ndarray, label_ids: np.ndarray) -> tuple[list, list]:
        """`(predictions, references)` as an `evaluate` metric takes them (see `TaskMetrics`)."""
        keep = label_ids != IGNORE_INDEX
        return predictions.argmax(-1)[keep].tolist(), label_ids[keep].tolist()


class SequenceClassificationData(TaskData):
    type_name = "sequence_classification"
    features = Features({"text": Value("string"), "label": Value("string")})

    def metrics(self, task: dict, predictions: np.ndarray, label_ids: np.ndarray) -> dict[str, float]:
        return classification_metrics(predictions, label_ids, len(task["labels"]))


class PairClassificationData(SequenceClassificationData):
    type_name = "pair_classification"
    roles = {"text": "text", "text_pair": "text_pair", "label": "label"}
    features = Features({"text": Value("string"), "text_pair": Value("string"), "label": Value("string")})

    def encode_texts(self, batch: dict[str, list], tokenizer: Any, max_length: int) -> dict:
        # Jointly, as transformers' run_glue.py does: [CLS] text [SEP] text_pair [SEP], the longer one truncated.
        return tokenizer(batch["text"], batch["text_pair"], truncation=True, max_length=max_length)


class MultiLabelClassificationData(TaskData):
    """`label_column` holds a list of label names (JSON), or in CSV/TSV a string of names separated by commas."""

    type_name = "multi_label_classification"
    roles = {"text": "text", "label": "labels"}
    features = Features({"text": Value("string"), "label": List(Value("string"))})

    def normalise_label(self, task, value: Any, where: str) -> list[str]:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise DataError(f"{where}: must hold a list of label names, got {value!r}.")
        return [label_to_str(item, task.labels, where) for item in value]

    def infer_labels(self, task, train: Dataset) -> list[str]:
        seen = {label for labels in train["label"] for label in labels}
        if not seen:
            raise DataError(f"task {task.name!r}: no row of the train split has a label; give the task `labels`.")
        return sorted(seen, key=_sort_key(list(seen)))

    def split_labels(self, split: Dataset) -> list[list[str]]:
        return list(split["label"])

    def label_ids(self, task, label: list[str], label2id: dict[str, int]) -> list[float]:
        row = [0.0] * len(label2id)
        for name in label:
            row[label_id(name, label2id, task)] = 1.0
        return row

    def metrics(self, task: dict, predictions: np.ndarray, label_ids: np.ndarray) -> dict[str, float]:
        from sklearn.metrics import f1_score

        predicted, gold = self.decode(task, predictions, label_ids)
        return {
            "micro_f1": float(f1_score(gold, predicted, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(gold, predicted, average="macro", zero_division=0)),
        }

    def decode(self, task: dict, predictions: np.ndarray, label_ids: np.ndarray) -> tuple[list, list]:
        probabilities = 1.0 / (1.0 + np.exp(-np.asarray(predictions, dtype=np.float64)))
        return (probabilities >= task.get("threshold", 0.5)).astype(int).tolist(), label_ids.astype(int).tolist()


class RegressionData(TaskData):
    """`label_column` holds a number per row."""

    type_name = "regression"
    features = Features({"text": Value("string"), "label": Value("float64")})
    has_label_names = False

    def normalise_label(self, task, value: Any, where: str) -> float:
        return label_to_float(value, where)

    def infer_labels(self, task, train: Dataset) -> None:
        return None

    def split_labels(self, split: Dataset) -> list[list[str]]:
        return []

    def label_ids(self, task, label: float, label2id: dict[str, int]) -> float:
        return float(label)

    def metrics(self, task: dict, predictions: np.ndarray, label_ids: np.ndarray) -> dict[str, float]:
        predicted, gold = self.decode(task, predictions, label_ids)
        predicted, gold = np.asarray(predicted), np.asarray(gold)
        return {**correlations(predicted, gold), "mse": float(np.mean((predicted - gold) ** 2))}

    def decode(self, task: dict, predictions: np.ndarray, label_ids: np.ndarray) -> tuple[list, list]:
        return np.asarray(predictions, dtype=np.float64).reshape(-1).tolist(), label_ids.reshape(-1).tolist()


class SentenceSimilarityData(RegressionData):
    """Pairs of sentences with a similarity score; each sentence is tokenized on its own (`pair_*` columns)."""

    type_name = "sentence_similarity"
    roles = {"text": "sentence1", "text_pair": "sentence2", "label": "score"}
    features = Features({"text": Value("string"), "text_pair": Value("string"), "label": Value("float64")})

    def encode_texts(self, batch: dict[str, list], tokenizer: Any, max_length: int) -> dict:
        first = tokenizer(batch["text"], truncation=True, max_length=max_length)
        second = tokenizer(batch["text_pair"], truncation=True, max_length=max_length)
        return {**first, **{f"pair_{key}": value for key, value in second.items()}}

    def collate(self, features: list[dict[str, Any]], tokenizer: Any, pad_to_multiple_of: int | None) -> dict:
        pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
        first = pad([{k: v for k, v in f.items() if not k.startswith("pair_")} for f in features])
        second = pad([{k[len("pair_"):]: v for k, v in f.items() if k.startswith("pair_")} for f in features])
        return {**first, **{f"pair_{key}": value for key, value in second.items()}}

    def metrics(self, task: dict, predictions: np.ndarray, label_ids: np.ndarray) -> dict[str, float]:
        predicted, gold = self.decode(task, predictions, label_ids)
        return correlations(np.asarray(predicted), np.asarray(gold))


class TokenClassificationData(TaskData):
    """Words and BIO tags. The first sub-token of a word carries its label; later ones -100 (or, with
    `label_all_tokens`, the word's label with `B-` turned into `I-`); special tokens -100."""

    type_name = "token_classification"
    roles = {"text": "tokens", "label": "tags"}
    features = Features({"tokens": List(Value("string")), "tags": List(Value("string"))})
    reads_conll = True

    def normalise_row(self, task, row: dict[str, Any], where: str) -> dict[str, Any]:
        text_column, label_column = task.column_for("text", "tokens"), task.column_for("label", "tags")
        for column, role in ((text_column, "text"), (label_column, "label")):
            if column not in row:
                raise DataError(
                    f"task {task.name!r}: column {column!r} not found in {where}; columns present: {sorted(row)}. "
                    f"Set `{role}_column` to the right column." + suggest(column, [str(c) for c in row])
                )
        words, tags = row[text_column], row[label_column]
        if not isinstance(words, (list, tuple)) or not all(isinstance(word, str) for word in words):
            raise DataError(f"task {task.name!r}: {where}: column {text_column!r} must hold a list of strings, "
                            f"got {words!r}.")
        if not isinstance(tags, (list, tuple)):
            raise DataError(f"task {task.name!r}: {where}: column {label_column!r} must hold a list of tags, "
                            f"got {tags!r}.")
        if len(words) != len(tags):
            raise DataError(f"task {task.name!r}: {where}: {len(words)} tokens in {text_column!r} but {len(tags)} "
                            f"tags in {label_column!r}.")
        normalised = []
        for tag in tags:
            if isinstance(tag, (int, np.integer)) and not isinstance(tag, bool) and task.labels is None:
                raise DataError(f"task {task.name!r}: {where}: integer tag {tag} in column {label_column!r}; give "
                                "the tag names in the task's `labels` to map ids to tags.")
            tag = label_to_str(tag, task.labels, f"task {task.name!r}: {where}: column {label_column!r}")
            if not is_bio_tag(tag):
                raise DataError(f"task {task.name!r}: {where}: tag {tag!r} is not O, B-TYPE or I-TYPE.")
            normalised.append(tag)
        return {"tokens": list(words), "tags": normalised}

    def infer_labels(self, task, train: Dataset) -> list[str]:
        """`O` first, then every entity type seen, sorted, as `B-TYPE`, `I-TYPE` (both, even if one never occurs)."""
        types = set()
        for tags in train["tags"]:
            types.update(tag[2:] for tag in tags if tag != "O")
        return ["O"] + [f"{prefix}-{entity_type}" for entity_type in sorted(types) for prefix in ("B", "I")]

    def split_labels(self, split: Dataset) -> list[list[str]]:
        return list(split["tags"])

    def tokenize(self, dataset: Dataset, task, tokenizer: Any, label2id: dict[str, int], max_length: int) -> Dataset:
        if not getattr(tokenizer, "is_fast", False):
            raise DataError(
                f"task {task.name!r}: token_classification needs a fast tokenizer (with word_ids()); "
                f"{type(tokenizer).__name__} is not fast. Load it with "
                "AutoTokenizer.from_pretrained(..., use_fast=True)."
            )
        b_to_i = _b_to_i_ids(label2id)
        stride = window_stride(task, tokenizer, max_length)
        specials = tokenizer("", add_special_tokens=True)["input_ids"]  # e.g. [CLS] [SEP]: wrapped around each window
        if len(specials) != 2:
            raise DataError(f"task {task.name!r}: token windows need a tokenizer that adds one special token before "
                            f"and after a text; {type(tokenizer).__name__} adds {len(specials)}.")

        def tokenize(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            # The whole row (verbose=False: no "indexing errors" warning), then windows of at most max_length.
            full = tokenizer(batch["tokens"], is_split_into_words=True, add_special_tokens=False, verbose=False)
            output: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "row": []}
            with_types = "token_type_ids" in tokenizer.model_input_names
            if with_types:
                output["token_type_ids"] = []
            for i, (ids, tags) in enumerate(zip(full["input_ids"], batch["tags"])):
                word_ids = full.word_ids(i)
                word_label_ids = [label_id(tag, label2id, task) for tag in tags]
                windows = token_windows(len(ids), max_length - 2, stride)
                home = home_windows(len(ids), windows)
                for w, (start, end) in enumerate(windows):
                    label_ids = [IGNORE_INDEX]
                    for p in range(start, end):
                        word = word_ids[p]
                        first = p == 0 or word_ids[p - 1] != word
                        if home[p] != w or word is None or (not first and not task.label_all_tokens):
                            label_ids.append(IGNORE_INDEX)
                        else:
                            label_ids.append(word_label_ids[word] if first else b_to_i[word_label_ids[word]])
                    window_ids = specials[:1] + ids[start:end] + specials[1:]
                    label_ids.append(IGNORE_INDEX)
                    output["input_ids"].append(window_ids)
                    output["attention_mask"].append([1] * len(window_ids))
                    if with_types:
                        output["token_type_ids"].append([0] * len(window_ids))
                    output["labels"].append(label_ids)
                    output["row"].append(indices[i])
            return output

        tokenized = dataset.map(tokenize, batched=True, with_indices=True, remove_columns=dataset.column_names,
                                desc=f"Tokenizing {task.name}")
        if "row" not in tokenized.column_names:
            return tokenized  # an empty split maps to no columns at all
        rows_split = sum(count > 1 for count in Counter(tokenized["row"]).values())
        if not rows_split:
            return tokenized.remove_columns("row")  # one window per row: nothing to put back together
        logger.warning(f"task {task.name!r}: {rows_split} of {len(dataset)} rows are longer than {max_length} "
                       f"tokens: each is split into overlapping windows (stride {stride}) and scored in full.")
        return tokenized

    def collate(self, features: list[dict[str, Any]], tokenizer: Any, pad_to_multiple_of: int | None) -> dict:
        features = [{key: value for key, value in feature.items() if key != "row"} for feature in features]
        if "labels" not in features[0]:
            return super().collate(features, tokenizer, pad_to_multiple_of)
        # Pads `labels` with -100 to the padded length, on the tokenizer's padding side.
        collator = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
        return dict(collator(features))

    def metrics(self, task: dict, predictions: np.ndarray, label_ids: np.ndarray) -> dict[str, float]:
        from seqeval.metrics import f1_score, precision_score, recall_score

        y_pred, y_true = self.decode(task, predictions, label_ids)
        return {
            "precision": float(precision_score(y_true, y_pred, zero_division=0)),
            "recall": float(recall_score(y_true, y_pred, zero_division=0)),
            "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        }

    def decode(self, task: dict, predictions: np.ndarray, label_ids: np.ndarray) -> tuple[list, list]:
        """Per sentence, the tag names of the scored positions: `(predicted, gold)` lists of lists of str."""
        labels = task["labels"]
        predicted = np.asarray(predictions).argmax(-1)
        y_pred, y_true = [], []
        for pred_row, label_row in zip(predicted, label_ids):
            keep = label_row != IGNORE_INDEX
            y_true.append([labels[i] for i in label_row[keep]])
            y_pred.append([labels[i] for i in pred_row[keep]])
        return y_pred, y_true


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------------


def label_to_str(value: Any, labels: list[str] | None, where: str) -> str:
    """A label value as a string; integers index into `labels` when a label list is given, unless every label is
    itself an integer (`labels: [1, 2, 3]`): then an integer is the label's name."""
    if value is None:
        raise DataError(f"{where}: missing label (null).")
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)) and labels is not None and all(_is_integer(label) for label in labels):
        # `labels: [1, 2, 3]`: integers in the data are these names, not indices into the list.
        if str(int(value)) not in labels:
            raise DataError(f"{where}: label {value} is not one of the `labels` {labels}.")
        return str(int(value))
    if isinstance(value, (int, np.integer)) and labels is not None:
        if not 0 <= value < len(labels):
            raise DataError(f"{where}: integer label {value} is out of range for the {len(labels)} `labels` {labels}.")
        return labels[value]
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return str(value)
    raise DataError(f"{where}: a label must be a string or a number, got {type(value).__name__} {value!r}.")


def warn_truncated(data: TaskData, dataset: Dataset, tokenized: Dataset, task, tokenizer: Any,
                   max_length: int) -> None:
    """One warning with the number of rows that truncation to `max_length` tokens cut (sequence-level tasks)."""
    cut = 0
    for start in range(0, len(dataset), 1000):
        batch = dataset[start : start + 1000]
        full = data.encode_texts(batch, tokenizer, 10**9)  # truncation on, but no limit that bites: no warning
        kept = tokenized[start : start + 1000]
        for key in ("input_ids", "pair_input_ids"):
            if key in full:
                cut += sum(len(a) > len(b) for a, b in zip(full[key], kept[key]))
    if cut:
        logger.warning(f"task {task.name!r}: {cut} of {len(dataset)} rows are longer than {max_length} tokens and "
                       "were truncated (sequence-level tasks read one window).")


def window_stride(task, tokenizer: Any, max_length: int) -> int:
    """The task's `stride` (tokens shared by consecutive windows), at most half a window; `DataError` if too big."""
    room = max_length - 2  # one special token before and one after the window
    stride = getattr(task, "stride", None)
    if stride is None:
        return default_stride(max_length)
    if not 0 <= stride < room:
        raise DataError(f"task {task.name!r}: `stride` must be in [0, {room}) for windows of {max_length} tokens "
                        f"({room} without special tokens), got {stride}.")
    return stride


def merge_windows(predictions: np.ndarray, label_ids: np.ndarray, rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Put the windows of each original row back side by side (`rows[i]`: window i's row, windows in order), so that
    metrics count every row once with every scored token; labels pad with -100."""
    groups: dict[int, list[int]] = {}
    for window, row in enumerate(rows):
        groups.setdefault(row, []).append(window)
    width = max(sum(label_ids.shape[1] for _ in windows) for windows in groups.values())
    merged_labels = np.full((len(groups), width), IGNORE_INDEX, dtype=label_ids.dtype)
    merged_predictions = np.zeros((len(groups), width, predictions.shape[-1]), dtype=predictions.dtype)
    for i, windows in enumerate(groups.values()):
        merged_labels[i] = np.concatenate([label_ids[w] for w in windows] + [
            np.full(width - label_ids.shape[1] * len(windows), IGNORE_INDEX, dtype=label_ids.dtype)])
        merged_predictions[i, : label_ids.shape[1] * len(windows)] = np.concatenate([predictions[w] for w in windows])
    return merged_predictions, merged_labels


def _is_integer(label: str) -> bool:
    return label.lstrip("-").isdigit()


def label_to_float(value: Any, where: str) -> float:
    """A numeric label (a number, or a string holding one); `DataError` naming `where` otherwise."""
    if isinstance(value, bool) or value is None:
        raise DataError(f"{where}: expected a number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: expected a number, got {value!r}.") from None
    if not np.isfinite(number):
        raise DataError(f"{where}: expected a finite number, got {value!r}.")
    return number


def label_id(label: str, label2id: dict[str, int], task) -> int:
    try:
        return label2id[label]
    except KeyError:
        raise DataError(f"task {task.name!r}: label {label!r} is not in label2id {sorted(label2id)}.") from None


def _b_to_i_ids(label2id: dict[str, int]) -> dict[int, int]:
    """Maps each label id to the id of its `I-` version (itself when it is not a `B-` label or has no `I-`)."""
    mapping = {}
    for label, index in label2id.items():
        inside = "I-" + label[2:] if label.startswith("B-") else label
        mapping[index] = label2id.get(inside, index)
    return mapping


def _sort_key(labels: list[str]):
    if all(label.lstrip("-").isdigit() for label in labels):
        return lambda label: (int(label), label)
    return lambda label: label


def classification_metrics(predictions: np.ndarray, label_ids: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 of the argmax of `predictions` `[n, num_labels]` against `label_ids` `[n]`."""
    from sklearn.metrics import accuracy_score, f1_score

    predicted = np.asarray(predictions).argmax(-1)
    keep = label_ids != IGNORE_INDEX
    return {
        "accuracy": float(accuracy_score(label_ids[keep], predicted[keep])),
        "macro_f1": float(f1_score(label_ids[keep], predicted[keep], average="macro", labels=list(range(num_labels)),
                                   zero_division=0)),
    }


def correlations(predicted: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlations (as sentence-transformers' `EmbeddingSimilarityEvaluator` computes them)."""
    from scipy.stats import pearsonr, spearmanr

    if len(predicted) < 2 or np.std(predicted) == 0 or np.std(gold) == 0:
        return {"pearson": 0.0, "spearman": 0.0}
    return {"pearson": float(pearsonr(gold, predicted)[0]), "spearman": float(spearmanr(gold, predicted)[0])}


TASK_DATA: dict[str, TaskData] = {}


def register_task_data(task_data: TaskData) -> TaskData:
    """Make `task_data` the data side of the task type `task_data.type_name`."""
    TASK_DATA[task_data.type_name] = task_data
    return task_data


for _data in (SequenceClassificationData(), TokenClassificationData(), PairClassificationData(),
              MultiLabelClassificationData(), RegressionData(), SentenceSimilarityData()):
    register_task_data(_data)


def get_task_data(type_name: str) -> TaskData:
    if type_name not in TASK_DATA:
        raise DataError(f"Unknown task type {type_name!r}; valid types are {list(TASK_DATA)}."
                        + suggest(str(type_name), list(TASK_DATA)))
    return TASK_DATA[type_name]


class TaskMetrics:
    """The `compute_metrics` of `MultiTaskTrainer`: called as `(EvalPrediction, task_name)`, returns fractions.

    Built-in metrics come from each task type. A task listed in `metric_modules` (task name -> an `evaluate` module
    path or Hub id) is scored by that module instead, loaded once with `evaluate.load`: a local path needs no network.
    The module's `compute(predictions=..., references=...)` receives them decoded by the task type: class ids
    (sequence and pair classification), lists of tag names per sentence (token classification), multi-hot rows
    (multi-label, thresholded), or floats (regression, similarity). Numbers it returns are reported as they are.
    """

    def __init__(self, tasks: list[dict], metric_modules: dict[str, str] | None = None):
        self.tasks = {task["name"]: task for task in tasks}
        self.metric_modules = dict(metric_modules or {})
        self._loaded: dict[str, Any] = {}

    def __call__(self, prediction, task_name: str) -> dict[str, float]:
        task = self.tasks[task_name]
        data = get_task_data(task["type"])
        predictions = prediction.predictions
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        predictions, label_ids = np.asarray(predictions), np.asarray(prediction.label_ids)
        if task_name not in self.metric_modules:
            return data.metrics(task, predictions, label_ids)
        predicted, references = data.decode(task, predictions, label_ids)
        result = self.module(task_name).compute(predictions=predicted, references=references)
        return {key: float(value) for key, value in result.items() if isinstance(value, (int, float, np.number))}

    def module(self, task_name: str):
        if task_name not in self._loaded:
            import evaluate

            source = self.metric_modules[task_name]
            try:
                self._loaded[task_name] = evaluate.load(source)
            except Exception as error:  # noqa: BLE001 - re-raised as bad input, naming the task and module
                raise DataError(f"task {task_name!r}: cannot load the metric {source!r}: {error}") from error
        return self._loaded[task_name]


def collate_task(type_name: str, features: list[dict[str, Any]], tokenizer: Any,
                 pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Pad one single-task batch of the given type (features without `task`)."""
    return get_task_data(type_name).collate(features, tokenizer, pad_to_multiple_of)


__all__ = ["TaskData", "TASK_DATA", "register_task_data", "get_task_data", "TaskMetrics", "collate_task",
           "label_to_str", "label_to_float", "classification_metrics", "correlations"]
