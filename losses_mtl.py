"""Model-side losses, one per task type: `LOSSES[type](task, logits, labels, label_smoothing=0.0)` -> a scalar.

`MultiTaskModel.task_loss` dispatches through `LOSSES`; the task specs (`tasks_mtl.py`) say what each type reads and
answers, the data side (`mtl_st/data/task_data.py`) how its labels are made. A bad label (out of range, wrong shape)
is a `ValueError` naming the task.

| type | loss |
| --- | --- |
| `sequence_classification`, `token_classification`, `pair_classification` | cross-entropy (-100 ignored) |
| `multi_label_classification` | binary cross-entropy |
| `regression` | mean squared error |
| `sentence_similarity` | CoSENT on the cosine of the two sentences' embeddings |
| `retrieval` | in-batch negatives ranking (cross-entropy over scaled cosines), `ranking_mtl` |

This file travels with saved models, so it imports only torch and its sibling `tasks_mtl`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

try:
    from .ranking_mtl import ranking_loss
    from .tasks_mtl import IGNORE_INDEX
except ImportError:  # imported as a top-level module
    from ranking_mtl import ranking_loss
    from tasks_mtl import IGNORE_INDEX


def single_label_loss(task: dict, logits: torch.Tensor, labels: torch.Tensor,
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy over one label per row (or per token), `IGNORE_INDEX` left out, optionally label-smoothed."""
    num_labels = logits.shape[-1]
    check_shape(task, labels, logits.shape[:-1])
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
    return nn.functional.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX,
                                       label_smoothing=float(label_smoothing))


def multi_label_loss(task: dict, logits: torch.Tensor, labels: torch.Tensor,
                     label_smoothing: float = 0.0) -> torch.Tensor:
    """Binary cross-entropy over multi-hot rows `[batch, num_labels]`; label smoothing moves each target `eps / 2`
    towards the other class (`y * (1 - eps) + eps / 2`)."""
    check_shape(task, labels, logits.shape)
    labels = labels.to(logits.device).float()
    if ((labels != 0) & (labels != 1)).any():
        raise ValueError(f"Labels for task {task['name']!r} must be multi-hot rows of 0 and 1.")
    if label_smoothing:
        labels = labels * (1.0 - label_smoothing) + label_smoothing / 2
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)


def regression_loss(task: dict, logits: torch.Tensor, labels: torch.Tensor, **options) -> torch.Tensor:
    """Mean squared error of the head's one output against a float per row (label smoothing does not apply)."""
    predictions = logits.float().reshape(-1)
    check_shape(task, labels.reshape(-1), predictions.shape)
    return nn.functional.mse_loss(predictions, labels.to(logits.device).float().reshape(-1))


def similarity_loss(task: dict, logits: torch.Tensor, labels: torch.Tensor, **options) -> torch.Tensor:
    """CoSENT (Su, 2022; sentence-transformers' `CoSENTLoss`) of the pairs' cosines against their gold scores (label
    smoothing does not apply)."""
    check_shape(task, labels.reshape(-1), logits.reshape(-1).shape)
    return cosent_loss(logits.reshape(-1), labels.to(logits.device).reshape(-1), scale=float(task.get("scale", 20.0)))


def cosent_loss(cosines: torch.Tensor, scores: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT loss of `cosines` `[batch]` against gold `scores` `[batch]`: `log(1 + sum exp(scale*(cos_j - cos_i)))`
    over all ordered pairs with `scores[i] > scores[j]`. A batch with no such pair gives 0 (tied to the graph)."""
    cosines = cosines.float() * scale
    differences = cosines[None, :] - cosines[:, None]  # [i, j] = cos_j - cos_i
    ordered = scores.float()[:, None] > scores.float()[None, :]  # [i, j] = score_i > score_j
    differences = differences[ordered]
    zero = cosines.new_zeros(1)
    return torch.logsumexp(torch.cat([zero, differences]), dim=0) + cosines.sum() * 0.0


def check_shape(task: dict, labels: torch.Tensor, expected: torch.Size) -> None:
    if labels.shape != expected:
        raise ValueError(
            f"Labels for task {task['name']!r} have shape {tuple(labels.shape)}; expected {tuple(expected)}."
        )


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "retrieval": ranking_loss,  # on one batch's scores; the step around it (widths, ranks, caching) is ranking_mtl's
    "sequence_classification": single_label_loss,
    "token_classification": single_label_loss,
    "pair_classification": single_label_loss,
    "multi_label_classification": multi_label_loss,
    "regression": regression_loss,
    "sentence_similarity": similarity_loss,
}


def register_loss(type_name: str, loss: Callable[..., torch.Tensor]) -> None:
    """Make `loss` the model-side loss of the task type `type_name`."""
    LOSSES[type_name] = loss


__all__ = ["LOSSES", "register_loss", "cosent_loss", "single_label_loss", "multi_label_loss", "regression_loss",
           "similarity_loss"]
