"""The retrieval task's training step: in-batch negatives ranking, Matryoshka widths, several processes, caching.

For a batch of (anchor, positive[, hard negatives]) rows, every anchor is scored against every candidate of the
batch: all positives, then the hard negatives column by column (sentence-transformers' order). The loss is
cross-entropy over `scale x cosine` with the anchor's own positive as the target (`MultipleNegativesRankingLoss`);
`symmetric` averages it with the same loss from each positive over all anchors. A candidate with the same tokens as
an anchor's positive (the same answer twice in a batch) is not counted as that anchor's negative. With
`matryoshka_dims`, the loss is summed over the embedding's prefixes (`MatryoshkaLoss`).

Several processes: embeddings are gathered across ranks (with gradients), so every rank's positives are negatives
for all; each rank's loss covers its own anchors, and DDP's gradient mean makes the update the single-process one on
the concatenated batch. `mini_batch_size` caches gradients (Gao et al., 2021; `CachedMultipleNegativesRankingLoss`):
embeddings are computed a mini-batch at a time without a graph, the loss's gradient with respect to them is kept,
and the backward pass re-runs each mini-batch (replaying its dropout) and pushes that gradient through it; so a large
batch trains in the memory of a mini-batch, with the same loss and gradients.

This file travels with saved models and imports only torch and its siblings.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

try:
    from .tasks_mtl import embedding_dims
except ImportError:  # imported as a top-level module
    from tasks_mtl import embedding_dims

Inputs = dict[str, torch.Tensor]


def ranking_loss(task: dict, scores: torch.Tensor, targets: torch.Tensor, backward_scores: torch.Tensor | None = None,
                 label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of each anchor's scaled cosines `[anchors, candidates]` against its positive's column
    (`targets`); with `backward_scores` `[positives, anchors]` (symmetric), the mean of both directions."""
    loss = nn.functional.cross_entropy(scores.float(), targets, label_smoothing=label_smoothing)
    if backward_scores is None:
        return loss
    return (loss + nn.functional.cross_entropy(backward_scores.float(), targets, label_smoothing=label_smoothing)) / 2


def row_keys(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """One int64 key per row of token ids (padding ignored): equal texts give equal keys."""
    ids = input_ids.long() if attention_mask is None else input_ids.long() * attention_mask.long()
    weights = torch.arange(1, ids.shape[1] + 1, device=ids.device, dtype=torch.long)
    return (ids * 1_000_003 + 7) @ (weights * 2_654_435_761 % (1 << 31)) + (ids != 0).sum(-1)


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` concatenated along dim 0 (with gradients), or `tensor` itself in one process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    if torch.distributed.get_world_size() == 1:
        return tensor
    import torch.distributed.nn.functional as distributed

    return torch.cat(distributed.all_gather(tensor), dim=0)


def rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


class RandomState:
    """The CPU (and CUDA) random state at one moment, to replay a mini-batch's dropout exactly."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() \
            else None

    def __enter__(self):
        self.fork = torch.random.fork_rng(devices=range(torch.cuda.device_count()) if self.cuda else [])
        self.fork.__enter__()
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state_all(self.cuda)
        return self

    def __exit__(self, *exc):
        return self.fork.__exit__(*exc)


def ranking_scores(task: dict, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None,
                   keys: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss (summed over the Matryoshka widths) and the full-width scores `[anchors, candidates]` of one batch
    (local anchors `[b, d]`, positives `[b, d]`, negatives `[k * b, d]` column-major or None)."""
    anchor_keys, positive_keys, negative_keys = keys
    all_anchors, all_positives = gather(anchors), gather(positives)
    candidates, candidate_keys = all_positives, gather(positive_keys)
    if negatives is not None:
        candidates = torch.cat([candidates, gather(negatives)])
        candidate_keys = torch.cat([candidate_keys, gather(negative_keys)])
    targets = torch.arange(len(anchors), device=anchors.device) + rank() * len(anchors)
    # A candidate equal to an anchor's positive (not the positive itself) is no negative of that anchor, nor is
    # the positive of another row with the same anchor (one question, two correct answers in a batch).
    all_anchor_keys = gather(anchor_keys)
    duplicate = candidate_keys[None, :] == positive_keys[:, None]
    duplicate[:, :len(all_positives)] |= all_anchor_keys[None, :] == anchor_keys[:, None]
    duplicate[torch.arange(len(anchors)), targets] = False
    same_anchor = None
    if task.get("symmetric"):
        # Backwards each positive ranks the anchors: an anchor equal to its own, or whose positive equals it, is
        # no negative of it either.
        same_anchor = (all_anchor_keys[None, :] == anchor_keys[:, None]) | \
            (gather(positive_keys)[None, :] == positive_keys[:, None])
        same_anchor[torch.arange(len(anchors)), targets] = False
    scale = float(task.get("scale", 20.0))
    loss, full = anchors.new_zeros(()), None
    for width in embedding_dims(task, anchors.shape[-1]):
        a = nn.functional.normalize(anchors[:, :width], dim=-1)
        scores = a @ nn.functional.normalize(candidates[:, :width], dim=-1).T * scale
        scores = scores.masked_fill(duplicate, float("-inf"))
        backward = None
        if same_anchor is not None:
            p = nn.functional.normalize(positives[:, :width], dim=-1)
            backward = (p @ nn.functional.normalize(all_anchors[:, :width], dim=-1).T * scale).masked_fill(
                same_anchor, float("-inf"))
        loss = loss + ranking_loss(task, scores, targets, backward)
        full = scores if full is None else full
    return loss, full


def ranking_step(task: dict, embed: Callable[[Inputs], torch.Tensor], anchors: Inputs, positives: Inputs,
                 negatives: Inputs | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(loss, scores)` of one batch; `embed(inputs)` gives pooled embeddings `[rows, hidden]`. With the task's
    `mini_batch_size`, the gradient-cached step (the returned loss carries the cached backward). Inputs whose
    `input_ids` are None (no hard negatives) are left out."""
    anchors, positives, negatives = (
        {k: v for k, v in part.items() if v is not None} if part is not None and part.get("input_ids") is not None
        else None for part in (anchors, positives, negatives))
    keys = (row_keys(anchors["input_ids"], anchors.get("attention_mask")),
            row_keys(positives["input_ids"], positives.get("attention_mask")),
            row_keys(negatives["input_ids"], negatives.get("attention_mask")) if negatives is not None else None)
    size = task.get("mini_batch_size")
    if not size or not torch.is_grad_enabled():
        embedded = [embed(part) if part is not None else None for part in (anchors, positives, negatives)]
        return ranking_scores(task, *embedded, keys)
    if torch.distributed.is_available() and torch.distributed.is_initialized() and \
            torch.distributed.get_world_size() > 1:
        raise ValueError(f"Task {task['name']!r}: `mini_batch_size` (gradient caching) runs in one process only; "
                         "leave it out under several processes (the batch is gathered across them instead).")
    parts = [part for part in (anchors, positives, negatives) if part is not None]
    chunks, states, cached = [], [], []
    with torch.no_grad():
        for part in parts:
            rows = part["input_ids"].shape[0]
            for start in range(0, rows, size):
                chunk = {key: value[start : start + size] for key, value in part.items()}
                states.append(RandomState())
                chunks.append(chunk)
                cached.append(embed(chunk))
    leaves = [piece.detach().requires_grad_() for piece in cached]
    splits, position = [], 0
    for part in parts:
        count = -(-part["input_ids"].shape[0] // size)
        splits.append(torch.cat(leaves[position : position + count]))
        position += count
    with torch.enable_grad():
        loss, scores = ranking_scores(task, splits[0], splits[1], splits[2] if len(splits) > 2 else None, keys)
        gradients = torch.autograd.grad(loss, leaves)

    def replay(grad_output: torch.Tensor) -> None:
        with torch.enable_grad():
            for chunk, state, gradient in zip(chunks, states, gradients):
                with state:
                    torch.autograd.backward(embed(chunk), gradient * grad_output)

    surrogate = loss.detach().requires_grad_()
    surrogate.register_hook(replay)
    return surrogate, scores.detach()


__all__ = ["ranking_loss", "ranking_step", "ranking_scores", "row_keys", "RandomState"]
