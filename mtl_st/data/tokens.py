"""The token classification type, data side: CoNLL words and BIO tags, labels aligned to sub-tokens, long rows cut
into overlapping windows, entity-level metrics (seqeval)."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np
from datasets import Dataset, Features, List, Value
from transformers import DataCollatorForTokenClassification

from mtl_st.data.labels import b_to_i_ids, label_id, label_to_str
from mtl_st.data.task_data import TaskData, register_task_data
from mtl_st.data.windows import window_stride
from mtl_st.errors import DataError, suggest
from postprocess_mtl import home_windows, token_windows, window_ids
from tasks_mtl import IGNORE_INDEX, is_bio_tag

logger = logging.getLogger(__name__)


class TokenClassificationData(TaskData):
    """Words and BIO tags. The first sub-token of a word carries its label; later ones -100 (or, with
    `label_all_tokens`, the word's label with `B-` turned into `I-`); special tokens -100."""

    type_name = "token_classification"
    roles = {"text": "tokens", "label": "tags"}
    features = Features({"tokens": List(Value("string")), "tags": List(Value("string")), "where": Value("string")})
    reads_conll = True

    def normalise_row(self, task, row: dict[str, Any], where: str) -> dict[str, Any]:
        text_column, label_column = task.column_for("text", "tokens"), task.column_for("label", "tags")
        for column, role in ((text_column, "text"), (label_column, "label")):
            if column not in row:
                raise DataError(
                    f"task {task.name!r}: column {column!r} not found in {where}; columns present: {sorted(row)}. "
                    f"Set `{role}_column` to the right column." + suggest(column, [str(c) for c in row])
                )
        words, tags = row[text_column], row[label_column]
        if not isinstance(words, (list, tuple)) or not all(isinstance(word, str) for word in words):
            raise DataError(f"task {task.name!r}: {where}: column {text_column!r} must hold a list of strings, "
                            f"got {words!r}.")
        if not isinstance(tags, (list, tuple)):
            raise DataError(f"task {task.name!r}: {where}: column {label_column!r} must hold a list of tags, "
                            f"got {tags!r}.")
        if len(words) != len(tags):
            raise DataError(f"task {task.name!r}: {where}: {len(words)} tokens in {text_column!r} but {len(tags)} "
                            f"tags in {label_column!r}.")
        normalised = []
        for tag in tags:
            if isinstance(tag, (int, np.integer)) and not isinstance(tag, bool) and task.labels is None:
                raise DataError(f"task {task.name!r}: {where}: integer tag {tag} in column {label_column!r}; give "
                                "the tag names in the task's `labels` to map ids to tags.")
            tag = label_to_str(tag, task.labels, f"task {task.name!r}: {where}: column {label_column!r}")
            if not is_bio_tag(tag):
                raise DataError(f"task {task.name!r}: {where}: tag {tag!r} is not O, B-TYPE or I-TYPE.")
            normalised.append(tag)
        return {"tokens": list(words), "tags": normalised, "where": where}

    def infer_labels(self, task, train: Dataset) -> list[str]:
        """`O` first, then every entity type seen, sorted, as `B-TYPE`, `I-TYPE` (both, even if one never occurs)."""
        types = set()
        for tags in train["tags"]:
            types.update(tag[2:] for tag in tags if tag != "O")
        return ["O"] + [f"{prefix}-{entity_type}" for entity_type in sorted(types) for prefix in ("B", "I")]

    def split_labels(self, split: Dataset) -> list[list[str]]:
        return list(split["tags"])

    def item_counts(self, labels: list) -> list[int]:
        return [sum(label != IGNORE_INDEX for label in row) for row in labels]

    def tokenize(self, dataset: Dataset, task, tokenizer: Any, label2id: dict[str, int], max_length: int,
                 split: str = "train") -> Dataset:
        if not getattr(tokenizer, "is_fast", False):
            raise DataError(
                f"task {task.name!r}: token_classification needs a fast tokenizer (with word_ids()); "
                f"{type(tokenizer).__name__} is not fast. Load it with "
                "AutoTokenizer.from_pretrained(..., use_fast=True)."
            )
        b_to_i = b_to_i_ids(label2id)
        stride = window_stride(task, tokenizer, max_length)
        specials = tokenizer("", add_special_tokens=True)["input_ids"]  # e.g. [CLS] [SEP]: wrapped around each window
        if len(specials) != 2:
            raise DataError(f"task {task.name!r}: token windows need a tokenizer that adds one special token before "
                            f"and after a text; {type(tokenizer).__name__} adds {len(specials)}.")

        def tokenize(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            # The whole row (verbose=False: no "indexing errors" warning), then windows of at most max_length.
            full = tokenizer(batch["tokens"], is_split_into_words=True, add_special_tokens=False, verbose=False)
            output: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "row": []}
            with_types = "token_type_ids" in tokenizer.model_input_names
            if with_types:
                output["token_type_ids"] = []
            for i, (ids, tags) in enumerate(zip(full["input_ids"], batch["tags"])):
                word_ids = full.word_ids(i)
                where = batch["where"][i] if batch.get("where") else None
                check_every_entity_word_scored(task, batch["tokens"][i], tags, word_ids, where or f"row {indices[i]}")
                word_label_ids = [label_id(tag, label2id, task) for tag in tags]
                windows = token_windows(len(ids), max_length - 2, stride)
                home = home_windows(len(ids), windows)
                for w, (start, end) in enumerate(windows):
                    label_ids = [IGNORE_INDEX]
                    for p in range(start, end):
                        word = word_ids[p]
                        first = p == 0 or word_ids[p - 1] != word
                        if home[p] != w or word is None or (not first and not task.label_all_tokens):
                            label_ids.append(IGNORE_INDEX)
                        else:
                            label_ids.append(word_label_ids[word] if first else b_to_i[word_label_ids[word]])
                    window = window_ids(ids, specials, start, end)
                    label_ids.append(IGNORE_INDEX)
                    output["input_ids"].append(window)
                    output["attention_mask"].append([1] * len(window))
                    if with_types:
                        output["token_type_ids"].append([0] * len(window))
                    output["labels"].append(label_ids)
                    output["row"].append(indices[i])
            return output

        tokenized = dataset.map(tokenize, batched=True, with_indices=True, remove_columns=dataset.column_names,
                                desc=f"Tokenizing {task.name}")
        if "row" not in tokenized.column_names:
            return tokenized  # an empty split maps to no columns at all
        rows_split = sum(count > 1 for count in Counter(tokenized["row"]).values())
        if not rows_split:
            return tokenized.remove_columns("row")  # one window per row: nothing to put back together
        logger.warning(f"task {task.name!r}: {rows_split} of {len(dataset)} rows are longer than {max_length} "
                       f"tokens: each is split into overlapping windows (stride {stride}) and scored in full.")
        return tokenized

    def collate(self, features: list[dict[str, Any]], tokenizer: Any, pad_to_multiple_of: int | None) -> dict:
        features = [{key: value for key, value in feature.items() if key != "row"} for feature in features]
        if "labels" not in features[0]:
            return super().collate(features, tokenizer, pad_to_multiple_of)
        # Pads `labels` with -100 to the padded length, on the tokenizer's padding side.
        collator = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
        return dict(collator(features))

    def metrics(self, task: dict, predictions: np.ndarray, label_ids: np.ndarray) -> dict[str, float]:
        from seqeval.metrics import f1_score, precision_score, recall_score

        y_pred, y_true = self.decode(task, predictions, label_ids)
        return {
            "precision": float(precision_score(y_true, y_pred, zero_division=0)),
            "recall": float(recall_score(y_true, y_pred, zero_division=0)),
            "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        }

    def decode(self, task: dict, predictions: np.ndarray, label_ids: np.ndarray) -> tuple[list, list]:
        """Per sentence, the tag names of the scored positions: `(predicted, gold)` lists of lists of str."""
        labels = task["labels"]
        predicted = np.asarray(predictions).argmax(-1)
        y_pred, y_true = [], []
        for pred_row, label_row in zip(predicted, label_ids):
            keep = label_row != IGNORE_INDEX
            y_true.append([labels[i] for i in label_row[keep]])
            y_pred.append([labels[i] for i in pred_row[keep]])
        return y_pred, y_true


def check_every_entity_word_scored(task, words: list[str], tags: list[str], word_ids: list, where: str) -> None:
    """A word the tokenizer turns into no token (a zero-width space, an empty string) cannot carry its label: inside
    an entity, that entity would silently leave the labels and the metrics (inflating recall). Name it instead."""
    seen = {word for word in word_ids if word is not None}
    for position, (word, tag) in enumerate(zip(words, tags)):
        if position not in seen and tag != "O":
            raise DataError(f"task {task.name!r}: {where}: word {position} ({word!r}, tag {tag}) gives no token with "
                            "this tokenizer, so its entity could not be scored; remove the word or replace it.")


register_task_data(TokenClassificationData())

__all__ = ["TokenClassificationData", "check_every_entity_word_scored"]
