"""Multi-task batches: the tasks' datasets side by side, task-homogeneous batch sampling and padding.

Sampling policies (`MultiTaskBatchSampler`). Every batch holds examples of a single task. An epoch has as many
batches as it takes to see every example of every task once (`sum(ceil(size / batch_size))`):

- `proportional`: each task's examples are shuffled and cut into batches, and the batches of all tasks are
  shuffled together. Every example is seen exactly once per epoch, and the task mix follows the number of
  batches of each task.
- `temperature`: at every step a task is drawn with probability proportional to `size ** (1 / temperature)`
  (temperature 1 is proportional, larger temperatures flatten the mix towards uniform). Within a task,
  batches come from a shuffled permutation that is reshuffled and restarted when it runs out, so small tasks
  are cycled and large tasks sub-sampled.
- `round_robin`: the tasks take turns, one batch each, cycling (with a reshuffle) through tasks that run out.

The sequence of batches depends only on `seed` and the epoch (`set_epoch`), never on the process, so every
rank of a distributed run sees the same sequence of tasks; `full_batches=True` makes every global batch full, so
each rank can take its slice of every batch (`RankSlice`).

Exact gradient accumulation: `AccumulationWindows` groups the global batches into the optimizer steps' windows (as
the Trainer's loop does: `gradient_accumulation_steps` at a time from the start of the epoch) and marks every index
with its window's per-task counts of batches and labelled items, over all ranks. `TrainingRows` hands the mark to
the collator, which puts it in the batch as `window`; `MultiTaskTrainer.compute_loss` weighs each batch with it.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from mtl_st.data.task_data import collate_task, get_task_data

SAMPLING_POLICIES = ("proportional", "temperature", "round_robin")


def _offsets(task_sizes: dict[str, int]) -> dict[str, int]:
    offsets, total = {}, 0
    for name, size in task_sizes.items():
        offsets[name] = total
        total += size
    return offsets


class MultiTaskDataset(torch.utils.data.Dataset):
    """The tokenized datasets of several tasks, concatenated in the given task order.

    Global index = `offsets[task] + local index`. Items are the task's row dict plus `"task": name`.
    """

    def __init__(self, datasets: dict[str, Dataset]):
        if not datasets:
            raise ValueError("MultiTaskDataset needs at least one task.")
        self.datasets = dict(datasets)
        self.task_names: list[str] = list(self.datasets)
        self.task_sizes: dict[str, int] = {name: len(ds) for name, ds in self.datasets.items()}
        self.offsets: dict[str, int] = _offsets(self.task_sizes)
        self._starts = [self.offsets[name] for name in self.task_names]
        self._length = sum(self.task_sizes.values())

    def __len__(self) -> int:
        return self._length

    def _locate(self, index: int) -> tuple[str, int]:
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for a MultiTaskDataset of {self._length} rows.")
        position = bisect.bisect_right(self._starts, index) - 1
        # bisect_right lands on the last task starting at or before `index`: never an empty task, whose
        # start is shared with the next one.
        name = self.task_names[position]
        return name, index - self.offsets[name]

    def task_of(self, global_idx: int) -> str:
        """The name of the task that owns `global_idx`."""
        return self._locate(int(global_idx))[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, local_index = self._locate(int(index))
        return {**self.datasets[name][local_index], "task": name}


class MultiTaskCollator:
    """Pads a batch of single-task features into tensors, as the task's type does it (`task_data_mtl`).

    Inside, transformers' `DataCollatorWithPadding` pads the inputs (and, for `sentence_similarity`, the second
    sentence's `pair_*` inputs on their own) and `DataCollatorForTokenClassification` pads token labels with -100.
    The returned dict holds those tensors plus `"task": <name>`; a training batch (from `TrainingRows`) also carries
    `window` (its `AccumulationWindow`) and `num_items` (its labelled items). Features without `labels`
    (prediction) are fine; features of different tasks in one batch raise a `ValueError`.
    """

    def __init__(self, tokenizer: Any, task_types: dict[str, str], pad_to_multiple_of: int | None = None):
        for name, task_type in task_types.items():
            get_task_data(task_type)  # an unknown type is an error now, not at the first batch
        self.tokenizer = tokenizer
        self.task_types = dict(task_types)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("Cannot collate an empty batch.")
        tasks = [feature.get("task") for feature in features]
        if None in tasks:
            raise ValueError("Every feature needs a 'task' key (as MultiTaskDataset items have).")
        if len(set(tasks)) > 1:
            raise ValueError(f"A batch must hold one task only, got features of tasks {sorted(set(tasks))}.")
        task = tasks[0]
        if task not in self.task_types:
            raise ValueError(f"Unknown task {task!r}; the collator knows {list(self.task_types)}.")
        with_labels = ["labels" in feature for feature in features]
        if any(with_labels) and not all(with_labels):
            raise ValueError(f"task {task!r}: some features of the batch have 'labels' and some do not.")
        window = features[0].get("window")
        rows = [{k: v for k, v in feature.items() if k not in ("task", "window")} for feature in features]
        batch = collate_task(self.task_types[task], rows, self.tokenizer, self.pad_to_multiple_of)
        batch["task"] = task
        if window is not None:
            batch["window"] = window
            batch["num_items"] = sum(get_task_data(self.task_types[task]).item_counts([r["labels"] for r in rows]))
        return batch


class MultiTaskBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields task-homogeneous batches of global indices (tasks concatenated in `task_sizes` order).

    See the module docstring for the policies. An epoch has `sum(ceil(size / batch_size))` batches under every
    policy. The batches depend only on `seed + epoch` (a `torch.Generator`), so iterating twice in one epoch
    gives the same batches (resuming from a checkpoint replays them) and `set_epoch` reshuffles.

    Args:
        task_sizes: task name -> number of examples (all > 0), in the order of the `MultiTaskDataset`.
        batch_size: examples per batch.
        policy: `proportional`, `temperature` or `round_robin`.
        temperature: for `temperature`: P(task) ∝ size ** (1 / temperature).
        seed: base seed; the generator of epoch `e` is seeded with `seed + e`.
        full_batches: fill a task's short last batch with other examples of the same task, so that every batch
            has exactly `batch_size` indices (needed with accelerate's `split_batches=True`).
        shuffle: shuffle the examples of each task (and, for `proportional`, the order of the batches). With
            `shuffle=False` and `proportional`, batches come in order, task after task (for evaluation); the
            other policies still draw the task sequence at random but keep each task's examples in order.
    """

    def __init__(
        self,
        task_sizes: dict[str, int],
        batch_size: int,
        policy: str = "proportional",
        temperature: float = 2.0,
        seed: int = 42,
        full_batches: bool = False,
        shuffle: bool = True,
    ):
        if policy not in SAMPLING_POLICIES:
            raise ValueError(f"Unknown sampling policy {policy!r}; valid policies are {list(SAMPLING_POLICIES)}.")
        if not task_sizes:
            raise ValueError("MultiTaskBatchSampler needs at least one task.")
        for name, size in task_sizes.items():
            if not isinstance(size, (int, np.integer)) or size <= 0:
                raise ValueError(f"task {name!r} has {size!r} examples; every task needs at least one.")
        if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if policy == "temperature" and not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        self.task_sizes = {name: int(size) for name, size in task_sizes.items()}
        self.task_names = list(self.task_sizes)
        self.offsets = _offsets(self.task_sizes)
        self.batch_size = int(batch_size)
        self.policy = policy
        self.temperature = float(temperature)
        self.seed = seed
        self.full_batches = full_batches
        self.shuffle = shuffle
        self.epoch = 0
        self.batches_per_task = {name: math.ceil(size / self.batch_size) for name, size in self.task_sizes.items()}

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch: the batches of epoch `e` are drawn with seed `seed + e`."""
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self.batches_per_task.values())

    def task_probabilities(self) -> dict[str, float]:
        """The probability of drawing each task at a step under the `temperature` policy."""
        weights = {name: size ** (1.0 / self.temperature) for name, size in self.task_sizes.items()}
        total = sum(weights.values())
        return {name: weight / total for name, weight in weights.items()}

    def _task_batches(self, name: str, generator: torch.Generator) -> list[list[int]]:
        """One pass over a task's examples, cut into batches of global indices."""
        size, offset = self.task_sizes[name], self.offsets[name]
        order = torch.randperm(size, generator=generator) if self.shuffle else torch.arange(size)
        indices = (order + offset).tolist()
        if self.full_batches:
            # Repeat the pass as needed: a short tail is filled with this task's first examples of the pass.
            needed = self.batches_per_task[name] * self.batch_size
            indices = (indices * math.ceil(needed / size))[:needed]
        return [indices[start : start + self.batch_size] for start in range(0, len(indices), self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.policy == "proportional":
            yield from self._proportional(generator)
        else:
            yield from self._cycling(generator)

    def _proportional(self, generator: torch.Generator) -> Iterator[list[int]]:
        batches = [batch for name in self.task_names for batch in self._task_batches(name, generator)]
        order = torch.randperm(len(batches), generator=generator).tolist() if self.shuffle else range(len(batches))
        for position in order:
            yield batches[position]

    def _task_sequence(self, generator: torch.Generator) -> list[int]:
        """The task (as a position in `task_names`) of every step of the epoch."""
        steps = len(self)
        if self.policy == "round_robin":
            return [step % len(self.task_names) for step in range(steps)]
        probabilities = torch.tensor(list(self.task_probabilities().values()), dtype=torch.float64)
        return torch.multinomial(probabilities, steps, replacement=True, generator=generator).tolist()

    def _cycling(self, generator: torch.Generator) -> Iterator[list[int]]:
        sequence = self._task_sequence(generator)
        pending: dict[str, list[list[int]]] = {name: [] for name in self.task_names}
        for position in sequence:
            name = self.task_names[position]
            if not pending[name]:
                pending[name] = self._task_batches(name, generator)
            yield pending[name].pop(0)


@dataclass(frozen=True)
class AccumulationWindow:
    """The batches of one optimizer step, all ranks together: `tasks[name] = (batches, labelled items)`."""

    tasks: dict[str, tuple[int, int]]
    batches: int

    def weight(self, task_weights: dict[str, float]) -> float:
        """The window's mean task weight over its batches (what `max_grad_norm` is scaled by)."""
        return sum(batches * task_weights.get(name, 1.0) for name, (batches, _) in self.tasks.items()) / self.batches


class WindowIndex(int):
    """A row index that knows the accumulation window of its batch (an `int` for every dataset and sampler)."""

    window: AccumulationWindow

    def __new__(cls, index: int, window: AccumulationWindow):
        value = super().__new__(cls, index)
        value.window = window
        return value

    def __reduce__(self):  # for DataLoader worker processes
        return WindowIndex, (int(self), self.window)


class AccumulationWindows(torch.utils.data.Sampler[list[int]]):
    """The global batches of `batch_sampler`, every index marked with its optimizer step's `AccumulationWindow`.

    Windows are `accumulation_steps` consecutive batches from the start of the epoch (the last one shorter), as the
    Trainer's loop takes them; a resumed epoch skips whole windows, so the marks stay aligned. `items[i]` is row i's
    labelled items (see `TaskData.item_counts`).
    """

    def __init__(self, batch_sampler: MultiTaskBatchSampler, accumulation_steps: int, dataset: MultiTaskDataset,
                 items: np.ndarray):
        self.batch_sampler = batch_sampler
        self.accumulation_steps = int(accumulation_steps)
        self.dataset = dataset
        self.items = items
        self.batch_size = batch_sampler.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[int]]:
        batches = iter(self.batch_sampler)
        while window_batches := list(itertools.islice(batches, self.accumulation_steps)):
            counts: dict[str, list[int]] = {}
            for batch in window_batches:
                entry = counts.setdefault(self.dataset.task_of(batch[0]), [0, 0])
                entry[0] += 1
                entry[1] += int(self.items[batch].sum())
            window = AccumulationWindow({name: (b, i) for name, (b, i) in counts.items()}, len(window_batches))
            for batch in window_batches:
                yield [WindowIndex(index, window) for index in batch]


class RankSlice(torch.utils.data.Sampler[list[int]]):
    """This rank's slice of every global batch: rank r keeps rows [r*b, (r+1)*b) where b = global size / world."""

    def __init__(self, batch_sampler, rank: int, world_size: int):
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


class TrainingRows(torch.utils.data.Dataset):
    """The training rows as the train loader sees them: each item carries its batch's `window`, and `set_epoch`
    reaches the batch sampler.

    accelerate's `DataLoaderShard.set_epoch` calls the batch sampler's `set_epoch` only when it can find it; behind
    `skip_first_batches` (resuming mid-epoch) it cannot, and falls back to the dataset's `set_epoch`. Without this, a
    resumed epoch > 0 would replay epoch 0's batches.
    """

    def __init__(self, dataset: MultiTaskDataset, batch_sampler):
        self.dataset = dataset
        self.batch_sampler = batch_sampler

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        window = getattr(index, "window", None)
        return {**item, "window": window} if window is not None else item

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


__all__ = ["MultiTaskDataset", "MultiTaskCollator", "MultiTaskBatchSampler", "SAMPLING_POLICIES",
           "AccumulationWindow", "AccumulationWindows", "RankSlice", "TrainingRows"]
