"""The training questions, answered with experiments: freezing, transfer learning, layer-wise rates, task sampling.

    python bench/experiments.py --all --out docs/results/            # every table in docs/training-guide.md
    python bench/experiments.py --only sampling --seeds 1 2 3          # one experiment

CoNLL-2003 NER and TweetEval sentiment from ../shared/data, all-MiniLM-L6-v2, on CPU-sized subsets (the first
`--train-rows` training rows and `--test-rows` test rows of each task; `--sampling-sentiment-rows` for the
unbalanced mix). Each experiment writes `<out>/<name>.json` (every run) and `<out>/<name>.md` (the table with
mean ± standard deviation over seeds); the sampling experiment also writes a figure of its curves.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import common
import torch
from transformers import AutoConfig, set_seed
from transformers.utils import logging as hf_logging

from configuration_mtl import MultiTaskConfig
from modeling_mtl import MultiTaskModel
from mtl_st.checkpoints import read_max_seq_length, resolve_checkpoint
from trainer_mtl import MultiTaskTrainingArguments

ENCODER = common.ENCODER
# Short CPU runs (a few dozen steps per task): the encoder at 1e-4 and the heads at 1e-3 learn in that budget,
# where the plain 5e-5 for both leaves the NER head predicting "O" everywhere (F1 0.0, measured).
BASE = dict(learning_rate=1e-4, head_learning_rate=1e-3, layerwise_lr_decay=1.0, task_sampling="proportional")


# ----------------------------------------------------------------------------- data and one run
class Data:
    """Tokenized train/validation/test rows of both tasks, shared by every run; `train_big` has `sentiment_rows`
    sentiment train rows (the unbalanced mix)."""

    def __init__(self, shared: Path, train_rows: int, test_rows: int, sentiment_rows: int, max_length: int = 128):
        self.tokenizer = common.load_tokenizer(ENCODER)
        prepared = common.prepare(common.task_entries(shared_data=shared))
        self.tasks = common.model_tasks(prepared)
        data = common.tokenize(prepared, self.tokenizer, max_length,
                               {"train": train_rows, "validation": test_rows // 2, "test": test_rows})
        self.train, self.validation, self.test = data["train"], data["validation"], data["test"]
        more = common.tokenize(prepared, self.tokenizer, max_length, {"train": sentiment_rows}, only=["sentiment"])
        self.train_big = {**self.train, **more["train"]}


def new_model(tasks: list[dict], seed: int, pretrained: bool = True) -> MultiTaskModel:
    """The MiniLM model with fresh heads; `pretrained=False` gives the same architecture with random weights."""
    if pretrained:
        return common.new_model(tasks, seed)
    set_seed(seed)  # before any weight is drawn
    source = resolve_checkpoint(ENCODER)
    encoder = AutoConfig.from_pretrained(source).to_dict()
    encoder.pop("_name_or_path", None)
    return MultiTaskModel(MultiTaskConfig(encoder=encoder, tasks=tasks, max_seq_length=read_max_seq_length(source)))


def freeze_below_top(model: MultiTaskModel, k: int) -> None:
    """Train only the top k encoder layers (and the heads): embeddings, lower layers and the rest frozen."""
    groups = model.layer_groups()
    lower = groups["layers"][: len(groups["layers"]) - k]
    for parameter in groups["embeddings"] + groups["encoder_other"] + [p for layer in lower for p in layer]:
        parameter.requires_grad_(False)


def train_and_test(model, data: Data, train: dict | None, seed: int, args: argparse.Namespace, workdir: Path,
                   eval_steps: int | None = None, **options) -> dict:
    """Train `model` on `train` ({task: rows}; None: test only) with MultiTaskTrainer; test metrics and timing."""
    settings = {**BASE, **options}
    training_args = MultiTaskTrainingArguments(**common.training_settings(
        str(workdir), seed, num_train_epochs=settings.pop("epochs", args.epochs),
        per_device_train_batch_size=args.batch_size, logging_steps=10, use_cpu=True,
        eval_strategy="steps" if eval_steps else "no", eval_steps=eval_steps, **settings))
    trainer, metrics = common.train_and_score(model, training_args, train, data.test, data.tokenizer,
                                              eval_dataset=data.validation if eval_steps else None)
    if train is None:
        return common.scores(metrics)
    if eval_steps:
        trainer.save_state()
    curve = [{k: v for k, v in entry.items() if k.startswith("eval_") or k == "step"}
             for entry in trainer.state.log_history if any(k.startswith("eval_") for k in entry)]
    return {**common.scores(metrics), "steps": trainer.state.global_step, "curve": curve}


def test_only(model, data: Data, args, workdir: Path) -> dict:
    return train_and_test(model, data, None, 0, args, workdir)


# ----------------------------------------------------------------------------- experiments
def exp_freezing(data, seed, args, work) -> dict[str, dict]:
    """Frozen everything, frozen encoder (linear probe) and full fine-tuning, on both tasks."""
    runs = {"frozen everything (no training)": test_only(new_model(data.tasks, seed), data, args, work)}
    runs["frozen encoder, heads trained"] = train_and_test(
        new_model(data.tasks, seed), data, data.train, seed, args, work, freeze_encoder=True)
    runs["full fine-tuning"] = train_and_test(new_model(data.tasks, seed), data, data.train, seed, args, work)
    return runs


def exp_frozen_head(data, seed, args, work) -> dict[str, dict]:
    """Train both tasks, freeze the sentiment head, then continue on NER: how far does sentiment fall?"""
    base = new_model(data.tasks, seed)
    runs = {"after joint training": train_and_test(base, data, data.train, seed, args, work)}
    ner_only = {"ner": data.train["ner"]}
    variants = {
        "NER only, sentiment head frozen, encoder lr 1e-4": dict(train=ner_only),
        "NER only, sentiment head frozen, encoder lr 1e-5": dict(train=ner_only, learning_rate=1e-5),
        "NER only, sentiment head AND encoder frozen": dict(train=ner_only, freeze_encoder=True),
        "NER + sentiment rehearsal, sentiment head frozen": dict(train=data.train),
    }
    for name, options in variants.items():
        model = copy.deepcopy(base)
        train = options.pop("train")
        runs[name] = train_and_test(model, data, train, seed, args, work, frozen_tasks=["sentiment"], **options)
    return runs


def exp_transfer(data, seed, args, work) -> dict[str, dict]:
    """Pretrained against random initialisation; how many top encoder layers to unfreeze."""
    runs = {"random init, all layers trained (encoder lr 1e-4)": train_and_test(
        new_model(data.tasks, seed, pretrained=False), data, data.train, seed, args, work)}
    runs["random init, all layers trained (encoder lr 1e-3)"] = train_and_test(
        new_model(data.tasks, seed, pretrained=False), data, data.train, seed, args, work, learning_rate=1e-3)
    for k in (2, 4):  # 0 (frozen encoder) and 6 (full fine-tuning) are in the freezing experiment
        model = new_model(data.tasks, seed)
        freeze_below_top(model, k)
        runs[f"pretrained, top {k} of 6 layers trained"] = train_and_test(model, data, data.train, seed, args, work)
    return runs


def exp_layerwise(data, seed, args, work) -> dict[str, dict]:
    """Layer-wise rate decay (top layer 1e-4, heads 1e-3), then the head rate against the encoder rate."""
    runs = {}
    for decay in (1.0, 0.9, 0.8, 0.65):
        runs[f"decay {decay}, head lr 1e-3"] = train_and_test(
            new_model(data.tasks, seed), data, data.train, seed, args, work, layerwise_lr_decay=decay)
    for head_lr in (1e-4, 1e-2):
        runs[f"decay 1.0, head lr {head_lr:g}"] = train_and_test(
            new_model(data.tasks, seed), data, data.train, seed, args, work, head_learning_rate=head_lr)
    return runs


def exp_sampling(data, seed, args, work) -> dict[str, dict]:
    """Unbalanced sizes (sentiment 3x NER, as TweetEval's 45k to CoNLL's 14k): which mix?"""
    policies = {"proportional": {}, "temperature T=2": {"sampling_temperature": 2.0},
                "temperature T=5": {"sampling_temperature": 5.0}, "round_robin": {}}
    runs = {}
    for name, options in policies.items():
        runs[name] = train_and_test(new_model(data.tasks, seed), data, data.train_big, seed, args,
                                    work / name.replace(" ", "_").replace("=", ""), eval_steps=args.eval_steps,
                                    task_sampling=name.split()[0], **options)
    return runs


EXPERIMENTS = {"freezing": exp_freezing, "frozen_head": exp_frozen_head, "transfer": exp_transfer,
               "layerwise": exp_layerwise, "sampling": exp_sampling}


# ----------------------------------------------------------------------------- reporting
def table(results: list[dict], columns=("ner_f1", "sentiment_accuracy", "sentiment_macro_f1")) -> str:
    names = [name for name in results[0]["runs"] if results[0]["runs"][name] is not None]
    header = "| setup | CoNLL-2003 entity F1 | TweetEval accuracy | TweetEval macro-F1 | train time (s) |"
    lines = [header, "| --- | --- | --- | --- | --- |"]
    for name in names:
        rows = [r["runs"][name] for r in results]
        cells = [common.mean_std([row[c] for row in rows]) for c in columns]
        seconds = [row["train_seconds"] for row in rows if "train_seconds" in row]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {statistics.mean(seconds):.0f} |" if seconds
                     else f"| {name} | " + " | ".join(cells) + " | – |")
    return "\n".join(lines)


def steps_to_reach(curve: list[dict], key: str, target: float) -> int | None:
    return next((point["step"] for point in curve if point.get(key, -1) >= target), None)


def sampling_extra(results: list[dict], out: Path, args) -> str:
    """Steps until validation NER F1 / sentiment accuracy first reach a target, and a figure of the curves."""
    lines = ["", "Steps until the validation score first reaches the target (mean over seeds; '–' = never):", "",
             f"| policy | NER F1 ≥ {args.ner_target} | sentiment accuracy ≥ {args.sentiment_target} |",
             "| --- | --- | --- |"]
    for name in results[0]["runs"]:
        ner = [steps_to_reach(r["runs"][name]["curve"], "eval_ner_f1", args.ner_target) for r in results]
        sent = [steps_to_reach(r["runs"][name]["curve"], "eval_sentiment_accuracy", args.sentiment_target)
                for r in results]
        fmt = lambda v: f"{statistics.mean(v):.0f}" if v and all(x is not None for x in v) else "–"  # noqa: E731
        lines.append(f"| {name} | {fmt(ner)} | {fmt(sent)} |")
    from mtl_st.evaluation.plot import plot_compare

    series = {name: results[0]["runs"][name]["curve"] for name in results[0]["runs"]}
    figure = plot_compare(series, ["eval_ner_f1", "eval_sentiment_accuracy"], out / "sampling.png",
                          title=f"task sampling (seed {results[0]['seed']}): validation scores by step")
    lines += ["", f"![validation curves per sampling policy]({figure.name})"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--only", nargs="+", choices=sorted(EXPERIMENTS), default=[])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--train-rows", type=int, default=300)
    parser.add_argument("--test-rows", type=int, default=400)
    parser.add_argument("--sampling-sentiment-rows", type=int, default=900)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-steps", type=int, default=15)
    parser.add_argument("--ner-target", type=float, default=0.3)
    parser.add_argument("--sentiment-target", type=float, default=0.55)
    parser.add_argument("--shared-data", type=Path, default=common.SHARED_DATA)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mtl-experiments"))
    parser.add_argument("--out", type=Path, default=common.REPO / "docs" / "results")
    args = parser.parse_args()
    names = sorted(EXPERIMENTS) if args.all else args.only
    if not names:
        parser.error("pass --all or --only NAME ...")
    hf_logging.set_verbosity_error()
    torch.set_num_threads(torch.get_num_threads())
    data = Data(args.shared_data, args.train_rows, args.test_rows, args.sampling_sentiment_rows)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python bench/experiments.py " + " ".join(sys.argv[1:])
    for name in names:
        results = []
        for seed in args.seeds:
            start = time.time()
            runs = EXPERIMENTS[name](data, seed, args, args.workdir / name / str(seed))
            results.append({"seed": seed, "runs": runs})
            print(f"[{name}] seed {seed} done in {time.time() - start:.0f}s", flush=True)
        (args.out / f"{name}.json").write_text(json.dumps({"command": command, "machine": common.machine_line(),
                                                           "args": {k: str(v) for k, v in vars(args).items()},
                                                           "results": results}, indent=1))
        text = (f"Command: `{command}`; seeds {args.seeds}; {args.train_rows} train / {args.test_rows} test rows per "
                f"task (sampling: {args.sampling_sentiment_rows} sentiment rows); {args.epochs:g} epochs, batch "
                f"{args.batch_size}; test metrics, mean ± standard deviation over seeds.\n\n" + table(results))
        if name == "sampling":
            text += "\n" + sampling_extra(results, args.out, args)
        (args.out / f"{name}.md").write_text(text + "\n")
        print(text, flush=True)


if __name__ == "__main__":
    main()
