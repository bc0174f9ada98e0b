"""Trainer tests: optimizer groups, freezing, gradient accumulation, loss weights, evaluation, best model,
per-task logs, bit-identical resume and task sampling through the trainer (tiny models, offline, CPU)."""

from __future__ import annotations

import copy
import logging
import math
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from configuration_mtl import MultiTaskConfig  # noqa: E402
from conftest import TASKS, TINY_ENCODERS  # noqa: E402
from data_mtl import MultiTaskDataset, TaskDataArguments, tokenize_task  # noqa: E402
from modeling_mtl import MultiTaskModel  # noqa: E402
from trainer_mtl import (  # noqa: E402
    MultiTaskTrainer,
    MultiTaskTrainingArguments,
    RankSlice,
    parameter_groups,
    task_metrics,
)

datasets.disable_progress_bars()

SENTIMENT_LABELS = TASKS[0]["labels"]
NER_LABELS = TASKS[1]["labels"]
WORDS = "good bad fine great awful okay movie film plot actor scene story music ending dull bright".split()
PEOPLE = ["john", "mary", "peter", "anna"]
PLACES = ["paris", "london", "berlin", "rome"]
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


# ----------------------------------------------------------------------------------------------------------- helpers
def build_model(family: str = "bert", seed: int = 0, dropout: bool = True, tasks=None) -> MultiTaskModel:
    """A tiny random 2-layer, 32-wide model; `dropout=False` turns off every dropout (encoder and heads)."""
    encoder = dict(TINY_ENCODERS[family])
    kwargs = {}
    if not dropout:
        encoder.update(NO_DROPOUT)
        kwargs["classifier_dropout"] = 0.0
    torch.manual_seed(seed)
    return MultiTaskModel(MultiTaskConfig(encoder=encoder, tasks=tasks or TASKS, **kwargs))


def sentiment_data(tokenizer, n: int, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 8)))) for _ in range(n)]
    labels = [SENTIMENT_LABELS[i % 3] for i in range(n)]
    task = TaskDataArguments(name="sentiment", type="sequence_classification", data_files={"train": "unused"})
    raw = datasets.Dataset.from_dict({"text": texts, "label": labels})
    return tokenize_task(raw, task, tokenizer, {label: i for i, label in enumerate(SENTIMENT_LABELS)}, 32)


def ner_data(tokenizer, n: int, seed: int = 0, entities_per_row=None) -> datasets.Dataset:
    """Sentences with `entities_per_row[i]` names/places (default 1 + i % 4) between filler words."""
    rng = np.random.default_rng(seed)
    rows_tokens, rows_tags = [], []
    for i in range(n):
        count = entities_per_row[i] if entities_per_row is not None else 1 + i % 4
        tokens, tags = [], []
        for k in range(count):
            tokens.append(str(rng.choice(WORDS)))
            tags.append("O")
            if k % 2 == 0:
                tokens += [str(rng.choice(PEOPLE)), "smith"]
                tags += ["B-PER", "I-PER"]
            else:
                tokens.append(str(rng.choice(PLACES)))
                tags.append("B-LOC")
        rows_tokens.append(tokens)
        rows_tags.append(tags)
    task = TaskDataArguments(name="ner", type="token_classification", data_files={"train": "unused"})
    raw = datasets.Dataset.from_dict({"tokens": rows_tokens, "tags": rows_tags})
    return tokenize_task(raw, task, tokenizer, {label: i for i, label in enumerate(NER_LABELS)}, 48)


def make_args(tmp_path, name: str = "out", **kwargs) -> MultiTaskTrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path / name),
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        save_strategy="no",
        logging_strategy="no",
        seed=0,
    )
    defaults.update(kwargs)
    return MultiTaskTrainingArguments(**defaults)


def make_trainer(model, args, tokenizer, train: dict | None = None, eval: dict | None = None, **kwargs):
    return MultiTaskTrainer(
        model=model,
        args=args,
        train_dataset=MultiTaskDataset(train) if train is not None else None,
        eval_dataset=eval,
        processing_class=tokenizer,
        **kwargs,
    )


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


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


@pytest.fixture(scope="module")
def data(tokenizer):
    return {
        "sentiment": sentiment_data(tokenizer, 12),
        "ner": ner_data(tokenizer, 12),
    }


# ------------------------------------------------------------------------------------------- 1. optimizer groups
LAYER_PREFIX = {"bert": "encoder.encoder.layer.", "distilbert": "encoder.transformer.layer.",
                "deberta-v2": "encoder.encoder.layer."}


@pytest.mark.parametrize("family", ["bert", "distilbert", "deberta-v2"])
def test_optimizer_groups_layerwise_decay_head_rate_and_weight_decay(family, tokenizer, tmp_path):
    model = build_model(family)
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
    model = build_model()
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
    model = build_model()
    kwargs = dict(learning_rate=1e-3, layerwise_lr_decay=0.5, head_learning_rate=7e-3)
    plain = {id(p): g["lr"] for g in parameter_groups(model, **kwargs) for p in g["params"]}
    wrapped = {id(p): g["lr"] for g in parameter_groups(Wrapper(attribute, model), **kwargs) for p in g["params"]}
    assert wrapped == plain
    assert sorted(set(plain.values())) == pytest.approx([2.5e-4, 5e-4, 1e-3, 7e-3])


# ----------------------------------------------------------------------------------------------------- 2. freezing
def train_few_steps(model, tmp_path, tokenizer, data, steps: int = 4, **kwargs):
    args = make_args(tmp_path, max_steps=steps, task_sampling="round_robin", learning_rate=1e-2, **kwargs)
    trainer = make_trainer(model, args, tokenizer, train=data)
    before = snapshot(model)
    trainer.train()
    return trainer, before, snapshot(model)


def changed(before, after, prefix: str) -> list[bool]:
    return [not torch.equal(before[name], after[name]) for name in before if name.startswith(prefix)]


def test_freeze_encoder_keeps_encoder_bit_identical(tokenizer, data, tmp_path):
    model = build_model()
    trainer, before, after = train_few_steps(model, tmp_path, tokenizer, data, freeze_encoder=True)
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in in_optimizer for p in model.encoder.parameters())
    assert not any(changed(before, after, "encoder."))
    assert all(changed(before, after, "heads.sentiment.")) and all(changed(before, after, "heads.ner."))


def test_frozen_task_head_is_bit_identical(tokenizer, data, tmp_path):
    model = build_model()
    trainer, before, after = train_few_steps(model, tmp_path, tokenizer, data, frozen_tasks=["sentiment"])
    assert not any(changed(before, after, "heads.sentiment."))
    assert all(changed(before, after, "heads.ner."))
    assert any(changed(before, after, "encoder."))
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in in_optimizer for p in model.heads["sentiment"].parameters())


def test_frozen_encoder_and_task_leaves_task_out_of_sampling(tokenizer, data, tmp_path, caplog):
    model = build_model()
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
        make_trainer(build_model(), args, tokenizer, train=data)


@pytest.mark.parametrize("option, value", [("frozen_tasks", ["sentimnt"]), ("task_loss_weights", {"nerr": 2.0})])
def test_unknown_task_names_are_rejected(option, value, tokenizer, tmp_path):
    args = make_args(tmp_path, **{option: value})
    bad = value[0] if isinstance(value, list) else next(iter(value))
    with pytest.raises(ValueError, match=f"{option}.*{bad}"):
        make_trainer(build_model(), args, tokenizer)


def test_json_strings_for_list_and_dict_options(tmp_path):
    args = make_args(tmp_path, frozen_tasks='["ner"]', task_loss_weights='{"ner": 2}')
    assert args.frozen_tasks == ["ner"] and args.task_loss_weights == {"ner": 2.0}


# ------------------------------------------------------------------------------------ 3. gradient accumulation
SGD = dict(optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0, learning_rate=0.5, weight_decay=0.0)


def one_update(model, tmp_path, name, tokenizer, train, batch_size, accumulation, **kwargs):
    """Run one optimizer step over all of `train` (one epoch); return (trainer, parameter deltas)."""
    args = make_args(tmp_path, name, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                     num_train_epochs=1, **{**SGD, **kwargs})
    trainer = make_trainer(model, args, tokenizer, train=train)
    before = snapshot(model)
    trainer.train()
    assert trainer.state.global_step == 1
    after = snapshot(model)
    return trainer, {name: after[name] - before[name] for name in before}


def hand_update(model, batches, lr, combine) -> dict[str, torch.Tensor]:
    """SGD delta of `-lr * grad(combine(batches))` computed directly on a copy of `model`."""
    model = copy.deepcopy(model).train()
    model.zero_grad()
    loss = combine(model, batches)
    loss.backward()
    return {name: -lr * p.grad if p.grad is not None else torch.zeros_like(p) for name, p in model.named_parameters()}


def token_losses(model, batch):
    logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), task=batch["task"]).logits
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                                       ignore_index=-100, reduction="sum"), int((batch["labels"] != -100).sum())


def assert_deltas_close(a, b, **kwargs):
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name, **kwargs)


def max_delta_gap(a, b) -> float:
    return max(float((a[name] - b[name]).abs().max()) for name in a)


@pytest.mark.parametrize("task", ["ner", "sentiment"])
def test_gradient_accumulation_matches_one_big_batch(task, tokenizer, tmp_path):
    if task == "ner":
        # 1 to 8 entities per row: the two shuffled halves of 8 rows hold different numbers of labelled tokens.
        train = {"ner": ner_data(tokenizer, 16, entities_per_row=[1 + i % 8 for i in range(16)])}
    else:
        train = {"sentiment": sentiment_data(tokenizer, 16)}
    init = build_model(dropout=False)

    trainer, accumulated = one_update(copy.deepcopy(init), tmp_path, "ga", tokenizer, train, 8, 2)
    _, single = one_update(copy.deepcopy(init), tmp_path, "single", tokenizer, train, 16, 1)
    assert_deltas_close(accumulated, single, rtol=1e-4, atol=1e-7)
    assert max(float(d.abs().max()) for d in single.values()) > 1e-3  # the step really moved the weights

    # The same against a hand-computed gradient of the mean over all labelled items of the two batches...
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == 2 and all(len(b["labels"]) == 8 for b in batches)

    def pooled_mean(model, batches):
        sums, counts = zip(*(token_losses(model, b) for b in batches))
        return sum(sums) / sum(counts)

    def mean_of_means(model, batches):
        return sum(s / c for s, c in (token_losses(model, b) for b in batches)) / len(batches)

    correct = hand_update(init, batches, SGD["learning_rate"], pooled_mean)
    assert_deltas_close(accumulated, correct, rtol=1e-4, atol=1e-7)
    naive = hand_update(init, batches, SGD["learning_rate"], mean_of_means)
    if task == "ner":
        counts = [int((b["labels"] != -100).sum()) for b in batches]
        assert counts[0] != counts[1]
        # ...and a naive mean of per-batch means would differ by far more than the tolerance.
        with pytest.raises(AssertionError):
            assert_deltas_close(accumulated, naive, rtol=1e-4, atol=1e-7)
        largest = max(float(d.abs().max()) for d in naive.values())
        assert max_delta_gap(accumulated, naive) > 10 * 1e-4 * largest
    else:
        assert_deltas_close(accumulated, naive, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------------------- 4. task loss weights
def test_task_loss_weight_scales_that_tasks_gradient(tokenizer, tmp_path):
    train = {"sentiment": sentiment_data(tokenizer, 8), "ner": ner_data(tokenizer, 8)}
    init = build_model(dropout=False)
    # One step on the first batch of the epoch (the same batch in every run: same seed).
    kwargs = dict(per_device_train_batch_size=8, max_steps=1, **SGD)

    def delta(name, weights):
        model = copy.deepcopy(init)
        trainer = make_trainer(model, make_args(tmp_path, name, task_loss_weights=weights, **kwargs), tokenizer, train=train)
        task = next(iter(trainer.get_train_dataloader()))["task"]
        before = snapshot(model)
        trainer.train()
        after = snapshot(model)
        return task, {n: after[n] - before[n] for n in before}

    task, plain = delta("plain", {})
    other = "ner" if task == "sentiment" else "sentiment"
    _, doubled = delta("doubled", {task: 2.0})
    _, other_weighted = delta("other", {other: 3.0})
    head = f"heads.{task}.classifier.weight"
    assert float(plain[head].abs().max()) > 1e-4
    torch.testing.assert_close(doubled[head], 2 * plain[head], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(doubled["encoder.embeddings.word_embeddings.weight"],
                               2 * plain["encoder.embeddings.word_embeddings.weight"], rtol=1e-4, atol=1e-8)
    assert_deltas_close(other_weighted, plain, rtol=1e-5, atol=1e-8)


def test_task_loss_weight_survives_gradient_clipping(tokenizer, tmp_path):
    # Each batch holds one task, so with a plain clip at max_grad_norm a task's weight would be undone whenever its
    # gradient is above the threshold. The threshold scales with the window's weight instead.
    train = {"sentiment": sentiment_data(tokenizer, 8), "ner": ner_data(tokenizer, 8)}
    init = build_model(dropout=False)
    clipped = dict(SGD, max_grad_norm=0.1)  # below the gradient norm here (checked below): the step is clipped

    def run(name, weights):
        model = copy.deepcopy(init)
        args = make_args(tmp_path, name, task_loss_weights=weights, per_device_train_batch_size=8, max_steps=1,
                         **clipped)
        trainer = make_trainer(model, args, tokenizer, train=train)
        task = next(iter(trainer.get_train_dataloader()))["task"]
        before = snapshot(model)
        trainer.train()
        after = snapshot(model)
        return task, {n: after[n] - before[n] for n in before}

    task, plain = run("plain", {})
    _, halved = run("halved", {task: 0.5})
    norm = torch.sqrt(sum((d.double() ** 2).sum() for d in plain.values())).item()
    assert norm == pytest.approx(SGD["learning_rate"] * 0.1, rel=1e-3)  # the plain step really was clipped
    assert_deltas_close(halved, {n: 0.5 * d for n, d in plain.items()}, rtol=1e-4, atol=1e-7)


# -------------------------------------------------------------------------------- 5. evaluation and prediction
def test_task_metrics_token_classification_by_hand():
    # row 1 true: B-PER I-PER O B-LOC; predicted: B-PER I-PER B-LOC O  -> PER right, LOC missed, a wrong LOC
    # row 2 true: O O;                 predicted: B-PER O             -> a wrong PER
    # predicted entities 3, true 2, correct 1: P = 1/3, R = 1/2, F1 = 0.4. -100 positions are ignored.
    labels = np.array([[-100, 1, 2, 0, 3, -100], [-100, 0, 0, -100, -100, -100]])
    predicted = np.array([[1, 1, 2, 3, 0, 3], [3, 1, 0, 1, 1, 1]])
    logits = np.eye(len(NER_LABELS))[predicted]
    metrics = task_metrics("token_classification", logits, labels, NER_LABELS)
    assert metrics == pytest.approx({"precision": 1 / 3, "recall": 0.5, "f1": 0.4})


def test_task_metrics_sequence_classification_by_hand():
    # true 0 1 2 2, predicted 0 2 2 2: accuracy 3/4; F1 per class 1, 0, 0.8 -> macro 0.6
    logits = np.eye(3)[[0, 2, 2, 2]]
    metrics = task_metrics("sequence_classification", logits, np.array([0, 1, 2, 2]), SENTIMENT_LABELS)
    assert metrics == pytest.approx({"accuracy": 0.75, "macro_f1": 0.6})


def test_evaluate_and_predict_on_task_dicts(tokenizer, data, tmp_path):
    model = build_model()
    trainer = make_trainer(model, make_args(tmp_path), tokenizer, eval=data)
    metrics = trainer.evaluate()
    for key in ["eval_sentiment_loss", "eval_sentiment_accuracy", "eval_sentiment_macro_f1", "eval_ner_loss",
                "eval_ner_precision", "eval_ner_recall", "eval_ner_f1", "eval_loss"]:
        assert key in metrics, key
    assert metrics["eval_loss"] == pytest.approx((metrics["eval_sentiment_loss"] + metrics["eval_ner_loss"]) / 2)

    output = trainer.predict(data)
    assert {"test_sentiment_loss", "test_sentiment_accuracy", "test_ner_f1"} <= set(output.metrics)
    assert not any(key.startswith("eval_") for key in output.metrics)
    assert output.predictions["sentiment"].shape == (12, 3)
    assert output.predictions["ner"].shape[0] == 12 and output.predictions["ner"].shape[2] == len(NER_LABELS)
    np.testing.assert_array_equal(output.label_ids["sentiment"], np.array(data["sentiment"]["labels"]))
    # Metrics from the predictions agree with what the trainer reported; evaluate and predict agree.
    for name, task_type, labels in [("sentiment", "sequence_classification", SENTIMENT_LABELS),
                                    ("ner", "token_classification", NER_LABELS)]:
        expected = task_metrics(task_type, output.predictions[name], output.label_ids[name], labels)
        for metric, value in expected.items():
            assert output.metrics[f"test_{name}_{metric}"] == pytest.approx(value)
            assert metrics[f"eval_{name}_{metric}"] == pytest.approx(value)
        assert output.metrics[f"test_{name}_loss"] == pytest.approx(metrics[f"eval_{name}_loss"], rel=1e-5)
    # Hand check of the sentiment loss: mean cross-entropy of the predicted logits.
    logits = torch.tensor(output.predictions["sentiment"])
    loss = nn.functional.cross_entropy(logits, torch.tensor(output.label_ids["sentiment"]))
    assert metrics["eval_sentiment_loss"] == pytest.approx(float(loss), rel=1e-5)

    with pytest.raises(ValueError, match="nerd"):
        trainer.evaluate({"nerd": data["ner"]})
    with pytest.raises(TypeError, match="dict"):
        trainer.evaluate(data["ner"])


def test_custom_compute_metrics_gets_the_task(tokenizer, data, tmp_path):
    seen = []

    def compute_metrics(prediction, task):
        seen.append(task)
        return {"rows": float(len(prediction.label_ids))}

    trainer = make_trainer(build_model(), make_args(tmp_path), tokenizer, eval=data, compute_metrics=compute_metrics)
    metrics = trainer.evaluate()
    assert seen == ["sentiment", "ner"]
    assert metrics["eval_sentiment_rows"] == 12 and metrics["eval_ner_rows"] == 12


# ------------------------------------------------------------------------------------------------ 6. best model
def test_best_model_by_eval_ner_f1(tokenizer, tmp_path):
    train = {"sentiment": sentiment_data(tokenizer, 8), "ner": ner_data(tokenizer, 24)}
    evaluation = {"sentiment": sentiment_data(tokenizer, 6, seed=1), "ner": ner_data(tokenizer, 8, seed=1)}
    args = make_args(tmp_path, max_steps=8, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                     load_best_model_at_end=True, metric_for_best_model="eval_ner_f1", learning_rate=3e-3,
                     head_learning_rate=5e-2, task_sampling="temperature", sampling_temperature=0.3)
    trainer = make_trainer(build_model(), args, tokenizer, train=train, eval=evaluation)
    trainer.train()
    evals = [entry for entry in trainer.state.log_history if "eval_ner_f1" in entry]
    assert [entry["step"] for entry in evals] == [2, 4, 6, 8]
    scores = [entry["eval_ner_f1"] for entry in evals]
    assert len(set(scores)) > 1, "the run must move eval_ner_f1 for this test to tell checkpoints apart"
    best = int(np.argmax(scores))  # the first of the best (a later equal score is not an improvement)
    assert args.greater_is_better is True
    assert trainer.state.best_metric == pytest.approx(scores[best])
    assert trainer.state.best_model_checkpoint == str(tmp_path / "out" / f"checkpoint-{evals[best]['step']}")
    # load_best_model_at_end: the model holds the best checkpoint's weights.
    from safetensors.torch import load_file

    saved = load_file(str(Path(trainer.state.best_model_checkpoint) / "model.safetensors"))
    current = trainer.model.state_dict()
    assert all(torch.equal(current[name], tensor) for name, tensor in saved.items())


# --------------------------------------------------------------------------------------- 7. per-task train logs
class Recorder(TrainerCallback):
    def __init__(self):
        self.logs, self.step_ends, self.evaluations = [], [], []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(state.global_step)


def test_per_task_losses_in_logs_and_callbacks(tokenizer, data, tmp_path):
    recorder = Recorder()
    args = make_args(tmp_path, max_steps=6, logging_strategy="steps", logging_steps=2, task_sampling="round_robin")
    trainer = make_trainer(build_model(), args, tokenizer, train=data, callbacks=[recorder])
    trainer.train()
    train_logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in train_logs] == [2, 4, 6]
    for entry in train_logs:  # round robin: every window of 2 steps has one batch of each task
        assert entry["loss_sentiment"] > 0 and entry["loss_ner"] > 0
        # The blended loss is the mean over the window's steps of the tasks' losses.
        assert entry["loss"] == pytest.approx((entry["loss_sentiment"] + entry["loss_ner"]) / 2, abs=1e-3)
    assert recorder.step_ends == [1, 2, 3, 4, 5, 6]
    logged = [entry for entry in recorder.logs if "loss" in entry]
    assert len(logged) == 3 and all("loss_sentiment" in entry and "loss_ner" in entry for entry in logged)
    assert any("train_runtime" in entry for entry in recorder.logs)


# ------------------------------------------------------------------------------------------------- 8. resume
RESUME = dict(num_train_epochs=2, save_strategy="steps", save_steps=3, learning_rate=5e-3, seed=3,
              task_sampling="proportional", logging_strategy="steps", logging_steps=1)


def final_weights(trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


@pytest.fixture(scope="module")
def resume_data(tokenizer):
    # 6 + 8 rows, batch 4: 2 + 2 = 4 steps an epoch, 8 in all; checkpoints 3 (epoch 0) and 6 (epoch 1, 2nd step).
    return {"sentiment": sentiment_data(tokenizer, 6, seed=5), "ner": ner_data(tokenizer, 8, seed=5)}


@pytest.fixture(scope="module")
def uninterrupted(resume_data, tokenizer, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("resume")
    trainer = make_trainer(build_model(seed=0), make_args(tmp_path, "full", **RESUME), tokenizer, train=resume_data)
    trainer.train()
    assert trainer.state.global_step == 8
    return tmp_path / "full", final_weights(trainer), trainer.state.log_history


@pytest.mark.parametrize("checkpoint", [3, 6])
def test_resume_is_bit_identical(checkpoint, uninterrupted, resume_data, tokenizer, tmp_path):
    full_dir, expected, full_history = uninterrupted
    assert (full_dir / f"checkpoint-{checkpoint}").is_dir()

    resumed = make_trainer(build_model(seed=1), make_args(tmp_path, "resumed", **RESUME), tokenizer, train=resume_data)
    resumed.train(resume_from_checkpoint=str(full_dir / f"checkpoint-{checkpoint}"))
    assert resumed.state.global_step == 8
    weights = final_weights(resumed)
    different = [name for name in expected if not torch.equal(expected[name], weights[name])]
    assert not different, f"resumed weights differ from the uninterrupted run: {different[:5]}"
    # The per-step losses after the checkpoint are the same too (same batches, same dropout masks).
    losses = lambda history: {e["step"]: e["loss"] for e in history if "loss" in e and e["step"] > checkpoint}
    assert losses(resumed.state.log_history) == losses(full_history)


def test_fresh_run_from_other_init_differs(uninterrupted, resume_data, tokenizer, tmp_path):
    """Guards the resume test: without the checkpoint, the other initialisation ends elsewhere."""
    _, expected, _ = uninterrupted
    fresh = make_trainer(build_model(seed=1), make_args(tmp_path, "fresh", **{**RESUME, "save_strategy": "no"}),
                         tokenizer, train=resume_data)
    fresh.train()
    weights = final_weights(fresh)
    assert any(not torch.equal(expected[name], weights[name]) for name in expected)


def test_skipped_loader_reaches_sampler_epoch(resume_data, tokenizer, tmp_path):
    """After accelerate's skip_first_batches wraps the loader, set_epoch still reshuffles our sampler."""
    from accelerate import skip_first_batches

    trainer = make_trainer(build_model(), make_args(tmp_path, **RESUME), tokenizer, train=resume_data)
    loader = trainer.get_train_dataloader()
    loader.set_epoch(1)
    epoch1 = [b["input_ids"].tolist() for b in loader]
    loader.set_epoch(0)
    epoch0 = [b["input_ids"].tolist() for b in loader]
    assert epoch0 != epoch1
    skipped = skip_first_batches(loader, 2)
    skipped.set_epoch(1)
    assert [b["input_ids"].tolist() for b in skipped] == epoch1[2:]


# --------------------------------------------------------------------------------------- 9. sampling via trainer
def loader_tasks(trainer, epoch: int = 0) -> list[str]:
    loader = trainer.get_train_dataloader()
    loader.set_epoch(epoch)
    return [batch["task"] for batch in loader]


def test_round_robin_batches_alternate(tokenizer, tmp_path):
    train = {"sentiment": sentiment_data(tokenizer, 8), "ner": ner_data(tokenizer, 8)}
    trainer = make_trainer(build_model(), make_args(tmp_path, task_sampling="round_robin"), tokenizer, train=train)
    tasks = loader_tasks(trainer)
    assert tasks == ["sentiment", "ner"] * 2


def test_proportional_counts_and_homogeneous_batches(tokenizer, tmp_path):
    train = {"sentiment": sentiment_data(tokenizer, 10), "ner": ner_data(tokenizer, 5)}
    trainer = make_trainer(build_model(), make_args(tmp_path, task_sampling="proportional"), tokenizer, train=train)
    loader = trainer.get_train_dataloader()
    batches = list(loader)
    assert Counter(b["task"] for b in batches) == {"sentiment": math.ceil(10 / 4), "ner": math.ceil(5 / 4)}
    for batch in batches:  # sequence labels [b], token labels [b, seq]
        assert batch["labels"].dim() == (1 if batch["task"] == "sentiment" else 2)
    # every row of every task seen once per epoch
    rows = Counter((b["task"], tuple(r[m.bool()].tolist()))
                   for b in batches for r, m in zip(b["input_ids"], b["attention_mask"]))
    assert sum(rows.values()) == 15
    assert len(loader) == 5


def test_rank_slice_splits_global_batches():
    from data_mtl import MultiTaskBatchSampler

    sampler = MultiTaskBatchSampler({"a": 8, "b": 4}, batch_size=4, seed=0, full_batches=True)
    slices = [list(RankSlice(sampler, rank, 2)) for rank in range(2)]
    for whole, first, second in zip(sampler, *slices):
        assert first + second == whole and len(first) == 2
    with pytest.raises(ValueError, match="divisible"):
        RankSlice(MultiTaskBatchSampler({"a": 8}, batch_size=3), 0, 2)
