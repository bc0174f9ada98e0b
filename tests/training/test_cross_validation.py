"""K-fold cross-validation (`mtl_st.training.cross_validation`): folds, their summary, and a run on the quickstart
data."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import yaml

import train
from mtl_st.errors import DataError
from mtl_st.training.cross_validation import fold_split, summarize_folds
from tests.utils import REPO


def test_folds_partition_the_train_split_and_summaries_skip_timings():
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": list(range(10))}),
                                   "test": datasets.Dataset.from_dict({"x": [99]})})
    folds = [fold_split(splits, k, 3, seed=0) for k in range(3)]
    held_out = [sorted(fold["validation"]["x"]) for fold in folds]
    assert sorted(x for part in held_out for x in part) == list(range(10)) and [len(p) for p in held_out] == [4, 3, 3]
    for fold, part in zip(folds, held_out):
        assert list(fold) == ["train", "validation"]  # no test split in a fold
        assert sorted(list(fold["train"]["x"]) + part) == list(range(10))
    assert [sorted(f["validation"]["x"]) for f in (fold_split(splits, k, 3, seed=0) for k in range(3))] == held_out
    monitor = datasets.DatasetDict({"validation": splits["test"], "test": splits["test"]})
    assert list(fold_split(monitor, 0, 3, seed=0)) == ["validation"]  # an eval-only task keeps its validation
    with pytest.raises(DataError, match="cross_validation_folds is 20"):
        fold_split(splits, 0, 20, seed=0)

    summary = summarize_folds([{"eval_a": 1.0, "eval_runtime": 5.0, "train_loss": 2.0}, {"eval_a": 3.0}])
    assert summary == {"eval_a": {"per_fold": [1.0, 3.0], "mean": 2.0, "std": pytest.approx(np.std([1, 3], ddof=1))}}


def test_cross_validation_on_the_quickstart_data(tmp_path, tiny_encoder):
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text(encoding="utf-8"))
    config.update({"model_name_or_path": tiny_encoder, "output_dir": str(tmp_path / "cv"), "cross_validation_folds": 3,
                   "max_train_samples": 30, "max_eval_samples": 20, "max_steps": 4, "save_strategy": "no",
                   "eval_strategy": "no", "report_to": "none", "show_examples": None, "use_cpu": True,
                   "logging_strategy": "no"})
    config = {key: value for key, value in config.items() if key not in ("load_best_model_at_end",
                                                                         "metric_for_best_model")}
    path = tmp_path / "cv.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert train.cli([str(path)]) == 0
    summary = json.loads((tmp_path / "cv" / "cv_results.json").read_text())
    assert summary["folds"] == 3
    for key in ("eval_sentiment_accuracy", "eval_ner_f1", "eval_loss"):
        entry = summary["metrics"][key]
        assert len(entry["per_fold"]) == 3
        assert entry["mean"] == pytest.approx(np.mean(entry["per_fold"]))
        assert entry["std"] == pytest.approx(np.std(entry["per_fold"], ddof=1))
    assert all((tmp_path / "cv" / f"fold-{k}" / "model.safetensors").exists() for k in range(3))
    assert not any(key.startswith("test_") for key in summary["metrics"])
