"""The `multitask` pipeline: text in, every task's answer out, from one encoder pass.

    >>> from transformers import pipeline
    >>> import pipeline_mtl  # registers "multitask" (importing modeling_mtl does too)
    >>> pipe = pipeline("multitask", model="runs/quickstart")
    >>> pipe("Heading to Paris with Emma")
    {'sentiment': {'label': 'neutral', 'score': 0.71},
     'ner': [{'entity_group': 'location', 'score': 0.93, 'word': 'Paris', 'start': 11, 'end': 16}, ...]}

A sequence task answers `{"label", "score"}`. A token task answers a list of entities aggregated to words as
transformers' token-classification pipeline does with `aggregation_strategy="simple"`: each word (a run of
non-space characters, as in the CoNLL-style training data) takes the label of its first sub-token; consecutive
words of one entity (B-X, I-X, ...) are merged, their score is the mean of the words' scores, and `start`/`end`
are character offsets into the original text. `return_embedding=True` adds the sentence `"embedding"`.

Texts longer than the model's `max_seq_length` are truncated with a warning: entities past that point are not
returned and the embedding covers the kept part only (as `encode` does).

This file travels with saved models (`custom_pipelines` in config.json), so it imports only numpy, torch and
transformers.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging

logger = logging.get_logger(__name__)

WORD = re.compile(r"\S+")


class MultiTaskPipeline(Pipeline):
    """Runs every task head of a `MultiTaskModel` on each text in one encoder pass."""

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False

    def _sanitize_parameters(self, return_embedding: bool | None = None, **kwargs):
        postprocess_params = {}
        if return_embedding is not None:
            postprocess_params["return_embedding"] = return_embedding
        return {}, {}, postprocess_params

    def __call__(self, inputs, **kwargs):
        """One text gives `{task: answer}`; a list of texts gives a list of those."""
        return super().__call__(inputs, **kwargs)

    def preprocess(self, text: str) -> dict:
        if not isinstance(text, str):
            raise TypeError(f"The multitask pipeline takes strings, got {type(text).__name__}: {text!r}.")
        max_length = self.model.max_length(self.tokenizer)
        encoded = self.tokenizer(
            text, truncation=True, max_length=max_length, return_offsets_mapping=True,
            return_special_tokens_mask=True, return_overflowing_tokens=False, return_tensors="pt",
        )
        full_length = len(self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])
        if full_length > max_length:
            logger.warning(f"Text of {full_length} tokens truncated to {max_length}: {text[:60]!r}...")
        offsets = encoded.pop("offset_mapping")[0].tolist()
        special = encoded.pop("special_tokens_mask")[0].tolist()
        encoded.pop("overflow_to_sample_mapping", None)
        model_inputs = {key: value for key, value in encoded.items()}
        model_inputs["offsets"] = [None if s else (a, b) for (a, b), s in zip(offsets, special)]
        model_inputs["text"] = text
        return model_inputs

    def _forward(self, model_inputs: dict) -> dict:
        offsets = model_inputs.pop("offsets")
        text = model_inputs.pop("text")
        outputs = self.model(**model_inputs)
        result = {f"logits_{task}": logits for task, logits in outputs.task_logits.items()}
        result["embedding"] = outputs.embeddings
        result["offsets"] = offsets
        result["text"] = text
        return result

    def postprocess(self, model_outputs: dict, return_embedding: bool = False) -> dict:
        offsets = model_outputs["offsets"]
        text = model_outputs["text"]
        answer = {}
        for task in self.model.config.tasks:
            logits = model_outputs[f"logits_{task['name']}"][0].float()
            probabilities = torch.softmax(logits, dim=-1).numpy()
            if task["type"] == "sequence_classification":
                best = int(probabilities.argmax())
                answer[task["name"]] = {"label": task["labels"][best], "score": float(probabilities[best])}
            else:
                answer[task["name"]] = word_entities(text, offsets, probabilities[: len(offsets)], task["labels"])
        if return_embedding:
            answer["embedding"] = model_outputs["embedding"][0].float().numpy()
        return answer


def word_entities(text: str, offsets: list, probabilities: np.ndarray, labels: list[str]) -> list[dict]:
    """Aggregate per-token probabilities `[seq, num_labels]` to word-level entities with character offsets."""
    words = [(m.start(), m.end()) for m in WORD.finditer(text)]
    word_of_token = []
    w = 0
    for span in offsets:
        if span is None or span[0] == span[1]:
            word_of_token.append(None)
            continue
        while w < len(words) and words[w][1] <= span[0]:
            w += 1
        word_of_token.append(w if w < len(words) and words[w][0] <= span[0] else None)

    word_predictions = []  # (word index, label, score) from each word's first sub-token
    seen = set()
    for token, word in enumerate(word_of_token):
        if word is None or word in seen:
            continue
        seen.add(word)
        best = int(probabilities[token].argmax())
        word_predictions.append((word, labels[best], float(probabilities[token][best])))

    entities: list[dict] = []
    current = None
    for word, label, score in word_predictions:
        prefix, _, kind = label.partition("-")
        if label == "O" or not kind:
            current = None
            continue
        continues = current is not None and prefix == "I" and current["type"] == kind and current["last"] == word - 1
        if continues:
            current["words"].append(word)
            current["scores"].append(score)
            current["last"] = word
        else:
            current = {"type": kind, "words": [word], "scores": [score], "last": word}
            entities.append(current)
    result = []
    for entity in entities:
        start, end = words[entity["words"][0]][0], words[entity["words"][-1]][1]
        result.append({"entity_group": entity["type"], "score": float(np.mean(entity["scores"])),
                       "word": text[start:end], "start": start, "end": end})
    return result


PIPELINE_REGISTRY.register_pipeline("multitask", pipeline_class=MultiTaskPipeline, pt_model=AutoModel, type="text")

__all__ = ["MultiTaskPipeline", "word_entities"]
