"""Model cards (`README.md` with Hub metadata) for saved multi-task models.

`save_pretrained` writes a card when the folder has none (where this project is installed); `train.py` rewrites it
with the run's configuration and test metrics. Paths are written relative (or as bare names), never as this machine's
absolute paths.
"""

from __future__ import annotations

import json
import os
from pathlib import PurePath
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

from tasks_mtl import get_task_type

TRAINING_FIELDS = (
    "learning_rate", "layerwise_lr_decay", "head_learning_rate", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "weight_decay", "warmup_steps",
    "lr_scheduler_type", "task_sampling", "sampling_temperature", "freeze_encoder", "frozen_tasks",
    "task_loss_weights", "seed",
)


def portable(path: Any) -> str:
    """A path as it may appear on the Hub: relative paths and ids as given, absolute paths by their last part."""
    text = str(path)
    return PurePath(text).name if os.path.isabs(text) else text


def _front_matter(config, base_model: str | None, results: dict, model_name: str, dataset_ids: list[str]) -> str:
    """The Hub metadata, written by `huggingface_hub.ModelCardData` (its `model-index` from `EvalResult`s)."""
    task_types = [get_task_type(task["type"]) for task in config.tasks]
    eval_results = []
    for task, task_type in zip(config.tasks, task_types):
        for key in task_type.metric_names:
            value = results.get(f"test_{task['name']}_{key}")
            if value is None:
                continue
            eval_results.append(EvalResult(
                task_type=task_type.pipeline_tag, task_name=task["name"], dataset_type=task["name"],
                dataset_name=task["name"], dataset_split="test", metric_type=key, metric_value=round(float(value), 4),
                metric_name=f"Test {key}",
            ))
    tags = ["multi-task", "sentence-embeddings", "custom_code"] + sorted({t.pipeline_tag for t in task_types})
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=task_types[0].pipeline_tag if task_types else "feature-extraction",
        base_model=portable(base_model) if base_model else None,
        tags=tags,
        datasets=dataset_ids or None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    return f"---\n{card_data.to_yaml()}\n---"


def model_card_text(config, model_name: str = "multi-task-model", base_model: str | None = None,
                    results: dict | None = None, training: dict | None = None, data_files: dict | None = None,
                    dataset_ids: list[str] | None = None) -> str:
    """The card's full text: Hub front matter, then tasks, training setup, metrics, usage and limitations."""
    results = results or {}
    parts = [_front_matter(config, base_model, results, model_name, dataset_ids or [])]
    parts.append(f"# {model_name}\n\nA multi-task sentence transformer: one shared encoder"
                 f"{f' (from `{portable(base_model)}`)' if base_model else ''} gives {config.pooling}-pooled sentence "
                 f"embeddings{' (L2-normalised)' if config.normalize_embeddings else ''}, and one head per task "
                 "reads them (token tasks read the token states; similarity tasks compare two sentences' "
                 "embeddings). One "                 "encoder pass serves every head.")
    rows = ["| task | type | labels |", "| --- | --- | --- |"]
    rows += [get_task_type(task["type"]).card_line(task) for task in config.tasks]
    parts.append("## Tasks\n\n" + "\n".join(rows))
    if results:
        metric_rows = ["| metric | value |", "| --- | --- |"]
        metric_rows += [f"| {key} | {value:.4f} |" for key, value in sorted(results.items())
                        if key.startswith(("eval_", "test_")) and isinstance(value, float)]
        parts.append("## Results\n\n" + "\n".join(metric_rows))
    if training or data_files:
        text = "## Training configuration\n\n"
        if data_files:
            text += "Data:\n\n" + "\n".join(
                f"- {name}: " + ", ".join(f"{split} `{portable(path)}`" for split, path in files.items())
                for name, files in data_files.items()) + "\n\n"
        if training:
            text += "```yaml\n" + "\n".join(f"{key}: {json.dumps(value)}" for key, value in training.items()) + "\n```"
        parts.append(text.rstrip())
    first_task = config.tasks[0]["name"] if config.tasks else "task"
    parts.append(
        "## Usage\n\n"
        "Embeddings and logits with `AutoModel` (the model's code is in this repository):\n\n"
        "```python\nfrom transformers import AutoModel\n\n"
        "model = AutoModel.from_pretrained(\"MODEL\", trust_remote_code=True)\n"
        "embeddings = model.encode([\"The weather is lovely today.\", \"It's so sunny outside!\"])\n```\n\n"
        "Every task at once with the pipeline:\n\n"
        "```python\nfrom transformers import pipeline\n\n"
        "pipe = pipeline(model=\"MODEL\", trust_remote_code=True)\n"
        f"pipe(\"Heading to Paris with Emma\")  # {{'{first_task}': ...}}\n```\n\n"
        "Embeddings only, with sentence-transformers (after `model.save_sentence_transformer(\"st-model\")`):\n\n"
        "```python\nfrom sentence_transformers import SentenceTransformer\n\n"
        "SentenceTransformer(\"st-model\").encode([\"The weather is lovely today.\"])\n```"
    )
    parts.append(
        "## Limitations\n\n"
        "- The heads only know the labels above, in the domain of their training data; expect lower scores on "
        "other text (e.g. news-trained NER on tweets).\n"
        f"- Texts are truncated to {config.max_seq_length or 'the tokenizer limit of'} tokens: the pipeline "
        "returns no entities past that point and the embedding covers the kept part only.\n"
        "- Token-task answers are per word as the tokenizer splits words (first sub-token's label); training "
        "data is CoNLL-style pre-split words.\n"
        "- Fine-tuning the shared encoder for the tasks moves the embeddings away from the base model's: "
        "similarity scores are not the base model's."
    )
    return "\n\n".join(parts) + "\n"


def write_model_card(model, save_directory: str | os.PathLike, training_args=None, data_args=None,
                     base_model: str | None = None, results: dict | None = None, overwrite: bool = True) -> str:
    """Write `README.md` into `save_directory`; returns its path."""
    path = os.path.join(save_directory, "README.md")
    if not overwrite and os.path.exists(path):
        return path
    training = None
    if training_args is not None:
        training = {key: getattr(training_args, key) for key in TRAINING_FIELDS if hasattr(training_args, key)}
        training = {k: (v if isinstance(v, (int, float, str, bool, list, dict)) or v is None else str(v))
                    for k, v in training.items()}
    data_files, dataset_ids = {}, []
    for task in (getattr(data_args, "tasks", None) or []):
        if task.get("data_files"):
            files = task["data_files"] if isinstance(task["data_files"], dict) else {"train": task["data_files"]}
            data_files[task["name"]] = files
        if task.get("dataset_name") and not os.path.exists(str(task["dataset_name"])):
            dataset_ids.append(str(task["dataset_name"]))
    base_model = base_model or getattr(model.config, "base_model_name_or_path", None)
    name = portable(getattr(training_args, "hub_model_id", None) or os.path.abspath(save_directory))
    text = model_card_text(model.config, model_name=name, base_model=base_model, results=results,
                           training=training, data_files=data_files, dataset_ids=dataset_ids)
    os.makedirs(save_directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path
