"""ONNX export (`export`, needs torch when called) and the torch-free runtime (`runtime`); `mtl-onnx` is the command
line (`python -m mtl_st.onnx export MODEL_DIR OUT_DIR [--quantize int8]`). Importing this package imports no torch."""

from mtl_st.onnx.export import export_onnx, quantize_int8
from mtl_st.onnx.runtime import OnnxMultiTaskModel

__all__ = ["OnnxMultiTaskModel", "export_onnx", "quantize_int8"]
