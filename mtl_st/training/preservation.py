"""Embedding preservation: keep `encode()`'s embeddings close to the starting encoder's while the heads train.

Training task heads moves the whole shared encoder, and the sentence embeddings pay for it (the quickstart's
trained model fell from 86.72 to 73.78 STS-B dev cosine Spearman x100). `MultiTaskTrainer` can hold the encoder
near where it started, chosen with `embedding_preservation` (YAML / command line) and scaled by
`preservation_weight`:

- `distill`: every training batch also runs a frozen copy of the starting encoder + pooling (the *teacher*,
  eval mode, no gradients) on the same input, and adds `weight * mean_i ||s_i - t_i||^2 / ||t_i||^2` between the
  student's pooled embedding `s_i` and the teacher's `t_i` (a squared error relative to the teacher's norm, so one
  weight fits any encoder's scale; for small changes it is about `2 * (1 - cos)` plus the change of length).
  Costs one extra encoder forward per batch (no backward) and one copy of the encoder in memory.
- `l2sp`: after every optimizer step each encoder weight is pulled back towards its starting value,
  `theta <- theta - min(1, lr * weight) * (theta - theta0)` with its parameter group's scheduled `lr` (L2-SP,
  applied decoupled as AdamW applies weight decay, so Adam's normalisation cannot cancel it). Costs one copy of
  the encoder's weights and an element-wise update per step.
- `none`: no preservation.

The anchor (teacher / starting weights) is a copy taken when the trainer is built, before any checkpoint is
loaded, so a resumed run is anchored to the same starting encoder. It lives on the trainer, never on the model:
it is not saved by `save_model` or in checkpoints, not in the optimizer, and not wrapped by DDP. Every rank builds
the same one (each starts from the same weights).

`mtl_st.evaluation.sts` scores the embeddings on the STS Benchmark.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

PRESERVATION_METHODS = ("none", "distill", "l2sp")

# Chosen by measurement (bench/embeddings.py, BENCHMARKS.md "Embedding preservation").
DEFAULT_WEIGHTS = {"none": 0.0, "distill": 10.0, "l2sp": 1000.0}


def check_preservation(method: str, weight: float | None) -> float:
    """Validate `embedding_preservation` / `preservation_weight`; returns the weight (the method's default if None)."""
    if method not in PRESERVATION_METHODS:
        raise ValueError(f"embedding_preservation must be one of {', '.join(PRESERVATION_METHODS)}; got {method!r}.")
    if weight is None:
        return DEFAULT_WEIGHTS[method]
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise ValueError(f"preservation_weight must be a number, got {weight!r}.") from None
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"preservation_weight must be a finite number >= 0, got {weight}.")
    return weight


class EncoderAnchor:
    """A frozen copy of a `MultiTaskModel`'s starting encoder and pooling, kept outside the model.

    It is a plain object, not an `nn.Module` attribute of the model, so neither `state_dict`, `save_pretrained`,
    the optimizer nor DDP ever see it.
    """

    def __init__(self, model: nn.Module, method: str, weight: float):
        self.method = method
        self.weight = weight
        self.encoder = copy.deepcopy(model.encoder).eval().requires_grad_(False)
        self.pooling = copy.deepcopy(model.pooling).eval()
        self._encoder_takes_token_type_ids = getattr(model, "_encoder_takes_token_type_ids", False)
        self._start = {name: p for name, p in self.encoder.named_parameters()}
        # Starting weights by the identity of the live parameter they anchor (survives DDP / compile wrapping).
        self._start_by_param = {id(p): self._start[name] for name, p in model.encoder.named_parameters()}
        self._live = dict(model.encoder.named_parameters())

    # ------------------------------------------------------------------ distill
    @torch.no_grad()
    def teacher_embeddings(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The starting encoder's pooled (un-normalised) embeddings for a batch's `input_ids` / `attention_mask`."""
        input_ids = inputs["input_ids"]
        attention_mask = inputs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self._follow(input_ids.device)
        encoder_inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if inputs.get("token_type_ids") is not None and self._encoder_takes_token_type_ids:
            encoder_inputs["token_type_ids"] = inputs["token_type_ids"]
        states = self.encoder(**encoder_inputs, return_dict=True).last_hidden_state
        return self.pooling(states, attention_mask)

    def distill_loss(self, student: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """`mean_i ||s_i - t_i||^2 / ||t_i||^2` between the student's pooled embeddings and the teacher's (unweighted)."""
        teacher = self.teacher_embeddings(inputs).to(student.dtype)
        error = (student.float() - teacher.float()).pow(2).sum(-1)
        return (error / teacher.float().pow(2).sum(-1).clamp(min=1e-12)).mean()

    def _follow(self, device: torch.device) -> None:
        """Keep the teacher on the batch's device (the Trainer may place the model after the anchor was taken)."""
        current = next(self.encoder.parameters()).device
        if current != device:
            self.encoder.to(device)
            self._start = dict(self.encoder.named_parameters())
            self._start_by_param = {id(p): self._start[name] for name, p in self._live.items()}

    # ------------------------------------------------------------------ l2sp
    @torch.no_grad()
    def pull(self, optimizer: torch.optim.Optimizer) -> None:
        """L2-SP, decoupled: move every anchored parameter `min(1, lr * weight)` of the way back to its start."""
        if self.weight == 0:
            return
        for group in optimizer.param_groups:
            rate = min(1.0, group["lr"] * self.weight)
            if rate <= 0:
                continue
            for parameter in group["params"]:
                start = self._start_by_param.get(id(parameter))
                if start is not None:
                    if start.device != parameter.device:
                        self._follow(parameter.device)
                        start = self._start_by_param[id(parameter)]
                    parameter.lerp_(start.to(parameter.dtype), rate)

    def l2sp_step_hook(self):
        """An `Optimizer.register_step_post_hook` callback that applies `pull` after every real optimizer step."""

        def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            self.pull(optimizer)

        return hook

    # ------------------------------------------------------------------ monitoring
    @torch.no_grad()
    def drift(self) -> float:
        """Euclidean distance between the live encoder's weights and the starting ones (all parameters together)."""
        total = 0.0
        for name, parameter in self._live.items():
            start = self._start[name]
            total += float((parameter.detach().float() - start.to(parameter.device).float()).pow(2).sum())
        return math.sqrt(total)


__all__ = ["PRESERVATION_METHODS", "DEFAULT_WEIGHTS", "EncoderAnchor", "check_preservation"]
