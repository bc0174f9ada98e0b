"""ONNX export (`mtl_st.onnx.export`, `mtl-onnx export`): the graph equals PyTorch on padded batches, the folder it
writes, int8 quantisation that keeps the heads in fp32, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from mtl_st.onnx import OnnxMultiTaskModel  # noqa: E402
from mtl_st.onnx.__main__ import main  # noqa: E402
from tests.utils import LONG_TEXT, TASKS, TEXTS, tiny_model  # noqa: E402


# ----------------------------------------------------------------------------- graph and folder
def pytorch_outputs(model, batch) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(**batch)
    result = {"embeddings": out.embeddings.numpy()}
    result.update({f"{name}_logits": logits.numpy() for name, logits in out.task_logits.items()})
    return result


def test_graph_outputs_equal_pytorch_on_padded_batches(exported, tokenizer):
    model, _, fp32, _ = exported
    session = ort.InferenceSession(str(fp32 / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_outputs()] == ["embeddings", "sentiment_logits", "ner_logits"]
    assert [node.name for node in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    shapes = {node.name: node.shape for node in session.get_outputs()}
    assert isinstance(shapes["embeddings"][0], str) and shapes["embeddings"][1] == 32
    assert all(isinstance(axis, str) for axis in shapes["ner_logits"][:2]) and shapes["ner_logits"][2] == 5
    for texts in (TEXTS, TEXTS[:1], [TEXTS[3], "Hi"]):
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        assert len(texts) == 1 or (batch["attention_mask"] == 0).any()  # padding in every multi-row batch
        got = session.run(None, {name: value.numpy() for name, value in batch.items()})
        expected = pytorch_outputs(model, batch)
        for node, value in zip(session.get_outputs(), got):
            np.testing.assert_allclose(value, expected[node.name], atol=1e-4, err_msg=node.name)


def test_export_folder_holds_graph_tokenizer_and_config(exported):
    _, _, fp32, int8 = exported
    for folder in (fp32, int8):
        assert {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json", "onnx_mtl.json"} <= {
            path.name for path in folder.iterdir()
        }
    metadata = json.loads((fp32 / "onnx_mtl.json").read_text())
    assert metadata["output_names"] == ["embeddings", "sentiment_logits", "ner_logits"]
    assert metadata["max_length"] == 128 and metadata["quantize"] is None and metadata["opset"] >= 17
    assert json.loads((int8 / "onnx_mtl.json").read_text())["quantize"] == "int8"
    assert json.loads((fp32 / "config.json").read_text())["tasks"] == TASKS


# ----------------------------------------------------------------------------- int8
def test_int8_export_is_quantised_and_close_to_fp32(exported):
    import onnx

    _, _, fp32, int8 = exported
    ops = {node.op_type for node in onnx.load(str(int8 / "model.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops or "DynamicQuantizeMatMul" in ops
    texts = TEXTS + [LONG_TEXT]
    full = OnnxMultiTaskModel.from_pretrained(fp32).encode(texts)
    quantised = OnnxMultiTaskModel.from_pretrained(int8).encode(texts)
    cosine = (full * quantised).sum(-1)  # both normalised
    assert cosine.min() > 0.9, cosine
    assert not np.array_equal(full, quantised)


def test_int8_keeps_the_heads_matmuls_in_fp32(exported):
    """The last MatMul before each `<task>_logits` is left out of quantisation; the encoder's are quantised."""
    import onnx

    from mtl_st.onnx.export import last_matmuls

    model, _, fp32, int8 = exported
    heads = [name for name in json.loads((int8 / "onnx_mtl.json").read_text())["output_names"] if name != "embeddings"]
    head_nodes = last_matmuls(onnx.load(str(fp32 / "model.onnx")).graph, heads)
    assert head_nodes
    quantised_graph = onnx.load(str(int8 / "model.onnx")).graph
    # Each head's product is still a float MatMul/Gemm (a Gemm may come back as the quantiser's `<name>_MatMul`), and
    # none was rewritten into a quantised `<name>_quant` node; the encoder's MatMuls were quantised.
    float_nodes = {node.name for node in quantised_graph.node if node.op_type in ("MatMul", "Gemm")}
    quantised_nodes = {node.name for node in quantised_graph.node if node.op_type in ("MatMulInteger",
                                                                                       "DynamicQuantizeMatMul")}
    assert len([name for name in head_nodes if name in float_nodes]) == len(heads)  # one float product per head
    assert not any(node.startswith(tuple(head_nodes)) for node in quantised_nodes), quantised_nodes
    assert any(node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for node in quantised_graph.node)


# ----------------------------------------------------------------------------- bad input
def test_export_without_tokenizer_names_what_is_missing(tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match="needs a tokenizer"):
        model.export_onnx(tmp_path / "out")
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_cli_export_reports_a_missing_tokenizer(tmp_path, capsys):
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")  # no tokenizer saved beside it
    assert main(["export", str(tmp_path / "model"), str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert "needs a tokenizer" in lines[-1] and lines[-1].startswith("mtl-onnx export: ")
