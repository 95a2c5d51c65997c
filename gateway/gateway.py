"""The gateway: every live object (streams, sessions, inputs, outputs, calls, recordings).

This is the composition root, and it needs no web framework: ``app.create_app`` builds
the HTTP API around one, and a test or another process can build, start and drive one on
its own (``tests/test_gateway_core.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import heap, threads
from .cluster.wire import default_node_name
from .codecs.spec import CodecSpec
from .config import Config, ConfigError, RtpInputEntry, RtpOutputEntry
from .core.clock import MediaClock
from .core.cpu_budget import CpuBudget
from .core.events import EventBus
from .core.headroom import SAMPLE_S, Admission, AdmissionConfig
from .core.lateness import BIN_S, recent_quantile_ms
from .core.registry import StreamRegistry, UnknownStream
from .core.stream import FrameSource, Stream, StreamBusy
from .egress.analysis import Processing
from .egress.recordings import Recordings
from .egress.rtp import RtpOutputs
from .egress.webrtc import WebRTCEgress
from .ingress.rtp import RtpInput, open_rtp_input
from .ingress.webrtc import WebRTCIngress
from .models.info import ClockLatenessInfo, ClusterStreamInfo, GatewayStats
from .sip.dial_out import DialError, NotRegisteredHere
from .sip.endpoint import EndpointError
from .sip.service import SipService
from .webrtc.peer import IceConfig, PeerFactory, SharedPortError
from .webrtc.session import OfferError, WebRTCSession

if TYPE_CHECKING:
    from .cluster.node import ClusterNode

log = logging.getLogger(__name__)

#: A worker hands a WebRTC offer to a sibling worker holding at least this many fewer
#: sessions (workers of one machine share the HTTP port; see ``sibling_for_offer``).
HANDOFF_MARGIN = 2
#: How long a view of the siblings' sessions is used before the directory is read again.
SIBLINGS_VIEW_S = 1.0


@dataclass
class SessionRefused(Exception):
    """Why a WHIP/WHEP offer got no session: the HTTP problem to answer."""

    status: int
    title: str
    detail: str
    retry_after_s: int | None = None

    def as_reply(self) -> dict[str, Any]:
        return {"status": self.status, "title": self.title, "detail": self.detail,
                "retry_after_s": self.retry_after_s}


@dataclass
class OpenedSession:
    id: str
    answer: str  # SDP, host candidates already rewritten for the outside
    codec: str


class Gateway:
    """Everything live: the stream registry, the WebRTC sessions, the peer factory."""

    def __init__(self, config: Config, clock: MediaClock | None = None,
                 worker: int | None = None, siblings: list[str] | None = None) -> None:
        self.config = config
        #: Index among `gateway serve --workers N` (None: the only process): workers share
        #: the HTTP and SIP ports, and only worker 0 opens the configured RTP inputs.
        self.worker = worker
        s = config.streams
        self.registry = StreamRegistry(
            ring_frames=s.ring_frames,
            allow_dynamic=s.allow_dynamic,
            idle_timeout=s.idle_timeout_s,
            declared=tuple(s.declared),
            clock=clock,
        )
        w = config.webrtc
        self.peers = PeerFactory(
            IceConfig(
                ice_servers=w.ice_servers, host_addresses=w.host_addresses, nat_1to1=w.nat_1to1,
                udp_port=w.udp_port, additional_hosts=w.additional_hosts,
            )
        )
        self.sessions: dict[str, WebRTCSession] = {}
        #: WHIP/WHEP offers being answered, per stream name: a refused one removes the
        #: stream it created only if no other is under way.
        self._opening: dict[str, int] = {}
        #: The other workers of this machine's `gateway serve --workers N` (see
        #: sibling_for_offer), and their sessions as last known.
        self._siblings: dict[str, int] = {}
        self._sibling_names = siblings or []
        self._siblings_read_at = -SIBLINGS_VIEW_S
        self.handed_off = 0  # offers this worker's siblings took (see sibling_for_offer)
        self.rtp_outputs = RtpOutputs(config.rtp.multicast_interface or None)
        self.rtp_inputs: dict[str, RtpInput] = {}
        self.events = EventBus()
        self.stopping = asyncio.Event()  # set when shutdown begins: no new sessions
        self.recordings = Recordings(config.recording, self.registry, self.events,
                                     w.opus_bitrate)
        self.processing = Processing(config.processing, self.registry, self.events)
        a = config.admission
        self.admission = Admission(
            AdmissionConfig(a.cpu_limit, a.lateness_limit_ms, a.retry_after_s, a.enabled),
            lateness=lambda: list(self.registry.clock.lateness.recent),
            load=self._admitted_load,
        )
        #: Paces SIP request batches and API listings into the media clock's spare time
        #: and under a container CPU quota.
        self.cpu_budget = CpuBudget(cores=lambda: self.admission.cores_available,
                                    until_tick=self.registry.clock.until_tick)
        self.sip: SipService | None = None
        if config.sip.enabled:
            base = config.sip.worker_port_base
            self.sip = SipService(config.sip, self.registry, self.rtp_outputs, w.opus_bitrate,
                                  reuse_port=worker is not None,
                                  own_port=None if worker is None else base and base + worker)
            self.sip.endpoint.budget = self.cpu_budget
            self.sip.take_sender = self.take_sender
            self.sip.admit = self.admission.admit
            self.sip.refuse_early = self.admission.refuse_while_refusing
            self.sip.endpoint.gate.busy = self.admission.refusing_cheaply
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Freezes long-lived session objects out of full collections (`gateway serve`
        #: sets it, after heap.settle(); tests and embedders leave the collector alone).
        self.heap: heap.Keeper | None = None
        self.node_name = config.cluster.node_name or default_node_name()
        self._sibling_names = [n for n in self._sibling_names if n != self.node_name]
        self.cluster: ClusterNode | None = None
        if config.cluster.enabled:  # NATS is imported only by gateways that use it
            from .cluster.node import ClusterNode

            self.cluster = ClusterNode(config.cluster, self.registry, w.opus_bitrate,
                                       self.node_name, w.jitter_max_packets)
            if self.sip is not None:
                self.sip.call_suffix = f".{self.node_name}"
                self.sip.run_once = self.cluster.once
            self.rtp_outputs.id_suffix = self.recordings.id_suffix = f".{self.node_name}"

    # -- WebRTC sessions -----------------------------------------------------------------
    def add_session(self, session: WebRTCSession) -> None:
        self.sessions[session.id] = session
        self._spawn(self._watch(session))

    async def _watch(self, session: WebRTCSession) -> None:
        """Close the session if it does not connect in time; forget it once it closes.

        Ends as soon as the session closes, so nothing here holds a closed session (a
        timer that slept on would keep its peer connection for connect_timeout_s)."""
        timeout = self.config.webrtc.connect_timeout_s
        try:
            await asyncio.wait_for(session.closed.wait(), timeout)
        except TimeoutError:
            if session.pc.connectionState != "connected":
                await session.close(f"not connected after {timeout:.0f} s")
            await session.closed.wait()
        finally:
            self.sessions.pop(session.id, None)
            if self.heap is not None:
                self.heap.ended(session.started_monotonic)

    def refusal_for_new_session(self, role: str) -> SessionRefused | None:
        """Why no new WebRTC session (of ``role`` publisher or listener) may start here
        now (shutting down, at ``webrtc.max_sessions``, or refused by admission
        control), if so."""
        if self.stopping.is_set():
            return SessionRefused(503, "Service Unavailable", "the gateway is shutting down")
        if len(self.sessions) >= self.config.webrtc.max_sessions:
            return SessionRefused(503, "Service Unavailable", "session limit reached", 5)
        refusal = self.admission.admit(
            "webrtc_publish" if role == "publisher" else "webrtc_listen")
        if refusal is not None:
            return SessionRefused(503, "Service Unavailable", refusal.reason,
                                  refusal.retry_after_s)
        return None

    async def open_session(self, name: str, role: str, offer: str,
                           owner: str | None) -> OpenedSession:
        """A WHIP publisher (``role`` publisher) or WHEP listener for stream ``name`` from
        a checked SDP offer; raises SessionRefused. Admission is the caller's to check."""
        created = name not in self.registry.streams
        try:
            stream = self.registry.get_or_create(name)
        except UnknownStream:
            raise SessionRefused(404, "Not Found", f"no stream named {name!r}") from None
        self._opening[name] = self._opening.get(name, 0) + 1
        try:
            return await self._open_session(stream, role, offer, owner)
        except SessionRefused:
            if created and self._opening[name] == 1:  # no other offer for it under way
                self.registry.discard_if_idle(stream)
            raise
        finally:
            if self._opening[name] == 1:
                del self._opening[name]
            else:
                self._opening[name] -= 1

    async def _open_session(self, stream: Stream, role: str, offer: str,
                            owner: str | None) -> OpenedSession:
        name = stream.name
        pc = self.peers.create()
        session: WebRTCSession
        if role == "publisher":
            if self.sender_busy(stream):
                await pc.close()
                raise SessionRefused(409, "Conflict", f"stream {name!r} already has a live sender")
            w = self.config.webrtc
            session = WebRTCIngress(pc, stream, w.jitter_min_packets, w.jitter_max_packets)
        else:
            session = WebRTCEgress(pc, stream, self.config.webrtc.opus_bitrate)
        session.owner = owner
        session.red_allowed = self.config.webrtc.red
        session.udp_ports = self.peers.udp_ports
        self.name_session(session)
        try:
            answer = await session.answer(offer)
            if role == "publisher":
                await self.take_sender(stream, session, "replaced by a new publisher")  # type: ignore[arg-type]
        except OfferError as exc:
            await session.close(f"rejected offer: {exc}")
            raise SessionRefused(400, "Bad Request", str(exc)) from None
        except StreamBusy as exc:
            await session.close("stream busy")
            raise SessionRefused(409, "Conflict", str(exc)) from None
        except Exception as exc:  # aiortc rejects some offers deep inside
            log.warning("%s offer for %s failed: %r", role, name, exc)
            await session.close(f"offer failed: {exc!r}")
            raise SessionRefused(400, "Bad Request", f"cannot use this offer: {exc}") from None
        self.add_session(session)
        log.info("%s %s joined stream %s (codec %s)", role, session.id, name,
                 session.codec.name)
        return OpenedSession(session.id, self.peers.rewrite_answer(answer), session.codec.name)

    # -- workers of one machine: spreading sessions -------------------------------------
    async def sibling_for_offer(self) -> str | None:
        """The sibling worker to hand a new WebRTC offer to, if one holds at least
        HANDOFF_MARGIN fewer sessions than this worker.

        SO_REUSEPORT spreads TCP connections over the workers, not sessions: a client or
        a proxy that keeps one connection alive sends every offer to the same worker,
        which would fill up while its siblings idle. The siblings are named by the
        supervisor; their sessions are read from the directory at most once a
        SIBLINGS_VIEW_S (a sibling not posted yet counts as empty) and kept current by
        the counts their replies carry, so a burst of offers is spread, not herded."""
        if not self._sibling_names or self.cluster is None:
            return None
        now = time.monotonic()
        if now - self._siblings_read_at > SIBLINGS_VIEW_S:
            self._siblings_read_at = now
            try:
                nodes = await self.cluster.nodes()
            except Exception:  # the directory is away: the replies still tell
                nodes = {}
            self._siblings = {}
            for name in self._sibling_names:
                load = nodes.get(name, {})
                if not load.get("refusing") and load.get("sessions", 0) < (
                        load.get("max_sessions") or self.config.webrtc.max_sessions):
                    self._siblings[name] = int(load.get("sessions", 0))
        if not self._siblings:
            return None
        name, sessions = min(self._siblings.items(), key=lambda item: item[1])
        return name if sessions + HANDOFF_MARGIN <= len(self.sessions) else None

    async def hand_off_offer(self, sibling: str, name: str, role: str, offer: str,
                             owner: str | None) -> OpenedSession | None:
        """Ask ``sibling`` to open the session; None if it cannot (then open it here)."""
        assert self.cluster is not None
        from .cluster.node import NodeUnreachable

        try:
            reply = await self.cluster.request(sibling, "session.offer", timeout=10.0,
                                               stream=name, role=role, offer=offer, owner=owner)
        except NodeUnreachable as exc:
            log.warning("sibling %s did not take an offer: %s", sibling, exc)
            self._siblings.pop(sibling, None)
            return None
        if "sessions" in reply:
            self._siblings[sibling] = int(reply["sessions"])
        if reply.get("status") != 201:
            if reply.get("status") == 503:
                log.info("sibling %s cannot take an offer: %s", sibling, reply.get("detail"))
                self._siblings.pop(sibling, None)  # full or refusing: not until next read
                return None
            raise SessionRefused(int(reply.get("status", 500)), str(reply.get("title", "Error")),
                                 str(reply.get("detail", "")), reply.get("retry_after_s"))
        self.handed_off += 1
        return OpenedSession(str(reply["id"]), str(reply["answer"]), str(reply["codec"]))

    async def _offer_from_sibling(self, args: dict[str, Any]) -> dict[str, Any]:
        """A sibling worker's hand-off: open the session here unless this worker cannot."""
        refusal = self.refusal_for_new_session(str(args["role"]))
        if refusal is not None:
            return refusal.as_reply() | {"sessions": len(self.sessions)}
        try:
            opened = await self.open_session(str(args["stream"]), str(args["role"]),
                                             str(args["offer"]), args.get("owner"))
        except SessionRefused as exc:
            return exc.as_reply() | {"sessions": len(self.sessions)}
        return {"status": 201, "id": opened.id, "answer": opened.answer,
                "codec": opened.codec, "sessions": len(self.sessions)}

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _admitted_load(self) -> int:
        """Sessions, calls and outputs running now: what the CPU use is shared by."""
        return (len(self.sessions) + (len(self.sip.calls) if self.sip else 0)
                + len(self.rtp_outputs.outputs) + len(self.recordings.active))

    async def _sample_headroom(self) -> None:
        while True:
            self.admission.sample()
            await asyncio.sleep(SAMPLE_S)

    def name_session(self, session: WebRTCSession) -> None:
        """In a cluster, a session's id ends with its node's name, so any node can tell
        where a WHIP/WHEP resource URL must be forwarded."""
        if self.cluster is not None:
            session.id = f"{session.id}.{self.node_name}"

    def node_of(self, resource_id: str) -> str:
        """The node holding a session (or output) id made by name_session."""
        node = resource_id.rpartition(".")[2] if "." in resource_id else ""
        return node or self.node_name

    # -- senders -------------------------------------------------------------------------
    def sender_busy(self, stream: Stream) -> bool:
        """A live local sender holds the stream (a quick check before any work)."""
        current = stream.source
        return current is not None and current.kind != "cluster" \
            and not self.sender_is_stale(current)

    async def take_sender(self, stream: Stream, source: FrameSource, why: str) -> None:
        """Make ``source`` the stream's sender, replacing a stale one here or on another
        node; StreamBusy if a live sender holds it (on any node of the cluster)."""
        current = stream.source
        if current is not None and current.kind != "cluster":
            if not self.sender_is_stale(current):
                raise StreamBusy(f"stream {stream.name!r} already has a live sender")
            await current.close(why)  # type: ignore[attr-defined]
        if self.cluster is not None:
            await self._claim(stream, source, why)
            self.cluster.make_room(stream)
        stream.attach(source)

    async def _claim(self, stream: Stream, source: FrameSource, why: str) -> None:
        assert self.cluster is not None
        takeover = self.config.webrtc.takeover_after_s
        for _ in range(3):
            try:
                holder = await self.cluster.claim(stream, source)
            except Exception as exc:  # ClusterError: the directory is out of reach
                raise StreamBusy(f"stream {stream.name!r}: {exc}") from None
            if holder is None:
                return
            node = holder.get("node", "?")
            if float(holder.get("idle_s", 0)) <= takeover:
                raise StreamBusy(f"stream {stream.name!r} already has a live sender "
                                 f"(on node {node})")
            try:  # the holder's sender is stale: ask its node to end it, then claim again
                await self.cluster.request(node, "sender.end", stream=stream.name, reason=why)
            except Exception:  # NodeUnreachable
                await asyncio.sleep(0.5)  # a dead node's lease lapses by itself
        raise StreamBusy(f"stream {stream.name!r} is still held by another node")

    async def _end_sender(self, args: dict[str, Any]) -> dict[str, Any]:
        """Another node takes this stream over from a stale local sender."""
        stream = self.registry.streams.get(str(args.get("stream")))
        if stream is None or stream.source is None or stream.source.kind == "cluster":
            return {"status": 404}
        await stream.source.close(str(args.get("reason", "replaced on another node")))  # type: ignore[attr-defined]
        if self.cluster is not None:
            await self.cluster.release(stream)
        return {"status": 200}

    def _leads(self, stream: Stream) -> bool:
        """In a cluster, a stream's analyser events (silence alarm, voice) are raised once:
        by its sender's node, or, while it has no sender, by the live node whose name sorts
        first (no lease per stream: a thousand declared streams cost no directory traffic)."""
        source = stream.source
        if source is not None:
            return source.kind != "cluster"
        assert self.cluster is not None
        return self.cluster.first_node

    def _forget(self, stream: Stream) -> None:
        assert self.cluster is not None
        self.cluster.forget(f"record.{stream.name}")

    async def _streams_info(self, args: dict[str, Any]) -> dict[str, Any]:
        """Streams this node holds, for another node's listing (no WebRTC session ids:
        those are capabilities, and the asking node cannot tell who may see them; RTP
        inputs and calls keep theirs, as in this node's own listing)."""
        out = []
        for name in args.get("names", []):
            stream = self.registry.streams.get(str(name))
            if stream is not None:
                info = stream.info().model_dump(mode="json")
                sender = info.get("sender")
                if isinstance(sender, dict) and sender.get("kind") == "webrtc":
                    sender.pop("id", None)
                out.append(info)
        return {"streams": out}

    async def _delete_session(self, args: dict[str, Any]) -> dict[str, Any]:
        """DELETE of a WHIP/WHEP resource that another node received (its rules, applied
        here: only the creator or an admin may end a session, with access control on)."""
        session = self.sessions.get(str(args.get("session")))
        if (session is None or session.role != args.get("role")
                or session.stream.name != args.get("stream")):
            return {"status": 404, "title": "Not Found",
                    "detail": f"no such session (a {args.get('role')} on this stream)"}
        rights = args.get("rights") or {}
        if not (rights.get("everyone") or rights.get("admin")
                or rights.get("identity") == session.owner):
            return {"status": 403, "title": "Forbidden",
                    "detail": "only the token that created this session (the same key or "
                              "JWT sub), or an admin, may end it"}
        await session.close("deleted by client")
        return {"status": 200}

    def find_output(self, stream: str, output_id: str) -> Any | None:
        """An output of ``stream`` on this node: RTP output, recording or SIP call."""
        item = (self.rtp_outputs.outputs.get(output_id) or self.recordings.find(output_id)
                or (self.sip.find_call(output_id) if self.sip else None))
        return item if item is not None and item.stream.name == stream else None

    async def _item_request(self, kind: str, args: dict[str, Any]) -> dict[str, Any]:
        """GET, DELETE or SDP of an output or input URL that another node received."""
        stream, item_id = str(args.get("stream")), str(args.get("id"))
        if kind == "output":
            item = self.find_output(stream, item_id)
        else:
            found = self.rtp_inputs.get(item_id)
            item = found if found is not None and found.stream.name == stream else None
        if item is None:
            return {"status": 404, "title": "Not Found", "detail": f"no such {kind}"}
        action = args.get("action")
        if action == "delete":
            if kind == "input":
                await self.close_rtp_input(item, "deleted through the API")
            else:
                await item.close("stopped through the API")
            return {"status": 204}
        if action == "sdp":
            if not hasattr(item, "sdp"):
                return {"status": 404, "title": "Not Found",
                        "detail": "a SIP call has no SDP file; its SDP is negotiated"}
            return {"status": 200, "sdp": item.sdp()}
        return {"status": 200, "info": item.info().model_dump(mode="json")}

    async def dial_registered_elsewhere(self, stream: str, user: str,
                                        timeout_s: float | None) -> dict[str, Any] | None:
        """A dial-out to a user registered at another node's registrar (phones register
        with whichever node or worker their packets reach): that node places the call.
        The call's info, or None when no node has the user."""
        assert self.cluster is not None
        for node in sorted(await self.cluster.nodes()):
            if node == self.node_name:
                continue
            try:
                reply = await self.cluster.request(node, "sip.dial", stream=stream, user=user,
                                                   timeout_s=timeout_s)
            except Exception:  # NodeUnreachable: ask the next one
                continue
            if reply.get("status") == 201:
                return reply["output"]
        return None

    async def _dial_registered(self, args: dict[str, Any]) -> dict[str, Any]:
        """Another node's dial-out to a user name: placed here if the user is registered
        here (404 otherwise)."""
        user = str(args.get("user", ""))
        if self.sip is None or not user or any(c in user for c in "@:;<> "):
            return {"status": 404}
        timeout = args.get("timeout_s")
        try:
            stream = self.registry.get_or_create(str(args.get("stream")))
            call = await self.sip.dial(stream, user, float(timeout) if timeout else None)
        except NotRegisteredHere:
            return {"status": 404}
        except (DialError, UnknownStream, ValueError, OSError) as exc:
            return {"status": 400, "detail": str(exc)}
        return {"status": 201, "output": call.info().model_dump(mode="json")}

    def sender_is_stale(self, sender: FrameSource) -> bool:
        """A sender that sent nothing for ``webrtc.takeover_after_s`` may be replaced."""
        idle_since = getattr(sender, "last_packet", None)
        if idle_since is None:  # nothing received yet: idle since it started
            idle_since = sender.started_monotonic  # type: ignore[attr-defined]
        return time.monotonic() - idle_since > self.config.webrtc.takeover_after_s

    # -- RTP inputs ----------------------------------------------------------------------
    async def open_rtp_input(self, stream: Stream, port: int,
                             codecs: dict[int, CodecSpec], rtcp_port: bool = False) -> RtpInput:
        """Listen on ``port`` and make the input the stream's sender, replacing a stale one.

        StreamBusy if the stream has a live sender; InputError if the port cannot be bound.
        """
        if self.sender_busy(stream):
            raise StreamBusy(f"stream {stream.name!r} already has a live sender")
        rtp_input = await open_rtp_input(stream, self.config.rtp.bind_host, port, codecs,
                                         max_depth=5, attach=False, rtcp_port=rtcp_port)
        if self.cluster is not None:
            rtp_input.id += f".{self.node_name}"
        try:
            await self.take_sender(stream, rtp_input, "replaced by an RTP input")
        except BaseException:
            await rtp_input.close("not attached")
            raise
        self.rtp_inputs[rtp_input.id] = rtp_input
        return rtp_input

    async def close_rtp_input(self, rtp_input: RtpInput, reason: str) -> None:
        self.rtp_inputs.pop(rtp_input.id, None)
        await rtp_input.close(reason)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        threads.limit_ffmpeg_threads()
        try:  # before anything can open a session (a sibling's handed-off offer)
            await self.peers.start(self.worker)
        except SharedPortError as exc:
            raise ConfigError(str(exc.strerror)) from None
        self.processing.check()
        self.processing.start()
        await self.recordings.start()
        if self.cluster is not None:  # before the registry: declared streams need it
            from .cluster.node import ClusterError

            try:
                await self.cluster.start()
            except ClusterError as exc:
                raise ConfigError(str(exc)) from None
            self.cluster.load = self.load
            self.cluster.handle("sender.end", self._end_sender)
            self.cluster.handle("session.delete", self._delete_session)
            self.cluster.handle("session.offer", self._offer_from_sibling)
            self.cluster.handle("streams.info", self._streams_info)
            self.cluster.handle("output", lambda args: self._item_request("output", args))
            self.cluster.handle("input", lambda args: self._item_request("input", args))
            self.cluster.handle("sip.dial", self._dial_registered)
            self.recordings.once = self.cluster.once
            self.processing.leads = self._leads
            self.registry.on_removed.append(self._forget)
        self.registry.on_tick.append(self.cpu_budget.ticked)
        self.registry.start()
        self._spawn(self._sample_headroom())
        if self.heap is not None:
            self.registry.on_tick.append(self.heap.tick_hook(
                lambda: len(self.sessions), self.cpu_budget.has_room))
        await self._start_configured_io()
        if self.sip is not None:
            try:
                await self.sip.start()
            except EndpointError as exc:
                raise ConfigError(
                    f"sip: {exc.strerror} (set sip.port, or sip.enabled = false)"
                ) from None

    async def _start_configured_io(self) -> None:
        """Inputs and outputs declared in the config file; a bad entry stops start-up."""
        entries: list[RtpInputEntry] | list[RtpOutputEntry]
        inputs = self.config.rtp.inputs if not self.worker else []  # ports of this machine
        for where, entries in (("rtp.inputs", inputs),
                               ("rtp.outputs", self.config.rtp.outputs)):
            for i, entry in enumerate(entries):
                try:
                    stream = self.registry.get_or_create(entry.stream)
                    if isinstance(entry, RtpInputEntry):
                        await self.open_rtp_input(stream, **entry.arguments())
                    else:
                        args = entry.arguments(self.config.webrtc.opus_bitrate)
                        if self.cluster is None:
                            await self.rtp_outputs.create(stream, **args)
                        else:  # once per cluster: on one node, moving if it dies
                            self._declared_output(f"output.{i}", stream, args)
                except (ValueError, StreamBusy) as exc:
                    raise ConfigError(f"{where}[{i}]: {exc}") from None

    def _declared_output(self, name: str, stream: Stream, args: dict[str, Any]) -> None:
        assert self.cluster is not None
        made: list[Any] = []

        async def start() -> None:
            made.append(await self.rtp_outputs.create(stream, **args))

        async def stop() -> None:
            while made:
                await made.pop().close("running on another node of the cluster")

        self.cluster.once(name, start, stop)

    async def stop(self) -> None:
        """Graceful shutdown: refuse new sessions, hang up calls (BYE), finalize
        recordings, send RTCP BYE, close sessions; bounded by http.shutdown_timeout_s."""
        self.stopping.set()
        log.info("shutting down: %d sessions, %d calls, %d recordings", len(self.sessions),
                 len(self.sip.calls) if self.sip else 0, len(self.recordings.active))
        try:
            await asyncio.wait_for(self._stop_everything(),
                                   max(1.0, self.config.http.shutdown_timeout_s - 0.5))
        except TimeoutError:
            log.error("shutdown took longer than %.0f s; stopping anyway",
                      self.config.http.shutdown_timeout_s)
        for task in list(self._tasks):
            task.cancel()
        self.peers.close()
        if self.cluster is not None:
            await self.cluster.stop()
        await self.registry.stop()

    async def _stop_everything(self) -> None:
        await asyncio.gather(
            self.sip.stop() if self.sip is not None else asyncio.sleep(0),
            self.recordings.stop(),
            *(s.close("gateway shutting down") for s in list(self.sessions.values())),
            *(i.close("gateway shutting down") for i in list(self.rtp_inputs.values())),
        )
        self.processing.stop()
        self.rtp_outputs.close()

    def load(self) -> dict[str, Any]:
        """What this node tells the cluster every beat: its streams and how busy it is."""
        streams = {}
        for stream in self.registry.streams.values():
            local = stream.source is not None and stream.source.kind != "cluster"
            if local or len(stream.outputs):
                streams[stream.name] = [len(stream.outputs),
                                        stream.source.kind if local else None]  # type: ignore[union-attr]
        return {
            "url": self.config.cluster.advertise_url,
            "sessions": len(self.sessions),
            "max_sessions": self.config.webrtc.max_sessions,
            "listeners": sum(len(s.outputs) for s in self.registry.streams.values()),
            "clock_late_ticks": self.registry.clock_late_ticks,
            "cpu_share": round(self.admission.cpu_share, 3),
            "clock_lateness_p99_ms": round(self.admission.lateness_p99_ms(), 2),
            "refusing": self.admission.refusing,
            "streams": streams,
        }

    async def node_with_room(self) -> str | None:
        """The base URL of the least busy other node (by CPU use) that has room for a
        WebRTC session (below max_sessions, not refusing work) and says where it is reached
        (``[cluster] advertise_url``), if any."""
        assert self.cluster is not None
        try:
            nodes = await self.cluster.nodes()
        except Exception:  # NATS away: no redirect, the caller answers 503
            return None
        best: tuple[float, str] | None = None
        for name, load in nodes.items():
            url, limit = load.get("url"), load.get("max_sessions") or 0
            if (name == self.node_name or not url or load.get("sessions", 0) >= limit
                    or load.get("refusing")):
                continue
            share = max(load.get("cpu_share", 0.0), load.get("sessions", 0) / limit)
            if best is None or share < best[0]:
                best = (share, str(url).rstrip("/"))
        return best[1] if best else None

    async def cluster_streams(self) -> dict[str, ClusterStreamInfo]:
        """Every stream of the cluster once: its owner node, listeners per node and in all."""
        assert self.cluster is not None
        nodes = await self.cluster.nodes()
        owners = await self.cluster.owners_all()
        nodes[self.node_name] = self.load()  # this node's own view is always fresh
        view: dict[str, ClusterStreamInfo] = {}
        for name, owner in owners.items():
            view[name] = ClusterStreamInfo(owner=owner.get("node"), sender_kind=owner.get("kind"),
                                           listeners_by_node={}, listeners_total=0)
        for node, load in sorted(nodes.items()):
            for name, (listeners, _kind) in load.get("streams", {}).items():
                entry = view.setdefault(name, ClusterStreamInfo(
                    owner=None, sender_kind=None, listeners_by_node={}, listeners_total=0))
                if listeners:
                    entry.listeners_by_node[node] = listeners
                    entry.listeners_total += listeners
        return view

    def _clock_lateness(self) -> ClockLatenessInfo:
        late = self.registry.clock.lateness
        recent = list(late.recent)
        return ClockLatenessInfo(
            p50_ms=round(recent_quantile_ms(recent, 0.5), 2),
            p99_ms=round(recent_quantile_ms(recent, 0.99), 2),
            max_ms=round(max(recent, default=0.0) * 1000, 2),
            ticks=late.count,
            histogram={f"{b * BIN_S * 1000:.1f}": n for b, n in sorted(late.bins.items())},
        )

    def stats(self) -> GatewayStats:
        return GatewayStats(
            streams=len(self.registry.streams),
            sessions=len(self.sessions),
            encoders_active=sum(len(s.egress) for s in self.registry.streams.values()),
            encoders_created_total=self.registry.counters.encoders_created,
            clock_ticks=self.registry.ticks,
            clock_late_ticks=self.registry.clock_late_ticks,
            clock_lateness=self._clock_lateness(),
            sip_calls=len(self.sip.calls) if self.sip else 0,
            admission=self.admission.info(),
            webrtc_udp_ports=self.peers.info(),
        )
