"""The retrieval task's data side: pair, hard-negative and labelled rows, a BEIR folder, bad rows named, and a run
that trains on pairs and reports every metric (Matryoshka widths included)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from mtl_st.data.arguments import TaskDataArguments
from mtl_st.data.splits import load_task_splits, tokenize_task
from mtl_st.errors import DataError
from tests.utils import write_rows


def retrieval(tmp_path, rows: list[dict], **fields) -> TaskDataArguments:
    path = write_rows(tmp_path / "rows.jsonl", rows)
    return TaskDataArguments(name="qa", type="retrieval", data_files={"train": path, "validation": path}, **fields)


@pytest.mark.parametrize("row, message", [
    ({"anchor": "a question"}, "column 'positive' not found in .*rows.jsonl:1"),
    ({"anchor": "a question", "positive": ""}, r"rows.jsonl:1: column 'positive' must hold a non-empty text"),
    ({"anchor": "a question", "positive": "an answer", "negative": None},
     r"rows.jsonl:1: column 'negative' must hold a non-empty text"),
])
def test_a_row_without_its_positive_or_negative_is_named(tmp_path, row, message):
    with pytest.raises(DataError, match=message):
        load_task_splits(retrieval(tmp_path, [row]))


def test_named_negative_columns_must_exist(tmp_path):
    spec = retrieval(tmp_path, [{"anchor": "q", "positive": "p", "hard": "n"}], negative_columns=["hard", "harder"])
    with pytest.raises(DataError, match="rows.jsonl:1: negative column 'harder' is missing"):
        load_task_splits(spec)


def test_training_rows_keep_hard_negatives_and_evaluation_rows_search_the_pool(tmp_path, tokenizer):
    rows = [{"anchor": f"question {i}", "positive": f"answer {i % 3}", "negative_1": f"other {i}"} for i in range(6)]
    spec = retrieval(tmp_path, rows, validation_split_fraction=0.0, test_split_fraction=0.0)
    splits = load_task_splits(spec)
    train = tokenize_task(splits["train"], spec, tokenizer, {}, 32, "train")
    assert {"input_ids", "pair_input_ids", "negative_input_ids", "labels"} <= set(train.column_names)
    assert len(train["negative_input_ids"][0]) == 1
    evaluation = tokenize_task(splits["validation"], spec, tokenizer, {}, 32, "validation")
    kinds = [labels[0] for labels in evaluation["labels"]]
    assert kinds.count(0) == 6 and kinds.count(1) == 3  # six queries search the three distinct answers
    assert evaluation["labels"][0] == [0, 0, 0] and evaluation["labels"][3] == [0, 3, 0]


def test_labelled_rows_are_reranked_per_query_and_train_on_their_positives(tmp_path, tokenizer):
    rows = [{"q": "where is paris", "a": a, "y": y} for a, y in (("in france", 1), ("a city", 0), ("rome", 0))]
    rows += [{"q": "who wrote it", "a": a, "y": y} for a, y in (("nobody", 0), ("an author", 1))]
    spec = retrieval(tmp_path, rows, text_column="q", text_pair_column="a", label_column="y",
                     validation_split_fraction=0.0, test_split_fraction=0.0)
    splits = load_task_splits(spec)
    train = tokenize_task(splits["train"], spec, tokenizer, {}, 32, "train")
    assert len(train) == 2  # the label-1 rows
    evaluation = tokenize_task(splits["validation"], spec, tokenizer, {}, 32, "validation")
    assert [row[0] for row in evaluation["labels"]] == [2, 2, 3, 3, 3, 3, 3]
    assert evaluation["labels"][2:] == [[3, 0, 0, 1], [3, 1, 0, 0], [3, 2, 0, 0], [3, 3, 1, 0], [3, 4, 1, 1]]


def test_a_beir_folder_is_read_as_queries_a_corpus_and_qrels(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in [
        {"_id": "d1", "title": "Paris", "text": "is in France"}, {"_id": "d2", "text": "Rome is in Italy"},
        {"_id": "d3", "text": "an unrelated page"}]) + "\n", encoding="utf-8")
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "where is paris"}) + "\n", encoding="utf-8")
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n", encoding="utf-8")
    spec = TaskDataArguments(name="qa", type="retrieval", format="beir", data_files={"validation": str(folder)})
    validation = load_task_splits(spec)["validation"]
    assert validation["text"] == ["where is paris", "", ""]
    assert validation["text_pair"] == ["Paris is in France", "Rome is in Italy", "an unrelated page"]
    assert validation["label"] == [1.0, -1.0, -1.0]
    # one task may train on pairs and evaluate on a BEIR folder: the folder is recognised by its corpus.jsonl
    pairs = write_rows(tmp_path / "pairs.jsonl", [{"anchor": "where is rome", "positive": "Rome is in Italy"}])
    mixed = TaskDataArguments(name="qa", type="retrieval", data_files={"train": pairs, "validation": str(folder)},
                              test_split_fraction=0.0)
    splits = load_task_splits(mixed)
    assert splits["train"]["text_pair"] == ["Rome is in Italy"] and splits["validation"]["label"] == [1.0, -1.0, -1.0]
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq9\td1\t1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"qrels/dev.tsv:2: expected `query-id, corpus-id, score`"):
        load_task_splits(spec)


def test_model_fields_are_refused_on_types_that_take_none(tmp_path):
    path = write_rows(tmp_path / "s.jsonl", [{"text": "a", "label": "x"}])
    with pytest.raises(DataError, match="`mini_batch_size` applies to retrieval tasks only"):
        TaskDataArguments(name="s", type="sequence_classification", data_files={"train": path}, mini_batch_size=4)
    with pytest.raises(DataError, match="`matryoshka_dims` must be a list of distinct whole numbers"):
        TaskDataArguments(name="q", type="retrieval", data_files={"train": path}, matryoshka_dims=[64, 64])


def test_train_py_with_a_retrieval_task_reports_every_metric_at_every_width(tmp_path, tiny_encoder):
    import train

    rng = np.random.default_rng(0)
    words = "cat dog rain sun city river game food sport film car tree".split()
    pairs = []
    for _ in range(32):
        anchor = " ".join(rng.choice(words, size=3))
        pairs.append({"anchor": anchor, "positive": anchor + " " + str(rng.choice(words))})
    path = write_rows(tmp_path / "pairs.jsonl", pairs)
    config = {"model_name_or_path": tiny_encoder, "output_dir": str(tmp_path / "run"), "do_train": True,
              "do_eval": True, "tasks": [{"name": "qa", "type": "retrieval", "matryoshka_dims": [16],
                                          "prompts": {"query": "query: "},
                                          "data_files": {"train": path, "validation": path}}],
              "max_steps": 4, "per_device_train_batch_size": 8, "report_to": "none", "save_strategy": "no",
              "use_cpu": True, "metric_for_best_model": "eval_qa_ndcg_at_10_dim16"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert train.cli([str(tmp_path / "c.yaml")]) == 0
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    for key in ("ndcg_at_10", "mrr_at_10", "map_at_100", "recall_at_1", "recall_at_10"):
        assert f"eval_qa_{key}" in results and f"eval_qa_{key}_dim16" in results
    assert "eval_qa_loss" not in results
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["tasks"][0]["prompts"] == {"query": "query: "} and saved["tasks"][0]["matryoshka_dims"] == [16]
