"""sentence-transformers interop: a plain sentence-transformers folder, its evaluators' metric log, quantisation.

`MultiTaskModel.save_sentence_transformer`, `MultiTaskModel.model_card_data` and `encode(precision=...)` reach this
module lazily. It imports neither the model files nor (until quantising) sentence-transformers.
"""

from __future__ import annotations

import os
from typing import Any

from encoding_mtl import write_sentence_transformer_modules


def save_sentence_transformer(model: Any, path: str | os.PathLike, tokenizer: Any = None) -> None:
    """Write `model`'s encoder + pooling (+ normalisation) as a sentence-transformers folder; the heads are left out.

    `SentenceTransformer(path)` loads it with no remote code and embeds as `model.encode` does: same encoder weights,
    pooling mode, `max_seq_length` and normalisation. `tokenizer=None` uses the model's saved tokenizer.
    """
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    os.makedirs(path, exist_ok=True)
    model.encoder.save_pretrained(path)
    tokenizer.save_pretrained(path)
    config = model.config
    write_sentence_transformer_modules(path, config.encoder.hidden_size, config.pooling, config.normalize_embeddings,
                                       model.max_length(tokenizer), config.prompts)


class EvaluationLog:
    """Collects the metrics of sentence-transformers evaluators run on a `MultiTaskModel`
    (`model.model_card_data.metrics`)."""

    def __init__(self):
        self.metrics: list[dict[str, Any]] = []

    def set_evaluation_metrics(self, evaluator: Any, metrics: dict[str, Any], epoch: int = 0, step: int = 0) -> None:
        self.metrics.append({"evaluator": type(evaluator).__name__, "epoch": epoch, "step": step, **metrics})


def quantize(embeddings, precision: str, convert_to_tensor: bool = False):
    """sentence-transformers' `quantize_embeddings` of a numpy array (`int8`, `uint8`, `binary`, `ubinary`)."""
    try:
        from sentence_transformers.util import quantize_embeddings
    except ImportError as error:
        raise ImportError(f"precision={precision!r} needs sentence-transformers installed.") from error
    quantized = quantize_embeddings(embeddings, precision=precision)
    if convert_to_tensor:
        import torch

        return torch.from_numpy(quantized)
    return quantized


__all__ = ["save_sentence_transformer", "EvaluationLog", "quantize"]
