"""What striding costs and gains on long documents: CoNLL-2003 documents joined at -DOCSTART- into one row each.

    python bench/long_documents.py [../shared/data/conll2003/eng.testb] [--max_length 256] [--stride 32]

Reports, for truncation to `max_length` (one window) and for overlapping windows, the gold entities that can be
scored at all (an entity counts when all its words are labelled positions), the windows made and the tokenization
time. Needs no model: the coverage bounds recall (a truncating run cannot recall an entity it never scores).
"""

from __future__ import annotations

import argparse
import time

from datasets import Dataset
from seqeval.metrics.sequence_labeling import get_entities
from transformers import AutoTokenizer

from data_mtl import TaskDataArguments, tokenize_task
from modeling_mtl import resolve_checkpoint
from readers_mtl import convert_iob1_to_bio


def documents(path: str) -> list[dict[str, list[str]]]:
    """One row per -DOCSTART- document (its sentences joined), IOB1 tags converted to BIO per sentence."""
    docs, tokens, tags, sentence = [], [], [], []

    def end_sentence() -> None:
        if sentence:
            tokens.extend(w for w, _ in sentence)
            tags.extend(convert_iob1_to_bio([t for _, t in sentence]))
            sentence.clear()

    with open(path, encoding="utf-8-sig") as handle:
        for line in handle:
            columns = line.split()
            if not columns:
                end_sentence()
            elif columns[0] == "-DOCSTART-":
                end_sentence()
                if tokens:
                    docs.append({"tokens": tokens, "tags": tags})
                tokens, tags = [], []
            else:
                sentence.append((columns[0], columns[-1]))
    end_sentence()
    if tokens:
        docs.append({"tokens": tokens, "tags": tags})
    return docs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path", nargs="?", default="../shared/data/conll2003/eng.testb")
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--stride", type=int, default=32)
    args = parser.parse_args()
    docs = documents(args.path)
    labels = ["O"] + [f"{p}-{t}" for t in ("LOC", "MISC", "ORG", "PER") for p in ("B", "I")]
    label2id = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint("sentence-transformers/all-MiniLM-L6-v2"))
    dataset = Dataset.from_dict({"tokens": [d["tokens"] for d in docs], "tags": [d["tags"] for d in docs]})
    gold = sum(len(get_entities(d["tags"])) for d in docs)
    lengths = [len(ids) for ids in tokenizer([d["tokens"] for d in docs], is_split_into_words=True,
                                             verbose=False)["input_ids"]]
    print(f"{len(docs)} documents, {sum(len(d['tokens']) for d in docs):,} words, {gold:,} gold entities; "
          f"sub-tokens per document: median {sorted(lengths)[len(lengths) // 2]}, max {max(lengths)}; "
          f"{sum(n > args.max_length for n in lengths)} longer than {args.max_length}")

    start = time.perf_counter()
    truncated = tokenizer([d["tokens"] for d in docs], is_split_into_words=True, truncation=True,
                          max_length=args.max_length)
    truncate_seconds = time.perf_counter() - start
    covered = 0
    for i, doc in enumerate(docs):
        kept_words = {w for w in truncated.word_ids(i) if w is not None}
        covered += sum(1 for _, s, e in get_entities(doc["tags"]) if all(w in kept_words for w in range(s, e + 1)))
    print(f"truncate: {len(docs)} windows, {covered:,} of {gold:,} gold entities scorable "
          f"({covered / gold:.1%}), tokenization {truncate_seconds:.2f} s")

    task = TaskDataArguments(name="ner", type="token_classification", data_files={"train": "x"}, stride=args.stride)
    start = time.perf_counter()
    windows = tokenize_task(dataset, task, tokenizer, label2id, args.max_length)
    stride_seconds = time.perf_counter() - start
    scored = sum(sum(label != -100 for label in row) for row in windows["labels"])
    words = sum(len(d["tokens"]) for d in docs)
    tokens = sum(len(ids) for ids in windows["input_ids"])
    print(f"stride {args.stride}: {len(windows)} windows ({tokens:,} tokens through the encoder vs "
          f"{sum(len(ids) for ids in truncated['input_ids']):,} truncated), {scored:,} of {words:,} words scored, "
          f"so {gold:,} of {gold:,} gold entities scorable; tokenization {stride_seconds:.2f} s")


if __name__ == "__main__":
    main()
