"""The server's routes in process (FastAPI's TestClient): answers equal the model's and the pipeline's, errors
have TEI's shape and status, batching does not change answers, the key and the queue bound are enforced."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from tests.serve.helpers import PERSON_AND_PLACE, README_SENTENCES, make_app

LONG = " ".join(["word"] * 300)  # 302 tokens, past the tiny model's 128


def close_answers(got, expected, atol=1e-5):
    """Equal answers, floats to `atol` (embeddings as lists)."""
    if isinstance(expected, dict):
        assert set(got) == set(expected)
        for key in expected:
            close_answers(got[key], expected[key], atol)
    elif isinstance(expected, (list, tuple, np.ndarray)):
        assert len(got) == len(expected)
        for ours, theirs in zip(got, expected):
            close_answers(ours, theirs, atol)
    elif isinstance(expected, (float, np.floating)):
        assert got == pytest.approx(float(expected), abs=atol)
    else:
        assert got == expected


# ----------------------------------------------------------------------------- answers
def test_embed_and_root_equal_model_encode(client, model):
    texts = README_SENTENCES
    expected = model.encode(texts, normalize=True)
    for route in ("/embed", "/"):
        got = np.array(client.post(route, json={"inputs": texts}).json())
        np.testing.assert_allclose(got, expected, atol=1e-5)
    one = client.post("/embed", json={"inputs": texts[0], "normalize": False}).json()
    np.testing.assert_allclose(one, model.encode(texts[:1], normalize=False), atol=1e-5)
    cut = client.post("/embed", json={"inputs": texts, "dimensions": 8}).json()
    np.testing.assert_allclose(cut, model.encode(texts, normalize=True, truncate_dim=8), atol=1e-5)


def test_predict_answers_every_label_as_tei_does(client, pipe):
    got = client.post("/predict", json={"inputs": PERSON_AND_PLACE}).json()
    assert [entry["label"] for entry in got] != [] and {e["label"] for e in got} == {"negative", "neutral", "positive"}
    assert [e["score"] for e in got] == sorted((e["score"] for e in got), reverse=True)
    assert sum(e["score"] for e in got) == pytest.approx(1.0)
    expected = pipe(PERSON_AND_PLACE)["sentiment"]
    assert got[0]["label"] == expected["label"] and got[0]["score"] == pytest.approx(expected["score"], abs=1e-5)
    batch = client.post("/predict", json={"inputs": README_SENTENCES[:2], "raw_scores": True}).json()
    assert len(batch) == 2 and all(len(row) == 3 for row in batch)


def test_task_routes_answer_in_the_pipelines_shape(client, pipe):
    expected = pipe(PERSON_AND_PLACE)
    assert expected["ner"], "the biased NER head gives entities to compare"
    close_answers(client.post("/tasks/ner", json={"inputs": PERSON_AND_PLACE}).json(), expected["ner"])
    close_answers(client.post("/tasks/sentiment", json={"inputs": PERSON_AND_PLACE}).json(), expected["sentiment"])
    close_answers(client.post("/tasks/ner", json={"inputs": [PERSON_AND_PLACE]}).json(), [expected["ner"]])
    pair = {"text": "A man is eating.", "text_pair": "Someone eats food."}
    expected_pair = pipe(pair)
    close_answers(client.post("/tasks/nli", json={"inputs": pair}).json(), expected_pair["nli"])
    close_answers(client.post("/tasks/similarity", json={"inputs": [pair]}).json(), [expected_pair["similarity"]])
    # Inference-API bodies (huggingface_hub's InferenceClient): a classification task answers a list per input
    body = {"inputs": PERSON_AND_PLACE, "parameters": {"top_k": None}}
    close_answers(client.post("/tasks/sentiment", json=body).json(), [[expected["sentiment"]]])
    close_answers(client.post("/tasks/ner", json=body).json(), expected["ner"])


def test_multitask_equals_the_pipeline_on_the_readme_sentences(client, pipe, model):
    expected = pipe(README_SENTENCES, return_embedding=True)
    got = client.post("/multitask", json={"inputs": README_SENTENCES, "return_embedding": True}).json()
    close_answers(got, expected)
    np.testing.assert_allclose([answer["embedding"] for answer in got], model.encode(README_SENTENCES), atol=1e-5)
    one = client.post("/multitask", json={"inputs": README_SENTENCES[4], "tasks": ["ner"]}).json()
    close_answers(one, {"ner": expected[4]["ner"]})
    pair = {"text": "A man is eating.", "text_pair": "Someone eats food."}
    mixed = client.post("/multitask", json={"inputs": [README_SENTENCES[0], pair]}).json()
    close_answers(mixed, [{k: v for k, v in expected[0].items() if k != "embedding"}, pipe(pair)])


def test_long_texts_follow_truncate_and_windows(client, pipe):
    for route, body in (("/embed", {"inputs": LONG}), ("/predict", {"inputs": [LONG]}),
                        ("/tasks/sentiment", {"inputs": LONG}), ("/multitask", {"inputs": LONG})):
        response = client.post(route, json=body)
        assert response.status_code == 413, route
        assert "302 tokens" in response.json()["error"] and "128" in response.json()["error"]
        assert client.post(route, json={**body, "truncate": True}).status_code == 200, route
    # a token task reads a long text in windows: nothing is truncated, so nothing is refused
    close_answers(client.post("/tasks/ner", json={"inputs": LONG}).json(), pipe(LONG)["ner"])
    assert client.post("/multitask", json={"inputs": LONG, "tasks": ["ner"]}).status_code == 200


# ----------------------------------------------------------------------------- errors
BAD_REQUESTS = [
    ("non-JSON", "/embed", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422),
    ("plain text body", "/embed", {"content": b"hello"}, 422),
    ("a JSON list", "/embed", {"json": ["hello"]}, 422),
    ("missing inputs", "/embed", {"json": {"normalize": True}}, 422),
    ("a number", "/embed", {"json": {"inputs": 5}}, 422),
    ("a number in a list", "/predict", {"json": {"inputs": ["fine", 3]}}, 422),
    ("no inputs", "/multitask", {"json": {"inputs": []}}, 422),
    ("a null", "/tasks/ner", {"json": {"inputs": None}}, 422),
    ("a pair for a text task", "/tasks/ner", {"json": {"inputs": {"text": "a", "text_pair": "b"}}}, 422),
    ("a text for a pair task", "/tasks/nli", {"json": {"inputs": "a"}}, 422),
    ("a broken pair", "/tasks/nli", {"json": {"inputs": {"text": "a"}}}, 422),
    ("too many dimensions", "/embed", {"json": {"inputs": "a", "dimensions": 33}}, 422),
    ("too many inputs", "/embed", {"json": {"inputs": ["a"] * 33}}, 413),
    ("a text over the limit", "/embed", {"json": {"inputs": ["short", LONG]}}, 413),
    ("a pair over the limit", "/tasks/nli", {"json": {"inputs": {"text": LONG, "text_pair": "b"}}}, 413),
    ("a body over the cap", "/embed", {"content": b'{"inputs": "' + b"a" * 2_100_000 + b'"}',
                                        "headers": {"content-type": "application/json"}}, 413),
    ("a streamed body over the cap", "/embed", {"content": iter([b'{"inputs": "'] + [b"a" * 100_000] * 21 + [b'"}']),
                                                 "headers": {"content-type": "application/json"}}, 413),
    ("an unknown task", "/tasks/nope", {"json": {"inputs": "a"}}, 404),
    ("an unknown task in a list", "/multitask", {"json": {"inputs": "a", "tasks": ["sentiment", "nope"]}}, 404),
    ("an unknown route", "/nowhere", {"json": {"inputs": "a"}}, 404),
]


@pytest.mark.parametrize("what, route, request_args, status", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_input_gets_a_tei_error_and_the_server_keeps_serving(client, what, route, request_args, status):
    response = client.post(route, **request_args)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error"] and isinstance(body["error_type"], str)
    assert client.post("/embed", json={"inputs": "still serving"}).status_code == 200


def test_errors_name_what_is_wrong(client):
    assert "inputs" in client.post("/embed", json={"inputs": 5}).json()["error"]
    assert "`inputs` is required" in client.post("/embed", json={}).json()["error"]
    assert "at most 32" in client.post("/embed", json={"inputs": ["a"] * 33}).json()["error"]
    assert "'nope'" in client.post("/tasks/nope", json={"inputs": "a"}).json()["error"]
    assert client.post("/embed", json={"inputs": 5}).json()["error_type"] == "Validation"
    assert client.post("/tasks/nope", json={"inputs": "a"}).json()["error_type"] == "NotFound"


def test_the_api_key_is_enforced(backend, tiny_run):
    from fastapi.testclient import TestClient

    with TestClient(make_app(backend, tiny_run, api_key="s3cret")) as keyed:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = keyed.post("/embed", json={"inputs": "a"}, headers=headers)
            assert response.status_code == 401 and response.json()["error_type"] == "Unauthorized"
        assert keyed.get("/info").status_code == 401 and keyed.get("/metrics").status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert keyed.post("/embed", json={"inputs": "a"}, headers=good).status_code == 200
        assert keyed.post("/tasks/ner", json={"inputs": "a"}, headers=good).status_code == 200
        assert keyed.get("/health").status_code == 200  # for load balancers' probes


# ----------------------------------------------------------------------------- batching, queue, metrics
async def concurrently(app, requests: list[tuple[str, dict]]) -> list[httpx.Response]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await asyncio.gather(*(http.post(route, json=body) for route, body in requests))


def test_batched_answers_equal_unbatched_answers(backend, tiny_run, client):
    texts = README_SENTENCES + [PERSON_AND_PLACE, "Short.", "A somewhat longer sentence about Paris and Emma."]
    requests = [("/embed", {"inputs": text}) for text in texts] + [("/multitask", {"inputs": text}) for text in texts]
    one_by_one = [client.post(route, json=body).json() for route, body in requests]  # each alone in its batch
    app = make_app(backend, tiny_run, max_wait_ms=200)
    together = asyncio.run(concurrently(app, requests))
    assert all(response.status_code == 200 for response in together)
    close_answers([response.json() for response in together], one_by_one)
    metrics = app.state.service.metrics.render().decode()
    embed_batches = [line for line in metrics.splitlines() if line.startswith('mtl_batch_size_count{kind="embed"}')]
    assert embed_batches and float(embed_batches[0].split()[-1]) < len(texts)  # fewer batches than requests


def test_one_failing_input_fails_only_its_own_request(backend, tiny_run, monkeypatch):
    original = type(backend).embed

    def embed(self, texts, *args, **kwargs):
        if "poison" in texts:
            raise RuntimeError("the model failed on this input")
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(type(backend), "embed", embed)
    app = make_app(backend, tiny_run, max_wait_ms=200)
    responses = asyncio.run(concurrently(app, [("/embed", {"inputs": text}) for text in ("a", "poison", "b", "c")]))
    assert [response.status_code for response in responses] == [200, 500, 200, 200]
    assert responses[1].json()["error_type"] == "Backend"


def test_a_full_queue_answers_429_at_once_and_drops_nothing(backend, tiny_run):
    app = make_app(backend, tiny_run, max_queue=4, max_wait_ms=300)
    responses = asyncio.run(concurrently(app, [("/embed", {"inputs": [f"text {i}", "other"]}) for i in range(6)]))
    statuses = [response.status_code for response in responses]
    assert statuses.count(200) == 2 and statuses.count(429) == 4  # 2 requests of 2 texts fill a queue of 4
    assert all(response.json()["error_type"] == "Overloaded" for response in responses if response.status_code == 429)


def test_metrics_info_health_and_openapi(client):
    client.post("/embed", json={"inputs": ["a", "b"]})
    client.post("/embed", json={"inputs": 5})
    text = client.get("/metrics").text
    for name in ("mtl_requests_total", "mtl_request_errors_total", "mtl_request_duration_seconds_bucket",
                 "mtl_batch_size_bucket", "mtl_batch_tokens_bucket", "mtl_queue_depth", "mtl_inputs_total"):
        assert name in text, name
    assert 'mtl_request_errors_total{error_type="Validation",route="/embed"} 1.0' in text
    info = client.get("/info").json()
    assert info["max_input_length"] == 128 and info["max_client_batch_size"] == 32 and info["hidden_size"] == 32
    assert info["model_type"]["classifier"]["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert [task["name"] for task in info["tasks"]] == ["sentiment", "ner", "nli", "topics", "stars", "similarity"]
    assert client.get("/health").json() == {"status": "ok"}
    schema = client.get("/openapi.json").json()
    assert {"/embed", "/", "/predict", "/tasks/{task}", "/multitask", "/info", "/health", "/metrics"} <= set(
        schema["paths"])
    for path in ("/embed", "/predict", "/tasks/{task}", "/multitask"):
        operation = schema["paths"][path]["post"]
        assert "requestBody" in operation and {"200", "413", "422"} <= set(operation["responses"])
    assert {"EmbedRequest", "MultitaskRequest", "ErrorResponse", "Info"} <= set(schema["components"]["schemas"])


def test_freed_memory_is_handed_back_every_release_every_batches(backend, tiny_run, monkeypatch):
    """A long-running server's RSS stays flat (BENCHMARKS.md, "Serving"): every RELEASE_EVERY model batches, failed
    ones included, the inference thread hands the heap's freed pages back."""
    from mtl_st.serve import app as app_module

    releases = []
    monkeypatch.setattr(app_module, "RELEASE_EVERY", 3)
    monkeypatch.setattr(app_module, "release_free_memory", lambda: releases.append(1))
    app = make_app(backend, tiny_run, max_wait_ms=0)

    async def one_by_one():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [await c.post("/embed", json={"inputs": f"text {i}"}) for i in range(7)]

    responses = asyncio.run(one_by_one())
    assert [response.status_code for response in responses] == [200] * 7
    assert len(releases) == 2  # after batches 3 and 6
