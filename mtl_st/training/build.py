"""A run's model and tokenizer: a new model around an encoder checkpoint, or a saved MultiTaskModel to go on from."""

from __future__ import annotations

import logging
from typing import Any

from safetensors import SafetensorError
from transformers import AutoConfig, AutoTokenizer

from modeling_mtl import MultiTaskModel
from mtl_st.checkpoints import resolve_checkpoint
from mtl_st.errors import DataError
from mtl_st.training.checks import weights_error

logger = logging.getLogger(__name__)

# Byte-level BPE tokenizers need a prefix space to take pre-split words (as in transformers' run_ner.py).
ADD_PREFIX_SPACE = {"bloom", "gpt2", "roberta", "deberta", "longformer", "bart"}


def build_model(model_args: Any, tasks: list[dict]) -> MultiTaskModel:
    """A saved MultiTaskModel whose tasks match, or a new one around an encoder checkpoint.

    `model_args` has `model_name_or_path`, `pooling`, `normalize_embeddings`, `classifier_dropout` and
    `max_seq_length` (train.py's `ModelArguments`). A saved model keeps its pooling, normalisation and sequence limit
    unless the config sets them. A corrupt weights file is a `DataError` naming it.
    """
    source = resolve_checkpoint(model_args.model_name_or_path)
    try:
        return _build_model(model_args, tasks, source)
    except SafetensorError as error:
        raise weights_error(source, error) from None


def _build_model(model_args: Any, tasks: list[dict], source: str) -> MultiTaskModel:
    config = AutoConfig.from_pretrained(source)
    if config.model_type == "mtl":
        model = MultiTaskModel.from_pretrained(source)
        if model.config.tasks != tasks:
            raise DataError(
                f"{model_args.model_name_or_path} is a MultiTaskModel with tasks {model.config.tasks}, but the config "
                f"asks for {tasks}: give the same tasks and labels, or start from its encoder."
            )
        for field_name in ("pooling", "normalize_embeddings", "max_seq_length"):
            value = getattr(model_args, field_name)
            if value is not None and value != getattr(model.config, field_name):
                logger.warning(f"{field_name}: {value!r} from the config replaces the saved model's "
                               f"{getattr(model.config, field_name)!r}.")
                setattr(model.config, field_name, value)
        model.pooling.mode = model.config.pooling
        return model
    return MultiTaskModel.from_encoder(
        model_args.model_name_or_path,
        tasks=tasks,
        pooling=model_args.pooling or "mean",
        normalize_embeddings=bool(model_args.normalize_embeddings),
        classifier_dropout=model_args.classifier_dropout,
        max_seq_length=model_args.max_seq_length,
    )


def load_tokenizer(model_name_or_path: str, encoder_type: str):
    """The checkpoint's tokenizer; byte-level BPE encoders (`encoder_type`) get a prefix space for split words."""
    kwargs = {"add_prefix_space": True} if encoder_type in ADD_PREFIX_SPACE else {}
    return AutoTokenizer.from_pretrained(resolve_checkpoint(model_name_or_path), **kwargs)


__all__ = ["build_model", "load_tokenizer", "ADD_PREFIX_SPACE"]
