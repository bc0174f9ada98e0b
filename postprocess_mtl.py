"""Turn task logits into answers, in numpy alone: one small function per task type.

These are the `multitask` pipeline's answers (see `pipeline_mtl.py`), written without torch so that the ONNX
runtime (`onnx_mtl.py`) can give them, and so that the pipeline can share them later:

- `sequence_classification`: `{"label", "score"}`, the arg-max label and its softmax probability;
- `token_classification`: word-level entities `{"entity_group", "score", "word", "start", "end"}` with character
  offsets into the text. A word (as the fast tokenizer splits words: "Paris," is "Paris" and ",") takes the label
  and score of its first sub-token; consecutive words continuing one entity (`I-X` after `B-X`/`I-X`) are merged,
  and the entity's score is the mean of its words' scores.

`POSTPROCESSORS` maps a task type to its function; every function takes the same arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass
class TokenizedText:
    """One text as the model saw it: token `offsets` (`(start, end)` in `text`, `None` for special tokens) and
    `word_ids` (the word each token belongs to, `None` for special tokens), one entry per token."""

    text: str
    offsets: list[tuple[int, int] | None]
    word_ids: list[int | None]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float32 (any shape `[..., num_labels]` -> the same shape)."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sequence_classification_answer(logits: np.ndarray, labels: list[str], tokens: TokenizedText | None = None) -> dict:
    """`{"label", "score"}` from one text's logits `[num_labels]`; `tokens` is not needed (same signature as the
    token task's function)."""
    probabilities = softmax(logits)
    best = int(probabilities.argmax())
    return {"label": labels[best], "score": float(probabilities[best])}


def token_classification_answer(logits: np.ndarray, labels: list[str], tokens: TokenizedText) -> list[dict]:
    """Word-level entities from one text's token logits `[seq, num_labels]` (rows past `len(tokens.offsets)`,
    i.e. padding, are ignored)."""
    probabilities = softmax(logits)[: len(tokens.offsets)]
    return word_entities(tokens.text, tokens.offsets, tokens.word_ids, probabilities, labels)


def word_entities(
    text: str,
    offsets: list[tuple[int, int] | None],
    word_ids: list[int | None],
    probabilities: np.ndarray,
    labels: list[str],
) -> list[dict]:
    """Aggregate per-token probabilities `[seq, num_labels]` to word-level entities with character offsets.

    The same rules as `pipeline_mtl.word_entities`: a word spans its tokens' characters and takes the label and
    score of its first sub-token; an `O` word or a label without a `B-`/`I-` kind ends the current entity; an
    `I-X` word directly after a word of entity `X` extends it; any other labelled word starts a new entity.
    """
    words: dict[int, list] = {}  # word id -> [start, end, first token]
    for token, (span, word) in enumerate(zip(offsets, word_ids)):
        if span is None or word is None:
            continue
        if word not in words:
            words[word] = [span[0], span[1], token]
        else:
            words[word][1] = max(words[word][1], span[1])

    entities: list[dict] = []
    current: dict | None = None
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
    return [
        {
            "entity_group": entity["entity_group"],
            "score": float(np.mean(entity["scores"])),
            "word": text[entity["start"] : entity["end"]],
            "start": entity["start"],
            "end": entity["end"],
        }
        for entity in entities
    ]


POSTPROCESSORS: dict[str, Callable[[np.ndarray, list[str], TokenizedText], Any]] = {
    "sequence_classification": sequence_classification_answer,
    "token_classification": token_classification_answer,
}

__all__ = [
    "POSTPROCESSORS",
    "TokenizedText",
    "sequence_classification_answer",
    "softmax",
    "token_classification_answer",
    "word_entities",
]
