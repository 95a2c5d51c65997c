"""SIP call control: dial-in, dial-out, OPTIONS, REGISTER, re-INVITE, BYE, CANCEL, DTMF.

The sans-IO pieces (messages, transactions, dialogs, digest, SDP, registrar) decide
what the protocol says; this module and its parts (``dial_in``, ``dial_out``,
``upstream``) decide what the gateway does with a call: which stream it hears and feeds,
when it ends, and how it shows up in the API.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ..config import SipConfig
from ..core.registry import StreamRegistry
from ..core.stream import Stream
from ..egress.rtp import RtpOutputs
from ..models.info import RegistrationInfo, SipInfo
from . import tls
from .call import SipCall
from .dial_in import ALLOW, SDP, DialIn
from .dial_out import DialOut
from .dialog import new_tag
from .endpoint import EndpointError, EndpointSettings, SipEndpoint
from .media import MediaPorts
from .message import Request, Response, SipParseError, response_to
from .registrar import Registrar
from .registration import RegistrationClient
from .transaction import (
    AckReceived,
    CancelReceived,
    ClientTransaction,
    Event,
    Flow,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    State,
    StrayResponse,
    Timers,
    TransactionTimeout,
)
from .upstream import Upstream

log = logging.getLogger(__name__)

async def _attach(stream: Stream, source: Any, why: str) -> None:
    stream.attach(source)


def _admit_all(kind: str) -> None:
    return None


_refuse_none = _admit_all


class SipService(DialIn, DialOut, Upstream):
    """Owns the SIP endpoint, the calls and the registrar; dispatches what arrives."""

    def __init__(self, config: SipConfig, registry: StreamRegistry, outputs: RtpOutputs,
                 opus_bitrate: int = 64000, reuse_port: bool = False,
                 own_port: int | None = None) -> None:
        self.config = config
        self.registry = registry
        self.outputs = outputs
        self.opus_bitrate = opus_bitrate
        self.take_sender = _attach
        self.run_once = self._run_here
        self.call_suffix = ""
        self.admit = _admit_all
        #: While admission control refuses anyway: its Refusal, without a new measurement
        #: (asked for every new INVITE at datagram read, so it must be cheap).
        self.refuse_early = _refuse_none
        self.endpoint = SipEndpoint(
            EndpointSettings(
                bind_host=config.bind_host,
                port=config.port,
                advertised_host=config.advertised_host,
                transports=tuple(config.transports),
                max_message_bytes=config.max_message_bytes,
                rate_per_s=config.rate_limit_per_s,
                rate_burst=config.rate_limit_burst,
                user_agent=config.user_agent,
                allow_from=tuple(config.allow_from),
                max_transactions=config.max_transactions,
                max_setup_rate=config.max_setup_rate,
                max_connections=config.max_tcp_connections,
                max_connections_per_host=config.max_tcp_connections_per_host,
                tcp_message_timeout_s=config.tcp_message_timeout_s,
                tcp_idle_timeout_s=config.tcp_idle_timeout_s,
                reuse_port=reuse_port,
                own_port=own_port,
            ),
            self._on_event,
            Timers(t1=config.t1_ms / 1000),
        )
        self.endpoint.gate.admission = self._admission_retry_after
        self.endpoint.in_use = self._connections_in_use
        self.ports = MediaPorts(config.bind_host, config.rtp_port_min, config.rtp_port_max)
        self.preference = tuple(config.codecs)
        self.calls: dict[str, SipCall] = {}
        self.stopping = False  # shutting down: new calls get 503
        self.ended: deque[SipCall] = deque(maxlen=100)  # recent, so the API can say why
        self._by_dialog: dict[tuple[str, str, str], SipCall] = {}
        self._answering: dict[int, asyncio.Task[Any]] = {}
        self._responses: dict[int, asyncio.Queue[Response | None]] = {}  # client tx waiters
        self._tasks: set[asyncio.Task[Any]] = set()
        self.registrar = Registrar(config.realm, dict(config.users), secrets.token_bytes(32),
                                   algorithms=tuple(config.digest_algorithms))
        self.registrations: list[RegistrationClient] = []
        self.registering: dict[int, asyncio.Task[Any]] = {}
        self.stats: dict[str, int] = {
            "calls_total": 0, "calls_refused": 0, "rtp_timeouts": 0, "dial_outs": 0,
        }
        self.responses_sent: dict[int, int] = {}

    def _admission_retry_after(self) -> int | None:
        """The gate's view of admission control: Retry-After while it refuses, else None."""
        refusal = self.refuse_early("sip")
        return None if refusal is None else refusal.retry_after_s

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        settings = self.endpoint.settings
        settings.server_ssl, settings.client_ssl = tls.contexts(self.config)
        settings.tls_port = self.config.tls_port
        await self.endpoint.start()
        self._spawn(self._watch_media())
        self._start_registrations()

    def _run_here(self, name: str, start: Callable[[], Awaitable[Any]],
                  stop: Callable[[], Awaitable[Any]]) -> None:
        """A single gateway runs its once-per-cluster jobs itself."""
        self._spawn(start())

    async def stop(self) -> None:
        """Hang up every call with BYE and unregister, then close the sockets."""
        self.stopping = True
        ending = [self._end(c, "gateway shutting down", send_bye=True) for c in self.calls.values()]
        if ending:
            await asyncio.wait([asyncio.ensure_future(e) for e in ending], timeout=5.0)
        for client in self.registrations:
            if client.state == "registered":
                try:
                    await self._register(client, client.unregister(self.endpoint.now()), 2.0)
                except EndpointError as exc:  # its registrar no longer resolves
                    log.warning("sip: cannot unregister %s: %s", client.aor, exc.strerror)
        if ending or self.registrations:
            await asyncio.sleep(0.05)  # let the last BYEs leave
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:  # calls being answered get their 503 and release their ports
            await asyncio.wait(tasks, timeout=2.0)
        await self.endpoint.close()

    def _spawn(self, coro) -> asyncio.Task[Any]:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sip: %s failed", task.get_coro().__qualname__,  # type: ignore[union-attr]
                      exc_info=task.exception())

    @property
    def port(self) -> int:
        return self.endpoint.port

    # -- events from the transaction layer --------------------------------------------
    def _on_event(self, event: Event) -> None:
        if isinstance(event, RequestReceived):
            self._on_request(event.request, event.tx, event.flow)
        elif isinstance(event, AckReceived):
            self._on_ack(event.request)
        elif isinstance(event, CancelReceived):
            self._on_cancel(event.tx)
        elif isinstance(event, ResponseReceived):
            queue = self._responses.get(id(event.tx))
            if queue is not None:
                queue.put_nowait(event.response)
            else:  # its call has ended (a dial-out given up on): a 2xx gets ACK and BYE
                self._on_stray(event.response, event.tx.flow)
        elif isinstance(event, TransactionTimeout):
            self._on_timeout(event.tx)
        elif isinstance(event, StrayResponse):
            self._on_stray(event.response, event.flow)

    def _reply(self, tx: ServerTransaction, request: Request, status: int,
               reason: str | None = None, headers: list[tuple[str, str]] | None = None,
               body: bytes = b"", to_tag: str | None = None) -> None:
        extra = list(headers or [])
        if body:
            extra.append(("Content-Type", SDP))
        response = response_to(request, status, reason, to_tag or new_tag(), extra, body)
        self.responses_sent[status] = self.responses_sent.get(status, 0) + 1
        self.endpoint.respond(tx, response)

    def _on_request(self, request: Request, tx: ServerTransaction, flow: Flow) -> None:
        method = request.method
        if request.to.tag:  # the transaction layer keeps ACK and CANCEL for itself
            self._in_dialog(request, tx, flow)
        elif method == "INVITE":  # the transaction layer has sent 100 Trying
            task = self._spawn(self._answer(request, tx, flow))
            self._answering[id(tx)] = task
            task.add_done_callback(lambda t: self._answered(t, request, tx))
        elif method == "OPTIONS":
            self._reply(tx, request, 200, headers=self._capabilities())
        elif method == "REGISTER":
            if not self.config.users:
                self._reply(tx, request, 405, headers=[("Allow", ALLOW)])
            else:
                self.endpoint.respond(tx, self.registrar.handle(
                    request, flow[1:3], self.endpoint.now(), transport=flow[0]))
        elif method == "BYE":
            self._reply(tx, request, 481)
        else:
            self._reply(tx, request, 501 if method not in ALLOW else 405,
                        headers=[("Allow", ALLOW)])

    def _answered(self, task: asyncio.Task[Any], invite: Request,
                  tx: ServerTransaction) -> None:
        """A task cancelled before it ran never enters its code: a CANCEL (or shutdown)
        right behind the INVITE, in the same batch of datagrams. Its final answer is then
        given here (nothing was allocated yet)."""
        self._answering.pop(id(tx), None)
        if task.cancelled() and tx.state == State.PROCEEDING:
            if self.stopping:
                self._reply(tx, invite, 503, "Shutting Down", [("Retry-After", "30")])
            else:
                self._reply(tx, invite, 487)

    def _capabilities(self) -> list[tuple[str, str]]:
        return [("Allow", ALLOW), ("Accept", SDP), ("Accept-Language", "en")]

    def _on_timeout(self, tx: ServerTransaction | ClientTransaction) -> None:
        queue = self._responses.get(id(tx))
        if queue is not None:
            queue.put_nowait(None)
            return
        if isinstance(tx, ServerTransaction) and tx.is_invite:
            answering = self._answering.get(id(tx))
            if answering is not None:  # Timer C answered 408 for it: stop ringing
                answering.cancel()
            call = next((c for c in self.calls.values() if c.invite_tx is tx), None)
            if call is not None and call.state == "active":  # Timer H (64*T1): no ACK
                self._spawn(self._end(call, "no ACK for our 200", send_bye=True))

    # -- in-dialog requests ------------------------------------------------------------
    def _find_dialog(self, message: Request | Response, incoming: bool = True) -> SipCall | None:
        try:
            call_id, from_tag, to_tag = message.call_id, message.from_.tag, message.to.tag
        except SipParseError:
            return None
        key = (call_id, to_tag, from_tag) if incoming else (call_id, from_tag, to_tag)
        return self._by_dialog.get(key)  # type: ignore[arg-type]

    def _in_dialog(self, request: Request, tx: ServerTransaction, flow: Flow) -> None:
        call = self._find_dialog(request)
        if call is None or call.dialog is None:
            self._reply(tx, request, 481)
            return
        if not call.dialog.accept_request(request):
            self._reply(tx, request, 500, "CSeq Out Of Order")
            return
        method = request.method
        if method == "BYE":
            self._reply(tx, request, 200, to_tag=call.dialog.local_tag)
            self._spawn(self._end(call, "phone hung up", send_bye=False))
        elif method == "INVITE":
            self._reinvite(call, request, tx)
        elif method in ("OPTIONS", "UPDATE") and not request.body:
            self._reply(tx, request, 200, headers=self._capabilities(),
                        to_tag=call.dialog.local_tag)
        elif method == "INFO":
            self._info(call, request)
            self._reply(tx, request, 200, to_tag=call.dialog.local_tag)
        else:
            self._reply(tx, request, 501, to_tag=call.dialog.local_tag,
                        headers=[("Allow", ALLOW)])

    # -- ending calls ------------------------------------------------------------------
    async def _hangup(self, call: SipCall, reason: str) -> None:
        """DELETE of the output, or a listener close: BYE, or CANCEL while calling."""
        if call.state in ("calling", "ringing") and call.direction == "out":
            call.end_reason = reason
            call.cancelled = True
            if isinstance(call.invite_tx, ClientTransaction):
                self.endpoint.cancel(call.invite_tx)
            return
        await self._end(call, reason, send_bye=True)

    async def _end(self, call: SipCall, reason: str, send_bye: bool) -> None:
        was_active = call.state == "active"
        if not self._release(call, reason):
            return
        if send_bye and was_active and call.dialog is not None and call.flow is not None:
            bye = call.dialog.request("BYE", self.endpoint.via(call.flow))
            await self._send_and_wait(bye, call.flow, 4.0)

    def _release(self, call: SipCall, reason: str) -> bool:
        """Free what a call holds, however far it got: output, listener, sender slot,
        listing, RTP ports. False if it was already released."""
        if call.state == "ended":
            return False
        listed = self.calls.pop(call.id, None) is call
        call.state = "ended"
        call.end_reason = call.end_reason or reason
        call.stop_sending()
        if call.source is not None and call.publish_to is not None:
            call.publish_to.detach(call.source)  # type: ignore[arg-type]
        call.stream.outputs.remove(call)
        if listed:
            self.ended.append(call)
        if call.dialog is not None and self._by_dialog.get(call.dialog.id) is call:
            del self._by_dialog[call.dialog.id]
        self.ports.release(call.media)
        call.media.on_digit = call.media.on_latch = None  # no cycle: freed without the GC
        log.info("sip call %s ended: %s (%.0f s, %d packets sent, %d received)", call.id,
                 call.end_reason, time.time() - (call.answered or call.started),
                 call.sent()["packets"], call.media.packets)
        return True

    async def _watch_media(self) -> None:
        """End calls whose phone went quiet (no RTP or RTCP), never for a silent stream."""
        while True:
            await asyncio.sleep(1.0)
            for call in list(self.calls.values()):
                if call.state == "active" and call.media.idle_for() > self.config.rtp_timeout_s:
                    self.stats["rtp_timeouts"] += 1
                    self._spawn(self._end(call, f"no RTP from the phone for "
                                                f"{self.config.rtp_timeout_s:g} s", send_bye=True))

    # -- client transactions -------------------------------------------------------------
    async def _send_and_wait(self, request: Request, flow: Flow,
                             timeout: float) -> Response | None:
        """Send a non-INVITE request and wait for its final response (None: timeout)."""
        tx = self.endpoint.request(request, flow)
        queue: asyncio.Queue[Response | None] = asyncio.Queue()
        self._responses[id(tx)] = queue
        try:
            async with asyncio.timeout(timeout):
                while True:
                    response = await queue.get()
                    if response is None or response.status >= 200:
                        return response
        except TimeoutError:
            return None
        finally:
            self._responses.pop(id(tx), None)

    # -- connections -------------------------------------------------------------------
    def _connections_in_use(self) -> set[tuple[str, str, int]]:
        """The TCP/TLS connections calls and registrations use (kept however idle)."""
        used = self.registrar.stream_sources(self.endpoint.now())
        used.update(call.flow[:3] for call in self.calls.values()  # type: ignore[misc]
                    if call.flow is not None and call.flow[0] != "UDP")
        return used

    # -- API view ----------------------------------------------------------------------
    def find_call(self, call_id: str) -> SipCall | None:
        """A live call, or one that ended recently (its state and end reason stay visible)."""
        return self.calls.get(call_id) or next((c for c in self.ended if c.id == call_id), None)

    def info(self) -> SipInfo:
        counters = self.endpoint.counters
        self.registrar.expire(self.endpoint.now())
        return SipInfo(
            port=self.port,
            worker_port=self.endpoint.own_port,  # --workers: this worker's own (cluster.md)
            tls_port=self.endpoint.tls_port,
            advertised_host=self.endpoint.advertised_host,
            calls=len(self.calls),
            calls_by_state=_count(c.state for c in self.calls.values()),
            **self.stats,
            responses_sent=dict(sorted(self.responses_sent.items())),
            messages_received=counters.received,
            messages_malformed=counters.malformed,
            messages_too_large=counters.too_large,
            rate_limited=counters.rate_limited,
            udp_backlog_dropped=self.endpoint.udp_backlog_dropped,
            overload_rejected=self.endpoint.layer.rejected_overload,
            invites_refused=dict(self.endpoint.gate.refused),
            overload_episodes=self.endpoint.gate.episodes,
            overloaded=self.endpoint.gate.overloaded,
            forbidden_sources=counters.forbidden,
            tcp_connections=len(self.endpoint._connections),
            tcp_connections_refused=counters.connections_refused,
            tcp_connections_timed_out=counters.connections_timed_out,
            tcp_connections_idle_closed=counters.connections_idle_closed,
            registrations=[  # state "elsewhere": another node of the cluster runs it
                RegistrationInfo(registrar=str(c.registrar), aor=str(c.aor),
                                 state=c.state if i in self.registering else "elsewhere",
                                 last_status=c.last_status, last_error=c.last_error)
                for i, c in enumerate(self.registrations)
            ],
            registered_users=self.registrar.bindings_count,
        )


def _count(items) -> dict[str, int]:  # type: ignore[no-untyped-def]
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out

