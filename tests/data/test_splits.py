"""Splits (`mtl_st.data.splits`): task files of every format, columns and labels, carving validation and test
splits, local `datasets`, and tokenisation with label alignment."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

from mtl_st.data.arguments import TaskDataArguments
from mtl_st.data.splits import check_labels, infer_labels, load_task_splits, take_first, tokenize_task
from mtl_st.errors import DataError
from tests.utils import shared_file, write_rows

SEQ, TOK = "sequence_classification", "token_classification"
NO_CARVE = {"validation_split_fraction": 0, "test_split_fraction": 0}


# ----------------------------------------------------------------------------- task files
def seq_task(tmp_path: Path, train_rows: list[dict], **kwargs) -> TaskDataArguments:
    data_files = {"train": str(write_rows(tmp_path / "train.jsonl", train_rows))}
    data_files.update(kwargs.pop("data_files", {}))
    return TaskDataArguments(name="sent", type="sequence_classification", data_files=data_files, **kwargs)


def test_missing_column_lists_existing_columns(tmp_path):
    task = seq_task(tmp_path, [{"sentence": "hi", "label": "pos"}])
    with pytest.raises(DataError, match=r"'text'.*train\.jsonl:1.*\['label', 'sentence'\]"):
        load_task_splits(task)
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("sentence,sentiment\nhello,pos\n", encoding="utf-8")
    task = TaskDataArguments(name="s", type="sequence_classification", data_files={"train": str(csv_path)})
    with pytest.raises(DataError, match=r"'text'.*train\.csv:2.*\['sentence', 'sentiment'\]"):
        load_task_splits(task)


def test_csv_tsv_json_readers_and_int_labels(tmp_path):
    (tmp_path / "train.tsv").write_text("text\tlabel\na b\t1\nc\t0\n", encoding="utf-8")
    (tmp_path / "val.csv").write_text('text,label\n"x, y",0\n', encoding="utf-8")
    (tmp_path / "test.json").write_text(json.dumps([{"text": "z", "label": 1}]), encoding="utf-8")
    task = TaskDataArguments(
        name="s",
        type="sequence_classification",
        data_files={
            "train": str(tmp_path / "train.tsv"),
            "validation": str(tmp_path / "val.csv"),
            "test": str(tmp_path / "test.json"),
        },
    )
    splits = load_task_splits(task)
    assert splits["train"]["label"] == ["1", "0"] and splits["train"]["text"] == ["a b", "c"]
    assert splits["validation"]["text"] == ["x, y"]
    assert splits["test"]["label"] == ["1"]  # JSON ints become strings without a label list
    # With `labels`, integers are indices into it.
    task = TaskDataArguments(
        name="s", type=SEQ, data_files={"train": str(tmp_path / "test.json")}, labels=["neg", "pos"], **NO_CARVE
    )
    assert load_task_splits(task)["train"]["label"] == ["pos"]


def test_invalid_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": \n', encoding="utf-8")
    task = TaskDataArguments(name="s", type="sequence_classification", data_files={"train": str(path)})
    with pytest.raises(DataError, match=r"train\.jsonl:3\b"):
        load_task_splits(task)


def test_sequence_task_needs_format_for_unknown_extension(tmp_path):
    task = TaskDataArguments(name="s", type=SEQ, data_files={"train": str(tmp_path / "eng.train")})
    with pytest.raises(DataError, match=r"'s'.*eng\.train.*format"):
        load_task_splits(task)


def test_token_task_from_jsonl(tmp_path):
    rows = [{"tokens": ["Paris", "is", "nice"], "tags": ["I-LOC", "O", "O"]}]
    path = write_rows(tmp_path / "ner.jsonl", rows)
    task = TaskDataArguments(name="ner", type=TOK, data_files={"train": str(path)}, tag_scheme="iob1", **NO_CARVE)
    splits = load_task_splits(task)
    assert splits["train"][0] == {"tokens": ["Paris", "is", "nice"], "tags": ["B-LOC", "O", "O"],
                                  "where": f"{tmp_path / 'ner.jsonl'}:1"}
    write_rows(path, [{"tokens": ["a", "b"], "tags": ["O"]}])
    with pytest.raises(DataError, match=r"ner\.jsonl:1.*2 tokens.*1 tags"):
        load_task_splits(task)


def test_similarity_csv_without_header_and_bad_rows(tmp_path):
    good = tmp_path / "sts.csv"
    good.write_text('A man plays.,"Someone, playing.",4.5\nA cat.,A dog.,0.5\n', encoding="utf-8")
    task = TaskDataArguments(name="sts", type="sentence_similarity", data_files={"validation": str(good)},
                             format="csv", column_names=["sentence1", "sentence2", "score"])
    splits = load_task_splits(task)
    assert list(splits) == ["validation"]  # eval-only: no train split, nothing carved
    assert splits["validation"][0] == {"text": "A man plays.", "text_pair": "Someone, playing.", "label": 4.5}

    bad = tmp_path / "bad.csv"
    bad.write_text("sentence1,sentence2,score\nA,B,4.0\nC,D,high\n", encoding="utf-8")
    task = TaskDataArguments(name="sts", type="sentence_similarity", data_files={"validation": str(bad)})
    with pytest.raises(DataError, match=re.escape(f"task 'sts': {bad}:3: column 'score'") + ".*expected a number"):
        load_task_splits(task)
    missing = tmp_path / "missing.csv"
    missing.write_text("sentence1,score\nA,4.0\n", encoding="utf-8")
    task = TaskDataArguments(name="sts", type="sentence_similarity", data_files={"validation": str(missing)})
    with pytest.raises(DataError, match=re.escape(f"column 'sentence2' not found in {missing}:2")):
        load_task_splits(task)
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("text,label\nfine,pos\n", encoding="utf-8")
    with pytest.raises(DataError, match="'s': no train split.*except .*sentence_similarity"):
        load_task_splits(TaskDataArguments(name="s", type="sequence_classification",
                                           data_files={"validation": str(labelled)}))


def test_task_without_train_rows(tmp_path):
    task = seq_task(tmp_path, [])
    with pytest.raises(DataError, match=r"task 'sent'.*no rows"):
        load_task_splits(task)


def test_task_without_train_split(tmp_path):
    test = write_rows(tmp_path / "test.jsonl", [{"text": "t", "label": "x"}])
    task = TaskDataArguments(name="evalonly", type="sequence_classification", data_files={"test": str(test)})
    with pytest.raises(DataError, match=r"'evalonly'.*no train split"):
        load_task_splits(task)


def test_missing_data_file_names_path(tmp_path):
    task = TaskDataArguments(name="s", type=SEQ, data_files={"train": str(tmp_path / "gone.jsonl")})
    with pytest.raises(DataError, match=r"gone\.jsonl"):
        load_task_splits(task)


# ----------------------------------------------------------------------------- labels
def test_label_in_test_missing_from_train(tmp_path):
    test = write_rows(tmp_path / "test.jsonl", [{"text": "t", "label": "neutral"}])
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}]
    task = seq_task(tmp_path, rows, data_files={"test": str(test)}, validation_split_fraction=0)
    splits = load_task_splits(task)
    labels = infer_labels(task, splits["train"])
    with pytest.raises(DataError, match=r"'sent'.*'neutral'.*test split"):
        check_labels(task, splits, labels)


def test_given_labels_also_check_train(tmp_path):
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": "meh"}]
    task = seq_task(tmp_path, rows, labels=["neg", "pos"], **NO_CARVE)
    splits = load_task_splits(task)
    assert infer_labels(task, splits["train"]) == ["neg", "pos"]
    with pytest.raises(DataError, match=r"'sent'.*'meh'.*train split"):
        check_labels(task, splits, ["neg", "pos"])


def test_sequence_label_inference_uses_whole_train_split(tmp_path):
    rows = [{"text": f"t{i}", "label": "b"} for i in range(50)] + [{"text": "last", "label": "a"}]
    task = seq_task(tmp_path, rows, validation_split_fraction=0, test_split_fraction=0)
    train = load_task_splits(task)["train"]
    assert infer_labels(task, train) == ["a", "b"]
    assert infer_labels(task, take_first(train, 10)) == ["b"]  # what truncating first would lose
    assert len(take_first(train, 10)) == 10 and take_first(train, None) is train
    assert take_first(train, 10)["text"] == [f"t{i}" for i in range(10)]
    numeric = Dataset.from_dict({"text": ["x"] * 3, "label": ["10", "2", "0"]})
    assert infer_labels(task, numeric) == ["0", "2", "10"]


def test_token_label_inference_order_and_both_prefixes():
    task = TaskDataArguments(name="ner", type="token_classification", data_files={"train": "x"})
    tags = [["B-PER", "O"], ["O", "B-LOC", "I-LOC"]]
    train = Dataset.from_dict({"tokens": [["a", "b"], ["c", "d", "e"]], "tags": tags})
    assert infer_labels(task, train) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_wnut17_labels_inferred_in_stable_order():
    path = shared_file("wnut17", "wnut17train.conll")
    task = TaskDataArguments(name="wnut", type="token_classification", data_files={"train": str(path)})
    splits = load_task_splits(task)
    labels = infer_labels(task, splits["train"])
    types = ["corporation", "creative-work", "group", "location", "person", "product"]
    assert labels == ["O"] + [f"{p}-{t}" for t in types for p in "BI"]


def test_integer_labels_with_a_numeric_label_list_are_names(tmp_path):

    rows = [{"text": f"row {i}", "label": label} for i, label in enumerate([1, 2, 3, 1, 2, 3])]
    path = tmp_path / "stars.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    task = TaskDataArguments(name="stars", type="sequence_classification", labels=[1, 2, 3],
                             data_files={"train": str(path), "validation": str(path), "test": str(path)})
    assert load_task_splits(task)["train"]["label"] == ["1", "2", "3", "1", "2", "3"]  # before: "2", "3", error
    # A datasets ClassLabel column with integer names still maps ids to names.
    saved = tmp_path / "saved"
    Dataset.from_dict({"text": ["a", "b"], "label": [0, 2]},
                      features=Features({"text": Value("string"), "label": ClassLabel(names=["1", "2", "3"])})
                      ).save_to_disk(str(saved))
    task = TaskDataArguments(name="stars", type="sequence_classification", dataset_name=str(saved),
                             validation_split_fraction=0, test_split_fraction=0)
    assert load_task_splits(task)["train"]["label"] == ["1", "3"]


# ----------------------------------------------------------------------------- carving
def test_carving_is_deterministic_disjoint_and_follows_fractions(tmp_path, caplog):
    rows = [{"text": f"row {i}", "label": str(i % 3)} for i in range(200)]
    task = seq_task(tmp_path, rows, validation_split_fraction=0.1, test_split_fraction=0.2)
    with caplog.at_level(logging.INFO, logger="mtl_st.data.splits"):
        first = load_task_splits(task, seed=1)
    assert "carved" in caplog.text and "'sent'" in caplog.text
    again = load_task_splits(task, seed=1)
    other = load_task_splits(task, seed=2)
    assert list(first) == ["train", "validation", "test"]
    assert (len(first["train"]), len(first["validation"]), len(first["test"])) == (140, 20, 40)
    for split in first:
        assert list(first[split]["text"]) == list(again[split]["text"])
    assert list(first["validation"]["text"]) != list(other["validation"]["text"])
    texts = [set(first[split]["text"]) for split in first]
    assert sum(len(t) for t in texts) == 200 and len(set.union(*texts)) == 200  # disjoint and complete


def test_carving_only_missing_split(tmp_path):
    val = write_rows(tmp_path / "val.jsonl", [{"text": "v", "label": "0"}])
    rows = [{"text": f"row {i}", "label": "0"} for i in range(30)]
    task = seq_task(tmp_path, rows, data_files={"validation": str(val)}, test_split_fraction=0.1)
    splits = load_task_splits(task)
    assert splits["validation"]["text"] == ["v"]
    assert (len(splits["train"]), len(splits["test"])) == (27, 3)


# ----------------------------------------------------------------------------- local datasets
def test_dataset_name_saved_to_disk_with_class_labels(tmp_path):
    tags = ClassLabel(names=["O", "B-PER", "I-PER"])
    features = Features({"id": Value("string"), "words": List(Value("string")), "ner_tags": List(tags)})
    dd = DatasetDict(
        {
            "train": Dataset.from_dict(
                {"id": ["0", "1"], "words": [["Ada", "Lovelace"], ["hi"]], "ner_tags": [[1, 2], [0]]},
                features=features,
            ),
            "validation": Dataset.from_dict({"id": ["2"], "words": [["Bob"]], "ner_tags": [[1]]}, features=features),
            "unsupervised": Dataset.from_dict({"id": ["3"], "words": [["x"]], "ner_tags": [[0]]}, features=features),
        }
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    task = TaskDataArguments.from_dict(
        {
            "name": "ner",
            "type": TOK,
            "dataset_name": str(tmp_path / "saved"),
            "text_column": "words",
            "label_column": "ner_tags",
            "test_split_fraction": 0.5,
        }
    )
    splits = load_task_splits(task)
    assert list(splits) == ["train", "validation", "test"]
    assert splits["validation"][0] == {"tokens": ["Bob"], "tags": ["B-PER"],
                                       "where": f"split 'validation' of dataset '{tmp_path / 'saved'}', row 0"}
    assert sorted(list(splits["train"]["tokens"]) + list(splits["test"]["tokens"])) == [["Ada", "Lovelace"], ["hi"]]
    assert len(splits["test"]) == 1
    ada = {"tokens": ["Ada", "Lovelace"], "tags": ["B-PER", "I-PER"],
           "where": f"split 'train' of dataset '{tmp_path / 'saved'}', row 0"}
    assert ada in list(splits["train"]) + list(splits["test"])

    bad = TaskDataArguments(name="ner", type="token_classification", dataset_name=str(tmp_path / "saved"))
    with pytest.raises(DataError, match=r"'tokens'.*\['id', 'words', 'ner_tags'\]"):
        load_task_splits(bad)


def test_dataset_name_builder_with_data_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    train = write_rows(tmp_path / "tr.jsonl", [{"text": "good", "label": 1}, {"text": "bad", "label": 0}])
    test = write_rows(tmp_path / "te.jsonl", [{"text": "fine", "label": 1}])
    task = TaskDataArguments(
        name="s",
        type=SEQ,
        dataset_name="json",
        data_files={"train": str(train), "test": str(test)},
        labels=["negative", "positive"],
        validation_split_fraction=0,
    )
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    splits = load_task_splits(task)
    assert splits["train"]["label"] == ["positive", "negative"]
    assert splits["test"][0] == {"text": "fine", "label": "positive"}


# ----------------------------------------------------------------------------- tokenisation and label alignment
def test_token_alignment_first_subtoken(tokenizer):
    words = ["Schwarzenegger", "visited", "Huddersfield"]
    assert len(tokenizer.tokenize(words[0])) > 1  # the test needs a word split into several pieces
    labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    label2id = {label: i for i, label in enumerate(labels)}
    ds = Dataset.from_dict({"tokens": [words], "tags": [["B-PER", "O", "B-LOC"]]})
    task = TaskDataArguments(name="ner", type="token_classification", data_files={"train": "x"})
    row = tokenize_task(ds, task, tokenizer, label2id, max_length=32)[0]
    assert set(row) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    encoding = tokenizer(words, is_split_into_words=True)
    word_ids = encoding.word_ids()
    n_pieces = word_ids.count(0)
    assert n_pieces > 1
    assert row["input_ids"] == encoding["input_ids"]
    assert row["labels"][0] == -100 and row["labels"][-1] == -100  # [CLS], [SEP]
    assert row["labels"][1:1 + n_pieces] == [label2id["B-PER"]] + [-100] * (n_pieces - 1)
    assert row["labels"][1 + n_pieces] == label2id["O"]
    assert sum(label != -100 for label in row["labels"]) == len(words)

    all_tokens = TaskDataArguments(name="ner", type=TOK, data_files={"train": "x"}, label_all_tokens=True)
    row = tokenize_task(ds, all_tokens, tokenizer, label2id, max_length=32)[0]
    assert row["labels"][1:1 + n_pieces] == [label2id["B-PER"]] + [label2id["I-PER"]] * (n_pieces - 1)
    assert row["labels"][0] == -100 and row["labels"][-1] == -100

    truncated = tokenize_task(ds, task, tokenizer, label2id, max_length=4)[0]
    assert len(truncated["input_ids"]) == 4 == len(truncated["labels"])


def test_an_empty_token_split_tokenizes_to_no_rows(tokenizer):
    """`--max_predict_samples 0` or an empty file: no rows, not a crash on the missing window-index column."""
    ds = Dataset.from_dict({"tokens": [["a"]], "tags": [["O"]]}).select([])
    task = TaskDataArguments(name="ner", type="token_classification", data_files={"train": "x"})
    out = tokenize_task(ds, task, tokenizer, {"O": 0}, max_length=16)
    assert len(out) == 0 and "row" not in out.column_names


def test_sequence_tokenisation_and_unknown_label(tokenizer):
    ds = Dataset.from_dict({"text": ["a fine day", "meh"], "label": ["pos", "neg"]})
    task = TaskDataArguments(name="s", type="sequence_classification", data_files={"train": "x"})
    out = tokenize_task(ds, task, tokenizer, {"neg": 0, "pos": 1}, max_length=16)
    assert out["labels"] == [1, 0]
    assert out.column_names == ["input_ids", "token_type_ids", "attention_mask", "labels"]
    with pytest.raises(DataError, match=r"'s'.*'pos'"):
        tokenize_task(ds, task, tokenizer, {"neg": 0}, max_length=16)
