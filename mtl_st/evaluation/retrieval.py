"""Retrieval metrics from embeddings: corpus search (NDCG@10, MRR@10, MAP@100, recall@k, as sentence-transformers'
`InformationRetrievalEvaluator` computes them) and reranking of labelled candidates per query (MAP, MRR, as TREC QA
is scored).

Corpus search is `embedding_mtl.top_k_search` (also `MultiTaskModel.search`'s): a chunked matrix product with
`torch.topk`, so queries x corpus is never held whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from embedding_mtl import top_k_search as top_k

CORPUS_METRICS = ("ndcg_at_10", "mrr_at_10", "map_at_100", "recall_at_1", "recall_at_10")
RERANK_METRICS = ("map", "mrr")
TOP_K = 100  # the deepest cut any corpus metric reads (MAP@100)


def corpus_metrics(ranked: Sequence[Sequence[int]], relevant: Sequence[set[int]]) -> dict[str, float]:
    """`ndcg_at_10`, `mrr_at_10`, `map_at_100`, `recall_at_1`, `recall_at_10` (fractions, means over the queries that
    have a relevant document) of each query's ranked corpus indices against its relevant ones (binary relevance)."""
    totals = {name: 0.0 for name in CORPUS_METRICS}
    queries = 0
    for hits, gold in zip(ranked, relevant):
        if not gold:
            continue
        queries += 1
        flags = [index in gold for index in hits]
        totals["recall_at_1"] += sum(flags[:1]) / len(gold)
        totals["recall_at_10"] += sum(flags[:10]) / len(gold)
        totals["mrr_at_10"] += next((1.0 / (rank + 1) for rank, hit in enumerate(flags[:10]) if hit), 0.0)
        dcg = sum(1.0 / math.log2(rank + 2) for rank, hit in enumerate(flags[:10]) if hit)
        ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(gold), 10)))
        totals["ndcg_at_10"] += dcg / ideal
        found, precision_sum = 0, 0.0
        for rank, hit in enumerate(flags[:100]):
            if hit:
                found += 1
                precision_sum += found / (rank + 1)
        totals["map_at_100"] += precision_sum / min(100, len(gold))
    return {name: (value / queries if queries else 0.0) for name, value in totals.items()}


def rerank_metrics(scores: Sequence[Sequence[float]], labels: Sequence[Sequence[int]]) -> dict[str, float]:
    """`map` and `mrr` of each query's candidates ranked by score (best first; ties keep the file's order) against
    their 0/1 labels, over the queries with at least one correct candidate (as TREC QA is scored)."""
    average_precisions, reciprocal_ranks = [], []
    for query_scores, query_labels in zip(scores, labels):
        if not any(query_labels):
            continue
        order = np.argsort(-np.asarray(query_scores, dtype=np.float64), kind="stable")
        ranked = [bool(query_labels[i]) for i in order]
        found, precision_sum = 0, 0.0
        for rank, hit in enumerate(ranked):
            if hit:
                found += 1
                precision_sum += found / (rank + 1)
        average_precisions.append(precision_sum / found)
        reciprocal_ranks.append(1.0 / (ranked.index(True) + 1))
    if not average_precisions:
        return {"map": 0.0, "mrr": 0.0}
    return {"map": float(np.mean(average_precisions)), "mrr": float(np.mean(reciprocal_ranks))}


def rerank_model(model, rows: Sequence[tuple[str, str, int]], tokenizer=None, batch_size: int = 64,
                 truncate_dim: int | None = None) -> dict[str, float]:
    """`map` and `mrr` of any model with an `encode` (a `MultiTaskModel`, the ONNX runtime, a `SentenceTransformer`)
    on `(query, candidate, 0/1 label)` rows, each query's candidates ranked by cosine (TREC QA's layout). The model's
    `query` / `document` prompts apply where it has them."""
    prompts = getattr(getattr(model, "config", None), "prompts", {}) or {}
    groups: dict[str, list[int]] = {}
    for index, (query, _, _) in enumerate(rows):
        groups.setdefault(query, []).append(index)
    options = {"normalize": True} if truncate_dim is None else {"normalize": True, "truncate_dim": truncate_dim}
    queries = model.encode([prompts.get("query", "") + q for q in groups], tokenizer=tokenizer, batch_size=batch_size,
                           **options)
    candidates = model.encode([prompts.get("document", "") + c for _, c, _ in rows], tokenizer=tokenizer,
                              batch_size=batch_size, **options)
    scores = [[float(np.dot(queries[q], candidates[i])) for i in members] for q, members in enumerate(groups.values())]
    labels = [[int(rows[i][2]) for i in members] for members in groups.values()]
    return rerank_metrics(scores, labels)


__all__ = ["top_k", "corpus_metrics", "rerank_metrics", "rerank_model", "CORPUS_METRICS", "RERANK_METRICS", "TOP_K"]
