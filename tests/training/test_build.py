"""Model set-up for train.py (`mtl_st.training.build`): a saved model keeps its pooling unless the config says
otherwise, and `max_seq_length` reaches a new model."""

from __future__ import annotations

import train
from tests.utils import tiny_model


def test_train_starts_from_a_saved_model_with_its_own_or_the_configs_pooling(tmp_path, tokenizer):
    tasks = [{"name": "sentiment", "type": "sequence_classification", "labels": ["negative", "positive"]}]
    saved = tiny_model(tasks=tasks, pooling="cls", normalize_embeddings=True, max_seq_length=64)
    saved.save_pretrained(tmp_path / "saved")
    kept = train.build_model(train.ModelArguments(model_name_or_path=str(tmp_path / "saved")), tasks)
    assert (kept.config.pooling, kept.pooling.mode, kept.config.normalize_embeddings) == ("cls", "cls", True)
    changed = train.build_model(train.ModelArguments(model_name_or_path=str(tmp_path / "saved"), pooling="mean",
                                                     normalize_embeddings=False, max_seq_length=32), tasks)
    assert (changed.config.pooling, changed.pooling.mode, changed.config.normalize_embeddings) == ("mean", "mean", False)
    assert changed.config.max_seq_length == 32


def test_train_passes_max_seq_length_to_a_new_model(tiny_encoder):
    tasks = [{"name": "sentiment", "type": "sequence_classification", "labels": ["a", "b"]}]
    model = train.build_model(train.ModelArguments(model_name_or_path=tiny_encoder, max_seq_length=48), tasks)
    assert model.config.max_seq_length == 48
