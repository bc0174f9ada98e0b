"""What training the heads does to the sentence embeddings, with and without embedding preservation.

    python bench/embeddings.py --variants base none distill:10 l2sp:1000 --seeds 1 2 3   # runs (resumable)
    python bench/embeddings.py --summarize                                                # the table from the runs
    python bench/embeddings.py --cost --cost-steps 40 --cost-repeats 3                    # time per step, interleaved

The CPU-subset setup of bench/quality.py: the first `--train-rows` training rows and `--test-rows` test rows of
CoNLL-2003 NER (IOB1 -> BIO) and TweetEval sentiment from ../shared/data, all-MiniLM-L6-v2, 2 epochs, batch 16.
Training follows docs/training-guide.md's advice (as configs/quickstart.yaml does): encoder 1e-4 with layer-wise
decay 0.9, heads at 100x (1e-2), round-robin task sampling. Each variant is a `method:weight` of
`embedding_preservation` / `preservation_weight` (`none`, `distill:10`, `l2sp:1000`, `distill` = the method's
default weight), or `base` (the untrained encoder: STS-B only). Every run reports STS-B dev cosine Spearman
(x100 in the table; `model.encode`, all 1,500 pairs), CoNLL-2003 test entity F1 and TweetEval test accuracy and
macro-F1, and writes one JSON per run to `--out/per_run/<variant>-seed<k>.json` as soon as it finishes (existing
files are skipped, so an interrupted sweep resumes). `--summarize` writes `--out/embeddings.json` and prints
the table (mean ± std over the seeds that finished).

Row (c), "an STS-B training task in the mix": `--extra-task-yaml bench/stsb_task.yaml` adds the STS Benchmark's
train pairs as a `sentence_similarity` task (CoSENT) to the mix, and `--tag` names the rows. As run for BENCHMARKS.md:

    python bench/embeddings.py --variants none l2sp:1000 --seeds 1 2 3 --extra-task-yaml bench/stsb_task.yaml \
        --extra-train-rows 0 --task-sampling proportional --task-loss-weights '{"stsb": 0.5}' --tag stsb-all-w0.5

`--extra-train-rows 0` keeps the whole file (it is ordered by genre: its first 1,000 pairs are all image captions;
10% + 10% of a train-only task are held out as validation and test, so 4,599 pairs train), and proportional
sampling shows every pair once per epoch while NER and sentiment keep the 126 batches they get in the two-task
runs. The STS-B loss at weight 0.5 keeps CoNLL-2003 F1 level with the two-task runs (at weight 1, the
`stsb-all` rows, it cost 1.7 F1). `--max-steps` caps the steps instead (the `stsb-full` runs: round-robin,
378 steps, 126 batches per task). The extra tasks' test splits are scored too (every `test_*` metric lands in
the run JSON).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, set_seed
from transformers.utils import logging as hf_logging

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_mtl import MultiTaskDataset, TaskDataArguments  # noqa: E402
from modeling_mtl import MultiTaskModel, resolve_checkpoint  # noqa: E402
from preservation_mtl import DEFAULT_WEIGHTS, PRESERVATION_METHODS, read_sts_pairs, sts_spearman  # noqa: E402
from trainer_mtl import MultiTaskTrainer, MultiTaskTrainingArguments  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from quality import tokenize_specs  # noqa: E402

ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
TRAINING = dict(learning_rate=1e-4, head_learning_rate=1e-2, layerwise_lr_decay=0.9, task_sampling="round_robin")


def task_specs(shared: Path, extra_yaml: Path | None) -> list[TaskDataArguments]:
    """CoNLL-2003 NER and TweetEval sentiment, plus any tasks listed in `extra_yaml` (the row (c) hook)."""
    entries = [
        {"name": "ner", "type": "token_classification", "format": "conll", "tag_scheme": "iob1",
         "data_files": {split: str(shared / "conll2003" / name) for split, name in
                        (("train", "eng.train"), ("validation", "eng.testa"), ("test", "eng.testb"))}},
        {"name": "sentiment", "type": "sequence_classification",
         "data_files": {split: str(shared / "tweeteval_sentiment" / f"{split}.jsonl")
                        for split in ("train", "validation", "test")}},
    ]
    if extra_yaml is not None:
        extra = yaml.safe_load(extra_yaml.read_text(encoding="utf-8"))
        if not isinstance(extra, list):
            raise SystemExit(f"{extra_yaml}: expected a YAML list of task entries, got {type(extra).__name__}")
        entries += extra
    return [TaskDataArguments.from_dict(entry) for entry in entries]


def load_data(specs: list[TaskDataArguments], tokenizer, train_rows: int | None, test_rows: int | None,
              max_length: int, extra_train_rows: int | None = -1):
    """Task list, tokenized train rows and tokenized test rows: `bench/quality.py`'s `tokenize_specs`.

    The first two specs (NER, sentiment) keep `train_rows`; the extra tasks keep `extra_train_rows` (None = all,
    -1 = the same as `train_rows`)."""
    if extra_train_rows == -1 or len(specs) <= 2:
        return tokenize_specs(specs, tokenizer, train_rows, test_rows, max_length)
    tasks, train, test = tokenize_specs(specs[:2], tokenizer, train_rows, test_rows, max_length)
    more = tokenize_specs(specs[2:], tokenizer, extra_train_rows, test_rows, max_length)
    return tasks + more[0], {**train, **more[1]}, {**test, **more[2]}


def parse_variant(variant: str) -> tuple[str, float | None]:
    """`base`, `none`, `distill`, `distill:10`, `l2sp:1000` -> (method, weight); weight None = the default."""
    method, _, weight = variant.partition(":")
    if method != "base" and method not in PRESERVATION_METHODS:
        raise SystemExit(f"unknown variant {variant!r}: use base or one of {PRESERVATION_METHODS} [:weight]")
    return method, float(weight) if weight else None


def training_args(output_dir: str, seed: int, method: str, weight: float | None, args, **overrides):
    settings = dict(
        output_dir=output_dir, seed=seed, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64, weight_decay=0.01, warmup_steps=0.1, save_strategy="no", eval_strategy="no",
        report_to="none", logging_steps=50, disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=False, embedding_preservation=method, preservation_weight=weight, **TRAINING,
    )
    return MultiTaskTrainingArguments(**{**settings, **overrides})


def run_one(variant: str, seed: int, tasks, train, test, tokenizer, sts_pairs, args) -> dict:
    """Train one variant (or score the base encoder) and return its metrics."""
    method, weight = parse_variant(variant)
    set_seed(seed)  # before any head is built
    model = MultiTaskModel.from_encoder(ENCODER, tasks=tasks, normalize_embeddings=True)
    result = {"variant": variant, "method": method, "seed": seed}
    if method != "base":
        overrides = {"max_steps": args.max_steps} if args.max_steps else {}
        if args.task_sampling:
            overrides["task_sampling"] = args.task_sampling
        if args.task_loss_weights:
            overrides["task_loss_weights"] = args.task_loss_weights
        targs = training_args(f"{args.workdir}/{variant}-{seed}", seed, method, weight, args, **overrides)
        result["weight"] = targs.preservation_weight
        trainer = MultiTaskTrainer(model=model, args=targs, train_dataset=MultiTaskDataset(train),
                                   processing_class=tokenizer)
        train_result = trainer.train()
        result["train_runtime"] = train_result.metrics["train_runtime"]
        result["train_steps"] = trainer.state.global_step
        result["encoder_drift"] = trainer.anchor.drift() if trainer.anchor is not None else None
        metrics = trainer.predict(test).metrics
        result.update({key: value for key, value in metrics.items() if key.startswith("test_") and
                       not key.endswith(("_runtime", "_per_second"))})
    model.eval()
    result["stsb_dev_spearman"] = sts_spearman(model, sts_pairs, tokenizer=tokenizer)
    return result


def run_sweep(args) -> None:
    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(ENCODER))
    specs = task_specs(args.shared_data, args.extra_task_yaml)
    extra_rows = -1 if args.extra_train_rows is None else args.extra_train_rows or None
    tasks, train, test = load_data(specs, tokenizer, args.train_rows or None, args.test_rows or None, args.max_length,
                                   extra_rows)
    sts_pairs = read_sts_pairs(args.shared_data / "stsb" / "dev.csv")
    runs_dir = args.out / "per_run"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for variant in args.variants:
            name = f"{variant}{'+' + args.tag if args.tag else ''}"
            path = runs_dir / f"{name.replace(':', '_')}-seed{seed}.json"
            if path.exists():
                print(f"skip {path.name} (done)", flush=True)
                continue
            if variant == "base" and seed != args.seeds[0]:
                continue  # the untrained encoder does not depend on the seed
            start = time.time()
            result = run_one(variant, seed, tasks, train, test, tokenizer, sts_pairs, args)
            result.update(name=name, wall_seconds=time.time() - start, setup=setup(args))
            path.write_text(json.dumps(result, indent=2))
            print(f"{name} seed {seed}: STS-B {100 * result['stsb_dev_spearman']:.2f} "
                  f"ner_f1 {result.get('test_ner_f1', float('nan')):.4f} "
                  f"sent_acc {result.get('test_sentiment_accuracy', float('nan')):.4f} "
                  f"({result['wall_seconds']:.0f}s)", flush=True)


def run_cost(args) -> None:
    """Seconds per optimizer step of none / distill / l2sp, interleaved in one process (A B C A B C ...)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(ENCODER))
    specs = task_specs(args.shared_data, None)
    tasks, train, _ = load_data(specs, tokenizer, args.train_rows or None, 0, args.max_length)
    times: dict[str, list[float]] = {method: [] for method in PRESERVATION_METHODS}
    for repeat in range(args.cost_repeats):
        order = PRESERVATION_METHODS if repeat % 2 == 0 else tuple(reversed(PRESERVATION_METHODS))
        for method in order:
            set_seed(1)
            model = MultiTaskModel.from_encoder(ENCODER, tasks=tasks, normalize_embeddings=True)
            targs = training_args(f"{args.workdir}/cost-{method}", 1, method, None, args, max_steps=args.cost_steps,
                                  logging_steps=10_000)
            trainer = MultiTaskTrainer(model=model, args=targs, train_dataset=MultiTaskDataset(train),
                                       processing_class=tokenizer)
            times[method].append(trainer.train().metrics["train_runtime"] / args.cost_steps)
            print(f"repeat {repeat} {method}: {times[method][-1]:.3f} s/step", flush=True)
    ratios = {method: [t / n for t, n in zip(times[method], times["none"])] for method in PRESERVATION_METHODS}
    summary = {method: {"seconds_per_step": times[method], "median_ratio_to_none": statistics.median(ratios[method])}
               for method in PRESERVATION_METHODS}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "embeddings_cost.json").write_text(json.dumps({"setup": setup(args), "steps": args.cost_steps,
                                                               "cost": summary}, indent=2))
    for method, row in summary.items():
        print(f"{method}: median {statistics.median(row['seconds_per_step']):.3f} s/step, "
              f"x{row['median_ratio_to_none']:.2f} of none")


def setup(args) -> dict:
    return {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "train_rows": args.train_rows, "extra_train_rows": args.extra_train_rows, "max_steps": args.max_steps,
            "task_sampling_override": args.task_sampling, "task_loss_weights": args.task_loss_weights,
            "test_rows": args.test_rows, "epochs": args.epochs,
            "batch_size": args.batch_size, "max_length": args.max_length, **TRAINING}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def summarize(args) -> None:
    """Group the per-run JSONs by variant name and print the table (mean ± std over the finished seeds)."""
    runs = [json.loads(path.read_text()) for path in sorted((args.out / "per_run").glob("*.json"))]
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["name"], []).append(run)

    def cell(rows: list[dict], key: str) -> str:
        values = [100 * row[key] for row in rows if row.get(key) is not None]
        if not values:
            return "–"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.2f} ± {spread:.2f}" if key.startswith("stsb") else \
            f"{statistics.mean(values):.1f} ± {spread:.1f}"

    table = {}
    print("| variant | seeds | STS-B dev Spearman x100 | CoNLL-2003 test F1 | TweetEval test accuracy | "
          "TweetEval macro-F1 | train s (mean) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, rows in sorted(groups.items(), key=lambda item: _order(item[0])):
        seeds = sorted(row["seed"] for row in rows)
        runtime = [row["train_runtime"] for row in rows if "train_runtime" in row]
        print(f"| {name} | {', '.join(map(str, seeds))} | {cell(rows, 'stsb_dev_spearman')} | "
              f"{cell(rows, 'test_ner_f1')} | {cell(rows, 'test_sentiment_accuracy')} | "
              f"{cell(rows, 'test_sentiment_macro_f1')} | {statistics.mean(runtime):.0f} |" if runtime else
              f"| {name} | – | {cell(rows, 'stsb_dev_spearman')} | – | – | – | – |")
        table[name] = {"seeds": seeds, "runs": rows}
    (args.out / "embeddings.json").write_text(json.dumps(table, indent=2))


def _order(name: str) -> tuple:
    method = name.split(":")[0].split("+")[0]
    rank = {"base": 0, "none": 1, "distill": 2, "l2sp": 3}.get(method, 4)
    return rank, name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["base", "none", "distill", "l2sp"],
                        help=f"base | none | distill[:w] | l2sp[:w] (default weights {DEFAULT_WEIGHTS})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--train-rows", type=int, default=1000, help="first N train rows per task (0 = all)")
    parser.add_argument("--test-rows", type=int, default=1000, help="first N test rows per task (0 = all)")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--extra-task-yaml", type=Path, default=None,
                        help="YAML list of extra task entries for the training mix (row (c): an STS-B task)")
    parser.add_argument("--extra-train-rows", type=int, default=None,
                        help="train rows of the --extra-task-yaml tasks (0 = all; default: --train-rows)")
    parser.add_argument("--max-steps", type=int, default=0,
                        help="optimizer steps instead of --epochs (0 = by epochs), e.g. to give every task of a "
                             "larger round-robin mix the same number of batches as the two-task runs")
    parser.add_argument("--task-sampling", default=None, choices=("proportional", "temperature", "round_robin"),
                        help="instead of round_robin, e.g. proportional for row (c): every task's rows once per epoch")
    parser.add_argument("--task-loss-weights", default=None,
                        help='JSON, as train.py\'s task_loss_weights, e.g. \'{"stsb": 0.5}\' for row (c)')
    parser.add_argument("--tag", default="", help="suffix for the variant names of this sweep, e.g. stsb-task")
    parser.add_argument("--workdir", default="/tmp/mtl-embeddings")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "embeddings")
    parser.add_argument("--summarize", action="store_true", help="print the table from the finished runs")
    parser.add_argument("--cost", action="store_true", help="time none / distill / l2sp steps, interleaved")
    parser.add_argument("--cost-steps", type=int, default=40)
    parser.add_argument("--cost-repeats", type=int, default=3)
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    if args.summarize:
        return summarize(args)
    if not (args.shared_data / "stsb" / "dev.csv").exists():
        sys.exit(f"STS-B not found under {args.shared_data}: pass --shared-data")
    if args.cost:
        return run_cost(args)
    run_sweep(args)


if __name__ == "__main__":
    main()
