"""Deprecated alias of `mtl_st.onnx` (release 0.1.0's module name): `from onnx_mtl import OnnxMultiTaskModel` and
`python -m onnx_mtl export ...` keep working, with a warning. Use `mtl_st.onnx` / `mtl-onnx`."""

import sys
import warnings

from mtl_st.onnx import OnnxMultiTaskModel, export_onnx, quantize_int8
from mtl_st.onnx.__main__ import main

warnings.warn("onnx_mtl is now mtl_st.onnx (and the command `mtl-onnx`); the old name will go in a later release.",
              FutureWarning, stacklevel=2)

__all__ = ["OnnxMultiTaskModel", "export_onnx", "quantize_int8"]

if __name__ == "__main__":
    sys.exit(main())
