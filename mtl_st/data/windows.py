"""Long rows: the windows of token-task rows (stride, putting windows back together for metrics) and the one
warning that counts the sequence-level rows truncation cut.

The windows themselves are cut by `postprocess_mtl` (`token_windows`, `home_windows`, `window_ids`), the same helpers
the pipeline uses, so a word is scored in the same window at training and at inference.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from datasets import Dataset

from mtl_st.errors import DataError
from postprocess_mtl import default_stride
from tasks_mtl import IGNORE_INDEX

logger = logging.getLogger(__name__)


def warn_truncated(data: Any, dataset: Dataset, tokenized: Dataset, task, tokenizer: Any,
                   max_length: int) -> None:
    """One warning with the number of rows that truncation to `max_length` tokens cut (sequence-level tasks)."""
    cut = 0
    for start in range(0, len(dataset), 1000):
        batch = dataset[start : start + 1000]
        full = data.encode_texts(batch, tokenizer, 10**9)  # truncation on, but no limit that bites: no warning
        kept = tokenized[start : start + 1000]
        for key in ("input_ids", "pair_input_ids"):
            if key in full:
                cut += sum(len(a) > len(b) for a, b in zip(full[key], kept[key]))
    if cut:
        logger.warning(f"task {task.name!r}: {cut} of {len(dataset)} rows are longer than {max_length} tokens and "
                       "were truncated (sequence-level tasks read one window).")


def window_stride(task, tokenizer: Any, max_length: int) -> int:
    """The task's `stride` (tokens shared by consecutive windows), at most half a window; `DataError` if too big."""
    room = max_length - 2  # one special token before and one after the window
    stride = getattr(task, "stride", None)
    if stride is None:
        return default_stride(max_length)
    if not 0 <= stride < room:
        raise DataError(f"task {task.name!r}: `stride` must be in [0, {room}) for windows of {max_length} tokens "
                        f"({room} without special tokens), got {stride}.")
    return stride


def merge_windows(predictions: np.ndarray, label_ids: np.ndarray, rows: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Put the windows of each original row back side by side (`rows[i]`: window i's row, windows in order), so that
    metrics count every row once with every scored token; labels pad with -100."""
    groups: dict[int, list[int]] = {}
    for window, row in enumerate(rows):
        groups.setdefault(row, []).append(window)
    width = max(sum(label_ids.shape[1] for _ in windows) for windows in groups.values())
    merged_labels = np.full((len(groups), width), IGNORE_INDEX, dtype=label_ids.dtype)
    merged_predictions = np.zeros((len(groups), width, predictions.shape[-1]), dtype=predictions.dtype)
    for i, windows in enumerate(groups.values()):
        merged_labels[i] = np.concatenate([label_ids[w] for w in windows] + [
            np.full(width - label_ids.shape[1] * len(windows), IGNORE_INDEX, dtype=label_ids.dtype)])
        merged_predictions[i, : label_ids.shape[1] * len(windows)] = np.concatenate([predictions[w] for w in windows])
    return merged_predictions, merged_labels


def window_rows(dataset) -> list[int] | None:
    """The original row of each window of a token task's dataset when some row has several windows, else None."""
    if "row" not in getattr(dataset, "column_names", ()):
        return None
    rows = dataset["row"]
    return list(rows) if len(set(rows)) < len(rows) else None


__all__ = ["warn_truncated", "window_stride", "merge_windows", "window_rows"]
