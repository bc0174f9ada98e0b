"""Configuration of the multi-task sentence transformer (`model_type = "mtl"`).

This file travels with every saved model (the Hub's remote-code mechanism copies it), so it imports only
`transformers` (and the standard library).
"""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

try:
    from .tasks_mtl import TASK_TYPES, get_task_type, named_prompts
except ImportError:  # imported as a top-level module (this project's own checkout or install)
    from tasks_mtl import TASK_TYPES, get_task_type, named_prompts

POOLING_MODES = ("mean", "cls", "max")


class MultiTaskConfig(PretrainedConfig):
    r"""
    Configuration of a [`MultiTaskModel`]: one shared encoder, a pooling layer and one head per task.

    Args:
        encoder (`dict` or `PretrainedConfig`):
            The encoder's configuration (any `AutoModel` encoder: BERT, RoBERTa, DistilBERT, DeBERTa-v2, ...).
            A dict must carry `model_type`.
        tasks (`list[dict]`):
            One entry per task: `{"name": str, "type": <a type of `tasks_mtl.TASK_TYPES`>, "labels": [str, ...]}`.
            Names are unique. Classification types need at least one label; `regression` and
            `sentence_similarity` take none. Type-specific fields: `threshold` (multi-label, default 0.5) and
            `scale` (similarity's CoSENT scale, default 20).
        pooling (`str`, defaults to `"mean"`):
            How token states become a sentence embedding: `mean` (over non-padding tokens), `cls` (first token)
            or `max` (over non-padding tokens).
        normalize_embeddings (`bool`, defaults to `False`):
            L2-normalise the returned `embeddings`. Heads always read the pooled vector before normalisation.
        classifier_dropout (`float`, *optional*):
            Dropout before every head. `None` uses the encoder's `hidden_dropout_prob` (or `dropout`), else 0.1.
        max_seq_length (`int`, *optional*):
            Truncation length used by `encode` and the pipeline. `None` uses the tokenizer's limit.

    Example:

    ```python
    >>> from configuration_mtl import MultiTaskConfig
    >>> config = MultiTaskConfig(
    ...     encoder={"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
    ...              "num_attention_heads": 2, "intermediate_size": 37},
    ...     tasks=[{"name": "sentiment", "type": "sequence_classification", "labels": ["neg", "pos"]}],
    ... )
    >>> config.task_names
    ['sentiment']
    ```
    """

    model_type = "mtl"
    keys_to_ignore_at_inference = ["task_logits", "embeddings", "last_hidden_state", "hidden_states", "attentions"]
    sub_configs_defaults = {"encoder": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    encoder: dict | PretrainedConfig | None = None
    tasks: list[dict] | None = None
    pooling: str = "mean"
    normalize_embeddings: bool = False
    classifier_dropout: float | None = None
    max_seq_length: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.tasks = [dict(task) for task in (self.tasks or [])]
        self.validate_tasks()
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"Unknown pooling mode {self.pooling!r}; valid modes are {', '.join(POOLING_MODES)}.")
        if self.classifier_dropout is not None and not 0.0 <= float(self.classifier_dropout) < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout!r}.")
        if self.max_seq_length is not None and int(self.max_seq_length) <= 0:
            raise ValueError(f"max_seq_length must be a positive integer, got {self.max_seq_length!r}.")
        self._prefer_registered_pipeline()

    def _prefer_registered_pipeline(self) -> None:
        """Where this project is installed, let its registered `multitask` pipeline serve the declared one.

        The entry always stays in `custom_pipelines` (and in every saved config.json), so a task-less
        `pipeline(model=path)` finds its task. Only this project's own (installed) config class wraps it in
        `DeclaredPipelines`; loaded as remote code, the plain entry makes transformers use the folder's pipeline.
        """
        custom = getattr(self, "custom_pipelines", None)
        if not custom or "multitask" not in custom or _is_remote_code(type(self)):
            return

        self.custom_pipelines = DeclaredPipelines(custom)

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> PretrainedConfig:
        """The encoder's config: the text model's settings (`vocab_size`, special token ids, ...) live there.

        transformers only looks for sub-configs named `text_config`, `decoder`, `generator` or `text_encoder`, so
        without this it returns this config itself: `resize_token_embeddings` then wrote the new size here instead of
        `encoder.vocab_size`, and the Trainer "aligned" a missing `pad_token_id` here on every run (with a warning).
        """
        return self.encoder if isinstance(self.encoder, PretrainedConfig) else self

    def validate_tasks(self) -> None:
        """Raise `ValueError` naming the culprit for a malformed, duplicate or label-less task."""
        seen: set[str] = set()
        for position, task in enumerate(self.tasks):
            name = task.get("name")
            if not isinstance(name, str) or not name:
                raise ValueError(f"Task at position {position} has no name (got {name!r}).")
            if "." in name:
                raise ValueError(f"Task {name!r}: a task name cannot hold a '.' (it names a module of `heads`).")
            if name in seen:
                raise ValueError(f"Duplicate task name {name!r}: task names must be unique.")
            seen.add(name)
            if task.get("type") not in TASK_TYPES:
                raise ValueError(
                    f"Task {name!r} has unknown type {task.get('type')!r}; valid types are {', '.join(TASK_TYPES)}."
                )
            get_task_type(task["type"]).validate(task)
        named_prompts(self.tasks)

    @property
    def prompts(self) -> dict[str, str]:
        """The named prompts (`query`, `document`) of the tasks that define them, as sentence-transformers' `prompts`."""
        return named_prompts(self.tasks)

    @property
    def task_names(self) -> list[str]:
        return [task["name"] for task in self.tasks]

    def get_task(self, name: str) -> dict:
        """The task entry called `name`; `ValueError` listing the valid names otherwise."""
        for task in self.tasks:
            if task["name"] == name:
                return task
        raise ValueError(f"Unknown task {name!r}; this model's tasks are {self.task_names}.")

    def id2label_for(self, name: str) -> dict[int, str]:
        return dict(enumerate(self.get_task(name).get("labels", [])))

    def label2id_for(self, name: str) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.get_task(name).get("labels", []))}


class DeclaredPipelines(dict):
    """`custom_pipelines` whose `multitask` entry steps aside while this project's pipeline is registered.

    transformers' `pipeline()` tests `task in config.custom_pipelines` before its own registry, and refuses a declared
    pipeline without `trust_remote_code=True` even when the same task is registered locally. Answering "not declared"
    there (while the keys, the saved JSON and task inference stay as they are) makes `pipeline("multitask",
    model=path)` and `pipeline(model=path)` use the installed pipeline. `test_upstream_pipeline_checks_declared_first`
    fails when transformers changes that order.
    """

    def __contains__(self, task: object) -> bool:
        if task == "multitask":
            from transformers.pipelines import PIPELINE_REGISTRY

            registered = PIPELINE_REGISTRY.to_dict().get("multitask")
            if registered is not None and not _is_remote_code(registered["impl"]):
                return False
        return super().__contains__(task)


def _is_remote_code(cls: type) -> bool:
    """Whether `cls` was loaded from a model folder with `trust_remote_code=True` (transformers' dynamic modules)."""
    return cls.__module__.startswith("transformers_modules")


__all__ = ["MultiTaskConfig", "TASK_TYPES", "POOLING_MODES"]
