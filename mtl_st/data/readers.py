"""Readers of training data files: CoNLL column files, JSON / JSON lines and CSV / TSV.

Every reader names the file and line of a bad row in a `DataError` (`mtl_st.errors`). Files are UTF-8; a leading
byte-order mark is dropped.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

from mtl_st.errors import DataError
from tasks_mtl import is_bio_tag

TAG_SCHEMES = ("bio", "iob1")


def convert_iob1_to_bio(tags: Sequence[str]) -> list[str]:
    """Converts one sentence's IOB1 tags to BIO (IOB2).

    An `I-X` becomes `B-X` when it starts the sentence or follows `O` or a tag of another type; `B-X` (used by
    IOB1 only between two adjacent entities of the same type) and `O` stay as they are.
    """
    bio = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-"):
            previous = tags[i - 1] if i > 0 else "O"
            if previous == "O" or previous[2:] != tag[2:]:
                tag = "B-" + tag[2:]
        bio.append(tag)
    return bio


def read_text(path: str) -> str:
    """The whole UTF-8 file (a leading BOM dropped); a `DataError` naming the file and byte offset otherwise."""
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise _encoding_error(path, raw, error.start) from None


def _decoded_lines(handle, path: str):
    """The lines of a text file opened as UTF-8, with a decoding error turned into a `DataError` naming the line."""
    try:
        yield from handle
    except UnicodeDecodeError:
        with open(path, "rb") as raw_handle:
            raw = raw_handle.read()
        try:
            raw.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise _encoding_error(path, raw, error.start) from None
        raise


def _encoding_error(path: str, raw: bytes, offset: int) -> DataError:
    line = raw.count(b"\n", 0, offset) + 1
    return DataError(
        f"{path}:{line}: not UTF-8 (byte 0x{raw[offset]:02x} at offset {offset}). Convert the file, e.g. "
        f"`iconv -f latin1 -t utf-8 {os.path.basename(path)} > converted`."
    )


def _check_file(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"Data file not found: {path!r}.")
    return path


def read_conll(path: str | os.PathLike, tag_scheme: str = "bio") -> list[dict[str, list[str]]]:
    """Reads a CoNLL-style column file into `[{"tokens": [...], "tags": [...]}, ...]`.

    One token per line, the word in the first column and the tag in the last; columns are separated by tabs when
    the line has a tab (WNUT-17) and by whitespace otherwise (CoNLL-2003: `word POS chunk NER`). Any
    whitespace-only line (also a lone TAB) ends a sentence; `-DOCSTART-` lines are skipped. The file is UTF-8.
    With `tag_scheme="iob1"` each sentence's tags are converted to BIO. Sentences without tokens are not emitted.

    Raises:
        DataError: missing file, a line without a tag, or a tag that is not `O`, `B-X` or `I-X` (the message
            gives `path:line_number`).
    """
    if tag_scheme not in TAG_SCHEMES:
        raise DataError(f"Unknown tag_scheme {tag_scheme!r}; valid schemes are {list(TAG_SCHEMES)}.")
    path = _check_file(path)
    sentences: list[dict[str, Any]] = []
    tokens: list[str] = []
    tags: list[str] = []
    first_line = 0

    def end_sentence() -> None:
        nonlocal tokens, tags
        if tokens:
            sentences.append({"tokens": tokens, "tags": convert_iob1_to_bio(tags) if tag_scheme == "iob1" else tags,
                              "where": f"{path}:{first_line}"})
        tokens, tags = [], []

    with open(path, encoding="utf-8-sig") as f:
        for line_number, raw_line in enumerate(_decoded_lines(f, path), start=1):
            line = raw_line.rstrip("\r\n")
            if not line.strip():
                end_sentence()
                continue
            columns = [c.strip() for c in line.split("\t")] if "\t" in line else line.split()
            if columns[0] == "-DOCSTART-":
                end_sentence()
                continue
            if len(columns) < 2 or not columns[0] or not columns[-1]:
                raise DataError(f"{path}:{line_number}: expected a word and a tag in separate columns, got {line!r}.")
            if "\t" in line and any(character.isspace() for character in columns[0]):
                raise DataError(f"{path}:{line_number}: the word column {columns[0]!r} holds a space; the tokenizer "
                                "would split it into words that share one tag. Put one word per line.")
            tag = columns[-1]
            if not is_bio_tag(tag):
                raise DataError(f"{path}:{line_number}: tag {tag!r} is not O, B-TYPE or I-TYPE (line {line!r}).")
            if not tokens:
                first_line = line_number
            tokens.append(columns[0])
            tags.append(tag)
    end_sentence()
    return sentences


def read_json_rows(path: str, fmt: str) -> list[tuple[str, dict[str, Any]]]:
    """Reads JSON lines, or a JSON array of objects, as `(location, row)` pairs (`path:line` or `path[item]`)."""
    path = _check_file(path)
    content = read_text(path)
    if fmt == "json" and content.lstrip().startswith("["):
        try:
            data = json.loads(content)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}.") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON array of objects or JSON lines, got a {type(data).__name__}.")
        rows = [(f"{path}[{i}]", row) for i, row in enumerate(data)]
    else:
        rows = []
        for line_number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{line_number}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{line_number}: invalid JSON line ({e.msg}); expected one JSON object per line "
                    "or a JSON array of objects."
                ) from None
    for where, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}: {row!r}.")
    return rows


def read_csv_rows(path: str, fmt: str, column_names: Sequence[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Reads a CSV/TSV file as `(path:line, row)` pairs: the first row is the header, unless `column_names` names
    the columns of a file without one (e.g. the STS Benchmark's `sentence1,sentence2,score`)."""
    path = _check_file(path)
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, fieldnames=list(column_names) if column_names else None,
                                delimiter="\t" if fmt == "tsv" else ",")
        if reader.fieldnames is None:
            raise DataError(f"{path}: empty {fmt} file (a header row is required, or give the task `column_names`).")
        n_columns = len(reader.fieldnames)
        for row in reader:
            if column_names and reader.line_num == 1 and [str(v).strip() for v in row.values()] == list(column_names):
                raise DataError(f"{path}:1: the file has a header row ({', '.join(column_names)}), so it would be "
                                "read as data: leave `column_names` out (they are for files without a header).")
            if None in row:
                raise DataError(f"{path}:{reader.line_num}: more fields than the {n_columns} header columns.")
            if any(value is None for value in row.values()):
                raise DataError(f"{path}:{reader.line_num}: fewer fields than the {n_columns} header columns.")
            rows.append((f"{path}:{reader.line_num}", row))
    return rows


__all__ = ["read_conll", "read_json_rows", "read_csv_rows", "read_text", "convert_iob1_to_bio", "TAG_SCHEMES"]
