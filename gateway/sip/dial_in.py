"""Dial-in: a phone calls a stream. Routing, answering, re-INVITEs, DTMF switching."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass

from ..core.registry import UnknownStream
from ..core.stream import Stream, StreamBusy
from ..sdp import SdpError, answer, choose_codec, parse_audio
from .call import SipCall, SipSource
from .dialog import Dialog, new_tag
from .media import CallMedia, MediaPortsExhausted
from .message import Address, Request, SipParseError
from .parts import ServicePart
from .transaction import Flow, ServerTransaction

log = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REGISTER"
SDP = "application/sdp"


@dataclass
class Route:
    """Where a dial-in goes: the stream the caller hears, and the one it feeds."""

    listen: str | None
    publish: str | None


class DialIn(ServicePart):
    """Mixed into SipService: the answering side of calls."""


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
        if self.stopping:
            self._reply(tx, invite, 503, "Shutting Down", [("Retry-After", "30")])
            return
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

