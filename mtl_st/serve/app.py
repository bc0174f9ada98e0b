"""The FastAPI app: Text Embeddings Inference's routes plus one route per task and `/multitask`.

    app = create_app(load_backend("runs/quickstart"), ServeConfig("runs/quickstart"))

| route | body | answer |
| --- | --- | --- |
| `POST /embed`, `POST /` | `{"inputs": str or [str], "normalize": true, "truncate": false, "dimensions": null}` | `[[float]]` |
| `POST /predict` | `{"inputs": str or [str], "truncate": false, "raw_scores": false}` | `[{label, score}]` (every label, best first), a list of those for a list |
| `POST /tasks/{task}` | `{"inputs": str, {text, text_pair}, or a list}` | the pipeline's answer (a list for a list) |
| `POST /multitask` | `{"inputs": ..., "tasks": null, "return_embedding": false}` | `{task: answer, "embedding"?}` (a list for a list) |
| `GET /info`, `GET /health`, `GET /metrics` | | TEI's info, `{"status": "ok"}`, Prometheus text |

Every input is validated (JSON, types, count, length) before it is queued, so a bad request never reaches a batch;
the texts of concurrent requests share model batches (`mtl_st.serve.batching`). A body with Inference-API
`"parameters"` (huggingface_hub's `InferenceClient`) gets the Inference API's shape for a classification task: a
list of `{label, score}` lists, one per input.
"""

from __future__ import annotations

import hmac
import logging
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from encoding_mtl import release_free_memory
from mtl_st import __version__
from mtl_st.inference import Backend, TextTooLong, UnknownTask, truncate_dimensions
from mtl_st.serve import schemas
from mtl_st.serve.batching import Batcher, QueueFull, ShuttingDown
from mtl_st.serve.config import ServeConfig
from mtl_st.serve.metrics import CONTENT_TYPE, Metrics
from mtl_st.serve.middleware import BodyLimit, RequestMetrics
from mtl_st.serve.schemas import Pair, ServeError, too_large, validation
from tasks_mtl import get_task_type

logger = logging.getLogger(__name__)


def json_response(content: Any, status: int = 200) -> Response:
    """JSON with numpy arrays and scalars written as numbers (orjson), without a second validation pass."""
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


RELEASE_EVERY = 64  # model batches between two `release_free_memory` calls (each one stalls the inference thread)


def run_batch(backend: Backend, key: tuple, payloads: list) -> list:
    """One model batch of the batcher: `key` says what to run on every payload."""
    kind = key[0]
    if kind == "embed":
        return list(backend.embed(payloads, normalize=key[1], truncate=True))
    if kind == "classify":
        return backend.classify(payloads, key[1], raw_scores=key[2])
    if kind == "answer":
        return backend.answer(payloads, return_embedding=True)
    if kind == "pairs":
        return backend.answer_pairs(payloads)
    raise ValueError(f"unknown batch kind {kind!r}")


def inference_api_shape(task: dict, answers: list, single: bool) -> Any:
    """The Inference API's shape: a classification task answers a list of `{label, score}` per input, in a list even
    for one input (what `InferenceClient.text_classification` reads); other tasks answer as the pipeline does."""
    if get_task_type(task["type"]).pipeline_tag == "text-classification":
        return [answer if isinstance(answer, list) else [answer] for answer in answers]
    return answers[0] if single else answers


class Service:
    """The routes' logic, around one backend and one batcher."""

    def __init__(self, backend: Backend, config: ServeConfig, metrics: Metrics):
        self.backend, self.config, self.metrics = backend, config, metrics
        self.batches_run = 0
        self.batcher = Batcher(self._run_batch,
                               max_batch_tokens=config.max_batch_tokens, max_batch_size=config.max_batch_requests,
                               max_wait=config.max_wait_ms / 1000, max_queue=config.max_queue,
                               on_batch=self._on_batch)

    def _run_batch(self, key: tuple, payloads: list) -> list:
        """`run_batch` on the inference thread; every `RELEASE_EVERY` batches the heap's freed pages go back to the
        system (glibc keeps them otherwise, and a long-running server's RSS creeps up: BENCHMARKS.md, "Serving")."""
        try:
            return run_batch(self.backend, key, payloads)
        finally:
            self.batches_run += 1
            if self.batches_run % RELEASE_EVERY == 0:
                release_free_memory()

    def _on_batch(self, stats) -> None:
        self.metrics.observe_batch(stats)
        self.metrics.queue_depth.set(self.batcher.in_flight)

    # ------------------------------------------------------------------ validation
    def items(self, inputs: Any) -> tuple[list, bool]:
        """`(inputs as a list, whether one was sent)`; 422 for none, 413 for more than the client batch size."""
        single = not isinstance(inputs, list)
        items = [inputs] if single else list(inputs)
        if not items:
            raise validation("`inputs` is empty: send a text or a list of texts.")
        if len(items) > self.config.max_client_batch_size:
            raise too_large(f"{len(items)} inputs in one request; at most {self.config.max_client_batch_size} "
                            "(--max-client-batch-size).")
        return items, single

    def lengths(self, texts: list[str], check: bool) -> list[int]:
        lengths = self.backend.count_tokens(texts)
        if check:
            try:
                self.backend.check_lengths(lengths)
            except TextTooLong as error:
                raise too_large(str(error)) from None
        return lengths

    def pair_lengths(self, pairs: list[dict], check: bool) -> list[int]:
        lengths = self.backend.count_pair_tokens(pairs)
        if check:
            try:
                self.backend.check_lengths(lengths)
            except TextTooLong as error:
                raise too_large(f"{error} (pairs are truncated, never read in windows)") from None
        return lengths

    # ------------------------------------------------------------------ running
    async def submit(self, key: tuple, payloads: list, costs: list[int]) -> list:
        if not payloads:
            return []
        self.metrics.queue_depth.set(self.batcher.in_flight + len(payloads))
        try:
            return await self.batcher.submit(key, payloads, costs)
        except QueueFull as error:
            raise ServeError(429, "Overloaded", str(error)) from None
        except ShuttingDown as error:
            raise ServeError(503, "Unhealthy", str(error)) from None
        except UnknownTask as error:
            raise ServeError(404, "NotFound", str(error)) from None
        except (ValueError, TypeError) as error:
            raise validation(str(error)) from None
        except Exception as error:  # noqa: BLE001 - the model failed on these inputs (others in the batch are fine)
            logger.exception("The model failed on a request's inputs")
            raise ServeError(500, "Backend", f"The model failed on this input: {type(error).__name__}: {error}") from None

    async def embed(self, body: schemas.EmbedRequest) -> Response:
        texts, _ = self.items(body.inputs)
        if body.prompt_name is not None:
            raise validation(f"The model has no named prompts (prompt_name={body.prompt_name!r}).")
        if body.truncation_direction.lower() != "right":
            raise validation("Only truncation_direction `right` is supported (the model's truncation side).")
        if body.dimensions is not None and body.dimensions > self.backend.hidden_size:
            raise validation(f"`dimensions` must be at most {self.backend.hidden_size}, got {body.dimensions}.")
        if not body.normalize and not self.backend.unnormalized:
            raise validation("This ONNX graph holds L2-normalised embeddings only; send normalize: true.")
        lengths = self.lengths(texts, check=not body.truncate)
        self.metrics.inputs.labels("/embed").inc(len(texts))
        vectors = np.stack(await self.submit(("embed", body.normalize), texts, lengths))
        return json_response(truncate_dimensions(vectors, body.dimensions, body.normalize))

    async def predict(self, body: schemas.PredictRequest) -> Response:
        try:
            task = self.backend.classify_task(self.config.predict_task)
        except UnknownTask as error:
            raise ServeError(404, "NotFound", str(error)) from None
        texts, single = self.items(body.inputs)
        lengths = self.lengths(texts, check=not body.truncate)
        self.metrics.inputs.labels("/predict").inc(len(texts))
        answers = await self.submit(("classify", task, body.raw_scores), texts, lengths)
        return json_response(answers[0] if single else answers)

    async def answers(self, items: list, text_tasks: list[dict], pair_tasks: list[dict], truncate: bool,
                      return_embedding: bool) -> list[dict]:
        """Each input's answers: `{task: answer}` for the chosen tasks of its kind (+ its embedding when asked)."""
        texts = [(i, item) for i, item in enumerate(items) if isinstance(item, str)]
        pairs = [(i, item.model_dump()) for i, item in enumerate(items) if isinstance(item, Pair)]
        if texts and not (text_tasks or return_embedding):
            raise validation("The tasks asked for take {text, text_pair} pairs; a text was sent.")
        if pairs and not pair_tasks:
            raise validation("No pair task was asked for (or the model has none); a pair was sent.")
        check = not truncate and self.backend.truncates(text_tasks, return_embedding)
        text_costs = self.lengths([text for _, text in texts], check)
        pair_costs = self.pair_lengths([pair for _, pair in pairs], not truncate)
        text_answers = await self.submit(("answer",), [text for _, text in texts], text_costs)
        pair_answers = await self.submit(("pairs",), [pair for _, pair in pairs], pair_costs)
        out: list[dict] = [{} for _ in items]
        for (i, _), answer in zip(texts, text_answers):
            out[i] = {task["name"]: answer[task["name"]] for task in text_tasks}
            if return_embedding:
                out[i]["embedding"] = answer["embedding"]
        for (i, _), answer in zip(pairs, pair_answers):
            out[i] = {task["name"]: answer[task["name"]] for task in pair_tasks}
        return out

    async def task(self, name: str, body: schemas.TaskRequest) -> Response:
        try:
            task = self.backend.task(name)
        except UnknownTask as error:
            raise ServeError(404, "NotFound", str(error)) from None
        items, single = self.items(body.inputs)
        pair = get_task_type(task["type"]).takes_pair
        wrong = [i for i, item in enumerate(items) if isinstance(item, Pair) != pair]
        if wrong:
            wanted = "{text, text_pair} pairs" if pair else "texts"
            raise validation(f"Task {name!r} ({task['type']}) takes {wanted}; input {wrong[0]} is not one.")
        self.metrics.inputs.labels("/tasks/{task}").inc(len(items))
        answers = await self.answers(items, [] if pair else [task], [task] if pair else [], body.truncate, False)
        answers = [answer[name] for answer in answers]
        if "parameters" in body.model_fields_set:
            return json_response(inference_api_shape(task, answers, single))
        return json_response(answers[0] if single else answers)

    async def multitask(self, body: schemas.MultitaskRequest) -> Response:
        items, single = self.items(body.inputs)
        try:
            chosen = None if body.tasks is None else [self.backend.task(name) for name in body.tasks]
        except UnknownTask as error:
            raise ServeError(404, "NotFound", str(error)) from None
        text_tasks = self.backend.text_tasks() if chosen is None else [
            task for task in chosen if task in self.backend.text_tasks()]
        pair_tasks = self.backend.pair_tasks() if chosen is None else [
            task for task in chosen if task in self.backend.pair_tasks()]
        self.metrics.inputs.labels("/multitask").inc(len(items))
        answers = await self.answers(items, text_tasks, pair_tasks, body.truncate, body.return_embedding)
        return json_response(answers[0] if single else answers)

    def info(self) -> dict:
        backend, config = self.backend, self.config
        model_type: dict[str, Any] = {"embedding": {"pooling": backend.pooling}}
        try:
            labels = backend.task(backend.classify_task(config.predict_task))["labels"]
        except UnknownTask:
            labels = None
        if labels:
            model_type["classifier"] = {"id2label": {str(i): label for i, label in enumerate(labels)},
                                        "label2id": {label: i for i, label in enumerate(labels)}}
        return {"model_id": backend.model_id, "model_dtype": "float32" if backend.kind != "onnx-int8" else "int8",
                "model_type": model_type, "max_concurrent_requests": config.max_queue,
                "max_input_length": backend.max_input_length, "max_batch_tokens": config.max_batch_tokens,
                "max_batch_requests": config.max_batch_requests,
                "max_client_batch_size": config.max_client_batch_size, "version": __version__,
                "backend": backend.kind, "hidden_size": backend.hidden_size, "pooling": backend.pooling,
                "normalize_embeddings": backend.normalize_embeddings,
                "tasks": [{key: task.get(key) for key in ("name", "type", "labels")} for task in backend.tasks]}


def create_app(backend: Backend, config: ServeConfig) -> FastAPI:
    """The server's ASGI app for a loaded backend (`mtl_st.inference.load_backend`)."""
    metrics = Metrics()
    service = Service(backend, config, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.batcher.start()
        try:
            yield
        finally:
            await service.batcher.close()  # uvicorn has already waited for the requests in flight

    app = FastAPI(title="mtl-serve", version=__version__, lifespan=lifespan,
                  description="Every head of a multi-task sentence transformer and its embeddings, with Text "
                              "Embeddings Inference's routes.")
    app.state.service = service
    bearer = HTTPBearer(auto_error=False, description="The server's --api-key, when it has one")

    async def require_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if config.api_key and not (credentials is not None and hmac.compare_digest(
                credentials.credentials.encode(), config.api_key.encode())):
            raise ServeError(401, "Unauthorized", "Missing or wrong API key: send `Authorization: Bearer <key>`.")

    router = APIRouter(dependencies=[Depends(require_key)], responses=schemas.ERROR_RESPONSES)

    @router.post("/embed", response_model=schemas.EmbedResponse, summary="Embeddings (TEI)")
    async def embed(body: schemas.EmbedRequest):
        return await service.embed(body)

    @router.post("/", response_model=schemas.EmbedResponse, summary="Embeddings (TEI's root route)")
    async def root(body: schemas.EmbedRequest):
        return await service.embed(body)

    @router.post("/predict", response_model=schemas.PredictResponse,
                 summary="The sequence-classification task, every label with its score (TEI)")
    async def predict(body: schemas.PredictRequest):
        return await service.predict(body)

    @router.post("/tasks/{task}", response_model=schemas.TaskResponse, summary="One task, in the pipeline's shape")
    async def task(task: str, body: schemas.TaskRequest):
        return await service.task(task, body)

    @router.post("/multitask", response_model=schemas.MultitaskResponse,
                 summary="Every task (and the embedding) from one encoder pass")
    async def multitask(body: schemas.MultitaskRequest):
        return await service.multitask(body)

    @router.get("/info", response_model=schemas.Info, summary="The model and the server's limits (TEI)")
    async def info():
        return json_response(schemas.Info(**service.info()).model_dump())

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response,
                responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
    async def prometheus():
        metrics.queue_depth.set(service.batcher.in_flight)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/health", response_model=schemas.Health, summary="200 while serving, 503 when shutting down",
             responses={503: {"model": schemas.ErrorResponse}})
    async def health():
        if service.batcher.closed:
            raise ServeError(503, "Unhealthy", "The server is shutting down.")
        return {"status": "ok"}

    app.include_router(router)
    _add_error_handlers(app)
    app.add_middleware(BodyLimit, limit=config.payload_limit)
    app.add_middleware(RequestMetrics, metrics=metrics)
    if config.demo:
        _mount_demo(app, backend, config)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    def error(request: Request, status: int, error_type: str, message: str) -> Response:
        request.state.error_type = error_type
        return json_response({"error": message, "error_type": error_type}, status)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError):
        return error(request, exc.status, exc.error_type, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return error(request, 422, "Validation", describe_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kinds = {404: "NotFound", 405: "MethodNotAllowed"}
        return error(request, exc.status_code, kinds.get(exc.status_code, "Validation"), str(exc.detail))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        logger.exception("Unexpected error while answering %s", request.url.path)
        return error(request, 500, "Backend", f"Internal error: {type(exc).__name__}: {exc}")


def describe_validation(errors: list[dict]) -> str:
    """One line for pydantic's errors about a body: the field and what it must be."""
    first = errors[0] if errors else {"type": "", "loc": (), "msg": "invalid body"}
    if first["type"] == "json_invalid":
        return f"The body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}."
    location = [str(part) for part in first["loc"] if part != "body"]
    if first["type"] == "missing":
        return f"`{'.'.join(location) or 'body'}` is required."
    field = location[0] if location else "body"
    if field == "body" or first["type"] in ("model_attributes_type", "dict_type"):
        return "The body must be a JSON object such as {\"inputs\": \"A text.\"}."
    if field == "inputs":
        got = first.get("input")
        return ("`inputs` must be a string or a list of strings (a pair task takes {\"text\", \"text_pair\"} "
                f"objects); got {type(got).__name__}: {repr(got)[:80]}.")
    return f"`{field}`: {first['msg']}."


def _mount_demo(app: FastAPI, backend: Backend, config: ServeConfig) -> None:
    """The Gradio demo at /demo, on the same backend (with --api-key it asks for user `api` and the key)."""
    import gradio as gr

    from mtl_st.demo.app import build_demo, demo_theme, run_examples

    blocks = build_demo(backend, examples=run_examples(config.run_dir, config.examples))
    auth = ("api", config.api_key) if config.api_key else None
    gr.mount_gradio_app(app, blocks, path="/demo", auth=auth, theme=demo_theme(), footer_links=[])


def app_from_environment() -> FastAPI:
    """The app of one `--workers` process: settings from `MTL_SERVE_CONFIG`, its own backend."""
    from mtl_st.inference import load_backend

    config = ServeConfig.from_env()
    backend = load_backend(config.run_dir, onnx=config.onnx, quantize=config.quantize,
                           num_threads=config.num_threads, batch_size=config.batch_size, cache_dir=config.cache_dir)
    return create_app(backend, config)


__all__ = ["create_app", "app_from_environment", "run_batch", "json_response", "describe_validation"]
