"""`mtl-onnx export MODEL_DIR OUT_DIR [--quantize int8] [--opset 18]` (also `python -m mtl_st.onnx`)."""

from __future__ import annotations

import argparse
import sys

from mtl_st.onnx.export import DEFAULT_OPSET


def main(argv: list[str] | None = None) -> int:
    """Export a saved MultiTaskModel as an ONNX folder; a missing tokenizer (or other bad input) is one line, exit 2."""
    parser = argparse.ArgumentParser(prog="mtl-onnx", description="ONNX export of a saved MultiTaskModel.")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write MODEL_DIR (a saved MultiTaskModel) as an ONNX folder")
    export.add_argument("model_dir", help="a folder written by MultiTaskModel.save_pretrained (with its tokenizer)")
    export.add_argument("out_dir", help="the ONNX folder to write")
    export.add_argument("--quantize", choices=["int8"], default=None, help="dynamic int8 quantisation (per channel)")
    export.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    args = parser.parse_args(argv)

    import torch

    from modeling_mtl import MultiTaskModel

    model = MultiTaskModel.from_pretrained(args.model_dir, dtype=torch.float32)
    try:
        out = model.export_onnx(args.out_dir, quantize=args.quantize, opset=args.opset)
    except ValueError as error:
        print(f"mtl-onnx export: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
