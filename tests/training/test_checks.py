"""Up-front checks of a run (`mtl_st.training.checks`): numbers out of range, a `metric_for_best_model` that no
evaluation reports, an empty evaluation split, a corrupt weights file; each one line naming the culprit, before
any model loads."""

from __future__ import annotations

import json

import pytest

import train
from tests.utils import error_line, make_config, no_model, tiny_model, write_config


@pytest.mark.parametrize("field,value", [
    ("head_learning_rate", -1), ("learning_rate", "-1e-4"), ("per_device_train_batch_size", 0),
    ("max_train_samples", -5), ("max_eval_samples", 0), ("max_seq_length", 0), ("gradient_accumulation_steps", 0),
    ("num_train_epochs", -1),
])
def test_out_of_range_numbers_are_refused_naming_the_field(field, value, tmp_path, tiny_encoder, capsys, monkeypatch):
    monkeypatch.setattr(train, "prepare_data", lambda *a, **k: pytest.fail("the data was read"))
    no_model(monkeypatch)
    assert train.cli([write_config(tmp_path, make_config(tmp_path, tiny_encoder, **{field: value}))]) == 2
    message = error_line(capsys)
    assert message.startswith(f"error: {field} must be"), message


def test_empty_eval_split_is_refused_or_carved(tmp_path, tiny_encoder, capsys, monkeypatch):
    empty = tmp_path / "empty.conll"
    empty.write_text("", encoding="utf-8")
    config = make_config(tmp_path, tiny_encoder, do_predict=False)
    config["tasks"][1]["data_files"]["validation"] = str(empty)
    with monkeypatch.context() as patch:
        no_model(patch)
        assert train.cli([write_config(tmp_path, config)]) == 2
    message = error_line(capsys)
    assert "'ner'" in message and "validation" in message and str(empty) in message and "on_empty_split" in message
    # A metric that no evaluation will report is refused up front (before: KeyError at the first evaluation).
    no_eval = make_config(tmp_path, tiny_encoder, metric_for_best_model="eval_ner_f1", load_best_model_at_end=True,
                          eval_strategy="epoch", save_strategy="epoch")
    no_eval["tasks"][1]["data_files"].pop("validation")
    no_eval["tasks"][1]["validation_split_fraction"] = 0
    for metric, fragment in (("eval_ner_f1", "eval_sentiment_accuracy"), ("eval_sentimnt_accuracy", "Did you mean")):
        with monkeypatch.context() as patch:
            no_model(patch)
            assert train.cli([write_config(tmp_path, dict(no_eval, metric_for_best_model=metric))]) == 2
        message = error_line(capsys)
        assert f"metric_for_best_model {metric!r}" in message and fragment in message
    config["tasks"][1]["on_empty_split"] = "carve"
    config["metric_for_best_model"] = "eval_ner_f1"
    assert train.cli([write_config(tmp_path, config)]) == 0
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert "eval_ner_f1" in results and "eval_sentiment_accuracy" in results


def test_corrupt_weights_file_gives_one_line_with_its_path(tmp_path, tiny_encoder, capsys):
    saved = tmp_path / "saved"
    tasks = [{"name": "sentiment", "type": "sequence_classification", "labels": ["negative", "neutral", "positive"]}]
    tiny_model(tasks=tasks).save_pretrained(saved)
    with open(saved / "model.safetensors", "r+b") as handle:
        handle.truncate(100)
    config = make_config(tmp_path, tiny_encoder, model_name_or_path=str(saved))
    config["tasks"] = config["tasks"][:1]
    assert train.cli([write_config(tmp_path, config)]) == 2
    message = error_line(capsys)
    assert message.startswith(f"error: {saved / 'model.safetensors'}: corrupt or unreadable weights file")


def test_a_lower_is_better_best_metric_keeps_the_best_checkpoint(tmp_path):
    """transformers treats any metric not ending in "loss" as higher-is-better: `eval_stars_mse` kept the worst."""
    from mtl_st.data.arguments import TaskDataArguments
    from mtl_st.errors import DataError
    from mtl_st.training.checks import check_metric_for_best_model
    from tests.utils import make_args, write_rows

    path = write_rows(tmp_path / "stars.jsonl", [{"text": "a", "label": 1.0}])
    specs = [TaskDataArguments(name="stars", type="regression", data_files={"train": path})]
    splits = {"stars": {"validation"}}
    args = make_args(tmp_path, metric_for_best_model="eval_stars_mse")
    assert args.greater_is_better is True  # transformers' guess from the name
    check_metric_for_best_model(args, specs, splits)
    assert args.greater_is_better is False
    higher = make_args(tmp_path, metric_for_best_model="eval_stars_pearson")
    check_metric_for_best_model(higher, specs, splits)
    assert higher.greater_is_better is True
    wrong = make_args(tmp_path, metric_for_best_model="eval_stars_mse", greater_is_better=True)
    with pytest.raises(DataError, match="is better when smaller, but greater_is_better is true"):
        check_metric_for_best_model(wrong, specs, splits)
