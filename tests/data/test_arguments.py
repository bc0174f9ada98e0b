"""`TaskDataArguments` (`mtl_st.data.arguments`): building from a YAML mapping, defaults, validation by name."""

from __future__ import annotations

import pytest

from mtl_st.data.arguments import TaskDataArguments
from mtl_st.errors import DataError

TOK = "token_classification"


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
