"""`MultiTaskModel.encode` (the `encoding_mtl` engine): shapes, order, bad input, the saved tokenizer, and parity with
sentence-transformers on the real checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling_mtl import MultiTaskModel
from tests.utils import sst_sentences, tiny_model


def test_encode_shapes_and_errors(tokenizer):
    model = tiny_model()
    assert model.encode("one sentence", tokenizer=tokenizer).shape == (32,)
    assert model.encode(["a", "b c"], tokenizer=tokenizer).shape == (2, 32)
    empty = model.encode([], tokenizer=tokenizer)
    assert isinstance(empty, np.ndarray) and empty.shape == (0, 32)
    as_torch = model.encode(["a"], tokenizer=tokenizer, convert_to_numpy=False)
    assert isinstance(as_torch, torch.Tensor) and as_torch.shape == (1, 32)
    with pytest.raises(TypeError, match=r"item 1 is int"):
        model.encode(["fine", 3], tokenizer=tokenizer)


def test_encode_refuses_a_batch_size_below_one(tokenizer):
    model = tiny_model()
    for batch_size in (-1, 0, 2.5):
        with pytest.raises(ValueError, match="batch_size of at least 1"):
            model.encode(["one", "two"], tokenizer=tokenizer, batch_size=batch_size)
    assert model.encode(["one", "two"], tokenizer=tokenizer, batch_size=1).shape == (2, 32)


def test_encode_restores_input_order(tokenizer):
    model = tiny_model()
    sentences = ["x", "a much longer sentence here", "mid length one", "y z"]
    together = model.encode(sentences, tokenizer=tokenizer, batch_size=2)
    one_by_one = np.stack([model.encode(s, tokenizer=tokenizer) for s in sentences])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_encode_without_tokenizer_uses_the_saved_one(tmp_path, tokenizer):
    model = tiny_model()
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").exists()
    loaded = MultiTaskModel.from_pretrained(tmp_path)
    np.testing.assert_allclose(loaded.encode(["hello"]), model.encode(["hello"]), atol=1e-6)


def test_encode_without_any_tokenizer_says_so(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = MultiTaskModel.from_pretrained(tmp_path)
    with pytest.raises(AttributeError, match="No tokenizer found beside the model"):
        loaded.encode(["hello"])
    # An AttributeError, so that the usual probes work.
    assert getattr(loaded, "tokenizer", None) is None and not hasattr(loaded, "tokenizer")


def test_encode_matches_sentence_transformers(minilm_model, minilm):
    st = pytest.importorskip("sentence_transformers")
    sentences = sst_sentences(240)
    reference = st.SentenceTransformer(str(minilm), device="cpu")
    expected = reference.encode(sentences, batch_size=32, convert_to_numpy=True)
    ours = minilm_model.encode(sentences, batch_size=32)
    assert ours.shape == expected.shape == (240, 384)
    assert np.abs(ours - expected).max() < 1e-4
    # A short sentence padded beside much longer ones embeds as it does alone (and as sentence-transformers does).
    mixed = ["Good.", sentences[0], sentences[1]]
    alone = reference.encode(["Good."], convert_to_numpy=True)[0]
    assert np.abs(minilm_model.encode(mixed, batch_size=3)[0] - alone).max() < 1e-4


def test_encode_tokenises_a_chunk_at_a_time_and_hands_freed_memory_back(tokenizer, monkeypatch):
    """Item 18 of the outside round: the tokenizer never sees more than one chunk, the heap's freed pages are handed
    back between chunks (what keeps the resident size of a long encode flat: bench/encode_memory.py), and the result
    equals one big chunk's, in the input order."""
    import encoding_mtl

    model = tiny_model()
    texts = [f"sentence number {i} " + "word " * (i % 7) for i in range(23)]
    calls, releases = [], []
    inner = model._tokenize_for_encode(tokenizer)

    def counting(chunk):
        calls.append(len(chunk))
        return inner(chunk)

    monkeypatch.setattr(encoding_mtl, "release_free_memory", lambda: releases.append(1))
    run = model._embed_for_encode(32, True)
    chunked = encoding_mtl.encode_texts(texts, counting, run, 32, batch_size=4, chunk_size=5)
    assert calls == [5, 5, 5, 5, 3] and len(releases) == 5
    whole = encoding_mtl.encode_texts(texts, inner, run, 32, batch_size=4, chunk_size=len(texts))
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    np.testing.assert_allclose(chunked, model.encode(texts, tokenizer=tokenizer, normalize=True), atol=1e-6)


def test_release_free_memory_runs_here():
    """On glibc it is malloc_trim; elsewhere a no-op. Either way it is callable and returns."""
    import encoding_mtl

    encoding_mtl.release_free_memory()
