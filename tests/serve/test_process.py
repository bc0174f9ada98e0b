"""`mtl-serve` as a real process on a free loopback port: the real huggingface_hub client, SIGTERM, --workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from tests.serve.helpers import PERSON_AND_PLACE, README_SENTENCES, child_env, free_port, start, stop

# Run in a process of its own, without HF_HUB_OFFLINE (the client refuses every URL, loopback included, with it).
CLIENT_SCRIPT = """
import json, sys
from huggingface_hub import InferenceClient
base, text, sentences = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
embeddings = InferenceClient(base_url=base).feature_extraction(sentences)
label = InferenceClient(base_url=base + "/tasks/sentiment").text_classification(text)
entities = InferenceClient(base_url=base + "/tasks/ner").token_classification(text)
print(json.dumps({"embeddings": embeddings.tolist(), "labels": [[e.label, e.score] for e in label],
                  "entities": [[e.entity_group, e.score, e.word, e.start, e.end] for e in entities]}))
"""


def serve(tiny_run, port: int, *options: str):
    return start(["-m", "mtl_st.serve", str(tiny_run), "--port", str(port), *options], port)


@pytest.fixture(scope="module")
def server(tiny_run):
    """One server process for the module: a lone request waits up to 1 s in its batcher (so one can be caught in
    flight); the SIGTERM test ends it, after the client test."""
    port = free_port()
    process = serve(tiny_run, port, "--max-wait-ms", "1000")
    yield process, f"http://127.0.0.1:{port}"
    stop(process)


def test_huggingface_hub_inference_client_gets_the_models_answers(server, model, pipe):
    process, url = server
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    result = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT, url, PERSON_AND_PLACE, json.dumps(README_SENTENCES)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    np.testing.assert_allclose(got["embeddings"], model.encode(README_SENTENCES), atol=1e-5)
    expected = pipe(PERSON_AND_PLACE)
    assert got["labels"][0][0] == expected["sentiment"]["label"]
    assert got["labels"][0][1] == pytest.approx(expected["sentiment"]["score"], abs=1e-5)
    assert expected["ner"] and [entity[:1] + entity[2:] for entity in got["entities"]] == [
        [e["entity_group"], e["word"], e["start"], e["end"]] for e in expected["ner"]]
    assert [entity[1] for entity in got["entities"]] == pytest.approx([e["score"] for e in expected["ner"]], abs=1e-5)


def test_sigterm_answers_the_request_in_flight_then_exits_0(server):
    process, url = server
    answer: dict = {}

    def in_flight():
        try:
            answer["response"] = httpx.post(f"{url}/embed", json={"inputs": "answered during shutdown"}, timeout=60)
        except httpx.HTTPError as error:
            answer["error"] = error

    thread = threading.Thread(target=in_flight)
    thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "mtl_queue_depth 1.0" not in httpx.get(f"{url}/metrics").text:
        time.sleep(0.02)  # until the request sits in the batcher
    process.send_signal(signal.SIGTERM)
    thread.join(60)
    assert process.wait(60) == 0
    output = process.stdout.read()
    assert "error" not in answer, answer.get("error")
    assert answer["response"].status_code == 200 and len(answer["response"].json()[0]) == 32
    with pytest.raises(httpx.ConnectError):  # and nothing listens any more
        httpx.get(f"{url}/health", timeout=2)
    assert "Traceback" not in output and "Waiting for connections to close" in output


def test_bad_folder_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = subprocess.run([sys.executable, "-m", "mtl_st.serve", str(tmp_path)], env=child_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("mtl-serve:") and "tokenizer" in result.stderr
    assert "Traceback" not in result.stderr


def test_workers_share_the_port_and_a_killed_worker_is_replaced(onnx_run):
    """Two worker processes (serving the ONNX export: no torch to import, so they start fast) on one port."""
    psutil = pytest.importorskip("psutil")
    port = free_port()
    server = serve(onnx_run, port, "--workers", "2")
    url = f"http://127.0.0.1:{port}"
    try:
        def workers() -> list[int]:
            found = []
            for child in psutil.Process(server.pid).children():
                try:
                    if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                        found.append(child.pid)
                except psutil.Error:  # gone meanwhile
                    pass
            return found

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(workers()) < 2:
            time.sleep(0.2)
        before = workers()
        assert len(before) == 2
        os.kill(before[0], signal.SIGKILL)  # a crash
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and (before[0] in workers() or len(workers()) < 2):
            time.sleep(0.2)
        assert len(workers()) == 2 and before[0] not in workers()
        answers = [httpx.post(f"{url}/embed", json={"inputs": "still here"}, timeout=60) for _ in range(4)]
        assert all(response.status_code == 200 for response in answers)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text  # summed over the workers
        assert any(line.startswith('mtl_requests_total{route="/embed",status="200"}') for line in metrics.splitlines())
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
    finally:
        stop(server)
