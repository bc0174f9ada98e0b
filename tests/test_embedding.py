"""The model's sentence-embedding side (`embedding_mtl`): the tokenizer attribute, `encode` on several threads,
bad inputs, named prompts, Matryoshka truncation, `search` and sentence-transformers' query/document entry points."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from tests.utils import sst_sentences, tiny_model

RETRIEVAL = {"name": "qa", "type": "retrieval", "prompts": {"query": "query: ", "document": "passage: "}}


def test_a_missing_tokenizer_is_an_attribute_error_with_its_message(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    from modeling_mtl import MultiTaskModel

    loaded = MultiTaskModel.from_pretrained(tmp_path)
    assert getattr(loaded, "tokenizer", None) is None and not hasattr(loaded, "tokenizer")
    with pytest.raises(AttributeError, match="No tokenizer found beside the model"):
        loaded.tokenizer  # noqa: B018

    class First(torch.nn.Module):  # the main tensor, as tracing code takes it
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids)[0]

    traced = torch.jit.trace(First(loaded), (torch.tensor([[101, 2000, 102]]),))  # torch scans every attribute
    assert traced(torch.tensor([[101, 2000, 102]])).shape == (1, 3, 32)


def test_encode_from_four_threads_equals_one_thread_and_leaves_the_mode_alone(tokenizer):
    """A model fresh from `from_encoder` is in training mode: encoding used to toggle it, so dropout ran while other
    threads encoded (up to 0.87 off)."""
    model = tiny_model().train()
    model.tokenizer = tokenizer
    sentences = sst_sentences(48)
    expected = model.encode(sentences, batch_size=8)
    results, errors = {}, []

    def work(worker: int) -> None:
        try:
            results[worker] = [model.encode(sentences, batch_size=8) for _ in range(3)]
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for rounds in results.values():
        for got in rounds:
            assert np.array_equal(got, expected)
    assert model.training
    assert all(module.training for module in model.modules())


@pytest.mark.parametrize("bad", [None, {"a": 1}, 3.5, b"bytes"])
def test_encode_refuses_what_is_not_text(bad, tokenizer):
    model = tiny_model()
    model.tokenizer = tokenizer
    with pytest.raises(TypeError, match="takes a string or a list of strings"):
        model.encode(bad)


def test_named_prompts_apply_and_an_unknown_name_is_refused(tokenizer):
    model = tiny_model(tasks=[RETRIEVAL])
    model.tokenizer = tokenizer
    np.testing.assert_allclose(model.encode(["where is paris"], prompt_name="query"),
                               model.encode(["query: where is paris"]), atol=1e-6)
    np.testing.assert_allclose(model.encode_document(["paris is in france"]),
                               model.encode(["passage: paris is in france"]), atol=1e-6)
    with pytest.raises(ValueError, match=r"no prompt named 'passage'; its named prompts are \['document', 'query'\]"):
        model.encode(["x"], prompt_name="passage")


def test_two_tasks_cannot_give_one_prompt_two_texts():
    second = {**RETRIEVAL, "name": "qb", "prompts": {"query": "question: "}}
    with pytest.raises(ValueError, match="give the query prompt different texts"):
        tiny_model(tasks=[RETRIEVAL, second])


def test_truncate_dim_cuts_then_normalises(tokenizer):
    model = tiny_model(tasks=[RETRIEVAL])
    model.tokenizer = tokenizer
    full = model.encode(["a sentence", "another one"], normalize=False)
    cut = model.encode(["a sentence", "another one"], truncate_dim=8, normalize=True)
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"truncate_dim must be in \[1, 32\]"):
        model.encode(["x"], truncate_dim=64)


def test_search_ranks_the_corpus_with_the_prompts(tokenizer):
    model = tiny_model(tasks=[RETRIEVAL])
    model.tokenizer = tokenizer
    corpus = sst_sentences(30)
    hits = model.search("the film was fine", corpus, top_k=5)
    query = model.encode(["query: the film was fine"], normalize=True)[0]
    documents = model.encode(["passage: " + text for text in corpus], normalize=True)
    order = np.argsort(-(documents @ query), kind="stable")[:5]
    assert [index for index, _ in hits] == order.tolist()
    assert hits[0][1] == pytest.approx(float(documents[order[0]] @ query), abs=1e-5)
    assert len(model.search(["a", "b"], corpus, top_k=3)) == 2


def test_sentence_transformers_export_truncates_and_prompts_as_encode(tmp_path, tokenizer):
    st = pytest.importorskip("sentence_transformers")
    model = tiny_model(tasks=[{**RETRIEVAL, "matryoshka_dims": [16]}], normalize_embeddings=True)
    model.tokenizer = tokenizer
    model.save_sentence_transformer(tmp_path / "st")
    loaded = st.SentenceTransformer(str(tmp_path / "st"), truncate_dim=16, device="cpu")
    assert loaded.prompts == {"query": "query: ", "document": "passage: "}
    texts = ["where is paris", "a much longer question about rome and its river"]
    ours = model.encode(texts, truncate_dim=16, normalize=True, prompt_name="query")
    theirs = loaded.encode(texts, prompt_name="query", normalize_embeddings=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
