"""Long rows (`mtl_st.data.windows`): a token task's long sentence becomes overlapping windows that are scored as
one row; sequence rows that are cut are counted in one warning."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from datasets import Dataset
from seqeval.metrics.sequence_labeling import get_entities
from transformers.trainer_utils import EvalPrediction

from mtl_st.data.arguments import TaskDataArguments
from mtl_st.data.splits import tokenize_task
from mtl_st.data.task_data import TaskMetrics
from trainer_mtl import MultiTaskTrainer


def long_sentence(n_entities: int = 24) -> tuple[list[str], list[str]]:
    """One long sentence (over 600 words) with `n_entities` PER entities spread along it."""
    words, tags = [], []
    for i in range(n_entities):
        words += ["the", "committee", "met", "again", "on", "tuesday", "and"] * 3 + ["Peter", "Blackburn"]
        tags += ["O"] * 21 + ["B-PER", "I-PER"]
    words += ["finally"] * 84
    tags += ["O"] * 84
    return words, tags


def test_long_sentence_is_windowed_and_scored_in_full(tokenizer, caplog):
    words, tags = long_sentence()
    assert len(words) == 636 and len(get_entities(tags)) == 24
    labels = ["O", "B-PER", "I-PER"]
    task = TaskDataArguments(name="ner", type="token_classification", data_files={"train": "x"}, stride=16)
    with caplog.at_level(logging.WARNING, logger="mtl_st.data.task_data"):
        windows = tokenize_task(Dataset.from_dict({"tokens": [words], "tags": [tags]}), task, tokenizer,
                                {label: i for i, label in enumerate(labels)}, max_length=256)
    assert "1 of 1 rows are longer than 256 tokens" in caplog.text
    assert len(windows) > 1 and set(windows["row"]) == {0} and all(len(ids) <= 256 for ids in windows["input_ids"])
    scored = [label for row in windows["labels"] for label in row if label != -100]
    assert len(scored) == len(words)  # every word is scored once, in one window (before: the first 254 tokens only)
    width = max(len(row) for row in windows["labels"])
    label_ids = np.full((len(windows), width), -100)
    for i, row in enumerate(windows["labels"]):
        label_ids[i, : len(row)] = row
    # A model that finds the entities of the first window only: recall is 4 of 24 (before the fix: 4 of 4 = 1.0).
    first_only = np.eye(3)[np.where(label_ids >= 0, label_ids, 0)]
    first_only[1:] = np.eye(3)[0]
    trainer = type("T", (), {"_metrics_rows": list(windows["row"]), "_metrics_task": "ner",
                             "task_metrics_fn": TaskMetrics([{"name": "ner", "type": "token_classification",
                                                               "labels": labels}])})()
    metrics = MultiTaskTrainer._compute_task_metrics(trainer, EvalPrediction(first_only, label_ids))
    found = len(get_entities([labels[i] for i in label_ids[0] if i >= 0]))
    assert found < 24 and metrics["recall"] == pytest.approx(found / 24) and metrics["precision"] == 1.0
    perfect = np.eye(3)[np.where(label_ids >= 0, label_ids, 0)]
    assert MultiTaskTrainer._compute_task_metrics(trainer, EvalPrediction(perfect, label_ids))["f1"] == 1.0


def test_sequence_rows_cut_are_counted_in_one_warning(tokenizer, caplog):
    ds = Dataset.from_dict({"text": ["short", "word " * 100, "word " * 300], "label": ["a", "b", "a"]})
    task = TaskDataArguments(name="s", type="sequence_classification", data_files={"train": "x"})
    with caplog.at_level(logging.WARNING, logger="mtl_st.data.windows"):
        tokenize_task(ds, task, tokenizer, {"a": 0, "b": 1}, max_length=64)
    assert caplog.text.count("rows are longer") == 1 and "2 of 3 rows are longer than 64 tokens" in caplog.text
