"""Train a multi-task sentence transformer from one YAML (or JSON) file.

    python train.py configs/quickstart.yaml [--any_field value ...]

Every field of `ModelArguments`, `DataArguments` and `MultiTaskTrainingArguments` (so every standard
`TrainingArguments` field) can be set in the file and overridden on the command line. The run writes the final
model, its tokenizer, a model card `README.md` and `all_results.json` (`train_*`, `eval_*`, `test_*`) to
`output_dir`. It works under `accelerate launch` with several processes.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import transformers
import yaml
from safetensors import SafetensorError
from transformers import AutoConfig, AutoTokenizer, HfArgumentParser, set_seed

from checks_mtl import check_metric_for_best_model, check_run_numbers, weights_error
from data_mtl import (
    DataError,
    MultiTaskDataset,
    TaskDataArguments,
    check_labels,
    infer_labels,
    load_task_splits,
    take_first,
    tokenize_task,
)
from modeling_mtl import MultiTaskModel, resolve_checkpoint
from runguard_mtl import RunSettingsCallback, prepare_output_dir, run_settings
from task_data_mtl import TaskMetrics
from trainer_mtl import MultiTaskTrainer, MultiTaskTrainingArguments

logger = logging.getLogger("train")

# Byte-level BPE tokenizers need a prefix space to take pre-split words (as in transformers' run_ner.py).
ADD_PREFIX_SPACE = {"bloom", "gpt2", "roberta", "deberta", "longformer", "bart"}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="sentence-transformers/all-MiniLM-L6-v2",
        metadata={"help": "Any encoder checkpoint (folder or Hub id) or a saved MultiTaskModel."},
    )
    pooling: str | None = field(
        default=None, metadata={"help": "mean | cls | max (default: a saved MultiTaskModel's own, else mean)."}
    )
    normalize_embeddings: bool | None = field(
        default=None,
        metadata={"help": "L2-normalise the model's embeddings (default: a saved MultiTaskModel's own, else false)."},
    )
    classifier_dropout: float | None = field(default=None, metadata={"help": "Dropout before every head."})
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Truncate training texts to this many tokens (default: the checkpoint's, else 256)."},
    )
    peft: dict | str | None = field(
        default=None,
        metadata={"help": "Train a peft adapter on the encoder, heads in full: e.g. {method: lora, r: 8, "
                          "lora_alpha: 16, target_modules: [query, value]} (JSON on the command line); needs peft."},
    )

    def __post_init__(self):
        if isinstance(self.peft, str):
            self.peft = json.loads(self.peft)


@dataclass
class DataArguments:
    tasks: list | str | None = field(
        default=None, metadata={"help": "The task list (YAML list; a JSON list on the command line)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "First N training rows of each task."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "First N validation rows of each task."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "First N test rows of each task."})
    show_examples: list | str | None = field(
        default=None, metadata={"help": "Sentences to embed and predict with the final model, printed at the end."}
    )
    cross_validation_folds: int | None = field(
        default=None,
        metadata={"help": "K: train K runs on K seeded folds of each task's train split, each fold's held-out part "
                          "as validation; writes output_dir/cv_results.json. The test split is left untouched."},
    )

    def __post_init__(self):
        if isinstance(self.tasks, str):
            self.tasks = json.loads(self.tasks)
        if isinstance(self.show_examples, str):
            self.show_examples = json.loads(self.show_examples)
        if not self.tasks:
            raise DataError("The config has no `tasks`: list at least one task (name, type, data_files, ...).")
        if self.cross_validation_folds is not None and int(self.cross_validation_folds) < 2:
            raise DataError(f"cross_validation_folds must be at least 2, got {self.cross_validation_folds}.")


PARSER_CLASSES = (ModelArguments, DataArguments, MultiTaskTrainingArguments)
STRUCTURED = ("tasks", "show_examples", "peft")  # YAML lists/mappings, passed to the parser as JSON


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, MultiTaskTrainingArguments]:
    """`CONFIG.yaml [--field value ...]`: the file's values, overridden by the command line."""
    parser = _Parser(PARSER_CLASSES)
    if not argv or argv[0].startswith("-"):
        return _parse(parser, argv)
    path = Path(argv[0])
    if not path.exists():
        raise DataError(f"Config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle) if path.suffix in {".yaml", ".yml"} else json.load(handle)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        raise DataError(f"{path}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {error.problem}.") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}.") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 (byte offset {error.start}); convert it to UTF-8.") from None
    if not isinstance(config, dict):
        raise DataError(f"{path} must hold a mapping of fields, got {type(config).__name__}.")
    known = {f.name for cls in PARSER_CLASSES for f in dataclasses.fields(cls) if f.init}
    for key in config:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise DataError(f"{path}: unknown field {key!r}.{hint}")
    # File values become the parser's defaults; argparse converts string defaults with the field's type, so
    # `3e-5` (a string to YAML) becomes a float, and the command line overrides any of them.
    defaults = {key: value for key, value in config.items() if key not in STRUCTURED}
    parser.set_defaults(**{key: _argparse_default(value) for key, value in defaults.items()})
    return _parse(parser, _with_structured(argv[1:], config))


class _Parser(HfArgumentParser):
    """argparse prints its whole usage (over 100 lines here) before a bad value: raise one `DataError` line instead."""

    def error(self, message: str):
        raise DataError(f"{message} (see `python train.py --help`).")


def _parse(parser: HfArgumentParser, argv: list[str]):
    """The argument dataclasses; their own checks (`__post_init__`) reject bad values: that is bad input."""
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except DataError:
        raise
    except ValueError as error:
        raise DataError(str(error)) from error


def _argparse_default(value: Any) -> Any:
    """Strings, booleans, None, lists and dicts stay as they are; numbers become strings for argparse to convert."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _with_structured(overrides: list[str], config: dict) -> list[str]:
    """Pass the file's `tasks` / `show_examples` as JSON unless the command line overrides them."""
    extra = []
    for key in STRUCTURED:
        if key in config and f"--{key}" not in overrides:
            extra += [f"--{key}", json.dumps(config[key])]
    return extra + overrides


def build_model(model_args: ModelArguments, tasks: list[dict]) -> MultiTaskModel:
    """A saved MultiTaskModel whose tasks match, or a new one around an encoder checkpoint.

    A saved model keeps its pooling, normalisation and sequence limit unless the config sets them.
    """
    source = resolve_checkpoint(model_args.model_name_or_path)
    try:
        return _build_model(model_args, tasks, source)
    except SafetensorError as error:
        raise weights_error(source, error) from None


def _build_model(model_args: ModelArguments, tasks: list[dict], source: str) -> MultiTaskModel:
    """`build_model` from the resolved checkpoint folder `source`."""
    config = AutoConfig.from_pretrained(source)
    if config.model_type == "mtl":
        model = MultiTaskModel.from_pretrained(source)
        if model.config.tasks != tasks:
            raise DataError(
                f"{model_args.model_name_or_path} is a MultiTaskModel with tasks {model.config.tasks}, but the config "
                f"asks for {tasks}: give the same tasks and labels, or start from its encoder."
            )
        for field_name in ("pooling", "normalize_embeddings", "max_seq_length"):
            value = getattr(model_args, field_name)
            if value is not None and value != getattr(model.config, field_name):
                logger.warning(f"{field_name}: {value!r} from the config replaces the saved model's "
                               f"{getattr(model.config, field_name)!r}.")
                setattr(model.config, field_name, value)
        model.pooling.mode = model.config.pooling
        return model
    return MultiTaskModel.from_encoder(
        model_args.model_name_or_path,
        tasks=tasks,
        pooling=model_args.pooling or "mean",
        normalize_embeddings=bool(model_args.normalize_embeddings),
        classifier_dropout=model_args.classifier_dropout,
        max_seq_length=model_args.max_seq_length,
    )


def load_tokenizer(model_name_or_path: str, encoder_type: str):
    """The checkpoint's tokenizer; byte-level BPE encoders (`encoder_type`) get a prefix space for split words."""
    kwargs = {"add_prefix_space": True} if encoder_type in ADD_PREFIX_SPACE else {}
    return AutoTokenizer.from_pretrained(resolve_checkpoint(model_name_or_path), **kwargs)


def prepare_data(data_args: DataArguments, seed: int, is_main: bool):
    """Read, check and split every task. Returns (task specs, label lists, raw splits per task)."""
    specs = [TaskDataArguments.from_dict(task) for task in data_args.tasks]
    labels, splits = {}, {}
    for spec in specs:
        task_splits = load_task_splits(spec, seed=seed)
        # The whole train split, before truncation (an eval-only task has none: its type has no label names).
        labels[spec.name] = infer_labels(spec, task_splits["train"]) if "train" in task_splits else spec.labels
        check_labels(spec, task_splits, labels[spec.name])
        splits[spec.name] = task_splits
        if is_main:
            sizes = ", ".join(f"{name} {len(ds):,}" for name, ds in task_splits.items())
            label_text = f"{len(labels[spec.name])} labels" if labels[spec.name] is not None else "numeric labels"
            logger.info(f"Task {spec.name!r} ({spec.type}): {sizes}; {label_text}")
    return specs, labels, splits


def tokenize_splits(specs, labels, splits, tokenizer, max_length: int, data_args: DataArguments):
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
              "test": data_args.max_predict_samples}
    tokenized: dict[str, dict[str, datasets.Dataset]] = {split: {} for split in limits}
    for spec in specs:
        label2id = {label: i for i, label in enumerate(labels[spec.name] or [])}
        for split, limit in limits.items():
            if split in splits[spec.name]:
                rows = take_first(splits[spec.name][split], limit)
                tokenized[split][spec.name] = tokenize_task(rows, spec, tokenizer, label2id, max_length)
    return tokenized


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, training_args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    logging.getLogger("data_mtl").setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)

    check_run_numbers(model_args, data_args)
    is_main = training_args.process_index == 0
    specs, labels, splits = prepare_data(data_args, training_args.seed, is_main)
    evaluated = splits if not data_args.cross_validation_folds else {  # every trained task gets a validation fold
        name: {"validation"} if "train" in task_splits else task_splits for name, task_splits in splits.items()}
    check_metric_for_best_model(training_args, specs, evaluated)
    if data_args.cross_validation_folds:
        return cross_validate(model_args, data_args, training_args, specs, labels, splits)
    return run(model_args, data_args, training_args, specs, labels, splits)


def run(model_args: ModelArguments, data_args: DataArguments, training_args: MultiTaskTrainingArguments,
        specs: list[TaskDataArguments], labels: dict, splits: dict, show: bool = True) -> dict[str, float]:
    """Train, evaluate and predict as `training_args` says, on prepared splits; returns every metric of the run.

    Before any model loads, `output_dir` is checked for writing and locked for the run's lifetime, and a checkpoint
    of this same run is picked to resume from (`runguard_mtl.prepare_output_dir`).
    """
    settings = run_settings(model_args, data_args, training_args)
    lock, checkpoint = prepare_output_dir(training_args, settings)
    try:
        return _train_evaluate_predict(model_args, data_args, training_args, specs, labels, splits, show,
                                       checkpoint, settings)
    finally:
        if lock is not None:
            lock.release()


def _train_evaluate_predict(model_args: ModelArguments, data_args: DataArguments,
                            training_args: MultiTaskTrainingArguments, specs: list[TaskDataArguments], labels: dict,
                            splits: dict, show: bool, checkpoint: str | None, settings: dict) -> dict[str, float]:
    """The body of `run`, once `output_dir` is locked and the checkpoint to resume from (if any) is chosen."""
    tasks = [spec.model_task(labels[spec.name]) for spec in specs]
    set_seed(training_args.seed)  # before any head is built: heads start the same in every process and run
    model = build_model(model_args, tasks)
    base_model = model
    if model_args.peft:
        from peft_mtl import apply_peft

        model = apply_peft(model, model_args.peft)
        if training_args.process_index == 0:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            logger.info(f"peft {model_args.peft}: {trainable:,} trainable parameters (adapter + heads)")
    tokenizer = load_tokenizer(model_args.model_name_or_path, model.config.encoder.model_type)
    base_model.tokenizer = tokenizer
    max_length = model_args.max_seq_length or model.config.max_seq_length or 256
    max_length = min(max_length, base_model.max_length(tokenizer))
    with training_args.main_process_first(desc="tokenization"):
        data = tokenize_splits(specs, labels, splits, tokenizer, max_length, data_args)

    trainer = MultiTaskTrainer(
        model=model,
        args=training_args,
        train_dataset=MultiTaskDataset(data["train"]) if training_args.do_train else None,
        eval_dataset=data["validation"] or None,
        processing_class=tokenizer,
        compute_metrics=TaskMetrics(model.config.tasks, {spec.name: spec.metric for spec in specs if spec.metric}),
        callbacks=[RunSettingsCallback(settings)],
    )

    results: dict[str, float] = {}
    monitors = {name: ds for name, ds in data["validation"].items()
                if model.config.get_task(name)["type"] == "sentence_similarity"}
    if training_args.do_train and monitors and training_args.process_index == 0:
        # The embeddings' quality before any training step, beside the final `eval_<task>_spearman` (computed
        # with `encode`, not `trainer.evaluate`, so that no log entry precedes training).
        results.update(similarity_before_training(base_model, tokenizer, splits, monitors,
                                                  data_args.max_eval_samples))
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()
        metrics = dict(train_result.metrics)
        metrics["train_samples"] = sum(len(ds) for ds in trainer.train_dataset.datasets.values())
        metrics["train_world_size"] = world_size()
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        results.update(metrics)
    if training_args.do_eval and data["validation"]:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        results.update(metrics)
    if training_args.do_predict and data["test"]:
        metrics = trainer.predict(data["test"]).metrics
        trainer.log_metrics("test", metrics)
        trainer.save_metrics("test", metrics)
        results.update(metrics)

    card = {"results": results, "data_args": data_args, "base_model": model_args.model_name_or_path}
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="End of training", **card)  # writes the card, then uploads output_dir
    else:
        trainer.create_model_card(**card)
    if trainer.is_world_process_zero() and show:
        for name in monitors:
            start, end = results.get(f"start_{name}_spearman"), results.get(f"eval_{name}_spearman")
            if start is not None and end is not None:
                print(f"\nEmbedding similarity ({name}, Spearman of cosines): {start:.4f} before training, "
                      f"{end:.4f} after")
        if data_args.show_examples:
            show_examples(base_model, tokenizer, data_args.show_examples)
    return results


def similarity_before_training(model: MultiTaskModel, tokenizer, splits: dict, monitors: dict,
                               limit: int | None = None) -> dict[str, float]:
    """`start_<task>_spearman` / `_pearson` of every similarity monitor: the cosine of `encode`d pairs, as the task's
    metric scores them."""
    from task_data_mtl import get_task_data

    results = {}
    for name in monitors:
        rows = take_first(splits[name]["validation"], limit)
        first = model.encode(rows["text"], tokenizer=tokenizer, normalize=True)
        second = model.encode(rows["text_pair"], tokenizer=tokenizer, normalize=True)
        metrics = get_task_data("sentence_similarity").metrics({}, (first * second).sum(-1), np.asarray(rows["label"]))
        results.update({f"start_{name}_{key}": value for key, value in metrics.items()})
    return results


def cross_validate(model_args: ModelArguments, data_args: DataArguments, training_args: MultiTaskTrainingArguments,
                   specs: list[TaskDataArguments], labels: dict, splits: dict) -> dict[str, float]:
    """K runs, one per fold, in `output_dir/fold-<k>`; writes `output_dir/cv_results.json` and returns the means.

    Each task's train split is shuffled with the run's seed and cut into K folds; run k trains on the other folds and
    evaluates on fold k (as its validation split). Test splits are not used; eval-only tasks keep their validation.
    """
    folds = int(data_args.cross_validation_folds)
    per_fold: list[dict[str, float]] = []
    for fold in range(folds):
        fold_splits = {name: fold_split(task_splits, fold, folds, training_args.seed)
                       for name, task_splits in splits.items()}
        fold_args = dataclasses.replace(training_args, output_dir=os.path.join(training_args.output_dir, f"fold-{fold}"),
                                        do_eval=True, do_predict=False)
        logger.warning(f"Cross-validation: fold {fold + 1} of {folds} in {fold_args.output_dir}")
        per_fold.append(run(model_args, data_args, fold_args, specs, labels, fold_splits, show=False))
    timing = ("_runtime", "_samples_per_second", "_steps_per_second", "_model_preparation_time")
    keys = sorted({key for results in per_fold for key in results if key.startswith("eval_") and not key.endswith(timing)})
    summary = {
        "folds": folds,
        "seed": training_args.seed,
        "metrics": {
            key: {"per_fold": [results.get(key) for results in per_fold],
                  "mean": float(np.mean([results[key] for results in per_fold if key in results])),
                  "std": float(np.std([results[key] for results in per_fold if key in results], ddof=1))}
            for key in keys
        },
    }
    if training_args.process_index == 0:
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, "cv_results.json"), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
        print(f"\nCross-validation over {folds} folds (mean ± std):")
        for key, entry in summary["metrics"].items():
            print(f"  {key:<36} {entry['mean']:.4f} ± {entry['std']:.4f}")
    return {key: entry["mean"] for key, entry in summary["metrics"].items()}


def fold_split(task_splits: datasets.DatasetDict, fold: int, folds: int, seed: int) -> datasets.DatasetDict:
    """Fold `fold` of `folds` of a task's train split as validation, the rest as train (no test split)."""
    if "train" not in task_splits:
        return datasets.DatasetDict({k: v for k, v in task_splits.items() if k == "validation"})
    train = task_splits["train"]
    if len(train) < folds:
        raise DataError(f"cross_validation_folds is {folds}, but a train split has only {len(train)} rows.")
    parts = np.array_split(np.random.default_rng(seed).permutation(len(train)), folds)
    held_out = np.sort(parts[fold])
    kept = np.sort(np.concatenate([part for k, part in enumerate(parts) if k != fold]))
    return datasets.DatasetDict({"train": train.select(kept), "validation": train.select(held_out)})


def world_size() -> int:
    """Processes in this run, as torch.distributed counts them (1 without it)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def show_examples(model: MultiTaskModel, tokenizer, sentences: list[str]) -> None:
    """Print the embeddings' cosine similarities and every task's predictions for a few sentences."""
    from pipeline_mtl import MultiTaskPipeline

    embeddings = model.encode(sentences, tokenizer=tokenizer, normalize=True)
    print(f"\nEmbeddings: {embeddings.shape[0]} x {embeddings.shape[1]}; cosine similarities:")
    similarity = embeddings @ embeddings.T
    for i, sentence in enumerate(sentences):
        print(f"  [{i}] " + " ".join(f"{similarity[i, j]:+.3f}" for j in range(len(sentences))) + f"  {sentence}")
    print("\nPredictions:")
    pipe = MultiTaskPipeline(model=model.eval(), tokenizer=tokenizer)
    for sentence, answer in zip(sentences, pipe(sentences)):
        print(f"  {sentence}")
        for task, value in answer.items():
            print(f"    {task}: {describe_answer(value)}")


def describe_answer(value) -> str:
    """One line for a pipeline answer of any task type."""
    if isinstance(value, dict) and "label" in value:
        return f"{value['label']} ({value['score']:.2f})"
    if isinstance(value, dict):
        return f"{value['score']:.3f}"
    if value and "entity_group" in value[0]:
        return ", ".join(f"{e['word']} [{e['entity_group']}]" for e in value)
    return ", ".join(f"{e['label']} ({e['score']:.2f})" for e in value) or "(none)"


def cli(argv: list[str] | None = None) -> int:
    """Run `main`; bad data or configuration (a `DataError`) ends with exit status 2 and one line naming the culprit.

    Any other exception is a bug (ours or a library's) and keeps its traceback.
    """
    try:
        main(argv)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
