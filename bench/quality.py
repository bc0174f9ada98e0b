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
import statistics
import time
from pathlib import Path

import common
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

from mtl_st.checkpoints import resolve_checkpoint
from trainer_mtl import MultiTaskTrainingArguments, task_metrics

ENCODER = common.ENCODER


def load_tasks(shared: Path, train_rows: int | None, test_rows: int | None, tokenizer, max_length: int):
    """CoNLL-2003 NER and TweetEval sentiment (configs/conll_tweeteval.yaml's tasks, read from `shared`): the model's
    task list, the first `train_rows` tokenized train rows and the first `test_rows` tokenized test rows of each."""
    prepared = common.prepare(common.task_entries(shared_data=shared))
    data = common.tokenize(prepared, tokenizer, max_length, {"train": train_rows, "test": test_rows})
    return common.model_tasks(prepared), data["train"], data["test"]


def training_settings(output_dir: str, seed: int, args) -> dict:
    """The Trainer settings of every run here: the bench defaults with this script's epochs, rate, batch and bf16."""
    return common.training_settings(output_dir, seed, num_train_epochs=args.epochs, learning_rate=args.lr,
                                    per_device_train_batch_size=args.batch_size, bf16=args.bf16)


def run_mtl(seed, tasks, train, test, tokenizer, args, workdir, model=None, lr: float | None = None,
            name: str = "mtl") -> dict:
    """The multi-task model (both heads on one encoder, seeded before the heads; or `model`), encoder and heads at
    `lr` (default `--lr`): test scores and train time."""
    model = common.new_model(tasks, seed) if model is None else model
    settings = training_settings(f"{workdir}/{name}-{seed}", seed, args)
    settings["learning_rate"] = lr = args.lr if lr is None else lr
    training_args = MultiTaskTrainingArguments(**settings, head_learning_rate=lr, layerwise_lr_decay=1.0,
                                               task_sampling="proportional")
    return common.scores(common.train_and_score(model, training_args, train, test, tokenizer)[1])


def run_single(seed, task, train, test, tokenizer, args, workdir, encoder: str = ENCODER):
    """A plain HF fine-tune of `encoder` on one task (`AutoModelFor...` + `Trainer`): its test metrics and time."""
    set_seed(seed)  # before the head is built
    labels = task["labels"]
    kwargs = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                  label2id={label: i for i, label in enumerate(labels)}, dtype=torch.float32)
    source = resolve_checkpoint(encoder)
    if task["type"] == "token_classification":
        model = AutoModelForTokenClassification.from_pretrained(source, **kwargs)
        collator = DataCollatorForTokenClassification(tokenizer)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
        collator = DataCollatorWithPadding(tokenizer)
    training_args = TrainingArguments(**training_settings(f"{workdir}/hf-{task['name']}-{seed}", seed, args))
    trainer = Trainer(model=model, args=training_args, train_dataset=train[task["name"]], data_collator=collator,
                      processing_class=tokenizer)
    result = trainer.train()
    output = trainer.predict(test[task["name"]])
    metrics = task_metrics(task["type"], output.predictions, output.label_ids, labels)
    return {**metrics, "train_samples": len(train[task["name"]]) * args.epochs,
            "train_seconds": result.metrics["train_runtime"]}


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
    parser.add_argument("--shared-data", type=Path, default=common.SHARED_DATA)
    parser.add_argument("--workdir", default="/tmp/mtl-quality")
    parser.add_argument("--out", type=Path, default=None, help="write the raw results as JSON here")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    common.require(args.shared_data / "conll2003" / "eng.train", "CoNLL-2003")
    tokenizer = common.load_tokenizer(ENCODER)
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

    def cell(name, key):
        return common.mean_std([run[name][key] for run in runs])

    mtl_speed = [r["mtl"]["train_samples"] / r["mtl"]["train_seconds"] for r in runs]
    hf_speed = [(r["hf-ner"]["train_samples"] + r["hf-sentiment"]["train_samples"])
                / (r["hf-ner"]["train_seconds"] + r["hf-sentiment"]["train_seconds"]) for r in runs]
    print(f"\n{len(runs)} seeds {args.seeds}; {args.train_rows or 'all'} train / {args.test_rows or 'all'} test rows "
          f"per task; {args.epochs:g} epochs, lr {args.lr:g}, batch {args.batch_size}\n")
    print("| model | CoNLL-2003 test entity F1 | TweetEval test accuracy | TweetEval test macro-F1 |")
    print("| --- | --- | --- | --- |")
    print(f"| multi-task (both heads, one encoder) | {cell('mtl', 'ner_f1')} | {cell('mtl', 'sentiment_accuracy')} | "
          f"{cell('mtl', 'sentiment_macro_f1')} |")
    print(f"| HF AutoModelForTokenClassification | {cell('hf-ner', 'f1')} | – | – |")
    print(f"| HF AutoModelForSequenceClassification | – | {cell('hf-sentiment', 'accuracy')} | "
          f"{cell('hf-sentiment', 'macro_f1')} |")
    ratios = [m / h for m, h in zip(mtl_speed, hf_speed)]
    print(f"\nTraining speed: multi-task {statistics.mean(mtl_speed):.1f} samples/s, plain HF Trainer "
          f"{statistics.mean(hf_speed):.1f} samples/s; ratio {statistics.mean(ratios):.3f} "
          f"(per seed {', '.join(f'{r:.3f}' for r in ratios)})")
    if args.out:
        common.write_json(args.out, {"args": {k: str(v) for k, v in vars(args).items()},
                                     "machine": common.machine_line(), "runs": runs, "speed_ratio": ratios})


if __name__ == "__main__":
    main()
