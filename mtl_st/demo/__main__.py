"""`mtl-demo RUN_DIR [--port 7860] [--host 127.0.0.1] [--onnx] [--quantize int8] [--examples S ...]`
(also `python -m mtl_st.demo`)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mtl-demo", description="A local web demo of every head of a run.")
    parser.add_argument("run_dir", help="a run's output_dir (a saved MultiTaskModel with its tokenizer)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--onnx", action="store_true", help="run ONNX Runtime (exported once, cached)")
    parser.add_argument("--quantize", choices=["int8"], default=None, help="ONNX with dynamic int8 weights")
    parser.add_argument("--examples", nargs="*", default=None,
                        help="example sentences (default: the run folder's, else the README quickstart's)")
    args = parser.parse_args(argv)

    from mtl_st.demo.app import demo_theme, load_demo

    blocks = load_demo(args.run_dir, onnx=args.onnx, quantize=args.quantize, examples=args.examples)
    blocks.queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, theme=demo_theme(), footer_links=["api"], ssr_mode=False,
        show_error=False, mcp_server=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
