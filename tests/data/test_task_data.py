"""Each task type's data side (`mtl_st.data.task_data`): tokenisation and collation of the pair, multi-label and
similarity types, and a local `evaluate` metric in place of the built-in one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from mtl_st.data.arguments import TaskDataArguments
from mtl_st.data.sampling import MultiTaskCollator, MultiTaskDataset
from mtl_st.data.splits import load_task_splits, tokenize_task
from mtl_st.data.task_data import TaskMetrics
from mtl_st.errors import DataError
from tests.utils import ALL_TASKS, FIXTURES, tiny_model, write_rows


def test_pair_multilabel_and_similarity_batches(tmp_path, tokenizer):
    rows = {
        "nli": [{"text": "A man sleeps.", "text_pair": "Nobody sleeps.", "label": "contradiction"}] * 2,
        "topics": [{"text": "Pasta at the stadium.", "labels": ["food", "sport"]}, {"text": "x", "labels": []}],
        "sts": [{"sentence1": "A cat.", "sentence2": "A small cat sits.", "score": 4.0}] * 2,
    }
    datasets = {}
    for task in ALL_TASKS[2:4] + ALL_TASKS[5:]:
        path = write_rows(tmp_path / f"{task['name']}.jsonl", rows[task["name"]])
        spec = TaskDataArguments(name=task["name"], type=task["type"], validation_split_fraction=0,
                                 test_split_fraction=0, data_files={"train": path})
        label2id = {label: i for i, label in enumerate(task.get("labels", []))}
        datasets[task["name"]] = tokenize_task(load_task_splits(spec)["train"], spec, tokenizer, label2id, 32)
    collator = MultiTaskCollator(tokenizer, {t["name"]: t["type"] for t in ALL_TASKS})
    data = MultiTaskDataset(datasets)

    nli = collator([data[0], data[1]])
    assert nli["labels"].tolist() == [2, 2] and nli["labels"].dtype == torch.long
    assert tokenizer.decode(nli["input_ids"][0], skip_special_tokens=True) == "a man sleeps. nobody sleeps."
    assert nli["token_type_ids"][0].tolist().count(1) > 0  # the pair is one joint encoding
    topics = collator([data[2], data[3]])
    assert topics["labels"].tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]] and topics["labels"].dtype == torch.float32
    sts = collator([data[4], data[5]])
    assert sts["labels"].tolist() == [4.0, 4.0] and sts["pair_input_ids"].shape[1] > sts["input_ids"].shape[1]
    model = tiny_model(tasks=ALL_TASKS)
    assert model(**{k: v for k, v in sts.items() if k != "task"}, task="sts").loss is not None


def test_local_evaluate_metric_replaces_the_built_in_one():
    pytest.importorskip("evaluate")
    metrics = TaskMetrics([ALL_TASKS[0]], {"sentiment": str(FIXTURES / "metrics" / "exact_match_local")})
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    result = metrics(EvalPrediction(predictions=logits, label_ids=np.array([1, 1, 1])), "sentiment")
    assert result == {"exact_match": pytest.approx(2 / 3), "n": 3.0}
    with pytest.raises(DataError, match="'sentiment'.*cannot load the metric"):
        TaskMetrics([ALL_TASKS[0]], {"sentiment": str(FIXTURES / "no-such-metric")})(
            EvalPrediction(predictions=logits, label_ids=np.array([1, 1, 1])), "sentiment")
