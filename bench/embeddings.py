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

The retrieval rows (BENCHMARKS.md, "Retrieval"): `--retrieval` adds an in-batch-negatives task on MSRP's
paraphrase pairs and TREC QA's train positives (its first `--train-rows`, like NER and sentiment), and every run
then also scores TREC QA dev MAP / MRR by reranking each question's candidates. As run:

    python bench/embeddings.py --variants base none --seeds 1 2 3 --out bench/results/retrieval   # heads alone
    python bench/embeddings.py --variants none --seeds 1 2 3 --retrieval --tag retrieval --out bench/results/retrieval
    python bench/embeddings.py --variants none --seeds 1 2 3 --retrieval --hard-negatives --tag retrieval-hn \
        --out bench/results/retrieval
    python bench/embeddings.py --variants none --seeds 1 2 3 --retrieval --hard-negatives --extra-task-yaml \
        bench/stsb_task.yaml --extra-train-rows 0 --task-sampling proportional --task-loss-weights '{"stsb": 0.5}' \
        --tag retrieval-hn-stsb --out bench/results/retrieval
    python bench/embeddings.py --variants none --seeds 1 2 3 --retrieval --hard-negatives --extra-task-yaml \
        bench/stsb_task.yaml --extra-train-rows 0 --task-sampling proportional \
        --task-loss-weights '{"stsb": 1.5, "qa": 2}' --tag retrieval-hn-stsb-w1.5-qa2 --out bench/results/retrieval
    python bench/embeddings.py --variants none --seeds 1 2 3 --retrieval --hard-negatives --symmetric \
        --task-loss-weights '{"paraphrase": 2, "qa": 0.5}' --tag retrieval-hn-sym-p2-qa0.5 --out bench/results/retrieval
    python bench/embeddings.py --variants none --seeds 1 2 3 --retrieval --hard-negatives --extra-task-yaml \
        bench/stsb_task.yaml --extra-train-rows 0 --task-sampling proportional \
        --task-loss-weights '{"stsb": 1.0, "paraphrase": 0.5, "qa": 1.5}' --tag retrieval-hn-stsb-w1-p0.5-qa1.5 \
        --out bench/results/retrieval

and the one-seed weighting probes beside them (BENCHMARKS.md lists each one's flags).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import common
import torch
from transformers.utils import logging as hf_logging

from mtl_st.data.sampling import MultiTaskDataset
from mtl_st.evaluation.sts import read_sts_pairs, sts_spearman
from mtl_st.training.preservation import DEFAULT_WEIGHTS, PRESERVATION_METHODS
from trainer_mtl import MultiTaskTrainer, MultiTaskTrainingArguments

ENCODER = common.ENCODER
TRAINING = dict(learning_rate=1e-4, head_learning_rate=1e-2, layerwise_lr_decay=0.9, task_sampling="round_robin")


def task_entries(shared: Path, extra_yaml: Path | None, retrieval: list[dict] | None = None) -> list[dict]:
    """CoNLL-2003 NER and TweetEval sentiment, plus the retrieval task(s) (`--retrieval`) and any tasks listed in
    `extra_yaml` (the row (c) hook)."""
    extra = common.read_task_list(extra_yaml, shared) if extra_yaml else []
    return common.task_entries(shared_data=shared) + (retrieval or []) + extra


def retrieval_tasks(args) -> list[dict]:
    """`--retrieval`: one in-batch-negatives task on MSRP's paraphrases and TREC QA's train positives; with
    `--hard-negatives`, two: MSRP's pairs (`paraphrase`) and TREC QA's positives each with one wrong candidate of
    its question as a hard negative (`qa`). No validation or test split of their own: TREC QA dev is scored for
    every row (`trecqa_scores`)."""
    if not args.retrieval:
        return []
    workdir = Path(args.workdir)
    if args.hard_negatives:
        files = {"paraphrase": common.write_jsonl(workdir / "msrp_pairs.jsonl", common.msrp_positives(args.shared_data)),
                 "qa": common.write_jsonl(workdir / "trecqa_triplets.jsonl", common.trecqa_triplets(args.shared_data))}
    else:
        files = {"retrieval": common.retrieval_pairs(workdir / "retrieval_pairs.jsonl", args.shared_data)}
    entries = []
    for name, path in files.items():
        entry = {"name": name, "type": "retrieval", "data_files": {"train": str(path)},
                 "validation_split_fraction": 0.0, "test_split_fraction": 0.0}
        if args.matryoshka_dims:
            entry["matryoshka_dims"] = args.matryoshka_dims
        if args.mini_batch_size:
            entry["mini_batch_size"] = args.mini_batch_size
        if args.symmetric and name != "qa":
            entry["symmetric"] = True
        entries.append(entry)
    return entries


def trecqa_scores(model, tokenizer, rows, dims) -> dict:
    """TREC QA dev MAP and MRR (reranking each question's candidates by cosine), at full width and each of `dims`."""
    from mtl_st.evaluation.retrieval import rerank_model

    result = {f"trecqa_dev_{k}": v for k, v in rerank_model(model, rows, tokenizer=tokenizer).items()}
    for dim in dims or []:
        scores = rerank_model(model, rows, tokenizer=tokenizer, truncate_dim=dim)
        result.update({f"trecqa_dev_{k}_dim{dim}": v for k, v in scores.items()})
    return result


def load_data(entries: list[dict], tokenizer, train_rows: int | None, test_rows: int | None, max_length: int,
              extra_train_rows: int | None = -1, main_tasks: int = 2):
    """Task list, tokenized train rows and tokenized test rows.

    The first `main_tasks` tasks (NER, sentiment and any `--retrieval` tasks) keep `train_rows`; the extra tasks of
    `--extra-task-yaml` keep `extra_train_rows` (None = all, -1 = the same as `train_rows`)."""
    prepared = common.prepare(entries)
    main = [entry["name"] for entry in entries[:main_tasks]]
    data = common.tokenize(prepared, tokenizer, max_length, {"train": train_rows, "test": test_rows}, only=main)
    extra = [entry["name"] for entry in entries[main_tasks:]]
    if extra:
        rows = train_rows if extra_train_rows == -1 else extra_train_rows
        more = common.tokenize(prepared, tokenizer, max_length, {"train": rows, "test": test_rows}, only=extra)
        data = {split: {**data[split], **more[split]} for split in data}
    return common.model_tasks(prepared), data["train"], data["test"]


def parse_variant(variant: str) -> tuple[str, float | None]:
    """`base`, `none`, `distill`, `distill:10`, `l2sp:1000` -> (method, weight); weight None = the default."""
    method, _, weight = variant.partition(":")
    if method != "base" and method not in PRESERVATION_METHODS:
        raise SystemExit(f"unknown variant {variant!r}: use base or one of {PRESERVATION_METHODS} [:weight]")
    return method, float(weight) if weight else None


def training_args(output_dir: str, seed: int, method: str, weight: float | None, args, **overrides):
    settings = common.training_settings(output_dir, seed, num_train_epochs=args.epochs,
                                        per_device_train_batch_size=args.batch_size, embedding_preservation=method,
                                        preservation_weight=weight, **TRAINING)
    return MultiTaskTrainingArguments(**{**settings, **overrides})


def run_one(variant: str, seed: int, tasks, train, test, tokenizer, sts_pairs, args, trecqa=None) -> dict:
    """Train one variant (or score the base encoder) and return its metrics."""
    method, weight = parse_variant(variant)
    model = common.new_model(tasks, seed, normalize_embeddings=True)  # seeded before any head is built
    result = {"variant": variant, "method": method, "seed": seed}
    if method != "base":
        overrides = {"max_steps": args.max_steps} if args.max_steps else {}
        if args.task_sampling:
            overrides["task_sampling"] = args.task_sampling
        if args.task_loss_weights:
            overrides["task_loss_weights"] = args.task_loss_weights
        targs = training_args(f"{args.workdir}/{variant}-{seed}", seed, method, weight, args, **overrides)
        result["weight"] = targs.preservation_weight
        trainer, metrics = common.train_and_score(model, targs, train, test, tokenizer)
        result["train_runtime"] = metrics["train_seconds"]
        result["train_steps"] = trainer.state.global_step
        result["encoder_drift"] = trainer.anchor.drift() if trainer.anchor is not None else None
        result.update({key: value for key, value in metrics.items() if key.startswith("test_") and
                       not key.endswith(("_runtime", "_per_second"))})
    model.eval()
    result["stsb_dev_spearman"] = sts_spearman(model, sts_pairs, tokenizer=tokenizer)
    if trecqa is not None:
        result.update(trecqa_scores(model, tokenizer, trecqa, args.matryoshka_dims))
    return result


def run_sweep(args) -> None:
    tokenizer = common.load_tokenizer(ENCODER)
    retrieval = retrieval_tasks(args)
    entries = task_entries(args.shared_data, args.extra_task_yaml, retrieval)
    extra_rows = -1 if args.extra_train_rows is None else args.extra_train_rows or None
    tasks, train, test = load_data(entries, tokenizer, args.train_rows or None, args.test_rows or None,
                                   args.max_length, extra_rows, main_tasks=2 + len(retrieval))
    sts_pairs = read_sts_pairs(args.shared_data / "stsb" / "dev.csv")
    trecqa = common.trecqa_rows("dev", args.shared_data) if (args.shared_data / "trecqa" / "dev.csv").exists() else None
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
            result = run_one(variant, seed, tasks, train, test, tokenizer, sts_pairs, args, trecqa)
            result.update(name=name, wall_seconds=time.time() - start, setup=setup(args))
            path.write_text(json.dumps(result, indent=2))
            print(f"{name} seed {seed}: STS-B {100 * result['stsb_dev_spearman']:.2f} "
                  f"ner_f1 {result.get('test_ner_f1', float('nan')):.4f} "
                  f"sent_acc {result.get('test_sentiment_accuracy', float('nan')):.4f} "
                  f"trecqa_map {result.get('trecqa_dev_map', float('nan')):.4f} "
                  f"({result['wall_seconds']:.0f}s)", flush=True)


def run_cost(args) -> None:
    """Seconds per optimizer step of none / distill / l2sp, interleaved in one process (A B C, B C A, ...)."""
    tokenizer = common.load_tokenizer(ENCODER)
    tasks, train, _ = load_data(task_entries(args.shared_data, None), tokenizer, args.train_rows or None, 0,
                                args.max_length)
    times: dict[str, list[float]] = {method: [] for method in PRESERVATION_METHODS}
    for repeat, order in enumerate(common.rounds(PRESERVATION_METHODS, args.cost_repeats)):
        for method in order:
            model = common.new_model(tasks, 1, normalize_embeddings=True)
            targs = training_args(f"{args.workdir}/cost-{method}", 1, method, None, args, max_steps=args.cost_steps,
                                  logging_steps=10_000)
            trainer = MultiTaskTrainer(model=model, args=targs, train_dataset=MultiTaskDataset(train),
                                       processing_class=tokenizer)
            times[method].append(trainer.train().metrics["train_runtime"] / args.cost_steps)
            print(f"repeat {repeat} {method}: {times[method][-1]:.3f} s/step", flush=True)
    ratios = {method: [t / n for t, n in zip(times[method], times["none"])] for method in PRESERVATION_METHODS}
    summary = {method: {"seconds_per_step": times[method], "median_ratio_to_none": statistics.median(ratios[method])}
               for method in PRESERVATION_METHODS}
    common.write_json(args.out / "embeddings_cost.json", {"setup": setup(args), "steps": args.cost_steps,
                                                          "cost": summary})
    for method, row in summary.items():
        print(f"{method}: {common.median_min_max(row['seconds_per_step'], unit='s/step', digits=3)}, "
              f"x{row['median_ratio_to_none']:.2f} of none")


def setup(args) -> dict:
    return {"cpu": common.cpu_name(), "machine": common.machine_line(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "train_rows": args.train_rows, "extra_train_rows": args.extra_train_rows,
            "max_steps": args.max_steps, "task_sampling_override": args.task_sampling,
            "task_loss_weights": args.task_loss_weights, "test_rows": args.test_rows, "epochs": args.epochs,
            "batch_size": args.batch_size, "max_length": args.max_length, "retrieval": args.retrieval,
            "hard_negatives": args.hard_negatives, "matryoshka_dims": args.matryoshka_dims,
            "mini_batch_size": args.mini_batch_size, "symmetric": args.symmetric, **TRAINING}


def summarize(args) -> None:
    """Group the per-run JSONs by variant name and print the table (mean ± std over the finished seeds)."""
    runs = [json.loads(path.read_text()) for path in sorted((args.out / "per_run").glob("*.json"))]
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["name"], []).append(run)

    def cell(rows: list[dict], key: str) -> str:
        values = [row[key] for row in rows if row.get(key) is not None]
        return common.mean_std(values, digits=2 if key.startswith(("stsb", "trecqa")) else 1) if values else "–"

    table = {}
    print("| variant | seeds | STS-B dev Spearman x100 | TREC QA dev MAP | TREC QA dev MRR | CoNLL-2003 test F1 | "
          "TweetEval test accuracy | TweetEval macro-F1 | train s (mean) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, rows in sorted(groups.items(), key=lambda item: _order(item[0])):
        seeds = sorted(row["seed"] for row in rows)
        runtime = [row["train_runtime"] for row in rows if "train_runtime" in row]
        trec = f"{cell(rows, 'trecqa_dev_map')} | {cell(rows, 'trecqa_dev_mrr')}"
        print(f"| {name} | {', '.join(map(str, seeds))} | {cell(rows, 'stsb_dev_spearman')} | {trec} | "
              f"{cell(rows, 'test_ner_f1')} | {cell(rows, 'test_sentiment_accuracy')} | "
              f"{cell(rows, 'test_sentiment_macro_f1')} | {statistics.mean(runtime):.0f} |" if runtime else
              f"| {name} | – | {cell(rows, 'stsb_dev_spearman')} | {trec} | – | – | – | – |")
        dims = sorted({key.rsplit("_dim", 1)[1] for row in rows for key in row if key.startswith("trecqa_dev_map_dim")},
                      key=int, reverse=True)
        if dims:
            print("  Matryoshka, TREC QA dev MAP x100: " + ", ".join(
                f"{d}: {cell(rows, f'trecqa_dev_map_dim{d}')}" for d in dims))
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
    parser.add_argument("--shared-data", type=Path, default=common.SHARED_DATA)
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
    parser.add_argument("--retrieval", action="store_true",
                        help="add a retrieval task (MSRP paraphrases + TREC QA train positives, in-batch negatives)")
    parser.add_argument("--matryoshka-dims", type=int, nargs="*", default=None,
                        help="with --retrieval: train these widths too, and score TREC QA dev at each")
    parser.add_argument("--mini-batch-size", type=int, default=0, help="with --retrieval: gradient caching")
    parser.add_argument("--hard-negatives", action="store_true",
                        help="with --retrieval: MSRP and TREC QA as two tasks, TREC QA's rows with a wrong candidate "
                             "of their question as a hard negative")
    parser.add_argument("--symmetric", action="store_true",
                        help="with --retrieval: the symmetric loss (positive -> anchor too) on the paraphrase task (or on "
                             "the one retrieval task without --hard-negatives); `qa` (question -> answer) stays one-way")
    parser.add_argument("--tag", default="", help="suffix for the variant names of this sweep, e.g. stsb-task")
    parser.add_argument("--workdir", default="/tmp/mtl-embeddings")
    parser.add_argument("--out", type=Path, default=common.REPO / "bench" / "results" / "embeddings")
    parser.add_argument("--summarize", action="store_true", help="print the table from the finished runs")
    parser.add_argument("--cost", action="store_true", help="time none / distill / l2sp steps, interleaved")
    parser.add_argument("--cost-steps", type=int, default=40)
    parser.add_argument("--cost-repeats", type=int, default=3)
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    if args.summarize:
        return summarize(args)
    common.require(args.shared_data / "stsb" / "dev.csv", "STS-B dev")
    if args.cost:
        return run_cost(args)
    run_sweep(args)


if __name__ == "__main__":
    main()
