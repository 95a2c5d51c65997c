"""JSON API under /api/v1: what is live, and control of sessions."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from pydantic import ValidationError

from ..core.stream import Stream
from ..models.info import (
    ClusterStreamInfo,
    Health,
    SessionInfo,
    SessionList,
    SipOff,
    SipOn,
    Stats,
    StreamDetail,
    StreamInfo,
    StreamList,
)
from ..webrtc.session import WebRTCSession
from .auth import may_manage
from .keys import HTTP_GUARD, gateway_of, turns_of
from .problem import problem
from .reply import reply

log = logging.getLogger(__name__)


def session_info(request: web.Request, session: WebRTCSession) -> SessionInfo:
    """A session as the caller may see it. Its id is a capability (DELETE on its WHIP/WHEP
    URL ends it), so only its creator and admins see it."""
    info = session.info()
    if not may_manage(request, session.owner):
        info.id = None  # left out of the JSON
    return info


def stream_info(request: web.Request, stream: Stream) -> StreamInfo:
    """A stream as the caller may see it: a WebRTC sender's id only as session_info shows."""
    info = stream.info()
    source = stream.source
    if isinstance(source, WebRTCSession) and not may_manage(request, source.owner):
        info.sender.id = None  # type: ignore[union-attr]
    return info


async def list_streams(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    turns = turns_of(request)
    here = list(gw.registry.streams.values())
    if gw.cluster is None:
        return await turns.reply_with_list(StreamList(streams=[]), "streams", here,
                                           lambda s: stream_info(request, s))
    streams = await turns.map(lambda s: stream_info(request, s), here)
    streams = await _with_cluster(gw, streams)
    return await turns.call(lambda: reply(StreamList(streams=streams)))


async def _with_cluster(gw, streams: list[StreamInfo]) -> list[StreamInfo]:  # type: ignore[no-untyped-def]
    """Every stream of the cluster once, each with its owner node and listeners per node;
    streams this node does not hold come from their owner (a WebRTC sender without its
    id)."""
    view = await gw.cluster_streams()
    here = {s.name for s in streams}
    streams.extend(await _remote_streams(gw, view, [n for n in view if n not in here]))
    for info in streams:
        info.cluster = view.get(info.name) or ClusterStreamInfo(
            owner=None, sender_kind=None, listeners_by_node={}, listeners_total=0)
    return sorted(streams, key=lambda s: s.name)


async def _remote_streams(gw, view: dict[str, ClusterStreamInfo],  # type: ignore[no-untyped-def]
                          names: list[str]) -> list[StreamInfo]:
    """``names`` as the nodes that hold them describe them (each asked from its owner,
    else from a node with listeners); a node that does not answer in time, or answers
    what this node cannot read (another version), leaves its streams out."""
    wanted: dict[str, list[str]] = {}
    for name in names:
        entry = view.get(name)
        if entry is None:
            continue
        node = entry.owner or next(iter(entry.listeners_by_node), None)
        if node is not None and node != gw.node_name:
            wanted.setdefault(node, []).append(name)
    replies = await asyncio.gather(*(gw.cluster.request(node, "streams.info", names=names,
                                                        timeout=1.0)
                                      for node, names in wanted.items()),
                                   return_exceptions=True)
    out = []
    for node, answer in zip(wanted, replies, strict=True):
        for item in answer.get("streams", []) if isinstance(answer, dict) else []:
            try:
                out.append(StreamInfo.model_validate(item))
            except ValidationError as exc:
                log.warning("stream %r from node %s left out of the listing: %s",
                            item.get("name"), node, exc)
    return out


async def get_stream(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    name = request.match_info["stream"]
    stream = gw.registry.streams.get(name)
    if stream is None and gw.cluster is not None:  # held by another node: as it says
        view = await gw.cluster_streams()
        for info in await _remote_streams(gw, view, [name]):
            info.cluster = view[name]
            return reply(StreamDetail(**vars(info), sessions=[]))
    if stream is None:
        return problem(404, "Not Found", f"no stream named {name!r}")
    info = stream_info(request, stream)
    if gw.cluster is not None:
        info.cluster = (await gw.cluster_streams()).get(stream.name)
    return await turns_of(request).reply_with_list(
        StreamDetail(**vars(info), sessions=[]), "sessions",
        [s for s in gw.sessions.values() if s.stream is stream],
        lambda s: session_info(request, s))


async def list_sessions(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    return await turns_of(request).reply_with_list(
        SessionList(sessions=[]), "sessions", list(gw.sessions.values()),
        lambda s: session_info(request, s))


async def delete_session(request: web.Request) -> web.StreamResponse:
    gw = gateway_of(request)
    session = gw.sessions.get(request.match_info["session"])
    if session is None:
        return problem(404, "Not Found", "no such session")
    await session.close("stopped through the API")
    return web.Response(status=204)


async def cluster(request: web.Request) -> web.StreamResponse:
    """This node and every live node of the cluster with its load (404: not clustered)."""
    gw = gateway_of(request)
    if gw.cluster is None:
        return problem(404, "Not Found", "this gateway is not part of a cluster "
                                         "(set [cluster] nats_url, or --workers)")
    nodes = await gw.cluster.nodes()
    nodes[gw.node_name] = {"node": gw.node_name, **gw.load()}
    return web.json_response({**gw.cluster.info(), "nodes": nodes})


async def stats(request: web.Request) -> web.StreamResponse:
    guard = request.app[HTTP_GUARD]
    return reply(Stats(**vars(gateway_of(request).stats()),
                       http_connections_refused=guard.refused,
                       http_header_timeouts=guard.header_timeouts))


async def sip_status(request: web.Request) -> web.StreamResponse:
    sip = gateway_of(request).sip
    if sip is None:
        return reply(SipOff(enabled=False))
    return reply(SipOn(enabled=True, **vars(sip.info()),
                       active_calls=[c.info() for c in sip.calls.values()]))


async def healthz(request: web.Request) -> web.StreamResponse:
    return reply(Health(status="ok"))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/streams", list_streams)
    app.router.add_get("/api/v1/streams/{stream}", get_stream)
    app.router.add_get("/api/v1/sessions", list_sessions)
    app.router.add_delete("/api/v1/sessions/{session}", delete_session)
    app.router.add_get("/api/v1/stats", stats)
    app.router.add_get("/api/v1/cluster", cluster)
    app.router.add_get("/api/v1/sip", sip_status)
    app.router.add_get("/healthz", healthz)
