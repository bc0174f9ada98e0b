"""The Gradio demo, built from the model's config: one view per task, one encoder pass per submit.

    blocks = load_demo("runs/quickstart")             # or build_demo(backend)
    blocks.launch(server_name="127.0.0.1", server_port=7860, theme=demo_theme())

The "Text" tab answers every single-text task and adds the text's embedding to a 2-D map (PCA) of the sentences
typed so far, all from one `backend.answer(..., return_embedding=True)` call; the "Pair" tab answers every pair
task (pair classification, similarity as the cosine of the two embeddings) from one `answer_pairs` call; a
"Search" tab appears for a single-text task without a head (retrieval). Bad input (an empty text, a folder that
cannot be served) shows a message in the page; a text over the length limit says how each task read it.

Offline: analytics are switched off here, before Gradio is imported, and the theme's fonts ship with Gradio.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no usage analytics, no version check

import gradio as gr  # noqa: E402

from mtl_st.demo import views  # noqa: E402
from mtl_st.inference import Backend, ModelFolderError, load_backend  # noqa: E402

logger = logging.getLogger(__name__)

# The README quickstart's `show_examples` (configs/quickstart.yaml): used when neither --examples nor the run folder
# gives any.
DEFAULT_EXAMPLES = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    "A gorgeous, witty film that I would happily watch again.",
    "Heading to New York with Taylor Swift next week",
]
EXAMPLES_FILE = "show_examples.json"  # a run folder may hold its examples here (a JSON list of sentences)


def demo_theme() -> gr.themes.Base:
    """Gradio's default theme: its fonts (Source Sans Pro, IBM Plex Mono) are served by Gradio itself, no CDN."""
    return gr.themes.Default()


def run_examples(run_dir: str | os.PathLike, given: list[str] | None = None) -> list[str]:
    """The examples: those given, else the run folder's (`show_examples.json`, or `show_examples` in config.json),
    else the README quickstart's five sentences."""
    if given:
        return list(given)
    folder = Path(run_dir)
    for file, key in ((folder / EXAMPLES_FILE, None), (folder / "config.json", "show_examples")):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        found = data.get(key) if key and isinstance(data, dict) else data
        if isinstance(found, list) and found and all(isinstance(item, str) for item in found):
            return found
    return list(DEFAULT_EXAMPLES)


def load_demo(run_dir: str | os.PathLike, onnx: bool = False, quantize: str | None = None,
              examples: list[str] | None = None) -> gr.Blocks:
    """The demo of a run folder; a folder that cannot be served gives a page that says why."""
    try:
        backend = load_backend(run_dir, onnx=onnx, quantize=quantize)
    except ModelFolderError as error:
        return error_demo(str(error))
    return build_demo(backend, examples=run_examples(run_dir, examples))


def error_demo(message: str) -> gr.Blocks:
    with gr.Blocks(title="mtl-st demo", analytics_enabled=False) as blocks:
        gr.Markdown("# Multi-task model demo")
        gr.Markdown(f"**This model folder cannot be shown.** {message}", elem_id="message")
    return blocks


def build_demo(backend: Backend, examples: list[str] | None = None, title: str | None = None) -> gr.Blocks:
    """The Blocks app for a loaded backend: every task of its config gets its view."""
    text_tasks = [task for task in backend.text_tasks() if views.view_kind(task) != views.SEARCH]
    search_tasks = [task for task in backend.text_tasks() if views.view_kind(task) == views.SEARCH]
    pair_tasks = backend.pair_tasks()
    examples = list(examples if examples is not None else DEFAULT_EXAMPLES)
    title = title or f"{backend.model_id}: every head and the embeddings"

    with gr.Blocks(title=title, analytics_enabled=False) as blocks:
        gr.Markdown(f"# {title}\n{_summary(backend)}")
        with gr.Tab("Text", id="text"):
            with gr.Row():
                with gr.Column(scale=3):
                    text = gr.Textbox(label="Text", lines=3, placeholder="Type a sentence", elem_id="text-input")
                    submit = gr.Button("Submit", variant="primary", elem_id="text-submit")
                    message = gr.Markdown(elem_id="message")
                    if examples:
                        gr.Examples([[example] for example in examples], inputs=[text], label="Examples")
                with gr.Column(scale=4):
                    outputs = [_component(task) for task in text_tasks]
            with gr.Column():
                embedding_map = gr.Plot(label="Embeddings: near points are similar sentences", elem_id="embedding-map")
                clear = gr.Button("Clear the map", size="sm")
            history = gr.State([])
        if pair_tasks:
            with gr.Tab("Pair", id="pair"):
                with gr.Row():
                    first = gr.Textbox(label="Text", lines=2, elem_id="pair-text")
                    second = gr.Textbox(label="Text pair", lines=2, elem_id="pair-text-pair")
                pair_submit = gr.Button("Compare", variant="primary", elem_id="pair-submit")
                pair_message = gr.Markdown(elem_id="pair-message")
                pair_outputs = [_component(task) for task in pair_tasks]
        for task in search_tasks:
            with gr.Tab(f"Search ({task['name']})"):
                query = gr.Textbox(label="Query", elem_id=f"search-query-{task['name']}")
                corpus = gr.Textbox(label="Corpus: one document per line", lines=8)
                upload = gr.File(label="...or a text file, one document per line", file_types=[".txt"])
                search = gr.Button("Search", variant="primary")
                search_message = gr.Markdown()
                results = gr.Dataframe(headers=["rank", "cosine", "document"], label="Closest documents")
                search.click(_searcher(backend, task), [query, corpus, upload], [search_message, results])

        def answer_text(value: str, seen: list) -> tuple:
            blank = [None] * len(outputs)
            if not value or not value.strip():
                return ("Type a sentence first.", *blank, views.map_figure(*_unzip(seen)), seen)
            (length,) = backend.count_tokens([value])
            note = ""
            if length > backend.max_input_length:
                note = views.long_text_message(length, backend.max_input_length, text_tasks, backend.reads_windows,
                                               embedding=True)
            (answer,) = backend.answer([value], tasks=[task["name"] for task in text_tasks], return_embedding=True)
            seen = (seen + [(value, answer["embedding"])])[-views.MAP_LIMIT:]
            shown = [views.view_value(task, answer[task["name"]], value) for task in text_tasks]
            return (note, *shown, views.map_figure(*_unzip(seen)), seen)

        events = dict(show_progress="minimal")
        submit.click(answer_text, [text, history], [message, *outputs, embedding_map, history], api_name="submit",
                     **events)
        text.submit(answer_text, [text, history], [message, *outputs, embedding_map, history], api_name=False,
                    **events)
        clear.click(lambda: (views.map_figure([], []), []), None, [embedding_map, history], api_name=False)
        blocks.load(lambda: views.map_figure([], []), None, [embedding_map], api_name=False)

        if pair_tasks:
            def answer_pair(a: str, b: str) -> tuple:
                blank = [None] * len(pair_outputs)
                if not a or not a.strip() or not b or not b.strip():
                    return ("Type both texts first.", *blank)
                (length,) = backend.count_pair_tokens([{"text": a, "text_pair": b}])
                note = (f"These texts have {length} tokens, more than the model's limit of "
                        f"{backend.max_input_length}: pairs are read up to the limit (truncated)."
                        if length > backend.max_input_length else "")
                (answer,) = backend.answer_pairs([{"text": a, "text_pair": b}])
                return (note, *[views.view_value(task, answer[task["name"]], a) for task in pair_tasks])

            pair_submit.click(answer_pair, [first, second], [pair_message, *pair_outputs], api_name="pair",
                              **events)

        def multitask(text: str) -> dict:
            """Every single-text task's answer for `text`, as the multitask pipeline gives it."""
            if not text or not text.strip():
                raise gr.Error("Type a sentence first.")
            return backend.answer([text])[0]

        gr.api(multitask, api_name="multitask")
    return blocks


def _component(task: dict) -> Any:
    kind, name = views.view_kind(task), task["name"]
    label = f"{name} ({task['type']})"
    if kind == views.ENTITIES:
        return gr.HighlightedText(label=label, elem_id=f"task-{name}", show_inline_category=True)
    if kind == views.LABELS:
        return gr.Label(label=label, elem_id=f"task-{name}", num_top_classes=5)
    return gr.Number(label=label + (": cosine of the two embeddings" if views.is_cosine(task) else ""),
                     elem_id=f"task-{name}", interactive=False, precision=4)


def _searcher(backend: Backend, task: dict):
    prompts = task.get("prompts") or {}

    def search(query: str, corpus_text: str, upload: Any) -> tuple:
        corpus = views.corpus_lines(corpus_text, upload)
        if not query or not query.strip() or not corpus:
            return "Type a query and paste (or upload) a corpus, one document per line.", None
        texts = [prompts.get("query", "") + query] + [prompts.get("document", "") + doc for doc in corpus]
        vectors = backend.embed(texts, truncate=True)
        return "", views.search_rows(vectors[0], corpus, vectors[1:])

    return search


def _summary(backend: Backend) -> str:
    tasks = ", ".join(f"**{task['name']}** ({task['type']})" for task in backend.tasks)
    return (f"{tasks}; embeddings of {backend.hidden_size} dimensions ({backend.pooling} pooling). Backend: "
            f"{backend.kind}; texts up to {backend.max_input_length} tokens.")


def _unzip(seen: list) -> tuple[list, list]:
    return [sentence for sentence, _ in seen], [vector for _, vector in seen]


__all__ = ["build_demo", "load_demo", "error_demo", "demo_theme", "run_examples", "DEFAULT_EXAMPLES"]
