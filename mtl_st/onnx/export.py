"""ONNX export of a `MultiTaskModel`: one graph with every output, checked against PyTorch, optionally int8.

    model.export_onnx("runs/quickstart-onnx")                   # or quantize="int8"
    mtl-onnx export runs/quickstart runs/quickstart-onnx [--quantize int8]     # = python -m mtl_st.onnx

The folder holds `model.onnx` (inputs `input_ids`, `attention_mask` and, where the encoder takes them,
`token_type_ids`, all `[batch, sequence]` int64 with dynamic axes; outputs `embeddings` `[batch, hidden]` and one
`<task>_logits` per task with a head: `[batch, num_labels]` for sequence tasks, `[batch, sequence, num_labels]` for
token tasks), the tokenizer (`tokenizer.json` ...), the model's `config.json`, and `onnx_mtl.json` (truncation length,
padding ids, graph inputs and outputs, quantisation). `mtl_st.onnx.runtime` runs it without torch.

Needs torch (imported when exporting), `onnx`, `onnxscript`, and `onnxruntime` for int8. This module takes the model
as an argument and never imports the model files.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks_mtl import head_tasks

GRAPH_FILE = "model.onnx"
METADATA_FILE = "onnx_mtl.json"
EMBEDDINGS_OUTPUT = "embeddings"
DEFAULT_OPSET = 18  # >= 17 has LayerNormalization as one op
QUANTIZE_CHOICES = (None, "int8")
EXPORT_TOLERANCE = 1e-3  # export checks its fp32 graph against PyTorch on the example batch


def logits_output(task_name: str) -> str:
    """The graph output holding a task's logits."""
    return f"{task_name}_logits"


def expected_outputs(tasks: Sequence[dict]) -> list[str]:
    """The graph outputs a model with these tasks has, in order: `embeddings`, then one `<task>_logits` per task
    with a head."""
    return [EMBEDDINGS_OUTPUT] + [logits_output(task["name"]) for task in head_tasks(list(tasks))]


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



__all__ = ["export_onnx", "quantize_int8", "expected_outputs", "logits_output", "GRAPH_FILE", "METADATA_FILE",
           "EMBEDDINGS_OUTPUT", "DEFAULT_OPSET"]
