"""SIP call control: dial-in, dial-out, OPTIONS, REGISTER, re-INVITE, BYE, CANCEL, DTMF.

The sans-IO pieces (messages, transactions, dialogs, digest, SDP, registrar) decide
what the protocol says; this module decides what the gateway does with a call: which
stream it hears and feeds, when it ends, and how it shows up in the API.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..config import SipConfig
from ..core.registry import StreamRegistry, UnknownStream
from ..core.stream import Stream, StreamBusy
from ..egress.rtp import RtpOutputs
from ..sdp import SdpError, answer, build_audio, choose_codec, offer_codecs, parse_audio
from .call import SipCall, SipSource
from .dialog import Dialog, new_call_id, new_tag
from .digest import DigestError, answer_challenge, parse_challenge
from .endpoint import EndpointError, EndpointSettings, SipEndpoint
from .media import CallMedia, MediaPorts, MediaPortsExhausted
from .message import Address, Headers, Request, Response, SipParseError, Uri, response_to
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
    StrayResponse,
    TransactionTimeout,
)

log = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REGISTER"
SDP = "application/sdp"
TELEPHONE_EVENT_PT = 101
MAX_REDIRECTS = 5


class DialError(ValueError):
    """A dial-out request cannot be placed (bad URI, unknown user); sent back as 400."""


@dataclass
class Route:
    """Where a dial-in goes: the stream the caller hears, and the one it feeds."""

    listen: str | None
    publish: str | None


class SipService:
    def __init__(self, config: SipConfig, registry: StreamRegistry, outputs: RtpOutputs,
                 opus_bitrate: int = 64000) -> None:
        self.config = config
        self.registry = registry
        self.outputs = outputs
        self.opus_bitrate = opus_bitrate
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
            ),
            self._on_event,
        )
        self.ports = MediaPorts(config.bind_host, config.rtp_port_min, config.rtp_port_max)
        self.preference = tuple(config.codecs)
        self.calls: dict[str, SipCall] = {}
        self.ended: deque[SipCall] = deque(maxlen=100)  # recent, so the API can say why
        self._by_dialog: dict[tuple[str, str, str], SipCall] = {}
        #: id(invite server tx) -> (call being answered, the To tag its 180 carried)
        self._pending: dict[int, tuple[SipCall, str]] = {}
        self._answering: dict[int, asyncio.Task[Any]] = {}
        self._responses: dict[int, asyncio.Queue[Response | None]] = {}  # client tx waiters
        self._tasks: set[asyncio.Task[Any]] = set()
        self.registrar = Registrar(config.realm, dict(config.users), secrets.token_bytes(32),
                                   algorithms=tuple(config.digest_algorithms))
        self.registrations: list[RegistrationClient] = []
        self.stats: dict[str, int] = {
            "calls_total": 0, "calls_refused": 0, "rtp_timeouts": 0, "dial_outs": 0,
        }
        self.responses_sent: dict[int, int] = {}

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        await self.endpoint.start()
        self._spawn(self._watch_media())
        for entry in self.config.registrations:
            client = self._registration_client(entry)
            self.registrations.append(client)
            self._spawn(self._keep_registered(client))

    async def stop(self) -> None:
        """Hang up every call with BYE and unregister, then close the sockets."""
        ending = [self._end(c, "gateway shutting down", send_bye=True) for c in self.calls.values()]
        if ending:
            await asyncio.wait([asyncio.ensure_future(e) for e in ending], timeout=5.0)
        for client in self.registrations:
            if client.state == "registered":
                await self._register(client, client.unregister(self.endpoint.now()), 2.0)
        await asyncio.sleep(0.05)  # let the last BYEs leave
        for task in list(self._tasks):
            task.cancel()
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
        if request.to.tag and method not in ("ACK", "CANCEL"):
            self._in_dialog(request, tx, flow)
        elif method == "INVITE":  # the transaction layer has sent 100 Trying
            task = self._spawn(self._answer(request, tx, flow))
            self._answering[id(tx)] = task
            task.add_done_callback(lambda _t: self._answering.pop(id(tx), None))
        elif method == "OPTIONS":
            self._reply(tx, request, 200, headers=self._capabilities())
        elif method == "REGISTER":
            if not self.config.users:
                self._reply(tx, request, 405, headers=[("Allow", ALLOW)])
            else:
                self.endpoint.respond(tx, self.registrar.handle(request, flow[1:],
                                                                self.endpoint.now()))
        elif method == "BYE":
            self._reply(tx, request, 481)
        elif method in ("ACK",):
            pass
        else:
            self._reply(tx, request, 501 if method not in ALLOW else 405,
                        headers=[("Allow", ALLOW)])

    def _capabilities(self) -> list[tuple[str, str]]:
        return [("Allow", ALLOW), ("Accept", SDP), ("Accept-Language", "en")]

    # -- dial-in ---------------------------------------------------------------------
    def route(self, user: str) -> Route:
        for rule in self.config.routes:
            match = re.fullmatch(rule["match"], user)
            if match:
                listen = match.expand(rule["listen"]) if rule.get("listen") else None
                publish = match.expand(rule["publish"]) if rule.get("publish") else None
                return Route(listen, publish)
        return Route(user, None)

    def _stream(self, name: str) -> Stream:
        """An existing stream, or a new one where configuration allows it."""
        stream = self.registry.streams.get(name)
        if stream is not None:
            return stream
        if not self.config.create_streams:
            raise UnknownStream(name)
        return self.registry.get_or_create(name)

    async def _answer(self, invite: Request, tx: ServerTransaction, flow: Flow) -> None:
        """Answer a dial-in: route, check, ring, negotiate, wire the media."""
        user = invite.uri.user or ""
        if len(self.calls) >= self.config.max_calls:
            self.stats["calls_refused"] += 1
            self._reply(tx, invite, 503, "Too Many Calls", [("Retry-After", "10")])
            return
        if self.config.auth_calls and self.config.users:
            _, challenge = self.registrar.check_auth(invite, self.endpoint.now())
            if challenge is not None:
                self.endpoint.respond(tx, challenge)
                return
        route = self.route(user)
        try:
            listen = self._stream(route.listen) if route.listen else None
            publish = self.registry.get_or_create(route.publish) if route.publish else None
        except (UnknownStream, ValueError):
            self._reply(tx, invite, 404, f"No Stream {user[:40]}")
            return
        if publish is not None and publish.source is not None:
            self._reply(tx, invite, 486, "Stream Has A Sender",
                        [("Warning", f'399 gateway "stream {publish.name} already has a sender"')])
            return
        if listen is None:
            listen = publish  # publish-only route: the caller hears its own stream's ring
        assert listen is not None
        if invite.content_type != SDP or not invite.body:
            self._reply(tx, invite, 488, "SDP Offer Required")
            return
        try:
            offer = parse_audio(invite.body.decode("utf-8", "replace"))
            choose_codec(offer, self.preference)
        except SdpError as exc:
            self._reply(tx, invite, 488, None, [("Warning", f'304 gateway "{exc}"')])
            return
        try:
            media = await self.ports.open(CallMedia())
        except (MediaPortsExhausted, OSError) as exc:
            log.warning("sip: refusing call to %s: %s", user, exc)
            self._reply(tx, invite, 503, "No Media Ports", [("Retry-After", "10")])
            return
        call = SipCall("in", str(invite.from_.uri), listen, media, self.outputs)
        call.invite_tx = tx
        call.flow = flow
        call.hangup_handler = self._hangup
        media.on_digit = lambda digit: self._on_digit(call, digit)
        media.on_latch = call.latched
        local_tag = new_tag()
        self._pending[id(tx)] = (call, local_tag)
        try:
            if self.config.ring_ms > 0:
                self._reply(tx, invite, 180, to_tag=local_tag)
                await asyncio.sleep(self.config.ring_ms / 1000)
            sdp, pt, spec = answer(offer, self.endpoint.advertised_host, media.port,
                                   self.preference, call.sdp_session, call.sdp_version)
            dialog = Dialog.as_uas(invite, local_tag)
        except (SdpError, SipParseError) as exc:
            self._pending.pop(id(tx), None)
            self.ports.release(media)
            self._reply(tx, invite, 400 if isinstance(exc, SipParseError) else 488, str(exc)[:60])
            return
        except asyncio.CancelledError:
            self._pending.pop(id(tx), None)
            self.ports.release(media)
            raise
        self._pending.pop(id(tx), None)
        call.dialog = dialog
        call.local_sdp = sdp
        if publish is not None:
            try:
                media.publish(dict(offer.codecs))
                call.source = SipSource(call)
                publish.attach(call.source)  # type: ignore[arg-type]
                call.publish_to = publish
            except StreamBusy:
                self.ports.release(media)
                self._reply(tx, invite, 486, "Stream Has A Sender")
                return
        media.telephone_event = offer.telephone_event
        self._activate(call, offer.address, offer.port, spec, pt, offer.on_hold)
        self._reply(tx, invite, 200, headers=[("Contact", str(self._contact(flow))),
                                              ("Allow", ALLOW)],
                    body=sdp.encode(), to_tag=local_tag)
        log.info("sip call %s: %s dialed %s: hears %s%s, %s/%d", call.id, call.peer, user,
                 listen.name, f", feeds {publish.name}" if publish else "", spec.name,
                 media.port)

    def _contact(self, flow: Flow) -> Address:
        return self.endpoint.contact("gateway", flow[0])

    def _activate(self, call: SipCall, host: str, port: int, spec, pt: int,  # type: ignore[no-untyped-def]
                  on_hold: bool) -> None:
        """The call is up: it hears its stream, and it is listed."""
        call.state = "active"
        call.answered = time.time()
        call.on_hold = on_hold
        bitrate = self.opus_bitrate if spec.name == "opus" else None
        call.start_sending(spec, pt, (host, port), bitrate=bitrate)
        call.media.last_activity = time.monotonic()
        assert call.dialog is not None
        self.calls[call.id] = call
        self._by_dialog[call.dialog.id] = call
        call.stream.add_listener(call)  # type: ignore[arg-type]
        self.stats["calls_total"] += 1

    def _on_ack(self, ack: Request) -> None:
        call = self._find_dialog(ack)
        if call is not None and call.state == "active":
            call.invite_tx = None

    def _on_cancel(self, tx: ServerTransaction) -> None:
        task = self._answering.get(id(tx))
        pending = self._pending.pop(id(tx), None)
        if task is None or task.done():
            return  # already answered: the CANCEL changes nothing (RFC 3261 §9.2)
        task.cancel()
        if pending is not None:
            self.ports.release(pending[0].media)
        self._reply(tx, tx.request, 487, to_tag=pending[1] if pending else None)
        log.info("sip: call to %s cancelled before answer", tx.request.uri)

    def _on_timeout(self, tx: ServerTransaction | ClientTransaction) -> None:
        queue = self._responses.get(id(tx))
        if queue is not None:
            queue.put_nowait(None)
            return
        if isinstance(tx, ServerTransaction) and tx.is_invite:
            call = self._find_dialog(tx.request, by_invite=True)
            if call is not None and call.state == "active" and call.invite_tx is tx:
                self._spawn(self._end(call, "no ACK for our 200", send_bye=True))

    def _on_stray(self, response: Response, flow: Flow) -> None:
        """A 2xx for an INVITE we gave up on (crossed CANCEL): ACK it, then BYE."""
        try:
            number, method = response.cseq
        except SipParseError:
            return
        if method != "INVITE" or not 200 <= response.status < 300:
            return
        if self._find_dialog(response, incoming=False) is not None:
            return  # a retransmitted 2xx of a live call: its ACK already went
        self._spawn(self._ack_and_bye(response, flow, number))

    async def _ack_and_bye(self, response: Response, flow: Flow, cseq: int) -> None:
        contact = response.contact
        if contact is None:
            return
        dialog = Dialog(response.call_id, response.from_.tag or "", response.to.tag or "",
                        response.from_, response.to, contact.uri)
        self.endpoint.send_stateless(dialog.request("ACK", self.endpoint.via(flow[0]),
                                                    cseq=cseq), flow)
        dialog.local_cseq = cseq
        bye = dialog.request("BYE", self.endpoint.via(flow[0]))
        await self._send_and_wait(bye, flow, 5.0)

    # -- in-dialog requests ------------------------------------------------------------
    def _find_dialog(self, message: Request | Response, incoming: bool = True,
                     by_invite: bool = False) -> SipCall | None:
        try:
            call_id, from_tag, to_tag = message.call_id, message.from_.tag, message.to.tag
        except SipParseError:
            return None
        if by_invite:
            return next((c for c in self.calls.values()
                         if c.dialog and c.dialog.call_id == call_id
                         and c.dialog.remote_tag == from_tag), None)
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

    def _reinvite(self, call: SipCall, request: Request, tx: ServerTransaction) -> None:
        """Hold, resume, codec change or a new address: answer and re-wire the media."""
        assert call.dialog is not None
        tag = call.dialog.local_tag
        contact = [("Contact", str(self._contact(call.flow or ("UDP", "", 0))))]
        if not request.body:  # offerless (session refresh): our SDP is the offer, unchanged
            call.dialog.refresh_target(request)
            self._reply(tx, request, 200, headers=contact, body=call.local_sdp.encode(),
                        to_tag=tag)
            return
        if request.content_type != SDP:
            self._reply(tx, request, 415, headers=[("Accept", SDP)], to_tag=tag)
            return
        try:
            offer = parse_audio(request.body.decode("utf-8", "replace"))
            call.sdp_version += 1
            sdp, pt, spec = answer(offer, self.endpoint.advertised_host, call.media.port,
                                   self.preference, call.sdp_session, call.sdp_version)
        except SdpError as exc:
            self._reply(tx, request, 488, None, [("Warning", f'304 gateway "{exc}"')], to_tag=tag)
            return
        call.dialog.refresh_target(request)
        call.media.telephone_event = offer.telephone_event
        if call.publish_to is not None:
            call.media.publish(dict(offer.codecs))
        call.hold(offer.on_hold)
        output = call.output
        if output is None or spec != call.codec or pt != call.payload_type or (
            call.media.remote is None and output.sockaddr[:2] != (offer.address, offer.port)
        ):
            bitrate = self.opus_bitrate if spec.name == "opus" else None
            call.media.remote = None  # latch again: the phone may have moved
            call.start_sending(spec, pt, (offer.address, offer.port), bitrate=bitrate)
        call.invite_tx = tx
        call.local_sdp = sdp
        self._reply(tx, request, 200, headers=contact, body=sdp.encode(), to_tag=tag)
        log.info("sip call %s re-INVITE: %s, %s", call.id, spec.name,
                 "on hold" if offer.on_hold else "active")

    def _info(self, call: SipCall, request: Request) -> None:
        """SIP INFO DTMF (application/dtmf-relay), for phones that do not send RFC 4733."""
        if request.content_type != "application/dtmf-relay":
            return
        match = re.search(rb"Signal\s*=\s*([0-9*#A-Da-d])", request.body)
        if match:
            self._on_digit(call, match.group(1).decode().upper())

    def _on_digit(self, call: SipCall, digit: str) -> None:
        log.info("sip call %s: DTMF %s", call.id, digit)
        command = call.note_digit(digit)
        if command is None or not self.config.dtmf_switch:
            return
        name = self.config.dtmf_streams.get(command, command)
        stream = self.registry.streams.get(name)
        if stream is None:
            log.info("sip call %s: DTMF *%s#: no stream %r", call.id, command, name)
            return
        call.switch_to(stream)

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
        if call.state == "ended":
            return
        was_active = call.state == "active"
        call.state = "ended"
        call.end_reason = call.end_reason or reason
        call.stop_sending()
        if call.source is not None and call.publish_to is not None:
            call.publish_to.detach(call.source)  # type: ignore[arg-type]
        call.stream.remove_listener(call)  # type: ignore[arg-type]
        self.calls.pop(call.id, None)
        self.ended.append(call)
        if call.dialog is not None:
            self._by_dialog.pop(call.dialog.id, None)
        self.ports.release(call.media)
        log.info("sip call %s ended: %s (%.0f s, %d packets sent)", call.id, call.end_reason,
                 time.time() - (call.answered or call.started), call.media.packets)
        if send_bye and was_active and call.dialog is not None and call.flow is not None:
            bye = call.dialog.request("BYE", self.endpoint.via(call.flow[0]))
            await self._send_and_wait(bye, call.flow, 4.0)

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

    # -- dial-out ----------------------------------------------------------------------
    async def dial(self, stream: Stream, uri: str, timeout_s: float | None = None) -> SipCall:
        """Place a call that plays ``stream``; returns at once, the call proceeds."""
        try:
            target = Uri.parse(uri if ":" in uri else f"sip:{uri}@{self.endpoint.advertised_host}")
        except SipParseError as exc:
            raise DialError(f"uri: {exc}") from None
        if target.scheme != "sip":
            raise DialError("uri: only sip: URIs can be dialled")
        if len(self.calls) >= self.config.max_calls:
            raise DialError("too many calls")
        flow = await self._target_flow(target)
        media = await self.ports.open(CallMedia())
        call = SipCall("out", str(target), stream, media, self.outputs)
        call.hangup_handler = self._hangup
        call.flow = flow
        media.on_digit = lambda digit: self._on_digit(call, digit)
        media.on_latch = call.latched
        self.calls[call.id] = call
        stream.add_listener(call)  # type: ignore[arg-type]
        self.stats["dial_outs"] += 1
        self._spawn(self._dial(call, target, flow, timeout_s or self.config.dial_timeout_s))
        return call

    async def _target_flow(self, target: Uri) -> Flow:
        """Where to send: a registered user's binding, else the URI's host."""
        if target.user and target.host in (self.endpoint.advertised_host, "localhost") and (
            target.port in (None, self.endpoint.port)
        ):
            bindings = self.registrar.lookup(target.user, self.endpoint.now())
            if not bindings:
                raise DialError(f"uri: user {target.user!r} is not registered here")
            host, port = bindings[0].source
            return ("UDP", host, port)
        try:
            return await self.endpoint.flow_for(target)
        except EndpointError as exc:
            raise DialError(f"uri: {exc.strerror}") from None

    async def _dial(self, call: SipCall, target: Uri, flow: Flow, timeout_s: float) -> None:
        media = call.media
        call.local_sdp = build_audio(self.endpoint.advertised_host, media.port,
                                     offer_codecs(self.preference), TELEPHONE_EVENT_PT,
                                     session_id=call.sdp_session)
        offer = call.local_sdp.encode()
        call_id = new_call_id(self.endpoint.advertised_host)
        local = Address(Uri("sip", self.endpoint.advertised_host, call.stream.name),
                        params={"tag": new_tag()})
        cseq = 1
        auth: list[tuple[str, str]] = []
        tried_realms: set[str] = set()
        deadline = asyncio.get_running_loop().time() + timeout_s
        request_uri = target
        for _ in range(MAX_REDIRECTS + 3):
            invite = self._invite(request_uri, target, local, call_id, cseq, flow, offer, auth)
            result = await self._run_invite(call, invite, flow, deadline)
            if result is None:
                return
            if 300 <= result.status < 400:
                contact = result.contact
                if contact is None:
                    break
                request_uri = contact.uri
                flow = await self.endpoint.flow_for(request_uri)
                call.flow = flow
                cseq += 1
                continue
            if result.status in (401, 407) and call.state != "ended":
                header = "WWW-Authenticate" if result.status == 401 else "Proxy-Authenticate"
                auth = self._authorize(result, header, request_uri, tried_realms)
                if auth:
                    cseq += 1
                    continue
            break
        reason = f"{result.status} {result.reason}" if result is not None else "failed"
        await self._end(call, call.end_reason or reason, send_bye=False)

    def _invite(self, request_uri: Uri, target: Uri, local: Address, call_id: str, cseq: int,
                flow: Flow, body: bytes, auth: list[tuple[str, str]]) -> Request:
        headers = Headers()
        headers.add("Via", str(self.endpoint.via(flow[0])))
        headers.add("Max-Forwards", "70")
        headers.add("From", str(local))
        headers.add("To", str(Address(target)))
        headers.add("Call-ID", call_id)
        headers.add("CSeq", f"{cseq} INVITE")
        headers.add("Contact", str(self.endpoint.contact("gateway", flow[0])))
        headers.add("Allow", ALLOW)
        for name, value in auth:
            headers.add(name, value)
        headers.add("Content-Type", SDP)
        return Request("INVITE", request_uri, headers, body)

    def _authorize(self, response: Response, header: str, uri: Uri,
                   tried: set[str]) -> list[tuple[str, str]]:
        """Authorization for a 401/407 from configured credentials; [] if none fit."""
        for value in response.headers.get_all(header) or []:
            try:
                challenge = parse_challenge(value)
            except DigestError:
                continue
            if challenge.realm in tried and not challenge.stale:
                continue
            cred = next((c for c in self.config.credentials
                         if c.get("realm", "*") in ("*", challenge.realm)), None)
            if cred is None:
                continue
            tried.add(challenge.realm)
            try:
                answer_ = answer_challenge(challenge, "INVITE", str(uri), cred["user"],
                                           cred["password"])
            except DigestError:
                continue
            name = "Authorization" if header == "WWW-Authenticate" else "Proxy-Authorization"
            return [(name, str(answer_))]
        return []

    async def _run_invite(self, call: SipCall, invite: Request, flow: Flow,
                          deadline: float) -> Response | None:
        """Send one INVITE; None when the call got connected (or ended for good)."""
        tx = self.endpoint.request(invite, flow)
        call.invite_tx = tx
        queue: asyncio.Queue[Response | None] = asyncio.Queue()
        self._responses[id(tx)] = queue
        loop = asyncio.get_running_loop()
        cancelled = False
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0 and not cancelled:
                    call.end_reason = call.end_reason or "no answer"
                    call.cancelled = True
                    self.endpoint.cancel(tx)
                    cancelled = True
                try:
                    response = await asyncio.wait_for(queue.get(),
                                                      max(remaining, 0.0) if not cancelled
                                                      else 40.0)
                except TimeoutError:
                    if cancelled:
                        await self._end(call, "no answer", send_bye=False)
                        return None
                    continue
                if response is None:
                    call.end_reason = call.end_reason or "timeout"
                    await self._end(call, "timeout (no response)", send_bye=False)
                    return None
                call.status = response.status
                if response.status < 200:
                    if response.status in (180, 183) and call.state == "calling":
                        call.state = "ringing"
                    continue
                if response.status >= 300:
                    return response
                await self._connected(call, invite, response, flow)
                return None
        finally:
            self._responses.pop(id(tx), None)

    async def _connected(self, call: SipCall, invite: Request, response: Response,
                         flow: Flow) -> None:
        """A 2xx: ACK it; start the media, or hang up if we cancelled meanwhile."""
        try:
            dialog = Dialog.as_uac(invite, response)
        except SipParseError as exc:
            await self._end(call, f"bad 2xx: {exc}", send_bye=False)
            return
        call.dialog = dialog
        ack = dialog.request("ACK", self.endpoint.via(flow[0]), cseq=invite.cseq[0])
        self.endpoint.send_stateless(ack, flow)
        if call.cancelled:  # DELETE or the dial timeout crossed the 200: hang up at once
            call.state = "active"
            await self._end(call, call.end_reason, send_bye=True)
            return
        try:
            desc = parse_audio(response.body.decode("utf-8", "replace"))
            pt, spec = choose_codec(desc, self.preference)
        except SdpError as exc:
            call.state = "active"
            await self._end(call, f"unusable answer: {exc}", send_bye=True)
            return
        call.media.telephone_event = desc.telephone_event
        self.calls.pop(call.id, None)
        call.stream.remove_listener(call)  # type: ignore[arg-type]
        self._activate(call, desc.address, desc.port, spec, pt, desc.on_hold)
        log.info("sip call %s: %s answered, playing %s as %s", call.id, call.peer,
                 call.stream.name, spec.name)

    # -- upstream registration -----------------------------------------------------------
    def _registration_client(self, entry: dict[str, Any]) -> RegistrationClient:
        registrar = Uri.parse(entry["registrar"])
        aor = Uri.parse(entry["aor"]) if entry.get("aor") else Uri(
            "sip", registrar.host, entry["user"])
        contact = self.endpoint.contact(entry.get("contact_user", entry["user"])).uri
        return RegistrationClient(registrar, aor, contact, entry.get("username", entry["user"]),
                                  entry["password"], int(entry.get("expires", 300)))

    async def _keep_registered(self, client: RegistrationClient) -> None:
        """Register, refresh before expiry, retry with backoff after failures."""
        loop = asyncio.get_running_loop()
        while True:
            request = client.poll(self.endpoint.now())
            if request is None:
                deadline = client.next_deadline()
                await asyncio.sleep(1.0 if deadline is None
                                    else max(0.05, deadline - loop.time()))
                continue
            response = await self._register(client, request, 40.0)
            if response is None:
                client.on_timeout(self.endpoint.now())
            else:
                client.on_response(response, self.endpoint.now())
            log.info("sip registration to %s: %s", client.registrar, client.state)

    async def _register(self, client: RegistrationClient, request: Request,
                        timeout: float) -> Response | None:
        """Send one REGISTER of ``client`` (None: no final response in time)."""
        try:
            flow = await self.endpoint.flow_for(client.registrar)
        except EndpointError as exc:
            log.warning("sip registration to %s: %s", client.registrar, exc.strerror)
            return None
        request.headers.add("Via", str(self.endpoint.via(flow[0])), first=True)
        return await self._send_and_wait(request, flow, timeout)

    # -- API view ----------------------------------------------------------------------
    def find_call(self, call_id: str) -> SipCall | None:
        """A live call, or one that ended recently (its state and end reason stay visible)."""
        return self.calls.get(call_id) or next((c for c in self.ended if c.id == call_id), None)

    def calls_on(self, stream_name: str) -> list[SipCall]:
        return [c for c in self.calls.values() if c.stream.name == stream_name]

    def info(self) -> dict[str, Any]:
        counters = self.endpoint.counters
        self.registrar.expire(self.endpoint.now())
        return {
            "port": self.port,
            "advertised_host": self.endpoint.advertised_host,
            "calls": len(self.calls),
            "calls_by_state": _count(c.state for c in self.calls.values()),
            **self.stats,
            "responses_sent": dict(sorted(self.responses_sent.items())),
            "messages_received": counters.received,
            "messages_malformed": counters.malformed,
            "messages_too_large": counters.too_large,
            "rate_limited": counters.rate_limited,
            "registrations": [
                {"registrar": str(c.registrar), "state": c.state,
                 "last_status": c.last_status} for c in self.registrations
            ],
            "registered_users": self.registrar.bindings_count,
        }


def _count(items) -> dict[str, int]:  # type: ignore[no-untyped-def]
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out

