"""The demo app built in process: a view per task from the task specs, bad folders, examples, the PCA map."""

from __future__ import annotations

import json

import numpy as np

from mtl_st.demo import views
from tasks_mtl import TASK_TYPES, TaskSpec
from tests.serve.helpers import SERVED_TASKS, build_tiny_run, make_app


def components(blocks) -> dict:
    return {block.elem_id: block for block in blocks.blocks.values() if getattr(block, "elem_id", None)}


def test_every_task_gets_the_view_its_spec_declares():
    kinds = {task["name"]: views.view_kind(task) for task in SERVED_TASKS}
    assert kinds == {"sentiment": "labels", "ner": "entities", "nli": "labels", "topics": "labels",
                     "stars": "number", "similarity": "number"}
    assert views.view_value(SERVED_TASKS[0], {"label": "positive", "score": 0.75}, "x") == {"positive": 0.75}
    assert views.view_value(SERVED_TASKS[3], [{"label": "food", "score": 0.5}, {"label": "sport", "score": 0.41}],
                            "x") == {"food": 0.5, "sport": 0.41}
    entities = [{"entity_group": "PER", "score": 0.9, "word": "Emma", "start": 0, "end": 4}]
    assert views.view_value(SERVED_TASKS[1], entities, "Emma runs") == {
        "text": "Emma runs", "entities": [{"entity": "PER", "start": 0, "end": 4}]}


def test_a_folder_without_a_tokenizer_shows_a_message(tmp_path):
    from mtl_st.demo.app import load_demo

    folder = build_tiny_run(tmp_path / "no-tokenizer", with_tokenizer=False)
    message = components(load_demo(folder))["message"].value
    assert "cannot be shown" in message and "no tokenizer" in message
    assert "not a folder" in components(load_demo(tmp_path / "missing"))["message"].value


def test_the_app_is_built_from_the_config_with_the_runs_examples(tmp_path, monkeypatch):
    """Views for the six task types, and a search tab for a single-text task without a head (a retrieval-like type
    registered here), from a backend stand-in; examples from the run folder."""
    from mtl_st.demo.app import build_demo, run_examples

    class Retrieval(TaskSpec):
        name = "retrieval"
        has_head = False
        needs_labels = False

    if "retrieval" not in TASK_TYPES:  # until the retrieval type lands, a stand-in with what the view reads
        monkeypatch.setitem(TASK_TYPES, "retrieval", Retrieval())

    class Backend:  # what build_demo reads of a backend
        model_id, kind, hidden_size, pooling, max_input_length, reads_windows = "fake", "pytorch", 4, "mean", 16, True
        tasks = SERVED_TASKS + [{"name": "docs", "type": "retrieval", "prompts": {"query": "query: "}}]

        def text_tasks(self):
            return [task for task in self.tasks if not TASK_TYPES[task["type"]].takes_pair]

        def pair_tasks(self):
            return [task for task in self.tasks if TASK_TYPES[task["type"]].takes_pair]

        def embed(self, texts, truncate=False):
            self.embedded = texts
            return np.array([[1.0, 0, 0, 0] if "cat" in text else [0, 1.0, 0, 0] for text in texts])

    backend = Backend()
    blocks = build_demo(backend, examples=["One example."])
    found = components(blocks)
    assert {"task-sentiment", "task-ner", "task-topics", "task-stars", "task-nli", "task-similarity",
            "search-query-docs", "embedding-map", "message"} <= set(found)
    assert type(found["task-ner"]).__name__ == "HighlightedText" and type(found["task-stars"]).__name__ == "Number"
    search = [fn for fn in blocks.fns.values() if fn.fn is not None and fn.fn.__name__ == "search"][0].fn
    message, rows = search("a cat", "dogs bark\ncats purr, a cat sleeps\n", None)
    assert message == "" and rows[0] == [1, 1.0, "cats purr, a cat sleeps"]
    assert backend.embedded[0] == "query: a cat"  # the task's prompts are used
    assert "Type a query" in search("", "", None)[0]

    run = tmp_path / "run"
    run.mkdir()
    assert run_examples(run) == ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium.",
                                 "A gorgeous, witty film that I would happily watch again.",
                                 "Heading to New York with Taylor Swift next week"]
    (run / "config.json").write_text(json.dumps({"show_examples": ["From the config."]}))
    assert run_examples(run) == ["From the config."]
    (run / "show_examples.json").write_text(json.dumps(["From the file."]))
    assert run_examples(run) == ["From the file."] and run_examples(run, ["Given."]) == ["Given."]


def test_the_long_text_message_says_what_read_it_in_windows():
    message = views.long_text_message(302, 128, SERVED_TASKS[:2], reads_windows=True, embedding=True)
    assert message == ("This text has 302 tokens, more than the model's limit of 128. ner read it in full, in windows "
                       "of 128 tokens. sentiment, the embedding read only its first 128 tokens.")
    assert "windows" not in views.long_text_message(302, 128, SERVED_TASKS[:2], reads_windows=False, embedding=False)


def test_the_map_places_similar_sentences_near_each_other():
    vectors = np.array([[1.0, 0.0, 0.0], [0.99, 0.05, 0.0], [0.0, 0.0, 1.0]])
    points = views.pca_2d(vectors)
    assert points.shape == (3, 2)
    assert np.linalg.norm(points[0] - points[1]) < 0.2 * np.linalg.norm(points[0] - points[2])
    assert views.pca_2d(vectors[:1]).tolist() == [[0.0, 0.0]]
    figure = views.map_figure(["a", "b", "c"], list(vectors))
    assert len(figure.axes[0].texts) == 3


def test_the_server_mounts_the_demo_at_demo(demo_run):
    from fastapi.testclient import TestClient

    from mtl_st.inference import load_backend

    backend = load_backend(demo_run)
    with TestClient(make_app(backend, demo_run, demo=True)) as client:
        page = client.get("/demo/")
        assert page.status_code == 200 and "gradio" in page.text.lower()
        assert client.post("/embed", json={"inputs": "the API is still there"}).status_code == 200
    with TestClient(make_app(backend, demo_run, demo=True, api_key="k")) as client:
        assert client.post("/embed", json={"inputs": "a"}).status_code == 401
        assert client.get("/demo/config").status_code in (401, 403)  # the page asks for user `api` and the key
        assert client.post("/demo/login/", data={"username": "api", "password": "k"}).status_code == 200
