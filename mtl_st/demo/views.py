"""What each view of the demo shows, from the backend's answers: plain functions, no Gradio here.

A task's view follows from its task spec (`tasks_mtl`), not from a list of type names, so a new task type gets a
view from what it declares: a token task (`reads == READS_TOKENS`) shows its entities highlighted; a task with label
names shows a label view; one with a head but no labels (regression) shows its number; a pair task takes two texts;
a single-text task without a head (retrieval) gets a search box over a corpus.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks_mtl import READS_PAIR, READS_TOKENS, get_task_type

ENTITIES, LABELS, NUMBER, SEARCH = "entities", "labels", "number", "search"
MAP_LIMIT = 200  # sentences kept on the embeddings map


def view_kind(task: dict) -> str:
    """The view of a task: `entities`, `labels`, `number` or `search`."""
    spec = get_task_type(task["type"])
    if spec.reads == READS_TOKENS:
        return ENTITIES
    if not spec.has_head and not spec.takes_pair:
        return SEARCH
    return LABELS if spec.needs_labels else NUMBER


def is_cosine(task: dict) -> bool:
    """Whether a task's answer is the cosine of two sentences' embeddings (it reads the pair's embeddings)."""
    return get_task_type(task["type"]).reads == READS_PAIR


def label_value(answer: Any) -> dict[str, float]:
    """`{label: score}` for gr.Label from a `{label, score}` answer or a list of them (multi-label)."""
    answers = answer if isinstance(answer, list) else [answer]
    return {entry["label"]: float(entry["score"]) for entry in answers}


def number_value(answer: Any) -> float:
    return round(float(answer["score"]), 4)


def highlighted_value(text: str, entities: list[dict]) -> dict:
    """gr.HighlightedText's value: the text and its entities by character offsets (the pipeline's)."""
    return {"text": text, "entities": [{"entity": entity["entity_group"], "start": entity["start"],
                                        "end": entity["end"]} for entity in entities]}


def view_value(task: dict, answer: Any, text: str) -> Any:
    kind = view_kind(task)
    if kind == ENTITIES:
        return highlighted_value(text, answer)
    if kind == LABELS:
        return label_value(answer)
    return number_value(answer)


def long_text_message(length: int, limit: int, tasks: list[dict], reads_windows: bool, embedding: bool) -> str:
    """What a text over the model's limit means for each answer: token tasks read it in windows, the rest (and the
    embedding) read its first `limit` tokens."""
    windowed = [task["name"] for task in tasks if reads_windows and get_task_type(task["type"]).reads == READS_TOKENS]
    cut = [task["name"] for task in tasks if task["name"] not in windowed] + (["the embedding"] if embedding else [])
    parts = [f"This text has {length} tokens, more than the model's limit of {limit}."]
    if windowed:
        parts.append(f"{', '.join(windowed)} read it in full, in windows of {limit} tokens.")
    if cut:
        parts.append(f"{', '.join(cut)} read only its first {limit} tokens.")
    return " ".join(parts)


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """`[n, 2]` coordinates: the vectors on their first two principal components (zeros where there are fewer)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    points = np.zeros((len(vectors), 2))
    if len(vectors) < 2:
        return points
    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ components[:2].T
    points[:, : projected.shape[1]] = projected
    return points


def map_figure(sentences: list[str], vectors: list[np.ndarray]) -> Any:
    """A matplotlib figure of the sentences typed so far on the first two principal components of their
    embeddings (near points are similar sentences)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.2), dpi=100)
    if sentences:
        points = pca_2d(np.stack(vectors))
        axes.scatter(points[:, 0], points[:, 1], s=40, color="#f97316")
        for (x, y), sentence in zip(points, sentences):
            label = sentence if len(sentence) <= 48 else sentence[:45] + "..."
            axes.annotate(label, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=9)
        axes.margins(x=0.45, y=0.2)
    else:
        axes.text(0.5, 0.5, "Submit sentences to see them here", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("first principal component")
    axes.set_ylabel("second")
    axes.set_title("Embeddings of the sentences so far (PCA)", fontsize=10)
    figure.tight_layout()
    plt.close(figure)
    return figure


def search_rows(query_vector: np.ndarray, corpus: list[str], corpus_vectors: np.ndarray,
                top_k: int = 5) -> list[list[Any]]:
    """`[rank, cosine, document]` rows of the corpus closest to the query, best first."""
    query = query_vector / max(float(np.linalg.norm(query_vector)), 1e-12)
    documents = corpus_vectors / np.maximum(np.linalg.norm(corpus_vectors, axis=-1, keepdims=True), 1e-12)
    scores = documents @ query
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [[rank + 1, round(float(scores[i]), 4), corpus[i]] for rank, i in enumerate(order)]


def corpus_lines(text: str | None, file: Any = None) -> list[str]:
    """The corpus: one document per non-empty line of the pasted text and of the uploaded text file."""
    lines = (text or "").splitlines()
    if file is not None:
        path = file if isinstance(file, str) else getattr(file, "name", None)
        if path:
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines += handle.read().splitlines()
    return [line.strip() for line in lines if line.strip()]


__all__ = ["view_kind", "view_value", "is_cosine", "label_value", "number_value", "highlighted_value", "long_text_message",
           "pca_2d", "map_figure", "search_rows", "corpus_lines", "ENTITIES", "LABELS", "NUMBER", "SEARCH",
           "MAP_LIMIT"]
