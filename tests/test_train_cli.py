"""train.py end to end: bad input, the shortened quickstart, YAML/command-line parsing and two processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import train
from conftest import REPO, TINY_ENCODERS

SST_ROWS = [
    {"text": "A wonderful, moving film.", "label": "positive"},
    {"text": "Dull and far too long.", "label": "negative"},
    {"text": "It is a film.", "label": "neutral"},
    {"text": "I loved every minute.", "label": "positive"},
    {"text": "A mess from start to end.", "label": "negative"},
    {"text": "The film runs two hours.", "label": "neutral"},
] * 4
CONLL = "EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\nPeter B-PER\nBlackburn I-PER\n\nBRUSSELS B-LOC\n1996-08-22 O\n\n"


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory, minilm) -> str:
    """A saved 2-layer, 32-wide random BERT with the MiniLM tokenizer: a checkpoint that trains in seconds."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = AutoConfig.for_model(**TINY_ENCODERS["bert"])
    AutoModel.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(folder)
    return str(folder)


def make_config(tmp_path: Path, encoder: str, **overrides) -> dict:
    sst = {split: write_jsonl(tmp_path / f"sst.{split}.jsonl", SST_ROWS) for split in ("train", "validation", "test")}
    conll = tmp_path / "ner.conll"
    conll.write_text(CONLL * 8, encoding="utf-8")
    config = {
        "model_name_or_path": encoder,
        "tasks": [
            {"name": "sentiment", "type": "sequence_classification", "data_files": sst},
            {"name": "ner", "type": "token_classification", "format": "conll",
             "data_files": {"train": str(conll), "validation": str(conll), "test": str(conll)}},
        ],
        "output_dir": str(tmp_path / "run"),
        "do_train": True, "do_eval": True, "do_predict": True,
        "num_train_epochs": 1, "per_device_train_batch_size": 4, "learning_rate": "3e-4",
        "report_to": "none", "save_strategy": "no", "disable_tqdm": True, "seed": 7,
    }
    config.update(overrides)
    return config


def write_config(tmp_path: Path, config: dict, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


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
    config["tasks"][0]["data_files"]["validation"] = write_jsonl(
        tmp_path / "unseen.jsonl", SST_ROWS[:2] + [{"text": "Meh.", "label": "mixed"}])
    cases.append(("label unseen in train", config, ["'mixed'", "sentiment"]))

    config = make_config(tmp_path, encoder)
    config["tasks"][0]["label_column"] = "sentiment"
    cases.append(("missing column", config, ["'sentiment'", "text", "label"]))

    config = make_config(tmp_path, encoder)
    config["tasks"][0]["data_files"]["train"] = str(tmp_path / "nowhere.jsonl")
    cases.append(("missing file", config, [str(tmp_path / "nowhere.jsonl")]))

    config = make_config(tmp_path, encoder)
    config["tasks"][0]["data_files"]["train"] = write_jsonl(tmp_path / "empty.jsonl", [])
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
