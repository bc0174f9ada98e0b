"""Optimizer parameter groups and freezing (`mtl_st.training.param_groups`): layer-wise learning rates read from
`MultiTaskModel.layer_groups()`, the head rate, weight decay, wrapped models; frozen encoders and heads, and what the
trainer does with a task that has nothing left to train."""

from __future__ import annotations

import logging
import re
from collections import Counter

import pytest
import torch
from torch import nn

from mtl_st.training.param_groups import parameter_groups
from tests.utils import make_args, make_trainer, snapshot, trainable_model


# ----------------------------------------------------------------------------- optimizer groups
def group_of(optimizer) -> dict[int, dict]:
    """id(parameter) -> its param group; fails if a parameter sits in two groups."""
    owner = {}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            assert id(parameter) not in owner, "a parameter is in two optimizer groups"
            owner[id(parameter)] = group
    return owner


def norm_parameter_names(model) -> set[str]:
    """Names of LayerNorm parameters (by module type or name), as weight decay must skip them."""
    names = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, nn.LayerNorm) or re.search(r"layer_?norm", module_name.split(".")[-1], re.I)
        if is_norm:
            names.update(f"{module_name}.{name}" for name, _ in module.named_parameters(recurse=False))
    return names


LAYER_PREFIX = {"bert": "encoder.encoder.layer.", "distilbert": "encoder.transformer.layer.",
                "deberta-v2": "encoder.encoder.layer."}


@pytest.mark.parametrize("family", ["bert", "distilbert", "deberta-v2"])
def test_optimizer_groups_layerwise_decay_head_rate_and_weight_decay(family, tokenizer, tmp_path):
    model = trainable_model(family)
    args = make_args(tmp_path, learning_rate=1e-3, layerwise_lr_decay=0.5, head_learning_rate=7e-3, weight_decay=0.01)
    trainer = make_trainer(model, args, tokenizer)
    trainer.create_optimizer()
    owner = group_of(trainer.optimizer)
    norms = norm_parameter_names(model)
    assert norms, "the encoder has LayerNorms"

    named = dict(model.named_parameters())
    assert set(owner) == {id(p) for p in named.values() if p.requires_grad}, "every trainable parameter in one group"
    seen = Counter()
    for name, parameter in named.items():
        group = owner[id(parameter)]
        if name.startswith("heads."):
            expected_lr, kind = 7e-3, "head"
        elif name.startswith(LAYER_PREFIX[family]):
            layer = int(name[len(LAYER_PREFIX[family]):].split(".")[0])
            expected_lr, kind = {1: 1e-3, 0: 5e-4}[layer], f"layer{layer}"
        elif name.startswith("encoder.embeddings.") or "rel_embeddings" in name:
            expected_lr, kind = 2.5e-4, "embeddings"
        else:
            continue  # e.g. DeBERTa's encoder-level LayerNorm: no rule in DESIGN.md
        seen[kind] += 1
        assert group["lr"] == pytest.approx(expected_lr, rel=1e-12), name
        if name.endswith("bias") or name in norms:
            assert group["weight_decay"] == 0.0, name
        else:
            assert group["weight_decay"] == 0.01, name
    assert set(seen) == {"head", "layer0", "layer1", "embeddings"}
    if family == "deberta-v2":
        assert any("rel_embeddings" in name for name in named)


def test_parameter_groups_leave_frozen_parameters_out():
    model = trainable_model()
    for parameter in model.encoder.parameters():
        parameter.requires_grad_(False)
    groups = parameter_groups(model, learning_rate=1e-3, layerwise_lr_decay=0.5, head_learning_rate=7e-3)
    in_groups = {id(p) for group in groups for p in group["params"]}
    assert in_groups == {id(p) for p in model.heads.parameters()}
    assert {group["lr"] for group in groups} == {7e-3}


class Wrapper(nn.Module):
    """Stands in for DDP / FSDP / torch.compile: the model's parameter names get a prefix."""

    def __init__(self, attribute: str, inner: nn.Module):
        super().__init__()
        setattr(self, attribute, inner)


@pytest.mark.parametrize("attribute", ["module", "_fsdp_wrapped_module", "_orig_mod"])
def test_parameter_groups_of_a_wrapped_model(attribute):
    model = trainable_model()
    kwargs = dict(learning_rate=1e-3, layerwise_lr_decay=0.5, head_learning_rate=7e-3)
    plain = {id(p): g["lr"] for g in parameter_groups(model, **kwargs) for p in g["params"]}
    wrapped = {id(p): g["lr"] for g in parameter_groups(Wrapper(attribute, model), **kwargs) for p in g["params"]}
    assert wrapped == plain
    assert sorted(set(plain.values())) == pytest.approx([2.5e-4, 5e-4, 1e-3, 7e-3])


# ----------------------------------------------------------------------------- freezing
def train_few_steps(model, tmp_path, tokenizer, data, steps: int = 4, **kwargs):
    args = make_args(tmp_path, max_steps=steps, task_sampling="round_robin", learning_rate=1e-2, **kwargs)
    trainer = make_trainer(model, args, tokenizer, train=data)
    before = snapshot(model)
    trainer.train()
    return trainer, before, snapshot(model)


def changed(before, after, prefix: str) -> list[bool]:
    return [not torch.equal(before[name], after[name]) for name in before if name.startswith(prefix)]


def test_freeze_encoder_keeps_encoder_bit_identical(tokenizer, data, tmp_path):
    model = trainable_model()
    trainer, before, after = train_few_steps(model, tmp_path, tokenizer, data, freeze_encoder=True)
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in in_optimizer for p in model.encoder.parameters())
    assert not any(changed(before, after, "encoder."))
    assert all(changed(before, after, "heads.sentiment.")) and all(changed(before, after, "heads.ner."))


def test_frozen_task_head_is_bit_identical(tokenizer, data, tmp_path):
    model = trainable_model()
    trainer, before, after = train_few_steps(model, tmp_path, tokenizer, data, frozen_tasks=["sentiment"])
    assert not any(changed(before, after, "heads.sentiment."))
    assert all(changed(before, after, "heads.ner."))
    assert any(changed(before, after, "encoder."))
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in in_optimizer for p in model.heads["sentiment"].parameters())


def test_frozen_encoder_and_task_leaves_task_out_of_sampling(tokenizer, data, tmp_path, caplog):
    model = trainable_model()
    with caplog.at_level(logging.WARNING):
        trainer, before, after = train_few_steps(
            model, tmp_path, tokenizer, data, freeze_encoder=True, frozen_tasks=["sentiment"]
        )
    assert "sentiment" in caplog.text and "not trained" in caplog.text
    assert trainer.train_dataset.task_names == ["ner"]
    assert trainer.state.global_step == 4
    assert {batch["task"] for batch in trainer.get_train_dataloader()} == {"ner"}
    assert not any(changed(before, after, "encoder.")) and not any(changed(before, after, "heads.sentiment."))
    assert all(changed(before, after, "heads.ner."))


def test_everything_frozen_is_an_error(tokenizer, data, tmp_path):
    args = make_args(tmp_path, freeze_encoder=True, frozen_tasks=["sentiment", "ner"])
    with pytest.raises(ValueError, match="nothing to train"):
        make_trainer(trainable_model(), args, tokenizer, train=data)
