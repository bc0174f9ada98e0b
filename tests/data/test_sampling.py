"""Batching (`mtl_st.data.sampling`): the multi-task dataset, the collator, the batch sampler's policies,
accumulation windows and rank slices."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from datasets import Dataset

from mtl_st.data.arguments import TaskDataArguments
from mtl_st.data.sampling import (
    AccumulationWindows,
    MultiTaskBatchSampler,
    MultiTaskCollator,
    MultiTaskDataset,
    RankSlice,
    WindowIndex,
)
from mtl_st.data.splits import tokenize_task


# ----------------------------------------------------------------------------- dataset and collator
def tiny_tokenized(tokenizer) -> dict[str, Dataset]:
    tags = [["B-PER", "I-PER", "O"], ["O"]]
    ner = Dataset.from_dict({"tokens": [["Ada", "Lovelace", "wrote"], ["hi"]], "tags": tags})
    sent = Dataset.from_dict({"text": ["good", "bad film", "ok"], "label": ["pos", "neg", "pos"]})
    ner_task = TaskDataArguments(name="ner", type="token_classification", data_files={"train": "x"})
    sent_task = TaskDataArguments(name="sent", type="sequence_classification", data_files={"train": "x"})
    return {
        "ner": tokenize_task(ner, ner_task, tokenizer, {"O": 0, "B-PER": 1, "I-PER": 2}, 16),
        "sent": tokenize_task(sent, sent_task, tokenizer, {"neg": 0, "pos": 1}, 16),
    }


def test_multitask_dataset_indexing(tokenizer):
    data = MultiTaskDataset(tiny_tokenized(tokenizer))
    assert data.task_names == ["ner", "sent"] and data.task_sizes == {"ner": 2, "sent": 3}
    assert data.offsets == {"ner": 0, "sent": 2} and len(data) == 5
    assert [data.task_of(i) for i in range(5)] == ["ner", "ner", "sent", "sent", "sent"]
    assert data[3]["task"] == "sent" and data[3]["labels"] == 0
    assert data[1]["task"] == "ner" and data[1]["labels"] == [-100, 0, -100]
    with pytest.raises(IndexError):
        data[5]


def test_collator_pads_token_labels_with_minus_100(tokenizer):
    data = MultiTaskDataset(tiny_tokenized(tokenizer))
    collator = MultiTaskCollator(tokenizer, {"ner": "token_classification", "sent": "sequence_classification"})
    batch = collator([data[0], data[1]])
    assert batch["task"] == "ner"
    length = batch["input_ids"].shape[1]
    assert batch["labels"].shape == (2, length) and batch["attention_mask"].shape == (2, length)
    short = len(data[1]["input_ids"])
    assert batch["labels"][1, :short].tolist() == data[1]["labels"]
    assert (batch["labels"][1, short:] == -100).all() and (batch["attention_mask"][1, short:] == 0).all()
    assert "token_type_ids" in batch

    batch = collator([data[2], data[3]])
    assert batch["task"] == "sent" and batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]

    unlabeled = [{k: v for k, v in data[i].items() if k != "labels"} for i in (0, 1)]
    batch = collator(unlabeled)
    assert "labels" not in batch and batch["input_ids"].shape[0] == 2

    padded = MultiTaskCollator(tokenizer, {"ner": "token_classification"}, pad_to_multiple_of=8)([data[0], data[1]])
    assert padded["input_ids"].shape[1] % 8 == 0 and padded["labels"].shape == padded["input_ids"].shape


def test_collator_rejects_mixed_tasks(tokenizer):
    data = MultiTaskDataset(tiny_tokenized(tokenizer))
    collator = MultiTaskCollator(tokenizer, {"ner": "token_classification", "sent": "sequence_classification"})
    with pytest.raises(ValueError, match="one task"):
        collator([data[0], data[2]])


# ----------------------------------------------------------------------------- batch sampler
def task_of_batch(batch: list[int], sizes: dict[str, int]) -> str:
    """The single task of a batch (asserts that there is only one)."""
    bounds, start = {}, 0
    for name, size in sizes.items():
        bounds[name] = range(start, start + size)
        start += size
    owners = {name for i in batch for name, r in bounds.items() if i in r}
    assert len(owners) == 1, f"batch {batch} mixes tasks {owners}"
    return owners.pop()


def test_proportional_covers_every_example_once():
    sizes = {"a": 23, "b": 7, "c": 50}
    sampler = MultiTaskBatchSampler(sizes, batch_size=4, policy="proportional", seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 6 + 2 + 13
    assert sorted(i for b in batches for i in b) == list(range(80))
    counts = Counter(task_of_batch(b, sizes) for b in batches)
    assert counts == {"a": 6, "b": 2, "c": 13}
    assert [task_of_batch(b, sizes) for b in batches] != sorted(task_of_batch(b, sizes) for b in batches)  # mixed


def test_sampler_is_deterministic_and_set_epoch_reshuffles():
    sizes = {"a": 40, "b": 30}
    for policy in ("proportional", "temperature", "round_robin"):
        sampler = MultiTaskBatchSampler(sizes, batch_size=4, policy=policy, seed=7)
        first, second = list(sampler), list(sampler)
        assert first == second
        assert first == list(MultiTaskBatchSampler(sizes, batch_size=4, policy=policy, seed=7))
        sampler.set_epoch(1)
        assert list(sampler) != first
        sampler.set_epoch(0)
        assert list(sampler) == first
        assert list(MultiTaskBatchSampler(sizes, batch_size=4, policy=policy, seed=8)) != first


def test_temperature_mix():
    sizes = {"big": 9000, "small": 1000}
    sampler = MultiTaskBatchSampler(sizes, batch_size=4, policy="temperature", temperature=2.0, seed=0)
    assert sampler.task_probabilities()["big"] == pytest.approx(0.75)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2500
    counts = Counter(task_of_batch(b, sizes) for b in batches)
    assert counts["big"] / len(batches) == pytest.approx(0.75, abs=0.03)
    # The small task is cycled: it contributes more batches than one pass over it holds.
    small = [i for b in batches if task_of_batch(b, sizes) == "small" for i in b]
    assert len(small) > 1000 and set(small) == set(range(9000, 10000))

    t1 = MultiTaskBatchSampler(sizes, batch_size=4, policy="temperature", temperature=1.0, seed=0)
    counts = Counter(task_of_batch(b, sizes) for b in t1)
    assert counts["big"] / len(t1) == pytest.approx(0.9, abs=0.03)


def test_round_robin_alternates():
    sizes = {"a": 100, "b": 9, "c": 20}
    sampler = MultiTaskBatchSampler(sizes, batch_size=5, policy="round_robin", seed=0)
    tasks = [task_of_batch(b, sizes) for b in sampler]
    assert len(tasks) == 20 + 2 + 4
    assert tasks == ["a", "b", "c"] * 8 + ["a", "b"]
    b_batches = [b for b in sampler if task_of_batch(b, sizes) == "b"]
    assert sorted(b_batches[0] + b_batches[1]) == list(range(100, 109))  # a full pass before cycling


def test_full_batches_are_full_and_single_task():
    sizes = {"a": 10, "b": 3, "c": 8}
    for policy in ("proportional", "temperature", "round_robin"):
        sampler = MultiTaskBatchSampler(sizes, batch_size=4, policy=policy, full_batches=True, seed=1)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 3 + 1 + 2
        for batch in batches:
            assert len(batch) == 4
            task_of_batch(batch, sizes)
    proportional = list(MultiTaskBatchSampler(sizes, batch_size=4, full_batches=True, seed=1))
    assert set(i for b in proportional for i in b) == set(range(21))  # still every example
    for batch in proportional:
        if len(set(batch)) < 4:
            assert task_of_batch(batch, sizes) == "b"  # only a task smaller than a batch repeats itself


def test_no_shuffle_is_sequential():
    sizes = {"a": 5, "b": 3}
    batches = list(MultiTaskBatchSampler(sizes, batch_size=2, shuffle=False))
    assert batches == [[0, 1], [2, 3], [4], [5, 6], [7]]


def test_sampler_errors():
    with pytest.raises(ValueError, match="proportional.*temperature.*round_robin"):
        MultiTaskBatchSampler({"a": 3}, batch_size=2, policy="uniform")
    with pytest.raises(ValueError, match="'b'"):
        MultiTaskBatchSampler({"a": 3, "b": 0}, batch_size=2)
    assert len(MultiTaskBatchSampler({"a": 3}, batch_size=2)) == math.ceil(3 / 2)


# ----------------------------------------------------------------------------- accumulation windows and rank slices
def test_accumulation_windows_mark_every_index_with_its_step():
    """Windows of `accumulation_steps` consecutive batches (the last one shorter); each index carries its window's
    batches and labelled items per task."""
    sizes = {"a": 10, "b": 6}
    sampler = MultiTaskBatchSampler(sizes, batch_size=4, seed=0)
    data = MultiTaskDataset({name: Dataset.from_dict({"x": list(range(n))}) for name, n in sizes.items()})
    items = np.arange(16) + 1
    windows = AccumulationWindows(sampler, 2, data, items)
    batches = list(windows)
    assert [[int(i) for i in b] for b in batches] == list(sampler) and len(windows) == len(sampler) == 5
    assert all(isinstance(i, WindowIndex) for b in batches for i in b)
    for start in range(0, len(batches), 2):
        group = batches[start:start + 2]
        window = group[0][0].window
        assert all(i.window is window for b in group for i in b) and window.batches == len(group)
        expected = {}
        for batch in group:
            entry = expected.setdefault(task_of_batch(batch, sizes), [0, 0])
            entry[0] += 1
            entry[1] += int(items[[int(i) for i in batch]].sum())
        assert window.tasks == {name: tuple(entry) for name, entry in expected.items()}
    assert batches[-1][0].window.batches == 1  # 5 batches: the last window holds one
    window = batches[0][0].window
    weights = {"a": 3.0}
    assert window.weight(weights) == pytest.approx(
        sum(b * weights.get(name, 1.0) for name, (b, _) in window.tasks.items()) / window.batches)


def test_rank_slice_splits_global_batches():
    sampler = MultiTaskBatchSampler({"a": 8, "b": 4}, batch_size=4, seed=0, full_batches=True)
    slices = [list(RankSlice(sampler, rank, 2)) for rank in range(2)]
    for whole, first, second in zip(sampler, *slices):
        assert first + second == whole and len(first) == 2
    with pytest.raises(ValueError, match="divisible"):
        RankSlice(MultiTaskBatchSampler({"a": 8}, batch_size=3), 0, 2)
