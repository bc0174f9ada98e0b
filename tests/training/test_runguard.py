"""A run's hold on its `output_dir` (`mtl_st.training.runguard`): changed settings are refused rather than resumed,
a kill during a checkpoint write resumes from the previous complete checkpoint, an unwritable `output_dir` and a
second run into a locked one are refused before any model loads."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import train
from tests.utils import REPO, error_line, make_config, saved_weights, write_config

# ----------------------------------------------------------------------------- helpers
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "OMP_NUM_THREADS": "1"}

# A driver that runs train.py and, when KILL_STEP is set, writes an empty optimizer.pt into that step's checkpoint,
# signals the test and sleeps there: the test then kills it with SIGKILL in the middle of the checkpoint write.
DRIVER = textwrap.dedent("""
    import os, sys, time
    import torch
    torch.set_num_threads(1)
    import train, trainer_mtl
    original = trainer_mtl.MultiTaskTrainer._save_optimizer_and_scheduler
    def slow_save(self, output_dir):
        if os.environ.get("KILL_STEP") and self.state.global_step == int(os.environ["KILL_STEP"]):
            open(os.path.join(output_dir, "optimizer.pt"), "wb").close()
            open(os.environ["KILL_MARKER"], "w").close()
            time.sleep(300)
        return original(self, output_dir)
    trainer_mtl.MultiTaskTrainer._save_optimizer_and_scheduler = slow_save
    sys.exit(train.cli(sys.argv[1:]))
""")


def run_config(tmp_path: Path, encoder: str, **overrides) -> dict:
    """Training only, checkpoints every 4 of 12 steps (24 + 24 rows, batch 4)."""
    config = make_config(tmp_path, encoder, save_strategy="steps", save_steps=4, do_eval=False, do_predict=False,
                         logging_steps=4)
    config.update(overrides)
    return config


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = saved_weights(a), saved_weights(b)
    assert set(left) == set(right)
    different = [name for name in left if not torch.equal(left[name], right[name])]
    assert not different, different[:5]


def driver(tmp_path: Path) -> str:
    path = tmp_path / "driver.py"
    path.write_text(DRIVER, encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------- settings and resume
def test_changed_settings_are_refused_not_resumed(tmp_path, tiny_encoder, capsys, caplog):
    config = run_config(tmp_path, tiny_encoder)
    assert train.cli([write_config(tmp_path, config)]) == 0
    run = tmp_path / "run"
    first = saved_weights(run)
    # Before the fix: 0 steps trained, the old weights kept, the card showing the new settings.
    changed = dict(config, learning_rate="1e-2", seed=8)
    status = train.cli([write_config(tmp_path, changed, "changed.yaml")])
    message = error_line(capsys)
    assert status == 2 and message.startswith("error: ")
    assert "learning_rate: 0.0003 -> 0.01" in message and "seed: 7 -> 8" in message
    assert "--overwrite_output_dir" in message and "output_dir" in message
    assert all(torch.equal(first[k], v) for k, v in saved_weights(run).items())  # nothing touched
    # The same settings resume (at WARNING), from the last checkpoint: 12 of 12 steps.
    with caplog.at_level(logging.WARNING, logger="mtl_st.training.runguard"):
        assert train.cli([write_config(tmp_path, config)]) == 0
    assert "Resuming from checkpoint-12 (step 12 of 12)" in caplog.text
    # --overwrite_output_dir deletes the old run and trains the new settings.
    assert train.cli([write_config(tmp_path, changed, "changed.yaml"), "--overwrite_output_dir", "true"]) == 0
    assert not all(torch.equal(first[k], v) for k, v in saved_weights(run).items())
    saved = json.loads((run / "_run_settings.json").read_text())
    assert saved["learning_rate"] == 0.01 and saved["seed"] == 8


def test_kill_during_checkpoint_write_resumes_from_previous_complete_one(tmp_path, tiny_encoder):
    config_path = write_config(tmp_path, run_config(tmp_path, tiny_encoder))
    script = driver(tmp_path)
    marker = tmp_path / "writing"
    killed = subprocess.Popen([sys.executable, script, config_path], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**ENV, "KILL_STEP": "8", "KILL_MARKER": str(marker)})
    deadline = time.time() + 240
    while not marker.exists():
        assert killed.poll() is None and time.time() < deadline, "the run ended before writing checkpoint-8"
        time.sleep(0.2)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    run = tmp_path / "run"
    assert (run / "checkpoint-8" / "optimizer.pt").stat().st_size == 0 and (run / "checkpoint-4").is_dir()

    rerun = subprocess.run([sys.executable, script, config_path], cwd=tmp_path, capture_output=True, text=True,
                           env=ENV, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Skipping incomplete checkpoint" in rerun.stdout and "checkpoint-8" in rerun.stdout
    assert "Resuming from checkpoint-4 (step 4 of 12)" in rerun.stdout

    uninterrupted = subprocess.run([sys.executable, script, config_path, "--output_dir", str(tmp_path / "full")],
                                   cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    assert_same_weights(run, tmp_path / "full")


# ----------------------------------------------------------------------------- output_dir
def test_unwritable_output_dir_is_refused_before_training(tmp_path, tiny_encoder, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    config = run_config(tmp_path, tiny_encoder, output_dir=str(blocker / "run"))
    monkeypatch.setattr(train, "build_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert train.cli([write_config(tmp_path, config)]) == 2
    message = error_line(capsys)
    assert message.startswith("error: output_dir ") and str(blocker / "run") in message and "not writable" in message


def test_second_run_into_a_locked_output_dir_is_refused(tmp_path, tiny_encoder, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mtl_st.training.runguard import OutputDirLock; "
         f"lock = OutputDirLock({str(run)!r}).acquire(); print('locked', flush=True); time.sleep(120)"],
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(train, "build_model", lambda *a, **k: pytest.fail("the model was loaded"))
        assert train.cli([write_config(tmp_path, run_config(tmp_path, tiny_encoder))]) == 2
        message = error_line(capsys)
        assert f"PID {holder.pid}" in message and "in use by another run" in message
    finally:
        holder.kill()
        holder.wait()


# ----------------------------------------------------------------------------- resume faults
def test_a_model_only_checkpoint_is_not_resumed_silently(tmp_path, tiny_encoder, capsys):
    """With save_only_model the rerun used to restart the optimizer and the schedule mid-run without a word."""
    path = write_config(tmp_path, run_config(tmp_path, tiny_encoder, save_only_model=True, max_steps=8))
    assert train.cli([path]) == 0
    capsys.readouterr()
    assert train.cli([path]) == 2  # the same run again: it finds the model-only checkpoint-8
    assert "was saved with save_only_model: true" in error_line(capsys)


def test_a_checkpoint_without_its_settings_copy_still_resumes(tmp_path, tiny_encoder):
    """A kill between checkpoint rotation and the settings write left no checkpoint judged complete."""
    path = write_config(tmp_path, run_config(tmp_path, tiny_encoder, max_steps=8, save_total_limit=1))
    assert train.cli([path]) == 0
    run = tmp_path / "run"
    (run / "checkpoint-8" / "_run_settings.json").unlink()  # as if killed before `on_save`
    from mtl_st.training.runguard import find_resume_checkpoint, read_settings

    assert find_resume_checkpoint(str(run), read_settings(str(run))) == str(run / "checkpoint-8")


def test_a_local_dataset_folder_is_fingerprinted(tmp_path):
    from datasets import Dataset

    from mtl_st.training.runguard import run_settings

    folder = tmp_path / "ds"
    Dataset.from_dict({"text": ["a", "b"], "label": ["x", "y"]}).save_to_disk(str(folder))
    data_args = type("D", (), {"tasks": [{"name": "s", "type": "sequence_classification",
                                          "dataset_name": str(folder)}], "max_train_samples": None})()
    model_args = train.ModelArguments()
    before = run_settings(model_args, data_args, type("T", (), {})())
    Dataset.from_dict({"text": ["c", "d"], "label": ["x", "y"]}).save_to_disk(str(folder))
    after = run_settings(model_args, data_args, type("T", (), {})())
    assert before["tasks"][0]["dataset_sha256"] != after["tasks"][0]["dataset_sha256"]


def test_another_models_checkpoint_is_refused_naming_the_tasks(tmp_path, tiny_encoder, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = run_config(tmp_path / "a", tiny_encoder, max_steps=4)
    assert train.cli([write_config(tmp_path / "a", first)]) == 0
    other = make_config(tmp_path / "b", tiny_encoder, do_eval=False, do_predict=False, max_steps=4,
                        resume_from_checkpoint=str(tmp_path / "a" / "run" / "checkpoint-4"))
    other["tasks"][0]["name"] = "mood"
    assert train.cli([write_config(tmp_path / "b", other)]) == 2
    line = error_line(capsys)
    assert "holds a model with tasks [('sentiment', 'sequence_classification'), ('ner'" in line
    assert "('mood', 'sequence_classification')" in line


DISK_FULL_DRIVER = textwrap.dedent("""
    import errno, sys, torch
    torch.set_num_threads(1)
    import train, trainer_mtl
    def full(self, output_dir):
        raise OSError(errno.ENOSPC, "No space left on device")
    trainer_mtl.MultiTaskTrainer._save_optimizer_and_scheduler = full  # the disk fills during a checkpoint write
    sys.exit(train.cli(sys.argv[1:]))
""")


def test_a_full_disk_is_one_line_naming_output_dir_and_leaves_no_debris(tmp_path, tiny_encoder):
    (tmp_path / "a").mkdir()
    path = write_config(tmp_path / "a", run_config(tmp_path / "a", tiny_encoder, max_steps=8))
    driver = tmp_path / "full.py"
    driver.write_text(DISK_FULL_DRIVER, encoding="utf-8")
    result = subprocess.run([sys.executable, str(driver), path], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no space left on the device of ") and "checkpoint needs about" in last
    assert "Traceback" not in result.stderr
    run = tmp_path / "a" / "run"
    assert not list(run.glob("checkpoint-*")) and not list(run.glob(".settings-*"))
