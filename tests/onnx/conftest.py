"""Fixtures of the ONNX tests: a tiny model, its saved folder and its fp32 and int8 ONNX folders (exported once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.utils import tiny_model


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tokenizer):
    """A tiny BERT model (normalised embeddings), its saved folder, and its fp32 and int8 ONNX folders."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name)
    root = tmp_path_factory.mktemp("onnx")
    model = tiny_model(normalize_embeddings=True)
    model.tokenizer = tokenizer
    model.save_pretrained(root / "model")
    fp32 = model.export_onnx(root / "fp32")
    int8 = model.export_onnx(root / "int8", quantize="int8")
    return model, root / "model", Path(fp32), Path(int8)
