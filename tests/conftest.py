"""Fixtures shared by the test modules (the helpers they use are in `tests/utils.py`)."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import torch
import yaml
from transformers import AutoTokenizer

from tests.utils import TASKS, TINY_ENCODERS, minilm_path, ner_data, run_train, sentiment_data

datasets.disable_progress_bars()


@pytest.fixture(scope="session")
def minilm() -> Path:
    return minilm_path()


@pytest.fixture(scope="session")
def tokenizer(minilm):
    """The MiniLM (BERT uncased, 30,522 words) tokenizer; the tiny encoders share its vocabulary size."""
    return AutoTokenizer.from_pretrained(minilm)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory, minilm) -> str:
    """A saved 2-layer, 32-wide random BERT with the MiniLM tokenizer: a checkpoint that trains in seconds."""
    from transformers import AutoConfig, AutoModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.for_model(**TINY_ENCODERS["bert"])).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def minilm_model(minilm):
    """all-MiniLM-L6-v2 with the two tiny tasks' heads (mean pooling, normalised), in eval mode."""
    from modeling_mtl import MultiTaskModel

    return MultiTaskModel.from_encoder(
        "sentence-transformers/all-MiniLM-L6-v2", tasks=TASKS, pooling="mean", normalize_embeddings=True
    ).eval()


@pytest.fixture(scope="module")
def data(tokenizer):
    """12 tokenized rows of each of the two tasks."""
    return {
        "sentiment": sentiment_data(tokenizer, 12),
        "ner": ner_data(tokenizer, 12),
    }


@pytest.fixture(scope="session")
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
