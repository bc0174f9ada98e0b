"""Optimizer parameter groups of a `MultiTaskModel`: layer-wise learning-rate decay, a head rate, no weight decay for
biases and norms, frozen parameters left out; and freezing itself.

The layers come from the model's own declaration (`MultiTaskModel.layer_groups`, as timm models declare their layer
groups), matched to the optimizer's parameters by identity, so a wrapped model (DDP, `torch.compile`, a PEFT model
whose adapters sit inside the layers) gets the same groups as the plain one.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)


def declaring_model(model: nn.Module) -> nn.Module:
    """The `MultiTaskModel` inside `model` (itself, or the module a DDP / compile / PEFT wrapper holds)."""
    for module in model.modules():
        if callable(getattr(module, "layer_groups", None)):
            return module
    raise TypeError(f"{type(model).__name__} holds no model that declares `layer_groups()` (a MultiTaskModel).")


def parameter_groups(model: nn.Module, learning_rate: float, layerwise_lr_decay: float = 1.0,
                     head_learning_rate: float | None = None, weight_decay: float = 0.0,
                     decay_names: set[str] | None = None) -> list[dict[str, Any]]:
    """Optimizer parameter groups (frozen parameters left out).

    `decay_names` is the set of `model.named_parameters()` names that get weight decay (as
    `Trainer.get_decay_parameter_names` returns it; default: all); every other parameter (biases, norms) gets none.
    Rates: encoder layer i of L (0 = bottom) trains at `learning_rate * decay**(L-1-i)`; the embeddings (and position
    tables such as DeBERTa's relative embeddings) at `learning_rate * decay**L`; the rest of the encoder (e.g. a final
    norm) at the top layer's rate; every head at `head_learning_rate` (default `learning_rate`). Each group carries a
    readable `name`; the top layer's groups come first, so the `learning_rate` that the Trainer logs (group 0's) is
    the configured rate's schedule.
    """
    declared = declaring_model(model).layer_groups()
    num_layers = len(declared["layers"])
    head_lr = learning_rate if head_learning_rate is None else head_learning_rate
    place: dict[int, tuple[str, float]] = {}
    for parameter in declared["embeddings"]:
        place[id(parameter)] = ("encoder.embeddings", learning_rate * layerwise_lr_decay**num_layers)
    for index, layer in enumerate(declared["layers"]):
        for parameter in layer:
            place[id(parameter)] = (f"encoder.layer.{index}", learning_rate * layerwise_lr_decay ** (num_layers - 1 - index))
    for parameter in declared["encoder_other"]:
        place[id(parameter)] = ("encoder.other", learning_rate)
    for parameter in declared["heads"]:
        place[id(parameter)] = ("heads", head_lr)

    names = {id(p): name for name, p in model.named_parameters()}
    decay_names = set(names.values()) if decay_names is None else decay_names
    buckets: dict[tuple[str, float, float], list] = {}
    for parameter in (p for p in model.parameters() if p.requires_grad):
        key, lr = place.get(id(parameter), ("other", learning_rate))
        if key == "other":
            logger.warning(f"Parameter {names.get(id(parameter))!r} is in no declared layer group; it trains at "
                           f"learning_rate {learning_rate}.")
        decay = weight_decay if names.get(id(parameter)) in decay_names else 0.0
        buckets.setdefault((key, lr, decay), []).append(parameter)
    groups = [
        {"params": params, "lr": lr, "weight_decay": decay, "name": f"{key}{'' if decay else '.no_decay'}"}
        for (key, lr, decay), params in buckets.items()
    ]
    top = f"encoder.layer.{num_layers - 1}"
    return sorted(groups, key=lambda group: not group["name"].startswith(top))


def apply_freezing(model: nn.Module, freeze_encoder: bool, frozen_tasks: list[str]) -> None:
    """Turn off gradients for the encoder and/or the named heads (the optimizer then leaves them out)."""
    if freeze_encoder:
        for parameter in model.encoder.parameters():
            parameter.requires_grad_(False)
    for name in frozen_tasks:
        if name not in model.heads:
            raise ValueError(f"frozen_tasks names {name!r}, which has no head to freeze (a sentence_similarity task).")
        for parameter in model.heads[name].parameters():
            parameter.requires_grad_(False)


__all__ = ["parameter_groups", "apply_freezing", "declaring_model"]
