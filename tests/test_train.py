"""train.py end to end: bad input (one line naming the culprit, exit 2), YAML/command-line parsing, a run with a
card and results, the shortened quickstart, one task of every type, real data, and two processes."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import train
from mtl_st.errors import DataError
from tasks_mtl import TASK_TYPES
from tests.utils import (
    ALL_TASKS,
    REPO,
    SHARED_DATA,
    SST_ROWS,
    error_line,
    every_type_config,
    make_config,
    write_config,
    write_rows,
)


# ----------------------------------------------------------------------------- bad input
def bad_inputs(tmp_path: Path, encoder: str):
    """(description, config, expected fragments of the error line)."""
    cases = []
    malformed = tmp_path / "malformed.conll"
    malformed.write_text("EU B-ORG\nrejects\n\n", encoding="utf-8")
    config = make_config(tmp_path, encoder)
    config["tasks"][1]["data_files"]["train"] = str(malformed)
    cases.append(("malformed CoNLL line", config, [str(malformed), ":2"]))

    config = make_config(tmp_path, encoder)
    config["tasks"][0]["data_files"]["validation"] = write_rows(
        tmp_path / "unseen.jsonl", SST_ROWS[:2] + [{"text": "Meh.", "label": "mixed"}])
    cases.append(("label unseen in train", config, ["'mixed'", "sentiment"]))

    config = make_config(tmp_path, encoder)
    config["tasks"][0]["label_column"] = "sentiment"
    cases.append(("missing column", config, ["'sentiment'", "text", "label"]))

    config = make_config(tmp_path, encoder)
    config["tasks"][0]["data_files"]["train"] = str(tmp_path / "nowhere.jsonl")
    cases.append(("missing file", config, [str(tmp_path / "nowhere.jsonl")]))

    config = make_config(tmp_path, encoder)
    config["tasks"][0]["data_files"]["train"] = write_rows(tmp_path / "empty.jsonl", [])
    cases.append(("task without training rows", config, ["sentiment"]))

    config = make_config(tmp_path, encoder, learning_rte=1e-4)
    cases.append(("unknown YAML field", config, ["'learning_rte'", "learning_rate"]))
    return cases


def test_bad_input_exits_non_zero_naming_the_culprit(tmp_path, tiny_encoder, capsys):
    for description, config, fragments in bad_inputs(tmp_path, tiny_encoder):
        status = train.cli([write_config(tmp_path, config)])
        message = capsys.readouterr().err
        assert status == 2, description
        assert message.startswith("error: "), (description, message)
        for fragment in fragments:
            assert fragment in message, (description, fragment, message)
        assert not (tmp_path / "run" / "all_results.json").exists(), description


def test_bad_input_exit_status_from_the_command_line(tmp_path, tiny_encoder):
    config = make_config(tmp_path, tiny_encoder, num_train_epoch=1)
    result = subprocess.run([sys.executable, str(REPO / "train.py"), write_config(tmp_path, config)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown field 'num_train_epoch'" in result.stderr and "num_train_epochs" in result.stderr


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


def test_internal_errors_keep_their_traceback(monkeypatch, capsys):
    def broken(argv):
        raise ValueError("an internal bug")

    monkeypatch.setattr(train, "main", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        train.cli(["x.yaml"])

    def bad_input(argv):
        raise DataError("task 'x': bad row")

    monkeypatch.setattr(train, "main", bad_input)
    assert train.cli(["x.yaml"]) == 2
    assert capsys.readouterr().err.strip() == "error: task 'x': bad row"


# ----------------------------------------------------------------------------- parsing
def test_yaml_values_and_command_line_overrides(tmp_path, tiny_encoder):
    config = make_config(tmp_path, tiny_encoder, task_loss_weights={"ner": 2.0}, frozen_tasks=["sentiment"])
    model_args, data_args, args = train.parse_args(
        [write_config(tmp_path, config), "--learning_rate", "5e-5", "--task_sampling", "round_robin"])
    assert args.learning_rate == 5e-5 and isinstance(args.learning_rate, float)
    assert args.task_sampling == "round_robin"
    assert args.task_loss_weights == {"ner": 2.0} and args.frozen_tasks == ["sentiment"]
    assert [task["name"] for task in data_args.tasks] == ["sentiment", "ner"]
    assert model_args.model_name_or_path == tiny_encoder
    _, _, args = train.parse_args([write_config(tmp_path, config), "--task_loss_weights", '{"sentiment": 0.5}'])
    assert args.task_loss_weights == {"sentiment": 0.5}


# ----------------------------------------------------------------------------- end to end
def test_train_writes_model_card_and_results(tmp_path, tiny_encoder):
    config = make_config(tmp_path, tiny_encoder, show_examples=["Peter Blackburn loved the film."], logging_steps=4)
    assert train.cli([write_config(tmp_path, config)]) == 0
    run = tmp_path / "run"
    results = json.loads((run / "all_results.json").read_text())
    for key in ("eval_sentiment_accuracy", "eval_sentiment_macro_f1", "eval_ner_f1", "eval_ner_precision",
                "eval_ner_recall", "test_sentiment_accuracy", "test_ner_f1", "eval_loss", "train_loss"):
        assert key in results, key
    assert results["train_world_size"] == 1
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "modeling_mtl.py",
            "configuration_mtl.py", "pipeline_mtl.py"} <= names
    card = (run / "README.md").read_text()
    assert card.startswith("---\n") and "model-index:" in card and "test_ner" not in card.split("---")[1]
    state = json.loads((run / "trainer_state.json").read_text())
    assert any("loss_ner" in entry and "loss_sentiment" in entry for entry in state["log_history"])
    # the demo's examples travel with the run
    assert json.loads((run / "show_examples.json").read_text()) == ["Peter Blackburn loved the film."]


def test_quickstart_shortened(tmp_path, capfd):
    """The README's quickstart command, cut to a few rows: it trains, evaluates, predicts and shows examples."""
    argv = [str(REPO / "configs" / "quickstart.yaml"), "--output_dir", str(tmp_path / "qs"),
            "--max_train_samples", "48", "--max_eval_samples", "16", "--max_predict_samples", "16",
            "--num_train_epochs", "1", "--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true"]
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        assert train.cli(argv) == 0
    finally:
        os.chdir(cwd)
    out = capfd.readouterr().out
    assert "Embeddings: 5 x 384" in out and "Predictions:" in out and "sentiment:" in out and "ner:" in out
    results = json.loads((tmp_path / "qs" / "all_results.json").read_text())
    assert {"test_sentiment_accuracy", "test_ner_f1", "eval_ner_f1"} <= set(results)


def test_yaml_with_every_type_trains_evaluates_and_predicts(tmp_path, tiny_encoder):
    config_path = tmp_path / "all.yaml"
    config_path.write_text(yaml.safe_dump(every_type_config(tmp_path, tiny_encoder)), encoding="utf-8")
    assert train.cli([str(config_path)]) == 0
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    for task in ALL_TASKS:
        name = {"nli": "nli", "topics": "topics", "stars": "stars"}.get(task["name"], task["name"])
        for metric in TASK_TYPES[task["type"]].metric_names:
            for prefix in ("eval", "test"):
                assert f"{prefix}_{name}_{metric}" in results, f"{prefix}_{name}_{metric}"
    from transformers import pipeline

    pipe = pipeline("multitask", model=str(tmp_path / "run"))
    single, pair = pipe("Emma likes Rome"), pipe({"text": "good film", "text_pair": "bad film"})
    assert set(single) == {"sentiment", "ner", "topics", "stars"} and set(pair) == {"nli", "sts"}
    card = (tmp_path / "run" / "README.md").read_text(encoding="utf-8")
    assert "| sts | sentence_similarity | — |" in card and "type: spearman" in card


@pytest.mark.skipif(
    not (SHARED_DATA / "sst" / "train.jsonl").exists() or not (SHARED_DATA / "stsb" / "train.csv").exists(),
    reason="needs ../shared/data/sst and ../shared/data/stsb",
)
def test_real_data_regression_pairs_and_classes(tmp_path, tiny_encoder):
    """SST's 5-class fine label as a regression target and its 3-class label as classes; STS-B pairs with score >= 4
    as "paraphrase" (built here from ../shared/data, never copied into the repository)."""
    fine = {"very negative": 0.0, "negative": 1.0, "neutral": 2.0, "positive": 3.0, "very positive": 4.0}
    with open(SHARED_DATA / "sst" / "train.jsonl", encoding="utf-8") as handle:
        sst = [json.loads(line) for line in handle][:240]
    stars = write_rows(tmp_path / "stars.jsonl", [{"text": r["text"], "label": fine[r["fine_label"]]} for r in sst])
    classes = write_rows(tmp_path / "classes.jsonl", [{"text": r["text"], "label": r["label"]} for r in sst])
    with open(SHARED_DATA / "stsb" / "train.csv", encoding="utf-8", newline="") as handle:
        pairs = [{"text": a, "text_pair": b, "label": "paraphrase" if float(s) >= 4 else "other"}
                 for a, b, s in list(csv.reader(handle))[:240]]
    paraphrase = write_rows(tmp_path / "pairs.jsonl", pairs)
    config = {
        "model_name_or_path": tiny_encoder, "output_dir": str(tmp_path / "run"), "do_train": True, "do_eval": True,
        "tasks": [{"name": "stars", "type": "regression", "data_files": {"train": stars}},
                  {"name": "sentiment", "type": "sequence_classification", "data_files": {"train": classes}},
                  {"name": "paraphrase", "type": "pair_classification", "data_files": {"train": paraphrase}}],
        "max_steps": 9, "per_device_train_batch_size": 8, "task_sampling": "round_robin", "report_to": "none",
        "save_strategy": "no", "use_cpu": True, "learning_rate": 1e-3,
    }
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert train.cli([str(path)]) == 0
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert {"eval_stars_pearson", "eval_stars_spearman", "eval_stars_mse", "eval_sentiment_accuracy",
            "eval_paraphrase_accuracy", "eval_paraphrase_macro_f1"} <= set(results)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert [t["labels"] for t in saved["tasks"] if t["name"] == "sentiment"] == [["negative", "neutral", "positive"]]
    assert [t.get("labels") for t in saved["tasks"] if t["name"] == "stars"] == [None]


@pytest.mark.skipif(shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists(),
                    reason="accelerate's launcher is not installed")
def test_two_processes_train_both_tasks(tmp_path, tiny_encoder):
    """Two real gloo processes (accelerate 1.x: --multi_gpu with ACCELERATE_USE_CPU) train both tasks to the end."""
    config = make_config(tmp_path, tiny_encoder, logging_steps=1, do_predict=False)
    launcher = str(Path(sys.executable).parent / "accelerate")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", "29517", str(REPO / "train.py"), write_config(tmp_path, config)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    run = tmp_path / "run"
    results = json.loads((run / "all_results.json").read_text())
    assert results["train_world_size"] == 2
    state = json.loads((run / "trainer_state.json").read_text())
    # 24 sentiment + 24 NER rows, global batch 2 x 4 = 8: 3 + 3 full batches, one task per step on both ranks.
    assert state["global_step"] == 6
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert sum("loss_ner" in entry for entry in logged) == 3 and sum("loss_sentiment" in entry for entry in logged) == 3
    assert "eval_ner_f1" in results and "eval_sentiment_accuracy" in results
