"""ONNX export of a `MultiTaskModel`, and a runtime that needs ONNX Runtime and `tokenizers` but not torch.

Export (needs torch, `onnx`, `onnxscript`, and `onnxruntime` for int8):

    model.export_onnx("runs/quickstart-onnx")                   # or quantize="int8"
    python -m onnx_mtl export runs/quickstart runs/quickstart-onnx [--quantize int8]

The folder holds `model.onnx` (inputs `input_ids`, `attention_mask` and, where the encoder takes them,
`token_type_ids`, all `[batch, sequence]` int64 with dynamic axes; outputs `embeddings` `[batch, hidden]` and one
`<task>_logits` per task: `[batch, num_labels]` for sequence tasks, `[batch, sequence, num_labels]` for token tasks),
the tokenizer (`tokenizer.json` ...), the model's `config.json`, and `onnx_mtl.json` (truncation length, padding ids,
graph inputs and outputs, quantisation).

Inference (imports numpy, onnxruntime and tokenizers only):

    from onnx_mtl import OnnxMultiTaskModel
    model = OnnxMultiTaskModel.from_pretrained("runs/quickstart-onnx")
    model.encode(["A sentence."])        # [1, hidden], as MultiTaskModel.encode
    model.predict("Heading to Paris")    # {task: answer}, as the `multitask` pipeline

This module imports no torch at module level; `export_onnx` imports it when called.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    from .postprocess_mtl import HEADLESS_TYPES, PAIR_TYPES, answer
except ImportError:  # imported as a top-level module
    from postprocess_mtl import HEADLESS_TYPES, PAIR_TYPES, answer

logger = logging.getLogger(__name__)

GRAPH_FILE = "model.onnx"
METADATA_FILE = "onnx_mtl.json"
EMBEDDINGS_OUTPUT = "embeddings"
DEFAULT_OPSET = 18  # >= 17 has LayerNormalization as one op
QUANTIZE_CHOICES = (None, "int8")
EXPORT_TOLERANCE = 1e-3  # export checks its fp32 graph against PyTorch on the example batch


def logits_output(task_name: str) -> str:
    """The graph output holding a task's logits."""
    return f"{task_name}_logits"


def head_tasks(tasks: Sequence[dict]) -> list[dict]:
    """The tasks with a head of their own, in config order (a `sentence_similarity` task has none)."""
    return [task for task in tasks if task["type"] not in HEADLESS_TYPES]


def expected_outputs(tasks: Sequence[dict]) -> list[str]:
    """The graph outputs a model with these tasks has, in order: `embeddings`, then one `<task>_logits` per task
    with a head."""
    return [EMBEDDINGS_OUTPUT] + [logits_output(task["name"]) for task in head_tasks(tasks)]


# ---------------------------------------------------------------------------------------------------- export
def export_onnx(
    model: Any,
    path: str | os.PathLike,
    quantize: str | None = None,
    tokenizer: Any = None,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
) -> Path:
    """Write `model` (a `MultiTaskModel`) as an ONNX folder that `OnnxMultiTaskModel.from_pretrained` loads.

    `quantize="int8"` applies ONNX Runtime's dynamic quantisation to the MatMul weights (int8, per output channel);
    the embedding tables, LayerNorms and each head's MatMul stay fp32. `tokenizer=None` uses the tokenizer saved
    beside the model; it must be a fast (`tokenizers`-backed) one, since the runtime reads `tokenizer.json`. `verify`
    runs the fp32 graph on the example batch and raises if it differs from PyTorch by more than 1e-3. Returns the
    folder.
    """
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}.")
    tokenizer = _export_tokenizer(model, tokenizer)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    input_names = ["input_ids", "attention_mask"]
    if model._encoder_takes_token_type_ids and "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
        input_names.append("token_type_ids")
    output_names = expected_outputs(model.config.tasks)
    example = _example_batch(tokenizer, input_names)

    with tempfile.TemporaryDirectory() as scratch:
        fp32_graph = Path(scratch) / GRAPH_FILE
        _export_graph(model, example, input_names, output_names, fp32_graph, opset)
        if verify:
            _verify_graph(model, example, fp32_graph, output_names)
        if quantize == "int8":
            quantize_int8(fp32_graph, path / GRAPH_FILE, keep_fp32=output_names[1:])
        else:
            os.replace(fp32_graph, path / GRAPH_FILE)

    model.config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if not (path / "tokenizer.json").is_file():
        tokenizer.backend_tokenizer.save(str(path / "tokenizer.json"))
    metadata = {
        "format_version": 1,
        "graph": GRAPH_FILE,
        "input_names": input_names,
        "output_names": output_names,
        "hidden_size": int(model.config.encoder.hidden_size),
        "max_length": int(model.max_length(tokenizer)),
        "pad_token_id": int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        "pad_token_type_id": int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
        "truncation_side": getattr(tokenizer, "truncation_side", "right"),
        "normalize_embeddings": bool(model.config.normalize_embeddings),
        "quantize": quantize,
        "opset": opset,
    }
    with open(path / METADATA_FILE, "w", encoding="utf-8") as handle:
        json.dump(metadata, handle, indent=2)
    return path


def _export_tokenizer(model: Any, tokenizer: Any) -> Any:
    """The tokenizer to save with the graph: the one given, else the model's; a clear error when there is none."""
    if tokenizer is None:
        tokenizer = getattr(model, "_tokenizer", None)
    if tokenizer is None:
        source = getattr(model, "name_or_path", None) or getattr(model.config, "name_or_path", None)
        try:
            tokenizer = model.tokenizer
        except Exception as error:  # noqa: BLE001 - any failure means: no tokenizer beside the model
            raise ValueError(
                f"export_onnx needs a tokenizer to save beside the graph, and none was found: pass `tokenizer=`, "
                f"set `model.tokenizer`, or save one beside the model (model source: {source!r})."
            ) from error
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ValueError(
            f"export_onnx needs a fast tokenizer (one with `tokenizer.json`, backed by the `tokenizers` library); "
            f"got {type(tokenizer).__name__}."
        )
    return tokenizer


def _example_batch(tokenizer: Any, input_names: list[str]) -> dict:
    """Two texts of different lengths, padded (so the mask has zeros): the tracing example, `[2, seq]` each."""
    texts = ["An example sentence to trace the graph with, longer than the other one.", "Short one."]
    encoded = tokenizer(
        texts, padding=True, return_tensors="pt", return_token_type_ids="token_type_ids" in input_names
    )
    return {name: encoded[name] for name in input_names}


def _wrapper(model: Any, input_names: list[str]):
    """A torch module whose forward takes the graph inputs positionally and returns `(embeddings, *task_logits)`."""
    import torch

    task_names = [task["name"] for task in head_tasks(model.config.tasks)]

    class GraphWrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return (out.embeddings, *[out.task_logits[name] for name in task_names])

    return GraphWrapper().eval()


def _export_graph(model: Any, example: dict, input_names: list[str], output_names: list[str], file: Path, opset: int):
    """`torch.onnx.export` (the torch.export-based exporter) with dynamic batch and sequence axes."""
    import torch

    was_training = model.training
    model.eval()
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic_shapes = {name: {0: batch, 1: sequence} for name in input_names}
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                _wrapper(model, input_names),
                tuple(example[name] for name in input_names),
                dynamo=True,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                optimize=True,
                verbose=False,
            )
    finally:
        model.train(was_training)
    program.save(str(file))


def _verify_graph(model: Any, example: dict, file: Path, output_names: list[str]) -> None:
    """Run the graph in ONNX Runtime on the example batch; raise if any output differs from PyTorch's by > 1e-3."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    got = session.run(output_names, {name: value.numpy() for name, value in example.items()})
    with torch.no_grad():
        expected = _wrapper(model, list(example))(*example.values())
    for name, ours, theirs in zip(output_names, got, expected):
        diff = float(np.abs(ours - theirs.float().numpy()).max())
        if not diff <= EXPORT_TOLERANCE:
            raise RuntimeError(
                f"The exported graph's {name!r} differs from PyTorch's by {diff:.2e} (> {EXPORT_TOLERANCE})."
            )


def quantize_int8(source: str | os.PathLike, target: str | os.PathLike, keep_fp32: Sequence[str] = ()) -> None:
    """ONNX Runtime dynamic quantisation: MatMul weights to int8 per output channel, activations quantised per batch.

    Per-channel keeps the embeddings close to fp32 (per-tensor was measured at mean cosine 0.958, too lossy);
    only MatMuls with constant weights are quantised, so the embedding Gather and attention's activation x
    activation products stay fp32. `reduce_range` (7-bit weights) avoids the int16 saturation of the u8 x s8
    kernels on CPUs without VNNI: on all-MiniLM-L6-v2 it gave STS-B dev Spearman 86.71 against 86.46 without it
    (fp32 86.72), at the same speed.

    `keep_fp32` names graph outputs (the heads' `<task>_logits`) whose last MatMul stays fp32: a head is one small
    `[hidden, labels]` product, so quantising it saves nothing measurable, while its rounding moves every token's
    label scores directly (on the quickstart model, WNUT-17 F1 lost 2.0 points with the heads quantised).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(target),
        per_channel=True,
        reduce_range=True,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=last_matmuls(onnx.load(str(source), load_external_data=False).graph, keep_fp32),
        extra_options={"MatMulConstBOnly": True},
    )


def last_matmuls(graph: Any, outputs: Sequence[str]) -> list[str]:
    """Names of the MatMul (or Gemm) nodes nearest to each of `outputs`: walking back from the output, the first one
    met on every path (a linear head's product), without going past it."""
    producer = {name: node for node in graph.node for name in node.output}
    found: list[str] = []
    pending, seen = list(outputs), set()
    while pending:
        tensor = pending.pop()
        node = producer.get(tensor)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "MatMul":
            found.append(node.name)
            continue
        if node.op_type == "Gemm":  # the quantiser first rewrites a Gemm as `<name>_MatMul` + Add
            found += [node.name, f"{node.name}_MatMul"]
            continue
        pending.extend(node.input)
    return found


# ---------------------------------------------------------------------------------------------------- runtime
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
    ) -> np.ndarray:
        """Embed sentences: `[n, hidden]` float32; one string gives `[hidden]`, `[]` gives `(0, hidden)`.

        As `MultiTaskModel.encode`: tokenised once, sorted by token count (longest first) so each batch pads little,
        run batch by batch, returned in the input order; truncated to the exported `max_length`. `normalize=None`
        follows the config; the graph's `embeddings` are already normalised when the config says so, so
        `normalize=False` is refused for such a model. `tokenizer` may be a `tokenizers.Tokenizer` or a fast
        transformers tokenizer (default: the exported one). Only `device=None`/`"cpu"` exists here, and the result
        is always a numpy array (there is no torch; `convert_to_numpy` is accepted for the same signature).
        """
        single = isinstance(sentences, str)
        sentences = check_texts([sentences] if single else list(sentences), "encode")
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
        if not sentences:
            return np.empty((0, self.hidden_size), dtype=np.float32)

        encodings = self._tokenize(sentences, tokenizer)
        embeddings = np.empty((len(sentences), self.hidden_size), dtype=np.float32)
        batches = length_sorted_batches([len(encoding.ids) for encoding in encodings], batch_size)
        if show_progress_bar:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="Encoding", unit="batch")
        for rows in batches:
            feed = self.feed([encodings[row] for row in rows])
            (pooled,) = self.session.run([EMBEDDINGS_OUTPUT], feed)
            if normalize and not self.normalize_embeddings:
                pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
            embeddings[rows] = pooled
        return embeddings[0] if single else embeddings

    # ------------------------------------------------------------------ tasks
    def predict(self, texts: str | list[str], batch_size: int = 32) -> dict | list[dict]:
        """Every task's answer from one run of the graph per batch, as the `multitask` pipeline gives them.

        One text gives `{task: answer}`; a list gives a list of those, in order. A sequence task answers
        `{"label", "score"}`; a token task a list of word-level entities `{"entity_group", "score", "word", "start",
        "end"}` with character offsets. Texts longer than `max_length` tokens are truncated with a warning.
        """
        single = isinstance(texts, str)
        texts = check_texts([texts] if single else list(texts), "predict")
        encodings = self._tokenize(texts, None)
        for text, encoding in zip(texts, encodings):
            if encoding.overflowing:
                logger.warning(f"Text truncated to {self.metadata['max_length']} tokens: {text[:60]!r}...")
        tasks = [task for task in head_tasks(self.tasks) if task["type"] not in PAIR_TYPES]  # single-text tasks
        names = [logits_output(task["name"]) for task in tasks]
        answers: list[dict] = [{} for _ in texts]
        for rows in length_sorted_batches([len(encoding.ids) for encoding in encodings], batch_size):
            outputs = self.session.run(names, self.feed([encodings[row] for row in rows]))
            for position, row in enumerate(rows):
                offsets, word_ids = token_spans(encodings[row])
                for task, logits in zip(tasks, outputs):
                    answers[row][task["name"]] = answer(task, logits[position], texts[row], offsets, word_ids)
        return answers[0] if single else answers

    # ------------------------------------------------------------------ helpers
    def _tokenize(self, texts: list[str], tokenizer: Any) -> list:
        """`tokenizers.Encoding`s for `texts` (truncated, unpadded), from one batched call."""
        if tokenizer is None:
            tokenizer = self.tokenizer
        elif not hasattr(tokenizer, "encode_batch"):  # a transformers fast tokenizer: use its Rust backend
            backend = getattr(tokenizer, "backend_tokenizer", None)
            if backend is None:
                raise TypeError(
                    f"tokenizer must be a tokenizers.Tokenizer or a fast tokenizer, got {type(tokenizer).__name__}."
                )
            tokenizer = configured_copy(
                backend, int(self.metadata["max_length"]), self.metadata.get("truncation_side")
            )
        else:
            tokenizer = configured_copy(
                tokenizer, int(self.metadata["max_length"]), self.metadata.get("truncation_side")
            )
        return tokenizer.encode_batch(texts)

    def feed(self, encodings: list) -> dict[str, np.ndarray]:
        """The graph inputs for a batch of `tokenizers.Encoding`s, right-padded to the longest: each `[batch, seq]`
        int64. `model.session.run(None, model.feed(encodings))` gives every output."""
        lengths = np.fromiter((len(encoding.ids) for encoding in encodings), dtype=np.int64, count=len(encodings))
        keep = np.arange(int(lengths.max()))[None, :] < lengths[:, None]
        feed = {
            "input_ids": pad_rows([encoding.ids for encoding in encodings], keep, self.pad_token_id),
            "attention_mask": keep.astype(np.int64),
        }
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = pad_rows(
                [encoding.type_ids for encoding in encodings], keep, self.pad_token_type_id
            )
        return feed


def check_texts(texts: list, caller: str) -> list[str]:
    """Raise `TypeError` naming the position of the first non-string (as `MultiTaskModel.encode` does)."""
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{caller}() takes strings; item {position} is {type(text).__name__}: {text!r}.")
    return texts


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of `batch_size`, longest first by token count (stable), as `MultiTaskModel.encode`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def pad_rows(rows: list[list[int]], keep: np.ndarray, pad_value: int) -> np.ndarray:
    """Right-padded `[batch, width]` int64 array from lists of ids; `keep` `[batch, width]` marks the real tokens."""
    flat = np.fromiter((token for row in rows for token in row), dtype=np.int64, count=int(keep.sum()))
    if keep.all():
        return flat.reshape(keep.shape)
    out = np.full(keep.shape, pad_value, dtype=np.int64)
    out[keep] = flat
    return out


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


def check_outputs(session: Any, tasks: Sequence[dict], graph: Path) -> None:
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


# ---------------------------------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """`python -m onnx_mtl export MODEL_DIR OUT_DIR [--quantize int8] [--opset 18]`."""
    parser = argparse.ArgumentParser(prog="python -m onnx_mtl", description="ONNX export of a saved MultiTaskModel.")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write MODEL_DIR (a saved MultiTaskModel) as an ONNX folder")
    export.add_argument("model_dir", help="a folder written by MultiTaskModel.save_pretrained (with its tokenizer)")
    export.add_argument("out_dir", help="the ONNX folder to write")
    export.add_argument("--quantize", choices=["int8"], default=None, help="dynamic int8 quantisation (per channel)")
    export.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    args = parser.parse_args(argv)

    import torch

    try:
        from .modeling_mtl import MultiTaskModel
    except ImportError:
        from modeling_mtl import MultiTaskModel

    model = MultiTaskModel.from_pretrained(args.model_dir, dtype=torch.float32)
    try:
        out = model.export_onnx(args.out_dir, quantize=args.quantize, opset=args.opset)
    except ValueError as error:
        print(f"onnx_mtl export: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


__all__ = ["OnnxMultiTaskModel", "export_onnx", "quantize_int8"]

if __name__ == "__main__":
    sys.exit(main())
