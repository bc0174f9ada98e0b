"""What striding costs and gains on long documents: CoNLL-2003 documents joined at -DOCSTART- into one row each.

    python bench/long_documents.py [../shared/data/conll2003/eng.testb] [--max_length 256] [--stride 32]
        [--train ../shared/data/conll2003/eng.train] [--steps 150] [--docs 0] [--threads 1] [--repeats 1] [--no-f1]

Coverage (no model): for truncation to `max_length` (one window) and for overlapping windows, the gold entities
that can be scored at all (an entity counts when all its words are labelled positions), the windows made and the
tokenization time. The coverage bounds recall (a truncating run cannot recall an entity it never scores).

Entity F1 (unless `--no-f1`): all-MiniLM-L6-v2 with a NER head trained briefly (`--steps` AdamW steps of 16
CoNLL-2003 train sentences, every sub-token labelled), then the `multitask` pipeline on each test document as one
text (its words joined by spaces): with windows sharing `--stride` tokens, and truncating (the same pipeline with
windows turned off: the first `max_length` tokens only, as before striding). An entity is right when its type and
its character span in the document match a gold entity exactly. Also reported: the F1 over the gold entities inside
the first window only (both ways read that part), and the pipeline's wall time both ways (same batches; with
`--repeats 2` the runs alternate and the best counts). `--docs N` evaluates the first N documents only.
`--threads` sets torch's CPU threads (1 by default: on a CPU shared with other jobs, 2 threads that wait on each
other ran 3-8x slower than one).
"""

from __future__ import annotations

import argparse
import logging
import random
import time

import common
import torch
from datasets import Dataset
from seqeval.metrics.sequence_labeling import get_entities

from modeling_mtl import MultiTaskModel
from mtl_st.data.arguments import TaskDataArguments
from mtl_st.data.readers import convert_iob1_to_bio
from mtl_st.data.splits import tokenize_task
from mtl_st.data.task_data import get_task_data
from pipeline_mtl import MultiTaskPipeline

CONLL = common.SHARED_DATA / "conll2003"


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


class TruncatingPipeline(MultiTaskPipeline):
    """The `multitask` pipeline with windows turned off: a long text is read up to `max_length` tokens only."""

    def _windows(self, text: str, stride: int, input_names: list[str]) -> None:
        return None


def train_ner(train_path: str, steps: int, max_length: int, seed: int = 0) -> MultiTaskModel:
    """all-MiniLM-L6-v2 with a fresh NER head, `steps` AdamW steps (lr 1e-4, batch 16) on shuffled train sentences
    (at most 128 tokens each), every sub-token labelled (so that the pipeline's words, which split "U.S." into
    four, continue their entity)."""
    (ner,) = common.task_entries(["ner"])  # configs/conll_tweeteval.yaml's NER task, on `train_path` only
    task = {**ner, "data_files": {"train": train_path}, "label_all_tokens": True, "validation_split_fraction": 0,
            "test_split_fraction": 0}
    prepared = specs, labels, splits = common.prepare([task])
    model = common.new_model(common.model_tasks(prepared), seed, max_seq_length=max_length)
    tokenizer = common.load_tokenizer()
    order = list(range(len(splits["ner"]["train"])))
    random.Random(seed).shuffle(order)
    batch_size = 16
    splits["ner"]["train"] = splits["ner"]["train"].select(order)
    tokenized = common.tokenize((specs, labels, splits), tokenizer, 128, {"train": steps * batch_size})["train"]["ner"]
    data = get_task_data("token_classification")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 30)
                                                 * max(0.0, 1 - step / steps))
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        features = [tokenized[i] for i in range(step * batch_size, min((step + 1) * batch_size, len(tokenized)))]
        if not features:
            break
        batch = data.collate(features, tokenizer, None)
        loss = model(**batch, task="ner").loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 50 == 0 or step == steps - 1:
            print(f"  step {step + 1}/{steps}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)")
    model.eval()
    model.tokenizer = tokenizer
    return model


def char_entities(tokens: list[str], tags: list[str]) -> tuple[str, set[tuple[str, int, int]]]:
    """A document's text (its words joined by spaces) and its gold entities as `(type, start, end)` characters."""
    starts, position = [], 0
    for token in tokens:
        starts.append(position)
        position += len(token) + 1
    text = " ".join(tokens)
    return text, {(kind, starts[s], starts[e] + len(tokens[e])) for kind, s, e in get_entities(tags)}


def scores(predicted: list[set], gold: list[set]) -> tuple[float, float, float]:
    """Micro precision, recall and F1 of exact `(type, start, end)` matches."""
    hits = sum(len(p & g) for p, g in zip(predicted, gold))
    n_pred, n_gold = sum(map(len, predicted)), sum(map(len, gold))
    precision, recall = hits / max(n_pred, 1), hits / max(n_gold, 1)
    return precision, recall, 2 * precision * recall / max(precision + recall, 1e-12)


def entity_f1(docs: list[dict], args: argparse.Namespace) -> None:
    """Train the NER head, run both pipelines over the documents, print F1 and time."""
    print(f"training a NER head on {args.steps * 16:,} CoNLL-2003 train sentences ({args.steps} steps, "
          f"{torch.get_num_threads()} threads) ...")
    start = time.perf_counter()
    model = train_ner(args.train, args.steps, args.max_length)
    print(f"  trained in {time.perf_counter() - start:.0f} s")
    texts, gold = zip(*(char_entities(d["tokens"], d["tags"]) for d in docs))
    # Where the first window ends in each text: the entities there are read both ways.
    limits = []
    for text in texts:
        encoded = model.tokenizer(text, truncation=True, max_length=args.max_length, return_offsets_mapping=True)
        limits.append(max(end for _, end in encoded["offset_mapping"]))
    logging.getLogger("pipeline_mtl").setLevel(logging.ERROR)  # the one "longer than" warning per call
    runs = {"truncate": TruncatingPipeline(model=model, tokenizer=model.tokenizer),
            f"stride {args.stride}": MultiTaskPipeline(model=model, tokenizer=model.tokenizer, stride=args.stride)}
    seconds = {name: [] for name in runs}
    answers = {}
    for _ in range(args.repeats):  # alternated, the best counts: the CPU is shared
        for name, pipe in runs.items():
            start = time.perf_counter()
            answers[name] = pipe(list(texts), batch_size=args.batch_size)
            seconds[name].append(time.perf_counter() - start)
    truncate_seconds = min(seconds["truncate"])
    print(f"entity F1 on {len(docs)} documents ({sum(map(len, gold)):,} gold entities), exact type and span; "
          f"{sum(len(g) for g in gold) - sum(sum(e[2] <= m for e in g) for g, m in zip(gold, limits)):,} "
          f"gold entities lie past the first window:")
    for name, answer in answers.items():
        predicted = [{(e["entity_group"], e["start"], e["end"]) for e in a["ner"]} for a in answer]
        precision, recall, f1 = scores(predicted, gold)
        inside = scores([{e for e in p if e[2] <= m} for p, m in zip(predicted, limits)],
                        [{e for e in g if e[2] <= m} for g, m in zip(gold, limits)])[2]
        best = min(seconds[name])
        print(f"  {name}: precision {precision:.3f}, recall {recall:.3f}, F1 {f1:.3f} (first window only: F1 "
              f"{inside:.3f}); pipeline {best:.1f} s ({best / truncate_seconds:.2f}x truncation; runs "
              f"{', '.join(f'{s:.1f}' for s in seconds[name])} s)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path", nargs="?", default=str(CONLL / "eng.testb"))
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--train", default=str(CONLL / "eng.train"))
    parser.add_argument("--steps", type=int, default=150, help="NER head training steps (batch 16)")
    parser.add_argument("--docs", type=int, default=0, help="evaluate the first N documents only (0: all)")
    parser.add_argument("--batch_size", type=int, default=8, help="pipeline batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=1, help="timed pipeline runs each way (best counts)")
    parser.add_argument("--no-f1", dest="f1", action="store_false", help="coverage only: no model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    docs = documents(args.path)
    if args.docs:
        docs = docs[: args.docs]
    tokenizer = common.load_tokenizer()
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
    labels = get_task_data("token_classification").infer_labels(task, dataset)  # O, then B-/I- of each type seen
    windows = tokenize_task(dataset, task, tokenizer, {label: i for i, label in enumerate(labels)}, args.max_length)
    stride_seconds = time.perf_counter() - start
    scored = sum(sum(label != -100 for label in row) for row in windows["labels"])
    words = sum(len(d["tokens"]) for d in docs)
    tokens = sum(len(ids) for ids in windows["input_ids"])
    print(f"stride {args.stride}: {len(windows)} windows ({tokens:,} tokens through the encoder vs "
          f"{sum(len(ids) for ids in truncated['input_ids']):,} truncated), {scored:,} of {words:,} words scored, "
          f"so {gold:,} of {gold:,} gold entities scorable; tokenization {stride_seconds:.2f} s")
    if args.f1:
        entity_f1(docs, args)


if __name__ == "__main__":
    main()
