"""WHIP (publish) and WHEP (listen) HTTP endpoints, RFC 9725 and draft-ietf-wish-whep.

POST an SDP offer, get 201 + Location + the answer; DELETE the Location to end.
ICE is not trickled: answers carry all candidates, so PATCH answers 405.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from ..core.registry import UnknownStream, check_stream_name
from ..core.stream import StreamBusy
from ..egress.webrtc import WebRTCEgress
from ..ingress.webrtc import WebRTCIngress
from ..webrtc.session import OfferError, WebRTCSession, check_offer
from .keys import gateway_of
from .problem import problem

log = logging.getLogger(__name__)

SDP = "application/sdp"


def _cors(resp: web.StreamResponse) -> web.StreamResponse:
    resp.headers["Access-Control-Allow-Origin"] = "*"
    resp.headers["Access-Control-Allow-Methods"] = "POST, DELETE, OPTIONS, PATCH"
    resp.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization, If-Match"
    resp.headers["Access-Control-Expose-Headers"] = "Location, Link, ETag"
    return resp


async def options(request: web.Request) -> web.StreamResponse:
    resp = web.Response(status=204)
    resp.headers["Accept-Post"] = SDP
    return _cors(resp)


async def _offer(request: web.Request, role: str) -> web.StreamResponse:
    gw = gateway_of(request)
    if request.content_type != SDP:
        return problem(415, "Unsupported Media Type", f"send the SDP offer as {SDP}")
    name = request.match_info["stream"]
    try:
        check_stream_name(name)
    except ValueError as exc:
        return problem(400, "Bad Request", str(exc))
    try:
        offer = await request.text()
    except (UnicodeDecodeError, LookupError) as exc:  # bad bytes, unknown charset
        return problem(400, "Bad Request", f"SDP offer is not valid text: {exc}")
    try:
        check_offer(offer)
    except OfferError as exc:
        return problem(400, "Bad Request", str(exc))
    if gw.stopping.is_set():
        return problem(503, "Service Unavailable", "the gateway is shutting down")
    if len(gw.sessions) >= gw.config.webrtc.max_sessions:
        return problem(503, "Service Unavailable", "session limit reached")
    try:
        stream = gw.registry.get_or_create(name)
    except UnknownStream:
        return problem(404, "Not Found", f"no stream named {name!r}")

    pc = gw.peers.create()
    session: WebRTCSession
    if role == "publisher":
        current = stream.source
        if current is not None:
            if not gw.sender_is_stale(current):
                await pc.close()
                return problem(409, "Conflict", f"stream {name!r} already has a live sender")
            await current.close("replaced by a new publisher")
        w = gw.config.webrtc
        session = WebRTCIngress(pc, stream, w.jitter_min_packets, w.jitter_max_packets)
    else:
        session = WebRTCEgress(pc, stream, gw.config.webrtc.opus_bitrate)
    try:
        answer = await session.answer(offer)
        if role == "publisher":
            stream.attach(session)  # type: ignore[arg-type]
    except OfferError as exc:
        await session.close(f"rejected offer: {exc}")
        return problem(400, "Bad Request", str(exc))
    except StreamBusy as exc:
        await session.close("stream busy")
        return problem(409, "Conflict", str(exc))
    except Exception as exc:  # aiortc rejects some offers deep inside
        log.warning("%s offer for %s failed: %r", role, name, exc)
        await session.close(f"offer failed: {exc!r}")
        return problem(400, "Bad Request", f"cannot use this offer: {exc}")

    gw.add_session(session)
    prefix = "whip" if role == "publisher" else "whep"
    resp = web.Response(status=201, text=gw.peers.rewrite_answer(answer), content_type=SDP)
    resp.headers["Location"] = f"/{prefix}/{name}/{session.id}"
    resp.headers["ETag"] = f'"{session.id}"'
    log.info("%s %s joined stream %s (codec %s)", role, session.id, name, session.codec.name)
    return _cors(resp)


async def whip_post(request: web.Request) -> web.StreamResponse:
    return await _offer(request, "publisher")


async def whep_post(request: web.Request) -> web.StreamResponse:
    return await _offer(request, "listener")


async def session_delete(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    session = gw.sessions.get(request.match_info["session"])
    if session is None or session.stream.name != request.match_info["stream"]:
        return problem(404, "Not Found", "no such session")
    await session.close("deleted by client")
    return _cors(web.Response(status=200))


async def session_patch(request: web.Request) -> web.StreamResponse:
    return _cors(
        problem(405, "Method Not Allowed", "trickle ICE and ICE restart are not supported")
    )


def sender_is_stale(session: WebRTCSession, takeover_after: float) -> bool:
    """A sender that sent nothing for a while may be replaced by a new publisher."""
    last = getattr(session, "last_packet", None)
    idle_since = last if last is not None else session.started_monotonic
    return time.monotonic() - idle_since > takeover_after


async def close_if_never_connected(session: WebRTCSession, timeout: float) -> None:
    await asyncio.sleep(timeout)
    if session.pc.connectionState != "connected" and not session.closed.is_set():
        await session.close(f"not connected after {timeout:.0f} s")


def add_routes(app: web.Application) -> None:
    for prefix, post in (("whip", whip_post), ("whep", whep_post)):
        app.router.add_post(f"/{prefix}/{{stream}}", post)
        app.router.add_route("OPTIONS", f"/{prefix}/{{stream}}", options)
        app.router.add_delete(f"/{prefix}/{{stream}}/{{session}}", session_delete)
        app.router.add_patch(f"/{prefix}/{{stream}}/{{session}}", session_patch)
        app.router.add_route("OPTIONS", f"/{prefix}/{{stream}}/{{session}}", options)
