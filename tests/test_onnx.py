"""ONNX export and the torch-free runtime: parity with PyTorch and the pipeline, int8, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from conftest import REPO, TASKS, tiny_model  # noqa: E402
from onnx_mtl import OnnxMultiTaskModel, main  # noqa: E402
from postprocess_mtl import word_entities as numpy_word_entities  # noqa: E402

# The README's example sentences, plus punctuation, an apostrophe and a repeated name for the word grouping.
TEXTS = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    "A gorgeous, witty film that I would happily watch again.",
    "Heading to New York with Taylor Swift next week",
    "Heading to Paris with Emma",
    "New York, U.S. -- Emma met Peter O'Neil in Paris, France.",
]
LONG_TEXT = " ".join(["word"] * 300)  # past the tiny encoder's 128 positions


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    """A tiny BERT model (normalised embeddings), its saved folder, and its fp32 and int8 ONNX folders."""
    root = tmp_path_factory.mktemp("onnx")
    model = tiny_model(normalize_embeddings=True)
    model.tokenizer = tokenizer
    model.save_pretrained(root / "model")
    fp32 = model.export_onnx(root / "fp32")
    int8 = model.export_onnx(root / "int8", quantize="int8")
    return model, root / "model", Path(fp32), Path(int8)


def pytorch_outputs(model, batch) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(**batch)
    result = {"embeddings": out.embeddings.numpy()}
    result.update({f"{name}_logits": logits.numpy() for name, logits in out.task_logits.items()})
    return result


# ----------------------------------------------------------------------------- export and parity
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


def test_encode_equals_pytorch_encode(exported, tokenizer):
    model, _, fp32, _ = exported
    onnx_model = OnnxMultiTaskModel.from_pretrained(fp32, num_threads=1)
    texts = TEXTS + [LONG_TEXT, "x"]
    expected = model.encode(texts, tokenizer=tokenizer, batch_size=3)
    got = onnx_model.encode(texts, batch_size=3)
    assert got.shape == expected.shape == (len(texts), 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)  # normalize_embeddings=True
    np.testing.assert_allclose(onnx_model.encode(texts, tokenizer=tokenizer), expected, atol=1e-4)
    one = onnx_model.encode(TEXTS[0])
    assert one.shape == (32,)
    np.testing.assert_allclose(one, expected[0], atol=1e-4)
    assert onnx_model.encode([]).shape == (0, 32)


def test_predict_equals_multitask_pipeline(exported):
    from transformers import pipeline

    import pipeline_mtl  # noqa: F401  (registers "multitask")

    _, saved, fp32, _ = exported
    pipe = pipeline("multitask", model=str(saved), device="cpu")
    onnx_model = OnnxMultiTaskModel.from_pretrained(fp32)
    # Texts within the model's length: the pipeline reads a longer text in windows, the ONNX runtime truncates it.
    texts = TEXTS
    assert_same_answers(onnx_model.predict(texts, batch_size=4), pipe(texts))
    assert_same_answers([onnx_model.predict(TEXTS[4])], [pipe(TEXTS[4])])
    assert any(answer["ner"] for answer in pipe(TEXTS))  # the random NER head does give entities to compare


def assert_same_answers(got: list[dict], expected: list[dict]) -> None:
    """Equal labels, words and offsets; scores equal to 1e-4."""
    assert len(got) == len(expected)
    for ours, theirs in zip(got, expected):
        assert set(ours) == set(theirs)
        for task, answer in theirs.items():
            if isinstance(answer, dict):
                assert ours[task]["label"] == answer["label"]
                assert ours[task]["score"] == pytest.approx(answer["score"], abs=1e-4)
                continue
            strip = lambda entities: [{k: v for k, v in e.items() if k != "score"} for e in entities]  # noqa: E731
            assert strip(ours[task]) == strip(answer)
            np.testing.assert_allclose([e["score"] for e in ours[task]], [e["score"] for e in answer], atol=1e-4)


def test_numpy_word_grouping_equals_the_pipelines():
    """The numpy post-processing applies the pipeline's grouping rules exactly, on random token probabilities."""
    from pipeline_mtl import word_entities as pipeline_word_entities

    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "MISC"]  # "MISC" has no B-/I- kind: never an entity
    text = "ab cd ef gh ij kl mn op qr st"
    rng = np.random.default_rng(0)
    for _ in range(200):
        words = rng.integers(1, 9)
        offsets, word_ids = [None], [None]
        for word in range(words):
            pieces = rng.integers(1, 3)
            for piece in range(pieces):
                offsets.append((3 * word + piece, 3 * word + piece + 1) if pieces == 2 else (3 * word, 3 * word + 2))
                word_ids.append(word)
        offsets.append(None)
        word_ids.append(None)
        skip = rng.integers(0, words)  # a gap in the word ids: words on either side are not adjacent
        word_ids = [w if w is None or w < skip else w + 1 for w in word_ids]
        probabilities = rng.dirichlet(np.full(len(labels), 0.3), size=len(offsets)).astype(np.float32)
        expected = pipeline_word_entities(text, offsets, word_ids, probabilities, labels)
        assert numpy_word_entities(text, offsets, word_ids, probabilities, labels) == expected


def test_runtime_imports_no_torch(exported):
    _, _, fp32, int8 = exported
    code = textwrap.dedent(
        f"""
        import sys
        import onnx_mtl
        for folder in ({str(fp32)!r}, {str(int8)!r}):
            model = onnx_mtl.OnnxMultiTaskModel.from_pretrained(folder)
            assert model.encode(["A sentence.", "Another one, longer."]).shape == (2, 32)
            assert set(model.predict("Heading to Paris with Emma")) == {{"sentiment", "ner"}}
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


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

    from onnx_mtl import last_matmuls

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
    assert "needs a tokenizer" in capsys.readouterr().err


def test_loading_a_graph_that_does_not_fit_its_config_names_the_mismatch(exported, tmp_path):
    _, _, fp32, _ = exported
    broken = Path(shutil.copytree(fp32, tmp_path / "broken"))
    config = json.loads((broken / "config.json").read_text())
    config["tasks"][1]["name"] = "entities"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"missing from the graph: \['entities_logits'\].*does not name: \['ner_logits'\]"
    ):
        OnnxMultiTaskModel.from_pretrained(broken)
    (fp32 / "onnx_mtl.json").rename(tmp_path / "moved.json")
    try:
        with pytest.raises(FileNotFoundError, match="onnx_mtl.json is missing"):
            OnnxMultiTaskModel.from_pretrained(fp32)
    finally:
        (tmp_path / "moved.json").rename(fp32 / "onnx_mtl.json")


def test_encode_rejects_what_pytorch_encode_rejects(exported, tokenizer):
    model, _, fp32, _ = exported
    onnx_model = OnnxMultiTaskModel.from_pretrained(fp32)
    for bad in (["fine", 3], [None], ["a", b"bytes"]):
        with pytest.raises(TypeError) as pytorch_error:
            model.encode(bad, tokenizer=tokenizer)
        with pytest.raises(TypeError) as onnx_error:
            onnx_model.encode(bad)
        assert str(onnx_error.value) == str(pytorch_error.value)
    with pytest.raises(TypeError, match="item 1 is int"):
        onnx_model.predict(["fine", 3])
    with pytest.raises(ValueError, match="normalised"):
        onnx_model.encode(["a"], normalize=False)
