"""The torch-free ONNX runtime (`mtl_st.onnx.runtime`): `encode` and `predict` equal PyTorch's `encode` and the
pipeline, the numpy word grouping, no torch import, and bad input refused as PyTorch refuses it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from mtl_st.onnx import OnnxMultiTaskModel  # noqa: E402
from postprocess_mtl import word_entities as numpy_word_entities  # noqa: E402
from tests.utils import LONG_TEXT, REPO, TEXTS  # noqa: E402


# ----------------------------------------------------------------------------- parity
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
        import mtl_st.onnx
        for folder in ({str(fp32)!r}, {str(int8)!r}):
            model = mtl_st.onnx.OnnxMultiTaskModel.from_pretrained(folder)
            assert model.encode(["A sentence.", "Another one, longer."]).shape == (2, 32)
            assert set(model.predict("Heading to Paris with Emma")) == {{"sentiment", "ner"}}
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# ----------------------------------------------------------------------------- bad input
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


def test_matryoshka_truncation_and_prompts_are_the_same_in_encode_the_st_export_and_onnx(tmp_path, tokenizer):
    """`truncate_dim` cuts then renormalises, and `prompt_name` prepends the task's prompt, identically in
    `MultiTaskModel.encode`, the sentence-transformers folder and the ONNX runtime."""
    from tests.utils import tiny_model

    st = pytest.importorskip("sentence_transformers")
    retrieval = {"name": "qa", "type": "retrieval", "matryoshka_dims": [16, 8],
                 "prompts": {"query": "query: ", "document": "passage: "}}
    model = tiny_model(tasks=[retrieval], normalize_embeddings=True)
    model.tokenizer = tokenizer
    onnx_model = OnnxMultiTaskModel.from_pretrained(model.export_onnx(tmp_path / "onnx"), num_threads=1)
    model.save_sentence_transformer(tmp_path / "st")
    texts = ["where is paris", "a much longer question about rome and its river", "x"]
    for width in (16, 8):
        ours = model.encode(texts, truncate_dim=width, prompt_name="query")
        assert ours.shape == (3, width)
        np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)
        exported = st.SentenceTransformer(str(tmp_path / "st"), truncate_dim=width, device="cpu")
        np.testing.assert_allclose(exported.encode(texts, prompt_name="query", normalize_embeddings=True), ours,
                                   atol=1e-5)
        np.testing.assert_allclose(onnx_model.encode(texts, truncate_dim=width, prompt_name="query"), ours,
                                   atol=1e-4)
    # the prompt matters: without it the embeddings differ
    assert not np.allclose(onnx_model.encode(texts, truncate_dim=8), model.encode(texts, truncate_dim=8,
                                                                                  prompt_name="query"), atol=1e-3)
    with pytest.raises(ValueError, match="no prompt named 'title'"):
        onnx_model.encode(texts, prompt_name="title")
    with pytest.raises(ValueError, match=r"truncate_dim must be in \[1, 32\]"):
        onnx_model.encode(texts, truncate_dim=33)
