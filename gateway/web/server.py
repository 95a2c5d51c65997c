"""Serving the app: aiohttp's runner, with every connection behind the ConnectionGuard.

`gateway serve` and the tests' gateways both start here, so both get the same limits.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from aiohttp import web

from .connection_guard import ConnectionGuard, GuardedConnection
from .keys import HTTP_GUARD
from .tls import ServerTls

#: Idle time allowed between requests on a kept-alive connection (aiohttp's run_app default).
KEEPALIVE_TIMEOUT_S = 75.0


class _GuardedFactory:
    """Stands in for aiohttp's Server as the sites' protocol factory: each connection's
    RequestHandler is wrapped in a GuardedConnection. Everything else is the Server's."""

    def __init__(self, server: web.Server, guard: ConnectionGuard) -> None:
        self._server = server
        self._guard = guard

    def __call__(self) -> GuardedConnection:
        return GuardedConnection(self._server(), self._guard)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class GuardedRunner(web.AppRunner):
    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _GuardedFactory(server, self.guard)  # type: ignore[return-value]


async def start(app: web.Application, host: str, port: int,
                shutdown_timeout: float = 60.0, reuse_port: bool = False,
                tls: ServerTls | None = None) -> web.AppRunner:
    """Start serving ``app`` (made by create_app), over HTTPS with ``tls``;
    ``runner.cleanup()`` stops it."""
    runner = GuardedRunner(app, app[HTTP_GUARD], keepalive_timeout=KEEPALIVE_TIMEOUT_S,
                           shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=reuse_port or None,
                          ssl_context=tls.context if tls is not None else None).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def serve(app: web.Application, host: str, port: int, shutdown_timeout: float,
                reuse_port: bool = False, tls: ServerTls | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully; SIGHUP reloads the HTTPS
    certificate. ``reuse_port``: workers share the port (SO_REUSEPORT)."""
    runner = await start(app, host, port, shutdown_timeout, reuse_port, tls)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if tls is not None:
        loop.add_signal_handler(signal.SIGHUP, tls.reload)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
