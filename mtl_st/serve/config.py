"""The server's settings (`mtl-serve` options), carried to `--workers` processes as JSON in an environment variable."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

CONFIG_ENV = "MTL_SERVE_CONFIG"  # the settings as JSON, for the worker processes of `--workers N`
API_KEY_ENV = "MTL_API_KEY"


@dataclass
class ServeConfig:
    run_dir: str
    onnx: bool = False
    quantize: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_batch_tokens: int = 16384  # tokens per model batch (TEI's default)
    max_batch_requests: int = 128  # inputs per model batch
    max_client_batch_size: int = 32  # inputs per request (TEI's default)
    max_wait_ms: float = 5.0  # how long the first input of a batch waits for others
    max_queue: int = 1024  # inputs waiting or running; beyond it, 429
    payload_limit: int = 2_000_000  # request body bytes (TEI's default)
    api_key: str | None = None
    demo: bool = False
    num_threads: int | None = None  # intra-op threads of the model (default: the cores / workers)
    batch_size: int = 32  # texts per forward pass inside a batch
    predict_task: str | None = None  # the sequence task of /predict (default: the first one)
    graceful_timeout: float = 30.0  # seconds SIGTERM waits for requests in flight
    access_log: bool = False
    cache_dir: str | None = None  # where ONNX exports are cached
    examples: list[str] | None = None  # the demo's examples

    def __post_init__(self) -> None:
        for name in ("workers", "max_batch_tokens", "max_batch_requests", "max_client_batch_size", "max_queue",
                     "payload_limit", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if self.max_wait_ms < 0:
            raise ValueError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}.")
        if self.quantize not in (None, "int8"):
            raise ValueError(f"--quantize must be int8, got {self.quantize!r}.")

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServeConfig:
        raw = os.environ.get(CONFIG_ENV)
        if not raw:
            raise RuntimeError(f"{CONFIG_ENV} is not set: start the server with `mtl-serve RUN_DIR`.")
        data = json.loads(raw)
        return cls(**{field.name: data[field.name] for field in fields(cls) if field.name in data})


__all__ = ["ServeConfig", "CONFIG_ENV", "API_KEY_ENV"]
