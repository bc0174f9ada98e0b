"""Adding a task type is one spec, one loss and one data class (the README's "How the code is laid out").

The block between the markers is the whole addition of a `pair_regression` type (two texts encoded jointly, one
number out: e.g. a graded relevance of a passage to a question); the test then trains, evaluates and predicts it
through train.py and the `multitask` pipeline, with nothing else changed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import Features, Value

import train
from losses_mtl import register_loss, regression_loss
from mtl_st.data.task_data import RegressionData, register_task_data
from tasks_mtl import Regression, register_task_type
from tests.utils import make_config, write_config

# --- the new type: begin

class PairRegression(Regression):
    name = "pair_regression"
    takes_pair = True  # the pipeline takes {"text", "text_pair"}; the head reads the pair's pooled vector


class PairRegressionData(RegressionData):
    type_name = "pair_regression"
    roles = {"text": "text", "text_pair": "text_pair", "label": "label"}
    features = Features({"text": Value("string"), "text_pair": Value("string"), "label": Value("float64")})

    def encode_texts(self, batch, tokenizer, max_length):
        return tokenizer(batch["text"], batch["text_pair"], truncation=True, max_length=max_length)


def register_pair_regression():
    register_task_type(PairRegression())
    register_loss("pair_regression", regression_loss)
    register_task_data(PairRegressionData())
# --- the new type: end


@pytest.fixture
def pair_regression():
    from losses_mtl import LOSSES
    from mtl_st.data.task_data import TASK_DATA
    from tasks_mtl import TASK_TYPES

    register_pair_regression()
    yield
    for registry in (TASK_TYPES, LOSSES, TASK_DATA):
        registry.pop("pair_regression", None)


def test_a_new_type_trains_evaluates_and_predicts_with_nothing_else_changed(tmp_path, tiny_encoder, pair_regression):
    from transformers import pipeline

    import pipeline_mtl  # noqa: F401  (registers "multitask")

    rng = np.random.default_rng(0)
    words = "paris rome river city film game rain sun".split()
    rows = [{"text": " ".join(rng.choice(words, 3)), "text_pair": " ".join(rng.choice(words, 5)),
             "label": float(rng.uniform(0, 3))} for _ in range(24)]
    path = tmp_path / "relevance.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = make_config(tmp_path, tiny_encoder, logging_steps=2)
    config["tasks"].append({"name": "relevance", "type": "pair_regression",
                            "data_files": {"train": str(path), "validation": str(path), "test": str(path)}})
    assert train.cli([write_config(tmp_path, config)]) == 0

    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    for key in ("eval_relevance_pearson", "eval_relevance_spearman", "eval_relevance_mse", "test_relevance_mse",
                "train_loss"):
        assert np.isfinite(results[key]), key
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert any("loss_relevance" in entry for entry in state["log_history"])
    pipe = pipeline("multitask", model=str(tmp_path / "run"), device="cpu")
    answer = pipe({"text": "paris river", "text_pair": "the city on the river"})
    assert set(answer) == {"relevance"} and isinstance(answer["relevance"]["score"], float)
