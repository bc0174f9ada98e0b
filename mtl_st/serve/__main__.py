"""`mtl-serve RUN_DIR [--onnx] [--quantize int8] [--host 127.0.0.1] [--port 8080] [--workers N] ...`
(also `python -m mtl_st.serve`).

SIGTERM (or Ctrl+C) stops accepting connections, answers every request already received, then exits 0. With
`--workers N`, uvicorn's process manager runs N processes on one port and starts a new one when one dies.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile

from mtl_st.serve.config import API_KEY_ENV, CONFIG_ENV, ServeConfig

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> ServeConfig:
    defaults = ServeConfig(run_dir="")
    parser = argparse.ArgumentParser(prog="mtl-serve", description="Serve a multi-task model over HTTP (TEI routes "
                                     "+ /tasks/{task} + /multitask).")
    parser.add_argument("run_dir", help="a run's output_dir (a saved MultiTaskModel with its tokenizer), or an "
                                        "exported ONNX folder")
    parser.add_argument("--onnx", action="store_true", help="run ONNX Runtime (the folder is exported once, cached)")
    parser.add_argument("--quantize", choices=["int8"], default=None, help="ONNX with dynamic int8 weights")
    parser.add_argument("--host", default=defaults.host, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help="processes (uvicorn's manager restarts one that dies)")
    parser.add_argument("--max-batch-tokens", type=int, default=defaults.max_batch_tokens,
                        help="tokens per model batch (default %(default)s)")
    parser.add_argument("--max-batch-requests", type=int, default=defaults.max_batch_requests,
                        help="inputs per model batch (default %(default)s)")
    parser.add_argument("--max-client-batch-size", type=int, default=defaults.max_client_batch_size,
                        help="inputs per request; more is a 413 (default %(default)s)")
    parser.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                        help="how long a batch's first input waits for others (default %(default)s)")
    parser.add_argument("--max-queue", type=int, default=defaults.max_queue,
                        help="inputs waiting or running per process; beyond it, 429 (default %(default)s)")
    parser.add_argument("--payload-limit", type=int, default=defaults.payload_limit,
                        help="request body bytes; more is a 413 (default %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"require `Authorization: Bearer KEY` (default: ${API_KEY_ENV})")
    parser.add_argument("--demo", action="store_true", help="mount the Gradio demo at /demo")
    parser.add_argument("--examples", nargs="*", default=None, help="the demo's example sentences")
    parser.add_argument("--num-threads", type=int, default=None, help="model threads (default: cores / workers)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="texts per forward pass")
    parser.add_argument("--predict-task", default=None, help="the sequence task of /predict (default: the first)")
    parser.add_argument("--graceful-timeout", type=float, default=defaults.graceful_timeout,
                        help="seconds SIGTERM waits for requests in flight (default %(default)s)")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--cache-dir", default=None, help="where ONNX exports are cached")
    args = vars(parser.parse_args(argv))
    try:
        return ServeConfig(**args)
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> int:
    """Load the model and serve until SIGTERM; a folder that cannot be served is one line and exit status 2."""
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from mtl_st.inference import ModelFolderError, check_run_folder, load_backend, onnx_folder

    if config.num_threads is None:
        config.num_threads = max(1, (os.cpu_count() or 1) // config.workers)
    try:
        check_run_folder(config.run_dir)
        if (config.onnx or config.quantize) and not os.path.isfile(os.path.join(config.run_dir, "onnx_mtl.json")):
            config.run_dir = str(onnx_folder(config.run_dir, config.quantize, config.cache_dir))  # once, not per worker
            config.onnx = True
        if config.workers == 1:
            backend = load_backend(config.run_dir, onnx=config.onnx, quantize=config.quantize,
                                   num_threads=config.num_threads, batch_size=config.batch_size,
                                   cache_dir=config.cache_dir)
    except ModelFolderError as error:
        print(f"mtl-serve: {error}", file=sys.stderr)
        return 2
    import uvicorn

    # uvicorn restores the handlers it found after its graceful shutdown, then raises the signal again: with these
    # no-op handlers that second signal does nothing, and the process exits 0.
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, lambda *_: None)
    options = {"host": config.host, "port": config.port, "log_level": "info", "access_log": config.access_log,
               "timeout_graceful_shutdown": config.graceful_timeout}
    if config.workers == 1:
        from mtl_st.serve.app import create_app

        server = uvicorn.Server(uvicorn.Config(create_app(backend, config), **options))
        server.run()
        return 0 if server.started else 1
    os.environ[CONFIG_ENV] = config.to_env()
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="mtl-serve-metrics-"))
    uvicorn.run("mtl_st.serve.app:app_from_environment", factory=True, workers=config.workers, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
