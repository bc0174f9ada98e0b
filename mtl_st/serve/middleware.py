"""ASGI middleware of the server: a cap on body size, and per-request metrics (status, latency, error type)."""

from __future__ import annotations

import json
import time
from typing import Any

from mtl_st.serve.metrics import Metrics, route_label
from mtl_st.serve.schemas import ServeError


async def send_error(send: Any, status: int, error_type: str, message: str) -> None:
    body = json.dumps({"error": message, "error_type": error_type}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse a body over `limit` bytes with 413: at once from its Content-Length, else while it streams in."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/demo"):
            return await self.app(scope, receive, send)
        message = f"The request body is larger than {self.limit} bytes."
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                scope.setdefault("state", {})["error_type"] = "Validation"
                return await send_error(send, 413, "Validation", message)
        received = 0

        async def limited() -> dict:
            nonlocal received
            event = await receive()
            received += len(event.get("body", b""))
            if received > self.limit:
                raise ServeError(413, "Validation", message)
            return event

        await self.app(scope, limited, send)


class RequestMetrics:
    """Count every answered request by route and status, time it, and count errors by their `error_type` (which
    the error handlers leave in `request.state.error_type`)."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def record(event: dict) -> None:
            nonlocal status
            if event["type"] == "http.response.start":
                status = event["status"]
            await send(event)

        try:
            await self.app(scope, receive, record)
        finally:
            error_type = scope.get("state", {}).get("error_type") if status >= 400 else None
            if status >= 400 and error_type is None:
                error_type = "Backend" if status >= 500 else "Validation"
            self.metrics.observe_request(route_label(scope["path"]), status, time.perf_counter() - started,
                                         error_type)


__all__ = ["BodyLimit", "RequestMetrics", "send_error"]
