"""`MultiTaskTrainer`: the Hugging Face `Trainer`, taught to train several tasks on one shared encoder.

It overrides these hooks:

- `get_train_dataloader`: task-homogeneous batches drawn by `MultiTaskBatchSampler` (`task_sampling`).
- `create_optimizer`: layer-wise learning-rate decay, a separate head learning rate, no weight decay for biases
  and norms, frozen parameters left out.
- `compute_loss`: per-task loss weights, exact gradient accumulation, per-task training losses for the logs.
- `_clip_grad_norm`: `max_grad_norm` bounds the gradient *before* task weighting, so a task weight survives
  clipping (a window of one task with weight w is clipped at w x max_grad_norm).
- `evaluate` / `predict`: a dict `{task: dataset}` is run task by task, with metrics `eval_<task>_<metric>`.
- `log`: adds `loss_<task>` (each task's mean training loss since the last log) beside the blended `loss`.
- `embedding_preservation` (`preservation_mtl.py`): `distill` adds a term in `compute_loss`, `l2sp` a pull after
  each optimizer step; both log `encoder_drift`, distill also `loss_preservation`.

Everything else (checkpoints, resume, callbacks, `report_to`, `load_best_model_at_end`, `push_to_hub`) is the
base `Trainer`'s.

Several processes: every rank draws the same global batches (the sampler depends only on the seed and the epoch)
and keeps its own slice of each (`RankSlice`), so in every step all ranks train the same task and DDP averages
gradients of one task. Global batches are always full (a task's short tail is filled with other rows of the same
task), so no rank ever runs out of a batch that another rank has. The loader goes through accelerate's public
`prepare_data_loader` as a one-process loader, so accelerate adds device placement but no sharding of its own.

`get_batch_samples` and `_clip_grad_norm` are not documented hooks; `tests/test_task_types.py` pins the calls
that this class relies on (`_inner_training_loop` passes the first's result to `compute_loss` as
`num_items_in_batch`, and calls the second before each optimizer step) and fails when they change.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import EvalPrediction, PredictionOutput
from transformers.utils import logging

from checks_mtl import check_training_numbers
from preservation_mtl import PRESERVATION_METHODS, EncoderAnchor, check_preservation
from sampling_mtl import SAMPLING_POLICIES, MultiTaskBatchSampler, MultiTaskCollator, MultiTaskDataset
from task_data_mtl import TaskMetrics, get_task_data, merge_windows
from tasks_mtl import get_task_type

logger = logging.get_logger(__name__)

LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers|block|blocks|h)\.(\d+)\.")


@dataclass
class MultiTaskTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the multi-task options (see DESIGN.md's training configuration)."""

    layerwise_lr_decay: float = field(
        default=1.0,
        metadata={"help": "Layer i of L (0 = bottom) gets learning_rate * decay**(L-1-i); embeddings decay**L."},
    )
    head_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of every task head (default: learning_rate)."}
    )
    task_sampling: str = field(
        default="proportional", metadata={"help": f"How batches pick their task: {', '.join(SAMPLING_POLICIES)}."}
    )
    sampling_temperature: float = field(
        default=2.0, metadata={"help": "For task_sampling=temperature: P(task) is proportional to size**(1/T)."}
    )
    freeze_encoder: bool = field(default=False, metadata={"help": "Keep the shared encoder's weights unchanged."})
    frozen_tasks: list[str] | str | None = field(
        default=None, metadata={"help": "Task heads whose weights must not change (names, or a JSON list)."}
    )
    task_loss_weights: dict | str | None = field(
        default=None, metadata={"help": 'Scale each task\'s loss, e.g. {"ner": 2.0} (a JSON object on the command line).'}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Delete the previous run's checkpoints and run settings in output_dir before training "
                          "(transformers 5 removed this field; train.py otherwise resumes only the same run)."},
    )
    embedding_preservation: str = field(
        default="none",
        metadata={"help": f"Keep the embeddings near the starting encoder's: {', '.join(PRESERVATION_METHODS)} "
                          "(see preservation_mtl.py)."},
    )
    preservation_weight: float | None = field(
        default=None, metadata={"help": "Strength of embedding_preservation (default: the method's own)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinned memory needs an accelerator; torch warns on every loader
        self.layerwise_lr_decay = float(self.layerwise_lr_decay)
        if not 0.0 < self.layerwise_lr_decay <= 1.0:
            raise ValueError(f"layerwise_lr_decay must be in (0, 1], got {self.layerwise_lr_decay}.")
        if self.head_learning_rate is not None:
            self.head_learning_rate = float(self.head_learning_rate)
        self.sampling_temperature = float(self.sampling_temperature)
        if self.task_sampling not in SAMPLING_POLICIES:
            raise ValueError(f"task_sampling must be one of {', '.join(SAMPLING_POLICIES)}; got {self.task_sampling!r}.")
        if self.sampling_temperature <= 0:
            raise ValueError(f"sampling_temperature must be positive, got {self.sampling_temperature}.")
        self.frozen_tasks = _parse_json_field("frozen_tasks", self.frozen_tasks, list) or []
        weights = _parse_json_field("task_loss_weights", self.task_loss_weights, dict) or {}
        self.task_loss_weights = {str(name): float(weight) for name, weight in weights.items()}
        check_training_numbers(self)  # before any model loads: a negative rate would train by gradient ascent
        self.preservation_weight = check_preservation(self.embedding_preservation, self.preservation_weight)


def _parse_json_field(name: str, value: Any, kind: type) -> Any:
    """Command-line values arrive as strings: parse JSON (a bare word is a one-item list for list fields)."""
    if value is None or isinstance(value, kind):
        return value
    if isinstance(value, (list, tuple)) and kind is list:
        return list(value)
    try:
        parsed = json.loads(value)
    except (TypeError, json.JSONDecodeError):
        if kind is list and isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        raise ValueError(f"{name} must be a JSON {kind.__name__}, got {value!r}.") from None
    if not isinstance(parsed, kind):
        raise ValueError(f"{name} must be a JSON {kind.__name__}, got {value!r}.")
    return parsed


class RankSlice(torch.utils.data.Sampler[list[int]]):
    """This rank's slice of every global batch: rank r keeps rows [r*b, (r+1)*b) where b = global size / world."""

    def __init__(self, batch_sampler: MultiTaskBatchSampler, rank: int, world_size: int):
        if batch_sampler.batch_size % world_size:
            raise ValueError(f"Global batch size {batch_sampler.batch_size} is not divisible by {world_size} ranks.")
        self.batch_sampler = batch_sampler
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_sampler.batch_size // world_size

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        for batch in self.batch_sampler:
            yield batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]


class _EpochAwareDataset(torch.utils.data.Dataset):
    """The training rows as the train loader sees them, with a `set_epoch` that reaches our batch sampler.

    accelerate's `DataLoaderShard.set_epoch` calls the batch sampler's `set_epoch` only when it can find it; behind
    `skip_first_batches` (resuming mid-epoch) or `BatchSamplerShard` (several processes) it cannot, and falls back
    to the dataset's `set_epoch`. Without this, a resumed epoch > 0 would replay epoch 0's batches.
    """

    def __init__(self, dataset: MultiTaskDataset, batch_sampler):
        self.dataset = dataset
        self.batch_sampler = batch_sampler

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[index]

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


class MultiTaskTrainer(Trainer):
    """A `Trainer` for `MultiTaskModel`.

    Args:
        train_dataset (`MultiTaskDataset`): every task's tokenized training rows.
        eval_dataset (`dict[str, datasets.Dataset]`): one tokenized dataset per task; metrics come back as
            `eval_<task>_<metric>` plus `eval_loss`, the mean of the tasks' losses.
        data_collator: defaults to a `MultiTaskCollator` built from `processing_class` and the model's tasks.
        compute_metrics: defaults to each task type's metrics (`task_data_mtl.TaskMetrics`). A callable of your
            own receives `(EvalPrediction, task)`.
    """

    # compute_loss normalises over the whole accumulated window itself (see `get_batch_samples`).
    loss_is_scaled_for_ga = True
    anchor: EncoderAnchor | None = None  # the frozen starting encoder when `embedding_preservation` is on

    def __init__(self, model=None, args: MultiTaskTrainingArguments | None = None, data_collator=None,
                 train_dataset: MultiTaskDataset | None = None, eval_dataset: dict | None = None,
                 processing_class=None, compute_metrics=None, **kwargs):
        if args is None:
            args = MultiTaskTrainingArguments(output_dir="trainer_output")
        if not isinstance(args, MultiTaskTrainingArguments):
            raise TypeError("MultiTaskTrainer needs MultiTaskTrainingArguments.")
        self.task_types = {task["name"]: task["type"] for task in model.config.tasks}
        self._check_task_names(args)
        apply_freezing(model, args.freeze_encoder, args.frozen_tasks)
        if data_collator is None:
            data_collator = MultiTaskCollator(processing_class, self.task_types)
        if train_dataset is not None:
            train_dataset = self._drop_untrainable_tasks(model, train_dataset)
        self.task_metrics_fn = compute_metrics if compute_metrics is not None else TaskMetrics(model.config.tasks)
        self._metrics_task: str | None = None
        self._task_loss_sums: dict[str, float | torch.Tensor] = defaultdict(float)
        self._task_loss_counts: dict[str, int] = defaultdict(int)
        self._window_weight = 1.0  # the current accumulation window's task weight (see `_clip_grad_norm`)
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class,
                         compute_metrics=self._compute_task_metrics, **kwargs)
        self.anchor = self._build_anchor()

    def _build_anchor(self) -> EncoderAnchor | None:
        """The frozen starting encoder for `embedding_preservation` (taken before any checkpoint is loaded)."""
        if self.args.embedding_preservation == "none":
            return None
        self._preservation_sum: float | torch.Tensor = 0.0
        self._preservation_count = 0
        return EncoderAnchor(self.model, self.args.embedding_preservation, self.args.preservation_weight)

    def _check_task_names(self, args: MultiTaskTrainingArguments) -> None:
        for option, names in (("frozen_tasks", args.frozen_tasks), ("task_loss_weights", args.task_loss_weights)):
            unknown = [name for name in names if name not in self.task_types]
            if unknown:
                raise ValueError(f"{option} names unknown task(s) {unknown}; the model's tasks are {list(self.task_types)}.")

    def _drop_untrainable_tasks(self, model, train_dataset: MultiTaskDataset) -> MultiTaskDataset:
        """A task whose head (if it has one) and encoder are both frozen has nothing to train: leave it out."""
        if any(p.requires_grad for p in model.encoder.parameters()):
            return train_dataset
        frozen_heads = {
            name for name in train_dataset.datasets
            if name not in model.heads or not any(p.requires_grad for p in model.heads[name].parameters())
        }
        if not frozen_heads:
            return train_dataset
        kept = {name: ds for name, ds in train_dataset.datasets.items() if name not in frozen_heads}
        logger.warning(f"Tasks {sorted(frozen_heads)} have a frozen head and a frozen encoder: not trained.")
        if not kept:
            raise ValueError("Every task's head and the encoder are frozen: there is nothing to train.")
        return MultiTaskDataset(kept)

    # ------------------------------------------------------------------ data
    def get_train_dataloader(self) -> DataLoader:
        if not isinstance(self.train_dataset, MultiTaskDataset):
            raise TypeError("MultiTaskTrainer trains on a MultiTaskDataset (see data_mtl.MultiTaskDataset).")
        world_size = self.args.world_size
        batch_sampler = MultiTaskBatchSampler(
            self.train_dataset.task_sizes,
            batch_size=self._train_batch_size * world_size,
            policy=self.args.task_sampling,
            temperature=self.args.sampling_temperature,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            full_batches=world_size > 1,
        )
        sampler = RankSlice(batch_sampler, self.args.process_index, world_size) if world_size > 1 else batch_sampler
        loader = DataLoader(
            _EpochAwareDataset(self.train_dataset, batch_sampler),
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available(),
            persistent_workers=self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0,
        )
        # Our sampler already gives each rank its slice, so accelerate must not shard again: its documented
        # `prepare_data_loader` with one process adds only device placement and epoch handling.
        return prepare_data_loader(loader, device=self.args.device, num_processes=1, process_index=0,
                                   put_on_device=True, even_batches=False)

    # ------------------------------------------------------------------ optimizer
    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """AdamW (or `args.optim`) over `parameter_groups`: layer-wise rates, head rate, no decay for biases/norms."""
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            groups = parameter_groups(
                opt_model,
                learning_rate=self.args.learning_rate,
                layerwise_lr_decay=self.args.layerwise_lr_decay,
                head_learning_rate=self.args.head_learning_rate,
                weight_decay=self.args.weight_decay,
                decay_names=set(self.get_decay_parameter_names(opt_model)),
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        if self.anchor is not None and self.anchor.method == "l2sp" and not getattr(self.optimizer, "_l2sp_hooked", False):
            self.optimizer.register_step_post_hook(self.anchor.l2sp_step_hook())
            self.optimizer._l2sp_hooked = True
        return self.optimizer

    # ------------------------------------------------------------------ loss
    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """Collect the accumulation window and count, per task, its batches and labelled items (over all ranks)."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        counts = torch.zeros(len(self.task_types), 2, dtype=torch.float64, device=device)
        names = list(self.task_types)
        for batch in batch_samples:
            row = names.index(batch["task"])
            counts[row, 0] += 1
            counts[row, 1] += get_task_type(self.task_types[batch["task"]]).num_items(batch["labels"])
        if self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
            counts[:, 0] /= self.args.world_size  # every rank saw the same batches' tasks
        window = {name: (counts[i, 0].item(), counts[i, 1].item()) for i, name in enumerate(names) if counts[i, 0] > 0}
        batches = sum(b for b, _ in window.values())
        weights = self.args.task_loss_weights
        # The window's task weight (its batches' mean), by which `_clip_grad_norm` scales the clipping threshold.
        self._window_weight = sum(b * weights.get(t, 1.0) for t, (b, _) in window.items()) / batches
        return batch_samples, {"window": window, "batches": batches}

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """The task's loss (as its type defines it), weighted by `task_loss_weights` when training.

        Training: with an accumulation window of k batches, a batch of task t contributes
        `mean_loss * items_in_batch / items_of_t_in_window * batches_of_t / k`, so k accumulated batches of one
        task give exactly the gradient of one batch of all their rows, and tasks weigh by their share of batches.
        """
        task = inputs["task"]
        outputs = model(**inputs)
        loss = outputs.loss
        if model.training:
            # Kept on the device (no `.item()` sync every step); read when logging.
            self._task_loss_sums[task] = self._task_loss_sums[task] + loss.detach().double()
            self._task_loss_counts[task] += 1
            if isinstance(num_items_in_batch, dict):
                batches, items = num_items_in_batch["window"][task]
                local_items = get_task_type(self.task_types[task]).num_items(inputs["labels"])
                scale = local_items * self.args.world_size / max(items, 1.0) * batches / num_items_in_batch["batches"]
                loss = loss * scale
            else:
                loss = loss / self.current_gradient_accumulation_steps
            loss = loss * self.args.task_loss_weights.get(task, 1.0)
            if self.anchor is not None and self.anchor.method == "distill":
                loss = loss + self._distill_term(outputs, inputs, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _clip_grad_norm(self, model):
        """Clip at `max_grad_norm` x the window's task weight, so that clipping does not undo `task_loss_weights`.

        Every batch holds one task, so its gradient is that task's alone; clipped at a fixed norm, a task weighted
        0.5 would move the model exactly as far as at 1.0 whenever its gradient is above the threshold. Scaling
        the threshold by the weight makes `max_grad_norm` bound the gradient before weighting. Returns the pre-clip
        norm, as the base method does.
        """
        weight = self._window_weight
        if weight == 1.0:
            return super()._clip_grad_norm(model)
        return self.accelerator.clip_grad_norm_(model.parameters(), self.args.max_grad_norm * weight)

    def _distill_term(self, outputs, inputs: dict, num_items_in_batch) -> torch.Tensor:
        """`preservation_weight` x the distillation loss, scaled like one batch of the accumulation window."""
        student = self.anchor.pooling(outputs.last_hidden_state, inputs["attention_mask"])
        term = self.anchor.distill_loss(student, inputs)
        self._preservation_sum = self._preservation_sum + term.detach().double()
        self._preservation_count += 1
        batches = num_items_in_batch["batches"] if isinstance(num_items_in_batch, dict) else None
        return term * (self.anchor.weight / (batches or self.current_gradient_accumulation_steps))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add each task's mean training loss since the last log (`loss_<task>`) to the training logs."""
        if "loss" in logs and self.task_types:
            names = list(self.task_types)
            sums = torch.stack([torch.as_tensor(self._task_loss_sums[n], dtype=torch.float64, device=self.args.device)
                                .reshape(()) for n in names])
            counts = torch.tensor([self._task_loss_counts[n] for n in names], dtype=torch.float64, device=self.args.device)
            stats = torch.stack([sums, counts], dim=1)
            if self.args.world_size > 1:
                stats = self.accelerator.reduce(stats, reduction="sum")
            for name, (total, count) in zip(names, stats.tolist()):
                if count:
                    logs[f"loss_{name}"] = round(total / count, 4)
            self._task_loss_sums.clear()
            self._task_loss_counts.clear()
            if self.anchor is not None:
                self._log_preservation(logs)
        super().log(logs, start_time)

    # ------------------------------------------------------------------ saving
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """As `Trainer._save`; a `PeftModel` (which saves the adapter and the heads) also gets the `MultiTaskConfig`
        (`config.json`), which `peft_mtl.load_peft_model` rebuilds the base model from."""
        super()._save(output_dir, state_dict)
        model = self.accelerator.unwrap_model(self.model)
        if hasattr(model, "get_base_model") and self.args.should_save:
            model.get_base_model().config.save_pretrained(output_dir or self.args.output_dir)

    def _log_preservation(self, logs: dict[str, float]) -> None:
        """`loss_preservation` (distill: the mean unweighted term since the last log) and `encoder_drift`."""
        if self._preservation_count:
            stats = torch.tensor([float(self._preservation_sum), self._preservation_count], dtype=torch.float64,
                                 device=self.args.device)
            if self.args.world_size > 1:
                stats = self.accelerator.reduce(stats, reduction="sum")
            logs["loss_preservation"] = round(stats[0].item() / max(stats[1].item(), 1.0), 6)
        self._preservation_sum, self._preservation_count = 0.0, 0
        logs["encoder_drift"] = round(self.anchor.drift(), 6)

    # ------------------------------------------------------------------ model card
    def create_model_card(self, model_name: str | None = None, results: dict | None = None, data_args=None,
                          base_model: str | None = None, **kwargs) -> None:
        """Write this project's card (Hub metadata, tasks, training setup, test metrics) to `output_dir`.

        `push_to_hub(**kwargs)` calls this before uploading, so the pushed `README.md` is this card.
        """
        if not self.is_world_process_zero():
            return
        from modelcard_mtl import write_model_card

        model = self.accelerator.unwrap_model(self.model)
        write_model_card(model, self.args.output_dir, training_args=self.args, data_args=data_args,
                         base_model=base_model, results=results)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Evaluate every task of a `{task: dataset}` dict; adds `<prefix>_loss`, the mean of the task losses."""
        datasets = self._task_datasets(eval_dataset if eval_dataset is not None else self.eval_dataset, "evaluate")
        metrics: dict[str, float] = {}
        for name, dataset in datasets.items():
            self._metrics_task = name
            self._metrics_rows = _window_rows(dataset)
            metrics.update(super().evaluate(MultiTaskDataset({name: dataset}), ignore_keys, f"{metric_key_prefix}_{name}"))
        self._metrics_task = None
        losses = [metrics[f"{metric_key_prefix}_{name}_loss"] for name in datasets if f"{metric_key_prefix}_{name}_loss" in metrics]
        if losses:
            metrics[f"{metric_key_prefix}_loss"] = float(np.mean(losses))
        return metrics

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test") -> PredictionOutput:
        """Predict every task of a `{task: dataset}` dict: predictions and label ids come back as dicts per task."""
        datasets = self._task_datasets(test_dataset, "predict")
        predictions, label_ids, metrics = {}, {}, {}
        for name, dataset in datasets.items():
            self._metrics_task = name
            self._metrics_rows = _window_rows(dataset)
            output = super().predict(MultiTaskDataset({name: dataset}), ignore_keys, f"{metric_key_prefix}_{name}")
            predictions[name], label_ids[name] = output.predictions, output.label_ids
            metrics.update(output.metrics)
        self._metrics_task = None
        return PredictionOutput(predictions=predictions, label_ids=label_ids, metrics=metrics)

    def _task_datasets(self, datasets, verb: str) -> dict:
        if not isinstance(datasets, dict):
            raise TypeError(f"MultiTaskTrainer.{verb} takes a dict {{task name: dataset}}; got {type(datasets).__name__}.")
        unknown = [name for name in datasets if name not in self.task_types]
        if unknown:
            raise ValueError(f"No task called {unknown}; the model's tasks are {list(self.task_types)}.")
        return datasets

    def _compute_task_metrics(self, prediction: EvalPrediction) -> dict[str, float]:
        rows = getattr(self, "_metrics_rows", None)
        if rows is not None and len(rows) == len(prediction.label_ids):  # long rows were windows: score whole rows
            predictions = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
            merged, label_ids = merge_windows(np.asarray(predictions), np.asarray(prediction.label_ids), rows)
            prediction = EvalPrediction(predictions=merged, label_ids=label_ids)
        return self.task_metrics_fn(prediction, self._metrics_task)


def _window_rows(dataset) -> list[int] | None:
    """The original row of each window of a token task's dataset when some row has several windows, else None."""
    if "row" not in getattr(dataset, "column_names", ()):
        return None
    rows = dataset["row"]
    return list(rows) if len(set(rows)) < len(rows) else None


def apply_freezing(model, freeze_encoder: bool, frozen_tasks: list[str]) -> None:
    """Turn off gradients for the encoder and/or the named heads (the optimizer then leaves them out)."""
    if freeze_encoder:
        for parameter in model.encoder.parameters():
            parameter.requires_grad_(False)
    for name in frozen_tasks:
        if name not in model.heads:
            raise ValueError(f"frozen_tasks names {name!r}, which has no head to freeze (a sentence_similarity task).")
        for parameter in model.heads[name].parameters():
            parameter.requires_grad_(False)


def parameter_groups(model, learning_rate: float, layerwise_lr_decay: float = 1.0,
                     head_learning_rate: float | None = None, weight_decay: float = 0.0,
                     decay_names: set[str] | None = None) -> list[dict]:
    """Optimizer parameter groups for a `MultiTaskModel` (frozen parameters left out).

    `decay_names` is the set of parameter names that get weight decay (as `Trainer.get_decay_parameter_names`
    returns it; default: all); every other parameter (biases, norms) gets none. Rates: encoder layer i of L (0 = bottom) gets
    `learning_rate * decay**(L-1-i)`; embeddings (and position tables such as DeBERTa's relative embeddings)
    `learning_rate * decay**L`; any other encoder parameter (e.g. a final norm) the top layer's rate; every head
    `head_learning_rate` (default `learning_rate`). Each group carries a readable `name`. The top layer's groups
    come first, so the `learning_rate` that the Trainer logs (group 0's) is the configured rate's schedule.
    """
    if decay_names is None:
        decay_names = {name for name, _ in model.named_parameters()}
    head_lr = learning_rate if head_learning_rate is None else head_learning_rate
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    num_layers = encoder_num_layers(model)
    buckets: dict[tuple[str, float, float], list] = {}
    for name, parameter in named:
        bare = _strip_wrappers(name)
        if bare.startswith("heads."):
            key, lr = "heads", head_lr
        elif bare.startswith("encoder."):
            match = LAYER_INDEX.search(bare[len("encoder."):])
            if match:
                depth = num_layers - 1 - int(match.group(1))
                key = f"encoder.layer.{match.group(1)}"
            elif "embed" in bare:
                depth, key = num_layers, "encoder.embeddings"
            else:
                depth, key = 0, "encoder.other"
            lr = learning_rate * layerwise_lr_decay**depth
        else:
            key, lr = "other", learning_rate
        decay = weight_decay if name in decay_names else 0.0
        buckets.setdefault((key, lr, decay), []).append(parameter)
    groups = [
        {"params": params, "lr": lr, "weight_decay": decay, "name": f"{key}{'' if decay else '.no_decay'}"}
        for (key, lr, decay), params in buckets.items()
    ]
    top = f"encoder.layer.{num_layers - 1}"
    return sorted(groups, key=lambda group: not group["name"].startswith(top))


def encoder_num_layers(model) -> int:
    """The number of numbered transformer layers in the encoder (`model` may be wrapped: DDP, FSDP, compile)."""
    indices = set()
    for name, _ in model.named_parameters():
        bare = _strip_wrappers(name)
        if bare.startswith("encoder.") and (match := LAYER_INDEX.search(bare[len("encoder."):])):
            indices.add(int(match.group(1)))
    return max(indices) + 1 if indices else 0


_WRAPPER_SEGMENT = re.compile(r"(?:^|(?<=\.))(?:module|_orig_mod|_fsdp_wrapped_module|_checkpoint_wrapped_module)\.")


# PEFT renames what it wraps: `base_model.model.` in front, `.base_layer` inside a LoRA-wrapped layer, and
# `.modules_to_save.<adapter>` / `.original_module` inside a head named in `modules_to_save` (only the trainable
# copy keeps requires_grad). Stripped, a parameter has the plain model's name, so it lands in the same group.
_PEFT_PREFIX = re.compile(r"^(?:base_model\.model\.)+")
_PEFT_SEGMENT = re.compile(r"\.(?:base_layer|original_module|modules_to_save\.[^.]+)(?=\.)")


def _strip_wrappers(name: str) -> str:
    """The plain model's name of a parameter: wrapper segments (`module.`, `_orig_mod.`, `_fsdp_wrapped_module.`,
    ...) and PEFT's (`base_model.model.`, `.base_layer`, `.modules_to_save.default`, ...) dropped."""
    name = _PEFT_PREFIX.sub("", _WRAPPER_SEGMENT.sub("", name))
    return _PEFT_SEGMENT.sub("", name)


def task_metrics(task_type: str, predictions: np.ndarray, label_ids: np.ndarray, labels: list[str] | None,
                 **task_fields: Any) -> dict[str, float]:
    """The built-in metrics of one task of type `task_type` (see `task_data_mtl`), as fractions."""
    task = {"type": task_type, "labels": labels, **task_fields}
    return get_task_data(task_type).metrics(task, np.asarray(predictions), np.asarray(label_ids))


__all__ = ["MultiTaskTrainer", "MultiTaskTrainingArguments", "parameter_groups", "task_metrics", "apply_freezing", "RankSlice"]
