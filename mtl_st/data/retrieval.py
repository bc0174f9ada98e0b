"""The retrieval task type, data side: pairs people hold (question-answer, query-document, paraphrases) for training,
and three layouts for evaluation.

Rows normalise to `text` (the anchor or query), `text_pair` (its positive, or a candidate), `negatives` (hard
negatives) and `label` (1 for a pair; a row's 0/1 label with `label_column`; -1 for a BEIR corpus document no query
points to). Columns default to `anchor`, `positive` and every column named `negative*` (`negative_columns` names
them); a missing or empty positive or negative is refused with the file, line and column.

- Training: the (anchor, positive[, negatives]) rows; with `label_column`, the label-1 rows are the positives.
- Evaluation, corpus retrieval: every query searches the split's whole corpus (for pairs: each anchor searches all
  positives of the split; for a BEIR folder, `format: beir`, its `corpus.jsonl`, `queries.jsonl` and
  `qrels/<split>.tsv`), scored with NDCG@10, MRR@10, MAP@100, recall@1 and @10.
- Evaluation, reranking (`label_column` without BEIR): each query's own labelled candidates are ranked, scored with
  MAP and MRR over the queries with a correct candidate (as TREC QA is scored).

Queries get the task's `prompts.query` and documents `prompts.document` in training and evaluation. Each evaluation
row is one text; its `labels` say what it is: `[0, query, relevant documents...]`, `[1, document]` (corpus), `[2,
query]`, `[3, candidate, its query, label]` (reranking). Metrics are computed from the rows' embeddings at every
Matryoshka width (`_dim<d>` suffixes).
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

import numpy as np
import torch
from datasets import Dataset, Features, List, Value
from transformers import DataCollatorWithPadding

from mtl_st.data.labels import label_to_float
from mtl_st.data.task_data import TaskData, register_task_data
from mtl_st.errors import DataError, suggest
from mtl_st.evaluation.retrieval import CORPUS_METRICS, RERANK_METRICS, corpus_metrics, rerank_metrics, top_k
from tasks_mtl import IGNORE_INDEX, embedding_dims

QUERY, DOCUMENT, RERANK_QUERY, CANDIDATE = 0, 1, 2, 3


class RetrievalData(TaskData):
    type_name = "retrieval"
    roles = {"text": "anchor", "text_pair": "positive", "label": "label"}
    features = Features({"text": Value("string"), "text_pair": Value("string"), "negatives": List(Value("string")),
                         "label": Value("float64")})

    # ------------------------------------------------------------------ reading
    def normalise_row(self, task, row: dict[str, Any], where: str) -> dict[str, Any]:
        values = {}
        for role in ("text", "text_pair"):
            column = task.column_for(role, self.roles[role])
            if column not in row:
                raise DataError(f"task {task.name!r}: column {column!r} not found in {where}; columns present: "
                                f"{sorted(row)}. Set `{role}_column` to the right column."
                                + suggest(column, [str(c) for c in row]))
            values[role] = self._nonempty(task, row[column], where, column)
        columns = task.negative_columns if task.negative_columns is not None else sorted(
            c for c in row if str(c).startswith("negative"))
        negatives = []
        for column in columns:
            if column not in row:
                raise DataError(f"task {task.name!r}: {where}: negative column {column!r} is missing.")
            negatives.append(self._nonempty(task, row[column], where, column))
        label = 1.0
        if task.label_column is not None:
            label = label_to_float(row.get(task.label_column), f"task {task.name!r}: {where}: column "
                                                               f"{task.label_column!r}")
        return {"text": values["text"], "text_pair": values["text_pair"], "negatives": negatives, "label": label}

    def _nonempty(self, task, value: Any, where: str, column: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"task {task.name!r}: {where}: column {column!r} must hold a non-empty text, got "
                            f"{value!r}.")
        return value

    def read_beir(self, task, folder: str, split: str) -> Dataset:
        """A BEIR folder's split: one row per (query, relevant document) and one per corpus document no query of the
        split points to (label -1), so the corpus is searched whole."""
        corpus = {doc_id: f"{doc.get('title', '')} {doc.get('text', '')}".strip()
                  for doc_id, doc in _jsonl(os.path.join(folder, "corpus.jsonl"), "_id")}
        queries = {query_id: query.get("text", "") for query_id, query in _jsonl(os.path.join(folder, "queries.jsonl"),
                                                                                  "_id")}
        names = [split, "dev"] if split == "validation" else [split]
        qrels = next((os.path.join(folder, "qrels", f"{n}.tsv") for n in names
                      if os.path.isfile(os.path.join(folder, "qrels", f"{n}.tsv"))), None)
        if qrels is None:
            raise DataError(f"task {task.name!r}: {folder}: no qrels/{split}.tsv for the {split} split.")
        rows, used = [], set()
        with open(qrels, encoding="utf-8-sig", newline="") as handle:
            for line_number, record in enumerate(csv.reader(handle, delimiter="\t"), start=1):
                if line_number == 1 and record[:1] == ["query-id"]:
                    continue
                if len(record) < 3 or record[0] not in queries or record[1] not in corpus:
                    raise DataError(f"{qrels}:{line_number}: expected `query-id, corpus-id, score` naming a query of "
                                    f"queries.jsonl and a document of corpus.jsonl, got {record!r}.")
                if float(record[2]) > 0:
                    rows.append({"text": queries[record[0]], "text_pair": corpus[record[1]], "negatives": [],
                                 "label": 1.0})
                    used.add(record[1])
        rows += [{"text": "", "text_pair": text, "negatives": [], "label": -1.0} for doc_id, text in corpus.items()
                 if doc_id not in used]
        return self.rows_to_dataset(task, rows)

    def infer_labels(self, task, train: Dataset) -> None:
        return None

    def split_labels(self, split: Dataset) -> list[list[str]]:
        return []

    # ------------------------------------------------------------------ tokenisation
    def tokenize(self, dataset: Dataset, task, tokenizer: Any, label2id: dict[str, int], max_length: int,
                 split: str = "train") -> Dataset:
        prompts = task.prompts or {}
        query, document = prompts.get("query", ""), prompts.get("document", "")
        encode = lambda texts: tokenizer(texts, truncation=True, max_length=max_length)  # noqa: E731
        if split == "train":
            rows = dataset.filter(lambda label: label > 0.5, input_columns="label") if task.label_column else dataset
            counts = {len(n) for n in rows["negatives"]}
            if len(counts) > 1:
                raise DataError(f"task {task.name!r}: every training row needs the same number of hard negatives "
                                f"(found {sorted(counts)}).")
            output = dict(encode([query + t for t in rows["text"]]))
            output.update({f"pair_{k}": v for k, v in encode([document + t for t in rows["text_pair"]]).items()})
            negatives = [n for row in rows["negatives"] for n in row]
            if negatives:
                flat = encode([document + t for t in negatives])
                per_row = len(rows["negatives"][0])
                for key, values in flat.items():
                    output[f"negative_{key}"] = [values[i * per_row : (i + 1) * per_row] for i in range(len(rows))]
            output["labels"] = [1.0] * len(rows)
            return Dataset.from_dict(output)
        return Dataset.from_dict(self._evaluation_rows(dataset, task, encode, query, document))

    def _evaluation_rows(self, dataset: Dataset, task, encode, query: str, document: str) -> dict[str, list]:
        texts, labels = [], []
        if task.label_column is not None and task.format != "beir":  # reranking: each query's own candidates
            owners: dict[str, int] = {}
            candidates = []
            for text, pair, label in zip(dataset["text"], dataset["text_pair"], dataset["label"]):
                owner = owners.setdefault(text, len(owners))
                candidates.append((pair, owner, int(label > 0.5)))
            texts += [query + text for text in owners]
            labels += [[RERANK_QUERY, index] for index in range(len(owners))]
            texts += [document + pair for pair, _, _ in candidates]
            labels += [[CANDIDATE, index, owner, label] for index, (_, owner, label) in enumerate(candidates)]
        else:  # corpus retrieval: every query searches every document of the split
            documents: dict[str, int] = {}
            relevant: dict[str, set[int]] = {}
            for text, pair, label in zip(dataset["text"], dataset["text_pair"], dataset["label"]):
                index = documents.setdefault(pair, len(documents))
                if text and label > 0.5:
                    relevant.setdefault(text, set()).add(index)
            texts += [query + text for text in relevant]
            labels += [[QUERY, q, *sorted(docs)] for q, docs in enumerate(relevant.values())]
            texts += [document + pair for pair in documents]
            labels += [[DOCUMENT, index] for index in range(len(documents))]
        output = dict(encode(texts))
        output["labels"] = labels
        return output

    def collate(self, features: list[dict[str, Any]], tokenizer: Any, pad_to_multiple_of: int | None) -> dict:
        pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
        inputs = ("input_ids", "attention_mask", "token_type_ids")
        batch = dict(pad([{k: f[k] for k in inputs if k in f} for f in features]))
        if "pair_input_ids" in features[0]:
            second = pad([{k: f[f"pair_{k}"] for k in inputs if f"pair_{k}" in f} for f in features])
            batch.update({f"pair_{k}": v for k, v in second.items()})
        if "negative_input_ids" in features[0]:
            per_row = len(features[0]["negative_input_ids"])
            # Column-major, as sentence-transformers lays out hard negatives: every row's first negative, then ...
            flat = [{k: f[f"negative_{k}"][j] for k in inputs if f"negative_{k}" in f}
                    for j in range(per_row) for f in features]
            batch.update({f"negative_{k}": v for k, v in pad(flat).items()})
        if "labels" in features[0]:
            labels = [f["labels"] if isinstance(f["labels"], list) else [f["labels"]] for f in features]
            width = max(len(row) for row in labels)
            padded = [row + [IGNORE_INDEX] * (width - len(row)) for row in labels]
            batch["labels"] = torch.tensor(padded, dtype=torch.float32 if width == 1 else torch.long)
            if width == 1:
                batch["labels"] = batch["labels"].reshape(-1)
        return batch

    # ------------------------------------------------------------------ metrics
    def metric_names(self, task) -> list[str]:
        """The keys this task reports (no `loss`: evaluation rows are single texts), for a `TaskDataArguments`."""
        names = RERANK_METRICS if task.label_column is not None and task.format != "beir" else CORPUS_METRICS
        dims = [d for d in (task.matryoshka_dims or [])]
        return [*names, *(f"{name}_dim{d}" for d in sorted(dims, reverse=True) for name in names)]

    def metrics(self, task: dict, predictions: np.ndarray, label_ids: np.ndarray) -> dict[str, float]:
        embeddings = np.asarray(predictions, dtype=np.float32)
        label_ids = np.asarray(label_ids)
        kinds = label_ids[:, 0]
        results = {}
        for width in embedding_dims(task, embeddings.shape[-1]):
            suffix = "" if width == embeddings.shape[-1] else f"_dim{width}"
            cut = embeddings[:, :width]
            scores = self._rerank(cut, label_ids, kinds) if (kinds == RERANK_QUERY).any() else self._search(
                cut, label_ids, kinds)
            results.update({f"{name}{suffix}": value for name, value in scores.items()})
        return results

    def _search(self, embeddings: np.ndarray, label_ids: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
        queries = label_ids[kinds == QUERY]
        documents = label_ids[kinds == DOCUMENT]
        corpus = np.empty((len(documents), embeddings.shape[1]), dtype=np.float32)
        corpus[documents[:, 1]] = embeddings[kinds == DOCUMENT]
        _, ranked = top_k(embeddings[kinds == QUERY], corpus)
        relevant = [{int(d) for d in row[2:] if d != IGNORE_INDEX} for row in queries]
        return corpus_metrics(ranked.tolist(), relevant)

    def _rerank(self, embeddings: np.ndarray, label_ids: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
        query_rows = label_ids[kinds == RERANK_QUERY]
        query_vectors = np.empty((len(query_rows), embeddings.shape[1]), dtype=np.float32)
        query_vectors[query_rows[:, 1]] = embeddings[kinds == RERANK_QUERY]
        query_vectors /= np.maximum(np.linalg.norm(query_vectors, axis=1, keepdims=True), 1e-12)
        scores: list[list[float]] = [[] for _ in query_rows]
        labels: list[list[int]] = [[] for _ in query_rows]
        candidate_rows = label_ids[kinds == CANDIDATE]
        vectors = embeddings[kinds == CANDIDATE]
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        for row in np.argsort(candidate_rows[:, 1], kind="stable"):  # candidates in file order within each query
            _, _, owner, label = candidate_rows[row][:4]
            scores[owner].append(float(vectors[row] @ query_vectors[owner]))
            labels[owner].append(int(label))
        return rerank_metrics(scores, labels)


def _jsonl(path: str, key: str):
    if not os.path.isfile(path):
        raise DataError(f"BEIR file not found: {path}.")
    with open(path, encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_number}: invalid JSON line ({error.msg}).") from None
            if key not in record:
                raise DataError(f"{path}:{line_number}: no {key!r} field.")
            yield str(record[key]), record


register_task_data(RetrievalData())

__all__ = ["RetrievalData", "QUERY", "DOCUMENT", "RERANK_QUERY", "CANDIDATE"]
