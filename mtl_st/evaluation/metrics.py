"""The built-in metrics that several task types share, as fractions, computed offline (scikit-learn, scipy)."""

from __future__ import annotations

import numpy as np

from tasks_mtl import IGNORE_INDEX


def classification_metrics(predictions: np.ndarray, label_ids: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 of the argmax of `predictions` `[n, num_labels]` against `label_ids` `[n]`."""
    from sklearn.metrics import accuracy_score, f1_score

    predicted = np.asarray(predictions).argmax(-1)
    keep = label_ids != IGNORE_INDEX
    return {
        "accuracy": float(accuracy_score(label_ids[keep], predicted[keep])),
        "macro_f1": float(f1_score(label_ids[keep], predicted[keep], average="macro", labels=list(range(num_labels)),
                                   zero_division=0)),
    }


def correlations(predicted: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlations (as sentence-transformers' `EmbeddingSimilarityEvaluator` computes them)."""
    from scipy.stats import pearsonr, spearmanr

    if len(predicted) < 2 or np.std(predicted) == 0 or np.std(gold) == 0:
        return {"pearson": 0.0, "spearman": 0.0}
    return {"pearson": float(pearsonr(gold, predicted)[0]), "spearman": float(spearmanr(gold, predicted)[0])}


__all__ = ["classification_metrics", "correlations"]
