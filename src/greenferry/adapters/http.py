"""The node's HTTP endpoint (aiohttp): liveness, readiness, Prometheus metrics and a JSON status.

Routes (GET, and HEAD):

- ``/healthz``: ``200 ok`` whenever the event loop answers (liveness).
- ``/readyz``: ``200`` with ``{"ready": true, "checks": {...}}`` when the daemon is ready, else ``503`` with
  the same shape naming what is not ready.
- ``/metrics``: the Prometheus text exposition of the daemon's registry.
- ``/v1/status``: the daemon's status as JSON.

Every error is a small JSON body ``{"error": ..., "status": ...}``: 404 for unknown paths, 405 for other
methods, 413 for a request body over ``client_max_size_bytes``, 500 without any trace for a handler that
failed (the trace goes to the log).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable
from types import TracebackType
from typing import Self

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_CLIENT_MAX_SIZE_BYTES", "NodeHttpServer"]

DEFAULT_CLIENT_MAX_SIZE_BYTES = 64 * 1024

StatusFn = Callable[[], dict[str, object]]
ReadyFn = Callable[[], tuple[bool, dict[str, object]]]


class NodeHttpServer:
    """The node endpoint as an async context manager: listening on enter, stopped on exit.

    Args:
        host: address to bind (127.0.0.1 unless the node is scraped from elsewhere).
        port: TCP port; 0 picks a free one (read :attr:`port` after entering).
        registry: the daemon's metrics, served on /metrics.
        status_fn: the JSON status for /v1/status (called per request, on the event loop).
        ready_fn: ``(ready, checks)`` for /readyz.
        client_max_size_bytes: the largest request body accepted.
        shutdown_timeout_s: how long open requests may finish on exit (s).
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        status_fn: StatusFn,
        ready_fn: ReadyFn,
        *,
        client_max_size_bytes: int = DEFAULT_CLIENT_MAX_SIZE_BYTES,
        shutdown_timeout_s: float = 2.0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._registry = registry
        self._status_fn = status_fn
        self._ready_fn = ready_fn
        self._max_size_bytes = client_max_size_bytes
        self._shutdown_timeout_s = shutdown_timeout_s
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port (the one picked when 0 was asked).

        Raises:
            RuntimeError: the server is not started.
        """
        if self._port is None:
            raise RuntimeError("the HTTP server is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9470``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=self._max_size_bytes, middlewares=[self._errors_middleware()])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/status", self._status)
        return app

    async def __aenter__(self) -> Self:
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=self._shutdown_timeout_s)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port)
            await site.start()
        except OSError as err:
            await runner.cleanup()
            raise OSError(
                err.errno,
                f"HTTP endpoint cannot listen on {self.host}:{self._requested_port}: {err.strerror or err}",
            ) from err
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        logger.info("HTTP endpoint listening on %s", self.url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            logger.info("HTTP endpoint on port %s stopped", self._port)
        self._port = None

    async def run(self) -> None:
        """Serve until cancelled (requests are handled by aiohttp's own tasks)."""
        await asyncio.Event().wait()

    def _errors_middleware(self) -> Middleware:
        max_size = self._max_size_bytes

        @web.middleware
        async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
            length = request.content_length
            if length is not None and length > max_size:
                return _error(413, f"request body of {length} bytes is over the {max_size}-byte limit")
            try:
                return await handler(request)
            except web.HTTPException as exc:
                response = _error(exc.status, exc.reason)
                allow = exc.headers.get("Allow")
                if allow is not None:
                    response.headers["Allow"] = allow
                return response
            except Exception:  # the top of a request: log it, tell the client nothing internal
                logger.exception("HTTP %s %s failed", request.method, request.path)
                return _error(500, "internal error")

        return errors

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.StreamResponse:
        ready, checks = self._ready_fn()
        return _json({"ready": bool(ready), "checks": checks}, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        return _json(self._status_fn())


def _jsonable(value: object) -> object:
    """JSON has no NaN or infinity: those become null; unknown types become their string."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(_jsonable(data), status=status, dumps=lambda d: json.dumps(d, allow_nan=False))


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message, "status": status}, status=status)
