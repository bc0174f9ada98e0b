"""Quality and training speed, side by side: the multi-task model against two plain single-task HF fine-tunes.

    python bench/quality.py --seeds 1 2 3 --train-rows 1000 --test-rows 1000 --epochs 2

For every seed, in one process and on the same tokenized data:
- `mtl`: one MultiTaskModel (all-MiniLM-L6-v2) trained on CoNLL-2003 NER and TweetEval sentiment together with
  MultiTaskTrainer (proportional sampling, head rate = encoder rate, no layer-wise decay);
- `hf-ner`: AutoModelForTokenClassification + Trainer on the NER rows only;
- `hf-sentiment`: AutoModelForSequenceClassification + Trainer on the sentiment rows only.
Same encoder checkpoint, rows, epochs, batch size and learning rate; each model is seeded before its head is
built. Test metrics use the same offline code (seqeval entity F1; accuracy, macro-F1). Training speed compares
samples/s of the multi-task run with the two plain runs together (their samples over their summed time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.utils import logging as hf_logging

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_mtl import MultiTaskDataset, TaskDataArguments, infer_labels, load_task_splits, take_first, tokenize_task  # noqa: E402
from modeling_mtl import MultiTaskModel, resolve_checkpoint  # noqa: E402
from trainer_mtl import MultiTaskTrainer, MultiTaskTrainingArguments, task_metrics  # noqa: E402

ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


def load_tasks(shared: Path, train_rows: int, test_rows: int, tokenizer, max_length: int):
    specs = [
        TaskDataArguments.from_dict({
            "name": "ner", "type": "token_classification", "format": "conll", "tag_scheme": "iob1",
            "data_files": {split: str(shared / "conll2003" / f) for split, f in
                           (("train", "eng.train"), ("validation", "eng.testa"), ("test", "eng.testb"))}}),
        TaskDataArguments.from_dict({
            "name": "sentiment", "type": "sequence_classification",
            "data_files": {split: str(shared / "tweeteval_sentiment" / f"{split}.jsonl")
                           for split in ("train", "validation", "test")}}),
    ]
    return tokenize_specs(specs, tokenizer, train_rows, test_rows, max_length)


def tokenize_specs(specs: list[TaskDataArguments], tokenizer, train_rows: int | None, test_rows: int | None,
                   max_length: int):
    """Model task list, tokenized train rows and tokenized test rows (tasks without a test split are not scored).

    Labels come from the whole train split; a type with numeric labels (regression, similarity) has none."""
    tasks, train, test = [], {}, {}
    for spec in specs:
        splits = load_task_splits(spec)
        labels = infer_labels(spec, splits["train"])
        label2id = {label: i for i, label in enumerate(labels or [])}
        tasks.append(spec.model_task(labels))
        train[spec.name] = tokenize_task(take_first(splits["train"], train_rows), spec, tokenizer, label2id, max_length)
        if "test" in splits:
            test[spec.name] = tokenize_task(take_first(splits["test"], test_rows), spec, tokenizer, label2id,
                                            max_length)
    return tasks, train, test


def common_args(output_dir: str, seed: int, args) -> dict:
    return dict(output_dir=output_dir, seed=seed, num_train_epochs=args.epochs, learning_rate=args.lr,
                per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64, weight_decay=0.01,
                warmup_steps=0.1, save_strategy="no", eval_strategy="no", report_to="none", logging_steps=50,
                disable_tqdm=True, use_cpu=not torch.cuda.is_available(), bf16=args.bf16, dataloader_pin_memory=False)


def run_mtl(seed, tasks, train, test, tokenizer, args, workdir):
    set_seed(seed)
    model = MultiTaskModel.from_encoder(ENCODER, tasks=tasks)
    training_args = MultiTaskTrainingArguments(**common_args(f"{workdir}/mtl-{seed}", seed, args),
                                               head_learning_rate=args.lr, layerwise_lr_decay=1.0,
                                               task_sampling="proportional")
    return train_and_score(model, training_args, train, test, tokenizer, args)


def train_and_score(model, training_args, train, test, tokenizer, args) -> dict:
    """Train a multi-task model on `train`, predict `test`: the NER and sentiment test metrics and the train time."""
    trainer = MultiTaskTrainer(model=model, args=training_args, train_dataset=MultiTaskDataset(train),
                               processing_class=tokenizer)
    result = trainer.train()
    metrics = trainer.predict(test).metrics
    return {"ner_f1": metrics["test_ner_f1"], "sentiment_accuracy": metrics["test_sentiment_accuracy"],
            "sentiment_macro_f1": metrics["test_sentiment_macro_f1"],
            "train_samples": sum(len(d) for d in train.values()) * args.epochs,
            "train_seconds": result.metrics["train_runtime"]}


def run_single(seed, task, train, test, tokenizer, args, workdir):
    set_seed(seed)  # before the head is built
    labels = task["labels"]
    kwargs = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                  label2id={label: i for i, label in enumerate(labels)}, dtype=torch.float32)
    source = resolve_checkpoint(ENCODER)
    if task["type"] == "token_classification":
        model = AutoModelForTokenClassification.from_pretrained(source, **kwargs)
        collator = DataCollatorForTokenClassification(tokenizer)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
        collator = DataCollatorWithPadding(tokenizer)
    training_args = TrainingArguments(**common_args(f"{workdir}/hf-{task['name']}-{seed}", seed, args))
    trainer = Trainer(model=model, args=training_args, train_dataset=train[task["name"]], data_collator=collator,
                      processing_class=tokenizer)
    result = trainer.train()
    output = trainer.predict(test[task["name"]])
    metrics = task_metrics(task["type"], output.predictions, output.label_ids, labels)
    return {**metrics, "train_samples": len(train[task["name"]]) * args.epochs,
            "train_seconds": result.metrics["train_runtime"]}


def summary(values: list[float]) -> str:
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * spread:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--train-rows", type=int, default=1000, help="first N train rows per task (0 = all)")
    parser.add_argument("--test-rows", type=int, default=1000, help="first N test rows per task (0 = all)")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--workdir", default="/tmp/mtl-quality")
    parser.add_argument("--out", type=Path, default=None, help="write the raw results as JSON here")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    if not (args.shared_data / "conll2003" / "eng.train").exists():
        sys.exit(f"CoNLL-2003 not found under {args.shared_data}: pass --shared-data")

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(ENCODER))
    tasks, train, test = load_tasks(args.shared_data, args.train_rows or None, args.test_rows or None,
                                    tokenizer, args.max_length)
    ner, sentiment = tasks
    runs = []
    for seed in args.seeds:
        t0 = time.time()
        mtl = run_mtl(seed, tasks, train, test, tokenizer, args, args.workdir)
        hf_ner = run_single(seed, ner, train, test, tokenizer, args, args.workdir)
        hf_sent = run_single(seed, sentiment, train, test, tokenizer, args, args.workdir)
        runs.append({"seed": seed, "mtl": mtl, "hf-ner": hf_ner, "hf-sentiment": hf_sent})
        print(f"seed {seed}: mtl ner_f1 {mtl['ner_f1']:.4f} sent_acc {mtl['sentiment_accuracy']:.4f} | "
              f"hf ner_f1 {hf_ner['f1']:.4f} | hf sent_acc {hf_sent['accuracy']:.4f} ({time.time() - t0:.0f}s)",
              flush=True)

    def column(name, key):
        return [run[name][key] for run in runs]

    mtl_speed = [r["mtl"]["train_samples"] / r["mtl"]["train_seconds"] for r in runs]
    hf_speed = [(r["hf-ner"]["train_samples"] + r["hf-sentiment"]["train_samples"])
                / (r["hf-ner"]["train_seconds"] + r["hf-sentiment"]["train_seconds"]) for r in runs]
    print(f"\n{len(runs)} seeds {args.seeds}; {args.train_rows or 'all'} train / {args.test_rows or 'all'} test rows "
          f"per task; {args.epochs:g} epochs, lr {args.lr:g}, batch {args.batch_size}\n")
    print("| model | CoNLL-2003 test entity F1 | TweetEval test accuracy | TweetEval test macro-F1 |")
    print("| --- | --- | --- | --- |")
    print(f"| multi-task (both heads, one encoder) | {summary(column('mtl', 'ner_f1'))} | "
          f"{summary(column('mtl', 'sentiment_accuracy'))} | {summary(column('mtl', 'sentiment_macro_f1'))} |")
    print(f"| HF AutoModelForTokenClassification | {summary(column('hf-ner', 'f1'))} | – | – |")
    print(f"| HF AutoModelForSequenceClassification | – | {summary(column('hf-sentiment', 'accuracy'))} | "
          f"{summary(column('hf-sentiment', 'macro_f1'))} |")
    ratios = [m / h for m, h in zip(mtl_speed, hf_speed)]
    print(f"\nTraining speed: multi-task {statistics.mean(mtl_speed):.1f} samples/s, plain HF Trainer "
          f"{statistics.mean(hf_speed):.1f} samples/s; ratio {statistics.mean(ratios):.3f} "
          f"(per seed {', '.join(f'{r:.3f}' for r in ratios)})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                        "speed_ratio": ratios}, indent=2))


if __name__ == "__main__":
    main()
