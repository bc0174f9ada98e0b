"""Label values as rows hold them: names (strings), indices into a label list, numbers; and label ids.

Each helper names the file, line, column or task of a bad value in a `DataError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mtl_st.errors import DataError

FLOAT32_MAX = float(np.finfo(np.float32).max)


def label_to_str(value: Any, labels: list[str] | None, where: str) -> str:
    """A label value as a string; integers index into `labels` when a label list is given, unless every label is
    itself an integer (`labels: [1, 2, 3]`): then an integer is the label's name."""
    if value is None:
        raise DataError(f"{where}: missing label (null).")
    if isinstance(value, str) and not value.strip():
        raise DataError(f"{where}: missing label (an empty field).")
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        raise DataError(f"{where}: missing label ({value!r} is not a label).")
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)) and labels is not None and all(_is_integer(label) for label in labels):
        # `labels: [1, 2, 3]`: integers in the data are these names, not indices into the list.
        if str(int(value)) not in labels:
            raise DataError(f"{where}: label {value} is not one of the `labels` {labels}.")
        return str(int(value))
    if isinstance(value, (int, np.integer)) and labels is not None:
        if not 0 <= value < len(labels):
            raise DataError(f"{where}: integer label {value} is out of range for the {len(labels)} `labels` {labels}.")
        return labels[value]
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return str(value)
    raise DataError(f"{where}: a label must be a string or a number, got {type(value).__name__} {value!r}.")


def _is_integer(label: str) -> bool:
    return label.lstrip("-").isdigit()


def label_to_float(value: Any, where: str) -> float:
    """A numeric label (a number, or a string holding one); `DataError` naming `where` otherwise."""
    if isinstance(value, bool) or value is None:
        raise DataError(f"{where}: expected a number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: expected a number, got {value!r}.") from None
    if not np.isfinite(number):
        raise DataError(f"{where}: expected a finite number, got {value!r}.")
    if abs(number) > FLOAT32_MAX:
        raise DataError(f"{where}: {value!r} is beyond the range of float32 (about ±3.4e38), in which the model "
                        "trains; rescale the labels.")
    return number


def label_id(label: str, label2id: dict[str, int], task) -> int:
    try:
        return label2id[label]
    except KeyError:
        raise DataError(f"task {task.name!r}: label {label!r} is not in label2id {sorted(label2id)}.") from None


def b_to_i_ids(label2id: dict[str, int]) -> dict[int, int]:
    """Maps each label id to the id of its `I-` version (itself when it is not a `B-` label or has no `I-`)."""
    mapping = {}
    for label, index in label2id.items():
        inside = "I-" + label[2:] if label.startswith("B-") else label
        mapping[index] = label2id.get(inside, index)
    return mapping


def sort_key(labels: list[str]):
    if all(label.lstrip("-").isdigit() for label in labels):
        return lambda label: (int(label), label)
    return lambda label: label


__all__ = ["label_to_str", "label_to_float", "label_id", "b_to_i_ids", "sort_key"]
