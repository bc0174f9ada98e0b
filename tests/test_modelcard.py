"""The model card and the saved folder (`mtl_st.modelcard`), a push to the Hub captured at the client, and the
TensorBoard curves of that run."""

from __future__ import annotations

import json

import torch
import yaml

from tests.utils import BUNDLE, NER_LABELS, saved_model

CODE_FILES = [f"{name}.py" for name in BUNDLE]  # the model bundle: no modelcard_mtl.py since the package move


def test_saved_folder_has_card_and_nothing_machine_specific(tmp_path, tokenizer):
    path = saved_model(tmp_path, tokenizer)
    names = {p.name for p in path.iterdir()}
    assert names == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
                     "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling",
                     *CODE_FILES}
    card = (path / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and "multi-task" in front["tags"]
    for label in NER_LABELS:
        assert f"`{label}`" in card
    for text in (card, (path / "config.json").read_text()):
        assert str(tmp_path) not in text and "/site-packages/" not in text


def test_push_to_hub_uploads_exactly_the_repo_files(pushed_run):
    run, calls = pushed_run
    assert calls["repos"] == ["someone/mtl-quickstart"]
    repo_id, files, _ = calls["commits"][-1]
    assert repo_id == "someone/mtl-quickstart"
    tensorboard = [f for f in files if f.startswith("runs/")]
    assert tensorboard, "TensorBoard event files are part of the run folder"
    assert sorted(set(files) - set(tensorboard)) == sorted([
        "1_Pooling/config.json", "README.md", "all_results.json", "config.json", "eval_results.json",
        "model.safetensors", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
        "test_results.json", "tokenizer.json",
        "tokenizer_config.json", "train_results.json", "trainer_state.json", "training_args.bin", *CODE_FILES,
    ])


def test_pushed_card_metadata_and_no_absolute_paths(pushed_run, tmp_path_factory):
    run, calls = pushed_run
    card = (run / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert front["pipeline_tag"] == "text-classification"
    assert {"multi-task", "token-classification", "text-classification"} <= set(front["tags"])
    results = json.loads((run / "all_results.json").read_text())
    index = {entry["task"]["name"]: {m["type"]: m["value"] for m in entry["metrics"]}
             for entry in front["model-index"][0]["results"]}
    assert index["ner"]["f1"] == round(results["test_ner_f1"], 4)
    assert index["sentiment"]["accuracy"] == round(results["test_sentiment_accuracy"], 4)
    for section in ("## Tasks", "## Training configuration", "## Usage", "## Limitations", "save_sentence_transformer"):
        assert section in card
    args = torch.load(run / "training_args.bin", weights_only=False)
    for text in (card, (run / "config.json").read_text(), json.dumps(args.to_dict(), default=str)):
        assert str(run.parent) not in text and "/site-packages/" not in text and "/work/" not in text


def test_tensorboard_has_per_task_curves(pushed_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = pushed_run
    folders = {p.parent for p in (run / "runs").rglob("events.out.tfevents.*")}
    tags = set()
    for folder in folders:
        accumulator = EventAccumulator(str(folder))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train/loss_ner", "train/loss_sentiment", "train/loss"} <= tags
