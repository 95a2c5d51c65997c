"""The aiohttp application around a Gateway: routes, middlewares, the connection guard."""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from .config import Config
from .core.clock import MediaClock
from .gateway import Gateway
from .web import api, dashboard, live, metrics, openapi, outputs, recordings, webrtc_http
from .web.auth import AUTH, Authenticator, auth_middleware_factory
from .web.connection_guard import ConnectionGuard
from .web.keys import GATEWAY, HTTP_GUARD, MAX_BODY, TURNS
from .web.problem import error_middleware_factory
from .web.request_id import request_id_middleware_factory
from .web.turns import Turns, paced_reads_middleware

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "web" / "static"


def create_app(config: Config, clock: MediaClock | None = None,
               worker: int | None = None, siblings: list[str] | None = None
               ) -> web.Application:
    """The gateway's web application; ``clock`` drives the media (tests step it);
    ``worker``: this process's index among `--workers` (ports shared with the others),
    ``siblings``: the node names of those workers."""
    gateway = Gateway(config, clock, worker, siblings)
    app = web.Application(
        client_max_size=config.http.max_body_bytes,
        middlewares=[request_id_middleware_factory(
                         gateway.node_name if gateway.cluster is not None else None),
                     error_middleware_factory(),
                     auth_middleware_factory(),
                     paced_reads_middleware(gateway.cpu_budget)],
    )
    app[AUTH] = Authenticator(config.auth)
    app[GATEWAY] = gateway
    app[HTTP_GUARD] = ConnectionGuard(config.http.header_timeout_s,
                                      config.http.max_pending_per_address)
    app[MAX_BODY] = config.http.max_body_bytes
    app[TURNS] = Turns(budget=gateway.cpu_budget)

    async def on_startup(app: web.Application) -> None:
        _warn_if_open(config)
        await gateway.start()

    async def on_shutdown(app: web.Application) -> None:
        await gateway.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    webrtc_http.add_routes(app)
    api.add_routes(app)
    outputs.add_routes(app)
    recordings.add_routes(app)
    live.add_routes(app)
    metrics.add_routes(app)
    dashboard.add_routes(app)
    openapi.add_routes(app)  # last: it documents every route added before it
    app.router.add_get("/", _page("index.html"))
    app.router.add_get("/publish", _page("publish.html"))
    app.router.add_get("/listen", _page("listen.html"))
    app.router.add_static("/static", STATIC)
    return app


def _warn_if_open(config: Config) -> None:
    if config.auth.enabled:
        return
    if config.http.allow_insecure:
        log.warning("no credentials configured and --insecure: anyone who reaches "
                    "%s may publish, listen and dial out", config.http.host)
    else:
        log.warning("no credentials configured: access control is off, so the "
                    "gateway serves loopback only (configure [auth] to open it up)")


def _page(name: str):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / name)

    return handler
