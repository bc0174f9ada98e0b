"""Metrics (`mtl_st.evaluation.metrics` and each task type's `metrics`) against hand computations and
sentence-transformers' evaluator."""

from __future__ import annotations

import numpy as np
import pytest

from mtl_st.data.task_data import get_task_data
from tests.utils import ALL_TASKS, NER_LABELS, SENTIMENT_LABELS, tiny_model
from trainer_mtl import task_metrics


def test_task_metrics_token_classification_by_hand():
    # row 1 true: B-PER I-PER O B-LOC; predicted: B-PER I-PER B-LOC O  -> PER right, LOC missed, a wrong LOC
    # row 2 true: O O;                 predicted: B-PER O             -> a wrong PER
    # predicted entities 3, true 2, correct 1: P = 1/3, R = 1/2, F1 = 0.4. -100 positions are ignored.
    labels = np.array([[-100, 1, 2, 0, 3, -100], [-100, 0, 0, -100, -100, -100]])
    predicted = np.array([[1, 1, 2, 3, 0, 3], [3, 1, 0, 1, 1, 1]])
    logits = np.eye(len(NER_LABELS))[predicted]
    metrics = task_metrics("token_classification", logits, labels, NER_LABELS)
    assert metrics == pytest.approx({"precision": 1 / 3, "recall": 0.5, "f1": 0.4})


def test_task_metrics_sequence_classification_by_hand():
    # true 0 1 2 2, predicted 0 2 2 2: accuracy 3/4; F1 per class 1, 0, 0.8 -> macro 0.6
    logits = np.eye(3)[[0, 2, 2, 2]]
    metrics = task_metrics("sequence_classification", logits, np.array([0, 1, 2, 2]), SENTIMENT_LABELS)
    assert metrics == pytest.approx({"accuracy": 0.75, "macro_f1": 0.6})


def test_multi_label_and_regression_metrics():
    logits = np.array([[2.0, -1.0, 0.1], [-2.0, 3.0, -0.3], [0.5, 0.5, -4.0]])  # sigmoid >= 0.5 where logit >= 0
    gold = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0]])
    metrics = get_task_data("multi_label_classification").metrics({"threshold": 0.5}, logits, gold)
    # Predicted [[1,0,1],[0,1,0],[1,1,0]]: TP 3, FP 2, FN 1 -> micro F1 = 6 / (6 + 3) = 2/3.
    assert metrics["micro_f1"] == pytest.approx(2 / 3)
    # Per label F1: food 2/2 -> 1.0; sport TP1 FP1 -> 2/3; travel TP0 FP1 FN1 -> 0.
    assert metrics["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)

    metrics = get_task_data("regression").metrics({}, np.array([[1.0], [2.0], [2.5]]), np.array([1.0, 3.0, 2.0]))
    assert metrics["mse"] == pytest.approx((0 + 1 + 0.25) / 3)
    assert metrics["spearman"] == pytest.approx(0.5)
    assert set(metrics) == {"pearson", "spearman", "mse"}


def test_similarity_metric_matches_a_hand_computation():
    cosines = np.array([0.9, 0.1, 0.5, 0.3])
    gold = np.array([4.0, 1.0, 2.0, 3.0])
    metrics = get_task_data("sentence_similarity").metrics({"name": "sts"}, cosines, gold)
    # Ranks of cosines [4, 1, 3, 2] and of gold [4, 1, 2, 3]: d = [0, 0, 1, -1], rho = 1 - 6*2 / (4*15) = 0.8.
    assert metrics["spearman"] == pytest.approx(0.8)
    centred_c, centred_g = cosines - cosines.mean(), gold - gold.mean()
    pearson = (centred_c @ centred_g) / np.sqrt((centred_c @ centred_c) * (centred_g @ centred_g))
    assert metrics["pearson"] == pytest.approx(pearson)


def test_similarity_metric_equals_sentence_transformers_evaluator(tokenizer, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator

    model = tiny_model(tasks=[ALL_TASKS[5]])
    model.tokenizer = tokenizer
    first = ["A man plays a guitar.", "A cat sleeps.", "Kids play football.", "The stock fell.", "Rain all day."]
    second = ["Someone plays music.", "A dog barks.", "Children play a game.", "Shares dropped.", "It is sunny."]
    scores = [4.2, 0.8, 3.9, 4.5, 1.1]
    a, b = model.encode(first), model.encode(second)
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    ours = get_task_data("sentence_similarity").metrics({"name": "sts"}, cosines, np.array(scores))

    folder = tmp_path / "st"
    model.save_sentence_transformer(folder, tokenizer)
    evaluator = EmbeddingSimilarityEvaluator(first, second, [s / 5 for s in scores])
    reference = evaluator(st.SentenceTransformer(str(folder), device="cpu"))
    assert ours["spearman"] == pytest.approx(reference[evaluator.primary_metric], abs=1e-6)
