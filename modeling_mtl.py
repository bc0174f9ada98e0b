"""The multi-task sentence transformer: one shared encoder, a pooling layer and one head per task.

This file holds the modules, `forward` and the dispatch to each task type's loss (building, loading and saving are
`pretrained_mtl.MultiTaskPreTrainedModel`'s; the sentence-embedding side, `encode` and `search`, is
`embedding_mtl.SentenceEmbeddingMixin`). It travels with every saved model (the Hub's
remote-code mechanism copies it and its relative imports: `configuration_mtl.py`, `tasks_mtl.py`, `losses_mtl.py`,
`ranking_mtl.py`, `pretrained_mtl.py`, `embedding_mtl.py`, `encoding_mtl.py`, `postprocess_mtl.py`, `pipeline_mtl.py`), so it imports only
torch, numpy, transformers and those siblings. What needs the installed library (`mtl_st`: offline checkpoints, the
sentence-transformers folder, the model card, ONNX) is imported inside the method that needs it.

Importing it registers `MultiTaskConfig` with `AutoConfig` and `MultiTaskModel` with `AutoModel` (`register`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel
from transformers.utils import ModelOutput, logging

try:
    from .configuration_mtl import MultiTaskConfig
    from .embedding_mtl import SentenceEmbeddingMixin
    from .losses_mtl import LOSSES
    from .pretrained_mtl import MultiTaskPreTrainedModel, build_encoder
    from .ranking_mtl import ranking_step
    from .tasks_mtl import IGNORE_INDEX, READS_PAIR, READS_RANKING, READS_TOKENS, embedding_dims, get_task_type  # noqa: F401
except ImportError:  # imported as a top-level module (this project's own checkout or install)
    from configuration_mtl import MultiTaskConfig
    from embedding_mtl import SentenceEmbeddingMixin
    from losses_mtl import LOSSES
    from pretrained_mtl import MultiTaskPreTrainedModel, build_encoder
    from ranking_mtl import ranking_step
    from tasks_mtl import IGNORE_INDEX, READS_PAIR, READS_RANKING, READS_TOKENS, embedding_dims, get_task_type  # noqa: F401

logger = logging.get_logger(__name__)


@dataclass
class MultiTaskModelOutput(ModelOutput):
    """
    Output of [`MultiTaskModel.forward`].

    The first field that is set is the main tensor, as in every transformers model (`outputs[0]`,
    `return_dict=False`): the loss when labels are given, else the named task's logits, else `last_hidden_state`
    (the token states, as a plain encoder's `outputs[0]`, so that `pipeline("feature-extraction")` and code written for
    encoders work unchanged).

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            The named task's loss against `labels`, as its task type defines it (see `losses_mtl.py`).
        logits (`torch.FloatTensor`, *optional*):
            The named task's logits: `[batch, num_labels]` for sequence, pair and multi-label classification,
            `[batch, seq, num_labels]` for token classification, `[batch, 1]` for regression and the cosine
            similarities `[batch]` for sentence similarity. `None` when no task is named.
        last_hidden_state (`torch.FloatTensor` of shape `[batch, seq, hidden]`):
            The encoder's token states.
        embeddings (`torch.FloatTensor` of shape `[batch, hidden]`):
            Pooled sentence embeddings, L2-normalised when `config.normalize_embeddings`.
        task_logits (`dict[str, torch.FloatTensor]`):
            The logits of every head that ran: all of them when `task is None`, else just the named one.
        hidden_states, attentions: as the encoder returns them when asked for.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    task_logits: dict[str, torch.FloatTensor] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class Pooling(nn.Module):
    """Turns token states `[batch, seq, hidden]` into sentence vectors `[batch, hidden]`, ignoring padding."""

    def __init__(self, mode: str = "mean"):
        super().__init__()
        self.mode = mode

    def forward(self, token_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.mode == "cls":
            return token_states[:, 0]
        mask = attention_mask.unsqueeze(-1).to(token_states.dtype)
        if self.mode == "max":
            masked = token_states.masked_fill(mask == 0, torch.finfo(token_states.dtype).min)
            return masked.max(dim=1).values
        summed = (token_states * mask).sum(dim=1)
        return summed / mask.sum(dim=1).clamp(min=1e-9)


class TaskHead(nn.Module):
    """Dropout + linear layer. Reads `[batch, hidden]` (sequence tasks) or `[batch, seq, hidden]` (token tasks)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(states))


class MultiTaskModel(SentenceEmbeddingMixin, MultiTaskPreTrainedModel):
    r"""
    A shared transformer encoder with a pooling layer and one head per task (`self.heads`, keyed by task name).

    Sequence-classification heads read the pooled embedding (before normalisation); token-classification heads
    read every token state. One encoder pass serves every head.

    Example:

    ```python
    >>> from modeling_mtl import MultiTaskModel
    >>> model = MultiTaskModel.from_encoder(
    ...     "sentence-transformers/all-MiniLM-L6-v2",
    ...     tasks=[{"name": "sentiment", "type": "sequence_classification", "labels": ["neg", "neu", "pos"]}],
    ...     normalize_embeddings=True,
    ... )
    >>> model.encode(["The weather is lovely today."]).shape
    (1, 384)
    ```
    """

    def __init__(self, config: MultiTaskConfig):
        super().__init__(config)
        self.encoder = build_encoder(config.encoder)
        self.pooling = Pooling(config.pooling)
        dropout = config.classifier_dropout
        if dropout is None:
            dropout = getattr(config.encoder, "hidden_dropout_prob", None) or getattr(config.encoder, "dropout", 0.1)
        self.heads = nn.ModuleDict(
            {
                task["name"]: TaskHead(config.encoder.hidden_size, get_task_type(task["type"]).num_outputs(task),
                                       float(dropout))
                for task in config.tasks
                if get_task_type(task["type"]).has_head
            }
        )
        for task in config.tasks:
            too_wide = [d for d in task.get("matryoshka_dims") or [] if d > config.encoder.hidden_size]
            if too_wide:
                raise ValueError(f"Task {task['name']!r}: matryoshka_dims {too_wide} exceed the encoder's width "
                                 f"{config.encoder.hidden_size}.")
        self._encoder_takes_token_type_ids = "token_type_ids" in inspect.signature(self.encoder.forward).parameters
        self._tokenizer = None
        self._eval_view: tuple[tuple, MultiTaskModel] | None = None
        self.post_init()

    # ------------------------------------------------------------------ embeddings table
    def get_input_embeddings(self) -> nn.Module:
        """The encoder's token embedding table."""
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replace the encoder's token embedding table."""
        self.encoder.set_input_embeddings(value)

    def layer_groups(self) -> dict[str, Any]:
        """The trainable structure, declared for layer-wise learning rates (as timm models declare theirs).

        `{"embeddings": [...], "layers": [[...], ...], "encoder_other": [...], "heads": [...]}`: parameters of the
        encoder's embedding modules, of each transformer layer bottom first (the encoder's `ModuleList` of
        `num_hidden_layers` blocks), of the rest of the encoder (e.g. a final norm), and of the heads. Parameters
        added inside a layer later (a LoRA adapter) belong to that layer.
        """
        layers = encoder_layers(self.encoder)
        in_layer = {id(p): i for i, layer in enumerate(layers) for p in layer.parameters()}
        groups: dict[str, Any] = {"embeddings": [], "layers": [[] for _ in layers], "encoder_other": [],
                                  "heads": list(self.heads.parameters())}
        for name, parameter in self.encoder.named_parameters():
            if id(parameter) in in_layer:
                groups["layers"][in_layer[id(parameter)]].append(parameter)
            elif "embed" in name:
                groups["embeddings"].append(parameter)
            else:
                groups["encoder_other"].append(parameter)
        return groups

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        task: str | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_hidden_states: bool | list[int] | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        pair_input_ids: torch.LongTensor | None = None,
        pair_attention_mask: torch.LongTensor | None = None,
        pair_token_type_ids: torch.LongTensor | None = None,
        negative_input_ids: torch.LongTensor | None = None,
        negative_attention_mask: torch.LongTensor | None = None,
        negative_token_type_ids: torch.LongTensor | None = None,
    ) -> MultiTaskModelOutput | tuple:
        r"""
        Run the encoder once and the named head (or every head when `task is None`).

        Args:
            input_ids (`torch.LongTensor` of shape `[batch, seq]`): token ids.
            attention_mask (`torch.LongTensor` of shape `[batch, seq]`): 1 for real tokens, 0 for padding.
            token_type_ids (`torch.LongTensor` of shape `[batch, seq]`, *optional*): ignored by encoders without them.
            task (`str`, *optional*): the head to run. `None` runs every head and returns `task_logits`.
            labels (`torch.Tensor`, *optional*): the named task's labels: `[batch]` class ids (sequence and pair
                classification), `[batch, seq]` token label ids (-100 ignored), `[batch, num_labels]` multi-hot rows
                (multi-label), `[batch]` floats (regression, sentence similarity). Requires `task`, unless the model
                has a single task.
            pair_input_ids, pair_attention_mask, pair_token_type_ids (`[batch, pair_seq]`, *optional*): the second
                sentence of a `sentence_similarity` task, encoded on its own; its logits are the cosine similarities
                `[batch]` of the two sentences' pooled embeddings (`[batch, widths]` with `matryoshka_dims`). For a
                `retrieval` task, the anchors' positives: the logits are the scaled cosines `[batch, candidates]`
                of the in-batch ranking (`ranking_mtl`); without them, a retrieval task's logits are the texts'
                pooled embeddings.
            negative_input_ids, negative_attention_mask, negative_token_type_ids (`[batch * k, neg_seq]`, *optional*):
                a retrieval batch's hard negatives, every row's first one, then every row's second one, ...
            output_hidden_states (`bool` or `list[int]`, *optional*): as in every transformers model; a list of
                layer indices is passed to the encoder as it is (it returns `None` for the layers not chosen).
            output_attentions, return_dict: as in every transformers model; `None` follows the config.
                `return_dict=False` returns `MultiTaskModelOutput.to_tuple()` (its non-`None` fields in order).
        """
        if labels is not None and task is None and len(self.config.tasks) == 1:
            task = self.config.tasks[0]["name"]  # one task: implicit (a plain Trainer's collators carry no task)
        if labels is not None and task is None:
            raise ValueError(f"`labels` were given without `task`; name one of {self.config.task_names}.")
        task_config = self.config.get_task(task) if task is not None else None
        if task_config is not None and pair_input_ids is not None and \
                get_task_type(task_config["type"]).reads == READS_RANKING:
            return self._ranking_forward(task_config, return_dict if return_dict is not None else self.config.return_dict,
                                         {"input_ids": input_ids, "attention_mask": attention_mask,
                                          "token_type_ids": token_type_ids},
                                         {"input_ids": pair_input_ids, "attention_mask": pair_attention_mask,
                                          "token_type_ids": pair_token_type_ids},
                                         {"input_ids": negative_input_ids, "attention_mask": negative_attention_mask,
                                          "token_type_ids": negative_token_type_ids})

        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        if return_dict is None:
            return_dict = self.config.return_dict
        if attention_mask is None:
            reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
            attention_mask = torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)
        encoder_inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "inputs_embeds": inputs_embeds}
        if token_type_ids is not None and self._encoder_takes_token_type_ids:
            encoder_inputs["token_type_ids"] = token_type_ids
        if output_hidden_states is not None and output_hidden_states is not False:
            encoder_inputs["output_hidden_states"] = output_hidden_states
        if output_attentions:
            encoder_inputs["output_attentions"] = True
        encoder_outputs = self.encoder(**encoder_inputs, return_dict=True)
        token_states = encoder_outputs.last_hidden_state
        pooled = self.pooling(token_states, attention_mask)

        task_logits = {}
        for entry in [task_config] if task_config is not None else self.config.tasks:
            task_type = get_task_type(entry["type"])
            if task_type.reads == READS_PAIR:
                if pair_input_ids is None:
                    if task_config is not None:
                        raise ValueError(f"Task {task!r} ({entry['type']}) needs `pair_input_ids`: the second sentence.")
                    continue  # a similarity task has nothing to score for single texts
                pair_pooled = self.embed(pair_input_ids, pair_attention_mask, pair_token_type_ids)
                widths = embedding_dims(entry, pooled.shape[-1])
                cosines = [nn.functional.cosine_similarity(pooled[:, :w], pair_pooled[:, :w], dim=-1) for w in widths]
                task_logits[entry["name"]] = cosines[0] if len(widths) == 1 else torch.stack(cosines, dim=-1)
            elif task_type.reads == READS_RANKING:
                task_logits[entry["name"]] = pooled  # a single text: its embedding (queries, documents, the pipeline)
            else:
                states = token_states if task_type.reads == READS_TOKENS else pooled
                task_logits[entry["name"]] = self.heads[entry["name"]](states)

        loss = None
        logits = task_logits[task] if task is not None else None
        if labels is not None:
            loss = self.task_loss(task, logits, labels)

        embeddings = nn.functional.normalize(pooled, p=2, dim=-1) if self.config.normalize_embeddings else pooled
        output = MultiTaskModelOutput(
            loss=loss,
            logits=logits,
            last_hidden_state=token_states,
            embeddings=embeddings,
            task_logits=task_logits,
            hidden_states=getattr(encoder_outputs, "hidden_states", None),
            attentions=getattr(encoder_outputs, "attentions", None),
        )
        return output if return_dict else output.to_tuple()

    def task_loss(self, task: str, logits: torch.Tensor, labels: torch.Tensor,
                  label_smoothing: float = 0.0) -> torch.Tensor:
        """The named task's loss, as its task type defines it (`losses_mtl.LOSSES`); `ValueError` for labels of the
        wrong shape or range. Logits with one column per Matryoshka width give the sum of each width's loss (as
        sentence-transformers' `MatryoshkaLoss`)."""
        task_config = self.config.get_task(task)
        reads = get_task_type(task_config["type"]).reads
        if reads == READS_RANKING:  # evaluation rows are single texts: no batch to rank, no loss
            return logits.sum() * 0.0
        loss = LOSSES[task_config["type"]]
        if reads == READS_PAIR and logits.dim() == 2:
            return sum(loss(task_config, logits[:, i], labels, label_smoothing=label_smoothing)
                       for i in range(logits.shape[1]))
        return loss(task_config, logits, labels, label_smoothing=label_smoothing)

    def _ranking_forward(self, task: dict, return_dict: bool, anchors: dict, positives: dict,
                         negatives: dict) -> MultiTaskModelOutput | tuple:
        """A retrieval batch: anchors ranked against every positive and hard negative of the batch (`ranking_mtl`)."""
        loss, scores = ranking_step(task, self.embed_inputs, anchors, positives, negatives)
        output = MultiTaskModelOutput(loss=loss, logits=scores, task_logits={task["name"]: scores})
        return output if return_dict else output.to_tuple()

    def embed_inputs(self, inputs: dict) -> torch.Tensor:
        """`embed` of a dict of inputs (`input_ids`, `attention_mask`, `token_type_ids`)."""
        return self.embed(inputs["input_ids"], inputs.get("attention_mask"), inputs.get("token_type_ids"))

    def embed(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None,
        token_type_ids: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """Pooled, un-normalised sentence vectors `[batch, hidden]`; runs no head.

        `attention_mask=None` means a batch without padding: the encoder then runs without a mask (what it does
        anyway for an all-ones mask under SDPA, minus the check) and pooling takes every token.
        """
        encoder_inputs = {"input_ids": input_ids}
        if attention_mask is not None:
            encoder_inputs["attention_mask"] = attention_mask
        if token_type_ids is not None and self._encoder_takes_token_type_ids:
            encoder_inputs["token_type_ids"] = token_type_ids
        token_states = self.encoder(**encoder_inputs, return_dict=True).last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(token_states.shape[:2], dtype=torch.long, device=token_states.device)
        return self.pooling(token_states, attention_mask)

def encoder_layers(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's transformer blocks, bottom first: its shallowest `ModuleList` of `num_hidden_layers` modules."""
    config = encoder.config
    count = next((getattr(config, key) for key in ("num_hidden_layers", "n_layers", "num_layers")
                  if isinstance(getattr(config, key, None), int)), None)
    for _, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return list(module)
    return []


def register() -> None:
    """Register `MultiTaskConfig` with `AutoConfig` and `MultiTaskModel` with `AutoModel` (and as their `auto_map`
    classes in saved folders). Called once when this module is imported; safe to call again."""
    AutoConfig.register("mtl", MultiTaskConfig, exist_ok=True)
    AutoModel.register(MultiTaskConfig, MultiTaskModel, exist_ok=True)
    MultiTaskConfig.register_for_auto_class()
    MultiTaskModel.register_for_auto_class("AutoModel")


register()

__all__ = ["MultiTaskModel", "MultiTaskModelOutput", "MultiTaskPreTrainedModel", "Pooling", "TaskHead", "register"]
