"""How sentences become embeddings, for the PyTorch model and the ONNX runtime alike.

`encode_texts` is the one encode engine: texts are tokenised a chunk at a time (so memory stays flat however many
texts come in), sorted by token count within the chunk (so each batch pads little), padded with numpy and passed
batch by batch to a `run` function (the model's forward, or an ONNX session), and written into their place in the
input order. `pad_batch` and `length_sorted_batches` are its numpy helpers. `write_sentence_transformer_modules` writes
the sentence-transformers module files that describe the same pooling, normalisation and sequence limit.

This file travels with saved models and imports only numpy and the standard library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Texts tokenised at a time: enough for the length sort to pad little, few enough that the tokenizer's output for
# them (about 9 KB a sentence, with its Rust encodings) never grows with the input.
CHUNK_SIZE = 4096


def _malloc_trim() -> Callable[[], None]:
    """glibc's `malloc_trim(0)`, or a no-op elsewhere. Between chunks, it hands the heap's freed pages back to the
    system: without it each chunk's freed token lists and tensors leave a few MB of fragmented heap behind, so the
    resident size of a long `encode` grows with the number of texts although nothing stays allocated."""
    if not sys.platform.startswith("linux"):
        return lambda: None
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and others: no malloc_trim
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


release_free_memory = _malloc_trim()


def check_texts(texts: Any, caller: str) -> tuple[list[str], bool]:
    """`(texts as a list, whether one string was given)`; `TypeError` naming the first non-string and its position."""
    single = isinstance(texts, str)
    if single:
        return [texts], True
    if texts is None or isinstance(texts, (dict, bytes)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"{caller}() takes a string or a list of strings, got {type(texts).__name__}: {texts!r}.")
    texts = list(texts)
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{caller}() takes strings; item {position} is {type(text).__name__}: {text!r}.")
    return texts, False


def check_batch_size(batch_size: Any, caller: str) -> int:
    if isinstance(batch_size, bool) or not hasattr(batch_size, "__index__") or batch_size < 1:
        raise ValueError(f"{caller}() needs a whole batch_size of at least 1, got {batch_size!r}.")
    return int(batch_size)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of `batch_size`, longest first by token count (stable)."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def pad_batch(rows: Sequence[Sequence[int]], pad_value: int, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(ids, keep)`: right-padded `[batch, width]` int64 ids and the boolean mask of real tokens (`keep` may be given,
    to pad a second list of the same shape, such as token type ids, alike)."""
    if keep is None:
        lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
        keep = np.arange(int(lengths.max()) if len(rows) else 0)[None, :] < lengths[:, None]
    flat = np.fromiter((token for row in rows for token in row), dtype=np.int64, count=int(keep.sum()))
    if keep.all():
        return flat.reshape(keep.shape), keep
    out = np.full(keep.shape, pad_value, dtype=np.int64)
    out[keep] = flat
    return out, keep


Tokenize = Callable[[list[str]], tuple[list[list[int]], list[list[int]] | None]]
Run = Callable[[np.ndarray, np.ndarray | None, np.ndarray | None], np.ndarray]


def encode_texts(texts: list[str], tokenize: Tokenize, run: Run, width: int, batch_size: int = 32,
                 pad_id: int = 0, pad_type_id: int = 0, chunk_size: int = CHUNK_SIZE,
                 progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Embed `texts` into a `[len(texts), width]` float32 array, in the input order.

    `tokenize(texts)` gives each text's token ids (and token type ids, or `None`); `run(ids, mask, types)` gives one
    batch's embeddings `[batch, width]` from `[batch, seq]` int64 arrays (`mask` is `None` for a batch without
    padding, `types` when every type id is 0). `progress(n)` is called after each batch with its size.
    """
    out = np.empty((len(texts), width), dtype=np.float32)
    for chunk_start in range(0, len(texts), chunk_size):
        ids, types = tokenize(texts[chunk_start : chunk_start + chunk_size])
        if types is not None and not any(any(row) for row in types):
            types = None  # all zero: the encoder's own default, so no array to build and copy
        for rows in length_sorted_batches([len(row) for row in ids], batch_size):
            batch_ids, keep = pad_batch([ids[row] for row in rows], pad_id)
            batch_types = pad_batch([types[row] for row in rows], pad_type_id, keep)[0] if types is not None else None
            mask = None if keep.all() else keep.astype(np.int64)
            out[chunk_start + rows] = run(batch_ids, mask, batch_types)
            if progress is not None:
                progress(len(rows))
        del ids, types
        if len(texts) > chunk_size:
            release_free_memory()
    return out


class TokenizerLock:
    """One lock per tokenizer object: a fast tokenizer's Rust state is not safe to change from two threads at once
    (transformers sets truncation on it per call), so callers that may run on several threads tokenise under it."""

    _locks: dict[int, threading.Lock] = {}
    _guard = threading.Lock()

    @classmethod
    def of(cls, tokenizer: Any) -> threading.Lock:
        with cls._guard:
            return cls._locks.setdefault(id(tokenizer), threading.Lock())


def write_sentence_transformer_modules(path: str | os.PathLike, hidden_size: int, pooling: str, normalize: bool,
                                       max_seq_length: int, prompts: dict[str, str] | None = None) -> None:
    """sentence-transformers' module files (`modules.json`, `sentence_bert_config.json`, `1_Pooling/`,
    `2_Normalize/`, and `config_sentence_transformers.json` with the named prompts) for a folder whose root holds the
    transformer and tokenizer."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        os.makedirs(os.path.join(path, "2_Normalize"), exist_ok=True)
    pooling_config = {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
    files = {
        "modules.json": modules,
        os.path.join("1_Pooling", "config.json"): pooling_config,
        "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
        "config_sentence_transformers.json": {"prompts": dict(prompts or {}), "default_prompt_name": None,
                                              "similarity_fn_name": "cosine"},
    }
    for name, content in files.items():
        with open(os.path.join(path, name), "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2)


__all__ = ["encode_texts", "pad_batch", "length_sorted_batches", "check_texts", "check_batch_size", "CHUNK_SIZE",
           "TokenizerLock", "write_sentence_transformer_modules"]
