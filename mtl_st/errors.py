"""The one exception class for bad user input (data or configuration), and its spelling hint.

`train.py` turns a `DataError`, and only it, into one `error:` line and exit status 2; every other exception is a
bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class DataError(ValueError):
    """Bad training data or configuration; the message names the task, file, line, column, field or label at fault."""


class TrainingDiverged(DataError):
    """The training loss became NaN or infinite: the run stops before a broken checkpoint is written (in a search,
    the trial fails and the search goes on)."""


def suggest(word: str, candidates: Sequence[str]) -> str:
    """` Did you mean 'x'?` (or an empty string) for a misspelt `word`."""
    matches = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"


__all__ = ["DataError", "TrainingDiverged", "suggest"]
