"""Embedding preservation (`embedding_preservation: distill | l2sp`, `mtl_st.training.preservation`): real short runs
on tiny random encoders show the embeddings stay closer to the starting encoder's than without it; the anchor is
never saved nor optimised; resume, evaluation, logging and accumulation still work; bad values are refused by
name."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mtl_st.training.preservation import DEFAULT_WEIGHTS, EncoderAnchor
from tests.utils import make_args, make_trainer, ner_data, sentiment_data, trainable_model
from trainer_mtl import MultiTaskTrainingArguments

SENTENCES = ["good movie plot", "john smith went to paris", "awful ending dull story", "mary smith in rome",
             "bright music fine actor", "peter smith left london"]

# A high rate for a few dozen steps: without preservation the tiny encoder moves far (mean 1 - cos ~ 0.8).
SHORT_RUN = dict(learning_rate=5e-3, max_steps=24, logging_strategy="steps", logging_steps=8)


@pytest.fixture(scope="module")
def train_data(tokenizer):
    return {"sentiment": sentiment_data(tokenizer, 48), "ner": ner_data(tokenizer, 48)}


@pytest.fixture(scope="module")
def start():
    return trainable_model(dropout=False, seed=0)


def cosine_distance(model, reference: np.ndarray, tokenizer) -> float:
    """Mean 1 - cos between the model's embeddings of SENTENCES and `reference`'s."""
    embeddings = model.encode(SENTENCES, tokenizer=tokenizer, normalize=True)
    return float(np.mean(1.0 - (embeddings * reference).sum(-1)))


def train_copy(start, tmp_path, tokenizer, train_data, method: str, weight: float | None = None, **kwargs):
    model = copy.deepcopy(start)
    args = make_args(tmp_path, f"{method}-{weight}", embedding_preservation=method, preservation_weight=weight,
                     **{**SHORT_RUN, **kwargs})
    trainer = make_trainer(model, args, tokenizer, train=train_data)
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def unprotected(start, tokenizer, train_data, tmp_path_factory):
    trainer = train_copy(start, tmp_path_factory.mktemp("none"), tokenizer, train_data, "none")
    reference = start.encode(SENTENCES, tokenizer=tokenizer, normalize=True)
    return cosine_distance(trainer.model, reference, tokenizer), trainer


# ----------------------------------------------------------------------------- the embeddings stay closer to the start
@pytest.mark.parametrize("method, weight", [("distill", 10.0), ("l2sp", 100.0)])
def test_preservation_keeps_embeddings_closer_to_the_start(method, weight, start, unprotected, tokenizer,
                                                           train_data, tmp_path):
    reference = start.encode(SENTENCES, tokenizer=tokenizer, normalize=True)
    drift_without, plain = unprotected
    trainer = train_copy(start, tmp_path, tokenizer, train_data, method, weight)
    drift_with = cosine_distance(trainer.model, reference, tokenizer)
    assert drift_without > 0.1, "the unprotected run must move the embeddings for the comparison to mean anything"
    assert drift_with < drift_without / 5, (method, drift_with, drift_without)
    # The heads still trained: they moved away from their initial weights.
    for name, head in trainer.model.heads.items():
        assert not torch.equal(head.classifier.weight, start.heads[name].classifier.weight), name
    # And the encoder's weights are closer to the start too.
    plain_anchor = EncoderAnchor(start, "l2sp", 1.0)
    plain_anchor._live = dict(plain.model.encoder.named_parameters())
    assert trainer.anchor.drift() < plain_anchor.drift()


def test_stronger_weight_keeps_them_closer(start, tokenizer, train_data, tmp_path):
    reference = start.encode(SENTENCES, tokenizer=tokenizer, normalize=True)
    weak = train_copy(start, tmp_path, tokenizer, train_data, "l2sp", 10.0)
    strong = train_copy(start, tmp_path, tokenizer, train_data, "l2sp", 100.0)
    assert cosine_distance(strong.model, reference, tokenizer) < cosine_distance(weak.model, reference, tokenizer)


def test_weight_zero_is_the_same_as_none(start, unprotected, tokenizer, train_data, tmp_path):
    _, plain = unprotected
    trainer = train_copy(start, tmp_path, tokenizer, train_data, "l2sp", 0.0)
    for name, parameter in plain.model.named_parameters():
        torch.testing.assert_close(parameter, dict(trainer.model.named_parameters())[name], msg=name)


# ----------------------------------------------------------------------------- the anchor is never saved or optimised
@pytest.mark.parametrize("method", ["distill", "l2sp"])
def test_anchor_is_not_in_the_model_checkpoint_or_optimizer(method, start, tokenizer, train_data, tmp_path):
    model = copy.deepcopy(start)
    args = make_args(tmp_path, method, embedding_preservation=method, max_steps=4, save_strategy="steps",
                     save_steps=4, learning_rate=5e-3)
    trainer = make_trainer(model, args, tokenizer, train=train_data)
    trainer.train()
    trainer.save_model()

    anchor_ids = {id(p) for p in trainer.anchor.encoder.parameters()}
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not anchor_ids & optimised
    assert optimised == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(p.requires_grad for p in trainer.anchor.encoder.parameters())
    assert not trainer.anchor.encoder.training
    expected = set(model.state_dict())
    for folder in (Path(args.output_dir), Path(args.output_dir) / "checkpoint-4"):
        saved = set(load_file(str(folder / "model.safetensors")))
        assert saved <= expected and len(saved) >= len(expected) - 1, folder  # tied weights may be saved once
        config = json.loads((folder / "config.json").read_text())
        assert "teacher" not in json.dumps(config) and "anchor" not in json.dumps(config)
    # The anchor still holds the starting weights after training moved the model.
    for name, parameter in start.encoder.named_parameters():
        assert torch.equal(dict(trainer.anchor.encoder.named_parameters())[name], parameter), name


@pytest.mark.parametrize("method", ["distill", "l2sp"])
def test_resume_with_preservation_is_bit_identical(method, tokenizer, train_data, tmp_path):
    settings = dict(num_train_epochs=1, save_strategy="steps", save_steps=5, learning_rate=5e-3, seed=3,
                    embedding_preservation=method, logging_strategy="steps", logging_steps=1)
    small = {"sentiment": train_data["sentiment"].select(range(20)), "ner": train_data["ner"].select(range(20))}
    full = make_trainer(trainable_model(seed=0), make_args(tmp_path, "full", **settings), tokenizer, train=small)
    full.train()
    assert full.state.global_step == 10
    expected = {name: p.detach().clone() for name, p in full.model.named_parameters()}

    # The resumed run builds the same starting model (as train.py does), so its anchor is the same start.
    resumed = make_trainer(trainable_model(seed=0), make_args(tmp_path, "resumed", **settings), tokenizer, train=small)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-5"))
    assert resumed.state.global_step == 10
    different = [name for name, p in resumed.model.named_parameters() if not torch.equal(p, expected[name])]
    assert not different, different[:5]


# ----------------------------------------------------------------------------- evaluation, logging, accumulation
def test_evaluate_does_not_add_the_preservation_term(start, tokenizer, train_data, tmp_path):
    evaluation = {"sentiment": train_data["sentiment"].select(range(8)), "ner": train_data["ner"].select(range(8))}
    with_anchor = make_trainer(copy.deepcopy(start), make_args(tmp_path, "a", embedding_preservation="distill"),
                               tokenizer, eval=evaluation)
    without = make_trainer(copy.deepcopy(start), make_args(tmp_path, "b"), tokenizer, eval=evaluation)
    assert with_anchor.evaluate()["eval_loss"] == pytest.approx(without.evaluate()["eval_loss"], rel=1e-6)


def test_preservation_terms_are_logged(start, tokenizer, train_data, tmp_path):
    trainer = train_copy(start, tmp_path, tokenizer, train_data, "distill", 10.0)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    for entry in logs:
        assert entry["loss_preservation"] > 0 and entry["encoder_drift"] > 0
        assert "loss_sentiment" in entry and "loss_ner" in entry
    l2sp = train_copy(start, tmp_path, tokenizer, train_data, "l2sp", 100.0)
    logs = [entry for entry in l2sp.state.log_history if "loss" in entry]
    assert all("encoder_drift" in entry and "loss_preservation" not in entry for entry in logs)


def test_distill_with_gradient_accumulation_matches_one_big_batch(tokenizer, tmp_path):
    """2 accumulated batches of 8 move the weights as one batch of 16 (SGD, no dropout), preservation included."""
    train = {"sentiment": sentiment_data(tokenizer, 16)}
    init = trainable_model(dropout=False)
    # Move the start away from the anchor first, so the distillation term has a gradient.
    sgd = dict(optim="sgd", learning_rate=0.5, weight_decay=0.0, max_steps=1, lr_scheduler_type="constant",
               embedding_preservation="distill", preservation_weight=10.0)

    def delta(name, batch, steps):
        model = copy.deepcopy(init)
        trainer = make_trainer(model, make_args(tmp_path, name, per_device_train_batch_size=batch,
                                                gradient_accumulation_steps=steps, **sgd), tokenizer, train=train)
        with torch.no_grad():
            for parameter in model.encoder.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter, generator=torch.Generator().manual_seed(0)))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainer.train()
        return {n: p.detach() - before[n] for n, p in model.named_parameters()}

    accumulated, single = delta("ga", 8, 2), delta("single", 16, 1)
    for name in single:
        torch.testing.assert_close(accumulated[name], single[name], rtol=1e-4, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("kwargs, field", [
    ({"embedding_preservation": "lora"}, "embedding_preservation"),
    ({"embedding_preservation": "distill", "preservation_weight": -1.0}, "preservation_weight"),
    ({"embedding_preservation": "l2sp", "preservation_weight": "strong"}, "preservation_weight"),
    ({"embedding_preservation": "l2sp", "preservation_weight": float("nan")}, "preservation_weight"),
])
def test_bad_values_name_the_field(kwargs, field, tmp_path):
    with pytest.raises(ValueError, match=field):
        MultiTaskTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kwargs)


def test_default_weights_per_method(tmp_path):
    for method in ("none", "distill", "l2sp"):
        args = MultiTaskTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                          embedding_preservation=method)
        assert args.preservation_weight == DEFAULT_WEIGHTS[method]
    args = MultiTaskTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                      embedding_preservation="distill", preservation_weight="2.5")
    assert args.preservation_weight == 2.5  # a command-line / YAML string becomes a float


def test_train_cli_rejects_a_bad_method(tmp_path, capsys):
    import train

    config = tmp_path / "c.yaml"
    config.write_text("tasks: [{name: s, type: sequence_classification, data_files: {train: x.jsonl}}]\n"
                      f"output_dir: {tmp_path / 'run'}\nembedding_preservation: distil\n")
    assert train.cli([str(config)]) == 2
    assert "embedding_preservation" in capsys.readouterr().err
