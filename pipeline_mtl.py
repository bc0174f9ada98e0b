"""The `multitask` pipeline: text in, every task's answer out, from one encoder pass.

    >>> from transformers import pipeline
    >>> import pipeline_mtl  # registers "multitask" (importing modeling_mtl does too)
    >>> pipe = pipeline("multitask", model="runs/quickstart")
    >>> pipe("Heading to Paris with Emma")
    {'sentiment': {'label': 'neutral', 'score': 0.71},
     'ner': [{'entity_group': 'location', 'score': 0.93, 'word': 'Paris', 'start': 11, 'end': 16}, ...]}

A sequence task answers `{"label", "score"}`. A token task answers a list of entities aggregated to words as
transformers' token-classification pipeline does with `aggregation_strategy="simple"`: each word (as the fast
tokenizer splits words: "Paris," is "Paris" and ",") takes the label of its first sub-token; consecutive words
of one entity (B-X, I-X, ...) are merged, their score is the mean of the words' scores, and `start`/`end`
are character offsets into the original text. `return_embedding=True` adds the sentence `"embedding"`.

Texts longer than the model's `max_seq_length` are truncated with a warning: entities past that point are not
returned and the embedding covers the kept part only (as `encode` does).

This file travels with saved models (`custom_pipelines` in config.json), so it imports only numpy, torch and
transformers.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging

logger = logging.get_logger(__name__)

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
        model_inputs["word_ids"] = encoded.word_ids(0)
        model_inputs["text"] = text
        return model_inputs

    def _forward(self, model_inputs: dict) -> dict:
        offsets = model_inputs.pop("offsets")
        word_ids = model_inputs.pop("word_ids")
        text = model_inputs.pop("text")
        outputs = self.model(**model_inputs)
        result = {f"logits_{task}": logits for task, logits in outputs.task_logits.items()}
        result["embedding"] = outputs.embeddings
        result["offsets"] = offsets
        result["word_ids"] = word_ids
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
                answer[task["name"]] = word_entities(text, offsets, model_outputs["word_ids"],
                                                     probabilities[: len(offsets)], task["labels"])
        if return_embedding:
            answer["embedding"] = model_outputs["embedding"][0].float().numpy()
        return answer


def word_entities(text: str, offsets: list, word_ids: list, probabilities: np.ndarray, labels: list[str]) -> list[dict]:
    """Aggregate per-token probabilities `[seq, num_labels]` to word-level entities with character offsets.

    `offsets[i]` is token i's `(start, end)` in `text` (None for special tokens) and `word_ids[i]` its word, as the
    fast tokenizer splits words (so "Paris," is the word "Paris" and the word ","). A word takes the label and score
    of its first sub-token; consecutive words continuing one entity (`I-X` after `B-X`/`I-X`) are merged.
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
    return [
        {"entity_group": e["entity_group"], "score": float(np.mean(e["scores"])), "word": text[e["start"]:e["end"]],
         "start": e["start"], "end": e["end"]}
        for e in entities
    ]


def register() -> None:
    """Register `multitask` once per process; this project's installed pipeline wins over a remote-code copy.

    transformers' `register_pipeline` warns "multitask is already registered. Overwriting pipeline" whenever the
    task exists, and the remote copy of this file is imported again for every model folder; so a copy registers
    only when the task is free, and the installed module replaces a remote copy (dropped first, without warning).
    """
    registered = PIPELINE_REGISTRY.to_dict().get("multitask")
    if registered is not None:
        if registered["impl"] is MultiTaskPipeline:
            return
        ours_is_remote = MultiTaskPipeline.__module__.startswith("transformers_modules")
        if ours_is_remote or not registered["impl"].__module__.startswith("transformers_modules"):
            return
        PIPELINE_REGISTRY.to_dict().pop("multitask")
    PIPELINE_REGISTRY.register_pipeline("multitask", pipeline_class=MultiTaskPipeline, pt_model=AutoModel, type="text")


register()

# Importing the pipeline also registers the model classes with AutoConfig/AutoModel, so that
# `pipeline("multitask", model=path)` resolves `model_type: mtl` where this project is installed.
# Written `from .modeling_mtl import ...` so that transformers copies modeling_mtl.py beside this file when it loads
# the pipeline as remote code; otherwise the relative import failed there and fell back to an installed project.
try:
    from .modeling_mtl import MultiTaskModel  # noqa: F401
except ImportError:
    try:
        from modeling_mtl import MultiTaskModel  # noqa: F401
    except ImportError:
        pass

__all__ = ["MultiTaskPipeline", "word_entities"]
