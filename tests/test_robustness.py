"""Nothing lost, nothing silent: resume safety, locks, up-front validation, misreads and long texts.

Each test reproduces one failure of the issue "Nothing lost, nothing silent" (numbered as there) and checks the fix.
"""

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
from safetensors.torch import load_file
from test_train_cli import make_config, tiny_encoder, write_config  # noqa: F401  (tiny_encoder is a fixture)

import train
from conftest import REPO

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


def error_line(capsys) -> str:
    """The last line on stderr (progress bars of the data preparation come before it)."""
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = weights(a), weights(b)
    assert set(left) == set(right)
    different = [name for name in left if not torch.equal(left[name], right[name])]
    assert not different, different[:5]


def driver(tmp_path: Path) -> str:
    path = tmp_path / "driver.py"
    path.write_text(DRIVER, encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------- 1. stale auto-resume
def test_changed_settings_are_refused_not_resumed(tmp_path, tiny_encoder, capsys, caplog):
    config = run_config(tmp_path, tiny_encoder)
    assert train.cli([write_config(tmp_path, config)]) == 0
    run = tmp_path / "run"
    first = weights(run)
    # Before the fix: 0 steps trained, the old weights kept, the card showing the new settings.
    changed = dict(config, learning_rate="1e-2", seed=8)
    status = train.cli([write_config(tmp_path, changed, "changed.yaml")])
    message = error_line(capsys)
    assert status == 2 and message.startswith("error: ")
    assert "learning_rate: 0.0003 -> 0.01" in message and "seed: 7 -> 8" in message
    assert "--overwrite_output_dir" in message and "output_dir" in message
    assert all(torch.equal(first[k], v) for k, v in weights(run).items())  # nothing touched
    # The same settings resume (at WARNING), from the last checkpoint: 12 of 12 steps.
    with caplog.at_level(logging.WARNING, logger="train"):
        assert train.cli([write_config(tmp_path, config)]) == 0
    assert "Resuming from checkpoint-12 (step 12 of 12)" in caplog.text
    # --overwrite_output_dir deletes the old run and trains the new settings.
    assert train.cli([write_config(tmp_path, changed, "changed.yaml"), "--overwrite_output_dir", "true"]) == 0
    assert not all(torch.equal(first[k], v) for k, v in weights(run).items())
    saved = json.loads((run / "_run_settings.json").read_text())
    assert saved["learning_rate"] == 0.01 and saved["seed"] == 8


# ----------------------------------------------------------------------------- 2. half-written checkpoint
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


# ----------------------------------------------------------------------------- 5. unwritable output_dir
def test_unwritable_output_dir_is_refused_before_training(tmp_path, tiny_encoder, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    config = run_config(tmp_path, tiny_encoder, output_dir=str(blocker / "run"))
    monkeypatch.setattr(train, "build_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert train.cli([write_config(tmp_path, config)]) == 2
    message = error_line(capsys)
    assert message.startswith("error: output_dir ") and str(blocker / "run") in message and "not writable" in message


# ----------------------------------------------------------------------------- 9. two runs, one output_dir
def test_second_run_into_a_locked_output_dir_is_refused(tmp_path, tiny_encoder, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from runguard_mtl import OutputDirLock; "
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


def no_model(monkeypatch) -> None:
    """Fail the test if the run gets as far as loading the model."""
    monkeypatch.setattr(train, "build_model", lambda *a, **k: pytest.fail("the model was loaded"))


# ----------------------------------------------------------------------------- 4. empty validation / test split
def test_empty_eval_split_is_refused_or_carved(tmp_path, tiny_encoder, capsys, monkeypatch):
    empty = tmp_path / "empty.conll"
    empty.write_text("", encoding="utf-8")
    config = make_config(tmp_path, tiny_encoder, do_predict=False)
    config["tasks"][1]["data_files"]["validation"] = str(empty)
    with monkeypatch.context() as patch:
        no_model(patch)
        assert train.cli([write_config(tmp_path, config)]) == 2
    message = error_line(capsys)
    assert "'ner'" in message and "validation" in message and str(empty) in message and "on_empty_split" in message
    # A metric that no evaluation will report is refused up front (before: KeyError at the first evaluation).
    no_eval = make_config(tmp_path, tiny_encoder, metric_for_best_model="eval_ner_f1", load_best_model_at_end=True,
                          eval_strategy="epoch", save_strategy="epoch")
    no_eval["tasks"][1]["data_files"].pop("validation")
    no_eval["tasks"][1]["validation_split_fraction"] = 0
    for metric, fragment in (("eval_ner_f1", "eval_sentiment_accuracy"), ("eval_sentimnt_accuracy", "Did you mean")):
        with monkeypatch.context() as patch:
            no_model(patch)
            assert train.cli([write_config(tmp_path, dict(no_eval, metric_for_best_model=metric))]) == 2
        message = error_line(capsys)
        assert f"metric_for_best_model {metric!r}" in message and fragment in message
    config["tasks"][1]["on_empty_split"] = "carve"
    config["metric_for_best_model"] = "eval_ner_f1"
    assert train.cli([write_config(tmp_path, config)]) == 0
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert "eval_ner_f1" in results and "eval_sentiment_accuracy" in results


# ----------------------------------------------------------------------------- 6. numbers that make no sense
@pytest.mark.parametrize("field,value", [
    ("head_learning_rate", -1), ("learning_rate", "-1e-4"), ("per_device_train_batch_size", 0),
    ("max_train_samples", -5), ("max_eval_samples", 0), ("max_seq_length", 0), ("gradient_accumulation_steps", 0),
    ("num_train_epochs", -1),
])
def test_out_of_range_numbers_are_refused_naming_the_field(field, value, tmp_path, tiny_encoder, capsys, monkeypatch):
    monkeypatch.setattr(train, "prepare_data", lambda *a, **k: pytest.fail("the data was read"))
    no_model(monkeypatch)
    assert train.cli([write_config(tmp_path, make_config(tmp_path, tiny_encoder, **{field: value}))]) == 2
    message = error_line(capsys)
    assert message.startswith(f"error: {field} must be"), message


def test_encode_refuses_a_batch_size_below_one():
    from transformers import AutoTokenizer

    from conftest import minilm_path, tiny_model

    model = tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    for batch_size in (-1, 0, 2.5):
        with pytest.raises(ValueError, match="batch_size of at least 1"):
            model.encode(["one", "two"], tokenizer=tokenizer, batch_size=batch_size)
    assert model.encode(["one", "two"], tokenizer=tokenizer, batch_size=1).shape == (2, 32)


# ----------------------------------------------------------------------------- 7. one line, naming the culprit
def test_bad_files_give_one_line_naming_the_file(tmp_path, tiny_encoder, capsys):
    latin = tmp_path / "latin1.conll"
    latin.write_bytes("EU B-ORG\n\nJos\xe9 B-PER\n\n".encode("latin-1"))
    config = make_config(tmp_path, tiny_encoder)
    config["tasks"][1]["data_files"]["train"] = str(latin)
    assert train.cli([write_config(tmp_path, config)]) == 2
    message = error_line(capsys)
    assert f"{latin}:3: not UTF-8 (byte 0xe9 at offset 13)" in message and "iconv -f latin1" in message

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("output_dir: run\ntasks: [\n  learning_rate: 1\n", encoding="utf-8")
    assert train.cli([str(bad_yaml)]) == 2
    message = error_line(capsys)
    assert message.startswith(f"error: {bad_yaml}:") and "invalid YAML" in message
    line, column = message.split(f"{bad_yaml}:")[1].split(":")[:2]
    assert line.isdigit() and column.isdigit()

    assert train.cli([write_config(tmp_path, make_config(tmp_path, tiny_encoder)), "--learning_rate", "abc"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: argument --learning_rate/--learning-rate: invalid float value: 'abc'")
    assert not any("usage:" in line for line in lines)  # before: 120 lines of usage, then the message


def test_corrupt_weights_file_gives_one_line_with_its_path(tmp_path, tiny_encoder, capsys):
    from conftest import tiny_model

    saved = tmp_path / "saved"
    tasks = [{"name": "sentiment", "type": "sequence_classification", "labels": ["negative", "neutral", "positive"]}]
    tiny_model(tasks=tasks).save_pretrained(saved)
    with open(saved / "model.safetensors", "r+b") as handle:
        handle.truncate(100)
    config = make_config(tmp_path, tiny_encoder, model_name_or_path=str(saved))
    config["tasks"] = config["tasks"][:1]
    assert train.cli([write_config(tmp_path, config)]) == 2
    message = error_line(capsys)
    assert message.startswith(f"error: {saved / 'model.safetensors'}: corrupt or unreadable weights file")


# ----------------------------------------------------------------------------- 8. small silent misreads
def test_bom_before_first_token_and_docstart(tmp_path):
    from readers_mtl import read_conll

    path = tmp_path / "bom.conll"
    path.write_bytes("\ufeff-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n".encode("utf-8"))
    assert read_conll(path) == [{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}]
    path.write_bytes("\ufeffEU\tB-ORG\nrejects\tO\n".encode("utf-8"))
    assert read_conll(path)[0]["tokens"] == ["EU", "rejects"]


def test_space_inside_a_tab_separated_word_is_refused(tmp_path):
    from readers_mtl import DataError, read_conll

    path = tmp_path / "space.conll"
    path.write_text("Heading\tO\nNew York\tB-location\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:2: the word column 'New York' holds a space"):
        read_conll(path)


def test_integer_labels_with_a_numeric_label_list_are_names(tmp_path):
    from data_mtl import TaskDataArguments, load_task_splits

    rows = [{"text": f"row {i}", "label": label} for i, label in enumerate([1, 2, 3, 1, 2, 3])]
    path = tmp_path / "stars.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    task = TaskDataArguments(name="stars", type="sequence_classification", labels=[1, 2, 3],
                             data_files={"train": str(path), "validation": str(path), "test": str(path)})
    assert load_task_splits(task)["train"]["label"] == ["1", "2", "3", "1", "2", "3"]  # before: "2", "3", error
    # A datasets ClassLabel column with integer names still maps ids to names.
    from datasets import ClassLabel, Dataset, Features, Value

    saved = tmp_path / "saved"
    Dataset.from_dict({"text": ["a", "b"], "label": [0, 2]},
                      features=Features({"text": Value("string"), "label": ClassLabel(names=["1", "2", "3"])})
                      ).save_to_disk(str(saved))
    task = TaskDataArguments(name="stars", type="sequence_classification", dataset_name=str(saved),
                             validation_split_fraction=0, test_split_fraction=0)
    assert load_task_splits(task)["train"]["label"] == ["1", "3"]


def test_pipeline_spans_keep_trailing_combining_marks():
    import numpy as np

    from postprocess_mtl import word_entities

    text = "Zoe\u0301 lives"  # an uncased BERT tokenizer strips the accent: "zoe" ends at 3
    logits = np.array([[0, 5, 0], [5, 0, 0]], dtype=np.float32)  # B-PER, O
    entities = word_entities(text, [(0, 3), (5, 10)], [0, 1], logits, ["O", "B-PER", "I-PER"])
    assert entities[0]["word"] == "Zoe\u0301" and entities[0]["end"] == 4


# ----------------------------------------------------------------------------- 3. long texts in full
def long_sentence(n_entities: int = 24) -> tuple[list[str], list[str]]:
    """One long sentence (over 600 words) with `n_entities` PER entities spread along it."""
    words, tags = [], []
    for i in range(n_entities):
        words += ["the", "committee", "met", "again", "on", "tuesday", "and"] * 3 + ["Peter", "Blackburn"]
        tags += ["O"] * 21 + ["B-PER", "I-PER"]
    words += ["finally"] * 84
    tags += ["O"] * 84
    return words, tags


def test_long_sentence_is_windowed_and_scored_in_full(tokenizer, caplog):
    import numpy as np
    from datasets import Dataset
    from seqeval.metrics.sequence_labeling import get_entities
    from transformers.trainer_utils import EvalPrediction

    from data_mtl import TaskDataArguments, tokenize_task
    from task_data_mtl import TaskMetrics
    from trainer_mtl import MultiTaskTrainer

    words, tags = long_sentence()
    assert len(words) == 636 and len(get_entities(tags)) == 24
    labels = ["O", "B-PER", "I-PER"]
    task = TaskDataArguments(name="ner", type="token_classification", data_files={"train": "x"}, stride=16)
    with caplog.at_level(logging.WARNING, logger="data_mtl"):
        windows = tokenize_task(Dataset.from_dict({"tokens": [words], "tags": [tags]}), task, tokenizer,
                                {label: i for i, label in enumerate(labels)}, max_length=256)
    assert "1 of 1 rows are longer than 256 tokens" in caplog.text
    assert len(windows) > 1 and set(windows["row"]) == {0} and all(len(ids) <= 256 for ids in windows["input_ids"])
    scored = [label for row in windows["labels"] for label in row if label != -100]
    assert len(scored) == len(words)  # every word is scored once, in one window (before: the first 254 tokens only)
    width = max(len(row) for row in windows["labels"])
    label_ids = np.full((len(windows), width), -100)
    for i, row in enumerate(windows["labels"]):
        label_ids[i, : len(row)] = row
    # A model that finds the entities of the first window only: recall is 4 of 24 (before the fix: 4 of 4 = 1.0).
    first_only = np.eye(3)[np.where(label_ids >= 0, label_ids, 0)]
    first_only[1:] = np.eye(3)[0]
    trainer = type("T", (), {"_metrics_rows": list(windows["row"]), "_metrics_task": "ner",
                             "task_metrics_fn": TaskMetrics([{"name": "ner", "type": "token_classification",
                                                               "labels": labels}])})()
    metrics = MultiTaskTrainer._compute_task_metrics(trainer, EvalPrediction(first_only, label_ids))
    found = len(get_entities([labels[i] for i in label_ids[0] if i >= 0]))
    assert found < 24 and metrics["recall"] == pytest.approx(found / 24) and metrics["precision"] == 1.0
    perfect = np.eye(3)[np.where(label_ids >= 0, label_ids, 0)]
    assert MultiTaskTrainer._compute_task_metrics(trainer, EvalPrediction(perfect, label_ids))["f1"] == 1.0


def test_sequence_rows_cut_are_counted_in_one_warning(tokenizer, caplog):
    from datasets import Dataset

    from data_mtl import TaskDataArguments, tokenize_task

    ds = Dataset.from_dict({"text": ["short", "word " * 100, "word " * 300], "label": ["a", "b", "a"]})
    task = TaskDataArguments(name="s", type="sequence_classification", data_files={"train": "x"})
    with caplog.at_level(logging.WARNING, logger="data_mtl"):
        tokenize_task(ds, task, tokenizer, {"a": 0, "b": 1}, max_length=64)
    assert caplog.text.count("rows are longer") == 1 and "2 of 3 rows are longer than 64 tokens" in caplog.text
