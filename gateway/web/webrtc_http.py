"""WHIP (publish) and WHEP (listen) HTTP endpoints, RFC 9725 and draft-ietf-wish-whep.

POST an SDP offer, get 201 + Location + the answer; DELETE the Location to end.
ICE is not trickled: answers carry all candidates, so PATCH answers 405.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..cluster.node import NodeUnreachable
from ..core.registry import check_stream_name
from ..gateway import SessionRefused
from ..webrtc.session import OfferError, check_offer
from .auth import caller_rights, may_manage, owner_of
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
    owner = owner_of(request)
    try:
        sibling = await gw.sibling_for_offer()
        opened = sibling and await gw.hand_off_offer(sibling, name, role, offer, owner)
        if not opened:
            refusal = gw.refusal_for_new_session(role)
            if refusal is not None and refusal.status == 503 and not gw.stopping.is_set():
                elsewhere = await gw.node_with_room() if gw.cluster is not None else None
                if elsewhere:  # WHIP and WHEP clients follow redirects (RFC 9725 §4.5)
                    resp = web.Response(status=307,
                                        headers={"Location": elsewhere + request.path_qs})
                    return _cors(resp)
            if refusal is not None:
                raise refusal
            opened = await gw.open_session(name, role, offer, owner)
    except SessionRefused as exc:
        resp = problem(exc.status, exc.title, exc.detail)
        if exc.retry_after_s is not None:
            resp.headers["Retry-After"] = str(exc.retry_after_s)
        return _cors(resp)
    prefix = "whip" if role == "publisher" else "whep"
    resp = web.Response(status=201, text=opened.answer, content_type=SDP)
    resp.headers["Location"] = f"/{prefix}/{name}/{opened.id}"
    resp.headers["ETag"] = f'"{opened.id}"'
    return _cors(resp)


async def whip_post(request: web.Request) -> web.StreamResponse:
    return await _offer(request, "publisher")


async def whep_post(request: web.Request) -> web.StreamResponse:
    return await _offer(request, "listener")


def session_delete(role: str):  # type: ignore[no-untyped-def]
    """DELETE of a WHIP resource (``role`` publisher) or a WHEP one (listener), by the
    principal that created it or an admin: an id alone must not let one token end another's
    session, nor a listener end the sender."""

    async def handler(request: web.Request) -> web.StreamResponse:
        gw = gateway_of(request)
        session_id = request.match_info["session"]
        session = gw.sessions.get(session_id)
        node = gw.node_of(session_id)
        if session is None and gw.cluster is not None and node != gw.node_name:
            return _cors(await _delete_elsewhere(gw, node, role, request))
        if (session is None or session.role != role
                or session.stream.name != request.match_info["stream"]):
            return problem(404, "Not Found", f"no such session (a {role} on this stream)")
        if not may_manage(request, session.owner):
            return problem(403, "Forbidden", "only the token that created this session "
                                             "(the same key or JWT sub), or an admin, may end it")
        await session.close("deleted by client")
        return _cors(web.Response(status=200))

    return handler


async def _delete_elsewhere(gw, node: str, role: str,  # type: ignore[no-untyped-def]
                            request: web.Request) -> web.StreamResponse:
    """The session lives on another node of the cluster: that node ends it."""
    try:
        reply = await gw.cluster.request(
            node, "session.delete", stream=request.match_info["stream"],
            session=request.match_info["session"], role=role, rights=caller_rights(request))
    except NodeUnreachable as exc:
        return problem(502, "Bad Gateway", f"the session's node did not answer: {exc}")
    status = int(reply.get("status", 500))
    if status == 200:
        return web.Response(status=200)
    return problem(status, reply.get("title", "Error"), reply.get("detail", ""))


async def session_patch(request: web.Request) -> web.StreamResponse:
    return _cors(
        problem(405, "Method Not Allowed", "trickle ICE and ICE restart are not supported")
    )


def add_routes(app: web.Application) -> None:
    for prefix, post, role in (("whip", whip_post, "publisher"), ("whep", whep_post, "listener")):
        app.router.add_post(f"/{prefix}/{{stream}}", post)
        app.router.add_route("OPTIONS", f"/{prefix}/{{stream}}", options)
        app.router.add_delete(f"/{prefix}/{{stream}}/{{session}}", session_delete(role))
        app.router.add_patch(f"/{prefix}/{{stream}}/{{session}}", session_patch)
        app.router.add_route("OPTIONS", f"/{prefix}/{{stream}}/{{session}}", options)
