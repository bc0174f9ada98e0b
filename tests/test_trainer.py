"""`MultiTaskTrainer` (`trainer_mtl`): task options, exact gradient accumulation, task loss weights (also
through clipping), evaluation and prediction on task dicts, the best model, per-task logs, bit-identical resume,
task sampling through the train loader; the model under transformers' plain `Trainer`; the trainer's contract with
transformers (tiny models, offline, CPU)."""

from __future__ import annotations

import copy
import inspect
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

from tests.utils import (
    NER_LABELS,
    ONE_TASK,
    REPO,
    SENTIMENT_LABELS,
    make_args,
    make_trainer,
    ner_data,
    sentiment_data,
    snapshot,
    tiny_model,
    trainable_model,
)
from trainer_mtl import MultiTaskTrainer, task_metrics


# ----------------------------------------------------------------------------- task options
@pytest.mark.parametrize("option, value", [("frozen_tasks", ["sentimnt"]), ("task_loss_weights", {"nerr": 2.0})])
def test_unknown_task_names_are_rejected(option, value, tokenizer, tmp_path):
    args = make_args(tmp_path, **{option: value})
    bad = value[0] if isinstance(value, list) else next(iter(value))
    with pytest.raises(ValueError, match=f"{option}.*{bad}"):
        make_trainer(trainable_model(), args, tokenizer)


def test_json_strings_for_list_and_dict_options(tmp_path):
    args = make_args(tmp_path, frozen_tasks='["ner"]', task_loss_weights='{"ner": 2}')
    assert args.frozen_tasks == ["ner"] and args.task_loss_weights == {"ner": 2.0}


# ----------------------------------------------------------------------------- gradient accumulation
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
    init = trainable_model(dropout=False)

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


# ----------------------------------------------------------------------------- task loss weights
def test_task_loss_weight_scales_that_tasks_gradient(tokenizer, tmp_path):
    train = {"sentiment": sentiment_data(tokenizer, 8), "ner": ner_data(tokenizer, 8)}
    init = trainable_model(dropout=False)
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
    init = trainable_model(dropout=False)
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


# ----------------------------------------------------------------------------- evaluation and prediction
def test_evaluate_and_predict_on_task_dicts(tokenizer, data, tmp_path):
    model = trainable_model()
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

    trainer = make_trainer(trainable_model(), make_args(tmp_path), tokenizer, eval=data, compute_metrics=compute_metrics)
    metrics = trainer.evaluate()
    assert seen == ["sentiment", "ner"]
    assert metrics["eval_sentiment_rows"] == 12 and metrics["eval_ner_rows"] == 12


# ----------------------------------------------------------------------------- best model
def test_best_model_by_eval_ner_f1(tokenizer, tmp_path):
    train = {"sentiment": sentiment_data(tokenizer, 8), "ner": ner_data(tokenizer, 24)}
    evaluation = {"sentiment": sentiment_data(tokenizer, 6, seed=1), "ner": ner_data(tokenizer, 8, seed=1)}
    args = make_args(tmp_path, max_steps=8, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                     load_best_model_at_end=True, metric_for_best_model="eval_ner_f1", learning_rate=3e-3,
                     head_learning_rate=5e-2, task_sampling="temperature", sampling_temperature=0.3)
    trainer = make_trainer(trainable_model(), args, tokenizer, train=train, eval=evaluation)
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


# ----------------------------------------------------------------------------- per-task train logs
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
    trainer = make_trainer(trainable_model(), args, tokenizer, train=data, callbacks=[recorder])
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


# ----------------------------------------------------------------------------- resume
RESUME = dict(num_train_epochs=2, save_strategy="steps", save_steps=3, learning_rate=5e-3, seed=3,
              task_sampling="proportional", logging_strategy="steps", logging_steps=1)


@pytest.fixture(scope="module")
def resume_data(tokenizer):
    # 6 + 8 rows, batch 4: 2 + 2 = 4 steps an epoch, 8 in all; checkpoints 3 (epoch 0) and 6 (epoch 1, 2nd step).
    return {"sentiment": sentiment_data(tokenizer, 6, seed=5), "ner": ner_data(tokenizer, 8, seed=5)}


@pytest.fixture(scope="module")
def uninterrupted(resume_data, tokenizer, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("resume")
    trainer = make_trainer(trainable_model(seed=0), make_args(tmp_path, "full", **RESUME), tokenizer, train=resume_data)
    trainer.train()
    assert trainer.state.global_step == 8
    return tmp_path / "full", snapshot(trainer.model), trainer.state.log_history


@pytest.mark.parametrize("checkpoint", [3, 6])
def test_resume_is_bit_identical(checkpoint, uninterrupted, resume_data, tokenizer, tmp_path):
    full_dir, expected, full_history = uninterrupted
    assert (full_dir / f"checkpoint-{checkpoint}").is_dir()

    resumed = make_trainer(trainable_model(seed=1), make_args(tmp_path, "resumed", **RESUME), tokenizer, train=resume_data)
    resumed.train(resume_from_checkpoint=str(full_dir / f"checkpoint-{checkpoint}"))
    assert resumed.state.global_step == 8
    weights = snapshot(resumed.model)
    different = [name for name in expected if not torch.equal(expected[name], weights[name])]
    assert not different, f"resumed weights differ from the uninterrupted run: {different[:5]}"
    # The per-step losses after the checkpoint are the same too (same batches, same dropout masks).
    losses = lambda history: {e["step"]: e["loss"] for e in history if "loss" in e and e["step"] > checkpoint}
    assert losses(resumed.state.log_history) == losses(full_history)


def test_fresh_run_from_other_init_differs(uninterrupted, resume_data, tokenizer, tmp_path):
    """Guards the resume test: without the checkpoint, the other initialisation ends elsewhere."""
    _, expected, _ = uninterrupted
    fresh = make_trainer(trainable_model(seed=1), make_args(tmp_path, "fresh", **{**RESUME, "save_strategy": "no"}),
                         tokenizer, train=resume_data)
    fresh.train()
    weights = snapshot(fresh.model)
    assert any(not torch.equal(expected[name], weights[name]) for name in expected)


def test_skipped_loader_reaches_sampler_epoch(resume_data, tokenizer, tmp_path):
    """After accelerate's skip_first_batches wraps the loader, set_epoch still reshuffles our sampler."""
    from accelerate import skip_first_batches

    trainer = make_trainer(trainable_model(), make_args(tmp_path, **RESUME), tokenizer, train=resume_data)
    loader = trainer.get_train_dataloader()
    loader.set_epoch(1)
    epoch1 = [b["input_ids"].tolist() for b in loader]
    loader.set_epoch(0)
    epoch0 = [b["input_ids"].tolist() for b in loader]
    assert epoch0 != epoch1
    skipped = skip_first_batches(loader, 2)
    skipped.set_epoch(1)
    assert [b["input_ids"].tolist() for b in skipped] == epoch1[2:]


# ----------------------------------------------------------------------------- task sampling through the train loader
def loader_tasks(trainer, epoch: int = 0) -> list[str]:
    loader = trainer.get_train_dataloader()
    loader.set_epoch(epoch)
    return [batch["task"] for batch in loader]


def test_round_robin_batches_alternate(tokenizer, tmp_path):
    train = {"sentiment": sentiment_data(tokenizer, 8), "ner": ner_data(tokenizer, 8)}
    trainer = make_trainer(trainable_model(), make_args(tmp_path, task_sampling="round_robin"), tokenizer, train=train)
    tasks = loader_tasks(trainer)
    assert tasks == ["sentiment", "ner"] * 2


def test_proportional_counts_and_homogeneous_batches(tokenizer, tmp_path):
    train = {"sentiment": sentiment_data(tokenizer, 10), "ner": ner_data(tokenizer, 5)}
    trainer = make_trainer(trainable_model(), make_args(tmp_path, task_sampling="proportional"), tokenizer, train=train)
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


# ----------------------------------------------------------------------------- the plain transformers Trainer
def plain_trainer_rows(tokenizer, n: int = 8) -> list[dict]:
    texts = ["good film", "bad film", "it was fine I guess", "terrible", "great fun", "meh", "loved it", "awful"]
    return [{**tokenizer(texts[i % len(texts)], truncation=True), "label": i % 3} for i in range(n)]


def test_plain_trainer_trains_a_one_task_model(tmp_path, tokenizer):
    model = tiny_model(tasks=ONE_TASK).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4,
                             report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
                             learning_rate=1e-3)
    trainer = Trainer(model=model, args=args, train_dataset=plain_trainer_rows(tokenizer),
                      data_collator=DataCollatorWithPadding(tokenizer))
    result = trainer.train()
    assert result.global_step == 2 and np.isfinite(result.training_loss)
    assert not torch.equal(before["heads.sentiment.classifier.weight"], model.heads["sentiment"].classifier.weight)
    prediction = trainer.predict(plain_trainer_rows(tokenizer, 4))
    assert prediction.predictions.shape == (4, 3)


def test_trainer_does_not_realign_special_tokens(tmp_path, tokenizer, caplog):
    model = tiny_model(tasks=ONE_TASK)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=1, report_to="none", use_cpu=True,
                             save_strategy="no", disable_tqdm=True)
    with caplog.at_level("WARNING"):
        trainer = Trainer(model=model, args=args, train_dataset=plain_trainer_rows(tokenizer, 4),
                          data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
        trainer.train()
    assert "new PAD/BOS/EOS" not in caplog.text


# ----------------------------------------------------------------------------- contract with transformers' Trainer
def test_trainer_overrides_no_private_trainer_method():
    """Only documented hooks: no underscore-prefixed method of `Trainer` is overridden (dunders aside), so a new
    transformers release cannot change one under the trainer's feet."""
    overridden = [name for name, value in vars(MultiTaskTrainer).items()
                  if name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
                  and (inspect.isfunction(value) or isinstance(value, (property, staticmethod, classmethod)))
                  and hasattr(Trainer, name)]
    assert overridden == []


def test_trainer_does_not_write_into_accelerate_objects():
    source = (REPO / "trainer_mtl.py").read_text(encoding="utf-8")
    assert ".num_processes =" not in source and ".process_index =" not in source


# ----------------------------------------------------------------------------- losses the Trainer must not lose
def test_label_smoothing_reaches_the_classification_losses(tokenizer, data, tmp_path):
    """`label_smoothing_factor` was range-checked, stored and ignored (identical to an unsmoothed run)."""
    losses = {}
    for factor in (0.0, 0.3):
        model = trainable_model()
        trainer = make_trainer(model, make_args(tmp_path, f"s{factor}", label_smoothing_factor=factor), tokenizer)
        batch = trainer.data_collator([{**data["sentiment"][i], "task": "sentiment"} for i in range(4)])
        losses[factor] = trainer.compute_loss(model.eval(), batch).item()
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        expected = torch.nn.functional.cross_entropy(logits, batch["labels"], label_smoothing=factor).item()
        assert losses[factor] == pytest.approx(expected, rel=1e-5)
    assert losses[0.3] != losses[0.0]


def test_a_non_finite_loss_stops_the_run_naming_task_and_step(tokenizer, data, tmp_path):
    from mtl_st.errors import TrainingDiverged

    model = trainable_model()
    with torch.no_grad():
        model.heads["sentiment"].classifier.bias.fill_(float("nan"))
    trainer = make_trainer(model, make_args(tmp_path, "nan", max_steps=2, save_strategy="steps", save_steps=1),
                           tokenizer, train={"sentiment": data["sentiment"]})
    with pytest.raises(TrainingDiverged, match=r"task 'sentiment': the training loss is nan at step 1"):
        trainer.train()
    assert not list((tmp_path / "nan").glob("checkpoint-*"))


def test_fp16_on_the_cpu_says_it_trains_in_fp32(tmp_path, caplog):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device runs fp16")
    with caplog.at_level("WARNING"):
        try:
            make_args(tmp_path, "fp16", fp16=True)
        except ValueError:  # a transformers release that refuses fp16 on the CPU outright is fine too
            return
    assert "fp16: true needs a CUDA device; on this CPU the run trains in fp32" in caplog.text
