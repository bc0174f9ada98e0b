"""The `multitask` pipeline: text in, every task's answer out, from one encoder pass.

    >>> from transformers import pipeline
    >>> import pipeline_mtl  # registers "multitask"
    >>> pipe = pipeline("multitask", model="runs/quickstart")
    >>> pipe("Heading to Paris with Emma")
    {'sentiment': {'label': 'neutral', 'score': 0.71},
     'ner': [{'entity_group': 'location', 'score': 0.93, 'word': 'Paris', 'start': 11, 'end': 16}, ...]}

A text answers every single-text task; a pair `{"text": ..., "text_pair": ...}` answers every pair task
(`pair_classification` on the jointly encoded pair, `sentence_similarity` as the cosine of the two sentences'
embeddings). Each task type shapes its answer (`tasks_mtl.TaskSpec.answer`, with `postprocess_mtl`):

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

Long texts, as transformers' token-classification pipeline with `stride`: a text longer than the model's
`max_seq_length` is split into overlapping windows that share `stride` tokens (a call or pipeline argument; by
default the training side's, `postprocess_mtl.default_stride`: 32, at most half a window). Every window runs through
the model (windows of several texts batch together with `batch_size=`), and token tasks answer for the whole text:
each token takes its logits from the window where it has the most context (`postprocess_mtl.home_windows`, the rule
training and evaluation score with), and entities carry character offsets into the original text. Sequence-level
tasks (sequence, multi-label, regression) and the embedding read the first window only (truncation, as `encode`
does), with one warning per call. Pairs are truncated (no windows), with a warning.

This file travels with saved models (`custom_pipelines` in config.json), so it imports only numpy, torch,
transformers and its siblings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from transformers import AutoModel
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.base import ChunkPipeline
from transformers.utils import logging

try:
    from .modeling_mtl import MultiTaskModel  # noqa: F401  (registers the model classes with AutoConfig/AutoModel)
    from .postprocess_mtl import default_stride, stitch_windows, token_windows, window_ids, word_entities  # noqa: F401
    from .tasks_mtl import READS_PAIR, READS_TOKENS, get_task_type, text_tasks
except ImportError:  # imported as a top-level module
    from modeling_mtl import MultiTaskModel  # noqa: F401
    from postprocess_mtl import default_stride, stitch_windows, token_windows, window_ids, word_entities  # noqa: F401
    from tasks_mtl import READS_PAIR, READS_TOKENS, get_task_type, text_tasks

logger = logging.get_logger(__name__)

# What preprocess passes to postprocess beside the model inputs (every window carries the keys, so windows batch):
# the text, its tokens' character offsets and word ids, its windows (None: one window) and `length`: 0 for a text
# that fits, its number of tokens when it is read in windows, -1 when it was truncated without windows.
_EXTRAS = ("text", "offsets", "word_ids", "windows", "length")


class MultiTaskPipeline(ChunkPipeline):
    """Runs every task head of a `MultiTaskModel` on each text (or pair of texts) in one encoder pass per window.

    A `ChunkPipeline`, as transformers' token-classification pipeline: one text may give several model inputs (its
    windows), which batch with other texts' windows and come back together to `postprocess`.
    """

    # The model loads its own tokenizer (`MultiTaskModel.tokenizer`): a folder without tokenizer files then gets an
    # error that says so, where transformers' loader would blame a missing sentencepiece.
    _load_tokenizer = False
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(self, model, tokenizer=None, **kwargs: Any):
        if tokenizer is None:
            tokenizer = model.tokenizer
        super().__init__(model, tokenizer=tokenizer, **kwargs)

    def _sanitize_parameters(
        self, return_embedding: bool | None = None, stride: int | None = None, **kwargs: Any
    ) -> tuple[dict, dict, dict]:
        preprocess_params, postprocess_params = {}, {}
        if stride is not None:
            max_length = self.model.max_length(self.tokenizer)
            room = max_length - 2
            if isinstance(stride, bool) or not isinstance(stride, int) or not 0 <= stride < room:
                raise ValueError(f"`stride` must be a whole number of tokens in [0, {room}) for windows of "
                                 f"{max_length} tokens ({room} without special tokens), got {stride!r}.")
            preprocess_params["stride"] = stride
        if return_embedding is not None:
            postprocess_params["return_embedding"] = return_embedding
        return preprocess_params, {}, postprocess_params

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        """A text or a `{"text", "text_pair"}` pair gives `{task: answer}`; a list of them gives a list of those.

        `stride=` (tokens shared by consecutive windows of a long text) overrides the default; `batch_size=` batches
        texts (and the windows of long ones); `return_embedding=True` adds the embedding.
        """
        self._warned_long = False  # the truncation warning is given once per call
        if isinstance(inputs, (list, tuple)) and not inputs:
            return []
        return super().__call__(inputs, **kwargs)

    def _tasks(self, pair: bool) -> list[dict]:
        return text_tasks(self.model.config.tasks, pair=pair)

    def _tokenize(self, text: str, text_pair: str | None = None) -> dict:
        """One tokenizer call: the first window of at most `max_length` tokens; `truncated` when the text is longer."""
        max_length = self.model.max_length(self.tokenizer)
        encoded = self.tokenizer(
            text, text_pair, truncation=True, max_length=max_length, return_offsets_mapping=True,
            return_special_tokens_mask=True, return_overflowing_tokens=text_pair is None,
        )
        windows = encoded.pop("overflow_to_sample_mapping", None)
        word_ids = encoded.word_ids(0)
        first = (lambda value: value[0]) if windows is not None else (lambda value: value)
        offsets = first(encoded.pop("offset_mapping"))
        special = first(encoded.pop("special_tokens_mask"))
        return {"inputs": {key: torch.tensor([first(value)]) for key, value in encoded.items()},
                "offsets": [None if s else (a, b) for (a, b), s in zip(offsets, special)], "word_ids": word_ids,
                "truncated": windows is not None and len(windows) > 1}

    def _windows(self, text: str, stride: int, input_names: list[str]) -> list[dict] | None:
        """A long text's windows, as training cuts token-task rows (`mtl_st.data.task_data`): the whole text tokenized once
        (`verbose=False`: no "indexing errors" warning, the model never sees the whole sequence), then windows of
        `max_length - 2` tokens sharing `stride`, each between the tokenizer's two special tokens. None where the
        tokenizer does not add exactly one special token before and one after a text (no windows: truncation)."""
        specials = self.tokenizer("")["input_ids"]
        if len(specials) != 2:
            return None
        max_length = self.model.max_length(self.tokenizer)
        full = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids = full["input_ids"]
        windows = token_windows(len(ids), max_length - 2, stride)
        items = []
        for start, end in windows:
            window = window_ids(ids, specials, start, end)
            values = {"input_ids": window, "attention_mask": [1] * len(window), "token_type_ids": [0] * len(window)}
            items.append({name: torch.tensor([values[name]]) for name in input_names})
        items[0].update(offsets=[tuple(span) for span in full["offset_mapping"]], word_ids=full.word_ids(),
                        windows=windows, length=len(ids))
        return items

    def preprocess(self, item: Any, stride: int | None = None) -> Iterator[dict]:
        """Flat model inputs, one dict per window (the pipeline pads and batches every tensor key), plus what
        postprocess needs (`_EXTRAS`, on the first window; None on the others) and `is_last`."""
        if isinstance(item, dict):
            if set(item) != {"text", "text_pair"} or not all(isinstance(v, str) for v in item.values()):
                raise TypeError(f"A pair must be {{'text': str, 'text_pair': str}}, got {item!r}.")
            if not self._tasks(pair=True):
                raise ValueError(f"This model has no pair task; its tasks are {self.model.config.task_names}.")
            first = self._tokenize(item["text"])
            second, joint = self._tokenize(item["text_pair"]), self._tokenize(item["text"], item["text_pair"])
            truncated = first["truncated"] or second["truncated"]
            yield {**first["inputs"], **{f"pair_{k}": v for k, v in second["inputs"].items()},
                   **{f"joint_{k}": v for k, v in joint["inputs"].items()},
                   "offsets": first["offsets"], "word_ids": first["word_ids"], "text": item["text"], "windows": None,
                   "length": -1 if truncated else 0, "is_last": True}
            return
        if not isinstance(item, str):
            raise TypeError(f"The multitask pipeline takes strings or {{'text', 'text_pair'}} pairs, got "
                            f"{type(item).__name__}: {item!r}.")
        first = self._tokenize(item)
        windows = None
        if first["truncated"] and any(get_task_type(t["type"]).reads == READS_TOKENS for t in self._tasks(False)):
            stride = default_stride(self.model.max_length(self.tokenizer)) if stride is None else stride
            windows = self._windows(item, stride, list(first["inputs"]))
        if windows is None:  # short text, or nothing to read in full: the first window only
            yield {**first["inputs"], "offsets": first["offsets"], "word_ids": first["word_ids"], "text": item,
                   "windows": None, "length": -1 if first["truncated"] else 0, "is_last": True}
            return
        for i, window in enumerate(windows):
            yield {**window, **{key: window.get(key) for key in _EXTRAS}, "text": item if i == 0 else None,
                   "is_last": i == len(windows) - 1}

    def _forward(self, model_inputs: dict) -> dict:
        extras = {key: model_inputs.pop(key) for key in (*_EXTRAS, "is_last")}
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

    def postprocess(self, all_outputs: list[dict], return_embedding: bool = False) -> dict:
        """One text's windows back into one answer: token tasks stitched over every window, the rest from the first."""
        first = all_outputs[0]
        windows = first["windows"]
        answer, in_full, cut = {}, [], []
        for key in first:
            if not key.startswith("logits_"):
                continue
            task = self.model.config.get_task(key[len("logits_"):])
            task_type = get_task_type(task["type"])
            if windows is not None and task_type.reads == READS_TOKENS:
                logits = stitch_windows([o[key][0].float().cpu().numpy() for o in all_outputs], windows)
                in_full.append(task["name"])
            else:
                logits = first[key][0].float().cpu().numpy()
                cut.append(task["name"])
            answer[task["name"]] = task_type.answer(task, logits, first["text"], first["offsets"], first["word_ids"])
        if return_embedding:
            answer["embedding"] = first["embedding"][0].float().cpu().numpy()
            cut.append("the embedding")
        if first["length"] and not getattr(self, "_warned_long", False):
            self._warn_long(first["text"], first["length"], windows, in_full, cut)
        return answer

    def _warn_long(self, text: str, length: int, windows: list | None, in_full: list[str], cut: list[str]) -> None:
        """The one warning of a call that had a text longer than `max_length`: what read it in full, what did not."""
        max_length = self.model.max_length(self.tokenizer)
        if windows is None:
            message = f"Text longer than {max_length} tokens truncated to {max_length}"
        elif cut:
            stride = windows[0][1] - windows[1][0]
            message = (f"Text of {length} tokens is longer than {max_length}: {', '.join(in_full)} read it in full "
                       f"({len(windows)} windows sharing {stride} tokens); {', '.join(cut)} read only its first "
                       f"{max_length} tokens (truncated)")
        else:
            return  # every answer read the whole text
        self._warned_long = True
        logger.warning(f"{message} (said once per call): {text[:60]!r}...")


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
