"""`MultiTaskTrainer`: the Hugging Face `Trainer`, taught to train several tasks on one shared encoder.

It uses the hooks of transformers' "Customize the Trainer" guide, a callback-free optimizer hook, and the data
loader's own parts (sampler, dataset, collator):

- `get_train_dataloader`: task-homogeneous batches drawn by `MultiTaskBatchSampler` (`task_sampling`), each index
  marked with its optimizer step's accumulation window (`mtl_st.data.sampling.AccumulationWindows`).
- `create_optimizer`: layer-wise learning-rate decay, a separate head learning rate, no weight decay for biases
  and norms, frozen parameters left out (`mtl_st.training.param_groups`, from the model's declared layers).
- `compute_loss`: exact gradient accumulation from the window marks (`loss_is_scaled_for_ga = True`), per-task loss
  weights, label smoothing, per-task training losses for the logs.
- Task weights survive gradient clipping: a batch of task t is scaled by w_t / w̄ (w̄: its window's mean weight), and
  an optimizer step pre-hook multiplies the clipped gradient by w̄; since clip(w·g, w·c) = w·clip(g, c), a window of
  one task with weight w is clipped at w x max_grad_norm, so `max_grad_norm` bounds the gradient before weighting.
- `evaluate` / `predict`: a dict `{task: dataset}` is run task by task, with metrics `eval_<task>_<metric>`.
- `log`: adds `loss_<task>` (each task's mean training loss since the last log) beside the blended `loss`.
- `save_model`: a `PeftModel` also gets its `MultiTaskConfig` (`config.json`) beside the adapter.
- `embedding_preservation` (`mtl_st.training.preservation`): `distill` adds a term in `compute_loss`, `l2sp` a pull
  after each optimizer step; both log `encoder_drift`, distill also `loss_preservation`.

Everything else (checkpoints, resume, callbacks, `report_to`, `load_best_model_at_end`, `push_to_hub`) is the
base `Trainer`'s.

Several processes: every rank draws the same global batches (the sampler depends only on the seed and the epoch)
and keeps its own slice of each (`RankSlice`), so in every step all ranks train the same task and DDP averages
gradients of one task. Global batches are always full (a task's short tail is filled with other rows of the same
task), so no rank ever runs out of a batch that another rank has. The loader goes through accelerate's public
`prepare_data_loader` as a one-process loader, so accelerate adds device placement but no sharding of its own.
"""

from __future__ import annotations

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

from mtl_st.data.sampling import (
    SAMPLING_POLICIES,
    AccumulationWindows,
    MultiTaskBatchSampler,
    MultiTaskCollator,
    MultiTaskDataset,
    RankSlice,
    TrainingRows,
)
from mtl_st.data.task_data import TaskMetrics, get_task_data
from mtl_st.data.windows import merge_windows, window_rows
from mtl_st.errors import TrainingDiverged
from mtl_st.training.adapters import save_base_config
from mtl_st.training.checks import check_training_numbers, parse_json_field
from mtl_st.training.param_groups import apply_freezing, parameter_groups
from mtl_st.training.preservation import PRESERVATION_METHODS, EncoderAnchor, check_preservation
from tasks_mtl import get_task_type

logger = logging.get_logger(__name__)


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
        # transformers fills an unset `greater_is_better` from the metric's name (higher-is-better unless it ends in
        # "loss"); `checks.check_metric_for_best_model` corrects that for lower-is-better metrics such as mse.
        self._greater_is_better_given = self.greater_is_better is not None
        super().__post_init__()
        if self.fp16 and not torch.cuda.is_available():
            logger.warning("fp16: true needs a CUDA device; on this CPU the run trains in fp32 (bf16: true is the "
                           "CPU's mixed precision).")
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
        self.frozen_tasks = parse_json_field("frozen_tasks", self.frozen_tasks, list) or []
        weights = parse_json_field("task_loss_weights", self.task_loss_weights, dict) or {}
        self.task_loss_weights = {str(name): float(weight) for name, weight in weights.items()}
        check_training_numbers(self)  # before any model loads: a negative rate would train by gradient ascent
        self.preservation_weight = check_preservation(self.embedding_preservation, self.preservation_weight)


class MultiTaskTrainer(Trainer):
    """A `Trainer` for `MultiTaskModel`.

    Args:
        train_dataset (`MultiTaskDataset`): every task's tokenized training rows.
        eval_dataset (`dict[str, datasets.Dataset]`): one tokenized dataset per task; metrics come back as
            `eval_<task>_<metric>` plus `eval_loss`, the mean of the tasks' losses.
        data_collator: defaults to a `MultiTaskCollator` built from `processing_class` and the model's tasks.
        compute_metrics: defaults to each task type's metrics (`mtl_st.data.task_data.TaskMetrics`). A callable of
            your own receives `(EvalPrediction, task)`.
    """

    # compute_loss normalises over the whole accumulation window itself (from the batches' window marks).
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
        self._window_weight = 1.0  # the current accumulation window's mean task weight (see `_unweight_gradients`)
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
            raise TypeError("MultiTaskTrainer trains on a MultiTaskDataset (see mtl_st.data.sampling).")
        world_size = self.args.world_size
        batch_sampler = MultiTaskBatchSampler(
            self.train_dataset.task_sizes,
            batch_size=self._train_batch_size * world_size,
            policy=self.args.task_sampling,
            temperature=self.args.sampling_temperature,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            full_batches=world_size > 1,
        )
        windows = AccumulationWindows(batch_sampler, self.args.gradient_accumulation_steps, self.train_dataset,
                                      self._item_counts(self.train_dataset))
        sampler = RankSlice(windows, self.args.process_index, world_size) if world_size > 1 else windows
        loader = DataLoader(
            TrainingRows(self.train_dataset, batch_sampler),
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

    def _item_counts(self, dataset: MultiTaskDataset) -> np.ndarray:
        """Every training row's labelled items (`TaskData.item_counts`), in the dataset's global index order."""
        counts = []
        for name, rows in dataset.datasets.items():
            data = get_task_data(self.task_types[name])
            counts += data.item_counts(rows["labels"]) if "labels" in rows.column_names else [1] * len(rows)
        return np.asarray(counts, dtype=np.int64)

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
        if not getattr(self.optimizer, "_mtl_hooked", False):
            self.optimizer.register_step_pre_hook(self._unweight_gradients)
            if self.anchor is not None and self.anchor.method == "l2sp":
                self.optimizer.register_step_post_hook(self.anchor.l2sp_step_hook())
            self.optimizer._mtl_hooked = True
        return self.optimizer

    def _unweight_gradients(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Optimizer step pre-hook: multiply the (clipped) gradients by the window's mean task weight w̄.

        `compute_loss` scales a batch of task t by w_t / w̄, so the accumulated gradient is G_w / w̄ and the Trainer
        clips that at `max_grad_norm`; times w̄ it is clip(G_w, w̄ x max_grad_norm). A task weight therefore survives
        clipping, and with every weight 1 nothing changes.
        """
        weight = self._window_weight
        if weight == 1.0:
            return
        with torch.no_grad():
            for group in optimizer.param_groups:
                for parameter in group["params"]:
                    if parameter.grad is not None:
                        parameter.grad.mul_(weight)

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """The task's loss (as its type defines it), weighted by `task_loss_weights` when training.

        Training batches carry their accumulation window (`window`: per task, its batches and labelled items over
        all ranks) and their own labelled items (`num_items`). With a window of k batches, a batch of task t
        contributes `mean_loss * items_in_batch / items_of_t_in_window * batches_of_t / k`, so k accumulated batches
        of one task give exactly the gradient of one batch of all their rows, and tasks weigh by their share of
        batches. The Trainer's own `num_items_in_batch` (one count over every task's labels) is not used.
        """
        inputs = dict(inputs)
        window, local_items = inputs.pop("window", None), inputs.pop("num_items", None)
        task = inputs["task"]
        smoothing = self.args.label_smoothing_factor if get_task_type(self.task_types[task]).needs_labels else 0.0
        if smoothing and "labels" in inputs:
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            outputs.loss = self.accelerator.unwrap_model(model).task_loss(task, outputs.logits, labels,
                                                                          label_smoothing=smoothing)
        else:
            outputs = model(**inputs)
        loss = outputs.loss
        if model.training and not torch.isfinite(loss.detach()).all():
            # Stop before the optimizer takes the step (and before a checkpoint of broken weights can be written).
            raise TrainingDiverged(f"task {task!r}: the training loss is {loss.item()} at step "
                                   f"{self.state.global_step + 1}; lower the learning rate (or this task's loss "
                                   "weight), or check its labels.")
        if model.training:
            # Kept on the device (no `.item()` sync every step); read when logging.
            self._task_loss_sums[task] = self._task_loss_sums[task] + loss.detach().double()
            self._task_loss_counts[task] += 1
            weights = self.args.task_loss_weights
            if window is not None:
                batches, items = window.tasks[task]
                loss = loss * (local_items * self.args.world_size / max(items, 1) * batches / window.batches)
                self._window_weight = window.weight(weights)
            else:
                loss = loss / self.current_gradient_accumulation_steps
                self._window_weight = weights.get(task, 1.0)
            loss = loss * (weights.get(task, 1.0) / self._window_weight if self._window_weight else 0.0)
            if self.anchor is not None and self.anchor.method == "distill" and outputs.last_hidden_state is not None:
                loss = loss + self._distill_term(outputs, inputs, window)  # (a ranking batch has no one token pass)
        return (loss, outputs) if return_outputs else loss

    def _distill_term(self, outputs, inputs: dict, window) -> torch.Tensor:
        """`preservation_weight` x the distillation loss, scaled like one batch of the accumulation window (and, as the
        task losses, divided by the window's mean task weight, which the step pre-hook multiplies back)."""
        student = self.anchor.pooling(outputs.last_hidden_state, inputs["attention_mask"])
        term = self.anchor.distill_loss(student, inputs)
        self._preservation_sum = self._preservation_sum + term.detach().double()
        self._preservation_count += 1
        batches = window.batches if window is not None else self.current_gradient_accumulation_steps
        return term * (self.anchor.weight / batches / (self._window_weight or 1.0))

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
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """As `Trainer.save_model` (also called for every checkpoint); a `PeftModel` (which saves the adapter and the
        heads) also gets its `MultiTaskConfig` (`config.json`), which `load_peft_model` rebuilds the base model from."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            save_base_config(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)

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
        from mtl_st.modelcard import write_model_card

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
            self._metrics_rows = window_rows(dataset)
            metrics.update(super().evaluate(MultiTaskDataset({name: dataset}), ignore_keys, f"{metric_key_prefix}_{name}"))
        self._metrics_task = None
        losses = [metrics[f"{metric_key_prefix}_{name}_loss"] for name in datasets if f"{metric_key_prefix}_{name}_loss" in metrics]
        if losses:
            metrics[f"{metric_key_prefix}_loss"] = float(np.mean(losses))
        return metrics

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        """As `Trainer.prediction_step`; a task type whose evaluation rows have no loss (retrieval: single texts to
        embed) reports none."""
        task = inputs.get("task")
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if task is not None and not get_task_type(self.task_types[task]).eval_loss:
            loss = None
        return loss, logits, labels

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test") -> PredictionOutput:
        """Predict every task of a `{task: dataset}` dict: predictions and label ids come back as dicts per task."""
        datasets = self._task_datasets(test_dataset, "predict")
        predictions, label_ids, metrics = {}, {}, {}
        for name, dataset in datasets.items():
            self._metrics_task = name
            self._metrics_rows = window_rows(dataset)
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


def task_metrics(task_type: str, predictions: np.ndarray, label_ids: np.ndarray, labels: list[str] | None,
                 **task_fields: Any) -> dict[str, float]:
    """The built-in metrics of one task of type `task_type` (see `task_data_mtl`), as fractions."""
    task = {"type": task_type, "labels": labels, **task_fields}
    return get_task_data(task_type).metrics(task, np.asarray(predictions), np.asarray(label_ids))


__all__ = ["MultiTaskTrainer", "MultiTaskTrainingArguments", "task_metrics"]
