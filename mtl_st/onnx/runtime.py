"""The torch-free ONNX runtime: a folder written by `mtl_st.onnx.export` run by ONNX Runtime and `tokenizers`.

    from mtl_st.onnx import OnnxMultiTaskModel
    model = OnnxMultiTaskModel.from_pretrained("runs/quickstart-onnx")
    model.encode(["A sentence."])        # [1, hidden], as MultiTaskModel.encode (the same engine: encoding_mtl)
    model.predict("Heading to Paris")    # {task: answer}, as the `multitask` pipeline (the same task specs)
    model.predict_pairs({"text": "A man eats.", "text_pair": "Someone eats."})   # every pair task

Imports numpy, onnxruntime and tokenizers only, never torch.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from encoding_mtl import check_batch_size, check_texts, encode_texts, length_sorted_batches, pad_batch
from mtl_st.onnx.export import EMBEDDINGS_OUTPUT, GRAPH_FILE, METADATA_FILE, expected_outputs, logits_output
from postprocess_mtl import cosine, default_stride, stitch_windows, token_windows, window_ids
from tasks_mtl import READS_PAIR, READS_TOKENS, get_task_type, named_prompts, pick_prompt, text_tasks

logger = logging.getLogger(__name__)


class OnnxMultiTaskModel:
    """A saved ONNX folder run by ONNX Runtime: `encode` as `MultiTaskModel.encode`, `predict` as the pipeline.

    Needs numpy, onnxruntime and tokenizers; never imports torch. Build it with `from_pretrained(path)`.
    """

    def __init__(self, session: Any, tokenizer: Any, config: dict, metadata: dict):
        self.session = session
        self.tokenizer = tokenizer
        self.config = config
        self.metadata = metadata
        self.tasks: list[dict] = list(config.get("tasks", []))
        self.normalize_embeddings = bool(config.get("normalize_embeddings", False))
        self.hidden_size = int(metadata["hidden_size"])
        self.input_names = [node.name for node in session.get_inputs()]
        self.pad_token_id = int(metadata.get("pad_token_id", 0))
        self.pad_token_type_id = int(metadata.get("pad_token_type_id", 0))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, num_threads: int | None = None) -> OnnxMultiTaskModel:
        """Load a folder written by `export_onnx`. `num_threads` (default: `os.cpu_count()`) sets ONNX Runtime's
        intra-op threads; inter-op parallelism is off (one graph, run sequentially)."""
        import onnxruntime as ort

        path = Path(path)
        for name in ("config.json", METADATA_FILE, "tokenizer.json"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path} is not an exported ONNX folder: {name} is missing (see export_onnx).")
        config = _read_json(path / "config.json")
        metadata = _read_json(path / METADATA_FILE)
        graph = path / metadata.get("graph", GRAPH_FILE)
        if not graph.is_file():
            raise FileNotFoundError(f"{path} is not an exported ONNX folder: {graph.name} is missing.")

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(num_threads or os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(str(graph), sess_options=options, providers=["CPUExecutionProvider"])
        check_outputs(session, config.get("tasks", []), graph)
        tokenizer = load_tokenizer(
            path / "tokenizer.json", int(metadata["max_length"]), metadata.get("truncation_side")
        )
        return cls(session, tokenizer, config, metadata)

    # ------------------------------------------------------------------ embeddings
    def encode(
        self,
        sentences: str | list[str],
        tokenizer: Any = None,
        batch_size: int = 32,
        normalize: bool | None = None,
        device: str | None = None,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        *,
        prompt: str | None = None,
        prompt_name: str | None = None,
        truncate_dim: int | None = None,
    ) -> np.ndarray:
        """Embed sentences: `[n, hidden]` float32; one string gives `[hidden]`, `[]` gives `(0, hidden)`.

        `MultiTaskModel.encode`'s engine (`encoding_mtl.encode_texts`): tokenised a chunk at a time, sorted by token
        count within it so each batch pads little, run batch by batch, returned in the input order; truncated to the
        exported `max_length`. `normalize=None` follows the config; the graph's `embeddings` are already normalised
        when the config says so, so `normalize=False` is refused for such a model. `tokenizer` may be a
        `tokenizers.Tokenizer` or a fast transformers tokenizer (default: the exported one). Only `device=None`/`"cpu"`
        exists here, and the result is always a numpy array (there is no torch; `convert_to_numpy` is accepted for
        the same signature). `prompt`, `prompt_name` (the exported model's named prompts) and `truncate_dim` (the
        first dimensions, renormalised when the model normalises) work as in `MultiTaskModel.encode`.
        """
        batch_size = check_batch_size(batch_size, "encode")
        sentences, single = check_texts(sentences, "encode")
        prompt = pick_prompt(named_prompts(self.tasks), prompt, prompt_name)
        if prompt:
            sentences = [prompt + text for text in sentences]
        width = self.hidden_size if truncate_dim is None else int(truncate_dim)
        if not 0 < width <= self.hidden_size:
            raise ValueError(f"truncate_dim must be in [1, {self.hidden_size}], got {truncate_dim!r}.")
        if device is not None and str(device) != "cpu":
            raise ValueError(
                f"OnnxMultiTaskModel runs on ONNX Runtime's CPU provider; device={device!r} is not available."
            )
        if normalize is None:
            normalize = self.normalize_embeddings
        if not normalize and self.normalize_embeddings:
            raise ValueError(
                "This graph's embeddings are L2-normalised (config.normalize_embeddings=True); un-normalised ones "
                "need a model exported with normalize_embeddings=False."
            )
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO and len(sentences) > 10 * batch_size
        backend = self._backend(tokenizer)
        with_types = "token_type_ids" in self.input_names

        def tokenize(texts: list[str]):
            encodings = backend.encode_batch(texts)
            return [e.ids for e in encodings], [e.type_ids for e in encodings] if with_types else None

        def run(ids: np.ndarray, mask: np.ndarray | None, types: np.ndarray | None) -> np.ndarray:
            feed = {"input_ids": ids, "attention_mask": mask if mask is not None else np.ones_like(ids)}
            if with_types:
                feed["token_type_ids"] = types if types is not None else np.zeros_like(ids)
            (pooled,) = self.session.run([EMBEDDINGS_OUTPUT], feed)
            pooled = pooled[:, :width]
            if normalize and (width < self.hidden_size or not self.normalize_embeddings):
                pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
            return pooled

        progress = None
        if show_progress_bar:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(sentences), desc="Encoding", unit="sentence").update
        embeddings = encode_texts(sentences, tokenize, run, width, batch_size, self.pad_token_id,
                                  self.pad_token_type_id, progress=progress)
        return embeddings[0] if single else embeddings

    # ------------------------------------------------------------------ tasks
    def predict(self, texts: str | list[str], batch_size: int = 32, return_embedding: bool = False,
                stride: int | None = None) -> dict | list[dict]:
        """Every single-text task's answer from one run of the graph per batch, as the `multitask` pipeline gives them.

        One text gives `{task: answer}`; a list gives a list of those, in order. A sequence task answers
        `{"label", "score"}`; a token task a list of word-level entities `{"entity_group", "score", "word", "start",
        "end"}` with character offsets; a task without a head answers from the embedding. `return_embedding=True`
        adds the sentence `"embedding"` from the same run of the graph. A text longer than `max_length` tokens is read
        as the pipeline reads it: token tasks over windows sharing `stride` tokens (default
        `postprocess_mtl.default_stride`), the rest (and the embedding) from its first window, with a warning.
        """
        batch_size = check_batch_size(batch_size, "predict")
        texts, single = check_texts(texts, "predict")
        encodings = self._backend(None).encode_batch(texts)
        tasks = text_tasks(self.tasks)
        windowed = self.reads_windows and any(get_task_type(task["type"]).reads == READS_TOKENS for task in tasks)
        answers: list[dict] = [{} for _ in texts]
        long = [row for row, encoding in enumerate(encodings) if encoding.overflowing]
        if long:  # one warning per call, as the pipeline gives
            logger.warning(f"{len(long)} text(s) longer than {self.metadata['max_length']} tokens: "
                           f"{'token tasks read them in windows, the rest' if windowed else 'they are'} truncated to "
                           f"the first {self.metadata['max_length']} tokens: {texts[long[0]][:60]!r}...")
        short = [row for row in range(len(texts)) if not (windowed and encodings[row].overflowing)]
        rows = self._run_rows([encodings[row] for row in short], self._names(tasks), batch_size)
        for row, outputs in zip(short, rows):
            answers[row] = self._answers(tasks, outputs, texts[row], *token_spans(encodings[row]))
            if return_embedding:
                answers[row]["embedding"] = outputs[EMBEDDINGS_OUTPUT]
        for row in (long if windowed else []):
            answers[row], embedding = self._answer_windows(tasks, texts[row], stride, batch_size)
            if return_embedding:
                answers[row]["embedding"] = embedding
        return answers[0] if single else answers

    def predict_pairs(self, pairs: dict | list[dict], batch_size: int = 32) -> dict | list[dict]:
        """Every pair task's answer for `{"text", "text_pair"}` pairs, as the `multitask` pipeline gives them: a
        `pair_classification` task from the jointly encoded pair, a `sentence_similarity` task as the cosine of the
        two texts' embeddings. One pair gives `{task: answer}`; a list gives a list. Pairs are truncated (no windows)."""
        batch_size = check_batch_size(batch_size, "predict_pairs")
        single = isinstance(pairs, dict)
        pairs = [pairs] if single else list(pairs)
        for position, pair in enumerate(pairs):
            if not isinstance(pair, dict) or set(pair) != {"text", "text_pair"} or not all(
                    isinstance(value, str) for value in pair.values()):
                raise TypeError(f"predict_pairs() takes {{'text': str, 'text_pair': str}} pairs; item {position} is "
                                f"{pair!r}.")
        tasks = text_tasks(self.tasks, pair=True)
        if not tasks:
            raise ValueError(f"This model has no pair task; its tasks are {[task['name'] for task in self.tasks]}.")
        backend = self._backend(None)
        first = backend.encode_batch([pair["text"] for pair in pairs])
        cosine_tasks = [task for task in tasks if get_task_type(task["type"]).reads == READS_PAIR]
        joint_tasks = [task for task in tasks if task not in cosine_tasks]
        answers: list[dict] = [{} for _ in pairs]
        if cosine_tasks:
            second = backend.encode_batch([pair["text_pair"] for pair in pairs])
            a = self._run_rows(first, [EMBEDDINGS_OUTPUT], batch_size)
            b = self._run_rows(second, [EMBEDDINGS_OUTPUT], batch_size)
            for row, pair in enumerate(pairs):
                similarity = np.array([cosine(a[row][EMBEDDINGS_OUTPUT], b[row][EMBEDDINGS_OUTPUT])], np.float32)
                for task in cosine_tasks:
                    answers[row][task["name"]] = get_task_type(task["type"]).answer(
                        task, similarity, pair["text"], *token_spans(first[row]))
        if joint_tasks:
            joint = backend.encode_batch([(pair["text"], pair["text_pair"]) for pair in pairs])
            rows = self._run_rows(joint, self._names(joint_tasks), batch_size)
            for row, (pair, outputs) in enumerate(zip(pairs, rows)):
                answers[row].update(self._answers(joint_tasks, outputs, pair["text"], *token_spans(first[row])))
        answers = [{task["name"]: answer[task["name"]] for task in tasks} for answer in answers]  # config order
        return answers[0] if single else answers

    def logits(self, texts: str | list[str], task: str, batch_size: int = 32) -> np.ndarray:
        """One task's logits for each text (truncated to `max_length`), `[n, ...]` in order; a sequence-level task
        gives `[n, num_labels]`."""
        batch_size = check_batch_size(batch_size, "logits")
        texts, _ = check_texts(texts, "logits")
        if task not in [entry["name"] for entry in self.tasks if get_task_type(entry["type"]).has_head]:
            raise ValueError(f"No head named {task!r}; the graph's heads are {self.metadata['output_names'][1:]}.")
        name = logits_output(task)
        rows = self._run_rows(self._backend(None).encode_batch(texts), [name], batch_size)
        return np.stack([row[name] for row in rows]) if rows else np.zeros((0,), dtype=np.float32)

    def _names(self, tasks: list[dict]) -> list[str]:
        """The graph outputs that answer `tasks`: the embedding, then each one's logits where it has a head."""
        return [EMBEDDINGS_OUTPUT] + [logits_output(task["name"]) for task in tasks if get_task_type(task["type"]).has_head]

    def _answers(self, tasks: list[dict], outputs: dict, text: str, offsets: list, word_ids: list) -> dict:
        """Each task's answer from one row's graph outputs; a task without a head answers from the embedding."""
        answers = {}
        for task in tasks:
            spec = get_task_type(task["type"])
            logits = outputs[logits_output(task["name"]) if spec.has_head else EMBEDDINGS_OUTPUT]
            answers[task["name"]] = spec.answer(task, logits, text, offsets, word_ids)
        return answers

    def _run_rows(self, encodings: list, names: list[str], batch_size: int) -> list[dict[str, np.ndarray]]:
        """The graph outputs `names` for each encoding (batches sorted by length), as one dict per row, in order."""
        rows: list[dict] = [{} for _ in encodings]
        for batch in length_sorted_batches([len(encoding.ids) for encoding in encodings], batch_size):
            outputs = self.session.run(names, self.feed([encodings[row] for row in batch]))
            for position, row in enumerate(batch):
                rows[row] = {name: output[position] for name, output in zip(names, outputs)}
        return rows

    def _answer_windows(self, tasks: list[dict], text: str, stride: int | None,
                        batch_size: int) -> tuple[dict, np.ndarray]:
        """A long text as the pipeline reads it: windows of `max_length` tokens sharing `stride`, cut as training cuts
        them (`postprocess_mtl.token_windows`); token tasks stitched over every window, the rest (and the embedding,
        returned beside the answers) from the first."""
        max_length = int(self.metadata["max_length"])
        stride = default_stride(max_length) if stride is None else stride
        full = self._untruncated.encode(text, add_special_tokens=False)
        specials = self._untruncated.encode("").ids
        windows = token_windows(len(full.ids), max_length - 2, stride)
        feeds = [_Window(window_ids(full.ids, specials, start, end)) for start, end in windows]
        rows = self._run_rows(feeds, self._names(tasks), batch_size)
        offsets, word_ids = [tuple(span) for span in full.offsets], list(full.word_ids)
        first = self._answers([task for task in tasks if get_task_type(task["type"]).reads != READS_TOKENS], rows[0],
                              text, *token_spans(self._backend(None).encode(text)))
        answers = {}
        for task in tasks:  # config order
            spec = get_task_type(task["type"])
            if spec.reads == READS_TOKENS:
                logits = stitch_windows([row[logits_output(task["name"])] for row in rows], windows)
                answers[task["name"]] = spec.answer(task, logits, text, offsets, word_ids)
            else:
                answers[task["name"]] = first[task["name"]]
        return answers, rows[0][EMBEDDINGS_OUTPUT]

    @property
    def reads_windows(self) -> bool:
        """Whether long texts are read in windows: the tokenizer adds one special token before a text and one after
        (as the pipeline requires; otherwise they are truncated)."""
        return len(self._untruncated.encode("").ids) == 2

    @property
    def _untruncated(self) -> Any:
        """The exported tokenizer without truncation (windows of long texts are cut from its ids)."""
        if getattr(self, "_untruncated_tokenizer", None) is None:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_str(self.tokenizer.to_str())
            tokenizer.no_truncation()
            tokenizer.no_padding()
            self._untruncated_tokenizer = tokenizer
        return self._untruncated_tokenizer

    # ------------------------------------------------------------------ helpers
    def _backend(self, tokenizer: Any) -> Any:
        """The `tokenizers.Tokenizer` to use: the exported one, or a configured copy of the one given."""
        if tokenizer is None:
            return self.tokenizer
        if not hasattr(tokenizer, "encode_batch"):  # a transformers fast tokenizer: use its Rust backend
            backend = getattr(tokenizer, "backend_tokenizer", None)
            if backend is None:
                raise TypeError(
                    f"tokenizer must be a tokenizers.Tokenizer or a fast tokenizer, got {type(tokenizer).__name__}."
                )
            tokenizer = backend
        return configured_copy(tokenizer, int(self.metadata["max_length"]), self.metadata.get("truncation_side"))

    def feed(self, encodings: list) -> dict[str, np.ndarray]:
        """The graph inputs for a batch of `tokenizers.Encoding`s, right-padded to the longest: each `[batch, seq]`
        int64. `model.session.run(None, model.feed(encodings))` gives every output."""
        ids, keep = pad_batch([encoding.ids for encoding in encodings], self.pad_token_id)
        feed = {"input_ids": ids, "attention_mask": keep.astype(np.int64)}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = pad_batch([encoding.type_ids for encoding in encodings], self.pad_token_type_id,
                                               keep)[0]
        return feed


class _Window:
    """One window of a long text as the graph feed reads an encoding: its ids, token type 0."""

    def __init__(self, ids: list[int]):
        self.ids = ids
        self.type_ids = [0] * len(ids)


def token_spans(encoding: Any) -> tuple[list, list]:
    """One `tokenizers.Encoding`'s token `(start, end)` character spans (`None` for special tokens) and word ids."""
    offsets = [None if special else tuple(span) for span, special in zip(encoding.offsets, encoding.special_tokens_mask)]
    return offsets, list(encoding.word_ids)


def load_tokenizer(file: str | os.PathLike, max_length: int, truncation_side: str | None = None) -> Any:
    """`tokenizers.Tokenizer` from `tokenizer.json`, truncating to `max_length` and never padding."""
    from tokenizers import Tokenizer

    return configure(Tokenizer.from_file(str(file)), max_length, truncation_side)


def configured_copy(tokenizer: Any, max_length: int, truncation_side: str | None = None) -> Any:
    """A copy of a `tokenizers.Tokenizer` set up as `load_tokenizer` does (the caller's object is left alone)."""
    from tokenizers import Tokenizer

    return configure(Tokenizer.from_str(tokenizer.to_str()), max_length, truncation_side)


def configure(tokenizer: Any, max_length: int, truncation_side: str | None) -> Any:
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length, direction=truncation_side or "right")
    return tokenizer


def check_outputs(session: Any, tasks: list[dict], graph: Path) -> None:
    """Raise `ValueError` naming the difference when the graph's outputs do not fit the config's tasks."""
    expected = expected_outputs(tasks)
    found = [node.name for node in session.get_outputs()]
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    if missing or unexpected:
        raise ValueError(
            f"The graph {graph} does not match its config.json: outputs expected from the config's tasks "
            f"{[task['name'] for task in tasks]} but missing from the graph: {missing}; outputs in the graph that the "
            f"config does not name: {unexpected}. Export the model again."
        )


def _read_json(file: Path) -> dict:
    with open(file, encoding="utf-8") as handle:
        return json.load(handle)



__all__ = ["OnnxMultiTaskModel", "load_tokenizer"]
