"""One inference backend for the server and the demo: every head and the embedding from one encoder pass.

    from mtl_st.inference import load_backend
    backend = load_backend("runs/quickstart")                      # PyTorch; onnx=True (quantize="int8") for ONNX Runtime
    backend.embed(["A sentence."])                                 # [1, hidden] float32, as model.encode
    backend.answer(["Heading to Paris with Emma"], return_embedding=True)   # [{task: answer, "embedding": ...}]
    backend.answer_pairs([{"text": "A man eats.", "text_pair": "Someone eats."}])   # every pair task
    backend.classify(["What a film!"], "sentiment")                # [[{label, score}, ...]], every label, best first
    backend.count_tokens(["A sentence."])                          # [5]: special tokens included

The PyTorch backend runs `MultiTaskModel` with its saved tokenizer through `pipeline_mtl.MultiTaskPipeline` (which
batches, reads long texts in windows for token tasks and answers each task through its spec in `tasks_mtl`); the ONNX
backend runs `mtl_st.onnx.OnnxMultiTaskModel` on an exported folder (exported from the run folder into a cache the
first time). Both answer every task through `tasks_mtl.get_task_type(type).answer`, so a new task type is served as
soon as it is registered. The model calls of one backend run one at a time (a lock), so the server's batcher and
the demo may share it. Importing this module imports neither torch nor onnxruntime: each backend imports its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from postprocess_mtl import softmax
from tasks_mtl import READS_POOLED, READS_TOKENS, get_task_type, text_tasks

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32  # texts per forward pass inside one backend call


class ModelFolderError(ValueError):
    """A run folder that cannot be served: missing, not a saved model, without a (fast) tokenizer, ..."""


class UnknownTask(KeyError):
    """A task name the model does not have (or of the wrong input kind)."""

    def __str__(self) -> str:
        return str(self.args[0])


class TextTooLong(ValueError):
    """A text over `max_input_length` tokens where truncation was not allowed."""

    def __init__(self, position: int, length: int, limit: int):
        super().__init__(f"Input {position} has {length} tokens, more than the model's limit of {limit}; send "
                         f"`truncate: true` to read only its first {limit} tokens.")
        self.position, self.length, self.limit = position, length, limit


class Backend:
    """What the server and the demo call. Subclasses set the attributes and implement `_embed`, `_answer`,
    `_answer_pairs`; everything else (task selection, length checks, dimensions) is here, once."""

    kind: str = "backend"  # "pytorch", "onnx", "onnx-int8"
    tasks: list[dict]
    model_id: str
    max_input_length: int
    hidden_size: int
    normalize_embeddings: bool
    pooling: str
    reads_windows: bool  # whether a long text is read in windows by token tasks (else truncated)
    unnormalized: bool  # whether `embed(normalize=False)` is possible (an ONNX graph may hold normalised ones only)

    def __init__(self, counter: Any, batch_size: int = DEFAULT_BATCH_SIZE):
        self._counter = counter  # a `tokenizers.Tokenizer` without truncation or padding
        self.batch_size = batch_size
        self._lock = threading.Lock()  # one model call at a time

    # ------------------------------------------------------------------ tasks
    def text_tasks(self) -> list[dict]:
        return text_tasks(self.tasks)

    def pair_tasks(self) -> list[dict]:
        return text_tasks(self.tasks, pair=True)

    def task(self, name: str) -> dict:
        """The task named `name`; `UnknownTask` listing the model's tasks otherwise."""
        for task in self.tasks:
            if task["name"] == name:
                return task
        raise UnknownTask(f"Unknown task {name!r}; this model's tasks are {[task['name'] for task in self.tasks]}.")

    def select(self, names: list[str] | None, pair: bool) -> list[dict]:
        """The tasks named (default: every task of that input kind); `UnknownTask` for a name of the other kind."""
        available = self.pair_tasks() if pair else self.text_tasks()
        if names is None:
            return available
        chosen = [self.task(name) for name in names]
        wrong = [task["name"] for task in chosen if task not in available]
        if wrong:
            kind = "a {'text', 'text_pair'} pair" if not pair else "one text"
            raise UnknownTask(f"Task(s) {wrong} take {kind} as input, not what was sent.")
        return chosen

    def truncates(self, tasks: list[dict], return_embedding: bool = False) -> bool:
        """Whether answering `tasks` (and the embedding) for a text over the limit reads only its first window: True
        unless every one of them is a token task and this backend reads long texts in windows."""
        return return_embedding or not self.reads_windows or any(
            get_task_type(task["type"]).reads != READS_TOKENS for task in tasks)

    # ------------------------------------------------------------------ lengths
    def count_tokens(self, texts: list[str]) -> list[int]:
        """Each text's token count with the special tokens, as `max_input_length` counts them (no truncation)."""
        return [len(encoding.ids) for encoding in self._counter.encode_batch(list(texts))]

    def count_pair_tokens(self, pairs: list[dict]) -> list[int]:
        """Each pair's longest encoding: the joint pair, or either text alone (similarity encodes them apart)."""
        if not pairs:
            return []
        joint = self._counter.encode_batch([(pair["text"], pair["text_pair"]) for pair in pairs])
        first = self.count_tokens([pair["text"] for pair in pairs])
        second = self.count_tokens([pair["text_pair"] for pair in pairs])
        return [max(len(j.ids), a, b) for j, a, b in zip(joint, first, second)]

    def check_lengths(self, lengths: list[int]) -> None:
        """`TextTooLong` for the first length over `max_input_length`."""
        for position, length in enumerate(lengths):
            if length > self.max_input_length:
                raise TextTooLong(position, length, self.max_input_length)

    # ------------------------------------------------------------------ the calls
    def embed(self, texts: list[str], normalize: bool = True, truncate: bool = False,
              dimensions: int | None = None) -> np.ndarray:
        """`[len(texts), dimensions or hidden]` float32 embeddings, as `model.encode` (TEI's `/embed`).

        `truncate=False` raises `TextTooLong` for a text over the limit; `dimensions` keeps the first dimensions
        (Matryoshka), normalised after the cut when `normalize`."""
        if dimensions is not None and (isinstance(dimensions, bool) or not 0 < int(dimensions) <= self.hidden_size):
            raise ValueError(f"`dimensions` must be a whole number in [1, {self.hidden_size}], got {dimensions!r}.")
        if not normalize and not self.unnormalized:
            raise ValueError("This ONNX graph holds L2-normalised embeddings only (the model's normalize_embeddings); "
                             "ask for normalize: true.")
        if not truncate:
            self.check_lengths(self.count_tokens(texts))
        if not texts:
            return np.zeros((0, dimensions or self.hidden_size), dtype=np.float32)
        with self._lock:
            vectors = np.asarray(self._embed(list(texts), bool(normalize)), dtype=np.float32)
        return truncate_dimensions(vectors, dimensions, normalize)

    def classify(self, texts: list[str], task: str, raw_scores: bool = False) -> list[list[dict]]:
        """Every label of a one-label classification task (`answers_one_label`) with its probability (the softmax
        its answer scores with; its logit with `raw_scores`), best first, per text: Text Embeddings Inference's
        `/predict`. The first entry is the pipeline's answer. Texts are truncated (check them with `count_tokens`)."""
        entry = self.task(task)
        if not answers_one_label(entry):
            raise UnknownTask(f"Task {task!r} ({entry['type']}) does not answer one label per text.")
        if not texts:
            return []
        with self._lock:
            logits = np.asarray(self._logits(list(texts), task), dtype=np.float64)
        scores = logits if raw_scores else softmax(logits)
        return [[{"label": entry["labels"][i], "score": float(row[i])} for i in np.argsort(-row, kind="stable")]
                for row in scores]

    def classify_task(self, name: str | None = None) -> str:
        """The task `classify` answers by default: `name` (checked), else the first single-text task that answers
        one label (`answers_one_label`); `UnknownTask` when there is none."""
        if name is not None:
            if not answers_one_label(self.task(name)):
                raise UnknownTask(f"Task {name!r} does not answer one label per text.")
            return name
        for task in self.tasks:
            if answers_one_label(task):
                return task["name"]
        raise UnknownTask(f"This model has no single-text task that answers one label (for /predict); its tasks are "
                          f"{[task['name'] for task in self.tasks]}.")

    def answer(self, texts: list[str], tasks: list[str] | None = None,
               return_embedding: bool = False) -> list[dict]:
        """The multitask pipeline's answer for each text: `{task: answer}` for the named single-text tasks (default:
        all), plus `"embedding"` (numpy, `[hidden]`) when asked; one encoder pass per window serves them all."""
        chosen = [task["name"] for task in self.select(tasks, pair=False)]
        if not texts:
            return []
        order = np.argsort(-np.asarray(self.count_tokens(texts)), kind="stable")  # batches of like lengths pad little
        with self._lock:
            raw = self._answer([texts[i] for i in order], return_embedding)
        answers: list[dict] = [{} for _ in texts]
        for position, answer in zip(order, raw):
            kept = {name: answer[name] for name in chosen}
            if return_embedding:
                kept["embedding"] = np.asarray(answer["embedding"], dtype=np.float32)
            answers[position] = kept
        return answers

    def answer_pairs(self, pairs: list[dict], tasks: list[str] | None = None) -> list[dict]:
        """Every pair task's answer (or the named ones) for `{"text", "text_pair"}` pairs, as the pipeline gives them."""
        chosen = [task["name"] for task in self.select(tasks, pair=True)]
        if not chosen:
            raise UnknownTask(f"This model has no pair task; its tasks are {[task['name'] for task in self.tasks]}.")
        if not pairs:
            return []
        with self._lock:
            raw = self._answer_pairs(list(pairs))
        return [{name: answer[name] for name in chosen} for answer in raw]

    def describe(self) -> dict:
        """What `/info` and the demo show about the model."""
        return {"model_id": self.model_id, "backend": self.kind, "max_input_length": self.max_input_length,
                "hidden_size": self.hidden_size, "pooling": self.pooling,
                "normalize_embeddings": self.normalize_embeddings, "tasks": self.tasks}

    # ------------------------------------------------------------------ what a backend implements
    def _embed(self, texts: list[str], normalize: bool) -> np.ndarray:
        raise NotImplementedError

    def _answer(self, texts: list[str], return_embedding: bool) -> list[dict]:
        raise NotImplementedError

    def _answer_pairs(self, pairs: list[dict]) -> list[dict]:
        raise NotImplementedError

    def _logits(self, texts: list[str], task: str) -> np.ndarray:
        raise NotImplementedError


class TorchBackend(Backend):
    """`MultiTaskModel` and its saved tokenizer, answered by `pipeline_mtl.MultiTaskPipeline`."""

    kind = "pytorch"

    def __init__(self, run_dir: str | os.PathLike, num_threads: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        import torch

        from modeling_mtl import MultiTaskModel
        from pipeline_mtl import MultiTaskPipeline

        if num_threads:
            torch.set_num_threads(int(num_threads))
        try:
            model = MultiTaskModel.from_pretrained(str(run_dir), dtype=torch.float32).eval()
        except (OSError, ValueError) as error:
            raise ModelFolderError(f"{run_dir} is not a saved MultiTaskModel: {error}") from error
        try:
            tokenizer = model.tokenizer
        except AttributeError as error:
            raise ModelFolderError(f"{run_dir} has no tokenizer: save one beside the model "
                                   "(`tokenizer.save_pretrained(run_dir)`); train.py does.") from error
        if getattr(tokenizer, "backend_tokenizer", None) is None:
            raise ModelFolderError(f"{run_dir}: serving needs a fast tokenizer (tokenizer.json), for the entities' "
                                   f"character offsets; got {type(tokenizer).__name__}.")
        super().__init__(_untruncated(tokenizer.backend_tokenizer), batch_size)
        self.model, self.tokenizer = model, tokenizer
        self.pipeline = MultiTaskPipeline(model=model, tokenizer=tokenizer)
        self.tasks = [dict(task) for task in model.config.tasks]
        self.model_id = Path(run_dir).name
        self.max_input_length = int(model.max_length(tokenizer))
        self.hidden_size = int(model.config.encoder.hidden_size)
        self.normalize_embeddings = bool(model.config.normalize_embeddings)
        self.pooling = model.config.pooling
        self.reads_windows = len(tokenizer("")["input_ids"]) == 2  # as MultiTaskPipeline._windows requires
        self.unnormalized = True

    def _embed(self, texts: list[str], normalize: bool) -> np.ndarray:
        return self.model.encode(texts, tokenizer=self.tokenizer, batch_size=self.batch_size, normalize=normalize,
                                 show_progress_bar=False)

    def _logits(self, texts: list[str], task: str) -> np.ndarray:
        import torch

        rows = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start : start + self.batch_size], truncation=True, padding=True,
                                   max_length=self.max_input_length, return_tensors="pt")
            with torch.inference_mode():
                rows.append(self.model(**batch, task=task).logits.float().numpy())
        return np.concatenate(rows)

    def _answer(self, texts: list[str], return_embedding: bool) -> list[dict]:
        return self.pipeline(texts, batch_size=self.batch_size, return_embedding=return_embedding)

    def _answer_pairs(self, pairs: list[dict]) -> list[dict]:
        return self.pipeline(pairs, batch_size=self.batch_size)


class OnnxBackend(Backend):
    """An exported ONNX folder run by `mtl_st.onnx.OnnxMultiTaskModel` (no torch)."""

    def __init__(self, folder: str | os.PathLike, num_threads: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, model_id: str | None = None):
        from mtl_st.onnx.runtime import OnnxMultiTaskModel

        try:
            model = OnnxMultiTaskModel.from_pretrained(folder, num_threads=num_threads)
        except (FileNotFoundError, ValueError) as error:
            raise ModelFolderError(str(error)) from error
        super().__init__(_untruncated(model.tokenizer), batch_size)
        self.model = model
        self.kind = "onnx-int8" if model.metadata.get("quantize") == "int8" else "onnx"
        self.tasks = [dict(task) for task in model.tasks]
        self.model_id = model_id or Path(folder).name
        self.max_input_length = int(model.metadata["max_length"])
        self.hidden_size = model.hidden_size
        self.normalize_embeddings = model.normalize_embeddings
        self.pooling = model.config.get("pooling", "mean")
        self.reads_windows = model.reads_windows
        self.unnormalized = not model.normalize_embeddings

    def _embed(self, texts: list[str], normalize: bool) -> np.ndarray:
        return self.model.encode(texts, batch_size=self.batch_size, normalize=normalize, show_progress_bar=False)

    def _logits(self, texts: list[str], task: str) -> np.ndarray:
        return self.model.logits(texts, task, batch_size=self.batch_size)

    def _answer(self, texts: list[str], return_embedding: bool) -> list[dict]:
        return self.model.predict(texts, batch_size=self.batch_size, return_embedding=return_embedding)

    def _answer_pairs(self, pairs: list[dict]) -> list[dict]:
        return self.model.predict_pairs(pairs, batch_size=self.batch_size)


def load_backend(run_dir: str | os.PathLike, onnx: bool = False, quantize: str | None = None,
                 num_threads: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 cache_dir: str | os.PathLike | None = None) -> Backend:
    """The backend for a run folder (a saved `MultiTaskModel` with its tokenizer) or an exported ONNX folder.

    `onnx=True` (implied by `quantize="int8"` and by an exported folder) runs ONNX Runtime: a run folder is exported
    once into `cache_dir` (default `$MTL_ST_CACHE` or `~/.cache/mtl_st/onnx`), keyed by the folder and its weights.
    `ModelFolderError` names what is wrong with a folder that cannot be served."""
    run_dir = Path(run_dir)
    check_run_folder(run_dir)
    exported = (run_dir / "onnx_mtl.json").is_file()
    if not (onnx or quantize or exported):
        return TorchBackend(run_dir, num_threads=num_threads, batch_size=batch_size)
    folder = onnx_folder(run_dir, quantize, cache_dir) if not exported else run_dir
    if exported and quantize and _read_json(run_dir / "onnx_mtl.json").get("quantize") != quantize:
        raise ModelFolderError(f"{run_dir} is an exported ONNX folder without quantize={quantize!r}; give the run "
                               "folder to export it again, or leave --quantize out.")
    return OnnxBackend(folder, num_threads=num_threads, batch_size=batch_size, model_id=run_dir.name)


def onnx_folder(run_dir: str | os.PathLike, quantize: str | None = None,
                cache_dir: str | os.PathLike | None = None) -> Path:
    """The exported ONNX folder of a run folder, exported on first use (into a temporary folder, then renamed, so
    concurrent callers never see half a folder)."""
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "config.json").is_file():
        raise ModelFolderError(f"{run_dir} is not a saved MultiTaskModel: config.json is missing.")
    key = hashlib.sha256(str(run_dir).encode())
    key.update((run_dir / "config.json").read_bytes())
    for weights in sorted(run_dir.glob("*.safetensors")) + sorted(run_dir.glob("*.bin")):
        stat = weights.stat()
        key.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    cache = Path(cache_dir or os.environ.get("MTL_ST_CACHE") or Path.home() / ".cache" / "mtl_st" / "onnx")
    target = cache / f"{run_dir.name}-{key.hexdigest()[:16]}-{quantize or 'fp32'}"
    if (target / "onnx_mtl.json").is_file():
        return target
    import torch

    from modeling_mtl import MultiTaskModel

    logger.info(f"Exporting {run_dir} to ONNX{' (int8)' if quantize else ''} in {target} (once)")
    model = MultiTaskModel.from_pretrained(str(run_dir), dtype=torch.float32)
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=cache))
    try:
        model.export_onnx(scratch, quantize=quantize)
        try:
            os.replace(scratch, target)
        except OSError:  # another process finished first
            if not (target / "onnx_mtl.json").is_file():
                raise
    except ValueError as error:
        raise ModelFolderError(f"{run_dir} cannot be exported to ONNX: {error}") from error
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def answers_one_label(task: dict) -> bool:
    """Whether a task reads one text's pooled vector through a head and answers one `{label, score}` (a sequence
    classification in the built-in types), as its spec says when asked on neutral logits."""
    spec = get_task_type(task["type"])
    if spec.takes_pair or spec.reads != READS_POOLED or not spec.has_head or not task.get("labels"):
        return False
    probe = spec.answer(task, np.zeros(len(task["labels"])), "", [], [])
    return isinstance(probe, dict) and "label" in probe


def truncate_dimensions(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """The first `dimensions` of each embedding (all of them for None), L2-normalised after the cut when `normalize`
    (as `model.encode(truncate_dim=...)`)."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    vectors = np.ascontiguousarray(vectors[:, : int(dimensions)])
    if normalize:
        vectors /= np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
    return vectors


def check_run_folder(run_dir: str | os.PathLike) -> None:
    """`ModelFolderError` when `run_dir` is plainly not servable (no folder, no config.json, no tokenizer), before
    any model is loaded."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelFolderError(f"{run_dir} is not a folder: give the output_dir of a run (or a saved model).")
    if not (run_dir / "config.json").is_file():
        raise ModelFolderError(f"{run_dir} is not a saved MultiTaskModel: config.json is missing.")
    if not (run_dir / "tokenizer.json").is_file():
        raise ModelFolderError(f"{run_dir} has no tokenizer (tokenizer.json): save one beside the model "
                               "(`tokenizer.save_pretrained(run_dir)`); train.py does.")


def _untruncated(tokenizer: Any) -> Any:
    """A copy of a `tokenizers.Tokenizer` that neither truncates nor pads (to count a text's tokens)."""
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


def _read_json(file: Path) -> dict:
    with open(file, encoding="utf-8") as handle:
        return json.load(handle)


__all__ = ["Backend", "TorchBackend", "OnnxBackend", "load_backend", "onnx_folder", "check_run_folder",
           "truncate_dimensions", "answers_one_label", "ModelFolderError", "UnknownTask", "TextTooLong", "DEFAULT_BATCH_SIZE"]
