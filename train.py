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
import transformers
import yaml
from transformers import AutoConfig, AutoTokenizer, HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

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
    pooling: str = field(default="mean", metadata={"help": "mean | cls | max"})
    normalize_embeddings: bool = field(default=False, metadata={"help": "L2-normalise the model's embeddings."})
    classifier_dropout: float | None = field(default=None, metadata={"help": "Dropout before every head."})
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Truncate training texts to this many tokens (default: the checkpoint's, else 256)."},
    )


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
    sts_eval_file: str | None = field(
        default=None,
        metadata={"help": "A headerless sentence1,sentence2,score CSV (e.g. STS-B dev): the final model's embedding "
                          "cosine Spearman goes into the results as embedding_sts_spearman."},
    )

    def __post_init__(self):
        if isinstance(self.tasks, str):
            self.tasks = json.loads(self.tasks)
        if isinstance(self.show_examples, str):
            self.show_examples = json.loads(self.show_examples)
        if not self.tasks:
            raise DataError("The config has no `tasks`: list at least one task (name, type, data_files, ...).")


PARSER_CLASSES = (ModelArguments, DataArguments, MultiTaskTrainingArguments)


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, MultiTaskTrainingArguments]:
    """`CONFIG.yaml [--field value ...]`: the file's values, overridden by the command line."""
    parser = HfArgumentParser(PARSER_CLASSES)
    if not argv or argv[0].startswith("-"):
        return parser.parse_args_into_dataclasses(args=argv)
    path = Path(argv[0])
    if not path.exists():
        raise DataError(f"Config file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle) if path.suffix in {".yaml", ".yml"} else json.load(handle)
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
    defaults = {key: value for key, value in config.items() if key not in {"tasks", "show_examples"}}
    parser.set_defaults(**{key: _argparse_default(value) for key, value in defaults.items()})
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(
        args=_with_structured(argv[1:], config)
    )
    return model_args, data_args, training_args


def _argparse_default(value: Any) -> Any:
    """Strings, booleans, None, lists and dicts stay as they are; numbers become strings for argparse to convert."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _with_structured(overrides: list[str], config: dict) -> list[str]:
    """Pass the file's `tasks` / `show_examples` as JSON unless the command line overrides them."""
    extra = []
    for key in ("tasks", "show_examples"):
        if key in config and f"--{key}" not in overrides:
            extra += [f"--{key}", json.dumps(config[key])]
    return extra + overrides


def build_model(model_args: ModelArguments, tasks: list[dict]) -> MultiTaskModel:
    """A saved MultiTaskModel whose tasks match, or a new one around an encoder checkpoint."""
    source = resolve_checkpoint(model_args.model_name_or_path)
    config = AutoConfig.from_pretrained(source)
    if config.model_type == "mtl":
        model = MultiTaskModel.from_pretrained(source)
        if model.config.tasks != tasks:
            raise DataError(
                f"{model_args.model_name_or_path} is a MultiTaskModel with tasks {model.config.tasks}, but the config "
                f"asks for {tasks}: give the same tasks and labels, or start from its encoder."
            )
        return model
    return MultiTaskModel.from_encoder(
        model_args.model_name_or_path,
        tasks=tasks,
        pooling=model_args.pooling,
        normalize_embeddings=model_args.normalize_embeddings,
        classifier_dropout=model_args.classifier_dropout,
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
        labels[spec.name] = infer_labels(spec, task_splits["train"])  # the whole train split, before truncation
        check_labels(spec, task_splits, labels[spec.name])
        splits[spec.name] = task_splits
        if is_main:
            sizes = ", ".join(f"{name} {len(ds):,}" for name, ds in task_splits.items())
            logger.info(f"Task {spec.name!r} ({spec.type}): {sizes}; {len(labels[spec.name])} labels")
    return specs, labels, splits


def tokenize_splits(specs, labels, splits, tokenizer, max_length: int, data_args: DataArguments):
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
              "test": data_args.max_predict_samples}
    tokenized: dict[str, dict[str, datasets.Dataset]] = {split: {} for split in limits}
    for spec in specs:
        label2id = {label: i for i, label in enumerate(labels[spec.name])}
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

    is_main = training_args.process_index == 0
    specs, labels, splits = prepare_data(data_args, training_args.seed, is_main)
    tasks = [{"name": s.name, "type": s.type, "labels": labels[s.name]} for s in specs]

    set_seed(training_args.seed)  # before any head is built: heads start the same in every process and run
    model = build_model(model_args, tasks)
    tokenizer = load_tokenizer(model_args.model_name_or_path, model.config.encoder.model_type)
    model.tokenizer = tokenizer
    max_length = model_args.max_seq_length or model.config.max_seq_length or 256
    max_length = min(max_length, model.max_length(tokenizer))
    with training_args.main_process_first(desc="tokenization"):
        data = tokenize_splits(specs, labels, splits, tokenizer, max_length, data_args)

    trainer = MultiTaskTrainer(
        model=model,
        args=training_args,
        train_dataset=MultiTaskDataset(data["train"]) if training_args.do_train else None,
        eval_dataset=data["validation"] or None,
        processing_class=tokenizer,
    )

    results: dict[str, float] = {}
    if training_args.do_train:
        checkpoint = training_args.resume_from_checkpoint
        if checkpoint is None and os.path.isdir(training_args.output_dir):
            checkpoint = get_last_checkpoint(training_args.output_dir)
            if checkpoint is not None:
                logger.info(f"Resuming from the last checkpoint in output_dir: {checkpoint}")
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

    if data_args.sts_eval_file and trainer.is_world_process_zero():
        results.update(evaluate_embeddings(trainer, model, tokenizer, data_args.sts_eval_file))

    card = {"results": results, "data_args": data_args, "base_model": model_args.model_name_or_path}
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="End of training", **card)  # writes the card, then uploads output_dir
    else:
        trainer.create_model_card(**card)
    if trainer.is_world_process_zero():
        if data_args.show_examples:
            show_examples(model, tokenizer, data_args.show_examples)
    return results


def evaluate_embeddings(trainer: MultiTaskTrainer, model: MultiTaskModel, tokenizer, path: str) -> dict[str, float]:
    """Cosine Spearman of the final embeddings on a sentence-pair file; logged and saved as `embedding_*`."""
    from preservation_mtl import read_sts_pairs, sts_spearman

    metrics = {"embedding_sts_spearman": sts_spearman(model.eval(), read_sts_pairs(path), tokenizer=tokenizer)}
    trainer.log_metrics("embedding", metrics)
    trainer.save_metrics("embedding", metrics)
    return metrics


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
            if isinstance(value, dict):
                print(f"    {task}: {value['label']} ({value['score']:.2f})")
            else:
                entities = ", ".join(f"{e['word']} [{e['entity_group']}]" for e in value) or "(none)"
                print(f"    {task}: {entities}")


def cli(argv: list[str] | None = None) -> int:
    """Run `main`; bad data or configuration (a ValueError) ends with exit status 2 and a line naming the culprit."""
    try:
        main(argv)
    except (DataError, FileNotFoundError, ValueError) as error:  # DataError is a ValueError; named for clarity
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
