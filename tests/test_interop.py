"""sentence-transformers interop (`mtl_st.interop`): the exported folder, the raw saved folder, its evaluators run on
the model, and `encode`'s sentence-transformers keywords."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modeling_mtl import MultiTaskModel
from tests.utils import TASKS, saved_model, sst_sentences, tiny_model


@pytest.mark.parametrize("pooling, normalize", [("mean", True), ("max", False), ("cls", False)])
def test_sentence_transformer_export_tiny(tmp_path, tokenizer, pooling, normalize):
    st = pytest.importorskip("sentence_transformers")
    model = tiny_model(pooling=pooling, normalize_embeddings=normalize)
    model.save_sentence_transformer(tmp_path / "st", tokenizer=tokenizer)
    modules = json.loads((tmp_path / "st" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"] + (["Normalize"] if normalize else [])
    pooling_config = json.loads((tmp_path / "st" / "1_Pooling" / "config.json").read_text())
    assert pooling_config[f"pooling_mode_{ {'mean': 'mean_tokens', 'max': 'max_tokens', 'cls': 'cls_token'}[pooling] }"]
    loaded = st.SentenceTransformer(str(tmp_path / "st"), device="cpu")
    sentences = ["short", "a somewhat longer sentence with padding around it", "mid size one"]
    np.testing.assert_allclose(loaded.encode(sentences), model.encode(sentences, tokenizer=tokenizer), atol=1e-5)


def test_sentence_transformer_export_minilm(tmp_path, minilm):
    st = pytest.importorskip("sentence_transformers")
    model = MultiTaskModel.from_encoder("sentence-transformers/all-MiniLM-L6-v2", tasks=TASKS, normalize_embeddings=True)
    model.save_sentence_transformer(tmp_path / "st")
    loaded = st.SentenceTransformer(str(tmp_path / "st"), device="cpu")
    assert loaded.max_seq_length == 256
    sentences = sst_sentences(64) + ["word " * 400]  # one past max_seq_length: both truncate at 256
    assert np.abs(loaded.encode(sentences) - model.encode(sentences)).max() < 1e-5


def test_sentence_transformers_loads_the_raw_folder(tmp_path, tokenizer):
    st = pytest.importorskip("sentence_transformers")
    path = saved_model(tmp_path, tokenizer, normalize_embeddings=True, max_seq_length=64)
    model = MultiTaskModel.from_pretrained(path)
    loaded = st.SentenceTransformer(str(path), trust_remote_code=True, device="cpu")
    assert loaded.max_seq_length == 64
    sentences = ["short", "a much longer sentence " * 40]
    embeddings = loaded.encode(sentences)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embeddings, model.encode(sentences), atol=1e-5)


def test_sentence_transformers_evaluator_runs_on_the_model(tokenizer):
    pytest.importorskip("sentence_transformers")
    from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator

    model = tiny_model()
    model.tokenizer = tokenizer
    evaluator = EmbeddingSimilarityEvaluator(["a cat", "a dog", "rain"], ["a kitten", "a car", "sunshine"],
                                             [0.9, 0.2, 0.4], name="tiny")
    metrics = evaluator(model)
    assert "tiny_spearman_cosine" in metrics
    assert model.model_card_data.metrics[-1]["evaluator"] == "EmbeddingSimilarityEvaluator"


def test_encode_accepts_sentence_transformers_keywords(tokenizer):
    pytest.importorskip("sentence_transformers")
    model = tiny_model()
    model.tokenizer = tokenizer
    sentences = ["a cat sat", "on the mat"]
    plain = model.encode(sentences)
    tensor = model.encode(sentences, convert_to_tensor=True, normalize_embeddings=True)
    assert isinstance(tensor, torch.Tensor)
    np.testing.assert_allclose(tensor.numpy(), plain / np.linalg.norm(plain, axis=1, keepdims=True), atol=1e-6)
    truncated = model.encode(sentences, truncate_dim=8, normalize_embeddings=True)
    assert truncated.shape == (2, 8) and np.allclose(np.linalg.norm(truncated, axis=1), 1.0, atol=1e-6)
    assert model.encode(sentences, precision="ubinary").dtype == np.uint8
    prompted = model.encode(sentences, prompt="query: ")
    np.testing.assert_allclose(prompted, model.encode(["query: " + s for s in sentences]))
    np.testing.assert_allclose(model.encode(sentences, pool=None, chunk_size=4), plain)  # ignored keywords
    with pytest.raises(ValueError, match="output_value"):
        model.encode(sentences, output_value="token_embeddings")
    with pytest.raises(ValueError, match="named prompts"):
        model.encode(sentences, prompt_name="query")
