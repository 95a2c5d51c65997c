"""Dial-in: a phone calls a stream. Routing, answering, re-INVITEs, DTMF switching."""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import socket
import time
from dataclasses import dataclass

from ..core.registry import UnknownStream
from ..core.stream import Stream, StreamBusy
from ..sdp import AudioDescription, SdpError, answer, check_target, choose_codec, parse_audio
from . import sdes
from .call import SipCall, SipSource
from .dialog import Dialog, new_tag
from .media import CallMedia, MediaPortsExhausted
from .message import Address, Request, SipParseError
from .parts import ServicePart
from .sdes import SrtpPair
from .transaction import Flow, ServerTransaction, State

log = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REGISTER"
SDP = "application/sdp"


class Refusal(Exception):
    """A final non-2xx answer to an INVITE; raised while answering, sent in one place."""

    def __init__(self, status: int, reason: str | None = None,
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []


@dataclass
class _Attempt:
    """One INVITE being answered: the To tag of all its responses, its call once ports
    are open, and whether its 200 went out (until then, whatever stops the answer
    releases the call)."""

    tag: str
    call: SipCall | None = None
    answered: bool = False


def _warning(exc: SdpError) -> str:
    """A Warning header value (RFC 3261 §20.43) saying why an offer is not acceptable."""
    text = str(exc).replace('"', "'")[:120]
    return f'{exc.warning} gateway "{text}"'


@dataclass
class Route:
    """Where a dial-in goes: the stream the caller hears, and the one it feeds."""

    listen: str | None
    publish: str | None


class DialIn(ServicePart):
    """Mixed into SipService: the answering side of calls."""


    def route(self, user: str) -> Route:
        for rule in self.config.routes:
            match = re.fullmatch(rule.match, user)
            if match:
                listen = match.expand(rule.listen) if rule.listen else None
                publish = match.expand(rule.publish) if rule.publish else None
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
        """Answer a dial-in. Whatever happens on the way, the INVITE gets a final response
        and a call that did not come up leaves no port, output or listener behind."""
        attempt = _Attempt(new_tag())
        refusal = Refusal(500, "Server Internal Error")
        try:
            await self._connect(invite, tx, flow, attempt)
            return
        except Refusal as exc:
            refusal = exc
        except asyncio.CancelledError:  # CANCEL, Timer C, or shutdown
            refusal = (Refusal(503, "Shutting Down", [("Retry-After", "30")]) if self.stopping
                       else Refusal(487))
            raise
        except Exception:
            log.exception("sip: answering INVITE %s failed", invite.call_id[:48])
        finally:
            if attempt.call is not None and not attempt.answered:
                self._release(attempt.call, f"not answered: {refusal.status}")
            if tx.state == State.PROCEEDING:
                self._reply(tx, invite, refusal.status, refusal.reason, refusal.headers,
                            to_tag=attempt.tag)

    async def _connect(self, invite: Request, tx: ServerTransaction, flow: Flow,
                       attempt: _Attempt) -> None:
        """Route, check, ring, negotiate, wire the media; Refusal for a final non-2xx."""
        user = invite.uri.user or ""
        if self.stopping:
            raise Refusal(503, "Shutting Down", [("Retry-After", "30")])
        if len(self.calls) >= self.config.max_calls:
            self.stats["calls_refused"] += 1
            raise Refusal(503, "Too Many Calls", [("Retry-After", "10")])
        overload = self.admit("sip")
        if overload is not None:  # refused before anything is allocated: fast and cheap
            self.stats["calls_refused"] += 1
            raise Refusal(503, "Overloaded", [("Retry-After", str(overload.retry_after_s))])
        if self.config.auth_calls and self.config.users:
            _, challenge = self.registrar.check_auth(invite, self.endpoint.now())
            if challenge is not None:
                self.endpoint.respond(tx, challenge)
                return
        # Setting the call up (ports, codecs, the stream's readers) is work that can wait
        # for room in a container CPU quota's period; refusals above do not wait.
        await self.endpoint.budget.turn()
        route = self.route(user)
        try:
            listen = self._stream(route.listen) if route.listen else None
            publish = self.registry.get_or_create(route.publish) if route.publish else None
        except (UnknownStream, ValueError):
            raise Refusal(404, f"No Stream {user[:40]}") from None
        if publish is not None and publish.source is not None:
            busy = f'399 gateway "stream {publish.name} already has a sender"'
            raise Refusal(486, "Stream Has A Sender", [("Warning", busy)])
        if listen is None:
            listen = publish  # publish-only route: the caller hears its own stream's ring
        assert listen is not None
        if invite.content_type != SDP or not invite.body:
            raise Refusal(488, "SDP Offer Required")
        try:
            offer = parse_audio(invite.body.decode("utf-8", "replace"))
            choose_codec(offer, self.preference)
            self._check_target(offer, initial=True)
            crypto, srtp = self._srtp(offer)
            dialog = Dialog.as_uas(invite, attempt.tag)
        except SdpError as exc:
            raise Refusal(488, None, [("Warning", _warning(exc))]) from None
        except SipParseError as exc:
            raise Refusal(400, str(exc)[:60]) from None
        try:
            media = await self.ports.open(CallMedia())
        except (MediaPortsExhausted, OSError) as exc:
            log.warning("sip: refusing call to %s: %s", user, exc)
            raise Refusal(503, "No Media Ports", [("Retry-After", "10")]) from None
        media.srtp = srtp
        call = attempt.call = self._named(SipCall("in", str(invite.from_.uri), listen, media,
                                                  self.outputs))
        call.invite_tx = tx
        call.flow = flow
        call.hangup_handler = self._hangup
        media.on_digit = lambda digit: self._on_digit(call, digit)
        media.on_latch = call.latched
        if self.config.ring_ms > 0:
            self._reply(tx, invite, 180, to_tag=attempt.tag)
            await asyncio.sleep(self.config.ring_ms / 1000)
            if tx.state != State.PROCEEDING:
                return  # answered meanwhile (Timer C gave up): nothing left to connect
        await self.endpoint.budget.turn()  # wiring the media: again work that can wait
        sdp, pt, spec = answer(offer, self.endpoint.advertised_host, media.port,
                               self.preference, call.sdp_session, call.sdp_version, crypto)
        call.dialog = dialog
        call.local_sdp = sdp
        if publish is not None:
            try:
                media.publish(dict(offer.codecs))
                call.source = SipSource(call)
                await self.take_sender(publish, call.source,  # type: ignore[arg-type]
                                       "replaced by a SIP caller")
                call.publish_to = publish
            except StreamBusy:
                raise Refusal(486, "Stream Has A Sender") from None
        media.telephone_event = offer.telephone_event
        call.awaiting_ack = True  # no media to the SDP's address before the ACK or RTP
        self._activate(call, offer.address, offer.port, spec, pt, offer.on_hold)
        self._reply(tx, invite, 200, headers=[("Contact", str(self._contact(flow))),
                                              ("Allow", ALLOW)],
                    body=sdp.encode(), to_tag=attempt.tag)
        attempt.answered = True
        log.info("sip call %s: %s dialed %s: hears %s%s, %s/%d", call.id, call.peer, user,
                 listen.name, f", feeds {publish.name}" if publish else "", spec.name,
                 media.port)

    def _srtp(self, offer: AudioDescription) -> tuple[str | None, SrtpPair | None]:
        """Our a=crypto answer and the call's SRTP sessions, per ``sip.srtp``; SdpError
        (488) when the policy and the offer disagree."""
        policy = self.config.srtp
        if not offer.secure:
            if policy == "required":
                raise SdpError("SRTP is required here (sip.srtp): offer RTP/SAVP with "
                               "a=crypto", warning=302)
            return None, None
        if policy == "off":
            if offer.savp:
                raise SdpError("SRTP is not enabled here (sip.srtp = off)", warning=302)
            return None, None  # keys offered on plain RTP/AVP: answered plain
        offered = [c for c in map(sdes.parse_crypto, offer.crypto) if c]
        if not offered and not offer.savp and policy == "optional":
            return None, None  # keys we cannot use, on a plain profile: plain RTP
        ours, pair = sdes.answer(offered)
        return ours.line(), pair

    def _check_target(self, desc: AudioDescription, initial: bool) -> None:
        """SdpError unless the call's RTP socket may send where ``desc`` says (see
        check_target); the kernel is asked too, since only it knows the subnet
        broadcasts of the local interfaces."""
        if check_target(desc, initial):
            return  # hold: nothing is sent there
        family = socket.AF_INET6 if ":" in self.ports.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((desc.address, desc.port))  # a route lookup; nothing is sent
            except socket.gaierror:
                raise SdpError(f"connection address {desc.address} is not of the gateway's "
                               f"address family (IPv{6 if family == socket.AF_INET6 else 4})",
                               301) from None
            except OSError as exc:
                if exc.errno == errno.EACCES:  # a broadcast, and no SO_BROADCAST
                    raise SdpError(f"broadcast connection address {desc.address}",
                                   301) from None
                # unreachable from here: latching to the phone's RTP may still work

    def _contact(self, flow: Flow) -> Address:
        return self.endpoint.contact("gateway", flow)

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
        call.stream.outputs.add(call)
        self.stats["calls_total"] += 1

    def _on_ack(self, ack: Request) -> None:
        call = self._find_dialog(ack)
        if call is not None and call.state == "active":
            call.invite_tx = None
            call.acked()

    def _on_cancel(self, tx: ServerTransaction) -> None:
        """The answering task ends with 487 and releases what it opened (see _answer)."""
        task = self._answering.get(id(tx))
        if task is None or task.done():
            return  # already answered: the CANCEL changes nothing (RFC 3261 §9.2)
        task.cancel()
        log.info("sip: call to %s cancelled before answer", tx.request.uri)

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
            self._check_target(offer, initial=False)
            crypto, srtp = self._srtp(offer)
            if (srtp is None) != (call.media.srtp is None):
                raise SdpError("a re-INVITE cannot switch a call between RTP and SRTP",
                               warning=302)
            sdp, pt, spec = answer(offer, self.endpoint.advertised_host, call.media.port,
                                   self.preference, call.sdp_session, call.sdp_version + 1,
                                   crypto)
        except SdpError as exc:
            self._reply(tx, request, 488, None, [("Warning", _warning(exc))], to_tag=tag)
            return
        call.sdp_version += 1
        if srtp is not None:  # new keys both ways (RFC 4568 §7.1.4: an offer may re-key)
            call.media.srtp = srtp
            if call.output is not None:
                call.output.srtp = srtp
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
            call.awaiting_ack = True  # and send there only once it ACKs or its RTP comes
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

