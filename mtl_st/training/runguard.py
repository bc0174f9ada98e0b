"""A run's hold on its `output_dir`: run settings, safe auto-resume, a lock, and a writable check.

`train.py` calls `prepare_output_dir` before it loads any model. It

1. checks that `output_dir` can be created and written (a run would otherwise train to the end and lose the model
   at the final save);
2. takes an exclusive lock, `output_dir/_run.lock` (`fcntl.flock`, the holder's PID written in), for the run's
   lifetime: a second run into the same folder stops with the holder's PID. Under several processes only rank 0
   locks (the others share its run);
3. with `--overwrite_output_dir`, deletes the old checkpoints and run settings;
4. compares this run's settings (`run_settings`: the model, the tasks and a hash of their data files, and every
   training field that changes the trained weights) with those saved in `output_dir/_run_settings.json` and in each
   checkpoint. A difference stops the run and names the fields; equal settings resume from the newest *complete*
   checkpoint (incomplete ones, left by a kill during a write, are skipped with a warning).

`RunSettingsCallback` writes the settings into every checkpoint at `on_save`, the last step of a checkpoint
write, so a checkpoint without them is one whose write did not finish. The file names start with `_`, which
`Trainer.push_to_hub` leaves out of uploads.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from typing import Any

from transformers import TrainerCallback

from mtl_st.errors import DataError

logger = logging.getLogger(__name__)

SETTINGS_NAME = "_run_settings.json"
LOCK_NAME = "_run.lock"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")

# TrainingArguments fields that change the trained weights (everything else: logging, saving, evaluation, output).
RESULT_FIELDS = (
    "learning_rate", "head_learning_rate", "layerwise_lr_decay", "weight_decay", "adam_beta1", "adam_beta2",
    "adam_epsilon", "max_grad_norm", "optim", "optim_args", "lr_scheduler_type", "lr_scheduler_kwargs",
    "warmup_steps", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "seed", "data_seed", "task_sampling", "sampling_temperature", "freeze_encoder", "frozen_tasks",
    "task_loss_weights", "label_smoothing_factor", "bf16", "fp16", "world_size",
)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "model.safetensors.index.json")


def _plain(value: Any) -> Any:
    """A JSON-comparable form of an argument value (enums by value, tuples as lists)."""
    if hasattr(value, "value") and not isinstance(value, (int, float, str, bool)):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in sorted(value.items())}
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    return str(value)


def file_digest(path: str) -> str:
    """sha256 of a file's bytes (of every file below a folder, in name order)."""
    digest = hashlib.sha256()
    paths = [path] if not os.path.isdir(path) else sorted(
        os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
    for file_path in paths:
        with open(file_path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def run_settings(model_args: Any, data_args: Any, training_args: Any) -> dict[str, Any]:
    """The settings that make two runs train the same weights: the model arguments, every task (with a hash of each
    local data file), the row limits and `RESULT_FIELDS`. `output_dir` and logging/saving fields are not in it."""
    tasks = []
    for task in data_args.tasks or []:
        entry = _plain(dict(task))
        files = task.get("data_files") or {}
        if isinstance(files, str):
            files = {"train": files}
        entry["data_sha256"] = {split: file_digest(path) if os.path.exists(path) else None
                                for split, path in sorted(files.items())}
        if task.get("dataset_name") and os.path.isdir(str(task["dataset_name"])):  # a local dataset folder
            entry["dataset_sha256"] = file_digest(str(task["dataset_name"]))
        tasks.append(entry)
    settings: dict[str, Any] = {f"model.{f.name}": _plain(getattr(model_args, f.name))
                                for f in dataclasses.fields(model_args)}
    settings["tasks"] = tasks
    for name in ("max_train_samples",):
        settings[name] = getattr(data_args, name, None)
    for name in RESULT_FIELDS:
        settings[name] = _plain(getattr(training_args, name, None))
    return json.loads(json.dumps(settings, sort_keys=True))  # as it reads back from the file


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`field: old -> new` for every field that differs (tasks compared task by task and key by key)."""
    lines = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if key == "tasks" and isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
            for i, (a, b) in enumerate(zip(before, after)):
                for task_key in sorted(set(a) | set(b)):
                    if a.get(task_key) != b.get(task_key):
                        lines.append(f"tasks[{i}].{task_key}: {_short(a.get(task_key))} -> {_short(b.get(task_key))}")
            continue
        lines.append(f"{key}: {_short(before)} -> {_short(after)}")
    return lines


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def write_settings(folder: str, settings: dict[str, Any], name: str = SETTINGS_NAME) -> None:
    """Write `settings` to `folder/<name>` (via a temporary file and a rename: never half-written)."""
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".settings-", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(settings, out, indent=2, sort_keys=True)
        os.replace(temporary, os.path.join(folder, name))
    except OSError as error:
        if os.path.exists(temporary):
            os.remove(temporary)  # no debris
        if error.errno == errno.ENOSPC:
            raise DataError(disk_full_message(folder)) from None
        raise


def disk_full_message(folder: str, needed: int | None = None) -> str:
    """One line naming the folder whose disk is full, the space left and (when known) the space a write needs."""
    free = shutil.disk_usage(folder if os.path.isdir(folder) else os.path.dirname(os.path.abspath(folder))).free
    need = f"; a checkpoint needs about {needed / 1e6:.0f} MB" if needed else ""
    return (f"no space left on the device of {folder} ({free / 1e6:.0f} MB free{need}): free some space, or set "
            "save_total_limit / save_only_model / a smaller save frequency.")


def read_settings(folder: str, name: str = SETTINGS_NAME) -> dict[str, Any] | None:
    path = os.path.join(folder, name)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError):
        return None


def checkpoint_problem(folder: str, needs_optimizer: bool = True) -> str | None:
    """Why a checkpoint folder cannot be resumed from (None when it is complete)."""
    state = os.path.join(folder, "trainer_state.json")
    try:
        with open(state, encoding="utf-8") as handle:
            json.load(handle)
    except (OSError, json.JSONDecodeError):
        return "no readable trainer_state.json"
    weights = [name for name in WEIGHT_FILES if os.path.isfile(os.path.join(folder, name))]
    if not weights:
        return "no model weights"
    for name in weights + (["optimizer.pt", "scheduler.pt"] if needs_optimizer else []):
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            return f"{name} is missing or empty"
    # trainer_state.json is the last file the Trainer writes: with it (and the weights and optimizer above), the
    # checkpoint is complete. Its run settings are judged apart (`find_resume_checkpoint`): the Trainer may rotate
    # older checkpoints away before `on_save` writes them, so a complete checkpoint can lack them.
    return None


def checkpoints(output_dir: str) -> list[str]:
    """`checkpoint-N` folders in `output_dir`, newest (highest N) first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir)
             if (m := CHECKPOINT_PATTERN.match(name)) and os.path.isdir(os.path.join(output_dir, name))]
    return [os.path.join(output_dir, name) for _, name in sorted(found, reverse=True)]


def _refusal(output_dir: str, source: str, differences: list[str]) -> DataError:
    shown = "; ".join(differences[:12]) + (f"; and {len(differences) - 12} more" if len(differences) > 12 else "")
    return DataError(
        f"{output_dir} holds a run with other settings ({source}): {shown}. Resuming would continue that run, not "
        f"this one. Give a new `output_dir`, or pass `--overwrite_output_dir true` to delete the old run first."
    )


def find_resume_checkpoint(output_dir: str, settings: dict[str, Any], needs_optimizer: bool = True) -> str | None:
    """The newest complete checkpoint of this same run in `output_dir`, or None to start from scratch.

    Raises `DataError` (naming the differing fields) when `output_dir` or its newest complete checkpoint was written
    by a run with other settings. Incomplete checkpoints are skipped with a warning naming them.
    """
    saved = read_settings(output_dir)
    if saved is not None and saved != settings:
        raise _refusal(output_dir, SETTINGS_NAME, settings_diff(saved, settings))
    for folder in checkpoints(output_dir):
        problem = checkpoint_problem(folder, needs_optimizer)
        if problem is not None:
            logger.warning(f"Skipping incomplete checkpoint {folder}: {problem}.")
            continue
        own = read_settings(folder)
        if own is None and saved is None:
            logger.warning(f"Skipping checkpoint {folder}: no {SETTINGS_NAME} in it or in {output_dir} (an older "
                           "version wrote it): it cannot be told apart from another run's.")
            continue
        # Without its own copy (killed between rotation and `on_save`), the checkpoint belongs to the run recorded in
        # output_dir: any run with other settings was refused above, before it could write a checkpoint there.
        if own is not None and own != settings:
            raise _refusal(output_dir, os.path.basename(folder), settings_diff(own, settings))
        if not needs_optimizer:
            raise DataError(
                f"{folder} was saved with save_only_model: true, so it holds no optimizer or learning-rate schedule: "
                "resuming from it would restart both in the middle of the run. Start afresh with "
                "`--overwrite_output_dir true`, or train with save_only_model false to make resumable checkpoints.")
        return folder
    return None


def check_writable(output_dir: str) -> None:
    """Create `output_dir` and write a file in it, or raise a `DataError` saying why (before any training)."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".write-test-", dir=output_dir)
        os.close(handle)
        os.remove(temporary)
    except OSError as error:
        reason = error.strerror or str(error)
        raise DataError(f"output_dir {output_dir} is not writable ({reason}); choose another `output_dir` or fix "
                        "its permissions.") from None


class OutputDirLock:
    """An exclusive `fcntl.flock` on `output_dir/_run.lock` holding the owner's PID; released on `release()` or
    when the process ends (also on kill -9: the kernel drops the lock)."""

    def __init__(self, output_dir: str, name: str = LOCK_NAME):
        self.path = os.path.join(output_dir, name)
        self.handle = None

    def acquire(self) -> "OutputDirLock":
        import fcntl

        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                handle.close()
                raise
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise DataError(
                f"output_dir {os.path.dirname(self.path)} is in use by another run (PID {holder}, lock "
                f"{self.path}); wait for it to end, or give this run another `output_dir`."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            import fcntl

            fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def overwrite_output_dir(output_dir: str) -> None:
    """Delete the previous run's checkpoints and run settings in `output_dir` (`--overwrite_output_dir`)."""
    for folder in checkpoints(output_dir):
        shutil.rmtree(folder)
    for name in (SETTINGS_NAME, "trainer_state.json", "all_results.json"):
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            os.remove(path)
    logger.warning(f"--overwrite_output_dir: deleted the previous run's checkpoints and settings in {output_dir}.")


def resume_message(checkpoint: str) -> str:
    """`Resuming from checkpoint-N (step N of M)` from the checkpoint's trainer_state.json."""
    with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as handle:
        state = json.load(handle)
    return (f"Resuming from {os.path.basename(checkpoint)} (step {state.get('global_step')} of "
            f"{state.get('max_steps')}) in {os.path.dirname(checkpoint)}.")


def prepare_output_dir(training_args: Any, settings: dict[str, Any]) -> tuple[OutputDirLock | None, str | None]:
    """Check, lock and (with `overwrite_output_dir`) clear `output_dir`; return the lock and the checkpoint to resume.

    Call it in every process, before loading the model: rank 0 checks, locks and clears first, then the others
    look for the same checkpoint. The checkpoint is `resume_from_checkpoint` when given (checked, and a warning
    names any differing settings), else the newest complete checkpoint of this same run (see
    `find_resume_checkpoint`), else None.
    """
    output_dir = training_args.output_dir
    lock = None
    with training_args.main_process_first(desc="output_dir check"):
        if training_args.process_index == 0:
            check_writable(output_dir)
            lock = OutputDirLock(output_dir).acquire()
            try:
                if getattr(training_args, "overwrite_output_dir", False) and training_args.do_train:
                    overwrite_output_dir(output_dir)
            except BaseException:
                lock.release()
                raise
    if not training_args.do_train:
        return lock, None
    needs_optimizer = not training_args.save_only_model
    explicit = training_args.resume_from_checkpoint
    try:
        if explicit not in (None, "", True, "True", "true"):
            problem = checkpoint_problem(explicit, True)
            if problem is not None:
                raise DataError(f"resume_from_checkpoint {explicit}: {problem} (a model-only checkpoint, "
                                "save_only_model, cannot resume the optimizer and schedule).")
            check_same_tasks(explicit, settings)
            saved = read_settings(explicit)
            if saved is not None and saved != settings:
                logger.warning(f"resume_from_checkpoint {explicit} was written with other settings: "
                               + "; ".join(settings_diff(saved, settings)))
            checkpoint = explicit
        else:
            checkpoint = find_resume_checkpoint(output_dir, settings, needs_optimizer)
        if training_args.process_index == 0:
            write_settings(output_dir, settings)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    if checkpoint is not None and training_args.process_index == 0:
        logger.warning(resume_message(checkpoint))
    return lock, checkpoint


def is_disk_full(error: BaseException) -> bool:
    """Whether an exception (or one it came from) is the disk running full, as OSError or as torch's writer says it."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        text = str(error)
        if "No space left on device" in text or "PytorchStreamWriter failed writing" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


def remove_partial_checkpoints(output_dir: str) -> list[str]:
    """Delete the checkpoints whose write did not finish (no trainer_state.json), and stray temporary files."""
    removed = []
    for folder in checkpoints(output_dir):
        if not os.path.isfile(os.path.join(folder, "trainer_state.json")):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        if name.startswith((".settings-", ".write-test-")):
            os.remove(os.path.join(output_dir, name))
    return removed


def check_same_tasks(checkpoint: str, settings: dict[str, Any]) -> None:
    """A checkpoint of another model (other task names or types) cannot be resumed: its heads and optimizer state
    belong to other tasks. `DataError` naming both task lists."""
    try:
        with open(os.path.join(checkpoint, "config.json"), encoding="utf-8") as handle:
            saved = [(t.get("name"), t.get("type")) for t in json.load(handle).get("tasks", [])]
    except (OSError, json.JSONDecodeError):
        return
    wanted = [(t.get("name"), t.get("type")) for t in settings.get("tasks", [])]
    if saved != wanted:
        raise DataError(f"resume_from_checkpoint {checkpoint} holds a model with tasks {saved}, but this run trains "
                        f"{wanted}: resume a checkpoint of this model, or start afresh.")


class RunSettingsCallback(TrainerCallback):
    """Writes the run settings into every checkpoint when the Trainer has finished writing it (`on_save`)."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = settings

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                write_settings(folder, self.settings)
        return control


__all__ = ["is_disk_full", "remove_partial_checkpoints", "disk_full_message", "check_same_tasks", "run_settings", "settings_diff", "find_resume_checkpoint", "checkpoint_problem", "check_writable",
           "OutputDirLock", "overwrite_output_dir", "prepare_output_dir", "resume_message", "RunSettingsCallback", "write_settings",
           "read_settings", "SETTINGS_NAME", "LOCK_NAME"]
