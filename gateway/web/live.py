"""Live feeds as Server-Sent Events: gateway events, and a stream's meters ten times a second.

SSE rather than WebSocket: one direction is all a meter needs, browsers reconnect by
themselves, and any HTTP client (curl) can watch.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from .keys import gateway_of
from .problem import problem

LEVELS_INTERVAL_S = 0.1
KEEPALIVE_S = 15.0


async def _open(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # nginx: do not buffer the feed
    })
    await resp.prepare(request)
    return resp


async def _send(resp: web.StreamResponse, event: str, data: object) -> None:
    await resp.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())


async def events(request: web.Request) -> web.StreamResponse:
    """Every event (or one stream's, with ?stream=name): recent ones first, then live."""
    gw = gateway_of(request)
    stream = request.query.get("stream")
    subscription = gw.events.subscribe(stream)
    resp = web.StreamResponse()
    try:
        resp = await _open(request)
        for event in list(gw.events.recent):
            if stream is None or event.get("stream") == stream:
                await _send(resp, event["type"], event)
        stopping = asyncio.ensure_future(gw.stopping.wait())
        while not gw.stopping.is_set():
            getting = asyncio.ensure_future(subscription.get())
            done, _ = await asyncio.wait({getting, stopping}, timeout=KEEPALIVE_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            if getting not in done:
                getting.cancel()
                if not gw.stopping.is_set():
                    await resp.write(b": keep-alive\n\n")
                continue
            event = getting.result()
            await _send(resp, event["type"], event)
        stopping.cancel()
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        subscription.close()
    return resp


async def levels(request: web.Request) -> web.StreamResponse:
    """The stream's analysis snapshot every 100 ms, for level meters."""
    gw = gateway_of(request)
    name = request.match_info["stream"]
    if name not in gw.registry.streams:
        return problem(404, "Not Found", f"no stream named {name!r}")
    resp = web.StreamResponse()
    try:
        resp = await _open(request)
        while not gw.stopping.is_set():
            stream = gw.registry.streams.get(name)
            if stream is None:
                await _send(resp, "ended", {"stream": name})
                break
            if stream.analysis is not None:
                snapshot = stream.analysis.snapshot().model_dump(mode="json")
                await _send(resp, "levels", {"stream": name, **snapshot})
            await asyncio.sleep(LEVELS_INTERVAL_S)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/events", events)
    app.router.add_get("/api/v1/streams/{stream}/levels", levels)
