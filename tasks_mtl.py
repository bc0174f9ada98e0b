"""Task types: one torch-free spec per type, read by the model, the data side, the pipeline and the ONNX runtime.

A spec says what a task of its type is: whether it has a head and what the head reads, whether its input is a pair
of texts, which label names and extra fields its config entry takes (and checks them), which metrics it reports,
and how one text's outputs become the pipeline's answer. Each type also has one model-side loss (`losses_mtl.py`)
and one data-side class (`mtl_st/data/task_data.py`: columns, reading, tokenisation, padding, metrics). Adding a type
is a `TaskSpec` subclass here, a loss there and a data class there, each registered under the type's name.

| type | head reads | head outputs | input | answer |
| --- | --- | --- | --- | --- |
| `sequence_classification` | pooled vector | one per label | text | `{label, score}` |
| `token_classification` | every token state | one per label | text | word-level entities |
| `pair_classification` | pooled vector of the jointly encoded pair | one per label | pair | `{label, score}` |
| `multi_label_classification` | pooled vector | one per label | text | labels above the threshold |
| `regression` | pooled vector | 1 | text | `{score}` |
| `sentence_similarity` | no head: the two sentences' embeddings | (cosine) | pair | `{score}` |
| `retrieval` | no head: anchors' and candidates' embeddings | (in-batch ranking) | text | `{embedding}` |

This file travels with saved models and imports only numpy and its sibling `postprocess_mtl`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

try:
    from .postprocess_mtl import (
        embedding_answer,
        multi_label_answer,
        regression_answer,
        single_label_answer,
        word_entities,
    )
except ImportError:  # imported as a top-level module
    from postprocess_mtl import (
        embedding_answer,
        multi_label_answer,
        regression_answer,
        single_label_answer,
        word_entities,
    )

IGNORE_INDEX = -100  # label id of positions that are not scored (special tokens, later sub-tokens, padding)
# What a task reads: the pooled vector, every token state, two sentences' embeddings, or anchors ranked against
# candidates (the candidates of a batch are every anchor's positive and hard negatives).
READS_POOLED, READS_TOKENS, READS_PAIR, READS_RANKING = "pooled", "tokens", "pair", "ranking"
PROMPT_NAMES = ("query", "document")


class TaskSpec:
    """What a task type is (see the module docstring). Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    reads: ClassVar[str] = READS_POOLED  # which encoder output the head reads (READS_PAIR: two sentences' embeddings)
    has_head: ClassVar[bool] = True  # False: scored on the embeddings, so it may be an eval-only monitor
    needs_labels: ClassVar[bool] = True  # the config lists label names (False: labels are numbers)
    takes_pair: ClassVar[bool] = False  # the pipeline input is {"text", "text_pair"}
    pipeline_tag: ClassVar[str] = "text-classification"
    metric_names: ClassVar[tuple[str, ...]] = ()
    lower_is_better: ClassVar[tuple[str, ...]] = ()  # metric names where a smaller value is better (besides `loss`)
    eval_loss: ClassVar[bool] = True  # its evaluation reports a loss (`eval_<task>_loss`)
    extra_fields: ClassVar[dict[str, Any]] = {}  # further config fields of this type, with their defaults

    def validate(self, task: dict) -> dict:
        """Check one config entry of this type; return it with labels as strings and defaults filled in."""
        name = task["name"]
        labels = task.get("labels")
        if self.needs_labels:
            if not labels or not isinstance(labels, (list, tuple)):
                raise ValueError(f"Task {name!r} has no labels: give it a non-empty `labels` list.")
            labels = [str(label) for label in labels]
            if len(set(labels)) != len(labels):
                raise ValueError(f"Task {name!r} lists a label twice: {labels}.")
            task["labels"] = labels
        elif labels:
            raise ValueError(f"Task {name!r} is a {self.name} task, which takes no `labels`; got {labels!r}.")
        else:
            task.pop("labels", None)
        allowed = {"name", "type", "labels", *self.extra_fields}
        unknown = set(task) - allowed
        if unknown:
            raise ValueError(
                f"Task {name!r} has unknown fields {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}."
            )
        for field, default in self.extra_fields.items():
            task.setdefault(field, default)
        return task

    def num_outputs(self, task: dict) -> int:
        """The width of the task's head (0 for a type without one)."""
        return len(task["labels"])

    def answer(self, task: dict, logits: np.ndarray, text: str, offsets: list, word_ids: list) -> Any:
        """The pipeline's answer for one text from this task's outputs (numpy, no batch axis); `offsets` and `word_ids`
        are the text's tokens' character spans and words (token tasks read them)."""
        return single_label_answer(logits, task["labels"])

    def card_line(self, task: dict) -> str:
        """This task's row in the model card's task table: `| name | type | labels |`."""
        labels = ", ".join(f"`{label}`" for label in task.get("labels", [])) or "—"
        return f"| {task['name']} | {task['type']} | {labels} |"


class SequenceClassification(TaskSpec):
    name = "sequence_classification"
    metric_names = ("accuracy", "macro_f1")


class PairClassification(TaskSpec):
    name = "pair_classification"
    takes_pair = True
    metric_names = ("accuracy", "macro_f1")


class TokenClassification(TaskSpec):
    name = "token_classification"
    reads = READS_TOKENS
    pipeline_tag = "token-classification"
    metric_names = ("precision", "recall", "f1")

    def validate(self, task: dict) -> dict:
        task = super().validate(task)
        for label in task["labels"]:
            if not is_bio_tag(label):
                raise ValueError(f"Task {task['name']!r}: label {label!r} is not a BIO tag (O, B-TYPE or I-TYPE).")
        return task

    def answer(self, task: dict, logits: np.ndarray, text: str, offsets: list, word_ids: list) -> list[dict]:
        return word_entities(text, offsets, word_ids, logits, task["labels"])


class MultiLabelClassification(TaskSpec):
    name = "multi_label_classification"
    metric_names = ("micro_f1", "macro_f1")
    extra_fields = {"threshold": 0.5}

    def validate(self, task: dict) -> dict:
        task = super().validate(task)
        task["threshold"] = check_threshold(task["threshold"], f"Task {task['name']!r}")
        return task

    def answer(self, task: dict, logits: np.ndarray, text: str, offsets: list, word_ids: list) -> list[dict]:
        return multi_label_answer(logits, task["labels"], task.get("threshold", 0.5))


class Regression(TaskSpec):
    name = "regression"
    needs_labels = False
    metric_names = ("pearson", "spearman", "mse")
    lower_is_better = ("mse",)

    def num_outputs(self, task: dict) -> int:
        return 1

    def answer(self, task: dict, logits: np.ndarray, text: str, offsets: list, word_ids: list) -> dict:
        return regression_answer(logits)


class SentenceSimilarity(Regression):
    """No head: the task's "logits" are the cosine similarities of two sentences' embeddings (CoSENT when trained).
    With `matryoshka_dims`, every prefix of the embedding is trained and scored (`_dim<d>` metrics)."""

    name = "sentence_similarity"
    reads = READS_PAIR
    has_head = False
    takes_pair = True
    pipeline_tag = "sentence-similarity"
    metric_names = ("spearman", "pearson")
    lower_is_better = ()
    extra_fields = {"scale": 20.0, "matryoshka_dims": None}

    def validate(self, task: dict) -> dict:
        task = super().validate(task)
        task["matryoshka_dims"] = check_dims(task["matryoshka_dims"], f"Task {task['name']!r}")
        return task

    def num_outputs(self, task: dict) -> int:
        return 0


class Retrieval(TaskSpec):
    """No head: trained with in-batch negatives (every other positive of the batch, and any hard negatives, is a
    negative for an anchor; sentence-transformers' `MultipleNegativesRankingLoss`), scored by searching a corpus or
    reranking candidates. The pipeline answers with the text's (L2-normalised) embedding."""

    name = "retrieval"
    reads = READS_RANKING
    eval_loss = False  # evaluation embeds single texts (queries, documents): there is no batch to rank
    has_head = False
    needs_labels = False
    pipeline_tag = "feature-extraction"
    metric_names = ("ndcg_at_10", "mrr_at_10", "map_at_100", "recall_at_1", "recall_at_10")
    extra_fields = {"scale": 20.0, "symmetric": False, "mini_batch_size": None, "matryoshka_dims": None,
                    "prompts": None}

    def validate(self, task: dict) -> dict:
        task = super().validate(task)
        where = f"Task {task['name']!r}"
        scale = task["scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"{where}: `scale` must be a number above 0, got {scale!r}.")
        task["scale"] = float(scale)
        if not isinstance(task["symmetric"], bool):
            raise ValueError(f"{where}: `symmetric` must be true or false, got {task['symmetric']!r}.")
        size = task["mini_batch_size"]
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"{where}: `mini_batch_size` must be a whole number >= 1, got {size!r}.")
        task["matryoshka_dims"] = check_dims(task["matryoshka_dims"], where)
        prompts = task["prompts"]
        if prompts is not None:
            if not isinstance(prompts, dict) or set(prompts) - set(PROMPT_NAMES) or not all(
                    isinstance(v, str) for v in prompts.values()):
                raise ValueError(f"{where}: `prompts` maps {' and/or '.join(PROMPT_NAMES)} to a string, got "
                                 f"{prompts!r}.")
            task["prompts"] = dict(prompts)
        return task

    def num_outputs(self, task: dict) -> int:
        return 0

    def answer(self, task: dict, logits: np.ndarray, text: str, offsets: list, word_ids: list) -> dict:
        return embedding_answer(logits)

    def card_line(self, task: dict) -> str:
        extras = [f"scale {task.get('scale', 20.0):g}"] + (["symmetric"] if task.get("symmetric") else []) + (
            [f"Matryoshka {task['matryoshka_dims']}"] if task.get("matryoshka_dims") else [])
        return f"| {task['name']} | {task['type']} | — ({', '.join(extras)}) |"


def is_bio_tag(tag: str) -> bool:
    """`O`, or `B-TYPE` / `I-TYPE` with a non-empty type."""
    return tag == "O" or (len(tag) > 2 and tag[:2] in ("B-", "I-"))


def check_dims(dims: Any, where: str) -> list[int] | None:
    """`matryoshka_dims`: distinct whole numbers >= 1, largest first (the full width is added by the model when it is
    missing); None when not given."""
    if dims is None:
        return None
    if not isinstance(dims, (list, tuple)) or not dims or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims) or len(set(dims)) != len(dims):
        raise ValueError(f"{where}: `matryoshka_dims` must be a list of distinct whole numbers >= 1, got {dims!r}.")
    return sorted(dims, reverse=True)


def check_threshold(threshold: Any, where: str) -> float:
    """A multi-label threshold: a number in (0, 1); `ValueError` naming `where` otherwise."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
        raise ValueError(f"{where}: `threshold` must be a number in (0, 1), got {threshold!r}.")
    return float(threshold)


TASK_TYPES: dict[str, TaskSpec] = {}


def register_task_type(spec: TaskSpec) -> TaskSpec:
    """Make `spec` available under `spec.name` in configs, models, the pipeline and the ONNX runtime."""
    TASK_TYPES[spec.name] = spec
    return spec


for _spec in (SequenceClassification(), TokenClassification(), PairClassification(), MultiLabelClassification(),
              Regression(), SentenceSimilarity(), Retrieval()):
    register_task_type(_spec)


def get_task_type(name: str) -> TaskSpec:
    """The registered task type `name`; `ValueError` listing the valid types otherwise."""
    if name not in TASK_TYPES:
        raise ValueError(f"Unknown task type {name!r}; valid types are {', '.join(TASK_TYPES)}.")
    return TASK_TYPES[name]


def head_tasks(tasks: list[dict]) -> list[dict]:
    """The tasks with a head of their own, in config order."""
    return [task for task in tasks if get_task_type(task["type"]).has_head]


def text_tasks(tasks: list[dict], pair: bool = False) -> list[dict]:
    """The tasks whose input is one text (`pair=False`) or a pair of texts (`pair=True`), in config order."""
    return [task for task in tasks if get_task_type(task["type"]).takes_pair == pair]


def embedding_dims(task: dict, hidden_size: int) -> list[int]:
    """The embedding widths a task trains and scores: the full width first, then its `matryoshka_dims` below it."""
    return [hidden_size] + [d for d in (task.get("matryoshka_dims") or []) if d < hidden_size]


def named_prompts(tasks: list[dict]) -> dict[str, str]:
    """The named prompts (`query`, `document`) of the tasks that define them, as sentence-transformers' `prompts`.
    Two tasks giving one name different texts are refused, naming both."""
    prompts: dict[str, tuple[str, str]] = {}
    for task in tasks:
        for key, text in (task.get("prompts") or {}).items():
            if key in prompts and prompts[key][1] != text:
                raise ValueError(f"Tasks {prompts[key][0]!r} and {task['name']!r} give the {key} prompt different "
                                 f"texts ({prompts[key][1]!r}, {text!r}); the model has one prompt per name.")
            prompts[key] = (task["name"], text)
    return {key: text for key, (_, text) in prompts.items()}


def pick_prompt(prompts: dict[str, str], prompt: str | None, prompt_name: str | None) -> str | None:
    """The text `encode` prepends: `prompt` when given, else the named prompt `prompt_name` (refused, listing the
    names, when the model has no such prompt)."""
    if prompt is not None or prompt_name is None:
        return prompt
    if prompt_name not in prompts:
        raise ValueError(f"The model has no prompt named {prompt_name!r}; its named prompts are "
                         f"{sorted(prompts) or 'none'} (a retrieval task's `prompts`). Pass prompt= instead.")
    return prompts[prompt_name]


__all__ = ["TaskSpec", "TASK_TYPES", "named_prompts", "pick_prompt", "register_task_type", "get_task_type", "head_tasks", "text_tasks",
           "embedding_dims", "IGNORE_INDEX", "READS_POOLED", "READS_TOKENS", "READS_PAIR", "READS_RANKING",
           "PROMPT_NAMES", "is_bio_tag", "check_threshold", "check_dims"]
