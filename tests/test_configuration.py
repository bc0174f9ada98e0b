"""`MultiTaskConfig`: validation of tasks and pooling, each task type's fields, round trip, text sub-config."""

from __future__ import annotations

import pytest
from transformers import PretrainedConfig

from configuration_mtl import MultiTaskConfig
from tests.utils import ALL_TASKS, TASKS, TINY_ENCODERS

ENC = TINY_ENCODERS["bert"]


@pytest.mark.parametrize(
    "tasks, pooling, match",
    [
        ([{"name": "a", "type": "ranking", "labels": ["x"]}], "mean", "Task 'a' has unknown type 'ranking'"),
        ([{"name": "a", "type": "token_classification", "labels": ["O"]}] * 2, "mean", "Duplicate task name 'a'"),
        ([{"name": "a", "type": "sequence_classification", "labels": []}], "mean", "Task 'a' has no labels"),
        ([{"name": "a", "type": "sequence_classification"}], "mean", "Task 'a' has no labels"),
        ([{"name": "a", "type": "sequence_classification", "labels": ["x"]}], "median", "Unknown pooling mode 'median'"),
    ],
)
def test_config_rejects_bad_input(tasks, pooling, match):
    with pytest.raises(ValueError, match=match):
        MultiTaskConfig(encoder=dict(ENC), tasks=tasks, pooling=pooling)


def test_config_validates_each_type():
    encoder = TINY_ENCODERS["bert"]
    with pytest.raises(ValueError, match="'stars' is a regression task, which takes no `labels`"):
        MultiTaskConfig(encoder=dict(encoder), tasks=[{"name": "stars", "type": "regression", "labels": ["a"]}])
    with pytest.raises(ValueError, match="'topics'.*threshold"):
        MultiTaskConfig(encoder=dict(encoder), tasks=[{"name": "topics", "type": "multi_label_classification",
                                                      "labels": ["a"], "threshold": 2}])
    with pytest.raises(ValueError, match="'ner'.*'PER' is not a BIO tag"):
        MultiTaskConfig(encoder=dict(encoder), tasks=[{"name": "ner", "type": "token_classification",
                                                      "labels": ["O", "PER"]}])
    config = MultiTaskConfig(encoder=dict(encoder), tasks=[dict(task) for task in ALL_TASKS])
    assert config.get_task("topics")["threshold"] == 0.4 and config.get_task("sts")["scale"] == 20.0


def test_config_round_trip(tmp_path):
    config = MultiTaskConfig(encoder=dict(ENC), tasks=TASKS, pooling="max", normalize_embeddings=True, max_seq_length=64)
    config.save_pretrained(tmp_path)
    loaded = MultiTaskConfig.from_pretrained(tmp_path)
    assert loaded.tasks == TASKS
    assert (loaded.pooling, loaded.normalize_embeddings, loaded.max_seq_length) == ("max", True, 64)
    assert loaded.encoder.model_type == "bert" and loaded.encoder.hidden_size == 32


def test_upstream_get_text_config_ignores_a_sub_config_named_encoder():
    """Why `MultiTaskConfig.get_text_config` is overridden: transformers finds text sub-configs only under other
    names. When this fails, the override can go."""

    class Plain(PretrainedConfig):
        model_type = "plain-with-encoder"

        def __init__(self, encoder=None, **kwargs):
            self.encoder = encoder
            super().__init__(**kwargs)

    plain = Plain(encoder=MultiTaskConfig(encoder=dict(TINY_ENCODERS["bert"]), tasks=TASKS).encoder)
    assert plain.get_text_config() is plain
    config = MultiTaskConfig(encoder=dict(TINY_ENCODERS["bert"]), tasks=TASKS)
    assert config.get_text_config() is config.encoder
