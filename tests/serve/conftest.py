"""Fixtures of the serving tests: a tiny saved model with a task of every type, its backend and in-process apps."""

from __future__ import annotations

import pytest

from tests.serve.helpers import build_tiny_run, make_app

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A saved 2-layer, 32-wide random BERT model with six tasks and the MiniLM tokenizer."""
    return build_tiny_run(tmp_path_factory.mktemp("served") / "tiny-run")


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="session")
def onnx_run(tiny_run, onnx_cache):
    """The tiny run exported to ONNX (fp32) once, into the test cache: a folder served without torch."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from mtl_st.inference import onnx_folder

    return onnx_folder(tiny_run, cache_dir=onnx_cache)


@pytest.fixture(scope="session")
def backend(tiny_run):
    from mtl_st.inference import load_backend

    return load_backend(tiny_run, num_threads=1)


@pytest.fixture(scope="session")
def pipe(tiny_run):
    """The multitask pipeline on the same folder: what every answer is checked against."""
    from transformers import pipeline

    import pipeline_mtl  # noqa: F401  (registers "multitask")

    return pipeline("multitask", model=str(tiny_run), device="cpu")


@pytest.fixture(scope="session")
def model(tiny_run):
    import torch

    from modeling_mtl import MultiTaskModel

    return MultiTaskModel.from_pretrained(str(tiny_run), dtype=torch.float32).eval()


@pytest.fixture
def client(backend, tiny_run):
    from fastapi.testclient import TestClient

    with TestClient(make_app(backend, tiny_run)) as test_client:
        yield test_client
