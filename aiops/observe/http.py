"""The daemon's HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz`` and optional extra routes.

``/healthz`` answers 200 while the event loop runs (a wedged loop cannot answer at all);
``/readyz`` answers 200 only once ``ready()`` says so (sources connected, state loaded) and 503
otherwise, so a Kubernetes Service sends nothing to a daemon that cannot yet act on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpServer:
    """An aiohttp server bound to ``host:port`` (port 0 picks a free one; see :attr:`port`)."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, ready: Callable[[], bool],
        routes: dict[tuple[str, str], Handler] | None = None, max_body_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self.ready = ready
        self.app = web.Application(client_max_size=max_body_bytes)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        for (method, path), handler in (routes or {}).items():
            self.app.router.add_route(method, path, handler)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        if self.port == 0 and server is not None and getattr(server, "sockets", None):
            self.port = server.sockets[0].getsockname()[1]
        log.info("http_listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")


__all__ = ["HttpServer"]
