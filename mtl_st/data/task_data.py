"""Task types, data side: columns, row checks, label inference, tokenisation, padding and metrics.

One class per task type, registered by the type's name in `TASK_DATA` (the type's spec is in `tasks_mtl.py`, its
loss in `losses_mtl.py`). Every type reads its rows into normalised columns:

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
from typing import Any, ClassVar

import numpy as np
import torch
from datasets import Dataset, Features, List, Value
from transformers import DataCollatorWithPadding

from mtl_st.data.labels import label_id, label_to_float, label_to_str, sort_key
from mtl_st.data.windows import warn_truncated
from mtl_st.errors import DataError, suggest
from mtl_st.evaluation.metrics import classification_metrics, correlations
from postprocess_mtl import sigmoid
from tasks_mtl import IGNORE_INDEX, get_task_type

logger = logging.getLogger(__name__)


class TaskData:
    """Base class of a task type's data side. `roles` maps each normalised column to its default source column."""

    type_name: ClassVar[str]
    roles: ClassVar[dict[str, str]] = {"text": "text", "label": "label"}
    features: ClassVar[Features]
    reads_conll: ClassVar[bool] = False

    @property
    def spec(self):
        """The type's spec (`tasks_mtl`): whether its labels are names, whether it has a head, its metric names."""
        return get_task_type(self.type_name)

    @property
    def has_label_names(self) -> bool:
        """The label column holds names from a label set (not numbers)."""
        return self.spec.needs_labels

    def item_counts(self, labels: list) -> list[int]:
        """The labelled items of each tokenized row (what a loss averages over): one per row; token tasks count the
        positions they score. Exact gradient accumulation weighs batches by these."""
        return [1] * len(labels)

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
        columns = {name: [row.get(name) for row in rows] for name in self.features}
        return Dataset.from_dict(columns, features=self.features)

    # ------------------------------------------------------------------ labels
    def infer_labels(self, task, train: Dataset) -> list[str] | None:
        """The label set from the whole train split (sorted; numerically when every label is an integer)."""
        seen = set(train["label"])
        return sorted(seen, key=sort_key(list(seen)))

    def split_labels(self, split: Dataset) -> list[list[str]]:
        """Every row's label names, for `check_labels`."""
        return [[value] for value in split["label"]]

    # ------------------------------------------------------------------ tokenisation and padding
    def tokenize(self, dataset: Dataset, task, tokenizer: Any, label2id: dict[str, int], max_length: int,
                 split: str = "train") -> Dataset:
        """Tokenize one normalised split, unpadded: `input_ids`, `attention_mask` (+ `token_type_ids`), `labels`.
        `split` names it (a type may tokenize its training rows differently from its evaluation rows)."""

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
    def metric_names(self, task) -> list[str]:
        """The metric keys (without `loss`) this type reports for a task (`TaskDataArguments`): its spec's names."""
        return list(self.spec.metric_names)

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
        return sorted(seen, key=sort_key(list(seen)))

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
        probabilities = sigmoid(predictions)
        return (probabilities >= task.get("threshold", 0.5)).astype(int).tolist(), label_ids.astype(int).tolist()


class RegressionData(TaskData):
    """`label_column` holds a number per row."""

    type_name = "regression"
    features = Features({"text": Value("string"), "label": Value("float64")})
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

    def metric_names(self, task) -> list[str]:
        names = list(self.spec.metric_names)
        return names + [f"{n}_dim{d}" for d in sorted(task.matryoshka_dims or [], reverse=True) for n in names]

    def metrics(self, task: dict, predictions: np.ndarray, label_ids: np.ndarray) -> dict[str, float]:
        """Cosine Spearman and Pearson; with Matryoshka widths (one column of cosines each, the full width first),
        each width's as `<metric>_dim<d>`."""
        predictions = np.asarray(predictions, dtype=np.float64)
        if predictions.ndim == 1:
            predicted, gold = self.decode(task, predictions, label_ids)
            return correlations(np.asarray(predicted), np.asarray(gold))
        dims = [d for d in sorted(task.get("matryoshka_dims") or [], reverse=True)]
        widths = [None] + dims[-(predictions.shape[1] - 1):] if predictions.shape[1] > 1 else [None]
        results = {}
        for column, width in enumerate(widths):
            scores = correlations(predictions[:, column], np.asarray(label_ids, dtype=np.float64).reshape(-1))
            results.update({f"{k}{'' if width is None else f'_dim{width}'}": v for k, v in scores.items()})
        return results


TASK_DATA: dict[str, TaskData] = {}


def register_task_data(task_data: TaskData) -> TaskData:
    """Make `task_data` the data side of the task type `task_data.type_name`."""
    TASK_DATA[task_data.type_name] = task_data
    return task_data


for _data in (SequenceClassificationData(), PairClassificationData(),
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


__all__ = ["TaskData", "TASK_DATA", "register_task_data", "get_task_data", "TaskMetrics", "collate_task"]

# The token and retrieval types' data sides live in their own modules (each registers itself there).
from mtl_st.data import retrieval as _retrieval  # noqa: E402,F401
from mtl_st.data import tokens as _tokens  # noqa: E402,F401
