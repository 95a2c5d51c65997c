"""JSON API under /api/v1: what is live, and control of sessions."""

from __future__ import annotations

from aiohttp import web

from .keys import gateway_of
from .problem import problem


async def list_streams(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    return web.json_response({"streams": [s.info() for s in gw.registry.streams.values()]})


async def get_stream(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    stream = gw.registry.streams.get(request.match_info["stream"])
    if stream is None:
        return problem(404, "Not Found", f"no stream named {request.match_info['stream']!r}")
    body = stream.info()
    body["sessions"] = [s.info() for s in gw.sessions.values() if s.stream is stream]
    return web.json_response(body)


async def list_sessions(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    return web.json_response({"sessions": [s.info() for s in gw.sessions.values()]})


async def delete_session(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    session = gw.sessions.get(request.match_info["session"])
    if session is None:
        return problem(404, "Not Found", "no such session")
    await session.close("stopped through the API")
    return web.Response(status=204)


async def stats(request: web.Request) -> web.StreamResponse:
    return web.json_response(gateway_of(request).stats())


async def sip_status(request: web.Request) -> web.StreamResponse:
    sip = gateway_of(request).sip
    if sip is None:
        return web.json_response({"enabled": False})
    return web.json_response({"enabled": True, **sip.info(),
                              "active_calls": [c.info() for c in sip.calls.values()]})


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/streams", list_streams)
    app.router.add_get("/api/v1/streams/{stream}", get_stream)
    app.router.add_get("/api/v1/sessions", list_sessions)
    app.router.add_delete("/api/v1/sessions/{session}", delete_session)
    app.router.add_get("/api/v1/stats", stats)
    app.router.add_get("/api/v1/sip", sip_status)
    app.router.add_get("/healthz", healthz)
