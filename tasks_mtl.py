"""Task types, model side: what each kind of task validates, reads from the encoder, computes as loss and answers.

One class per task type, registered by name in `TASK_TYPES`. The data side of the same types (columns, reading,
label inference, tokenisation, metrics) lives in `task_data_mtl.py`. Adding a type means one class here, one there,
and a `register_task_type` call in each.

| type | head reads | head outputs | loss |
| --- | --- | --- | --- |
| `sequence_classification` | pooled vector | one per label | cross-entropy |
| `token_classification` | every token state | one per label | cross-entropy over labelled tokens |
| `pair_classification` | pooled vector of the jointly encoded pair | one per label | cross-entropy |
| `multi_label_classification` | pooled vector | one per label | binary cross-entropy |
| `regression` | pooled vector | 1 | mean squared error |
| `sentence_similarity` | no head: the two sentences' embeddings | (cosine) | CoSENT |

This file travels with saved models, so it imports only torch, numpy and its sibling `postprocess_mtl`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

try:
    from .postprocess_mtl import answer
except ImportError:  # imported as a top-level module
    from postprocess_mtl import answer

IGNORE_INDEX = -100
READS_POOLED, READS_TOKENS, READS_PAIR = "pooled", "tokens", "pair"


class TaskType:
    """Base class of a task type (model side). Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    reads: ClassVar[str] = READS_POOLED  # which encoder output the head reads
    has_head: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = True  # the config lists label names
    takes_pair: ClassVar[bool] = False  # the pipeline input is {"text", "text_pair"}
    pipeline_tag: ClassVar[str] = "text-classification"
    metric_names: ClassVar[tuple[str, ...]] = ()
    extra_fields: ClassVar[dict[str, Any]] = {}  # further config fields of this type, with their defaults

    def validate(self, task: dict) -> dict:
        """Check one config entry of this type; return it with labels as strings and defaults filled in."""
        name = task["name"]
        labels = task.get("labels")
        if self.needs_labels:
            if not labels or not isinstance(labels, (list, tuple)):
                raise ValueError(f"Task {name!r} has no labels: give it a non-empty `labels` list.")
            labels = [str(label) for label in labels]
            if len(set(labels)) != len(labels):
                raise ValueError(f"Task {name!r} lists a label twice: {labels}.")
            task["labels"] = labels
        elif labels:
            raise ValueError(f"Task {name!r} is a {self.name} task, which takes no `labels`; got {labels!r}.")
        else:
            task.pop("labels", None)
        allowed = {"name", "type", "labels", *self.extra_fields}
        unknown = set(task) - allowed
        if unknown:
            raise ValueError(
                f"Task {name!r} has unknown fields {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}."
            )
        for field, default in self.extra_fields.items():
            task.setdefault(field, default)
        return task

    def num_outputs(self, task: dict) -> int:
        return len(task["labels"])

    def loss(self, task: dict, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def num_items(self, labels: torch.Tensor) -> int:
        """The labelled items in a batch's labels (what a loss averages over)."""
        return int(labels.shape[0])

    def answer(self, task: dict, logits: np.ndarray, text: str, offsets: list, word_ids: list) -> Any:
        """The pipeline's answer for one text from this task's logits (numpy, no batch axis): `postprocess_mtl.ANSWERS`,
        torch-free, so that the ONNX runtime gives the same answers."""
        return answer(task, logits, text, offsets, word_ids)

    def card_line(self, task: dict) -> str:
        """This task's row in the model card's task table: `| name | type | labels |`."""
        labels = ", ".join(f"`{label}`" for label in task.get("labels", [])) or "—"
        return f"| {task['name']} | {task['type']} | {labels} |"


class _SingleLabel(TaskType):
    """Cross-entropy over one label per row (shared by sequence, token and pair classification)."""

    def loss(self, task: dict, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        num_labels = logits.shape[-1]
        _check_shape(task, labels, logits.shape[:-1])
        invalid = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_labels))
        if invalid.any():
            bad = sorted(set(labels[invalid].tolist()))
            raise ValueError(
                f"Labels for task {task['name']!r} must be in [0, {num_labels - 1}] (or {IGNORE_INDEX} to ignore); "
                f"got {bad}."
            )
        flat_logits = logits.reshape(-1, num_labels).float()
        flat_labels = labels.to(logits.device).reshape(-1).long()
        if not (flat_labels != IGNORE_INDEX).any():
            return flat_logits.sum() * 0.0  # every label ignored: a zero loss that still depends on the logits
        return nn.functional.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX)



class SequenceClassification(_SingleLabel):
    name = "sequence_classification"
    metric_names = ("accuracy", "macro_f1")


class PairClassification(_SingleLabel):
    name = "pair_classification"
    takes_pair = True
    metric_names = ("accuracy", "macro_f1")


class TokenClassification(_SingleLabel):
    name = "token_classification"
    reads = READS_TOKENS
    pipeline_tag = "token-classification"
    metric_names = ("precision", "recall", "f1")

    def validate(self, task: dict) -> dict:
        task = super().validate(task)
        for label in task["labels"]:
            if not (label == "O" or (len(label) > 2 and label[:2] in ("B-", "I-"))):
                raise ValueError(f"Task {task['name']!r}: label {label!r} is not a BIO tag (O, B-TYPE or I-TYPE).")
        return task

    def num_items(self, labels: torch.Tensor) -> int:
        return int((labels != IGNORE_INDEX).sum())



class MultiLabelClassification(TaskType):
    name = "multi_label_classification"
    metric_names = ("micro_f1", "macro_f1")
    extra_fields = {"threshold": 0.5}

    def validate(self, task: dict) -> dict:
        task = super().validate(task)
        threshold = task["threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
            raise ValueError(f"Task {task['name']!r}: `threshold` must be a number in (0, 1), got {threshold!r}.")
        task["threshold"] = float(threshold)
        return task

    def loss(self, task: dict, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_shape(task, labels, logits.shape)
        labels = labels.to(logits.device).float()
        if ((labels != 0) & (labels != 1)).any():
            raise ValueError(f"Labels for task {task['name']!r} must be multi-hot rows of 0 and 1.")
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)



class Regression(TaskType):
    name = "regression"
    needs_labels = False
    metric_names = ("pearson", "spearman", "mse")

    def num_outputs(self, task: dict) -> int:
        return 1

    def loss(self, task: dict, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        predictions = logits.float().reshape(-1)
        _check_shape(task, labels.reshape(-1), predictions.shape)
        return nn.functional.mse_loss(predictions, labels.to(logits.device).float().reshape(-1))



class SentenceSimilarity(TaskType):
    """No head: the task's "logits" are the cosine similarities of two sentences' embeddings, `[batch]`.

    Trained with CoSENT (Su, 2022; sentence-transformers' `CoSENTLoss`): for every two pairs i, j of the batch whose
    gold scores order them `s_i > s_j`, the loss pushes `cos_i` above `cos_j`:
    `log(1 + sum_{s_i > s_j} exp(scale * (cos_j - cos_i)))`, with `scale` 20.
    """

    name = "sentence_similarity"
    reads = READS_PAIR
    has_head = False
    needs_labels = False
    takes_pair = True
    pipeline_tag = "sentence-similarity"
    metric_names = ("spearman", "pearson")
    extra_fields = {"scale": 20.0}

    def num_outputs(self, task: dict) -> int:
        return 0

    def loss(self, task: dict, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_shape(task, labels.reshape(-1), logits.reshape(-1).shape)
        return cosent_loss(logits.reshape(-1), labels.to(logits.device).reshape(-1), scale=float(task["scale"]))



def cosent_loss(cosines: torch.Tensor, scores: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT loss of `cosines` `[batch]` against gold `scores` `[batch]`: `log(1 + sum exp(scale*(cos_j - cos_i)))`
    over all ordered pairs with `scores[i] > scores[j]`. A batch with no such pair gives 0 (tied to the graph)."""
    cosines = cosines.float() * scale
    differences = cosines[None, :] - cosines[:, None]  # [i, j] = cos_j - cos_i
    ordered = scores.float()[:, None] > scores.float()[None, :]  # [i, j] = score_i > score_j
    differences = differences[ordered]
    zero = cosines.new_zeros(1)
    return torch.logsumexp(torch.cat([zero, differences]), dim=0) + cosines.sum() * 0.0


def _check_shape(task: dict, labels: torch.Tensor, expected: torch.Size) -> None:
    if labels.shape != expected:
        raise ValueError(
            f"Labels for task {task['name']!r} have shape {tuple(labels.shape)}; expected {tuple(expected)}."
        )


TASK_TYPES: dict[str, TaskType] = {}


def register_task_type(task_type: TaskType) -> TaskType:
    """Make `task_type` available under `task_type.name` in configs and models."""
    TASK_TYPES[task_type.name] = task_type
    return task_type


for _type in (SequenceClassification(), TokenClassification(), PairClassification(), MultiLabelClassification(),
              Regression(), SentenceSimilarity()):
    register_task_type(_type)


def get_task_type(name: str) -> TaskType:
    """The registered task type `name`; `ValueError` listing the valid types otherwise."""
    if name not in TASK_TYPES:
        raise ValueError(f"Unknown task type {name!r}; valid types are {', '.join(TASK_TYPES)}.")
    return TASK_TYPES[name]


__all__ = ["TaskType", "TASK_TYPES", "register_task_type", "get_task_type", "cosent_loss", "IGNORE_INDEX"]
