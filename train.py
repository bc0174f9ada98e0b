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
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import transformers
import yaml
from transformers import HfArgumentParser, set_seed

from mtl_st.data.arguments import TaskDataArguments
from mtl_st.data.prepare import model_tasks, prepare_data, tokenize_splits
from mtl_st.data.sampling import MultiTaskDataset
from mtl_st.data.task_data import TaskMetrics
from mtl_st.errors import DataError
from mtl_st.evaluation.examples import show_examples, similarity_before_training
from mtl_st.training.build import build_model, load_tokenizer
from mtl_st.training.checks import check_metric_for_best_model, check_run_numbers
from mtl_st.training.cross_validation import cross_validate
from mtl_st.training.runguard import (
    RunSettingsCallback,
    disk_full_message,
    is_disk_full,
    prepare_output_dir,
    remove_partial_checkpoints,
    run_settings,
)
from tasks_mtl import get_task_type
from trainer_mtl import MultiTaskTrainer, MultiTaskTrainingArguments

logger = logging.getLogger("train")  # this module's name, also when it runs as a script


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
    hyperparameter_search: dict | str | None = field(
        default=None,
        metadata={"help": "Search the settings instead of one run (see mtl_st/search/config.py): a JSON object; "
                          "--hyperparameter_search.<key> value sets one key."},
    )

    def __post_init__(self):
        if isinstance(self.tasks, str):
            self.tasks = json.loads(self.tasks)
        if isinstance(self.show_examples, str):
            self.show_examples = json.loads(self.show_examples)
        if isinstance(self.hyperparameter_search, str):
            try:
                self.hyperparameter_search = json.loads(self.hyperparameter_search)
            except json.JSONDecodeError as error:
                raise DataError(f"hyperparameter_search must be a JSON object on the command line: {error.msg}.") from None
        if not self.tasks:
            raise DataError("The config has no `tasks`: list at least one task (name, type, data_files, ...).")
        if self.cross_validation_folds is not None and int(self.cross_validation_folds) < 2:
            raise DataError(f"cross_validation_folds must be at least 2, got {self.cross_validation_folds}.")


PARSER_CLASSES = (ModelArguments, DataArguments, MultiTaskTrainingArguments)
STRUCTURED = ("tasks", "show_examples", "peft", "hyperparameter_search")  # YAML lists/mappings, passed as JSON
SEARCH_KEY = "--hyperparameter_search."


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, MultiTaskTrainingArguments]:
    """`CONFIG.yaml [--field value ...]`: the file's values, overridden by the command line.

    `--hyperparameter_search.<key> value` sets one key of the search block. The effective configuration (the file's
    mapping with the command line's values) is kept as `data_args.source_config`, for `best_config.yaml`."""
    argv, search_overrides = _split_search_overrides(list(argv))
    parser = _Parser(PARSER_CLASSES)
    if not argv or argv[0].startswith("-"):
        return _with_search_overrides(_parse(parser, argv), search_overrides, {})
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
    return _with_search_overrides(_parse(parser, _with_structured(argv[1:], config)), search_overrides,
                                  _effective_config(config, argv[1:]))


def _split_search_overrides(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Take `--hyperparameter_search.<key> value` pairs out of argv (values read as YAML)."""
    rest, overrides = [], {}
    while argv:
        item = argv.pop(0)
        if not item.startswith(SEARCH_KEY):
            rest.append(item)
            continue
        key, _, value = item[len(SEARCH_KEY):].partition("=")
        if not value:
            if not argv:
                raise DataError(f"{item} needs a value (see `python train.py --help`).")
            value = argv.pop(0)
        overrides[key] = yaml.safe_load(value)
    return rest, overrides


def _with_search_overrides(parsed: tuple, overrides: dict[str, Any], source: dict) -> tuple:
    from mtl_st.search.config import merge_overrides

    model_args, data_args, training_args = parsed
    if overrides:
        data_args.hyperparameter_search = merge_overrides(data_args.hyperparameter_search, overrides)
    data_args.source_config = {**source, **({"hyperparameter_search": data_args.hyperparameter_search}
                                            if data_args.hyperparameter_search else {})}
    return model_args, data_args, training_args


def _effective_config(config: dict, overrides: list[str]) -> dict:
    """The file's mapping with `--field value` overrides applied (values read as YAML, as the file's are)."""
    effective, items = dict(config), list(overrides)
    while items:
        item = items.pop(0)
        if not item.startswith("--"):
            continue
        key, _, value = item[2:].partition("=")
        if not value and items and not items[0].startswith("--"):
            value = items.pop(0)
        effective[key] = yaml.safe_load(value) if value else True
    return effective


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


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, training_args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    logging.getLogger("mtl_st").setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)

    check_run_numbers(model_args, data_args)
    is_main = training_args.process_index == 0
    specs, labels, splits = prepare_data(data_args.tasks, training_args.seed, is_main)
    evaluated = splits if not data_args.cross_validation_folds else {  # every trained task gets a validation fold
        name: {"validation"} if "train" in task_splits else task_splits for name, task_splits in splits.items()}
    check_metric_for_best_model(training_args, specs, evaluated)
    if data_args.hyperparameter_search is not None:
        from mtl_st.search.runner import run_search

        def train_run(m_args, d_args, t_args, run_splits, callbacks):
            return run(m_args, d_args, t_args, specs, labels, run_splits, show=False, callbacks=callbacks)

        return run_search(data_args.hyperparameter_search, {}, PARSER_CLASSES, model_args, data_args, training_args,
                          specs, splits, train_run, getattr(data_args, "source_config", {}),
                          run_settings(model_args, data_args, training_args))
    if data_args.cross_validation_folds:
        summary = cross_validate(
            lambda fold_args, fold_splits: run(model_args, data_args, fold_args, specs, labels, fold_splits, show=False),
            training_args, splits, int(data_args.cross_validation_folds))
        return {key: entry["mean"] for key, entry in summary["metrics"].items()}
    return run(model_args, data_args, training_args, specs, labels, splits)


def run(model_args: ModelArguments, data_args: DataArguments, training_args: MultiTaskTrainingArguments,
        specs: list[TaskDataArguments], labels: dict, splits: dict, show: bool = True,
        callbacks: list | None = None) -> dict[str, float]:
    """Train, evaluate and predict as `training_args` says, on prepared splits; returns every metric of the run.
    `callbacks` are extra `TrainerCallback`s (a search's pruning callback).

    Before any model loads, `output_dir` is checked for writing and locked for the run's lifetime, and a checkpoint
    of this same run is picked to resume from (`mtl_st.training.runguard.prepare_output_dir`).
    """
    settings = run_settings(model_args, data_args, training_args)
    lock, checkpoint = prepare_output_dir(training_args, settings)
    try:
        return _train_evaluate_predict(model_args, data_args, training_args, specs, labels, splits, show,
                                       checkpoint, settings, callbacks or [])
    finally:
        if lock is not None:
            lock.release()


def _train_evaluate_predict(model_args: ModelArguments, data_args: DataArguments,
                            training_args: MultiTaskTrainingArguments, specs: list[TaskDataArguments], labels: dict,
                            splits: dict, show: bool, checkpoint: str | None, settings: dict,
                            callbacks: list) -> dict[str, float]:
    """The body of `run`, once `output_dir` is locked and the checkpoint to resume from (if any) is chosen."""
    tasks = model_tasks(specs, labels)
    set_seed(training_args.seed)  # before any head is built: heads start the same in every process and run
    model = build_model(model_args, tasks)
    base_model = model
    if model_args.peft:
        from mtl_st.training.adapters import apply_peft

        model = apply_peft(model, model_args.peft)
        if training_args.process_index == 0:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            logger.info(f"peft {model_args.peft}: {trainable:,} trainable parameters (adapter + heads)")
    tokenizer = load_tokenizer(model_args.model_name_or_path, model.config.encoder.model_type)
    base_model.tokenizer = tokenizer
    max_length = model_args.max_seq_length or model.config.max_seq_length or 256
    max_length = min(max_length, base_model.max_length(tokenizer))
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
              "test": data_args.max_predict_samples}
    with training_args.main_process_first(desc="tokenization"):
        data = tokenize_splits(specs, labels, splits, tokenizer, max_length, limits)

    trainer = MultiTaskTrainer(
        model=model,
        args=training_args,
        train_dataset=MultiTaskDataset(data["train"]) if training_args.do_train else None,
        eval_dataset=data["validation"] or None,
        processing_class=tokenizer,
        compute_metrics=TaskMetrics(model.config.tasks, {spec.name: spec.metric for spec in specs if spec.metric}),
        callbacks=[RunSettingsCallback(settings), *callbacks],
    )

    results: dict[str, float] = {}
    monitors = {name: ds for name, ds in data["validation"].items()
                if not get_task_type(model.config.get_task(name)["type"]).has_head}  # scored on the embeddings
    if training_args.do_train and monitors and training_args.process_index == 0:
        # The embeddings' quality before any training step, beside the final `eval_<task>_spearman` (computed
        # with `encode`, not `trainer.evaluate`, so that no log entry precedes training).
        results.update(similarity_before_training(base_model, tokenizer, splits, list(monitors),
                                                  data_args.max_eval_samples))
    if training_args.do_train:
        train_result = train_or_explain(trainer, checkpoint, model)
        trainer.save_model()
        if data_args.show_examples and trainer.is_world_process_zero():
            # The demo and the server open on these sentences (mtl_st.demo.app.EXAMPLES_FILE).
            Path(training_args.output_dir, "show_examples.json").write_text(
                json.dumps(data_args.show_examples, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
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


def train_or_explain(trainer: MultiTaskTrainer, checkpoint: str | None, model) -> Any:
    """`trainer.train`; a disk that fills up during a checkpoint write becomes one line naming `output_dir` and the
    space a checkpoint needs, with the half-written checkpoint removed (the last complete one stays to resume from)."""
    try:
        return trainer.train(resume_from_checkpoint=checkpoint)
    except (OSError, RuntimeError) as error:
        if not is_disk_full(error):
            raise
        output_dir = trainer.args.output_dir
        remove_partial_checkpoints(output_dir)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        needed = weights * (1 if trainer.args.save_only_model else 3)  # weights, plus Adam's two moments
        raise DataError(disk_full_message(output_dir, needed)) from None


def world_size() -> int:
    """Processes in this run, as torch.distributed counts them (1 without it)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


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
