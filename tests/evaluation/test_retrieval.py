"""Retrieval metrics: corpus search against sentence-transformers' `InformationRetrievalEvaluator` on the same model
and data, reranking MAP/MRR against a hand computation, and the chunked search against a full score matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedding_mtl import top_k_search
from mtl_st.evaluation.retrieval import corpus_metrics, rerank_metrics
from tests.utils import sst_sentences, tiny_model


def test_chunked_search_equals_the_full_score_matrix():
    rng = np.random.default_rng(0)
    queries, corpus = rng.normal(size=(37, 16)), rng.normal(size=(1203, 16))
    scores, indices = top_k_search(queries, corpus, k=10, query_chunk=8, corpus_chunk=100)
    full = torch.nn.functional.normalize(torch.tensor(queries), dim=-1) @ \
        torch.nn.functional.normalize(torch.tensor(corpus), dim=-1).T
    expected = torch.topk(full.float(), 10, dim=1)
    assert torch.equal(indices, expected.indices)
    torch.testing.assert_close(scores, expected.values, rtol=1e-5, atol=1e-6)


def test_rerank_map_and_mrr_by_hand():
    scores = [[0.9, 0.8, 0.1, 0.7], [0.2, 0.5], [0.3, 0.1]]
    labels = [[0, 1, 0, 1], [1, 0], [0, 0]]  # the third query has no correct candidate: left out
    # Query 1: ranked 0.9(0) 0.8(1) 0.7(1) 0.1(0) -> AP = (1/2 + 2/3) / 2, RR = 1/2. Query 2: 0.5(0) 0.2(1) -> AP 1/2.
    result = rerank_metrics(scores, labels)
    assert result["map"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 / 2) / 2)
    assert result["mrr"] == pytest.approx((1 / 2 + 1 / 2) / 2)


def test_corpus_metrics_by_hand():
    ranked = [[3, 1, 2, 0], [0, 1, 2, 3]]
    relevant = [{1, 0}, {0}]
    result = corpus_metrics(ranked, relevant)
    assert result["recall_at_1"] == pytest.approx((0 + 1) / 2)
    assert result["mrr_at_10"] == pytest.approx((1 / 2 + 1) / 2)
    assert result["map_at_100"] == pytest.approx(((1 / 2 + 2 / 4) / 2 + 1) / 2)
    ideal = 1 + 1 / np.log2(3)
    assert result["ndcg_at_10"] == pytest.approx(((1 / np.log2(3) + 1 / np.log2(5)) / ideal + 1) / 2)


def test_corpus_metrics_equal_sentence_transformers_information_retrieval_evaluator(tokenizer):
    evaluation = pytest.importorskip("sentence_transformers.sentence_transformer.evaluation")
    from mtl_st.data.retrieval import RetrievalData

    model = tiny_model(tasks=[{"name": "qa", "type": "retrieval"}])
    model.tokenizer = tokenizer
    sentences = sst_sentences(160)
    queries = {f"q{i}": sentences[i] for i in range(40)}
    corpus = {f"d{i}": sentences[40 + i] for i in range(120)}
    relevant = {f"q{i}": {f"d{(3 * i) % 120}", f"d{(3 * i + 7) % 120}"} for i in range(40)}
    evaluator = evaluation.InformationRetrievalEvaluator(queries, corpus, relevant, name="x", show_progress_bar=False,
                                                         batch_size=16)
    reference = evaluator(model)

    ids = list(corpus)
    query_vectors = model.encode(list(queries.values()))
    doc_vectors = model.encode(list(corpus.values()))
    labels = [[0, q, *sorted(ids.index(d) for d in relevant[qid])] for q, qid in enumerate(queries)]
    labels += [[1, d] for d in range(len(ids))]
    width = max(len(row) for row in labels)
    label_ids = np.array([row + [-100] * (width - len(row)) for row in labels])
    ours = RetrievalData().metrics({"name": "qa", "type": "retrieval"}, np.concatenate([query_vectors, doc_vectors]),
                                   label_ids)
    for key, theirs in (("ndcg_at_10", "x_cosine_ndcg@10"), ("mrr_at_10", "x_cosine_mrr@10"),
                        ("map_at_100", "x_cosine_map@100"), ("recall_at_1", "x_cosine_recall@1"),
                        ("recall_at_10", "x_cosine_recall@10")):
        assert ours[key] == pytest.approx(reference[theirs], abs=1e-6), key
