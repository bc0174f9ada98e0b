"""Integrations: the multitask pipeline, model card, Hub push, sentence-transformers export, curves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import pipeline

import pipeline_mtl  # noqa: F401  (registers "multitask")
from conftest import REPO, TASKS, tiny_model
from data_mtl import read_conll
from modeling_mtl import MultiTaskModel
from pipeline_mtl import word_entities

NER_LABELS = TASKS[1]["labels"]  # O, B-PER, I-PER, B-LOC, I-LOC


def saved_tiny(tmp_path: Path, tokenizer, bias_label: str | None = None) -> Path:
    """A tiny model whose NER head is pushed towards one label (so the pipeline returns entities)."""
    model = tiny_model()
    if bias_label is not None:
        with torch.no_grad():
            model.heads["ner"].classifier.bias[NER_LABELS.index(bias_label)] = 50.0
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


# ----------------------------------------------------------------------------- pipeline
def test_pipeline_output_shape_batching_and_embedding(tmp_path, tokenizer):
    path = saved_tiny(tmp_path, tokenizer, bias_label="B-PER")
    pipe = pipeline("multitask", model=str(path), device="cpu")
    one = pipe("Peter met Mary")
    assert set(one) == {"sentiment", "ner"}
    assert set(one["sentiment"]) == {"label", "score"} and one["sentiment"]["label"] in TASKS[0]["labels"]
    # Every word is B-PER: one entity per word, offsets slicing the text.
    assert [(e["word"], e["start"], e["end"], e["entity_group"]) for e in one["ner"]] == [
        ("Peter", 0, 5, "PER"), ("met", 6, 9, "PER"), ("Mary", 10, 14, "PER")]
    texts = ["Peter met Mary", "a much longer text about Paris and London in spring", "Hi"]
    batched = pipe(texts, batch_size=3, return_embedding=True)
    assert isinstance(batched, list) and len(batched) == 3
    assert batched[0]["ner"] == one["ner"]
    assert [e["word"] for e in batched[2]["ner"]] == ["Hi"]
    model = MultiTaskModel.from_pretrained(path)
    np.testing.assert_allclose(batched[1]["embedding"], model.encode(texts[1]), atol=1e-5)


def test_pipeline_merges_entity_words(tmp_path, tokenizer):
    path = saved_tiny(tmp_path, tokenizer, bias_label="I-LOC")
    pipe = pipeline("multitask", model=str(path))
    entities = pipe("New York, U.S.")["ner"]
    # I-LOC everywhere: adjacent words continue one entity; punctuation is its own word, as the tokenizer splits.
    assert [e["word"] for e in entities] == ["New York, U.S."]
    assert entities[0]["start"] == 0 and entities[0]["end"] == len("New York, U.S.")


def test_pipeline_reads_long_text_in_full_and_warns_of_truncated_tasks(tmp_path, tokenizer, caplog):
    path = saved_tiny(tmp_path, tokenizer, bias_label="B-PER")
    pipe = pipeline("multitask", model=str(path))
    long_text = " ".join(["word"] * 400)
    with caplog.at_level("WARNING"):
        result = pipe(long_text)
    # The tiny encoder's 128 positions: windows of 126 tokens sharing 32; every word is an entity (B-PER).
    assert len(result["ner"]) == 400 and result["ner"][-1]["end"] == len(long_text)
    assert "ner read it in full (4 windows sharing 32 tokens)" in caplog.text
    assert "sentiment read only its first 128 tokens (truncated)" in caplog.text


def test_pipeline_with_remote_code_where_project_is_missing(tmp_path, tokenizer):
    path = saved_tiny(tmp_path, tokenizer, bias_label="B-LOC")
    config = json.loads((path / "config.json").read_text())
    assert config["custom_pipelines"]["multitask"]["impl"] == "pipeline_mtl.MultiTaskPipeline"
    script = textwrap.dedent(f"""
        import sys, json
        for name in ("configuration_mtl", "modeling_mtl", "pipeline_mtl", "modelcard_mtl"):
            sys.modules[name] = None
        from transformers import pipeline
        pipe = pipeline(model={str(path)!r}, trust_remote_code=True)
        assert type(pipe).__module__.startswith("transformers_modules"), type(pipe).__module__
        print(json.dumps(pipe("Paris and Rome")))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert [e["word"] for e in answer["ner"]] == ["Paris", "and", "Rome"]


def test_pipeline_by_task_name_in_a_fresh_process(tmp_path, tokenizer):
    """Where the project is installed, importing the pipeline module is all `pipeline("multitask", ...)` needs."""
    path = saved_tiny(tmp_path, tokenizer, bias_label="B-LOC")
    script = textwrap.dedent(f"""
        import json
        from transformers import pipeline
        import pipeline_mtl
        pipe = pipeline("multitask", model={str(path)!r})
        assert type(pipe) is pipeline_mtl.MultiTaskPipeline, type(pipe)
        print(json.dumps(pipe("Paris")))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["ner"][0]["word"] == "Paris"


@pytest.mark.parametrize("name", ["wnut17/test.conll", "wnut17/validation.conll"])
def test_entity_offsets_on_real_sentences(name, tokenizer):
    """Gold WNUT-17 tags as the head's output: the entities found slice the text to exactly the gold words."""
    path = REPO / "data" / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    labels = ["O", "B-person", "I-person", "B-location", "I-location", "B-group", "I-group", "B-corporation",
              "I-corporation", "B-product", "I-product", "B-creative-work", "I-creative-work"]
    checked = 0
    for sentence in read_conll(path)[:150]:
        text = " ".join(sentence["tokens"])
        encoded = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True, truncation=True)
        offsets = [None if s else tuple(o) for o, s in zip(encoded["offset_mapping"], encoded["special_tokens_mask"])]
        word_ids = encoded.word_ids()
        # Map each token to its whitespace word (the gold tag) via character positions.
        starts, position = [], 0
        for token in sentence["tokens"]:
            starts.append(position)
            position += len(token) + 1
        probabilities = np.zeros((len(offsets), len(labels)))
        previous_gold = None
        for i, span in enumerate(offsets):
            if span is None:
                probabilities[i, 0] = 1
                continue
            gold_word = max(j for j, s in enumerate(starts) if s <= span[0])
            tag = sentence["tags"][gold_word]
            # A gold word that the tokenizer splits into several words: later pieces continue the entity.
            if tag.startswith("B-") and previous_gold == gold_word:
                tag = "I-" + tag[2:]
            probabilities[i, labels.index(tag)] = 1
            if word_ids[i] != (word_ids[i - 1] if i else None):
                previous_gold = gold_word
        found = [(e["entity_group"], e["word"]) for e in word_entities(text, offsets, word_ids, probabilities, labels)]
        expected, current = [], None
        for token, tag in zip(sentence["tokens"], sentence["tags"]):
            if tag.startswith("B-") or (tag.startswith("I-") and current is None):
                current = [tag[2:], [token]]
                expected.append(current)
            elif tag.startswith("I-"):
                current[1].append(token)
            else:
                current = None
        assert found == [(kind, " ".join(words)) for kind, words in expected], text
        for entity in word_entities(text, offsets, word_ids, probabilities, labels):
            assert text[entity["start"]:entity["end"]] == entity["word"]
        checked += len(expected)
    assert checked > 20


# ----------------------------------------------------------------------------- card, files, Hub
def test_saved_folder_has_card_and_nothing_machine_specific(tmp_path, tokenizer):
    path = saved_tiny(tmp_path, tokenizer)
    names = {p.name for p in path.iterdir()}
    assert names == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
                     "configuration_mtl.py", "modeling_mtl.py", "pipeline_mtl.py", "modelcard_mtl.py", "tasks_mtl.py",
                     "postprocess_mtl.py", "modules.json", "sentence_bert_config.json", "1_Pooling"}
    card = (path / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and "multi-task" in front["tags"]
    for label in NER_LABELS:
        assert f"`{label}`" in card
    for text in (card, (path / "config.json").read_text()):
        assert str(tmp_path) not in text and "/site-packages/" not in text


def run_train(tmp_path: Path, extra: dict, minilm=None) -> Path:
    """train.py on the bundled samples, from tmp_path with relative paths (as a user runs it)."""
    import train

    for folder in ("wnut17", "sst"):
        target = tmp_path / "data" / folder
        target.mkdir(parents=True, exist_ok=True)
        for split in ("train", "validation", "test"):
            suffix = "conll" if folder == "wnut17" else "jsonl"
            lines = (REPO / "data" / folder / f"{split}.{suffix}").read_text(encoding="utf-8")
            (target / f"{split}.{suffix}").write_text(lines, encoding="utf-8")
    (tmp_path / "data" / "similarity").mkdir(exist_ok=True)
    shutil.copy(REPO / "data" / "similarity" / "pairs.csv", tmp_path / "data" / "similarity" / "pairs.csv")
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    config.update({"output_dir": "run", "max_train_samples": 24, "max_eval_samples": 12, "max_predict_samples": 12,
                   "num_train_epochs": 1, "save_strategy": "no", "eval_strategy": "no", "show_examples": None,
                   "logging_steps": 1, "disable_tqdm": True, **extra})
    config = {key: value for key, value in config.items() if value is not None}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert train.cli(["config.yaml"]) == 0
    finally:
        os.chdir(cwd)
    return tmp_path / "run"


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory, minilm):
    """A short real run with push_to_hub, the Hub client captured at its boundary (no network).

    The commit (`HfApi.create_commit`, or the streamed upload used when hf_xet is installed), repo creation and the
    server-side card check are replaced by recorders; everything before them (which files, which card) is real.
    """
    import huggingface_hub

    tmp_path = tmp_path_factory.mktemp("push")
    calls = {"repos": [], "commits": []}

    def create_repo(self, repo_id, **kwargs):
        calls["repos"].append(repo_id)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, **kwargs):
        calls["commits"].append((repo_id, sorted(op.path_in_repo for op in operations),
                                 {op.path_in_repo: op.path_or_fileobj for op in operations}))
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/0", commit_message="",
                                          commit_description="", oid="0" * 40)

    def pipelined_upload(api, repo_id, add_operations, delete_operations=(), **kwargs):  # the path with hf_xet
        return create_commit(api, repo_id, list(add_operations) + list(delete_operations))

    def validate_yaml(self, content, **kwargs):  # the Hub checks the card's metadata server-side
        calls.setdefault("cards", []).append(yaml.safe_load(content.split("---")[1]))

    patches = pytest.MonkeyPatch()
    patches.setattr(huggingface_hub.HfApi, "_validate_yaml", validate_yaml)
    patches.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    patches.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    patches.setattr("huggingface_hub._upload_pipeline.pipelined_upload", pipelined_upload)
    patches.setenv("HF_HUB_OFFLINE", "0")
    try:
        run = run_train(tmp_path, {"push_to_hub": True, "hub_model_id": "someone/mtl-quickstart",
                                   "report_to": "tensorboard"})
    finally:
        patches.undo()
    return run, calls


def test_push_to_hub_uploads_exactly_the_repo_files(pushed_run):
    run, calls = pushed_run
    assert calls["repos"] == ["someone/mtl-quickstart"]
    repo_id, files, _ = calls["commits"][-1]
    assert repo_id == "someone/mtl-quickstart"
    tensorboard = [f for f in files if f.startswith("runs/")]
    assert tensorboard, "TensorBoard event files are part of the run folder"
    assert sorted(set(files) - set(tensorboard)) == sorted([
        "1_Pooling/config.json", "README.md", "all_results.json", "config.json", "configuration_mtl.py",
        "eval_results.json", "model.safetensors", "modelcard_mtl.py", "modeling_mtl.py", "modules.json",
        "pipeline_mtl.py", "postprocess_mtl.py", "sentence_bert_config.json", "tasks_mtl.py", "test_results.json",
        "tokenizer.json", "tokenizer_config.json", "train_results.json", "trainer_state.json", "training_args.bin",
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


def test_plot_command_draws_per_task_curves(pushed_run, tmp_path):
    from plot_mtl import read_curves

    run, _ = pushed_run
    losses, _ = read_curves(run / "trainer_state.json")
    assert {"ner", "sentiment", "all tasks"} <= set(losses)
    out = tmp_path / "curves.png"
    result = subprocess.run([sys.executable, "-m", "plot_mtl", str(run), "--out", str(out)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


# ----------------------------------------------------------------------------- sentence-transformers
@pytest.mark.parametrize("pooling, normalize", [("mean", True), ("max", False), ("cls", False)])
def test_sentence_transformer_export_tiny(tmp_path, tokenizer, pooling, normalize):
    st = pytest.importorskip("sentence_transformers")
    model = tiny_model(pooling=pooling, normalize_embeddings=normalize)
    model.save_sentence_transformer(tmp_path / "st", tokenizer=tokenizer)
    modules = json.loads((tmp_path / "st" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"] + (["Normalize"] if normalize else [])
    pooling_config = json.loads((tmp_path / "st" / "1_Pooling" / "config.json").read_text())
    assert pooling_config[f"pooling_mode_{ {'mean': 'mean_tokens', 'max': 'max_tokens', 'cls': 'cls_token'}[pooling] }"]
    loaded = st.SentenceTransformer(str(tmp_path / "st"), device="cpu")
    sentences = ["short", "a somewhat longer sentence with padding around it", "mid size one"]
    np.testing.assert_allclose(loaded.encode(sentences), model.encode(sentences, tokenizer=tokenizer), atol=1e-5)


def test_sentence_transformer_export_minilm(tmp_path, minilm):
    st = pytest.importorskip("sentence_transformers")
    from conftest import sst_sentences

    model = MultiTaskModel.from_encoder("sentence-transformers/all-MiniLM-L6-v2", tasks=TASKS, normalize_embeddings=True)
    model.save_sentence_transformer(tmp_path / "st")
    loaded = st.SentenceTransformer(str(tmp_path / "st"), device="cpu")
    assert loaded.max_seq_length == 256
    sentences = sst_sentences(64) + ["word " * 400]  # one past max_seq_length: both truncate at 256
    assert np.abs(loaded.encode(sentences) - model.encode(sentences)).max() < 1e-5
