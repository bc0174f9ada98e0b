"""Embedding quality on sentence pairs: the STS Benchmark's cosine Spearman, as sentence-transformers'
`EmbeddingSimilarityEvaluator` computes it (a fraction; x100 for the usual figure).

`read_sts_pairs(path)` reads the STS Benchmark's headerless `sentence1,sentence2,score` CSV and `sts_spearman(model,
pairs)` scores any model with an `encode` (a `MultiTaskModel`, the ONNX runtime, a `SentenceTransformer`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtl_st.evaluation.metrics import correlations


@dataclass(frozen=True)
class SentencePair:
    sentence1: str
    sentence2: str
    score: float


def read_sts_pairs(path: str | Path, limit: int | None = None) -> list[SentencePair]:
    """Rows of a headerless `sentence1,sentence2,score` CSV (the STS Benchmark's layout), first `limit` rows."""
    pairs = []
    with open(path, encoding="utf-8", newline="") as handle:
        for line_number, row in enumerate(csv.reader(handle), start=1):
            if not row:
                continue
            if len(row) != 3:
                raise ValueError(f"{path}:{line_number}: expected 3 columns sentence1,sentence2,score; got {len(row)}.")
            try:
                score = float(row[2])
            except ValueError:
                raise ValueError(f"{path}:{line_number}: the score {row[2]!r} is not a number.") from None
            pairs.append(SentencePair(row[0], row[1], score))
            if limit is not None and len(pairs) >= limit:
                break
    return pairs


def sts_spearman(model, pairs: Iterable[SentencePair], tokenizer=None, batch_size: int = 64) -> float:
    """Spearman correlation between the pairs' gold scores and the cosine of their `model.encode` embeddings.

    A fraction (multiply by 100 for the usual STS figure); all-MiniLM-L6-v2 gives 0.8672 on STS-B dev.
    """
    pairs = list(pairs)
    if len(pairs) < 2:
        raise ValueError(f"sts_spearman needs at least 2 pairs, got {len(pairs)}.")
    first = model.encode([p.sentence1 for p in pairs], tokenizer=tokenizer, batch_size=batch_size, normalize=True)
    second = model.encode([p.sentence2 for p in pairs], tokenizer=tokenizer, batch_size=batch_size, normalize=True)
    cosine = (np.asarray(first) * np.asarray(second)).sum(-1)
    return correlations(cosine, np.asarray([p.score for p in pairs], dtype=np.float64))["spearman"]


__all__ = ["SentencePair", "read_sts_pairs", "sts_spearman"]
