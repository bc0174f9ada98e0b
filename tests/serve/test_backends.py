"""The inference backends: ONNX (exported once into a cache) answers as the pipeline does, long texts and pairs
included; the real all-MiniLM-L6-v2 behind the server equals `model.encode` and the pipeline."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.serve.helpers import PERSON_AND_PLACE, README_SENTENCES, SERVED_TASKS, child_env, make_app, minilm_path
from tests.serve.test_app import close_answers

LONG = "Emma flew to Paris. " * 40  # 202 tokens: windows for the tiny model's 128
PAIRS = [{"text": "A man is eating.", "text_pair": "Someone eats food."},
         {"text": "Emma is in Paris.", "text_pair": "The stock market fell."}]


@pytest.fixture(scope="module")
def onnx_backend(onnx_run):
    from mtl_st.inference import load_backend

    return load_backend(onnx_run)


def test_onnx_backend_answers_as_the_pipeline(onnx_backend, backend, pipe, model):
    assert onnx_backend.kind == "onnx" and onnx_backend.reads_windows
    texts = README_SENTENCES + [PERSON_AND_PLACE, LONG]
    got = onnx_backend.answer(texts, return_embedding=True)
    expected = pipe(texts, return_embedding=True)
    close_answers(got, expected, atol=1e-4)  # the long text too: token tasks over the same windows
    close_answers(onnx_backend.answer_pairs(PAIRS), pipe(PAIRS), atol=1e-4)
    np.testing.assert_allclose(onnx_backend.embed(texts, truncate=True), model.encode(texts), atol=1e-4)
    assert onnx_backend.classify(texts[:3], "sentiment")[0][0]["label"] == expected[0]["sentiment"]["label"]
    close_answers(onnx_backend.classify(texts, "sentiment"), backend.classify(texts, "sentiment"), atol=1e-4)
    with pytest.raises(ValueError, match="normalised"):
        onnx_backend.embed(["x"], normalize=False)


def test_the_export_is_cached_and_served_without_torch(onnx_backend, onnx_run, tiny_run, onnx_cache, monkeypatch):
    from fastapi.testclient import TestClient

    import modeling_mtl
    from mtl_st.inference import load_backend

    monkeypatch.setattr(modeling_mtl.MultiTaskModel, "export_onnx", lambda *a, **k: pytest.fail("exported again"))
    again = load_backend(tiny_run, onnx=True, cache_dir=onnx_cache)  # the cached export, not a new one
    assert again.kind == "onnx" and [p for p in onnx_cache.iterdir() if not p.name.startswith(".")] == [onnx_run]
    code = ("import sys; sys.modules['torch'] = None\n"
            "from mtl_st.inference import load_backend\nfrom mtl_st.serve.app import create_app\n"
            "from mtl_st.serve.config import ServeConfig\n"
            f"backend = load_backend({str(onnx_run)!r})\ncreate_app(backend, ServeConfig({str(onnx_run)!r}))\n"
            "print(backend.answer(['Emma is in Paris'])[0]['sentiment']['label'])\n")
    result = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == onnx_backend.answer(["Emma is in Paris"])[0]["sentiment"]["label"]
    with TestClient(make_app(onnx_backend, tiny_run)) as client:
        got = client.post("/multitask", json={"inputs": README_SENTENCES}).json()
        close_answers(got, onnx_backend.answer(README_SENTENCES), atol=1e-6)
        assert client.post("/embed", json={"inputs": "x", "normalize": False}).status_code == 422
        assert client.get("/info").json()["backend"] == "onnx"


def test_minilm_behind_the_server_equals_encode_and_the_pipeline(tmp_path):
    """The real all-MiniLM-L6-v2 encoder (heads random), saved as a run: /embed equals `model.encode` to 1e-5 and
    /multitask the pipeline on the README's sentences."""
    from fastapi.testclient import TestClient
    from transformers import AutoTokenizer, pipeline

    import pipeline_mtl  # noqa: F401
    from modeling_mtl import MultiTaskModel
    from mtl_st.inference import load_backend

    tasks = [SERVED_TASKS[0], SERVED_TASKS[1], SERVED_TASKS[-1]]
    model = MultiTaskModel.from_encoder(str(minilm_path()), tasks=tasks, normalize_embeddings=True).eval()
    model.tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model.save_pretrained(tmp_path / "minilm-run")
    run = tmp_path / "minilm-run"
    with TestClient(make_app(load_backend(run), run)) as client:
        assert client.get("/info").json()["max_input_length"] == 256
        embeddings = np.array(client.post("/embed", json={"inputs": README_SENTENCES}).json())
        np.testing.assert_allclose(embeddings, model.encode(README_SENTENCES), atol=1e-5)
        assert float(embeddings[0] @ embeddings[1]) == pytest.approx(0.666, abs=2e-3)  # the published cosine
        got = client.post("/multitask", json={"inputs": README_SENTENCES, "return_embedding": True}).json()
    close_answers(got, pipeline("multitask", model=str(run))(README_SENTENCES, return_embedding=True), atol=1e-5)
