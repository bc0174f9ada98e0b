"""What a finished run prints: the embeddings' similarities and every task's answers for a few sentences, and the
embeddings' similarity score before training (beside the final `eval_<task>_spearman`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mtl_st.data.splits import take_first
from mtl_st.evaluation.metrics import correlations


def similarity_before_training(model: Any, tokenizer: Any, splits: dict, monitors: list[str],
                               limit: int | None = None) -> dict[str, float]:
    """`start_<task>_spearman` / `_pearson` of every similarity monitor: the cosine of `encode`d pairs of its
    validation split, as the task's metric scores them."""
    results = {}
    for name in monitors:
        rows = take_first(splits[name]["validation"], limit)
        first = model.encode(rows["text"], tokenizer=tokenizer, normalize=True)
        second = model.encode(rows["text_pair"], tokenizer=tokenizer, normalize=True)
        metrics = correlations((first * second).sum(-1), np.asarray(rows["label"]))
        results.update({f"start_{name}_{key}": value for key, value in metrics.items()})
    return results


def show_examples(model: Any, tokenizer: Any, sentences: list[str]) -> None:
    """Print the embeddings' cosine similarities and every task's predictions for a few sentences."""
    from pipeline_mtl import MultiTaskPipeline

    embeddings = model.encode(sentences, tokenizer=tokenizer, normalize=True)
    print(f"\nEmbeddings: {embeddings.shape[0]} x {embeddings.shape[1]}; cosine similarities:")
    similarity = embeddings @ embeddings.T
    for i, sentence in enumerate(sentences):
        print(f"  [{i}] " + " ".join(f"{similarity[i, j]:+.3f}" for j in range(len(sentences))) + f"  {sentence}")
    print("\nPredictions:")
    pipe = MultiTaskPipeline(model=model.eval(), tokenizer=tokenizer)
    for sentence, answer in zip(sentences, pipe(sentences)):
        print(f"  {sentence}")
        for task, value in answer.items():
            print(f"    {task}: {describe_answer(value)}")


def describe_answer(value: Any) -> str:
    """One line for a pipeline answer of any task type."""
    if isinstance(value, dict) and "label" in value:
        return f"{value['label']} ({value['score']:.2f})"
    if isinstance(value, dict):
        return f"{value['score']:.3f}"
    if value and "entity_group" in value[0]:
        return ", ".join(f"{e['word']} [{e['entity_group']}]" for e in value)
    return ", ".join(f"{e['label']} ({e['score']:.2f})" for e in value) or "(none)"


__all__ = ["similarity_before_training", "show_examples", "describe_answer"]
