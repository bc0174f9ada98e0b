"""Odd label values and words are named at their file and line instead of becoming classes or losing entities."""

from __future__ import annotations

import pytest

from mtl_st.data.arguments import TaskDataArguments
from mtl_st.data.splits import load_task_splits, tokenize_task
from mtl_st.errors import DataError


def sequence_task(path: str, **fields) -> TaskDataArguments:
    return TaskDataArguments(name="s", type="sequence_classification", data_files={"train": path}, **fields)


def test_an_empty_csv_label_is_missing_not_a_class(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("text,label\ngood film,positive\nno label here,\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"rows.csv:3: column 'label': missing label \(an empty field\)"):
        load_task_splits(sequence_task(str(path)))


def test_a_json_nan_label_is_missing_not_the_class_nan(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "good", "label": "positive"}\n{"text": "odd", "label": NaN}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"rows.jsonl:2: column 'label': missing label \(nan is not a label\)"):
        load_task_splits(sequence_task(str(path)))


def test_a_regression_label_beyond_float32_is_refused(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a", "label": 1.0}\n{"text": "b", "label": 1e39}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"rows.jsonl:2: column 'label': 1e\+39 is beyond the range of float32"):
        load_task_splits(TaskDataArguments(name="r", type="regression", data_files={"train": str(path)}))


def test_column_names_for_a_csv_with_a_header_row_are_refused(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("text,label\ngood film,positive\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"rows.csv:1: the file has a header row \(text, label\)"):
        load_task_splits(sequence_task(str(path), column_names=["text", "label"]))


@pytest.mark.parametrize("word", ["\u200b", ""])
def test_a_word_without_tokens_inside_an_entity_is_named_at_its_line(word, tmp_path, tokenizer):
    """Its gold entity used to drop out of the labels and the metrics (recall inflated)."""
    path = tmp_path / "ner.jsonl"
    path.write_text('{"tokens": ["Emma", "likes", "Rome"], "tags": ["B-PER", "O", "B-LOC"]}\n'
                    '{"tokens": ["Bob", "' + word + '"], "tags": ["B-PER", "I-PER"]}\n', encoding="utf-8")
    spec = TaskDataArguments(name="ner", type="token_classification", data_files={"train": str(path)},
                             validation_split_fraction=0.0, test_split_fraction=0.0)
    train = load_task_splits(spec)["train"]
    labels = {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3, "I-LOC": 4}
    with pytest.raises(DataError, match=r"ner.jsonl:2: word 1 \(.*, tag I-PER\) gives no token"):
        tokenize_task(train, spec, tokenizer, labels, 32)


def test_a_word_without_tokens_outside_entities_is_fine(tmp_path, tokenizer):
    path = tmp_path / "ner.conll"
    path.write_text("Emma B-PER\n\u200b O\nlikes O\n", encoding="utf-8")
    spec = TaskDataArguments(name="ner", type="token_classification", data_files={"train": str(path)},
                             validation_split_fraction=0.0, test_split_fraction=0.0)
    train = load_task_splits(spec)["train"]
    assert train["where"] == [f"{path}:1"]
    tokenized = tokenize_task(train, spec, tokenizer, {"O": 0, "B-PER": 1, "I-PER": 2}, 32)
    assert sum(label == 1 for label in tokenized["labels"][0]) == 1


def test_a_task_name_with_a_dot_is_refused(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"task 'x.y': a task name cannot hold a '.'"):
        TaskDataArguments(name="x.y", type="sequence_classification", data_files={"train": str(path)})
