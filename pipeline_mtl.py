"""The `multitask` pipeline: text in, every task's answer out, from one encoder pass.

    >>> from transformers import pipeline
    >>> import pipeline_mtl  # registers "multitask"
    >>> pipe = pipeline("multitask", model="runs/quickstart")
    >>> pipe("Heading to Paris with Emma")
    {'sentiment': {'label': 'neutral', 'score': 0.71},
     'ner': [{'entity_group': 'location', 'score': 0.93, 'word': 'Paris', 'start': 11, 'end': 16}, ...]}

A text answers every single-text task; a pair `{"text": ..., "text_pair": ...}` answers every pair task
(`pair_classification` on the jointly encoded pair, `sentence_similarity` as the cosine of the two sentences'
embeddings). Each task type shapes its answer (`tasks_mtl.TaskType.answer`, with `postprocess_mtl`):

| type | answer |
| --- | --- |
| `sequence_classification`, `pair_classification` | `{"label", "score"}` |
| `token_classification` | word-level entities `[{"entity_group", "score", "word", "start", "end"}, ...]` |
| `multi_label_classification` | every label at or above the task's threshold, `[{"label", "score"}, ...]` |
| `regression`, `sentence_similarity` | `{"score"}` |

Token tasks aggregate as transformers' token-classification pipeline does with `aggregation_strategy="first"`:
each word (as the fast tokenizer splits words: "Paris," is "Paris" and ",") takes the label of its first
sub-token; consecutive words of one entity (B-X, I-X, ...) are merged, their score is the mean of the words'
scores, and `start`/`end` are character offsets into the original text. `return_embedding=True` adds the
sentence `"embedding"` (of the text, or of `text` for a pair).

Texts longer than the model's `max_seq_length` are truncated with a warning: entities past that point are not
returned and the embedding covers the kept part only (as `encode` does).

This file travels with saved models (`custom_pipelines` in config.json), so it imports only numpy, torch,
transformers and its siblings.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging

try:
    from .modeling_mtl import MultiTaskModel  # noqa: F401  (registers the model classes with AutoConfig/AutoModel)
    from .postprocess_mtl import word_entities  # noqa: F401  (importable from here too)
    from .tasks_mtl import READS_PAIR, get_task_type
except ImportError:  # imported as a top-level module
    from modeling_mtl import MultiTaskModel  # noqa: F401
    from postprocess_mtl import word_entities  # noqa: F401
    from tasks_mtl import READS_PAIR, get_task_type

logger = logging.get_logger(__name__)


class MultiTaskPipeline(Pipeline):
    """Runs every task head of a `MultiTaskModel` on each text (or pair of texts) in one encoder pass."""

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
        """A text or a `{"text", "text_pair"}` pair gives `{task: answer}`; a list of them gives a list of those."""
        return super().__call__(inputs, **kwargs)

    def _tasks(self, pair: bool) -> list[dict]:
        return [task for task in self.model.config.tasks if get_task_type(task["type"]).takes_pair == pair]

    def _tokenize(self, text: str, text_pair: str | None = None) -> dict:
        """One tokenizer call: the first window of at most `max_length` tokens; a warning when the text is longer."""
        max_length = self.model.max_length(self.tokenizer)
        encoded = self.tokenizer(
            text, text_pair, truncation=True, max_length=max_length, return_offsets_mapping=True,
            return_special_tokens_mask=True, return_overflowing_tokens=text_pair is None,
        )
        windows = encoded.pop("overflow_to_sample_mapping", None)
        if windows is not None and len(windows) > 1:
            logger.warning(f"Text longer than {max_length} tokens truncated to {max_length}: {text[:60]!r}...")
        word_ids = encoded.word_ids(0)
        first = (lambda value: value[0]) if windows is not None else (lambda value: value)
        offsets = first(encoded.pop("offset_mapping"))
        special = first(encoded.pop("special_tokens_mask"))
        return {"inputs": {key: torch.tensor([first(value)]) for key, value in encoded.items()},
                "offsets": [None if s else (a, b) for (a, b), s in zip(offsets, special)], "word_ids": word_ids}

    def preprocess(self, item: Any) -> dict:
        """Flat model inputs (the pipeline pads and batches every tensor key), plus what postprocess needs."""
        if isinstance(item, dict):
            if set(item) != {"text", "text_pair"} or not all(isinstance(v, str) for v in item.values()):
                raise TypeError(f"A pair must be {{'text': str, 'text_pair': str}}, got {item!r}.")
            if not self._tasks(pair=True):
                raise ValueError(f"This model has no pair task; its tasks are {self.model.config.task_names}.")
            first = self._tokenize(item["text"])
            second, joint = self._tokenize(item["text_pair"]), self._tokenize(item["text"], item["text_pair"])
            return {**first["inputs"], **{f"pair_{k}": v for k, v in second["inputs"].items()},
                    **{f"joint_{k}": v for k, v in joint["inputs"].items()},
                    "offsets": first["offsets"], "word_ids": first["word_ids"], "text": item["text"]}
        if not isinstance(item, str):
            raise TypeError(f"The multitask pipeline takes strings or {{'text', 'text_pair'}} pairs, got "
                            f"{type(item).__name__}: {item!r}.")
        first = self._tokenize(item)
        return {**first["inputs"], "offsets": first["offsets"], "word_ids": first["word_ids"], "text": item}

    def _forward(self, model_inputs: dict) -> dict:
        extras = {key: model_inputs.pop(key) for key in ("offsets", "word_ids", "text")}
        joint = {key[len("joint_"):]: model_inputs.pop(key) for key in list(model_inputs) if key.startswith("joint_")}
        outputs = self.model(**model_inputs)
        pair = bool(joint)
        if pair:
            joint_logits = self.model(**joint).task_logits
        result = {}
        for task in self._tasks(pair=pair):
            reads_pair = get_task_type(task["type"]).reads == READS_PAIR
            source = outputs.task_logits if not pair or reads_pair else joint_logits
            result[f"logits_{task['name']}"] = source[task["name"]]
        return {**result, "embedding": outputs.embeddings, **extras}

    def postprocess(self, model_outputs: dict, return_embedding: bool = False) -> dict:
        answer = {}
        for key, logits in model_outputs.items():
            if not key.startswith("logits_"):
                continue
            task = self.model.config.get_task(key[len("logits_"):])
            answer[task["name"]] = get_task_type(task["type"]).answer(
                task, logits[0].float().cpu().numpy(), model_outputs["text"], model_outputs["offsets"],
                model_outputs["word_ids"],
            )
        if return_embedding:
            answer["embedding"] = model_outputs["embedding"][0].float().cpu().numpy()
        return answer


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

__all__ = ["MultiTaskPipeline", "word_entities"]
