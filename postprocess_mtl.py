"""Turn one text's head outputs into the `multitask` pipeline's answer (the task specs of `tasks_mtl.py` call these).

Both the PyTorch pipeline (`pipeline_mtl.py`) and the ONNX runtime (`mtl_st.onnx`) answer through these functions,
so they give the same answers. This file travels with saved models and imports only numpy.

Long texts in token tasks: `token_windows` cuts a text's tokens into overlapping windows (`window_ids` wraps one in special
tokens), `home_windows` picks the one window that scores each token (where it has the most context) and
`stitch_windows` puts the windows' logits back into one row. Training and evaluation (`mtl_st.data.task_data`) and
the pipeline use the same ones, so a word is
scored in the same window at training and at inference.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import numpy as np

DEFAULT_STRIDE = 32  # tokens shared by consecutive windows of a long token-task text (at most half a window)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 for a stable score."""
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def single_label_answer(logits: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """`logits` `[num_labels]` -> `{"label", "score"}` (the softmax probability of the best label)."""
    probabilities = softmax(logits)
    best = int(probabilities.argmax())
    return {"label": labels[best], "score": float(probabilities[best])}


def multi_label_answer(logits: np.ndarray, labels: list[str], threshold: float) -> list[dict[str, Any]]:
    """`logits` `[num_labels]` -> each label whose sigmoid reaches `threshold`, best first, as `{"label", "score"}`."""
    probabilities = sigmoid(logits)
    chosen = [i for i in np.argsort(-probabilities, kind="stable") if probabilities[i] >= threshold]
    return [{"label": labels[i], "score": float(probabilities[i])} for i in chosen]


def embedding_answer(embedding: np.ndarray) -> dict[str, list[float]]:
    """A text's embedding `[hidden]` -> `{"embedding"}`, L2-normalised (a retrieval task's answer)."""
    vector = np.asarray(embedding, dtype=np.float64).reshape(-1)
    vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return {"embedding": vector.astype(np.float32).tolist()}


def regression_answer(logits: np.ndarray) -> dict[str, float]:
    """`logits` `[1]` -> `{"score"}`."""
    return {"score": float(np.asarray(logits).reshape(-1)[0])}


def word_entities(
    text: str, offsets: list, word_ids: list, logits: np.ndarray, labels: list[str]
) -> list[dict[str, Any]]:
    """Aggregate per-token logits `[seq, num_labels]` to word-level entities with character offsets.

    As transformers' token-classification pipeline with `aggregation_strategy="first"`: a word takes the label and
    score of its first sub-token; consecutive words continuing one entity (`I-X` after `B-X`/`I-X`) are merged and
    the entity's score is the mean of its words' scores. `offsets[i]` is token i's `(start, end)` in `text` (None
    for special tokens) and `word_ids[i]` its word as the fast tokenizer splits words ("Paris," is "Paris" and ",").
    An entity's `end` takes the end of its word's last sub-token, so trailing combining marks stay in the word.
    """
    probabilities = softmax(np.asarray(logits)[: len(offsets)])
    words: dict[int, list] = {}  # word id -> [start, end, first token]
    for token, (span, word) in enumerate(zip(offsets, word_ids)):
        if span is None or word is None:
            continue
        if word not in words:
            words[word] = [span[0], span[1], token]
        else:
            words[word][1] = max(words[word][1], span[1])

    entities: list[dict] = []
    current = None
    previous_word = None
    for word in sorted(words):
        start, end, token = words[word]
        best = int(probabilities[token].argmax())
        label, score = labels[best], float(probabilities[token][best])
        prefix, _, kind = label.partition("-")
        adjacent = previous_word is not None and word == previous_word + 1
        previous_word = word
        if label == "O" or not kind:
            current = None
        elif current is not None and prefix == "I" and current["entity_group"] == kind and adjacent:
            current["end"] = end
            current["scores"].append(score)
        else:
            current = {"entity_group": kind, "scores": [score], "start": start, "end": end}
            entities.append(current)
    for entity in entities:  # tokenizers that strip accents end a word before its combining marks ("Zoe\u0301")
        while entity["end"] < len(text) and unicodedata.combining(text[entity["end"]]):
            entity["end"] += 1
    return [
        {"entity_group": e["entity_group"], "score": float(np.mean(e["scores"])), "word": text[e["start"]:e["end"]],
         "start": e["start"], "end": e["end"]}
        for e in entities
    ]


def default_stride(max_length: int) -> int:
    """The stride used when none is given: `DEFAULT_STRIDE`, at most half of a window of `max_length` tokens (less
    its two special tokens)."""
    return min(DEFAULT_STRIDE, (max_length - 2) // 2)


def token_windows(length: int, room: int, stride: int) -> list[tuple[int, int]]:
    """`(start, end)` of the windows over `length` tokens: `room` tokens each, consecutive ones sharing `stride`
    (as transformers' tokenizers and token-classification pipeline use `stride`); one empty window for no tokens."""
    windows = [(0, min(room, length))]
    while windows[-1][1] < length:
        start = windows[-1][1] - stride
        windows.append((start, min(start + room, length)))
    return windows


def window_ids(ids: list[int], specials: list[int], start: int, end: int) -> list[int]:
    """The model input of window `(start, end)` of a text's token ids: the window between the tokenizer's two special
    tokens (`specials`, e.g. `[CLS]`, `[SEP]`), as training and the pipeline both cut long texts."""
    return specials[:1] + ids[start:end] + specials[1:]


def home_windows(length: int, windows: list[tuple[int, int]]) -> list[int]:
    """For each token, the window that scores it: the one where it has the most context on its shorter side (the
    earlier window on a tie). Home windows never decrease along the text, so scored tokens stay in order."""
    home = [0] * length
    for p in range(length):
        best = -1
        for w, (start, end) in enumerate(windows):
            if start <= p < end:
                context = min(p - start, end - 1 - p)
                if context > best:
                    best, home[p] = context, w
    return home


def stitch_windows(window_logits: list[np.ndarray], windows: list[tuple[int, int]], leading: int = 1) -> np.ndarray:
    """One row of per-token logits `[length, num_labels]` for the whole text from each window's logits
    `[window positions, num_labels]`: token p takes its row from its home window (`home_windows`), where it sits at
    `p - start + leading` (`leading` special tokens open each window)."""
    length = windows[-1][1]
    home = home_windows(length, windows)
    first = np.asarray(window_logits[0])
    stitched = np.zeros((length, first.shape[-1]), dtype=first.dtype)
    for p, w in enumerate(home):
        stitched[p] = window_logits[w][p - windows[w][0] + leading]
    return stitched


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors `[hidden]`."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


__all__ = [
    "softmax", "sigmoid", "single_label_answer", "multi_label_answer", "regression_answer", "embedding_answer",
    "word_entities", "cosine",
    "DEFAULT_STRIDE", "default_stride", "token_windows", "home_windows", "stitch_windows", "window_ids",
]
